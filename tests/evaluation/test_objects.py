"""Object metrics: lesion-wise detection and the adapted Rand error of regions between separators."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.evaluation import EvaluationConfig, class_metrics, evaluate, label_metrics, write_report
from medseg.evaluation.objects import (
    _expand_into_separators,
    label_objects,
    object_counts,
)
from medseg.io import write_volume
from tests.conftest import make_oblique_volume

ISBI_LABELS = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012_em" / "train" / "label"


def _lesions() -> tuple[np.ndarray, np.ndarray]:
    """Three reference lesions; the prediction finds one well, one barely, misses one, adds one."""
    ref = np.zeros((10, 24, 24), dtype=bool)
    ref[2:6, 2:8, 2:8] = True  # A: found well
    ref[2:6, 14:20, 14:20] = True  # B: touched by a small prediction
    ref[7, 2, 20] = True  # C: a one-voxel lesion ...
    ref[8, 3, 21] = True  # ... with a diagonal neighbour: one object under 26-connectivity
    pred = np.zeros_like(ref)
    pred[2:6, 2:8, 3:9] = True  # overlaps A (IoU 120/168)
    pred[5, 19:21, 19:21] = True  # overlaps B in 1 voxel of its 4 (IoU 1/147)
    pred[8, 20:22, 2:4] = True  # a false positive far from everything
    return pred, ref


def test_lesion_detection_counts_and_the_iou_threshold() -> None:
    pred, ref = _lesions()
    assert label_objects(ref)[1] == 3  # the diagonal pair is one lesion
    assert label_objects(ref[7:9])[1] == 1
    assert label_objects(ref[7:9], separator=True)[1] == 1  # the regions around them: one
    c = object_counts(pred, ref, spacing=(3.0, 0.7, 0.7))
    assert (c.n_ref, c.n_pred, c.ref_matched, c.pred_matched) == (3, 3, 2, 2)
    m = class_metrics(pred, ref, (3.0, 0.7, 0.7), metrics=("objects",))
    assert m["obj_recall"] == pytest.approx(2 / 3) and m["obj_precision"] == pytest.approx(2 / 3)
    assert m["obj_f1"] == pytest.approx(2 / 3) and m.flags == () and m.objects == c
    strict = class_metrics(pred, ref, metrics=("obj_recall", "obj_precision", "obj_f1"), object_iou=0.5)
    assert strict["obj_recall"] == pytest.approx(1 / 3) and strict["obj_precision"] == pytest.approx(1 / 3)
    assert class_metrics(pred, ref, metrics=("obj_recall",), object_iou=0.72)["obj_recall"] == 0.0
    recs = object_counts(pred, ref, spacing=(3.0, 0.7, 0.7), records=True).records
    assert [(r.side, r.matched) for r in recs] == [("reference", True)] * 2 + [("reference", False)] + [
        ("prediction", True)
    ] * 2 + [("prediction", False)]
    a, b, c = recs[:3]
    assert a.voxels == 144 and a.best_iou == pytest.approx(120 / 168) and a.centroid == (3.5, 4.5, 4.5)
    assert b.best_iou == pytest.approx(1 / 147) and b.volume_mm3 == pytest.approx(144 * 3 * 0.49)
    assert c.voxels == 2 and c.best_iou == 0.0 and c.centroid == (7.5, 2.5, 20.5)
    assert recs[-1].voxels == 4 and recs[-1].best_iou == 0.0
    assert class_metrics(pred, ref, metrics=("obj_recall",), object_iou=0.7)["obj_recall"] == pytest.approx(
        1 / 3
    )


def test_one_prediction_over_two_lesions_finds_both_with_any_overlap() -> None:
    ref = np.zeros((4, 12, 12), dtype=bool)
    ref[1:3, 2:5, 2:8] = ref[1:3, 2:5, 9:11] = True  # 36 and 12 voxels, a one-column gap
    pred = np.zeros_like(ref)
    pred[1:3, 2:5, 2:11] = True  # bridges the gap: one predicted object (IoU 36/54 and 12/54)
    m = class_metrics(pred, ref, metrics=("objects",))
    assert (m.objects.n_ref, m.objects.n_pred) == (2, 1)  # type: ignore[union-attr]
    assert m["obj_recall"] == 1.0 and m["obj_precision"] == 1.0
    # One-to-one matching does not let one object claim both.
    m = class_metrics(pred, ref, metrics=("objects",), object_iou=0.5)
    assert m["obj_recall"] == 0.5 and m["obj_precision"] == 1.0 and m["obj_f1"] == pytest.approx(2 / 3)


def test_empty_rules_and_flags() -> None:
    empty = np.zeros((3, 8, 8), dtype=bool)
    one = empty.copy()
    one[1, 2:4, 2:4] = True
    both = class_metrics(empty, empty, metrics=("objects",))
    assert both.values == {"obj_recall": 1.0, "obj_precision": 1.0, "obj_f1": 1.0} and both.flags == ()
    missed = class_metrics(empty, one, metrics=("objects",))
    assert missed["obj_recall"] == 0.0 and math.isnan(missed["obj_precision"]) and missed["obj_f1"] == 0.0
    assert missed.flags == ("obj_precision",)
    assert class_metrics(empty, one, metrics=("objects",), empty="worst")["obj_precision"] == 0.0
    spurious = class_metrics(one, empty, metrics=("objects",))
    assert math.isnan(spurious["obj_recall"]) and spurious["obj_precision"] == 0.0
    assert spurious.flags == ("obj_recall",)
    assert class_metrics(one, empty, metrics=("objects",), empty="worst")["obj_recall"] == 0.0


def test_empty_rules_between_separators() -> None:
    ref = _cells((2, 20, 20), 5, seed=2)
    wall = np.ones_like(ref)  # all separator: no region
    names = ("objects", "are")
    no_pred = class_metrics(wall, ref, metrics=names, separator=True)
    assert no_pred.objects.n_pred == 0 and no_pred["obj_recall"] == 0.0  # type: ignore[union-attr]
    assert math.isnan(no_pred["obj_precision"]) and math.isnan(no_pred["are"])
    assert set(no_pred.flags) == {"obj_precision", "are"} and no_pred.objects.empty == "pred"  # type: ignore[union-attr]
    assert class_metrics(wall, ref, metrics=names, separator=True, empty="worst")["are"] == 1.0
    no_ref = class_metrics(ref, wall, metrics=names, separator=True)
    assert no_ref.objects.n_pred >= 4 and no_ref["obj_precision"] == 0.0  # type: ignore[union-attr]
    assert math.isnan(no_ref["obj_recall"]) and no_ref["obj_f1"] == 0.0 and math.isnan(no_ref["are"])
    assert set(no_ref.flags) == {"obj_recall", "are"}
    # A class that is no separator has no Rand error, and no flag for it.
    lesions = label_metrics(ref, np.zeros_like(ref), None, [1, 2], metrics=("are",), separators=[2])
    assert math.isnan(lesions.per_label[1]["are"]) and lesions.per_label[1].flags == ()
    assert lesions.per_label[2]["are"] == 0.0  # no label 2 anywhere: one region each side


def test_rand_error_alone_with_another_label_and_a_plain_2d_array() -> None:
    membrane = _cells((1, 30, 30), 6, seed=4)[0]
    labels = membrane.copy()
    labels[2:5, 2:5] = 2  # a second class inside a cell
    m = label_metrics(labels, labels, None, [1, 2], metrics=("are",), separators=[1])
    assert m.per_label[1]["are"] == 0.0 and math.isnan(m.per_label[2]["are"])
    shifted = np.roll(membrane, 2, axis=1)
    flat = object_counts(shifted, membrane, separator=True, rand_error=True)
    deep = object_counts(shifted[None], membrane[None], separator=True, rand_error=True)
    assert flat == deep and flat.rand_error > 0.0


def _cells(shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    """Voronoi cells of random seeds with one-voxel face-separating membranes (label 1)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.int32)
    for i, p in enumerate(rng.integers(0, shape, size=(n, 3)), start=1):
        seeds[tuple(p)] = i
    _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[tuple(idx)]
    membrane = np.zeros(shape, dtype=bool)
    for axis in range(3):
        diff = np.diff(cells, axis=axis) != 0
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        membrane[tuple(sl)] |= diff
    return membrane.astype(np.uint8)


