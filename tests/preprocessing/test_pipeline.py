from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import GeometryError, InputError
from medseg.preprocessing.fingerprint import compute_fingerprint
from medseg.preprocessing.pipeline import (
    load_preprocess_info,
    preprocess_case,
    preprocess_dataset,
    restore_to_original,
)
from medseg.preprocessing.plan import Plan, plan_from_fingerprint
from tests.preprocessing.conftest import make_case
from tests.preprocessing.test_fingerprint import BAD_LABELS, _rewrite_label


def _plan(root: Path, **overrides: object) -> Plan:
    plan = plan_from_fingerprint(compute_fingerprint(root, workers=1), "3d")
    return plan.with_overrides(overrides) if overrides else plan


def test_preprocess_case_crops_resamples_normalises(toy_dataset: Path) -> None:
    plan = _plan(toy_dataset, target_spacing=[1.5, 0.8, 0.8])
    img, lab = make_case(7)
    image, label, info = preprocess_case([img], lab, plan, "c7")
    assert image.dtype == np.float32 and image.shape[0] == 1
    assert label is not None and label.shape == image.shape[1:]
    # crop removed the 2 zero rows; z resampled from 3.0 to 1.5 mm doubles the slices
    assert info.crop_box.lower == (0, 2, 0)
    assert image.shape[1:] == (20, 38, 36)
    assert abs(float(image.mean())) < 0.05 and abs(float(image.std()) - 1) < 0.05
    assert set(np.unique(label)) <= {0, 1, 2}
    # world position of the preprocessed grid's first voxel corner equals the crop's
    pre = info.preprocessed_geometry
    np.testing.assert_allclose(
        pre.corners_world()[0],
        img.geometry.corners_world(info.crop_box.lower, info.crop_box.upper)[0],
        atol=1e-6,
    )


@pytest.mark.parametrize("as_probabilities", [False, True])
def test_restore_is_the_inverse_on_the_exact_input_grid(toy_dataset: Path, as_probabilities: bool) -> None:
    plan = _plan(toy_dataset, target_spacing=[1.5, 0.6, 0.6])
    img, lab = make_case(3)
    _, label, info = preprocess_case([img], lab, plan, "c3")
    assert label is not None
    if as_probabilities:
        pred = np.stack([(label == k).astype(np.float32) for k in range(3)])
    else:
        pred = label
    restored = restore_to_original(pred, info, is_probabilities=as_probabilities)
    restored.geometry.require_same(img.geometry, spacing_atol=0, origin_atol=1e-9, direction_atol=0)
    assert (restored.array == lab.array).mean() > 0.99
    assert set(np.unique(restored.array)) <= {0, 1, 2}


def test_restore_rejects_wrong_shape(toy_dataset: Path) -> None:
    plan = _plan(toy_dataset)
    img, lab = make_case(1)
    _, label, info = preprocess_case([img], lab, plan, "c1")
    assert label is not None
    with pytest.raises(GeometryError, match="does not match the preprocessed grid"):
        restore_to_original(label[:-1], info, is_probabilities=False)


def test_wrong_channel_count_and_mismatched_label(toy_dataset: Path) -> None:
    plan = _plan(toy_dataset)
    img, lab = make_case(1)
    with pytest.raises(InputError, match="wrong number of channels"):
        preprocess_case([img, img], lab, plan)
    shifted = lab.with_array(lab.array)
    from medseg.volume import Volume

    moved = Volume(shifted.array, lab.spacing, (0.0, 0.0, 0.0), lab.direction)
    with pytest.raises(InputError, match=r"label of case 'bad' is not on the image grid"):
        preprocess_case([img], moved, plan, "bad")


def test_preprocess_dataset_writes_cache_and_skips_done_cases(toy_dataset: Path) -> None:
    plan = _plan(toy_dataset)
    cache = preprocess_dataset(toy_dataset, plan, workers=2)
    files = sorted(p.name for p in cache.iterdir())
    assert "plan.json" in files and "case_000_image.npy" in files and "case_003_label.npy" in files
    image = np.load(cache / "case_000_image.npy", mmap_mode="r")
    label = np.load(cache / "case_000_label.npy", mmap_mode="r")
    assert image.shape[1:] == label.shape and image.dtype == np.float32
    meta = json.loads((cache / "case_000.json").read_text())
    assert int(meta["class_voxels"]["2"]) > 0
    assert load_preprocess_info(cache, "case_000").case_id == "case_000"
    stamp = (cache / "case_000_image.npy").stat().st_mtime_ns
    preprocess_dataset(toy_dataset, plan, workers=1)
    assert (cache / "case_000_image.npy").stat().st_mtime_ns == stamp  # skipped
    changed = plan.with_overrides({"foreground_fraction": 0.5})
    preprocess_dataset(toy_dataset, changed, workers=1)
    assert (cache / "case_000_image.npy").stat().st_mtime_ns != stamp  # redone for a new plan


def test_preprocess_dataset_reports_broken_case(toy_dataset: Path) -> None:
    plan = _plan(toy_dataset)
    (toy_dataset / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"1 case\(s\) failed.*case_001"):
        preprocess_dataset(toy_dataset, plan, workers=1)
    # the other cases were still done
    assert (toy_dataset / "preprocessed" / "3d" / "case_002.json").is_file()


def test_plan_must_match_dataset(toy_dataset: Path, tmp_path: Path) -> None:
    plan = _plan(toy_dataset).with_overrides({"labels": {"background": 0, "a": 1}})
    with pytest.raises(InputError, match="labels do not match"):
        preprocess_dataset(toy_dataset, plan, workers=1)


@pytest.mark.parametrize(("change", "match"), BAD_LABELS)
def test_preprocess_refuses_a_label_map_with_bad_values(toy_dataset: Path, change: str, match: str) -> None:
    """A label edited after `plan` (so the fingerprint's check did not see it) is caught too."""
    plan = _plan(toy_dataset)
    _rewrite_label(toy_dataset / "labelsTr" / "case_001.nii.gz", change)
    with pytest.raises(InputError, match=r"case_001\.nii\.gz: " + match):
        preprocess_dataset(toy_dataset, plan, workers=1)
    assert not (toy_dataset / "preprocessed" / "3d" / "case_001_label.npy").exists()
