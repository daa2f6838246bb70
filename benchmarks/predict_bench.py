"""Prediction benchmark: end to end, our sliding window vs MONAI's, ONNX Runtime vs PyTorch.

One run, side by side, on a 384 x 384 x 24 T2-like volume (the prostate phantom at its
full PROSTATEx-like size, 0.5 x 0.5 x 3 mm, oblique, stored as int16 NIfTI like a
converted MR series) with the exercise-sized 3D U-Net (16 base features, max 256, the
plan's anisotropic pooling) on ``--threads`` CPU threads (default 2):

* ``e2e`` / ``e2e_onnx``: ``medseg.inference.predictor.predict`` on the NIfTI file:
  reading, preprocessing, sliding window (overlap 0.5, 4 windows per forward pass, no
  TTA), restoring onto the input grid, postprocessing (largest component and 3D hole
  filling per class) and writing the label NIfTI; with the stages timed separately;
* ``monai``: MONAI's ``sliding_window_inference`` called directly with the same network,
  ROI, overlap, Gaussian weighting and 4 windows per batch, on the preprocessed image;
* ``ours``: ``medseg.inference.sliding_window.predict_probabilities`` (which also applies
  the softmax and returns numpy) with the PyTorch network;
* ``ours_onnx``: the same with ``OnnxNetwork`` (ONNX Runtime, CPUExecutionProvider).

The model is randomly initialised (seeded) and saved in the model-folder format with the
checkpoint helpers; timing does not depend on the weights (only the postprocessing sees
a less anatomical label map than a trained model's). Plan: target spacing (3, 0.5, 0.5)
mm and patch 24 x 128 x 128. The exercise's 21 x 128 x 128 is not divisible by the
pooling (two z poolings: z must be a multiple of 4); 24 (rather than 20) covers the 24
slices in ONE window along z, so the volume takes 1 x 5 x 5 = 25 windows at overlap 0.5
(20 would take 2 x 5 x 5 = 50).

Method: each measurement runs in a fresh Python process (so each contender's peak RSS is
its own: VmHWM of that process, which exec resets, unlike ru_maxrss that inherits the
parent's); contenders are interleaved, their order rotated every round, ``--repeats``
rounds; medians are reported. Sliding-window contenders get one warm-up forward pass of a
full batch first (oneDNN's first-call setup; ONNX Runtime does its setup when the session
is created). ``e2e`` is cold: the first case in a process that has loaded the model (model
loading is reported separately), i.e. what one ``medseg predict`` call costs apart from
Python start-up. ``os.getloadavg()`` is recorded before and after every measurement: the
machine may be shared, and a high load inflates every figure.

The setup also counts the network's arithmetic (torch's FLOP counter, one window) and
the windows, and the summary divides it by each sliding window's time: the achieved
GFLOP/s, to compare with the CPU's peak. That bounds what any runtime can reach: at
about 60 GFLOP per 24 x 128 x 128 window, 25 windows are about 1.5 TFLOP.

Usage: ``python benchmarks/predict_bench.py [--repeats 3] [--threads 2]
[--out benchmarks/results/predict_bench.json]`` (a few minutes on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("monai", "ours", "ours_onnx", "e2e", "e2e_onnx")
SW_BATCH = 4
OVERLAP = 0.5
PATCH = (24, 128, 128)
SPACING = (3.0, 0.5, 0.5)
TARGETS = {
    "e2e_seconds": 8.0,
    "ours_over_monai": 1.0,
    "torch_over_onnx": 1.5,
}


# ------------------------------------------------------------------ process memory
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


# ------------------------------------------------------------------ setup
def build_model_folder(folder: Path, seed: int = 0) -> None:
    """A randomly initialised exercise-sized 3D U-Net saved as a medseg model folder."""
    import torch

    from medseg.config import to_dict
    from medseg.data.phantom import PROSTATE_LABELS
    from medseg.postprocessing.labels import ClassRule, PostprocessingRules, write_rules
    from medseg.preprocessing.plan import (
        PLAN_SCHEMA_VERSION,
        ChannelNormalization,
        NetworkPlan,
        Plan,
        pooling_schedule,
    )
    from medseg.training.checkpoint import save_checkpoint, write_model_json
    from medseg.training.trainer import architecture_from_plan

    pooling, kernels = pooling_schedule(PATCH, SPACING)
    plan = Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        dataset_name="predict_bench",
        configuration="3d",
        channel_names=("T2",),
        labels=dict(PROSTATE_LABELS),
        target_spacing=SPACING,
        patch_size=PATCH,
        batch_size=2,
        normalization=(ChannelNormalization(scheme="zscore"),),
        network=NetworkPlan(base_features=16, max_features=256, pooling=pooling, kernels=kernels),
    )
    torch.manual_seed(seed)
    arch = architecture_from_plan(plan)
    net = arch.build()
    folder.mkdir(parents=True)
    plan.save(folder / "plan.json")
    dataset = {
        "name": plan.dataset_name,
        "channel_names": {"0": "T2"},
        "labels": plan.labels,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    rule = ClassRule(keep_largest=True, fill_holes="3d")
    write_rules(PostprocessingRules.uniform(range(1, plan.num_classes), rule), folder / "postprocessing.json")
    save_checkpoint(
        folder / "checkpoint_best.pt",
        {"model": net.state_dict(), "architecture": arch.to_dict(), "plan": to_dict(plan), "epoch": 0},
    )
    write_model_json(
        folder,
        arch,
        {
            "configuration": "3d",
            "labels": plan.labels,
            "channel_names": list(plan.channel_names),
            "note": "randomly initialised (benchmark)",
        },
    )


def setup(work: Path) -> dict[str, Any]:
    import numpy as np

    from medseg.data.phantom import PROSTATE_FULL_SIZE, make_prostate_case
    from medseg.inference.onnx import export_onnx, read_metadata
    from medseg.io import read_channels, write_volume
    from medseg.preprocessing.pipeline import preprocess_case
    from medseg.preprocessing.plan import Plan

    t0 = time.perf_counter()
    case = make_prostate_case(0, size=PROSTATE_FULL_SIZE)
    image = case.image.with_array(np.clip(case.image.array, -32768, 32767).round().astype(np.int16))
    image_path = write_volume(image, work / "input" / "prostate_full.nii.gz")
    t1 = time.perf_counter()
    build_model_folder(work / "model")
    onnx_path = export_onnx(work / "model")[0]
    t2 = time.perf_counter()
    plan = Plan.load(work / "model" / "plan.json")
    pre, _, _ = preprocess_case(read_channels(image_path), None, plan)
    np.save(work / "preprocessed.npy", pre)
    windows = window_count(pre.shape[1:], plan.patch_size, OVERLAP)
    gflop = network_gflop(work / "model", (1, plan.in_channels, *plan.patch_size))
    return {
        "windows": windows,
        "gflop_per_window": round(gflop, 2),
        "tflop_per_volume": round(windows * gflop / 1000, 3),
        "input_shape_zyx": list(image.shape),
        "input_spacing_zyx_mm": [round(s, 4) for s in image.spacing],
        "input_file_mib": round(image_path.stat().st_size / 2**20, 2),
        "preprocessed_shape_czyx": list(pre.shape),
        "phantom_seconds": round(t1 - t0, 2),
        "model_and_onnx_export_seconds": round(t2 - t1, 2),
        "onnx_verified_max_abs_logit_diff": float(read_metadata(onnx_path)["verified_max_abs_diff"]),
    }


def window_count(shape: Any, roi: Any, overlap: float) -> int:
    """Windows MONAI's sliding window visits (its scan interval: int(roi * (1 - overlap)))."""
    count = 1
    for size, r in zip(shape, roi, strict=True):
        if size <= r:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        count *= -(-(size - r) // interval) + 1
    return count


def network_gflop(model_dir: Path, input_shape: tuple[int, ...]) -> float:
    """Floating-point operations of one forward pass of one window (torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medseg.inference.predictor import SegmentationModel

    net = SegmentationModel(model_dir, device="cpu").networks[0]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(input_shape))
    return counter.get_total_flops() / 1e9


# ------------------------------------------------------------------ workers
def _timed(stats: dict[str, float], name: str, func: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            stats[name] = stats.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def worker(name: str, work: Path, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from monai.inferers import sliding_window_inference

    import medseg.inference.predictor as predictor_mod
    import medseg.inference.sliding_window as sw_mod
    import medseg.postprocessing.labels as labels_mod
    from medseg.inference.onnx import OnnxNetwork
    from medseg.inference.predictor import PredictConfig, SegmentationModel, predict
    from medseg.preprocessing.plan import Plan

    rss_after_imports = _status_kib("VmRSS")
    out: dict[str, Any] = {"contender": name}
    model_dir = work / "model"
    plan = Plan.load(model_dir / "plan.json")
    backend: Literal["torch", "onnx"] = "onnx" if name.endswith("onnx") else "torch"
    t0 = time.perf_counter()
    model = SegmentationModel(model_dir, device="cpu", backend=backend, threads=threads)
    out["model_load_seconds"] = time.perf_counter() - t0
    net = model.networks[0]
    if backend == "onnx":
        assert isinstance(net, OnnxNetwork)
        out["onnx_providers"] = net.providers

    if name.startswith("e2e"):
        stages: dict[str, float] = {}
        patches = [
            (predictor_mod, "read_channels", "read"),
            (predictor_mod, "preprocess_case", "preprocess"),
            (sw_mod, "predict_probabilities", "sliding_window"),
            (predictor_mod, "restore_to_original", "restore_to_input_grid"),
            (labels_mod, "apply_rules", "postprocess"),
            (predictor_mod, "write_volume", "write"),
        ]
        for module, attr, stage in patches:  # time the predictor's stages without changing it
            setattr(module, attr, _timed(stages, stage, getattr(module, attr)))
        cfg = PredictConfig(
            formats=("nifti",), overlap=OVERLAP, sw_batch_size=SW_BATCH, backend=backend, threads=threads
        )
        target = Path(tempfile.mkdtemp(prefix=f"out_{name}_", dir=work))
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        results = predict(work / "input" / "prostate_full.nii.gz", model, target, cfg)
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()[0]
        if not results[0].ok:
            raise RuntimeError(results[0].error)
        out["stages_seconds"] = {k: round(v, 3) for k, v in stages.items()}
        label = np.asarray(__import__("nibabel").load(next(target.glob("*.nii.gz"))).dataobj)
        out["label_voxels_per_class"] = {
            int(k): int(v) for k, v in zip(*np.unique(label, return_counts=True), strict=True)
        }
    else:
        image = np.load(work / "preprocessed.npy")
        with torch.no_grad():
            net(torch.randn(SW_BATCH, *image.shape[:1], *plan.patch_size))  # warm-up, one full batch
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        result: Any
        if name == "monai":
            with torch.no_grad():
                logits = sliding_window_inference(
                    torch.from_numpy(image)[None],
                    roi_size=plan.patch_size,
                    sw_batch_size=SW_BATCH,
                    predictor=net,
                    overlap=OVERLAP,
                    mode="gaussian",
                )
            assert isinstance(logits, torch.Tensor)
            result = logits
        else:
            result = sw_mod.predict_probabilities(
                net, image, plan, device="cpu", overlap=OVERLAP, sw_batch_size=SW_BATCH
            )
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()[0]
        out["output_shape"] = list(result.shape)
    out.update(
        seconds=seconds,
        loadavg_1min_before_after=[round(load_before, 2), round(load_after, 2)],
        rss_after_imports_mib=_mib(rss_after_imports),
        peak_rss_mib=_mib(_status_kib("VmHWM")),
    )
    return out


def run_worker(name: str, work: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--work", str(work), "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ main
def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(runs: dict[str, list[dict[str, Any]]], info: dict[str, Any]) -> dict[str, Any]:
    med = {name: _median(rs, "seconds") for name, rs in runs.items()}
    work_gflop = info["tflop_per_volume"] * 1000
    summary: dict[str, Any] = {
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        # The network's arithmetic over the whole volume divided by the time: compare with
        # the CPU's peak (e.g. about 100 GFLOP/s per core for FP32 with AVX-512 / 2 FMA units).
        "network_gflop_per_second": {
            k: round(work_gflop / med[k], 1) for k in ("monai", "ours", "ours_onnx") if k in med
        },
        "median_peak_rss_mib": {k: _median(rs, "peak_rss_mib") for k, rs in runs.items()},
        "median_model_load_seconds": {
            k: round(_median(rs, "model_load_seconds"), 3) for k, rs in runs.items()
        },
        "ratios": {
            "ours_over_monai": round(med["ours"] / med["monai"], 3),
            "torch_over_onnx (ONNX speed-up, sliding window)": round(med["ours"] / med["ours_onnx"], 3),
            "torch_over_onnx (ONNX speed-up, end to end)": round(med["e2e"] / med["e2e_onnx"], 3),
        },
    }
    for name in ("e2e", "e2e_onnx"):
        stage_names = runs[name][0]["stages_seconds"].keys()
        summary[f"{name}_median_stage_seconds"] = {
            s: round(statistics.median(r["stages_seconds"][s] for r in runs[name]), 3) for s in stage_names
        }
    summary["targets_met"] = {
        "e2e <= 8 s": med["e2e"] <= TARGETS["e2e_seconds"],
        "ours / monai <= 1.0": med["ours"] / med["monai"] <= TARGETS["ours_over_monai"],
        "torch / onnx >= 1.5 (sliding window)": med["ours"] / med["ours_onnx"] >= TARGETS["torch_over_onnx"],
    }
    loads = [v for rs in runs.values() for r in rs for v in r["loadavg_1min_before_after"]]
    summary["loadavg_1min_min_median_max"] = [min(loads), round(statistics.median(loads), 2), max(loads)]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_bench.json")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma list of contenders")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.threads)))
        return

    contenders = [c for c in args.only.split(",") if c]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="predict_bench_") as tmp:
        work = Path(tmp)
        print("setting up (phantom, random model folder, ONNX export) ...", flush=True)
        info = setup(work)
        print(json.dumps(info), flush=True)
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for rnd in range(args.repeats):
            shift = rnd % len(contenders)
            for name in contenders[shift:] + contenders[:shift]:
                res = run_worker(name, work, args.threads)
                runs[name].append(res)
                print(
                    f"round {rnd + 1}/{args.repeats} {name:>9}: {res['seconds']:6.2f} s, "
                    f"peak RSS {res['peak_rss_mib']:7.1f} MiB, load {res['loadavg_1min_before_after']}",
                    flush=True,
                )
    import monai
    import numpy
    import onnxruntime
    import torch

    summary = summarise(runs, info) if set(contenders) == set(CONTENDERS) else {}
    record = {
        "benchmark": "medseg prediction: end to end, sliding window vs MONAI, ONNX Runtime vs PyTorch",
        "targets": {
            "end-to-end seconds (no TTA)": "<= 8",
            "ours / MONAI sliding_window_inference": "<= 1.0",
            "PyTorch / ONNX Runtime": ">= 1.5",
        },
        "method": (
            "fresh process per measurement (peak RSS = VmHWM of that process), contenders interleaved "
            "with the order rotated each round, median of the rounds; sliding-window contenders after one "
            "warm-up batch, end to end cold after model loading; randomly initialised model"
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
        },
        "setup": {
            **info,
            "plan": {"target_spacing_zyx_mm": SPACING, "patch_size_zyx": PATCH, "base_features": 16},
            "sliding_window": {
                "overlap": OVERLAP,
                "windows_per_batch": SW_BATCH,
                "mode": "gaussian",
                "tta": False,
            },
        },
        "summary": summary,
        "runs": runs,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    if summary:
        print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} ({record['total_seconds']} s)")


if __name__ == "__main__":
    main()
