"""Score the classical baselines through ``medseg.evaluation.evaluate`` on real and phantom data.

Data (read-only): CHAOS MR T2-SPIR (liver, kidneys, spleen) and MSD hippocampus (the two
labels merged) from ../shared/data, and the abdominal CT phantom (medseg.data.phantom).

How each baseline is turned into an organ segmentation (written down because the
unseeded methods do not know which organ is which):

* seeded methods (region growing, watershed) get one seed per organ at the organ's
  deepest interior point in the reference (largest distance to its boundary, in mm):
  a stand-in for a user's click;
* unseeded methods (Otsu / multi-Otsu, k-means, threshold) produce intensity classes; each
  organ is given the single class that best matches it ("oracle" assignment, an upper
  bound on what the method could give without further post-processing).

Predictions and references are written as NIfTI and scored by the same ``evaluate`` path
as the networks. Writes benchmarks/results/baseline_bench.json and prints a table.

    .venv/bin/python benchmarks/baseline_bench.py --chaos 4 --hippocampus 6 --phantom 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medseg import classical
from medseg.evaluation import EvaluationConfig, evaluate
from medseg.io import read_volume, write_volume
from medseg.volume import Volume

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
Case = tuple[str, Volume, Volume]  # name, image, reference (labels 1..n)


def chaos_cases(n: int) -> list[Case]:
    folder = SHARED / "chaos_mr_t2spir"
    ids = sorted(int(p.name[6:-7]) for p in folder.glob("image_*.nii.gz"))[:n]
    out = []
    for i in ids:
        image = read_volume(folder / f"image_{i}.nii.gz")
        label = read_volume(folder / f"label_{i}.nii.gz")
        out.append((f"chaos_{i}", image, label.with_array(np.rint(label.array).astype(np.uint8))))
    return out


def hippocampus_cases(n: int) -> list[Case]:
    folder = SHARED / "msd_hippocampus"
    names = [ln.strip() for ln in (folder / "cases.txt").read_text().splitlines() if ln.strip()][:n]
    out = []
    for name in names:
        image = read_volume(folder / "imagesTr" / f"{name}.nii.gz")
        label = read_volume(folder / "labelsTr" / f"{name}.nii.gz")
        out.append((name, image, label.with_array((label.array > 0).astype(np.uint8))))
    return out


def phantom_cases(n: int) -> list[Case]:
    from medseg.data.phantom import make_ct_case

    out = []
    for seed in range(n):
        case = make_ct_case(seed)
        out.append((f"ct_phantom_{seed}", case.image, case.label.astype(np.uint8)))
    return out


def deepest_points(ref: Volume, labels: list[int]) -> list[tuple[int, int, int]]:
    points = []
    for lab in labels:
        mask = ref.array == lab
        if not mask.any():
            raise ValueError(f"label {lab} absent")
        depth = ndi.distance_transform_edt(mask, sampling=ref.spacing)
        points.append(tuple(int(v) for v in np.unravel_index(np.argmax(depth), mask.shape)))
    return points  # type: ignore[return-value]


def oracle(classes: Volume, ref: Volume, labels: list[int]) -> np.ndarray:
    """Give each organ the intensity class that overlaps it best (Dice)."""
    out = np.zeros(ref.shape, dtype=np.uint8)
    values = [int(v) for v in np.unique(classes.array)]
    for lab in labels:
        r = ref.array == lab
        best = max(
            values,
            key=lambda v: (
                2
                * np.count_nonzero(r & (classes.array == v))
                / (np.count_nonzero(r) + np.count_nonzero(classes.array == v))
            ),
        )
        out[(classes.array == best) & (out == 0)] = lab
    return out


def run_methods(image: Volume, ref: Volume, labels: list[int]) -> dict[str, np.ndarray]:
    seeds = deepest_points(ref, labels)
    preds: dict[str, np.ndarray] = {}
    preds["otsu (oracle class)"] = oracle(classical.otsu(image, 2), ref, labels)
    preds["multi-otsu 4 (oracle class)"] = oracle(classical.otsu(image, 4), ref, labels)
    preds["kmeans 4 (oracle class)"] = oracle(classical.kmeans(image, 4), ref, labels)
    grown = np.zeros(ref.shape, dtype=np.uint8)
    for lab, seed in zip(labels, seeds, strict=True):
        g = classical.region_grow(image, [seed], method="confidence")  # medseg's defaults
        grown[(g.array > 0) & (grown == 0)] = lab
    preds["region growing (confidence, 1 seed/organ)"] = grown
    ws = classical.watershed(image, seeds=seeds, sigma_mm=1.0)
    preds["watershed (1 seed/organ)"] = np.take(np.array([0, *labels], dtype=np.uint8), ws.array)
    return preds


def score(
    name: str, cases: list[Case], labels: dict[int, str], methods: Callable[..., dict[str, np.ndarray]]
) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders: dict[str, str] = {}  # method -> prediction folder name
        for case_name, image, ref in cases:
            write_volume(ref, root / "ref" / f"{case_name}.nii.gz")
            for method, arr in methods(image, ref, list(labels)).items():
                key = folders.setdefault(method, f"method_{len(folders)}")
                write_volume(ref.with_array(arr), root / key / f"{case_name}.nii.gz")
        results: dict[str, dict[str, float]] = {}
        for method, key in folders.items():
            cfg = EvaluationConfig(labels=labels, metrics=("dice", "hd95"), workers=1)
            summary = evaluate(root / key, root / "ref", cfg).summary()["per_class"]
            results[method] = {
                f"dice/{c}": round(s["dice"]["mean"], 3)
                for c, s in summary.items()
                if s["dice"]["mean"] is not None
            }
            results[method].update(
                {f"hd95_mm/{c}": round(s["hd95"]["mean"], 1) for c, s in summary.items() if s["hd95"]["mean"]}
            )
    print(f"\n{name} ({len(cases)} cases): mean Dice per class")
    for method, vals in results.items():
        dice = ", ".join(f"{k[5:]} {v:.3f}" for k, v in vals.items() if k.startswith("dice/"))
        print(f"  {method:45s} {dice}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chaos", type=int, default=4)
    parser.add_argument("--hippocampus", type=int, default=6)
    parser.add_argument("--phantom", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "baseline_bench.json")
    args = parser.parse_args()
    organs = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
    report: dict[str, object] = {}
    t0 = time.perf_counter()
    if args.chaos:
        report["chaos_mr_t2spir"] = score("CHAOS MR T2-SPIR", chaos_cases(args.chaos), organs, run_methods)
    if args.hippocampus:
        hip = hippocampus_cases(args.hippocampus)
        report["msd_hippocampus"] = score(
            "MSD hippocampus (1+2 merged)", hip, {1: "hippocampus"}, run_methods
        )
    if args.phantom:
        report["ct_phantom"] = score("CT phantom", phantom_cases(args.phantom), organs, run_methods)
    report["cases"] = {"chaos": args.chaos, "hippocampus": args.hippocampus, "ct_phantom": args.phantom}
    report["how"] = (
        "seeded methods: one seed per organ at its deepest reference point; unseeded: best-matching "
        "intensity class per organ (oracle). Scored with medseg.evaluation.evaluate."
    )
    report["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
