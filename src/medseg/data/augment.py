"""Training augmentation built on MONAI dictionary transforms (seed 002's list and more).

Spatial: one random affine (rotation, scaling, shear, optional translation; image
bilinear, label nearest, both with the same matrix), optional elastic deformation,
random flips. Intensity (image only): Gaussian noise, brightness (multiplicative),
contrast (scaling around the mean), gamma. Applied to patches (``{"image": (C, *S),
"label": (1, *S)}``) after sampling, not to whole volumes, so it stays cheap on a CPU;
elastic deformation is off by default because it is the slow one.

Anisotropy: when the largest spacing exceeds ``anisotropy_threshold`` times the
smallest (thick slices), the affine acts in-plane only: rotation about the thick axis,
no scaling, shear or translation along it (nnU-Net's "dummy 2D" augmentation), so
slices never mix.

Reproducible: ``build_augmentation(..., seed=s)`` seeds every random transform
(MONAI ``set_random_state``); the patch dataset re-seeds it per sample.

Cheap per sample: the transforms run with MONAI's metadata tracking off (patches need no
affine history; MetaTensor bookkeeping cost more than the flips themselves), and a re-seed
creates one random generator shared by the random transforms, not one per transform as
MONAI's ``Compose.set_random_state`` does. Together that cuts the CPU time of a training
patch 1.2-3.7x, the most for small and 2D patches (benchmarks/augment_bench.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medseg.config import from_dict, to_dict
from medseg.errors import ConfigError

IMAGE = "image"
LABEL = "label"


@dataclass(frozen=True)
class AugmentationConfig:
    """What to randomise and how much; probabilities are per patch.

    Ranges: rotation ``+-rotate_deg`` per allowed axis, scale factor ``1 +- scale``
    per axis, shear coefficient ``+-shear``, translation ``+-translate_mm`` (converted
    to voxels with the spacing), noise standard deviation ``U(0, noise_std)``,
    brightness factor ``1 +- brightness``, contrast factor ``1 +- contrast`` about the
    mean, gamma in ``gamma_range`` (mean and std kept). Elastic (3D): Gaussian sigma
    and magnitude ranges in voxels; (2D) control-point spacing and offset magnitude.
    """

    enabled: bool = True
    affine_prob: float = 0.3
    rotate_deg: float = 15.0
    scale: float = 0.15
    shear: float = 0.05
    translate_mm: float = 0.0
    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] | None = None
    # Mirror along the patient's left-right axis? None: yes, unless a label name says "left"
    # or "right" (a mirrored left kidney looks like a right one: flipping would teach the
    # network that the two are interchangeable; TotalSegmentator trains without mirroring
    # for the same reason). Resolved by the trainer from the cases' orientation.
    mirror_left_right: bool | None = None
    noise_prob: float = 0.15
    noise_std: float = 0.1
    brightness_prob: float = 0.15
    brightness: float = 0.25
    contrast_prob: float = 0.15
    contrast: float = 0.25
    gamma_prob: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    elastic_prob: float = 0.0
    elastic_sigma: tuple[float, float] = (5.0, 8.0)
    elastic_magnitude: tuple[float, float] = (50.0, 150.0)
    elastic_grid_2d: float = 16.0
    elastic_magnitude_2d: tuple[float, float] = (1.0, 2.0)
    anisotropy_threshold: float = 3.0

    def __post_init__(self) -> None:
        for name in (
            "affine_prob",
            "flip_prob",
            "noise_prob",
            "brightness_prob",
            "contrast_prob",
            "gamma_prob",
            "elastic_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augmentation {name} must be a probability in [0, 1], found {value}")
        for name in ("rotate_deg", "scale", "shear", "translate_mm", "noise_std", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augmentation {name} must be >= 0, found {getattr(self, name)}")
        if self.scale >= 1 or self.brightness >= 1 or self.contrast >= 1:
            raise ConfigError("augmentation scale, brightness and contrast must be < 1 (factors 1 +- value)")
        low, high = self.gamma_range
        if not 0 < low <= high:
            raise ConfigError(
                f"augmentation gamma_range must satisfy 0 < low <= high, found {self.gamma_range}"
            )
        if self.anisotropy_threshold < 1:
            raise ConfigError(f"anisotropy_threshold must be >= 1, found {self.anisotropy_threshold}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = to_dict(self)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentationConfig:
        """Build from a dict; unknown keys and wrong types raise ``ConfigError``."""
        return from_dict(cls, data, "augmentation")

    @classmethod
    def disabled(cls) -> AugmentationConfig:
        return cls(enabled=False)


def is_lateralised(label_names: Sequence[str]) -> bool:
    """True when a label name has the word "left" or "right" (``right_kidney``, ``Left lung``)."""
    return any(
        word in ("left", "right") for name in label_names for word in re.split(r"[^a-z]+", name.lower())
    )


def left_right_array_axis(direction: Sequence[float] | Any) -> int:
    """Array axis (0 = z, 1 = y, 2 = x) closest to the patient's left-right (world x) axis."""
    import numpy as np

    mat = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: array axes z, y, x
    return int(np.argmax(np.abs(mat[0, :])))


