"""nnU-Net v2 contender of benchmarks/accuracy.py, run in its own virtual environment.

nnU-Net is not a medseg dependency. It lives in benchmarks/work/nnunet-venv, created once
with the CPU torch pinned, so pip cannot swap in a CUDA build::

    python -m venv benchmarks/work/nnunet-venv
    benchmarks/work/nnunet-venv/bin/pip install torch==2.13.0          # the CPU wheel
    echo torch==2.13.0 > benchmarks/work/constraints.txt
    benchmarks/work/nnunet-venv/bin/pip install nnunetv2 -c benchmarks/work/constraints.txt

(``setup_venv`` below does exactly this.) The torchvision that pip brings along does not
import beside the CPU torch ("operator torchvision::nms does not exist"), and nnU-Net's
trainer lookup imports every trainer module, including the Primus trainers that import timm,
which imports torchvision. The budget trainer is therefore placed at the top level of
nnU-Net's trainer package, where the lookup finds it before descending into sub-packages;
the plain U-Net training and validation used here never import torchvision.

What runs, with nnU-Net's own commands and defaults (its plans, patch size, batch size,
network, augmentation, SGD + poly schedule, deep supervision, mirroring at inference):

1. the medseg dataset folder is already in nnU-Net v2's raw layout: its images and labels
   are linked into ``nnUNet_raw/Dataset5xx_<name>`` with a plain dataset.json;
2. ``nnUNetv2_plan_and_preprocess -d ID -c CONFIG``;
3. our folds are written as ``splits_final.json`` (nnU-Net then trains exactly our split);
4. ``nnUNetv2_train ID CONFIG FOLD -tr nnUNetTrainer_medsegBudget -device cpu``: the only
   change is the epoch count, cut to fit the wall-clock budget. nnU-Net's epoch is 250
   iterations, longer than a whole budget on 2 CPU cores, so the trainer uses 20 iterations per
   epoch (1 pseudo-validation iteration), measures the first epoch and sets the number of
   epochs (and the poly schedule's length) to what fits the budget, then stops at the budget
   (mid-epoch if need be);
5. nnU-Net's own final validation (``perform_actual_validation``, final checkpoint, mirroring
   TTA) predicts the held-out fold; those NIfTI files are scored by medseg's evaluator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / "work" / "nnunet-venv"
TORCH_PIN = "torch==2.13.0"
DATASET_IDS = {"hippocampus": 501, "chaos": 502, "isbi": 503}
TRAINER = "nnUNetTrainer_medsegBudget"

TRAINER_SOURCE = '''\
"""medseg benchmark: nnU-Net's default trainer with the epoch count cut to a budget."""
import math
import os
import sys
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


# The CPU-time rule of benchmarks/cpu_budget.py (stdlib only), imported from the medseg
# checkout: this module lives in nnU-Net's venv, which has no medseg.
sys.path.insert(0, os.environ["MEDSEG_BENCHMARKS_DIR"])
from cpu_budget import process_tree_cpu_seconds as _cpu_seconds  # noqa: E402


def _clock():
    if os.environ.get("MEDSEG_NNUNET_CPU_BUDGET", "1") == "1":
        return _cpu_seconds() / max(1, int(os.environ.get("MEDSEG_NNUNET_THREADS", "2")))
    return time.monotonic()


