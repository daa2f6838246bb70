"""Every grid-changing step on awkward grids: oblique and left-handed directions,
anisotropic spacing (0.6 x 0.45 x 3.3 mm), odd sizes, non-zero origins.

Each test checks a property against an independent computation (world positions of
voxel centres from the grid's own index_to_world / world_to_index, or another code path
that must agree), not against the implementation's own output.
"""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.chunking import chunk_volume, join_chunks
from medseg.geometry.crop import CropBox, crop, pad, pad_to_multiple, uncrop, unpad
from medseg.geometry.orientation import closest_orientation, plan_reorientation, reorient
from medseg.geometry.resample import grid_for_spacing, resample_image, resample_label
from medseg.volume import VolumeGeometry
from tests.conftest import AWKWARD_GRIDS, assert_same_world_values, make_awkward_volume

GRIDS = sorted(AWKWARD_GRIDS)
EXACT = {"spacing_atol": 0.0, "origin_atol": 1e-9, "direction_atol": 1e-12}


# ------------------------------------------------------------------ reorientation
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("code", ["RAS", "LPS", "PIL", "ASR"])
def test_reorient_keeps_world_positions_and_inverts_exactly(grid: str, code: str) -> None:
    vol = make_awkward_volume(grid)
    out = reorient(vol, code)
    assert closest_orientation(out) == code
    assert_same_world_values(vol, out)
    back = reorient(out, closest_orientation(vol))
    np.testing.assert_array_equal(back.array, vol.array)
    back.geometry.require_same(vol.geometry, **EXACT)
    # the plan's own inverse undoes it too
    plan = plan_reorientation(vol, code)
    np.testing.assert_array_equal(plan.inverse().apply_array(out.array), vol.array)
    plan.inverse().apply_geometry(out.geometry).require_same(vol.geometry, **EXACT)


@pytest.mark.parametrize("grid", GRIDS)
def test_resampling_onto_a_reoriented_grid_equals_reorienting(grid: str) -> None:
    """Two independent paths (ITK resampling, numpy axis moves) must put every voxel in the same place."""
    image = make_awkward_volume(grid, dtype=np.float32)
    label = make_awkward_volume(grid, dtype=np.uint8)
    for code in ("RAS", "PIL"):
        moved = reorient(image, code)
        resampled = resample_image(image, moved.geometry, interpolation="linear")
        np.testing.assert_allclose(resampled.array, moved.array, atol=1e-4)
        moved_label = reorient(label, code)
        np.testing.assert_array_equal(resample_label(label, moved_label.geometry).array, moved_label.array)


# ------------------------------------------------------------------ resampling
def _shifted_grid(geometry: VolumeGeometry, shift: tuple[int, int, int]) -> VolumeGeometry:
    """Same spacing and direction, origin moved by whole voxels (z, y, x)."""
    return geometry.with_shape_origin(geometry.shape, geometry.index_to_world(np.asarray(shift, dtype=float)))


@pytest.mark.parametrize("grid", GRIDS)
def test_linear_resampling_onto_a_whole_voxel_shift_moves_the_array(grid: str) -> None:
    image = make_awkward_volume(grid, dtype=np.float32)
    target = _shifted_grid(image.geometry, (2, -3, 1))
    out = resample_image(image, target, interpolation="linear", default_value=-1.0)
    # target voxel (z, y, x) is source voxel (z + 2, y - 3, x + 1)
    expected = np.full(image.shape, -1.0, dtype=np.float32)
    expected[:-2, 3:, :-1] = image.array[2:, :-3, 1:]
    np.testing.assert_allclose(out.array, expected, atol=1e-4)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("spacing", [(1.3, 0.31, 0.37), (0.7, 1.9, 0.27)])
def test_nearest_label_resampling_takes_the_nearest_source_voxel(
    grid: str, spacing: tuple[float, float, float]
) -> None:
    label = make_awkward_volume(grid, dtype=np.int16)
    target = grid_for_spacing(label.geometry, spacing)
    out = resample_label(label, target)
    assert out.dtype == label.dtype
    idx_t = np.argwhere(np.ones(target.shape, dtype=bool))
    idx_s = label.world_to_index(target.index_to_world(idx_t))
    nearest = np.round(idx_s)
    # ties (a target centre half-way between source centres) may go either way: skip them
    clear = np.all(np.abs(np.abs(idx_s - nearest) - 0.5) > 1e-3, axis=1)
    inside = np.all((nearest >= 0) & (nearest < np.asarray(label.shape)), axis=1)
    keep = clear & inside
    assert keep.mean() > 0.5
    src = nearest[keep].astype(int)
    np.testing.assert_array_equal(out.array[tuple(idx_t[keep].T)], label.array[tuple(src.T)])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("mode", ["nearest", "onehot-linear"])
def test_label_upsampled_by_whole_factors_and_back_is_exact(grid: str, mode: str) -> None:
    label = make_awkward_volume(grid, dtype=np.uint8)
    fine = grid_for_spacing(label.geometry, np.asarray(label.spacing) / np.array([3, 2, 3]))
    up = resample_label(label, fine, interpolation=mode)  # type: ignore[arg-type]
    assert up.shape == tuple(np.array(label.shape) * [3, 2, 3])
    back = resample_label(up, label.geometry, interpolation=mode)  # type: ignore[arg-type]
    np.testing.assert_array_equal(back.array, label.array)
    back.geometry.require_same(label.geometry, **EXACT)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.bool_])
