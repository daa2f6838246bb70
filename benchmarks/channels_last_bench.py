"""Training-step time of medseg's 3D U-Net with PyTorch's default vs channels-last memory format.

A measurement for a possible CPU speed-up (not used by the trainer yet): one AdamW step of the
hippocampus benchmark's network (8 base features, 3 levels) on a batch of 4 x 40 x 56 x 40,
with and without bf16 autocast. Prints the median step time and saves JSON::

    .venv/bin/python benchmarks/channels_last_bench.py --threads 2
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


def step_time(channels_last: bool, bf16: bool, steps: int, batch: int, shape: tuple[int, int, int]) -> float:
    torch.manual_seed(0)
    net = UNet(3, 1, 3, features=8, pooling=[(2, 2, 2)] * 3)
    x = torch.randn(batch, 1, *shape)
    y = torch.randint(0, 3, (batch, *shape))
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
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
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for bf16 in (True, False):
        default = step_time(False, bf16, args.steps, 4, (40, 56, 40))
        cl = step_time(True, bf16, args.steps, 4, (40, 56, 40))
        rows.append({"bf16": bf16, "default_s": default, "channels_last_s": cl, "speedup": default / cl})
        print(
            f"bf16={bf16}: default {default:.3f} s/step, channels-last {cl:.3f} s/step ({default / cl:.2f}x)"
        )
    report = {
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
