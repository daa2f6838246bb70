"""The prediction path back onto the input grid (crop to non-zero -> resample -> ... ->
resample back -> uncrop) on oblique and left-handed anisotropic grids with odd sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.config import from_dict, to_dict
from medseg.preprocessing.pipeline import PreprocessInfo, preprocess_case, restore_to_original
from medseg.preprocessing.plan import PLAN_SCHEMA_VERSION, ChannelNormalization, NetworkPlan, Plan
from medseg.volume import Volume
from tests.conftest import AWKWARD_GRIDS, make_awkward_volume

GRIDS = sorted(AWKWARD_GRIDS)
EXACT = {"spacing_atol": 0.0, "origin_atol": 1e-9, "direction_atol": 1e-12}


def _plan(target_spacing: tuple[float, float, float], **options: object) -> Plan:
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        dataset_name="awkward",
        configuration="3d",
        channel_names=("MR",),
        labels={"background": 0, "outer": 1, "inner": 2},
        target_spacing=target_spacing,
        patch_size=(8, 8, 8),
        batch_size=1,
        normalization=(ChannelNormalization("zscore"),),
        network=NetworkPlan(),
        **options,  # type: ignore[arg-type]
    )


def _case(grid: str) -> tuple[Volume, Volume]:
    """Image with a zero border (so crop-to-non-zero moves the origin) and a 3-class label inside."""
    image = make_awkward_volume(grid, dtype=np.float32, shape=(9, 13, 11))
    label = make_awkward_volume(grid, dtype=np.uint8, shape=(9, 13, 11)).array % 3
    arr = image.array.copy()
    arr[:, :2] = 0
    arr[-1] = 0
    label[:, :2] = 0
    label[-1] = 0
    return image.with_array(arr), image.with_array(label)


def _through_json(info: PreprocessInfo) -> PreprocessInfo:
    """As the training cache stores it."""
    return from_dict(PreprocessInfo, json.loads(json.dumps(to_dict(info))), where="test")


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("mode", ["nearest", "onehot-linear", "probabilities"])
@pytest.mark.parametrize("keep_native_slices", [False, True])
def test_restore_of_the_preprocessed_label_is_the_label_on_the_exact_input_grid(
    grid: str, mode: str, keep_native_slices: bool
) -> None:
    image, label = _case(grid)
    # whole-number up-sampling on every axis: going back loses nothing
    target = tuple(s / f for s, f in zip(image.spacing, (3, 2, 3), strict=True))
    interpolation = "nearest" if mode == "probabilities" else mode
    plan = _plan(target, label_interpolation=interpolation, keep_native_slices=keep_native_slices)  # type: ignore[arg-type]
    _, pre_label, info = preprocess_case([image], label, plan, "c")
    assert pre_label is not None
    assert info.crop_box.lower == (0, 2, 0) and info.crop_box.upper == (8, 13, 11)
    pre = info.preprocessed_geometry
    assert pre.spacing == ((image.spacing[0] if keep_native_slices else target[0]), target[1], target[2])
    assert pre.shape == (8 if keep_native_slices else 24, 22, 33)
    info = _through_json(info)
    if mode == "probabilities":
        probs = np.stack([(pre_label == k).astype(np.float32) for k in range(3)])
        restored = restore_to_original(probs, info, is_probabilities=True)
    else:
        restored = restore_to_original(pre_label, info, is_probabilities=False, label_interpolation=mode)
    restored.geometry.require_same(image.geometry, **EXACT)
    assert np.issubdtype(restored.dtype, np.integer)
    np.testing.assert_array_equal(restored.array, label.array)


@pytest.mark.parametrize("grid", GRIDS)
def test_restore_from_a_coarser_grid_lands_on_the_input_grid(grid: str) -> None:
    image, label = _case(grid)
    plan = _plan((1.3, 0.77, 0.9))
    _, pre_label, info = preprocess_case([image], label, plan, "c")
    assert pre_label is not None
    restored = restore_to_original(pre_label, info, is_probabilities=False)
    restored.geometry.require_same(image.geometry, **EXACT)
    assert restored.dtype == pre_label.dtype
    assert set(np.unique(restored.array).tolist()) <= {0, 1, 2}
    # outside the crop box: background
    assert not restored.array[:, :2].any() and not restored.array[-1].any()
