"""Crop and pad with exact inverses.

Every operation returns a new :class:`~medseg.volume.Volume` whose voxels keep their
world positions: cropping moves the origin to the first kept voxel, padding moves it
back by the padded voxels. The inverses put values back voxel-exact:

* ``uncrop(crop(v, box), v.geometry, box)`` has ``v``'s grid and, inside ``box``, its values;
* ``unpad(pad(v, before, after), before, after)`` is ``v`` (grid and array).

A :class:`CropBox` is a (z, y, x) index box, lower inclusive and upper exclusive, like
Python slices. It may reach outside the image: :func:`crop` then pads the missing part
with ``fill`` (``outside="pad"``, the default, so the result always has ``box.shape``),
keeps only the part inside (``outside="clip"``) or refuses (``outside="error"``).
:func:`uncrop` checks that the cropped grid really lies on the reference grid and
raises :class:`GeometryError` when it does not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medseg.errors import GeometryError
from medseg.volume import DIRECTION_ATOL, ORIGIN_ATOL, SPACING_ATOL, Volume, VolumeGeometry

__all__ = [
    "CropBox",
    "PadSpec",
    "bounding_box",
    "crop",
    "crop_array",
    "crop_to_nonzero",
    "pad",
    "pad_to_multiple",
    "pad_to_shape",
    "uncrop",
    "uncrop_array",
    "unpad",
]

logger = logging.getLogger(__name__)

IntTriple = tuple[int, int, int]
OutsideMode = Literal["pad", "clip", "error"]


def _int_triple(values: int | Sequence[int] | ArrayLike, name: str) -> IntTriple:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.repeat(arr, 3)
    arr = arr.reshape(-1)
    if arr.shape != (3,):
        raise GeometryError(f"{name} must be one integer or 3 integers (z, y, x), found {arr.tolist()}")
    as_int = np.round(arr.astype(float)).astype(int)
    if not np.allclose(arr.astype(float), as_int):
        raise GeometryError(f"{name} must be integers, found {arr.tolist()}")
    return (int(as_int[0]), int(as_int[1]), int(as_int[2]))


@dataclass(frozen=True)
class CropBox:
    """An index box in (z, y, x): ``lower`` inclusive, ``upper`` exclusive.

    The box may extend outside an image (negative lower, upper beyond the shape); use
    :meth:`clip` to keep the part inside.
    """

    lower: IntTriple
    upper: IntTriple

    def __init__(self, lower: Sequence[int] | ArrayLike, upper: Sequence[int] | ArrayLike) -> None:
        lo = _int_triple(lower, "box lower")
        hi = _int_triple(upper, "box upper")
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            raise GeometryError(f"box is empty: lower {lo} must be below upper {hi} on every axis (z, y, x)")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @classmethod
    def full(cls, shape: Sequence[int]) -> CropBox:
        """The box covering a whole array of ``shape``."""
        return cls((0, 0, 0), tuple(int(s) for s in shape))

    @property
    def shape(self) -> IntTriple:
        return (
            self.upper[0] - self.lower[0],
            self.upper[1] - self.lower[1],
            self.upper[2] - self.lower[2],
        )

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Slices for ``array[box.slices]`` (only meaningful when the box is inside the array)."""
        return (
            slice(self.lower[0], self.upper[0]),
            slice(self.lower[1], self.upper[1]),
            slice(self.lower[2], self.upper[2]),
        )

    def is_inside(self, shape: Sequence[int]) -> bool:
        return all(lo >= 0 and hi <= s for lo, hi, s in zip(self.lower, self.upper, shape, strict=True))

    def clip(self, shape: Sequence[int]) -> CropBox:
        """The part of the box inside an array of ``shape``; GeometryError when none is."""
        lo = np.maximum(self.lower, 0)
        hi = np.minimum(self.upper, np.asarray(shape, dtype=int))
        if np.any(hi <= lo):
            raise GeometryError(
                f"box {self.lower}..{self.upper} (z, y, x) lies outside the image of shape {tuple(shape)}"
            )
        return CropBox(lo, hi)

    def expand(self, margin: int | Sequence[int]) -> CropBox:
        """Grow by ``margin`` voxels on both sides of each axis (not clipped)."""
        m = np.asarray(_int_triple(margin, "margin"))
        return CropBox(np.asarray(self.lower) - m, np.asarray(self.upper) + m)

    def to_dict(self) -> dict[str, list[int]]:
        return {
            "lower_zyx": list(self.lower),
            "upper_zyx_exclusive": list(self.upper),
            "shape_zyx": list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CropBox:
        return cls(data["lower_zyx"], data["upper_zyx_exclusive"])

    def __repr__(self) -> str:
        return f"CropBox(lower zyx={self.lower}, upper zyx={self.upper} exclusive, shape {self.shape})"


# ---------------------------------------------------------------- arrays
def crop_array(array: NDArray[Any], box: CropBox, *, fill: float = 0, copy: bool = True) -> NDArray[Any]:
    """``array[..., box]`` as a new array; parts of the box outside are ``fill``.

    The last three axes are (z, y, x); leading axes (channels) are kept. With
    ``copy=False`` a box inside the array gives a view (no voxels copied).
    """
    arr = np.asarray(array)
    spatial = arr.shape[-3:]
    if box.is_inside(spatial):
        view = arr[(Ellipsis, *box.slices)]
        return view.copy() if copy else view
    out = np.full(arr.shape[:-3] + box.shape, fill, dtype=arr.dtype)
    _copy_overlap(arr, out, src_offset=np.asarray(box.lower))
    return out


def uncrop_array(array: NDArray[Any], shape: Sequence[int], box: CropBox, *, fill: float = 0) -> NDArray[Any]:
    """Place ``array`` (of ``box.shape``) at ``box`` in a new array of ``shape``; the rest is ``fill``."""
    arr = np.asarray(array)
    if tuple(arr.shape[-3:]) != box.shape:
        raise GeometryError(
            f"uncrop: array shape {arr.shape[-3:]} (z, y, x) differs from the box shape {box.shape}"
        )
    out = np.full(arr.shape[:-3] + tuple(int(s) for s in shape), fill, dtype=arr.dtype)
    _copy_overlap(arr, out, src_offset=-np.asarray(box.lower))
    return out


def _copy_overlap(src: NDArray[Any], dst: NDArray[Any], src_offset: NDArray[Any]) -> None:
    """dst[i] = src[i + src_offset] wherever both indices are valid (last three axes)."""
    src_shape = np.asarray(src.shape[-3:])
    dst_shape = np.asarray(dst.shape[-3:])
    dst_lo = np.maximum(0, -src_offset)
    dst_hi = np.minimum(dst_shape, src_shape - src_offset)
    if np.any(dst_hi <= dst_lo):
        return
    dst_index: tuple[Any, ...] = (
        Ellipsis,
        *(slice(int(a), int(b)) for a, b in zip(dst_lo, dst_hi, strict=True)),
    )
    src_index: tuple[Any, ...] = (
        Ellipsis,
        *(slice(int(a + o), int(b + o)) for a, b, o in zip(dst_lo, dst_hi, src_offset, strict=True)),
    )
    dst[dst_index] = src[src_index]


# ---------------------------------------------------------------- volumes
def cropped_geometry(geometry: VolumeGeometry, box: CropBox) -> VolumeGeometry:
    """The grid of ``box`` on ``geometry``: same spacing and direction, origin at ``box.lower``."""
    return geometry.with_shape_origin(box.shape, geometry.index_to_world(np.asarray(box.lower, dtype=float)))


def crop(
    volume: Volume, box: CropBox, *, outside: OutsideMode = "pad", fill: float = 0, copy: bool = True
) -> Volume:
    """The voxels of ``box`` as a new Volume whose world positions are unchanged.

    ``outside`` says what happens to the part of the box outside the image: ``"pad"``
    fills it with ``fill`` (result shape is ``box.shape``), ``"clip"`` drops it (use
    ``box.clip(volume.shape)`` to know the box that was used), ``"error"`` raises.
    ``copy=False`` returns a view of the voxels when the box lies inside the image
    (the caller must then not modify it).
    """
    if outside not in ("pad", "clip", "error"):
        raise GeometryError(f"unknown outside mode '{outside}', expected 'pad', 'clip' or 'error'")
    if not box.is_inside(volume.shape):
        if outside == "error":
            raise GeometryError(
                f"crop box {box.lower}..{box.upper} (z, y, x) reaches outside the image of shape {volume.shape}"
            )
        if outside == "clip":
            box = box.clip(volume.shape)
    return Volume(
        crop_array(volume.array, box, fill=fill, copy=copy),
        geometry=cropped_geometry(volume.geometry, box),
        meta=volume.meta,
    )


def box_on_reference(cropped: VolumeGeometry, reference: VolumeGeometry) -> CropBox:
    """The box that ``cropped`` occupies on ``reference``; GeometryError unless it lies on that grid.

    The grids must share spacing and direction, and ``cropped``'s first voxel centre
    must fall on a voxel centre of ``reference``.
    """
    problems = []
    if not np.allclose(cropped.spacing, reference.spacing, atol=SPACING_ATOL, rtol=0):
        problems.append(f"spacing {cropped.spacing} vs {reference.spacing}")
    if not np.allclose(cropped.direction, reference.direction, atol=DIRECTION_ATOL, rtol=0):
        problems.append(
            f"direction {cropped.orientation} vs {reference.orientation} (or a different obliquity)"
        )
    if problems:
        raise GeometryError("the cropped volume is not on the reference grid: " + "; ".join(problems))
    index = reference.world_to_index(np.asarray(cropped.origin))
    lower = np.round(index)
    offset_mm = np.abs(index - lower) * np.asarray(reference.spacing)
    if np.any(offset_mm > ORIGIN_ATOL):
        raise GeometryError(
            "the cropped volume is not on the reference grid: its first voxel lies at reference index "
            f"{np.round(index, 4).tolist()} (z, y, x), between voxel centres"
        )
    return CropBox(lower.astype(int), lower.astype(int) + np.asarray(cropped.shape))


def uncrop(
    cropped: Volume,
    reference: VolumeGeometry | Volume,
    box: CropBox | None = None,
    *,
    fill: float = 0,
) -> Volume:
    """Put a cropped volume (e.g. a prediction on a crop) back on the full reference grid.

    The box is found from the geometry; when ``box`` is given it must agree with it.
    Voxels outside the box are ``fill``; parts of the crop outside the reference grid
    (from ``crop(..., outside="pad")``) are dropped. The result has exactly the
    reference geometry.
    """
    ref = reference.geometry if isinstance(reference, Volume) else reference
    found = box_on_reference(cropped.geometry, ref)
    if box is not None and box != found:
        raise GeometryError(
            f"uncrop: the cropped volume lies at {found.lower}..{found.upper} (z, y, x) on the reference grid, "
            f"not at the given box {box.lower}..{box.upper}"
        )
    return Volume(uncrop_array(cropped.array, ref.shape, found, fill=fill), geometry=ref, meta=cropped.meta)


def bounding_box(mask: NDArray[Any] | Volume, margin: int | Sequence[int] = 0) -> CropBox:
    """Smallest box holding every non-zero voxel of ``mask``, grown by ``margin`` voxels.

    The margin is clipped to the array, so the box always lies inside it. Raises
    :class:`GeometryError` when the mask has no non-zero voxel.
    """
    arr = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    if arr.ndim != 3:
        raise GeometryError(f"bounding_box needs a 3D (z, y, x) mask, found shape {arr.shape}")
    m = np.asarray(_int_triple(margin, "margin"))
    if np.any(m < 0):
        raise GeometryError(f"margin must not be negative, found {m.tolist()}")
    lower = np.zeros(3, dtype=int)
    upper = np.zeros(3, dtype=int)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(arr != 0, axis=other))
        if hits.size == 0:
            raise GeometryError("bounding_box: the mask is empty (no non-zero voxel)")
        lower[axis], upper[axis] = hits[0], hits[-1] + 1
    lower = np.maximum(lower - m, 0)
    upper = np.minimum(upper + m, np.asarray(arr.shape))
    return CropBox(lower, upper)


