"""Object-level metrics: which objects were found, and how regions were split or merged.

Voxel metrics (Dice, HD95) cannot tell one large lesion from two touching ones, nor see a
missed 3 mm metastasis beside a well-segmented 5 cm one. These metrics count objects:

* **Objects of a class** (the default): the connected components of the class's mask,
  26-connected in 3D (8 in 2D), as cc3d counts lesions, nodules or nuclei.
* **Regions between separators** (``separator=True``, for a class that draws borders such
  as cell membranes in electron microscopy): the connected components of the voxels *not*
  of the class, face-connected (6 in 3D, 4 in 2D) so that a one-voxel diagonal membrane
  still separates two cells. Reference separator voxels are not scored; each predicted
  separator voxel joins its nearest predicted region (distance in mm), so only how regions
  are split and merged counts, not how thick the predicted separator is. This follows the
  ISBI 2012 challenge's Rand error, which also thinned borders and took the best threshold
  of a probability map; scores here compare with its leaderboard only roughly.

A predicted object P and a reference object R **match** when IoU(P, R) > ``iou_threshold``.
The default threshold (``None``) is 0 for objects of a class -- any overlap, the usual
lesion-wise detection rule -- and 0.5 for regions between separators, where every voxel
belongs to some region and any-overlap matching would be trivial; from 0.5 up, matches are
one-to-one (as in panoptic quality). In separator mode the IoU is taken over scored voxels.

Metrics (per class):

============== ========================================================================
obj_recall     reference objects matched / reference objects (lesion-wise sensitivity)
obj_precision  predicted objects matched / predicted objects
obj_f1         harmonic mean of the two
are            adapted Rand error (1 - F-score of the Rand index; scikit-image's
               ``adapted_rand_error``), regions between separators only: 0 is a perfect
               partition, merges and splits raise it
============== ========================================================================

In separator mode a predicted region that lies wholly on reference separator voxels is not
scored and not counted (unless the reference has no region at all).

Empty rules: no object on either side gives recall = precision = F1 = 1; no predicted
object gives precision undefined (worst 0), F1 0; no reference object gives recall
undefined (worst 0), F1 0. ARE is undefined (worst 1) when either side has no region (all
separator); a separator class absent from both maps leaves one region, the whole grid, on
each side: everything 1 and ARE 0. For classes that are not separators ARE is NaN, unflagged.
"Undefined" is NaN, or the worst value with ``empty="worst"``, and is flagged.

Connected components come from connected-components-3d and the Rand error from
scikit-image; what is written here is only the matching rule and the separator handling,
which neither library has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medseg.errors import ConfigError, GeometryError
from medseg.evaluation.metrics import EmptyRule, EmptyStatus, _spacing

# Metrics whose value comes from an empty rule, by what is missing ('are' is handled apart:
# it exists only for separator classes).
_UNDEFINED_WHEN: Mapping[str, frozenset[str]] = {
    "no_pred": frozenset({"obj_precision"}),
    "no_ref": frozenset({"obj_recall"}),
}
_WORST = {"obj_recall": 0.0, "obj_precision": 0.0, "are": 1.0}


@dataclass(frozen=True)
class ObjectCounts:
    """Object counts of one class: how many on each side and how many matched.

    ``rand_error`` is NaN unless computed (regions between separators only);
    ``separator`` says which kind of object was counted; ``records`` lists the objects when
    asked for.
    """

    n_ref: int
    n_pred: int
    ref_matched: int
    pred_matched: int
    rand_error: float = math.nan
    separator: bool = False
    records: tuple[ObjectRecord, ...] = field(default=(), repr=False)

    @classmethod
    def single_region(cls) -> ObjectCounts:
        """A separator class absent from both masks: one region, the whole grid, on each side."""
        return cls(1, 1, 1, 1, 0.0, separator=True)

    @classmethod
    def none(cls) -> ObjectCounts:
        """A class absent from both masks: no object on either side."""
        return cls(0, 0, 0, 0)

    @property
    def empty(self) -> EmptyStatus:
        """Which side has no object: "both", "pred", "ref" or "none" (as for voxels)."""
        if self.n_pred == 0:
            return "both" if self.n_ref == 0 else "pred"
        return "ref" if self.n_ref == 0 else "none"


def check_iou_threshold(value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or not 0.0 <= value < 1.0):
        raise ConfigError(
            f"object IoU threshold must be in [0, 1) (0: any overlap; 0.5: one-to-one), found {value}"
        )


def label_objects(mask: ArrayLike, *, separator: bool = False) -> tuple[NDArray[np.uint32], int]:
    """Connected objects of a mask (or the regions a separator mask encloses), labelled 1..n."""
    import cc3d

    m = np.asarray(mask).astype(bool, copy=False)
    squeeze = m.ndim == 2
    if squeeze:
        m = m[None]
    if m.ndim != 3:
        raise GeometryError(f"object labelling needs a 2D or 3D mask, found shape {m.shape}")
    if separator:
        m = ~m
    found, n = cc3d.connected_components(m, connectivity=6 if separator else 26, return_N=True)
    labels: NDArray[np.uint32] = np.asarray(found, dtype=np.uint32)
    return (labels[0] if squeeze else labels), int(n)


def _expand_into_separators(regions: NDArray[np.uint32], spacing: NDArray[np.float64]) -> NDArray[np.uint32]:
    """Give every unlabelled (separator) voxel the label of its nearest region, in mm."""
    from skimage.segmentation import expand_labels

    if not regions.any() or regions.all():
        return regions
    reach = float(np.sqrt(np.sum((np.asarray(regions.shape) * spacing) ** 2)))  # the grid diagonal
    return np.asarray(expand_labels(regions, distance=reach, spacing=spacing), dtype=np.uint32)


@dataclass(frozen=True)
class ObjectRecord:
    """One object of one side: its number, size, centre and best match on the other side.

    ``centroid`` is in array index order (z, y, x) -- (y, x) for a 2D mask; ``best_iou`` is
    the highest IoU with any object of the other side (0 when it touches none).
    """

    side: Literal["reference", "prediction"]
    number: int
    voxels: int
    volume_mm3: float
    centroid: tuple[float, ...]
    best_iou: float
    matched: bool


def _best_ious(
    pred_obj: NDArray[np.uint32],
    ref_obj: NDArray[np.uint32],
    n_pred: int,
    n_ref: int,
    scored: NDArray[np.bool_] | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Best IoU of every reference and predicted object (index = object number), and the
    predicted objects' scored sizes (separator mode counts only regions with scored voxels)."""
    p = pred_obj if scored is None else pred_obj[scored]
    r = ref_obj if scored is None else ref_obj[scored]
    pred_sizes = np.bincount(p.ravel(), minlength=n_pred + 1)
    ref_sizes = np.bincount(r.ravel(), minlength=n_ref + 1)
    ref_best, pred_best = np.zeros(n_ref + 1), np.zeros(n_pred + 1)
    both = (p > 0) & (r > 0)
    if both.any():
        key = r[both].astype(np.int64) * (n_pred + 1) + p[both]
        pairs, inter = np.unique(key, return_counts=True)
        r_id, p_id = pairs // (n_pred + 1), pairs % (n_pred + 1)
        iou = inter / (ref_sizes[r_id] + pred_sizes[p_id] - inter)
        np.maximum.at(ref_best, r_id, iou)
        np.maximum.at(pred_best, p_id, iou)
    return ref_best, pred_best, pred_sizes


