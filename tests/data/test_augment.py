"""Augmentation: labels stay labels, image and label stay aligned, seeds reproduce, anisotropy."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch

from medseg.data.augment import AugmentationConfig, affine_ranges, build_augmentation, thick_axis
from medseg.errors import ConfigError

torch.set_num_threads(1)

SPATIAL_ONLY = AugmentationConfig(
    affine_prob=1.0,
    rotate_deg=30.0,
    scale=0.2,
    shear=0.1,
    translate_mm=3.0,
    noise_prob=0.0,
    brightness_prob=0.0,
    contrast_prob=0.0,
    gamma_prob=0.0,
)


def cube_case(shape: tuple[int, ...] = (16, 24, 20)) -> dict[str, torch.Tensor]:
    label = torch.zeros((1, *shape), dtype=torch.int64)
    label[(0, *(slice(s // 4, s // 4 + s // 2) for s in shape))] = 1
    return {"image": label.float().clone(), "label": label}


def test_config_round_trip_and_strict_loading() -> None:
    config = AugmentationConfig(flip_axes=(1, 2), gamma_range=(0.8, 1.2), elastic_prob=0.1)
    assert AugmentationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rotation'\]"):
        AugmentationConfig.from_dict({"rotation": 10})
    with pytest.raises(ConfigError, match=r"augmentation.rotate_deg: expected a number"):
        AugmentationConfig.from_dict({"rotate_deg": "ten"})
    with pytest.raises(ConfigError, match="flip_prob must be a probability"):
        AugmentationConfig(flip_prob=1.5)
    with pytest.raises(ConfigError, match="gamma_range"):
        AugmentationConfig(gamma_range=(1.5, 0.7))
    with pytest.raises(ConfigError, match="must be < 1"):
        AugmentationConfig(scale=1.0)


def test_label_values_stay_a_subset_and_types_are_plain_tensors() -> None:
    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.choice([0, 2, 4], size=(1, 12, 20, 20))).long()
    image = torch.from_numpy(rng.normal(size=(2, 12, 20, 20)).astype(np.float32))
    config = AugmentationConfig(
        affine_prob=1.0,
        elastic_prob=1.0,
        noise_prob=1.0,
        brightness_prob=1.0,
        contrast_prob=1.0,
        gamma_prob=1.0,
    )
    out = build_augmentation(config, 3, (1.0, 1.0, 1.0), seed=3)({"image": image, "label": label})
    assert type(out["image"]) is torch.Tensor and type(out["label"]) is torch.Tensor
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.int64
    assert out["image"].shape == image.shape and out["label"].shape == label.shape
    assert set(out["label"].unique().tolist()) <= {0, 2, 4}
    assert not torch.equal(out["label"], label)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_and_label_stay_aligned(seed: int) -> None:
    case = cube_case()
    out = build_augmentation(SPATIAL_ONLY, 3, (1.0, 1.0, 1.0), seed=seed)(dict(case))
    moved = out["label"] == 1
    assert not torch.equal(out["label"], case["label"])  # the transform did something
    assert moved.sum() > 0.5 * case["label"].sum()
    # the bilinear image of the cube, thresholded, is the nearest-neighbour label
    agreement = ((out["image"] > 0.5) == moved).float().mean().item()
    assert agreement > 0.98
    # and the label's centroid follows the image's intensity centroid
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in moved.shape[1:]], indexing="ij")).float()
    label_centroid = (grid * moved).flatten(1).sum(1) / moved.sum()
    weights = out["image"].clamp_min(0)
    image_centroid = (grid * weights).flatten(1).sum(1) / weights.sum()
    assert torch.allclose(label_centroid, image_centroid, atol=0.5)


def test_same_seed_reproduces_and_another_seed_differs() -> None:
    rng = np.random.default_rng(1)
    case = {
        "image": torch.from_numpy(rng.normal(size=(1, 10, 16, 16)).astype(np.float32)),
        "label": torch.from_numpy(rng.integers(0, 3, size=(1, 10, 16, 16))),
    }
    config = AugmentationConfig(affine_prob=1.0, noise_prob=1.0, gamma_prob=1.0)
    first = build_augmentation(config, 3, seed=7)(dict(case))
    second = build_augmentation(config, 3, seed=7)(dict(case))
    other = build_augmentation(config, 3, seed=8)(dict(case))
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["label"], second["label"])
    assert not torch.equal(first["image"], other["image"])


def test_fast_path_matches_monai_with_metadata_and_restores_tracking() -> None:
    """Without metadata tracking and with one shared generator, the transforms compute the
    same patch as MONAI's Compose with MetaTensors given the same generator; the global
    tracking flag is restored after a call, also when a transform raises."""
    from monai.data.meta_obj import get_track_meta
    from monai.transforms import Randomizable

    rng = np.random.default_rng(2)
    case = {
        "image": torch.from_numpy(rng.normal(size=(1, 10, 16, 18)).astype(np.float32)),
        "label": torch.from_numpy(rng.integers(0, 3, size=(1, 10, 16, 18))),
    }
    config = AugmentationConfig(
        affine_prob=1.0, elastic_prob=1.0, noise_prob=1.0, brightness_prob=1.0, gamma_prob=1.0
    )
    augmentation = build_augmentation(config, 3, (2.0, 1.0, 0.9))
    seen: list[bool] = []

    def spy(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(get_track_meta())
        return data

    steps = augmentation.compose.transforms
    augmentation.compose.transforms = (spy, *steps)
    fast = augmentation.set_random_state(state=np.random.RandomState(11))(dict(case))
    assert seen == [False] and get_track_meta()
    augmentation.compose.transforms = steps
    shared = np.random.RandomState(11)
    for transform in augmentation.transforms:
        if isinstance(transform, Randomizable):
            transform.set_random_state(state=shared)
    reference = augmentation.compose(dict(case))  # MONAI's own call, MetaTensors on
    assert type(fast["image"]) is torch.Tensor and type(fast["label"]) is torch.Tensor
    torch.testing.assert_close(fast["image"], torch.as_tensor(reference["image"]))
    assert torch.equal(fast["label"], torch.as_tensor(reference["label"]))
    assert not torch.equal(fast["image"], case["image"])  # the patch was transformed
    # a seed re-seeds every random transform with one generator
    augmentation.set_random_state(seed=3)
    generators = {id(t.R) for t in augmentation.transforms if isinstance(t, Randomizable)}
    assert len(generators) == 1
    with pytest.raises(RuntimeError):
        augmentation({"image": case["image"]})  # no label key: MONAI raises
    assert get_track_meta()


def slab_labels(shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Every slice z is filled with label z + 1, so any mixing of slices shows."""
    label = (torch.arange(shape[0]) + 1).view(1, -1, 1, 1).expand(1, *shape).clone()
    return {"image": label.float(), "label": label}


