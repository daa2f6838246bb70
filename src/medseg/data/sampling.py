"""Patch sampling from the preprocessing cache, with class-balanced foreground oversampling.

Cache layout (written by :mod:`medseg.preprocessing.pipeline`), per case::

    {case_id}_image.npy   float32 (C, Z, Y, X)
    {case_id}_label.npy   uint8 / int16 (Z, Y, X)
    {case_id}.json        properties (may hold "class_voxels" and "class_locations")

Arrays are opened with ``np.load(mmap_mode="r")`` so a patch reads only its own
voxels. A fraction of the samples (default a third, as nnU-Net) is centred on a
foreground voxel: a class is chosen uniformly among the foreground classes present
in the case, then one of its voxels. Other patches are placed uniformly. A case
smaller than the patch is zero-padded (label 0).

2D / 2.5D sampling from 3D cases: one slice along the first axis (z), or a slab of
``num_slices`` neighbouring slices (``slice_step`` apart) stacked as channels (slice-major: channel
``s * C + c``; edge slices replicated); the label is the centre slice.

Determinism: sample ``i`` is a pure function of ``(seed, i)`` -- case, patch position
and augmentation -- whatever the worker that draws it, so runs and resumed runs see
the same patches. Epochs draw different samples through
:meth:`PatchDataset.epoch_indices`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

MAX_LOCATIONS_PER_CLASS = 10_000


@dataclass(frozen=True)
class CachedCase:
    """One preprocessed case: image (C, Z, Y, X), label (Z, Y, X) or None, properties."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    properties: dict[str, Any] = field(default_factory=dict)


def case_paths(cache_dir: str | Path, case_id: str) -> tuple[Path, Path, Path]:
    """(image, label, properties) paths of a case in a cache folder."""
    root = Path(cache_dir)
    return root / f"{case_id}_image.npy", root / f"{case_id}_label.npy", root / f"{case_id}.json"


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, "cannot be read as a .npy array", found=str(exc)) from None


