"""Multi-plane ROI: the region seen by the axial, sagittal and coronal T2 series of a study.

Meyer et al. (2018, PI-RADS sector maps) crop every case to "the intersecting volume of
the three MR sequences": the prostate is where the three T2 fields of view overlap.

How it is computed (``method="exact"``, the default):

1. Each grid's extent (its outer voxel faces, continuous indices -0.5 .. n-0.5 on every
   axis) is written as 6 half-spaces in LPS world space, from the exercise's
   ``x = R^-1 (g - o)``: ``index_k(g) <= n_k - 0.5`` and ``index_k(g) >= -0.5``.
2. The 18 half-spaces are intersected. An interior point comes from a linear program
   (the Chebyshev centre, :func:`scipy.optimize.linprog`); the vertices of the convex
   polytope from :class:`scipy.spatial.HalfspaceIntersection` (Qhull). A Chebyshev
   radius under :data:`MIN_OVERLAP_MM` means the grids do not overlap.
3. The vertices are mapped into the axial grid's continuous index space; the ROI is
   **the axis-aligned box in the axial volume's index space that contains the
   intersection**: every axial voxel (voxel ``k`` spans ``k-0.5 .. k+0.5``) that the
   polytope's index-space bounding box touches, optionally grown by a margin in mm and
   clipped to the axial grid. The crop is a plain index crop of the axial volume: no
   resampling, and :func:`medseg.geometry.crop.uncrop` puts a prediction back exactly.

The series are oblique and not mutually orthogonal, so the overlap is a general convex
polytope, not a box: using all corners/faces in world space is required; the result also
reports the polytope's vertices, volume and its axis-aligned LPS bounds.

Why this is written by hand: imaging libraries (SimpleITK, MONAI, TorchIO, nibabel)
give one grid's bounds or resample between grids, but none intersects the extents of
several oblique grids. The half-space set-up and the index-space box are the only
hand-written parts; the computational geometry is scipy's.

``method="aabb"`` is the exercise's simpler variant, kept for comparison: each grid's
8 corners give an axis-aligned world box, the boxes are intersected with ``np.amax`` of
the minima and ``np.amin`` of the maxima, and the 8 corners of the result are mapped
back into the axial grid with ``R^-1 (g - o)`` (the exercise writes ``R^-1 r - o``,
which is only right when ``R`` is the identity). An oblique grid's world box is larger
than the grid, so this ROI contains the exact one and is usually larger.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.geometry.crop import CropBox, crop, cropped_geometry
from medseg.io import read_volume, sidecar_path, write_volume
from medseg.io.atomic import check_writable, write_text_atomic
from medseg.io.itk import has_itk_suffix
from medseg.volume import Volume, VolumeGeometry

__all__ = [
    "FRAME_OF_REFERENCE_KEY",
    "MIN_OVERLAP_MM",
    "ConvexRegion",
    "MultiPlaneROI",
    "RoiFiles",
    "RoiMethod",
    "check_frame_of_reference",
    "compute_roi",
    "default_roi_json_path",
    "default_roi_png_path",
    "grid_halfspaces",
    "index_box_containing",
    "intersect_grids",
    "multiplane_roi",
    "write_roi",
]

logger = logging.getLogger(__name__)

RoiMethod = Literal["exact", "aabb"]

FRAME_OF_REFERENCE_KEY = "frame_of_reference_uid"

# Grids whose overlap is thinner than this (mm; radius of the largest inscribed ball)
# are treated as not overlapping: touching faces give no usable region.
MIN_OVERLAP_MM = 1e-3

# Continuous indices this close to a voxel face (in voxels) are snapped onto it, so
# float round-off on a shared face does not add a whole voxel layer to the box.
_FACE_SNAP = 1e-6

# Which world axis (LPS x=0, y=1, z=2) the slice normal of each role should follow.
_ROLE_NORMAL = {"axial": 2, "sagittal": 0, "coronal": 1}
# A series whose slice normal is within 30 degrees of a world axis is clearly in that plane
# (PROSTATEx's tilted axial T2 is 18 degrees off).
_CLEAR_PLANE_COS = math.cos(math.radians(30.0))


# ---------------------------------------------------------------- half-spaces
def grid_halfspaces(geometry: VolumeGeometry) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A grid's extent as 6 half-spaces ``A g <= b`` (unit normals, offsets in mm).

    The extent is bounded by the outer voxel faces (index -0.5 and n-0.5 on each axis).
    """
    inv = np.linalg.inv(geometry.matrix)  # row k: index_k = inv[k] @ (g - o)
    origin = np.asarray(geometry.origin)
    normals = []
    offsets = []
    for k in range(3):
        row = inv[k]
        norm = float(np.linalg.norm(row))  # 1 / spacing_k
        shift = float(row @ origin)
        normals.append(row / norm)  # index_k <= n_k - 0.5
        offsets.append((geometry.shape[k] - 0.5 + shift) / norm)
        normals.append(-row / norm)  # index_k >= -0.5
        offsets.append((0.5 - shift) / norm)
    return np.array(normals), np.array(offsets)


