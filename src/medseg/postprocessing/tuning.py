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

For a region-based model (:func:`choose_region_rules`) the same steps run on the region masks:
the foreground is the union of the regions, each region's candidate is the largest component
of its mask (the rule of the value it is painted with), scored by each region's Dice.

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

import numpy as np
from numpy.typing import NDArray

from medseg.errors import ConfigError
from medseg.postprocessing.labels import ClassRule, PostprocessingRules, apply_rules, apply_rules_to_masks

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
    return _mask_dice(pred == label, ref == label)


def _mask_dice(p: NDArray[Any], r: NDArray[Any]) -> float:
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return math.nan
    return 2.0 * int((p & r).sum()) / total


@dataclass(frozen=True)
class _Scoring:
    """How a candidate is scored: ``apply`` puts rules on a prediction, ``dice`` scores key k
    (a label value, or a region's index) of the result against the reference."""

    apply: Callable[[NDArray[Any], PostprocessingRules], NDArray[Any]]
    dice: Callable[[NDArray[Any], NDArray[Any], int], float]


_LABELS = _Scoring(
    apply=lambda pred, rules: apply_rules(pred, rules),
    dice=_class_dice,
)


def _mean_dice(
    cases: Sequence[CaseLoader], keys: Sequence[int], rules: PostprocessingRules, scoring: _Scoring = _LABELS
) -> dict[int, float]:
    sums = dict.fromkeys(keys, 0.0)
    counts = dict.fromkeys(keys, 0)
    for load in cases:
        pred, ref = load()
        if pred.shape != ref.shape:
            raise ConfigError(
                f"a prediction of shape {pred.shape} is scored against a reference of {ref.shape}"
            )
        out = scoring.apply(pred, rules) if (rules.classes or rules.keep_largest_foreground) else pred
        for key in keys:
            d = scoring.dice(out, ref, key)
            if not math.isnan(d):
                sums[key] += d
                counts[key] += 1
    return {key: (sums[key] / counts[key] if counts[key] else math.nan) for key in keys}


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
    if not labels:
        raise ConfigError("postprocessing cannot be chosen without foreground labels")
    return _greedy(cases, {v: v for v in labels}, _LABELS, connectivity, min_gain, cache_bytes)


def choose_region_rules(
    cases: Sequence[CaseLoader],
    class_order: Sequence[int],
    *,
    connectivity: int = 26,
    min_gain: float = 0.0,
    cache_bytes: int = CACHE_BYTES,
) -> RuleChoice:
    """The same greedy choice for a region-based model: each case loads boolean masks
    ``(R, *shape)`` (prediction, reference), scored by the Dice of each region (its index r).

    Region r's candidate is ``keep_largest`` for the label value it is painted with
    (``class_order[r]``), which is how predict applies rules to a region model
    (:func:`medseg.postprocessing.labels.apply_rules_to_masks`); the foreground is the union of
    the regions. ``RuleStep`` Dice keys are region indices.
    """
    order = [int(v) for v in class_order]
    if not order:
        raise ConfigError("postprocessing cannot be chosen without regions")
    if len(set(order)) != len(order):
        raise ConfigError(
            f"regions painted with one value would share its rule; found painting values {order} "
            "(regions_class_order in dataset.json and the plan: one value per region)"
        )
    scoring = _Scoring(
        apply=lambda masks, rules: apply_rules_to_masks(masks, order, rules),
        dice=lambda out, ref, r: _mask_dice(np.asarray(out[r], bool), np.asarray(ref[r], bool)),
    )
    return _greedy(cases, dict(enumerate(order)), scoring, connectivity, min_gain, cache_bytes)


def _greedy(
    cases: Sequence[CaseLoader],
    rule_values: dict[int, int],
    scoring: _Scoring,
    connectivity: int,
    min_gain: float,
    cache_bytes: int,
) -> RuleChoice:
    """``rule_values``: scored key -> the label value whose rule acts on it."""
    if not cases:
        raise ConfigError("postprocessing cannot be chosen without cases")
    cases = _cached(cases, cache_bytes)
    if min_gain < 0:
        raise ConfigError(f"min_gain must be >= 0, found {min_gain}")
    keys = list(rule_values)
    current = PostprocessingRules(connectivity=connectivity)  # type: ignore[arg-type]
    baseline = _mean_dice(cases, keys, current, scoring)
    steps: list[RuleStep] = []

    candidate = replace(current, keep_largest_foreground=True)
    after = _mean_dice(cases, keys, candidate, scoring)
    adopted = _overall(after) > _overall(baseline) + min_gain
    steps.append(RuleStep("keep_largest_foreground", baseline, after, adopted))
    if adopted:
        current, baseline = candidate, after
    for key in keys:
        if math.isnan(baseline[key]):
            continue
        classes = dict(current.classes)
        classes[rule_values[key]] = ClassRule(keep_largest=True)
        candidate = replace(current, classes=classes)
        after = _mean_dice(cases, keys, candidate, scoring)
        adopted = after[key] > baseline[key] + min_gain and not _overall(after) < _overall(baseline)
        steps.append(RuleStep(f"keep_largest:{rule_values[key]}", baseline, after, adopted))
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
