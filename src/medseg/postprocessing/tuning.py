"""Choose postprocessing rules on out-of-fold predictions (as nnU-Net does after cross-validation).

Whether "keep the largest connected component" helps depends on the anatomy and on the model:
it removes stray islands (lower HD95, a little higher Dice) but also cuts a structure that is
really in pieces. nnU-Net decides it on the cross-validation predictions, never on a test set;
this module does the same, greedily, with medseg's own rules (:mod:`medseg.postprocessing.labels`),
so what is chosen is exactly what ``predict`` applies:

1. ``keep_largest_foreground`` (the union of all classes) is adopted when it raises the mean
   over classes of the per-class mean Dice;
2. then, for each class in turn, ``keep_largest`` for that class is adopted when it raises that
   class's mean Dice without lowering the mean over classes.

A rule must improve strictly (by more than ``min_gain``): a rule that changes nothing is not
adopted. Cases where prediction and reference of a class are both empty do not count for it.
No library offers this choice on medseg's rules (nnU-Net's works on its own folder layout and
rules), hence written here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from numpy.typing import NDArray

from medseg.errors import ConfigError
from medseg.postprocessing.labels import ClassRule, PostprocessingRules, apply_rules

log = logging.getLogger(__name__)

# One case: a callable returning (prediction, reference) label arrays on one grid (read lazily:
# a cohort of CT label maps does not fit in memory at once).
CaseLoader = Callable[[], tuple[NDArray[Any], NDArray[Any]]]


@dataclass(frozen=True)
class RuleStep:
    """One candidate rule and what it did to the out-of-fold Dice."""

    rule: str  # "keep_largest_foreground" or "keep_largest:<label>"
    dice_before: dict[int, float]
    dice_after: dict[int, float]
    adopted: bool

    def to_json(self, names: dict[int, str]) -> dict[str, Any]:
        def clean(d: dict[int, float]) -> dict[str, float | None]:
            return {names.get(k, str(k)): (None if math.isnan(v) else round(v, 6)) for k, v in d.items()}

        return {
            "rule": self.rule,
            "adopted": self.adopted,
            "mean_dice_before": clean(self.dice_before),
            "mean_dice_after": clean(self.dice_after),
        }


@dataclass(frozen=True)
class RuleChoice:
    rules: PostprocessingRules
    steps: tuple[RuleStep, ...]
    n_cases: int


def _class_dice(pred: NDArray[Any], ref: NDArray[Any], label: int) -> float:
    p, r = pred == label, ref == label
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return math.nan
    return 2.0 * int((p & r).sum()) / total


def _mean_dice(
    cases: Sequence[CaseLoader], labels: Sequence[int], rules: PostprocessingRules
) -> dict[int, float]:
    sums = dict.fromkeys(labels, 0.0)
    counts = dict.fromkeys(labels, 0)
    for load in cases:
        pred, ref = load()
        if pred.shape != ref.shape:
            raise ConfigError(
                f"a prediction of shape {pred.shape} is scored against a reference of {ref.shape}"
            )
        out = apply_rules(pred, rules) if (rules.classes or rules.keep_largest_foreground) else pred
        for lab in labels:
            d = _class_dice(out, ref, lab)
            if not math.isnan(d):
                sums[lab] += d
                counts[lab] += 1
    return {lab: (sums[lab] / counts[lab] if counts[lab] else math.nan) for lab in labels}


def _overall(d: dict[int, float]) -> float:
    finite = [v for v in d.values() if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


# Label maps kept in memory between candidates up to this many bytes (the rest read again).
CACHE_BYTES = 2 * 1024**3


def _cached(cases: Sequence[CaseLoader], limit: int) -> list[CaseLoader]:
    """Loaders that keep what they read while the total stays under ``limit`` bytes (each
    candidate rule scores every case: 2 + classes passes over the data)."""
    used = 0
    out: list[CaseLoader] = []
    for load in cases:
        kept: list[tuple[NDArray[Any], NDArray[Any]]] = []

        def cached(load: CaseLoader = load, kept: list[tuple[NDArray[Any], NDArray[Any]]] = kept) -> Any:
            nonlocal used
            if kept:
                return kept[0]
            pair = load()
            size = int(pair[0].nbytes) + int(pair[1].nbytes)
            if used + size <= limit:
                used += size
                kept.append(pair)
            return pair

        out.append(cached)
    return out


def choose_rules(
    cases: Sequence[CaseLoader],
    labels: Sequence[int],
    *,
    connectivity: int = 26,
    min_gain: float = 0.0,
    cache_bytes: int = CACHE_BYTES,
) -> RuleChoice:
    """Greedy choice of largest-component rules on out-of-fold predictions (module docstring)."""
    labels = [int(v) for v in labels if int(v) != 0]
    if not cases:
        raise ConfigError("postprocessing cannot be chosen without cases")
    cases = _cached(cases, cache_bytes)
    if not labels:
        raise ConfigError("postprocessing cannot be chosen without foreground labels")
    if min_gain < 0:
        raise ConfigError(f"min_gain must be >= 0, found {min_gain}")
    current = PostprocessingRules(connectivity=connectivity)  # type: ignore[arg-type]
    baseline = _mean_dice(cases, labels, current)
    steps: list[RuleStep] = []

    candidate = replace(current, keep_largest_foreground=True)
    after = _mean_dice(cases, labels, candidate)
    adopted = _overall(after) > _overall(baseline) + min_gain
    steps.append(RuleStep("keep_largest_foreground", baseline, after, adopted))
    if adopted:
        current, baseline = candidate, after
    for lab in labels:
        if math.isnan(baseline[lab]):
            continue
        classes = dict(current.classes)
        classes[lab] = ClassRule(keep_largest=True)
        candidate = replace(current, classes=classes)
        after = _mean_dice(cases, labels, candidate)
        adopted = after[lab] > baseline[lab] + min_gain and not _overall(after) < _overall(baseline)
        steps.append(RuleStep(f"keep_largest:{lab}", baseline, after, adopted))
        if adopted:
            current, baseline = candidate, after
    for step in steps:
        log.info(
            "postprocessing %s: mean Dice %.4f -> %.4f, %s",
            step.rule,
            _overall(step.dice_before),
            _overall(step.dice_after),
            "adopted" if step.adopted else "not adopted",
        )
    return RuleChoice(current, tuple(steps), len(cases))
