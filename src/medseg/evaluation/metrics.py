"""Segmentation metrics as pure functions of (prediction, reference, spacing).

Masks are boolean (or 0/1) arrays of the same shape, label maps are integer arrays;
``spacing`` is the voxel size in mm in array order (z, y, x), so every distance is in
millimetres even on strongly anisotropic grids (a step along z of a 1.25 x 1.25 x 7.7 mm
scan is 7.7 mm, not one voxel). Direction cosines do not change distances (they are a
rotation) and are not needed.

Conventions (published tools disagree; these are the ones used everywhere in medseg):

* Confusion matrix: rows are reference labels, columns predicted labels.
* Surfaces: a mask's surface voxels are the mask minus its erosion with the
  6-neighbourhood (face connectivity), outside the grid counting as background. This is
  MONAI's and the DeepMind surface-distance library's voxel convention.
* Surface distances: Euclidean distance in mm from each surface-voxel centre of one mask
  to the nearest surface-voxel centre of the other.
* HD (``hd``): the symmetric Hausdorff distance, max of both directed distances.
* HD95 (``hd95``): max of the two *directed* 95th percentiles (numpy's linear
  interpolation), as MONAI's ``compute_hausdorff_distance(percentile=95)``. medpy and
  some challenges take instead the 95th percentile of both distance sets pooled, which
  is never larger; the DeepMind library weights distances by surface area.
* ASSD (``assd``): mean of both distance sets pooled (Heimann et al. 2009; MONAI's
  ``compute_average_surface_distance(symmetric=True)``). medpy's ``assd`` averages the
  two directed means instead; the two agree when both surfaces have equally many voxels.
* NSD (``nsd``): normalised surface Dice at a tolerance tau (mm): the fraction of surface
  voxels of both masks lying within tau of the other surface (MONAI's
  ``compute_surface_dice`` without sub-voxel areas; Nikolov et al. 2021 use areas).
* RVD (``rvd``): (|P| - |R|) / |R|; signed, 0 is best. SimpleITK's "volume similarity" is
  a different quantity, 2 (|P| - |R|) / (|P| + |R|).
* UW-Madison score (``uw``): 0.4 Dice + 0.6 (1 - HD / D), HD the 3D Hausdorff distance
  and D the largest distance on the grid (its diagonal), HD / D clipped to [0, 1]. As the
  competition computed it, both are in **voxel units** (HD on the masks' index points, D =
  sqrt(sum(shape^2))) whatever the spacing; :func:`uw_madison_score` takes a ``spacing``
  for the same score in mm.
* mIoU (``miou``, per case): the exercise's 1/k sum_c TP_c / (TP_c + FP_c + FN_c) over the
  classes of the confusion matrix, background included. The evaluator also reports a
  pooled mIoU (``miou_pooled``): the same formula on one confusion matrix summed over all
  cases (:func:`pooled_confusion`), so large cases weigh more; a paper that scores a whole
  test set this way (as Meyer et al., ISBI 2019, may have) differs from the per-case mean.

Empty masks, one rule per metric. "Both" means prediction and reference are both empty,
"pred" only the prediction, "ref" only the reference:

============  ======  ==============================  ================================
metric        both    pred empty                      ref empty
============  ======  ==============================  ================================
dice, iou     1       0                               0
precision     1       undefined (worst: 0)            0
recall        1       0                               undefined (worst: 0)
specificity   TN / (TN + FP); undefined only when the reference fills the grid (worst: 0)
hd, hd95,     0       undefined (worst: D, the grid   undefined (worst: D)
assd                  diagonal in mm)
nsd           1       0                               0
rvd           0       -1                              undefined (always NaN: no finite
                                                      worst case exists)
uw            1       0 (the competition's rule)      0
miou          classes absent from both masks (TP + FP + FN = 0) are left out of the mean
============  ======  ==============================  ================================

"Undefined" values are NaN with ``empty="nan"`` (the default) or the worst case with
``empty="worst"``; either way :class:`ClassMetrics` lists the metric in ``flags`` so a
table can show which numbers came from a rule rather than from the formula.

Object metrics (``obj_recall``, ``obj_precision``, ``obj_f1``, the group ``objects``, and
the adapted Rand error ``are``) count connected objects instead of voxels; their matching
rule, separator classes and empty rules are in :mod:`medseg.evaluation.objects`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from medseg.errors import ConfigError, GeometryError, InputError

if TYPE_CHECKING:
    from medseg.evaluation.objects import ObjectCounts

EmptyRule = Literal["nan", "worst"]
EmptyStatus = Literal["none", "both", "pred", "ref"]

CLASS_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "hd",
    "hd95",
    "assd",
    "nsd",
    "rvd",
    "uw",
)
CASE_METRICS: tuple[str, ...] = ("miou",)
ALL_METRICS: tuple[str, ...] = CLASS_METRICS + CASE_METRICS
# Object-level metrics (medseg.evaluation.objects): asked for by name, or as the group
# "objects" (detection) -- not part of "all", since they answer a different question.
OBJECT_METRICS: tuple[str, ...] = ("obj_recall", "obj_precision", "obj_f1", "are")
METRIC_GROUPS: Mapping[str, tuple[str, ...]] = {
    "all": ALL_METRICS,
    "objects": ("obj_recall", "obj_precision", "obj_f1"),
}
KNOWN_METRICS: tuple[str, ...] = ALL_METRICS + OBJECT_METRICS
DISTANCE_METRICS = frozenset({"hd", "hd95", "assd", "nsd", "uw"})
LOWER_IS_BETTER = frozenset({"hd", "hd95", "assd", "are"})
MM_METRICS = frozenset({"hd", "hd95", "assd"})  # distances in mm, shown with two decimals
METRIC_TITLES: Mapping[str, str] = {
    "dice": "Dice",
    "iou": "IoU (Jaccard)",
    "precision": "Precision",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "hd": "Hausdorff distance (mm)",
    "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)",
    "nsd": "Normalised surface Dice",
    "rvd": "Relative volume difference",
    "uw": "UW-Madison score",
    "miou": "Mean IoU (with background)",
    "obj_recall": "Object recall",
    "obj_precision": "Object precision",
    "obj_f1": "Object F1",
    "are": "Adapted Rand error",
}
DEFAULT_NSD_TOLERANCE_MM = 2.0
UW_DICE_WEIGHT = 0.4

# Metrics whose value is undefined (NaN or worst case) for each kind of emptiness.
_UNDEFINED: Mapping[str, frozenset[str]] = {
    "none": frozenset(),
    "both": frozenset(),
    "pred": frozenset({"precision", "hd", "hd95", "assd"}),
    "ref": frozenset({"recall", "hd", "hd95", "assd", "rvd"}),
}

# 6-neighbourhood structures, built once.
_FACE_STRUCTURES = {nd: ndi.generate_binary_structure(nd, 1) for nd in (1, 2, 3)}


def check_metric_names(names: Iterable[str] | str) -> tuple[str, ...]:
    """Validate metric names (case-insensitive) and return them lower-cased, in order.

    The groups "all" (every voxel metric) and "objects" (object detection) expand in place.
    A string is read as the CLI's ``--metrics`` value, comma-separated ("dice,iou").
    """
    known = ", ".join([*KNOWN_METRICS, *METRIC_GROUPS])
    out: list[str] = []
    for raw in names.split(",") if isinstance(names, str) else names:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in KNOWN_METRICS and name not in METRIC_GROUPS:
            raise ConfigError(f"unknown metric '{raw}'; expected some of {known}")
        for item in METRIC_GROUPS.get(name, (name,)):
            if item not in out:
                out.append(item)
    if not out:
        raise ConfigError(f"no metric selected; expected some of {known}")
    return tuple(out)


def _check_empty_rule(empty: str) -> None:
    if empty not in ("nan", "worst"):
        raise ConfigError(f"empty-mask rule must be 'nan' or 'worst', found '{empty}'")


def _as_mask(array: ArrayLike, name: str) -> NDArray[np.bool_]:
    arr = np.asarray(array)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise InputError(None, f"{name} mask holds NaN", expected="0/1 or boolean values", found="NaN")
    return arr != 0


def _check_pair(pred: NDArray[Any], ref: NDArray[Any]) -> None:
    if pred.shape != ref.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")


def _spacing(spacing: ArrayLike | None, ndim: int) -> NDArray[np.float64]:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise GeometryError(
            f"spacing must be {ndim} positive values in array order, found {np.asarray(spacing).tolist()}"
        )
    return sp


def grid_diagonal_mm(shape: Sequence[int], spacing: ArrayLike | None = None) -> float:
    """Largest distance on a grid: the length of its diagonal, sqrt(sum((shape * spacing)^2))."""
    sp = _spacing(spacing, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * sp) ** 2)))


# --------------------------------------------------------------------------- counts
@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of one class: true/false positives/negatives."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def from_masks(cls, pred: ArrayLike, ref: ArrayLike) -> OverlapCounts:
        p, r = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
        _check_pair(p, r)
        tp = int(np.count_nonzero(p & r))
        n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
        return cls(tp, n_pred - tp, n_ref - tp, int(p.size) - n_pred - n_ref + tp)

    @property
    def pred_voxels(self) -> int:
        return self.tp + self.fp

    @property
    def ref_voxels(self) -> int:
        return self.tp + self.fn

    @property
    def empty(self) -> EmptyStatus:
        if self.pred_voxels == 0:
            return "both" if self.ref_voxels == 0 else "pred"
        return "ref" if self.ref_voxels == 0 else "none"


def _undefined(worst: float, empty: EmptyRule) -> float:
    return worst if empty == "worst" else math.nan


def dice_from_counts(c: OverlapCounts) -> float:
    den = 2 * c.tp + c.fp + c.fn
    return 1.0 if den == 0 else 2.0 * c.tp / den


def iou_from_counts(c: OverlapCounts) -> float:
    den = c.tp + c.fp + c.fn
    return 1.0 if den == 0 else c.tp / den


def precision_from_counts(c: OverlapCounts, empty: EmptyRule = "nan") -> float:
    if c.pred_voxels == 0:
        return 1.0 if c.ref_voxels == 0 else _undefined(0.0, empty)
    return c.tp / c.pred_voxels


def recall_from_counts(c: OverlapCounts, empty: EmptyRule = "nan") -> float:
    if c.ref_voxels == 0:
        return 1.0 if c.pred_voxels == 0 else _undefined(0.0, empty)
    return c.tp / c.ref_voxels


def specificity_from_counts(c: OverlapCounts, empty: EmptyRule = "nan") -> float:
    den = c.tn + c.fp
    return _undefined(0.0, empty) if den == 0 else c.tn / den


def rvd_from_counts(c: OverlapCounts) -> float:
    if c.ref_voxels == 0:
        return 0.0 if c.pred_voxels == 0 else math.nan
    return (c.pred_voxels - c.ref_voxels) / c.ref_voxels


def dice(pred: ArrayLike, ref: ArrayLike) -> float:
    """Dice = 2|P∩R| / (|P| + |R|); both empty -> 1."""
    return dice_from_counts(OverlapCounts.from_masks(pred, ref))


def region_dice(pred: ArrayLike, ref: ArrayLike, regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Dice per region of two label maps (region-based models, medseg.data.regions).

    A region is the union of its label values, on each side alike; both empty -> 1, as
    :func:`dice`. ``pred`` and ``ref`` are label maps of one shape.
    """
    p, r = np.asarray(pred), np.asarray(ref)
    _check_pair(p, r)
    return {
        name: dice(np.isin(p, list(values)), np.isin(r, list(values))) for name, values in regions.items()
    }