def _records(
    side: Literal["reference", "prediction"],
    objects: NDArray[np.uint32],
    best: NDArray[np.float64],
    threshold: float,
    keep: NDArray[np.bool_],
    voxel_mm3: float,
) -> tuple[ObjectRecord, ...]:
    import cc3d

    stats = cc3d.statistics(objects if objects.ndim == 3 else objects[None])
    counts, centroids = stats["voxel_counts"], stats["centroids"]
    if objects.ndim == 2:
        centroids = centroids[:, 1:]
    return tuple(
        ObjectRecord(
            side,
            i,
            int(counts[i]),
            float(counts[i]) * voxel_mm3,
            tuple(float(c) for c in centroids[i]),
            float(best[i]),
            bool(best[i] > threshold),
        )
        for i in range(1, len(best))
        if i < len(counts) and keep[i]
    )


def object_counts(
    pred: ArrayLike,
    ref: ArrayLike,
    spacing: ArrayLike | None = None,
    *,
    separator: bool = False,
    iou_threshold: float | None = None,
    rand_error: bool = False,
    records: bool = False,
) -> ObjectCounts:
    """Count and match the objects of one class's prediction and reference masks.

    With ``separator=True`` the masks are the separator class (membranes) and the objects
    are the regions between them; ``rand_error`` then also computes the adapted Rand error.
    ``records`` keeps one :class:`ObjectRecord` per object (for a per-lesion table).
    """
    check_iou_threshold(iou_threshold)
    p, r = np.asarray(pred).astype(bool, copy=False), np.asarray(ref).astype(bool, copy=False)
    if p.shape != r.shape:
        raise GeometryError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    sp = _spacing(spacing, p.ndim)
    threshold = iou_threshold if iou_threshold is not None else (0.5 if separator else 0.0)
    pred_obj, n_pred = label_objects(p, separator=separator)
    ref_obj, n_ref = label_objects(r, separator=separator)
    scored: NDArray[np.bool_] | None = None
    are = math.nan
    if separator:
        pred_obj = _expand_into_separators(pred_obj, sp)
        scored = ref_obj > 0
        if rand_error and n_ref:
            from skimage.metrics import adapted_rand_error

            are = float(adapted_rand_error(ref_obj, pred_obj, ignore_labels=(0,))[0])
    ref_best, pred_best, pred_sizes = _best_ious(pred_obj, ref_obj, n_pred, n_ref, scored)
    # Separator mode: a predicted region wholly on reference separators is not scored, unless
    # the reference has no region at all (then every predicted region is an unmatched one).
    counted = pred_sizes > 0 if scored is not None and n_ref else np.ones(n_pred + 1, dtype=bool)
    counted[0] = False
    kept: tuple[ObjectRecord, ...] = ()
    if records:
        voxel_mm3 = float(np.prod(sp))
        all_ref = np.ones(n_ref + 1, dtype=bool)
        kept = _records("reference", ref_obj, ref_best, threshold, all_ref, voxel_mm3)
        kept += _records("prediction", pred_obj, pred_best, threshold, counted, voxel_mm3)
    return ObjectCounts(
        n_ref,
        int(np.count_nonzero(counted)),
        int(np.count_nonzero(ref_best[1:] > threshold)),
        int(np.count_nonzero(pred_best[1:] > threshold)),
        are,
        separator,
        kept,
    )