def _aabb_halfspaces(
    lower: NDArray[np.float64], upper: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    eye = np.eye(3)
    return np.concatenate([eye, -eye]), np.concatenate([upper, -lower])


@dataclass(frozen=True, eq=False)
class ConvexRegion:
    """A bounded convex region of world space ``{g : normals @ g <= offsets}`` with its vertices."""

    normals: NDArray[np.float64]
    offsets: NDArray[np.float64]
    vertices: NDArray[np.float64]
    volume_mm3: float
    chebyshev_radius_mm: float

    @property
    def lower(self) -> NDArray[np.float64]:
        """Axis-aligned LPS lower bound (mm)."""
        return np.asarray(self.vertices.min(axis=0))

    @property
    def upper(self) -> NDArray[np.float64]:
        return np.asarray(self.vertices.max(axis=0))

    def contains(self, points: ArrayLike, tol_mm: float = 1e-6) -> NDArray[np.bool_]:
        """Which world points (..., 3) lie inside the region (faces included, within ``tol_mm``)."""
        pts = np.asarray(points, dtype=float)
        return np.asarray(np.all(pts @ self.normals.T <= self.offsets + tol_mm, axis=-1))


def _dedupe(points: NDArray[np.float64], tol: float = 1e-6) -> NDArray[np.float64]:
    kept: list[NDArray[np.float64]] = []
    for p in points:
        if all(np.linalg.norm(p - q) > tol for q in kept):
            kept.append(p)
    return np.array(kept)


def _region_from_halfspaces(
    normals: NDArray[np.float64], offsets: NDArray[np.float64], what: str
) -> ConvexRegion:
    # Chebyshev centre: maximise r subject to n_i . x + r <= b_i (unit normals), r >= 0.
    lp = linprog(
        c=np.array([0.0, 0.0, 0.0, -1.0]),
        A_ub=np.column_stack([normals, np.ones(len(normals))]),
        b_ub=offsets,
        bounds=[(None, None)] * 3 + [(0, None)],
        method="highs",
    )
    radius = float(lp.x[3]) if lp.status == 0 else 0.0
    if radius < MIN_OVERLAP_MM:
        raise GeometryError(
            f"{what} do not overlap in world space (no common region thicker than {MIN_OVERLAP_MM} mm)"
        )
    centre = np.asarray(lp.x[:3])
    hs = HalfspaceIntersection(np.column_stack([normals, -offsets]), centre)
    vertices = _dedupe(np.asarray(hs.intersections))
    volume = float(ConvexHull(vertices).volume)
    return ConvexRegion(normals, offsets, vertices, volume, radius)


def intersect_grids(geometries: Sequence[VolumeGeometry], what: str = "the grids") -> ConvexRegion:
    """The exact overlap of several grids' extents: a convex polytope in world space.

    Raises :class:`GeometryError` when they do not overlap.
    """
    parts = [grid_halfspaces(g) for g in geometries]
    normals = np.concatenate([p[0] for p in parts])
    offsets = np.concatenate([p[1] for p in parts])
    return _region_from_halfspaces(normals, offsets, what)


def _intersect_world_aabbs(geometries: Sequence[VolumeGeometry], what: str) -> ConvexRegion:
    """The exercise's variant: intersect the grids' axis-aligned world boxes."""
    boxes = [g.world_bounding_box() for g in geometries]
    lower = np.amax([b[0] for b in boxes], axis=0)
    upper = np.amin([b[1] for b in boxes], axis=0)
    thickness = upper - lower
    if np.any(thickness < 2 * MIN_OVERLAP_MM):
        raise GeometryError(
            f"{what} do not overlap in world space: their axis-aligned LPS boxes intersect in "
            f"lower {np.round(lower, 2).tolist()} / upper {np.round(upper, 2).tolist()} mm"
        )
    corners = np.array(
        [[x, y, z] for x in (lower[0], upper[0]) for y in (lower[1], upper[1]) for z in (lower[2], upper[2])]
    )
    normals, offsets = _aabb_halfspaces(lower, upper)
    return ConvexRegion(normals, offsets, corners, float(np.prod(thickness)), float(thickness.min() / 2))


# ---------------------------------------------------------------- index box
def index_box_containing(
    geometry: VolumeGeometry, points: ArrayLike, *, margin_mm: float = 0.0, clip: bool = True
) -> CropBox:
    """Smallest box of whole voxels of ``geometry`` containing the world ``points``.

    Voxel ``k`` spans continuous index ``k-0.5 .. k+0.5``. ``margin_mm`` grows the box by
    ``ceil(margin / spacing)`` voxels per axis; ``clip`` keeps it inside the grid.
    """
    idx = geometry.world_to_index(np.asarray(points, dtype=float).reshape(-1, 3))
    lo = idx.min(axis=0) + 0.5
    hi = idx.max(axis=0) + 0.5
    lo = np.where(np.abs(lo - np.round(lo)) < _FACE_SNAP, np.round(lo), lo)
    hi = np.where(np.abs(hi - np.round(hi)) < _FACE_SNAP, np.round(hi), hi)
    lower = np.floor(lo).astype(int)
    upper = np.maximum(np.ceil(hi).astype(int), lower + 1)
    margin = np.ceil(margin_mm / np.asarray(geometry.spacing) - 1e-9).astype(int)
    box = CropBox(lower - margin, upper + margin)
    return box.clip(geometry.shape) if clip else box


# ---------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class MultiPlaneROI:
    """The multi-plane ROI: world region, index box on the axial grid, and the crop.

    ``region`` is the overlap in world space (``method="exact"``: the exact polytope;
    ``"aabb"``: the intersection of the grids' axis-aligned world boxes). ``box`` is the
    index box on the axial grid (margin included, clipped to the grid), ``cropped`` the
    axial volume cropped to it (``None`` from :func:`compute_roi`).
    """

    method: RoiMethod
    region: ConvexRegion
    box: CropBox
    axial_geometry: VolumeGeometry
    margin_mm: float = 0.0
    cropped: Volume | None = None

    @property
    def world_lower(self) -> NDArray[np.float64]:
        """Axis-aligned LPS bounds (mm) of the overlap region."""
        return self.region.lower

    @property
    def world_upper(self) -> NDArray[np.float64]:
        return self.region.upper

    @property
    def vertices_world(self) -> NDArray[np.float64]:
        return self.region.vertices

    @property
    def crop_geometry(self) -> VolumeGeometry:
        """The grid of the cropped axial volume."""
        return cropped_geometry(self.axial_geometry, self.box)

    @property
    def crop_corners_world(self) -> NDArray[np.float64]:
        """World corners (8, 3) of the cropped block (outer voxel faces)."""
        return self.axial_geometry.corners_world(self.box.lower, np.asarray(self.box.upper) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (world coordinates LPS mm, indices z, y, x)."""
        return {
            "method": self.method,
            "margin_mm": self.margin_mm,
            "world_box_lps_mm": {"lower": self.world_lower.tolist(), "upper": self.world_upper.tolist()},
            "intersection_vertices_lps_mm": self.vertices_world.tolist(),
            "intersection_volume_ml": self.region.volume_mm3 / 1000.0,
            "index_box_on_axial": self.box.to_dict(),
            "crop_corners_lps_mm": self.crop_corners_world.tolist(),
            "axial_geometry": self.axial_geometry.to_dict(),
            "cropped_geometry": self.crop_geometry.to_dict(),
        }


# ---------------------------------------------------------------- API
def _describe(role: str, volume: Volume) -> str:
    source = volume.meta.get("source")
    return f"{role} volume ({source})" if source else f"{role} volume"


def check_frame_of_reference(volumes: Mapping[str, Volume]) -> None:
    """Raise :class:`GeometryError` when volumes carry different DICOM frames of reference.

    Volumes without ``meta["frame_of_reference_uid"]`` (e.g. read from NIfTI) are not checked.
    """
    known = [(role, vol, vol.meta.get(FRAME_OF_REFERENCE_KEY)) for role, vol in volumes.items()]
    known = [(role, vol, uid) for role, vol, uid in known if uid]
    for role, vol, uid in known[1:]:
        first_role, first_vol, first_uid = known[0]
        if uid != first_uid:
            raise GeometryError(
                f"{_describe(role, vol)} and {_describe(first_role, first_vol)} belong to different frames of "
                f"reference ({uid} vs {first_uid}); their world coordinates cannot be compared"
            )


def _check_roles(geometries: Mapping[str, VolumeGeometry], sources: Mapping[str, str] | None = None) -> None:
    """Refuse three series given in another plane order; warn about a series in no role's plane.

    A sagittal series given as the axial one would be cropped and segmented in its place (the
    ROI is an index box on the axial grid), so a clean permutation of the three planes is an
    error naming the order that fits, when each misplaced series lies within 30 degrees of its
    plane; other mismatches (two series in one plane, a series near 45 degrees between two
    planes) stay warnings, since the overlap is still well defined.
    """
    roles = list(geometries)
    planes = {role: int(np.argmax(np.abs(geometries[role].direction[:, 0]))) for role in roles}
    wrong = [role for role in roles if planes[role] != _ROLE_NORMAL[role]]
    if not wrong:
        return

    def name(role: str) -> str:
        source = (sources or {}).get(role)
        return f"'{source}' (given as {role})" if source else f"the series given as {role}"

    by_normal = {normal: role for role, normal in _ROLE_NORMAL.items()}
    clear = all(abs(geometries[role].direction[planes[role], 0]) >= _CLEAR_PLANE_COS for role in wrong)
    if len(roles) == 3 and sorted(planes.values()) == [0, 1, 2] and clear:
        actual = {role: by_normal[planes[role]] for role in roles}
        given = "; ".join(
            f"{name(role)} is {actual[role]} ({geometries[role].orientation})" for role in wrong
        )

        def plain(role: str) -> str:
            source = (sources or {}).get(role)
            return f"'{source}'" if source else f"the series given as {role}"

        order = ", ".join(
            plain(next(r for r in roles if actual[r] == want)) for want in ("axial", "sagittal", "coronal")
        )
        raise GeometryError(
            f"the three series are given in another plane order: {given}; "
            f"give them as axial, sagittal, coronal: {order}"
        )
    for role in wrong:
        logger.warning(
            "%s has orientation %s: its slices are not %s; check the order of the inputs",
            name(role),
            geometries[role].orientation,
            role,
        )


def compute_roi(
    axial: VolumeGeometry,
    sagittal: VolumeGeometry,
    coronal: VolumeGeometry,
    *,
    margin_mm: float = 0.0,
    method: RoiMethod = "exact",
    sources: Mapping[str, str] | None = None,
) -> MultiPlaneROI:
    """The ROI of three grids without cropping (see the module docstring for the method).

    Raises :class:`GeometryError` when the grids are a sagittal, coronal and axial series
    given in another order (``sources`` maps the roles to file names for the message).
    """
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ConfigError(f"ROI margin must be a non-negative number of mm, found {margin_mm}")
    _check_roles({"axial": axial, "sagittal": sagittal, "coronal": coronal}, sources)
    grids = (axial, sagittal, coronal)
    what = "the axial, sagittal and coronal volumes"
    if method == "exact":
        region = intersect_grids(grids, what)
    elif method == "aabb":
        region = _intersect_world_aabbs(grids, what)
    else:
        raise ConfigError(f"unknown ROI method '{method}', expected 'exact' or 'aabb'")
    try:
        box = index_box_containing(axial, region.vertices, margin_mm=margin_mm)
    except GeometryError:
        # Only the "aabb" region can miss the axial grid itself.
        raise GeometryError(f"{what} do not overlap inside the axial grid") from None
    logger.info(
        "multi-plane ROI (%s): %.1f ml overlap, axial index box %s..%s (z, y, x) of %s",
        method,
        region.volume_mm3 / 1000.0,
        box.lower,
        box.upper,
        axial.shape,
    )
    return MultiPlaneROI(method, region, box, axial, float(margin_mm))


def multiplane_roi(
    axial: Volume,
    sagittal: Volume,
    coronal: Volume,
    *,
    margin_mm: float = 0.0,
    method: RoiMethod = "exact",
    sources: Mapping[str, str] | None = None,
) -> MultiPlaneROI:
    """Crop the axial volume to where the three series overlap.

    Raises :class:`GeometryError` when the volumes belong to different frames of
    reference or do not overlap. ``result.cropped`` keeps world positions:
    ``result.cropped.index_to_world(0) == axial.index_to_world(result.box.lower)``.
    """
    volumes = {"axial": axial, "sagittal": sagittal, "coronal": coronal}
    check_frame_of_reference(volumes)
    if sources is None:
        sources = {role: str(vol.meta["source"]) for role, vol in volumes.items() if vol.meta.get("source")}
    roi = compute_roi(
        axial.geometry,
        sagittal.geometry,
        coronal.geometry,
        margin_mm=margin_mm,
        method=method,
        sources=sources,
    )
    return replace(roi, cropped=crop(axial, roi.box, outside="error"))


# ---------------------------------------------------------------- files
ROI_JSON_SCHEMA_VERSION = 1


def default_roi_json_path(output: str | Path) -> Path:
    """``crop.nii.gz`` -> ``crop.roi.json`` beside it."""
    return sidecar_path(output, ".roi.json")


def default_roi_png_path(output: str | Path) -> Path:
    """``crop.nii.gz`` -> ``crop.roi.png`` beside it (the picture ``medseg roi`` draws)."""
    return sidecar_path(output, ".roi.png")


@dataclass(frozen=True, eq=False)
class RoiFiles:
    """What :func:`write_roi` produced."""

    roi: MultiPlaneROI
    volume_path: Path
    json_path: Path
    inputs: Mapping[str, Volume] = field(default_factory=dict)  # axial, sagittal, coronal as read


def write_roi(
    axial: str | Path,
    sagittal: str | Path,
    coronal: str | Path,
    output: str | Path,
    *,
    margin_mm: float = 0.0,
    method: RoiMethod = "exact",
    json_path: str | Path | None = None,
    overwrite: bool = False,
) -> RoiFiles:
    """Read three series, crop the axial one to their overlap, write the crop and a JSON box.

    Inputs are anything :func:`medseg.io.read_volume` reads (NIfTI/NRRD/MHA files, DICOM
    series folders). The crop is written by suffix (.nii.gz, .nrrd, .mha) and the JSON
    (world box in LPS mm, index box on the axial grid) defaults to
    :func:`default_roi_json_path`. Both outputs are checked before any input is read and
    written atomically; the JSON holds geometry only, no paths or patient data.
    """
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ConfigError(f"ROI margin must be a non-negative number of mm, found {margin_mm}")
    if method not in ("exact", "aabb"):
        raise ConfigError(f"unknown ROI method '{method}', expected 'exact' or 'aabb'")
    out = Path(output)
    js = default_roi_json_path(out) if json_path is None else Path(json_path)
    if not has_itk_suffix(out) or out.name.lower().endswith(".mhd"):
        raise InputError(out, "unsupported output format", expected=".nii.gz, .nii, .nrrd or .mha")
    if js.resolve() == out.resolve():
        raise InputError(js, "the JSON path is the same as the output volume", expected="two different paths")
    check_writable(out, overwrite)
    check_writable(js, overwrite)

    volumes = {
        role: read_volume(p) for role, p in (("axial", axial), ("sagittal", sagittal), ("coronal", coronal))
    }
    roi = multiplane_roi(
        volumes["axial"],
        volumes["sagittal"],
        volumes["coronal"],
        margin_mm=margin_mm,
        method=method,
        sources={"axial": str(axial), "sagittal": str(sagittal), "coronal": str(coronal)},
    )
    assert roi.cropped is not None
    document = {
        "schema_version": ROI_JSON_SCHEMA_VERSION,
        "description": "multi-plane ROI: overlap of the axial, sagittal and coronal series; "
        "world coordinates LPS mm, indices (z, y, x) on the axial grid, upper bounds exclusive",
        "output": out.name,
        **roi.to_dict(),
        "input_geometries": {role: vol.geometry.to_dict() for role, vol in volumes.items()},
    }
    text = json.dumps(document, indent=2) + "\n"
    write_volume(roi.cropped, out, overwrite=overwrite)
    write_text_atomic(js, text, overwrite=overwrite)
    return RoiFiles(roi, out, js, volumes)
