"""Plans are data: how a dataset is resampled, normalised, cut into patches and learned.

A :class:`Plan` is a frozen dataclass saved as versioned JSON next to the dataset and
inside every model folder. Training writes it, inference reads it; nothing re-derives it.
Loading rejects unknown keys and wrong types (see :mod:`medseg.config`).

``plan_from_fingerprint`` derives a default plan with rules in the spirit of nnU-Net:

* target spacing: the median spacing; when the data are anisotropic (largest median
  spacing > 3x the smallest) the coarse axis uses the 10th percentile instead, so thin-
  slice cases are not thrown away;
* patch size: the median resampled shape, shrunk along its largest axis (in mm) until it
  fits a voxel budget, then rounded to what the network's pooling needs;
* pooling: an axis is halved only while its spacing is within 2x of the finest axis
  (thick slices are not pooled until in-plane has caught up) and it stays >= 4 voxels;
* normalisation: CT channels are clipped to the foreground [0.5, 99.5] percentiles and
  z-scored with dataset statistics; other modalities (MR...) are z-scored per case.

Every field can be overridden (CLI options, a JSON config file).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medseg.config import from_dict, load_json, replace_from_overrides, to_dict
from medseg.errors import ConfigError
from medseg.io.atomic import write_text_atomic
from medseg.preprocessing.fingerprint import Fingerprint

log = logging.getLogger(__name__)

PLAN_SCHEMA_VERSION = 1
ANISOTROPY_RATIO = 3.0
Configuration = Literal["2d", "2.5d", "3d"]

# Voxel budgets for a training patch (per sample). The 3D default is the exercise's
# 21 x 128 x 128 input; 2D patches are one slice. Both fit comfortably on a CPU.
DEFAULT_PATCH_BUDGET = {"3d": 21 * 128 * 128, "2d": 256 * 256, "2.5d": 256 * 256}
DEFAULT_BATCH = {"3d": 2, "2d": 12, "2.5d": 12}


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalised.

    ``ct``: clip to [clip_low, clip_high] then (x - mean) / std with dataset statistics.
    ``zscore``: per-case (x - mean) / std, over the non-zero mask when ``use_nonzero_mask``.
    ``none``: values are used as they are.
    """

    scheme: Literal["ct", "zscore", "none"]
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None
    use_nonzero_mask: bool = False


