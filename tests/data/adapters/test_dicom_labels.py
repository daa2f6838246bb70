"""DICOM SEG / RTSTRUCT adapter: real dcmqi and rt-utils files, and generated oblique cases."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medseg.data.adapters.dicom_labels import (
    ImageSeries,
    _fill_contours,
    import_dicom_seg,
    import_rtstruct,
    load_series,
    pseudonym,
)
from medseg.data.check import check_dataset
from medseg.data.dataset import IMPORT_KEY, list_cases, read_descriptor
from medseg.errors import InputError
from medseg.io.itk import read_itk
from tests.data.adapters import tree_state


def _only_case(out: Path):  # type: ignore[no-untyped-def]
    (case,) = list_cases(out)
    return read_itk(case.images[0]), read_itk(case.label)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SEG
@pytest.mark.parametrize(
    ("seg", "nrrd", "image_dir"),
    [
        ("liver.dcm", "liver_seg.nrrd", "ct-3slice"),
        (
            "23x38x3/seg/label.seg",
            "23x38x3/nrrd/label.nrrd",
            "23x38x3/image",
        ),  # 1-bit frames not byte-aligned
        ("24x38x3/seg/label.seg", "24x38x3/nrrd/label.nrrd", "24x38x3/image"),
        ("sparse-labelmap-noppv.dcm", "sparse_labelmap_noppv_seg.nrrd", "24x38x3/image"),  # label-map SEG
    ],
)
def test_real_seg_matches_dcmqi_reference(
    tmp_path: Path, shared_data: Path, seg: str, nrrd: str, image_dir: str
) -> None:
    src = shared_data / "dcmqi_seg" / "segmentations"
    before = tree_state(src)
    out = import_dicom_seg(src, tmp_path / "out", seg_files=[src / seg], progress=False)
    assert tree_state(src) == before
    _, label = _only_case(out)
    expected = read_itk(src / nrrd)
    # ct-3slice: files 01..03 go down in z; the grid must be the position-sorted one the NRRDs use
    label.geometry.require_same(expected.geometry, origin_atol=1e-3)
    np.testing.assert_array_equal(label.array, expected.array)
    assert read_descriptor(out).labels == {"background": 0, "Liver": 1}
    assert check_dataset(out, progress=False).ok


def test_ct_series_values_and_order(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "dcmqi_seg" / "segmentations"
    out = import_dicom_seg(src, tmp_path / "out", seg_files=[src / "liver.dcm"], progress=False)
    image, _ = _only_case(out)
    assert image.shape == (3, 512, 512) and image.origin[2] == pytest.approx(-128.69, abs=1e-2)
    for z, name in enumerate(["03.dcm", "02.dcm", "01.dcm"]):  # ascending z
        ds = pydicom.dcmread(src / "ct-3slice" / name)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(image.array[z], hu)
    desc = read_descriptor(out)
    assert desc.modalities == ["CT"]
    text = (out / "dataset.json").read_text()
    assert "JANCT000" not in text and desc.patients["case_0001"].startswith("p")


def test_sparse_labelmap_with_padding_value(tmp_path: Path, shared_data: Path) -> None:
    """The slice without a frame is background (0); dcmqi fills it with the PixelPaddingValue 5."""
    src = shared_data / "dcmqi_seg" / "segmentations"
    out = import_dicom_seg(
        src, tmp_path / "out", seg_files=[src / "sparse-labelmap-ppv5.dcm"], progress=False
    )
    _, label = _only_case(out)
    expected = read_itk(src / "sparse_labelmap_ppv5_seg.nrrd").array
    np.testing.assert_array_equal(label.array[[0, 2]], expected[[0, 2]])
    assert (expected[1] == 5).all() and (label.array[1] == 0).all()


def test_overlapping_segments(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "dcmqi_seg" / "segmentations"
    seg = src / "partial_overlaps.dcm"
    with pytest.raises(
        InputError, match=r"partial_overlaps\.dcm: segment 2 'ORANGE' overlaps other segments in 3017"
    ):
        import_dicom_seg(src, tmp_path / "out", seg_files=[seg], progress=False)
    assert not (tmp_path / "out").exists()
    out = import_dicom_seg(src, tmp_path / "out", seg_files=[seg], on_overlap="overwrite", progress=False)
    assert read_descriptor(out).labels == {
        "background": 0, "GREEN": 1, "ORANGE": 2, "PURPLE": 3, "LIGHT_BLUE": 4, "DARK_BLUE": 5,
    }  # fmt: skip
    _, label = _only_case(out)
    parts = [read_itk(src / f"partial_overlaps-{i}.nrrd").array for i in (1, 2, 3)]
    np.testing.assert_array_equal(label.array, np.maximum.reduce(parts))  # higher label wins


def test_seg_errors(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data / "dcmqi_seg"
    with pytest.raises(InputError, match=r"sr-example/seg.dcm: references no image series found under"):
        import_dicom_seg(data, tmp_path / "out", seg_files=[data / "sr-example" / "seg.dcm"], progress=False)
    src = data / "segmentations"
    with pytest.raises(InputError, match=r"liver.dcm: holds DICOM SEG names that the labels do not declare"):
        import_dicom_seg(src, tmp_path / "out", seg_files=[src / "liver.dcm"], labels={"background": 0, "x": 1},
                         progress=False)  # fmt: skip
    with pytest.raises(InputError, match="is not a DICOM SEG"):
        import_dicom_seg(src, tmp_path / "out", seg_files=[src / "ct-3slice" / "01.dcm"], progress=False)
    with pytest.raises(InputError, match="holds no DICOM SEG objects"):
        import_dicom_seg(src / "ct-3slice", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_cohort_of_links_is_followed(tmp_path: Path, shared_data: Path) -> None:
    """A cohort assembled by symbolic links (folder and file), with a loop back to its top."""
    src = shared_data / "dcmqi_seg" / "segmentations"
    linked = tmp_path / "linked"
    (linked / "patient").mkdir(parents=True)
    (linked / "patient" / "ct").symlink_to(src / "ct-3slice", target_is_directory=True)
    (linked / "patient" / "liver.dcm").symlink_to(src / "liver.dcm")
    (linked / "patient" / "loop").symlink_to(linked, target_is_directory=True)
    out = import_dicom_seg(linked, tmp_path / "out", progress=False)
    _, label = _only_case(out)
    expected = read_itk(src / "liver_seg.nrrd")
    label.geometry.require_same(expected.geometry, origin_atol=1e-3)
    np.testing.assert_array_equal(label.array, expected.array)


def test_whole_tree_with_skip_invalid(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "dcmqi_seg"
    out = import_dicom_seg(src, tmp_path / "out", skip_invalid=True, progress=False)
    record = read_descriptor(out).extra[IMPORT_KEY]
    assert sorted(s["source"] for s in record["skipped"]) == [
        "segmentations/partial_overlaps.dcm",
        "sr-example/seg.dcm",
    ]
    assert len(list_cases(out)) == 5
    # only the skipped files named GREEN ... DARK_BLUE and 'Neoplasm, Primary': not declared
    assert read_descriptor(out).labels == {"background": 0, "Liver": 1}
    assert any("multiframe/mf.dcm" in f for f in record["ignored_files"])
    assert str(src) not in json.dumps(record)


def _oriented_copy(shared_data: Path, dst: Path) -> list[pydicom.Dataset]:
    """rt-utils' oblique, non-square synthetic series, completed so highdicom accepts it.

    The originals lack FrameOfReferenceUID and SliceThickness and give each slice its own
    StudyInstanceUID; the copy fixes that (the shared files are never touched).
    """
    dst.mkdir(parents=True)
    study, frame = generate_uid(), generate_uid()
    out = []
    for f in sorted((shared_data / "rtstruct" / "oriented_data").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SliceThickness = study, frame, 4.5
        ds.PatientID = "SECRET-ID-123"
        ds.save_as(dst / f.name)
        out.append(ds)
    return out


def test_generated_oblique_seg(tmp_path: Path, shared_data: Path) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets = _oriented_copy(shared_data, tmp_path / "study" / "ct")
    mask = np.zeros((3, 50, 100), bool)  # (frames in source order, rows, cols)
    mask[1, 10:31, 20:61] = True
    mask[2, 40:45, 90:95] = True
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Box", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0",
    )  # fmt: skip
    (tmp_path / "study" / "seg").mkdir()
    seg.save_as(tmp_path / "study" / "seg" / "box.dcm")
    out = import_dicom_seg(tmp_path / "study", tmp_path / "out", progress=False)
    image, label = _only_case(out)
    assert image.geometry.obliquity > 10 and image.spacing == pytest.approx((4.5, 3.5, 2.5), abs=1e-4)
    # our z order is position along the normal; map each source dataset to its slice
    normal = np.cross(*np.reshape(datasets[0].ImageOrientationPatient, (2, 3)))
    z_of = np.argsort(np.argsort([np.dot(normal, d.ImagePositionPatient) for d in datasets]))
    expected = np.zeros(label.shape, np.uint8)
    for i, z in enumerate(z_of):
        expected[z] = mask[i]
    np.testing.assert_array_equal(label.array, expected)
    # world check: the ImagePositionPatient of each source slice is voxel [z, 0, 0]
    for i, z in enumerate(z_of):
        np.testing.assert_allclose(
            image.index_to_world([z, 0, 0]), datasets[i].ImagePositionPatient, atol=1e-3
        )
    assert "SECRET-ID-123" not in (out / "dataset.json").read_text()


# ---------------------------------------------------------------------- RTSTRUCT
def test_real_rtstruct(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "rtstruct" / "mock_data"
    before = tree_state(shared_data / "rtstruct")
    out = import_rtstruct(src, tmp_path / "out", rtstruct_files=[src / "rt.dcm"], progress=False)
    assert tree_state(shared_data / "rtstruct") == before
    image, label = _only_case(out)
    assert image.shape == (2, 512, 512) and read_descriptor(out).labels == {"background": 0, "ROI-1": 1}
    # ROI-1 on z = 60: a 24 mm square (-51..-27 mm) with an octagonal hole (contours XOR, as in DICOM)
    z60 = round(float(image.world_to_index([-39.0, -39.0, 60.0])[0]))
    assert image.index_to_world([z60, 0, 0])[2] == pytest.approx(60.0)
    ring = np.round(image.world_to_index([-49.0, -39.0, 60.0])).astype(int)
    centre = np.round(image.world_to_index([-39.0, -39.0, 60.0])).astype(int)
    outside = np.round(image.world_to_index([-20.0, -39.0, 60.0])).astype(int)
    assert (
        label.array[tuple(ring)] == 1 and label.array[tuple(centre)] == 0 and label.array[tuple(outside)] == 0
    )
    assert label.array[1 - z60].sum() == 0 and label.array.sum() == 1660  # rt-utils' own count
    # the fill used for non-square series gives the same mask as rt-utils on this square one
    files = sorted(src.glob("ct_*.dcm"))
    series = ImageSeries(uid="x", files=files)
    own = _fill_contours(pydicom.dcmread(src / "rt.dcm"), 1, load_series(series), src / "rt.dcm", None)
    np.testing.assert_array_equal(own, label.array.astype(bool))


@pytest.mark.parametrize("name", ["invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"])
def test_broken_rtstructs_are_clear_errors(tmp_path: Path, shared_data: Path, name: str) -> None:
    src = shared_data / "rtstruct" / "mock_data"
    with pytest.raises(
        InputError, match=rf"{name}: ROI 'ROI-1' has a contour \(z = 70.0 mm\) on an image that is not"
    ):
        import_rtstruct(src, tmp_path / "out", rtstruct_files=[src / name], progress=False)
    assert not (tmp_path / "out").exists()


def test_rtstruct_without_images(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(InputError, match=r"dummy_rt\.dcm: references no image series found under"):
        import_rtstruct(shared_data / "rtstruct" / "empty", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="holds no RTSTRUCT objects"):
        import_rtstruct(shared_data / "rtstruct" / "oriented_data", tmp_path / "out", progress=False)


def _rt_copy(shared_data: Path, dst: Path) -> Path:
    shutil.copytree(shared_data / "rtstruct" / "mock_data", dst)
    for f in ["invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"]:
        (dst / f).unlink()
    return dst / "rt.dcm"


def test_contours_without_image_references_are_placed_by_position(tmp_path: Path, shared_data: Path) -> None:
    rt_path = _rt_copy(shared_data, tmp_path / "src")
    ref = import_rtstruct(tmp_path / "src", tmp_path / "ref", progress=False)
    ds = pydicom.dcmread(rt_path)
    for contour in ds.ROIContourSequence[0].ContourSequence:
        del contour.ContourImageSequence
    ds.save_as(rt_path)
    out = import_rtstruct(tmp_path / "src", tmp_path / "out", progress=False)
    np.testing.assert_array_equal(_only_case(out)[1].array, _only_case(ref)[1].array)
    for contour in ds.ROIContourSequence[0].ContourSequence:  # now between the slices at 60 and 65 mm
        contour.ContourData = [v + 2.5 if i % 3 == 2 else v for i, v in enumerate(contour.ContourData)]
    ds.save_as(rt_path)
    with pytest.raises(InputError, match=r"rt\.dcm: a contour of ROI 1 lies on no slice"):
        import_rtstruct(tmp_path / "src", tmp_path / "out2", progress=False)


def _add_copy_of_first_roi(rt_path: Path) -> pydicom.Dataset:
    """ROI 2 'Copy': the first ROI's contours again (it overlaps it everywhere)."""
    import copy

    ds = pydicom.dcmread(rt_path)
    roi = copy.deepcopy(ds.StructureSetROISequence[0])
    roi.ROINumber, roi.ROIName = 2, "Copy"
    ds.StructureSetROISequence.append(roi)
    contour = copy.deepcopy(ds.ROIContourSequence[0])
    contour.ReferencedROINumber = 2
    ds.ROIContourSequence.append(contour)
    ds.save_as(rt_path)
    return ds


