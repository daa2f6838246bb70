"""What bfloat16 autocast and the channels-last layout do to a trained model's label maps.

The check behind the default of ``PredictConfig.cpu_bf16``: a trained model folder predicts the
validation cases of a fold (``splits.json``) with ``medseg.inference.predictor.SegmentationModel``
in the four variants of ``benchmarks/predict_precision_bench.py`` (float32, float32 +
channels-last, bf16, bf16 + channels-last; postprocessing rules as stored, no TTA), and compares
each label map with the float32 one (fraction of voxels that differ, Dice per class) and with
the reference label (Dice per class, mean over cases).

Usage (a model trained with ``medseg train``, e.g. on MSD hippocampus)::

    .venv/bin/python benchmarks/predict_precision_agreement.py data/hippo data/hippo/models/3d/fold_0 \\
        --fold 0 --max-cases 20 --out benchmarks/results/predict_precision_agreement_3d.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = {  # name -> (cpu_bf16, channels_last)
    "float32": (False, False),
    "float32_cl": (False, True),
    "bf16": (True, False),
    "bf16_cl": (True, True),
}


def main() -> None:
    from medseg.evaluation.metrics import dice
    from medseg.inference.predictor import SegmentationModel
    from medseg.io import read_channels, read_volume

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="dataset folder (imagesTr, labelsTr, splits.json)")
    parser.add_argument("model", type=Path, help="model folder (fold_k)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--max-cases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    cases = json.loads((args.dataset / "splits.json").read_text())["folds"][args.fold]["val"][
        : args.max_cases
    ]
    models = {
        name: SegmentationModel(
            args.model, device="cpu", threads=args.threads, cpu_bf16=bf16, channels_last=cl
        )
        for name, (bf16, cl) in VARIANTS.items()
    }
    classes = sorted(v for v in models["float32"].plan.labels.values() if v != 0)
    per_case: list[dict[str, Any]] = []
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for case in cases:
        channels = read_channels(args.dataset / "imagesTr" / f"{case}_0000.nii.gz")
        ref = read_volume(args.dataset / "labelsTr" / f"{case}.nii.gz").array
        labels: dict[str, np.ndarray] = {}
        for name, model in models.items():
            start = time.perf_counter()
            label, _ = model.predict(channels, where=case)
            seconds[name].append(time.perf_counter() - start)
            labels[name] = label.array
        base = labels["float32"]
        row: dict[str, Any] = {"case": case, "voxels": int(base.size)}
        for name, arr in labels.items():
            row[name] = {
                "differing_voxels": int((arr != base).sum()),
                "dice_vs_float32": {str(k): dice(arr == k, base == k) for k in classes},
                "dice_vs_reference": {str(k): dice(arr == k, ref == k) for k in classes},
            }
        per_case.append(row)
        print(case, {n: row[n]["differing_voxels"] for n in VARIANTS}, flush=True)

    summary: dict[str, Any] = {}
    total_voxels = sum(r["voxels"] for r in per_case)
    for name in VARIANTS:
        summary[name] = {
            "fraction_of_voxels_differing_from_float32": sum(r[name]["differing_voxels"] for r in per_case)
            / total_voxels,
            "cases_with_any_difference": sum(r[name]["differing_voxels"] > 0 for r in per_case),
            "min_dice_vs_float32_per_class": {
                str(k): min(r[name]["dice_vs_float32"][str(k)] for r in per_case) for k in classes
            },
            "mean_dice_vs_float32_per_class": {
                str(k): statistics.fmean(r[name]["dice_vs_float32"][str(k)] for r in per_case)
                for k in classes
            },
            "mean_dice_vs_reference_per_class": {
                str(k): round(statistics.fmean(r[name]["dice_vs_reference"][str(k)] for r in per_case), 5)
                for k in classes
            },
            "median_predict_seconds": round(statistics.median(seconds[name]), 3),
        }
    info = json.loads((args.model / "model.json").read_text())
    result = {
        "benchmark": "label maps of float32 vs bf16 autocast vs channels-last prediction (CPU)",
        "model": str(args.model),
        "configuration": info.get("configuration"),
        "best_val_mean_dice_in_training": info.get("best_val_mean_dice"),
        "epochs_completed": info.get("epochs_completed"),
        "fold": args.fold,
        "cases": cases,
        "labels": models["float32"].plan.labels,
        "summary": summary,
        "per_case": per_case,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