@dataclass(frozen=True)
class NetworkPlan:
    """Architecture of the network; ``pooling`` and ``kernels`` are (z, y, x) per level."""

    name: str = "unet"
    base_features: int = 16
    max_features: int = 256
    pooling: tuple[tuple[int, int, int], ...] = ()
    kernels: tuple[tuple[int, int, int], ...] = ()
    norm: Literal["instance", "batch", "group"] = "instance"
    deep_supervision: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    schema_version: int
    dataset_name: str
    configuration: Configuration
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    normalization: tuple[ChannelNormalization, ...]
    network: NetworkPlan
    slab_slices: int = 1
    slab_step: int = 1
    keep_native_slices: bool = False
    crop_to_nonzero: bool = True
    image_interpolation: Literal["linear", "bspline"] = "linear"
    label_interpolation: Literal["nearest", "onehot-linear"] = "nearest"
    foreground_fraction: float = 0.33
    median_shape: tuple[int, int, int] = (0, 0, 0)
    # Region-based training (medseg.data.regions): one sigmoid output per region instead of
    # a softmax over ``labels``. Written to JSON only when declared, so plans without
    # regions keep their text (and their preprocessing cache key).
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    regions_class_order: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.schema_version != PLAN_SCHEMA_VERSION:
            raise ConfigError(
                f"plan schema_version {self.schema_version} is not supported (expected {PLAN_SCHEMA_VERSION})"
            )
        if len(self.normalization) != len(self.channel_names):
            raise ConfigError(
                f"plan has {len(self.channel_names)} channels but {len(self.normalization)} normalisation entries"
            )
        if any(s <= 0 for s in self.target_spacing):
            raise ConfigError(f"target_spacing must be positive, found {self.target_spacing}")
        if any(p < 1 for p in self.patch_size) or self.batch_size < 1:
            raise ConfigError(
                f"patch_size and batch_size must be positive, found {self.patch_size}, {self.batch_size}"
            )
        if self.configuration in ("2d", "2.5d") and self.patch_size[0] != 1:
            raise ConfigError(
                f"a {self.configuration} plan needs patch_size (1, Y, X), found {self.patch_size}"
            )
        if self.slab_slices < 1 or self.slab_slices % 2 == 0:
            raise ConfigError(f"slab_slices must be odd and >= 1, found {self.slab_slices}")
        if self.configuration != "2.5d" and self.slab_slices != 1:
            raise ConfigError("slab_slices > 1 needs configuration '2.5d'")
        if self.slab_step < 1:
            raise ConfigError(f"slab_step must be >= 1, found {self.slab_step}")
        if self.slab_step != 1 and self.slab_slices == 1:
            raise ConfigError(
                f"slab_step {self.slab_step} needs a 2.5D slab of several slices (slab_slices > 1)"
            )
        if 0 in self.labels.values() and sorted(self.labels.values()) != list(range(len(self.labels))):
            raise ConfigError(f"label values must be 0..K without gaps, found {sorted(self.labels.values())}")
        if self.regions or self.regions_class_order:
            from medseg.data.regions import validate_regions

            try:
                validate_regions(
                    {k: list(v) for k, v in self.regions.items()},
                    self.labels,
                    list(self.regions_class_order) if self.regions_class_order else None,
                    # dataset.json is checked for this; a plan (and the model trained
                    # with it) from before that check must still load.
                    cover_labels=False,
                )
            except ValueError as exc:
                raise ConfigError(f"plan regions: {exc}") from None
        mult = pooling_product(self.network.pooling)
        bad = [p for p, m in zip(self.patch_size, mult, strict=True) if p % m]
        if self.network.name == "unet" and bad:
            raise ConfigError(
                f"patch_size {self.patch_size} is not divisible by the network's pooling {mult} (z, y, x)"
            )

    # Derived -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """Network output channels: one per region (sigmoid), else one per label (softmax)."""
        return len(self.regions) if self.regions else len(self.labels)

    @property
    def output_names(self) -> list[str]:
        """Names of the scored outputs: the regions, else the foreground labels by value."""
        if self.regions:
            return list(self.regions)
        return [n for n, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v != 0]

    @property
    def spatial_dims(self) -> int:
        return 3 if self.configuration == "3d" else 2

    @property
    def in_channels(self) -> int:
        """Network input channels: image channels x neighbouring slices for 2.5D."""
        return len(self.channel_names) * self.slab_slices

    @property
    def label_names(self) -> dict[int, str]:
        return {v: k for k, v in self.labels.items()}

    # Persistence -----------------------------------------------------------------
    def to_json(self) -> str:
        data = to_dict(self)
        if self.slab_step == 1:
            # Written only when used: a plan without it reads in earlier medseg versions (which
            # reject unknown keys) and keeps its preprocessing cache key (a hash of this text).
            del data["slab_step"]
        if not self.regions:
            del data["regions"], data["regions_class_order"]
        return json.dumps(data, indent=2) + "\n"

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        return write_text_atomic(path, self.to_json(), overwrite=overwrite)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "plan") -> Plan:
        return from_dict(cls, data, where=where)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.from_mapping(load_json(path), where=str(path))
        except ConfigError as exc:
            if str(path) in str(exc):
                raise
            raise ConfigError(f"{path}: {exc}") from None  # a field check that did not name the file

    def with_overrides(self, overrides: Mapping[str, Any]) -> Plan:
        """A copy with fields replaced, type-checked.

        When the patch size or spacing changes and the network's pooling and kernels are not
        given (other network settings may be: ``"network": {"options": ...}``, ``plan
        --network``), the pooling is re-derived: a user's patch is kept exactly (an axis is
        pooled only while it divides evenly); a changed spacing rounds the patch to the new
        pooling.
        """
        data = dict(overrides)
        network = data.get("network")
        network_given = network is not None and (
            not isinstance(network, Mapping) or "pooling" in network or "kernels" in network
        )
        if ("patch_size" in data or "target_spacing" in data) and not network_given:
            try:
                patch = tuple(int(v) for v in data.get("patch_size", self.patch_size))
                spacing = tuple(float(v) for v in data.get("target_spacing", self.target_spacing))
                dims = 3 if data.get("configuration", self.configuration) == "3d" else 2
                valid = len(patch) == 3 and len(spacing) == 3 and min(patch) > 0 and min(spacing) > 0
            except (TypeError, ValueError):
                valid = False  # the strict conversion below reports the bad value
            if valid:
                pooling, kernels = pooling_schedule(patch, spacing, spatial_dims=dims)
                if "patch_size" in data:
                    full = pooling_product(pooling)
                    pooling, kernels = _pooling_dividing(patch, pooling, kernels)
                    _warn_lost_pooling(patch, full, pooling_product(pooling))
                else:
                    data["patch_size"] = list(round_patch_to_pooling(patch, pooling))
                data["network"] = {
                    **(dict(network) if isinstance(network, Mapping) else {}),
                    "pooling": [list(p) for p in pooling],
                    "kernels": [list(k) for k in kernels],
                }
        if "target_spacing" in data and "median_shape" not in data and all(self.median_shape):
            try:
                new_spacing = np.asarray([float(v) for v in data["target_spacing"]])
                if np.any(new_spacing <= 0):
                    raise ValueError("non-positive spacing")  # reported by the field check below
                scale = np.asarray(self.target_spacing) / new_spacing
                data["median_shape"] = [
                    max(1, round(m * f)) for m, f in zip(self.median_shape, scale, strict=True)
                ]
            except (TypeError, ValueError, ZeroDivisionError, OverflowError):
                pass  # the strict conversion below reports the bad spacing
        return replace_from_overrides(self, data, where="plan override")


