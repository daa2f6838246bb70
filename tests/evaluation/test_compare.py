"""compare(): several methods against one reference, the paired test and the combined report."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from medseg.errors import ConfigError, InputError
from medseg.evaluation import EvaluationConfig, compare, evaluate, parse_methods, write_comparison_report
from medseg.evaluation.compare import wilcoxon_paired
from medseg.export.codes import segment_color
from medseg.export.overlay import COMPARISON_MARGIN_IN, COMPARISON_PANEL_IN
from medseg.io import read_volume, write_volume
from tests.conftest import make_oblique_volume

LABELS = {1: "outer", 3: "inner"}


@pytest.fixture
def methods(tmp_path: Path) -> tuple[dict[str, Path], Path, Path]:
    """Reference folder of 7 cases; 'shift' rolls by case-dependent amounts, 'close' by one
    voxel, 'gaps' misses case_006; images beside them, nnU-Net style (NAME_0000)."""
    base = make_oblique_volume()
    z, y, x = np.meshgrid(*[np.arange(s) for s in base.shape], indexing="ij")
    ref = np.zeros(base.shape, dtype=np.uint8)
    ref[(z - 6) ** 2 / 16 + (y - 10) ** 2 / 36 + (x - 8) ** 2 / 25 < 1] = 1
    ref[(z - 6) ** 2 / 4 + (y - 10) ** 2 / 9 + (x - 6) ** 2 / 4 < 1] = 3
    folders = {m: tmp_path / m for m in ("shift", "close", "gaps")}
    for i in range(7):
        name = f"case_{i:03d}"
        write_volume(base.with_array(ref), tmp_path / "ref" / f"{name}.nii.gz")
        write_volume(base, tmp_path / "img" / f"{name}_0000.nii.gz")
        write_volume(base.with_array(np.roll(ref, 1 + i % 4, axis=2)), folders["shift"] / f"{name}.nii.gz")
        write_volume(base.with_array(np.roll(ref, 1, axis=1)), folders["close"] / f"{name}.nii.gz")
        if i < 6:
            write_volume(base.with_array(np.roll(ref, 1, axis=1)), folders["gaps"] / f"{name}.nii.gz")
    return folders, tmp_path / "ref", tmp_path / "img"


def _serial(**kw: object) -> EvaluationConfig:
    return EvaluationConfig(workers=1, **kw)  # type: ignore[arg-type]


def test_parse_methods_names_and_errors(tmp_path: Path) -> None:
    for d in ("a/pred", "b/pred", "otsu"):
        (tmp_path / d).mkdir(parents=True)
    f = tmp_path / "ws.nii.gz"
    f.write_bytes(b"")
    got = parse_methods([str(tmp_path / "otsu"), f"unet={tmp_path / 'a/pred'}", str(f)])
    assert got == {"otsu": tmp_path / "otsu", "unet": tmp_path / "a/pred", "ws": f}
    assert list(got) == ["otsu", "unet", "ws"]  # order kept: the first is the baseline
    with pytest.raises(ConfigError, match=r"two methods named 'pred'.*NAME=PATH"):
        parse_methods([str(tmp_path / "a/pred"), str(tmp_path / "b/pred")])
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_methods(["=somewhere"])
    odd = tmp_path / "x=y"  # an existing path with '=' stays a path
    odd.mkdir()
    assert parse_methods([str(odd)]) == {"x=y": odd}


def test_every_method_is_scored_like_a_single_evaluation(methods) -> None:  # type: ignore[no-untyped-def]
    folders, ref, _ = methods
    cfg = _serial(metrics=("dice", "hd95"), label_names=LABELS)
    comp = compare({"shift": folders["shift"], "close": folders["close"]}, ref, cfg)
    assert comp.methods == ("shift", "close") and comp.labels == LABELS
    summary = comp.summary()
    for name in comp.methods:
        alone = evaluate(folders[name], ref, cfg).summary()
        assert summary["per_method"][name]["per_class"] == alone["per_class"]
    rows = comp.rows()
    assert [r["method"] for r in rows] == ["shift"] * 7 + ["close"] * 7
    assert list(rows[0])[:2] == ["method", "case"]
    # 'close' always beats 'shift' on the outer class: paired test as scipy computes it.
    (test,) = [t for t in comp.paired_tests() if t.label == 1]
    a = [r["dice/outer"] for r in rows if r["method"] == "shift"]
    b = [r["dice/outer"] for r in rows if r["method"] == "close"]
    expected = wilcoxon(np.subtract(b, a))
    assert test.method == "close" and test.baseline == "shift" and test.n == 7
    assert test.p_value == pytest.approx(expected.pvalue) and test.p_value < 0.05
    assert test.median_difference == pytest.approx(np.median(np.subtract(b, a))) and test.note == ""


def test_missing_cases_are_an_error_or_a_failure(methods) -> None:  # type: ignore[no-untyped-def]
    folders, ref, _ = methods
    with pytest.raises(InputError, match=r"gaps.*1 reference case\(s\) have no prediction.*case_006"):
        compare(folders, ref, _serial(metrics=("dice",)))
    comp = compare(folders, ref, _serial(metrics=("dice",), on_missing="flag"))
    summary = comp.summary()
    assert summary["per_method"]["gaps"]["missing_predictions"] == ["case_006"]
    assert summary["per_method"]["gaps"]["n_scored"] == 7  # counted, as a failure
    row = next(r for r in comp.rows() if r["method"] == "gaps" and r["case"] == "case_006")
    assert row["status"] == "missing_prediction" and row["dice/1"] == 0.0
    assert "empty prediction" in summary["missing_cases_rule"]
    assert "on_missing" not in summary["missing_cases_rule"]  # CLI wording: --allow-missing


@pytest.mark.parametrize("bad", ["missing_case", "file", "no_path"])
def test_every_method_is_checked_before_any_is_scored(
    methods, bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    folders, ref, _ = methods
    scored: list[object] = []
    module = sys.modules["medseg.evaluation.compare"]  # the package exports a function of that name
    monkeypatch.setattr(module, "evaluate", lambda *a, **k: scored.append(a))
    second = {
        "missing_case": folders["gaps"],
        "file": folders["close"] / "case_000.nii.gz",
        "no_path": tmp_path / "nowhere",
    }[bad]
    message = {
        "missing_case": r"method 'b'.*1 reference case\(s\) have no prediction.*case_006",
        "file": "method 'b': prediction and reference must both be folders or both be files",
        "no_path": "method 'b': prediction path does not exist",
    }[bad]
    with pytest.raises(InputError, match=message):
        compare({"a": folders["shift"], "b": second}, ref, _serial(metrics=("dice",)))
    assert scored == []  # method 'a' was not scored before 'b' failed


def test_an_extra_label_in_a_later_method_is_a_found_label_error(methods, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Labels found by the first method are not 'declared' for the others: the same wording
    as a single evaluation, naming the references."""
    folders, ref, _ = methods
    extra = tmp_path / "extra"
    for path in sorted(folders["close"].iterdir()):
        vol = read_volume(path)
        arr = vol.array.copy()
        arr[0, 0, 0] = 7
        write_volume(vol.with_array(arr), extra / path.name)
    cfg = _serial(metrics=("dice",), on_case_error="flag")
    comp = compare({"close": folders["close"], "extra": extra}, ref, cfg)
    alone = evaluate(extra, ref, cfg)
    failed = comp.summary()["per_method"]["extra"]["failed_cases"]
    assert failed == alone.summary()["failed_cases"] and len(failed) == 7
    message = next(iter(failed.values()))
    assert "label values [7] found in no reference" in message and "declared" not in message
    assert comp.labels == {1: "1", 3: "3"}
    with pytest.raises(InputError, match=r"\[7\] found in no reference"):
        compare({"close": folders["close"], "extra": extra}, ref, _serial(metrics=("dice",)))


