"""`medseg export` / export_label: outputs of an existing label map on an oblique DICOM series."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import ConfigError, GeometryError, InputError, OutputExistsError
from medseg.export.algorithm import AlgorithmId
from medseg.export.case import ExportConfig, export_label
from medseg.export.dicom_seg import read_dicom_seg, write_dicom_seg
from medseg.export.rtstruct import read_rtstruct
from medseg.io import read_volume, write_volume
from medseg.volume import Volume
from tests.conftest import (
    IDENTIFIERS,
    assert_references_deidentified_copy,
    identified_prostatex_t2,
    make_oblique_volume,
    oblique_direction,
    write_blank_uid_cohort,
)
from tests.export.conftest import ZONES, Series, dice, prostate_zones

ALL = ("nifti", "dicom-seg", "rtstruct", "mesh", "volumes", "overlay", "report")


def _hashes(folder: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finer_copy(label: Volume, factor: int = 3) -> Volume:
    """The label map on a grid ``factor`` times finer along every axis whose every ``factor``-th voxel
    centre (offset factor // 2) coincides with a centre of the original grid: nearest-neighbour
    resampling back must return the original exactly."""
    g = label.geometry
    arr = label.array
    for axis in range(3):
        arr = np.repeat(arr, factor, axis=axis)
    spacing = np.asarray(g.spacing) / factor
    origin = np.asarray(g.origin) - g.direction @ (spacing * (factor // 2))
    return Volume(arr, spacing, origin, g.direction)


def test_every_format_lands_on_the_series(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    label = prostate_zones(image)
    label_file = write_volume(label, tmp_path / "in" / "case 7_seg.nii.gz")
    before = _hashes(synthetic_series.folder) | _hashes(tmp_path / "in")
    cfg = ExportConfig(formats=ALL, labels=ZONES, algorithm_name="TotalSegmentator", algorithm_version="2.4")
    result = export_label(label_file, synthetic_series.folder, tmp_path / "out", cfg)
    assert result.case_id == "case 7_seg" and not result.resampled
    assert set(result.outputs) == set(ALL)
    assert result.names == ZONES
    # NIfTI: the same voxels on the series' grid
    back = read_volume(result.outputs["nifti"])
    np.testing.assert_array_equal(back.array, label.array)
    assert back.geometry.is_close(image.geometry)
    # DICOM SEG decodes to the same label map, segment names included
    seg = read_dicom_seg(result.outputs["dicom-seg"], image, ZONES)
    np.testing.assert_array_equal(seg.array, label.array)
    # RTSTRUCT contours rasterise back onto the structures
    rt = read_rtstruct(result.outputs["rtstruct"], image, ZONES)
    for value in (1, 2, 4):
        assert dice(rt.array == value, label.array == value) >= 0.85, value
    assert sorted(p.name for p in result.outputs["mesh"].iterdir()) == [
        "01_pz.stl",
        "02_tz.stl",
        "03_dpu.stl",
        "04_afs.stl",
    ]
    with result.outputs["volumes"].open() as fh:
        rows = {int(r["label"]): r for r in csv.DictReader(fh)}
    for value in ZONES:
        expected = (label.array == value).sum() * image.geometry.voxel_volume_mm3 / 1000
        assert float(rows[value]["volume_ml"]) == pytest.approx(expected, abs=1e-4)
    assert result.outputs["overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = result.outputs["report"].read_text()
    assert "case 7_seg.nii.gz" in html and "medseg export" in html
    assert "SYNTHETIC" not in html and "SYN0001" not in html  # no patient name or ID in the report
    assert _hashes(synthetic_series.folder) | _hashes(tmp_path / "in") == before  # inputs untouched
    assert not list((tmp_path / "out").rglob("*.tmp*"))


def test_seg_converts_to_rtstruct_with_its_own_names(tmp_path: Path, synthetic_series: Series) -> None:
    label = prostate_zones(synthetic_series.image)
    seg = write_dicom_seg(label, synthetic_series.folder, tmp_path / "zones.dcm", ZONES)
    result = export_label(
        seg, synthetic_series.folder, tmp_path / "out", ExportConfig(formats=("rtstruct", "nifti"))
    )
    assert result.names == ZONES  # from the SEG's segment labels
    rt = read_rtstruct(result.outputs["rtstruct"], synthetic_series.image)
    assert rt.meta["segments"] == ZONES
    np.testing.assert_array_equal(read_volume(result.outputs["nifti"]).array, label.array)
    # and back: the RTSTRUCT as the input of a SEG
    again = export_label(
        result.outputs["rtstruct"],
        synthetic_series.folder,
        tmp_path / "again",
        ExportConfig(formats=("dicom-seg",), case_id="zones_rt"),
    )
    back = read_dicom_seg(again.outputs["dicom-seg"], synthetic_series.image, ZONES)
    assert again.names == ZONES
    assert dice(back.array == 1, label.array == 1) >= 0.85
    # Declared names are matched by name: the SEG's PZ (1) becomes value 4 when declared so.
    renumbered = {4: "PZ", 3: "TZ", 2: "DPU", 1: "AFS"}
    moved = export_label(
        seg, synthetic_series.folder, tmp_path / "moved", ExportConfig(formats=("nifti",), labels=renumbered)
    )
    assert moved.names == {1: "AFS", 2: "DPU", 3: "TZ", 4: "PZ"}
    got = read_volume(moved.outputs["nifti"]).array
    for old, name in ZONES.items():
        new = next(v for v, n in renumbered.items() if n == name)
        np.testing.assert_array_equal(got == new, label.array == old)
    with pytest.raises(ConfigError, match=r"segments \['DPU', 'AFS'\] are not among the given names"):
        export_label(seg, synthetic_series.folder, tmp_path / "bad", ExportConfig(labels={1: "PZ", 2: "TZ"}))


def test_label_on_another_grid_needs_resample(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    label = prostate_zones(image)
    fine = write_volume(_finer_copy(label), tmp_path / "fine.nrrd")
    with pytest.raises(GeometryError, match=r"fine\.nrrd.*does not lie on the grid.*shape.*--resample"):
        export_label(fine, synthetic_series.folder, tmp_path / "out", ExportConfig(formats=("nifti",)))
    assert not (tmp_path / "out").exists()
    result = export_label(
        fine,
        synthetic_series.folder,
        tmp_path / "out",
        ExportConfig(formats=("nifti", "report"), resample=True),
    )
    assert result.resampled
    back = read_volume(result.outputs["nifti"])
    assert back.geometry.is_close(image.geometry)
    np.testing.assert_array_equal(back.array, label.array)  # nearest neighbour: no new values, exact
    assert "nearest neighbour" in result.outputs["report"].read_text()


def test_image_file_and_default_names(tmp_path: Path, synthetic_series: Series) -> None:
    image_file = write_volume(synthetic_series.image, tmp_path / "t2.mha")
    label = prostate_zones(synthetic_series.image)
    label_file = write_volume(label.with_array(label.array.astype(np.float32)), tmp_path / "pred.nii.gz")
    result = export_label(label_file, image_file, tmp_path / "out", ExportConfig(labels={1: "PZ"}))
    assert set(result.outputs) == {"volumes", "overlay", "report"}  # the defaults
    assert result.names == {1: "PZ", 2: "label_2", 3: "label_3", 4: "label_4"}
    with pytest.raises(InputError, match=r"t2\.mha.*DICOM SEG and RTSTRUCT outputs need the DICOM series"):
        export_label(label_file, image_file, tmp_path / "o2", ExportConfig(formats=("dicom-seg",)))
    with pytest.raises(OutputExistsError, match=r"volumes\.csv"):
        export_label(label_file, image_file, tmp_path / "out")
    export_label(label_file, image_file, tmp_path / "out", ExportConfig(overwrite=True))


def test_bad_label_maps_are_refused(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    prob = image.with_array(np.full(image.shape, 0.25, dtype=np.float32))
    path = write_volume(prob, tmp_path / "prob.nii.gz")
    with pytest.raises(InputError, match=r"prob\.nii\.gz: is not a label map.*whole-number.*0\.25"):
        export_label(path, synthetic_series.folder, tmp_path / "out")
    negative = write_volume(image.with_array(np.full(image.shape, -1, dtype=np.int16)), tmp_path / "neg.nrrd")
    with pytest.raises(InputError, match=r"neg\.nrrd: is not a label map.*>= 0.*-1"):
        export_label(negative, synthetic_series.folder, tmp_path / "out")
    with pytest.raises(InputError, match=r"series: is a folder, not a label map"):
        export_label(synthetic_series.folder, synthetic_series.folder, tmp_path / "out")
    mr = np.random.default_rng(0).integers(0, 3000, image.shape).astype(np.int16)  # a 12-bit MR image
    swapped = write_volume(image.with_array(mr), tmp_path / "t2.nii.gz")  # LABEL and IMAGE swapped
    with pytest.raises(InputError, match=r"t2\.nii\.gz: does not look like a label map.*LABEL then IMAGE"):
        export_label(swapped, synthetic_series.folder, tmp_path / "out")
    with pytest.raises(InputError, match=r"missing\.nii\.gz: label map not found"):
        export_label(tmp_path / "missing.nii.gz", synthetic_series.folder, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"unknown output format.*probabilities"):
        ExportConfig(formats=("probabilities",))
    with pytest.raises(ConfigError, match="label values must be integers > 0"):
        ExportConfig(labels={0: "background"})
    with pytest.raises(ConfigError, match="mesh format must be one of stl, obj, ply, found 'xyz'"):
        ExportConfig(formats=("mesh",), mesh_suffix=".xyz")
    label = write_volume(prostate_zones(image), tmp_path / "zones.nii.gz")
    with pytest.raises(InputError, match="the nifti output would replace an input"):
        export_label(
            label, synthetic_series.folder, tmp_path, ExportConfig(formats=("nifti",), overwrite=True)
        )
    (tmp_path / "a_file").write_text("")
    with pytest.raises(InputError, match="a_file: is a file, not an output folder"):
        export_label(label, synthetic_series.folder, tmp_path / "a_file")


def test_empty_label_map_skips_dicom_outputs(tmp_path: Path, synthetic_series: Series) -> None:
    empty = synthetic_series.image.with_array(np.zeros(synthetic_series.image.shape, np.uint8))
    path = write_volume(empty, tmp_path / "empty.nii.gz")
    result = export_label(
        path, synthetic_series.folder, tmp_path / "out", ExportConfig(formats=("dicom-seg", "volumes"))
    )
    assert set(result.outputs) == {"volumes"}
    assert not (tmp_path / "out" / "empty" / "seg.dcm").exists()


def test_cli(tmp_path: Path, synthetic_series: Series) -> None:
    label = prostate_zones(synthetic_series.image)
    path = write_volume(label, tmp_path / "zones.nii.gz")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "export", str(path), str(synthetic_series.folder), "-o", str(tmp_path / "out"),
            "-f", "dicom-seg,mesh", "--labels", "PZ=1,TZ=2,DPU=3,AFS=4", "--mesh-format", "ply",
            "--algorithm-name", "nnU-Net", "--algorithm-version", "2.5.1",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1=PZ, 2=TZ, 3=DPU, 4=AFS" in res.stdout
    assert "segments marked all AUTOMATIC by nnU-Net 2.5.1 (default for a label map that declares none" in (
        res.stdout.replace("\n", " ")
    )
    assert (tmp_path / "out" / "zones" / "meshes" / "02_tz.ply").is_file()
    assert "meshes" in res.stderr and "4/4" in res.stderr  # a progress bar over the 4 zones' meshes
    seg = read_dicom_seg(tmp_path / "out" / "zones" / "seg.dcm", synthetic_series.image, ZONES)
    np.testing.assert_array_equal(seg.array, label.array)
    again = runner.invoke(
        app, ["export", str(path), str(synthetic_series.folder), "-o", str(tmp_path / "out")]
    )
    assert again.exit_code == 0  # other formats: nothing exists yet
    res = runner.invoke(
        app, ["export", str(path), str(synthetic_series.folder), "-o", str(tmp_path / "out"), "-f", "mesh"]
    )
    assert res.exit_code == 2 and "output exists" in res.stderr and "--overwrite" in res.stderr


def test_cli_quiet_shows_warnings_but_no_progress_or_info(
    tmp_path: Path, synthetic_series: Series, caplog: pytest.LogCaptureFixture
) -> None:
    """export -q (as predict/train/crossval): no progress bar, no INFO log lines, no table; a
    warning (here the thin zone's mesh) still shows, and one final line says where the outputs are."""
    import logging

    label = prostate_zones(synthetic_series.image)
    path = write_volume(label, tmp_path / "zones.nii.gz")
    args = ["export", str(path), str(synthetic_series.folder), "-f", "dicom-seg,mesh", "--labels",
            "PZ=1,TZ=2,DPU=3,AFS=4", "--algorithm-name", "nnU-Net"]  # fmt: skip
    with caplog.at_level("INFO"):
        loud = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    assert any(r.levelno == logging.INFO and r.name.startswith("medseg") for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO"):
        res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "zones" / "seg.dcm").is_file()
    assert "4/4" not in res.stderr and "meshes" not in res.stderr  # no progress bar
    medseg_records = [r for r in caplog.records if r.name.startswith("medseg")]
    assert medseg_records and all(r.levelno >= logging.WARNING for r in medseg_records)
    assert any("mesh volume kept" in r.getMessage() for r in medseg_records)
    assert " ".join(res.stdout.split()) == f"case zones: 2 output(s) in {tmp_path / 'out'}"
    assert logging.getLogger("medseg").level == logging.NOTSET  # restored after the command


def test_third_party_seg_on_real_ct(tmp_path: Path, shared_data: Path) -> None:
    """dcmqi's liver SEG on its real 3-slice CT (file order running down in z): to NIfTI equal to
    dcmqi's own NRRD, and to an RTSTRUCT whose contours rasterise back onto it."""
    root = shared_data / "dcmqi_seg" / "segmentations"
    result = export_label(
        root / "liver.dcm", root / "ct-3slice", tmp_path / "out", ExportConfig(formats=("nifti", "rtstruct"))
    )
    assert result.names == {1: "Liver"}
    expected = read_volume(root / "liver_seg.nrrd")
    got = read_volume(result.outputs["nifti"])
    assert got.geometry.is_close(expected.geometry)
    np.testing.assert_array_equal(got.array, expected.array)
    image = read_volume(root / "ct-3slice")
    rt = read_rtstruct(result.outputs["rtstruct"], image)
    assert rt.meta["segments"] == {1: "Liver"}
    assert dice(rt.array == 1, expected.array == 1) >= 0.98


def test_real_tilted_prostatex_series(tmp_path: Path, prostatex_t2: Series) -> None:
    """A NIfTI label map on the real PROSTATEx T2 (tilted 18.5 degrees) becomes a SEG on that series."""
    label = prostate_zones(prostatex_t2.image)
    path = write_volume(label, tmp_path / "zones.nii.gz")
    result = export_label(
        path,
        prostatex_t2.folder,
        tmp_path / "out",
        ExportConfig(formats=("dicom-seg", "volumes"), labels=ZONES, algorithm_type="manual"),
    )
    seg = read_dicom_seg(result.outputs["dicom-seg"], prostatex_t2.image, ZONES)
    np.testing.assert_array_equal(seg.array, label.array)


def test_deidentified_export_references_the_deidentified_series(tmp_path: Path, shared_data: Path) -> None:
    """`export --deidentify --uid-secret K` of a label map on the real PROSTATEx T2 (a copy given
    a patient name, ID and birth date) writes a SEG and an RTSTRUCT that reference exactly the
    series `convert --deidentify --uid-secret K` made of it, hold none of its identifiers, and
    still read back with highdicom and rt-utils on that de-identified series."""
    from rt_utils import RTStructBuilder

    original = identified_prostatex_t2(shared_data, tmp_path / "t2")
    image = read_volume(original)
    label = prostate_zones(image)
    path = write_volume(label, tmp_path / "zones.nii.gz")
    key = ["--deidentify", "--pseudonym", "SUBJ001", "--uid-secret", "project-key"]
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(original), str(tmp_path / "deid"), "--to", "dicom", *key])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        ["export", str(path), str(original), "-o", str(out), "-f", "dicom-seg,rtstruct,volumes",
         "--labels", "PZ=1,TZ=2,DPU=3,AFS=4", "--algorithm-type", "manual", *key],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "changes DICOM output only (dicom-seg, rtstruct)" in res.stdout.replace("\n", " ")
    assert "no --uid-secret" not in res.stdout
    for name in ("seg.dcm", "rtstruct.dcm"):
        assert_references_deidentified_copy(out / "zones" / name, original, tmp_path / "deid")
    deid = read_volume(tmp_path / "deid")
    seg = hd.seg.segread(out / "zones" / "seg.dcm")
    assert str(seg.PatientID) == "SUBJ001" and seg.ContentDate and seg.DeviceSerialNumber  # type 1 kept
    np.testing.assert_array_equal(read_dicom_seg(out / "zones" / "seg.dcm", deid, ZONES).array, label.array)
    rt = RTStructBuilder.create_from(
        dicom_series_path=str(tmp_path / "deid"), rt_struct_path=str(out / "zones" / "rtstruct.dcm")
    )
    assert sorted(rt.get_roi_names()) == sorted(ZONES.values())
    assert dice(read_rtstruct(out / "zones" / "rtstruct.dcm", deid, ZONES).array == 1, label.array == 1) > 0.9
    # the volume table names the de-identified study and series, never the originals
    first = pydicom.dcmread(next((tmp_path / "deid").glob("*.dcm")), stop_before_pixels=True)
    with (out / "zones" / "volumes.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["study_uid"], r["series_uid"]) for r in rows} == {
        (str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    }
    for table in ("volumes.csv", "volumes.json"):
        text = (out / "zones" / table).read_text()
        assert not any(v in text for v in IDENTIFIERS.values())
        assert str(pydicom.dcmread(next(original.glob("*.dcm"))).StudyInstanceUID) not in text
    # --pseudonym auto: export names the patient as convert does with the same key, not SUBJ001
    auto = ["--deidentify", "--pseudonym", "auto", "--uid-secret", "project-key"]
    res = runner.invoke(app, ["convert", str(original), str(tmp_path / "deid_auto"), "--to", "dicom", *auto])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        ["export", str(path), str(original), "-o", str(tmp_path / "auto"), "-f", "dicom-seg,rtstruct",
         "--labels", "PZ=1,TZ=2,DPU=3,AFS=4", "--algorithm-type", "manual", *auto],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    for name in ("seg.dcm", "rtstruct.dcm"):
        assert_references_deidentified_copy(
            tmp_path / "auto" / "zones" / name, original, tmp_path / "deid_auto"
        )
    assert str(pydicom.dcmread(tmp_path / "auto" / "zones" / "seg.dcm").PatientID).startswith("ANON-")
    # --pseudonym-map: the patient's row names it
    table = tmp_path / "map.csv"
    table.write_text(f"PatientID,pseudonym\n{IDENTIFIERS['PatientID']},SUBJ-7\n")
    res = runner.invoke(
        app,
        ["export", str(path), str(original), "-o", str(tmp_path / "mapped"), "-f", "dicom-seg",
         "--labels", "PZ=1,TZ=2,DPU=3,AFS=4", "--algorithm-type", "manual", "--deidentify",
         "--pseudonym-map", str(table), "--uid-secret", "project-key"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert pydicom.dcmread(tmp_path / "mapped" / "zones" / "seg.dcm").PatientID == "SUBJ-7"
    # the input series is not changed
    assert all(pydicom.dcmread(f).PatientID == IDENTIFIERS["PatientID"] for f in original.glob("*.dcm"))


def test_deidentify_options_without_deidentify_are_refused() -> None:
    """A pseudonym or UID secret without --deidentify would leave the patient's own name and
    UIDs in the SEG while the caller believes them replaced."""
    with pytest.raises(ConfigError, match="only apply with --deidentify"):
        ExportConfig(formats=("dicom-seg",), pseudonym="SUBJ001")
    with pytest.raises(ConfigError, match="only apply with --deidentify"):
        ExportConfig(formats=("dicom-seg",), uid_secret="k")
    with pytest.raises(ConfigError, match="1 to 64 characters"):
        ExportConfig(formats=("dicom-seg",), deidentify=True, pseudonym="")


def test_png_label_on_a_png_or_nifti_image_with_the_default_formats(tmp_path: Path) -> None:
    """A 2D PNG pair: the label takes the image's grid (it carries none), and the default
    outputs (volumes, overlay, report) work on a single slice."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = (rng.random((40, 52)) * 200).astype(np.uint8)
    mask = np.zeros((40, 52), np.uint8)
    mask[10:25, 12:30] = 1
    Image.fromarray(pixels).save(tmp_path / "em.png")
    Image.fromarray(mask).save(tmp_path / "em_mask.png")
    spacing = (1.0, 0.5, 0.25)
    result = export_label(
        tmp_path / "em_mask.png", tmp_path / "em.png", tmp_path / "out", ExportConfig(spacing=spacing)
    )
    assert set(result.outputs) == {"volumes", "overlay", "report"}
    with result.outputs["volumes"].open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["volume_ml"]) == pytest.approx(15 * 18 * 0.5 * 0.25 * 1.0 / 1000, abs=1e-4)
    # On a NIfTI image with a real (oblique) grid: the PNG takes that grid.
    image = Volume(pixels[None].astype(np.int16), (2.0, 0.7, 0.6), (10.0, -5.0, 3.0), oblique_direction())
    nifti = write_volume(image, tmp_path / "em.nii.gz")
    placed = export_label(
        tmp_path / "em_mask.png", nifti, tmp_path / "out2", ExportConfig(formats=("nifti",))
    )
    back = read_volume(placed.outputs["nifti"])
    assert back.geometry.is_close(image.geometry) and int(back.array.sum()) == int(mask.sum())
    Image.fromarray(mask[:30]).save(tmp_path / "short.png")
    with pytest.raises(GeometryError, match=r"short\.png: a PNG/TIFF label map carries no position"):
        export_label(tmp_path / "short.png", nifti, tmp_path / "out3")


def _seg_kinds(path: Path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {str(s.SegmentLabel): str(s.SegmentAlgorithmType) for s in ds.SegmentSequence}


def _seg_algorithm(path: Path) -> dict[str, tuple[str, str, str] | None]:
    """Each segment's (name, version, family code) as a viewer reads them, None when it names none."""
    seg = hd.seg.segread(path)
    named: dict[str, tuple[str, str, str] | None] = {}
    for n in seg.segment_numbers:
        desc = seg.get_segment_description(n)
        ident = desc.algorithm_identification
        if ident is None:
            assert "SegmentAlgorithmName" not in desc
            named[desc.segment_label] = None
        else:
            assert desc.SegmentAlgorithmName == ident[0].AlgorithmName
            family = ident[0].AlgorithmFamilyCodeSequence[0].CodeValue
            named[desc.segment_label] = (
                str(ident[0].AlgorithmName),
                str(ident[0].AlgorithmVersion),
                str(family),
            )
    return named


def _rt_kinds(path: Path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {str(r.ROIName): str(r.ROIGenerationAlgorithm) for r in ds.StructureSetROISequence}


@pytest.mark.parametrize("kind", ["manual", "semiautomatic", "automatic"])
def test_cli_algorithm_type_marks_seg_and_rtstruct(
    tmp_path: Path, synthetic_series: Series, kind: str
) -> None:
    label = prostate_zones(synthetic_series.image)
    path = write_volume(label, tmp_path / "corrected.nii.gz")
    res = CliRunner().invoke(
        app,
        [
            "export", str(path), str(synthetic_series.folder), "-o", str(tmp_path / "out"),
            "-f", "dicom-seg,rtstruct", "--labels", "PZ=1,TZ=2,DPU=3,AFS=4", "--algorithm-type", kind.upper(),
            *([] if kind == "manual" else ["--algorithm-name", "MONAI Label"]),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    said = " ".join(res.stdout.split())
    if kind == "manual":
        assert "segments marked all MANUAL (--algorithm-type)" in said
    else:
        assert (
            f"segments marked all {kind.upper()} by MONAI Label (--algorithm-type; algorithm: --algorithm-name)"
            in said
        )
    case = tmp_path / "out" / "corrected"
    assert _seg_kinds(case / "seg.dcm") == dict.fromkeys(ZONES.values(), kind.upper())
    assert _rt_kinds(case / "rtstruct.dcm") == dict.fromkeys(ZONES.values(), kind.upper())
    named = {_seg_algorithm(case / "seg.dcm")[name] for name in ZONES.values()}
    assert named == ({None} if kind == "manual" else {("MONAI Label", "unknown", "123110")})
    seg = read_dicom_seg(case / "seg.dcm", synthetic_series.image, ZONES)
    np.testing.assert_array_equal(seg.array, label.array)  # still voxel-exact


def test_default_algorithm_type_automatic_or_the_label_files_own(
    tmp_path: Path, synthetic_series: Series
) -> None:
    label = prostate_zones(synthetic_series.image)
    nifti = write_volume(label, tmp_path / "zones.nii.gz")
    plain = export_label(
        nifti, synthetic_series.folder, tmp_path / "plain", ExportConfig(formats=("rtstruct",), labels=ZONES)
    )
    assert _rt_kinds(plain.outputs["rtstruct"]) == dict.fromkeys(ZONES.values(), "AUTOMATIC")
    assert plain.algorithm_types == dict.fromkeys(ZONES, "automatic") and plain.types_from == "default"
    # ... made by an algorithm nothing names: the RTSTRUCT (where it is optional) names none, not medseg
    rois = pydicom.dcmread(plain.outputs["rtstruct"]).StructureSetROISequence
    assert not any(
        "ROIDerivationAlgorithmIdentificationSequence" in r or "ROIGenerationDescription" in r for r in rois
    )
    # A SEG converted to an RTSTRUCT (and back) keeps how each segment was made and by what...
    kinds = {1: "manual", 2: "semiautomatic", 3: "automatic", 4: "manual"}
    tool = AlgorithmId("TotalSegmentator", "2.4")
    seg = write_dicom_seg(
        label, synthetic_series.folder, tmp_path / "mixed.dcm", ZONES, algorithm_type=kinds, algorithm=tool
    )
    rt = export_label(seg, synthetic_series.folder, tmp_path / "rt", ExportConfig(formats=("rtstruct",)))
    expected = {"PZ": "MANUAL", "TZ": "SEMIAUTOMATIC", "DPU": "AUTOMATIC", "AFS": "MANUAL"}
    assert _rt_kinds(rt.outputs["rtstruct"]) == expected and rt.algorithm_types == kinds
    assert rt.algorithms == {2: tool, 3: tool} and rt.types_from == "label file"
    back = export_label(
        rt.outputs["rtstruct"],
        synthetic_series.folder,
        tmp_path / "back",
        ExportConfig(formats=("dicom-seg",)),
    )
    assert _seg_kinds(back.outputs["dicom-seg"]) == expected
    made = ("TotalSegmentator", "2.4", "123110")
    assert _seg_algorithm(back.outputs["dicom-seg"]) == {"PZ": None, "TZ": made, "DPU": made, "AFS": None}
    # ... unless told otherwise.
    told = export_label(
        seg,
        synthetic_series.folder,
        tmp_path / "told",
        ExportConfig(formats=("rtstruct", "report"), algorithm_type="semiautomatic"),
    )
    assert _rt_kinds(told.outputs["rtstruct"]) == dict.fromkeys(ZONES.values(), "SEMIAUTOMATIC")
    assert "semiautomatic" in told.outputs["report"].read_text()
    assert ExportConfig(algorithm_type="MANUAL").algorithm_type == "manual"
    with pytest.raises(ConfigError, match=r"algorithm type must be one of automatic, semiautomatic, manual"):
        ExportConfig(algorithm_type="auto")


def test_a_seg_naming_another_tool_keeps_it_through_export(tmp_path: Path, synthetic_series: Series) -> None:
    """The reviewer's case: a SEMIAUTOMATIC SEG naming TotalSegmentator 2.4, exported with -f dicom-seg,
    came out naming medseg. It must keep its algorithm, in the SEG and in the RTSTRUCT."""
    label = prostate_zones(synthetic_series.image)
    tool = AlgorithmId("TotalSegmentator", "2.4", ("123111", "DCM", "Deformable Models"))
    seg = write_dicom_seg(
        label,
        synthetic_series.folder,
        tmp_path / "ts.dcm",
        ZONES,
        algorithm_type="semiautomatic",
        algorithm=tool,
    )
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "export",
            str(seg),
            str(synthetic_series.folder),
            "-o",
            str(tmp_path / "out"),
            "-f",
            "dicom-seg,rtstruct",
        ],
    )
    assert res.exit_code == 0, res.output
    said = " ".join(res.stdout.split())
    assert "segments marked all SEMIAUTOMATIC by TotalSegmentator 2.4 (as ts.dcm declares)" in said
    assert "--algorithm-type" not in said
    out = tmp_path / "out" / "ts"
    assert _seg_kinds(out / "seg.dcm") == dict.fromkeys(ZONES.values(), "SEMIAUTOMATIC")
    assert _seg_algorithm(out / "seg.dcm") == dict.fromkeys(
        ZONES.values(), ("TotalSegmentator", "2.4", "123111")
    )
    assert "medseg" not in hd.seg.segread(out / "seg.dcm").ContentDescription
    np.testing.assert_array_equal(
        read_dicom_seg(out / "seg.dcm", synthetic_series.image, ZONES).array, label.array
    )
    rois = pydicom.dcmread(out / "rtstruct.dcm").StructureSetROISequence
    assert {str(r.ROIGenerationDescription) for r in rois} == {"TotalSegmentator 2.4"}
    assert {str(r.ROIDerivationAlgorithmIdentificationSequence[0].AlgorithmName) for r in rois} == {
        "TotalSegmentator"
    }
    # An RTSTRUCT's own ROI Generation Description is carried to the RTSTRUCT it becomes.
    ds = pydicom.dcmread(out / "rtstruct.dcm")
    ds.StructureSetROISequence[0].ROIGenerationDescription = "TS 2.4, PZ edited by hand"
    ds.save_as(tmp_path / "edited.dcm")
    again = export_label(
        tmp_path / "edited.dcm",
        synthetic_series.folder,
        tmp_path / "again",
        ExportConfig(formats=("rtstruct",)),
    )
    described = {
        str(r.ROIName): str(r.ROIGenerationDescription)
        for r in pydicom.dcmread(again.outputs["rtstruct"]).StructureSetROISequence
    }
    assert described["PZ"] == "TS 2.4, PZ edited by hand" and described["TZ"] == "TotalSegmentator 2.4"
    # --algorithm-type automatic overrides the declared type (said so), --algorithm-name the tool.
    res = runner.invoke(
        app,
        [
            "export", str(seg), str(synthetic_series.folder), "-o", str(tmp_path / "told"), "-f", "dicom-seg",
            "--algorithm-type", "automatic", "--algorithm-name", "TotalSegmentator", "--algorithm-version", "2.5",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        "all AUTOMATIC by TotalSegmentator 2.5 (--algorithm-type; algorithm: --algorithm-name)"
        in " ".join(res.stdout.split())
    )
    assert set(_seg_algorithm(tmp_path / "told" / "ts" / "seg.dcm").values()) == {
        ("TotalSegmentator", "2.5", "123110")
    }


def test_a_seg_of_a_label_map_that_names_no_algorithm_is_refused(
    tmp_path: Path, synthetic_series: Series
) -> None:
    """A NIfTI says nothing of who made it: medseg will not write itself (or 'unknown') as the
    algorithm of a DICOM SEG; the user names the tool or declares the segments manual."""
    label = prostate_zones(synthetic_series.image)
    nifti = write_volume(label, tmp_path / "zones.nii.gz")
    res = CliRunner().invoke(
        app,
        [
            "export",
            str(nifti),
            str(synthetic_series.folder),
            "-o",
            str(tmp_path / "out"),
            "-f",
            "dicom-seg,volumes",
        ],
    )
    assert res.exit_code == 2
    err = " ".join(res.stderr.split())
    assert "a DICOM SEG must name the algorithm" in err and "--algorithm-name NAME" in err
    assert "--algorithm-type manual" in err and "nothing in zones.nii.gz says how it was made" in err
    assert not (tmp_path / "out" / "zones").exists()  # refused before anything was written
    semi = ExportConfig(formats=("dicom-seg",), algorithm_type="semiautomatic", labels=ZONES)
    with pytest.raises(
        ConfigError,
        match=r"nothing names it for PZ, TZ, DPU, AFS \(marked all semiautomatic, --algorithm-type\)",
    ):
        export_label(nifti, synthetic_series.folder, tmp_path / "out", semi)
    # Options are checked where they are given.
    with pytest.raises(ConfigError, match=r"algorithm_version need algorithm_name"):
        ExportConfig(algorithm_version="2.4")
    with pytest.raises(ConfigError, match=r"manual segments name none"):
        ExportConfig(algorithm_type="manual", algorithm_name="TotalSegmentator")
    with pytest.raises(ConfigError, match=r"algorithm name must be 1 to 64 characters"):
        ExportConfig(algorithm_name="x" * 65)
    with pytest.raises(ConfigError, match=r"algorithm family must be one of artificial intelligence"):
        ExportConfig(algorithm_name="GrowCut", algorithm_family="region growing")
    assert ExportConfig(
        algorithm_name=" GrowCut ", algorithm_family="Cluster Analysis"
    ).algorithm == AlgorithmId("GrowCut", "unknown", ("123107", "DCM", "Cluster Analysis"))


def _uids(series: Series) -> tuple[str, str]:
    ds = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def test_volume_tables_name_the_source_series(tmp_path: Path, synthetic_series: Series) -> None:
    from medseg.export.volumes import write_cohort_volumes

    image = synthetic_series.image
    label = prostate_zones(image)
    study, series = _uids(synthetic_series)
    out = tmp_path / "out"
    nifti_label = write_volume(label, tmp_path / "in" / "dicom_case.nii.gz")
    export_label(nifti_label, synthetic_series.folder, out, ExportConfig(formats=("volumes",), labels=ZONES))
    # The same scan as NIfTI (no UIDs there), as `medseg convert` would have written it.
    nifti_image = write_volume(image, tmp_path / "in" / "scan.nii.gz")
    other = write_volume(label, tmp_path / "in" / "nifti_case.nii.gz")
    export_label(other, nifti_image, out, ExportConfig(formats=("volumes",), labels=ZONES))
    with (out / "dicom_case" / "volumes.csv").open() as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == 4 and {(r["study_uid"], r["series_uid"]) for r in per_case} == {(study, series)}
    doc = json.loads((out / "dicom_case" / "volumes.json").read_text())
    assert doc["source"] == {"study_uid": study, "series_uid": series}
    table = write_cohort_volumes(out)
    assert table == out / "cohort_volumes.csv"
    with table.open() as fh:
        reader = csv.DictReader(fh)
        rows = {r["case"]: r for r in reader}
    assert reader.fieldnames == [
        "case",
        "PZ_ml",
        "TZ_ml",
        "DPU_ml",
        "AFS_ml",
        "status",
        "study_uid",
        "series_uid",
    ]
    assert (rows["dicom_case"]["study_uid"], rows["dicom_case"]["series_uid"]) == (study, series)
    assert (rows["nifti_case"]["study_uid"], rows["nifti_case"]["series_uid"]) == ("", "")
    for r in per_case:
        assert (
            rows["dicom_case"][f"{r['name']}_ml"] == rows["nifti_case"][f"{r['name']}_ml"] == r["volume_ml"]
        )
    text = table.read_text() + (out / "dicom_case" / "volumes.csv").read_text()
    assert "SYN0001" not in text and "SYNTHETIC" not in text  # UIDs, never the patient


def test_volumes_without_regions_drop_a_region_table_left_by_an_earlier_region_model(tmp_path: Path) -> None:
    """A case written again (--overwrite) by a model without regions: the region_volumes.csv of
    the earlier region model would describe another segmentation and still enter the cohort
    table's region columns, so it goes with the volumes it belonged to."""
    from medseg.export.case import case_targets, write_case_outputs
    from medseg.export.volumes import write_cohort_volumes
    from tests.conftest import make_oblique_volume

    image = make_oblique_volume(shape=(4, 6, 5))
    arr = np.zeros(image.shape, np.uint8)
    arr[1:3, 1:4, 1:4] = 1
    label = image.with_array(arr)
    out = tmp_path / "out"
    targets = case_targets("c", out, ("volumes",))
    regions = {"whole": arr > 0}
    write_case_outputs(image, label, {1: "a"}, targets, regions=regions, case_id="c")
    assert (out / "c" / "region_volumes.csv").is_file()
    assert "region/whole_ml" in write_cohort_volumes(out).read_text()  # type: ignore[union-attr]
    write_case_outputs(image, label, {1: "a"}, targets, overwrite=True, case_id="c")
    assert not (out / "c" / "region_volumes.csv").exists()
    assert "region/" not in write_cohort_volumes(out).read_text()  # type: ignore[union-attr]


def test_mesh_warnings_name_the_final_files_not_the_temporary_folder(
    tmp_path: Path, synthetic_series: Series, caplog: pytest.LogCaptureFixture
) -> None:
    """The meshes are written into a temporary folder renamed when complete; the warnings named
    files in it ('out/zones/.meshes.nkgsr5ov.tmp/04_afs.stl'), which no longer exist after."""
    label = prostate_zones(synthetic_series.image)
    path = write_volume(label, tmp_path / "zones.nii.gz")
    args = ["export", str(path), str(synthetic_series.folder), "-f", "mesh", "--labels",
            "PZ=1,TZ=2,DPU=3,AFS=4", "-o", str(tmp_path / "out")]  # fmt: skip
    with caplog.at_level("WARNING", logger="medseg.export.mesh"):
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    messages = [r.getMessage() for r in caplog.records]
    final = tmp_path / "out" / "zones" / "meshes" / "04_afs.stl"
    assert final.is_file()
    assert any(m.startswith(f"{final}: mesh volume kept") for m in messages), messages
    assert not any(".tmp" in m for m in messages), messages


def test_a_mistyped_format_is_answered_with_the_likely_one() -> None:
    """'-f dicom_seg,stl' listed the choices but not which one was meant."""
    from medseg.export.case import check_formats

    with pytest.raises(ConfigError) as info:
        check_formats(["dicom_seg", "stl", "rt-struct", "volume", "foo", "nifti"])
    message = str(info.value)
    assert message.startswith("unknown output format(s) ['dicom_seg', 'stl', 'rt-struct', 'volume', 'foo']")
    assert message.endswith(
        "(did you mean dicom-seg for 'dicom_seg', mesh for 'stl', rtstruct for 'rt-struct', volumes for 'volume'?)"
    )
    with pytest.raises(ConfigError) as info:
        check_formats(["foo"])
    assert "did you mean" not in str(info.value)


def test_a_baseline_label_map_is_named_by_its_baseline_record(
    tmp_path: Path, synthetic_series: Series, caplog: pytest.LogCaptureFixture
) -> None:
    """`medseg baseline` writes <output>.baseline.json beside its label map: export names the
    baseline as the algorithm (no --algorithm-name needed), SEMIAUTOMATIC for seeded methods."""
    otsu = tmp_path / "otsu.nii.gz"
    res = CliRunner().invoke(app, ["baseline", "otsu", str(synthetic_series.folder), "-o", str(otsu)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app,
        [
            "export",
            str(otsu),
            str(synthetic_series.folder),
            "-o",
            str(tmp_path / "out"),
            "-f",
            "dicom-seg,report",
        ],
    )
    assert res.exit_code == 0, res.output
    seg = tmp_path / "out" / "otsu" / "seg.dcm"
    version = json.loads((tmp_path / "otsu.baseline.json").read_text())["medseg_version"]
    assert set(_seg_kinds(seg).values()) == {"AUTOMATIC"}
    assert set(_seg_algorithm(seg).values()) == {("medseg baseline otsu", version, "123105")}
    assert "medseg baseline otsu" in (tmp_path / "out" / "otsu" / "report.html").read_text()

    label = prostate_zones(synthetic_series.image)
    nifti = write_volume(label, tmp_path / "zones.nii.gz")
    record = tmp_path / "zones.baseline.json"
    seg_only = ExportConfig(formats=("dicom-seg",), labels=ZONES, overwrite=True)
    for method, markers, kind in (
        ("watershed", "seeds", "semiautomatic"),
        ("watershed", "volume", "semiautomatic"),
        ("watershed", "thresholds", "automatic"),
        ("region-grow", None, "semiautomatic"),
        ("kmeans", None, "automatic"),
    ):
        doc = {"medseg_version": "9.9", "output": nifti.name, "method": method}
        record.write_text(json.dumps(doc | ({"markers": markers} if markers else {})))
        res_ = export_label(nifti, synthetic_series.folder, tmp_path / "z", seg_only)
        assert res_.algorithm_types == dict.fromkeys(ZONES, kind) and res_.types_from == "baseline record"
        assert {a.name for a in res_.algorithms.values()} == {f"medseg baseline {method}"}
        assert _seg_kinds(res_.outputs["dicom-seg"]) == dict.fromkeys(ZONES.values(), kind.upper())
    # Explicit options win over the record.
    told = export_label(
        nifti,
        synthetic_series.folder,
        tmp_path / "z",
        ExportConfig(formats=("dicom-seg",), labels=ZONES, overwrite=True, algorithm_name="GrowCut"),
    )
    assert {a.name for a in told.algorithms.values()} == {"GrowCut"}
    assert told.algorithm_types == dict.fromkeys(ZONES, "automatic")  # the kmeans record's type
    manual = ExportConfig(formats=("dicom-seg",), labels=ZONES, overwrite=True, algorithm_type="manual")
    assert export_label(nifti, synthetic_series.folder, tmp_path / "z", manual).algorithms == {}
    # A record of another file is not used, and says so.
    record.write_text(json.dumps({"method": "otsu", "output": "other.nii.gz"}))
    with caplog.at_level("WARNING"), pytest.raises(ConfigError, match="a DICOM SEG must name the algorithm"):
        export_label(nifti, synthetic_series.folder, tmp_path / "z", seg_only)
    assert "zones.baseline.json: not used: it records how other.nii.gz was made" in caplog.text


def test_a_series_without_uids_gets_every_format_but_its_dicom_ones(tmp_path: Path) -> None:
    """`medseg export` of a label map on a series whose UIDs were blanked (TotalSegmentator's
    example CT) failed whole on the first DICOM format, after writing whatever came before it
    and listing nothing. Now, as `medseg predict`, it writes every other format, lists
    dicom-seg/rtstruct as not written with file / expected / found, and exits 1; a run without
    them completes the case."""
    write_blank_uid_cohort(tmp_path / "cohort")
    series = tmp_path / "cohort" / "blank"
    image = read_volume(series)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[2:6, 10:20, 8:18] = 1
    label_file = write_volume(image.with_array(label), tmp_path / "in" / "blank_seg.nii.gz")
    out = tmp_path / "out"
    formats = ("nifti", "dicom-seg", "volumes", "rtstruct", "report")
    cfg = ExportConfig(formats=formats, algorithm_name="TotalSegmentator")
    result = export_label(label_file, series, out, cfg)
    assert not result.ok and sorted(result.outputs) == ["nifti", "report", "volumes"]
    assert sorted(result.not_written) == ["dicom-seg", "rtstruct"]
    reason = result.not_written["dicom-seg"]
    assert "cannot be referenced by a DICOM SEG or RTSTRUCT" in reason and str(series) in reason
    assert "found empty or missing SOPClassUID" in reason
    np.testing.assert_array_equal(read_volume(result.outputs["nifti"]).array, label)
    assert not list(out.rglob("*.dcm"))
    # the CLI: the other formats written, the DICOM ones listed with the reason, exit 1
    args = ["export", str(label_file), str(series), "-o", str(tmp_path / "cli"), "--algorithm-name", "X"]
    res = CliRunner().invoke(app, [*args, "-f", "volumes,rtstruct", "-q"])
    assert res.exit_code == 1, res.output
    assert "not written: rtstruct" in res.output and "empty or missing" in res.output
    assert (tmp_path / "cli" / "blank_seg" / "volumes.csv").is_file()
    assert not (tmp_path / "cli" / "blank_seg" / "rtstruct.dcm").exists()
    # only DICOM formats asked for: nothing to write, the same error as before (exit 2)
    res = CliRunner().invoke(app, [*args, "-f", "rtstruct", "--overwrite"])
    assert res.exit_code == 2 and "cannot be referenced" in res.output, res.output
    # without them the case completes
    res = CliRunner().invoke(app, [*args, "-f", "volumes,overlay", "--overwrite"])
    assert res.exit_code == 0, res.output
    # the good copy of the series gets its DICOM outputs
    good = export_label(label_file, tmp_path / "cohort" / "good", tmp_path / "good", cfg)
    assert good.ok and sorted(good.outputs) == sorted(formats)


def test_pseudonym_auto_of_a_series_without_a_patient_id_writes_all_but_dicom(tmp_path: Path) -> None:
    """--pseudonym auto derives the pseudonym from the PatientID: a series without one cannot
    give a de-identified SEG (every such patient would get one pseudonym). As for a series
    without UIDs, the other formats are written and the DICOM ones listed with the reason."""
    from medseg.io.dicom import write_dicom_series

    vol = make_oblique_volume(dtype=np.int16)
    write_dicom_series(vol, tmp_path / "series")  # no reference: an empty PatientID
    label = np.zeros(vol.shape, dtype=np.uint8)
    label[2:6, 10:20, 8:18] = 1
    label_file = write_volume(vol.with_array(label), tmp_path / "in" / "case.nii.gz")
    cfg = ExportConfig(formats=("volumes", "dicom-seg"), deidentify=True, pseudonym="auto", uid_secret="k")
    result = export_label(label_file, tmp_path / "series", tmp_path / "out", cfg)
    assert not result.ok and sorted(result.outputs) == ["volumes"]
    assert "has no PatientID to derive --pseudonym auto from" in result.not_written["dicom-seg"]
    assert not list((tmp_path / "out").rglob("*.dcm"))
    only = ExportConfig(formats=("dicom-seg",), deidentify=True, pseudonym="auto", uid_secret="k")
    with pytest.raises(InputError, match="expected a PatientID, or --pseudonym NAME"):
        export_label(label_file, tmp_path / "series", tmp_path / "only", only)


def test_totalsegmentators_example_ct_without_uids_exports_all_but_dicom(
    tmp_path: Path, shared_data: Path
) -> None:
    """The real case: TotalSegmentator's example segmentation on its example CT DICOM (blank
    SOP/Study/Series UIDs; the segmentation's NIfTI lies mirrored, so --resample)."""
    root = shared_data / "totalseg_examples"
    if not (root / "example_ct_dicom").is_dir() or not (root / "example_seg_dicom.nii.gz").is_file():
        pytest.skip(f"TotalSegmentator's example CT DICOM and its segmentation not found under {root}")
    cfg = ExportConfig(formats=("volumes", "rtstruct"), resample=True)
    result = export_label(root / "example_seg_dicom.nii.gz", root / "example_ct_dicom", tmp_path, cfg)
    assert not result.ok and list(result.outputs) == ["volumes"] and list(result.not_written) == ["rtstruct"]
    assert "empty or missing SOPClassUID, SOPInstanceUID" in result.not_written["rtstruct"]
    with (tmp_path / "example_seg_dicom" / "volumes.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) >= 1
