"""RTSTRUCT via rt-utils: contours read back and rasterised match the label map."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

import medseg
from medseg.errors import ConfigError, GeometryError, InputError, OutputExistsError
from medseg.export.algorithm import AlgorithmId, medseg_algorithm
from medseg.export.rtstruct import read_rtstruct, write_rtstruct
from medseg.volume import Volume
from tests.export.conftest import (
    ZONES,
    Series,
    centred_zones,
    dice,
    give_malformed_birth_date,
    prostate_zones,
    synthetic_image,
    write_series,
)


def test_real_prostatex_contours_rasterise_back_with_dice_above_095(
    tmp_path: Path, prostatex_t2: Series
) -> None:
    image = prostatex_t2.image
    label = prostate_zones(image)
    files = list(reversed(prostatex_t2.files))  # order must not matter
    out = write_rtstruct(label, files, tmp_path / "rt.dcm", ZONES)
    back = read_rtstruct(out, image, ZONES)
    for value, name in ZONES.items():
        assert (label.array == value).sum() > 0, name
        assert dice(back.array == value, label.array == value) >= 0.95, name
    assert back.meta["segments"] == ZONES
    ds = pydicom.dcmread(out)  # medseg as the equipment, not rt-utils' defaults
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("medseg", "medseg")
    assert ds.SoftwareVersions == medseg.__version__ and "Qurit" not in str(ds)
    source = pydicom.dcmread(prostatex_t2.files[0], stop_before_pixels=True)
    assert ds.get("InstitutionName") == source.get("InstitutionName")


def test_rt_utils_own_reader_agrees(tmp_path: Path, prostatex_t2: Series) -> None:
    from rt_utils import RTStructBuilder

    image = prostatex_t2.image
    label = prostate_zones(image)
    out = write_rtstruct(label, prostatex_t2.folder, tmp_path / "rt.dcm", ZONES)
    # rt-utils reads a whole folder: give it only this series.
    links = tmp_path / "series"
    links.mkdir()
    for f in prostatex_t2.files:
        os.symlink(f, links / f.name)
    rt = RTStructBuilder.create_from(str(links), str(out))
    # rt-utils orders slices by position along the row x column normal, ascending.
    normal = np.cross(image.direction[:, 2], image.direction[:, 1])
    order = np.argsort([np.dot(normal, image.index_to_world((k, 0, 0))) for k in range(image.shape[0])])
    for value, name in ZONES.items():
        mask = rt.get_roi_mask_by_name(name)  # (rows, columns, slices in rt-utils order)
        ours = np.moveaxis(label.array == value, 0, -1)[:, :, order]
        assert dice(mask, ours) >= 0.95, name


def test_oblique_reversed_non_square_matrix_series(tmp_path: Path, reversed_series: Series) -> None:
    image = reversed_series.image
    assert image.shape[1] != image.shape[2]
    label = centred_zones(image)
    out = write_rtstruct(label, reversed_series.folder, tmp_path / "rt.dcm", ZONES, colors={1: (10, 20, 30)})
    back = read_rtstruct(out, image, ZONES)
    for value in (1, 2, 4):
        assert dice(back.array == value, label.array == value) >= 0.95
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["PZ", "TZ", "AFS"]
    assert [int(c) for c in ds.ROIContourSequence[0].ROIDisplayColor] == [10, 20, 30]
    assert (
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
        == reversed_series.datasets()[0].FrameOfReferenceUID
    )
    # Every contour lies on the plane of the image it references.
    by_uid = {str(d.SOPInstanceUID): d for d in reversed_series.datasets()}
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            ref = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            k = image.world_to_index(np.asarray(ref.ImagePositionPatient, dtype=float))[0]
            np.testing.assert_allclose(image.world_to_index(points)[:, 0], k, atol=1e-3)


def test_seg_written_into_the_series_folder_is_ignored(tmp_path: Path, synthetic_series: Series) -> None:
    """rt-utils alone would load the SEG's frames as extra slices; the source folder is filtered."""
    from medseg.export.dicom_seg import write_dicom_seg

    label = centred_zones(synthetic_series.image)
    write_dicom_seg(label, synthetic_series.folder, synthetic_series.folder / "seg.dcm", ZONES)
    out = write_rtstruct(label, synthetic_series.folder, tmp_path / "rt.dcm", ZONES)
    back = read_rtstruct(out, synthetic_series.image, ZONES)
    assert dice(back.array == 1, label.array == 1) >= 0.95


