"""Preprocessing benchmark: peak memory and time of medseg, plain SimpleITK and nnU-Net v2.

One CT-like case of 512 x 512 x 600 voxels (int16 HU, spacing 1.0 x 0.7 x 0.7 mm (z, y, x),
slightly oblique direction with the axis order of an axial series, labels liver / kidneys /
spleen) is written as gzipped NIfTI in a two-case nnU-Net v2 dataset (case ``ct_001`` is a
hard link to ``ct_000``'s files: same voxels, generated once). Every contender reads the
files itself and resamples to 1.5 x 1.5 x 1.5 mm:

* ``sitk_floor``: SimpleITK ``ReadImage`` of image and label, ``Resample`` of the image
  (linear, float32 output) and of the label (nearest) onto the 1.5 mm grid, arrays out
  with ``GetArrayFromImage``. No cropping, no normalisation: the floor any SimpleITK-based
  preprocessing pays.
* ``medseg_case``: ``read_volume`` of image and label, then ``preprocess_case`` with the
  dataset's plan (3D, target 1.5 mm, CT normalisation: clip to the foreground
  [0.5, 99.5] percentiles, z-score with dataset statistics; crop to non-zero, which keeps
  the whole CT since air is -1000 HU).
* ``medseg_dataset_w1`` / ``medseg_dataset_w2``: ``preprocess_dataset`` of both cases into
  a fresh cache (.npy files), with 1 and 2 worker processes.
* ``nnunet_case``: nnU-Net v2's ``DefaultPreprocessor.run_case`` on the same files, run by
  the separate nnU-Net venv's Python (never the project's venv). Its plans are written by
  hand with nnU-Net's own defaults (``ExperimentPlanner.determine_resampling``: cubic
  spline for the image, linear one-hot for the label, separate-z only for anisotropic
  spacing -- not the case here), spacing 1.5 mm, ``CTNormalization`` with the same
  foreground statistics as medseg's plan. Like nnU-Net it normalises before resampling
  and samples foreground locations for oversampling (part of its ``run_case``).
* ``medseg_plan`` (information, not preprocessing): ``plan_dataset`` (fingerprint of both
  cases, one process), which writes the plan the medseg contenders use.

Method. Each contender runs in a fresh Python process (``python preprocess_bench.py
--contender NAME``) so no contender inherits another's heap. Memory:

* ``peak_rss_mib``: the largest resident set any single process of the contender reached
  -- the kernel's high-water mark VmHWM read from /proc/self/status at the end of the work
  (it includes the interpreter and imports; ``baseline_rss_mib`` is the resident set after
  the imports, before the work), and for worker processes ``getrusage(RUSAGE_CHILDREN)
  .ru_maxrss``, the largest of the waited-for children. The parent's own
  ``RUSAGE_CHILDREN`` is not used because it is a running maximum over all contenders.
* ``tree_pss_peak_mib`` / ``tree_rss_peak_mib``: the benchmark polls the contender's
  process tree every 50 ms and sums PSS and RSS (/proc/PID/smaps_rollup) over it: the
  machine's memory actually in use with parallel workers. Sampled, so it can miss short
  spikes; RSS double-counts pages shared after fork, PSS splits them.

Time: ``work_s`` is the wall time of the work inside the process (after imports); the
machine has 2 cores shared with other jobs, so every measurement records
``os.getloadavg()`` before and after. Memory does not depend on the load; time does.
One run per contender (the case is large; the whole benchmark takes a few minutes).

Cross-check: the outputs are compared (grid shape, intensity difference after the same
normalisation, label agreement), so the contenders are known to do the same job.

Usage: ``python benchmarks/preprocess_bench.py [--out benchmarks/results/preprocess_bench.json]
[--nnunet-python benchmarks/work/nnunet-venv/bin/python] [--regenerate]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "preprocess_bench"
DEFAULT_NNUNET_PY = ROOT / "benchmarks" / "work" / "nnunet-venv" / "bin" / "python"
SHAPE = (600, 512, 512)  # (z, y, x)
SPACING = (1.0, 0.7, 0.7)  # (z, y, x) mm
TARGET_SPACING = (1.5, 1.5, 1.5)
PHANTOM_SEED = 3
GEN_VERSION = 1
TARGET_GIB = 4.0
CASES = ("ct_000", "ct_001")
CONTENDERS = (
    "medseg_plan",
    "sitk_floor",
    "medseg_case",
    "medseg_dataset_w1",
    "medseg_dataset_w2",
    "nnunet_case",
)


# ------------------------------------------------------------------ child side
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _image_path(data: Path, case: str) -> Path:
    return data / "imagesTr" / f"{case}_0000.nii.gz"


def _label_path(data: Path, case: str) -> Path:
    return data / "labelsTr" / f"{case}.nii.gz"


def _generate(data: Path) -> dict[str, Any]:
    """Write the two-case dataset; returns what was made.

    The phantom is defined analytically in world coordinates; evaluating it on 157 M voxels
    takes minutes, so it is sampled on a 2x coarser grid (2.0 x 1.4 x 1.4 mm, in slabs)
    and resampled onto the 512 x 512 x 600 grid (image linear, label nearest), then
    Gaussian noise is added at full resolution. The result is a CT-like int16 volume
    with the target grid; its anatomy detail is irrelevant to memory and time.
    """
    import numpy as np

    from medseg.data.dataset import DatasetDescriptor, write_descriptor
    from medseg.data.phantom import CT_LABELS, ct_anatomy, ct_geometry, sample_ct
    from medseg.geometry.resample import grid_for_spacing, resample_image, resample_label
    from medseg.io.itk import write_itk
    from medseg.volume import Volume, VolumeGeometry

    anatomy = ct_anatomy(PHANTOM_SEED)
    grid = ct_geometry(anatomy, SHAPE, SPACING)
    coarse = grid_for_spacing(grid, [2 * s for s in SPACING])
    slab = 50
    images, labels = [], []
    for z0 in range(0, coarse.shape[0], slab):
        n = min(slab, coarse.shape[0] - z0)
        origin = np.asarray(coarse.origin) + coarse.direction @ np.array([z0 * coarse.spacing[0], 0.0, 0.0])
        sub = VolumeGeometry((n, *coarse.shape[1:]), coarse.spacing, origin, coarse.direction)
        img, lab = sample_ct(anatomy, sub, noise=False)
        images.append(img.array)
        labels.append(lab.array)
    meta = img.meta
    coarse_img = Volume(np.concatenate(images), geometry=coarse, meta=meta)
    coarse_lab = Volume(np.concatenate(labels), geometry=coarse)
    del images, labels
    fine = resample_image(coarse_img, grid, interpolation="linear", default_value=-1000.0).array
    rng = np.random.default_rng(PHANTOM_SEED)
    for z in range(0, fine.shape[0], 50):  # noise in chunks: no 157 M-voxel float64 temporary
        block = fine[z : z + 50]
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(anatomy.noise_sigma)
    hu = np.clip(np.rint(fine, out=fine), -1024, 3071).astype(np.int16)
    del fine
    label = resample_label(coarse_lab, grid).array
    data.mkdir(parents=True)
    (data / "imagesTr").mkdir()
    (data / "labelsTr").mkdir()
    write_itk(Volume(hu, geometry=grid, meta=meta), _image_path(data, CASES[0]))
    write_itk(Volume(label, geometry=grid), _label_path(data, CASES[0]))
    for case in CASES[1:]:
        os.link(_image_path(data, CASES[0]), _image_path(data, case))
        os.link(_label_path(data, CASES[0]), _label_path(data, case))
    write_descriptor(
        data,
        DatasetDescriptor(
            channel_names={"0": "CT"},
            labels=dict(CT_LABELS),
            file_ending=".nii.gz",
            num_training=len(CASES),
            name="preprocess_bench",
            description="CT phantom for benchmarks/preprocess_bench.py; not patient data.",
        ),
    )
    counts = np.bincount(label.reshape(-1), minlength=5)
    return {
        "shape_zyx": list(grid.shape),
        "spacing_zyx": list(grid.spacing),
        "direction": np.round(grid.direction, 4).tolist(),
        "origin": [round(float(o), 3) for o in grid.origin],
        "dtype": str(hu.dtype),
        "hu_min_max": [int(hu.min()), int(hu.max())],
        "label_voxels": {str(i): int(c) for i, c in enumerate(counts)},
        "image_file_mib": round(_image_path(data, CASES[0]).stat().st_size / 2**20, 1),
        "label_file_mib": round(_label_path(data, CASES[0]).stat().st_size / 2**20, 1),
        "phantom_seed": PHANTOM_SEED,
        "version": GEN_VERSION,
    }


def _sitk_target(image: Any) -> Any:
    """The 1.5 mm reference grid covering the image's extent (outer voxel faces fixed)."""
    import numpy as np
    import SimpleITK as sitk

    old_sp = np.array(image.GetSpacing())
    new_sp = np.array(TARGET_SPACING[::-1])  # x, y, z
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_sp / new_sp)).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new_sp - old_sp) / 2)
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in new_sp])
    ref.SetOrigin([float(o) for o in origin])
    ref.SetDirection(image.GetDirection())
    return ref