def mirror_axes(
    spatial_dims: int, flip_axes: Sequence[int] | None, left_right_axis: int | None
) -> tuple[int, ...]:
    """Spatial axes of the network input along which an image may be mirrored.

    ``flip_axes`` given: those. Otherwise every spatial axis, less the one that is the
    patient's left-right axis (``left_right_axis``, an array axis 0..2 of the (z, y, x)
    volume; None keeps them all). A 2D / 2.5D network sees (y, x): array axis ``a`` is
    spatial axis ``a - 1`` there, and a left-right slice axis (sagittal slices) is not
    one of its axes.
    """
    if flip_axes is not None:
        axes = tuple(int(a) for a in flip_axes)
        if any(not 0 <= a < spatial_dims for a in axes):
            raise ConfigError(f"augmentation flip_axes {axes} must be spatial axes 0..{spatial_dims - 1}")
        return axes
    excluded = None if left_right_axis is None else left_right_axis - (3 - spatial_dims)
    return tuple(a for a in range(spatial_dims) if a != excluded)


def thick_axis(spacing: Sequence[float], threshold: float) -> int | None:
    """Index of the thick axis when max spacing > ``threshold`` x min spacing, else None."""
    if min(spacing) <= 0:
        raise ConfigError(f"spacing must be positive, found {tuple(spacing)}")
    largest = max(range(len(spacing)), key=lambda i: spacing[i])
    return largest if spacing[largest] / min(spacing) > threshold else None


def affine_ranges(
    config: AugmentationConfig, spatial_dims: int, spacing: Sequence[float]
) -> dict[str, tuple[float, ...]]:
    """RandAffine's rotate/scale/shear/translate ranges (one symmetric bound per parameter).

    MONAI's 3D ``rotate_range[i]`` rotates about array axis ``i``; shear coefficients
    are ordered (0,1), (0,2), (1,0), (1,2), (2,0), (2,1) as (row, column) of the matrix.
    """
    rot = math.radians(config.rotate_deg)
    translate = tuple(config.translate_mm / s for s in spacing)
    if spatial_dims == 2:
        return {
            "rotate_range": (rot,),
            "scale_range": (config.scale,) * 2,
            "shear_range": (config.shear,) * 2,
            "translate_range": translate,
        }
    thick = thick_axis(spacing, config.anisotropy_threshold)
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    if thick is None:
        return {
            "rotate_range": (rot,) * 3,
            "scale_range": (config.scale,) * 3,
            "shear_range": (config.shear,) * 6,
            "translate_range": translate,
        }
    return {
        "rotate_range": tuple(rot if i == thick else 0.0 for i in range(3)),
        "scale_range": tuple(0.0 if i == thick else config.scale for i in range(3)),
        "shear_range": tuple(0.0 if thick in pair else config.shear for pair in pairs),
        "translate_range": tuple(0.0 if i == thick else t for i, t in enumerate(translate)),
    }


