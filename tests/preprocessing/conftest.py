from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.io import write_volume
from medseg.volume import Volume
from tests.conftest import oblique_direction


def make_case(
    seed: int, shape=(10, 40, 36), spacing=(3.0, 0.8, 0.8), ct: bool = False
) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    cz, cy, cx = (
        shape[0] / 2 + rng.uniform(-1, 1),
        shape[1] / 2 + rng.uniform(-3, 3),
        shape[2] / 2 + rng.uniform(-3, 3),
    )
    r = (
        ((z - cz) * spacing[0]) ** 2 / 100
        + ((y - cy) * spacing[1]) ** 2 / 64
        + ((x - cx) * spacing[2]) ** 2 / 49
    )
    label = np.zeros(shape, np.uint8)
    label[r < 1] = 1
    label[r < 0.3] = 2
    base = 40.0 if ct else 300.0
    image = base + 60.0 * label + rng.normal(0, 5, shape)
    if not ct:
        image[:, :2, :] = 0  # a zero border that crop-to-nonzero removes
    origin = (-10.0 + seed, 20.0, 35.5)
    img = Volume(image.astype(np.float32), spacing, origin, oblique_direction())
    return img, img.with_array(label)


def write_dataset(root: Path, n: int = 4, ct: bool = False, spacing=(3.0, 0.8, 0.8)) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        img, lab = make_case(i, spacing=spacing, ct=ct)
        write_volume(img, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_volume(lab, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    desc = {
        "name": "toy",
        "channel_names": {"0": "CT" if ct else "T2"},
        "labels": {"background": 0, "outer": 1, "inner": 2},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(desc))
    return root


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "toy")