def test_overlapping_and_undeclared_rois(tmp_path: Path, shared_data: Path) -> None:
    rt_path = _rt_copy(shared_data, tmp_path / "src")
    _add_copy_of_first_roi(rt_path)
    with pytest.raises(
        InputError, match=r"rt\.dcm: ROI 'Copy' overlaps other ROIs in 1660 voxels.*--overlap overwrite"
    ):
        import_rtstruct(tmp_path / "src", tmp_path / "out", progress=False)
    out = import_rtstruct(tmp_path / "src", tmp_path / "out", on_overlap="overwrite", progress=False)
    assert set(np.unique(_only_case(out)[1].array)) == {0, 2}
    with pytest.raises(InputError, match=r"holds RTSTRUCT names that the labels do not declare.*\['Copy'\]"):
        import_rtstruct(
            tmp_path / "src", tmp_path / "o2", labels={"background": 0, "ROI-1": 1}, progress=False
        )


def _shifted_rois(rt_path: Path, dx_mm: float, *, duplicate: bool, refs: bool) -> pydicom.Dataset:
    """The real RTSTRUCT with its ROI 'ROI-1' drawn again dx_mm to the side: as ROI 2 of the
    same name (``duplicate``), or instead of the original. ``refs=False`` drops the contours'
    image references (the import then fills them itself rather than through rt-utils)."""
    import copy

    ds = pydicom.dcmread(rt_path)
    shifted = copy.deepcopy(ds.ROIContourSequence[0])
    for contour in shifted.ContourSequence:
        contour.ContourData = [v + dx_mm if i % 3 == 0 else v for i, v in enumerate(contour.ContourData)]
    if duplicate:
        roi = copy.deepcopy(ds.StructureSetROISequence[0])
        roi.ROINumber = 2
        shifted.ReferencedROINumber = 2
        ds.StructureSetROISequence.append(roi)
        ds.ROIContourSequence.append(shifted)
    else:
        ds.ROIContourSequence[0] = shifted
    if not refs:
        for roi_contour in ds.ROIContourSequence:
            for contour in roi_contour.ContourSequence:
                del contour.ContourImageSequence
    ds.save_as(rt_path)
    return ds