def build_augmentation(
    config: AugmentationConfig,
    spatial_dims: int,
    spacing: Sequence[float] | None = None,
    seed: int | None = None,
    output_size: Sequence[int] | None = None,
) -> Any:
    """A MONAI ``Compose`` over ``{"image": (C, *S), "label": (1, *S)}``.

    Returns plain tensors: image float32, label int64. ``spacing`` (array order, mm;
    default isotropic 1 mm) decides the anisotropy rule and converts translation to
    voxels. ``output_size`` adds a centre crop at the end, so a trainer can sample a
    larger patch and crop away the borders a rotation fills with zeros.
    """
    import numpy as np
    import torch
    from monai import transforms as mt

    if spatial_dims not in (2, 3):
        raise ConfigError(f"augmentation spatial_dims must be 2 or 3, found {spatial_dims}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * spatial_dims))
    if len(spacing) != spatial_dims:
        raise ConfigError(
            f"spacing {spacing} must have {spatial_dims} entries for spatial_dims={spatial_dims}"
        )
    if min(spacing) <= 0:
        raise ConfigError(f"spacing must be positive, found {spacing}")
    keys = [IMAGE, LABEL]
    steps: list[Any] = []
    if config.enabled:
        if config.affine_prob > 0:
            ranges = affine_ranges(config, spatial_dims, spacing)
            steps.append(
                mt.RandAffined(
                    keys,
                    prob=config.affine_prob,
                    rotate_range=ranges["rotate_range"],
                    shear_range=ranges["shear_range"],
                    translate_range=ranges["translate_range"],
                    scale_range=ranges["scale_range"],
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
        if config.elastic_prob > 0:
            if spatial_dims == 3:
                steps.append(
                    mt.Rand3DElasticd(
                        keys,
                        sigma_range=config.elastic_sigma,
                        magnitude_range=config.elastic_magnitude,
                        prob=config.elastic_prob,
                        mode=("bilinear", "nearest"),
                        padding_mode="zeros",
                    )
                )
            else:
                steps.append(
                    mt.Rand2DElasticd(
                        keys,
                        spacing=config.elastic_grid_2d,
                        magnitude_range=config.elastic_magnitude_2d,
                        prob=config.elastic_prob,
                        mode=("bilinear", "nearest"),
                        padding_mode="zeros",
                    )
                )
        if config.flip_prob > 0:
            axes = mirror_axes(spatial_dims, config.flip_axes, None)  # validates flip_axes
            steps += [mt.RandFlipd(keys, prob=config.flip_prob, spatial_axis=a) for a in axes]
        if config.noise_prob > 0 and config.noise_std > 0:
            steps.append(mt.RandGaussianNoised(IMAGE, prob=config.noise_prob, std=config.noise_std))
        if config.brightness_prob > 0 and config.brightness > 0:
            steps.append(
                mt.RandScaleIntensityd(IMAGE, factors=config.brightness, prob=config.brightness_prob)
            )
        if config.contrast_prob > 0 and config.contrast > 0:
            steps.append(
                mt.RandScaleIntensityFixedMeand(
                    IMAGE, factors=config.contrast, prob=config.contrast_prob, preserve_range=True
                )
            )
        if config.gamma_prob > 0:
            steps.append(
                mt.RandAdjustContrastd(
                    IMAGE, prob=config.gamma_prob, gamma=config.gamma_range, retain_stats=True
                )
            )
    if output_size is not None:
        if len(output_size) != spatial_dims:
            raise ConfigError(f"output_size {tuple(output_size)} must have {spatial_dims} entries")
        steps.append(mt.CenterSpatialCropd(keys, roi_size=tuple(output_size)))
    steps.append(mt.EnsureTyped(IMAGE, dtype=torch.float32, track_meta=False))
    steps.append(mt.EnsureTyped(LABEL, dtype=torch.int64, track_meta=False))
    augmentation = Augmentation(mt.Compose(steps))
    if seed is not None:
        augmentation.set_random_state(seed=int(np.uint32(seed)))
    return augmentation


class Augmentation:
    """A MONAI ``Compose`` of training transforms, called without metadata tracking.

    ``set_random_state`` gives all random transforms one shared generator: re-seeding per
    sample then costs one generator, not one per transform (and per nested transform).
    """

    def __init__(self, compose: Any) -> None:
        from monai.transforms import Randomizable

        self.compose = compose
        self._random = [t for t in compose.transforms if isinstance(t, Randomizable)]

    @property
    def transforms(self) -> tuple[Any, ...]:
        return tuple(self.compose.transforms)

    def set_random_state(self, seed: int | None = None, state: Any = None) -> Augmentation:
        import numpy as np

        if state is None:
            state = np.random.RandomState(None if seed is None else int(np.uint32(seed)))
        for transform in self._random:
            transform.set_random_state(state=state)
        return self

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        from monai.data.meta_obj import get_track_meta, set_track_meta

        tracking = get_track_meta()
        set_track_meta(False)
        try:
            out: dict[str, Any] = self.compose(dict(data))
        finally:
            set_track_meta(tracking)
        return out


__all__ = ["Augmentation", "AugmentationConfig", "affine_ranges", "build_augmentation", "thick_axis"]
