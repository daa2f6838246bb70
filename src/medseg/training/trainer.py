"""The trainer: epochs of patch batches, validation on whole cases, resumable checkpoints.

Reproducibility: every epoch draws its patches and augmentations from RNGs seeded by
(seed, epoch, worker), and the checkpoint written at the end of an epoch holds model,
optimiser, scheduler and RNG states, so resuming from it reproduces the uninterrupted
run (tests/training/test_trainer.py checks this). Ctrl-C writes ``checkpoint_last.pt``
of the epoch in progress (resuming then redoes that epoch from those weights).

Resuming keeps the setup that made the weights: a training config or plan that differs
from the checkpoint's in anything but ``RESUMABLE_FIELDS`` (epochs, time budget, device,
validation) is refused unless allowed, and a resume with the requested epochs already
done trains nothing and leaves the model folder's files as they are.

Distributed: when started by ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel; each rank samples its own patches (a DistributedSampler splits
the per-epoch sample indices), only rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medseg.config import to_dict
from medseg.data.dataset import read_descriptor
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io.atomic import atomic_file, write_text_atomic
from medseg.preprocessing.plan import Plan
from medseg.progress import progress_bar
from medseg.training.checkpoint import (
    RESUME_ONLY_KEYS,
    Architecture,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_model_json,
)
from medseg.training.config import TrainingConfig, check_device_name, load_training_config
from medseg.training.slice_classifier import SliceClassifierConfig

if TYPE_CHECKING:
    from medseg.postprocessing.labels import PostprocessingRules

log = logging.getLogger(__name__)

DISTRIBUTED_TIMEOUT = timedelta(hours=1)


class TrainingError(MedsegError):
    """Training cannot go on (NaN loss, incompatible checkpoint ...)."""


# Folds of a splits.json made by train (or crossval) when none was asked for.
DEFAULT_FOLDS = 5

# Training-config fields a resumed run may change: how long, where and how fast it runs, and
# how it is validated and logged -- not what the optimiser learns from. Raising ``epochs``
# (train longer) is the usual reason to resume. Every other field, and the plan's, is
# refused unless the user allows it (``--resume-changed``), which model.json then records.
RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "time_budget_minutes",
        "device",
        "num_workers",
        "threads",
        "tensorboard",
        "val_every",
        "max_val_cases",
        "sw_overlap",
        "sw_batch_size",
        "amp",
        "cpu_bf16",
        "channels_last",
        "deterministic",
    }
)
# Plan fields that describe the data rather than how it is preprocessed or learned.
DESCRIPTIVE_PLAN_FIELDS = frozenset({"schema_version", "dataset_name", "median_shape"})


def _plain(value: Any) -> Any:
    """JSON-able value with tuples as lists, so stored and current records compare equal."""
    return json.loads(json.dumps(to_dict(value)))


def _field_defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


def _differences(old: dict[str, Any], new: Any, skip: frozenset[str], prefix: str = "") -> list[str]:
    """``field: old -> new`` for each field of dataclass ``new`` that differs from the record ``old``.

    A field missing from ``old`` (a record from an older medseg) counts as its default.
    Nested records (the plan's network, a channel's normalisation) are compared field by field.
    """
    defaults = _field_defaults(type(new))
    out: list[str] = []
    for f in dataclasses.fields(new):
        if f.name in skip:
            continue
        now = _plain(getattr(new, f.name))
        before = _plain(old[f.name]) if f.name in old else defaults.get(f.name, "(not recorded)")
        out += _value_differences(f"{prefix}{f.name}", before, now)
    return out


def _value_differences(name: str, before: Any, now: Any) -> list[str]:
    if before == now:
        return []
    if isinstance(before, dict) and isinstance(now, dict):
        return [
            d
            for k in sorted(set(before) | set(now))
            for d in _value_differences(f"{name}.{k}", before.get(k), now.get(k))
        ]
    lists = isinstance(before, list) and isinstance(now, list) and len(before) == len(now)
    if lists and any(isinstance(v, dict) for v in before + now):
        return [
            d
            for i, (b, n) in enumerate(zip(before, now, strict=True))
            for d in _value_differences(f"{name}[{i}]", b, n)
        ]
    return [f"{name} {before!r} -> {now!r}"]


def config_differences(recorded: dict[str, Any], config: TrainingConfig) -> list[str]:
    """``field old -> new`` for the training-config fields that shape the weights."""
    return _differences(recorded, config, RESUMABLE_FIELDS)


def resume_differences(checkpoint: dict[str, Any], config: TrainingConfig, plan: Plan) -> list[str]:
    """What a resume would change that shapes the weights: training config and plan fields
    (a record the checkpoint lacks is not compared)."""
    recorded_config, recorded_plan = checkpoint.get("training_config"), checkpoint.get("plan")
    out = config_differences(recorded_config, config) if isinstance(recorded_config, dict) else []
    if isinstance(recorded_plan, dict):
        out += _differences(recorded_plan, plan, DESCRIPTIVE_PLAN_FIELDS, "plan.")
    return out


def plan_differences(recorded: Mapping[str, Any] | Plan, plan: Plan) -> list[str]:
    """``field old -> new`` for every field of ``plan`` that differs from ``recorded`` (a plan or
    its JSON record), nested fields by name: says how two models' plans differ."""
    record = _plain(recorded) if isinstance(recorded, Plan) else dict(recorded)
    return _differences(record, plan, frozenset())


