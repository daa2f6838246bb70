"""Checkpoints and model folders.

A checkpoint holds the weights, the epoch, the plan, dataset.json, the training config
and the architecture's constructor arguments. The one training resumes from
(checkpoint_last.pt) also holds what resuming exactly needs (:data:`RESUME_ONLY_KEYS`:
optimiser, scheduler and AMP-scaler states, RNG states, EMA's optimised weights); the best
one does not, as only prediction and export read it (older medseg kept them in both; such
checkpoints still load).

A model folder (what `medseg predict -m` takes) is::

    MODEL/
      model.json              architecture, labels, channels, medseg version, metrics
      plan.json               the plan used in training (preprocessing is replayed from it)
      dataset.json            labels and channel names of the training data
      postprocessing.json     per-class postprocessing rules
      checkpoint_best.pt      weights with the best validation Dice (no optimiser state)
      checkpoint_last.pt      the latest state (resume from here)

A folder holding several ``fold_<k>`` model folders is an ensemble; their softmax outputs
are averaged (``fold_all`` only when it is the only one; other model folders beneath are
named in a warning and left out, see :func:`ensemble_members`).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import __version__
from medseg.errors import ConfigError, InputError
from medseg.io.atomic import atomic_file, write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medseg-checkpoint"
CHECKPOINT_VERSION = 1
MODEL_FILES = ("model.json", "plan.json", "dataset.json")
# Training state only a resume reads; left out of checkpoint_best.pt (the optimiser's moments
# alone are twice the weights with Adam).
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng", "training_model", "ema_updates")


@dataclass(frozen=True)
class Architecture:
    """Constructor arguments of a network from the registry (stored with every checkpoint)."""

    name: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    kwargs: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kwargs": _jsonable(self.kwargs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        try:
            return cls(
                name=str(data["name"]),
                spatial_dims=int(data["spatial_dims"]),
                in_channels=int(data["in_channels"]),
                out_channels=int(data["out_channels"]),
                kwargs=dict(data.get("kwargs", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"architecture record is incomplete: {exc}") from None

    def build(self) -> torch.nn.Module:
        from medseg.models.registry import build_model

        return build_model(self.name, self.spatial_dims, self.in_channels, self.out_channels, **self.kwargs)


def read_model_record(folder: str | Path) -> dict[str, Any]:
    """A model folder's model.json, refused with the file named when it is not a JSON object."""
    from medseg.config import load_json

    path = Path(folder) / "model.json"
    record = load_json(path)
    if not isinstance(record, dict):
        raise InputError(path, "is not a model record", expected="a JSON object", found=type(record).__name__)
    return record


def model_architecture(folder: str | Path, record: dict[str, Any] | None = None) -> Architecture:
    """The network a model folder's model.json describes (``record``: that file, already read)."""
    path = Path(folder) / "model.json"
    record = read_model_record(folder) if record is None else record
    arch = record.get("architecture")
    if not isinstance(arch, dict):
        raise InputError(
            path,
            "has no architecture record",
            expected='an "architecture" object (written by medseg train)',
            found="none" if arch is None else repr(arch),
        )
    try:
        return Architecture.from_dict(arch)
    except ConfigError as exc:
        raise InputError(path, str(exc)) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint atomically: a crash while saving never destroys the previous one."""
    data = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "medseg_version": __version__,
        **payload,
    }
    with atomic_file(path, overwrite=True) as tmp:
        torch.save(data, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    src = Path(path)
    if not src.is_file():
        raise InputError(src, "checkpoint not found")
    try:
        # Our checkpoints hold numpy RNG states and plain dicts; they are not arbitrary pickles
        # from strangers, but weights_only=False is needed for the numpy state. Only load
        # checkpoints you trust (the same caveat as torch.load itself).
        data = torch.load(src, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise InputError(
            src, "is not a readable checkpoint (truncated or corrupt?)", found=f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(src, "is not a medseg checkpoint", expected=f"format '{CHECKPOINT_FORMAT}'")
    if int(data.get("version", 0)) > CHECKPOINT_VERSION:
        raise InputError(
            src, "was written by a newer medseg", found=f"checkpoint version {data.get('version')}"
        )
    return data


def load_weights(
    model: torch.nn.Module, state: dict[str, Any], architecture: Architecture, source: str | Path
) -> None:
    """Load a state dict, turning a shape/key mismatch into a clear error."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"{source}: weights do not fit the network; the checkpoint was trained for "
            f"{architecture.name} ({architecture.spatial_dims}D, {architecture.in_channels} input channels, "
            f"{architecture.out_channels} classes): {first}"
        ) from None