@pytest.mark.parametrize("mode", ["nearest", "onehot-linear"])
def test_label_resampling_keeps_the_dtype_and_only_existing_values(dtype: type, mode: str) -> None:
    label = make_awkward_volume("oblique-left-handed", dtype=np.int64)
    arr = label.array * 1000 if np.dtype(dtype).itemsize >= 4 else label.array  # values beyond 255
    label = label.with_array((arr > 1) if dtype is np.bool_ else arr.astype(dtype))
    target = grid_for_spacing(label.geometry, (1.1, 0.9, 0.25))
    out = resample_label(label, target, interpolation=mode)  # type: ignore[arg-type]
    assert out.dtype == label.dtype
    assert set(np.unique(out.array).tolist()) <= set(np.unique(label.array).tolist())


@pytest.mark.parametrize("mode", ["nearest", "onehot-linear"])
@pytest.mark.parametrize("values", [(2,), (1, 3)])
def test_outside_the_source_is_background_even_when_the_map_holds_none(
    mode: str, values: tuple[int, ...]
) -> None:
    """A mask filling its whole grid (no background voxel) resampled onto a larger grid."""
    label = make_awkward_volume("oblique-left-handed", dtype=np.uint8)
    label = label.with_array(np.asarray(values, dtype=np.uint8)[label.array % len(values)])
    padded = pad(label, 2, 3, value=0)
    out = resample_label(label, padded.geometry, interpolation=mode)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out.array, padded.array)


def test_nearest_image_resampling_keeps_a_boolean_mask_boolean() -> None:
    mask = make_awkward_volume("sagittal-left-handed", dtype=np.uint8)
    mask = mask.with_array(mask.array > 2)
    target = grid_for_spacing(mask.geometry, (1.0, 1.0, 1.0))
    assert resample_image(mask, target, interpolation="nearest").dtype == np.bool_


# ------------------------------------------------------------------ crop, pad, chunks
@pytest.mark.parametrize("grid", GRIDS)
def test_crop_and_pad_keep_world_positions_and_invert(grid: str) -> None:
    vol = make_awkward_volume(grid)
    box = CropBox((1, 2, 3), (6, 11, 8))
    cropped = crop(vol, box)
    assert_same_world_values(vol, cropped)
    back = uncrop(cropped, vol.geometry, fill=-1)
    back.geometry.require_same(vol.geometry, **EXACT)
    np.testing.assert_array_equal(back.array[box.slices], vol.array[box.slices])
    assert np.all(back.array[:1] == -1)

    padded = pad(vol, (1, 0, 2), (0, 3, 1), value=-7)
    assert_same_world_values(padded, vol)
    unpadded = unpad(padded, (1, 0, 2), (0, 3, 1))
    np.testing.assert_array_equal(unpadded.array, vol.array)
    unpadded.geometry.require_same(vol.geometry, **EXACT)

    multiple, spec = pad_to_multiple(vol, 4)
    assert multiple.shape == (8, 12, 12)
    assert_same_world_values(multiple, vol)
    spec.unpad(multiple).geometry.require_same(vol.geometry, **EXACT)


@pytest.mark.parametrize("grid", GRIDS)
def test_chunks_keep_world_positions_and_join_back(grid: str) -> None:
    vol = make_awkward_volume(grid, shape=(11, 5, 7))
    chunks = chunk_volume(vol, 4, overlap=1)
    for chunk in chunks:
        assert_same_world_values(vol, chunk)
    joined = join_chunks(chunks[::-1], vol.geometry)
    np.testing.assert_array_equal(joined.array, vol.array)
    joined.geometry.require_same(vol.geometry, **EXACT)


@pytest.mark.parametrize("interpolation", ["linear", "bspline", "nearest"])
@pytest.mark.parametrize("dtype", [np.int16, np.float64])
def test_image_resampling_gives_one_type_whatever_the_target_grid(interpolation: str, dtype: type) -> None:
    """float32 unless nearest (then the input's type), onto its own grid as onto another."""
    image = make_awkward_volume("oblique-left-handed", dtype=dtype)
    expected = np.dtype(dtype) if interpolation == "nearest" else np.dtype(np.float32)
    for target in (image.geometry, grid_for_spacing(image.geometry, (1.0, 1.0, 1.0))):
        out = resample_image(image, target, interpolation=interpolation)  # type: ignore[arg-type]
        assert out.dtype == expected
    same = resample_image(image, image.geometry, interpolation=interpolation)  # type: ignore[arg-type]
    np.testing.assert_array_equal(same.array, image.array.astype(expected))


@pytest.mark.parametrize("same_grid", [True, False])
def test_linear_interpolation_of_labels_is_refused_onto_any_grid(same_grid: bool) -> None:
    from medseg.errors import GeometryError
    from medseg.geometry.resample import resample_to_reference

    label = make_awkward_volume("sagittal-left-handed", dtype=np.uint8)
    target = label.geometry if same_grid else grid_for_spacing(label.geometry, (1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="labels must use"):
        resample_label(label, target, interpolation="linear")  # type: ignore[arg-type]
    with pytest.raises(GeometryError, match="labels must use"):
        resample_to_reference(label, target, is_label=True, interpolation="bspline")


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
def test_image_upsampled_by_three_and_back_is_exact(grid: str, interpolation: str) -> None:
    """An odd factor puts a fine voxel on every original centre: going back reads those."""
    image = make_awkward_volume(grid, dtype=np.float32)
    fine = grid_for_spacing(image.geometry, np.asarray(image.spacing) / 3)
    up = resample_image(image, fine, interpolation=interpolation)  # type: ignore[arg-type]
    back = resample_image(up, image.geometry, interpolation=interpolation)  # type: ignore[arg-type]
    back.geometry.require_same(image.geometry, **EXACT)
    np.testing.assert_allclose(back.array, image.array, atol=1e-4)