def check_resume(
    path: str | Path, checkpoint: dict[str, Any], config: TrainingConfig, plan: Plan, *, allow_changed: bool
) -> list[str]:
    """Refuse to resume ``checkpoint`` with another training setup unless ``allow_changed``.

    Returns the differences (empty when none; when allowed, logged and returned so the model
    folder can record them).
    """
    changes = resume_differences(checkpoint, config, plan)
    if changes and not allow_changed:
        raise ConfigError(
            f"{path}: cannot resume with other settings than the checkpoint was trained with "
            f"({'; '.join(changes)}); resume with the original settings (only epochs, the time budget, "
            "device and validation settings may change), --overwrite to start over, or "
            "--resume-changed (`medseg train --resume` or `medseg crossval`) to continue with the new settings (recorded in model.json)"
        )
    if changes:
        log.warning(
            "%s: resuming at epoch %s with changed settings: %s",
            path,
            checkpoint.get("epoch"),
            "; ".join(changes),
        )
    return changes


def architecture_from_plan(plan: Plan) -> Architecture:
    """Constructor arguments of the plan's network (our U-Net or a MONAI network by name)."""
    net = plan.network
    dims = plan.spatial_dims
    if dims == 3:
        pooling = [list(p) for p in net.pooling]
        kernels = [list(k) for k in net.kernels]
        patch = list(plan.patch_size)
        spacing = list(plan.target_spacing)
    else:
        pooling = [list(p[1:]) for p in net.pooling]
        kernels = [list(k[1:]) for k in net.kernels]
        patch = list(plan.patch_size[1:])
        spacing = list(plan.target_spacing[1:])
    if net.name == "unet":
        kwargs: dict[str, Any] = {
            "features": net.base_features,
            "max_features": net.max_features,
            "pooling": pooling,
            "kernel_sizes": kernels or None,
            "norm": net.norm,
            "deep_supervision": net.deep_supervision,
        }
    else:
        kwargs = {"patch_size": patch, "spacing": spacing}
    kwargs.update(net.options)
    return Architecture(net.name, dims, plan.in_channels, plan.num_outputs, kwargs)


def choose_device(requested: str) -> torch.device:
    check_device_name(requested)
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was requested but no CUDA GPU is available (install the CUDA build of torch?)"
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), as oneDNN uses it.

    torch exposes the check only as private helpers of ``torch.cpu``; where they are missing
    (other torch versions, other architectures) the answer is no, and training stays float32.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_cpu_bf16(setting: bool | str, device: torch.device) -> bool:
    """``cpu_bf16`` as training uses it: never on CUDA (float16 AMP there); ``auto`` follows the CPU."""
    if device.type != "cpu":
        return False
    return cpu_has_native_bf16() if setting == "auto" else bool(setting)


def resolve_channels_last(setting: bool | str, device: torch.device, spatial_dims: int) -> bool:
    """``channels_last`` as training uses it; ``auto``: 3D networks on a CPU (see TrainingConfig)."""
    if setting == "auto":
        return device.type == "cpu" and spatial_dims == 3
    return bool(setting)


def _memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    """The tensor layout for a network of ``spatial_dims`` (2D and 2.5D nets see 4D batches)."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def _lr_lambda(config: TrainingConfig) -> Any:
    epochs = config.epochs
    if config.schedule == "poly":
        return lambda e: max(0.0, 1 - e / epochs) ** 0.9
    if config.schedule == "cosine":
        return lambda e: 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs))
    if config.schedule == "step":
        return lambda e: config.step_gamma ** (e // config.step_epochs)
    return lambda e: 1.0


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Foreground Dice per class; NaN where both are empty (excluded from means)."""
    out = []
    for k in range(1, num_classes):
        p, r = pred == k, ref == k
        denom = int(p.sum()) + int(r.sum())
        out.append(float("nan") if denom == 0 else 2.0 * float(np.logical_and(p, r).sum()) / denom)
    return out


def dice_per_region(pred: np.ndarray, ref: np.ndarray, regions: Sequence[Sequence[int]]) -> list[float]:
    """Dice per region of boolean masks ``pred`` (R, *shape) against a label map ``ref``.

    A region of the reference is the union of its label values; NaN where both are empty.
    """
    from medseg.data.regions import region_masks

    truth = region_masks(ref, regions)
    out = []
    for p, r in zip(pred, truth, strict=True):
        denom = int(p.sum()) + int(r.sum())
        out.append(float("nan") if denom == 0 else 2.0 * float(np.logical_and(p, r).sum()) / denom)
    return out


