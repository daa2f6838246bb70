from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg.inference.sliding_window import network_passes


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
