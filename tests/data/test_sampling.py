"""Patch sampling from a cache folder: alignment, oversampling, padding, 2.5D, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medseg.data.augment import AugmentationConfig, build_augmentation
from medseg.data.sampling import (
    PatchDataset,
    class_locations,
    crop_with_padding,
    load_cached_case,
    patch_lower_bound,
)
from medseg.errors import ConfigError, InputError

torch.set_num_threads(1)

RARE_VOXEL = (7, 30, 5)


def coded_image(shape: tuple[int, int, int]) -> np.ndarray:
    """Channel 0 holds z*10000 + y*100 + x (exact in float32), channel 1 its negative."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    code = (z * 10000 + y * 100 + x).astype(np.float32)
    return np.stack([code, -code])


def decode(value: float) -> tuple[int, int, int]:
    v = round(value)
    return v // 10000, (v // 100) % 100, v % 100


def write_case(cache: Path, case_id: str, image: np.ndarray, label: np.ndarray | None, props: dict) -> None:
    np.save(cache / f"{case_id}_image.npy", image)
    if label is not None:
        np.save(cache / f"{case_id}_label.npy", label)
    (cache / f"{case_id}.json").write_text(json.dumps(props))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    big_label = np.zeros((10, 40, 36), dtype=np.uint8)
    big_label[2:6, 5:15, 20:30] = 1
    big_label[RARE_VOXEL] = 2
    counts = {str(int(v)): int(n) for v, n in zip(*np.unique(big_label, return_counts=True), strict=True)}
    write_case(tmp_path, "big", coded_image((10, 40, 36)), big_label, {"class_voxels": counts})
    small_label = np.zeros((4, 8, 6), dtype=np.int16)
    small_label[1:3, 2:5, 1:4] = 1
    write_case(tmp_path, "small", coded_image((4, 8, 6)) + 1.0, small_label, {})
    write_case(tmp_path, "unlabelled", coded_image((3, 4, 5)), None, {})
    return tmp_path


