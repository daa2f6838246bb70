"""Apply a plan to cases: crop to the non-zero region, resample, normalise, and undo it.

``preprocess_case`` is the single definition of "the preprocessing used in training";
the predictor calls the same function on new images and ``restore_to_original`` to put
its output back on the input grid (the exact inverse of the crop and the resample,
checked against the input geometry).

``preprocess_dataset`` writes the training cache that the patch sampler reads::

    CACHE/plan.json                 the plan the cache was made with
    CACHE/{case}_image.npy          float32 (C, Z, Y, X)
    CACHE/{case}_label.npy          uint8/int16 (Z, Y, X)
    CACHE/{case}.json               PreprocessInfo + class voxel counts (written last: marks the case done)

Cases run in worker processes, one case per process at a time, so peak memory is
bounded by ``workers`` x one case; cases already done with the same plan are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import from_dict, load_json, to_dict
from medseg.data.dataset import CaseFiles, list_cases, read_descriptor, read_training_label
from medseg.errors import ConfigError, GeometryError, InputError, MedsegError
from medseg.geometry.crop import CropBox, bounding_box, crop, cropped_geometry, uncrop
from medseg.geometry.resample import grid_for_spacing, resample_image, resample_label
from medseg.io import read_volume
from medseg.io.atomic import atomic_file, write_text_atomic
from medseg.preprocessing.fingerprint import check_case_grids, compute_fingerprint
from medseg.preprocessing.normalize import normalize_channel
from medseg.preprocessing.plan import Plan
from medseg.progress import progress_bar
from medseg.volume import Volume, VolumeGeometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessInfo:
    """Everything needed to map the preprocessed grid back onto the original one."""

    case_id: str
    original: dict[str, Any]
    crop_lower: tuple[int, int, int]
    crop_upper: tuple[int, int, int]
    preprocessed: dict[str, Any]

    @property
    def original_geometry(self) -> VolumeGeometry:
        return VolumeGeometry.from_dict(self.original)

    @property
    def preprocessed_geometry(self) -> VolumeGeometry:
        return VolumeGeometry.from_dict(self.preprocessed)

    @property
    def crop_box(self) -> CropBox:
        return CropBox(self.crop_lower, self.crop_upper)


def plan_hash(plan: Plan) -> str:
    """Key of the preprocessing cache. Regions change what is learned, not how cases are
    resampled and cropped: a plan with regions shares the cache of the same plan without."""
    if plan.regions:
        plan = dataclasses.replace(plan, regions={}, regions_class_order=())
    return hashlib.sha256(plan.to_json().encode()).hexdigest()[:16]


def target_geometry(cropped: VolumeGeometry, plan: Plan) -> VolumeGeometry:
    spacing = list(plan.target_spacing)
    if plan.keep_native_slices:
        spacing[0] = cropped.spacing[0]
    return grid_for_spacing(cropped, spacing)


# A resampled grid this many times larger than the input, and this large, means the image's
# spacing is not what the plan expects (a PNG read as 1 mm pixels for a 4 nm model).
_MAX_GROWTH = 64
_MAX_VOXELS = 2**28


def _check_resampled_size(source: VolumeGeometry, target: VolumeGeometry, plan: Plan, case_id: str) -> None:
    n_in, n_out = int(np.prod(source.shape)), int(np.prod(target.shape))
    if n_out > _MAX_VOXELS and n_out > _MAX_GROWTH * max(n_in, 1):
        raise InputError(
            None,
            f"case '{case_id}': resampling to the plan's spacing would make the image "
            f"{n_out / max(n_in, 1):.0f} times larger ({' x '.join(map(str, target.shape))} voxels); "
            "its spacing is probably wrong (PNG/TIFF files carry none and are read as 1 mm pixels "
            "unless `predict --spacing Z Y X` gives it)",
            expected=f"spacing near the plan's (z, y, x) {tuple(plan.target_spacing)} mm",
            found=f"spacing (z, y, x) {tuple(round(v, 6) for v in source.spacing)} mm",
        )


def preprocessing_key(plan: Plan) -> tuple[Any, ...]:
    """What :func:`preprocess_case` reads from ``plan`` for an image: plans with equal keys
    preprocess a case to the same arrays (a configuration ensemble preprocesses it once)."""
    return (
        len(plan.channel_names),
        plan.crop_to_nonzero,
        tuple(plan.target_spacing),
        plan.keep_native_slices,
        tuple(plan.normalization),
        plan.image_interpolation,
    )


def preprocess_case(
    images: Sequence[Volume], label: Volume | None, plan: Plan, case_id: str = "case"
) -> tuple[np.ndarray, np.ndarray | None, PreprocessInfo]:
    """Crop, resample and normalise one case as the plan says.

    Returns the image array (C, Z, Y, X) float32, the label array (Z, Y, X) or None, and
    the :class:`PreprocessInfo` that :func:`restore_to_original` needs.
    """
    if len(images) != len(plan.channel_names):
        raise InputError(
            None,
            f"case '{case_id}' has the wrong number of channels for this model",
            expected=f"{len(plan.channel_names)} ({', '.join(plan.channel_names)})",
            found=str(len(images)),
        )
    check_case_grids(images, label, case_id)
    original = images[0].geometry
    box = CropBox.full(original.shape)
    if plan.crop_to_nonzero:
        nonzero = images[0].array != 0
        for img in images[1:]:
            nonzero |= img.array != 0
        # crop_to_nonzero's box without its copy of the crop (an all-zero case stays whole)
        if nonzero.any():
            box = bounding_box(nonzero)
        else:
            log.warning("case '%s': nothing is non-zero; keeping the whole volume", case_id)
        del nonzero
    # Memory: the crops are views (the inputs are only read); the one full-size copy per
    # channel is the contiguous buffer SimpleITK resamples from, and integer images are
    # not converted to float32 before resampling (see medseg.geometry.resample).
    cropped = [crop(img, box, outside="error", copy=False) for img in images]  # views: no voxel copies
    target = target_geometry(cropped[0].geometry, plan)
    _check_resampled_size(cropped[0].geometry, target, plan, case_id)
    channels = []
    for img, norm in zip(cropped, plan.normalization, strict=True):
        mask = None
        if norm.use_nonzero_mask:
            mask = resample_label(img.with_array((img.array != 0).astype(np.uint8)), target).array.astype(
                bool
            )
        res = resample_image(img, target, interpolation=plan.image_interpolation)
        channels.append(normalize_channel(res.array, norm, mask))
        del res
    image_array = np.stack(channels).astype(np.float32, copy=False)
    label_array = None
    if label is not None:
        lab = resample_label(
            crop(label, box, outside="error", copy=False), target, interpolation=plan.label_interpolation
        )
        dtype = np.uint8 if plan.num_classes <= 255 else np.int16
        label_array = lab.array.astype(dtype, copy=False)
    info = PreprocessInfo(
        case_id=case_id,
        original=original.to_dict(),
        crop_lower=box.lower,
        crop_upper=box.upper,
        preprocessed=target.to_dict(),
    )
    return image_array, label_array, info


def restore_to_original(
    prediction: np.ndarray,
    info: PreprocessInfo,
    *,
    is_probabilities: bool,
    label_interpolation: str = "nearest",
) -> Volume:
    """Map a prediction on the preprocessed grid back onto the original image grid.

    ``prediction`` is a label map (Z, Y, X) or class probabilities (K, Z, Y, X). Labels are
    resampled with nearest neighbour (or one-hot linear); probabilities linearly per class
    then arg-maxed, which gives smoother boundaries than resampling labels. Voxels
    outside the cropped region are background. The result's grid is checked against the
    original; a mismatch raises GeometryError.
    """
    pre = info.preprocessed_geometry
    original = info.original_geometry
    box = info.crop_box
    crop_grid = cropped_geometry(original, box)
    if is_probabilities:
        if prediction.ndim != 4 or tuple(prediction.shape[1:]) != pre.shape:
            raise GeometryError(
                f"probabilities of shape {prediction.shape} do not match the preprocessed grid {pre.shape}"
            )
        best = np.full(crop_grid.shape, -np.inf, dtype=np.float32)
        labels = np.zeros(crop_grid.shape, dtype=np.uint8 if prediction.shape[0] <= 255 else np.int16)
        for k in range(prediction.shape[0]):
            prob = resample_image(
                Volume(prediction[k].astype(np.float32, copy=False), geometry=pre),
                crop_grid,
                interpolation="linear",
                default_value=1.0 if k == 0 else 0.0,
            ).array
            better = prob > best
            labels[better] = k
            best[better] = prob[better]
        cropped_label = Volume(labels, geometry=crop_grid)
    else:
        if tuple(prediction.shape) != pre.shape:
            raise GeometryError(
                f"label map of shape {prediction.shape} does not match the preprocessed grid {pre.shape}"
            )
        cropped_label = resample_label(
            Volume(prediction, geometry=pre),
            crop_grid,
            interpolation=label_interpolation,  # type: ignore[arg-type]
        )
    restored = uncrop(cropped_label, original, box, fill=0)
    original.require_same(restored.geometry, what="restored prediction and input grid")
    return restored


def restore_regions_to_original(probabilities: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Region probabilities (R, Z, Y, X) on the preprocessed grid -> (R, *original shape).

    Each region linearly resampled onto the cropped original grid and un-cropped (0 outside),
    the same path as :func:`restore_to_original`'s class probabilities; thresholding happens
    after, on the original grid. The grid is checked against the original.
    """
    pre = info.preprocessed_geometry
    original = info.original_geometry
    box = info.crop_box
    if probabilities.ndim != 4 or tuple(probabilities.shape[1:]) != pre.shape:
        raise GeometryError(
            f"region probabilities of shape {probabilities.shape} do not match the preprocessed grid {pre.shape}"
        )
    crop_grid = cropped_geometry(original, box)
    out = np.zeros((probabilities.shape[0], *original.shape), dtype=np.float32)
    for r in range(probabilities.shape[0]):
        prob = resample_image(
            Volume(probabilities[r].astype(np.float32, copy=False), geometry=pre),
            crop_grid,
            interpolation="linear",
            default_value=0.0,
        )
        restored = uncrop(prob, original, box, fill=0.0)
        original.require_same(restored.geometry, what="restored region and input grid")
        out[r] = restored.array
    return out


