"""Seed points for the seeded baselines: array indices, world points or a seed mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.volume import Volume

Index = tuple[int, int, int]


def seed_indices(
    volume: Volume,
    seeds: Sequence[Sequence[int]] | None = None,
    *,
    seeds_world: Sequence[Sequence[float]] | None = None,
    seed_mask: Volume | None = None,
) -> list[Index]:
    """All seeds as (z, y, x) voxel indices inside ``volume``, in the order given.

    ``seeds`` are (z, y, x) array indices; ``seeds_world`` are LPS world points (x, y, z)
    in mm, mapped to the nearest voxel; ``seed_mask`` is a label Volume on the same grid
    whose non-zero voxels are seeds. A seed outside the image raises :class:`InputError`
    saying which seed and the image extent.
    """
    shape = np.asarray(volume.shape)
    out: list[Index] = []
    for seed in seeds or ():
        idx = np.asarray(seed)
        if idx.shape != (3,) or not np.all(np.equal(np.mod(idx, 1), 0)):
            raise InputError(
                None, "a seed must be three integer voxel indices (z, y, x)", found=f"{list(seed)}"
            )
        if np.any(idx < 0) or np.any(idx >= shape):
            found = "an index out of range"
            flipped = idx[::-1]
            if np.all(flipped >= 0) and np.all(flipped < shape):
                # given X Y Z, as viewers (and world coordinates) order them: say so
                found += (
                    f"; read as x, y, z it lies inside: --seed {' '.join(str(int(v)) for v in flipped)} "
                    "(the order is z, y, x, as the overlay titles show)"
                )
            raise InputError(
                None,
                f"seed (z, y, x) = {tuple(int(v) for v in idx)} lies outside the image",
                expected=f"0 <= z < {shape[0]}, 0 <= y < {shape[1]}, 0 <= x < {shape[2]}",
                found=found,
            )
        out.append((int(idx[0]), int(idx[1]), int(idx[2])))
    for point in seeds_world or ():
        pt = np.asarray(point, dtype=float)
        if pt.shape != (3,) or not np.all(np.isfinite(pt)):
            raise InputError(
                None, "a world seed must be three finite LPS coordinates (x, y, z) mm", found=f"{list(point)}"
            )
        cont = volume.world_to_index(pt)
        if not _inside(cont, shape):
            lo, hi = volume.geometry.world_bounding_box()
            found = f"continuous index (z, y, x) {np.round(cont, 2).tolist()} for shape {shape.tolist()}"
            ras = pt * np.array([-1.0, -1.0, 1.0])
            if _inside(volume.world_to_index(ras), shape):
                # copied from a viewer that shows RAS (3D Slicer, NIfTI tools): say so
                found += (
                    "; read as RAS (as 3D Slicer shows it) it lies inside: --seed-world "
                    + " ".join(f"{v:g}" for v in ras)
                    + " (the coordinates are LPS, as DICOM and ITK's)"
                )
            raise InputError(
                None,
                f"world seed (x, y, z) = {tuple(round(float(v), 2) for v in pt)} mm lies outside the image",
                expected=f"a point inside the grid (its LPS bounding box is {np.round(lo, 1).tolist()} .. "
                f"{np.round(hi, 1).tolist()} mm)",
                found=found,
            )
        idx = np.clip(np.rint(cont).astype(int), 0, shape - 1)
        out.append((int(idx[0]), int(idx[1]), int(idx[2])))
    if seed_mask is not None:
        if not seed_mask.geometry.is_close(volume.geometry):
            raise GeometryError(
                "seed mask and image are on different grids: "
                + "; ".join(seed_mask.geometry.differences(volume.geometry))
            )
        pts = np.argwhere(seed_mask.array != 0)
        if pts.size == 0:
            raise InputError(None, "the seed mask is empty", expected="at least one non-zero voxel")
        out.extend((int(a), int(b), int(c)) for a, b, c in pts)
    return out


MAX_RECORDED_SEEDS = 100


def seed_record(points: Sequence[Index]) -> dict[str, object]:
    """The seeds as (z, y, x) voxel indices for a result's record (baseline.json), so a
    result can be made again: world seeds and seed masks as the voxels they became. A seed
    mask of more than MAX_RECORDED_SEEDS voxels is left out (its file is the record)."""
    if len(points) > MAX_RECORDED_SEEDS:
        return {}
    return {"seed_indices_zyx": [[int(v) for v in p] for p in points]}


def _inside(cont: np.ndarray, shape: np.ndarray) -> bool:
    """Inside means within the outer voxel faces: continuous index in [-0.5, n - 0.5)."""
    return bool(np.all(cont >= -0.5) and np.all(cont < shape - 0.5))


def require_seeds(seeds: list[Index], method: str) -> list[Index]:
    if not seeds:
        raise InputError(
            None,
            f"{method} needs at least one seed",
            expected="seed points (z, y, x), world points or a seed mask",
        )
    return seeds
