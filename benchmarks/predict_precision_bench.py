"""Sliding-window prediction on a CPU: float32 vs bfloat16 autocast, default vs channels-last layout.

The measurement behind ``PredictConfig.cpu_bf16`` and ``PredictConfig.channels_last``: the time
of ``medseg.inference.sliding_window.predict_probabilities`` (the network over every window,
Gaussian blending, softmax) for medseg's U-Net of three cases, in four variants:

- ``float32``: the default layout, float32 throughout (medseg before these options);
- ``float32_cl``: channels-last (NDHWC / NHWC) network and windows, float32;
- ``bf16``: bfloat16 autocast of the network call (blending and softmax stay float32);
- ``bf16_cl``: both.

Cases (networks built by ``architecture_from_plan`` from a plan like ``medseg plan`` writes):

- ``prostate-3d``: the demo's prostate configuration, 3D, 16-256 features, patch 24 x 128 x 128
  (21 is not divisible by its two z poolings), spacing 3 x 0.5 x 0.5 mm, on a 24 x 384 x 384
  volume: 25 windows at overlap 0.5 (as ``benchmarks/predict_bench.py``);
- ``hippocampus-3d``: MSD hippocampus's 3D plan (16-256 features, patch 32 x 48 x 32, 1 mm) on
  its median 36 x 50 x 35 volume;
- ``chaos-2.5d``: a CHAOS-like 2.5D plan (5 neighbouring slices as channels, 5 classes, 16-256
  features, 256 x 256 patches) on a 32 x 256 x 256 volume (every slice a batch item, one window each).

Weights are random (seed 0) and the image random normal: the time does not depend on either.
Each measurement runs in a fresh process (its peak RSS, VmHWM, is its own), after one warm-up
call of the same variant; the hippocampus case, a fraction of a second, is timed as the median
of ``--inner`` calls. The machine may be shared, so the variants are interleaved (A B C D A B C
D ...), their order rotated every round, ``--repeats`` rounds, and the load average recorded:
the ratios to float32 of the same rounds are what count, not the absolute seconds.

Usage::

    .venv/bin/python benchmarks/predict_precision_bench.py --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "predict_precision_bench.json"
VARIANTS = ("float32", "float32_cl", "bf16", "bf16_cl")
OVERLAP = 0.5
SW_BATCH = 4

# case -> (configuration, patch (z, y, x), spacing (z, y, x), classes, volume (z, y, x), slab)
CASES: dict[
    str, tuple[str, tuple[int, int, int], tuple[float, float, float], int, tuple[int, int, int], int]
] = {
    "hippocampus-3d": ("3d", (32, 48, 32), (1.0, 1.0, 1.0), 3, (36, 50, 35), 1),
    "chaos-2.5d": ("2.5d", (1, 256, 256), (6.0, 1.5, 1.5), 5, (32, 256, 256), 5),
    "prostate-3d": ("3d", (24, 128, 128), (3.0, 0.5, 0.5), 3, (24, 384, 384), 1),
}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def build_plan(case: str) -> Any:
    from medseg.preprocessing.plan import (
        PLAN_SCHEMA_VERSION,
        ChannelNormalization,
        NetworkPlan,
        Plan,
        pooling_schedule,
    )

    configuration, patch, spacing, classes, _, slab = CASES[case]
    dims = 3 if configuration == "3d" else 2
    pooling, kernels = pooling_schedule(patch, spacing, spatial_dims=dims)
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        dataset_name=f"precision_bench_{case}",
        configuration=configuration,  # type: ignore[arg-type]
        channel_names=("image",),
        labels={"background": 0, **{f"class{k}": k for k in range(1, classes)}},
        target_spacing=spacing,
        patch_size=patch,
        batch_size=2,
        normalization=(ChannelNormalization(scheme="zscore"),),
        network=NetworkPlan(base_features=16, max_features=256, pooling=pooling, kernels=kernels),
        slab_slices=slab,
    )


def worker(case: str, variant: str, threads: int, inner: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from medseg.inference.sliding_window import network_memory_format, predict_probabilities
    from medseg.training.trainer import architecture_from_plan

    torch.set_num_threads(threads)
    plan = build_plan(case)
    torch.manual_seed(0)
    net = architecture_from_plan(plan).build().eval()
    bf16, channels_last = variant.startswith("bf16"), variant.endswith("_cl")
    if channels_last:
        net.to(memory_format=network_memory_format(True, plan.spatial_dims))  # type: ignore[call-overload]
    image = np.random.default_rng(0).standard_normal((1, *CASES[case][4])).astype(np.float32)

    def run() -> np.ndarray:
        return predict_probabilities(
            net,
            image,
            plan,
            device="cpu",
            overlap=OVERLAP,
            sw_batch_size=SW_BATCH,
            cpu_bf16=bf16,
            channels_last=channels_last,
        )

    if case == "prostate-3d":  # warm-up: one full batch of windows (a whole call is ~20 s)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x = torch.randn(SW_BATCH, plan.in_channels, *plan.patch_size)
            net(x.contiguous(memory_format=network_memory_format(channels_last, plan.spatial_dims)))
    else:
        run()
    load_before = os.getloadavg()[0]
    times = []
    for _ in range(inner):
        start = time.perf_counter()
        probs = run()
        times.append(time.perf_counter() - start)
    return {
        "case": case,
        "variant": variant,
        "seconds": statistics.median(times),
        "inner_calls": inner,
        "peak_rss_mib": _status_mib("VmHWM"),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "output_shape": list(probs.shape),
        "output_dtype": str(probs.dtype),
    }


def measure(case: str, variant: str, threads: int, inner: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        case,
        variant,
        "--threads",
        str(threads),
        "--inner",
        str(inner),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} {variant} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for case in CASES:
        rows = [r for r in runs if r["case"] == case]
        if not rows:
            continue
        med = {v: statistics.median(r["seconds"] for r in rows if r["variant"] == v) for v in VARIANTS}
        rss = {v: statistics.median(r["peak_rss_mib"] for r in rows if r["variant"] == v) for v in VARIANTS}
        # per round: float32 time / variant time, so a busy round slows both sides of its ratio
        rounds = sorted(
            k for k in {r["round"] for r in rows} if sum(r["round"] == k for r in rows) == len(VARIANTS)
        )
        if not rounds:
            continue
        per_round = {
            v: [
                next(r["seconds"] for r in rows if r["round"] == k and r["variant"] == "float32")
                / next(r["seconds"] for r in rows if r["round"] == k and r["variant"] == v)
                for k in rounds
            ]
            for v in VARIANTS
        }
        summary[case] = {
            "median_seconds": {v: round(s, 3) for v, s in med.items()},
            "speedup_vs_float32_median_of_rounds": {
                v: round(statistics.median(x), 3) for v, x in per_round.items()
            },
            "speedup_vs_float32_per_round": {v: [round(y, 3) for y in x] for v, x in per_round.items()},
            "median_peak_rss_mib": rss,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inner", type=int, default=5, help="timed calls per measurement (hippocampus only)")
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: every case")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, variant = args.worker
        print(json.dumps(worker(case, variant, args.threads, args.inner if case == "hippocampus-3d" else 1)))
        return
    cases = args.case or list(CASES)
    runs: list[dict[str, Any]] = []
    for k in range(args.repeats):
        for case in cases:
            order = VARIANTS[k % len(VARIANTS) :] + VARIANTS[: k % len(VARIANTS)]
            for variant in order:
                row = {**measure(case, variant, args.threads, args.inner), "round": k}
                runs.append(row)
                print(
                    f"round {k} {case:15s} {variant:10s} {row['seconds']:8.3f} s  "
                    f"peak {row['peak_rss_mib']:7.1f} MiB  load {row['loadavg_1min_before_after']}",
                    flush=True,
                )
            save(args, cases, runs)  # after every case of every round: a long run keeps what it measured
    for case, s in save(args, cases, runs).items():
        print(case, "median s", s["median_seconds"], "speed-up", s["speedup_vs_float32_median_of_rounds"])
        print(" " * len(case), "peak RSS MiB", s["median_peak_rss_mib"])
    print(f"wrote {args.out}")


def save(args: argparse.Namespace, cases: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from medseg.training.trainer import cpu_has_native_bf16

    summary = summarise(runs)
    result = {
        "benchmark": "medseg sliding-window prediction on a CPU: float32 / bf16 autocast x default / channels-last",
        "method": "fresh process per measurement after one warm-up call, variants interleaved with the order "
        "rotated each round, medians over rounds; speed-up = float32 seconds / variant seconds of the same round",
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "native_bf16": cpu_has_native_bf16(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "settings": {"overlap": OVERLAP, "sw_batch_size": SW_BATCH, "cases": {c: CASES[c] for c in cases}},
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
