"""DICOM SEG: voxel-exact overlay on the source series, oblique included; codes; errors."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg.errors import ConfigError, GeometryError, InputError, OutputExistsError
from medseg.export.algorithm import UNKNOWN_FAMILY, AlgorithmId
from medseg.export.dicom_seg import read_dicom_seg, write_dicom_seg
from medseg.volume import Volume
from tests.export.conftest import (
    ZONES,
    Series,
    centred_zones,
    ellipsoid_labels,
    give_malformed_birth_date,
    prostate_zones,
    read_series_with_sitk,
    synthetic_image,
    write_series,
)


def _frames_reference_their_source_image(seg_path: Path, series: Series, label: Volume) -> None:
    """Independent of highdicom's decoder: each stored frame sits at the position of the image it
    references, and its pixels equal that slice of the label map for its segment."""
    seg = pydicom.dcmread(seg_path)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series.datasets()}
    values = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    name_to_value = {v: k for k, v in ZONES.items()} if set(values.values()) <= set(ZONES.values()) else None
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert len(frames) == len(seg.PerFrameFunctionalGroupsSequence)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ref_uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        source = by_uid[ref_uid]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-4)
        k = int(np.rint(label.world_to_index(position)[0]))
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = name_to_value[values[number]] if name_to_value else number
        np.testing.assert_array_equal(frame.astype(bool), label.array[k] == value)


def test_round_trip_is_voxel_exact_on_oblique_shuffled_series(
    tmp_path: Path, synthetic_series: Series
) -> None:
    label = centred_zones(synthetic_series.image)
    assert set(np.unique(label.array)) == {0, 1, 2, 4}  # non-contiguous values
    out = write_dicom_seg(label, synthetic_series.datasets(shuffle=3), tmp_path / "seg.dcm", ZONES)
    back = read_dicom_seg(out, synthetic_series.image, ZONES)
    np.testing.assert_array_equal(back.array, label.array)
    assert back.geometry.is_close(label.geometry)
    assert back.meta["segments"] == {1: "PZ", 2: "TZ", 4: "AFS"}
    # Without names, values are the segment numbers 1..N in increasing label order.
    numbers = read_dicom_seg(out, synthetic_series.image)
    np.testing.assert_array_equal(numbers.array, np.where(label.array == 4, 3, label.array))
    _frames_reference_their_source_image(out, synthetic_series, label)


def test_round_trip_when_slice_axis_runs_against_the_normal(tmp_path: Path, reversed_series: Series) -> None:
    label = centred_zones(reversed_series.image)
    out = write_dicom_seg(label, reversed_series.folder, tmp_path / "seg.dcm", ZONES)
    np.testing.assert_array_equal(read_dicom_seg(out, reversed_series.image, ZONES).array, label.array)


def test_segments_are_named_coded_and_reference_the_series(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    centre = image.index_to_world((np.asarray(image.shape) - 1) / 2)
    label = ellipsoid_labels(
        image,
        {1: (centre - np.array([4.0, 0, 0]), (3, 3, 4)), 2: (centre + np.array([4.0, 0, 0]), (3, 3, 4))},
    )
    names = {1: "right kidney", 2: "my structure"}
    made_by = AlgorithmId("TotalSegmentator", "9.9")
    out = write_dicom_seg(label, synthetic_series.files, tmp_path / "seg.dcm", names, algorithm=made_by)
    seg = hd.seg.segread(out)
    first, second = seg.SegmentSequence
    assert first.SegmentLabel == "right kidney"
    prop = first.SegmentedPropertyTypeCodeSequence[0]
    assert (prop.CodingSchemeDesignator, prop.CodeValue) == ("SCT", "64033007")
    assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # generic tissue
    assert second.SegmentLabel == "my structure"
    assert first.SegmentAlgorithmType == "AUTOMATIC"
    ident = first.SegmentationAlgorithmIdentificationSequence[0]
    assert (first.SegmentAlgorithmName, ident.AlgorithmName, ident.AlgorithmVersion) == (
        "TotalSegmentator",
        "TotalSegmentator",
        "9.9",
    )
    family = ident.AlgorithmFamilyCodeSequence[0]  # CID 7162: 123110 is AI (123109 is Manual Processing)
    assert (family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning) == (
        "123110",
        "DCM",
        "Artificial Intelligence",
    )
    # the software that wrote the file stays medseg, whoever segmented
    assert (seg.Manufacturer, seg.ManufacturerModelName) == ("medseg", "medseg")
    assert seg.ContentDescription == "TotalSegmentator 9.9"
    assert read_dicom_seg(out, image).meta["algorithms"] == {1: made_by, 2: made_by}
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID == synthetic_series.datasets()[0].SeriesInstanceUID
    )
    assert seg.StudyInstanceUID == synthetic_series.datasets()[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == synthetic_series.datasets()[0].FrameOfReferenceUID


def test_single_slice_segment_round_trips(tmp_path: Path, synthetic_series: Series) -> None:
    arr = np.zeros(synthetic_series.image.shape, dtype=np.uint8)
    arr[5, 10:14, 3:9] = 1
    label = synthetic_series.image.with_array(arr)
    out = write_dicom_seg(label, synthetic_series.folder, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_dicom_seg(out, synthetic_series.image).array, arr)


def test_real_oblique_prostatex_series_round_trip(tmp_path: Path, prostatex_t2: Series) -> None:
    image = prostatex_t2.image
    assert image.geometry.obliquity > 15  # the series is tilted 18.5 degrees
    label = prostate_zones(image)
    assert set(np.unique(label.array)) == {0, 1, 2, 3, 4}
    out = write_dicom_seg(label, prostatex_t2.datasets(shuffle=7), tmp_path / "seg.dcm", ZONES)
    back = read_dicom_seg(out, image, ZONES)
    np.testing.assert_array_equal(back.array, label.array)
    _frames_reference_their_source_image(out, prostatex_t2, label)


def test_accepts_medseg_dicom_series_object(tmp_path: Path, prostatex_t2: Series) -> None:
    dicom = pytest.importorskip("medseg.io.dicom")
    loaded = dicom.load_series(prostatex_t2.folder)
    label = centred_zones(loaded.volume)
    out = write_dicom_seg(label, loaded, tmp_path / "seg.dcm", ZONES)
    np.testing.assert_array_equal(read_dicom_seg(out, loaded.volume, ZONES).array, label.array)


DCMQI = Path("dcmqi_seg/segmentations")


@pytest.mark.parametrize(
    ("seg", "series", "expected"),
    [
        ("liver.dcm", "ct-3slice", "liver_seg.nrrd"),  # file order runs down in z
        ("23x38x3/seg/label.seg", "23x38x3/image", "23x38x3/nrrd/label.nrrd"),  # frames not byte-aligned
        (
            "sparse-labelmap-noppv.dcm",
            "24x38x3/image",
            "sparse_labelmap_noppv_seg.nrrd",
        ),  # LABELMAP, slice missing
    ],
)
def test_reads_third_party_segs_onto_their_source_grid(
    shared_data: Path, seg: str, series: str, expected: str
) -> None:
    """dcmqi's SEG fixtures decode to exactly dcmqi's own NRRD label maps."""
    from medseg.io.itk import read_itk

    root = shared_data / DCMQI
    image = read_series_with_sitk(root / series)
    reference = read_itk(root / expected)
    assert reference.geometry.is_close(image.geometry)
    got = read_dicom_seg(root / seg, image, {1: "Liver"})
    np.testing.assert_array_equal(got.array, reference.array)
    assert got.meta["segments"] == {1: "Liver"}


def test_overlapping_third_party_seg_is_a_clear_error(shared_data: Path) -> None:
    root = shared_data / DCMQI
    with pytest.raises(InputError, match="overlapping segments"):
        read_dicom_seg(root / "partial_overlaps.dcm", read_series_with_sitk(root / "ct-3slice"))


# ----------------------------------------------------------------------------- errors
def test_label_on_another_grid_is_refused(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    shifted = Volume(
        centred_zones(image).array, image.spacing, np.add(image.origin, (0.2, 0, 0)), image.direction
    )
    with pytest.raises(GeometryError, match="not on the label grid"):
        write_dicom_seg(shifted, synthetic_series.folder, tmp_path / "a.dcm")
    coarse = Volume(centred_zones(image).array, (2.5, 0.9, 0.8), image.origin, image.direction)
    with pytest.raises(GeometryError, match="pixel spacing"):
        write_dicom_seg(coarse, synthetic_series.folder, tmp_path / "b.dcm")
    turned = Volume(centred_zones(image).array, image.spacing, image.origin, np.eye(3)[:, ::-1])
    with pytest.raises(GeometryError, match="orientation"):
        write_dicom_seg(turned, synthetic_series.folder, tmp_path / "c.dcm")
    cropped = Volume(centred_zones(image).array[:, :-1], image.spacing, image.origin, image.direction)
    with pytest.raises(GeometryError, match="matrix"):
        write_dicom_seg(cropped, synthetic_series.folder, tmp_path / "d.dcm")
    with pytest.raises(GeometryError, match=r"no image for slices \[3\]"):
        write_dicom_seg(
            centred_zones(image),
            [f for i, f in enumerate(synthetic_series.files) if i != 3],
            tmp_path / "e.dcm",
        )
    assert not list(tmp_path.glob("*.dcm"))


def test_two_images_at_one_position_are_refused(tmp_path: Path, synthetic_series: Series) -> None:
    dss = synthetic_series.datasets()
    dss.append(dss[2])
    with pytest.raises(GeometryError, match="both at slice 2"):
        write_dicom_seg(centred_zones(synthetic_series.image), dss, tmp_path / "seg.dcm")


def test_folder_with_two_series_is_refused(tmp_path: Path, synthetic_series: Series) -> None:
    write_series(synthetic_series.folder / "other", synthetic_image(shape=(2, 8, 8)), description="other")
    with pytest.raises(InputError, match="several DICOM series"):
        write_dicom_seg(centred_zones(synthetic_series.image), synthetic_series.folder, tmp_path / "seg.dcm")


def test_empty_label_is_refused_and_writes_nothing(tmp_path: Path, synthetic_series: Series) -> None:
    empty = synthetic_series.image.with_array(np.zeros(synthetic_series.image.shape, np.uint8))
    with pytest.raises(InputError, match="empty label map"):
        write_dicom_seg(empty, synthetic_series.folder, tmp_path / "seg.dcm")
    assert not any(tmp_path.glob("*seg.dcm*"))


def test_existing_output_is_kept_without_overwrite(tmp_path: Path, synthetic_series: Series) -> None:
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"keep me")
    label = centred_zones(synthetic_series.image)
    with pytest.raises(OutputExistsError):
        write_dicom_seg(label, synthetic_series.folder, target)
    assert target.read_bytes() == b"keep me"
    write_dicom_seg(label, synthetic_series.folder, target, overwrite=True)
    assert hd.seg.segread(target).SegmentSequence[0].SegmentNumber == 1


def test_reading_onto_another_grid_or_a_non_seg_fails(tmp_path: Path, synthetic_series: Series) -> None:
    image = synthetic_series.image
    out = write_dicom_seg(centred_zones(image), synthetic_series.folder, tmp_path / "seg.dcm", ZONES)
    half_voxel = Volume(image.array, image.spacing, image.index_to_world((0, 0.5, 0)), image.direction)
    with pytest.raises(GeometryError, match="reference grid"):
        read_dicom_seg(out, half_voxel)
    with pytest.raises(InputError, match="not a DICOM Segmentation"):
        read_dicom_seg(synthetic_series.files[0], image)
    with pytest.raises(ConfigError, match="not among the given names"):
        read_dicom_seg(out, image, {1: "liver"})
    (tmp_path / "junk.dcm").write_bytes(b"no dicom here")
    with pytest.raises(InputError, match="cannot be read"):
        read_dicom_seg(tmp_path / "junk.dcm", image)


def test_refused_seg_error_does_not_quote_patient_values(
    tmp_path: Path, synthetic_series: Series, caplog: pytest.LogCaptureFixture
) -> None:
    """highdicom cannot copy an invalid birth date; the error says so without quoting it."""
    give_malformed_birth_date(synthetic_series)
    label = centred_zones(synthetic_series.image)
    with caplog.at_level("DEBUG"), pytest.raises(InputError, match="highdicom refused") as info:
        write_dicom_seg(label, synthetic_series.folder, tmp_path / "seg.dcm", ZONES)
    assert "'DA'" in str(info.value) and "SECRET" not in str(info.value) and "SECRET" not in caplog.text
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize("kind", ["automatic", "semiautomatic", "manual"])
def test_algorithm_type_is_declared_and_the_seg_still_round_trips(
    tmp_path: Path, synthetic_series: Series, kind: str
) -> None:
    label = centred_zones(synthetic_series.image)
    out = write_dicom_seg(label, synthetic_series.folder, tmp_path / "seg.dcm", ZONES, algorithm_type=kind)
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert len(ds.SegmentSequence) == 3
    for item in ds.SegmentSequence:
        assert item.SegmentAlgorithmType == kind.upper()
        if kind == "manual":  # no algorithm made a manual segment: none is named (PS3.3 C.8.20.2)
            assert "SegmentAlgorithmName" not in item
            assert "SegmentationAlgorithmIdentificationSequence" not in item
        else:
            assert item.SegmentAlgorithmName == "medseg"
            assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medseg"
    seg = hd.seg.segread(out)
    assert {seg.get_segment_description(n).algorithm_type for n in (1, 2, 3)} == {
        hd.seg.SegmentAlgorithmTypeValues[kind.upper()]
    }
    back = read_dicom_seg(out, synthetic_series.image, ZONES)
    np.testing.assert_array_equal(back.array, label.array)
    assert back.meta["algorithm_types"] == {1: kind, 2: kind, 4: kind}


def test_algorithm_type_per_label_value_and_a_bad_one(tmp_path: Path, synthetic_series: Series) -> None:
    label = centred_zones(synthetic_series.image)
    kinds = {1: "manual", 2: "automatic", 4: "semiautomatic"}
    out = write_dicom_seg(label, synthetic_series.folder, tmp_path / "seg.dcm", ZONES, algorithm_type=kinds)
    by_label = {str(s.SegmentLabel): s for s in pydicom.dcmread(out, stop_before_pixels=True).SegmentSequence}
    assert {name: str(s.SegmentAlgorithmType) for name, s in by_label.items()} == {
        "PZ": "MANUAL",
        "TZ": "AUTOMATIC",
        "AFS": "SEMIAUTOMATIC",
    }
    assert "SegmentAlgorithmName" not in by_label["PZ"] and by_label["AFS"].SegmentAlgorithmName == "medseg"
    assert read_dicom_seg(out, synthetic_series.image, ZONES).meta["algorithm_types"] == kinds
    with pytest.raises(ConfigError, match=r"one of automatic, semiautomatic, manual, found 'human'"):
        write_dicom_seg(label, synthetic_series.folder, tmp_path / "bad.dcm", ZONES, algorithm_type="human")
    assert not (tmp_path / "bad.dcm").exists()


def test_algorithm_per_label_value_and_one_missing_is_refused(
    tmp_path: Path, synthetic_series: Series
) -> None:
    label = centred_zones(synthetic_series.image)
    kinds = {1: "manual", 2: "automatic", 4: "semiautomatic"}
    tool, editor = AlgorithmId("TotalSegmentator", "2.4"), AlgorithmId("MONAI Label", "0.8", UNKNOWN_FAMILY)
    out = write_dicom_seg(
        label, synthetic_series.folder, tmp_path / "seg.dcm", ZONES, algorithm_type=kinds,
        algorithm={1: tool, 2: tool, 4: editor},
    )  # fmt: skip
    by_label = {str(s.SegmentLabel): s for s in pydicom.dcmread(out, stop_before_pixels=True).SegmentSequence}
    assert "SegmentationAlgorithmIdentificationSequence" not in by_label["PZ"]  # manual: none, even if given
    assert by_label["TZ"].SegmentAlgorithmName == "TotalSegmentator"
    assert by_label["AFS"].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "0.8"
    back = read_dicom_seg(out, synthetic_series.image, ZONES)
    np.testing.assert_array_equal(back.array, label.array)
    assert back.meta["algorithms"] == {2: tool, 4: editor}
    # A mapping without the algorithm of an automatic segment: refused, not filled in with medseg.
    with pytest.raises(ConfigError, match=r"must name the algorithm .* none given for TZ$"):
        write_dicom_seg(
            label,
            synthetic_series.folder,
            tmp_path / "bad.dcm",
            ZONES,
            algorithm_type=kinds,
            algorithm={4: editor},
        )
    assert not (tmp_path / "bad.dcm").exists()


def test_a_seg_naming_only_segment_algorithm_name_reads_with_unknown_version(
    tmp_path: Path, synthetic_series: Series
) -> None:
    label = centred_zones(synthetic_series.image)
    out = write_dicom_seg(label, synthetic_series.folder, tmp_path / "seg.dcm", ZONES)
    ds = pydicom.dcmread(out)
    for item in ds.SegmentSequence:  # as older writers did: the name, no identification sequence
        item.SegmentAlgorithmName = "OldTool"
        del item.SegmentationAlgorithmIdentificationSequence
    ds.save_as(tmp_path / "old.dcm")
    meta = read_dicom_seg(tmp_path / "old.dcm", synthetic_series.image, ZONES).meta
    assert meta["algorithms"] == dict.fromkeys((1, 2, 4), AlgorithmId("OldTool", "unknown", UNKNOWN_FAMILY))


def test_region_masks_become_overlapping_segments_on_their_source_images(
    tmp_path: Path, synthetic_series: Series
) -> None:
    image = synthetic_series.image
    z, y, x = np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij")
    large = (x < 16) & (y > 6) & (y < 30) & (z > 1)
    small = (x > 10) & (y > 10) & (y < 26) & (z < 6)
    assert (large & small).any()  # they overlap
    # an empty region between two others: it keeps its number, so the next one keeps its own
    masks = {"large_bowel": large, "stomach": np.zeros_like(large), "small_bowel": small}
    painted = image.with_array(np.where(small, 3, np.where(large, 1, 0)).astype(np.uint8))
    out = write_dicom_seg(
        painted, synthetic_series.datasets(shuffle=2), tmp_path / "seg.dcm", region_masks=masks
    )
    seg = pydicom.dcmread(out)
    # segment r is region r in every case: the empty one is described, without frames
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "large_bowel"),
        (2, "stomach"),
        (3, "small_bowel"),
    ]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in synthetic_series.datasets()}
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    seen = np.zeros((3, *image.shape), dtype=bool)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ref_uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in by_uid[ref_uid].ImagePositionPatient]
        k = int(np.rint(image.world_to_index(position)[0]))
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        seen[number - 1, k] = frame.astype(bool)
    np.testing.assert_array_equal(seen[0], large)
    assert not seen[1].any()
    np.testing.assert_array_equal(seen[2], small)
    # highdicom reads every segment back, the one without frames as empty ...
    import highdicom as hd

    volume = hd.seg.segread(out).get_volume(segment_numbers=[1, 2, 3], combine_segments=False)
    assert [int(volume.array[..., k].sum()) for k in range(3)] == [int(large.sum()), 0, int(small.sum())]
    # ... and every region empty is still no SEG at all
    with pytest.raises(InputError, match="empty label map"):
        write_dicom_seg(
            painted,
            synthetic_series.datasets(),
            tmp_path / "none.dcm",
            region_masks={k: np.zeros_like(m) for k, m in masks.items()},
        )
