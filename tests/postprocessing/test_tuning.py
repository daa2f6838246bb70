from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.postprocessing.labels import ClassRule, apply_rules
from medseg.postprocessing.tuning import choose_rules


def _case(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1: one blob, predicted with a stray island (the largest component helps).
    Class 2: really two pieces, both predicted (keeping only the largest would cut one)."""
    ref = np.zeros((6, 20, 20), np.uint8)
    ref[1:5, 2:8, 2 + shift : 8 + shift] = 1
    ref[1:5, 12:15, 12:15] = 2
    ref[1:5, 16:19, 16:19] = 2
    pred = ref.copy()
    pred[1:5, 2:8, 7 + shift] = 0  # one column short
    pred[0, 17:19, 2:4] = 1  # the stray island of class 1
    return pred, ref


def test_largest_component_is_kept_where_it_helps_and_not_where_the_structure_is_in_pieces() -> None:
    cases = [_case(0), _case(1), _case(2)]
    choice = choose_rules([lambda c=c: c for c in cases], [1, 2])
    assert choice.n_cases == 3
    # Foreground: the two pieces of class 2 are separate components, so keeping the largest
    # foreground component removes class 2 altogether: not adopted.
    fg, cls1, cls2 = choice.steps
    assert fg.rule == "keep_largest_foreground" and not fg.adopted
    assert fg.dice_after[2] == 0.0
    # Class 1: Dice per case 2*120/(120-20+... ) computed from the counts below, then improved.
    p, r = cases[0]
    tp = int(((p == 1) & (r == 1)).sum())
    before = 2 * tp / (int((p == 1).sum()) + int((r == 1).sum()))
    assert cls1.rule == "keep_largest:1" and cls1.adopted
    assert cls1.dice_before[1] == pytest.approx(before)
    assert cls1.dice_after[1] == pytest.approx(2 * tp / (tp + int((r == 1).sum())))
    assert cls2.rule == "keep_largest:2" and not cls2.adopted
    assert cls2.dice_before[2] == pytest.approx(1.0) and cls2.dice_after[2] < 1.0
    assert choice.rules.classes == {1: ClassRule(keep_largest=True)}
    assert not choice.rules.keep_largest_foreground
    # what is chosen is what predict applies
    cleaned = apply_rules(p, choice.rules)
    assert not cleaned[0].any() and (cleaned == 2).sum() == (r == 2).sum()


def test_a_rule_that_changes_nothing_is_not_adopted_and_empty_classes_are_skipped() -> None:
    ref = np.zeros((4, 8, 8), np.uint8)
    ref[1:3, 2:6, 2:6] = 1
    choice = choose_rules([lambda: (ref.copy(), ref)], [0, 1, 2])
    assert [s.rule for s in choice.steps] == ["keep_largest_foreground", "keep_largest:1"]  # 2 is empty
    assert not any(s.adopted for s in choice.steps)
    assert math.isnan(choice.steps[0].dice_before[2])
    assert not choice.rules.classes and not choice.rules.keep_largest_foreground


def test_bad_requests() -> None:
    with pytest.raises(ConfigError, match="without cases"):
        choose_rules([], [1])
    with pytest.raises(ConfigError, match="without foreground labels"):
        choose_rules([lambda: (np.zeros(3), np.zeros(3))], [0])
    with pytest.raises(ConfigError, match=r"shape \(3,\) is scored against a reference of \(4,\)"):
        choose_rules([lambda: (np.zeros(3, np.uint8), np.zeros(4, np.uint8))], [1])


def test_cases_are_read_once_while_they_fit_the_cache() -> None:
    calls = {"n": 0}
    pair = _case(0)

    def load() -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        return pair

    first = choose_rules([load], [1, 2])
    assert calls["n"] == 1  # three candidates and the baseline, one read
    calls["n"] = 0
    second = choose_rules([load], [1, 2], cache_bytes=0)
    assert calls["n"] == 4  # baseline + foreground + one per class
    assert first.rules == second.rules