def _run_contender(name: str, work: Path) -> dict[str, Any]:
    """Runs in the child process; returns timings and memory."""
    data = work / "data"
    outputs = work / "outputs"
    image_file, label_file = _image_path(data, CASES[0]), _label_path(data, CASES[0])
    res: dict[str, Any] = {}
    if name == "nnunet_case":
        import nnunetv2
        import numpy as np
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
            ExperimentPlanner,
        )
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans = _nnunet_plans(work, ExperimentPlanner)
        baseline = _status_kib("VmRSS")
        t0 = time.perf_counter()
        pm = PlansManager(plans)
        cm = pm.get_configuration("3d_fullres")
        pre = DefaultPreprocessor(verbose=False)
        image, seg, _properties = pre.run_case(
            [str(image_file)], str(label_file), pm, cm, str(data / "dataset.json")
        )
        res["work_s"] = time.perf_counter() - t0
        res["hwm_kib"] = _status_kib("VmHWM")
        res["version"] = (
            nnunetv2.__version__ if hasattr(nnunetv2, "__version__") else _pkg_version("nnunetv2")
        )
        res["resampling"] = {
            "data": [cm.configuration["resampling_fn_data"], cm.configuration["resampling_fn_data_kwargs"]],
            "seg": [cm.configuration["resampling_fn_seg"], cm.configuration["resampling_fn_seg_kwargs"]],
        }
        res["output_shape"] = list(image.shape)
        np.save(outputs / f"{name}_image.npy", image[0])
        np.save(outputs / f"{name}_label.npy", seg[0])
    elif name == "sitk_floor":
        import numpy as np
        import SimpleITK as sitk

        baseline = _status_kib("VmRSS")
        t0 = time.perf_counter()
        img = sitk.ReadImage(str(image_file))
        lab = sitk.ReadImage(str(label_file))
        t_read = time.perf_counter() - t0
        ref = _sitk_target(img)
        out_img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        del img
        out_lab = sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, lab.GetPixelID())
        del lab
        image = sitk.GetArrayFromImage(out_img)
        label = sitk.GetArrayFromImage(out_lab)
        del out_img, out_lab
        res["work_s"] = time.perf_counter() - t0
        res["read_s"] = t_read
        res["hwm_kib"] = _status_kib("VmHWM")
        res["output_shape"] = list(image.shape)
        np.save(outputs / f"{name}_image.npy", image)
        np.save(outputs / f"{name}_label.npy", label)
    elif name == "medseg_case":
        import numpy as np

        from medseg.io import read_volume
        from medseg.preprocessing.pipeline import load_dataset_plan, preprocess_case

        plan = load_dataset_plan(data, "3d")
        baseline = _status_kib("VmRSS")
        t0 = time.perf_counter()
        volumes = [read_volume(image_file)]
        label_volume = read_volume(label_file)
        t_read = time.perf_counter() - t0
        pre_image, pre_label, _ = preprocess_case(volumes, label_volume, plan, CASES[0])
        res["work_s"] = time.perf_counter() - t0
        res["read_s"] = t_read
        res["hwm_kib"] = _status_kib("VmHWM")
        res["output_shape"] = list(pre_image.shape)
        np.save(outputs / f"{name}_image.npy", pre_image[0])
        np.save(outputs / f"{name}_label.npy", np.asarray(pre_label))
    elif name.startswith("medseg_dataset_w"):
        from medseg.preprocessing.pipeline import load_dataset_plan, preprocess_dataset

        workers = int(name.rsplit("w", 1)[1])
        plan = load_dataset_plan(data, "3d")
        cache = outputs / name
        shutil.rmtree(cache, ignore_errors=True)
        baseline = _status_kib("VmRSS")
        t0 = time.perf_counter()
        preprocess_dataset(data, plan, cache, workers=workers)
        res["work_s"] = time.perf_counter() - t0
        res["hwm_kib"] = _status_kib("VmHWM")
        res["cases"] = len(CASES)
    elif name == "medseg_plan":
        from medseg.preprocessing.pipeline import plan_dataset

        baseline = _status_kib("VmRSS")
        t0 = time.perf_counter()
        plan, _ = plan_dataset(
            data,
            "3d",
            overrides={"target_spacing": list(TARGET_SPACING)},
            workers=1,
            overwrite=True,
        )
        res["work_s"] = time.perf_counter() - t0
        res["hwm_kib"] = _status_kib("VmHWM")
        res["plan"] = {
            "target_spacing": list(plan.target_spacing),
            "normalization": [vars(n) for n in plan.normalization],
            "patch_size": list(plan.patch_size),
            "crop_to_nonzero": plan.crop_to_nonzero,
            "image_interpolation": plan.image_interpolation,
            "label_interpolation": plan.label_interpolation,
        }
    else:
        raise SystemExit(f"unknown contender {name}")
    import resource

    res["baseline_kib"] = baseline
    res["children_maxrss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return res


def _pkg_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _nnunet_plans(work: Path, planner: Any) -> dict[str, Any]:
    """nnU-Net plans for the 1.5 mm 3d_fullres configuration, with nnU-Net's default resampling."""
    data = work / "data"
    medseg_plan = json.loads((data / "plans" / "3d.json").read_text())
    fingerprint = json.loads((data / "plans" / "fingerprint.json").read_text())
    stats = fingerprint["channels"][0]
    norm = medseg_plan["normalization"][0]
    rd, rd_kw, rs, rs_kw = planner.determine_resampling(None)  # does not use self
    rp, rp_kw = planner.determine_segmentation_softmax_export_fn(None)
    return {
        "dataset_name": "Dataset999_PreprocessBench",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(SPACING),
        "original_median_shape_after_transp": list(SHAPE),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": stats["max"],
                "mean": norm["mean"],
                "median": stats["median"],
                "min": stats["min"],
                "percentile_00_5": norm["clip_low"],
                "percentile_99_5": norm["clip_high"],
                "std": norm["std"],
            }
        },
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": medseg_plan["patch_size"],
                "median_image_size_in_voxels": medseg_plan["median_shape"],
                "spacing": list(TARGET_SPACING),
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": rd.__name__,
                "resampling_fn_seg": rs.__name__,
                "resampling_fn_data_kwargs": rd_kw,
                "resampling_fn_seg_kwargs": rs_kw,
                "resampling_fn_probabilities": rp.__name__,
                "resampling_fn_probabilities_kwargs": rp_kw,
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
            }
        },
    }