def test_thick_slices_rotate_in_plane_only() -> None:
    case = slab_labels((8, 24, 24))
    no_flip = dataclasses.replace(SPATIAL_ONLY, flip_prob=0.0)  # flipping z reorders slices on purpose
    transform = build_augmentation(no_flip, 3, (3.5, 1.0, 1.0), seed=0)  # ratio 3.5 > 3
    for _ in range(5):
        out = transform(dict(case))["label"][0]
        assert (out == 0).any()  # corners rotated in from outside: the affine ran
        for z in range(out.shape[0]):
            assert set(out[z].unique().tolist()) <= {0, z + 1}
    # isotropic spacing rotates out of plane and mixes slices: the check above can fail
    iso = build_augmentation(no_flip, 3, (1.0, 1.0, 1.0), seed=0)(dict(case))["label"][0]
    assert any(not set(iso[z].unique().tolist()) <= {0, z + 1} for z in range(iso.shape[0]))


def test_affine_ranges_follow_the_thick_axis() -> None:
    config = AugmentationConfig(rotate_deg=10.0, scale=0.1, shear=0.05, translate_mm=2.0)
    rot = math.radians(10.0)
    thin_x = affine_ranges(config, 3, (0.5, 0.5, 3.0))  # thick x: rotate about x, in the z-y plane
    assert thin_x["rotate_range"] == (0.0, 0.0, rot)
    assert thin_x["scale_range"] == (0.1, 0.1, 0.0)
    assert thin_x["shear_range"] == (0.05, 0.0, 0.05, 0.0, 0.0, 0.0)  # only (0,1) and (1,0)
    assert thin_x["translate_range"] == (4.0, 4.0, 0.0)
    iso = affine_ranges(config, 3, (1.0, 1.0, 1.2))
    assert iso["rotate_range"] == (rot, rot, rot) and iso["shear_range"] == (0.05,) * 6
    assert thick_axis((3.0, 1.0, 1.0), 3.0) is None  # ratio 3 is not > 3
    assert thick_axis((3.1, 1.0, 1.0), 3.0) == 0