def test_load_cached_case_memory_maps_and_checks(cache: Path) -> None:
    case = load_cached_case(cache, "big")
    assert isinstance(case.image, np.memmap) and case.image.shape == (2, 10, 40, 36)
    assert case.label is not None and case.label.shape == (10, 40, 36)
    assert case.properties["class_voxels"]["2"] == 1
    assert not isinstance(load_cached_case(cache, "big", mmap=False).image, np.memmap)
    assert load_cached_case(cache, "unlabelled", require_label=False).label is None
    with pytest.raises(InputError, match=r"unlabelled_label.npy: cached label not found"):
        load_cached_case(cache, "unlabelled")
    with pytest.raises(InputError, match=r"missing_image.npy: cached image not found"):
        load_cached_case(cache, "missing")
    np.save(cache / "bad_image.npy", np.zeros((1, 2, 3, 4), np.float32))
    np.save(cache / "bad_label.npy", np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(
        InputError, match=r"bad_label.npy: cached label does not match.*expected integer \(2, 3, 4\)"
    ):
        load_cached_case(cache, "bad")
    np.save(cache / "flat_image.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(
        InputError, match=r"flat_image.npy: wrong cached image; expected float \(C, Z, Y, X\)"
    ):
        load_cached_case(cache, "flat", require_label=False)
    (cache / "small.json").write_text("{not json")
    with pytest.raises(InputError, match=r"small.json: is not valid JSON"):
        load_cached_case(cache, "small")


def test_crop_with_padding_by_hand() -> None:
    a = np.arange(12).reshape(1, 3, 4)
    np.testing.assert_array_equal(crop_with_padding(a, (1, 1), (2, 2)), [[[5, 6], [9, 10]]])
    np.testing.assert_array_equal(
        crop_with_padding(a, (-1, 3), (2, 3), pad_value=-1), [[[-1, -1, -1], [3, -1, -1]]]
    )
    np.testing.assert_array_equal(crop_with_padding(a, (5, 0), (1, 2)), [[[0, 0]]])  # fully outside


def test_patch_lower_bound_keeps_the_centre_inside() -> None:
    rng = np.random.default_rng(0)
    assert patch_lower_bound((10, 40), (4, 16), rng, centre=(0, 39)) == (0, 24)
    assert patch_lower_bound((10, 40), (4, 16), rng, centre=(5, 20)) == (3, 12)
    assert patch_lower_bound((4, 8), (6, 16), rng, centre=(1, 1)) == (-2, -7)  # case inside the patch
    for _ in range(50):
        lo = patch_lower_bound((4, 40), (6, 16), rng)
        assert -2 <= lo[0] <= 0 and 0 <= lo[1] <= 24


def test_patches_are_aligned_crops_of_image_and_label(cache: Path) -> None:
    ds = PatchDataset(cache, ["big"], (4, 16, 12), samples_per_epoch=12, seed=3)
    case = load_cached_case(cache, "big", mmap=False)
    assert case.label is not None
    for i in range(12):
        item = ds[i]
        assert item["image"].shape == (2, 4, 16, 12) and item["image"].dtype == torch.float32
        assert item["label"].shape == (1, 4, 16, 12) and item["label"].dtype == torch.int64
        z, y, x = decode(item["image"][0, 0, 0, 0].item())
        np.testing.assert_array_equal(item["image"].numpy(), case.image[:, z : z + 4, y : y + 16, x : x + 12])
        np.testing.assert_array_equal(item["label"][0].numpy(), case.label[z : z + 4, y : y + 16, x : x + 12])


def test_a_third_of_patches_are_class_balanced_foreground(cache: Path) -> None:
    ds = PatchDataset(cache, ["big"], (4, 8, 8), samples_per_epoch=300, seed=0)
    items = [ds[i] for i in range(300)]
    forced = [it for it in items if it["foreground"]]
    assert len(forced) == 100
    assert [i for i in range(6) if items[i]["foreground"]] == [2, 5]
    assert all((it["label"] > 0).any() for it in forced)
    # class 2 is a single voxel, class 1 a 400-voxel block: classes are drawn uniformly
    with_rare = sum(bool((it["label"] == 2).any()) for it in forced)
    assert 35 <= with_rare <= 65
    # without oversampling the rare voxel is almost never seen
    ds_none = PatchDataset(cache, ["big"], (4, 8, 8), samples_per_epoch=300, foreground_fraction=0.0)
    assert sum(bool((ds_none[i]["label"] == 2).any()) for i in range(100)) < 10


def test_stored_class_locations_are_used(cache: Path) -> None:
    props = json.loads((cache / "big.json").read_text())
    props["class_locations"] = {"1": [[3, 10, 25]]}
    (cache / "big.json").write_text(json.dumps(props))
    ds = PatchDataset(cache, ["big"], (3, 5, 5), foreground_fraction=1.0)
    item = ds[0]
    assert decode(item["image"][0, 1, 2, 2].item()) == (3, 10, 25)  # the patch centre


def test_case_smaller_than_the_patch_is_padded_with_zeros(cache: Path) -> None:
    ds = PatchDataset(cache, ["small"], (6, 16, 16), samples_per_epoch=6, seed=1)
    for i in range(6):
        item = ds[i]
        assert item["image"].shape == (2, 6, 16, 16)
        assert int(item["label"].sum()) == 2 * 3 * 3  # the whole case lies inside the patch
        inside = item["image"][0] != 0  # case voxels are >= 1 in channel 0
        assert int(inside.sum()) == 4 * 8 * 6
        assert not (item["label"][0].bool() & ~inside).any()


def test_two_and_a_half_d_slabs_are_slice_major_with_replicated_edges(cache: Path) -> None:
    ds = PatchDataset(cache, ["big"], (1, 12, 10), mode="2.5d", num_slices=3, samples_per_epoch=30, seed=2)
    case = load_cached_case(cache, "big", mmap=False)
    assert case.label is not None
    for i in range(30):
        item = ds[i]
        assert item["image"].shape == (6, 12, 10) and item["label"].shape == (1, 12, 10)
        z, y, x = decode(item["image"][2, 0, 0].item())  # channel s * C + c = 1 * 2 + 0: centre slice
        expected = [max(z - 1, 0), z, min(z + 1, 9)]
        assert [decode(item["image"][2 * s, 0, 0].item())[0] for s in range(3)] == expected
        torch.testing.assert_close(item["image"][1::2], -item["image"][0::2])  # channel 1 of each slice
        np.testing.assert_array_equal(item["label"][0].numpy(), case.label[z, y : y + 12, x : x + 10])
    ds2d = PatchDataset(cache, ["big", "small"], (12, 10), mode="2d", samples_per_epoch=4)
    assert ds2d[0]["image"].shape == (2, 12, 10)


def test_a_slab_step_takes_every_second_slice_as_inference_does(cache: Path) -> None:
    """Training and inference must see the same slab: the sampler's crop equals the crop of
    slab_stack's input for that slice, with edges replicated, for a step of 2."""
    from medseg.inference.sliding_window import slab_stack

    ds = PatchDataset(
        cache, ["big"], (1, 12, 10), mode="2.5d", num_slices=3, slice_step=2, samples_per_epoch=40, seed=5
    )
    case = load_cached_case(cache, "big", mmap=False)
    stacked = slab_stack(case.image, 3, 2)  # (Z, 3 * 2, Y, X)
    seen = set()
    for i in range(40):
        item = ds[i]
        z, y, x = decode(item["image"][2, 0, 0].item())
        seen.add(z)
        assert [decode(item["image"][2 * s, 0, 0].item())[0] for s in range(3)] == [
            max(z - 2, 0),
            z,
            min(z + 2, 9),
        ]
        torch.testing.assert_close(item["image"], stacked[z, :, y : y + 12, x : x + 10])
    assert {0, 1, 8, 9} & seen  # an edge slice was drawn (replication exercised)
    with pytest.raises(ConfigError, match="slice_step"):
        PatchDataset(cache, ["big"], (1, 12, 10), mode="2.5d", num_slices=3, slice_step=0)


def test_single_slice_case_replicates_its_slice(tmp_path: Path) -> None:
    label = np.zeros((1, 8, 8), np.uint8)
    label[0, 2:4, 2:4] = 1
    write_case(tmp_path, "one", coded_image((1, 8, 8)), label, {})
    item = PatchDataset(tmp_path, ["one"], (8, 8), mode="2.5d", num_slices=5)[0]
    assert item["image"].shape == (10, 8, 8)
    for s in range(5):
        torch.testing.assert_close(item["image"][2 * s : 2 * s + 2], item["image"][4:6])


def test_samples_are_deterministic_across_workers_and_differ_across_epochs(cache: Path) -> None:
    transform = build_augmentation(AugmentationConfig(affine_prob=1.0, noise_prob=1.0), 3, (1.0, 1.0, 1.0))
    ds = PatchDataset(cache, ["big", "small"], (4, 8, 8), samples_per_epoch=6, transform=transform, seed=5)
    again = ds[3]
    ds[4]  # advancing the transform's own state must not matter
    torch.testing.assert_close(ds[3]["image"], again["image"])
    serial = list(DataLoader(ds, batch_size=3, sampler=ds.epoch_indices(1), num_workers=0))
    parallel = list(DataLoader(ds, batch_size=3, sampler=ds.epoch_indices(1), num_workers=2))
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel, strict=True):
        assert a["case_id"] == b["case_id"]
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["label"], b["label"])
    first_epoch = next(iter(DataLoader(ds, batch_size=3, sampler=ds.epoch_indices(0))))
    assert not torch.equal(first_epoch["image"], serial[0]["image"])
    other_seed = PatchDataset(cache, ["big", "small"], (4, 8, 8), samples_per_epoch=6, seed=6)
    assert not torch.equal(
        other_seed[0]["image"], PatchDataset(cache, ["big", "small"], (4, 8, 8))[0]["image"]
    )


