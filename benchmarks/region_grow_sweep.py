"""Confidence-connected region growing: which multiplier / iterations / radius to default to.

One seed per organ at its deepest reference point (as ``baseline_bench.py``), on CHAOS MR
T2-SPIR (4 organs), MSD hippocampus (both labels merged) and the CT phantom; mean Dice per
data set for each setting. ITK's usual example setting (multiplier 2.5, 4 iterations,
radius 1) was medseg's default until this sweep. Writes benchmarks/results/region_grow_sweep.json.

    .venv/bin/python benchmarks/region_grow_sweep.py --chaos 16 --hippocampus 20 --phantom 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from baseline_bench import chaos_cases, deepest_points, hippocampus_cases, phantom_cases

from medseg import classical

SETTINGS = [(2.5, 4, 1), (2.5, 1, 1), (2.0, 1, 1), (2.0, 0, 2), (2.0, 1, 2), (1.5, 0, 2), (1.5, 1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chaos", type=int, default=16)
    parser.add_argument("--hippocampus", type=int, default=20)
    parser.add_argument("--phantom", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "region_grow_sweep.json"
    )
    args = parser.parse_args()
    sets = {
        "chaos_mr_t2spir": chaos_cases(args.chaos) if args.chaos else [],
        "msd_hippocampus": hippocampus_cases(args.hippocampus) if args.hippocampus else [],
        "ct_phantom": phantom_cases(args.phantom) if args.phantom else [],
    }
    t0 = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    for m, it, r in SETTINGS:
        key = f"multiplier={m} iterations={it} radius={r}"
        results[key] = {}
        for name, cases in sets.items():
            dice = []
            for _, image, ref in cases:
                labels = [int(v) for v in np.unique(ref.array) if v]
                for lab, seed in zip(labels, deepest_points(ref, labels), strict=True):
                    grown = (
                        classical.region_grow(image, [seed], multiplier=m, iterations=it, radius=r).array > 0
                    )
                    truth = ref.array == lab
                    dice.append(2 * np.count_nonzero(grown & truth) / (grown.sum() + truth.sum()))
            if dice:
                results[key][name] = round(float(np.mean(dice)), 3)
        print(key, results[key], flush=True)
    report = {
        "mean_dice": results,
        "cases": {k: len(v) for k, v in sets.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