def _rand_error(ref_regions: np.ndarray, pred_regions: np.ndarray) -> float:
    """The adapted Rand error from its definition: pairs of distinct scored voxels that lie in
    one region in both partitions, over such pairs in the prediction (precision) and in the
    reference (recall); 1 - their harmonic mean."""
    scored = ref_regions > 0
    r, p = ref_regions[scored], pred_regions[scored]
    n_ij = np.unique(np.stack([r, p]), axis=1, return_counts=True)[1].astype(float)
    a = np.unique(r, return_counts=True)[1].astype(float)
    b = np.unique(p, return_counts=True)[1].astype(float)

    def pairs(n: np.ndarray) -> float:
        return float(np.sum(n * (n - 1)))

    precision, recall = pairs(n_ij) / pairs(b), pairs(n_ij) / pairs(a)
    return 1 - 2 * precision * recall / (precision + recall)


def test_regions_between_membranes_count_merges_and_splits_not_thickness() -> None:
    ref = _cells((6, 40, 40), 12, seed=3)
    spacing = (4.0, 1.0, 1.0)
    n_cells = label_objects(ref, separator=True)[1]
    assert n_cells >= 10
    # A thicker predicted membrane changes the voxels, not the partition.
    thick = ndimage.binary_dilation(ref, structure=np.ones((1, 3, 3), bool)).astype(np.uint8)
    m = label_metrics(thick, ref, spacing, [1], metrics=("dice", "objects", "are"), separators=[1])
    assert m.per_label[1]["dice"] < 0.75
    assert m.per_label[1]["are"] < 0.005  # ties on the thickened membrane only
    assert m.per_label[1]["obj_recall"] == 1.0 and m.per_label[1]["obj_precision"] == 1.0
    # Erase the membrane between the two largest touching cells: one merge.
    regions, _ = label_objects(ref, separator=True)
    grown = ndimage.grey_dilation(regions, size=(3, 3, 3))
    shrunk = np.where(regions > 0, regions, 10**6)
    low = ndimage.grey_erosion(shrunk, size=(3, 3, 3))
    between = (ref == 1) & (grown != low) & (low < 10**6)
    pairs = {(int(a), int(b)) for a, b in zip(low[between], grown[between], strict=True)}
    a, b = max(pairs, key=lambda ab: int(np.sum(regions == ab[0]) + np.sum(regions == ab[1])))
    merged = ref.copy()
    merged[between & (low == a) & (grown == b)] = 0
    c = object_counts(merged, ref, spacing, separator=True, rand_error=True)
    assert c.n_ref == n_cells and c.n_pred == n_cells - 1
    pred_regions = _expand_into_separators(label_objects(merged, separator=True)[0], np.asarray(spacing))
    assert c.rand_error == pytest.approx(_rand_error(regions, pred_regions), rel=1e-9)
    assert c.rand_error > 0.02, c.rand_error
    # The merged region matches at most one of the two cells at IoU > 0.5.
    assert c.ref_matched == n_cells - 1 and c.pred_matched == n_cells - 2 + 1
    # A split: a new membrane plane through a cell.
    split = ref.copy()
    big = np.argmax(np.bincount(regions.ravel())[1:]) + 1
    xx = np.nonzero(regions == big)[2]
    split[(regions == big) & (np.arange(40)[None, None, :] == int(np.median(xx)))] = 1
    s = object_counts(split, ref, spacing, separator=True, rand_error=True)
    assert s.n_pred == n_cells + 1 and s.rand_error > 0.0


