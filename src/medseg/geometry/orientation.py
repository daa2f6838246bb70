"""Reorientation by exact axis permutation and flips (never interpolation).

An orientation code has three letters saying where the x (column), y (row) and z (slice)
array axes point, in the "points to" convention of DICOM and nibabel: ``LPS`` is a
standard axial DICOM series, ``RAS`` nibabel's canonical NIfTI, ``PIL`` a standard
sagittal series. :func:`reorient` reorders and flips the array axes so that the volume
has the requested code; voxel values are only moved, so images and label maps are
treated alike and nothing is resampled.

For an oblique volume no permutation makes the axes point exactly along L/P/S; the
volume then gets the code closest to its direction (each array axis is matched to the
world axis it is most parallel to) and the direction stays oblique.

The inverse is reorienting back to the original code:
``reorient(reorient(v, "RAS"), closest_orientation(v))`` has exactly ``v``'s array and
grid. ``closest_orientation(v)`` equals ``v.orientation`` except where two array axes
are most parallel to the same world axis (then ``v.orientation`` is not a valid code).
At an exact tie (an axis at exactly 45 degrees) no code is unique: undo with
``plan_reorientation(v, code).inverse()`` instead.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medseg.errors import ConfigError, GeometryError
from medseg.volume import Volume, VolumeGeometry

__all__ = [
    "CANONICAL_ORIENTATION",
    "AxisReorientation",
    "closest_orientation",
    "parse_orientation_code",
    "plan_reorientation",
    "reorient",
    "to_canonical",
]

# medseg's canonical orientation: DICOM's own, and ITK's identity direction.
CANONICAL_ORIENTATION = "LPS"

# letter -> (world axis 0=x/1=y/2=z in LPS, sign)
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_POSITIVE = "LPS"
_NEGATIVE = "RAI"


def parse_orientation_code(code: str) -> str:
    """Validate and upper-case an orientation code such as ``"lps"`` or ``"RAS"``.

    Raises :class:`ConfigError` unless it has one letter from each of L/R, P/A and S/I.
    """
    norm = str(code).strip().upper()
    if len(norm) != 3 or any(c not in _LETTERS for c in norm):
        raise ConfigError(
            f"orientation code '{code}' is invalid: expected three letters from L/R, P/A, S/I (e.g. LPS, RAS)"
        )
    axes = sorted(_LETTERS[c][0] for c in norm)
    if axes != [0, 1, 2]:
        raise ConfigError(
            f"orientation code '{code}' is invalid: expected one letter each from L/R, P/A and S/I, "
            f"found two letters for the same world axis"
        )
    return norm


def _axis_assignment(direction: NDArray[np.float64]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """World axis and sign for each array axis (z, y, x), as a one-to-one assignment.

    Each array axis goes to the world axis it is most parallel to; when two array axes
    would pick the same world axis (possible only near 45 degrees) the permutation with
    the largest summed |cosine| wins, so the result is always a valid code.
    """
    absdir = np.abs(direction)
    best: tuple[int, ...] = (0, 1, 2)
    best_score = -1.0
    for perm in itertools.permutations(range(3)):
        # perm[a] = world axis of array axis a
        score = float(sum(absdir[perm[a], a] for a in range(3)))
        if score > best_score + 1e-12:
            best, best_score = perm, score
    world = (best[0], best[1], best[2])
    signs = tuple(1 if direction[world[a], a] > 0 else -1 for a in range(3))
    return world, (signs[0], signs[1], signs[2])


def closest_orientation(volume_or_direction: Volume | VolumeGeometry | ArrayLike) -> str:
    """The orientation code closest to a volume's direction (always a valid code)."""
    if isinstance(volume_or_direction, (Volume, VolumeGeometry)):
        direction = np.asarray(volume_or_direction.direction)
    else:
        direction = np.asarray(volume_or_direction, dtype=float).reshape(3, 3)
    world, signs = _axis_assignment(direction)
    letters = []
    for a in (2, 1, 0):  # code order: x (column), y (row), z (slice)
        letters.append((_POSITIVE if signs[a] > 0 else _NEGATIVE)[world[a]])
    return "".join(letters)