def _child_main(name: str, work: Path) -> None:
    if name == "generate":
        t0 = time.perf_counter()
        info = _generate(work / "data")
        info["work_s"] = time.perf_counter() - t0
        info["hwm_kib"] = _status_kib("VmHWM")
        print("RESULT " + json.dumps(info), flush=True)
        return
    print("RESULT " + json.dumps(_run_contender(name, work)), flush=True)


# ------------------------------------------------------------------ parent side
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def _rollup_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _measure(cmd: list[str], timeout: float) -> dict[str, Any]:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = {"rss": 0, "pss": 0, "processes": 1}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            vals = [_rollup_kib(p) for p in pids]
            peak["rss"] = max(peak["rss"], sum(v[0] for v in vals))
            peak["pss"] = max(peak["pss"], sum(v[1] for v in vals))
            peak["processes"] = max(peak["processes"], len(pids))
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\n(killed after {timeout:.0f} s)"
    done.set()
    poller.join()
    total = time.perf_counter() - t0
    out: dict[str, Any] = {
        "returncode": proc.returncode,
        "process_s": round(total, 2),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "tree_rss_peak_mib": round(peak["rss"] / 1024, 1),
        "tree_pss_peak_mib": round(peak["pss"] / 1024, 1),
        "max_processes": peak["processes"],
    }
    result = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not result:
        out["error"] = (stderr or stdout)[-3000:]
        return out
    child = json.loads(result[-1][len("RESULT ") :])
    for key in ("hwm_kib", "baseline_kib", "children_maxrss_kib"):
        if key in child:
            out[key.replace("_kib", "_mib")] = round(child.pop(key) / 1024, 1)
    for key in ("work_s", "read_s"):
        if key in child:
            out[key] = round(child.pop(key), 2)
    out["peak_rss_mib"] = max(out.get("hwm_mib", 0.0), out.get("children_maxrss_mib", 0.0))
    out.update(child)
    return out


