from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from medseg.cli import app
from medseg.geometry.roi import compute_roi, default_roi_json_path
from medseg.io import read_volume, write_volume
from medseg.volume import Volume
from tests.geometry.test_roi import BOX_CASE_ANSWER, _box_case, _transformed

runner = CliRunner()


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, Path, Path, list[Volume]]:
    """The three-box study of test_roi, rotated and shifted (oblique, non-zero origin), as NIfTI."""
    rot = Rotation.from_euler("xyz", (17.0, -9.0, 23.0), degrees=True).as_matrix()
    vols = [_transformed(v, rot, np.array([-31.5, 12.25, 80.0])) for v in _box_case()]
    paths = []
    for name, vol in zip(("tra", "sag", "cor"), vols, strict=True):
        paths.append(write_volume(vol, tmp_path / f"{name}.nii.gz"))
    return paths[0], paths[1], paths[2], vols


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    return text


def test_roi_writes_crop_and_json(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tra, sag, cor, vols = study
    out = tmp_path / "out" / "roi.nii.gz"
    result = runner.invoke(app, ["roi", str(tra), str(sag), str(cor), "-o", str(out)])
    assert result.exit_code == 0, result.output
    js = tmp_path / "out" / "roi.roi.json"
    assert js == default_roi_json_path(out)
    assert str(out) in result.output and str(js) in result.output
    cropped = read_volume(out)
    axial = read_volume(tra)
    np.testing.assert_array_equal(cropped.array, axial.array[BOX_CASE_ANSWER.slices])
    np.testing.assert_allclose(cropped.origin, axial.index_to_world(BOX_CASE_ANSWER.lower), atol=1e-3)
    data = json.loads(js.read_text())
    assert data["schema_version"] == 1
    assert data["index_box_on_axial"]["lower_zyx"] == list(BOX_CASE_ANSWER.lower)
    assert data["index_box_on_axial"]["upper_zyx_exclusive"] == list(BOX_CASE_ANSWER.upper)
    expected = compute_roi(*(v.geometry for v in vols))
    np.testing.assert_allclose(data["world_box_lps_mm"]["lower"], expected.world_lower, atol=1e-3)
    np.testing.assert_allclose(data["world_box_lps_mm"]["upper"], expected.world_upper, atol=1e-3)
    assert len(data["intersection_vertices_lps_mm"]) == 8
    assert data["intersection_volume_ml"] == pytest.approx(4.8, rel=1e-4)
    assert set(data["input_geometries"]) == {"axial", "sagittal", "coronal"}
    assert str(tmp_path) not in js.read_text()  # no input paths in the JSON
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "roi.nii.gz",
        "roi.roi.json",
        "roi.roi.png",
    ]  # no temp files left
    # the picture: one panel per series, each with the overlap outlined in the ROI colour
    from PIL import Image

    from medseg.export.overlay import ROI_COLOR

    assert str(tmp_path / "out" / "roi.roi.png") in result.output
    rgb = np.asarray(Image.open(tmp_path / "out" / "roi.roi.png").convert("RGB")).astype(int)
    outline = (np.abs(rgb - np.array(ROI_COLOR)).sum(axis=2) < 60).any(axis=0)
    thirds = np.array_split(outline, 3)
    assert all(part.sum() > 20 for part in thirds), [int(p.sum()) for p in thirds]
    res = runner.invoke(
        app, ["roi", str(tra), str(sag), str(cor), "-o", str(tmp_path / "b.nii.gz"), "--no-png"]
    )
    assert res.exit_code == 0 and not (tmp_path / "b.roi.png").exists()


