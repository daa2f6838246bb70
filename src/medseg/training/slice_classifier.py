"""Empty-slice classifier for 2D / 2.5D models (seed 004).

A slice-wise segmentation model sees one slice (or a slab of neighbours) at a time and
has no view of where the organ ends along the slice axis, so it tends to paint small
false positives on slices far above or below the organ. A separate small CNN that only
answers "does this slice hold any foreground?" is cheap to train (it sees every slice
of the dataset downsampled to ``input_size``) and, at prediction, the segmentation of the
slices it judges empty is set to background.

The classifier lives in the model folder next to the segmentation network::

    MODEL/slice_classifier.pt      weights (state dict)
    MODEL/slice_classifier.json    architecture, input size, slab, threshold, training summary

and :class:`medseg.inference.predictor.SegmentationModel` uses it when present (switch it
off with ``PredictConfig(slice_filter=False)`` / ``medseg predict --no-slice-filter``).

Slices are taken along the first array axis of the *preprocessed* case (the plan's slice
axis), exactly as the 2D / 2.5D networks see them: 2.5D slabs are built by
:func:`medseg.inference.sliding_window.slab_stack` (edge slices replicated). Each slice
is resized with bilinear interpolation of the image only (the target is one bit per
slice, so no label is ever resampled). The network is MONAI's ``Classifier`` (a strided
residual CNN ending in a linear layer); only the data handling is written here, because
no library trains a per-slice presence classifier from a preprocessed cache.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.config import from_dict, load_json
from medseg.errors import ConfigError, InputError
from medseg.io.atomic import atomic_file, write_text_atomic
from medseg.preprocessing.plan import Plan
from medseg.progress import progress_bar

log = logging.getLogger(__name__)

WEIGHTS_FILE = "slice_classifier.pt"
META_FILE = "slice_classifier.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SliceClassifierConfig:
    """How the empty-slice classifier is built and trained.

    ``iterations`` bounds the training; ``time_budget_minutes`` (when set) stops it
    earlier. Batches hold as many slices with foreground as without (when the data has
    both). ``threshold``: a slice is judged empty when its foreground probability is
    below it (lower keeps more slices: fewer missed organ ends, more false positives).
    """

    input_size: int = 96
    channels: tuple[int, ...] = (16, 32, 64, 128)
    batch_size: int = 32
    learning_rate: float = 1e-3
    iterations: int = 400
    time_budget_minutes: float | None = None
    threshold: float = 0.5
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.input_size < 16 or self.input_size % (2 ** len(self.channels)) != 0:
            raise ConfigError(
                f"input_size must be >= 16 and divisible by 2**{len(self.channels)} "
                f"(one halving per channel stage), found {self.input_size}"
            )
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ConfigError(f"channels must be positive counts, found {self.channels}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2, found {self.batch_size}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, found {self.iterations}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), found {self.threshold}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, found {self.learning_rate}")


@dataclass
class SliceClassifierResult:
    iterations: int
    seconds: float
    slices: int
    slices_with_foreground: int
    train_accuracy: float
    path: Path
    history: list[float] = field(default_factory=list)


def build_network(in_channels: int, config: SliceClassifierConfig) -> nn.Module:
    from monai.networks.nets import Classifier

    return Classifier(
        in_shape=(in_channels, config.input_size, config.input_size),
        classes=1,
        channels=tuple(int(c) for c in config.channels),
        strides=(2,) * len(config.channels),
        num_res_units=1,
    )


def slice_inputs(image: np.ndarray | torch.Tensor, slab: int, size: int, step: int = 1) -> torch.Tensor:
    """(C, Z, Y, X) preprocessed image -> (Z, C * slab, size, size) classifier inputs."""
    from medseg.inference.sliding_window import slab_stack

    t = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: mmap arrays are read-only
    if t.ndim != 4:
        raise InputError(None, "slice classifier input must be (C, Z, Y, X)", found=f"shape {tuple(t.shape)}")
    stacked = slab_stack(t, slab, step)  # (Z, C*slab, Y, X)
    if stacked.shape[-2:] == (size, size):
        return stacked.contiguous()
    return F.interpolate(stacked, size=(size, size), mode="bilinear", align_corners=False)


def slice_targets(label: np.ndarray) -> np.ndarray:
    """(Z, Y, X) label -> (Z,) bool: the slice holds any foreground voxel."""
    lab = np.asarray(label)
    return np.asarray((lab.reshape(lab.shape[0], -1) > 0).any(axis=1))


def _load_slices(
    cache: Path, case_ids: Sequence[str], plan: Plan, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from medseg.data.sampling import case_paths

    xs: list[torch.Tensor] = []
    ys: list[np.ndarray] = []
    for case_id in case_ids:
        image_path, label_path, _ = case_paths(cache, case_id)
        if not image_path.is_file() or not label_path.is_file():
            raise InputError(
                cache,
                f"has no preprocessed image and label for case '{case_id}'",
                expected=f"{image_path.name} and {label_path.name} (run preprocessing first)",
            )
        image = np.load(image_path, mmap_mode="r")
        label = np.load(label_path, mmap_mode="r")
        xs.append(slice_inputs(image, plan.slab_slices, size, plan.slab_step))
        ys.append(slice_targets(label))
    return torch.cat(xs), torch.as_tensor(np.concatenate(ys), dtype=torch.float32)


def train_slice_classifier(
    plan: Plan,
    cache: str | Path,
    case_ids: Sequence[str],
    out_dir: str | Path,
    config: SliceClassifierConfig | None = None,
    *,
    progress: bool = True,
) -> SliceClassifierResult:
    """Train the classifier on every slice of the cached training cases; save it in ``out_dir``.

    ``out_dir`` is normally the segmentation model's folder (so that ``medseg predict``
    finds it); the plan must be the one the cache was preprocessed with. Every slice is
    held in memory at ``input_size`` (slices x channels x slab x input_size^2 float32:
    10,000 slices of 5-slice slabs at 96 x 96 take 1.8 GB).
    """
    cfg = config or SliceClassifierConfig()
    if not case_ids:
        raise ConfigError("the slice classifier needs at least one training case")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, y = _load_slices(Path(cache), case_ids, plan, cfg.input_size)
    positive = torch.nonzero(y > 0.5).flatten()
    negative = torch.nonzero(y <= 0.5).flatten()
    log.info("slice classifier: %d slices, %d with foreground", len(y), len(positive))
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = build_network(x.shape[1], cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 - it / cfg.iterations) ** 0.9)
    loss_fn = nn.BCEWithLogitsLoss()
    deadline = (
        time.monotonic() + cfg.time_budget_minutes * 60.0 if cfg.time_budget_minutes is not None else None
    )
    t0 = time.monotonic()
    history: list[float] = []
    half = cfg.batch_size // 2
    net.train()
    done = 0
    with progress_bar(progress, "slice classifier", cfg.iterations) as advance:
        for it in range(cfg.iterations):
            if len(positive) and len(negative):
                idx = torch.cat(
                    [
                        positive[torch.randint(len(positive), (half,), generator=gen)],
                        negative[torch.randint(len(negative), (cfg.batch_size - half,), generator=gen)],
                    ]
                )
            else:
                idx = torch.randint(len(y), (cfg.batch_size,), generator=gen)
            xb, yb = x[idx].clone(), y[idx]
            # flips in-plane and a random intensity scale/shift (the image is z-score normalised)
            flip = torch.rand(2, generator=gen) < 0.5
            if flip[0]:
                xb = xb.flip(-1)
            if flip[1]:
                xb = xb.flip(-2)
            scale = 1.0 + 0.2 * (torch.rand((len(idx), 1, 1, 1), generator=gen) - 0.5)
            shift = 0.2 * (torch.rand((len(idx), 1, 1, 1), generator=gen) - 0.5)
            xb = xb * scale + shift
            loss = loss_fn(net(xb).flatten(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history.append(float(loss.detach()))
            done = it + 1
            advance()
            if deadline is not None and time.monotonic() > deadline:
                log.info("slice classifier: time budget reached after %d iterations", done)
                break
    net.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(net(x[i : i + 256]).flatten()) for i in range(0, len(x), 256)])
    accuracy = float(((probs >= cfg.threshold) == (y > 0.5)).float().mean())
    seconds = time.monotonic() - t0
    meta = {
        "schema_version": SCHEMA_VERSION,
        "network": "monai.networks.nets.Classifier",
        "in_channels": int(x.shape[1]),
        "slab_slices": plan.slab_slices,
        "slab_step": plan.slab_step,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "training": {
            "iterations": done,
            "seconds": round(seconds, 2),
            "slices": len(y),
            "slices_with_foreground": len(positive),
            "train_accuracy": round(accuracy, 4),
        },
    }
    weights = out / WEIGHTS_FILE
    with atomic_file(weights, overwrite=True) as tmp:
        torch.save(net.state_dict(), tmp)
    write_text_atomic(out / META_FILE, json.dumps(meta, indent=2) + "\n", overwrite=True)
    return SliceClassifierResult(done, seconds, len(y), len(positive), accuracy, out, history)


class SliceFilter:
    """A trained classifier loaded from a model folder; judges slices of a preprocessed case."""

    def __init__(self, folder: str | Path, *, device: torch.device | str = "cpu"):
        folder = Path(folder)
        meta_path = folder / META_FILE
        meta = load_json(meta_path)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise InputError(
                meta_path,
                "has an unsupported slice classifier schema version",
                expected=str(SCHEMA_VERSION),
                found=repr(meta.get("schema_version")),
            )
        self.config = from_dict(SliceClassifierConfig, meta["config"], str(meta_path))
        self.slab = int(meta["slab_slices"])
        self.slab_step = int(meta.get("slab_step", 1))  # absent before slab steps existed
        self.device = torch.device(device)
        self.net = build_network(int(meta["in_channels"]), self.config)
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.to(self.device).eval()

    @classmethod
    def from_model_folder(
        cls, folder: str | Path, *, device: torch.device | str = "cpu"
    ) -> SliceFilter | None:
        """The folder's classifier, or None when the model has none."""
        if not (Path(folder) / META_FILE).is_file():
            return None
        return cls(folder, device=device)

    @torch.no_grad()
    def foreground_probability(self, image: np.ndarray) -> np.ndarray:
        """(C, Z, Y, X) preprocessed image -> (Z,) probability that each slice holds foreground."""
        x = slice_inputs(image, self.slab, self.config.input_size, self.slab_step)
        out = [
            torch.sigmoid(self.net(x[i : i + 64].to(self.device)).flatten()).cpu()
            for i in range(0, len(x), 64)
        ]
        return torch.cat(out).numpy().astype(np.float64)

    def empty_slices(self, image: np.ndarray) -> np.ndarray:
        """(Z,) bool: slices judged empty (foreground probability below the threshold)."""
        return self.foreground_probability(image) < self.config.threshold


def suppress_slices(probabilities: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Set the class probabilities (K, Z, Y, X) of the ``empty`` slices to certain background."""
    probs = np.asarray(probabilities)
    mask = np.asarray(empty, dtype=bool)
    if probs.ndim != 4 or mask.shape != (probs.shape[1],):
        raise InputError(
            None,
            "slice suppression needs (K, Z, Y, X) probabilities and one flag per slice",
            found=f"probabilities {probs.shape}, flags {mask.shape}",
        )
    out = probs.copy()
    out[:, mask] = 0.0
    out[0, mask] = 1.0
    return out
