"""The U-Net paper's border weight map and the border-weighted cross-entropy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss as MonaiDiceCELoss
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.training.border_weight import REACH_IN_SIGMAS, border_weight_map
from medseg.training.losses import CrossEntropyLoss, DiceCELoss, border_weights, build_loss

ISBI_LABELS = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012_em" / "train" / "label"


def brute_force(
    labels: np.ndarray, border_class: int, w0: float, sigma: float, spacing: tuple[float, ...]
) -> np.ndarray:
    """The paper's formula with a full-image distance transform per object and no cut-off."""
    connectivity = ndimage.generate_binary_structure(labels.ndim, 1)
    objects, n = ndimage.label(labels != border_class, structure=connectivity)
    dists = np.stack(
        [ndimage.distance_transform_edt(objects != i, sampling=spacing) for i in range(1, n + 1)]
    )
    dists.sort(axis=0)
    w = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    return np.where(labels == border_class, w, 0.0)


def test_two_squares_with_a_two_pixel_gap_match_the_paper_formula() -> None:
    labels = np.zeros((20, 40), dtype=np.uint8)
    labels[5:15, 5:15] = 1
    labels[5:15, 17:27] = 1  # gap: columns 15 and 16
    w = border_weight_map(labels, border_class=0, w0=10.0, sigma=5.0)
    assert w.dtype == np.float32 and w.shape == labels.shape
    # column 15: 1 pixel from the left square, 2 from the right one (and the mirror for 16)
    expected = 10.0 * math.exp(-(3.0**2) / 50.0)
    np.testing.assert_allclose(w[5:15, 15], expected, rtol=1e-6)
    np.testing.assert_allclose(w[5:15, 16], expected, rtol=1e-6)
    assert (w[labels == 1] == 0).all()  # objects themselves get no extra weight
    # a background pixel 1 from the left square and 13 from the right one (same row)
    assert w[10, 4] == pytest.approx(10.0 * math.exp(-((1 + 13) ** 2) / 50.0), rel=1e-5)
    # off the rows of both squares: 2 rows above the left one, hypot(2, 7) from the right one
    assert w[3, 10] == pytest.approx(10.0 * math.exp(-((2 + math.hypot(2, 7)) ** 2) / 50.0), rel=1e-5)
    # beyond the reach (4 sigma) of the second object: no weight
    assert w[10, 39] == 0 and w[19, 39] == 0
    assert 0 < w[0, 0] < 10.0 * math.exp(-8)  # d1 + d2 = 24.8: past the cut-off's floor


def test_matches_a_brute_force_map_on_cells_with_anisotropic_spacing() -> None:
    rng = np.random.default_rng(3)
    # Voronoi cells with one-voxel walls: a 3D "tissue" of touching objects
    shape = (12, 40, 36)
    seeds = rng.uniform((0, 0, 0), shape, size=(25, 3))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    nearest = np.argmin(((grid[..., None, :] - seeds) ** 2).sum(-1), axis=-1)
    walls = np.zeros(shape, dtype=bool)
    for axis in range(3):
        walls |= np.diff(nearest, axis=axis, append=np.take(nearest, [-1], axis=axis)) != 0
    labels = np.where(walls, 2, 1).astype(np.uint8)  # class 2 separates the cells
    spacing = (2.5, 1.0, 0.8)
    ours = border_weight_map(labels, border_class=2, w0=8.0, sigma=3.0, spacing=spacing)
    ref = brute_force(labels, 2, 8.0, 3.0, spacing)
    assert (ref > 1).sum() > 500  # the walls really are weighted
    # exact where the term matters, and below the cut-off value everywhere else
    floor = 8.0 * math.exp(-(REACH_IN_SIGMAS**2) / 2)
    near = ref > floor
    np.testing.assert_allclose(ours[near], ref[near], rtol=1e-5)
    assert np.abs(ours - ref).max() <= floor + 1e-6


def test_degenerate_maps_and_bad_arguments() -> None:
    assert not border_weight_map(np.zeros((8, 8), dtype=np.uint8)).any()  # no objects
    assert not border_weight_map(np.ones((8, 8), dtype=np.uint8)).any()  # no gaps
    single = np.zeros((8, 8), dtype=np.uint8)
    single[2:5, 2:5] = 1
    assert not border_weight_map(single).any()  # one object: no second-nearest
    with pytest.raises(ConfigError, match="sigma"):
        border_weight_map(single, sigma=0)
    with pytest.raises(ValueError, match="2D or 3D"):
        border_weight_map(np.zeros(8, dtype=np.uint8))
    with pytest.raises(ValueError, match="spacing"):
        border_weight_map(single, spacing=(1.0, 1.0, 1.0))


