from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg.inference.sliding_window import network_memory_format, network_passes, predict_probabilities
from medseg.preprocessing.plan import PLAN_SCHEMA_VERSION, ChannelNormalization, NetworkPlan, Plan
from medseg.training.trainer import architecture_from_plan


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "sw_batch"),
    [
        ((1, 1, 21, 70, 50), (8, 32, 32), 0.5, 4),  # 3D, image larger than the window
        ((1, 1, 5, 20, 90), (8, 32, 32), 0.25, 3),  # 3D, padded along two axes
        ((13, 5, 64, 48), (40, 40), 0.5, 4),  # 2.5D: slices are the batch
        ((1, 2, 40, 40), (40, 40), 0.0, 2),  # one window
    ],
)
def test_network_passes_is_the_number_of_calls_monai_makes(
    shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, sw_batch: int
) -> None:
    calls = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x[:, :1]

    sliding_window_inference(torch.zeros(shape), roi, sw_batch, net, overlap=overlap)
    assert network_passes(shape[2:], roi, overlap, shape[0], sw_batch) == len(calls)


def _plan(configuration: str) -> Plan:
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        dataset_name="precision",
        configuration=configuration,  # type: ignore[arg-type]
        channel_names=("T2", "ADC"),  # two: a one-channel window is channels-last by either layout
        labels={"background": 0, "a": 1, "b": 2},
        target_spacing=(1.0, 1.0, 1.0),
        patch_size=(8, 16, 16) if configuration == "3d" else (1, 16, 16),
        batch_size=1,
        normalization=(ChannelNormalization("none"),) * 2,
        network=NetworkPlan(
            base_features=4,
            pooling=((2, 2, 2),) if configuration == "3d" else ((1, 2, 2),),
            kernels=((3, 3, 3),) * 2 if configuration == "3d" else ((1, 3, 3),) * 2,
        ),
        slab_slices=3 if configuration == "2.5d" else 1,
    )


class _Spy(torch.nn.Module):
    """A network that records the layout of the windows it sees and the dtype it computes in."""

    def __init__(self, net: torch.nn.Module, spatial_dims: int) -> None:
        super().__init__()
        self.net = net
        self.fmt = network_memory_format(True, spatial_dims)
        self.layouts: list[bool] = []
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.layouts.append(x.is_contiguous(memory_format=self.fmt) and not x.is_contiguous())
        out = self.net(x)
        self.dtypes.append(out.dtype)
        return out


def _net(plan: Plan) -> torch.nn.Module:
    torch.manual_seed(0)
    return architecture_from_plan(plan).build().eval()


@pytest.mark.parametrize("configuration", ["3d", "2.5d"])
def test_channels_last_prediction_equals_the_default_layouts(configuration: str) -> None:
    plan = _plan(configuration)
    image = np.random.default_rng(0).normal(0, 1, (2, 10, 20, 18)).astype(np.float32)
    default = predict_probabilities(_net(plan), image, plan, overlap=0.5, sw_batch_size=2)
    net = _net(plan)
    net.to(memory_format=network_memory_format(True, plan.spatial_dims))  # type: ignore[call-overload]
    spy = _Spy(net, plan.spatial_dims)
    nhwc = predict_probabilities(spy, image, plan, overlap=0.5, sw_batch_size=2, channels_last=True)
    assert spy.layouts and all(spy.layouts)  # the windows really went in channels-last
    assert nhwc.dtype == np.float32 and nhwc.shape == default.shape == (3, 10, 20, 18)
    np.testing.assert_allclose(nhwc, default, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_runs_the_network_in_bfloat16_and_keeps_probabilities_float32_and_close(
    channels_last: bool,
) -> None:
    plan = _plan("3d")
    image = np.random.default_rng(1).normal(0, 1, (2, 10, 20, 18)).astype(np.float32)
    reference = predict_probabilities(_net(plan), image, plan, overlap=0.5, sw_batch_size=2)
    net = _net(plan)
    if channels_last:
        net.to(memory_format=network_memory_format(True, 3))  # type: ignore[call-overload]
    spy = _Spy(net, 3)
    probs = predict_probabilities(
        spy, image, plan, overlap=0.5, sw_batch_size=2, cpu_bf16=True, channels_last=channels_last
    )
    assert set(spy.dtypes) == {torch.bfloat16}
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)  # softmax in float32
    assert 0 < np.abs(probs - reference).max() < 0.05  # bf16 rounding: different, but close


def test_the_network_runs_float32_in_the_default_layout_unless_asked() -> None:
    plan = _plan("3d")
    image = np.random.default_rng(2).normal(0, 1, (2, 8, 16, 16)).astype(np.float32)
    spy = _Spy(_net(plan), 3)
    predict_probabilities(spy, image, plan, sw_batch_size=2)
    assert set(spy.dtypes) == {torch.float32} and not any(spy.layouts)
