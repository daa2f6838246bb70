"""Segmentation losses: the seed's softmax focal loss, soft Dice, Dice + CE, Dice + focal.

Every loss takes logits ``(B, C, *spatial)`` (C >= 2 classes, background = 0) and an
integer label map ``(B, *spatial)`` or ``(B, 1, *spatial)``.

Focal loss (seed 000, Lin et al. 2017 with a softmax), per voxel::

    L = -sum_c I_c (1 - softmax(o)_c)^gamma alpha_c ln softmax(o)_c

with ``I`` the one-hot label, so only the true class's term survives. Written by hand
(a few lines on ``log_softmax``) because MONAI's ``FocalLoss(use_softmax=True)`` uses
other conventions; it is equal to ours when (tested in tests/training/test_losses.py):

- reduction "mean": MONAI averages over classes as well as voxels, so
  ``ours == C * monai``;
- scalar alpha: ours multiplies every class by alpha (the seed's formula); MONAI's
  scalar alpha means ``[1 - alpha, alpha, ..., alpha]`` (background gets 1 - alpha).
  Per-class alpha sequences mean the same in both;
- ``include_background=False``: ours keeps the softmax over all classes and drops the
  background voxels' term; MONAI drops channel 0 *before* the softmax (a softmax over
  foreground channels only) and ignores a scalar alpha. Ours equals MONAI with
  ``include_background=True`` and ``alpha=[0, 1, ..., 1]``.

MONAI's ``DiceFocalLoss`` uses a *sigmoid* focal term, so Dice + focal here is MONAI's
``DiceLoss`` plus our softmax focal loss. Soft Dice and Dice + CE are MONAI's
``DiceLoss`` / ``DiceCELoss`` (softmax, one-hot labels), which match their definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError

REDUCTIONS = ("mean", "sum", "none")


def label_map(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Validate and return the labels as a long tensor ``(B, *spatial)``."""
    if logits.ndim < 3:
        raise ValueError(f"logits must be (batch, classes, *spatial), found shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"softmax losses need >= 2 classes (background + foreground), found {logits.shape[1]}"
        )
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"labels of shape {tuple(target.shape)} do not match logits {tuple(logits.shape)}; "
            "expected (batch, *spatial) or (batch, 1, *spatial)"
        )
    if target.is_floating_point():
        target = target.round()
    target = target.long()
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[1]):
        raise ValueError(
            f"label values must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} classes, "
            f"found [{int(valid.min())}, {int(valid.max())}]"
        )
    return target


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, found {reduction!r}")
    return reduction