def test_class_locations_subsample_deterministically() -> None:
    label = np.zeros((5, 6, 7), np.uint8)
    label[1:4, 1:5, 1:6] = 1  # 60 voxels
    label[0, 0, 0] = 3
    locs = class_locations(label, max_per_class=10)
    assert set(locs) == {1, 3}
    assert locs[1].shape == (10, 3) and (label[tuple(locs[1].T)] == 1).all()
    np.testing.assert_array_equal(locs[3], [[0, 0, 0]])
    np.testing.assert_array_equal(class_locations(label, max_per_class=10)[1], locs[1])
    assert class_locations(label, classes=[2])[2].shape == (0, 3)


def test_patch_dataset_rejects_bad_configuration(cache: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sampling mode '4d'"):
        PatchDataset(cache, ["big"], (4, 8, 8), mode="4d")
    with pytest.raises(ConfigError, match="3d patch size must have 3 positive entries"):
        PatchDataset(cache, ["big"], (8, 8))
    with pytest.raises(ConfigError, match="2d patch size must have 2"):
        PatchDataset(cache, ["big"], (4, 8, 8), mode="2d")
    with pytest.raises(ConfigError, match="odd number of slices"):
        PatchDataset(cache, ["big"], (8, 8), mode="2.5d", num_slices=2)
    with pytest.raises(ConfigError, match="num_slices must be 1"):
        PatchDataset(cache, ["big"], (8, 8), mode="2d", num_slices=3)
    with pytest.raises(ConfigError, match="foreground_fraction"):
        PatchDataset(cache, ["big"], (4, 8, 8), foreground_fraction=1.5)
    with pytest.raises(ConfigError, match="at least one case"):
        PatchDataset(cache, [], (4, 8, 8))
    with pytest.raises(InputError, match=r"nope_image.npy: cached case file not found"):
        PatchDataset(cache, ["big", "nope"], (4, 8, 8))
    with pytest.raises(InputError, match=r"unlabelled_label.npy: cached case file not found"):
        PatchDataset(cache, ["unlabelled"], (4, 8, 8))