def object_metric_values(
    counts: ObjectCounts, names: tuple[str, ...], empty: EmptyRule
) -> tuple[dict[str, float], tuple[str, ...]]:
    """The requested object metrics of one class, and those that came from an empty rule."""
    undefined: set[str] = set()
    if counts.n_pred == 0 and counts.n_ref > 0:
        undefined |= _UNDEFINED_WHEN["no_pred"]
    if counts.n_ref == 0 and counts.n_pred > 0:
        undefined |= _UNDEFINED_WHEN["no_ref"]
    if counts.separator and (counts.n_ref == 0 or counts.n_pred == 0):
        undefined.add("are")  # no region on one side: no partition to compare
    recall = counts.ref_matched / counts.n_ref if counts.n_ref else (1.0 if counts.n_pred == 0 else math.nan)
    precision = (
        counts.pred_matched / counts.n_pred if counts.n_pred else (1.0 if counts.n_ref == 0 else math.nan)
    )
    if counts.n_ref == 0 and counts.n_pred == 0:
        f1 = 1.0
    elif counts.n_ref == 0 or counts.n_pred == 0 or recall + precision == 0:
        f1 = 0.0
    else:
        f1 = 2 * recall * precision / (recall + precision)
    raw: dict[str, Any] = {"obj_recall": recall, "obj_precision": precision, "obj_f1": f1}
    raw["are"] = counts.rand_error
    values: dict[str, float] = {}
    for name in names:
        v = float(raw[name])
        if name in undefined:
            v = _WORST[name] if empty == "worst" else math.nan
        values[name] = v
    return values, tuple(n for n in names if n in undefined)
