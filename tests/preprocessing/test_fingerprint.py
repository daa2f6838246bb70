from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import read_volume, write_volume
from medseg.preprocessing.fingerprint import compute_fingerprint
from medseg.volume import Volume


@pytest.mark.parametrize("workers", [1, 2])
def test_a_label_off_the_image_grid_is_named_with_worker_processes(toy_dataset: Path, workers: int) -> None:
    """With workers the case's error used to break the process pool (an internal error)."""
    path = toy_dataset / "labelsTr" / "case_001.nii.gz"
    label = read_volume(path)
    cut = Volume(np.ascontiguousarray(label.array[:, :-4]), label.spacing, label.origin, label.direction)
    write_volume(cut, path, overwrite=True)
    with pytest.raises(InputError, match=r"case_001\.nii\.gz.*not on the image grid"):
        compute_fingerprint(toy_dataset, workers=workers)
