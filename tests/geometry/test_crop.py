from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import GeometryError
from medseg.geometry.crop import (
    CropBox,
    PadSpec,
    bounding_box,
    crop,
    crop_array,
    crop_to_nonzero,
    pad,
    pad_to_multiple,
    pad_to_shape,
    uncrop,
    uncrop_array,
    unpad,
)
from medseg.volume import Volume
from tests.conftest import make_oblique_volume


def _assert_world_preserved(original: Volume, part: Volume, offset: tuple[int, int, int]) -> None:
    """part[i] sits at the world position of original[i + offset] (checked on random voxels)."""
    rng = np.random.default_rng(3)
    idx = rng.integers(0, part.shape, size=(20, 3))
    np.testing.assert_allclose(
        part.index_to_world(idx), original.index_to_world(idx + np.asarray(offset)), atol=1e-9
    )


# ------------------------------------------------------------------ CropBox
def test_cropbox_basics() -> None:
    box = CropBox((1, 2, 3), (4, 8, 5))
    assert box.shape == (3, 6, 2)
    assert box.slices == (slice(1, 4), slice(2, 8), slice(3, 5))
    assert box.is_inside((4, 8, 5)) and not box.is_inside((4, 7, 5))
    assert CropBox.from_dict(box.to_dict()) == box
    assert box.expand(1) == CropBox((0, 1, 2), (5, 9, 6))
    assert box.expand((0, 2, 1)) == CropBox((1, 0, 2), (4, 10, 6))
    assert CropBox((-2, 0, 3), (4, 9, 5)).clip((3, 8, 10)) == CropBox((0, 0, 3), (3, 8, 5))
    assert CropBox.full((3, 4, 5)) == CropBox((0, 0, 0), (3, 4, 5))