class nnUNetTrainer_medsegBudget(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ["MEDSEG_NNUNET_BUDGET_S"])
        self.num_iterations_per_epoch = int(os.environ.get("MEDSEG_NNUNET_ITERS", "20"))
        self.num_val_iterations_per_epoch = 1
        self.num_epochs = 1000
        self.save_every = 10**9

    def run_training(self):
        self.on_train_start()
        start, wall_start = _clock(), time.monotonic()
        iterations = 0
        epoch = self.current_epoch
        while epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outs = []
            for _ in range(self.num_iterations_per_epoch):
                outs.append(self.train_step(next(self.dataloader_train)))
                iterations += 1
                if _clock() - start >= self.budget_s:
                    break  # the budget ends mid-epoch: stop here, as the other contenders do
            self.on_train_epoch_end(outs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                vals = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(vals)
            self.on_epoch_end()
            epoch += 1
            elapsed = _clock() - start
            if epoch == 1:
                # Cut the epoch count (and the poly schedule) to the budget: rounded up, the
                # last epoch is cut short at the budget (rounding down would leave CPU unused).
                fit = max(1, int(math.ceil(self.budget_s / max(elapsed, 1e-6))))
                self.num_epochs = fit
                self.lr_scheduler.max_steps = fit
            if elapsed >= self.budget_s:
                break
        with open(os.path.join(self.output_folder, "medseg_budget.json"), "w") as fh:
            fh.write('{"train_seconds": %f, "train_wall_seconds": %f, "iterations": %d, "epochs": %d}'
                     % (_clock() - start, time.monotonic() - wall_start, iterations, epoch))
        self.on_train_end()
'''


def venv_python() -> Path:
    return VENV / "bin" / "python"


def setup_venv() -> Path:
    """Create the nnU-Net venv (once) and install the budget trainer into its nnunetv2 package."""
    py = venv_python()
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", TORCH_PIN], check=True)
        constraints = VENV.parent / "constraints.txt"
        constraints.write_text(TORCH_PIN + "\n")
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "nnunetv2", "-c", str(constraints)], check=True
        )
    site = subprocess.run(
        [str(py), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Top level of the trainer package: nnU-Net's class search imports that level's modules
    # first and stops there, so it never reaches the Primus trainers, whose timm import needs a
    # torchvision that cannot load beside the CPU torch.
    target = Path(site) / "training" / "nnUNetTrainer" / f"{TRAINER}.py"
    if not target.is_file() or target.read_text() != TRAINER_SOURCE:
        target.write_text(TRAINER_SOURCE)
    return py


def _raw_dataset(root: Path, raw: Path, dataset_id: int, name: str) -> str:
    folder_name = f"Dataset{dataset_id}_{name}"
    folder = raw / folder_name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "imagesTr").symlink_to((root / "imagesTr").resolve())
    (folder / "labelsTr").symlink_to((root / "labelsTr").resolve())
    desc = json.loads((root / "dataset.json").read_text())
    plain = {
        "channel_names": desc["channel_names"],
        "labels": desc["labels"],
        "numTraining": desc["numTraining"],
        "file_ending": desc["file_ending"],
        "name": name,
    }
    (folder / "dataset.json").write_text(json.dumps(plain, indent=2) + "\n")
    return folder_name


def prepare(root: Path, cfg: str, threads: str, quick: bool, log: Path) -> tuple[str, Path, dict[str, str]]:
    """Raw dataset folder, plans and preprocessing (once per dataset and configuration)."""
    py = setup_venv()
    bindir = py.parent
    base = root.parent / "nnunet"
    raw, pre, res = base / "raw", base / "preprocessed", base / "results"
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    name = root.parent.name.split("-")[0]
    dataset_id = DATASET_IDS[name] + (50 if quick else 0)
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(pre),
        "nnUNet_results": str(res),
        "nnUNet_n_proc_DA": threads,
        "nnUNet_compile": "false",
        "OMP_NUM_THREADS": threads,
    }
    folder_name = f"Dataset{dataset_id}_{name}"
    plans_file = pre / folder_name / "nnUNetPlans.json"
    if not (pre / folder_name / f"nnUNetPlans_{cfg}").is_dir() or not plans_file.is_file():
        _raw_dataset(root, raw, dataset_id, name)
        _call(
            log,
            env,
            str(bindir / "nnUNetv2_plan_and_preprocess"),
            "-d",
            str(dataset_id),
            "-c",
            cfg,
            "-np",
            threads,
            "-npfp",
            threads,
        )
    return folder_name, base, env


def _call(log: Path, env: Mapping[str, str], *args: str) -> None:
    with log.open("a") as fh:
        fh.write("$ " + " ".join(args) + "\n")
        fh.flush()
        subprocess.run(list(args), env=dict(env), stdout=fh, stderr=subprocess.STDOUT, check=True)


def run_nnunet(job: Mapping[str, Any]) -> dict[str, Any]:
    from medseg.data.splits import load_splits

    root = Path(job["dataset"])
    cfg = str(job["options"].get("configuration", "3d_fullres"))
    threads = str(job["threads"])
    log = Path(job["out"]) / "nnunet.log"
    t0 = time.monotonic()
    folder_name, base, env = prepare(root, cfg, threads, bool(job.get("quick")), log)
    env = {
        **env,
        "MEDSEG_NNUNET_BUDGET_S": str(float(job["budget_min"]) * 60.0),
        "MEDSEG_NNUNET_THREADS": threads,
        "MEDSEG_NNUNET_CPU_BUDGET": "1" if job.get("cpu_budget", True) else "0",
        "MEDSEG_BENCHMARKS_DIR": str(HERE),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    pre, res = base / "preprocessed", base / "results"
    plans_file = pre / folder_name / "nnUNetPlans.json"
    bindir = venv_python().parent
    dataset_id = folder_name.split("_")[0][len("Dataset") :]
    splits = load_splits(root)
    (pre / folder_name / "splits_final.json").write_text(
        json.dumps([{"train": list(f.train), "val": list(f.val)} for f in splits.folds], indent=1) + "\n"
    )
    prep_s = time.monotonic() - t0
    out_folder = res / folder_name / f"{TRAINER}__nnUNetPlans__{cfg}" / f"fold_{job['fold']}"
    if out_folder.exists():
        shutil.rmtree(out_folder)
    t1 = time.monotonic()
    _call(
        log,
        env,
        str(bindir / "nnUNetv2_train"),
        dataset_id,
        cfg,
        str(job["fold"]),
        "-tr",
        TRAINER,
        "-device",
        "cpu",
    )
    total_s = time.monotonic() - t1
    budget_info = json.loads((out_folder / "medseg_budget.json").read_text())
    pred_dir = Path(job["pred_dir"])
    pred_dir.mkdir(parents=True, exist_ok=True)
    for case in job["test_ids"]:
        src = out_folder / "validation" / f"{case}.nii.gz"
        shutil.copyfile(src, pred_dir / src.name)
    plans = json.loads(plans_file.read_text())
    conf = plans["configurations"][cfg]
    return {
        "preprocess_seconds": prep_s,
        "train_seconds": budget_info["train_seconds"],
        "train_wall_seconds": budget_info["train_wall_seconds"],
        "iterations": budget_info["iterations"],
        "epochs": budget_info["epochs"],
        "predict_seconds": total_s - budget_info["train_wall_seconds"],
        "details": {
            "patch_size": conf.get("patch_size"),
            "batch_size": conf.get("batch_size"),
            "spacing": conf.get("spacing"),
            "nnunet_log": str(log),
            "note": "predict_seconds includes nnU-Net's start-up and its final validation (mirroring TTA)",
        },
    }
