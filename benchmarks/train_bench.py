"""Training speed of our 3D U-Net + trainer against the same network in a plain MONAI loop.

**Speed** (default). The exercise-sized network: 1 input channel, 5 classes, 16 base
features doubling per level (16-256), input 21 x 128 x 128 at 3 x 0.5 x 0.5 mm, pooling
``(1,2,2), (1,2,2), (2,2,2), (2,2,2)`` (in-plane first, nnU-Net's anisotropy rule),
3 x 3 x 3 kernels (see ``_topology``), batch 2, instance norm, leaky ReLU.

* ours: ``medseg.models.registry.build_model("unet", ...)`` trained by the real
  ``medseg.training.trainer.Trainer._train_epoch`` (Dice + CE, Adam, the trainer's
  finite-loss check and default gradient clipping at 12), fed by a list of batches;
* MONAI: ``monai.networks.nets.DynUNet`` with the same kernels, strides, filters, norm and
  activation (the same layers: the parameter counts are printed and must agree) in a
  hand-written loop: pad to a multiple of the strides (21 -> 24 slices, as ours does
  internally), forward, crop, ``monai.losses.DiceCELoss``, backward, ``torch.optim.Adam``.

Both see the same batches: patches of the prostate phantom (medseg.data.phantom)
sampled once from the preprocessing cache (loading is outside the timing). The two run
in ONE process, interleaved in rounds of a few steps each (the first round is warm-up and
dropped); the median step time of each and their ratio are reported (target: ours <=
1.1 x MONAI). Peak RSS is measured in a fresh subprocess per framework (3 steps each),
because one process's peak would mix both.

**Convergence** (``--converge``). A 3D model trained with ``medseg.training.trainer.train``
on the prostate phantom (8 training cases of fold 0 of 5, resampled to 3 x 1 x 1 mm and
whole-image 20 x 64 x 64 patches to fit a CPU; AdamW 3e-3, Dice + CE, no augmentation) for
16 epochs of 10 iterations (validation Dice on the preprocessed grid every 2 epochs, in
log.csv); then its 2 validation cases are predicted from the ORIGINAL images with
``SegmentationModel`` and scored per class (Dice at the original resolution). Target:
mean foreground Dice >= 0.8 within a few CPU minutes; wall and CPU minutes are recorded.

    .venv/bin/python benchmarks/train_bench.py                   # speed, a few minutes
    .venv/bin/python benchmarks/train_bench.py --converge        # convergence check
    .venv/bin/python benchmarks/train_bench.py --rounds 3 --steps 2   # quick look

Writes benchmarks/results/train_bench.json (each mode updates its own section). Timings
on a shared machine are noisy: the load average is recorded; ratios measured in the
same run are what count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "train_bench.json"

PATCH = (21, 128, 128)
SPACING = (3.0, 0.5, 0.5)
CLASSES = 5
BATCH = 2
FEATURES = 16
MAX_DEPTH = 4
LEARNING_RATE = 1e-3


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (data-loader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- data
def _topology() -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """nnU-Net's pooling rule for the patch and spacing; 3 x 3 x 3 kernels on every level.

    Not the (1, 3, 3) kernels nnU-Net's rule would give the thick-slice levels: DynUNet's
    decoder stage at level l uses the kernel of level l + 1 (nnU-Net and our U-Net use level
    l's), so with mixed kernels the two networks differ; with equal kernels they are the
    same network, layer for layer.
    """
    from medseg.models.unet import pooling_schedule

    pooling = pooling_schedule(PATCH, SPACING, max_depth=MAX_DEPTH)
    return pooling, [(3, 3, 3)] * (len(pooling) + 1)


def make_data(folder: Path, n_batches: int) -> Path:
    """Phantom dataset -> plan (the benchmark's patch and network) -> cache -> batches.npz."""
    from medseg.data.phantom import write_phantom_dataset
    from medseg.data.sampling import PatchDataset
    from medseg.preprocessing.pipeline import plan_dataset, preprocess_dataset

    root = write_phantom_dataset(folder / "phantom", "prostate", n_train=4, n_test=0)
    pooling, kernels = _topology()
    # A plan needs a patch divisible by the pooling (24 slices); the batches are 21-slice
    # patches all the same, which both networks pad to 24 (ours internally).
    divisor = np.prod(np.array(pooling), axis=0)
    plan_patch = [int(-(-n // d) * d) for n, d in zip(PATCH, divisor, strict=True)]
    plan, _ = plan_dataset(
        root,
        "3d",
        overrides={
            "patch_size": plan_patch,
            "batch_size": BATCH,
            "network": {
                "base_features": FEATURES,
                "pooling": [list(p) for p in pooling],
                "kernels": [list(k) for k in kernels],
            },
        },
        workers=1,
    )
    cache = preprocess_dataset(root, plan, workers=1)
    ids = sorted(p.name[: -len("_image.npy")] for p in cache.glob("*_image.npy"))
    patches = PatchDataset(
        cache,
        ids,
        patch_size=PATCH,
        mode="3d",
        foreground_fraction=plan.foreground_fraction,
        samples_per_epoch=n_batches * BATCH,
        seed=0,
    )
    images, labels = [], []
    for i in range(n_batches * BATCH):
        sample = patches[i]
        images.append(sample["image"].numpy())
        labels.append(sample["label"].numpy())
    out = folder / "batches.npz"
    np.savez(out, image=np.stack(images), label=np.stack(labels), root=str(root))
    return out


def load_batches(path: Path) -> tuple[list[dict[str, Any]], Path]:
    import torch

    data = np.load(path)
    image, label = torch.from_numpy(data["image"]), torch.from_numpy(data["label"])
    batches = [
        {"image": image[i : i + BATCH].contiguous(), "label": label[i : i + BATCH].contiguous()}
        for i in range(0, image.shape[0], BATCH)
    ]
    return batches, Path(str(data["root"]))


# --------------------------------------------------------------------------- runners
class Ours:
    """The real trainer step: Trainer._train_epoch over a given list of batches."""

    name = "medseg"

    def __init__(self, root: Path, out: Path) -> None:
        from medseg.preprocessing.pipeline import default_cache_dir, load_dataset_plan
        from medseg.training.config import TrainingConfig
        from medseg.training.trainer import Trainer

        plan = load_dataset_plan(root, "3d")
        # float32 in the default layout, explicitly (not the library's "auto", which picks bf16
        # and channels-last on some CPUs): the MONAI loop it is compared with runs float32 NCDHW
        cfg = TrainingConfig(
            loss="dice_ce",
            optimizer="adam",
            learning_rate=LEARNING_RATE,
            amp=False,
            device="cpu",
            cpu_bf16=False,
            channels_last=False,
        )
        self.trainer = Trainer(plan, default_cache_dir(root, plan), ["x"], [], cfg, out)
        self.batches: list[dict[str, Any]] = []
        self.trainer._loader = lambda epoch: self.batches  # type: ignore[method-assign,assignment,return-value]
        self.model = self.trainer.model

    def steps(self, batches: list[dict[str, Any]]) -> list[float]:
        self.batches = batches
        stamps = [time.perf_counter()]
        self.trainer._train_epoch(0, None, lambda n=1: stamps.append(time.perf_counter()))
        return [b - a for a, b in itertools.pairwise(stamps)]


class Monai:
    """A plain MONAI loop: DynUNet, DiceCELoss, Adam."""

    name = "monai"

    def __init__(self) -> None:
        import torch
        from monai.losses import DiceCELoss
        from monai.networks.nets import DynUNet

        pooling, kernels = _topology()
        strides = [(1, 1, 1), *pooling]
        filters = [min(FEATURES * 2**i, 256) for i in range(len(strides))]
        torch.manual_seed(0)
        self.model = DynUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=CLASSES,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=pooling,
            filters=filters,
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            res_block=False,
        )
        self.divisor = np.prod(np.array(strides), axis=0).tolist()
        self.loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)

    def steps(self, batches: list[dict[str, Any]]) -> list[float]:
        import torch.nn.functional as F

        self.model.train()
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            image, label = batch["image"], batch["label"].long()
            if label.ndim == image.ndim - 1:
                label = label.unsqueeze(1)
            spatial = image.shape[2:]
            pad = [(-n) % d for n, d in zip(spatial, self.divisor, strict=True)]
            x = F.pad(image, [v for p in reversed(pad) for v in (0, p)])
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(x)[(..., *(slice(0, n) for n in spatial))]
            loss = self.loss(logits, label)
            loss.backward()
            self.optimizer.step()
            float(loss.detach())
            times.append(time.perf_counter() - t0)
        return times


def _parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- speed
def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        print("preparing phantom patches ...", flush=True)
        data = make_data(tmp_path, args.steps)
        batches, root = load_batches(data)
        ours, monai = Ours(root, tmp_path / "model"), Monai()
        n_ours, n_monai = _parameters(ours.model), _parameters(monai.model)
        print(f"parameters: medseg {n_ours:,}, MONAI DynUNet {n_monai:,}")
        load_before = _load()
        times: dict[str, list[float]] = {"medseg": [], "monai": []}
        start = time.monotonic()
        for r in range(args.rounds + 1):
            order = (ours, monai) if r % 2 == 0 else (monai, ours)  # alternate who goes first
            for runner in order:
                t = runner.steps(batches)
                if r > 0:  # round 0: warm-up
                    times[runner.name].extend(t)
            if r > 0:
                print(
                    f"round {r}: medseg {statistics.median(times['medseg']):.3f} s/step, "
                    f"MONAI {statistics.median(times['monai']):.3f} s/step (running medians)",
                    flush=True,
                )
        wall = time.monotonic() - start
        load_after = _load()
        rss = {name: _rss_subprocess(name, data, args.threads) for name in ("medseg", "monai")}

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["medseg"] / med["monai"]
    rss_ratio = rss["medseg"]["peak_mb"] / rss["monai"]["peak_mb"]
    pooling, kernels = _topology()
    result = {
        "what": "seconds per training step (forward, loss, backward, optimiser), CPU, batch of 2 "
        f"patches {PATCH[0]}x{PATCH[1]}x{PATCH[2]}, {CLASSES} classes, median over interleaved rounds",
        "network": {
            "features": [min(FEATURES * 2**i, 256) for i in range(len(pooling) + 1)],
            "pooling": [list(p) for p in pooling],
            "kernels": [list(k) for k in kernels],
            "parameters": {"medseg": n_ours, "monai": n_monai},
        },
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": args.threads,
        "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "quartiles_step_s": {
            k: [round(float(q), 4) for q in np.percentile(v, [25, 75])] for k, v in times.items()
        },
        "ratio_medseg_over_monai": round(ratio, 3),
        "target_ratio": 1.1,
        "meets_target": ratio <= 1.1,
        "peak_rss_mb": {k: round(v["peak_mb"], 1) for k, v in rss.items()},
        "rss_after_setup_mb": {k: round(v["setup_mb"], 1) for k, v in rss.items()},
        "ratio_peak_rss": round(rss_ratio, 3),
        "wall_s": round(wall, 1),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": __import__("monai").__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(
        f"\nmedian step: medseg {med['medseg']:.3f} s, MONAI {med['monai']:.3f} s -> ratio {ratio:.3f} "
        f"(target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})"
    )
    print(
        f"peak RSS: medseg {rss['medseg']['peak_mb']:.0f} MB, MONAI {rss['monai']['peak_mb']:.0f} MB "
        f"-> ratio {rss_ratio:.3f}; load average {load_before} -> {load_after}"
    )
    return result


def _rss_subprocess(name: str, data: Path, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--rss-child", name, "--data", str(data), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def rss_child(name: str, data: Path, threads: int) -> None:
    """Fresh process: import both stacks, build one runner, 3 steps; print peak RSS."""
    import monai.networks.nets  # noqa: F401  (same imports for both, so only the runner differs)
    import torch

    import medseg.training.trainer  # noqa: F401

    torch.set_num_threads(threads)
    batches, root = load_batches(data)
    with tempfile.TemporaryDirectory() as tmp:
        runner: Any = Ours(root, Path(tmp) / "model") if name == "medseg" else Monai()
        setup = _current_rss_mb()
        runner.steps(batches[:3])
    print(json.dumps({"peak_mb": _peak_rss_mb(), "setup_mb": setup}))


# --------------------------------------------------------------------------- convergence
def run_convergence(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from medseg.data.dataset import list_cases
    from medseg.data.phantom import write_phantom_dataset
    from medseg.data.splits import load_splits
    from medseg.inference.predictor import SegmentationModel
    from medseg.io import read_channels, read_volume
    from medseg.preprocessing.pipeline import plan_dataset
    from medseg.training.config import TrainingConfig
    from medseg.training.trainer import dice_per_class, train

    torch.set_num_threads(args.threads)
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_phantom_dataset(Path(tmp) / "phantom", "prostate", n_train=10, n_test=0)
        spacing = list(args.converge_spacing)
        plan, _ = plan_dataset(
            root,
            "3d",
            overrides={
                "target_spacing": spacing,
                "patch_size": list(args.converge_patch),
                "batch_size": BATCH,
            },
            workers=1,
        )
        cfg = TrainingConfig(
            loss="dice_ce",
            optimizer="adamw",
            learning_rate=args.converge_lr,
            schedule="constant",
            augmentation={"enabled": args.converge_augment},
            epochs=args.converge_epochs,
            iterations_per_epoch=10,
            val_every=2,
            num_workers=1,
            amp=False,
            device="cpu",
            threads=args.threads,
            time_budget_minutes=args.converge_minutes,
            # float32, as the recorded convergence runs (not "auto": bf16 on some CPUs only)
            cpu_bf16=False,
            channels_last=False,
        )
        t0, cpu0 = time.monotonic(), _cpu_seconds()
        result = train(root, 0, config=cfg, folds=5, workers=1)
        train_s, train_cpu_s = time.monotonic() - t0, _cpu_seconds() - cpu0
        model = SegmentationModel(result.model_dir, device="cpu")
        cases = {c.case_id: c for c in list_cases(root, "Tr")}
        val = load_splits(root).fold(0).val
        per_case = []
        for case_id in val:
            image = read_channels(cases[case_id].images[0])
            ref = read_volume(cases[case_id].label)  # type: ignore[arg-type]
            pred, _ = model.predict(image)
            per_case.append(dice_per_class(pred.array, ref.array.astype(np.int64), CLASSES))
        names = [n for n, v in sorted(plan.labels.items(), key=lambda kv: kv[1]) if v != 0]
        with np.errstate(all="ignore"):
            per_class = np.nanmean(np.array(per_case), axis=0)
        mean = float(np.nanmean(per_class))
        first = next((h.epoch for h in result.history if h.val_dice and h.mean_dice >= 0.8), None)
    out = {
        "what": "3D U-Net trained with medseg.training.trainer.train on the prostate phantom (CPU, fixed "
        "number of iterations; train_minutes is the whole train() call: preprocessing, training, "
        "validations), Dice of its fold-0 validation cases predicted from the original images",
        "training_cases": 10 - len(val),
        "validation_cases": list(val),
        "target_spacing_zyx": spacing,
        "patch_size": list(plan.patch_size),
        "network_pooling": [list(p) for p in plan.network.pooling],
        "config": {
            "loss": cfg.loss,
            "optimizer": cfg.optimizer,
            "learning_rate": cfg.learning_rate,
            "iterations_per_epoch": cfg.iterations_per_epoch,
            "augmentation": args.converge_augment,
            "batch_size": BATCH,
        },
        "epochs_completed": result.epochs_completed,
        "iterations": result.epochs_completed * cfg.iterations_per_epoch,
        "train_minutes": round(train_s / 60, 2),
        "train_cpu_minutes": round(train_cpu_s / 60, 2),
        "per_class_dice": {n: round(float(d), 4) for n, d in zip(names, per_class, strict=True)},
        "mean_foreground_dice": round(mean, 4),
        "target": 0.8,
        "meets_target": mean >= 0.8,
        "loss_by_epoch": [round(h.train_loss, 4) for h in result.history],
        "val_mean_dice_by_epoch": {str(h.epoch): round(h.mean_dice, 4) for h in result.history if h.val_dice},
        "first_epoch_val_dice_0.8": first,
        "train_seconds_to_first_epoch_val_dice_0.8": None
        if first is None
        else round(sum(h.seconds for h in result.history if h.epoch <= first), 1),
        "threads": args.threads,
        "load_average_before": load_before,
        "load_average_after": _load(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(
        f"convergence: {result.epochs_completed * cfg.iterations_per_epoch} iterations in {train_s / 60:.1f} min "
        f"({train_cpu_s / 60:.1f} CPU min); "
        f"per-class Dice {out['per_class_dice']}; mean {mean:.4f} (target >= 0.8)"
    )
    return out


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds (after one warm-up round)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per framework per round")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: least hurt by a shared CPU)"
    )
    parser.add_argument("--converge", action="store_true", help="run the convergence check instead")
    parser.add_argument("--converge-epochs", type=int, default=16, help="epochs of 10 iterations")
    parser.add_argument(
        "--converge-minutes", type=float, default=None, help="optional wall-clock budget for the training"
    )
    parser.add_argument(
        "--converge-spacing", type=float, nargs=3, default=(3.0, 1.0, 1.0), help="target spacing z y x (mm)"
    )
    parser.add_argument(
        "--converge-patch", type=int, nargs=3, default=(20, 64, 64), help="patch z y x (the whole phantom)"
    )
    parser.add_argument("--converge-lr", type=float, default=3e-3, help="AdamW learning rate")
    parser.add_argument("--converge-augment", action="store_true", help="use the default augmentation")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rss-child", choices=("medseg", "monai"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.data, args.threads)
        return
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.converge:
        results["convergence"] = run_convergence(args)
    else:
        results["speed"] = run_speed(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