# ----------------------------------------------------------------------- dataset cache
def _case_done(cache: Path, case_id: str, digest: str) -> bool:
    meta = cache / f"{case_id}.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("plan_hash") == digest
    except (OSError, json.JSONDecodeError):
        return False


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path, overwrite=True) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)


def _preprocess_one(case: CaseFiles, plan: Plan, cache: Path, digest: str) -> str:
    images = [read_volume(p) for p in case.images]
    declared = tuple(plan.labels.values())
    label = read_training_label(case.label, declared) if case.label is not None else None
    image_array, label_array, info = preprocess_case(images, label, plan, case.case_id)
    del images, label
    _save_npy(cache / f"{case.case_id}_image.npy", image_array)
    counts: dict[str, int] = {}
    if label_array is not None:
        _save_npy(cache / f"{case.case_id}_label.npy", label_array)
        values, freq = np.unique(label_array, return_counts=True)
        counts = {str(int(v)): int(c) for v, c in zip(values, freq, strict=True)}
    meta = {
        "plan_hash": digest,
        "info": to_dict(info),
        "class_voxels": counts,
        "shape": list(image_array.shape),
    }
    write_text_atomic(cache / f"{case.case_id}.json", json.dumps(meta, indent=1) + "\n", overwrite=True)
    return case.case_id