def test_separator_voxels_join_the_nearest_region_in_millimetres() -> None:
    regions = np.zeros((3, 1, 5), dtype=np.uint32)
    regions[0, 0, :] = 1  # one slice away (5 mm)
    regions[1, 0, 0] = 2  # two columns away (2 mm)
    out = _expand_into_separators(regions, np.array([5.0, 1.0, 1.0]))
    assert out[1, 0, 2] == 2 and (out > 0).all()
    iso = _expand_into_separators(regions, np.array([1.0, 1.0, 1.0]))
    assert iso[1, 0, 2] == 1  # in voxels the slice above is nearer


def test_rand_error_needs_a_separator_and_thresholds_are_checked() -> None:
    ref = _cells((2, 20, 20), 4, seed=1)
    with pytest.raises(ConfigError, match="separator"):
        class_metrics(ref, ref, metrics=("are",))
    with pytest.raises(ConfigError, match="separator"):
        label_metrics(ref, ref, None, [1], metrics=("are",))
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        class_metrics(ref, ref, metrics=("objects",), object_iou=1.0)
    with pytest.raises(ConfigError, match=r"unknown metric 'blobs'.*objects"):
        class_metrics(ref, ref, metrics=("blobs",))
    with pytest.raises(ConfigError, match="separator"):
        EvaluationConfig(metrics=("dice", "are"))
    with pytest.raises(ConfigError, match="among the declared labels"):
        EvaluationConfig(labels={1: "membrane"}, separators=(2,))
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        EvaluationConfig(object_iou=-0.1)
    assert EvaluationConfig(metrics=("all", "objects")).object_metrics == (
        "obj_recall",
        "obj_precision",
        "obj_f1",
    )