def write_model_json(folder: Path, architecture: Architecture, info: dict[str, Any]) -> Path:
    record = {"medseg_version": __version__, "architecture": architecture.to_dict(), **info}
    return write_text_atomic(folder / "model.json", json.dumps(record, indent=2) + "\n", overwrite=True)


def case_id_record(case_ids: Sequence[str]) -> dict[str, Any]:
    """What model.json keeps of its training cases: salted SHA-256 digests, not the ids.

    Case ids are often file names, which can carry patient identifiers, and a model folder
    travels (a deployment copy, a shared model); the digests still let
    :func:`check_trained_on` compare them with a split.
    """
    import secrets

    record: dict[str, Any] = {"salt": secrets.token_hex(8)}
    record["sha256"] = sorted(_digests(record, case_ids))
    return record


def _digests(record: dict[str, Any], case_ids: Sequence[str]) -> set[str]:
    import hashlib

    return {hashlib.sha256(f"{record['salt']}:{c}".encode()).hexdigest()[:16] for c in case_ids}


def check_trained_on(folder: Path, train_ids: Sequence[str], what: str) -> None:
    """Raise when ``folder``'s model was trained on other cases than ``train_ids``.

    A fold kept from before a re-split would otherwise be scored on cases it trained on (or
    resumed on a mixture of two splits). Models from before the cases were recorded pass
    with a warning, as nothing can be checked.
    """
    path = folder / "model.json"
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("train_cases_digest")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable record is reported by whoever loads the model
    if not isinstance(recorded, dict) or "salt" not in recorded or "sha256" not in recorded:
        log.warning(
            "%s: the model does not record its training cases; cannot check them against %s", folder, what
        )
        return
    before, now = set(recorded["sha256"]), _digests(recorded, train_ids)
    if before != now:
        new_ids = sorted(c for c in train_ids if not _digests(recorded, [c]) <= before)
        raise ConfigError(
            f"{folder}: this model was trained on other cases than {what} now lists "
            f"({len(before - now)} case(s) no longer in its training set, {len(now - before)} new"
            + (f", e.g. {', '.join(new_ids[:3])}" if new_ids else "")
            + "); its validation cases would include cases it trained on. "
            "Rerun with --overwrite to retrain, or move the folder away"
        )


def is_model_folder(folder: Path) -> bool:
    return (folder / "model.json").is_file()


def model_folder_summary(path: str | Path) -> dict[str, Any] | None:
    """What ``medseg info MODEL`` shows: each fold's record and the plan, read from the JSON
    files only (no weights are loaded). None when ``path`` holds no model folder."""
    root = Path(path)
    if not root.is_dir():
        return None
    others: list[Path] = []
    ensemble = True
    if is_model_folder(root):
        folders = [root]
    else:
        folders, others = ensemble_members(root)
        if not folders:
            # a folder of unrelated models: list them all, saying predict refuses the folder
            folders, others, ensemble = others, [], False
    if not folders:
        return None
    from medseg.preprocessing.plan import Plan

    plan = Plan.load(folders[0] / "plan.json") if (folders[0] / "plan.json").is_file() else None
    names: dict[int, str] = {}
    if plan is not None:
        names = (
            dict(zip(plan.regions_class_order, plan.regions, strict=True))
            if plan.regions
            else {v: k for k, v in plan.labels.items()}
        )
    folds = []
    for folder in folders:
        try:
            record = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(folder / "model.json", "is not readable JSON", found=str(exc)) from None
        folds.append(
            {
                "folder": folder.name,
                "fold": record.get("fold"),
                "configuration": record.get("configuration"),
                "medseg_version": record.get("medseg_version"),
                "epochs_completed": record.get("epochs_completed"),
                "best_val_mean_dice": record.get("best_val_mean_dice"),
                "train_cases": record.get("train_cases"),
                "checkpoint": (folder / "checkpoint_best.pt").is_file(),
                "onnx": (folder / "model.onnx").is_file(),
                "slice_classifier": (folder / "slice_classifier.json").is_file(),
                "postprocessing": _rules_in_words(folder / "postprocessing.json", names),
            }
        )
    summary: dict[str, Any] = {"path": str(root), "folds": folds}
    if not ensemble:
        summary["not_an_ensemble"] = True
    if others:
        # Model folders beneath an ensemble folder that `medseg predict -m` does not use.
        summary["not_in_ensemble"] = [p.name for p in others]
    if plan is not None:
        summary["plan"] = {
            "configuration": plan.configuration,
            "channels": list(plan.channel_names),
            "labels": dict(plan.labels),
            "target_spacing_zyx_mm": list(plan.target_spacing),
            "patch_size_zyx": list(plan.patch_size),
            "slab_slices": plan.slab_slices,
            "slab_step": plan.slab_step,
        }
        if plan.regions:  # a region model: one sigmoid output per region
            summary["plan"]["regions"] = {k: list(v) for k, v in plan.regions.items()}
            summary["plan"]["regions_class_order"] = list(plan.regions_class_order)
    return summary