@dataclass
class EpochRecord:
    epoch: int
    learning_rate: float
    train_loss: float
    seconds: float
    val_dice: list[float] = field(default_factory=list)

    @property
    def mean_dice(self) -> float:
        vals = [v for v in self.val_dice if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")


@dataclass
class TrainResult:
    model_dir: Path
    epochs_completed: int
    best_dice: float
    best_epoch: int
    history: list[EpochRecord]
    stopped_early: str = ""
    # True when a resume found the requested epochs already done: nothing was trained or written.
    already_complete: bool = False


def init_distributed(device: torch.device) -> torch.device:
    """Join the torchrun process group when WORLD_SIZE > 1; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch.distributed as dist

    if not dist.is_initialized():
        # Only rank 0 validates (whole cases, sliding window) while the other ranks wait in
        # their next collective; NCCL's default 10-minute timeout would kill a long validation.
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=DISTRIBUTED_TIMEOUT
        )
        # Tear the group down before the interpreter does: a process that exits with the
        # group still open can abort in the backend's destructor ("terminate called without
        # an active exception", SIGABRT), which torchrun reports as a failed run.
        atexit.register(_close_process_group)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def _close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 (the rank that logs, writes and reports)."""
    return _distributed()[0] == 0


def _any_over_ranks(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank of a distributed run (``flag`` otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _mean_over_ranks(value: float, device: torch.device) -> float:
    """Average a number over the ranks of a distributed run (identity otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


class Trainer:
    """Trains one model on cached cases; see :func:`train` for the usual entry point."""

    def __init__(
        self,
        plan: Plan,
        cache_dir: str | Path,
        train_ids: Sequence[str],
        val_ids: Sequence[str],
        config: TrainingConfig,
        out_dir: str | Path,
        *,
        dataset_json: dict[str, Any] | None = None,
        fold: int | None = None,
        progress: bool = False,
        initial_rules: PostprocessingRules | None = None,
    ) -> None:
        if not train_ids:
            raise ConfigError("no training cases in this fold")
        # postprocessing.json of a new model folder (default: no rules)
        self.initial_rules = initial_rules
        self.plan = plan
        self.cache = Path(cache_dir)
        self.train_ids = list(train_ids)
        from medseg.training.checkpoint import case_id_record

        self._train_digest = case_id_record(self.train_ids)
        self.val_ids = list(val_ids)[: config.max_val_cases] if config.max_val_cases else list(val_ids)
        self.config = config
        self.out = Path(out_dir)
        self.dataset_json = dataset_json or {}
        self.fold = fold
        self.progress = progress
        self.rank, self.world = _distributed()
        self.is_main = self.rank == 0
        self.device = init_distributed(choose_device(config.device))
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.architecture = architecture_from_plan(plan)
        torch.manual_seed(config.seed)
        self.model = self.architecture.build().to(self.device)
        self.use_channels_last = resolve_channels_last(config.channels_last, self.device, plan.spatial_dims)
        self.memory_format = _memory_format(self.use_channels_last, plan.spatial_dims)
        # In place: the parameters keep their identity, so the optimiser built below and
        # checkpoints (state_dict copies values whatever the layout) are unaffected.
        self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # untyped overload
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.loss_fn = build_plan_loss(plan, config)
        self.optimizer = build_optimizer(self.model, config)
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if config.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # torch's own EMA (a deep copy of the network, updated after every step);
            # buffers are averaged too, so normalisation statistics match the weights.
            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.use_amp = config.amp and self.device.type == "cuda"
        self.use_cpu_bf16 = resolve_cpu_bf16(config.cpu_bf16, self.device)
        if self.is_main and self.device.type == "cpu":
            log.info(
                "CPU training: %s, %s layout",
                "bfloat16 autocast" if self.use_cpu_bf16 else "float32",
                "channels-last" if self.use_channels_last else "default",
            )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch = 0
        self.best_dice = -1.0
        self.best_epoch = -1
        self.history: list[EpochRecord] = []
        # Settings changed by resumes that were allowed to change them (--resume-changed).
        self.resume_changes: list[dict[str, Any]] = []
        self.batch_size = config.batch_size or plan.batch_size
        self.mirror_axes = self._resolve_mirror_axes()

    def _resolve_mirror_axes(self) -> tuple[int, ...]:
        """Spatial axes along which training flips and test-time mirroring may act.

        Recorded in model.json (``mirror_axes``) so that ``--tta`` mirrors only where the
        network was taught that a mirrored image has the same labels (nnU-Net keeps its
        allowed mirroring axes with the model for the same reason).
        """
        from medseg.data.augment import (
            AugmentationConfig,
            is_lateralised,
            left_right_array_axis,
            mirror_axes,
        )
        from medseg.preprocessing.pipeline import load_preprocess_info

        aug = AugmentationConfig.from_dict(self.config.augmentation)
        mirror_lr = aug.mirror_left_right
        names = [n for n, v in self.plan.labels.items() if v != 0] + list(self.plan.regions)
        if mirror_lr is None:
            mirror_lr = not is_lateralised(names)
        if mirror_lr or aug.flip_axes is not None:
            return mirror_axes(self.plan.spatial_dims, aug.flip_axes, None)
        axes = {
            left_right_array_axis(load_preprocess_info(self.cache, c).preprocessed_geometry.direction)
            for c in self.train_ids
        }
        if len(axes) > 1:
            log.warning(
                "the training cases put the left-right axis on different array axes %s: no mirroring",
                sorted(axes),
            )
            return ()
        lr_axis = axes.pop()
        result = mirror_axes(self.plan.spatial_dims, None, lr_axis)
        log.info(
            "labels name left / right structures: no mirroring along the left-right axis "
            "(array axis %d); mirroring axes of the network input: %s",
            lr_axis,
            list(result),
        )
        return result

    # ------------------------------------------------------------------ setup
    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        from medseg.data.augment import AugmentationConfig, build_augmentation
        from medseg.data.sampling import PatchDataset

        transform = None
        aug_cfg = AugmentationConfig.from_dict(self.config.augmentation)
        if aug_cfg.enabled:
            aug_cfg = dataclasses.replace(aug_cfg, flip_axes=self.mirror_axes)
            spacing = (
                self.plan.target_spacing if self.plan.spatial_dims == 3 else self.plan.target_spacing[1:]
            )
            transform = build_augmentation(aug_cfg, self.plan.spatial_dims, spacing)
        dataset = PatchDataset(
            self.cache,
            self.train_ids,
            patch_size=self.plan.patch_size,
            mode=self.plan.configuration,
            num_slices=self.plan.slab_slices,
            slice_step=self.plan.slab_step,
            foreground_fraction=self.plan.foreground_fraction,
            samples_per_epoch=self.config.iterations_per_epoch * self.batch_size * self.world,
            seed=self.config.seed,
            transform=transform,
        )
        # Sample indices identify patches (and their augmentation) deterministically, so an
        # epoch is the same whether it runs first or after a resume, on 1 or n workers.
        epoch_set = torch.utils.data.Subset(dataset, list(dataset.epoch_indices(epoch)))
        sampler: torch.utils.data.Sampler[int] | None = None
        if self.world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(
                epoch_set, num_replicas=self.world, rank=self.rank, shuffle=False
            )
        return torch.utils.data.DataLoader(
            epoch_set,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    @property
    def inference_model(self) -> nn.Module:
        """The weights that are validated, saved as ``model`` and used for prediction."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------- checkpoints
    def _payload(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.ema is not None:
            extra = {
                "training_model": self.model.state_dict(),
                "ema_updates": int(self.ema.n_averaged.item()),
            }
        return {
            "model": self.inference_model.state_dict(),
            **extra,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "rng": rng_state(),
            "plan": to_dict(self.plan),
            "dataset": self.dataset_json,
            "training_config": to_dict(self.config),
            "architecture": self.architecture.to_dict(),
            "history": [to_dict(h) for h in self.history],
            "fold": self.fold,
            "resume_changes": self.resume_changes,
        }

    def save(self, name: str, *, resumable: bool = True) -> Path:
        """Write checkpoint ``name``; without ``resumable`` only what prediction needs (the
        best checkpoint: no optimiser, scheduler, scaler or RNG state)."""
        payload = self._payload()
        if not resumable:
            payload = {k: v for k, v in payload.items() if k not in RESUME_ONLY_KEYS}
        return save_checkpoint(self.out / name, payload)

    def resume(
        self, path: str | Path, *, allow_changed: bool = False, checkpoint: dict[str, Any] | None = None
    ) -> None:
        """Load the training state of ``path`` (or of its already loaded ``checkpoint``).

        A checkpoint trained with other settings (loss, learning rate, plan ...) is refused
        unless ``allow_changed``; see :func:`check_resume`.
        """
        data = checkpoint if checkpoint is not None else load_checkpoint(path, map_location=self.device)
        if "optimizer" not in data:
            raise InputError(
                path,
                "holds the weights only (a best checkpoint), not the training state to resume from",
                expected="checkpoint_last.pt",
            )
        changes = check_resume(path, data, self.config, self.plan, allow_changed=allow_changed)
        arch = Architecture.from_dict(data["architecture"])
        if arch.to_dict() != self.architecture.to_dict():
            raise TrainingError(
                f"{path}: checkpoint is for a different network ({arch.name}, {arch.in_channels} -> {arch.out_channels}, "
                f"{arch.kwargs}) than this plan's ({self.architecture.name}, {self.architecture.in_channels} -> "
                f"{self.architecture.out_channels}, {self.architecture.kwargs})"
            )
        # With EMA, ``model`` holds the average and ``training_model`` the optimised weights.
        load_weights(self.model, data.get("training_model", data["model"]), arch, path)
        if self.ema is not None:
            if "training_model" in data:
                load_weights(self.ema.module, data["model"], arch, path)
                self.ema.n_averaged.fill_(int(data.get("ema_updates", 1)))
            else:  # the run being resumed kept no average: start it from these weights
                self.ema.n_averaged.zero_()
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.scaler.load_state_dict(data["scaler"])
        self.epoch = int(data["epoch"])
        recorded_epochs = (data.get("training_config") or {}).get("epochs")
        if recorded_epochs is not None and int(recorded_epochs) != self.config.epochs:
            # Training longer (or shorter): the restored learning rate is the old schedule's
            # (poly ends at 0 at the old last epoch); take the new epoch count's from here on.
            factor = _lr_lambda(self.config)(self.epoch)
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
                group["lr"] = base * factor
        self.best_dice = float(data["best_dice"])
        self.best_epoch = int(data["best_epoch"])
        self.history = [EpochRecord(**h) for h in data.get("history", [])]
        self.resume_changes = list(data.get("resume_changes", []))
        if changes:
            self.resume_changes.append({"epoch": self.epoch, "changes": changes})
        set_rng_state(data["rng"])
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def _write_folder_files(self) -> None:
        """plan.json, dataset.json, training_config.json, postprocessing.json, model.json."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.plan.save(self.out / "plan.json")
        write_text_atomic(
            self.out / "dataset.json", json.dumps(self.dataset_json, indent=2) + "\n", overwrite=True
        )
        write_text_atomic(self.out / "training_config.json", self.config.to_json(), overwrite=True)
        post = self.out / "postprocessing.json"
        if not post.exists():
            # No clean-up by default (`medseg tune-postprocessing` chooses rules after crossval, or edit
            # the file); fold_all starts with the rules already chosen on the cross-validation.
            from medseg.postprocessing.labels import PostprocessingRules, write_rules

            write_rules(self.initial_rules or PostprocessingRules(), post)
        write_model_json(
            self.out,
            self.architecture,
            {
                "configuration": self.plan.configuration,
                "labels": self.plan.labels,
                **(
                    {
                        "regions": {k: list(v) for k, v in self.plan.regions.items()},
                        "regions_class_order": list(self.plan.regions_class_order),
                    }
                    if self.plan.regions
                    else {}
                ),
                "mirror_axes": list(self.mirror_axes),
                "channel_names": list(self.plan.channel_names),
                "fold": self.fold,
                # when training last wrote the folder (the report's Model section shows the date)
                "trained_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "epochs_completed": self.epoch,
                "best_val_mean_dice": None if self.best_dice < 0 else self.best_dice,
                "best_epoch": self.best_epoch,
                "train_cases": len(self.train_ids),
                "val_cases": len(self.val_ids),
                # Checked before a fold is skipped or resumed (crossval, train --resume);
                # salted digests, not the ids, which can be file names with patient data.
                "train_cases_digest": self._train_digest,
                # Resumes that changed the settings: the weights come from more than one setup.
                **({"resumed_with_changes": self.resume_changes} if self.resume_changes else {}),
            },
        )

    # --------------------------------------------------------------- training
    def _train_epoch(self, epoch: int, deadline: float | None, advance: Any) -> tuple[float, bool]:
        self.net.train()
        losses: list[float] = []
        out_of_time = False
        for batch in self._loader(epoch):
            image = batch["image"].to(self.device, non_blocking=True)
            image = image.contiguous(memory_format=self.memory_format)
            label = batch["label"].to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                logits = self.net(image)
                loss = self._loss(logits, label)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, iteration {len(losses) + 1}; stopped. "
                    f"The last good checkpoint is kept in {self.out} (try a lower learning_rate or enable grad_clip)"
                )
            self.scaler.scale(loss).backward()
            if self.config.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            losses.append(float(loss.detach()))
            advance()
            # Ranks must stop at the same step (else one waits forever in a collective).
            if deadline is not None and _any_over_ranks(time.monotonic() > deadline, self.device):
                out_of_time = True
                break
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        # The logged loss is over every rank's patches, not only rank 0's.
        return _mean_over_ranks(mean_loss, self.device), out_of_time

    def _loss(self, logits: Any, label: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):  # deep supervision: full resolution first
            weights = [0.5**i for i in range(len(logits))]
            total = torch.zeros((), device=label.device)
            for w, out in zip(weights, logits, strict=True):
                target = label
                if out.shape[2:] != label.shape[-len(out.shape[2:]) :]:
                    target = nn.functional.interpolate(
                        label.float(), size=out.shape[2:], mode="nearest"
                    ).long()
                total = total + w * self.loss_fn(out, target)
            return total / sum(weights)
        return self.loss_fn(logits, label)

    @torch.no_grad()
    def validate(self) -> list[float]:
        from medseg.inference.sliding_window import predict_probabilities

        model = self.inference_model
        model.eval()
        per_case = []
        for case_id in self.val_ids:
            image = np.load(self.cache / f"{case_id}_image.npy")
            label = np.load(self.cache / f"{case_id}_label.npy")
            probs = predict_probabilities(
                model,
                image,
                self.plan,
                device=self.device,
                overlap=self.config.sw_overlap,
                sw_batch_size=self.config.sw_batch_size,
                amp=self.use_amp,
            )
            if self.plan.regions:
                per_case.append(dice_per_region(probs > 0.5, label, list(self.plan.regions.values())))
            else:
                per_case.append(dice_per_class(probs.argmax(0), label, self.plan.num_classes))
        if not per_case:
            return []
        with np.errstate(all="ignore"):
            arr = np.array(per_case, dtype=float)
            return [float(v) for v in np.nanmean(arr, axis=0)] if arr.size else []

    def fit(
        self,
        *,
        resume_from: str | Path | None = None,
        allow_changed: bool = False,
        checkpoint: dict[str, Any] | None = None,
    ) -> TrainResult:
        """Train until ``config.epochs`` (or the time budget); returns the history.

        Resuming a run that has done ``config.epochs`` already trains and writes nothing
        (the folder keeps describing the run that made its weights).
        """
        if resume_from is not None:
            self.resume(resume_from, allow_changed=allow_changed, checkpoint=checkpoint)
        cfg = self.config
        if resume_from is not None and self.epoch >= cfg.epochs:
            message = _already_complete(self.fold, self.epoch)
            log.info(message)
            if self.is_main:
                _repair_log(self.history, self.plan.output_names, self.out)
            return TrainResult(
                self.out, self.epoch, self.best_dice, self.best_epoch, self.history, message, True
            )
        start = time.monotonic()
        deadline = start + cfg.time_budget_minutes * 60 if cfg.time_budget_minutes else None
        if self.is_main:
            self._write_folder_files()
        stopped = ""
        remaining = (cfg.epochs - self.epoch) * cfg.iterations_per_epoch
        tb = self._tensorboard()
        previous_handler = _install_sigterm_handler()
        try:
            with progress_bar(
                self.progress and self.is_main,
                f"training fold {'all' if self.fold is None else self.fold}",
                remaining,
            ) as advance:
                while self.epoch < cfg.epochs:
                    epoch_start = time.monotonic()
                    self._reseed(self.epoch)
                    train_loss, out_of_time = self._train_epoch(self.epoch, deadline, advance)
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.scheduler.step()
                    self.epoch += 1
                    if deadline is not None:
                        self._follow_time_budget(start, deadline)
                    record = EpochRecord(self.epoch, lr, train_loss, time.monotonic() - epoch_start)
                    last = self.epoch == cfg.epochs or out_of_time
                    if self.is_main and (self.epoch % cfg.val_every == 0 or last) and self.val_ids:
                        record.val_dice = self.validate()
                    self.history.append(record)
                    if self.is_main:
                        self._after_epoch(record, tb)
                    if out_of_time:
                        advance(finish=True)
                        stopped = (
                            f"time budget of {cfg.time_budget_minutes} min reached after epoch {self.epoch}"
                        )
                        log.info(stopped)
                        break
        except KeyboardInterrupt:
            if self.is_main:
                # The log first, then model.json and the checkpoint: all three end at the same epoch.
                self._write_log()
                self._write_folder_files()
                path = self.save("checkpoint_last.pt")
                log.warning("interrupted: state saved to %s (resume with --resume)", path)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            if tb is not None:
                tb.close()
        if self.is_main:
            if self.best_epoch < 0:
                # No validation happened (no validation cases): the last state (just saved as
                # checkpoint_last.pt) is the model.
                self.save("checkpoint_best.pt", resumable=False)
            self._write_log()
            self._write_folder_files()
        return TrainResult(self.out, self.epoch, self.best_dice, self.best_epoch, self.history, stopped)

    def _autocast(self) -> Any:
        """float16 mixed precision on CUDA (with the grad scaler), bfloat16 on CPU when asked."""
        if self.use_cpu_bf16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return torch.autocast(device_type=self.device.type, enabled=self.use_amp)

    def _follow_time_budget(self, start: float, deadline: float) -> None:
        """Under a time budget, decay the learning rate by the elapsed share of the budget.

        The schedule counts epochs; when the budget will end training long before
        ``epochs``, the learning rate follows whichever is further along (epochs done or
        time spent), so poly/cosine/step schedules still reach their low end. The share is
        averaged over ranks so every rank uses the same learning rate.
        """
        share = min(1.0, (time.monotonic() - start) / max(deadline - start, 1e-9))
        share = _mean_over_ranks(share, self.device)
        position = share * self.config.epochs
        if position <= self.epoch:
            return
        factor = _lr_lambda(self.config)(position)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * factor

    def _reseed(self, epoch: int) -> None:
        seed = self.config.seed * 100_003 + epoch
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _after_epoch(self, record: EpochRecord, tb: Any) -> None:
        mean = record.mean_dice
        # The log before the checkpoints: an interrupt in between leaves the log one epoch
        # ahead (rewritten on resume), never behind the checkpoint it describes.
        self._write_log()
        if record.val_dice and not math.isnan(mean) and mean > self.best_dice:
            self.best_dice, self.best_epoch = mean, record.epoch
            self.save("checkpoint_best.pt", resumable=False)
        self.save("checkpoint_last.pt")
        dice = (
            ""
            if not record.val_dice
            else f", val Dice {mean:.4f} ("
            + ", ".join(f"{n} {d:.4f}" for n, d in zip(self.plan.output_names, record.val_dice, strict=True))
            + ")"
        )
        log.info(
            "epoch %d: loss %.4f, lr %.2e%s (%.1f s)",
            record.epoch,
            record.train_loss,
            record.learning_rate,
            dice,
            record.seconds,
        )
        if tb is not None:
            tb.add_scalar("loss/train", record.train_loss, record.epoch)
            tb.add_scalar("lr", record.learning_rate, record.epoch)
            if record.val_dice:
                tb.add_scalar("dice/val_mean", mean, record.epoch)

    def _write_log(self) -> None:
        write_training_log(self.history, self.plan.output_names, self.out)

    def _tensorboard(self) -> Any:
        if not (self.config.tensorboard and self.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install medseg[tensorboard]); logging to CSV only")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))


def _already_complete(fold: int | None, epochs: int) -> str:
    return f"fold {'all' if fold is None else fold} already complete ({epochs} epochs); nothing to train"


def _output_names(plan: Mapping[str, Any]) -> list[str]:
    """The scored outputs' names of a plan as a checkpoint stores it (``Plan.output_names``)."""
    if plan.get("regions"):
        return [str(n) for n in plan["regions"]]
    labels = dict(plan["labels"])
    return [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]


def write_training_log(history: Sequence[EpochRecord], names: Sequence[str], out: Path) -> None:
    """``log.csv`` (one row per epoch) and ``curves.png`` of ``history``; ``names``: the
    scored outputs (foreground labels, or regions), one Dice column each."""
    with atomic_file(out / "log.csv", overwrite=True) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "epoch",
                "learning_rate",
                "train_loss",
                "seconds",
                "val_mean_dice",
                *[f"val_dice_{n}" for n in names],
            ]
        )
        for r in history:
            dice = r.val_dice or [float("nan")] * len(names)
            writer.writerow(
                [
                    r.epoch,
                    f"{r.learning_rate:.6g}",
                    f"{r.train_loss:.6f}",
                    f"{r.seconds:.2f}",
                    f"{r.mean_dice:.6f}",
                    *[f"{d:.6f}" for d in dice],
                ]
            )
    plot_curves(history, names, out / "curves.png")


def _repair_log(history: Sequence[EpochRecord], names: Sequence[str], out: Path) -> None:
    """Rewrite log.csv / curves.png when they do not end at the checkpoint's last epoch (a run
    interrupted between writing them and its checkpoint, by an older medseg)."""
    path = out / "log.csv"
    try:
        with path.open(newline="") as fh:
            logged = [int(r["epoch"]) for r in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError):
        logged = []
    if logged != [r.epoch for r in history] or not (out / "curves.png").is_file():
        log.info("%s: rewriting log.csv and curves.png from the checkpoint's history", out)
        write_training_log(history, names, out)


def _install_sigterm_handler() -> Any:
    """Turn SIGTERM (SLURM's time limit, `kill`) into KeyboardInterrupt so a checkpoint is written."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return signal.getsignal(signal.SIGTERM)


def plot_curves(history: Sequence[EpochRecord], class_names: Sequence[str], path: Path) -> None:
    """PNG of the training loss and validation Dice per class over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = curves_figure(history, class_names)
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def curves_figure(history: Sequence[EpochRecord], class_names: Sequence[str]) -> Any:
    """The figure of :func:`plot_curves`: both panels on the same axis of whole epochs (the
    validation panel alone, validated every few epochs, was drawn at epochs 5.0, 5.2, ...)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = [r.epoch for r in history]
    ax1.plot(epochs, [r.train_loss for r in history], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    val = [r for r in history if r.val_dice]
    for i, name in enumerate(class_names):
        ax2.plot([r.epoch for r in val], [r.val_dice[i] for r in val], marker="o", label=name)
    if val:
        ax2.plot([r.epoch for r in val], [r.mean_dice for r in val], "k--", label="mean")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice")
    ax2.set_ylim(0, 1)
    if val:
        ax2.legend(fontsize="small")
    fig.tight_layout()
    return fig


def build_plan_loss(plan: Plan, config: TrainingConfig) -> nn.Module:
    """The loss ``config`` names for ``plan``'s outputs: one sigmoid per region for a region-based
    plan, else a softmax over the labels. Raises ``ConfigError`` for options the loss does not
    take (e.g. ``ce_weight`` or ``border_weight``, softmax-only, with a region plan), so that
    :func:`train` and cross-validation call it before preprocessing, to refuse them at once."""
    from medseg.training.losses import build_loss, build_region_loss

    if plan.regions:  # one sigmoid output per region, targets built from the label patch
        return build_region_loss(config.loss, list(plan.regions.values()), **config.loss_options)
    return build_loss(config.loss, **config.loss_options)


def dataset_json_for_model(root: str | Path) -> dict[str, Any]:
    return read_descriptor(root).to_json()


def _tuned_rules(root: Path, configuration: str, plan: Plan) -> PostprocessingRules | None:
    """The rules ``medseg tune-postprocessing`` chose for this configuration, if it has run
    with ``plan`` (a record of an earlier medseg names no plan and is taken as it is)."""
    from medseg.postprocessing.labels import PostprocessingRules
    from medseg.training.crossval import POSTPROCESSING_JSON, crossval_dir

    record = crossval_dir(root, configuration) / POSTPROCESSING_JSON
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        rules = PostprocessingRules.from_json(data["rules"])
        tuned_plan = Plan.from_mapping(data["plan"], where=f"{record}: plan") if "plan" in data else None
    except (ValueError, KeyError, TypeError, MedsegError) as exc:
        log.warning("%s: not read (%s); the model folder starts without postprocessing rules", record, exc)
        return None
    if tuned_plan is not None and tuned_plan != plan:
        # As crossval refuses a numbered fold of another plan: rules chosen for one
        # preprocessing, network or label set are not this model's.
        log.warning(
            "%s: its postprocessing rules were chosen for another plan (%s); the model folder starts "
            "without rules (rerun medseg crossval and tune-postprocessing with this plan to choose them)",
            record,
            "; ".join(plan_differences(tuned_plan, plan)) or "the plans differ",
        )
        return None
    log.info("postprocessing rules chosen on the cross-validation (%s): %s", record, rules.describe())
    return rules


def _check_fold_exists(root: Path, fold: int, folds: int | None) -> None:
    """A ConfigError naming splits.json when it lacks ``fold``, or when ``folds`` (``--folds``,
    given) differs from its number of folds: it was made earlier, and is not re-split silently."""
    from medseg.data.splits import SPLITS_JSON, load_splits

    splits = load_splits(root)
    path = root / SPLITS_JSON
    if folds is not None and folds != splits.k:
        raise ConfigError(
            f"{path} has {splits.k} folds but {folds} were asked for (--folds); leave --folds out "
            f"or give --folds {splits.k} to use them, or re-split with `medseg dataset split {root} "
            f"--folds {folds} --overwrite`"
        )
    try:
        splits.fold(fold)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def recorded_training_config(model_dir: str | Path) -> TrainingConfig | None:
    """The settings a resume of ``model_dir`` continues with: its training_config.json, less
    the device, which belongs to the machine that trained (a run trained with ``--device cuda``
    resumes on whatever this machine has, unless asked); None when there is no such file."""
    path = Path(model_dir) / "training_config.json"
    if not path.is_file():
        return None
    return dataclasses.replace(load_training_config(path), device=TrainingConfig.device)


def default_model_dir(root: str | Path, configuration: str, fold: int | None) -> Path:
    return Path(root) / "models" / configuration / ("fold_all" if fold is None else f"fold_{fold}")


def train(
    dataset: str | Path,
    fold: int | None = 0,
    *,
    configuration: str = "3d",
    config: TrainingConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    folds: int | None = None,
    workers: int = 2,
    progress: bool = False,
    slice_classifier: SliceClassifierConfig | None = None,
    resume_changed: bool = False,
) -> TrainResult:
    """Train one fold of a planned dataset (``fold=None``: all training cases, no validation).

    ``resume`` continues from the model folder's checkpoint_last.pt with the same settings
    (``config=None``: those of its training_config.json, see :func:`recorded_training_config`;
    more epochs, another time budget or device are fine); other training-config or plan
    values are refused unless ``resume_changed``. When the checkpoint has done ``epochs``
    already, nothing is trained or written (``TrainResult.already_complete``).

    Creates splits.json (``folds`` patient-grouped folds, None: 5) when absent; a splits.json
    with another number of folds than ``folds`` (given) is an error, as in cross-validation.
    Preprocesses missing cases, and writes the model folder (default DATASET/models/<config>/fold_k).
    With ``slice_classifier`` an empty-slice classifier is trained afterwards on the same
    training cases and saved in the model folder (see training/slice_classifier.py).
    A new ``fold=None`` model folder starts with the rules ``medseg tune-postprocessing``
    chose on this configuration's cross-validation, when it has run (otherwise none).
    """
    from medseg.data.splits import SPLITS_JSON, load_splits, make_splits
    from medseg.errors import OutputExistsError
    from medseg.preprocessing.pipeline import load_dataset_plan, preprocess_dataset

    root = Path(dataset)
    out = Path(out_dir) if out_dir is not None else default_model_dir(root, configuration, fold)
    recorded = recorded_training_config(out) if resume and config is None else None
    cfg = config or recorded or TrainingConfig()
    plan = load_dataset_plan(root, configuration)
    _check_plan_regions(root, plan, configuration)
    build_plan_loss(plan, cfg)  # its options checked now, not after minutes of preprocessing
    last = out / "checkpoint_last.pt"
    if resume_changed and not resume:
        raise ConfigError("--resume-changed only applies with --resume")
    if resume and not last.is_file():
        raise InputError(
            last, "nothing to resume from", expected="a checkpoint_last.pt written by an earlier run"
        )
    if not (resume or overwrite) and out.exists() and any(out.iterdir()):
        # Rerunning the same command after an interruption: --overwrite would discard the run.
        raise OutputExistsError(
            out,
            alternative=f"it holds {last.name} of an earlier run: use --resume (in Python: resume=True) "
            "to continue that run"
            if last.is_file()
            else "",
        )
    rank, _ = _distributed()
    checkpoint: dict[str, Any] | None = None
    if resume:
        # Checked before any preprocessing: a changed setup or a finished run is known now.
        # The folds first: a finished fold was answered "already complete" with any --folds.
        if fold is not None and (root / SPLITS_JSON).is_file():
            _check_fold_exists(root, fold, folds)
        checkpoint = load_checkpoint(last)
        if not resume_changed:  # allowed changes are logged once, by Trainer.resume
            check_resume(last, checkpoint, cfg, plan, allow_changed=False)
        # The training cases too, before a finished run is reported complete: a fold trained on
        # an earlier split would otherwise pass as done and be scored on cases it trained on.
        _check_resumed_cases(root, out, fold, folds or DEFAULT_FOLDS)
        done = int(checkpoint["epoch"])
        if done >= cfg.epochs:
            message = _already_complete(fold, done)
            log.info(message)
            history = [EpochRecord(**h) for h in checkpoint.get("history", [])]
            if rank == 0:
                _repair_log(history, _output_names(checkpoint["plan"]), out)
            best_epoch = int(checkpoint.get("best_epoch", -1))
            best = float(checkpoint.get("best_dice", -1.0))
            return TrainResult(out, done, best, best_epoch, history, message, already_complete=True)
    if overwrite and not resume and out.exists() and rank == 0:
        shutil.rmtree(out)  # rank 0 only: ranks racing to delete the same tree fail
    init_distributed(choose_device(cfg.device))
    if rank == 0:
        # The folds first: too few patients for --folds is known before minutes of preprocessing.
        if fold is not None and not (root / SPLITS_JSON).is_file():
            try:
                make_splits(root, k=folds or DEFAULT_FOLDS, seed=0)
            except OutputExistsError:
                # another job (a SLURM array's other folds) wrote it first: the same seed gives
                # the same folds, and load_splits below checks the fold exists
                log.info("%s was written by another job meanwhile; using it", root / SPLITS_JSON)
        if fold is not None:  # a fold splits.json lacks is refused now, too
            _check_fold_exists(root, fold, folds)
        preprocess_dataset(root, plan, workers=workers, progress=progress)
    _barrier()
    from medseg.data.dataset import list_cases
    from medseg.preprocessing.pipeline import default_cache_dir

    cache = default_cache_dir(root, plan)
    if fold is None:
        train_ids = [c.case_id for c in list_cases(root, "Tr")]
        val_ids: list[str] = []
    else:
        chosen = load_splits(root).fold(fold)
        train_ids, val_ids = list(chosen.train), list(chosen.val)
    if resume:
        from medseg.training.checkpoint import check_trained_on

        check_trained_on(out, train_ids, f"fold {fold} of splits.json" if fold is not None else "the dataset")
    trainer = Trainer(
        plan,
        cache,
        train_ids,
        val_ids,
        cfg,
        out,
        dataset_json=dataset_json_for_model(root),
        fold=fold,
        progress=progress,
        initial_rules=_tuned_rules(root, configuration, plan) if fold is None else None,
    )
    result = trainer.fit(
        resume_from=last if resume else None, allow_changed=resume_changed, checkpoint=checkpoint
    )
    if slice_classifier is not None and rank == 0:
        from medseg.training.slice_classifier import train_slice_classifier

        train_slice_classifier(plan, cache, train_ids, out, slice_classifier, progress=progress)
    # Every rank leaves together, once rank 0 has validated and written the model folder:
    # a rank that returned (and exited) earlier would leave rank 0 alone in the group.
    _barrier()
    return result


def _check_resumed_cases(root: Path, out: Path, fold: int | None, folds: int) -> None:
    """Refuse to resume ``out`` when its model.json records other training cases than the fold
    of splits.json (or, without one yet, the split ``train`` would write) now holds."""
    from medseg.data.dataset import list_cases
    from medseg.data.splits import SPLITS_JSON, compute_splits, load_splits
    from medseg.training.checkpoint import check_trained_on

    if fold is None:
        check_trained_on(out, [c.case_id for c in list_cases(root, "Tr")], "the dataset")
        return
    if (root / SPLITS_JSON).is_file():
        ids = load_splits(root).fold(fold).train
    else:  # what train() writes next (make_splits with the same folds and seed), not written here
        cases = list_cases(root, "Tr")
        ids = compute_splits({c.case_id: c.group for c in cases}, k=folds, seed=0).fold(fold).train
    check_trained_on(out, list(ids), f"fold {fold} of splits.json")


def _check_plan_regions(root: Path, plan: Plan, configuration: str) -> None:
    """The plan must learn the regions dataset.json declares now (regions added or changed
    after ``medseg plan`` would otherwise be silently ignored, or trained stale)."""
    desc = read_descriptor(root)
    if desc.regions != plan.regions or (
        plan.regions and desc.regions_class_order != plan.regions_class_order
    ):
        from medseg.errors import InputError
        from medseg.preprocessing.pipeline import plan_path

        raise InputError(
            plan_path(root, configuration),
            "the plan's regions differ from those of dataset.json",
            expected=f"regions {desc.regions or 'none'} (plan again: `medseg plan {root} -c {configuration} "
            "--overwrite`)",
            found=f"regions {plan.regions or 'none'}",
        )


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
