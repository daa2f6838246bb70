"""Training configuration: one frozen dataclass shared by `medseg train` and the Python API.

Load from a JSON/YAML file with :func:`load_training_config` (unknown keys and wrong
types are errors); CLI options override single fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medseg.config import from_dict, load_config_file, replace_from_overrides, to_dict
from medseg.errors import ConfigError


def check_device_name(device: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or a ConfigError (before any work starts)."""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda (or cuda:N), found {device!r}")
    return device


@dataclass(frozen=True)
class TrainingConfig:
    """How to train one fold.

    The exercise's settings (seed 000) are ``loss="focal"``, ``optimizer="adam"``,
    ``learning_rate=1e-4``, ``schedule="step"`` with ``step_epochs=100`` (1e-4 -> 1e-5).
    """

    loss: Literal["dice_ce", "focal", "dice_focal", "dice", "ce"] = "dice_ce"
    # Keyword arguments of the loss (medseg.training.losses), e.g. {"gamma": 2.0} for focal,
    # {"ce_weight": [1, 1, 2]} for dice_ce, or, for "ce" / "dice_ce", the U-Net paper's border
    # weight map on gaps between touching objects: {"border_weight": 10, "border_sigma": 5,
    # "border_class": 1} (w0, sigma in voxels, the class between the objects).
    loss_options: dict[str, Any] = field(default_factory=dict)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99
    schedule: Literal["poly", "cosine", "step", "constant"] = "poly"
    step_epochs: int = 100
    step_gamma: float = 0.1
    epochs: int = 50
    iterations_per_epoch: int = 100
    val_every: int = 5
    max_val_cases: int | None = None
    batch_size: int | None = None
    augmentation: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 1
    seed: int = 0
    deterministic: bool = False
    amp: bool = True
    # bfloat16 autocast for CPU training. "auto" (the default): on where the CPU computes
    # bfloat16 natively (AVX512-BF16 or AMX), off elsewhere (emulated bf16 is slower). Measured on
    # the benchmark machine (AVX512-BF16; benchmarks/channels_last_bench.py, float32 vs bf16 rows):
    # 1.3x per 3D U-Net step, 1.7x per 2.5D step, 1.2x per 2D ISBI step. Weights, optimiser,
    # validation and prediction stay float32. false: always float32.
    cpu_bf16: bool | Literal["auto"] = "auto"
    # Channels-last memory layout (NDHWC / NHWC) for the network and its input batches: oneDNN's
    # faster convolution kernels on CPU (1.3-1.6x per 3D U-Net step measured on the benchmark
    # machine, benchmarks/channels_last_bench.py); the results agree up to float rounding.
    # For 3D only: the 2D/2.5D networks of the CHAOS and ISBI benchmarks were 0.86-0.97x
    # (slower) in NHWC on the same machine (``--case chaos-2.5d`` / ``--case isbi``). "auto" (the
    # default): on for 3D networks trained on a CPU, off for 2D / 2.5D and on CUDA (unmeasured).
    channels_last: bool | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    time_budget_minutes: float | None = None
    sw_overlap: float = 0.25
    sw_batch_size: int = 4
    tensorboard: bool = False
    grad_clip: float | None = 12.0
    threads: int | None = None
    # Exponential moving average of the weights (e.g. 0.999): validation, checkpoints'
    # ``model`` weights and prediction use the average; the optimiser keeps training the raw
    # weights (stored as ``training_model`` for resuming). None: no averaging.
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, found {self.learning_rate}")
        if self.epochs < 1 or self.iterations_per_epoch < 1 or self.val_every < 1:
            raise ConfigError("epochs, iterations_per_epoch and val_every must be >= 1")
        if not 0 <= self.sw_overlap < 1:
            raise ConfigError(f"sw_overlap must be in [0, 1), found {self.sw_overlap}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, found {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, found {self.num_workers}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1) or null, found {self.ema_decay}")

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2) + "\n"

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainingConfig:
        return replace_from_overrides(
            self, {k: v for k, v in overrides.items() if v is not None}, "training config"
        )


def load_training_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainingConfig:
    base = from_dict(TrainingConfig, load_config_file(path), where=str(path)) if path else TrainingConfig()
    config = base.with_overrides(overrides or {})
    if config.augmentation:  # checked now, naming the file, not when training starts
        from medseg.data.augment import AugmentationConfig

        try:
            AugmentationConfig.from_dict(config.augmentation)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    return config
