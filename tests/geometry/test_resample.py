from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import GeometryError
from medseg.geometry.resample import grid_for_spacing, resample_to_reference, resample_to_spacing
from medseg.volume import Volume


def test_grid_for_spacing_keeps_extent_and_corner(oblique_volume: Volume) -> None:
    g = grid_for_spacing(oblique_volume.geometry, (1.5, 0.35, 1.0))
    assert g.shape == (24, 40, 8)
    np.testing.assert_allclose(g.corners_world()[0], oblique_volume.geometry.corners_world()[0], atol=1e-9)
    np.testing.assert_allclose(g.corners_world()[-1], oblique_volume.geometry.corners_world()[-1], atol=1e-9)


def test_resample_image_and_back_returns_original_grid(oblique_volume: Volume) -> None:
    up = resample_to_spacing(oblique_volume, (1.0, 0.35, 0.25))
    assert up.spacing == (1.0, 0.35, 0.25)
    back = resample_to_reference(up, oblique_volume)
    back.geometry.require_same(oblique_volume.geometry, spacing_atol=0, origin_atol=1e-9, direction_atol=0)
    # smooth ramp: values survive up/down resampling closely in the interior
    inner = (slice(2, -2), slice(2, -2), slice(2, -2))
    assert np.abs(back.array[inner] - oblique_volume.array[inner]).mean() < 1.0


@pytest.mark.parametrize("mode", ["nearest", "onehot-linear"])
def test_label_resampling_keeps_label_values(oblique_label: Volume, mode: str) -> None:
    up = resample_to_spacing(oblique_label, (1.0, 0.35, 0.25), is_label=True, interpolation=mode)
    assert set(np.unique(up.array)) <= set(np.unique(oblique_label.array))
    assert up.dtype == oblique_label.dtype
    back = resample_to_reference(up, oblique_label, is_label=True, interpolation=mode)
    back.geometry.require_same(oblique_label.geometry, origin_atol=1e-9)
    agreement = (back.array == oblique_label.array).mean()
    assert agreement > 0.97


def test_nearest_upsample_then_downsample_by_integer_factor_is_exact(oblique_label: Volume) -> None:
    up = resample_to_spacing(oblique_label, (1.0, 0.35, 0.25), is_label=True)
    back = resample_to_reference(up, oblique_label, is_label=True)
    np.testing.assert_array_equal(back.array, oblique_label.array)


def test_linear_on_label_values_would_create_new_labels(oblique_label: Volume) -> None:
    """The bug the label path avoids: linear interpolation of label values invents classes."""
    up = resample_to_spacing(oblique_label.astype(np.float32), (1.0, 0.35, 0.25))
    invented = np.setdiff1d(np.unique(np.round(up.array)), np.unique(oblique_label.array))
    assert invented.size > 0


def test_bad_spacing_and_mode(oblique_volume: Volume, oblique_label: Volume) -> None:
    with pytest.raises(GeometryError, match="positive"):
        resample_to_spacing(oblique_volume, (0, 1, 1))
    with pytest.raises(GeometryError, match="labels must use"):
        resample_to_spacing(oblique_label, (1, 1, 1), is_label=True, interpolation="linear")


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8])
def test_integer_images_resample_exactly_like_their_float32_copy(oblique_volume: Volume, dtype: type) -> None:
    """Integers go to ITK without a float copy; ITK interpolates in double either way."""
    ints = oblique_volume.with_array(np.clip(oblique_volume.array, 0, 250).astype(dtype))
    a = resample_to_spacing(ints, (1.0, 0.35, 0.25))
    b = resample_to_spacing(ints.astype(np.float32), (1.0, 0.35, 0.25))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a.array, b.array)
