"""Training-step time of medseg's U-Net with PyTorch's default vs channels-last memory format.

The measurement behind ``TrainingConfig.channels_last``: one AdamW step of the network of an
accuracy benchmark (``--case``), with and without bf16 autocast, in both layouts:

- ``hippocampus``: 3D, 8 base features, 3 levels, batch 4 x 40 x 56 x 40 (NDHWC);
- ``chaos-2.5d``: 2D, 5 slices in, 5 classes, 16-256 features, batch 8 x 128 x 128 (NHWC);
- ``isbi``: 2D, 1 channel, 2 classes, 16-256 features, batch 4 x 256 x 256 (NHWC).

Prints the median step time and saves JSON::

    .venv/bin/python benchmarks/channels_last_bench.py --threads 2 --case chaos-2.5d
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from medseg.models.unet import UNet

RESULTS = Path(__file__).resolve().parent / "results" / "channels_last_bench.json"


# case -> (spatial dims, in channels, classes, features, max features, levels, batch, patch)
CASES: dict[str, tuple[int, int, int, int, int | None, int, int, tuple[int, ...]]] = {
    "hippocampus": (3, 1, 3, 8, None, 3, 4, (40, 56, 40)),
    "chaos-2.5d": (2, 5, 5, 16, 256, 5, 8, (128, 128)),
    "isbi": (2, 1, 2, 16, 256, 5, 4, (256, 256)),
}


def build_case(
    case: str, channels_last: bool, deep_supervision: bool = False
) -> tuple[UNet, torch.Tensor, torch.Tensor]:
    """The case's network (seed 0), a random input batch and random labels, in the layout asked."""
    dims, cin, classes, features, max_features, levels, batch, shape = CASES[case]
    torch.manual_seed(0)
    net = UNet(
        dims,
        cin,
        classes,
        features=features,
        max_features=max_features,
        pooling=[2] * levels,
        depth=levels,
        deep_supervision=deep_supervision,
    )
    x = torch.randn(batch, cin, *shape)
    y = torch.randint(0, classes, (batch, *shape))
    if channels_last:
        fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
        net.to(memory_format=fmt)  # type: ignore[call-overload]  # untyped overload
        x = x.to(memory_format=fmt)
    return net, x, y


def step_time(case: str, channels_last: bool, bf16: bool, steps: int) -> float:
    net, x, y = build_case(case, channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    times = []
    for _ in range(steps + 1):  # the first step warms up oneDNN and is dropped
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--case", choices=sorted(CASES), default="hippocampus")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for bf16 in (True, False):
        default = step_time(args.case, False, bf16, args.steps)
        cl = step_time(args.case, True, bf16, args.steps)
        rows.append({"bf16": bf16, "default_s": default, "channels_last_s": cl, "speedup": default / cl})
        print(
            f"bf16={bf16}: default {default:.3f} s/step, channels-last {cl:.3f} s/step ({default / cl:.2f}x)"
        )
    report = {
        "case": args.case,
        "threads": args.threads,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
