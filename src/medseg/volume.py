"""The central image type: a 3D array with the geometry that places it in the patient.

Conventions (the only ones used inside medseg; file formats are converted in ``medseg.io``):

* ``array`` is indexed ``array[z, y, x]`` (slice, row, column), like SimpleITK's
  ``GetArrayFromImage`` and nnU-Net.
* ``shape`` and ``spacing`` follow the array axes: ``(z, y, x)``; spacing is in mm.
* World coordinates are DICOM/ITK patient coordinates, LPS, in mm (x to the patient's
  left, y to posterior, z to superior).
* ``origin`` is the world position (x, y, z) of the *centre* of voxel ``[0, 0, 0]``.
* ``direction`` is a 3x3 matrix whose column ``a`` is the unit world vector along
  increasing array axis ``a`` (column 0: z/slice axis, 1: y/row axis, 2: x/column axis).
  This is ITK's direction matrix with its columns reversed.

With ``R = direction @ diag(spacing)``, an array index ``x`` maps to world ``g`` by the
exercise's ``R x + o = g`` and back by ``x = R^-1 (g - o)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medseg.errors import GeometryError

Triple = tuple[float, float, float]

# Default tolerances for geometry comparison: tight enough to catch a half-voxel or
# a flipped axis, loose enough for float32 round-off in file headers (NIfTI stores
# the affine in float32, DICOM strings carry ~6 significant digits).
SPACING_ATOL = 1e-4  # mm
ORIGIN_ATOL = 1e-3  # mm
DIRECTION_ATOL = 1e-4  # cosine units

_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def _as_triple(values: ArrayLike, name: str) -> Triple:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.shape != (3,):
        raise GeometryError(f"{name} must have 3 values, found {arr.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name} must be finite, found {arr.tolist()}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _as_direction(values: ArrayLike | None) -> NDArray[np.float64]:
    if values is None:
        # Identity in ITK order (x->L, y->P, z->S) expressed in array order (z, y, x).
        mat = np.eye(3)[:, ::-1].copy()
    else:
        mat = np.array(values, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(mat)):
        raise GeometryError(f"direction must be finite, found {mat.tolist()}")
    norms = np.linalg.norm(mat, axis=0)
    if np.any(np.abs(norms - 1.0) > 1e-3):
        raise GeometryError(f"direction columns must be unit vectors, found norms {norms.tolist()}")
    mat = mat / norms
    # Unit columns with |det| near 1 still allow a shear of a few degrees (det = cos of the
    # skew); every axis pair must be perpendicular (|cos| <= 1e-3, about 0.06 degrees).
    skew = float(np.max(np.abs(mat.T @ mat - np.eye(3))))
    if skew > 1e-3:
        angle = float(np.degrees(np.arcsin(min(skew, 1.0))))
        raise GeometryError(
            f"direction must be orthonormal, found axes {angle:.3g} degrees from perpendicular (a sheared grid)"
        )
    mat.setflags(write=False)
    return mat


def orientation_code(direction: ArrayLike) -> str:
    """Three letters naming where the x, y and z (column, row, slice) axes point.

    Uses the "points to" convention of DICOM and nibabel: a standard axial DICOM
    series is ``LPS``, a standard NIfTI read through ITK is ``LPS`` or ``RAS`` depending
    on its header. ``direction`` is given in array order, as stored by :class:`Volume`.
    """
    mat = np.asarray(direction, dtype=float).reshape(3, 3)
    letters = []
    for axis in (2, 1, 0):  # x (column), y (row), z (slice)
        col = mat[:, axis]
        world = int(np.argmax(np.abs(col)))
        letters.append(_LPS_LETTERS[world][0 if col[world] > 0 else 1])
    return "".join(letters)


def obliquity_degrees(direction: ArrayLike) -> float:
    """Largest angle (degrees) between an array axis and its nearest world axis."""
    mat = np.asarray(direction, dtype=float).reshape(3, 3)
    cosines = np.clip(np.max(np.abs(mat), axis=0), -1.0, 1.0)
    return float(np.degrees(np.max(np.arccos(cosines))))


@dataclass(frozen=True, eq=False)
class VolumeGeometry:
    """Where a (z, y, x) voxel grid sits in LPS world space."""

    shape: tuple[int, int, int]
    spacing: Triple
    origin: Triple
    direction: NDArray[np.float64] = field(repr=False)

    def __init__(
        self,
        shape: Sequence[int],
        spacing: ArrayLike = (1.0, 1.0, 1.0),
        origin: ArrayLike = (0.0, 0.0, 0.0),
        direction: ArrayLike | None = None,
    ) -> None:
        shp = tuple(int(s) for s in shape)
        if len(shp) != 3 or any(s < 1 for s in shp):
            raise GeometryError(f"shape must be 3 positive sizes (z, y, x), found {shp}")
        sp = _as_triple(spacing, "spacing")
        if any(s <= 0 for s in sp):
            raise GeometryError(f"spacing must be positive, found {sp}")
        object.__setattr__(self, "shape", shp)
        object.__setattr__(self, "spacing", sp)
        object.__setattr__(self, "origin", _as_triple(origin, "origin"))
        object.__setattr__(self, "direction", _as_direction(direction))

    # ------------------------------------------------------------------ matrices
    @property
    def matrix(self) -> NDArray[np.float64]:
        """R = direction @ diag(spacing): maps an index step (z, y, x) to a world step (mm)."""
        return np.asarray(self.direction * np.asarray(self.spacing)[None, :])

    @property
    def affine(self) -> NDArray[np.float64]:
        """4x4 matrix mapping homogeneous (z, y, x, 1) indices to (x, y, z, 1) LPS mm."""
        aff = np.eye(4)
        aff[:3, :3] = self.matrix
        aff[:3, 3] = self.origin
        return aff

    @property
    def spacing_xyz(self) -> Triple:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_itk(self) -> NDArray[np.float64]:
        """ITK's direction matrix (columns are the x, y, z index axes)."""
        return np.asarray(self.direction[:, ::-1])

    @property
    def orientation(self) -> str:
        return orientation_code(self.direction)

    @property
    def obliquity(self) -> float:
        return obliquity_degrees(self.direction)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    # -------------------------------------------------------- point transforms
    def index_to_world(self, index: ArrayLike) -> NDArray[np.float64]:
        """Continuous (z, y, x) indices, shape (..., 3), to LPS world points (..., 3)."""
        idx = np.asarray(index, dtype=float)
        return np.asarray(idx @ self.matrix.T + np.asarray(self.origin))

    def world_to_index(self, points: ArrayLike) -> NDArray[np.float64]:
        """LPS world points (..., 3) to continuous (z, y, x) indices (..., 3)."""
        pts = np.asarray(points, dtype=float)
        inv = np.linalg.inv(self.matrix)
        return np.asarray((pts - np.asarray(self.origin)) @ inv.T)

    def corners_world(
        self, lower: ArrayLike | None = None, upper: ArrayLike | None = None
    ) -> NDArray[np.float64]:
        """World positions (8, 3) of the corners of an index box.

        ``lower``/``upper`` are inclusive voxel bounds (z, y, x); the corners are taken
        at the outer voxel faces (index - 0.5 and index + 0.5), so the box covers the
        whole extent of the voxels. Defaults to the whole grid.
        """
        lo = np.zeros(3) if lower is None else np.asarray(lower, dtype=float)
        hi = np.asarray(self.shape, dtype=float) - 1 if upper is None else np.asarray(upper, dtype=float)
        lo = lo - 0.5
        hi = hi + 0.5
        corners = np.array(
            [[z, y, x] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])]
        )
        return self.index_to_world(corners)

    def world_bounding_box(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned LPS box (min, max) containing the whole grid."""
        corners = self.corners_world()
        return corners.min(axis=0), corners.max(axis=0)

    # ---------------------------------------------------------------- compare
    def is_close(
        self,
        other: VolumeGeometry,
        *,
        spacing_atol: float = SPACING_ATOL,
        origin_atol: float = ORIGIN_ATOL,
        direction_atol: float = DIRECTION_ATOL,
    ) -> bool:
        return not self.differences(
            other, spacing_atol=spacing_atol, origin_atol=origin_atol, direction_atol=direction_atol
        )

    def differences(
        self,
        other: VolumeGeometry,
        *,
        spacing_atol: float = SPACING_ATOL,
        origin_atol: float = ORIGIN_ATOL,
        direction_atol: float = DIRECTION_ATOL,
    ) -> list[str]:
        """Human-readable list of what differs between two grids (empty when they agree)."""
        diffs: list[str] = []
        if self.shape != other.shape:
            diffs.append(f"shape {self.shape} vs {other.shape}")
        if not np.allclose(self.spacing, other.spacing, atol=spacing_atol, rtol=0):
            diffs.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}")
        if not np.allclose(self.origin, other.origin, atol=origin_atol, rtol=0):
            diffs.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if not np.allclose(self.direction, other.direction, atol=direction_atol, rtol=0):
            # The rotation between the two frames: orientation codes alone can be equal
            # for two oblique grids that differ.
            relative = self.direction.T @ other.direction
            if np.linalg.det(relative) < 0:
                how = "mirrored: an axis is flipped"
            else:
                cos = (np.trace(relative) - 1.0) / 2.0
                how = f"{float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))):.2f} degrees apart"
            diffs.append(f"direction {self.orientation} vs {other.orientation} ({how})")
        return diffs

    def require_same(self, other: VolumeGeometry, what: str = "grids", **tolerances: float) -> None:
        """Raise :class:`GeometryError` listing the differences when the grids differ."""
        diffs = self.differences(other, **tolerances)
        if diffs:
            raise GeometryError(f"{what} do not match: " + "; ".join(diffs))

    def with_shape_origin(self, shape: Sequence[int], origin: ArrayLike) -> VolumeGeometry:
        return VolumeGeometry(shape, self.spacing, origin, self.direction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape_zyx": list(self.shape),
            "spacing_zyx": list(self.spacing),
            "origin_lps": list(self.origin),
            "direction_zyx_columns": self.direction.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VolumeGeometry:
        return cls(data["shape_zyx"], data["spacing_zyx"], data["origin_lps"], data["direction_zyx_columns"])

    def __repr__(self) -> str:
        return (
            f"VolumeGeometry(shape zyx={self.shape}, spacing zyx={_fmt(self.spacing)} mm, "
            f"origin LPS={_fmt(self.origin)}, orientation {self.orientation}{_oblique(self.obliquity)})"
        )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _oblique(angle: float) -> str:
    return f", oblique {angle:.1f}°" if angle > 0.05 else ""


class Volume:
    """A 3D array with its geometry. Functions that change the grid return a new Volume.

    2D images are volumes with one slice (``shape[0] == 1``).
    ``meta`` carries non-identifying facts about the source (modality, series
    description, file) and never patient names, IDs or birth dates.
    """

    __slots__ = ("array", "geometry", "meta")

    def __init__(
        self,
        array: ArrayLike,
        spacing: ArrayLike = (1.0, 1.0, 1.0),
        origin: ArrayLike = (0.0, 0.0, 0.0),
        direction: ArrayLike | None = None,
        *,
        geometry: VolumeGeometry | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        arr = np.asarray(array)
        if arr.ndim != 3:
            raise GeometryError(f"a Volume array must be 3D (z, y, x), found shape {arr.shape}")
        if geometry is None:
            geometry = VolumeGeometry(arr.shape, spacing, origin, direction)
        elif tuple(arr.shape) != geometry.shape:
            raise GeometryError(f"array shape {arr.shape} does not match geometry shape {geometry.shape}")
        self.array: NDArray[Any] = arr
        self.geometry: VolumeGeometry = geometry
        self.meta: dict[str, Any] = dict(meta or {})

    # Delegated geometry -------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @property
    def spacing(self) -> Triple:
        return self.geometry.spacing

    @property
    def origin(self) -> Triple:
        return self.geometry.origin

    @property
    def direction(self) -> NDArray[np.float64]:
        return self.geometry.direction

    @property
    def affine(self) -> NDArray[np.float64]:
        return self.geometry.affine

    @property
    def orientation(self) -> str:
        return self.geometry.orientation

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.array.dtype

    def index_to_world(self, index: ArrayLike) -> NDArray[np.float64]:
        return self.geometry.index_to_world(index)

    def world_to_index(self, points: ArrayLike) -> NDArray[np.float64]:
        return self.geometry.world_to_index(points)

    # Construction -------------------------------------------------------------
    def with_array(self, array: ArrayLike, *, meta: Mapping[str, Any] | None = None) -> Volume:
        """Same grid, new voxel values (e.g. a label map predicted for this image)."""
        arr = np.asarray(array)
        if tuple(arr.shape) != self.shape:
            raise GeometryError(
                f"with_array: new array shape {arr.shape} differs from volume shape {self.shape}"
            )
        return Volume(arr, geometry=self.geometry, meta=self.meta if meta is None else meta)

    def copy(self) -> Volume:
        return Volume(self.array.copy(), geometry=self.geometry, meta=dict(self.meta))

    def astype(self, dtype: Any) -> Volume:
        return self.with_array(self.array.astype(dtype, copy=False))

    def __repr__(self) -> str:
        g = self.geometry
        if self.array.size:
            lo, hi = np.nanmin(self.array), np.nanmax(self.array)
            rng = f", range [{lo:.6g}, {hi:.6g}]"
        else:
            rng = ""
        return (
            f"Volume(shape zyx={g.shape}, spacing zyx={_fmt(g.spacing)} mm, orientation {g.orientation}"
            f"{_oblique(g.obliquity)}, origin LPS={_fmt(g.origin)}, dtype={self.array.dtype}{rng})"
        )