class SoftmaxFocalLoss(nn.Module):
    """Softmax focal loss of seed 000 (see the module docstring for the formula).

    Args:
        gamma: focusing exponent (>= 0); 0 gives alpha-weighted cross-entropy.
        alpha: None (1), a scalar multiplying every class, or one weight per class.
        include_background: False drops the term of background (label 0) voxels; the
            softmax still runs over all classes and "mean" still divides by all voxels.
        reduction: "mean" over voxels (batch and space), "sum", or "none" (per-voxel
            loss of shape ``(B, *spatial)``).
        ignore_index: label value whose voxels contribute nothing and are not counted.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        include_background: bool = True,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal loss gamma must be >= 0, found {gamma}")
        self.gamma = float(gamma)
        self.reduction = _check_reduction(reduction)
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.scalar_alpha: float | None = None
        self.class_alpha: torch.Tensor | None
        if alpha is None or isinstance(alpha, int | float):
            self.scalar_alpha = None if alpha is None else float(alpha)
            self.register_buffer("class_alpha", None)
        else:
            values = torch.as_tensor([float(a) for a in alpha], dtype=torch.float32)
            if values.ndim != 1 or (values < 0).any():
                raise ConfigError(f"focal loss alpha must be non-negative per-class weights, found {alpha}")
            self.register_buffer("class_alpha", values)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = label_map(logits, target, self.ignore_index)
        keep: torch.Tensor | None = None
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            labels = torch.where(keep, labels, torch.zeros_like(labels))
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)  # ln softmax(o) of the true class
        loss = -((1.0 - log_pt.exp()).clamp_min(0.0) ** self.gamma) * log_pt
        if self.class_alpha is not None:
            if self.class_alpha.numel() != logits.shape[1]:
                raise ValueError(
                    f"focal loss has {self.class_alpha.numel()} alpha values for {logits.shape[1]} classes"
                )
            loss = loss * self.class_alpha.to(loss.device)[labels]
        elif self.scalar_alpha is not None:
            loss = loss * self.scalar_alpha
        if not self.include_background:
            loss = loss * (labels != 0)
        if keep is not None:
            loss = loss * keep
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        count = loss.numel() if keep is None else keep.sum().clamp_min(1)
        return loss.sum() / count


class SoftDiceLoss(nn.Module):
    """1 - soft Dice of softmax(logits) and one-hot labels (MONAI ``DiceLoss``).

    Per class: ``1 - (2 sum(p g) + smooth_nr) / (sum p + sum g + smooth_dr)``, summed
    over each sample's voxels (``batch=False``, then averaged over samples and classes)
    or over the whole batch (``batch=True``, nnU-Net's batch Dice).
    """

    def __init__(
        self,
        include_background: bool = False,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
    ):
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=batch,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            reduction=_check_reduction(reduction),
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = label_map(logits, target)
        out: torch.Tensor = self.dice(logits.float(), labels.unsqueeze(1))
        return out


def border_weights(
    labels: torch.Tensor, border_class: int, w0: float, sigma: float, ignore_index: int | None = None
) -> torch.Tensor:
    """``1 +`` the U-Net paper's border weight map of each sample of ``labels`` ``(B, *spatial)``.

    Computed on the CPU from the (augmented) label patch itself, so no weight map has to be
    stored or carried through the sampler and the augmentation; see
    ``medseg.training.border_weight``. ``sigma`` is in voxels of the patch. Spatial axes of
    size 1 (a 2D slice stored as ``1 x H x W``) are dropped before the map is computed. With
    deep supervision each coarser output's map is computed from its own (nearest-downsampled)
    labels, with ``sigma`` in its own, larger voxels. The maps cost the training process about
    13 ms of CPU per 256 x 256 ISBI 2012 patch (136 cells in a 512 x 512 image: 50 ms).
    """
    from medseg.training.border_weight import border_weight_map

    arrays = labels.detach().cpu().numpy()
    maps = []
    for sample in arrays:
        squeezed = sample.reshape([n for n in sample.shape if n > 1] or [1])
        if ignore_index is not None:  # ignored voxels count as the separating class (their loss is 0)
            squeezed = np.where(squeezed == ignore_index, border_class, squeezed)
        if squeezed.ndim in (2, 3):
            extra = border_weight_map(squeezed, border_class=border_class, w0=w0, sigma=sigma)
        else:
            extra = np.zeros(squeezed.shape, dtype=np.float32)
        maps.append(extra.reshape(sample.shape))
    return torch.from_numpy(1.0 + np.stack(maps)).to(labels.device)


def _check_border(border_weight: float, border_sigma: float) -> None:
    if border_weight < 0 or border_sigma <= 0:
        raise ConfigError(
            f"border weighting needs border_weight >= 0 and border_sigma > 0 (voxels), "
            f"found border_weight={border_weight}, border_sigma={border_sigma}"
        )


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy (``torch.nn.functional.cross_entropy``) on integer labels.

    ``border_weight`` > 0 multiplies each voxel's term by ``1 +`` the U-Net paper's border
    weight map (``border_weight`` is its ``w0``, ``border_sigma`` its sigma in voxels,
    ``border_class`` the class between objects), computed from each label patch; "mean" then
    divides by the sum of the weights, as ``cross_entropy`` does with class weights.
    """

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        border_weight: float = 0.0,
        border_sigma: float = 5.0,
        border_class: int = 0,
    ):
        super().__init__()
        _check_border(border_weight, border_sigma)
        self.reduction = _check_reduction(reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.border_weight = float(border_weight)
        self.border_sigma = float(border_sigma)
        self.border_class = int(border_class)
        self.weight: torch.Tensor | None
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = label_map(logits, target, self.ignore_index)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        if self.border_weight == 0:
            return F.cross_entropy(
                logits.float(),
                labels,
                weight=self.weight,
                reduction=self.reduction,
                ignore_index=ignore,
                label_smoothing=self.label_smoothing,
            )
        per_voxel = F.cross_entropy(
            logits.float(),
            labels,
            weight=self.weight,
            reduction="none",
            ignore_index=ignore,
            label_smoothing=self.label_smoothing,
        )
        pixel = border_weights(
            labels, self.border_class, self.border_weight, self.border_sigma, self.ignore_index
        )
        weighted = per_voxel * pixel
        if self.reduction == "none":
            return weighted
        if self.reduction == "sum":
            return weighted.sum()
        valid = labels != ignore
        norm = pixel * valid
        if self.weight is not None:
            norm = norm * self.weight.to(logits.device)[labels.clamp(0, logits.shape[1] - 1)]
        return weighted.sum() / norm.sum().clamp_min(1e-12)


class DiceCELoss(nn.Module):
    """``lambda_dice * soft Dice + lambda_ce * cross-entropy`` (MONAI ``DiceCELoss``).

    ``border_weight`` > 0 weights the cross-entropy term with the U-Net paper's border weight
    map (see ``CrossEntropyLoss``); the Dice term is unchanged. With ``border_weight`` 0 this
    is MONAI's ``DiceCELoss`` itself.
    """

    def __init__(
        self,
        include_background: bool = False,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        ce_weight: Sequence[float] | None = None,
        border_weight: float = 0.0,
        border_sigma: float = 5.0,
        border_class: int = 0,
    ):
        super().__init__()
        from monai.losses import DiceCELoss as MonaiDiceCELoss

        _check_border(border_weight, border_sigma)
        self.loss = MonaiDiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=batch,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
            weight=None if ce_weight is None else torch.as_tensor(ce_weight, dtype=torch.float32),
        )
        # With border weighting, MONAI's own Dice term (class weights and all) plus a
        # border-weighted cross-entropy; without it, MONAI's DiceCELoss unchanged.
        self.border_ce: CrossEntropyLoss | None = None
        if border_weight > 0:
            self.border_ce = CrossEntropyLoss(
                ce_weight, border_weight=border_weight, border_sigma=border_sigma, border_class=border_class
            )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = label_map(logits, target)
        if self.border_ce is not None:
            dice: torch.Tensor = self.loss.dice(logits.float(), labels.unsqueeze(1))
            ce = self.border_ce(logits, labels)
            result: torch.Tensor = self.loss.lambda_dice * dice + self.loss.lambda_ce * ce
            return result
        out: torch.Tensor = self.loss(logits.float(), labels.unsqueeze(1))
        return out