def crop_to_nonzero(
    volume: Volume, margin: int | Sequence[int] = 0, mask: NDArray[Any] | Volume | None = None
) -> tuple[Volume, CropBox]:
    """Crop to the non-zero voxels of ``mask`` (default: of the volume itself).

    Returns the crop and its box, so ``uncrop(result, volume.geometry, box)`` undoes it.
    An all-zero mask leaves the volume whole (nothing to crop), as nnU-Net does.
    """
    if mask is None:
        mask_arr = volume.array
    elif isinstance(mask, Volume):
        mask.geometry.require_same(volume.geometry, "mask and volume grids")
        mask_arr = mask.array
    else:
        mask_arr = np.asarray(mask)
    if tuple(mask_arr.shape) != volume.shape:
        raise GeometryError(f"mask shape {mask_arr.shape} differs from volume shape {volume.shape}")
    if not np.any(mask_arr):
        logger.warning("crop_to_nonzero: nothing is non-zero; keeping the whole volume")
        box = CropBox.full(volume.shape)
    else:
        box = bounding_box(mask_arr, margin)
    return crop(volume, box, outside="error"), box


# ---------------------------------------------------------------- padding
@dataclass(frozen=True)
class PadSpec:
    """Voxels added before and after each (z, y, x) axis; undone by :meth:`unpad`."""

    before: IntTriple
    after: IntTriple

    def __init__(
        self, before: int | Sequence[int] | ArrayLike, after: int | Sequence[int] | ArrayLike
    ) -> None:
        b = _int_triple(before, "pad before")
        a = _int_triple(after, "pad after")
        if min(b) < 0 or min(a) < 0:
            raise GeometryError(f"padding must not be negative, found before {b}, after {a}")
        object.__setattr__(self, "before", b)
        object.__setattr__(self, "after", a)

    def box(self, padded_shape: Sequence[int]) -> CropBox:
        """Where the original volume sits inside a padded array of ``padded_shape``."""
        upper = np.asarray(padded_shape, dtype=int) - np.asarray(self.after)
        return CropBox(self.before, upper)

    def pad(self, volume: Volume, *, value: float = 0) -> Volume:
        return pad(volume, self.before, self.after, value=value)

    def unpad(self, padded: Volume) -> Volume:
        return unpad(padded, self.before, self.after)

    def to_dict(self) -> dict[str, list[int]]:
        return {"before_zyx": list(self.before), "after_zyx": list(self.after)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PadSpec:
        return cls(data["before_zyx"], data["after_zyx"])


def pad(
    volume: Volume,
    before: int | Sequence[int],
    after: int | Sequence[int],
    *,
    value: float = 0,
) -> Volume:
    """Add constant-``value`` voxels before/after each (z, y, x) axis; the origin moves back."""
    spec = PadSpec(before, after)
    box = CropBox(-np.asarray(spec.before), np.asarray(volume.shape) + np.asarray(spec.after))
    # Padding is a crop with a box that reaches outside the image.
    return crop(volume, box, outside="pad", fill=value)


def unpad(padded: Volume, before: int | Sequence[int], after: int | Sequence[int]) -> Volume:
    """Remove what :func:`pad` added: the exact original grid and array."""
    spec = PadSpec(before, after)
    upper = np.asarray(padded.shape) - np.asarray(spec.after)
    if np.any(upper <= np.asarray(spec.before)):
        raise GeometryError(
            f"cannot unpad {spec.before} before and {spec.after} after from a volume of shape {padded.shape}"
        )
    return crop(padded, spec.box(padded.shape), outside="error")


def _spec_for_shape(shape: Sequence[int], target: Sequence[int], center: bool) -> PadSpec:
    extra = np.maximum(np.asarray(target, dtype=int) - np.asarray(shape, dtype=int), 0)
    before = extra // 2 if center else np.zeros(3, dtype=int)
    return PadSpec(before, extra - before)


def pad_to_shape(
    volume: Volume, shape: Sequence[int], *, value: float = 0, center: bool = True
) -> tuple[Volume, PadSpec]:
    """Pad each axis up to ``shape`` (axes already as large are left alone).

    ``center`` splits the padding evenly (the odd voxel goes after); otherwise it all
    goes after. Returns the padded volume and the spec that :func:`unpad` needs.
    """
    target = _int_triple(shape, "target shape")
    spec = _spec_for_shape(volume.shape, target, center)
    return spec.pad(volume, value=value), spec


def pad_to_multiple(
    volume: Volume, multiple: int | Sequence[int], *, value: float = 0, center: bool = True
) -> tuple[Volume, PadSpec]:
    """Pad each axis up to the next multiple of ``multiple`` (e.g. a network's total downsampling)."""
    mult = np.asarray(_int_triple(multiple, "multiple"))
    if np.any(mult < 1):
        raise GeometryError(f"multiple must be positive, found {mult.tolist()}")
    target = -(-np.asarray(volume.shape) // mult) * mult
    spec = _spec_for_shape(volume.shape, target, center)
    return spec.pad(volume, value=value), spec
