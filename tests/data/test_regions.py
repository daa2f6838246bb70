from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.data.dataset import DatasetDescriptor, read_descriptor, write_descriptor
from medseg.data.regions import paint_regions, region_masks, region_targets, validate_regions
from medseg.errors import InputError

LABELS = {"background": 0, "stomach": 1, "large_bowel": 2, "small_bowel": 3, "both_bowels": 4}


def _dataset_json(tmp_path: Path, **extra: object) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    data = {"channel_names": {"0": "MR"}, "labels": LABELS, "numTraining": 0, **extra}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_regions_are_read_with_their_painting_order(tmp_path: Path) -> None:
    root = _dataset_json(
        tmp_path,
        regions={"large": [2, 4], "small": [4, 3], "stomach": [1]},
        regions_class_order=[2, 3, 1],
    )
    desc = read_descriptor(root)
    assert desc.regions == {"large": (2, 4), "small": (3, 4), "stomach": (1,)}
    assert desc.regions_class_order == (2, 3, 1)
    # written back as declared, and read again the same
    write_descriptor(root, desc)
    assert read_descriptor(root) == desc


def test_without_an_order_each_region_is_painted_with_its_smallest_value() -> None:
    brats = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
    _, order = validate_regions({"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}, brats)
    assert order == (1, 2, 3)


def test_a_label_in_no_region_is_refused_naming_the_file_and_the_label(tmp_path: Path) -> None:
    """Every region's target is 0 on a label in no region: it would train as background and
    the region model could never predict it."""
    root = _dataset_json(tmp_path, regions={"large": [2, 4], "small": [3, 4]})
    with pytest.raises(InputError, match=r"'stomach' = 1 lie in no region") as err:
        read_descriptor(root)
    message = str(err.value)
    assert str(root / "dataset.json") in message
    assert "add each to a region" in message and "drop it from 'labels'" in message
    assert "both_bowels" not in message  # only the labels outside every region are named
    # two of them are both named
    with pytest.raises(ValueError, match=r"'stomach' = 1, 'small_bowel' = 3 lie in no region"):
        validate_regions({"large": [2, 4]}, LABELS)
    # covered by a region of its own, the same labels are accepted
    validate_regions({"large": [2, 4], "small": [3, 4], "stomach": [1]}, LABELS)


def test_a_dataset_writer_refuses_regions_that_leave_a_label_out(tmp_path: Path) -> None:
    from medseg.data.dataset import create_dataset
    from medseg.errors import ConfigError

    src = tmp_path / "src"
    src.mkdir()
    with (
        pytest.raises(ConfigError, match=r"dataset regions: label\(s\) 'stomach' = 1 lie in no region"),
        create_dataset(
            tmp_path / "ds",
            source=src,
            channel_names=["MR"],
            labels=LABELS,
            regions={"large": [2, 4], "small": [3, 4]},
        ),
    ):
        pass


def test_a_dataset_without_regions_is_unchanged(tmp_path: Path) -> None:
    desc = read_descriptor(_dataset_json(tmp_path))
    assert desc.regions == {} and desc.regions_class_order == ()
    assert "regions" not in desc.to_json()


@pytest.mark.parametrize(
    ("regions", "order", "message"),
    [
        ({"large": [2, 9]}, None, r"label value\(s\) \[9\] that 'labels' does not declare"),
        ({"large": []}, None, "region 'large' is empty"),
        ({"large": [0, 2]}, None, "contains background"),
        ({"large": [2, 2]}, None, "lists a label value twice"),
        ({"a": [2, 4], "b": [4, 2]}, None, "regions 'a' and 'b' hold the same label values"),
        ({"large": [2.5]}, None, "not whole numbers"),
        ({"large": "2"}, None, "must be a list"),
        ([2, 4], None, "must map region names"),
        ({}, None, "must map region names"),
        ({"large": [2, 4], "small": [3, 4]}, [2], "one label value per region"),
        ({"large": [2, 4], "small": [3, 4]}, [2, 0], r"holds \[0\]"),
        ({"large": [2, 4], "small": [3, 4]}, [2, 7], r"holds \[7\]"),
        ({"large": [2, 4], "small": [3, 4]}, [3, 2], r"paints region 'large' with 3, which is not one of"),
    ],
)
def test_bad_regions_are_refused_naming_the_file(
    tmp_path: Path, regions: object, order: object, message: str
) -> None:
    extra: dict[str, object] = {"regions": regions}
    if order is not None:
        extra["regions_class_order"] = order
    root = _dataset_json(tmp_path, **extra)
    with pytest.raises(InputError, match=message) as err:
        read_descriptor(root)
    assert str(root / "dataset.json") in str(err.value)


def test_an_order_without_regions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="without 'regions'"):
        read_descriptor(_dataset_json(tmp_path, regions_class_order=[1]))


def test_nnunet_style_regions_inside_labels_point_to_the_regions_key() -> None:
    data = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "core": [2, 3]}}
    with pytest.raises(InputError, match="is a region"):
        DatasetDescriptor.from_json(data)