def iou(pred: ArrayLike, ref: ArrayLike) -> float:
    """IoU (Jaccard) = |P∩R| / |P∪R|; both empty -> 1."""
    return iou_from_counts(OverlapCounts.from_masks(pred, ref))


def precision(pred: ArrayLike, ref: ArrayLike, *, empty: EmptyRule = "nan") -> float:
    """TP / (TP + FP); undefined when only the prediction is empty."""
    _check_empty_rule(empty)
    return precision_from_counts(OverlapCounts.from_masks(pred, ref), empty)


def recall(pred: ArrayLike, ref: ArrayLike, *, empty: EmptyRule = "nan") -> float:
    """Sensitivity TP / (TP + FN); undefined when only the reference is empty."""
    _check_empty_rule(empty)
    return recall_from_counts(OverlapCounts.from_masks(pred, ref), empty)


def specificity(pred: ArrayLike, ref: ArrayLike, *, empty: EmptyRule = "nan") -> float:
    """TN / (TN + FP); undefined only when the reference fills the whole grid."""
    _check_empty_rule(empty)
    return specificity_from_counts(OverlapCounts.from_masks(pred, ref), empty)


def relative_volume_difference(pred: ArrayLike, ref: ArrayLike) -> float:
    """(|P| - |R|) / |R|, signed; NaN when only the reference is empty."""
    return rvd_from_counts(OverlapCounts.from_masks(pred, ref))