def load_preprocess_info(cache: str | Path, case_id: str) -> PreprocessInfo:
    meta = load_json(Path(cache) / f"{case_id}.json")
    return from_dict(PreprocessInfo, meta["info"], where=f"{case_id}.json")


def preprocess_dataset(
    root: str | Path,
    plan: Plan,
    cache: str | Path | None = None,
    *,
    workers: int = 2,
    progress: bool = False,
    subset: str = "Tr",
) -> Path:
    """Preprocess every case of ``root`` into ``cache`` (default ROOT/preprocessed/<config>)."""
    root = Path(root)
    desc = read_descriptor(root)
    if list(desc.modalities) != list(plan.channel_names):
        raise InputError(
            root / "dataset.json",
            "channels do not match the plan",
            expected=str(list(plan.channel_names)),
            found=str(desc.modalities),
        )
    if desc.labels != plan.labels:
        raise InputError(
            root / "dataset.json",
            "labels do not match the plan",
            expected=str(plan.labels),
            found=str(desc.labels),
        )
    out = Path(cache) if cache is not None else default_cache_dir(root, plan)
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    digest = plan_hash(plan)
    cases = list_cases(root, subset, desc)
    todo = [c for c in cases if not _case_done(out, c.case_id, digest)]
    if len(todo) < len(cases):
        log.info(
            "%d of %d cases already preprocessed with this plan; skipping them",
            len(cases) - len(todo),
            len(cases),
        )
    failures: list[str] = []
    with progress_bar(progress and bool(todo), "preprocess", len(todo)) as advance:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_preprocess_one, c, plan, out, digest): c for c in todo}
                for fut, case in futures.items():
                    try:
                        fut.result()
                    except MedsegError as exc:
                        failures.append(f"{case.case_id}: {exc}")
                    advance()
        else:
            for case in todo:
                try:
                    _preprocess_one(case, plan, out, digest)
                except MedsegError as exc:
                    failures.append(f"{case.case_id}: {exc}")
                advance()
    if failures:
        raise InputError(out, f"{len(failures)} case(s) failed to preprocess: " + " | ".join(failures))
    return out


