"""Data-parallel training with torchrun: 2 CPU processes on the gloo backend.

One torchrun run of the real CLI (``python -m medseg.cli train``) through a small driver
that records, per rank, a hash of the final weights and of the label patches it trained
on. Checked: the run succeeds; rank 0 alone writes one complete model folder (log.csv
one row per epoch, the CLI's report printed once); every rank ends with the same
weights, equal to the checkpoint's; the ranks trained on different patches; the
checkpoint predicts through SegmentationModel; and 2 ranks x batch 2 give the same
weights and logged losses as one process with batch 4 on the same samples (cross
entropy and SGD are linear in the per-sample terms, so DDP's gradient averaging is
exact up to float rounding).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.inference.predictor import SegmentationModel
from medseg.training.checkpoint import load_checkpoint
from medseg.training.config import TrainingConfig
from medseg.training.trainer import train
from tests.preprocessing.conftest import make_case

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no gloo backend",
)

SETTINGS = {
    "loss": "ce",
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "epochs": 2,
    "iterations_per_epoch": 2,
    "val_every": 1,
    "max_val_cases": 1,
    "num_workers": 0,
    "device": "cpu",
    "threads": 1,
    "amp": False,
    # float32 (not the CPU's bf16 autocast), so 2 ranks and 1 process agree to float rounding
    "cpu_bf16": False,
}

# Runs inside every torchrun rank: record what the rank trained on and its final weights,
# then run the real CLI module (python -m medseg.cli) with the given arguments.
DRIVER = """
import atexit, hashlib, json, os, runpy, sys
from pathlib import Path
import torch.distributed as dist
import medseg.training.trainer as trainer_module
from medseg.training.trainer import Trainer

record = Path(os.environ["MEDSEG_TEST_RECORD"])
labels = []
original_loss, original_fit, original_train = Trainer._loss, Trainer.fit, trainer_module.train

def train(*args, **kwargs):
    # What rank 0 had finished writing when this rank left train().
    result = original_train(*args, **kwargs)
    info = json.loads((result.model_dir / "model.json").read_text())
    rank = os.environ["RANK"]
    (record / f"returned{rank}.json").write_text(json.dumps(info["epochs_completed"]))
    return result

def at_exit():
    # Registered before medseg runs, so it runs after medseg's own exit handlers.
    (record / f"exit{os.environ['RANK']}.json").write_text(json.dumps(dist.is_initialized()))

atexit.register(at_exit)
trainer_module.train = train

def _loss(self, logits, label):
    labels.append(hashlib.sha256(label.numpy().tobytes()).hexdigest())
    return original_loss(self, logits, label)

def fit(self, **kwargs):
    result = original_fit(self, **kwargs)
    h = hashlib.sha256()
    for key, value in sorted(self.model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    info = {"rank": self.rank, "world": self.world, "weights": h.hexdigest(), "labels": labels}
    (record / f"rank{self.rank}.json").write_text(json.dumps(info))
    return result

Trainer._loss, Trainer.fit = _loss, fit
sys.argv = ["medseg", *sys.argv[1:]]
runpy.run_module("medseg.cli", run_name="__main__")
"""


def _weights_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _torchrun(tmp_path: Path, dataset: Path, config: Path) -> subprocess.CompletedProcess[str]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    record = tmp_path / "record"
    record.mkdir()
    env = {**os.environ, "MEDSEG_TEST_RECORD": str(record), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("MEDSEG_DEBUG", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(driver),
        "train",
        str(dataset),
        "--fold",
        "0",
        "--folds",
        "3",
        "--config",
        str(config),
        "--workers",
        "1",
        "--batch-size",
        "2",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_two_rank_gloo_training_matches_one_process(planned_dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps(SETTINGS))
    proc = _torchrun(tmp_path, planned_dataset, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # One model folder, written once by rank 0: the expected files and nothing else
    # (no temp files left by two ranks writing the same paths).
    models = planned_dataset / "models" / "3d"
    assert [p.name for p in models.iterdir()] == ["fold_0"]
    folder = models / "fold_0"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "checkpoint_best.pt",
            "checkpoint_last.pt",
            "curves.png",
            "dataset.json",
            "log.csv",
            "model.json",
            "plan.json",
            "postprocessing.json",
            "training_config.json",
        ]
    )
    rows = list(csv.DictReader((folder / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert proc.stdout.count("trained 2 epochs") == 1  # only rank 0 reports

    # Same weights on both ranks, equal to rank 0's checkpoint; different patches per rank.
    ranks = [json.loads((tmp_path / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    ckpt = load_checkpoint(folder / "checkpoint_last.pt")
    assert ckpt["epoch"] == 2
    assert _weights_hash(ckpt["model"]) == ranks[0]["weights"]
    assert len(ranks[0]["labels"]) == len(ranks[1]["labels"]) == 4  # 2 epochs x 2 iterations
    assert not set(ranks[0]["labels"]) & set(ranks[1]["labels"])
    # No rank leaves train() before rank 0 has written the finished model folder, and every
    # rank closes the process group before exiting (an open gloo group can abort the process
    # in its destructor at exit, which torchrun reports as a failed run).
    record = tmp_path / "record"
    assert [json.loads((record / f"returned{r}.json").read_text()) for r in (0, 1)] == [2, 2]
    assert [json.loads((record / f"exit{r}.json").read_text()) for r in (0, 1)] == [False, False]

    # The checkpoint predicts through the inference API.
    model = SegmentationModel(folder, device="cpu")
    image, _ = make_case(30, shape=(9, 36, 30))
    pred, _ = model.predict([image])
    assert pred.shape == image.shape and set(np.unique(pred.array)) <= {0, 1, 2}

    # One process, batch 4 = both ranks' samples: the same training up to float rounding.
    single = train(
        planned_dataset,
        0,
        config=TrainingConfig().with_overrides({**SETTINGS, "batch_size": 4}),
        out_dir=tmp_path / "single",
        folds=3,
        workers=1,
    )
    reference = load_checkpoint(single.model_dir / "checkpoint_last.pt")["model"]
    for key, value in reference.items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    logged = [float(r["train_loss"]) for r in rows]  # averaged over both ranks
    np.testing.assert_allclose(logged, [h.train_loss for h in single.history], rtol=1e-4)
