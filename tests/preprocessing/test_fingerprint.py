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


def _rewrite_label(path: Path, change: str) -> None:
    label = read_volume(path)
    arr = label.array.astype(np.float32 if change == "fraction" else np.int16)
    if change == "fraction":
        arr[arr == 1] = 1.5
    elif change == "negative":
        arr[arr == 1] = -1
    else:
        arr[arr == 1] = 9
    write_volume(label.with_array(arr), path, overwrite=True)


BAD_LABELS = [
    ("fraction", r"label map holds non-integer values; expected whole numbers; found \[1\.5\]"),
    ("negative", r"label values out of range; expected 0\.\.65535; found -1\.\.2"),
    ("undeclared", r"holds undeclared label values; expected values in \[0, 1, 2\]; found also \[9\]"),
]


@pytest.mark.parametrize(("change", "match"), BAD_LABELS)
def test_a_label_map_with_bad_values_is_refused(toy_dataset: Path, change: str, match: str) -> None:
    """Cast to the cache's uint8 these became other classes (-1 as 255, 1.5 as 1) without a word."""
    path = toy_dataset / "labelsTr" / "case_002.nii.gz"
    _rewrite_label(path, change)
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"case_002\.nii\.gz: " + match):
        compute_fingerprint(toy_dataset, workers=1)
    assert path.read_bytes() == before
