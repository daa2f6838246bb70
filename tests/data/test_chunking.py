"""Chunking long series into sub-volumes: bounds, world geometry of each chunk, and the inverse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.data.chunking import (
    chunk_bounds,
    chunk_geometry,
    chunk_volume,
    join_chunks,
    read_chunk_records,
    stitch_chunk_files,
)
from medseg.data.dataset import create_dataset
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.io.itk import read_itk, write_itk
from medseg.volume import Volume
from tests.conftest import make_oblique_volume


@pytest.mark.parametrize(
    ("n", "size", "overlap", "expected"),
    [
        (130, 65, 0, [(0, 65), (65, 130)]),
        (150, 65, 0, [(0, 65), (65, 130), (85, 150)]),  # last chunk moved back to end at 150
        (40, 65, 0, [(0, 40)]),  # shorter than a chunk: the whole series
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (11, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]),
        (5, 1, 0, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
    ],
)
def test_chunk_bounds(n: int, size: int, overlap: int, expected: list[tuple[int, int]]) -> None:
    bounds = chunk_bounds(n, size, overlap)
    assert bounds == expected
    covered = np.zeros(n, bool)
    for start, stop in bounds:
        covered[start:stop] = True
    assert covered.all()


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (4, 4), (4, -1)])
def test_bad_chunk_options(size: int, overlap: int) -> None:
    with pytest.raises(ConfigError):
        chunk_bounds(10, size, overlap)


def test_chunk_voxels_keep_their_world_position() -> None:
    vol = make_oblique_volume(shape=(12, 20, 16))
    chunks = chunk_volume(vol, 5, overlap=2)
    assert [c.shape[0] for c in chunks] == [5, 5, 5, 5]
    idx = np.array([[0, 0, 0], [4, 19, 15], [2, 7, 3]], float)
    for chunk, (start, stop) in zip(chunks, chunk_bounds(12, 5, 2), strict=True):
        np.testing.assert_array_equal(chunk.array, vol.array[start:stop])
        np.testing.assert_allclose(
            chunk.index_to_world(idx), vol.index_to_world(idx + np.array([start, 0, 0])), atol=1e-9
        )
        assert chunk.spacing == vol.spacing
        np.testing.assert_array_equal(chunk.direction, vol.direction)
        assert chunk.meta["chunk_start"] == start


def test_join_chunks_is_the_inverse() -> None:
    vol = make_oblique_volume(shape=(13, 6, 7))
    chunks = chunk_volume(vol, 4, overlap=1)
    back = join_chunks(chunks[::-1], vol.geometry)  # order does not matter: placed by world origin
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry.is_close(vol.geometry)


def test_join_refuses_chunks_off_the_grid() -> None:
    vol = make_oblique_volume(shape=(10, 6, 7))
    chunk = chunk_volume(vol, 4)[1]
    half_slice = vol.geometry.index_to_world([4.5, 0, 0])
    shifted = type(chunk)(chunk.array, chunk.spacing, half_slice, chunk.direction)
    with pytest.raises(GeometryError, match="whole slices"):
        join_chunks([shifted], vol.geometry)
    beyond = chunk_geometry(make_oblique_volume(shape=(20, 6, 7)).geometry, 12, 16)
    with pytest.raises(GeometryError, match="whole slices"):
        join_chunks([type(chunk)(chunk.array, geometry=beyond)], vol.geometry)
    with pytest.raises(GeometryError, match="outside"):
        chunk_geometry(vol.geometry, 8, 12)


def test_overlaps_take_each_slice_from_the_chunk_where_it_lies_farthest_from_a_cut() -> None:
    vol = make_oblique_volume(shape=(11, 3, 4))
    chunks = chunk_volume(vol, 4, overlap=2)  # starts 0, 2, 4, 6, then 7 (moved back to end at 11)
    marked = [c.with_array(np.full(c.shape, k, np.int16)) for k, c in enumerate(chunks)]
    forward = join_chunks(marked, vol.geometry)
    backward = join_chunks(marked[::-1], vol.geometry)
    np.testing.assert_array_equal(forward.array, backward.array)  # order does not matter
    # Depth of a slice = distance to the nearest cut (the scan's own ends are not cuts):
    # slice 2 is 1 from chunk 0's cut, 0 from chunk 1's; slice 8 is 1 deep in chunks 3 and
    # 4 (a tie: the earlier chunk); slice 9 is 2 deep in chunk 4.
    assert forward.array[:, 0, 0].tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_join_leaves_uncovered_slices_to_fill() -> None:
    vol = make_oblique_volume(shape=(10, 3, 4))
    chunks = chunk_volume(vol, 4)
    back = join_chunks([chunks[0], chunks[2]], vol.geometry, fill=-1)
    np.testing.assert_array_equal(back.array[4:6], -1)
    np.testing.assert_array_equal(back.array[6:], vol.array[6:])


# ------------------------------------------------------------------- stitching files
LABELS = {"background": 0, "organ": 1, "lesion": 3}


def _chunked_dataset(root: Path, size: int = 5, overlap: int = 1) -> tuple[Volume, Volume]:
    """One training scan of 12 slices (oblique, non-zero origin) and one test scan, chunked."""
    image = make_oblique_volume(shape=(12, 20, 16))
    label = np.zeros(image.shape, dtype=np.uint8)
    label[3:10, 5:12, 3:10] = 1
    label[5:9, 7:9, 5:7] = 3
    label_vol = image.with_array(label)
    source = root.parent / "src"
    source.mkdir(exist_ok=True)
    with create_dataset(
        root, source=source, channel_names=["MR"], labels=LABELS, chunk=size, chunk_overlap=overlap
    ) as w:
        w.add_case("scan", [image], label_vol, source="scan")
        w.add_case("other", [make_oblique_volume(shape=(7, 20, 16), seed=1)], None, test=True, source="o")
    return image, label_vol


def test_stitch_gives_back_the_scan_array_and_grid(tmp_path: Path) -> None:
    image, label = _chunked_dataset(tmp_path / "ds")
    records = read_chunk_records(tmp_path / "ds")
    assert [(r.start, r.stop) for r in records["scan"]] == [(0, 5), (4, 9), (7, 12)]
    written = stitch_chunk_files(tmp_path / "ds", tmp_path / "ds" / "labelsTr", tmp_path / "stitched")
    assert written == [tmp_path / "stitched" / "scan.nii.gz"]  # 'other' has no label: skipped
    back = read_itk(written[0])
    np.testing.assert_array_equal(back.array, label.array)
    assert back.dtype == np.uint8
    # the chunk files are NIfTI: float32 header round-off only
    back.geometry.require_same(image.geometry, origin_atol=1e-4, direction_atol=1e-6)


def test_stitch_of_predictions_keeps_the_best_placed_slices(tmp_path: Path) -> None:
    _chunked_dataset(tmp_path / "ds", size=5, overlap=2)
    records = read_chunk_records(tmp_path / "ds")
    preds = tmp_path / "preds"
    preds.mkdir()
    for k, r in enumerate(records["scan"] + records["other"]):
        chunk = read_itk(
            tmp_path / "ds" / ("imagesTr" if r.case == "scan" else "imagesTs") / f"{r.chunk_id}_0000.nii.gz"
        )
        write_itk(chunk.with_array(np.full(chunk.shape, k + 1, np.uint8)), preds / f"{r.chunk_id}.nii.gz")
    (preds / "notes.txt").write_text("not a chunk")
    written = stitch_chunk_files(tmp_path / "ds", preds, tmp_path / "out")
    assert [p.name for p in written] == ["other.nii.gz", "scan.nii.gz"]
    # chunks (0,5) (3,8) (6,11) (7,12), values 1..4: each slice from the chunk where it is deepest
    stitched = read_itk(tmp_path / "out" / "scan.nii.gz")
    assert stitched.array[:, 0, 0].tolist() == [1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4]
    assert read_itk(tmp_path / "out" / "other.nii.gz").shape == (7, 20, 16)


def test_stitch_refuses_incomplete_scans_and_files_off_their_grid(tmp_path: Path) -> None:
    _chunked_dataset(tmp_path / "ds")
    labels = tmp_path / "ds" / "labelsTr"
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("scan_chunk000.nii.gz", "scan_chunk002.nii.gz"):
        (partial / name).write_bytes((labels / name).read_bytes())
    with pytest.raises(InputError, match=r"scan 'scan' is incomplete.*no file for scan_chunk001"):
        stitch_chunk_files(tmp_path / "ds", partial, tmp_path / "out")
    moved = read_itk(labels / "scan_chunk001.nii.gz")
    shifted = Volume(
        moved.array,
        moved.spacing,
        np.add(moved.origin, 0.5 * np.asarray(moved.direction[:, 0]) * moved.spacing[0]),
        moved.direction,
    )
    write_itk(shifted, partial / "scan_chunk001.nii.gz")
    with pytest.raises(GeometryError, match=r"scan 'scan': chunk 1 .* whole slices"):
        stitch_chunk_files(tmp_path / "ds", partial, tmp_path / "out")
    short = Volume(moved.array[:3], moved.spacing, moved.origin, moved.direction)
    write_itk(short, partial / "scan_chunk001.nii.gz", overwrite=True)
    with pytest.raises(
        InputError, match=r"scan_chunk001.nii.gz: does not have its chunk's slices.*expected 5 slices"
    ):
        stitch_chunk_files(tmp_path / "ds", partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="outside"):
        stitch_chunk_files(tmp_path / "ds", labels, labels / "stitched")
    with pytest.raises(InputError, match="holds no chunk files"):
        stitch_chunk_files(tmp_path / "ds", tmp_path / "src", tmp_path / "out")


def test_stitch_needs_a_chunked_dataset(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    image = make_oblique_volume()
    with create_dataset(tmp_path / "ds", source=source, channel_names=["MR"], labels=LABELS) as w:
        w.add_case("scan", [image], image.with_array(np.zeros(image.shape, np.uint8)), source="scan")
    with pytest.raises(InputError, match=r"dataset.json: records no chunks.*--chunk"):
        read_chunk_records(tmp_path / "ds")


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("grid", ["oblique-left-handed", "sagittal-left-handed"])
def test_stitch_puts_chunks_of_a_left_handed_scan_back_voxel_for_voxel(
    tmp_path: Path, ending: str, grid: str
) -> None:
    from tests.conftest import make_awkward_volume

    image = make_awkward_volume(grid, dtype=np.float32, shape=(11, 9, 7))
    label = image.with_array(make_awkward_volume(grid, dtype=np.uint8, shape=(11, 9, 7)).array)
    source = tmp_path / "src"
    source.mkdir()
    with create_dataset(
        tmp_path / "ds",
        source=source,
        channel_names=["MR"],
        labels=LABELS | {"x": 2, "y": 4},
        file_ending=ending,
        chunk=4,
        chunk_overlap=1,
    ) as w:
        w.add_case("scan", [image], label, source="scan")
    (written,) = stitch_chunk_files(tmp_path / "ds", tmp_path / "ds" / "labelsTr", tmp_path / "out")
    assert written.name == f"scan{ending}"
    back = read_itk(written)
    np.testing.assert_array_equal(back.array, label.array)
    tolerance = {"origin_atol": 1e-4, "direction_atol": 1e-6} if ending == ".nii.gz" else {}
    back.geometry.require_same(label.geometry, **tolerance)


def test_stitch_gives_the_scan_back_its_two_nifti_transforms(tmp_path: Path) -> None:
    """A scan whose NIfTI qform and sform disagree: its chunks carry both, moved to each chunk's
    first slice, and the stitched label map gets the scan's own two back (it was written with
    medseg's one transform in both fields, off the sform by 5 mm in every viewer that reads it)."""
    import nibabel as nib

    from tests.conftest import give_nifti_a_second_transform

    image = make_oblique_volume(shape=(12, 20, 16))
    label = np.zeros(image.shape, dtype=np.uint8)
    label[3:10, 5:12, 3:10] = 1
    source = tmp_path / "src"
    image_file = write_itk(image, source / "scan.nii.gz")
    label_file = write_itk(image.with_array(label), source / "scan_seg.nii.gz")
    qform, sform = give_nifti_a_second_transform(image_file, sform_code=2)
    give_nifti_a_second_transform(label_file, sform_code=2)
    with create_dataset(
        tmp_path / "ds", source=source, channel_names=["MR"], labels=LABELS, chunk=5, chunk_overlap=1
    ) as w:
        w.add_case("scan", [read_itk(image_file)], read_itk(label_file), source="scan")
    shift = np.eye(4)
    shift[2, 3] = 7.0  # the third chunk starts at slice 7
    chunk = nib.load(tmp_path / "ds" / "labelsTr" / "scan_chunk002.nii.gz").header
    np.testing.assert_allclose(chunk.get_sform(), sform @ shift, atol=1e-4)
    np.testing.assert_allclose(chunk.get_qform(), qform @ shift, atol=1e-3)
    (written,) = stitch_chunk_files(tmp_path / "ds", tmp_path / "ds" / "labelsTr", tmp_path / "out")
    header = nib.load(written).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)
    np.testing.assert_allclose(header.get_sform(), sform, atol=1e-4)
    np.testing.assert_allclose(header.get_qform(), qform, atol=1e-3)
    back = read_itk(written)
    np.testing.assert_array_equal(back.array, label)
    back.geometry.require_same(read_itk(label_file).geometry, origin_atol=1e-4, direction_atol=1e-6)