@pytest.mark.parametrize("refs", [True, False], ids=["rt-utils fill", "own fill"])
def test_rois_sharing_a_name_are_merged_with_a_warning(
    tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture, refs: bool
) -> None:
    """Two ROIs named 'ROI-1' in one RTSTRUCT (the real rt-utils file, its ROI drawn again
    12 mm to the side as ROI 2): the label is their union, and a warning names the ROI, both
    numbers and the file. It used to keep only one of them."""
    masks = {}
    for what in ("first", "second"):
        rt = _rt_copy(shared_data, tmp_path / what)
        _shifted_rois(rt, 0.0 if what == "first" else 12.0, duplicate=False, refs=refs)
        masks[what] = _only_case(import_rtstruct(rt.parent, tmp_path / f"{what}_out", progress=False))[
            1
        ].array
    assert (masks["first"] & masks["second"]).any() and (masks["second"] & ~masks["first"].astype(bool)).any()
    rt = _rt_copy(shared_data, tmp_path / "both")
    _shifted_rois(rt, 12.0, duplicate=True, refs=refs)
    with caplog.at_level("WARNING", logger="medseg.data.adapters.dicom_labels"):
        out = import_rtstruct(rt.parent, tmp_path / "out", progress=False)
    assert read_descriptor(out).labels == {"background": 0, "ROI-1": 1}
    label = _only_case(out)[1].array
    union = (masks["first"] > 0) | (masks["second"] > 0)
    np.testing.assert_array_equal(label, union.astype(label.dtype))
    (message,) = [r.getMessage() for r in caplog.records if "share the name" in r.getMessage()]
    assert f"{rt}: ROIs 1 and 2 share the name 'ROI-1'" in message
    assert f"union: {int(union.sum())} voxels" in message
    assert f"ROI 1: {int((masks['first'] > 0).sum())}, ROI 2: {int((masks['second'] > 0).sum())}" in message
    # --labels names it once, and --overlap regions makes no 'ROI-1+ROI-1'
    declared = {"background": 0, "ROI-1": 1}
    out2 = import_rtstruct(
        rt.parent, tmp_path / "out2", labels=declared, on_overlap="regions", progress=False
    )
    assert read_descriptor(out2).labels == declared
    np.testing.assert_array_equal(_only_case(out2)[1].array, label)