def load_cached_case(
    cache_dir: str | Path, case_id: str, mmap: bool = True, require_label: bool = True
) -> CachedCase:
    """Open a cached case (memory-mapped by default) and check its arrays agree."""
    image_path, label_path, props_path = case_paths(cache_dir, case_id)
    if not image_path.is_file():
        raise InputError(image_path, "cached image not found", expected=f"{case_id}_image.npy in the cache")
    image = _load_npy(image_path, mmap)
    if image.ndim != 4 or not np.issubdtype(image.dtype, np.floating):
        raise InputError(
            image_path,
            "wrong cached image",
            expected="float (C, Z, Y, X)",
            found=f"{image.dtype} {image.shape}",
        )
    label: np.ndarray | None = None
    if label_path.is_file():
        label = _load_npy(label_path, mmap)
        if label.shape != image.shape[1:] or not np.issubdtype(label.dtype, np.integer):
            raise InputError(
                label_path,
                "cached label does not match its image",
                expected=f"integer {image.shape[1:]}",
                found=f"{label.dtype} {label.shape}",
            )
    elif require_label:
        raise InputError(label_path, "cached label not found", expected="a label for every training case")
    properties: dict[str, Any] = {}
    if props_path.is_file():
        try:
            loaded = json.loads(props_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(props_path, "is not valid JSON", found=str(exc)) from None
        if not isinstance(loaded, dict):
            raise InputError(props_path, "must hold one object", found=type(loaded).__name__)
        properties = loaded
    return CachedCase(case_id, image, label, properties)


def class_locations(
    label: np.ndarray,
    classes: Sequence[int] | None = None,
    max_per_class: int = MAX_LOCATIONS_PER_CLASS,
    seed: int = 1234,
) -> dict[int, np.ndarray]:
    """Voxel indices ``(n, ndim)`` of each foreground class, at most ``max_per_class`` each.

    A fixed seed subsamples large classes, so the result is the same in every process
    (and can be stored in a case's properties as ``"class_locations"``).
    """
    array = np.asarray(label)
    if classes is None:
        classes = [int(c) for c in np.unique(array) if c != 0]
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for c in classes:
        coords = np.argwhere(array == c)
        if len(coords) > max_per_class:
            coords = coords[np.sort(rng.choice(len(coords), max_per_class, replace=False))]
        out[int(c)] = coords
    return out


def crop_with_padding(
    array: np.ndarray, lower: Sequence[int], size: Sequence[int], pad_value: float = 0
) -> np.ndarray:
    """``array[..., lower:lower+size]`` over the trailing axes, padding outside the array.

    Only the overlap with the array is read (cheap on a memory map).
    """
    lead = array.ndim - len(size)
    shape = array.shape[lead:]
    src: list[slice] = []
    pad: list[tuple[int, int]] = [(0, 0)] * lead
    for lo, n, s in zip(lower, size, shape, strict=True):
        start, stop = max(lo, 0), min(lo + n, s)
        if stop <= start:  # no overlap at all: read nothing, pad everything
            src.append(slice(0, 0))
            pad.append((n, 0))
        else:
            src.append(slice(start, stop))
            pad.append((start - lo, lo + n - stop))
    index: tuple[Any, ...] = (Ellipsis, *src)
    region = np.asarray(array[index])
    if any(p != (0, 0) for p in pad):
        region = np.pad(region, pad, mode="constant", constant_values=pad_value)
    return region


def patch_lower_bound(
    shape: Sequence[int],
    patch: Sequence[int],
    rng: np.random.Generator,
    centre: Sequence[int] | np.ndarray | None = None,
) -> tuple[int, ...]:
    """Lower corner of a patch: uniform, or centred on ``centre`` and kept inside the case.

    Axes where the case is larger than the patch keep the patch inside the case; where
    it is smaller, the whole case lies inside the patch (and is padded).
    """
    lower = []
    for i, (s, p) in enumerate(zip(shape, patch, strict=True)):
        low, high = min(0, s - p), max(0, s - p)
        if centre is None:
            lower.append(int(rng.integers(low, high + 1)))
        else:
            lower.append(int(np.clip(int(centre[i]) - p // 2, low, high)))
    return tuple(lower)


MODES = ("2d", "2.5d", "3d")


class PatchDataset(Dataset[dict[str, Any]]):
    """Random training patches from cached cases, usable with DataLoader worker processes.

    Each item is ``{"image": float32 (C', *patch), "label": int64 (1, *patch),
    "case_id": str, "foreground": bool}`` with ``C' = C`` (2D, 3D) or
    ``num_slices * C`` (2.5D), after ``transform`` (e.g. :func:`medseg.data.augment.build_augmentation`),
    which is re-seeded for every sample.

    Use ``DataLoader(ds, batch_size=B, sampler=ds.epoch_indices(epoch), num_workers=n)``;
    any non-negative index is a valid sample.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        *,
        mode: str = "3d",
        num_slices: int = 1,
        slice_step: int = 1,
        samples_per_epoch: int = 250,
        foreground_fraction: float = 1 / 3,
        transform: Any = None,
        seed: int = 0,
    ):
        if mode not in MODES:
            raise ConfigError(f"unknown sampling mode {mode!r}; expected one of {', '.join(MODES)}")
        if not case_ids:
            raise ConfigError("patch sampling needs at least one case")
        patch = tuple(int(p) for p in patch_size)
        if mode != "3d" and len(patch) == 3 and patch[0] == 1:
            patch = patch[1:]  # a 2D plan's (1, Y, X)
        if len(patch) != (3 if mode == "3d" else 2) or min(patch) < 1:
            raise ConfigError(
                f"{mode} patch size must have {3 if mode == '3d' else 2} positive entries, found {tuple(patch_size)}"
            )
        if mode == "2.5d" and (num_slices < 1 or num_slices % 2 == 0):
            raise ConfigError(f"2.5D needs an odd number of slices >= 1, found {num_slices}")
        if mode != "2.5d" and num_slices != 1:
            raise ConfigError(f"num_slices must be 1 for {mode} sampling, found {num_slices}")
        if slice_step < 1:
            raise ConfigError(f"slice_step must be >= 1, found {slice_step}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ConfigError(f"foreground_fraction must be in [0, 1], found {foreground_fraction}")
        if samples_per_epoch < 1:
            raise ConfigError(f"samples_per_epoch must be >= 1, found {samples_per_epoch}")
        self.cache_dir = Path(cache_dir)
        for case_id in case_ids:
            for path in case_paths(self.cache_dir, case_id)[:2]:
                if not path.is_file():
                    raise InputError(
                        path, "cached case file not found", expected="a preprocessed training case"
                    )
        self.case_ids = list(case_ids)
        self.patch_size = patch
        self.mode = mode
        self.num_slices = num_slices
        self.slice_step = int(slice_step)
        self.samples_per_epoch = samples_per_epoch
        self.foreground_fraction = Fraction(foreground_fraction).limit_denominator(1000)
        self.transform = transform
        self.seed = int(seed)
        self._locations: dict[str, dict[int, np.ndarray]] = {}  # per process, filled lazily

    def __len__(self) -> int:
        return self.samples_per_epoch

    def epoch_indices(self, epoch: int) -> range:
        """The sample indices of an epoch (pass as the DataLoader's ``sampler``)."""
        return range(epoch * self.samples_per_epoch, (epoch + 1) * self.samples_per_epoch)

    def is_foreground_sample(self, index: int) -> bool:
        """Exactly ``foreground_fraction`` of any run of consecutive indices (the last of each group)."""
        f = self.foreground_fraction
        return (index + 1) * f.numerator // f.denominator > index * f.numerator // f.denominator

    def locations(self, case: CachedCase) -> dict[int, np.ndarray]:
        """Foreground voxel locations per class (from the properties or computed once)."""
        cached = self._locations.get(case.case_id)
        if cached is not None:
            return cached
        stored = case.properties.get("class_locations")
        if isinstance(stored, Mapping):
            locs = {
                int(k): np.asarray(v, dtype=np.int64).reshape(-1, 3) for k, v in stored.items() if int(k) != 0
            }
        else:
            assert case.label is not None
            present = case.properties.get("class_voxels")
            classes = (
                [int(k) for k, n in present.items() if int(k) != 0 and int(n) > 0]
                if isinstance(present, Mapping)
                else None
            )
            locs = class_locations(case.label, classes)
        self._locations[case.case_id] = locs
        return locs

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            raise IndexError(f"sample index must be >= 0, found {index}")
        rng = np.random.default_rng([self.seed, int(index)])
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        case = load_cached_case(self.cache_dir, case_id, mmap=True)
        centre: np.ndarray | None = None
        if self.is_foreground_sample(index):
            locs = {c: v for c, v in self.locations(case).items() if len(v)}
            if locs:
                classes = sorted(locs)
                chosen = locs[classes[int(rng.integers(len(classes)))]]
                centre = chosen[int(rng.integers(len(chosen)))]
        image, label = self._extract(case, rng, centre)
        sample: dict[str, Any] = {
            # copies: a patch may be a view of a read-only memory map
            "image": torch.from_numpy(np.array(image, dtype=np.float32)),
            "label": torch.from_numpy(np.array(label)),
            "case_id": case_id,
            "foreground": centre is not None,
        }
        if self.transform is not None:
            if hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=int(rng.integers(2**31)))
            sample = {**sample, **self.transform({"image": sample["image"], "label": sample["label"]})}
        return sample

    def _extract(
        self, case: CachedCase, rng: np.random.Generator, centre: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        assert case.label is not None
        shape = case.image.shape[1:]
        if self.mode == "3d":
            lower = patch_lower_bound(shape, self.patch_size, rng, centre)
            image = crop_with_padding(case.image, lower, self.patch_size)
            label = crop_with_padding(case.label, lower, self.patch_size)[None]
        else:
            z = int(centre[0]) if centre is not None else int(rng.integers(shape[0]))
            lower = patch_lower_bound(shape[1:], self.patch_size, rng, None if centre is None else centre[1:])
            half = self.num_slices // 2
            zs = np.clip(z + np.arange(-half, half + 1) * self.slice_step, 0, shape[0] - 1)
            # one (C, Y, X) crop per slice, stacked slice-major: channel s * C + c
            image = np.concatenate(
                [crop_with_padding(case.image[:, int(s)], lower, self.patch_size) for s in zs]
            )
            label = crop_with_padding(case.label[z], lower, self.patch_size)[None]
        return (
            np.ascontiguousarray(image, dtype=np.float32),
            np.ascontiguousarray(label, dtype=np.int64),
        )


__all__ = [
    "MAX_LOCATIONS_PER_CLASS",
    "CachedCase",
    "PatchDataset",
    "case_paths",
    "class_locations",
    "crop_with_padding",
    "load_cached_case",
    "patch_lower_bound",
]