def test_evaluate_folders_with_lesions_and_membranes(tmp_path: Path) -> None:
    """Two classes on an oblique grid: lesions (2) scored as objects, membranes (1) as separators."""
    base = make_oblique_volume(shape=(6, 40, 40))
    ref = _cells(base.shape, 10, seed=5)
    pred = ref.copy()
    pred_lesion, ref_lesion = _lesions()
    ref[:, :24, :24][ref_lesion[:6]] = 2
    pred[:, :24, :24][pred_lesion[:6]] = 2
    pred[3, 30:33, 30:33] = 2  # a false positive lesion
    write_volume(base.with_array(pred), tmp_path / "pred" / "case_a.nii.gz")
    write_volume(base.with_array(ref), tmp_path / "ref" / "case_a.nrrd")
    # case_b has no lesion in either map: the class is absent from both.
    write_volume(base.with_array(np.where(pred == 2, 0, pred)), tmp_path / "pred" / "case_b.nii.gz")
    write_volume(base.with_array(np.where(ref == 2, 0, ref)), tmp_path / "ref" / "case_b.nrrd")
    cfg = EvaluationConfig(
        labels={1: "membrane", 2: "lesion"}, metrics=("dice", "objects", "are"), separators=(1,), workers=1
    )
    result = evaluate(tmp_path / "pred", tmp_path / "ref", cfg)
    a, b = result.cases
    # The lesions as counted by hand in _lesions (first 6 slices: the diagonal pair is cut off).
    assert (a.per_label[2].objects.n_ref, a.per_label[2].objects.n_pred) == (2, 3)  # type: ignore[union-attr]
    assert a.per_label[2]["obj_recall"] == 1.0 and a.per_label[2]["obj_precision"] == pytest.approx(2 / 3)
    assert 0.0 < a.per_label[1]["are"] < 0.5  # the lesions cut through some membranes
    assert math.isnan(a.per_label[2]["are"])  # not a separator class
    assert b.per_label[2].values["obj_recall"] == 1.0 and b.per_label[2].objects.n_ref == 0  # type: ignore[union-attr]
    rows = result.rows()
    assert rows[0]["ref_objects/lesion"] == 2 and rows[0]["pred_objects/lesion"] == 3
    assert rows[1]["ref_objects/lesion"] == 0 and rows[0]["ref_objects/membrane"] > 5
    summary = result.summary()
    assert summary["options"]["separators"] == [1] and summary["options"]["object_iou"] is None
    # objects.csv: the false positive lesion, centred in world (LPS) mm on the oblique grid,
    # as SimpleITK places that continuous index.
    files = write_report(result, tmp_path / "report")
    assert files.objects_csv is not None
    with files.objects_csv.open() as fh:
        objects = list(csv.DictReader(fh))
    fp = [o for o in objects if o["case"] == "case_a" and o["class"] == "lesion" and o["matched"] == "False"]
    assert len(fp) == 1 and fp[0]["side"] == "prediction" and int(fp[0]["voxels"]) == 9
    image = sitk.ReadImage(str(tmp_path / "ref" / "case_a.nrrd"))
    expected = image.TransformContinuousIndexToPhysicalPoint((31.0, 31.0, 3.0))  # (x, y, z) index
    got = [float(fp[0][f"centre_{k}_mm"]) for k in "xyz"]
    assert got == pytest.approx(expected, abs=1e-6)
    assert float(fp[0]["volume_ml"]) == pytest.approx(9 * float(np.prod(base.spacing)) / 1000)
    assert sum(o["class"] == "membrane" for o in objects) > 10
    assert summary["per_class"]["lesion"]["obj_f1"]["n"] == 2
    assert summary["per_class"]["lesion"]["objects"] == {
        "reference": 2,
        "found": 2,
        "predicted": 3,
        "unmatched": 1,
    }


