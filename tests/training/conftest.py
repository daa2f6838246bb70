from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.preprocessing.pipeline import plan_dataset
from tests.preprocessing.conftest import write_dataset


@pytest.fixture
def planned_dataset(tmp_path: Path) -> Path:
    """A 6-case oblique toy dataset with a small 3D plan (patch 8 x 16 x 16)."""
    torch.set_num_threads(1)
    root = write_dataset(tmp_path / "toy", n=6)
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    return root