def test_paired_test_without_the_dice_metric(methods) -> None:  # type: ignore[no-untyped-def]
    """--metrics iou: the Wilcoxon test still runs, on Dice from the voxel counts."""
    folders, ref, _ = methods
    pair = {"shift": folders["shift"], "close": folders["close"]}
    with_dice = compare(pair, ref, _serial(metrics=("dice", "iou"))).paired_tests()
    without = compare(pair, ref, _serial(metrics=("iou",)))
    assert "dice" not in without.config.class_metrics
    assert [t.as_dict() for t in without.paired_tests()] == [t.as_dict() for t in with_dice]
    assert len(with_dice) == 2 and with_dice[0].p_value < 0.05
    assert without.summary()["paired_tests"] == [t.as_dict() for t in with_dice]


def test_wilcoxon_edge_cases() -> None:
    assert wilcoxon_paired({}, {"a": 1.0})[0] == 0
    n, median, _, p, note = wilcoxon_paired({"a": 0.5, "b": 0.7}, {"a": 0.5, "b": 0.7})
    assert (n, median) == (2, 0.0) and math.isnan(p) and "identical" in note
    n, _, _, p, note = wilcoxon_paired({"a": 0.9, "b": 0.8, "c": math.nan}, {"a": 0.5, "b": 0.6, "c": 0.1})
    assert n == 2 and p > 0.05 and "cannot fall below 0.05" in note