def test_holes_survive_the_round_trip(
    tmp_path: Path, synthetic_series: Series, caplog: pytest.LogCaptureFixture
) -> None:
    arr = np.zeros(synthetic_series.image.shape, dtype=np.uint8)
    arr[2:6, 8:28, 6:22] = 1
    arr[2:6, 14:20, 11:16] = 0  # a hole through the structure
    label = synthetic_series.image.with_array(arr)
    with caplog.at_level("WARNING"):
        out = write_rtstruct(label, synthetic_series.files, tmp_path / "rt.dcm", {1: "liver"})
    assert not [r for r in caplog.records if "will be removed" in r.getMessage()]  # rt-utils' pydicom noise
    back = read_rtstruct(out, synthetic_series.image, {1: "liver"})
    np.testing.assert_array_equal(back.array, arr)


# ----------------------------------------------------------------------------- errors
def test_non_square_pixels_are_refused(tmp_path: Path) -> None:
    image = synthetic_image(spacing=(2.5, 0.8, 0.6))
    write_series(tmp_path / "s", image)
    with pytest.raises(GeometryError, match="square pixels"):
        write_rtstruct(centred_zones(image), tmp_path / "s", tmp_path / "rt.dcm")
    assert not (tmp_path / "rt.dcm").exists()


def test_datasets_without_files_are_refused(tmp_path: Path, synthetic_series: Series) -> None:
    datasets = synthetic_series.datasets()
    for ds in datasets:
        ds.filename = None
    with pytest.raises(InputError, match="without files"):
        write_rtstruct(centred_zones(synthetic_series.image), datasets, tmp_path / "rt.dcm")


