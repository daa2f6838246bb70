"""Marker-based watershed (scikit-image) on the gradient magnitude of the image.

Markers come from a label Volume, from seed points (each grown into a small marker, with no
background marker near it), or from intensity thresholds.
Without explicit thresholds, three-class multi-Otsu gives them: the darkest class marks
background, the brightest foreground, and the watershed decides the middle class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu
from skimage.segmentation import watershed as sk_watershed

from medseg.classical.seeds import seed_indices, seed_record
from medseg.classical.threshold import _finite_values, _label_volume
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume

logger = logging.getLogger(__name__)

# Point seeds grow into markers of this radius, and no background marker lies this near a
# seed (see watershed(); chosen on CHAOS MR and MSD hippocampus, docs/benchmarks.md).
SEED_RADIUS_MM = 5.0
BACKGROUND_MARGIN_MM = 15.0


def watershed(
    volume: Volume,
    *,
    markers: Volume | None = None,
    seeds: Sequence[Sequence[int]] | None = None,
    seeds_world: Sequence[Sequence[float]] | None = None,
    low: float | None = None,
    high: float | None = None,
    sigma_mm: float = 1.0,
    compactness: float = 0.0,
    seed_radius_mm: float = SEED_RADIUS_MM,
    background_margin_mm: float = BACKGROUND_MARGIN_MM,
) -> Volume:
    """Flood the gradient magnitude from markers; returns the basins as labels.

    * ``markers``: a label Volume on the same grid (0 = unmarked; 1 is taken as
      background and becomes 0 in the output, k > 1 becomes k - 1).
    * ``seeds`` / ``seeds_world``: seed i (1-based) marks label i, grown into a marker of the
      voxels within ``seed_radius_mm`` of it, connected to it, whose intensity lies in the
      range of its 3x3x3 neighbourhood; voxels below ``low`` (default: the lower multi-Otsu
      threshold) mark background, except within ``background_margin_mm`` of a seed (unless
      that leaves none). A
      single-voxel seed beside a background marker is flooded by it before its basin grows
      (15 random in-organ seeds on real MR: 11 kept 1-6 voxels); ``seed_radius_mm=0,
      background_margin_mm=0`` gives that plain point-seed watershed.
    * neither: voxels below ``low`` mark background, above ``high`` mark label 1
      (defaults: the two multi-Otsu thresholds).

    ``sigma_mm`` smooths the gradient (Gaussian sigma in mm, per-axis in voxels).
    """
    if min(sigma_mm, compactness, seed_radius_mm, background_margin_mm) < 0:
        raise ConfigError(
            "sigma_mm, compactness, seed_radius_mm and background_margin_mm must be >= 0, found "
            f"{sigma_mm}, {compactness}, {seed_radius_mm}, {background_margin_mm}"
        )
    arr = np.asarray(volume.array, dtype=np.float32)
    params: dict[str, object] = {"sigma_mm": sigma_mm, "compactness": compactness}
    marker_arr = np.zeros(volume.shape, dtype=np.int32)
    if markers is not None:
        if seeds or seeds_world:
            raise ConfigError("give either markers or seeds to the watershed, not both")
        if not markers.geometry.is_close(volume.geometry):
            raise GeometryError(
                "markers and image are on different grids: "
                + "; ".join(markers.geometry.differences(volume.geometry))
            )
        marker_arr = np.asarray(markers.array).astype(np.int32)
        if marker_arr.min() < 0 or marker_arr.max() < 2:
            raise InputError(
                None,
                "watershed markers need a background marker 1 and at least one object marker > 1",
                found=f"marker values {np.unique(marker_arr)[:10].tolist()}",
            )
        params["markers"] = "volume"
    else:
        if low is None or (high is None and not (seeds or seeds_world)):
            values, _ = _finite_values(volume, None)
            try:
                t_low, t_high = (float(t) for t in threshold_multiotsu(values, classes=3))
            except ValueError as exc:
                raise InputError(
                    None, "cannot derive watershed markers from intensities", found=str(exc)
                ) from None
            low = t_low if low is None else low
            high = t_high if high is None else high
        marker_arr[arr < low] = 1
        points = seed_indices(volume, seeds, seeds_world=seeds_world)
        if len(points) > 255:
            raise ConfigError(
                f"the watershed labels seed i as i (uint8): at most 255 seeds, found {len(points)}"
            )
        if points:
            for i, (z, y, x) in enumerate(points, start=2):
                if arr[z, y, x] < low:
                    logger.warning(
                        "watershed seed %d at (z, y, x) %s has intensity %.4g below the background "
                        "threshold low=%.4g: is it inside the structure? Voxels like it mark background "
                        "beyond background_margin_mm of the seeds and may flood its object; lower it "
                        "(--lower / low=)",
                        i - 1,
                        (z, y, x),
                        float(arr[z, y, x]),
                        low,
                    )
            if background_margin_mm > 0:
                near = (marker_arr == 1) & _near(volume.shape, points, volume.spacing, background_margin_mm)
                if (marker_arr == 1).sum() > near.sum():
                    marker_arr[near] = 0
                else:  # a small image all within the margin: keep the background marker whole
                    logger.info(
                        "every background voxel lies within background_margin_mm=%g of a seed; all are kept",
                        background_margin_mm,
                    )
            for i, point in enumerate(points, start=2):
                _grow_seed_marker(marker_arr, arr, point, i, volume.spacing, seed_radius_mm)
            params.update(
                markers="seeds",
                seeds=len(points),
                **seed_record(points),
                low=low,
                seed_radius_mm=seed_radius_mm,
                background_margin_mm=background_margin_mm,
            )
        else:
            assert high is not None
            if high <= low:
                raise ConfigError(
                    f"watershed high threshold {high} (--high) must be above the low threshold {low} (--lower)"
                )
            marker_arr[arr > high] = 2
            params.update(markers="thresholds", low=low, high=high)
        if not (marker_arr == 1).any() or not (marker_arr > 1).any():
            raise InputError(
                None,
                "the thresholds leave no background or no object marker",
                expected="some voxels below 'low' and some above 'high' (or seeds)",
                found=f"low={low}, high={high}",
            )
    elevation = gradient_magnitude(arr, volume.spacing, sigma_mm)
    basins = sk_watershed(elevation, markers=marker_arr, compactness=compactness)
    if markers is None and (seeds or seeds_world):
        _warn_lost_seeds(basins, elevation, points)
    out = np.clip(basins - 1, 0, 255).astype(np.uint8)
    return _label_volume(volume, out, "watershed", **params)


LOST_SEED_VOXELS = 10


def _near(
    shape: Sequence[int], points: Sequence[Sequence[int]], spacing: Sequence[float], mm: float
) -> np.ndarray:
    """Voxels within ``mm`` (Euclidean, in mm) of any of ``points``."""
    away = np.ones(shape, dtype=bool)
    for p in points:
        away[tuple(int(v) for v in p)] = False
    return np.asarray(ndi.distance_transform_edt(away, sampling=spacing) <= mm)


def _grow_seed_marker(
    marker_arr: np.ndarray,
    arr: np.ndarray,
    point: Sequence[int],
    value: int,
    spacing: Sequence[float],
    radius_mm: float,
) -> None:
    """Mark ``point`` and, within ``radius_mm`` of it, the voxels connected to it whose
    intensity lies within the range of its 3x3x3 neighbourhood (so the marker stays on the
    seed's side of an edge); voxels another seed already marked keep their value."""
    centre = tuple(int(v) for v in point)
    reach = [int(radius_mm // s) for s in spacing]
    box = tuple(
        slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip(centre, reach, arr.shape, strict=True)
    )
    near = tuple(slice(max(c - 1, 0), c + 2) for c in centre)
    lo, hi = float(np.min(arr[near])), float(np.max(arr[near]))
    axes = np.meshgrid(
        *[(np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, centre, spacing, strict=True)],
        indexing="ij",
    )
    sub = arr[box]
    keep = (sum(a**2 for a in axes) <= radius_mm**2) & (sub >= lo) & (sub <= hi)
    local = tuple(c - b.start for c, b in zip(centre, box, strict=True))
    keep[local] = True
    parts, _ = ndi.label(keep)
    region = marker_arr[box]
    region[(parts == parts[local]) & (region <= 1)] = value
    region[local] = value


def _warn_lost_seeds(basins: np.ndarray, elevation: np.ndarray, points: Sequence[Sequence[int]]) -> None:
    """A seed whose basin stayed (nearly) the seed voxel alone: the flood visits voxels from
    the lowest gradient up, so background reached everything around a seed placed on an edge
    or in texture before the seed's own level (a liver seed of a CHAOS MR kept 1 voxel)."""
    sizes = np.bincount(basins.ravel(), minlength=len(points) + 2)
    for i, (z, y, x) in enumerate(points, start=2):
        if sizes[i] < LOST_SEED_VOXELS:
            logger.warning(
                "watershed seed %d at (z, y, x) %s kept only %d voxel(s): the background flooded around "
                "it first, since the gradient at the seed (%.3g; median of the image %.3g) is above the "
                "level at which background reached its neighbours; place it where the structure is "
                "flat, or draw markers instead of points (--seed-mask: 1 background, 2, 3, ... objects)",
                i - 1,
                (z, y, x),
                int(sizes[i]),
                float(elevation[z, y, x]),
                float(np.median(elevation)),
            )


def gradient_magnitude(
    arr: np.ndarray, spacing: Sequence[float], sigma_mm: float, *, per_mm: bool = False
) -> np.ndarray:
    """|grad I| after Gaussian smoothing with ``sigma_mm`` (0: none).

    By default the derivative is the change per voxel step on every axis: in a scan with
    thick slices an organ boundary is blurred over about one voxel along every axis
    (partial volume), so per-voxel differences rate in-plane and through-plane edges
    alike. ``per_mm=True`` divides by the spacing (intensity per mm); on a 7.7 mm slice
    grid that makes through-plane edges look 6x weaker and floods leak across slices.
    """
    # Smooth, then central differences: a Gaussian *derivative* with a sub-voxel sigma (a
    # 1 mm sigma across 3 mm slices) samples to almost zero and would hide through-plane edges.
    sigma = [sigma_mm / s if sigma_mm / s >= 0.3 else 0.0 for s in spacing]
    smooth = ndi.gaussian_filter(arr.astype(np.float32), sigma=sigma) if any(sigma) else arr
    total = np.zeros(arr.shape, dtype=np.float32)
    for axis, step in enumerate(spacing):
        if arr.shape[axis] < 2:
            continue
        d = np.gradient(smooth, axis=axis).astype(np.float32)
        total += (d / np.float32(step if per_mm else 1.0)) ** 2
    return np.sqrt(total)
