"""Losses: the seed's focal loss against hand-computed values, MONAI equivalences, registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss as MonaiDiceFocalLoss
from monai.losses import DiceLoss as MonaiDiceLoss
from monai.losses import FocalLoss as MonaiFocalLoss

from medseg.errors import ConfigError
from medseg.training.losses import (
    LOSSES,
    CrossEntropyLoss,
    DiceCELoss,
    DiceFocalLoss,
    SoftDiceLoss,
    SoftmaxFocalLoss,
    build_loss,
)

LN3 = math.log(3.0)


def two_voxels() -> tuple[torch.Tensor, torch.Tensor]:
    """Both voxels have softmax [1/4, 3/4]; the first is labelled 1, the second 0."""
    logits = torch.tensor([[[[0.0, 0.0]], [[LN3, LN3]]]])  # (B=1, C=2, 1, 2)
    labels = torch.tensor([[[1, 0]]])  # (B=1, 1, 2)
    return logits, labels


# Hand values: label 1 -> p_t = 3/4, (1/4)^2 * ln(4/3); label 0 -> p_t = 1/4, (3/4)^2 * ln 4.
L_FG = 0.0625 * math.log(4 / 3)  # 0.017980
L_BG = 0.5625 * math.log(4.0)  # 0.779791


def test_focal_matches_hand_values_for_each_reduction() -> None:
    logits, labels = two_voxels()
    per_voxel = SoftmaxFocalLoss(gamma=2.0, reduction="none")(logits, labels)
    assert per_voxel.shape == (1, 1, 2)
    assert per_voxel[0, 0].tolist() == pytest.approx([L_FG, L_BG], rel=1e-6)
    assert SoftmaxFocalLoss(gamma=2.0)(logits, labels).item() == pytest.approx((L_FG + L_BG) / 2, rel=1e-6)
    assert SoftmaxFocalLoss(gamma=2.0, reduction="sum")(logits, labels).item() == pytest.approx(
        L_FG + L_BG, rel=1e-6
    )


def test_focal_three_classes_gamma_and_alpha_by_hand() -> None:
    # softmax of [ln 1, ln 2, ln 5] = [1/8, 2/8, 5/8]; label 2 -> p_t = 5/8.
    logits = torch.log(torch.tensor([1.0, 2.0, 5.0])).view(1, 3, 1)
    labels = torch.tensor([[2]])
    expected = (3 / 8) ** 1.5 * -math.log(5 / 8)
    assert SoftmaxFocalLoss(gamma=1.5)(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # per-class alpha picks the true class's weight; a scalar multiplies every class
    assert SoftmaxFocalLoss(gamma=1.5, alpha=[0.1, 0.2, 0.7])(logits, labels).item() == pytest.approx(
        0.7 * expected, rel=1e-6
    )
    assert SoftmaxFocalLoss(gamma=1.5, alpha=0.25)(logits, labels).item() == pytest.approx(
        0.25 * expected, rel=1e-6
    )


def test_focal_per_class_alpha_on_two_voxels() -> None:
    logits, labels = two_voxels()
    loss = SoftmaxFocalLoss(gamma=2.0, alpha=[0.25, 0.75], reduction="sum")(logits, labels)
    assert loss.item() == pytest.approx(0.75 * L_FG + 0.25 * L_BG, rel=1e-6)


def test_focal_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, 6)
    labels = torch.randint(0, 4, (2, 3, 5, 6))
    ours = SoftmaxFocalLoss(gamma=0.0)(logits, labels)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_focal_without_background_drops_background_terms_but_counts_voxels() -> None:
    logits, labels = two_voxels()
    loss = SoftmaxFocalLoss(gamma=2.0, include_background=False)(logits, labels)
    assert loss.item() == pytest.approx(L_FG / 2, rel=1e-6)


def test_focal_ignore_index_excludes_voxels_from_sum_and_count() -> None:
    logits = torch.zeros(1, 2, 3)
    logits[0, 1] = LN3
    labels = torch.tensor([[1, 0, 255]])
    loss = SoftmaxFocalLoss(gamma=2.0, ignore_index=255)(logits, labels)
    assert loss.item() == pytest.approx((L_FG + L_BG) / 2, rel=1e-6)


def test_focal_is_stable_for_huge_logits() -> None:
    logits = torch.tensor([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]]).permute(1, 0, 2)  # (1, 2, 2)
    labels = torch.tensor([[0, 0]])  # first voxel right, second voxel confidently wrong
    per_voxel = SoftmaxFocalLoss(gamma=2.0, reduction="none")(logits.requires_grad_(), labels)
    assert torch.isfinite(per_voxel).all()
    assert per_voxel[0].tolist() == pytest.approx([0.0, 2000.0])
    per_voxel.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("alpha", [None, [0.2, 0.3, 0.1, 0.4]])
def test_focal_equals_monai_times_classes_with_mean_reduction(alpha: list[float] | None) -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 5, 6, 3)
    labels = torch.randint(0, 4, (2, 1, 5, 6, 3))
    ours = SoftmaxFocalLoss(gamma=2.0, alpha=alpha)(logits, labels)
    monai = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, alpha=alpha)(logits, labels)
    assert ours.item() == pytest.approx(4 * monai.item(), rel=1e-5)
    per_voxel = SoftmaxFocalLoss(gamma=2.0, alpha=alpha, reduction="none")(logits, labels)
    monai_none = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, alpha=alpha, reduction="none")(
        logits, labels
    )
    torch.testing.assert_close(per_voxel, monai_none.sum(dim=1))


def test_focal_alpha_and_background_conventions_versus_monai() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 7, 7)
    labels = torch.randint(0, 3, (2, 1, 7, 7))
    # scalar alpha: ours weights every class, MONAI gives background 1 - alpha
    ours = SoftmaxFocalLoss(alpha=0.25)(logits, labels).item()
    monai_scalar = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, alpha=0.25)(logits, labels).item()
    monai_seq = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, alpha=[0.25] * 3)(logits, labels).item()
    assert ours == pytest.approx(3 * monai_seq, rel=1e-5)
    assert ours != pytest.approx(3 * monai_scalar, rel=1e-3)
    # no background: ours == MONAI with background kept and alpha [0, 1, 1]; MONAI's own
    # include_background=False renormalises the softmax over foreground channels only.
    ours_fg = SoftmaxFocalLoss(include_background=False)(logits, labels).item()
    monai_zero_bg = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, alpha=[0.0, 1.0, 1.0])(logits, labels)
    monai_no_bg = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, include_background=False)(logits, labels)
    assert ours_fg == pytest.approx(3 * monai_zero_bg.item(), rel=1e-5)
    assert ours_fg != pytest.approx(2 * monai_no_bg.item(), rel=1e-3)


def test_losses_reject_bad_labels_and_shapes() -> None:
    logits = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 2\]"):
        SoftmaxFocalLoss()(logits, torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="do not match logits"):
        SoftmaxFocalLoss()(logits, torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 2 classes"):
        SoftDiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="2 alpha values for 3 classes"):
        SoftmaxFocalLoss(alpha=[0.5, 0.5])(logits, torch.zeros(1, 4, 4, dtype=torch.long))


def hand_dice(probs: torch.Tensor, onehot: torch.Tensor, batch: bool, smooth: float = 1e-5) -> torch.Tensor:
    dims = [0, *range(2, probs.ndim)] if batch else list(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_soft_dice_matches_its_definition(batch: bool, include_background: bool) -> None:
    torch.manual_seed(3)
    logits = torch.randn(3, 4, 6, 5)
    labels = torch.randint(0, 4, (3, 6, 5))
    probs = logits.softmax(1)
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    expected = hand_dice(probs, onehot, batch)
    got = SoftDiceLoss(include_background=include_background, batch=batch)(logits, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_soft_dice_is_zero_for_a_perfect_prediction_and_batch_mode_differs() -> None:
    labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1
    labels[1, 0, 3, 3] = 1
    perfect = 50.0 * F.one_hot(labels[:, 0], 2).permute(0, 3, 1, 2).float()
    assert SoftDiceLoss()(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.zeros(2, 2, 4, 4)  # softmax 0.5 everywhere
    assert SoftDiceLoss(batch=True)(wrong, labels).item() != pytest.approx(
        SoftDiceLoss(batch=False)(wrong, labels).item(), abs=1e-3
    )


def test_dice_ce_is_dice_plus_cross_entropy() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 5, 5, 4)
    labels = torch.randint(0, 3, (2, 5, 5, 4))
    expected = 0.5 * SoftDiceLoss()(logits, labels) + 2.0 * F.cross_entropy(logits, labels)
    got = DiceCELoss(lambda_dice=0.5, lambda_ce=2.0)(logits, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert CrossEntropyLoss()(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )


def test_dice_focal_is_monai_dice_plus_softmax_focal() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 6, 6)
    labels = torch.randint(0, 3, (2, 1, 6, 6))
    got = DiceFocalLoss(lambda_focal=2.0)(logits, labels)
    dice = MonaiDiceLoss(include_background=False, to_onehot_y=True, softmax=True)(logits, labels)
    focal = MonaiFocalLoss(to_onehot_y=True, use_softmax=True)(logits, labels)
    assert got.item() == pytest.approx(dice.item() + 2.0 * 3 * focal.item(), rel=1e-5)
    # MONAI's DiceFocalLoss uses a sigmoid focal term: not the seed's loss.
    monai_df = MonaiDiceFocalLoss(include_background=False, to_onehot_y=True, softmax=True, lambda_focal=6.0)
    assert got.item() != pytest.approx(monai_df(logits, labels).item(), rel=1e-3)


def test_build_loss_registry_and_errors() -> None:
    assert set(LOSSES) == {"focal", "dice", "ce", "dice_ce", "dice_focal"}
    loss = build_loss("focal", gamma=0.0, alpha=[1.0, 2.0])
    assert isinstance(loss, SoftmaxFocalLoss)
    with pytest.raises(ConfigError, match="unknown loss 'dicey'"):
        build_loss("dicey")
    with pytest.raises(ConfigError, match=r"loss 'dice'.*gamma"):
        build_loss("dice", gamma=2.0)
    with pytest.raises(ConfigError, match="gamma must be >= 0"):
        build_loss("focal", gamma=-1.0)
    with pytest.raises(ConfigError, match="reduction must be one of"):
        build_loss("focal", reduction="max")
    with pytest.raises(ConfigError, match="non-negative"):
        build_loss("focal", alpha=[0.5, -0.5])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_backpropagates_finite_gradients(name: str) -> None:
    torch.manual_seed(6)
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4), dtype=torch.uint8)
    loss = build_loss(name)(logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


REGIONS = [(1, 3), (2, 3)]  # two structures overlapping where the label is 3


def test_region_dice_ce_is_sigmoid_dice_plus_bce_on_region_targets() -> None:
    from medseg.training.losses import build_region_loss

    torch.manual_seed(7)
    logits = torch.randn(2, 2, 5, 4, 3)
    labels = torch.randint(0, 4, (2, 1, 5, 4, 3))
    truth = torch.stack(
        [(labels[:, 0] == 1) | (labels[:, 0] == 3), (labels[:, 0] == 2) | (labels[:, 0] == 3)], 1
    )
    truth = truth.float()
    dice = MonaiDiceLoss(include_background=True, sigmoid=True)(logits, truth)
    bce = F.binary_cross_entropy_with_logits(logits, truth)
    got = build_region_loss("dice_ce", REGIONS, lambda_dice=0.5, lambda_ce=2.0)(logits, labels)
    assert got.item() == pytest.approx(0.5 * dice.item() + 2.0 * bce.item(), rel=1e-5)
    assert build_region_loss("ce", REGIONS)(logits, labels).item() == pytest.approx(bce.item(), rel=1e-6)
    focal = MonaiDiceFocalLoss(include_background=True, sigmoid=True, gamma=1.0)(logits, truth)
    got_focal = build_region_loss("dice_focal", REGIONS, gamma=1.0)(logits, labels)
    assert got_focal.item() == pytest.approx(focal.item(), rel=1e-5)


def test_region_loss_is_small_for_perfect_overlapping_logits() -> None:
    from medseg.training.losses import build_region_loss

    labels = torch.tensor([[[0, 1, 2, 3, 3, 0]]])  # (B, 1, 6): the overlap (3) is in both regions
    logits = torch.tensor([[[-20.0, 20, -20, 20, 20, -20], [-20.0, -20, 20, 20, 20, -20]]])
    assert build_region_loss("dice_ce", REGIONS)(logits, labels).item() < 1e-4
    wrong = logits.clone()
    wrong[0, 1, 3] = -20.0  # the overlap voxel missing from the second region
    assert build_region_loss("dice_ce", REGIONS)(wrong, labels).item() > 0.1


def test_region_loss_options_and_shapes_are_checked() -> None:
    from medseg.training.losses import build_region_loss

    with pytest.raises(ConfigError, match=r"does not take border_weight, ce_weight"):
        build_region_loss("dice_ce", REGIONS, ce_weight=[1, 2], border_weight=3)
    with pytest.raises(ConfigError, match="unknown loss 'dicey'"):
        build_region_loss("dicey", REGIONS)
    with pytest.raises(ValueError, match="one channel per region"):
        build_region_loss("dice", REGIONS)(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_region_loss_backpropagates_finite_gradients(name: str) -> None:
    from medseg.training.losses import build_region_loss

    torch.manual_seed(8)
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 4, (2, 1, 4, 4, 4), dtype=torch.uint8)
    loss = build_region_loss(name, REGIONS)(logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
