"""Metrics: hand-computed cases, the empty-mask rules, and agreement with MONAI and SimpleITK."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.evaluation import metrics as M
from medseg.io.itk import to_sitk
from medseg.volume import Volume
from tests.conftest import oblique_direction

# 4 predicted voxels, 3 reference voxels, 3 shared, 2 true negatives.
PRED = np.array([1, 1, 1, 0, 1, 0], dtype=np.uint8).reshape(1, 2, 3)
REF = np.array([1, 0, 1, 0, 1, 0], dtype=np.uint8).reshape(1, 2, 3)
# A second pair with every count different: tp=2, fp=2, fn=1, tn=1.
PRED2 = np.array([1, 1, 0, 1, 1, 0], dtype=bool).reshape(1, 2, 3)
REF2 = np.array([1, 0, 1, 0, 1, 0], dtype=bool).reshape(1, 2, 3)


# ----------------------------------------------------------------------------- overlap
def test_overlap_counts_and_metrics_by_hand() -> None:
    c = M.OverlapCounts.from_masks(PRED2, REF2)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 2, 1, 1)
    assert M.dice(PRED2, REF2) == pytest.approx(4 / 7)
    assert M.iou(PRED2, REF2) == pytest.approx(2 / 5)
    assert M.precision(PRED2, REF2) == pytest.approx(2 / 4)
    assert M.recall(PRED2, REF2) == pytest.approx(2 / 3)
    assert M.specificity(PRED2, REF2) == pytest.approx(1 / 3)
    assert M.relative_volume_difference(PRED2, REF2) == pytest.approx((4 - 3) / 3)


def test_confusion_matrix_and_exercise_miou_by_hand() -> None:
    ref = np.array([0, 0, 1, 1, 2, 2]).reshape(1, 1, 6)
    pred = np.array([0, 1, 1, 1, 2, 0]).reshape(1, 1, 6)
    cm = M.confusion_matrix(pred, ref, [0, 1, 2])
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # IoU_0 = 1/3, IoU_1 = 2/3, IoU_2 = 1/2 -> mIoU = 1/2 (background included, as in the exercise)
    assert M.mean_iou(cm) == pytest.approx(0.5)
    # A declared class absent from both maps (TP + FP + FN = 0) is left out of the mean.
    cm4 = M.confusion_matrix(pred, ref, [0, 1, 2, 3])
    assert cm4.shape == (4, 4) and cm4[3].sum() == 0
    assert M.mean_iou(cm4) == pytest.approx(0.5)
    assert math.isnan(M.mean_iou(np.zeros((2, 2))))


def test_confusion_matrix_large_label_values_use_the_general_path() -> None:
    ref = np.array([0, 1000, 1000, 7]).reshape(1, 1, 4)
    pred = np.array([0, 1000, 7, 7]).reshape(1, 1, 4)
    cm = M.confusion_matrix(pred, ref, [0, 7, 1000])
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 0], [0, 1, 1]])


def test_confusion_matrix_rejects_undeclared_values() -> None:
    ref = np.array([0, 1, 2]).reshape(1, 1, 3)
    pred = np.array([0, 5, 2]).reshape(1, 1, 3)
    with pytest.raises(InputError, match=r"prediction holds \[5\]"):
        M.confusion_matrix(pred, ref, [0, 1, 2])
    with pytest.raises(InputError, match=r"reference holds \[2\]"):
        M.confusion_matrix(ref, ref, [0, 1])


def test_confusion_matrix_rejects_float_maps() -> None:
    with pytest.raises(InputError, match="not a label map"):
        M.confusion_matrix(np.zeros((1, 1, 2)), np.zeros((1, 1, 2), dtype=int), [0])


def test_shape_mismatch_is_a_geometry_error() -> None:
    with pytest.raises(GeometryError, match="differs"):
        M.dice(np.zeros((1, 2, 3)), np.zeros((1, 3, 2)))


def test_nan_in_mask_is_an_input_error() -> None:
    bad = np.array([0.0, np.nan, 1.0]).reshape(1, 1, 3)
    with pytest.raises(InputError, match="NaN"):
        M.dice(bad, np.ones((1, 1, 3)))


# ----------------------------------------------------------------------------- distances
def _point(shape: tuple[int, int, int], *idx: tuple[int, int, int]) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    for i in idx:
        a[i] = True
    return a


def test_distance_in_mm_on_anisotropic_grid() -> None:
    spacing = (3.0, 0.5, 0.5)  # z voxels are 6x longer than x voxels
    ref = _point((3, 1, 5), (0, 0, 0))
    one_slice_up = _point((3, 1, 5), (1, 0, 0))
    two_columns_right = _point((3, 1, 5), (0, 0, 2))
    # One voxel along z is 3 mm; two voxels along x are 1 mm: voxel counts would say the opposite.
    assert M.hausdorff_distance(one_slice_up, ref, spacing) == pytest.approx(3.0)
    assert M.hausdorff_distance(two_columns_right, ref, spacing) == pytest.approx(1.0)
    assert M.hausdorff_distance(one_slice_up, ref) == pytest.approx(1.0)  # default spacing 1 mm
    assert M.average_symmetric_surface_distance(one_slice_up, ref, spacing) == pytest.approx(3.0)


def test_hd_hd95_assd_nsd_with_an_outlier_by_hand() -> None:
    # A 1-voxel-thick line is all surface. The prediction adds one voxel 2 slices (6 mm) away.
    spacing = (3.0, 1.0, 1.0)
    ref = np.zeros((3, 1, 10), dtype=bool)
    ref[0, 0, :] = True
    pred = ref.copy()
    pred[2, 0, 0] = True
    sd = M.surface_distances(pred, ref, spacing)
    assert sorted(sd.pred_to_ref.tolist()) == [0.0] * 10 + [6.0]
    assert sd.ref_to_pred.tolist() == [0.0] * 10
    assert M.hausdorff_distance(pred, ref, spacing) == pytest.approx(6.0)
    # Directed 95th percentile of [0 x10, 6] with linear interpolation: index 9.5 -> 3.0.
    # (medpy's pooled convention, percentile of all 21 values, would give 0.)
    assert M.hd95(pred, ref, spacing) == pytest.approx(3.0)
    assert M.average_symmetric_surface_distance(pred, ref, spacing) == pytest.approx(6.0 / 21)
    assert M.normalized_surface_dice(pred, ref, spacing, tolerance_mm=2.0) == pytest.approx(20 / 21)
    assert M.normalized_surface_dice(pred, ref, spacing, tolerance_mm=6.0) == pytest.approx(1.0)


def test_surface_is_the_mask_minus_its_face_erosion() -> None:
    cube = np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    sd = M.surface_distances(cube, cube, (2.0, 1.0, 1.0))
    assert sd.pred_to_ref.size == 26  # 27 voxels minus the one interior voxel
    assert np.all(sd.pred_to_ref == 0)
    # Touching the array border: outside counts as background, so the border face is surface.
    full = np.ones((3, 3, 3), dtype=bool)
    assert M.surface_distances(full, full).pred_to_ref.size == 26


def test_uw_madison_score_by_hand() -> None:
    ref = np.zeros((1, 1, 10), dtype=bool)
    pred = ref.copy()
    ref[0, 0, 0:5] = True
    pred[0, 0, 1:6] = True
    dice = 8 / 10
    hd = 1.0
    diagonal = math.sqrt(1 + 1 + 100)
    expected = 0.4 * dice + 0.6 * (1 - hd / diagonal)
    assert M.uw_madison_score(pred, ref) == pytest.approx(expected)
    # With 2 mm voxels along x the Hausdorff term is normalised by the diagonal in mm.
    expected_mm = 0.4 * dice + 0.6 * (1 - 2.0 / math.sqrt(1 + 1 + 400))
    assert M.uw_madison_score(pred, ref, (1.0, 1.0, 2.0)) == pytest.approx(expected_mm)


def test_uw_metric_is_in_voxel_units_like_the_competition() -> None:
    """The ``uw`` metric of class_metrics / label_map_metrics ignores the spacing, as the
    competition's scorer did (Hausdorff on index points with scipy, diagonal of the shape)."""
    from scipy.spatial.distance import directed_hausdorff

    rng = np.random.default_rng(3)
    ref = np.zeros((6, 20, 24), dtype=np.uint8)
    ref[1:5, 4:15, 5:18] = 1
    pred = ref.copy()
    pred[2:4, 14:18, 3:9] = 1  # a bulge
    pred[0, rng.integers(0, 20, 3), rng.integers(0, 24, 3)] = 1  # stray voxels
    p_pts, r_pts = np.argwhere(pred == 1), np.argwhere(ref == 1)
    hd = max(directed_hausdorff(p_pts, r_pts)[0], directed_hausdorff(r_pts, p_pts)[0])
    dice = 2 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum())
    expected = 0.4 * dice + 0.6 * (1 - hd / math.sqrt(6**2 + 20**2 + 24**2))
    spacing = (3.0, 1.5, 1.5)  # UW-Madison: 3 mm slices, 1.5 mm pixels
    assert M.class_metrics(pred, ref, spacing, metrics=("uw", "hd"))["uw"] == pytest.approx(expected)
    both = M.label_metrics(pred, ref, spacing, None, metrics=("uw", "hd95"))
    assert both.per_label[1]["uw"] == pytest.approx(expected)
    assert M.uw_madison_score(pred, ref) == pytest.approx(expected)
    assert M.uw_madison_score(pred, ref, spacing) != pytest.approx(expected)  # mm on request


