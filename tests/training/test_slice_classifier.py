from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.data.splits import load_splits
from medseg.errors import ConfigError, InputError
from medseg.inference.predictor import PredictConfig, SegmentationModel, predict
from medseg.io import read_volume
from medseg.preprocessing.pipeline import default_cache_dir, load_dataset_plan, plan_dataset
from medseg.training.config import TrainingConfig
from medseg.training.slice_classifier import (
    META_FILE,
    SliceClassifierConfig,
    SliceFilter,
    slice_inputs,
    slice_targets,
    suppress_slices,
    train_slice_classifier,
)
from medseg.training.trainer import train
from tests.preprocessing.conftest import write_dataset

SMALL = SliceClassifierConfig(input_size=32, channels=(8, 16), batch_size=8, iterations=120, seed=1)


@pytest.fixture(scope="module")
def model_25d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2.5D toy model (oblique cases, 3 mm slices, the organ spans ~7 of 10 slices) with
    its empty-slice classifier trained by `train(..., slice_classifier=...)`."""
    torch.set_num_threads(1)
    root = write_dataset(tmp_path_factory.mktemp("slices") / "toy", n=6)
    plan_dataset(
        root,
        "2.5d",
        overrides={"patch_size": [1, 32, 32], "batch_size": 4, "slab_slices": 3, "slab_step": 2},
        workers=1,
    )
    cfg = TrainingConfig(epochs=2, iterations_per_epoch=5, val_every=2, num_workers=0, max_val_cases=1)
    result = train(root, 0, configuration="2.5d", config=cfg, folds=3, slice_classifier=SMALL)
    return root, result.model_dir


def test_slice_targets_and_inputs() -> None:
    label = np.zeros((4, 5, 6), np.uint8)
    label[1, 2, 3] = 2
    label[3, 0, 0] = 1
    assert slice_targets(label).tolist() == [False, True, False, True]
    image = np.arange(2 * 4 * 8 * 8, dtype=np.float32).reshape(2, 4, 8, 8)
    x = slice_inputs(image, 3, 16)
    assert tuple(x.shape) == (4, 6, 16, 16)
    same = slice_inputs(image, 3, 8)  # no resize: slab channels are slice-major, edges replicated
    assert torch.equal(same[0, 0], torch.from_numpy(image[0, 0]))  # slice -1 -> 0
    assert torch.equal(same[0, 2], torch.from_numpy(image[0, 0]))  # slice 0, channel 0
    assert torch.equal(same[0, 3], torch.from_numpy(image[1, 0]))  # slice 0, channel 1
    assert torch.equal(same[2, 4], torch.from_numpy(image[0, 3]))  # slice 3, channel 0
    stepped = slice_inputs(image, 3, 8, step=2)  # neighbours two slices away
    assert torch.equal(stepped[1, 0], torch.from_numpy(image[0, 0]))  # slice 1 - 2 -> 0 (replicated)
    assert torch.equal(stepped[1, 4], torch.from_numpy(image[0, 3]))  # slice 1 + 2
    assert torch.equal(stepped[2, 0], torch.from_numpy(image[0, 0]))  # slice 2 - 2


def test_suppress_slices_sets_certain_background() -> None:
    probs = np.full((3, 4, 2, 2), 1 / 3, np.float32)
    out = suppress_slices(probs, np.array([False, True, False, True]))
    assert np.all(out[0, [1, 3]] == 1.0) and np.all(out[1:, [1, 3]] == 0.0)
    assert np.array_equal(out[:, [0, 2]], probs[:, [0, 2]])
    assert np.all(probs == np.float32(1 / 3))  # input untouched
    with pytest.raises(InputError, match="one flag per slice"):
        suppress_slices(probs, np.array([True, False]))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        SliceClassifierConfig(input_size=30, channels=(8, 16))
    with pytest.raises(ConfigError, match="threshold"):
        SliceClassifierConfig(threshold=1.0)
    with pytest.raises(ConfigError, match="batch_size"):
        SliceClassifierConfig(batch_size=1)


def test_classifier_learns_which_slices_are_empty(model_25d: tuple[Path, Path]) -> None:
    root, model_dir = model_25d
    meta = json.loads((model_dir / META_FILE).read_text())
    assert meta["in_channels"] == 3 and meta["slab_slices"] == 3 and meta["slab_step"] == 2
    training = meta["training"]
    assert 0 < training["slices_with_foreground"] < training["slices"]
    assert training["train_accuracy"] >= 0.9
    # held-out case (fold 0's validation): the filter agrees with the reference on most slices
    plan = load_dataset_plan(root, "2.5d")
    cache = default_cache_dir(root, plan)
    val_case = load_splits(root).fold(0).val[0]
    image = np.load(cache / f"{val_case}_image.npy")
    label = np.load(cache / f"{val_case}_label.npy")
    filt = SliceFilter(model_dir)
    agree = (filt.empty_slices(image) == ~slice_targets(label)).mean()
    assert agree >= 0.8


def test_predict_clears_slices_judged_empty(model_25d: tuple[Path, Path], tmp_path: Path) -> None:
    root, model_dir = model_25d
    case = root / "imagesTr" / "case_000_0000.nii.gz"
    model = SegmentationModel(model_dir, device="cpu")
    assert len(model.slice_filters) == 1
    image = read_volume(case)
    label, _ = model.predict([image])
    label.geometry.require_same(image.geometry, "test")
    suppressed = model.last_suppressed_slices
    # the toy plan keeps the 3 mm slices (crop-to-nonzero only trims rows), so preprocessed
    # slice k is input slice k: every suppressed slice is background in the output
    assert suppressed, "the classifier judged no slice empty on a case with empty slices"
    assert all(not label.array[k].any() for k in suppressed)
    unfiltered, _ = model.predict([image], slice_filter=False)
    assert model.last_suppressed_slices == []
    kept = [k for k in range(image.shape[0]) if k not in suppressed]
    assert np.array_equal(label.array[kept], unfiltered.array[kept])
    # the same through predict() / PredictConfig, switched off by slice_filter=False
    out = predict(case, model_dir, tmp_path / "on", PredictConfig(device="cpu"))
    assert out[0].ok
    on = read_volume(tmp_path / "on" / "case_000.nii.gz")
    assert np.array_equal(on.array, label.array)
    predict(case, model_dir, tmp_path / "off", PredictConfig(device="cpu", slice_filter=False))
    off = read_volume(tmp_path / "off" / "case_000.nii.gz")
    assert np.array_equal(off.array, unfiltered.array)


def test_a_configuration_ensemble_clears_judged_slices_after_the_mean(
    model_25d: tuple[Path, Path], tmp_path: Path
) -> None:
    """-m 2.5D (with classifier) -m a member without one: the slices the classifier judges
    empty are certain background in the ensemble, not the mean of a cleared and an uncleared
    member; every other voxel is the plain mean of the members."""
    root, model_dir = model_25d
    bare = tmp_path / "bare"  # the same network without its classifier
    shutil.copytree(model_dir, bare)
    for f in bare.glob("slice_classifier.*"):
        f.unlink()
    image = read_volume(root / "imagesTr" / "case_000_0000.nii.gz")
    single = SegmentationModel(model_dir, device="cpu")
    _, unfiltered = single.predict([image], with_probabilities=True, slice_filter=False)
    filtered, _ = single.predict([image])
    suppressed = single.last_suppressed_slices
    assert suppressed, "the classifier judged no slice empty on a case with empty slices"
    both = SegmentationModel([model_dir, bare], device="cpu")
    label, probs = both.predict([image], with_probabilities=True)
    assert probs is not None and unfiltered is not None
    # preprocessed slice k is input slice k for this plan (native slices, rows trimmed only)
    assert both.last_suppressed_slices == suppressed
    assert np.all(probs[0, suppressed] == 1.0) and not probs[1:, suppressed].any()
    kept = [k for k in range(image.shape[0]) if k not in suppressed]
    np.testing.assert_allclose(probs[:, kept], unfiltered[:, kept], atol=1e-5)
    np.testing.assert_array_equal(label.array, filtered.array)
    _, plain_probs = both.predict([image], with_probabilities=True, slice_filter=False)
    assert plain_probs is not None and both.last_suppressed_slices == []
    np.testing.assert_allclose(plain_probs, unfiltered, atol=1e-5)


def test_missing_cache_and_bad_metadata(model_25d: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = model_25d
    plan = load_dataset_plan(root, "2.5d")
    with pytest.raises(InputError, match="no preprocessed image"):
        train_slice_classifier(plan, tmp_path, ["case_000"], tmp_path / "out", SMALL, progress=False)
    with pytest.raises(ConfigError, match="at least one"):
        train_slice_classifier(plan, tmp_path, [], tmp_path / "out", SMALL, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / META_FILE).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(InputError, match="schema version"):
        SliceFilter(bad)
    assert SliceFilter.from_model_folder(tmp_path) is None


def test_ensemble_averages_the_folds_classifiers(model_25d: tuple[Path, Path], tmp_path: Path) -> None:
    root, model_dir = model_25d
    case = root / "imagesTr" / "case_001_0000.nii.gz"
    image = read_volume(case)
    single = SegmentationModel(model_dir, device="cpu")
    label, _ = single.predict([image])
    ens = tmp_path / "ensemble"
    for k in (0, 1):
        shutil.copytree(model_dir, ens / f"fold_{k}")
    both = SegmentationModel(ens, device="cpu")
    assert len(both.folders) == 2 and len(both.slice_filters) == 2
    ens_label, _ = both.predict([image])
    # identical folds: the averaged classifier judges exactly as one does
    assert both.last_suppressed_slices == single.last_suppressed_slices
    assert np.array_equal(ens_label.array, label.array)
    # a fold without a classifier: the other fold's classifier is still used
    for name in (META_FILE, "slice_classifier.pt"):
        (ens / "fold_1" / name).unlink()
    partial = SegmentationModel(ens, device="cpu")
    assert len(partial.slice_filters) == 1
    partial.predict([image])
    assert partial.last_suppressed_slices == single.last_suppressed_slices


@pytest.mark.parametrize("shared", [True, False], ids=["same preprocessing", "other preprocessing"])
def test_a_configuration_ensemble_preprocesses_once_per_distinct_preprocessing(
    model_25d: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    """Two configurations, both with empty-slice classifiers: members whose plans preprocess
    alike share one preprocessed case (for their networks and classifiers: once, where it was
    four times), others get their own (twice); the result is what each member's own
    preprocessing gives, to the bit."""
    import medseg.inference.predictor as predictor

    root, model_dir = model_25d
    other = tmp_path / "other"  # another plan: a training setting, or the image interpolation
    shutil.copytree(model_dir, other)
    plan = json.loads((other / "plan.json").read_text())
    if shared:
        plan["batch_size"] += 1
    else:
        plan["image_interpolation"] = "bspline"
    (other / "plan.json").write_text(json.dumps(plan))
    image = read_volume(root / "imagesTr" / "case_000_0000.nii.gz")
    both = SegmentationModel([model_dir, other], device="cpu")
    assert len(both.members) == 2 and all(m.slice_filters for m in both.members)
    # what each member's own preprocessing gives (the public per-member calls)
    each = [
        m.predict([image], with_probabilities=True, postprocess=False, slice_filter=False)[1]
        for m in both.members
    ]
    assert each[0] is not None and each[1] is not None
    expected = each[0] + each[1]
    expected /= 2
    maps = [m.slice_foreground_map([image]) for m in both.members]
    empty = np.mean(maps, axis=0) < np.mean([m.slice_threshold for m in both.members])
    assert empty.any()
    expected[:, empty] = 0.0
    expected[0, empty] = 1.0

    calls: list[str] = []
    real = predictor.preprocess_case

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[2].image_interpolation)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "preprocess_case", counting)
    label, probs = both.predict([image], with_probabilities=True, postprocess=False)
    assert calls == (["linear"] if shared else ["linear", "bspline"])
    np.testing.assert_array_equal(probs, expected)
    np.testing.assert_array_equal(label.array, np.argmax(expected, axis=0))
