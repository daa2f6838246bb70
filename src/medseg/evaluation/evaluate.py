"""Evaluate predictions against references: folders or files -> per-case rows -> summary.

Cases are matched by file name (the name without its image suffix, so ``case_001.nii.gz``
matches ``case_001.nrrd``). Grids must match: a mismatch is a :class:`GeometryError`
naming the case, unless ``resample=True`` resamples the prediction onto the reference
grid with nearest neighbour. Nothing is dropped silently: a reference without a
prediction, NaN in a prediction, or a label outside the declared set is an error naming
the case, or -- when asked to keep going -- a row whose ``status`` says what happened.

Cases run in a process pool (one case per task: read both files, check, compute).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError, MedsegError
from medseg.evaluation.metrics import (
    ALL_METRICS,
    CLASS_METRICS,
    DEFAULT_NSD_TOLERANCE_MM,
    OBJECT_METRICS,
    ClassMetrics,
    EmptyRule,
    LabelMapMetrics,
    OverlapCounts,
    SurfaceDistances,
    _class_metrics_from,
    check_metric_names,
    grid_diagonal_mm,
    iou_per_class,
    label_metrics,
    mean_iou,
    pooled_confusion,
)
from medseg.evaluation.objects import ObjectCounts, check_iou_threshold
from medseg.io import read_volume
from medseg.io.itk import ITK_SUFFIXES
from medseg.io.png import natural_key
from medseg.volume import Volume

logger = logging.getLogger(__name__)

CaseStatus = Literal["ok", "missing_prediction", "error"]
OnMissing = Literal["error", "flag"]
OnCaseError = Literal["raise", "flag"]


@dataclass(frozen=True)
class EvaluationConfig:
    """Options of :func:`evaluate`; the CLI's ``medseg evaluate`` builds one of these.

    ``labels`` maps foreground label values to names; ``None`` takes every value found in
    the references (background 0 excluded). ``empty`` is the empty-mask rule of
    :mod:`medseg.evaluation.metrics` ("nan" or "worst"). ``on_missing="flag"`` keeps a
    reference without prediction as a row scored as an empty prediction;
    ``on_case_error="flag"`` turns a bad case (NaN, undeclared labels, grid mismatch,
    unreadable file) into a row with status "error" instead of stopping the run.
    ``workers`` is the number of processes (``None``: one per CPU, at most one per case).
    ``separators`` are labels that draw borders between objects (cell membranes): their
    object metrics count the regions they enclose; ``object_iou`` is the IoU above which a
    predicted and a reference object match (``None``: 0 -- any overlap -- for objects of a
    class, 0.5 for regions between separators). See :mod:`medseg.evaluation.objects`.
    ``label_names`` names the label values found when ``labels`` is ``None`` (the CLI reads
    them from the dataset.json above a labelsTr/ or labelsTs/ reference folder).
    ``regions`` (region-based models, medseg.data.regions; the CLI reads them from that
    dataset.json too) adds a Dice per region, a region being the union of its label values
    in the prediction and in the reference alike.
    ``ignore_other_labels`` (needs ``labels``): values not declared count as background in
    both label maps instead of being an error, to score one organ of a multi-organ
    reference (a classical baseline's ``--label 4`` against a CHAOS label map).
    """

    labels: Mapping[int, str] | None = None
    metrics: tuple[str, ...] = ALL_METRICS
    empty: EmptyRule = "nan"
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    resample: bool = False
    on_missing: OnMissing = "error"
    on_case_error: OnCaseError = "raise"
    workers: int | None = None
    separators: tuple[int, ...] = ()
    object_iou: float | None = None
    label_names: Mapping[int, str] | None = None
    regions: Mapping[str, tuple[int, ...]] | None = None
    ignore_other_labels: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", check_metric_names(self.metrics))
        check_iou_threshold(self.object_iou)
        seps = tuple(sorted({int(v) for v in self.separators}))
        if any(v <= 0 for v in seps):
            raise ConfigError(f"separator labels must be positive label values, found {list(seps)}")
        if self.labels is not None and not set(seps) <= {int(k) for k in self.labels}:
            raise ConfigError(
                f"separator labels {list(seps)} must be among the declared labels {sorted(self.labels)}"
            )
        if "are" in self.metrics and not seps:
            raise ConfigError(
                "the adapted Rand error ('are') scores a partition into regions: name the class that "
                "separates them (cell membranes) with --separator"
            )
        if seps and self.object_iou is not None and self.object_iou < 0.5:
            raise ConfigError(
                f"--object-iou {self.object_iou} with --separator: the regions between separators "
                "tile the image, so below IoU 0.5 nearly every region matches; use 0.5 or more "
                "(the default for separators)"
            )
        if seps and not self.object_metrics:
            raise ConfigError(
                "--separator only changes the object metrics; ask for them too, e.g. "
                "--metrics dice,objects,are"
            )
        object.__setattr__(self, "separators", seps)
        if self.empty not in ("nan", "worst"):
            raise ConfigError(f"empty-mask rule must be 'nan' or 'worst', found '{self.empty}'")
        if self.on_missing not in ("error", "flag"):
            raise ConfigError(f"on_missing must be 'error' or 'flag', found '{self.on_missing}'")
        if self.on_case_error not in ("raise", "flag"):
            raise ConfigError(f"on_case_error must be 'raise' or 'flag', found '{self.on_case_error}'")
        if not math.isfinite(self.nsd_tolerance_mm) or self.nsd_tolerance_mm < 0:
            raise ConfigError(
                f"NSD tolerance must be a finite number of mm >= 0, found {self.nsd_tolerance_mm}"
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, found {self.workers}")
        if self.regions is not None:
            regions = {str(k): tuple(int(v) for v in vals) for k, vals in self.regions.items()}
            if not regions or any(not vals or min(vals) <= 0 for vals in regions.values()):
                raise ConfigError(
                    f"regions must be non-empty lists of foreground label values, found {regions}"
                )
            object.__setattr__(self, "regions", regions)
        if self.labels is not None:
            labels = {int(k): str(v) for k, v in self.labels.items()}
            if not labels or any(k <= 0 for k in labels):
                raise ConfigError(
                    f"declared labels must be positive integers (background 0 is implicit), found {sorted(labels)}"
                )
            if len(set(labels.values())) != len(labels):
                raise ConfigError(f"label names must be distinct, found {list(labels.values())}")
            object.__setattr__(self, "labels", dict(sorted(labels.items())))
        if self.ignore_other_labels and self.labels is None:
            raise ConfigError(
                "ignoring the labels not declared needs the declared ones: give --labels too "
                "(e.g. --labels spleen=4 --ignore-other-labels)"
            )
        if self.regions:
            if self.labels is not None:
                _check_region_values(self.regions, self.labels, "declared with --labels")
            elif self.label_names:
                _check_region_values(self.regions, self.label_names, "declared by the dataset")

    @property
    def class_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in CLASS_METRICS or m in OBJECT_METRICS)

    @property
    def object_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in OBJECT_METRICS)


def _check_region_values(regions: Mapping[str, Sequence[int]], labels: Mapping[int, str], where: str) -> None:
    """Every value of every region must be a label value: one that is not (a typo such as
    'a=1+5' where the labels are 1..3) would silently score the region as if it were left out."""
    known = sorted(int(v) for v in labels)
    for region, values in regions.items():
        unknown = sorted(set(int(v) for v in values) - set(known))
        if unknown:
            raise ConfigError(
                f"region {region!r} holds label value(s) {unknown} that no label has (label values "
                f"{where}: {known}); give each region values of those labels, e.g. "
                "--regions 'large_bowel=1+3,small_bowel=2+3'"
            )


def _check_region_values_in_references(
    regions: Mapping[str, Sequence[int]], pairs: Sequence[CasePair]
) -> None:
    """Before scoring: every region value must be in some reference (labels neither declared
    nor named). References are read until all the values are seen, usually just the first;
    a value in none of them is refused after reading the label maps, not scoring every case."""
    wanted = {int(v) for values in regions.values() for v in values}
    seen: set[int] = set()
    for pair in pairs:
        try:
            reference = read_volume(pair.reference)
            ref = _check_label_array(reference, pair.name, "reference", pair.reference)
        except MedsegError:
            continue  # a bad reference is that case's error, reported (or flagged) by its scoring
        seen.update(_foreground_values(ref))
        if wanted <= seen:
            return
    if not seen:
        return  # no foreground anywhere (or no readable reference): scoring says which
    _check_region_values(regions, {v: str(v) for v in seen}, "found in the references")


def _foreground_values(arr: np.ndarray) -> set[int]:
    """The non-zero values of a label array (a histogram when the values are small: faster
    than sorting a whole CT-sized label map)."""
    if arr.size == 0:
        return set()
    top = int(arr.max())
    if top < 1 << 16:
        counts = np.bincount(arr.ravel().astype(np.intp, copy=False), minlength=1)
        return {int(v) for v in np.flatnonzero(counts) if v != 0}
    return {int(v) for v in np.unique(arr) if v != 0}


def parse_labels(spec: str | Sequence[str] | None) -> dict[int, str] | None:
    """Parse ``"1,2,3"`` or ``"liver=1,spleen=4"`` (or a list of such items) into {value: name}."""
    if spec is None:
        return None
    items: list[str] = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        items.extend(p.strip() for p in part.split(",") if p.strip())
    if not items:
        return None
    out: dict[int, str] = {}
    for item in items:
        name, _, value = item.rpartition("=")
        try:
            val = int(value)
        except ValueError:
            raise ConfigError(
                f"cannot read label '{item}'; expected VALUE or NAME=VALUE, e.g. 1,2 or liver=1,spleen=4"
            ) from None
        if val in out:
            raise ConfigError(f"label value {val} declared twice in '{spec}'")
        out[val] = name.strip() or str(val)
    return out


# --------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class CasePair:
    name: str
    reference: Path
    prediction: Path | None


@dataclass(frozen=True)
class CaseMatching:
    """Cases matched by name; unmatched files on either side are kept, never dropped."""

    pairs: tuple[CasePair, ...]
    references_without_prediction: tuple[str, ...]
    predictions_without_reference: tuple[str, ...]


def case_name(path: Path) -> str:
    """File name without its image suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` ...)."""
    lower = path.name.lower()
    for suffix in sorted(ITK_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _list_cases(folder: Path, role: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        if not any(f.name.lower().endswith(s) for s in ITK_SUFFIXES):
            logger.debug("skipping %s: not an image file", f)
            continue
        name = case_name(f)
        if name in found:
            raise InputError(
                folder,
                f"two {role} files for case '{name}'",
                expected="one file per case",
                found=f"{found[name].name} and {f.name}",
            )
        found[name] = f
    if not found:
        raise InputError(
            folder, f"holds no {role} images", expected="files ending in " + ", ".join(ITK_SUFFIXES)
        )
    return found


def match_cases(prediction: str | Path, reference: str | Path) -> CaseMatching:
    """Pair prediction and reference files by case name (two folders, or two files)."""
    pred, ref = Path(prediction), Path(reference)
    for p, role in ((pred, "prediction"), (ref, "reference")):
        if not p.exists():
            raise InputError(p, f"{role} path does not exist")
    if pred.is_file() and ref.is_file():
        return CaseMatching((CasePair(case_name(ref), ref, pred),), (), ())
    if pred.is_dir() != ref.is_dir():
        raise InputError(
            pred if pred.is_file() else ref,
            "prediction and reference must both be folders or both be files",
            found=f"prediction is a {'folder' if pred.is_dir() else 'file'}, "
            f"reference is a {'folder' if ref.is_dir() else 'file'}",
        )
    preds, refs = _list_cases(pred, "prediction"), _list_cases(ref, "reference")
    # Natural order (case2 before case10) in every table and listing built from the matching.
    pairs = tuple(CasePair(name, refs[name], preds.get(name)) for name in sorted(refs, key=natural_key))
    return CaseMatching(
        pairs,
        tuple(sorted(set(refs) - set(preds), key=natural_key)),
        tuple(sorted(set(preds) - set(refs), key=natural_key)),
    )


def check_matching(prediction: str | Path, reference: str | Path, config: EvaluationConfig) -> CaseMatching:
    """:func:`match_cases`, then the missing-case rule: a reference case without a prediction
    is an error unless ``config.on_missing == "flag"``. Cheap (file names only), so callers
    can check every input before scoring any."""
    matching = match_cases(prediction, reference)
    missing = matching.references_without_prediction
    if missing and config.on_missing == "error":
        expected = "one prediction per reference case (or --allow-missing to score them as empty)"
        # `evaluate preds/ imagesTs/`: the images' CASE_0000 names match no prediction's CASE.
        as_labels = {_IMAGE_NAME.sub("", name) for name in missing}
        if all(_IMAGE_NAME.search(n) for n in missing) and as_labels & set(
            matching.predictions_without_reference
        ):
            expected += (
                f"; {reference} holds files named like images (CASE_0000, as in imagesTs/): "
                "give the label maps (labelsTs/) as the reference, last"
            )
        raise _missing_cases_error(
            prediction,
            missing,
            "reference case(s) have no prediction",
            expected,
            unmatched=matching.predictions_without_reference,
        )
    return matching


# The channel suffix of an image file's case name in the nnU-Net layout (case_001_0000).
_IMAGE_NAME = re.compile(r"_\d{4}$")


def _missing_cases_error(
    where: str | Path, missing: Sequence[str], problem: str, expected: str, unmatched: Sequence[str] = ()
) -> InputError:
    """``N <problem>`` at ``where``, naming the first 20 missing cases and, when there are any,
    the first 20 ``unmatched`` predictions (names that differ, e.g. a prefix, show side by side)."""

    def first(names: Sequence[str]) -> str:
        return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")

    found = "missing " + first(missing)
    if unmatched:
        found += f"; {len(unmatched)} prediction(s) match no reference case: {first(unmatched)}"
    return InputError(where, f"{len(missing)} {problem}", expected=expected, found=found)


# nnU-Net names image channels NAME_0000.nii.gz, NAME_0001.nii.gz ...; the first is drawn.
_CHANNEL_SUFFIX = "_0000"


def match_images(image: str | Path, cases: Sequence[str]) -> dict[str, Path]:
    """The image of each case, for the report's overlays: one file (one case only) or a
    folder matched by case name (``NAME`` or nnU-Net's ``NAME_0000``)."""
    path = Path(image)
    if not path.exists():
        raise InputError(path, "image path does not exist")
    if path.is_file():
        if len(cases) != 1:
            raise InputError(
                path,
                "one image file for several cases",
                expected="a folder of images named like the references (NAME or NAME_0000)",
                found=f"{len(cases)} cases",
            )
        return {cases[0]: path}
    found = _list_cases(path, "image")
    out: dict[str, Path] = {}
    missing: list[str] = []
    for name in cases:
        hit = found.get(name) or found.get(name + _CHANNEL_SUFFIX)
        if hit is None:
            missing.append(name)
        else:
            out[name] = hit
    if missing:
        raise _missing_cases_error(
            path, missing, "case(s) have no image", "one image per reference case, named NAME or NAME_0000"
        )
    return out


# --------------------------------------------------------------------------- one case
@dataclass(frozen=True)
class CaseResult:
    """One case: per-label metrics, the case mIoU, and how the case was handled."""

    name: str
    status: CaseStatus
    per_label: Mapping[int, ClassMetrics] = field(default_factory=dict)
    miou: float = math.nan
    message: str = ""
    resampled: bool = False
    reference: str = ""
    prediction: str = ""
    reference_labels: tuple[int, ...] = ()
    prediction_labels: tuple[int, ...] = ()
    n_voxels: int = 0
    diagonal_mm: float = math.nan
    # One row per connected object when object metrics were asked for (see object_rows).
    objects: tuple[Mapping[str, Any], ...] = ()
    # The case's confusion matrix (rows: reference, columns: prediction) over
    # ``confusion_labels`` (0 and the labels it was scored on), for the pooled mIoU.
    confusion: tuple[tuple[int, ...], ...] = ()
    confusion_labels: tuple[int, ...] = ()
    # Dice per region when the configuration declares regions, and the regions empty in both
    # prediction and reference (Dice 1 by convention; means that leave such cases out need it).
    per_region: Mapping[str, float] = field(default_factory=dict)
    regions_both_empty: tuple[str, ...] = ()


def _check_label_array(vol: Volume, case: str, role: str, path: Path | str) -> np.ndarray:
    arr = vol.array
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise InputError(
                path,
                f"case '{case}': {role} holds NaN",
                expected="integer labels",
                found=f"{int(np.isnan(arr).sum())} NaN voxels",
            )
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise InputError(
                path,
                f"case '{case}': {role} holds non-integer values (probabilities?)",
                expected="integer labels",
                found=f"values such as {float(arr[rounded != arr].flat[0]):.4g}",
            )
        if rounded.size and rounded.min() < 0:  # as for integer maps: an image given as a label map?
            raise InputError(
                path, f"case '{case}': {role} holds negative labels", found=f"minimum {int(rounded.min())}"
            )
        return rounded.astype(np.int64)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise InputError(path, f"case '{case}': {role} is not a label map", found=f"dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise InputError(
            path, f"case '{case}': {role} holds negative labels", found=f"minimum {int(arr.min())}"
        )
    return arr


def _coverage(inner: Any, outer: Any, samples: int = 12) -> float:
    """Fraction of ``outer``'s grid (a lattice of its voxel centres) lying inside ``inner``'s."""
    axes = [np.linspace(0, n - 1, min(n, samples)) for n in outer.shape]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    index = inner.world_to_index(outer.index_to_world(lattice))
    inside = np.all((index >= -0.5) & (index <= np.asarray(inner.shape) - 0.5), axis=1)
    return float(inside.mean())


def evaluate_volumes(
    prediction: Volume,
    reference: Volume,
    config: EvaluationConfig,
    *,
    name: str = "case",
    prediction_path: str | Path = "",
    reference_path: str | Path = "",
    region_masks: Mapping[str, Volume] | None = None,
) -> CaseResult:
    """Check and score one prediction against its reference (raises on a bad case).

    ``region_masks`` (region name -> binary mask on the prediction's grid): a region model's
    masks (``predict --format regions``), which keep the overlaps its painted label map
    loses; with ``config.regions`` the Dice per region comes from them.
    """
    resampled = False
    pred_vol = prediction
    if not prediction.geometry.is_close(reference.geometry):
        diffs = "; ".join(prediction.geometry.differences(reference.geometry))
        if not config.resample:
            raise GeometryError(
                f"case '{name}': prediction {prediction_path or '(array)'} and reference "
                f"{reference_path or '(array)'} are on different grids: {diffs}; "
                "pass --resample (Python: resample=True) to resample the prediction onto the reference "
                "grid with nearest neighbour"
            )
        from medseg.geometry.resample import resample_to_reference

        covered = _coverage(prediction.geometry, reference.geometry)
        if covered < 0.5:
            raise GeometryError(
                f"case '{name}': prediction {prediction_path or '(array)'} covers only {covered:.0%} of "
                f"the reference {reference_path or '(array)'} in patient space ({diffs}); they are "
                "probably not the same scan (or one has a wrong spacing or origin)"
            )
        if covered < 0.99:
            logger.warning(
                "case %s: the prediction covers %.0f%% of the reference's extent; the rest counts as background",
                name,
                100 * covered,
            )
        logger.info("case %s: resampling the prediction onto the reference grid (%s)", name, diffs)
        pred_vol = resample_to_reference(prediction, reference, is_label=True)
        resampled = True
    pred = _check_label_array(pred_vol, name, "prediction", prediction_path or "(prediction)")
    ref = _check_label_array(reference, name, "reference", reference_path or "(reference)")
    labels = None if config.labels is None else list(config.labels)
    if config.ignore_other_labels and labels is not None:
        pred, ref = (np.where(np.isin(a, labels), a, 0).astype(a.dtype) for a in (pred, ref))
    try:
        result: LabelMapMetrics = label_metrics(
            pred,
            ref,
            reference.spacing,
            labels,
            metrics=config.metrics,
            empty=config.empty,
            nsd_tolerance_mm=config.nsd_tolerance_mm,
            separators=config.separators,
            object_iou=config.object_iou,
            object_records=bool(config.object_metrics),
        )
    except InputError as exc:  # undeclared label values: say which case and file
        where = prediction_path if "prediction holds" in exc.found else reference_path
        expected = exc.expected
        if labels is not None:
            expected += " (--ignore-other-labels scores only the declared ones, the others as background)"
        raise InputError(
            where or None, f"case '{name}': {exc.problem}", expected=expected, found=exc.found
        ) from None
    region_scores = _region_dice(pred, ref, config, prediction, reference, region_masks, name)
    return CaseResult(
        name=name,
        status="ok",
        per_label=dict(result.per_label),
        miou=result.miou,
        resampled=resampled,
        reference=str(reference_path),
        prediction=str(prediction_path),
        reference_labels=result.reference_values,
        prediction_labels=result.prediction_values,
        n_voxels=int(ref.size),
        diagonal_mm=grid_diagonal_mm(ref.shape, reference.spacing),
        objects=_object_rows(result, reference),
        confusion=tuple(tuple(int(v) for v in row) for row in result.confusion),
        confusion_labels=(0, *result.per_label),
        per_region=region_scores[0],
        regions_both_empty=region_scores[1],
    )


def _region_dice(
    pred: np.ndarray,
    ref: np.ndarray,
    config: EvaluationConfig,
    prediction: Volume,
    reference: Volume,
    masks: Mapping[str, Volume] | None,
    name: str,
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Dice per region (from the region masks when given, else from the label map) and the
    regions empty on both sides."""
    if not config.regions:
        return {}, ()
    from medseg.evaluation.metrics import dice

    out: dict[str, float] = {}
    both_empty: list[str] = []
    for region, values in config.regions.items():
        if masks is None:
            predicted = np.isin(pred, list(values))
        else:
            mask = masks[region]
            if not mask.geometry.is_close(prediction.geometry):
                raise GeometryError(
                    f"case '{name}': the mask of region '{region}' is not on its label map's grid: "
                    + "; ".join(mask.geometry.differences(prediction.geometry))
                )
            if not prediction.geometry.is_close(reference.geometry):  # resampled like the label map
                from medseg.geometry.resample import resample_to_reference

                mask = resample_to_reference(mask, reference, is_label=True)
            predicted = np.asarray(mask.array) > 0
        truth = np.isin(ref, list(values))
        out[region] = dice(predicted, truth)
        if not predicted.any() and not truth.any():
            both_empty.append(region)
    return out, tuple(both_empty)


def region_mask_files(prediction: str | Path, regions: Sequence[str]) -> list[Path] | None:
    """Where ``predict --format regions`` wrote the masks of the label map ``prediction``
    (``OUT/<case>/regions/<n>_<name>.nii.gz``, n = 1..R); None when it wrote none.

    A mask is found by its region's name, whatever its number ``<n>`` in the model: scoring
    fewer regions, or the same in another order (``--regions 'small=2+3'``), reads the mask
    predict wrote for that region; outputs of earlier medseg, numbered 0..R-1, read the same.
    A region without a mask is given as ``<n>_<name>``, n its position in ``regions``."""
    from medseg.export.case import region_file_name, safe_name

    path = Path(prediction)
    folder = path.parent / case_name(path) / "regions"
    if not folder.is_dir():
        return None
    found: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        match = re.fullmatch(r"(\d+)_(.+)\.nii\.gz", f.name)
        if match:
            found.setdefault(match.group(2), []).append(f)
    out = []
    for i, region in enumerate(regions):
        expected = folder / region_file_name(i, region)
        named = found.get(safe_name(region), [])
        out.append(expected if expected.is_file() or len(named) != 1 else named[0])
    return out


def read_region_masks(prediction: str | Path, regions: Sequence[str]) -> dict[str, Volume] | None:
    """The region masks written next to the label map ``prediction`` (None when there are none)."""
    files = region_mask_files(prediction, regions)
    if files is None:
        return None
    for f in files:
        if not f.is_file():
            raise InputError(
                f,
                "is missing from the region masks next to the prediction",
                expected="one mask per region, as `medseg predict --format regions` writes them",
            )
    return {region: read_volume(f) for region, f in zip(regions, files, strict=True)}


def _object_rows(result: LabelMapMetrics, reference: Volume) -> tuple[dict[str, Any], ...]:
    """The objects of every label, centres in world coordinates (LPS, mm), volumes in mL."""
    rows: list[dict[str, Any]] = []
    for lab, cm in result.per_label.items():
        if cm.objects is None or not cm.objects.records:
            continue
        records = cm.objects.records
        centres = reference.index_to_world(np.array([rec.centroid for rec in records], dtype=float))
        for rec, centre in zip(records, centres, strict=True):
            rows.append(
                {
                    "label": lab,
                    "side": rec.side,
                    "object": rec.number,
                    "voxels": rec.voxels,
                    "volume_ml": rec.volume_mm3 / 1000.0,
                    "centre_x_mm": float(centre[0]),
                    "centre_y_mm": float(centre[1]),
                    "centre_z_mm": float(centre[2]),
                    "best_iou": rec.best_iou,
                    "matched": rec.matched,
                }
            )
    return tuple(rows)


def _evaluate_pair(pair: CasePair, config: EvaluationConfig) -> CaseResult:
    """Worker: read, check and score one case. User errors come back as status 'error'.

    MedsegError subclasses are returned as text rather than raised, because exceptions with
    keyword-only constructors do not survive pickling between processes.
    """
    try:
        if pair.prediction is None:
            return _missing_prediction(pair, config)
        reference = read_volume(pair.reference)
        prediction = read_volume(pair.prediction)
        masks = read_region_masks(pair.prediction, list(config.regions)) if config.regions else None
        return evaluate_volumes(
            prediction,
            reference,
            config,
            name=pair.name,
            prediction_path=pair.prediction,
            reference_path=pair.reference,
            region_masks=masks,
        )
    except MedsegError as exc:
        return CaseResult(
            name=pair.name,
            status="error",
            message=f"{type(exc).__name__}: {exc}",
            reference=str(pair.reference),
            prediction=str(pair.prediction or ""),
        )


def _missing_prediction(pair: CasePair, config: EvaluationConfig) -> CaseResult:
    """Score a reference without a prediction as an all-background prediction."""
    reference = read_volume(pair.reference)
    ref = _check_label_array(reference, pair.name, "reference", pair.reference)
    empty = Volume(np.zeros(ref.shape, dtype=np.uint8), geometry=reference.geometry)
    result = evaluate_volumes(
        empty, reference.with_array(ref), config, name=pair.name, reference_path=pair.reference
    )
    return replace(
        result, status="missing_prediction", message="no prediction file; scored as an empty prediction"
    )


def load_case_volumes(case: CaseResult) -> tuple[Volume, Volume]:
    """Reference and prediction of a scored case as label maps on the reference grid, as
    they were scored: resampled when the case was, all background when it had no prediction,
    values outside the scored labels (``ignore_other_labels``) background."""
    if case.status == "error":
        raise ValueError(f"case '{case.name}' was not scored: {case.message}")
    reference = read_volume(case.reference)
    ref = _scored_only(_check_label_array(reference, case.name, "reference", case.reference), case)
    if case.status == "missing_prediction":
        return reference.with_array(ref), reference.with_array(np.zeros(ref.shape, dtype=np.uint8))
    prediction = read_volume(case.prediction)
    if case.resampled:
        from medseg.geometry.resample import resample_to_reference

        prediction = resample_to_reference(prediction, reference, is_label=True)
    pred = _scored_only(_check_label_array(prediction, case.name, "prediction", case.prediction), case)
    return reference.with_array(ref), reference.with_array(pred)


def _scored_only(array: np.ndarray, case: CaseResult) -> np.ndarray:
    scored = list(case.confusion_labels)
    return np.where(np.isin(array, scored), array, 0).astype(array.dtype) if scored else array


def case_dice(case: CaseResult) -> float:
    """Dice over the classes present on either side (from the voxel counts, whatever metrics
    were asked for); NaN for a failed case or one with no foreground at all."""
    values = [
        2 * cm.counts.tp / (2 * cm.counts.tp + cm.counts.fp + cm.counts.fn)
        for cm in case.per_label.values()
        if cm.counts.tp + cm.counts.fp + cm.counts.fn > 0
    ]
    return float(np.mean(values)) if values else math.nan


def _both_empty(n_voxels: int, diagonal_mm: float, config: EvaluationConfig, label: int) -> ClassMetrics:
    none = np.zeros(0)
    distances = SurfaceDistances(none, none, "both", diagonal_mm)
    counts = OverlapCounts(0, 0, 0, n_voxels)
    objects = None
    if config.object_metrics:
        # No separator anywhere: the whole grid is one region on each side, and they match.
        objects = ObjectCounts.single_region() if label in config.separators else ObjectCounts.none()
    return _class_metrics_from(
        counts, distances, config.class_metrics, config.empty, config.nsd_tolerance_mm, objects
    )


# --------------------------------------------------------------------------- many cases
@dataclass(frozen=True)
class Stats:
    mean: float
    std: float
    median: float
    n: int
    n_nan: int

    def as_dict(self) -> dict[str, float | int | None]:
        def clean(v: float) -> float | None:
            return None if not math.isfinite(v) else float(v)

        return {
            "mean": clean(self.mean),
            "std": clean(self.std),
            "median": clean(self.median),
            "n": self.n,
            "n_nan": self.n_nan,
        }


def describe(values: Sequence[float]) -> Stats:
    """Mean, sample standard deviation (ddof 1), median over finite values; NaNs counted."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    n_nan = int(arr.size - finite.size)
    if finite.size == 0:
        return Stats(math.nan, math.nan, math.nan, 0, n_nan)
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
    return Stats(float(np.mean(finite)), std, float(np.median(finite)), int(finite.size), n_nan)


@dataclass(frozen=True)
class EvaluationResult:
    """All cases of one evaluation, with the label set and options that produced them."""

    cases: tuple[CaseResult, ...]
    labels: Mapping[int, str]
    config: EvaluationConfig
    predictions_without_reference: tuple[str, ...] = ()
    prediction: str = ""
    reference: str = ""

    @property
    def scored_cases(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if c.status != "error")

    @property
    def failed_cases(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if c.status == "error")

    def column(self, metric: str, label: int) -> list[float]:
        """One metric of one label over the scored cases (NaN kept)."""
        return [c.per_label[label].values[metric] for c in self.scored_cases]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per case: ``<metric>/<class>`` columns, empty-mask status and flags."""
        rows: list[dict[str, Any]] = []
        for case in self.cases:
            row: dict[str, Any] = {"case": case.name, "status": case.status}
            if "miou" in self.config.metrics:
                row["miou"] = case.miou
            flags: list[str] = []
            for lab, cname in self.labels.items():
                cm = case.per_label.get(lab)
                for metric in self.config.class_metrics:
                    row[f"{metric}/{cname}"] = math.nan if cm is None else cm.values[metric]
                row[f"ref_voxels/{cname}"] = "" if cm is None else cm.counts.ref_voxels
                row[f"pred_voxels/{cname}"] = "" if cm is None else cm.counts.pred_voxels
                row[f"empty/{cname}"] = "" if cm is None or cm.empty == "none" else cm.empty
                if self.config.object_metrics:
                    objects = None if cm is None else cm.objects
                    row[f"ref_objects/{cname}"] = "" if objects is None else objects.n_ref
                    row[f"pred_objects/{cname}"] = "" if objects is None else objects.n_pred
                if cm is not None:
                    for m in cm.flags:  # object metrics: which side has no *object*
                        side = cm.objects.empty if m in OBJECT_METRICS and cm.objects else cm.empty
                        flags.append(f"{m}/{cname}:{side}")
            for region in self.config.regions or {}:
                row[f"region_dice/{region}"] = case.per_region.get(region, math.nan)
            row["flags"] = " ".join(flags)
            row["resampled"] = case.resampled
            row["message"] = case.message
            rows.append(row)
        return rows

    def object_totals(self, label: int) -> dict[str, int]:
        """Objects of one class summed over the scored cases: reference objects and how many
        were found, predicted objects and how many matched nothing."""
        found = [c.per_label[label].objects for c in self.scored_cases]
        counts = [o for o in found if o is not None]
        n_pred = sum(o.n_pred for o in counts)
        return {
            "reference": sum(o.n_ref for o in counts),
            "found": sum(o.ref_matched for o in counts),
            "predicted": n_pred,
            "unmatched": n_pred - sum(o.pred_matched for o in counts),
        }

    def pooled_confusion(self) -> np.ndarray | None:
        """One confusion matrix over (0, *labels) summed over the scored cases (rows:
        reference); None when a case carries no matrix (built by hand, not by evaluate)."""
        cases = self.scored_cases
        if not cases or any(not c.confusion_labels for c in cases):
            return None
        return pooled_confusion(((c.confusion_labels, c.confusion) for c in cases), [0, *self.labels])

    def miou_pooled(self) -> dict[str, Any]:
        """mIoU of the pooled confusion matrix (background included, classes absent from every
        case left out, as per case) and each class's IoU: a test set scored as one volume,
        where large cases weigh more than in the per-case mean."""

        def clean(v: float) -> float | None:
            return None if not math.isfinite(v) else float(v)

        cm = self.pooled_confusion()
        names = ["background", *self.labels.values()]
        if cm is None:
            return {"value": None, "per_class_iou": dict.fromkeys(names), "n_cases": len(self.scored_cases)}
        ious = iou_per_class(cm)
        return {
            "value": clean(mean_iou(cm)),
            "per_class_iou": {n: clean(float(v)) for n, v in zip(names, ious, strict=True)},
            "n_cases": len(self.scored_cases),
        }

    def object_rows(self) -> list[dict[str, Any]]:
        """One row per connected object (reference and prediction) of every scored case:
        where it is (world LPS, mm), how big (mL), its best IoU and whether it matched."""
        rows: list[dict[str, Any]] = []
        for case in self.scored_cases:
            for obj in case.objects:
                cname = self.labels.get(int(obj["label"]), str(obj["label"]))
                rows.append({"case": case.name, "class": cname, **obj})
        return rows

    def summary(self) -> dict[str, Any]:
        """Mean, std, median (and counts) per class and metric, plus what was flagged."""
        per_class: dict[str, dict[str, Any]] = {}
        for lab, cname in self.labels.items():
            per_class[cname] = {
                "label": lab,
                **{m: describe(self.column(m, lab)).as_dict() for m in self.config.class_metrics},
                "empty_cases": {
                    kind: [c.name for c in self.scored_cases if c.per_label[lab].empty == kind]
                    for kind in ("both", "pred", "ref")
                },
            }
            if self.config.object_metrics:
                per_class[cname]["objects"] = self.object_totals(lab)
        per_region = {
            name: {
                "labels": list(values),
                "dice": describe([c.per_region.get(name, math.nan) for c in self.scored_cases]).as_dict(),
            }
            for name, values in (self.config.regions or {}).items()
        }
        case_level: dict[str, Any] = {}
        if "miou" in self.config.metrics:
            # miou: the per-case mIoU's mean, SD and median over the cases; miou_pooled: one
            # mIoU of the confusion matrix summed over all cases (see miou_pooled()).
            case_level["miou"] = describe([c.miou for c in self.scored_cases]).as_dict()
            case_level["miou_pooled"] = self.miou_pooled()
        return {
            "prediction": self.prediction,
            "reference": self.reference,
            "n_cases": len(self.cases),
            "n_scored": len(self.scored_cases),
            "labels": {str(k): v for k, v in self.labels.items()},
            "metrics": list(self.config.metrics),
            "options": {
                "empty_rule": self.config.empty,
                "nsd_tolerance_mm": self.config.nsd_tolerance_mm,
                "resample": self.config.resample,
                "on_missing": self.config.on_missing,
                "on_case_error": self.config.on_case_error,
                "separators": list(self.config.separators),
                "object_iou": self.config.object_iou,
                "ignore_other_labels": self.config.ignore_other_labels,
            },
            "statistics_note": "mean, sample std (ddof=1) and median over finite values; n_nan counts NaNs left out",
            "per_class": per_class,
            **({"per_region": per_region} if per_region else {}),
            "case_level": case_level,
            "missing_predictions": [c.name for c in self.cases if c.status == "missing_prediction"],
            "failed_cases": {c.name: c.message for c in self.failed_cases},
            "resampled_cases": [c.name for c in self.cases if c.resampled],
            "predictions_without_reference": list(self.predictions_without_reference),
        }


def _raise_from_message(message: str) -> None:
    kind, _, text = message.partition(": ")
    if kind == "GeometryError":
        raise GeometryError(text)
    if kind == "ConfigError":
        raise ConfigError(text)
    if kind == "InputError":
        raise InputError(None, text)
    raise MedsegError(text)


def _run_pairs(
    pairs: Sequence[CasePair],
    config: EvaluationConfig,
    progress: bool,
    on_result: Callable[[CaseResult], None],
) -> None:
    workers = config.workers or min(len(pairs), os.cpu_count() or 1)
    workers = max(1, min(workers, len(pairs)))
    advance: Callable[[], None] = lambda: None  # noqa: E731
    bar: Any = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("evaluating", total=len(pairs))
        bar.start()

        def advance() -> None:
            bar.advance(task)

    try:
        if workers == 1:
            for pair in pairs:
                on_result(_evaluate_pair(pair, config))
                advance()
            return
        # spawn: safe whatever threads (torch, BLAS) the parent process has started.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_evaluate_pair, pair, config) for pair in pairs]
            try:
                for fut in as_completed(futures):
                    on_result(fut.result())
                    advance()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        if bar is not None:
            bar.stop()


def evaluate(
    prediction: str | Path,
    reference: str | Path,
    config: EvaluationConfig | None = None,
    *,
    progress: bool = False,
    found_labels: Mapping[int, str] | None = None,
) -> EvaluationResult:
    """Score every case of ``prediction`` against ``reference`` (two folders or two files).

    ``found_labels``: the labels an earlier evaluation found in these same references
    (``config.labels`` None), used instead of finding them again so that several methods
    get the same classes; they stay found labels, not declared ones (a prediction label
    outside them is one "found in no reference").
    """
    cfg = config or EvaluationConfig()
    matching = check_matching(prediction, reference, cfg)
    if matching.predictions_without_reference:
        logger.warning(
            "%d prediction(s) have no reference and are not scored: %s",
            len(matching.predictions_without_reference),
            ", ".join(matching.predictions_without_reference[:20]),
        )
    if cfg.regions and cfg.labels is None and not cfg.label_names and not found_labels:
        _check_region_values_in_references(cfg.regions, matching.pairs)
    results: dict[str, CaseResult] = {}

    def collect(res: CaseResult) -> None:
        if res.status == "error" and cfg.on_case_error == "raise":
            _raise_from_message(res.message)
        if res.status == "error":
            logger.warning("case %s not scored: %s", res.name, res.message)
        results[res.name] = res

    _run_pairs(matching.pairs, cfg, progress, collect)
    cases = [results[p.name] for p in matching.pairs]
    labels = dict(found_labels) if cfg.labels is None and found_labels else _final_labels(cases, cfg)
    if cfg.regions and cfg.labels is None and not cfg.label_names:
        _check_region_values(cfg.regions, labels, "found in the references")
    final: list[CaseResult] = []
    for case in cases:
        if case.status != "error":
            case = _complete_case(case, labels, cfg)
        final.append(case)
    if cfg.on_case_error == "raise":
        for case in final:
            if case.status == "error":
                _raise_from_message(case.message)
    return EvaluationResult(
        tuple(final),
        labels,
        cfg,
        matching.predictions_without_reference,
        prediction=str(prediction),
        reference=str(reference),
    )


def _final_labels(cases: Sequence[CaseResult], cfg: EvaluationConfig) -> dict[int, str]:
    if cfg.labels is not None:
        return dict(cfg.labels)
    values = sorted({v for c in cases if c.status != "error" for v in c.reference_labels})
    if not values:
        raise InputError(
            None,
            "no foreground label in any reference",
            expected="at least one non-zero label, or declare the labels with --labels",
        )
    missing = sorted(set(cfg.separators) - set(values))
    if missing:
        raise ConfigError(
            f"separator label(s) {missing} found in no reference (labels found: {values}); "
            "--separator names the class that draws the borders, e.g. the membrane"
        )
    names = cfg.label_names or {}
    return {v: str(names.get(v, v)) for v in values}


def _mask_hint(reference: Sequence[int], prediction: Sequence[int]) -> str:
    """A 0/255 mask (PNG, TIFF) against a 0/1 label map is the usual cause of disjoint labels."""
    if 255 in set(reference) | set(prediction) and 1 in set(reference) | set(prediction):
        return (
            "; one side looks like a 0/255 mask image and the other like a 0/1 label map: medseg "
            "reads mask values as they are, so give both the same values (e.g. `medseg dataset import "
            "images2d ... --mask-map 0=0,255=1` maps masks to 0/1)"
        )
    return ""


def _complete_case(case: CaseResult, labels: Mapping[int, str], cfg: EvaluationConfig) -> CaseResult:
    """Check inferred labels and fill classes absent from a case (both masks empty)."""
    extra = sorted(set(case.prediction_labels) - set(labels))
    if extra:
        message = (
            f"InputError: {case.prediction}: case '{case.name}': prediction holds label values "
            f"{extra} found in no reference; expected values in {[0, *labels]} (declare them with --labels)"
            + _mask_hint(sorted(labels), extra)
        )
        return replace(case, status="error", message=message, per_label={})
    per_label = {
        lab: case.per_label[lab]
        if lab in case.per_label
        else _both_empty(case.n_voxels, case.diagonal_mm, cfg, lab)
        for lab in labels
    }
    return replace(case, per_label=per_label)
