"""Several methods against one reference: one table, per-case rows with a ``method`` column,
and a paired test of each method against the first.

Every method is scored on every reference case, with the same options and the same label
set. A reference case without a prediction in some method is an error naming that method's
folder and the cases -- checked for every method before any is scored -- unless
``on_missing="flag"`` (``--allow-missing``): then the case is
scored as an empty prediction -- a failure, Dice 0 -- and listed under that method. The
means of all methods are therefore over the same cases, and no method looks better for
having skipped the cases it failed on. Cases that could not be scored at all
(``on_case_error="flag"``) are listed per method and left out of that method's statistics.

The paired comparison is the Wilcoxon signed-rank test (scipy, two-sided, zero differences
dropped) of each method's per-case Dice against the first method's, per class, over the
cases scored in both with a finite Dice. Dice comes from the voxel counts, so the test is
there whichever metrics were asked for. With fewer than 6 non-zero differences the exact
test cannot reach p < 0.05, which the note says.

Several methods and classes make several tests: next to each raw p stands its
Holm-Bonferroni adjusted p (:func:`holm_adjust`) over the family of all the table's tests
with a p (every method but the first, times every class), which keeps the chance of any
false "significant" difference in the table at the chosen level.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.evaluation.evaluate import (
    EvaluationConfig,
    EvaluationResult,
    case_name,
    check_matching,
    evaluate,
)
from medseg.evaluation.metrics import dice_from_counts

logger = logging.getLogger(__name__)

MISSING_RULE = (
    "every method is scored on every reference case; a case without a prediction is an error, "
    "or with --allow-missing scored as an empty prediction (a failure)"
)


def parse_methods(specs: Sequence[str]) -> dict[str, Path]:
    """``PATH`` or ``NAME=PATH`` per method -> {name: path}, in the order given.

    The name defaults to the folder's name (or the file's name without its image suffix);
    an existing path containing ``=`` is taken as a path. Two methods with one name are an
    error asking for ``NAME=PATH``.
    """
    methods: dict[str, Path] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and not Path(spec).exists():
            name, path = name.strip(), Path(rest)
            if not name or not rest:
                raise ConfigError(
                    f"cannot read method '{spec}'; expected PATH or NAME=PATH, e.g. unet=preds/"
                )
        else:
            path = Path(spec)
            name = case_name(path) if path.is_file() else path.resolve().name
        if name in methods:
            raise ConfigError(
                f"two methods named '{name}' ({methods[name]} and {path}); name them with NAME=PATH, "
                f"e.g. {name}_a={methods[name]} {name}_b={path}"
            )
        methods[name] = path
    return methods


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of ``method`` against ``baseline`` on one metric of one class."""

    method: str
    baseline: str
    label: int
    metric: str
    n: int  # cases scored in both with finite values
    median_difference: float  # method - baseline
    statistic: float
    p_value: float
    note: str = ""
    # Holm-Bonferroni adjusted over all the comparison's tests with a p (see holm_adjust).
    p_holm: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {
            "method": self.method,
            "baseline": self.baseline,
            "label": self.label,
            "metric": self.metric,
            "n": self.n,
            "median_difference": clean(self.median_difference),
            "statistic": clean(self.statistic),
            "p_value": clean(self.p_value),
            "p_holm": clean(self.p_holm),
            "note": self.note,
        }


