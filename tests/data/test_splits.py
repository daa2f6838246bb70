"""Patient-grouped K-fold splits: no patient in two folds, balanced, deterministic, saved and reloaded."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medseg.data.dataset import create_dataset
from medseg.data.splits import SPLITS_JSON, compute_splits, load_splits, make_splits
from medseg.errors import ConfigError, InputError, OutputExistsError
from tests.conftest import make_oblique_volume

# 10 patients with 1..4 cases each (23 cases), like several days per patient in UW-Madison
GROUPS = {f"p{p}_d{d}": f"p{p}" for p in range(10) for d in range(1 + p % 4)}


def _assert_grouped(splits, groups) -> None:  # type: ignore[no-untyped-def]
    held_out = [set(f.val) for f in splits.folds] + [set(splits.test)]
    seen: set[str] = set()
    for cases in held_out:
        assert not cases & seen
        seen |= cases
    assert seen == set(groups)
    for i, f in enumerate(splits.folds):
        train_groups = {groups[c] for c in f.train}
        val_groups = {groups[c] for c in f.val}
        assert not train_groups & val_groups, f"fold {i} has a patient in train and val"
        assert not {groups[c] for c in splits.test} & (train_groups | val_groups)
        assert set(f.train) | set(f.val) | set(splits.test) == set(groups)


def test_folds_group_patients_and_are_balanced() -> None:
    splits = compute_splits(GROUPS, k=3, seed=0)
    _assert_grouped(splits, GROUPS)
    sizes = [len(f.val) for f in splits.folds]
    assert sum(sizes) == 23
    assert max(sizes) - min(sizes) <= max(Counter(GROUPS.values()).values())  # GroupKFold's bound


def test_greedy_rule_matches_hand_computation() -> None:
    # groups of 4, 3, 2, 1 cases into 2 folds: 4 -> A, 3 -> B, 2 -> B (3 < 4), 1 -> A (4 < 5)
    groups = {f"{g}{i}": g for g, n in [("a", 4), ("b", 3), ("c", 2), ("d", 1)] for i in range(n)}
    splits = compute_splits(groups, k=2, seed=0)
    folds = sorted((sorted({groups[c] for c in f.val}) for f in splits.folds), key=len)
    assert sorted(folds) == [["a", "d"], ["b", "c"]]
    assert sorted(len(f.val) for f in splits.folds) == [5, 5]


def test_deterministic_from_seed() -> None:
    a = compute_splits(GROUPS, k=5, seed=7, test_fraction=0.2)
    b = compute_splits(dict(reversed(list(GROUPS.items()))), k=5, seed=7, test_fraction=0.2)
    assert a == b
    singles = {f"c{i}": f"c{i}" for i in range(30)}
    assert compute_splits(singles, k=5, seed=1) != compute_splits(singles, k=5, seed=2)


def test_test_fraction_holds_out_whole_patients() -> None:
    splits = compute_splits(GROUPS, k=4, seed=3, test_fraction=0.25)
    _assert_grouped(splits, GROUPS)
    assert len(splits.test) >= round(0.25 * 23)
    assert len(splits.test) < round(0.25 * 23) + 4  # overshoots by less than one patient


@pytest.mark.parametrize(
    ("k", "fraction", "match"),
    [(11, 0.0, "cannot make 11 folds from 10 patients"), (10, 0.2, "held out"), (1, 0.0, "k >= 2"),
     (5, 1.0, "test fraction")],
)  # fmt: skip
def test_impossible_splits(k: int, fraction: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        compute_splits(GROUPS, k=k, seed=0, test_fraction=fraction)


def _dataset(root: Path, patients: dict[str, str]) -> Path:
    src = root / "src"
    src.mkdir(exist_ok=True)
    vol = make_oblique_volume(shape=(2, 3, 4))
    with create_dataset(root / "ds", source=src, channel_names=["MR"], labels={"background": 0, "a": 1}) as w:
        for case, patient in patients.items():
            w.add_case(case, [vol], vol.with_array(np.zeros(vol.shape, np.uint8)), patient_id=patient)
    return root / "ds"


def test_make_and_load_splits(tmp_path: Path) -> None:
    root = _dataset(tmp_path, GROUPS)
    splits = make_splits(root, k=5, seed=0)
    assert (root / SPLITS_JSON).is_file()
    assert load_splits(root) == splits
    _assert_grouped(splits, GROUPS)
    with pytest.raises(OutputExistsError):
        make_splits(root, k=5, seed=1)
    assert make_splits(root, k=4, seed=1, overwrite=True).k == 4


def test_load_splits_detects_a_changed_dataset(tmp_path: Path) -> None:
    root = _dataset(tmp_path, GROUPS)
    make_splits(root, k=5)
    data = json.loads((root / SPLITS_JSON).read_text())
    data["groups"]["ghost"] = "p99"
    data["folds"][0]["val"].append("ghost")
    for f in data["folds"][1:]:
        f["train"].append("ghost")
    (root / SPLITS_JSON).write_text(json.dumps(data))
    with pytest.raises(InputError, match="does not match the dataset"):
        load_splits(root)
    assert load_splits(root, check_dataset=False).k == 5


def test_load_splits_rejects_bad_files(tmp_path: Path) -> None:
    root = _dataset(tmp_path, GROUPS)
    with pytest.raises(InputError, match="not found"):
        load_splits(root)
    good = compute_splits(GROUPS, k=3).to_json()
    cases = [
        ({**good, "extra": 1}, "unknown keys"),
        ({**good, "version": 99}, "unsupported version"),
        ({**good, "k": 4}, "different number of folds"),
        ({k: v for k, v in good.items() if k != "k"}, "is not a valid splits file.*KeyError"),
        ({**good, "k": "three"}, "is not a valid splits file.*ValueError"),
        ({**good, "folds": ["a"]}, "is not a valid splits file"),
    ]
    leak = json.loads(json.dumps(good))
    moved = leak["folds"][0]["val"][0]
    leak["folds"][1]["val"].append(moved)
    cases.append((leak, "appears twice"))
    for data, match in cases:
        (root / SPLITS_JSON).write_text(json.dumps(data))
        with pytest.raises(InputError, match=match):
            load_splits(root, check_dataset=False)
    (root / SPLITS_JSON).write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_splits(root)


def test_every_patient_in_one_fold_over_many_seeds() -> None:
    rng = np.random.default_rng(0)
    groups = {f"c{i}": f"p{int(rng.integers(0, 15))}" for i in range(60)}
    for seed in range(20):
        _assert_grouped(compute_splits(groups, k=5, seed=seed, test_fraction=0.1), groups)


def test_load_splits_explains_nnunets_splits_layout(tmp_path: Path) -> None:
    """nnU-Net's splits_final.json is a list of {train, val}: say so rather than 'not an object'."""
    root = _dataset(tmp_path, GROUPS)
    folds = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]
    (root / SPLITS_JSON).write_text(json.dumps(folds))
    with pytest.raises(
        InputError,
        match=r"splits\.json: is not a medseg splits file; .*found a list of 2 "
        r"train/val folds \(nnU-Net's splits_final\.json layout\)",
    ):
        load_splits(root, check_dataset=False)
    (root / SPLITS_JSON).write_text("3")
    with pytest.raises(InputError, match=r"is not a medseg splits file.*found a JSON int"):
        load_splits(root, check_dataset=False)