# ------------------------------------------------------------------ pure planning
def pooling_product(pooling: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    out = np.ones(3, int)
    for p in pooling:
        out *= np.asarray(p, int)
    return (int(out[0]), int(out[1]), int(out[2]))


def pooling_schedule(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    *,
    spatial_dims: int = 3,
    max_depth: int = 5,
    min_size: int = 4,
) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
    """Per-level pooling factors and conv kernels (z, y, x) for an anisotropic grid.

    nnU-Net's rule: at each level an axis is pooled when its current spacing is less
    than twice the finest current spacing (thick slices wait until in-plane has caught
    up) and pooling leaves at least ``min_size`` voxels (sizes tracked as patch / 2**k);
    the conv kernel is 3 along an axis within 2x of the finest spacing and 1 along a
    thick axis. For 2D plans the z axis is never pooled and kernels are 1 along z.
    One kernel per level: ``len(kernels) == len(pooling) + 1``.
    """
    size = np.asarray(patch_size, dtype=float)
    sp = np.asarray(spacing, dtype=float).copy()
    active = np.array([spatial_dims == 3, True, True])
    pools: list[tuple[int, int, int]] = []
    kernels: list[tuple[int, int, int]] = []

    def kernel() -> tuple[int, int, int]:
        finest = sp[active].min()
        return tuple(3 if (a and s / finest < 2.0) else 1 for a, s in zip(active, sp, strict=True))  # type: ignore[return-value]

    for _ in range(max_depth):
        kernels.append(kernel())
        finest = sp[active].min()
        factors = np.where(active & (sp / finest < 2.0) & (size / 2 >= min_size), 2, 1)
        if not (factors == 2).any():
            kernels.pop()
            break
        pools.append(tuple(int(f) for f in factors))  # type: ignore[arg-type]
        size = size / factors
        sp = sp * factors
    kernels.append(kernel())
    return tuple(pools), tuple(kernels)


def round_patch_to_pooling(patch: Sequence[int], pooling: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    mult = pooling_product(pooling)
    return tuple(max(m, round(p / m) * m) for p, m in zip(patch, mult, strict=True))  # type: ignore[return-value]


def _warn_lost_pooling(patch: Sequence[int], full: Sequence[int], kept: Sequence[int]) -> None:
    """Say when a user's patch size costs the network pooling levels (127 does not halve:
    a U-Net without downsampling along that axis, with a receptive field of a few voxels)."""
    for axis, (p, f, k) in enumerate(zip(patch, full, kept, strict=True)):
        if k < f:
            name = "zyx"[axis]
            better = max(f, round(p / f) * f)
            log.warning(
                "patch %s = %d allows %d of the %d pooling levels the spacing gives along %s: "
                "a multiple of %d (e.g. %d) keeps them all",
                name,
                p,
                int(np.log2(k)),
                int(np.log2(f)),
                name,
                f,
                better,
            )


def _pooling_dividing(
    patch: Sequence[int], pooling: Sequence[tuple[int, int, int]], kernels: Sequence[tuple[int, int, int]]
) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
    """Keep a level's pooling along an axis only while the patch divides evenly there."""
    out: list[tuple[int, int, int]] = []
    cur = np.asarray(patch, int)
    for p in pooling:
        f = tuple(2 if (p[a] == 2 and cur[a] % 2 == 0) else 1 for a in range(3))
        if f == (1, 1, 1):
            break
        out.append(f)  # type: ignore[arg-type]
        cur = cur // np.asarray(f)
    return tuple(out), tuple(kernels[: len(out) + 1])


def target_spacing_from(spacings: np.ndarray) -> tuple[float, float, float]:
    median = np.median(spacings, axis=0)
    target = median.copy()
    worst = int(np.argmax(median))
    others = [a for a in range(3) if a != worst]
    if median[worst] > ANISOTROPY_RATIO * max(median[others]):
        # Anisotropic: nnU-Net's rule, the 10th percentile of the coarse axis, but never
        # finer than the in-plane target.
        target[worst] = max(float(np.percentile(spacings[:, worst], 10)), float(max(median[others])))
    return (float(target[0]), float(target[1]), float(target[2]))


def default_normalization(fingerprint: Fingerprint) -> tuple[ChannelNormalization, ...]:
    out = []
    for name, stats in zip(fingerprint.channel_names, fingerprint.channels, strict=True):
        if name.strip().lower() == "ct":
            out.append(
                ChannelNormalization(
                    scheme="ct",
                    clip_low=stats.percentile_00_5,
                    clip_high=stats.percentile_99_5,
                    mean=stats.mean,
                    std=max(stats.std, 1e-8),
                )
            )
        else:
            out.append(ChannelNormalization(scheme="zscore"))
    return tuple(out)


# Channel names (dataset.json "channel_names" / "modality") that name an MR contrast.
_MR_CHANNELS = re.compile(r"^(mri?|t1\w*|t2\w*|flair|adc|dwi|hbv|pd\w*|swi|dce|b\d+)$")
_PET_CHANNELS = {"pet", "pt", "suv"}


def expected_modality(plan: Plan) -> tuple[str, str] | None:
    """The DICOM Modality the plan's model was trained on, with why it is known, or None.

    Read from the first channel (a DICOM input is one series): normalised as ``ct``, or named
    "CT", it is CT; a name such as "MRI", "T2" or "ADC" is MR; "PET" is PT. Any other name
    says nothing, and None lets the caller skip the check.
    """
    name = plan.channel_names[0] if plan.channel_names else ""
    if plan.normalization and plan.normalization[0].scheme == "ct":
        return "CT", f"its plan normalises channel '{name}' as CT (Hounsfield units)"
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.strip().lower()) if t]
    if "ct" in tokens:
        return "CT", f"its channel is named '{name}'"
    if any(_MR_CHANNELS.match(t) for t in tokens):
        return "MR", f"its channel is named '{name}'"
    if any(t in _PET_CHANNELS for t in tokens):
        return "PT", f"its channel is named '{name}'"
    return None


