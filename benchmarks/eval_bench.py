"""Time ``medseg evaluate`` end to end, and MONAI's metrics on the same cases, side by side.

Generates N synthetic cases (default 100) of 100 x 256 x 256 voxels (z, y, x) at an
anisotropic 2.5 x 0.8 x 0.8 mm, with 4 foreground classes of organ-like sizes, and a
perturbed prediction per case (shifted, grown or shrunk, with a few false-positive blobs),
written as NIfTI. Then, in the same run:

1. medseg: ``evaluate`` + ``write_report`` (read files, every metric incl. HD, HD95, ASSD,
   NSD, CSV/JSON/plots/HTML), with ``--workers`` processes (default 2) and with 1;
2. MONAI: read the same files, one-hot, then ``DiceMetric``,
   ``HausdorffDistanceMetric(percentile=95)`` and ``SurfaceDistanceMetric(symmetric=True)``
   with the spacing, one process, ``torch.set_num_threads(--workers)``.

Prints the timings and ratios and writes benchmarks/results/eval_bench.json, with the
largest disagreement between the two tools on Dice, HD95 and ASSD.

    .venv/bin/python benchmarks/eval_bench.py              # full run (several minutes)
    .venv/bin/python benchmarks/eval_bench.py --cases 10   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SHAPE = (100, 256, 256)
SPACING = (2.5, 0.8, 0.8)
N_CLASSES = 4
# (centre z, y, x in voxels, semi-axes in mm): a liver-, two kidney- and a spleen-like blob.
ORGANS = (
    ((50, 110, 90), (75.0, 60.0, 55.0)),
    ((55, 170, 70), (25.0, 18.0, 15.0)),
    ((55, 170, 190), (25.0, 18.0, 15.0)),
    ((45, 100, 190), (40.0, 35.0, 25.0)),
)


def _ellipsoid(shape, centre, semi_mm, spacing):  # type: ignore[no-untyped-def]
    """Boolean ellipsoid, evaluated only inside its bounding box."""
    out = np.zeros(shape, dtype=bool)
    half = [int(np.ceil(s / sp)) + 1 for s, sp in zip(semi_mm, spacing, strict=True)]
    lo = [max(int(c) - h, 0) for c, h in zip(centre, half, strict=True)]
    hi = [min(int(c) + h + 1, n) for c, h, n in zip(centre, half, shape, strict=True)]
    if any(a >= b for a, b in zip(lo, hi, strict=True)):
        return out
    grids = np.meshgrid(
        *[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)], indexing="ij"
    )
    r2 = sum(((g - c) * sp / s) ** 2 for g, c, sp, s in zip(grids, centre, spacing, semi_mm, strict=True))
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = r2 < 1
    return out


def make_case(index: int, folder: str) -> str:
    """Write reference and prediction of case ``index``; returns the case name."""
    from medseg.io import write_volume
    from medseg.volume import Volume

    rng = np.random.default_rng(1000 + index)
    ref = np.zeros(SHAPE, dtype=np.uint8)
    pred = np.zeros(SHAPE, dtype=np.uint8)
    for lab, (centre, semi) in enumerate(ORGANS, start=1):
        c = np.asarray(centre, dtype=float) + rng.normal(0, [3, 8, 8])
        s = np.asarray(semi) * rng.uniform(0.85, 1.15, 3)
        ref[_ellipsoid(SHAPE, c, s, SPACING)] = lab
        c_pred = c + rng.normal(0, [0.6, 2.0, 2.0])  # a few mm off
        s_pred = s * rng.uniform(0.9, 1.1, 3)
        pred[_ellipsoid(SHAPE, c_pred, s_pred, SPACING)] = lab
        for _ in range(int(rng.integers(0, 3))):  # false-positive blobs
            fp = c + rng.normal(0, [8, 30, 30])
            pred[_ellipsoid(SHAPE, fp, rng.uniform(3, 8, 3), SPACING)] = lab
    if index % 10 == 9:
        pred[pred == 2] = 0  # a missed kidney now and then: exercises the empty-mask rule
    name = f"case_{index:03d}"
    geometry = {"spacing": SPACING, "origin": (-120.0, -100.0, 40.0)}
    write_volume(Volume(ref, **geometry), Path(folder) / "ref" / f"{name}.nii.gz")  # type: ignore[arg-type]
    write_volume(Volume(pred, **geometry), Path(folder) / "pred" / f"{name}.nii.gz")  # type: ignore[arg-type]
    return name


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (robust on a shared, busy machine)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_medseg(folder: Path, workers: int, out: Path) -> tuple[float, object]:
    from medseg.evaluation import EvaluationConfig, evaluate, write_report

    cfg = EvaluationConfig(
        labels={1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}, workers=workers
    )
    t0 = time.perf_counter()
    result = evaluate(folder / "pred", folder / "ref", cfg)
    write_report(result, out, overwrite=True)
    return time.perf_counter() - t0, result


def run_monai(folder: Path, names: list[str], threads: int) -> tuple[float, float, dict[str, np.ndarray]]:
    import SimpleITK as sitk
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

    torch.set_num_threads(threads)
    dice = DiceMetric(include_background=False, reduction="none")
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    assd = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")
    spacing_xyz_to_zyx = list(SPACING)
    t_read = 0.0
    t0 = time.perf_counter()
    for name in names:
        r0 = time.perf_counter()
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ref" / f"{name}.nii.gz")))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "pred" / f"{name}.nii.gz")))
        t_read += time.perf_counter() - r0
        yp = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), N_CLASSES + 1)
        yt = torch.nn.functional.one_hot(torch.from_numpy(ref.astype(np.int64)), N_CLASSES + 1)
        yp = yp.permute(3, 0, 1, 2)[None].to(torch.uint8)
        yt = yt.permute(3, 0, 1, 2)[None].to(torch.uint8)
        dice(yp, yt)
        hd95(yp, yt, spacing=spacing_xyz_to_zyx)
        assd(yp, yt, spacing=spacing_xyz_to_zyx)
    total = time.perf_counter() - t0
    values = {
        "dice": dice.aggregate().numpy(),
        "hd95": hd95.aggregate().numpy(),
        "assd": assd.aggregate().numpy(),
    }
    return total, t_read, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--monai-cases", type=int, default=None, help="MONAI on the first N cases only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_bench.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated cases in this folder")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="medseg_eval_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            names = sorted(pool.map(make_case, range(args.cases), [str(folder)] * args.cases))
        t_gen = time.perf_counter() - t0
        print(f"generated {len(names)} cases of {SHAPE} at {SPACING} mm in {t_gen:.1f} s ({folder})")

        c0 = cpu_seconds()
        t_ms, result = run_medseg(folder, args.workers, folder / "report")
        cpu_ms = cpu_seconds() - c0
        print(
            f"medseg evaluate, {args.workers} workers, all metrics + report: {t_ms:.1f} s (CPU {cpu_ms:.1f} s)"
        )
        c0 = cpu_seconds()
        t_ms1, _ = run_medseg(folder, 1, folder / "report1")
        cpu_ms1 = cpu_seconds() - c0
        print(f"medseg evaluate, 1 worker: {t_ms1:.1f} s (CPU {cpu_ms1:.1f} s)")

        n_monai = args.monai_cases or len(names)
        c0 = cpu_seconds()
        t_mo, t_mo_read, mo = run_monai(folder, names[:n_monai], args.workers)
        cpu_mo = cpu_seconds() - c0
        scale = len(names) / n_monai
        print(
            f"MONAI Dice + HD95 + ASSD on {n_monai} cases: {t_mo:.1f} s (CPU {cpu_mo:.1f} s, reading {t_mo_read:.1f} s)"
            + (f", x{scale:.1f} = {t_mo * scale:.1f} s for {len(names)}" if n_monai != len(names) else "")
        )

        agreement = {}
        for metric in ("dice", "hd95", "assd"):
            ours = np.array(
                [[c.per_label[lab][metric] for lab in (1, 2, 3, 4)] for c in result.cases[:n_monai]]  # type: ignore[attr-defined]
            )
            theirs = mo[metric].astype(float)
            both = np.isfinite(ours) & np.isfinite(theirs)
            agreement[metric] = {
                "max_abs_diff": float(np.max(np.abs(ours[both] - theirs[both]))) if both.any() else None,
                "n_compared": int(both.sum()),
                "n_nan_or_inf_medseg": int((~np.isfinite(ours)).sum()),
                "n_nan_or_inf_monai": int((~np.isfinite(theirs)).sum()),
            }
        monai_full = t_mo * scale
        report = {
            "cases": len(names),
            "shape_zyx": list(SHAPE),
            "spacing_zyx_mm": list(SPACING),
            "foreground_classes": N_CLASSES,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "medseg_seconds": {f"workers_{args.workers}": round(t_ms, 2), "workers_1": round(t_ms1, 2)},
            "medseg_metrics": list(result.config.metrics),  # type: ignore[attr-defined]
            "medseg_cpu_seconds": {
                f"workers_{args.workers}": round(cpu_ms, 2),
                "workers_1": round(cpu_ms1, 2),
            },
            "monai_seconds": round(monai_full, 2),
            "monai_cpu_seconds": round(cpu_mo * scale, 2),
            "load_average_at_end": list(os.getloadavg()),
            "monai_seconds_reading": round(t_mo_read * scale, 2),
            "monai_cases_timed": n_monai,
            "monai_metrics": [
                "DiceMetric",
                "HausdorffDistanceMetric(percentile=95)",
                "SurfaceDistanceMetric(symmetric)",
            ],
            "monai_over_medseg": {
                f"workers_{args.workers}": round(monai_full / t_ms, 2),
                "workers_1": round(monai_full / t_ms1, 2),
                "cpu_workers_1": round(cpu_mo * scale / cpu_ms1, 2),
            },
            "agreement_with_monai": agreement,
            "note": "Wall times are inflated when other jobs share the CPUs (see load_average_at_end); "
            "CPU seconds are not. medseg times include reading, all 12 metrics and writing CSV/JSON/PNG/HTML; "
            "MONAI times include reading and one-hot encoding, 3 metrics. NaN (one-sided empty masks) "
            "are compared only where both tools give a finite value.",
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: report[k] for k in ("medseg_seconds", "monai_seconds", "monai_over_medseg")}))
        print(json.dumps(agreement))
        print(f"wrote {args.out}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