class DiceFocalLoss(nn.Module):
    """``lambda_dice * soft Dice + lambda_focal * softmax focal loss`` (seed 000's focal)."""

    def __init__(
        self,
        include_background: bool = False,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        focal_include_background: bool = True,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
    ):
        super().__init__()
        if lambda_dice < 0 or lambda_focal < 0:
            raise ConfigError(
                f"loss weights must be >= 0, found lambda_dice={lambda_dice}, lambda_focal={lambda_focal}"
            )
        self.dice = SoftDiceLoss(include_background, batch, smooth_nr, smooth_dr)
        self.focal = SoftmaxFocalLoss(gamma, alpha, include_background=focal_include_background)
        self.lambda_dice = lambda_dice
        self.lambda_focal = lambda_focal

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.lambda_dice * self.dice(logits, target) + self.lambda_focal * self.focal(
            logits, target
        )
        return result


class RegionLoss(nn.Module):
    """Loss of a region-based network: one sigmoid output per region (medseg.data.regions).

    Takes logits ``(B, R, *spatial)`` and the integer label map; the target is built on the
    fly as R binary channels (a voxel's label value belongs to region r or not), so the
    label patch is augmented and downsampled as a label map and never interpolated. The
    loss is MONAI's, with a sigmoid and every channel counted (no background channel):

    - ``dice_ce``: ``lambda_dice * DiceLoss(sigmoid) + lambda_ce * BCEWithLogits`` (nnU-Net's
      region loss; MONAI's DiceCELoss takes a softmax cross-entropy for several channels);
    - ``dice_focal``: MONAI ``DiceFocalLoss(sigmoid=True)`` (a sigmoid focal term);
    - ``dice``: ``DiceLoss(sigmoid=True)``; ``ce``: ``BCEWithLogitsLoss``;
      ``focal``: MONAI ``FocalLoss`` (sigmoid).
    """

    OPTIONS: ClassVar[dict[str, set[str]]] = {
        "dice_ce": {"batch", "smooth_nr", "smooth_dr", "lambda_dice", "lambda_ce"},
        "dice_focal": {"batch", "smooth_nr", "smooth_dr", "lambda_dice", "lambda_focal", "gamma", "alpha"},
        "dice": {"batch", "smooth_nr", "smooth_dr"},
        "ce": set(),
        "focal": {"gamma", "alpha"},
    }

    def __init__(self, name: str, regions: Sequence[Sequence[int]], **options: Any):
        super().__init__()
        from monai.losses import DiceFocalLoss as MonaiDiceFocalLoss
        from monai.losses import DiceLoss, FocalLoss

        if name not in self.OPTIONS:
            raise ConfigError(f"unknown loss {name!r}; expected one of {', '.join(sorted(self.OPTIONS))}")
        unknown = sorted(set(options) - self.OPTIONS[name])
        if unknown:
            allowed = ", ".join(sorted(self.OPTIONS[name])) or "none"
            raise ConfigError(
                f"loss {name!r} of a region-based model does not take {', '.join(unknown)} (it takes: {allowed})"
            )
        if not regions:
            raise ConfigError("a region loss needs at least one region")
        self.regions = [tuple(int(v) for v in r) for r in regions]
        self.name = name
        dice_kw = {k: options[k] for k in ("batch", "smooth_nr", "smooth_dr") if k in options}
        self.lambda_dice = float(options.get("lambda_dice", 1.0))
        self.lambda_ce = float(options.get("lambda_ce", 1.0))
        if self.lambda_dice < 0 or self.lambda_ce < 0:
            raise ConfigError(f"loss weights must be >= 0, found {self.lambda_dice}, {self.lambda_ce}")
        self.dice: nn.Module | None = None
        self.bce: nn.Module | None = None
        self.other: nn.Module | None = None
        if name in ("dice_ce", "dice"):
            self.dice = DiceLoss(include_background=True, sigmoid=True, **dice_kw)
        if name in ("dice_ce", "ce"):
            self.bce = nn.BCEWithLogitsLoss()
        if name == "dice_focal":
            focal_kw = {
                k: options[k] for k in ("gamma", "alpha", "lambda_dice", "lambda_focal") if k in options
            }
            self.other = MonaiDiceFocalLoss(include_background=True, sigmoid=True, **dice_kw, **focal_kw)
        if name == "focal":
            self.other = FocalLoss(include_background=True, use_softmax=False, **options)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from medseg.data.regions import region_targets

        if logits.ndim < 3 or logits.shape[1] != len(self.regions):
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} do not have one channel per region ({len(self.regions)})"
            )
        truth = region_targets(target, self.regions)
        if truth.shape != logits.shape:
            raise ValueError(
                f"labels of shape {tuple(target.shape)} do not match logits {tuple(logits.shape)}"
            )
        x = logits.float()
        if self.other is not None:
            out: torch.Tensor = self.other(x, truth)
            return out
        total = torch.zeros((), device=x.device)
        if self.dice is not None:
            total = total + self.lambda_dice * self.dice(x, truth)
        if self.bce is not None:
            total = total + self.lambda_ce * self.bce(x, truth)
        return total


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "focal": SoftmaxFocalLoss,
    "dice": SoftDiceLoss,
    "ce": CrossEntropyLoss,
    "dice_ce": DiceCELoss,
    "dice_focal": DiceFocalLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss by name; unknown names or arguments raise ``ConfigError``."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; expected one of {', '.join(sorted(LOSSES))}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"loss {name!r}: {exc}") from exc


def build_region_loss(name: str, regions: Sequence[Sequence[int]], **kwargs: Any) -> nn.Module:
    """The sigmoid counterpart of :func:`build_loss` for a region-based model (see RegionLoss)."""
    try:
        return RegionLoss(name, regions, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"loss {name!r}: {exc}") from exc


__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "RegionLoss",
    "SoftDiceLoss",
    "SoftmaxFocalLoss",
    "border_weights",
    "build_loss",
    "build_region_loss",
    "label_map",
]