def test_comparison_report(methods, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folders, ref, img = methods
    comp = compare(folders, ref, _serial(metrics=("dice", "miou"), on_missing="flag"))
    files = write_comparison_report(comp, tmp_path / "report", image=img)
    rows = list(csv.DictReader(files.cases_csv.open()))
    assert len(rows) == 21 and {r["method"] for r in rows} == set(folders)
    summary = json.loads(files.summary_json.read_text())
    assert summary["methods"] == ["shift", "close", "gaps"]
    tests = [(t["label"], t["method"]) for t in summary["paired_tests"]]
    assert tests == [(1, "close"), (1, "gaps"), (3, "close"), (3, "gaps")]
    # 7 cases > 6: the 3 worst and the 3 best by Dice averaged over the methods.
    assert len(files.overlays) == 6 and "case_006" in {p.stem for p in files.overlays}
    size = Image.open(files.overlays[0]).size
    assert size == (
        round(3 * COMPARISON_PANEL_IN * 100),
        round((COMPARISON_PANEL_IN + COMPARISON_MARGIN_IN) * 100),
    )
    pixels = np.asarray(Image.open(files.overlays[0]).convert("RGB")).astype(int)
    for value in LABELS:  # each class outlined in its label colour
        assert (np.abs(pixels - np.array(segment_color(value))).max(axis=-1) <= 40).sum() > 100
    page = files.report_html.read_text()
    assert "Paired comparison with shift" in page and "gaps: case_006: no prediction" in page
    assert page.count("data:image/png;base64,") == 2 + 6  # box plots, overlays
    assert "over the image" in page and "worst and the best" in page


def test_holm_adjusted_p_values() -> None:
    """Holm (1979) step-down by hand: sorted 0.005, 0.01, 0.03, 0.04 (m = 4) -> 4 x 0.005,
    3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 0.04); NaN is outside the family; capped at 1."""
    from medseg.evaluation.compare import holm_adjust

    got = holm_adjust([0.01, 0.04, 0.03, math.nan, 0.005])
    assert got[:3] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    assert math.isnan(got[3]) and got[4] == pytest.approx(0.02)
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0] and holm_adjust([]) == []


def test_paired_tests_carry_holm_adjusted_p_beside_the_raw_p(methods) -> None:  # type: ignore[no-untyped-def]
    from medseg.evaluation.compare import holm_adjust

    folders, ref, _ = methods
    comp = compare(folders, ref, _serial(metrics=("dice",), on_missing="flag", label_names=LABELS))
    tests = comp.paired_tests()
    assert [(t.method, t.label) for t in tests] == [("close", 1), ("gaps", 1), ("close", 3), ("gaps", 3)]
    raw = [t.p_value for t in tests]
    assert sum(math.isfinite(p) for p in raw) >= 2
    for t, expected in zip(tests, holm_adjust(raw), strict=True):
        assert t.p_holm == pytest.approx(expected, nan_ok=True)
        assert not math.isfinite(t.p_value) or t.p_value <= t.p_holm <= 1
    summary = comp.summary()
    assert [t["p_holm"] for t in summary["paired_tests"]] == [
        None if math.isnan(p) else pytest.approx(p) for p in holm_adjust(raw)
    ]
    assert "Holm-Bonferroni" in summary["paired_test_note"]


def test_the_box_plot_of_one_case_shows_each_method_in_its_colour(tmp_path: Path) -> None:
    """One image (the lecturer's): each box is a line; its median is drawn in the method's
    legend colour, not matplotlib's orange for every method."""
    import io

    from medseg.evaluation.report import comparison_boxplot_png

    base = make_oblique_volume()
    ref = np.zeros(base.shape, dtype=np.uint8)
    ref[3:9, 5:15, 4:12] = 1
    write_volume(base.with_array(ref), tmp_path / "ref" / "case.nii.gz")
    paths = {}
    for i, name in enumerate(("otsu", "watershed", "unet")):
        paths[name] = write_volume(
            base.with_array(np.roll(ref, i + 1, axis=2)), tmp_path / name / "case.nii.gz"
        )
    comparison = compare(paths, tmp_path / "ref" / "case.nii.gz", _serial(metrics=("dice",)))
    pixels = np.asarray(Image.open(io.BytesIO(comparison_boxplot_png(comparison, "dice"))).convert("RGB"))
    first_colour = np.array([0x1F, 0x77, 0xB4])  # matplotlib's C0, the first method's in the legend
    assert (np.abs(pixels.astype(int) - first_colour).max(axis=-1) <= 10).sum() > 20