def test_grid_diagonal() -> None:
    assert M.grid_diagonal_mm((2, 3, 4), (1.0, 2.0, 3.0)) == pytest.approx(math.sqrt(4 + 36 + 144))


# ----------------------------------------------------------------------------- empty rules
SHAPE = (2, 3, 4)
SPACING = (2.0, 1.0, 0.5)
DIAG = M.grid_diagonal_mm(SHAPE, SPACING)
NONEMPTY = np.zeros(SHAPE, dtype=bool)
NONEMPTY[0, 1, 1:3] = True
EMPTY = np.zeros(SHAPE, dtype=bool)
NAN = math.nan

# metric -> (both empty, only prediction empty, only reference empty) under "nan" / "worst"
RULES = {
    "dice": ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
    "iou": ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
    "precision": ((1.0, NAN, 0.0), (1.0, 0.0, 0.0)),
    "recall": ((1.0, 0.0, NAN), (1.0, 0.0, 0.0)),
    "hd": ((0.0, NAN, NAN), (0.0, DIAG, DIAG)),
    "hd95": ((0.0, NAN, NAN), (0.0, DIAG, DIAG)),
    "assd": ((0.0, NAN, NAN), (0.0, DIAG, DIAG)),
    "nsd": ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
    "rvd": ((0.0, -1.0, NAN), (0.0, -1.0, NAN)),
    "uw": ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
}
FLAGGED = {"pred": {"precision", "hd", "hd95", "assd"}, "ref": {"recall", "hd", "hd95", "assd", "rvd"}}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


