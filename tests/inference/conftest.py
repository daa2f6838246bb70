from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from medseg.preprocessing.pipeline import plan_dataset
from medseg.training.config import TrainingConfig
from medseg.training.trainer import train
from tests.preprocessing.conftest import write_dataset


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3D U-Net trained briefly on the oblique toy dataset (a real model folder)."""
    torch.set_num_threads(1)
    root = write_dataset(tmp_path_factory.mktemp("model") / "toy", n=6)
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(epochs=2, iterations_per_epoch=6, val_every=2, num_workers=0, max_val_cases=1)
    return train(root, 0, config=cfg, folds=3).model_dir


@pytest.fixture
def model_copy(trained_model: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(trained_model, dst)
    return dst
