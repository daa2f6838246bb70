"""CPU time of one augmented training patch: medseg's augmentation vs MONAI's usual call.

The same MONAI transforms (``medseg.data.augment.build_augmentation`` with the default
config) run two ways on the same patches, re-seeded per patch as the patch dataset does:

- ``monai``: the ``Compose`` called directly, with MONAI's defaults: MetaTensor tracking on
  and ``Compose.set_random_state(seed)``, which seeds a new generator for every random
  transform (and every nested one) on each re-seed;
- ``medseg``: ``Augmentation`` as the trainer uses it: tracking off during the call and one
  shared generator per re-seed.

Per patch shape (``--case``: the hippocampus and CHAOS 3D patches of benchmarks/accuracy.py
and a 2D CHAOS slice) it reports the median CPU milliseconds per patch over ``--repeats``
rounds of ``--patches`` patches, with one torch thread as in a data-loading worker. Prints
and saves JSON::

    .venv/bin/python benchmarks/augment_bench.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.data.augment import AugmentationConfig, build_augmentation

RESULTS = Path(__file__).resolve().parent / "results" / "augment_bench.json"
CASES = {
    # name: (channels, patch shape, spacing)
    "hippocampus": (1, (32, 48, 32), (1.0, 1.0, 1.0)),
    "chaos-3d": (1, (16, 128, 128), (7.7, 2.5, 2.5)),
    "chaos-2d": (1, (128, 128), (2.5, 2.5)),
}


def patches(case: str, n: int) -> list[dict[str, torch.Tensor]]:
    channels, shape, _ = CASES[case]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        label = np.zeros((1, *shape), np.int64)
        label[(0, *(slice(s // 4, s // 4 + s // 2) for s in shape))] = 1
        image = rng.normal(size=(channels, *shape)).astype(np.float32) + label
        out.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    return out


def cpu_ms_per_patch(case: str, way: str, n: int) -> float:
    _, shape, spacing = CASES[case]
    augmentation = build_augmentation(AugmentationConfig(), len(shape), spacing)
    data = patches(case, n)
    start = time.process_time()
    for i, sample in enumerate(data):
        if way == "monai":
            augmentation.compose.set_random_state(seed=i)
            augmentation.compose(dict(sample))
        else:
            augmentation.set_random_state(seed=i)
            augmentation(dict(sample))
    return (time.process_time() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for case in args.case:
        cpu_ms_per_patch(case, "monai", 10)  # warm-up (imports, first-call caches)
        times: dict[str, list[float]] = {"monai": [], "medseg": []}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both
            for way in times:
                times[way].append(cpu_ms_per_patch(case, way, args.patches))
        monai_ms, medseg_ms = (statistics.median(times[w]) for w in ("monai", "medseg"))
        row = {
            "case": case,
            "patch": list(CASES[case][1]),
            "monai_cpu_ms_per_patch": round(monai_ms, 2),
            "medseg_cpu_ms_per_patch": round(medseg_ms, 2),
            "speedup": round(monai_ms / medseg_ms, 2),
        }
        rows.append(row)
        print(
            f"{case:12s} patch {row['patch']}: MONAI {monai_ms:6.2f} ms, medseg {medseg_ms:6.2f} ms "
            f"per patch (CPU, 1 thread): {row['speedup']:.2f}x"
        )
    import monai

    result = {
        "benchmark": "augment_bench",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
        "patches": args.patches,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