@pytest.mark.parametrize(
    ("lower", "upper", "match"),
    [
        ((0, 0, 0), (1, 0, 1), "empty"),
        ((2, 0, 0), (1, 3, 3), "empty"),
        ((0, 0), (1, 1), "3 integers"),
        ((0.5, 0, 0), (2, 2, 2), "integers"),
    ],
)
def test_cropbox_rejects_bad_bounds(lower: tuple, upper: tuple, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        CropBox(lower, upper)


def test_clip_of_a_box_entirely_outside_raises() -> None:
    with pytest.raises(GeometryError, match="outside the image"):
        CropBox((5, 0, 0), (7, 2, 2)).clip((4, 4, 4))


# ------------------------------------------------------------------ crop / uncrop
def test_crop_keeps_world_positions_and_values(oblique_volume: Volume) -> None:
    box = CropBox((2, 3, 4), (9, 17, 12))
    out = crop(oblique_volume, box)
    assert out.shape == box.shape
    np.testing.assert_array_equal(out.array, oblique_volume.array[2:9, 3:17, 4:12])
    assert out.spacing == oblique_volume.spacing
    np.testing.assert_array_equal(out.direction, oblique_volume.direction)
    np.testing.assert_allclose(
        out.index_to_world([0, 0, 0]), oblique_volume.index_to_world(box.lower), atol=1e-12
    )
    _assert_world_preserved(oblique_volume, out, box.lower)
    assert not np.shares_memory(out.array, oblique_volume.array)


def test_crop_then_uncrop_gives_original_grid_and_values_inside(oblique_volume: Volume) -> None:
    box = CropBox((2, 3, 4), (9, 17, 12))
    back = uncrop(crop(oblique_volume, box), oblique_volume.geometry, box, fill=-7)
    assert back.geometry is oblique_volume.geometry
    inside = np.zeros(oblique_volume.shape, dtype=bool)
    inside[box.slices] = True
    np.testing.assert_array_equal(back.array[inside], oblique_volume.array[inside])
    assert np.all(back.array[~inside] == -7)
    assert back.dtype == oblique_volume.dtype


def test_uncrop_finds_the_box_from_geometry(oblique_label: Volume) -> None:
    box = CropBox((1, 0, 5), (12, 20, 9))
    back = uncrop(crop(oblique_label, box), oblique_label)
    np.testing.assert_array_equal(back.array[box.slices], oblique_label.array[box.slices])


def test_uncrop_after_nifti_like_float32_origin_still_fits(oblique_volume: Volume) -> None:
    """Headers store the origin in float32: a few micrometres off must still land on the grid."""
    box = CropBox((2, 3, 4), (9, 17, 12))
    cropped = crop(oblique_volume, box)
    rounded = Volume(
        cropped.array,
        spacing=cropped.spacing,
        origin=np.asarray(cropped.origin, dtype=np.float32).astype(float),
        direction=cropped.direction,
    )
    back = uncrop(rounded, oblique_volume.geometry, box)
    np.testing.assert_array_equal(back.array[box.slices], oblique_volume.array[box.slices])


def test_uncrop_rejects_a_wrong_box(oblique_volume: Volume) -> None:
    box = CropBox((2, 3, 4), (9, 17, 12))
    with pytest.raises(GeometryError, match="not at the given box"):
        uncrop(crop(oblique_volume, box), oblique_volume.geometry, CropBox((2, 3, 5), (9, 17, 13)))


def test_uncrop_rejects_a_volume_not_on_the_reference_grid(oblique_volume: Volume) -> None:
    cropped = crop(oblique_volume, CropBox((2, 3, 4), (9, 17, 12)))
    half_voxel = np.asarray(cropped.origin) + 0.5 * cropped.geometry.matrix[:, 2]
    shifted = Volume(cropped.array, spacing=cropped.spacing, origin=half_voxel, direction=cropped.direction)
    with pytest.raises(GeometryError, match="between voxel centres"):
        uncrop(shifted, oblique_volume.geometry)
    other_spacing = Volume(
        cropped.array, spacing=(3.0, 0.7, 0.6), origin=cropped.origin, direction=cropped.direction
    )
    with pytest.raises(GeometryError, match="spacing"):
        uncrop(other_spacing, oblique_volume.geometry)
    identity = Volume(cropped.array, spacing=cropped.spacing, origin=cropped.origin)
    with pytest.raises(GeometryError, match="direction"):
        uncrop(identity, oblique_volume.geometry)


def test_box_partly_outside_pad_mode(oblique_volume: Volume) -> None:
    box = CropBox((-2, 15, -1), (5, 24, 4))  # outside before z and x, after y (shape 12, 20, 16)
    out = crop(oblique_volume, box, fill=-1)
    assert out.shape == box.shape
    np.testing.assert_allclose(
        out.index_to_world([0, 0, 0]), oblique_volume.index_to_world(box.lower), atol=1e-12
    )
    np.testing.assert_array_equal(out.array[2:, :5, 1:], oblique_volume.array[0:5, 15:20, 0:4])
    assert np.all(out.array[:2] == -1) and np.all(out.array[:, 5:] == -1) and np.all(out.array[:, :, 0] == -1)
    _assert_world_preserved(oblique_volume, out, box.lower)
    back = uncrop(out, oblique_volume.geometry, box)
    np.testing.assert_array_equal(back.array[0:5, 15:20, 0:4], oblique_volume.array[0:5, 15:20, 0:4])


def test_box_partly_outside_clip_mode(oblique_volume: Volume) -> None:
    box = CropBox((-2, 15, -1), (5, 24, 4))
    out = crop(oblique_volume, box, outside="clip")
    clipped = box.clip(oblique_volume.shape)
    assert clipped == CropBox((0, 15, 0), (5, 20, 4))
    assert out.shape == clipped.shape
    np.testing.assert_array_equal(out.array, oblique_volume.array[clipped.slices])
    np.testing.assert_array_equal(
        uncrop(out, oblique_volume.geometry, clipped).array[clipped.slices], out.array
    )


def test_box_partly_outside_error_mode_and_bad_mode(oblique_volume: Volume) -> None:
    with pytest.raises(GeometryError, match="reaches outside"):
        crop(oblique_volume, CropBox((-1, 0, 0), (3, 3, 3)), outside="error")
    with pytest.raises(GeometryError, match="unknown outside mode"):
        crop(oblique_volume, CropBox((0, 0, 0), (3, 3, 3)), outside="wrap")  # type: ignore[arg-type]


def test_box_entirely_outside_clip_mode_raises(oblique_volume: Volume) -> None:
    with pytest.raises(GeometryError, match="outside the image"):
        crop(oblique_volume, CropBox((20, 0, 0), (22, 3, 3)), outside="clip")


def test_array_helpers_keep_leading_channel_axes() -> None:
    arr = np.arange(2 * 4 * 5 * 6).reshape(2, 4, 5, 6)
    box = CropBox((1, -1, 2), (3, 3, 8))
    part = crop_array(arr, box, fill=-1)
    assert part.shape == (2, *box.shape)
    np.testing.assert_array_equal(part[:, :, 1:, :4], arr[:, 1:3, 0:3, 2:6])
    back = uncrop_array(part, (4, 5, 6), box, fill=-9)
    np.testing.assert_array_equal(back[:, 1:3, 0:3, 2:6], arr[:, 1:3, 0:3, 2:6])
    assert np.all(back[:, 0] == -9)
    with pytest.raises(GeometryError, match="differs from the box shape"):
        uncrop_array(part[:, :1], (4, 5, 6), box)


# ------------------------------------------------------------------ bounding box
def test_bounding_box_known_mask_and_margin() -> None:
    mask = np.zeros((6, 8, 10), dtype=bool)
    mask[2, 3, 4] = True
    mask[3, 5, 8] = True
    assert bounding_box(mask) == CropBox((2, 3, 4), (4, 6, 9))
    assert bounding_box(mask, margin=1) == CropBox((1, 2, 3), (5, 7, 10))
    # margin is clipped to the array
    assert bounding_box(mask, margin=(3, 4, 5)) == CropBox((0, 0, 0), (6, 8, 10))


def test_bounding_box_errors() -> None:
    with pytest.raises(GeometryError, match="empty"):
        bounding_box(np.zeros((3, 3, 3)))
    with pytest.raises(GeometryError, match="negative"):
        bounding_box(np.ones((3, 3, 3)), margin=-1)
    with pytest.raises(GeometryError, match="3D"):
        bounding_box(np.ones((3, 3)))


def test_crop_to_nonzero_and_uncrop_restore_the_label_exactly(oblique_label: Volume) -> None:
    cropped, box = crop_to_nonzero(oblique_label, margin=1)
    assert box == bounding_box(oblique_label.array, margin=1)
    assert all(c < s for c, s in zip(cropped.shape, oblique_label.shape, strict=True))
    back = uncrop(cropped, oblique_label.geometry, box)
    np.testing.assert_array_equal(back.array, oblique_label.array)  # nothing non-zero was outside the box
    assert back.geometry is oblique_label.geometry


def test_crop_to_nonzero_with_separate_mask(oblique_volume: Volume, oblique_label: Volume) -> None:
    cropped, box = crop_to_nonzero(oblique_volume, mask=oblique_label)
    np.testing.assert_array_equal(cropped.array, oblique_volume.array[box.slices])
    cropped2, box2 = crop_to_nonzero(oblique_volume, mask=oblique_label.array > 0)
    assert box2 == box
    np.testing.assert_array_equal(cropped2.array, cropped.array)


def test_crop_to_nonzero_of_empty_volume_keeps_everything(oblique_volume: Volume) -> None:
    empty = oblique_volume.with_array(np.zeros(oblique_volume.shape))
    cropped, box = crop_to_nonzero(empty)
    assert box == CropBox.full(empty.shape)
    cropped.geometry.require_same(empty.geometry, origin_atol=1e-12)


def test_crop_to_nonzero_rejects_mismatched_masks(oblique_volume: Volume, oblique_label: Volume) -> None:
    with pytest.raises(GeometryError, match="mask shape"):
        crop_to_nonzero(oblique_volume, mask=np.ones((2, 2, 2)))
    moved = Volume(
        oblique_label.array,
        spacing=oblique_label.spacing,
        origin=(0, 0, 0),
        direction=oblique_label.direction,
    )
    with pytest.raises(GeometryError, match="mask and volume grids"):
        crop_to_nonzero(oblique_volume, mask=moved)


# ------------------------------------------------------------------ padding
def test_pad_then_unpad_is_exact(oblique_volume: Volume) -> None:
    padded = pad(oblique_volume, (1, 2, 3), (4, 0, 2), value=-5)
    assert padded.shape == (12 + 5, 20 + 2, 16 + 5)
    np.testing.assert_array_equal(padded.array[1:13, 2:22, 3:19], oblique_volume.array)
    assert np.all(padded.array[0] == -5) and np.all(padded.array[:, :, -2:] == -5)
    _assert_world_preserved(oblique_volume, crop(padded, CropBox((1, 2, 3), (13, 22, 19))), (0, 0, 0))
    back = unpad(padded, (1, 2, 3), (4, 0, 2))
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    back.geometry.require_same(oblique_volume.geometry, spacing_atol=0, origin_atol=1e-9, direction_atol=0)


def test_padspec_round_trip_and_errors(oblique_volume: Volume) -> None:
    spec = PadSpec(2, (0, 1, 3))
    assert spec.before == (2, 2, 2) and spec.after == (0, 1, 3)
    assert PadSpec.from_dict(spec.to_dict()) == spec
    back = spec.unpad(spec.pad(oblique_volume))
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert back.geometry.is_close(oblique_volume.geometry)
    with pytest.raises(GeometryError, match="negative"):
        PadSpec(-1, 0)
    with pytest.raises(GeometryError, match="cannot unpad"):
        unpad(oblique_volume, (6, 0, 0), (6, 0, 0))


@pytest.mark.parametrize("center", [True, False])
def test_pad_to_multiple(oblique_volume: Volume, center: bool) -> None:
    padded, spec = pad_to_multiple(oblique_volume, (8, 16, 16), center=center)
    assert padded.shape == (16, 32, 16)
    if center:
        assert spec.before == (2, 6, 0) and spec.after == (2, 6, 0)
    else:
        assert spec.before == (0, 0, 0) and spec.after == (4, 12, 0)
    back = unpad(padded, spec.before, spec.after)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    back.geometry.require_same(oblique_volume.geometry, origin_atol=1e-9)
    with pytest.raises(GeometryError, match="positive"):
        pad_to_multiple(oblique_volume, 0)


def test_pad_to_shape_leaves_larger_axes_alone() -> None:
    vol = make_oblique_volume(shape=(5, 7, 9))
    padded, spec = pad_to_shape(vol, (8, 4, 10), value=0)
    assert padded.shape == (8, 7, 10)
    assert spec.before == (1, 0, 0) and spec.after == (2, 0, 1)  # odd voxel goes after
    back = spec.unpad(padded)
    np.testing.assert_array_equal(back.array, vol.array)
    back.geometry.require_same(vol.geometry, origin_atol=1e-9)


def test_crop_without_copy_is_a_view_with_the_same_geometry(oblique_volume) -> None:  # type: ignore[no-untyped-def]
    from medseg.geometry.crop import CropBox, crop

    box = CropBox((1, 2, 3), (5, 9, 10))
    copied = crop(oblique_volume, box)
    viewed = crop(oblique_volume, box, copy=False)
    assert viewed.geometry.is_close(copied.geometry, spacing_atol=0, origin_atol=0, direction_atol=0)
    assert np.shares_memory(viewed.array, oblique_volume.array)
    assert not np.shares_memory(copied.array, oblique_volume.array)
    np.testing.assert_array_equal(viewed.array, copied.array)
