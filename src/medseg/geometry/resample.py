"""Resampling of images and label maps with SimpleITK.

Images use linear or B-spline interpolation. Label maps are never interpolated on
their values (interpolating "1" and "3" gives a "2" that means something else; the
exercise's loader did this): they use nearest neighbour, or linear interpolation of a
one-hot encoding followed by argmax, which gives smoother boundaries on upsampling.

The inverse of any resample is a resample onto the original grid:
``resample_to_reference(resample_to_spacing(v, s), v.geometry)`` has exactly ``v``'s grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import numpy as np
import SimpleITK as sitk

from medseg.errors import GeometryError
from medseg.io.itk import set_sitk_geometry, to_sitk
from medseg.volume import Volume, VolumeGeometry

ImageInterpolation = Literal["linear", "bspline", "nearest"]
LabelInterpolation = Literal["nearest", "onehot-linear"]

_SITK_INTERP = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline3,
    "nearest": sitk.sitkNearestNeighbor,
}

# Pixel types that float32 holds exactly. ITK's linear and B-spline interpolators compute
# in double precision whatever the input pixel type, so these are resampled as they are,
# with a float32 output: the result is bit-identical to resampling a float32 copy, without
# the full-size float32 copy in numpy and in ITK (for an int16 CT: 4x less memory there).
_EXACT_IN_FLOAT32 = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.float32))


def grid_for_spacing(geometry: VolumeGeometry, spacing: Sequence[float]) -> VolumeGeometry:
    """The grid with the given (z, y, x) spacing covering the same physical extent.

    The outer voxel faces stay where they were (the first voxel's corner is fixed), so a
    0.5 mm grid resampled to 1 mm and back lands on the original voxel centres.
    """
    new_spacing = np.asarray(spacing, dtype=float)
    if new_spacing.shape != (3,) or np.any(new_spacing <= 0):
        raise GeometryError(f"target spacing must be 3 positive values (z, y, x), found {list(spacing)}")
    old_spacing = np.asarray(geometry.spacing)
    extent = np.asarray(geometry.shape) * old_spacing
    new_shape = np.maximum(1, np.round(extent / new_spacing)).astype(int)
    # Corner of voxel [0,0,0] in index units of the old grid is -0.5; keep it fixed.
    shift = (new_spacing - old_spacing) / 2.0
    new_origin = np.asarray(geometry.origin) + geometry.direction @ shift
    return VolumeGeometry(tuple(new_shape), new_spacing, new_origin, geometry.direction)


def _reference_image(geometry: VolumeGeometry) -> sitk.Image:
    ref = sitk.Image([int(s) for s in geometry.shape[::-1]], sitk.sitkUInt8)
    set_sitk_geometry(ref, geometry)
    return ref


def _resample_array(
    volume: Volume,
    target: VolumeGeometry,
    interpolator: int,
    default_value: float,
    output_pixel: int | None = None,
) -> np.ndarray:
    image = to_sitk(volume)
    out_type = image.GetPixelID() if output_pixel is None else output_pixel
    res = sitk.Resample(
        image,
        _reference_image(target),
        sitk.Transform(),
        interpolator,
        float(default_value),
        out_type,
    )
    arr = sitk.GetArrayFromImage(res).reshape(target.shape)
    if output_pixel is None and arr.dtype != volume.array.dtype:
        # ITK has no bool (or float16) pixels: to_sitk widened them; nearest neighbour only
        # copies values, so the input's type holds them exactly (a mask stays a bool mask)
        arr = arr.astype(volume.array.dtype)
    return arr


def resample_image(
    volume: Volume,
    target: VolumeGeometry,
    *,
    interpolation: ImageInterpolation = "linear",
    default_value: float = 0.0,
) -> Volume:
    """Resample an intensity image onto ``target``; returns float32 unless ``nearest``."""
    if interpolation not in _SITK_INTERP:
        raise GeometryError(
            f"unknown interpolation '{interpolation}', expected one of {sorted(_SITK_INTERP)}"
        )
    if volume.geometry.is_close(target):
        # nothing to interpolate, but the same type as from any other grid
        same = volume.array.copy() if interpolation == "nearest" else volume.array.astype(np.float32)
        return Volume(same, geometry=target, meta=volume.meta)
    if interpolation == "nearest":
        arr = _resample_array(volume, target, sitk.sitkNearestNeighbor, default_value)
    else:
        source = volume if volume.array.dtype in _EXACT_IN_FLOAT32 else volume.astype(np.float32)
        arr = _resample_array(source, target, _SITK_INTERP[interpolation], default_value, sitk.sitkFloat32)
    return Volume(arr, geometry=target, meta=volume.meta)


def resample_label(
    volume: Volume,
    target: VolumeGeometry,
    *,
    interpolation: LabelInterpolation = "nearest",
    background: int = 0,
) -> Volume:
    """Resample a label map onto ``target``; output values are a subset of the input's."""
    if interpolation not in ("nearest", "onehot-linear"):
        raise GeometryError(f"labels must use 'nearest' or 'onehot-linear', found '{interpolation}'")
    if volume.geometry.is_close(target):
        return Volume(volume.array.copy(), geometry=target, meta=volume.meta)
    if interpolation == "nearest":
        arr = _resample_array(volume, target, sitk.sitkNearestNeighbor, background)
        return Volume(arr, geometry=target, meta=volume.meta)
    # Background competes even where the map holds none (a mask filling its whole grid):
    # outside the source it alone has probability 1, as nearest neighbour fills it there.
    labels = np.union1d(np.unique(volume.array), np.asarray([background], dtype=volume.array.dtype))
    best = np.full(target.shape, -1.0, dtype=np.float32)
    out = np.full(target.shape, background, dtype=volume.array.dtype)
    for value in labels:
        # uint8 one-hot (a view of the bool mask), interpolated to float32: identical to
        # interpolating a float32 one-hot, with a 4x smaller full-size array
        one_hot = volume.with_array((volume.array == value).view(np.uint8))
        fill = 1.0 if value == background else 0.0  # outside the source counts as background
        prob = _resample_array(one_hot, target, sitk.sitkLinear, fill, sitk.sitkFloat32)
        better = prob > best
        out[better] = value
        best[better] = prob[better]
    return Volume(out, geometry=target, meta=volume.meta)


def resample_to_spacing(
    volume: Volume,
    spacing: Sequence[float],
    *,
    is_label: bool = False,
    interpolation: str | None = None,
) -> Volume:
    """Resample to a new (z, y, x) spacing, keeping direction and physical extent."""
    target = grid_for_spacing(volume.geometry, spacing)
    return resample_to_reference(volume, target, is_label=is_label, interpolation=interpolation)


def resample_to_reference(
    volume: Volume,
    reference: VolumeGeometry | Volume,
    *,
    is_label: bool = False,
    interpolation: str | None = None,
    default_value: float = 0.0,
) -> Volume:
    """Resample onto another grid (e.g. a prediction back onto the input scan's grid)."""
    target = reference.geometry if isinstance(reference, Volume) else reference
    if is_label:
        label_mode = cast(LabelInterpolation, interpolation or "nearest")
        return resample_label(volume, target, interpolation=label_mode, background=int(default_value))
    image_mode = cast(ImageInterpolation, interpolation or "linear")
    return resample_image(volume, target, interpolation=image_mode, default_value=default_value)
