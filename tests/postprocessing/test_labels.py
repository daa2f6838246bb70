"""Label post-processing on hand-built arrays with hand-checkable answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError, InputError, OutputExistsError
from medseg.postprocessing import (
    ClassRule,
    PostprocessingRules,
    apply_rules,
    fill_holes,
    keep_largest_component,
    keep_largest_foreground,
    read_rules,
    remove_small_components,
    write_rules,
)


def _two_blobs() -> np.ndarray:
    """Class 1: a 3x3x3 cube (27 voxels) and a 2x2x2 cube (8 voxels); class 2: one 2x2x1 bar."""
    arr = np.zeros((8, 10, 12), dtype=np.uint8)
    arr[1:4, 1:4, 1:4] = 1
    arr[5:7, 6:8, 8:10] = 1
    arr[5:7, 1:3, 9] = 2
    return arr


def _ring_with_hole() -> np.ndarray:
    """Class 1: a closed hollow box (3D hole of 1 voxel) plus a 2D ring open through the stack."""
    arr = np.zeros((7, 12, 12), dtype=np.uint8)
    arr[1:4, 1:4, 1:4] = 1
    arr[2, 2, 2] = 0  # enclosed in 3D
    arr[:, 6:11, 6:11] = 2
    arr[:, 7:10, 7:10] = 0  # a tube: a hole in every slice, open at both ends in 3D
    return arr


# --------------------------------------------------------------------------- largest component
def test_keep_largest_component_per_class() -> None:
    arr = _two_blobs()
    out = keep_largest_component(arr)
    assert np.count_nonzero(out == 1) == 27
    assert np.all(out[5:7, 6:8, 8:10] == 0)  # the smaller class-1 blob became background
    assert np.count_nonzero(out == 2) == 4  # class 2 has one component: kept
    assert np.array_equal(arr, _two_blobs())  # input untouched


def test_keep_largest_component_only_listed_classes() -> None:
    arr = _two_blobs()
    arr[0, 9, 0] = 2  # a second, smaller class-2 component
    out = keep_largest_component(arr, classes=[2])
    assert np.count_nonzero(out == 1) == 35  # class 1 left alone
    assert out[0, 9, 0] == 0 and np.count_nonzero(out == 2) == 4


def test_connectivity_decides_what_touches() -> None:
    arr = np.zeros((3, 3, 3), dtype=np.uint8)
    arr[0, 0, 0] = arr[1, 1, 1] = 1  # corner-touching voxels
    arr[2, 2, 2] = 1
    assert np.count_nonzero(keep_largest_component(arr, connectivity=26)) == 3
    assert np.count_nonzero(keep_largest_component(arr, connectivity=6)) == 1
    with pytest.raises(ConfigError, match="connectivity"):
        keep_largest_component(arr, connectivity=8)


def test_keep_largest_foreground_keeps_classes_inside() -> None:
    arr = _two_blobs()
    arr[2, 2, 2] = 3  # another class inside the big blob
    out = keep_largest_foreground(arr)
    assert out[2, 2, 2] == 3 and np.count_nonzero(out == 1) == 26
    assert np.count_nonzero(out == 2) == 0 and np.all(out[5:7, 6:8, 8:10] == 0)


# --------------------------------------------------------------------------- holes
def test_fill_holes_3d_and_2d() -> None:
    arr = _ring_with_hole()
    out3 = fill_holes(arr, mode="3d")
    assert out3[2, 2, 2] == 1
    assert np.all(out3[:, 7:10, 7:10] == 0)  # the tube is open in 3D: not a hole
    out2 = fill_holes(arr, mode="2d")
    assert out2[2, 2, 2] == 1  # also a hole in its slice
    assert np.all(out2[:, 7:10, 7:10] == 2)
    assert np.array_equal(fill_holes(arr, mode="none"), arr)


def test_fill_holes_never_overwrites_another_class() -> None:
    arr = _ring_with_hole()
    arr[3, 8, 8] = 3  # a urethra-like voxel inside the class-2 tube
    out = fill_holes(arr, mode="2d")
    assert out[3, 8, 8] == 3
    assert np.count_nonzero(out[3, 7:10, 7:10] == 2) == 8
    assert set(np.unique(out)) <= set(np.unique(arr))


def test_fill_holes_bad_mode() -> None:
    with pytest.raises(ConfigError, match="hole filling mode"):
        fill_holes(_ring_with_hole(), mode="4d")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- small components
def test_remove_small_components_in_voxels() -> None:
    arr = _two_blobs()
    arr[7, 0, 0] = 1  # a one-voxel speck
    out = remove_small_components(arr, min_voxels=5)
    assert out[7, 0, 0] == 0
    assert np.count_nonzero(out == 1) == 35  # both blobs (27 and 8) stay
    assert np.count_nonzero(out == 2) == 0  # the 4-voxel class-2 bar is gone
    per_class = remove_small_components(arr, min_voxels={1: 10})
    assert np.count_nonzero(per_class == 1) == 27 and np.count_nonzero(per_class == 2) == 4


def test_remove_small_components_in_millilitres() -> None:
    arr = _two_blobs()
    spacing = (5.0, 2.0, 2.0)  # 20 mm^3 per voxel: 27 voxels = 0.54 mL, 8 voxels = 0.16 mL
    out = remove_small_components(arr, min_ml=0.2, spacing=spacing, classes=[1])
    assert np.count_nonzero(out == 1) == 27 and np.count_nonzero(out == 2) == 4
    with pytest.raises(ConfigError, match="spacing"):
        remove_small_components(arr, min_ml=0.2)
    with pytest.raises(ConfigError, match="spacing"):
        remove_small_components(arr, min_ml=0.2, spacing=(1.0, -1.0, 1.0))


def test_inputs_must_be_integer_3d_label_maps() -> None:
    with pytest.raises(InputError, match="integer"):
        keep_largest_component(np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(InputError, match="3D"):
        fill_holes(np.zeros((4, 4), dtype=np.uint8))


# --------------------------------------------------------------------------- rules
def _rules() -> PostprocessingRules:
    return PostprocessingRules(
        {
            1: ClassRule(keep_largest=True, fill_holes="3d"),
            2: ClassRule(min_size_voxels=5),
            3: ClassRule(min_size_ml=0.01, fill_holes="2d"),
        },
        connectivity=18,
    )


def test_apply_rules() -> None:
    arr = _two_blobs()
    arr[2, 2, 2] = 0  # a hole in the big class-1 blob
    arr[0, 9, 11] = 3  # 1 voxel of class 3: 0.02 mL at 20 mm^3, kept at 1 mm^3
    out = apply_rules(arr, _rules(), spacing=(5.0, 2.0, 2.0))
    assert np.count_nonzero(out == 1) == 27  # small blob gone, hole filled
    assert np.count_nonzero(out == 2) == 0  # 4 voxels < 5
    assert out[0, 9, 11] == 3
    out_fine = apply_rules(arr, _rules(), spacing=(1.0, 1.0, 1.0))
    assert out_fine[0, 9, 11] == 0
    # Voxels only ever go class -> background or background -> the class being filled.
    changed = out != arr
    assert np.all((out[changed] == 0) | (arr[changed] == 0))
    assert np.all(out[changed & (arr == 0)] == 1)


def test_apply_rules_leaves_unlisted_classes_and_identity_rules_alone() -> None:
    arr = _two_blobs()
    assert np.array_equal(apply_rules(arr, PostprocessingRules()), arr)
    rules = PostprocessingRules({1: ClassRule()}, keep_largest_foreground=True)
    out = apply_rules(arr, rules)
    assert np.count_nonzero(out) == 27


def test_rules_json_round_trip(tmp_path: Path) -> None:
    rules = _rules()
    data = json.loads(json.dumps(rules.to_json()))
    assert PostprocessingRules.from_json(data) == rules
    path = write_rules(rules, tmp_path / "postprocessing.json")
    assert read_rules(path) == rules
    with pytest.raises(OutputExistsError):
        write_rules(rules, path)
    uniform = PostprocessingRules.uniform([0, 1, 2], ClassRule(keep_largest=True))
    assert sorted(uniform.classes) == [1, 2]


@pytest.mark.parametrize(
    "data, match",
    [
        ({"classes": {}, "colour": "red"}, "unknown key"),
        ({"classes": {"1": {"keep_largest": True, "largest": True}}}, "unknown key"),
        ({"classes": {"0": {}}}, "foreground label"),
        ({"classes": {"x": {}}}, "label values"),
        ({"classes": {"1": {"fill_holes": "yes"}}}, "fill_holes"),
        ({"classes": {"1": {"min_size_voxels": -1}}}, "min_size_voxels"),
        ({"classes": {"1": {"min_size_voxels": 2.5}}}, "min_size_voxels"),
        ({"classes": {"1": {"min_size_ml": "big"}}}, "min_size_ml"),
        ({"classes": {"1": {"keep_largest": "true"}}}, "keep_largest"),
        ({"classes": {"1": []}}, "JSON object"),
        ({"classes": []}, "'classes'"),
        ({"connectivity": 4}, "connectivity"),
        ({"schema_version": 99}, "schema_version"),
        ([], "JSON object"),
    ],
)
def test_bad_rules_are_rejected(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PostprocessingRules.from_json(data)


def test_read_rules_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_rules(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json"):
        read_rules(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"classes": {}, "extra": 1}))
    with pytest.raises(ConfigError, match=r"unknown\.json: .*unknown key"):
        read_rules(unknown)


def test_rules_on_region_masks_act_on_each_whole_region() -> None:
    """Overlapping regions painted 1 and 2: region 0 takes value 1's rule (keep largest) on its
    whole mask, overlap included; region 1 (no rule) keeps its island; then the largest
    component of the union removes what lies apart from everything."""
    from medseg.postprocessing.labels import apply_rules_to_masks

    large = np.zeros((3, 10, 10), bool)
    large[1, 1:6, 1:6] = True
    large[1, 8, 8] = True  # an island of region 0 inside region 1's island
    small = np.zeros_like(large)
    small[1, 4:7, 4:7] = True  # overlaps region 0's blob
    small[1, 8:10, 7:10] = True  # region 1's own island (holds region 0's island)
    far = np.zeros_like(large)
    far[0, 0, 9] = True  # a third region, far from the others
    masks = np.stack([large, small, far])
    rules = PostprocessingRules(classes={1: ClassRule(keep_largest=True)})
    out = apply_rules_to_masks(masks, (1, 2, 3), rules)
    expected0 = large.copy()
    expected0[1, 8, 8] = False
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], small)  # no rule for value 2
    np.testing.assert_array_equal(out[2], far)
    assert masks[0, 1, 8, 8]  # the input is not modified
    both = apply_rules_to_masks(masks, (1, 2, 3), PostprocessingRules(keep_largest_foreground=True))
    assert not both[2].any() and not both[1, 1, 8:10, 7:10].any()  # apart from the largest union
    np.testing.assert_array_equal(both[0], expected0)  # its island lay in the removed component