def test_separators_without_declared_labels_and_a_blank_tile(tmp_path: Path) -> None:
    """labels=None: a case without any membrane is one region on each side, not an error."""
    base = make_oblique_volume(shape=(2, 30, 30))
    ref = _cells(base.shape, 6, seed=7)
    shifted = np.roll(ref, 1, axis=2)
    blank = np.zeros_like(ref)
    for name, pred, r in (("cells", shifted, ref), ("blank", blank, blank)):
        write_volume(base.with_array(pred), tmp_path / "pred" / f"{name}.nii.gz")
        write_volume(base.with_array(r), tmp_path / "ref" / f"{name}.nii.gz")
    cfg = EvaluationConfig(metrics=("objects", "are"), separators=(1,), workers=1)
    result = evaluate(tmp_path / "pred", tmp_path / "ref", cfg)
    by_name = {c.name: c for c in result.cases}
    blank_m = by_name["blank"].per_label[1]
    assert blank_m.objects.n_ref == blank_m.objects.n_pred == 1  # type: ignore[union-attr]
    assert blank_m.values == {"obj_recall": 1.0, "obj_precision": 1.0, "obj_f1": 1.0, "are": 0.0}
    assert 0.0 < by_name["cells"].per_label[1]["are"] < 0.5
    # A prediction that is all membrane: flagged as having no predicted object.
    write_volume(base.with_array(np.ones_like(ref)), tmp_path / "pred" / "cells.nii.gz", overwrite=True)
    row = next(r for r in evaluate(tmp_path / "pred", tmp_path / "ref", cfg).rows() if r["case"] == "cells")
    assert "obj_precision/1:pred" in row["flags"] and "are/1:pred" in row["flags"]
    with pytest.raises(ConfigError, match="only changes the object metrics"):
        EvaluationConfig(separators=(1,))


@pytest.mark.skipif(not ISBI_LABELS.is_dir(), reason="ISBI 2012 labels not in ../shared/data")
def test_isbi_label_against_a_shifted_copy_of_itself() -> None:
    from PIL import Image

    image = np.asarray(Image.open(ISBI_LABELS / "0.png"))
    ref = (image == 0).astype(np.uint8)[None]  # 1 = membrane
    assert label_objects(ref, separator=True)[1] > 50
    same = label_metrics(ref, ref, (50.0, 0.004, 0.004), [1], metrics=("objects", "are"), separators=[1])
    assert same.per_label[1].values == {"obj_recall": 1.0, "obj_precision": 1.0, "obj_f1": 1.0, "are": 0.0}
    shifted = np.roll(ref, 6, axis=2)
    moved = label_metrics(shifted, ref, None, [1], metrics=("objects", "are"), separators=[1])
    assert 0.0 < moved.per_label[1]["are"] < 0.5
    assert moved.per_label[1]["obj_recall"] < 1.0