def _rules_in_words(path: Path, names: dict[int, str]) -> str:
    """The postprocessing rules predict applies with this folder, in words (``none``)."""
    from medseg.errors import MedsegError
    from medseg.postprocessing.labels import read_rules

    if not path.is_file():
        return "none"
    try:
        return read_rules(path).describe(names)
    except MedsegError as exc:
        return f"unreadable ({exc})"


FOLD_FOLDER = re.compile(r"fold_(\d+|all)")


def ensemble_members(root: Path) -> tuple[list[Path], list[Path]]:
    """The model folders of ensemble folder ``root`` that form the ensemble, and the others.

    Members are the ``fold_<k>`` folders; ``fold_all`` (trained on every case, the folds'
    validation cases included) only when there is no ``fold_<k>``. Any other model folder
    beneath (an experiment written there with ``--out``, a ``fold_0_old`` copy) is not a
    member: mixing it in would average unrelated models.
    """
    found = sorted(p for p in root.iterdir() if p.is_dir() and is_model_folder(p))
    numbered = [p for p in found if (m := FOLD_FOLDER.fullmatch(p.name)) and m.group(1) != "all"]
    numbered.sort(key=lambda p: int(p.name[len("fold_") :]))
    fold_all = [p for p in found if p.name == "fold_all"]
    members = numbered or fold_all
    return members, [p for p in found if p not in members]


def model_folders(path: str | Path, *, onnx: bool = False) -> list[Path]:
    """The model folder itself, or the ``fold_*`` model folders of an ensemble folder.

    ``onnx``: the folders are used through their ``model.onnx`` (``predict --onnx``), so a
    folder without checkpoints (a lean deployment copy) is complete when it has one.
    Other model folders beneath an ensemble folder are named in a warning and not used
    (see :func:`ensemble_members`).
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "model folder not found")
    if is_model_folder(root):
        folders = [root]
    else:
        folders, others = ensemble_members(root)
        if folders and others:
            log.warning(
                "%s: ensemble of %s; not using the other model folder(s) beneath it: %s "
                "(pass one with -m to predict with it)",
                root,
                ", ".join(p.name for p in folders),
                ", ".join(p.name for p in others),
            )
        elif others:
            raise InputError(
                root,
                "is not a model folder or an ensemble of fold_* folders",
                expected="model.json here, or fold_0, fold_1 ... (or fold_all) model folders beneath",
                found=f"model folder(s) {', '.join(p.name for p in others)}; pass one of them with -m",
            )
        # A fold folder without its model.json would silently drop out of the ensemble.
        for other in sorted(
            p
            for p in root.glob("fold_*")
            if p.is_dir() and FOLD_FOLDER.fullmatch(p.name) and not is_model_folder(p)
        ):
            if folders and any(other.iterdir()):
                raise InputError(
                    other,
                    "model folder is incomplete",
                    expected="model.json beside the other files of this fold (or move the folder away "
                    "to predict with the other folds)",
                    found=f"no model.json; {len(folders)} other fold(s) are complete",
                )
            if folders:
                log.warning("%s: empty fold folder ignored", other)
    if not folders:
        raise InputError(
            root,
            "is not a model folder",
            expected="model.json, plan.json, dataset.json and checkpoint_best.pt (or fold_* folders holding them)",
        )
    for folder in folders:
        missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
        has_checkpoint = any((folder / c).is_file() for c in ("checkpoint_best.pt", "checkpoint_last.pt"))
        if not has_checkpoint and not (onnx and (folder / "model.onnx").is_file()):
            missing.append("model.onnx" if onnx else "checkpoint_best.pt")
        if missing:
            raise InputError(
                folder,
                "model folder is incomplete",
                expected="model.json, plan.json, dataset.json, "
                + ("model.onnx (`medseg export-onnx`)" if onnx else "checkpoint_best.pt"),
                found=f"missing {', '.join(missing)}"
                + (
                    " (it has model.onnx: a lean ONNX copy predicts with --onnx)"
                    if not onnx and not has_checkpoint and (folder / "model.onnx").is_file()
                    else ""
                ),
            )
    return folders


def best_checkpoint(folder: Path) -> Path:
    best = folder / "checkpoint_best.pt"
    return best if best.is_file() else folder / "checkpoint_last.pt"