def _compare(work: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Do the contenders compute the same thing? Intensities in normalised units, labels."""
    import numpy as np

    outputs = work / "outputs"
    plan = json.loads((work / "data" / "plans" / "3d.json").read_text())
    norm = plan["normalization"][0]

    def normalise(a: np.ndarray) -> np.ndarray:
        return (np.clip(a, norm["clip_low"], norm["clip_high"]) - norm["mean"]) / norm["std"]

    ref_img = np.load(outputs / "medseg_case_image.npy")
    ref_lab = np.load(outputs / "medseg_case_label.npy")
    out: dict[str, Any] = {"reference": "medseg_case", "shape": list(ref_img.shape)}
    others = {
        "sitk_floor": (outputs / "sitk_floor_image.npy", outputs / "sitk_floor_label.npy", True),
        "nnunet_case": (outputs / "nnunet_case_image.npy", outputs / "nnunet_case_label.npy", False),
        "medseg_dataset_w1": (
            outputs / "medseg_dataset_w1" / f"{CASES[0]}_image.npy",
            outputs / "medseg_dataset_w1" / f"{CASES[0]}_label.npy",
            False,
        ),
    }
    for name, (img_path, lab_path, raw) in others.items():
        if not img_path.is_file() or "error" in results.get(name, {}):
            continue
        img = np.load(img_path)
        if img.ndim == 4:
            img = img[0]
        lab = np.load(lab_path)
        if img.shape != ref_img.shape:
            out[name] = {"shape": list(img.shape), "note": "different grid shape"}
            continue
        if raw:
            img = normalise(img)
        diff = np.abs(img.astype(np.float32) - ref_img)
        dice = {}
        for k in range(1, 5):
            a, b = ref_lab == k, lab == k
            denom = int(a.sum()) + int(b.sum())
            dice[str(k)] = round(2 * int((a & b).sum()) / denom, 4) if denom else None
        out[name] = {
            "image_mean_abs_diff": round(float(diff.mean()), 5),
            "image_max_abs_diff": round(float(diff.max()), 4),
            "label_agreement": round(float((lab == ref_lab).mean()), 5),
            "label_dice_per_class": dice,
        }
    return out


def _table(results: dict[str, Any]) -> str:
    floor = results.get("sitk_floor", {})
    head = (
        f"{'contender':20s} {'peak RSS MiB':>12s} {'x floor':>8s} {'tree PSS MiB':>12s} "
        f"{'work s':>8s} {'x floor':>8s} {'load 1m':>8s}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:20s} FAILED: {r['error'].strip().splitlines()[-1][:90]}")
            continue
        mem = r.get("peak_rss_mib", 0.0)
        mem_ratio = mem / floor["peak_rss_mib"] if floor.get("peak_rss_mib") else float("nan")
        t = r.get("work_s", float("nan"))
        t_ratio = t / floor["work_s"] if floor.get("work_s") else float("nan")
        lines.append(
            f"{name:20s} {mem:12.0f} {mem_ratio:8.2f} {r.get('tree_pss_peak_mib', 0):12.0f} "
            f"{t:8.1f} {t_ratio:8.2f} {r['loadavg_before'][0]:8.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preprocess_bench.json")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--nnunet-python", type=Path, default=DEFAULT_NNUNET_PY)
    parser.add_argument("--regenerate", action="store_true", help="write the dataset again")
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, help="run only these contenders")
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    work: Path = args.work.resolve()
    if args.contender:
        _child_main(args.contender, work)
        return

    t_start = time.perf_counter()
    me = [sys.executable, str(Path(__file__).resolve()), "--work", str(work)]
    report: dict[str, Any] = {
        "benchmark": "preprocess_bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "2 cores shared with other jobs: times are noisy, memory is not",
        },
        "case": {
            "shape_zyx": list(SHAPE),
            "spacing_zyx": list(SPACING),
            "target_spacing": list(TARGET_SPACING),
        },
        "target_peak_rss_gib": TARGET_GIB,
    }
    data = work / "data"
    gen_json = work / "generated.json"
    stale = not gen_json.is_file() or json.loads(gen_json.read_text()).get("version") != GEN_VERSION
    if args.regenerate or stale:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print("generating the 512 x 512 x 600 CT case ...", flush=True)
        gen = _measure([*me, "--contender", "generate"], timeout=900)
        if "error" in gen:
            raise SystemExit(f"generation failed:\n{gen['error']}")
        gen_json.write_text(json.dumps(gen, indent=1) + "\n")
    gen = json.loads(gen_json.read_text())
    report["dataset"] = {"path": str(data.relative_to(ROOT)), "cases": list(CASES), **gen}
    (work / "outputs").mkdir(exist_ok=True)

    results: dict[str, Any] = {}
    for name in args.only or CONTENDERS:
        if name == "nnunet_case":
            py = args.nnunet_python
            if not py.is_file():
                results[name] = {"error": f"no nnU-Net venv at {py}", "loadavg_before": list(os.getloadavg())}
                print(f"{name}: skipped, no nnU-Net venv at {py}", flush=True)
                continue
            cmd = [str(py), str(Path(__file__).resolve()), "--work", str(work), "--contender", name]
        else:
            cmd = [*me, "--contender", name]
        print(f"{name} ...", flush=True)
        results[name] = _measure(cmd, timeout=600)
        r = results[name]
        print(
            f"  peak RSS {r.get('peak_rss_mib')} MiB, tree PSS {r.get('tree_pss_peak_mib')} MiB, "
            f"work {r.get('work_s')} s, load {r['loadavg_before'][0]}" + (" FAILED" if "error" in r else ""),
            flush=True,
        )
    report["results"] = results
    floor = results.get("sitk_floor", {})
    ratios: dict[str, Any] = {}
    for name, r in results.items():
        if "error" in r or name == "sitk_floor" or "error" in floor or not floor:
            continue
        ratios[name] = {
            "peak_rss_vs_sitk_floor": round(r["peak_rss_mib"] / floor["peak_rss_mib"], 2),
            "work_s_vs_sitk_floor": round(r["work_s"] / floor["work_s"], 2),
        }
    nn = results.get("nnunet_case", {})
    ms = results.get("medseg_case", {})
    if nn and ms and "error" not in nn and "error" not in ms:
        ratios["medseg_case_vs_nnunet_case"] = {
            "peak_rss": round(ms["peak_rss_mib"] / nn["peak_rss_mib"], 2),
            "work_s": round(ms["work_s"] / nn["work_s"], 2),
        }
    report["ratios"] = ratios
    medseg_peaks = {
        k: r["peak_rss_mib"] for k, r in results.items() if k.startswith("medseg_") and "error" not in r
    }
    report["medseg_preprocessing_peak_rss_mib"] = {
        k: v for k, v in medseg_peaks.items() if k != "medseg_plan"
    }
    report["target_met"] = bool(medseg_peaks) and all(
        v < TARGET_GIB * 1024 for k, v in medseg_peaks.items() if k != "medseg_plan"
    )
    if "medseg_case" in results and "error" not in results["medseg_case"]:
        report["agreement"] = _compare(work, results)
    report["benchmark_wall_s"] = round(time.perf_counter() - t_start, 1)
    print()
    print(_table(results))
    print(f"\nmedseg preprocessing under {TARGET_GIB} GiB per process: {report['target_met']}")
    if "agreement" in report:
        print(json.dumps(report["agreement"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