@dataclass(frozen=True)
class AxisReorientation:
    """How to move array axes to reach a target orientation.

    New array axis ``b`` is old axis ``source_axes[b]``, flipped first when
    ``flips[b]``. Works on any array whose last three axes are (z, y, x), so a
    (channels, z, y, x) network output can be moved the same way as its image.
    """

    source_axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.source_axes == (0, 1, 2) and not any(self.flips)

    def apply_array(self, array: NDArray[Any]) -> NDArray[Any]:
        """Reoriented copy of ``array`` (last three axes z, y, x)."""
        arr = np.asarray(array)
        if arr.ndim < 3:
            raise GeometryError(f"expected an array with at least 3 axes (..., z, y, x), found {arr.shape}")
        lead = arr.ndim - 3
        flip_axes = tuple(lead + self.source_axes[b] for b in range(3) if self.flips[b])
        if flip_axes:
            arr = np.flip(arr, axis=flip_axes)
        order = tuple(range(lead)) + tuple(lead + a for a in self.source_axes)
        return np.ascontiguousarray(np.transpose(arr, order))

    def apply_geometry(self, geometry: VolumeGeometry) -> VolumeGeometry:
        """The grid of the reoriented array: same voxel centres in world space."""
        shape = geometry.shape
        old_index_of_new_zero = np.array(
            [shape[a] - 1 if self.flips[self.source_axes.index(a)] else 0 for a in range(3)], dtype=float
        )
        origin = geometry.index_to_world(old_index_of_new_zero)
        direction = np.empty((3, 3))
        for b, a in enumerate(self.source_axes):
            direction[:, b] = -geometry.direction[:, a] if self.flips[b] else geometry.direction[:, a]
        return VolumeGeometry(
            tuple(shape[a] for a in self.source_axes),
            tuple(geometry.spacing[a] for a in self.source_axes),
            origin,
            direction,
        )

    def inverse(self) -> AxisReorientation:
        """The reorientation that undoes this one."""
        source = [0, 0, 0]
        flips = [False, False, False]
        for b, a in enumerate(self.source_axes):
            source[a] = b
            flips[a] = self.flips[b]
        return AxisReorientation((source[0], source[1], source[2]), (flips[0], flips[1], flips[2]))


def plan_reorientation(
    geometry: VolumeGeometry | Volume, code: str = CANONICAL_ORIENTATION
) -> AxisReorientation:
    """The axis permutation and flips that give ``geometry`` the orientation ``code``."""
    target = parse_orientation_code(code)
    world, signs = _axis_assignment(np.asarray(geometry.direction))
    source = [0, 0, 0]
    flips = [False, False, False]
    for b, letter in zip((2, 1, 0), target, strict=True):  # code letters are x, y, z = array axes 2, 1, 0
        want_world, want_sign = _LETTERS[letter]
        a = world.index(want_world)
        source[b] = a
        flips[b] = signs[a] != want_sign
    return AxisReorientation((source[0], source[1], source[2]), (flips[0], flips[1], flips[2]))


def reorient(volume: Volume, code: str = CANONICAL_ORIENTATION) -> Volume:
    """A new Volume with orientation ``code``, by axis permutation and flips only.

    Every voxel keeps its world position and its value (images and labels alike). For
    oblique volumes the result has the closest code; the direction stays oblique.
    Undo with ``reorient(result, closest_orientation(volume))``.
    """
    plan = plan_reorientation(volume.geometry, code)
    if plan.is_identity:
        return Volume(volume.array.copy(), geometry=volume.geometry, meta=volume.meta)
    return Volume(
        plan.apply_array(volume.array), geometry=plan.apply_geometry(volume.geometry), meta=volume.meta
    )


def to_canonical(volume: Volume) -> Volume:
    """Reorient to medseg's canonical ``LPS`` (see :func:`reorient`)."""
    return reorient(volume, CANONICAL_ORIENTATION)