@pytest.mark.skipif(not ISBI_LABELS.is_dir(), reason="ISBI 2012 labels not in ../shared/data")
def test_isbi_membranes_between_two_cells_weigh_more_than_thick_membrane() -> None:
    from PIL import Image

    image = np.asarray(Image.open(ISBI_LABELS / "0.png"))
    labels = (image == 0).astype(np.uint8)  # medseg's import: 1 = membrane (black), 0 = cell
    w = border_weight_map(labels, border_class=1, w0=10.0, sigma=5.0)
    membrane = labels == 1
    assert (w[~membrane] == 0).all()
    thickness = ndimage.distance_transform_edt(membrane)
    thin = membrane & (thickness <= 1)
    thick = membrane & (thickness >= 4)  # the middle of dark blobs, far from any cell
    assert thin.sum() > 1000 and thick.sum() > 50
    assert w[thin].mean() > 4.0 > 2 * w[thick].mean()


def test_border_weighted_cross_entropy_is_the_weighted_mean() -> None:
    torch.manual_seed(0)
    labels = torch.zeros((2, 1, 16, 24), dtype=torch.long)
    labels[:, :, 2:14, 2:11] = 1
    labels[:, :, 2:14, 12:22] = 1  # one-pixel gap at column 11
    labels[1, :, 0:2, :] = 2  # a third class in the second sample
    logits = torch.randn(2, 3, 16, 24, requires_grad=True)
    loss = CrossEntropyLoss(weight=[1.0, 2.0, 0.5], border_weight=10.0, border_sigma=5.0, border_class=0)
    value = loss(logits, labels)
    pixel = border_weights(labels[:, 0], 0, 10.0, 5.0)
    assert pixel.shape == (2, 16, 24) and float(pixel.min()) == 1.0
    assert float(pixel[0, 8, 11]) == pytest.approx(1 + 10 * math.exp(-4 / 50), rel=1e-6)
    per = F.cross_entropy(
        logits.detach(), labels[:, 0], weight=torch.tensor([1.0, 2.0, 0.5]), reduction="none"
    )
    class_w = torch.tensor([1.0, 2.0, 0.5])[labels[:, 0]]
    assert float(value.detach()) == pytest.approx(
        float((per * pixel).sum() / (class_w * pixel).sum()), rel=1e-5
    )
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # "sum" adds the extra weight on top of the plain sum
    fixed = logits.detach()
    assert float(CrossEntropyLoss(border_weight=10.0, reduction="sum")(fixed, labels)) > float(
        CrossEntropyLoss(reduction="sum")(fixed, labels)
    )


def test_ignored_voxels_add_nothing_to_the_border_weighted_mean() -> None:
    torch.manual_seed(2)
    labels = torch.zeros((1, 16, 24), dtype=torch.long)
    labels[:, 2:14, 2:11] = 1
    labels[:, 2:14, 12:22] = 1
    logits = torch.randn(1, 2, 16, 24)
    loss = CrossEntropyLoss(ignore_index=255, border_weight=10.0)
    with_ignored = labels.clone()
    with_ignored[:, 14:, :] = 255  # the bottom rows unlabelled
    per = F.cross_entropy(logits, with_ignored, ignore_index=255, reduction="none")
    pixel = border_weights(with_ignored, 0, 10.0, 5.0, ignore_index=255)
    keep = with_ignored != 255
    expected = (per * pixel)[keep].sum() / pixel[keep].sum()
    assert float(loss(logits, with_ignored)) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss(logits, with_ignored)) != pytest.approx(float(loss(logits, labels)))


def test_dice_ce_with_border_weight_is_monai_dice_ce_when_the_map_is_flat() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 1, 12, 12)  # a 2D slice stored as 1 x H x W
    labels = torch.randint(0, 3, (2, 1, 1, 12, 12))
    ours = DiceCELoss(ce_weight=[1.0, 2.0, 3.0], border_weight=1e-12, lambda_dice=0.7, lambda_ce=1.3)
    monai = MonaiDiceCELoss(
        to_onehot_y=True,
        softmax=True,
        include_background=False,
        weight=torch.tensor([1.0, 2.0, 3.0]),
        lambda_dice=0.7,
        lambda_ce=1.3,
    )
    assert float(ours(logits, labels)) == pytest.approx(float(monai(logits, labels[:, :, :, :, :])), rel=1e-5)
    # and with a real map it differs and stays finite
    gap = torch.zeros(1, 1, 1, 12, 12, dtype=torch.long)
    gap[..., 2:10, 2:6] = 1
    gap[..., 2:10, 7:11] = 1
    heavy = build_loss("dice_ce", border_weight=10.0, border_class=0)
    plain = build_loss("dice_ce")
    x = torch.randn(1, 2, 1, 12, 12)
    assert float(heavy(x, gap)) != pytest.approx(float(plain(x, gap)))
    with pytest.raises(ConfigError, match="border_weight"):
        build_loss("dice_ce", border_weight=-1.0)