def default_cache_dir(root: str | Path, plan: Plan) -> Path:
    return Path(root) / "preprocessed" / plan.configuration


# ------------------------------------------------------------------ plan files
def plan_path(root: str | Path, configuration: str) -> Path:
    """Where ``medseg plan`` stores a dataset's plan for one configuration."""
    return Path(root) / "plans" / f"{configuration}.json"


def plan_dataset(
    root: str | Path,
    configuration: str = "3d",
    *,
    overrides: dict[str, Any] | None = None,
    workers: int = 2,
    progress: bool = False,
    overwrite: bool = False,
) -> tuple[Plan, Path]:
    """Fingerprint a dataset, derive its plan, apply overrides, save ROOT/plans/<config>.json.

    ``overrides`` are plan fields in the plan's own order: ``{"target_spacing": [3, 0.5, 0.5]}``
    is Z Y X, what ``medseg plan --spacing 0.5 0.5 3`` (X Y Z) writes.
    """
    from medseg.preprocessing.plan import plan_from_fingerprint

    root = Path(root)
    target = plan_path(root, configuration)
    if target.exists() and not overwrite:
        from medseg.errors import OutputExistsError

        raise OutputExistsError(target)
    fingerprint = compute_fingerprint(root, workers=workers, progress=progress)
    fingerprint.save(root / "plans" / "fingerprint.json")
    desc = read_descriptor(root)
    plan = plan_from_fingerprint(
        fingerprint,
        configuration,  # type: ignore[arg-type]
        regions=desc.regions,
        regions_class_order=desc.regions_class_order,
    )
    if overrides:
        plan = plan.with_overrides(overrides)
        if "target_spacing" in overrides:
            _warn_axis_order(plan.target_spacing, np.median(fingerprint.spacings, axis=0))
        if "network" in overrides:
            _check_network_builds(plan)
    plan.save(target, overwrite=True)
    return plan, target


def _check_network_builds(plan: Plan) -> None:
    """Refuse network overrides (``"network": {"options": ...}``) that the network cannot be
    built with, here rather than when training starts."""
    from medseg.training.trainer import architecture_from_plan

    try:
        architecture_from_plan(plan).build()
    except ConfigError as exc:
        raise ConfigError(
            f"the planned network ({plan.network.name}, {len(plan.network.pooling) + 1} levels: "
            f"{len(plan.network.pooling)} pooling steps) cannot be built with these network settings: {exc}"
        ) from None


def _warn_axis_order(target: Sequence[float], median: Sequence[float]) -> None:
    """Warn when a given target spacing fits the data only with its axes reversed.

    The CLI takes the spacing X Y Z (as papers write it) but patches and arrays are Z Y X;
    ``--spacing 3 0.5 0.5`` for 3 mm slices silently resamples the slices to 0.5 mm and the
    in-plane axes to 3 mm. Flagged when an axis is more than 2.5x off the data's median and
    the reversed order is within 2.5x on every axis.
    """
    t, m = np.asarray(target, float), np.asarray(median, float)
    off = np.abs(np.log(t / m))
    if off.max() > np.log(2.5) and np.abs(np.log(t[::-1] / m)).max() <= np.log(2.5):
        log.warning(
            "target spacing x %.3g, y %.3g, z %.3g mm is far from the data's median (x %.3g, y %.3g, "
            "z %.3g mm) but fits with the axes reversed: the CLI's --spacing is X Y Z "
            "(did you mean --spacing %.3g %.3g %.3g?)",
            t[2],
            t[1],
            t[0],
            m[2],
            m[1],
            m[0],
            t[0],
            t[1],
            t[2],
        )


def load_dataset_plan(root: str | Path, configuration: str = "3d") -> Plan:
    path = plan_path(root, configuration)
    if not path.is_file():
        raise InputError(
            path,
            "no plan for this configuration",
            expected=f"run `medseg plan {root} -c {configuration}` first",
        )
    return Plan.load(path)