def _fit_patch(median_shape: np.ndarray, spacing: Sequence[float], budget: int, dims: int) -> np.ndarray:
    patch = median_shape.astype(float).copy()
    if dims == 2:
        patch[0] = 1
    # Shrink the axis that is longest in mm (relative to the others) until the budget fits.
    while np.prod(patch) > budget:
        mm = patch * np.asarray(spacing)
        if dims == 2:
            mm[0] = -1
        axis = int(np.argmax(mm))
        patch[axis] = max(1.0, np.floor(patch[axis] * 0.9))
    return np.maximum(1, np.round(patch)).astype(int)


def plan_from_fingerprint(
    fingerprint: Fingerprint,
    configuration: Configuration = "3d",
    *,
    patch_budget: int | None = None,
    slab_slices: int = 5,
    slab_step: int = 1,
    regions: Mapping[str, Sequence[int]] | None = None,
    regions_class_order: Sequence[int] = (),
) -> Plan:
    """Derive a default plan for one configuration from dataset statistics.

    ``regions`` / ``regions_class_order``: the dataset's declared regions (region-based
    training, see medseg.data.regions), carried so the model describes itself.
    """
    if configuration not in ("2d", "2.5d", "3d"):
        raise ConfigError(f"configuration must be '2d', '2.5d' or '3d', found {configuration!r}")
    spacings = fingerprint.spacings
    dims = 3 if configuration == "3d" else 2
    target = target_spacing_from(spacings)
    keep_native = False
    if dims == 2:
        # 2D / 2.5D models see native slices: resample in-plane only.
        keep_native = True
        target = (float(np.median(spacings[:, 0])), target[1], target[2])
    median_cropped = np.median(fingerprint.cropped_shapes * spacings / np.asarray(target), axis=0)
    median_shape = np.maximum(1, np.round(median_cropped)).astype(int)
    budget = patch_budget or DEFAULT_PATCH_BUDGET[configuration]
    fitted = [int(v) for v in _fit_patch(median_shape, target, budget, dims)]
    pooling, kernels = pooling_schedule(fitted, target, spatial_dims=dims)
    patch = np.array(round_patch_to_pooling(fitted, pooling))
    if dims == 3:
        # Rounding up can overshoot the budget; take one pooling step off the largest axis.
        mult = np.asarray(pooling_product(pooling))
        while np.prod(patch) > budget * 1.25 and np.any(patch > mult):
            axis = int(np.argmax(patch * np.asarray(target) * (patch > mult)))
            patch[axis] -= mult[axis]
    n_fg = len([v for v in fingerprint.labels.values() if v != 0])
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        dataset_name=fingerprint.dataset_name,
        configuration=configuration,
        channel_names=fingerprint.channel_names,
        labels=dict(sorted(fingerprint.labels.items(), key=lambda kv: kv[1])),
        target_spacing=target,
        patch_size=(int(patch[0]), int(patch[1]), int(patch[2])),
        batch_size=DEFAULT_BATCH[configuration],
        normalization=default_normalization(fingerprint),
        network=NetworkPlan(
            name="unet",
            base_features=16 if dims == 3 else 32,
            max_features=256 if dims == 3 else 512,
            pooling=pooling,
            kernels=kernels,
        ),
        slab_slices=slab_slices if configuration == "2.5d" else 1,
        slab_step=slab_step if configuration == "2.5d" else 1,
        keep_native_slices=keep_native,
        foreground_fraction=0.33 if n_fg else 0.0,
        median_shape=(int(median_shape[0]), int(median_shape[1]), int(median_shape[2])),
        regions={str(k): tuple(int(v) for v in vals) for k, vals in (regions or {}).items()},
        regions_class_order=tuple(int(v) for v in regions_class_order),
    )