@pytest.mark.parametrize("rule", ["nan", "worst"])
@pytest.mark.parametrize("metric", sorted(RULES))
def test_empty_mask_rules(metric: str, rule: M.EmptyRule) -> None:
    expected = RULES[metric][0 if rule == "nan" else 1]
    pairs = {"both": (EMPTY, EMPTY), "pred": (EMPTY, NONEMPTY), "ref": (NONEMPTY, EMPTY)}
    for (kind, (pred, ref)), want in zip(pairs.items(), expected, strict=True):
        got = M.class_metrics(pred, ref, SPACING, metrics=[metric], empty=rule)
        assert got.empty == kind
        assert _same(got[metric], want), (metric, rule, kind, got[metric], want)
        assert (metric in got.flags) == (metric in FLAGGED.get(kind, set())), (metric, kind, got.flags)


def test_specificity_is_undefined_only_when_the_reference_fills_the_grid() -> None:
    full = np.ones(SHAPE, dtype=bool)
    assert M.specificity(EMPTY, EMPTY) == 1.0
    assert math.isnan(M.specificity(full, full))
    assert M.specificity(full, full, empty="worst") == 0.0
    assert "specificity" in M.class_metrics(full, full, metrics=["specificity"]).flags


def test_scalar_functions_follow_the_same_rules() -> None:
    assert math.isnan(M.hd95(EMPTY, NONEMPTY, SPACING))
    assert M.hd95(EMPTY, NONEMPTY, SPACING, empty="worst") == pytest.approx(DIAG)
    assert M.hausdorff_distance(EMPTY, EMPTY) == 0.0
    assert math.isnan(M.precision(EMPTY, NONEMPTY))
    assert math.isnan(M.recall(NONEMPTY, EMPTY))
    assert M.normalized_surface_dice(EMPTY, EMPTY, tolerance_mm=1.0) == 1.0


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="empty-mask rule"):
        M.precision(PRED, REF, empty="zero")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown metric 'dsc'"):
        M.class_metrics(PRED, REF, metrics=["dice", "dsc"])
    with pytest.raises(ConfigError, match="no metric"):
        M.check_metric_names([" "])
    with pytest.raises(ConfigError, match="percentile"):
        M.hausdorff_distance(PRED, REF, percentile=101)
    with pytest.raises(ConfigError, match="tolerance"):
        M.normalized_surface_dice(PRED, REF, tolerance_mm=-1)
    with pytest.raises(GeometryError, match="spacing"):
        M.hd95(PRED, REF, (1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="positive"):
        M.label_metrics(PRED, REF, None, [0, 1])


# ----------------------------------------------------------------------------- label maps
def _random_label_maps(
    seed: int, shape: tuple[int, int, int] = (14, 30, 26)
) -> tuple[np.ndarray, np.ndarray]:
    """Two label maps with 3 classes of blobs, one touching the array border."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    centres = [(7, 10, 9), (5, 22, 18), (0, 3, 22)]  # the third touches z = 0
    for lab, c in enumerate(centres, start=1):
        r = rng.uniform(2.5, 4.5, 3)
        ref[((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 < 1] = lab
        shift = rng.uniform(-1.5, 1.5, 3)
        r2 = r * rng.uniform(0.8, 1.2, 3)
        blob = ((z - c[0] - shift[0]) / r2[0]) ** 2 + ((y - c[1] - shift[1]) / r2[1]) ** 2
        pred[blob + ((x - c[2] - shift[2]) / r2[2]) ** 2 < 1] = lab
    pred[1, 27, 2] = 2  # a stray voxel far from class 2
    return pred, ref


def test_label_metrics_match_per_class_metrics_on_full_arrays() -> None:
    pred, ref = _random_label_maps(3)
    spacing = (2.5, 0.8, 0.6)
    result = M.label_metrics(pred, ref, spacing, [1, 2, 3, 4])
    for lab in (1, 2, 3, 4):
        direct = M.class_metrics(pred == lab, ref == lab, spacing)
        assert result.per_label[lab].counts == direct.counts
        for name in M.CLASS_METRICS:
            assert _same(result.per_label[lab][name], direct[name]), (lab, name)
    assert result.per_label[4].empty == "both"
    ious = [M.iou(pred == v, ref == v) for v in (0, 1, 2, 3)]  # class 4 is absent from both and left out
    assert result.miou == pytest.approx(np.mean(ious))


# ----------------------------------------------------------------------------- MONAI
def _one_hot(arr: np.ndarray, n: int):  # type: ignore[no-untyped-def]
    import torch

    return torch.from_numpy(np.stack([arr == c for c in range(n)])[None].astype(np.float32))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
@pytest.mark.parametrize("seed", [0, 1])
def test_agreement_with_monai(seed: int) -> None:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    pred, ref = _random_label_maps(seed)
    spacing = (2.5, 0.8, 0.6)
    ours = M.label_metrics(pred, ref, spacing, [1, 2, 3], nsd_tolerance_mm=1.5).per_label
    yp, yt = _one_hot(pred, 4), _one_hot(ref, 4)
    kw = {"include_background": False, "spacing": list(spacing)}
    dice = compute_dice(yp, yt, include_background=False)[0]
    hd = compute_hausdorff_distance(yp, yt, **kw)[0]
    # HD95 under the matching convention: max of the two directed 95th percentiles.
    hd95 = compute_hausdorff_distance(yp, yt, percentile=95, **kw)[0]
    assd = compute_average_surface_distance(yp, yt, symmetric=True, **kw)[0]
    nsd = compute_surface_dice(yp, yt, class_thresholds=[1.5] * 3, **kw)[0]
    for i, lab in enumerate((1, 2, 3)):
        assert ours[lab]["dice"] == pytest.approx(float(dice[i]), abs=1e-6)
        assert ours[lab]["hd"] == pytest.approx(float(hd[i]), abs=1e-4)
        assert ours[lab]["hd95"] == pytest.approx(float(hd95[i]), abs=1e-4)
        assert ours[lab]["assd"] == pytest.approx(float(assd[i]), abs=1e-4)
        assert ours[lab]["nsd"] == pytest.approx(float(nsd[i]), abs=1e-6)


# ----------------------------------------------------------------------------- SimpleITK
def test_agreement_with_simpleitk_overlap_measures() -> None:
    pred, ref = _random_label_maps(5)
    spacing = (2.5, 0.8, 0.6)
    geometry = {"spacing": spacing, "origin": (-31.5, 12.25, 80.0), "direction": oblique_direction()}
    f = sitk.LabelOverlapMeasuresImageFilter()
    # SimpleITK's first image is the "source" (our prediction), the second the "target" (reference).
    f.Execute(to_sitk(Volume(pred, **geometry)), to_sitk(Volume(ref, **geometry)))
    ours = M.label_metrics(pred, ref, spacing, [1, 2, 3]).per_label
    for lab in (1, 2, 3):
        c = ours[lab].counts
        assert ours[lab]["dice"] == pytest.approx(f.GetDiceCoefficient(lab))
        assert ours[lab]["iou"] == pytest.approx(f.GetJaccardCoefficient(lab))
        # ITK names differ: FalseNegativeError = 1 - recall, FalsePositiveError = FP / (FP + TN)
        # = 1 - specificity, FalseDiscoveryRate = 1 - precision.
        assert 1 - ours[lab]["recall"] == pytest.approx(f.GetFalseNegativeError(lab))
        assert 1 - ours[lab]["specificity"] == pytest.approx(f.GetFalsePositiveError(lab))
        assert 1 - ours[lab]["precision"] == pytest.approx(f.GetFalseDiscoveryRate(lab))
        # ITK's VolumeSimilarity 2(|P|-|R|)/(|P|+|R|) is not our RVD (|P|-|R|)/|R|; same counts.
        vs = 2 * (c.pred_voxels - c.ref_voxels) / (c.pred_voxels + c.ref_voxels)
        assert vs == pytest.approx(f.GetVolumeSimilarity(lab))
        assert ours[lab]["rvd"] == pytest.approx((c.pred_voxels - c.ref_voxels) / c.ref_voxels)


@pytest.mark.parametrize("shift", [(1, 2, -3), (0, 0, 5), (2, -4, 0)])
def test_agreement_with_simpleitk_hausdorff(shift: tuple[int, int, int]) -> None:
    # ITK's filter takes the Hausdorff distance between all voxels of both sets, ours between
    # surface voxels. For convex shapes the farthest points lie on the surfaces and the nearest
    # point of the other set is a surface voxel, so the two conventions give the same number.
    shape = (16, 30, 30)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    ref = ((z - 8) / 5) ** 2 + ((y - 15) / 9) ** 2 + ((x - 15) / 7) ** 2 < 1
    c = (8 + shift[0], 15 + shift[1], 15 + shift[2])
    pred = ((z - c[0]) / 4) ** 2 + ((y - c[1]) / 10) ** 2 + ((x - c[2]) / 7) ** 2 < 1
    spacing = (3.0, 0.7, 0.5)
    geometry = {"spacing": spacing, "origin": (10.0, -5.0, 3.0), "direction": oblique_direction()}
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(
        to_sitk(Volume(pred.astype(np.uint8), **geometry)), to_sitk(Volume(ref.astype(np.uint8), **geometry))
    )
    assert M.hausdorff_distance(pred, ref, spacing) == pytest.approx(f.GetHausdorffDistance(), abs=1e-4)


def test_region_dice_takes_the_union_of_each_regions_labels_on_both_sides() -> None:
    # labels: 1 large bowel only, 2 small bowel only, 3 both (the overlap)
    ref = np.array([[0, 1, 3, 3, 2, 0]])
    pred = np.array([[0, 1, 1, 2, 2, 2]])  # a painted map: the overlap shows as 1 or 2
    got = M.region_dice(pred, ref, {"large": (1, 3), "small": (2, 3), "absent": (4,)})
    # large: ref {1,2,3}, pred {1,2} -> 2*2/(3+2); small: ref {2,3,4}, pred {3,4,5} -> 2*2/(3+3)
    assert got == {"large": pytest.approx(0.8), "small": pytest.approx(2 / 3), "absent": 1.0}
    with pytest.raises(GeometryError):
        M.region_dice(pred[:, :5], ref, {"large": (1, 3)})


def test_metric_names_take_the_cli_spelling_too() -> None:
    """`EvaluationConfig(metrics="dice,iou")`, the `--metrics` value, was read letter by letter
    ("unknown metric 'd'")."""
    from medseg.evaluation import EvaluationConfig

    assert M.check_metric_names("dice, IoU,miou") == ("dice", "iou", "miou")
    assert EvaluationConfig(metrics="dice,iou").metrics == EvaluationConfig(metrics=("dice", "iou")).metrics
    with pytest.raises(ConfigError, match="unknown metric 'dsc'"):
        EvaluationConfig(metrics="dice,dsc")