# ------------------------------------------------------------ confusion matrix
def confusion_matrix(pred: ArrayLike, ref: ArrayLike, labels: Sequence[int]) -> NDArray[np.int64]:
    """Counts ``cm[i, j]`` of voxels with reference ``labels[i]`` and prediction ``labels[j]``.

    Every value present in either array must be in ``labels`` (background included);
    otherwise :class:`InputError` names the undeclared values.
    """
    p, r = np.asarray(pred), np.asarray(ref)
    _check_pair(p, r)
    labs = [int(v) for v in labels]
    if len(set(labs)) != len(labs) or not labs:
        raise ConfigError(f"labels must be distinct integers, found {list(labels)}")
    for arr, name in ((p, "prediction"), (r, "reference")):
        if arr.dtype.kind not in "biu":
            raise InputError(
                None, f"{name} is not a label map", expected="integer labels", found=f"dtype {arr.dtype}"
            )
    full, values = _joint_histogram(p, r)
    _check_declared(full, values, labs)
    return _select(full, values, labs)


def _select(full: NDArray[np.int64], values: NDArray[np.int64], labels: Sequence[int]) -> NDArray[np.int64]:
    """The joint histogram restricted (and zero-padded) to ``labels``, in that order."""
    index = {int(v): i for i, v in enumerate(values)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    rows = [index.get(int(v)) for v in labels]
    for i, ri in enumerate(rows):
        if ri is None:
            continue
        for j, cj in enumerate(rows):
            if cj is not None:
                cm[i, j] = full[ri, cj]
    return cm


def _joint_histogram(p: NDArray[Any], r: NDArray[Any]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Joint counts over the values ``values`` present in either array (rows: reference)."""
    if p.size == 0:
        return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64)
    lo = min(int(p.min()), int(r.min()))
    hi = max(int(p.max()), int(r.max()))
    if lo >= 0 and hi < 256:
        # One bincount over ref * m + pred: the fast path for ordinary label maps.
        m = hi + 1
        idx = r.astype(np.uint16) * np.uint16(m)  # m <= 256, so ref * m + pred < 65536
        idx += p.astype(np.uint16, copy=False)
        full = np.bincount(idx.ravel(), minlength=m * m).reshape(m, m).astype(np.int64)
        present = np.flatnonzero(full.sum(axis=0) + full.sum(axis=1))
        return full[np.ix_(present, present)], present.astype(np.int64)
    values, inverse = np.unique(np.concatenate([r.ravel(), p.ravel()]), return_inverse=True)
    k = len(values)
    ri, pi = inverse[: r.size], inverse[r.size :]
    full = np.bincount(ri * k + pi, minlength=k * k).reshape(k, k).astype(np.int64)
    return full, values.astype(np.int64)


def _check_declared(full: NDArray[np.int64], values: NDArray[np.int64], labels: Sequence[int]) -> None:
    declared = set(labels)
    bad_pred = [int(v) for i, v in enumerate(values) if v not in declared and full[:, i].sum() > 0]
    bad_ref = [int(v) for i, v in enumerate(values) if v not in declared and full[i, :].sum() > 0]
    if bad_pred or bad_ref:
        where = []
        if bad_pred:
            where.append(f"prediction holds {bad_pred}")
        if bad_ref:
            where.append(f"reference holds {bad_ref}")
        raise InputError(
            None,
            "label values outside the declared set",
            expected=f"values in {sorted(declared)}",
            found="; ".join(where),
        )


def mean_iou(cm: ArrayLike) -> float:
    """The exercise's mIoU = 1/k sum_c TP_c / (TP_c + FP_c + FN_c) from a confusion matrix.

    ``cm`` has reference rows and predicted columns (either orientation gives the same
    result). Classes with TP + FP + FN = 0 (absent from both) are left out of the mean;
    NaN when no class is present at all.
    """
    mat = np.asarray(cm, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ConfigError(f"confusion matrix must be square, found shape {mat.shape}")
    tp = np.diag(mat)
    den = mat.sum(axis=0) + mat.sum(axis=1) - tp
    present = den > 0
    if not present.any():
        return math.nan
    return float(np.mean(tp[present] / den[present]))


def iou_per_class(cm: ArrayLike) -> NDArray[np.float64]:
    """TP_c / (TP_c + FP_c + FN_c) per class of a confusion matrix; NaN for a class absent
    from both sides (the classes :func:`mean_iou` leaves out)."""
    mat = np.asarray(cm, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ConfigError(f"confusion matrix must be square, found shape {mat.shape}")
    tp = np.diag(mat)
    den = mat.sum(axis=0) + mat.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, tp / np.where(den > 0, den, 1.0), np.nan)


def pooled_confusion(
    matrices: Iterable[tuple[Sequence[int], ArrayLike]], labels: Sequence[int]
) -> NDArray[np.int64]:
    """One confusion matrix over ``labels`` summed from per-case ``(case_labels, cm)`` pairs.

    Each case's matrix may cover fewer labels (those it was scored on); its counts are
    placed at their labels' rows and columns, and a label it lacks counts 0 there.
    """
    index = {int(v): i for i, v in enumerate(labels)}
    total = np.zeros((len(index), len(index)), dtype=np.int64)
    for case_labels, cm in matrices:
        mat = np.asarray(cm, dtype=np.int64)
        unknown = [int(v) for v in case_labels if int(v) not in index]
        if mat.shape != (len(case_labels), len(case_labels)) or unknown:
            raise ConfigError(
                f"a case's confusion matrix (shape {mat.shape}, labels {list(case_labels)}) does not fit "
                f"the labels {list(labels)}" + (f": {unknown} not among them" if unknown else "")
            )
        at = [index[int(v)] for v in case_labels]
        total[np.ix_(at, at)] += mat
    return total


# ------------------------------------------------------------ surface distances
@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface."""

    pred_to_ref: NDArray[np.float64]
    ref_to_pred: NDArray[np.float64]
    empty: EmptyStatus
    diagonal_mm: float


def _surface(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    # Surface = mask minus its face-connected erosion; outside the array is background.
    eroded = ndi.binary_erosion(mask, structure=_FACE_STRUCTURES[mask.ndim], border_value=0)
    return mask & ~eroded


def _union_bbox(p: NDArray[np.bool_], r: NDArray[np.bool_]) -> tuple[slice, ...] | None:
    union = p | r
    if not union.any():
        return None
    box: list[slice] = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hit = np.flatnonzero(union.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _distances_in_box(
    p: NDArray[np.bool_], r: NDArray[np.bool_], spacing: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Directed surface distances of two non-empty masks already cropped to their union box.

    Cropping to the union's bounding box changes nothing (all foreground is inside and the
    erosion treats the outside as background) and makes the cost scale with the objects,
    not with the image. Distances between surface-voxel centres come from a k-d tree over
    the (sparse) surface points: exact Euclidean distances, the same numbers as
    ``distance_transform_edt(~surface, sampling=spacing)`` read at the other surface, and
    2-3x faster on organ-sized boxes (measured in benchmarks/eval_bench.py's notes).
    """
    sp_pts = np.argwhere(_surface(p)) * spacing
    sr_pts = np.argwhere(_surface(r)) * spacing
    d_pr = cKDTree(sr_pts, leafsize=32).query(sp_pts, k=1)[0]
    d_rp = cKDTree(sp_pts, leafsize=32).query(sr_pts, k=1)[0]
    return np.asarray(d_pr, dtype=np.float64), np.asarray(d_rp, dtype=np.float64)


def surface_distances(pred: ArrayLike, ref: ArrayLike, spacing: ArrayLike | None = None) -> SurfaceDistances:
    """Directed surface distances in mm in both directions (empty arrays if a mask is empty)."""
    p, r = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
    _check_pair(p, r)
    sp = _spacing(spacing, p.ndim)
    return _surface_distances(p, r, sp, _union_bbox(p, r))


def _surface_distances(
    p: NDArray[np.bool_], r: NDArray[np.bool_], sp: NDArray[np.float64], box: tuple[slice, ...] | None
) -> SurfaceDistances:
    diag = grid_diagonal_mm(p.shape, sp)
    none = np.zeros(0, dtype=np.float64)
    has_p, has_r = (box is not None and p[box].any()), (box is not None and r[box].any())
    if not has_p or not has_r:
        status: EmptyStatus = "both" if not has_p and not has_r else ("pred" if not has_p else "ref")
        return SurfaceDistances(none, none, status, diag)
    assert box is not None
    d_pr, d_rp = _distances_in_box(p[box], r[box], sp)
    return SurfaceDistances(d_pr, d_rp, "none", diag)


def _directed_percentile(d: NDArray[np.float64], percentile: float) -> float:
    return float(d.max()) if percentile >= 100 else float(np.percentile(d, percentile))


def hausdorff_from_distances(
    sd: SurfaceDistances, percentile: float = 100.0, empty: EmptyRule = "nan"
) -> float:
    """Symmetric Hausdorff distance: max of the two directed ``percentile``-th distances."""
    if sd.empty == "both":
        return 0.0
    if sd.empty != "none":
        return _undefined(sd.diagonal_mm, empty)
    return max(
        _directed_percentile(sd.pred_to_ref, percentile), _directed_percentile(sd.ref_to_pred, percentile)
    )


def assd_from_distances(sd: SurfaceDistances, empty: EmptyRule = "nan") -> float:
    """Average symmetric surface distance: mean of both directed distance sets pooled."""
    if sd.empty == "both":
        return 0.0
    if sd.empty != "none":
        return _undefined(sd.diagonal_mm, empty)
    total = float(sd.pred_to_ref.sum() + sd.ref_to_pred.sum())
    return total / (sd.pred_to_ref.size + sd.ref_to_pred.size)


def nsd_from_distances(sd: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface Dice: share of both surfaces within ``tolerance_mm`` of the other."""
    if sd.empty == "both":
        return 1.0
    if sd.empty != "none":
        return 0.0
    good = np.count_nonzero(sd.pred_to_ref <= tolerance_mm) + np.count_nonzero(sd.ref_to_pred <= tolerance_mm)
    return float(good) / (sd.pred_to_ref.size + sd.ref_to_pred.size)


def uw_from(dice_value: float, sd: SurfaceDistances) -> float:
    """UW-Madison score 0.4 Dice + 0.6 (1 - HD / diagonal); both empty 1, one empty 0."""
    if sd.empty == "both":
        return 1.0
    if sd.empty != "none":
        return 0.0
    hd = hausdorff_from_distances(sd)
    normalised = min(hd / sd.diagonal_mm, 1.0)
    return UW_DICE_WEIGHT * dice_value + (1.0 - UW_DICE_WEIGHT) * (1.0 - normalised)


def hausdorff_distance(
    pred: ArrayLike,
    ref: ArrayLike,
    spacing: ArrayLike | None = None,
    *,
    percentile: float = 100.0,
    empty: EmptyRule = "nan",
) -> float:
    """Symmetric (percentile) Hausdorff distance between the surfaces, in mm."""
    _check_empty_rule(empty)
    if not 0 <= percentile <= 100:
        raise ConfigError(f"percentile must be in [0, 100], found {percentile}")
    return hausdorff_from_distances(surface_distances(pred, ref, spacing), percentile, empty)


def hd95(
    pred: ArrayLike, ref: ArrayLike, spacing: ArrayLike | None = None, *, empty: EmptyRule = "nan"
) -> float:
    """95th-percentile Hausdorff distance (max of the directed 95th percentiles), in mm."""
    return hausdorff_distance(pred, ref, spacing, percentile=95.0, empty=empty)


def average_symmetric_surface_distance(
    pred: ArrayLike, ref: ArrayLike, spacing: ArrayLike | None = None, *, empty: EmptyRule = "nan"
) -> float:
    """ASSD in mm (both directed distance sets pooled)."""
    _check_empty_rule(empty)
    return assd_from_distances(surface_distances(pred, ref, spacing), empty)


def normalized_surface_dice(
    pred: ArrayLike, ref: ArrayLike, spacing: ArrayLike | None = None, *, tolerance_mm: float
) -> float:
    """Normalised surface Dice at ``tolerance_mm``; both empty 1, one empty 0."""
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ConfigError(f"NSD tolerance must be a finite number of mm >= 0, found {tolerance_mm}")
    return nsd_from_distances(surface_distances(pred, ref, spacing), tolerance_mm)


def uw_madison_score(pred: ArrayLike, ref: ArrayLike, spacing: ArrayLike | None = None) -> float:
    """UW-Madison GI tract competition score, 0.4 Dice + 0.6 (1 - normalised 3D Hausdorff).

    Without ``spacing`` in voxel units, as the competition (and the ``uw`` metric of
    :func:`evaluate`) computes it; with a spacing, the same score with distances in mm.
    """
    p, r = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
    _check_pair(p, r)
    sd = _surface_distances(p, r, _spacing(spacing, p.ndim), _union_bbox(p, r))
    return uw_from(dice_from_counts(OverlapCounts.from_masks(p, r)), sd)


# ------------------------------------------------------------ all metrics of a class
@dataclass(frozen=True)
class ClassMetrics:
    """All requested metrics of one class, with the counts and the empty-mask flags."""

    values: Mapping[str, float]
    counts: OverlapCounts
    flags: tuple[str, ...] = ()
    objects: ObjectCounts | None = None  # only when object metrics were asked for

    @property
    def empty(self) -> EmptyStatus:
        return self.counts.empty

    def __getitem__(self, metric: str) -> float:
        return self.values[metric]


def _class_metrics_from(
    counts: OverlapCounts,
    distances: SurfaceDistances | None,
    metrics: Sequence[str],
    empty: EmptyRule,
    nsd_tolerance_mm: float,
    objects: ObjectCounts | None = None,
    voxel_distances: SurfaceDistances | None = None,
) -> ClassMetrics:
    values: dict[str, float] = {}
    object_flags: tuple[str, ...] = ()
    object_names = tuple(m for m in metrics if m in OBJECT_METRICS)
    if object_names:
        from medseg.evaluation.objects import object_metric_values

        if objects is None:
            raise ValueError("object metrics asked for without object counts")
        object_values, object_flags = object_metric_values(objects, object_names, empty)
        values.update(object_values)
    for name in metrics:
        if name == "dice":
            values[name] = dice_from_counts(counts)
        elif name == "iou":
            values[name] = iou_from_counts(counts)
        elif name == "precision":
            values[name] = precision_from_counts(counts, empty)
        elif name == "recall":
            values[name] = recall_from_counts(counts, empty)
        elif name == "specificity":
            values[name] = specificity_from_counts(counts, empty)
        elif name == "rvd":
            values[name] = rvd_from_counts(counts)
        elif name in DISTANCE_METRICS:
            assert distances is not None
            if name == "hd":
                values[name] = hausdorff_from_distances(distances, 100.0, empty)
            elif name == "hd95":
                values[name] = hausdorff_from_distances(distances, 95.0, empty)
            elif name == "assd":
                values[name] = assd_from_distances(distances, empty)
            elif name == "nsd":
                values[name] = nsd_from_distances(distances, nsd_tolerance_mm)
            else:  # the competition's voxel units (the mm distances when the voxels are 1 mm)
                values[name] = uw_from(dice_from_counts(counts), voxel_distances or distances)
    undefined = set(_UNDEFINED[counts.empty])
    if counts.tn + counts.fp == 0:
        undefined.add("specificity")
    flags = tuple(m for m in metrics if m in undefined or m in object_flags)
    return ClassMetrics({m: values[m] for m in metrics}, counts, flags, objects)


def _check_metric_options(metrics: Sequence[str], empty: str, nsd_tolerance_mm: float) -> tuple[str, ...]:
    _check_empty_rule(empty)
    names = check_metric_names(metrics)
    if "nsd" in names and (not math.isfinite(nsd_tolerance_mm) or nsd_tolerance_mm < 0):
        raise ConfigError(f"NSD tolerance must be a finite number of mm >= 0, found {nsd_tolerance_mm}")
    return tuple(m for m in names if m in CLASS_METRICS or m in OBJECT_METRICS)


def class_metrics(
    pred: ArrayLike,
    ref: ArrayLike,
    spacing: ArrayLike | None = None,
    *,
    metrics: Sequence[str] = CLASS_METRICS,
    empty: EmptyRule = "nan",
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    separator: bool = False,
    object_iou: float | None = None,
) -> ClassMetrics:
    """Every requested per-class metric of one binary mask pair, sharing one distance pass.

    ``separator`` and ``object_iou`` only concern the object metrics: see
    :mod:`medseg.evaluation.objects`.
    """
    names = _check_metric_options(metrics, empty, nsd_tolerance_mm)
    p, r = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
    _check_pair(p, r)
    counts = OverlapCounts.from_masks(p, r)
    distances = voxel_distances = None
    sp = _spacing(spacing, p.ndim)
    if DISTANCE_METRICS.intersection(names):
        distances = _surface_distances(p, r, sp, _union_bbox(p, r))
    if "uw" in names and not np.all(sp == 1.0):
        voxel_distances = _surface_distances(p, r, np.ones_like(sp), _union_bbox(p, r))
    objects = _objects_if_asked(p, r, spacing, names, separator, object_iou)
    return _class_metrics_from(counts, distances, names, empty, nsd_tolerance_mm, objects, voxel_distances)


def _objects_if_asked(
    p: NDArray[np.bool_],
    r: NDArray[np.bool_],
    spacing: ArrayLike | None,
    names: Sequence[str],
    separator: bool,
    object_iou: float | None,
    records: bool = False,
) -> ObjectCounts | None:
    if not any(m in OBJECT_METRICS for m in names):
        return None
    from medseg.evaluation.objects import object_counts

    if "are" in names and not separator:
        raise ConfigError(
            "the adapted Rand error ('are') scores a partition into regions: it needs a separator "
            "class (such as cell membranes; --separator), not objects of a class"
        )
    return object_counts(
        p,
        r,
        spacing,
        separator=separator,
        iou_threshold=object_iou,
        rand_error="are" in names,
        records=records,
    )


@dataclass(frozen=True)
class LabelMapMetrics:
    """Metrics of a label-map pair: per foreground label, plus the case-level mIoU."""

    per_label: Mapping[int, ClassMetrics]
    confusion: NDArray[np.int64]  # rows: reference, columns: prediction, over (0, *labels)
    miou: float
    prediction_values: tuple[int, ...] = ()  # foreground values present in each map
    reference_values: tuple[int, ...] = ()


def label_metrics(
    pred: ArrayLike,
    ref: ArrayLike,
    spacing: ArrayLike | None,
    labels: Sequence[int] | None,
    *,
    metrics: Sequence[str] = ALL_METRICS,
    empty: EmptyRule = "nan",
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    separators: Sequence[int] = (),
    object_iou: float | None = None,
    object_records: bool = False,
) -> LabelMapMetrics:
    """Per-label metrics of two integer label maps; ``labels`` are the foreground labels.

    One joint histogram gives every overlap count; distances are computed per label on the
    bounding box of the union of both masks. Values outside ``{0, *labels}`` raise
    :class:`InputError`; ``labels=None`` takes every non-zero value present in either map.
    Object metrics count the connected objects of each label, or, for the labels in
    ``separators``, the regions those labels enclose (:mod:`medseg.evaluation.objects`);
    ``object_records`` keeps one record per object in ``ClassMetrics.objects.records``.
    """
    names = _check_metric_options(metrics, empty, nsd_tolerance_mm)
    p, r = np.asarray(pred), np.asarray(ref)
    _check_pair(p, r)
    for arr, role in ((p, "prediction"), (r, "reference")):
        if arr.dtype.kind not in "biu":
            raise InputError(
                None, f"{role} is not a label map", expected="integer labels", found=f"dtype {arr.dtype}"
            )
    full, values = _joint_histogram(p, r)
    pred_values = tuple(int(v) for i, v in enumerate(values) if v != 0 and full[:, i].sum() > 0)
    ref_values = tuple(int(v) for i, v in enumerate(values) if v != 0 and full[i, :].sum() > 0)
    if labels is None:
        fg = sorted(set(pred_values) | set(ref_values))
    else:
        fg = [int(v) for v in labels]
        if any(v <= 0 for v in fg) or len(set(fg)) != len(fg):
            raise ConfigError(f"foreground labels must be distinct positive integers, found {fg}")
    all_labels = [0, *fg]
    if labels is not None and "are" in names and not set(separators) & set(fg):
        raise ConfigError(
            f"the adapted Rand error ('are') needs a separator label (such as cell membranes; "
            f"--separator): none of the separators {list(separators)} is among the scored labels {fg}"
        )
    _check_declared(full, values, all_labels)
    cm = _select(full, values, all_labels)
    sp = _spacing(spacing, p.ndim)
    need_distances = bool(DISTANCE_METRICS.intersection(names))
    boxes_p = _label_boxes(p, max(fg, default=0)) if need_distances else {}
    boxes_r = _label_boxes(r, max(fg, default=0)) if need_distances else {}
    n = int(p.size)
    diag = grid_diagonal_mm(p.shape, sp)
    ones = np.ones_like(sp)
    voxel_uw = "uw" in names and not np.all(sp == 1.0)  # the competition's units, see the module docstring
    per_label: dict[int, ClassMetrics] = {}
    for i, lab in enumerate(all_labels):
        if lab == 0:
            continue
        tp = int(cm[i, i])
        n_pred, n_ref = int(cm[:, i].sum()), int(cm[i, :].sum())
        counts = OverlapCounts(tp, n_pred - tp, n_ref - tp, n - n_pred - n_ref + tp)
        distances: SurfaceDistances | None = None
        voxel_distances: SurfaceDistances | None = None
        if need_distances:
            if counts.empty != "none":
                none = np.zeros(0, dtype=np.float64)
                distances = SurfaceDistances(none, none, counts.empty, diag)
                if voxel_uw:
                    voxel_distances = SurfaceDistances(
                        none, none, counts.empty, grid_diagonal_mm(p.shape, ones)
                    )
            else:
                box = _merge_boxes(boxes_p[lab], boxes_r[lab])
                d_pr, d_rp = _distances_in_box(p[box] == lab, r[box] == lab, sp)
                distances = SurfaceDistances(d_pr, d_rp, "none", diag)
                if voxel_uw:
                    v_pr, v_rp = _distances_in_box(p[box] == lab, r[box] == lab, ones)
                    voxel_distances = SurfaceDistances(v_pr, v_rp, "none", grid_diagonal_mm(p.shape, ones))
        objects = None
        if any(m in OBJECT_METRICS for m in names):
            # 'are' only where it is defined: the separator labels; NaN for the others.
            asked = names if lab in separators else tuple(m for m in names if m != "are")
            objects = _objects_if_asked(
                p == lab, r == lab, sp, asked, lab in separators, object_iou, object_records
            )
            if objects is None:  # only 'are' asked, and this label is no separator
                from medseg.evaluation.objects import ObjectCounts

                objects = ObjectCounts.none()
        per_label[lab] = _class_metrics_from(
            counts, distances, names, empty, nsd_tolerance_mm, objects, voxel_distances
        )
    return LabelMapMetrics(per_label, cm, mean_iou(cm), pred_values, ref_values)


def _label_boxes(arr: NDArray[Any], max_label: int) -> dict[int, tuple[slice, ...]]:
    # find_objects gives every label's bounding box in one pass over the array.
    objs = ndi.find_objects(arr if arr.dtype.kind in "iu" else arr.astype(np.int64), max_label=max_label)
    return {i + 1: box for i, box in enumerate(objs) if box is not None}


def _merge_boxes(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))