def test_two_d_patches_and_output_crop() -> None:
    image = torch.randn(3, 40, 36)  # 2.5D: 3 slices as channels
    label = torch.zeros(1, 40, 36, dtype=torch.int64)
    label[0, 10:30, 10:20] = 2
    config = AugmentationConfig(affine_prob=1.0, elastic_prob=1.0)
    out = build_augmentation(config, 2, (0.7, 0.7), seed=0, output_size=(32, 32))(
        {"image": image, "label": label}
    )
    assert out["image"].shape == (3, 32, 32) and out["label"].shape == (1, 32, 32)
    assert set(out["label"].unique().tolist()) <= {0, 2}


def test_disabled_augmentation_only_converts_types() -> None:
    case = {
        "image": torch.randn(1, 6, 8, 8, dtype=torch.float64),
        "label": torch.ones(1, 6, 8, 8, dtype=torch.uint8),
    }
    out = build_augmentation(AugmentationConfig.disabled(), 3)(dict(case))
    assert torch.equal(out["image"], case["image"].float())
    assert out["label"].dtype == torch.int64 and torch.equal(out["label"], case["label"].long())


def test_build_augmentation_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="spatial_dims must be 2 or 3"):
        build_augmentation(AugmentationConfig(), 4)
    with pytest.raises(ConfigError, match="must have 3 entries"):
        build_augmentation(AugmentationConfig(), 3, spacing=(1.0, 1.0))
    with pytest.raises(ConfigError, match="flip_axes"):
        build_augmentation(AugmentationConfig(flip_axes=(0, 3)), 3)
    with pytest.raises(ConfigError, match="spacing must be positive"):
        build_augmentation(AugmentationConfig(), 3, spacing=(0.0, 1.0, 1.0))


def test_lateralised_label_names() -> None:
    from medseg.data.augment import is_lateralised

    assert is_lateralised(["liver", "right_kidney", "left_kidney"])
    assert is_lateralised(["Left lung"])
    assert not is_lateralised(["anterior", "posterior", "brightness"])  # "right" inside a word


def test_left_right_axis_follows_the_direction_matrix() -> None:
    from medseg.data.augment import left_right_array_axis

    # Volume's direction: column a = world (x, y, z) vector of array axis a (z, y, x).
    # Axial (ITK diag(1, -1, 1), columns reversed): x, the last array axis
    axial = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    assert left_right_array_axis(axial) == 2
    # sagittal slices: the slice axis (array axis 0) runs left-right; tilted by 20 degrees
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    sagittal = np.array([[c, 0.0, -s], [s, 0.0, c], [0.0, -1.0, 0.0]])  # columns: z, y, x
    assert left_right_array_axis(sagittal) == 0


def test_mirror_axes_drop_only_the_left_right_axis() -> None:
    from medseg.data.augment import mirror_axes

    assert mirror_axes(3, None, None) == (0, 1, 2)
    assert mirror_axes(3, None, 2) == (0, 1)
    assert mirror_axes(2, None, 2) == (0,)  # 2D input is (y, x): x is spatial axis 1
    assert mirror_axes(2, None, 0) == (0, 1)  # sagittal slices: left-right is across slices
    assert mirror_axes(3, (1,), 1) == (1,)  # explicit flip_axes win
    with pytest.raises(ConfigError, match="flip_axes"):
        mirror_axes(2, (2,), None)
