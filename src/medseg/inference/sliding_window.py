"""Whole-volume prediction from patch-trained networks.

3D models: MONAI's ``sliding_window_inference`` with Gaussian weighting (several windows
per forward pass); we measured no reason to replace it (benchmarks/predict_bench.py).
2D / 2.5D models: every slice (with its neighbours stacked as channels for 2.5D) is a
batch item of a 2D sliding window.

Returns softmax probabilities (K, Z, Y, X) as float32 numpy; optional mirroring
test-time augmentation averages the softmax over flips of the spatial axes. A region-based
plan (``plan.regions``) gets one sigmoid probability per region (R, Z, Y, X) instead,
averaged the same way.

Reduced precision (float16 AMP on CUDA, bfloat16 autocast on a CPU with ``cpu_bf16``) covers
the network call only: its logits are cast to float32 before MONAI blends the windows, so
the Gaussian blending, the softmax and the averaging stay float32. ``channels_last`` hands
the network its windows in the channels-last layout (NDHWC / NHWC); the network itself must
already be in that layout (:func:`network_memory_format`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Protocol

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medseg.preprocessing.plan import Plan

Predictor = Callable[[torch.Tensor], torch.Tensor]


class WindowProgress(Protocol):
    """Told of the network passes of :func:`predict_probabilities` (a bar for one long case)."""

    def begin(self, passes: int | None) -> None: ...  # passes of the call starting (None: unknown)

    def step(self) -> None: ...  # one pass (a batch of windows) done


_PROGRESS: ContextVar[WindowProgress | None] = ContextVar("medseg_window_progress", default=None)


@contextlib.contextmanager
def window_progress(reporter: WindowProgress | None) -> Iterator[None]:
    """Within the block, :func:`predict_probabilities` reports its network passes to
    ``reporter``: the callers in between (ensembles, folds, TTA) need not pass it along."""
    token = _PROGRESS.set(reporter)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def network_passes(
    image_size: Sequence[int], roi: Sequence[int], overlap: float, batch: int, sw_batch: int
) -> int | None:
    """How many network calls MONAI's sliding window makes for one image batch (its own
    window grid, so the count matches; None if this MONAI computes it otherwise)."""
    try:
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        size = tuple(max(int(s), int(r)) for s, r in zip(image_size, roi, strict=True))
        interval = _get_scan_interval(size, tuple(int(r) for r in roi), len(roi), (overlap,) * len(roi))
        windows = len(dense_patch_slices(size, tuple(int(r) for r in roi), interval))
    except Exception:  # a private MONAI helper moved: the bar counts without a total
        return None
    return math.ceil(windows * batch / sw_batch)


def network_memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    """The layout of a network of ``spatial_dims`` and its windows (2D / 2.5D nets see 4D batches)."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def slab_stack(image: np.ndarray | torch.Tensor, slab: int, step: int = 1) -> torch.Tensor:
    """(C, Z, Y, X) -> (Z, C * slab, Y, X): each slice with its neighbours as channels.

    ``step``: distance in slices between the slab's neighbours (2: every second slice, so a
    5-slice slab spans 9 slices of a thin-slice scan). Edge slices repeat the first/last
    slice (replication), as the 2.5D sampler does. Channel order: for each neighbour offset
    -k..k (times ``step``), all image channels.
    """
    t = torch.as_tensor(image)
    c, z = t.shape[0], t.shape[1]
    half = slab // 2
    offsets = torch.arange(-half, half + 1) * int(step)
    idx = torch.arange(z)[:, None] + offsets[None, :]
    idx = idx.clamp(0, z - 1)  # (Z, slab)
    gathered = t[:, idx]  # (C, Z, slab, Y, X)
    return gathered.permute(1, 2, 0, 3, 4).reshape(z, slab * c, *t.shape[2:])


def _flips(
    spatial_dims: int, mirror: bool, mirror_axes: Sequence[int] | None = None
) -> list[tuple[int, ...]]:
    if not mirror:
        return [()]
    spatial = range(spatial_dims) if mirror_axes is None else mirror_axes
    axes = tuple(2 + int(a) for a in spatial)
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module | Predictor,
    image: np.ndarray,
    plan: Plan,
    *,
    device: str | torch.device = "cpu",
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    mirror: bool = False,
    mirror_axes: Sequence[int] | None = None,
    amp: bool = False,
    cpu_bf16: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) for a preprocessed image (C, Z, Y, X); for a
    region-based plan, sigmoid probabilities (R, Z, Y, X), one per region.

    ``mirror``: average over every combination of flips along ``mirror_axes`` (spatial axes
    of the network input: (z, y, x) in 3D, (y, x) in 2D / 2.5D; None: all of them).
    ``amp``: float16 autocast of the network on CUDA; ``cpu_bf16``: bfloat16 autocast of the
    network on a CPU (each ignored on the other device). ``channels_last``: windows go to the
    network channels-last (the caller has put the network in that layout).
    """
    dev = torch.device(device)
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
    if plan.spatial_dims == 3:
        inputs = x[None]  # (1, C, Z, Y, X)
        roi: Sequence[int] = plan.patch_size
    else:
        inputs = slab_stack(x, plan.slab_slices, plan.slab_step)  # (Z, C*slab, Y, X)
        roi = plan.patch_size[1:]
    total: torch.Tensor | None = None
    flips = _flips(plan.spatial_dims, mirror, mirror_axes)
    if dev.type == "cuda" and amp:
        autocast = torch.autocast(device_type="cuda")
    elif dev.type == "cpu" and cpu_bf16:
        autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    else:
        autocast = torch.autocast(device_type=dev.type, enabled=False)
    memory_format = network_memory_format(channels_last, plan.spatial_dims)
    reporter = _PROGRESS.get()
    if reporter is not None:
        passes = network_passes(inputs.shape[2:], roi, overlap, inputs.shape[0], sw_batch_size)
        reporter.begin(None if passes is None else passes * len(flips))

    def predictor(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=memory_format)
        with autocast:
            out = model(x)
        if reporter is not None:
            reporter.step()
        return out.float()  # MONAI blends (and we softmax) in float32

    for flip in flips:
        inp = torch.flip(inputs, flip) if flip else inputs
        logits = sliding_window_inference(
            inp,
            roi_size=tuple(int(r) for r in roi),
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=dev,
            device=torch.device("cpu"),
        )
        assert isinstance(logits, torch.Tensor)
        probs = torch.sigmoid(logits.float()) if plan.regions else torch.softmax(logits.float(), dim=1)
        if flip:
            probs = torch.flip(probs, flip)
        total = probs if total is None else total + probs
    assert total is not None
    total /= len(flips)
    if plan.spatial_dims == 3:
        out = total[0]
    else:
        out = total.permute(1, 0, 2, 3)  # (Z, K, Y, X) -> (K, Z, Y, X)
    return out.numpy().astype(np.float32, copy=False)