def test_an_roi_without_contours_is_an_empty_label(tmp_path: Path, shared_data: Path) -> None:
    """An empty structure (declared, never contoured) in the real RTSTRUCT: a declared label
    with no voxels, on the rt-utils path too (rt-utils raised a bare Exception for it)."""
    import copy

    rt = _rt_copy(shared_data, tmp_path / "src")
    ref = _only_case(import_rtstruct(rt.parent, tmp_path / "ref", progress=False))[1].array
    ds = pydicom.dcmread(rt)
    roi = copy.deepcopy(ds.StructureSetROISequence[0])
    roi.ROINumber, roi.ROIName = 2, "Empty"
    ds.StructureSetROISequence.append(roi)
    ds.save_as(rt)
    out = import_rtstruct(rt.parent, tmp_path / "out", progress=False)
    assert read_descriptor(out).labels == {"background": 0, "ROI-1": 1, "Empty": 2}
    np.testing.assert_array_equal(_only_case(out)[1].array, ref)


def _renamed_copy(rt_path: Path, name: str, *, between_slices: bool = False) -> Path:
    """A copy of the real RTSTRUCT with its ROI renamed (and, if asked, its contours moved
    between the slices at 60 and 65 mm, which the import refuses)."""
    ds = pydicom.dcmread(rt_path)
    ds.StructureSetROISequence[0].ROIName = name
    ds.SOPInstanceUID = generate_uid()
    if between_slices:
        for contour in ds.ROIContourSequence[0].ContourSequence:
            del contour.ContourImageSequence
            contour.ContourData = [v + 2.5 if i % 3 == 2 else v for i, v in enumerate(contour.ContourData)]
    out = rt_path.with_name(f"rt_{name}.dcm")
    ds.save_as(out)
    return out