def test_roi_margin_json_path_and_method(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tra, sag, cor, _ = study
    out = tmp_path / "roi.mha"
    js = tmp_path / "box.json"
    result = runner.invoke(
        app,
        [
            "roi",
            str(tra),
            str(sag),
            str(cor),
            "-o",
            str(out),
            "--margin",
            "2.5",
            "--json",
            str(js),
            "--method",
            "aabb",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["method"] == "aabb" and data["margin_mm"] == 2.5
    assert data["index_box_on_axial"]["lower_zyx"][0] <= 1  # grown by 2 slices (2 mm) or more
    assert read_volume(out).shape == tuple(data["index_box_on_axial"]["shape_zyx"])
    assert not default_roi_json_path(out).exists()


def test_missing_input(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tra, sag, _, _ = study
    missing = tmp_path / "nope.nii.gz"
    out = tmp_path / "roi.nii.gz"
    text = _one_line_error(runner.invoke(app, ["roi", str(tra), str(sag), str(missing), "-o", str(out)]))
    assert "nope.nii.gz" in text and "does not exist" in text
    assert not out.exists()


def test_non_intersecting_inputs(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tra, sag, _, vols = study
    far = Volume(vols[2].array, vols[2].spacing, np.asarray(vols[2].origin) + 500, vols[2].direction)
    far_path = write_volume(far, tmp_path / "far.nii.gz")
    out = tmp_path / "roi.nii.gz"
    text = _one_line_error(runner.invoke(app, ["roi", str(tra), str(sag), str(far_path), "-o", str(out)]))
    assert "do not overlap" in text
    assert not out.exists() and not default_roi_json_path(out).exists()


def test_existing_outputs_are_kept_without_overwrite(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tra, sag, cor, _ = study
    out = tmp_path / "roi.nii.gz"
    out.write_bytes(b"old")
    text = _one_line_error(runner.invoke(app, ["roi", str(tra), str(sag), str(cor), "-o", str(out)]))
    assert "roi.nii.gz" in text and "--overwrite" in text
    assert out.read_bytes() == b"old"
    # an existing JSON also stops the run before the crop is written
    out.unlink()
    js = default_roi_json_path(out)
    js.write_text("{}")
    _one_line_error(runner.invoke(app, ["roi", str(tra), str(sag), str(cor), "-o", str(out)]))
    assert not out.exists() and js.read_text() == "{}"
    result = runner.invoke(app, ["roi", str(tra), str(sag), str(cor), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads(js.read_text())["schema_version"] == 1


def test_inputs_are_not_modified(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tra, sag, cor, _ = study
    before = {p: p.read_bytes() for p in (tra, sag, cor)}
    result = runner.invoke(app, ["roi", str(tra), str(sag), str(cor), "-o", str(tmp_path / "x.nrrd")])
    assert result.exit_code == 0, result.output
    assert all(p.read_bytes() == data for p, data in before.items())


def test_different_frames_of_reference(study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """NIfTI carries no frame of reference, so tag the volumes as a DICOM reader would."""
    import medseg.geometry.roi as roi_module

    tra, sag, cor, _ = study

    def tagged_read(path: str | Path) -> Volume:
        vol = read_volume(path)
        vol.meta["frame_of_reference_uid"] = "1.2.840.1" if Path(path) == cor else "1.2.840.2"
        return vol

    monkeypatch.setattr(roi_module, "read_volume", tagged_read)
    out = tmp_path / "roi.nii.gz"
    text = _one_line_error(runner.invoke(app, ["roi", str(tra), str(sag), str(cor), "-o", str(out)]))
    assert "different frames of reference" in text
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--margin", "-1"], "margin"),
        (["--method", "bbox"], "--method"),
        (["-o", "roi.png"], "unsupported output format"),
    ],
)
def test_bad_options(study, tmp_path: Path, extra: list[str], match: str) -> None:  # type: ignore[no-untyped-def]
    tra, sag, cor, _ = study
    args = ["roi", str(tra), str(sag), str(cor)]
    if "-o" not in extra:
        args += ["-o", str(tmp_path / "roi.nii.gz")]
    else:
        extra = ["-o", str(tmp_path / extra[1])]
    text = _one_line_error(runner.invoke(app, args + extra))
    assert match in text


def test_json_path_equal_to_output_is_refused(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tra, sag, cor, _ = study
    out = tmp_path / "roi.nii.gz"
    text = _one_line_error(
        runner.invoke(app, ["roi", str(tra), str(sag), str(cor), "-o", str(out), "--json", str(out)])
    )
    assert "same as the output" in text


def test_roi_on_real_dicom_folders_matches_the_library(shared_data: Path, tmp_path: Path) -> None:
    """End to end through medseg.io.dicom on ProstateX-0000 (T2 tra #4, sag #3, cor #5)."""
    pytest.importorskip("medseg.io.dicom")
    from tests.geometry.test_roi import _read_series

    study = shared_data / "prostatex_dicom" / "ProstateX-0000" / "07-07-2011"
    if not study.is_dir():
        pytest.skip(f"{study} not found")
    folders = [
        study / "4.000000-t2tsetra-00702",
        study / "3.000000-t2tsesag-87368",
        study / "5.000000-t2tsecor-03471",
    ]
    out = tmp_path / "roi.nii.gz"
    result = runner.invoke(app, ["roi", *map(str, folders), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(default_roi_json_path(out).read_text())
    expected = compute_roi(*(_read_series(study.parent, n).geometry for n in (4, 3, 5)))
    assert data["index_box_on_axial"] == expected.box.to_dict()
    np.testing.assert_allclose(data["world_box_lps_mm"]["lower"], expected.world_lower, atol=1e-3)
    assert read_volume(out).shape == expected.box.shape
