"""Patient-grouped K-fold splits with an optional hold-out test set, saved as splits.json.

Cases of one patient (several scans, days, or chunks of one series) always land in the
same fold, so validation never sees a patient that training saw (seed 004 used
scikit-learn's ``GroupKFold`` for this). The assignment is deterministic from a seed:

1. groups (patients) are shuffled with ``numpy.random.default_rng(seed)``;
2. with ``test_fraction > 0``, whole groups are taken from the front of that order into
   the test set until it holds ``round(test_fraction * n_cases)`` cases (at least one group);
3. the remaining groups are sorted by size, largest first (a stable sort, so ties keep the
   shuffled order), and each goes to the fold with the fewest cases so far: GroupKFold's
   greedy rule. Fold sizes then differ by at most the size of the largest group.

scikit-learn is not a dependency of medseg, and GroupKFold only gained seeded shuffling
in 1.6, so the few lines of the greedy rule are written here.

``splits.json`` (``SPLITS_JSON``) sits in the dataset folder beside dataset.json; training
and evaluation read it with :func:`load_splits`, which checks it still matches the dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import load_json
from medseg.data.dataset import list_cases
from medseg.errors import ConfigError, InputError
from medseg.io.atomic import write_text_atomic

SPLITS_JSON = "splits.json"
SPLITS_VERSION = 1


@dataclass(frozen=True)
class Fold:
    """Case ids used for training and for validation in one fold."""

    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    """K patient-grouped folds over the non-test cases, and the held-out test cases."""

    folds: tuple[Fold, ...]
    test: tuple[str, ...]
    groups: Mapping[str, str]  # case id -> patient/group id
    seed: int
    test_fraction: float

    @property
    def k(self) -> int:
        return len(self.folds)

    def fold(self, index: int) -> Fold:
        if not 0 <= index < self.k:
            raise ConfigError(f"fold {index} does not exist; the splits have folds 0..{self.k - 1}")
        return self.folds[index]

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(sorted(self.groups))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SPLITS_VERSION,
            "k": self.k,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "test": list(self.test),
            "folds": [{"train": list(f.train), "val": list(f.val)} for f in self.folds],
            "groups": dict(sorted(self.groups.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path | None = None) -> Splits:
        src = path or Path(SPLITS_JSON)
        known = {"version", "k", "seed", "test_fraction", "test", "folds", "groups"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(src, "has unknown keys", expected=", ".join(sorted(known)), found=str(unknown))
        if data.get("version") != SPLITS_VERSION:
            raise InputError(
                src,
                "has an unsupported version",
                expected=str(SPLITS_VERSION),
                found=str(data.get("version")),
            )
        try:
            folds = tuple(
                Fold(tuple(str(c) for c in f["train"]), tuple(str(c) for c in f["val"]))
                for f in data["folds"]
            )
            splits = cls(
                folds=folds,
                test=tuple(str(c) for c in data["test"]),
                groups={str(k): str(v) for k, v in dict(data["groups"]).items()},
                seed=int(data["seed"]),
                test_fraction=float(data["test_fraction"]),
            )
            k = int(data["k"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                src, "is not a valid splits file", found=f"{type(exc).__name__}: {exc}"
            ) from None
        if k != len(folds):
            raise InputError(
                src, "declares a different number of folds", expected=str(k), found=str(len(folds))
            )
        splits.check_consistent(src)
        return splits

    def check_consistent(self, source: Path | None = None) -> None:
        """Every case once in validation (or test), no patient in two folds or in train and test."""
        fold_of_group: dict[str, str] = {}
        seen: set[str] = set()
        for name, cases in [("test", self.test)] + [(f"fold {i}", f.val) for i, f in enumerate(self.folds)]:
            for case in cases:
                if case in seen:
                    raise InputError(source, f"case '{case}' appears twice in the held-out sets")
                seen.add(case)
                group = self.groups.get(case, case)
                other = fold_of_group.setdefault(group, name)
                if other != name:
                    raise InputError(source, f"patient '{group}' is split between {other} and {name}")
        if seen != set(self.groups):
            missing = sorted(set(self.groups) - seen)[:5]
            raise InputError(
                source, "not every case is in a validation fold or the test set", found=str(missing)
            )
        for i, f in enumerate(self.folds):
            expected = seen - set(f.val) - set(self.test)
            if set(f.train) != expected:
                raise InputError(source, f"fold {i}'s training cases are not the other folds' cases")


def compute_splits(
    case_groups: Mapping[str, str], k: int = 5, seed: int = 0, test_fraction: float = 0.0
) -> Splits:
    """Patient-grouped folds for ``{case_id: group_id}`` (see the module docstring)."""
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2 folds, found {k}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test fraction must be in [0, 1), found {test_fraction}")
    members: dict[str, list[str]] = {}
    for case in sorted(case_groups):
        members.setdefault(case_groups[case], []).append(case)
    groups = sorted(members)
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]

    test_groups: list[str] = []
    if test_fraction > 0:
        want = max(1, round(test_fraction * len(case_groups)))
        n_test = 0
        while n_test < want and order:
            group = order.pop(0)
            test_groups.append(group)
            n_test += len(members[group])
    if len(order) < k:
        raise ConfigError(
            f"cannot make {k} folds from {len(order)} patients"
            + (f" ({len(test_groups)} patients held out for testing)" if test_groups else "")
            + (
                f"; use fewer folds (--folds {len(order)} or fewer) or more patients"
                if len(order) >= 2
                else "; add patients (folds need at least 2), or train on every case (`train --fold all`)"
            )
        )
    order.sort(key=lambda g: len(members[g]), reverse=True)  # stable: ties keep the shuffled order
    fold_cases: list[list[str]] = [[] for _ in range(k)]
    for group in order:
        target = min(range(k), key=lambda i: (len(fold_cases[i]), i))
        fold_cases[target].extend(members[group])
    all_train = {c for cases in fold_cases for c in cases}
    folds = tuple(
        Fold(train=tuple(sorted(all_train - set(val))), val=tuple(sorted(val))) for val in fold_cases
    )
    test = tuple(sorted(c for g in test_groups for c in members[g]))
    return Splits(
        folds=folds, test=test, groups=dict(case_groups), seed=seed, test_fraction=float(test_fraction)
    )


def make_splits(
    root: str | Path,
    k: int = 5,
    seed: int = 0,
    test_fraction: float = 0.0,
    *,
    overwrite: bool = False,
) -> Splits:
    """Compute patient-grouped folds for the training cases of a dataset and save splits.json.

    Patients come from dataset.json's ``patients`` map (a case without an entry is its
    own patient). Raises :class:`ConfigError` when there are fewer patients than folds.
    """
    root = Path(root)
    cases = list_cases(root, "Tr")
    splits = compute_splits({c.case_id: c.group for c in cases}, k=k, seed=seed, test_fraction=test_fraction)
    write_text_atomic(root / SPLITS_JSON, json.dumps(splits.to_json(), indent=2) + "\n", overwrite=overwrite)
    return splits


def load_splits(root: str | Path, *, check_dataset: bool = True) -> Splits:
    """Read splits.json of a dataset; with ``check_dataset``, its cases must be the dataset's."""
    root = Path(root)
    path = root / SPLITS_JSON
    if not path.is_file():
        raise InputError(path, "not found", expected="splits made with `medseg dataset split`")
    data = load_json(path)
    if not isinstance(data, dict):
        nnunet = isinstance(data, list) and all(
            isinstance(f, dict) and {"train", "val"} <= set(f) for f in data
        )
        raise InputError(
            path,
            "is not a medseg splits file",
            expected='a JSON object with "folds", as `medseg dataset split` writes',
            found=(
                f"a list of {len(data)} train/val folds (nnU-Net's splits_final.json layout): "
                "make the splits with `medseg dataset split`"
                if nnunet
                else f"a JSON {type(data).__name__}"
            ),
        )
    splits = Splits.from_json(data, path)
    if check_dataset:
        current = {c.case_id: c.group for c in list_cases(root, "Tr")}
        added = sorted(set(current) - set(splits.groups))
        removed = sorted(set(splits.groups) - set(current))
        if added or removed:
            raise InputError(
                path,
                "does not match the dataset's training cases (re-run `medseg dataset split --overwrite`)",
                found=f"{len(added)} new cases {added[:3]}, {len(removed)} missing cases {removed[:3]}",
            )
        moved = sorted(c for c in current if current[c] != splits.groups[c])
        if moved:
            raise InputError(path, "patient grouping differs from dataset.json", found=str(moved[:3]))
    return splits


def fold_sizes(splits: Splits) -> Sequence[int]:
    """Number of validation cases in each fold."""
    return [len(f.val) for f in splits.folds]