def test_a_skipped_rtstruct_takes_back_the_names_only_it_had(
    tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--skip-invalid without --labels: dataset.json declares the names of the imported cases
    only, numbered without a gap (it used to declare 'Broken' = 2, which no case holds).
    With --labels the mapping is kept as given, and the name no case holds is named."""
    rt = _rt_copy(shared_data, tmp_path / "src")
    broken = _renamed_copy(rt, "Broken", between_slices=True)
    later = _renamed_copy(rt, "Later")
    files = [rt, broken, later]
    out = import_rtstruct(
        tmp_path / "src", tmp_path / "out", rtstruct_files=files, skip_invalid=True, progress=False
    )
    desc = read_descriptor(out)
    assert desc.labels == {"background": 0, "ROI-1": 1, "Later": 2}
    assert [s["source"] for s in desc.extra[IMPORT_KEY]["skipped"]] == ["rt_Broken.dcm"]
    cases = list_cases(out)
    assert [c.case_id for c in cases] == ["case_0001", "case_0003"]
    assert [int(read_itk(c.label).array.max()) for c in cases] == [1, 2]  # type: ignore[arg-type]
    assert check_dataset(out).ok
    # --labels: what the user named stays, even the name only the skipped file had
    named = {"background": 0, "ROI-1": 1, "Broken": 2, "Later": 3}
    with caplog.at_level("WARNING", logger="medseg.data.adapters.dicom_labels"):
        out2 = import_rtstruct(
            tmp_path / "src",
            tmp_path / "out2",
            rtstruct_files=files,
            labels=named,
            skip_invalid=True,
            progress=False,
        )
    assert read_descriptor(out2).labels == named
    assert [int(read_itk(c.label).array.max()) for c in list_cases(out2)] == [1, 3]  # type: ignore[arg-type]
    (warning,) = [r.getMessage() for r in caplog.records if "--labels declares" in r.getMessage()]
    assert "Broken=2" in warning and "1 case(s) skipped" in warning and "keeps them as given" in warning


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydicom warnings from rt-utils save()
def test_generated_oblique_non_square_rtstruct(tmp_path: Path, shared_data: Path) -> None:
    """50 x 100 pixels of 3.5 x 2.5 mm, oblique: rt-utils 1.2.7 gets rows/columns wrong here."""
    from rt_utils import RTStructBuilder

    study = tmp_path / "study"
    datasets = _oriented_copy(shared_data, study)
    series = load_series(ImageSeries(uid="x", files=sorted(study.glob("*.dcm"))))
    geometry = series.volume.geometry
    rt = RTStructBuilder.create_new(str(study))
    box = np.zeros((50, 100, 3), bool)
    box[10:31, 20:61, 1] = True
    rt.add_roi(mask=box, name="Box")
    # replace rt-utils' contour by the exact world corners of pixel centres rows 10..30, cols 20..60
    corners = np.array([[1, 10, 20], [1, 10, 60], [1, 30, 60], [1, 30, 20]], float)
    (contour,) = rt.ds.ROIContourSequence[0].ContourSequence
    contour.ContourData = [float(v) for v in geometry.index_to_world(corners).reshape(-1)]
    contour.NumberOfContourPoints = 4
    contour.ContourImageSequence[0].ReferencedSOPInstanceUID = series.sop_uids[1]
    rt.save(str(study / "rt.dcm"))
    out = import_rtstruct(study, tmp_path / "out", progress=False)
    image, label = _only_case(out)
    expected = np.zeros(image.shape, np.uint8)
    expected[1, 10:31, 20:61] = 1
    np.testing.assert_array_equal(label.array, expected)
    assert image.shape == (3, 50, 100) and len(datasets) == 3
    assert "SECRET-ID-123" not in (out / "dataset.json").read_text()


def test_pseudonyms_are_keyed_and_cannot_be_recomputed_from_the_id() -> None:
    assert pseudonym("JANCT000") == pseudonym("JANCT000") != pseudonym("JANCT001")
    unkeyed = "p" + hashlib.sha256(b"medseg-patient:JANCT000").hexdigest()[:12]
    assert pseudonym("JANCT000") != unkeyed
    assert pseudonym("JANCT000", b"k1") != pseudonym("JANCT000", b"k2")
    assert len(pseudonym("x")) == 13 and pseudonym("x").startswith("p")


def test_overlapping_segments_kept_as_regions(tmp_path: Path, shared_data: Path) -> None:
    """dcmqi's partial_overlaps.dcm: with on_overlap='regions' every segment survives whole as a
    region (the union of its own value and the overlap values containing it), and painting the
    regions gives what 'overwrite' gives."""
    from medseg.data.regions import paint_regions, region_masks

    src = shared_data / "dcmqi_seg" / "segmentations"
    seg = src / "partial_overlaps.dcm"
    out = import_dicom_seg(src, tmp_path / "out", seg_files=[seg], on_overlap="regions", progress=False)
    desc = read_descriptor(out)
    singles = {"GREEN": 1, "ORANGE": 2, "PURPLE": 3, "LIGHT_BLUE": 4, "DARK_BLUE": 5}
    assert {k: v for k, v in desc.labels.items() if "+" not in k} == {"background": 0, **singles}
    combos = {k: v for k, v in desc.labels.items() if "+" in k}
    assert combos and min(combos.values()) == 6  # after the declared values
    assert list(desc.regions) == list(singles)
    assert desc.regions_class_order == tuple(singles.values())
    for name, values in desc.regions.items():
        assert singles[name] in values
        assert all(name in combo.split("+") for combo, v in combos.items() if v in values)
    _, label = _only_case(out)
    parts = [read_itk(src / f"partial_overlaps-{i}.nrrd").array for i in (1, 2, 3)]
    masks = region_masks(label.array, list(desc.regions.values()))
    for (name, value), mask in zip(singles.items(), masks, strict=True):
        truth = np.logical_or.reduce([p == value for p in parts])
        np.testing.assert_array_equal(mask, truth, err_msg=name)
    assert masks.sum(axis=0).max() >= 2  # the overlaps are really there
    painted = paint_regions(masks, desc.regions_class_order)
    np.testing.assert_array_equal(painted, np.maximum.reduce(parts))


def test_overlapping_rois_kept_as_regions(tmp_path: Path, shared_data: Path) -> None:
    rt_path = _rt_copy(shared_data, tmp_path / "src")
    ref = _only_case(import_rtstruct(tmp_path / "src", tmp_path / "ref", progress=False))[1].array > 0
    ds = _add_copy_of_first_roi(rt_path)
    out = import_rtstruct(tmp_path / "src", tmp_path / "out", on_overlap="regions", progress=False)
    desc = read_descriptor(out)
    name = ds.StructureSetROISequence[0].ROIName
    assert desc.labels == {"background": 0, name: 1, "Copy": 2, f"{name}+Copy": 3}
    assert desc.regions == {name: (1, 3), "Copy": (2, 3)}
    label = _only_case(out)[1].array
    assert set(np.unique(label)) == {0, 3}  # the copy lies exactly on the original
    np.testing.assert_array_equal(label == 3, ref)


def test_a_skipped_case_takes_its_overlap_values_back(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overlap regions --skip-invalid: the overlapping SEG fails when written (here: forced),
    so dataset.json must not declare the overlap values only it had."""
    from medseg.data.dataset import DatasetWriter

    src = shared_data / "dcmqi_seg" / "segmentations"
    real_add = DatasetWriter.add_case

    def failing(self: DatasetWriter, case_id: str, *args: object, **kwargs: object) -> list[str]:
        if case_id == "case_0001":
            raise InputError(None, "forced failure")
        return real_add(self, case_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DatasetWriter, "add_case", failing)
    out = import_dicom_seg(
        src,
        tmp_path / "out",
        seg_files=[src / "partial_overlaps.dcm", src / "liver.dcm"],
        on_overlap="regions",
        skip_invalid=True,
        progress=False,
    )
    desc = read_descriptor(out)
    assert not any("+" in name for name in desc.labels), desc.labels
    assert desc.regions == {}  # the case imported has no overlap: plain labels


def test_a_case_whose_name_clashes_with_an_overlap_is_skipped_alone(
    tmp_path: Path, shared_data: Path
) -> None:
    """--overlap regions --skip-invalid without --labels: one RTSTRUCT's ROIs 'a' and 'b'
    overlap (their overlap is the label 'a+b'), another holds an ROI named 'a+b'. That file is
    skipped and takes its name back; the import of the others goes on (it used to keep the
    name and fail at the end, after every case)."""
    rt = _rt_copy(shared_data, tmp_path / "src")
    clash = _renamed_copy(rt, "a+b")
    ds = _shifted_rois(rt, 12.0, duplicate=True, refs=True)
    ds.StructureSetROISequence[0].ROIName = "a"
    ds.StructureSetROISequence[1].ROIName = "b"
    ds.save_as(rt)
    out = import_rtstruct(
        tmp_path / "src",
        tmp_path / "out",
        rtstruct_files=[rt, clash],
        on_overlap="regions",
        skip_invalid=True,
        progress=False,
    )
    desc = read_descriptor(out)
    assert desc.labels == {"background": 0, "a": 1, "b": 2, "a+b": 3}
    (skipped,) = desc.extra[IMPORT_KEY]["skipped"]
    assert skipped["source"] == "rt_a+b.dcm" and "rename one of them" in skipped["reason"]
    assert desc.regions == {"a": (1, 3), "b": (2, 3)}


_PARTIAL_SINGLES = {"background": 0, "GREEN": 1, "ORANGE": 2, "PURPLE": 3, "LIGHT_BLUE": 4, "DARK_BLUE": 5}


def test_labels_entry_sets_the_value_of_an_overlap(
    tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--labels GREEN+ORANGE=20 on the real partial_overlaps.dcm: that overlap gets 20 (it used to
    be refused), the others are numbered after it, each voxel keeps its combination of segments,
    and the regions hold the given value; a declared overlap no case has stays declared, with a
    warning naming it."""
    src = shared_data / "dcmqi_seg" / "segmentations"
    seg = src / "partial_overlaps.dcm"
    ref_out = import_dicom_seg(src, tmp_path / "ref", seg_files=[seg], on_overlap="regions", progress=False)
    ref_labels = read_descriptor(ref_out).labels
    ref = _only_case(ref_out)[1].array
    declared = {**_PARTIAL_SINGLES, "GREEN+ORANGE": 20, "LIGHT_BLUE+DARK_BLUE": 30}
    with caplog.at_level("WARNING", logger="medseg.data.adapters.dicom_labels"):
        out = import_dicom_seg(
            src, tmp_path / "out", seg_files=[seg], labels=declared, on_overlap="regions", progress=False
        )
    desc = read_descriptor(out)
    assert {k: desc.labels[k] for k in declared} == declared
    assert set(desc.labels) == set(ref_labels) | set(declared)
    numbered = sorted(v for k, v in desc.labels.items() if k not in declared)
    assert numbered == list(range(31, 31 + len(numbered)))  # after every declared value
    label = _only_case(out)[1].array
    for name, value in ref_labels.items():
        np.testing.assert_array_equal(label == desc.labels[name], ref == value, err_msg=name)
    assert (label == 20).any()
    green = sorted(v for k, v in desc.labels.items() if "GREEN" in k.split("+"))
    assert 20 in green and desc.regions["GREEN"] == tuple(green)
    assert desc.regions["LIGHT_BLUE"] == (4, 30) and desc.regions["DARK_BLUE"] == (5, 30)
    assert "GREEN+ORANGE" not in desc.regions and "LIGHT_BLUE+DARK_BLUE" not in desc.regions
    (message,) = [r.getMessage() for r in caplog.records if "--labels declares" in r.getMessage()]
    assert "LIGHT_BLUE+DARK_BLUE=30" in message and "GREEN+ORANGE" not in message
    assert check_dataset(out, progress=False).ok


def test_labels_entry_naming_an_overlap_in_another_order_is_refused(
    tmp_path: Path, shared_data: Path
) -> None:
    from medseg.errors import ConfigError

    src = shared_data / "dcmqi_seg" / "segmentations"
    declared = {**_PARTIAL_SINGLES, "ORANGE+GREEN": 20}
    with pytest.raises(ConfigError, match=r"'ORANGE\+GREEN'.*names 'GREEN\+ORANGE'.*write GREEN\+ORANGE=20"):
        import_dicom_seg(
            src,
            tmp_path / "out",
            seg_files=[src / "partial_overlaps.dcm"],
            labels=declared,
            on_overlap="regions",
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_no_overlap_found_declares_no_regions(
    tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--overlap regions on cases without overlaps (the real liver SEG, the real rt-utils
    RTSTRUCT): plain labels, no regions in dataset.json, and one log line saying so."""
    src = shared_data / "dcmqi_seg" / "segmentations"
    rt_src = _rt_copy(shared_data, tmp_path / "rt_src").parent
    for kind, run in [
        ("DICOM SEG", lambda out: import_dicom_seg(
            src, out, seg_files=[src / "liver.dcm"], on_overlap="regions", progress=False)),
        ("RTSTRUCT", lambda out: import_rtstruct(rt_src, out, on_overlap="regions", progress=False)),
    ]:  # fmt: skip
        caplog.clear()
        with caplog.at_level("INFO", logger="medseg.data.adapters.dicom_labels"):
            out = run(tmp_path / kind.replace(" ", "_"))
        desc = read_descriptor(out)
        assert desc.regions == {} and desc.regions_class_order == ()
        assert "regions" not in json.loads((out / "dataset.json").read_text())
        assert not any("+" in name for name in desc.labels)
        lines = [r.getMessage() for r in caplog.records if "overlap" in r.getMessage()]
        assert lines == [
            f"--overlap regions: no {kind} segments overlap in the 1 imported case(s); "
            "dataset.json declares plain labels, no regions"
        ]
        assert check_dataset(out, progress=False).ok