def test_region_targets_are_the_membership_of_each_voxels_label() -> None:
    labels = torch.tensor([[[0, 1, 2, 3, 4]]])  # (B=1, 1, 5): a label map with a channel axis
    got = region_targets(labels, [(2, 4), (3, 4), (1,)])
    assert got.shape == (1, 3, 5) and got.dtype == torch.float32
    assert got[0].tolist() == [[0, 0, 1, 0, 1], [0, 0, 0, 1, 1], [0, 1, 0, 0, 0]]
    # without the channel axis, and from a float patch (rounded, never thresholded)
    assert torch.equal(region_targets(labels[:, 0].float() + 0.2, [(2, 4), (3, 4), (1,)]), got)


def test_region_masks_match_the_torch_targets() -> None:
    labels = np.array([[0, 4, 3], [2, 1, 4]])
    masks = region_masks(labels, [(2, 4), (3, 4)])
    assert masks.tolist() == [
        [[False, True, False], [True, False, True]],
        [[False, True, True], [False, False, True]],
    ]


def test_painting_follows_the_order_later_regions_over_earlier_ones() -> None:
    whole = np.array([1, 1, 1, 1, 0], bool)
    core = np.array([0, 1, 1, 0, 0], bool)
    enhancing = np.array([0, 0, 1, 0, 1], bool)  # one voxel outside the core: painted all the same
    masks = np.stack([whole, core, enhancing])
    assert paint_regions(masks, (1, 2, 3)).tolist() == [1, 2, 3, 1, 3]
    # the reverse order lets the outer region cover the inner ones
    reversed_masks = np.stack([enhancing, core, whole])
    assert paint_regions(reversed_masks, (3, 2, 1)).tolist() == [1, 1, 1, 1, 3]
    with pytest.raises(ValueError, match="3 region masks but 2 values"):
        paint_regions(masks, (1, 2))


def test_an_overlap_declared_as_a_value_of_its_own_survives_painting() -> None:
    """UW-Madison --keep-overlaps style: 1 large bowel, 2 small bowel, 3 both; regions
    large [1, 3], small [2, 3]. Painting by order alone would give the overlap 2 (small over
    large); with the declared values it gets 3, and region_masks gives the masks back."""
    regions = [(1, 3), (2, 3)]
    large = np.array([1, 1, 0, 0], bool)
    small = np.array([0, 1, 1, 0], bool)
    masks = np.stack([large, small])
    assert paint_regions(masks, (1, 2)).tolist() == [1, 2, 2, 0]
    painted = paint_regions(masks, (1, 2), regions, [0, 1, 2, 3])
    assert painted.tolist() == [1, 3, 2, 0]
    np.testing.assert_array_equal(region_masks(painted, regions), masks)
    # Nested regions paint exactly as by order (each value's set is what the order gives) ...
    whole = np.array([1, 1, 1, 1, 0], bool)
    core = np.array([0, 1, 1, 0, 0], bool)
    enhancing = np.array([0, 0, 1, 0, 1], bool)
    nested = np.stack([whole, core, enhancing])
    nested_regions = [(1, 2, 3), (2, 3), (3,)]
    assert paint_regions(nested, (1, 2, 3), nested_regions, [0, 1, 2, 3]).tolist() == [1, 2, 3, 1, 3]
    # ... and a set no declared value has (enhancing outside whole) falls back to the order.
    # Two values with the same set of regions are ambiguous: the order decides.
    assert paint_regions(masks, (1, 2), [(1, 3, 4), (2, 3, 4)], [1, 2, 3, 4]).tolist() == [1, 2, 2, 0]
