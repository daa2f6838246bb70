"""Sliding-window prediction puts each voxel's output on that voxel: 2D and 2.5D slabs
(each slice's output on its own slice) and 3D, with images larger and smaller than a patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.inference.sliding_window import predict_probabilities
from medseg.preprocessing.plan import PLAN_SCHEMA_VERSION, ChannelNormalization, NetworkPlan, Plan


class CentreSliceModel(torch.nn.Module):
    """Logits (background 0, foreground 4 x value) from the centre channel of a slab (the
    only channel of a 3D input)."""

    def __init__(self, centre: int) -> None:
        super().__init__()
        self.centre = centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 4.0 * x[:, self.centre]
        return torch.stack([torch.zeros_like(fg), fg], dim=1)


@pytest.mark.parametrize(
    ("configuration", "slab", "step", "shape"),
    [
        ("2d", 1, 1, (7, 11, 9)),
        ("2.5d", 3, 1, (7, 11, 9)),
        ("2.5d", 5, 2, (7, 11, 9)),
        ("2.5d", 3, 1, (3, 5, 6)),  # smaller than a patch: padded, then cropped back
        ("3d", 1, 1, (7, 11, 9)),
        ("3d", 1, 1, (3, 5, 6)),
    ],
)
def test_each_voxel_of_a_prediction_lands_on_its_own_voxel(
    configuration: str, slab: int, step: int, shape: tuple[int, int, int]
) -> None:
    plan = Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        dataset_name="slices",
        configuration=configuration,  # type: ignore[arg-type]
        channel_names=("MR",),
        labels={"background": 0, "organ": 1},
        target_spacing=(3.3, 0.45, 0.6),
        patch_size=(4, 8, 8) if configuration == "3d" else (1, 8, 8),
        batch_size=1,
        normalization=(ChannelNormalization("none"),),
        network=NetworkPlan(),
        slab_slices=slab,
        slab_step=step,
    )
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (1, *shape)).astype(np.float32)  # every voxel different
    probs = predict_probabilities(CentreSliceModel(slab // 2), image, plan, overlap=0.5, sw_batch_size=2)
    assert probs.shape == (2, *shape)
    expected = 1.0 / (1.0 + np.exp(-4.0 * image[0]))  # softmax of (0, 4v) for the foreground
    np.testing.assert_allclose(probs[1], expected, atol=1e-5)