def wilcoxon_paired(
    method: Mapping[str, float], baseline: Mapping[str, float]
) -> tuple[int, float, float, float, str]:
    """(n, median difference, statistic, p, note) of the two-sided signed-rank test over the
    cases present in both with finite values (zero differences dropped, as Wilcoxon did)."""
    from scipy.stats import wilcoxon

    common = [c for c in baseline if c in method and math.isfinite(method[c]) and math.isfinite(baseline[c])]
    diff = np.array([method[c] - baseline[c] for c in common], dtype=float)
    if diff.size == 0:
        return 0, math.nan, math.nan, math.nan, "no case scored in both"
    median = float(np.median(diff))
    nonzero = int(np.count_nonzero(diff))
    if nonzero == 0:
        return int(diff.size), median, math.nan, math.nan, "identical on every case"
    res = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    note = ""
    if nonzero < 6:
        note = f"only {nonzero} non-zero difference(s): p cannot fall below 0.05"
    return int(diff.size), median, float(res.statistic), float(res.pvalue), note


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; NaN stays NaN and is not
    counted in the family.

    Written out rather than imported: scipy has no Holm step-down (only Benjamini-Hochberg's
    ``false_discovery_control``) and statsmodels is no dependency of medseg. Holm (1979):
    sort the m p-values ascending; the i-th (from 0) becomes max over j <= i of
    min(1, (m - j) p_(j)), so the adjusted values keep the raw order.
    """
    finite = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class ComparisonResult:
    """One :class:`EvaluationResult` per method (in the order given), same reference and labels."""

    results: Mapping[str, EvaluationResult]
    reference: str

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.results)

    @property
    def first(self) -> EvaluationResult:
        return next(iter(self.results.values()))

    @property
    def labels(self) -> Mapping[int, str]:
        return self.first.labels

    @property
    def config(self) -> EvaluationConfig:
        return self.first.config

    def rows(self) -> list[dict[str, Any]]:
        """The per-case rows of every method, a ``method`` column first."""
        return [{"method": m, **row} for m, res in self.results.items() for row in res.rows()]

    def paired_tests(self, metric: str = "dice") -> list[PairedTest]:
        """Each method against the first, per class, on ``metric``: Dice always (from the
        voxel counts), another metric only when it was computed (empty otherwise)."""
        if len(self.results) < 2 or (metric != "dice" and metric not in self.config.class_metrics):
            return []
        base_name = self.methods[0]
        tests: list[PairedTest] = []
        for lab in self.labels:

            def per_case(res: EvaluationResult, lab: int = lab) -> dict[str, float]:
                if metric == "dice":  # the same value as the 'dice' metric, asked for or not
                    return {c.name: dice_from_counts(c.per_label[lab].counts) for c in res.scored_cases}
                return {c.name: c.per_label[lab].values[metric] for c in res.scored_cases}

            base = per_case(self.first)
            for name in self.methods[1:]:
                n, median, stat, p, note = wilcoxon_paired(per_case(self.results[name]), base)
                tests.append(PairedTest(name, base_name, lab, metric, n, median, stat, p, note))
        adjusted = holm_adjust([t.p_value for t in tests])
        return [replace(t, p_holm=p) for t, p in zip(tests, adjusted, strict=True)]

    def summary(self) -> dict[str, Any]:
        """Per method: the single-method summary's statistics and lists; then the paired tests."""
        per_method: dict[str, Any] = {}
        for name, res in self.results.items():
            s = res.summary()
            per_method[name] = {
                "prediction": s["prediction"],
                "n_scored": s["n_scored"],
                "per_class": s["per_class"],
                "case_level": s["case_level"],
                "missing_predictions": s["missing_predictions"],
                "failed_cases": s["failed_cases"],
                "resampled_cases": s["resampled_cases"],
                "predictions_without_reference": s["predictions_without_reference"],
            }
        first = self.first.summary()
        return {
            "reference": self.reference,
            "methods": list(self.methods),
            "n_cases": first["n_cases"],
            "labels": first["labels"],
            "metrics": first["metrics"],
            "options": first["options"],
            "missing_cases_rule": MISSING_RULE,
            "statistics_note": first["statistics_note"],
            "per_method": per_method,
            "paired_tests": [t.as_dict() for t in self.paired_tests()],
            "paired_test_note": "Wilcoxon signed-rank, two-sided, each method minus the first, per case; "
            "zero differences dropped; cases scored in both with finite values; p_holm: p adjusted by "
            "Holm-Bonferroni over all the tests listed here that have a p (methods x classes)",
        }


def compare(
    methods: Mapping[str, str | Path],
    reference: str | Path,
    config: EvaluationConfig | None = None,
    *,
    progress: bool = False,
) -> ComparisonResult:
    """Score every method's predictions against ``reference`` with the same options.

    ``methods`` maps a method name to its prediction folder (or file). Every method's files
    are matched against the references, and the missing-case rule applied, before any is
    scored, so a bad last method fails at once rather than after the others' scoring.
    Labels found in the references (``config.labels`` None) are found once, by the first
    method, and reused for the others, so every table has the same classes.
    """
    if not methods:
        raise ConfigError("compare needs at least one method")
    cfg = config or EvaluationConfig()
    for name, path in methods.items():
        try:
            check_matching(path, reference, cfg)
        except InputError as exc:  # name the method: two methods may share a folder name
            raise InputError(
                exc.path, f"method '{name}': {exc.problem}", expected=exc.expected, found=exc.found
            ) from exc
    results: dict[str, EvaluationResult] = {}
    found: Mapping[int, str] | None = None
    for name, path in methods.items():
        logger.info("evaluating method %s (%s)", name, path)
        res = evaluate(path, reference, cfg, progress=progress, found_labels=found)
        if cfg.labels is None and found is None:
            found = res.labels
        results[name] = res
    return ComparisonResult(results, str(reference))


__all__ = ["ComparisonResult", "PairedTest", "compare", "holm_adjust", "parse_methods", "wilcoxon_paired"]