def test_mismatched_grid_empty_label_and_existing_output(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    other = Volume(
        centred_zones(image).array, image.spacing, np.add(image.origin, (0, 0, 1.0)), image.direction
    )
    with pytest.raises(GeometryError):
        write_rtstruct(other, synthetic_series.folder, tmp_path / "rt.dcm")
    with pytest.raises(InputError, match="empty label map"):
        write_rtstruct(
            image.with_array(np.zeros(image.shape, np.uint8)), synthetic_series.folder, tmp_path / "rt.dcm"
        )
    target = tmp_path / "rt.dcm"
    target.write_text("old")
    with pytest.raises(OutputExistsError):
        write_rtstruct(centred_zones(image), synthetic_series.folder, target)
    assert target.read_text() == "old"


def test_reader_errors(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    out = write_rtstruct(centred_zones(image), synthetic_series.folder, tmp_path / "rt.dcm", ZONES)
    off_slice = Volume(image.array, image.spacing, image.index_to_world((0.5, 0, 0)), image.direction)
    with pytest.raises(GeometryError, match="not on a slice"):
        read_rtstruct(out, off_slice)
    with pytest.raises(ConfigError, match="not among the given names"):
        read_rtstruct(out, image, {1: "liver"})
    with pytest.raises(InputError, match="not an RT Structure Set"):
        read_rtstruct(synthetic_series.files[0], image)


def test_malformed_patient_values_never_reach_logs_or_warnings(
    tmp_path: Path, synthetic_series: Series, caplog: pytest.LogCaptureFixture
) -> None:
    import warnings

    give_malformed_birth_date(synthetic_series)
    label = centred_zones(synthetic_series.image)
    with caplog.at_level("DEBUG"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = write_rtstruct(label, synthetic_series.folder, tmp_path / "rt.dcm", ZONES)
    assert "SECRET" not in caplog.text and not [w for w in seen if "SECRET" in str(w.message)]
    assert read_rtstruct(out, synthetic_series.image, ZONES).array.any()


def test_one_voxel_islands_survive_the_round_trip(tmp_path: Path, synthetic_series: Series) -> None:
    """rt-utils writes a one-voxel island as a 1-point contour and a one-voxel-wide line as 2 points;
    the reader used to fail on them (skimage's perimeter clips to an empty bounding box)."""
    arr = np.zeros(synthetic_series.image.shape, dtype=np.uint8)
    arr[2:6, 8:28, 6:22] = 1
    arr[3, 2, 2] = 1  # a single voxel
    arr[4, 2, 25:27] = 1  # two voxels in a row
    arr[5, 30, 2] = arr[5, 31, 3] = 1  # two voxels touching diagonally: a 2-point diagonal contour
    label = synthetic_series.image.with_array(arr)
    out = write_rtstruct(label, synthetic_series.files, tmp_path / "rt.dcm", {1: "liver"})
    back = read_rtstruct(out, synthetic_series.image, {1: "liver"})
    assert back.array[3, 2, 2] == 1 and back.array[4, 2, 25] == 1 and back.array[4, 2, 26] == 1
    np.testing.assert_array_equal(back.array, arr)


def test_overlapping_rois_are_reported(
    tmp_path: Path, synthetic_series: Series, caplog: pytest.LogCaptureFixture
) -> None:
    """A body outline drawn after an organ covers it in a label map: said, with the counts."""
    image = synthetic_series.image
    organ = np.zeros(image.shape, np.uint8)
    organ[2:6, 12:20, 8:16] = 1
    body = np.zeros(image.shape, np.uint8)
    body[1:7, 4:32, 4:24] = 1
    first = write_rtstruct(image.with_array(organ), synthetic_series.files, tmp_path / "a.dcm", {1: "liver"})
    second = write_rtstruct(image.with_array(body), synthetic_series.files, tmp_path / "b.dcm", {1: "BODY"})
    ds = pydicom.dcmread(first)
    extra = pydicom.dcmread(second)
    roi = extra.StructureSetROISequence[0]
    roi.ROINumber = 2
    contour = extra.ROIContourSequence[0]
    contour.ReferencedROINumber = 2
    ds.StructureSetROISequence.append(roi)
    ds.ROIContourSequence.append(contour)
    ds.save_as(tmp_path / "both.dcm")
    with caplog.at_level("WARNING"):
        back = read_rtstruct(tmp_path / "both.dcm", image)
    assert not np.any(back.array == 1)
    (message,) = [r.getMessage() for r in caplog.records if "overlaps" in r.getMessage()]
    assert (
        f"ROI 'BODY' overlaps 'liver' on {int(organ.sum())} voxels" in message
        and "0 voxels of 'liver' left" in message
    )


def test_conformance_fixes_over_rt_utils(tmp_path: Path, synthetic_series: Series) -> None:
    """A UTF-8 patient name survives (rt-utils declared Latin-1 and wrote '?'), contour DS values
    fit 16 characters, and the study's accession number and referring physician are kept."""
    for f in synthetic_series.files:
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "ŁÓDŹ^ŻÓŁW"
        ds.AccessionNumber = "ACC42"
        ds.save_as(f)
    label = prostate_zones(synthetic_series.image)
    out = write_rtstruct(label, synthetic_series.files, tmp_path / "rt.dcm", ZONES)
    ds = pydicom.dcmread(out)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "ŁÓDŹ^ŻÓŁW"
    assert ds.AccessionNumber == "ACC42" and "ReferringPhysicianName" in ds and "OperatorsName" in ds
    assert ds.SeriesNumber == 9902
    raw = pydicom.dcmread(out, defer_size=None)
    lengths = [
        len(str(v)) for roi in raw.ROIContourSequence for c in roi.ContourSequence for v in c.ContourData
    ]
    assert lengths and max(lengths) <= 16
    back = read_rtstruct(out, synthetic_series.image, ZONES)
    for value in (1, 2, 4):
        assert dice(back.array == value, label.array == value) >= 0.85


@pytest.mark.parametrize("kind", ["automatic", "semiautomatic", "manual"])
def test_roi_generation_algorithm_is_declared(tmp_path: Path, synthetic_series: Series, kind: str) -> None:
    label = centred_zones(synthetic_series.image)
    out = write_rtstruct(label, synthetic_series.folder, tmp_path / "rt.dcm", ZONES, algorithm_type=kind)
    rois = pydicom.dcmread(out).StructureSetROISequence
    assert [str(r.ROIName) for r in rois] == ["PZ", "TZ", "AFS"]
    assert [str(r.ROIGenerationAlgorithm) for r in rois] == [kind.upper()] * 3
    back = read_rtstruct(out, synthetic_series.image, ZONES)
    assert back.meta["algorithm_types"] == {1: kind, 2: kind, 4: kind}


def test_roi_generation_algorithm_per_label_value(tmp_path: Path, synthetic_series: Series) -> None:
    label = centred_zones(synthetic_series.image)
    kinds = {1: "manual", 2: "automatic", 4: "semiautomatic"}
    out = write_rtstruct(label, synthetic_series.folder, tmp_path / "rt.dcm", ZONES, algorithm_type=kinds)
    rois = {
        str(r.ROIName): str(r.ROIGenerationAlgorithm) for r in pydicom.dcmread(out).StructureSetROISequence
    }
    assert rois == {"PZ": "MANUAL", "TZ": "AUTOMATIC", "AFS": "SEMIAUTOMATIC"}
    assert read_rtstruct(out, synthetic_series.image, ZONES).meta["algorithm_types"] == kinds
    with pytest.raises(ConfigError, match=r"one of automatic, semiautomatic, manual, found 'AUTO'"):
        write_rtstruct(label, synthetic_series.folder, tmp_path / "bad.dcm", ZONES, algorithm_type="AUTO")
    assert not (tmp_path / "bad.dcm").exists()
    # A TPS may leave ROIGenerationAlgorithm empty (type 2) or write its own term: not declared.
    ds = pydicom.dcmread(out)
    ds.StructureSetROISequence[0].ROIGenerationAlgorithm = ""
    ds.StructureSetROISequence[1].ROIGenerationAlgorithm = "AUTOSEG"
    ds.save_as(tmp_path / "tps.dcm")
    assert read_rtstruct(tmp_path / "tps.dcm", synthetic_series.image, ZONES).meta["algorithm_types"] == {
        4: "semiautomatic"
    }


def test_roi_generation_names_the_algorithm_and_carries_a_description(
    tmp_path: Path, synthetic_series: Series
) -> None:
    label = centred_zones(synthetic_series.image)
    kinds = {1: "manual", 2: "automatic", 4: "semiautomatic"}
    tool = AlgorithmId("TotalSegmentator", "2.4")
    out = write_rtstruct(
        label, synthetic_series.folder, tmp_path / "rt.dcm", ZONES, algorithm_type=kinds,
        algorithm={1: tool, 2: tool}, generation_descriptions={1: "contoured on T2", 4: "edited in Slicer"},
    )  # fmt: skip
    rois = {str(r.ROIName): r for r in pydicom.dcmread(out).StructureSetROISequence}
    # manual: no algorithm, even when one is given; its own description is kept
    assert "ROIDerivationAlgorithmIdentificationSequence" not in rois["PZ"]
    assert rois["PZ"].ROIGenerationDescription == "contoured on T2"
    assert rois["TZ"].ROIGenerationDescription == "TotalSegmentator 2.4"
    ident = rois["TZ"].ROIDerivationAlgorithmIdentificationSequence[0]
    assert (ident.AlgorithmName, ident.AlgorithmVersion) == ("TotalSegmentator", "2.4")
    assert ident.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    # semiautomatic without a known algorithm: optional in RTSTRUCT, so left out, not filled with medseg
    assert "ROIDerivationAlgorithmIdentificationSequence" not in rois["AFS"]
    assert rois["AFS"].ROIGenerationDescription == "edited in Slicer"
    meta = read_rtstruct(out, synthetic_series.image, ZONES).meta
    assert meta["algorithms"] == {2: tool}
    assert meta["generation_descriptions"] == {
        1: "contoured on T2",
        2: "TotalSegmentator 2.4",
        4: "edited in Slicer",
    }
    # De-identified: another tool's free text (it may name who drew the contours, or the
    # patient) is left out; the algorithm identification is not free text and stays.
    deid = write_rtstruct(
        label, synthetic_series.folder, tmp_path / "deid.dcm", ZONES, algorithm_type=kinds,
        algorithm={1: tool, 2: tool}, generation_descriptions={1: "drawn by Dr House for Doe^Jane"},
        deidentify=True,
    )  # fmt: skip
    rois = {str(r.ROIName): r for r in pydicom.dcmread(deid).StructureSetROISequence}
    assert b"House" not in deid.read_bytes()
    assert "ROIGenerationDescription" not in rois["PZ"]
    assert rois["TZ"].ROIGenerationDescription == "TotalSegmentator 2.4"
    # Without ``algorithm`` the writer's caller is a medseg prediction: medseg is named.
    own = write_rtstruct(label, synthetic_series.folder, tmp_path / "own.dcm", ZONES)
    assert read_rtstruct(own, synthetic_series.image, ZONES).meta["algorithms"] == dict.fromkeys(
        (1, 2, 4), medseg_algorithm()
    )


def test_region_masks_become_overlapping_rois(tmp_path: Path, synthetic_series: Series) -> None:
    """A region model: one ROI per non-empty region, each holding its whole mask (overlap too)."""
    import copy

    image = synthetic_series.image
    large = np.zeros(image.shape, bool)
    large[1:7, 6:28, 4:16] = True
    small = np.zeros(image.shape, bool)
    small[2:6, 10:24, 10:22] = True
    painted = image.with_array(np.where(small, 2, np.where(large, 1, 0)).astype(np.uint8))
    # an empty region between two others keeps its number, so the next one keeps its own
    masks = {"large_bowel": large, "stomach": np.zeros_like(large), "small_bowel": small}
    out = write_rtstruct(painted, synthetic_series.files, tmp_path / "rt.dcm", region_masks=masks)
    ds = pydicom.dcmread(out)
    assert [(int(r.ROINumber), r.ROIName) for r in ds.StructureSetROISequence] == [
        (1, "large_bowel"),
        (2, "stomach"),
        (3, "small_bowel"),
    ]
    assert [int(c.ReferencedROINumber) for c in ds.ROIContourSequence] == [1, 2, 3]
    assert not list(getattr(ds.ROIContourSequence[1], "ContourSequence", []))  # no contours
    assert read_rtstruct(out, image).meta["segments"] == {1: "large_bowel", 2: "stomach", 3: "small_bowel"}
    for k, expected in zip((0, 2), (large, small), strict=True):
        one = copy.deepcopy(ds)
        one.StructureSetROISequence = [ds.StructureSetROISequence[k]]
        one.ROIContourSequence = [ds.ROIContourSequence[k]]
        one.save_as(tmp_path / f"roi{k}.dcm")
        back = read_rtstruct(tmp_path / f"roi{k}.dcm", image)
        np.testing.assert_array_equal(back.array > 0, expected)
    with pytest.raises(InputError, match="empty label map"):  # every region empty: no RTSTRUCT
        write_rtstruct(
            painted,
            synthetic_series.files,
            tmp_path / "none.dcm",
            region_masks={k: np.zeros_like(m) for k, m in masks.items()},
        )
    with pytest.raises(
        GeometryError,
        match=r"region mask 'large_bowel' of shape \(7, 36, 28\) is not on the label map's grid \(8, 36, 28\)",
    ):
        write_rtstruct(
            painted, synthetic_series.files, tmp_path / "bad.dcm", region_masks={"large_bowel": large[1:]}
        )
