"""Cross-validation driver: train every fold, predict each fold's validation cases, evaluate.

For a planned dataset with K folds (splits.json; created when absent):

1. each fold is trained in turn with :func:`medseg.training.trainer.train`. A fold whose
   model folder is complete (``epochs_completed`` has reached the configured epochs) is
   skipped, a fold with a ``checkpoint_last.pt`` short of that is resumed, so rerunning
   the same command after an interruption (Ctrl-C, SLURM time limit) continues where it
   stopped;
2. each fold's model predicts that fold's validation cases from the ORIGINAL images in
   imagesTr (the same path as ``medseg predict``: preprocessing replayed from the plan,
   the label map back on the input grid), written as NIfTI to
   ``DATASET/models/<config>/crossval/predictions/<case>.nii.gz``. A prediction newer than
   its fold's checkpoint and postprocessing.json is reused;
3. the out-of-fold predictions are evaluated against labelsTr with
   :mod:`medseg.evaluation.evaluate` (per-case table, statistics, plots and HTML in
   ``crossval/evaluation/``), and ``crossval/summary.json`` holds the per-class mean Dice
   over all out-of-fold cases, the per-fold means and what happened to each fold.

Held-out test cases of splits.json are in no validation fold and are not predicted.

Layering: this driver sits above training (it uses inference and evaluation), so those
imports are made inside the functions; only the CLI and pipeline-level code call it.

Distributed (``torchrun ... medseg crossval``): every rank trains, rank 0 alone predicts,
evaluates and writes; the other ranks return after training with an empty result.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.training.config import TrainingConfig

if TYPE_CHECKING:
    from medseg.training.slice_classifier import SliceClassifierConfig

log = logging.getLogger(__name__)

CROSSVAL_DIR = "crossval"
SUMMARY_JSON = "summary.json"
DEFAULT_FOLDS = 5

FoldAction = Literal["trained", "resumed", "skipped"]


@dataclass(frozen=True)
class FoldRecord:
    """What happened to one fold in this run."""

    fold: int
    action: FoldAction
    model_dir: Path
    epochs_completed: int
    best_val_dice: float | None
    val_cases: tuple[str, ...]
    # For a skipped fold: how its training differed from this run's request (epochs, loss ...).
    differences: tuple[str, ...] = ()


@dataclass(frozen=True)
class CrossValResult:
    """The folds, and (on rank 0) the out-of-fold evaluation."""

    folder: Path
    folds: tuple[FoldRecord, ...]
    per_class_dice: dict[str, float | None] = field(default_factory=dict)
    mean_dice: float | None = None
    n_cases: int = 0
    evaluated: bool = False
    # The other per-class metrics asked for (e.g. "hd95", "uw"): metric -> class -> mean.
    per_class_means: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # Case-level metrics asked for ("miou"): the mean over the out-of-fold cases.
    case_level_means: dict[str, float | None] = field(default_factory=dict)
    # Region-based models: region -> mean out-of-fold Dice (a region = union of its labels).
    per_region_dice: dict[str, float | None] = field(default_factory=dict)

    @property
    def summary_path(self) -> Path:
        return self.folder / SUMMARY_JSON

    @property
    def predictions_dir(self) -> Path:
        return self.folder / "predictions"


def crossval_dir(root: str | Path, configuration: str) -> Path:
    """``DATASET/models/<config>/crossval``: beside the ``fold_k`` model folders."""
    return Path(root) / "models" / configuration / CROSSVAL_DIR


def _read_model_json(folder: Path) -> dict[str, Any]:
    path = folder / "model.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, "cannot be read", found=str(exc)) from None
    if not isinstance(data, dict):
        raise InputError(path, "is not a JSON object")
    return data


def fold_state(folder: Path, epochs: int) -> Literal["missing", "partial", "complete"]:
    """``complete`` (skip), ``partial`` (resume from checkpoint_last.pt) or ``missing`` (train).

    Complete: model.json says ``epochs`` epochs were done and checkpoint_best.pt exists
    (checkpoint_last.pt is not needed). A folder holding checkpoints that are neither is
    an error rather than something to delete.
    """
    if (folder / "model.json").is_file() and (folder / "checkpoint_best.pt").is_file():
        done = int(_read_model_json(folder).get("epochs_completed") or 0)
        if done >= epochs:
            return "complete"
    if (folder / "checkpoint_last.pt").is_file():
        return "partial"
    if folder.is_dir() and any(folder.glob("*.pt")):
        raise ConfigError(
            f"{folder}: holds checkpoints but no checkpoint_last.pt to resume {epochs} epochs from; "
            "rerun with --overwrite to retrain every fold, or move the folder away to retrain this one"
        )
    return "missing"


def _check_same_plan(folder: Path, plan: Any) -> None:
    from medseg.preprocessing.plan import Plan

    path = folder / "plan.json"
    if path.is_file() and Plan.load(path) != plan:
        raise ConfigError(
            f"{folder}: this fold was trained with a different plan than the dataset's current one "
            f"({path}); rerun with --overwrite to retrain every fold with the current plan"
        )


def _request_differences(folder: Path, done: int, config: TrainingConfig) -> list[str]:
    """How a finished fold's training differs from ``config``: epochs done, and the fields of
    its training_config.json that shape the weights (see ``trainer.RESUMABLE_FIELDS``)."""
    from medseg.training.trainer import config_differences

    out = [] if done == config.epochs else [f"epochs {done} done -> {config.epochs} requested"]
    path = folder / "training_config.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [*out, f"{path.name} unreadable or missing (its settings cannot be compared)"]
    if not isinstance(recorded, dict):
        return [*out, f"{path.name} is not a JSON object"]
    return out + config_differences(recorded, config)


def _clean(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def cross_validate(
    dataset: str | Path,
    *,
    configuration: str = "3d",
    config: TrainingConfig | None = None,
    folds: int | None = None,
    workers: int = 2,
    overwrite: bool = False,
    tta: bool = False,
    metrics: Sequence[str] = ("dice", "iou"),
    progress: bool = False,
    slice_classifier: SliceClassifierConfig | None = None,
    resume_changed: bool = False,
) -> CrossValResult:
    """Train all folds (resuming/skipping finished ones), predict out-of-fold, evaluate.

    ``folds``: the number of folds; None takes splits.json's (or 5 when there is none). A
    splits.json with another number of folds is an error (delete it to re-split).
    ``overwrite`` retrains every fold from scratch and replaces the predictions.
    ``slice_classifier`` also trains each trained fold's empty-slice classifier (2D / 2.5D),
    which the out-of-fold predictions then use. ``resume_changed`` lets an interrupted fold
    continue although its loss, optimiser, augmentation or plan differ from the request
    (see :func:`medseg.training.trainer.train`); without it that fold is refused.
    """
    from medseg.data.splits import SPLITS_JSON, load_splits, make_splits
    from medseg.evaluation.evaluate import EvaluationConfig
    from medseg.preprocessing.pipeline import load_dataset_plan
    from medseg.training.checkpoint import check_trained_on
    from medseg.training.trainer import (
        _barrier,
        build_plan_loss,
        choose_device,
        default_model_dir,
        init_distributed,
        is_main_process,
        train,
    )

    root = Path(dataset)
    cfg = config or TrainingConfig()
    plan = load_dataset_plan(root, configuration)  # fails early when there is no plan
    build_plan_loss(plan, cfg)  # loss options the plan's outputs do not take: refused before any fold
    eval_cfg = EvaluationConfig(
        labels={v: k for k, v in plan.labels.items() if v != 0},
        metrics=tuple(metrics),
        regions=plan.regions or None,  # region models: a Dice per region too
    )
    if "dice" not in eval_cfg.metrics:
        raise ConfigError(f"cross-validation needs the 'dice' metric, found {list(eval_cfg.metrics)}")
    init_distributed(choose_device(cfg.device))
    main = is_main_process()
    splits_file = root / SPLITS_JSON
    if splits_file.is_file():
        splits = load_splits(root)
        if folds is not None and splits.k != folds:
            raise ConfigError(
                f"{splits_file} has {splits.k} folds but {folds} were asked for; "
                f"use --folds {splits.k}, or re-split with `medseg dataset split {root} --folds {folds} "
                "--overwrite` (the folds trained on the old splits are then refused)"
            )
    else:
        if main:
            make_splits(root, k=folds or DEFAULT_FOLDS, seed=0)
        _barrier()
        splits = load_splits(root)
    out = crossval_dir(root, configuration)

    records: list[FoldRecord] = []
    for k in range(splits.k):
        folder = default_model_dir(root, configuration, k)
        state = "missing" if overwrite else fold_state(folder, cfg.epochs)
        if state != "missing":
            _check_same_plan(folder, plan)
            check_trained_on(folder, splits.fold(k).train, f"fold {k} of {SPLITS_JSON}")
        if state == "complete":
            info = _read_model_json(folder)
            done = int(info.get("epochs_completed") or 0)
            log.info("fold %d: complete (%s epochs), skipped", k, done)
            differences = tuple(_request_differences(folder, done, cfg))
            if differences:
                # Its predictions are pooled with the other folds': say so rather than hide it.
                log.warning(
                    "fold %d (%s) was trained differently from this request and is used as it is: %s "
                    "(--overwrite retrains every fold)",
                    k,
                    folder,
                    "; ".join(differences),
                )
            best = info.get("best_val_mean_dice")
            records.append(
                FoldRecord(
                    k,
                    "skipped",
                    folder,
                    done,
                    None if best is None else float(best),
                    splits.fold(k).val,
                    differences,
                )
            )
            continue
        log.info("fold %d of %d: %s", k, splits.k, "resuming" if state == "partial" else "training")
        result = train(
            root,
            k,
            configuration=configuration,
            config=cfg,
            resume=state == "partial",
            resume_changed=resume_changed and state == "partial",
            # "missing": no checkpoint at all, nothing worth keeping (a run that died before its
            # first epoch left only its JSON files).
            overwrite=True if state == "missing" else overwrite,
            folds=splits.k,
            workers=workers,
            progress=progress,
            slice_classifier=slice_classifier,
        )
        records.append(
            FoldRecord(
                k,
                "resumed" if state == "partial" else "trained",
                result.model_dir,
                result.epochs_completed,
                None if result.best_epoch < 0 else result.best_dice,
                splits.fold(k).val,
            )
        )
        if result.stopped_early:
            log.warning("fold %d: %s; rerun the same command to continue it", k, result.stopped_early)

    if not main:
        _barrier()
        return CrossValResult(out, tuple(records))
    try:
        predict_out_of_fold(
            root,
            records,
            out / "predictions",
            overwrite=overwrite,
            tta=tta,
            device=cfg.device,
            progress=progress,
        )
        summary = evaluate_out_of_fold(
            root, records, out, eval_cfg, configuration=configuration, test_cases=splits.test
        )
    finally:
        _barrier()
    return summary


def predict_out_of_fold(
    root: Path,
    records: Sequence[FoldRecord],
    out: Path,
    *,
    overwrite: bool = False,
    tta: bool = False,
    device: str = "auto",
    progress: bool = False,
) -> list[Path]:
    """Predict each fold's validation cases with that fold's model, from the original images."""
    from medseg.data.dataset import list_cases
    from medseg.inference.predictor import InputCase, PredictConfig, SegmentationModel, predict_case
    from medseg.preprocessing.plan import Plan
    from medseg.progress import progress_bar
    from medseg.training.checkpoint import best_checkpoint

    cases = {c.case_id: c for c in list_cases(root, "Tr")}
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    total = sum(len(r.val_cases) for r in records)
    with progress_bar(progress, "out-of-fold prediction", total) as advance:
        for record in records:
            # A prediction older than the fold's weights or its postprocessing rules (e.g. after
            # `medseg tune-postprocessing`) is made anew: the summary scores what predict does.
            checkpoint_time = best_checkpoint(record.model_dir).stat().st_mtime
            rules_file = record.model_dir / "postprocessing.json"
            if rules_file.is_file():
                checkpoint_time = max(checkpoint_time, rules_file.stat().st_mtime)
            # A region model's masks too: its painted label map loses the overlaps, and the
            # Dice per region is scored on the masks.
            regional = bool(Plan.load(record.model_dir / "plan.json").regions)
            formats = ("nifti", "regions") if regional else ("nifti",)
            pcfg = PredictConfig(formats=formats, tta=tta, device=device, overwrite=True)  # type: ignore[arg-type]
            model = None
            for case_id in record.val_cases:
                target = out / f"{case_id}.nii.gz"
                fresh = target.is_file() and target.stat().st_mtime >= checkpoint_time
                if regional:
                    fresh = fresh and (out / case_id / "regions").is_dir()
                if fresh and not overwrite:
                    written.append(target)
                    advance()
                    continue
                if case_id not in cases:
                    raise InputError(
                        root / "imagesTr",
                        f"case '{case_id}' of splits.json has no image",
                        expected="every split case in imagesTr",
                    )
                if model is None:
                    model = SegmentationModel(record.model_dir, device=device)
                files = cases[case_id]
                predict_case(model, InputCase(case_id, "files", files.images), out, pcfg)
                written.append(target)
                advance()
    return written


def evaluate_out_of_fold(
    root: Path,
    records: Sequence[FoldRecord],
    out: Path,
    eval_cfg: Any,
    *,
    configuration: str,
    test_cases: Sequence[str] = (),
) -> CrossValResult:
    """Score the out-of-fold predictions against labelsTr; write evaluation/ and summary.json."""
    from medseg.data.dataset import list_cases, read_descriptor
    from medseg.evaluation.evaluate import EvaluationResult, describe, evaluate_volumes, read_region_masks
    from medseg.evaluation.report import write_report
    from medseg.io import read_volume

    cases = {c.case_id: c for c in list_cases(root, "Tr")}
    predictions = out / "predictions"
    scored = []
    fold_of: dict[str, int] = {}
    for record in records:
        for case_id in record.val_cases:
            ref_path = cases[case_id].label
            assert ref_path is not None  # list_cases("Tr") requires labels
            pred_path = predictions / f"{case_id}.nii.gz"
            masks = read_region_masks(pred_path, list(eval_cfg.regions)) if eval_cfg.regions else None
            scored.append(
                evaluate_volumes(
                    read_volume(pred_path),
                    read_volume(ref_path),
                    eval_cfg,
                    name=case_id,
                    prediction_path=pred_path,
                    reference_path=ref_path,
                    region_masks=masks,
                )
            )
            fold_of[case_id] = record.fold
    result = EvaluationResult(
        tuple(scored),
        dict(eval_cfg.labels),
        eval_cfg,
        prediction=str(predictions),
        reference=str(root / "labelsTr"),
    )
    # The overlays over each case's first image channel (imagesTr shares the labels' grid).
    images = {case_id: cases[case_id].images[0] for case_id in fold_of if cases[case_id].images}
    try:
        write_report(result, out / "evaluation", overwrite=True, image=images)
    except MedsegError as exc:  # e.g. an image off its label's grid: keep the hours of training
        log.warning("evaluation overlays drawn without the images: %s", exc)
        write_report(result, out / "evaluation", overwrite=True)
    labels: dict[int, str] = dict(eval_cfg.labels)

    def class_dice(cases: Sequence[Any], lab: int) -> float | None:
        # A case where prediction and reference are both empty scores 1 in the evaluation
        # (its convention); left out here, as the statistic says (and as training's
        # validation Dice and tune-postprocessing do), not counted as a perfect case.
        values = [c.per_label[lab].values["dice"] for c in cases if c.per_label[lab].empty != "both"]
        return _clean(describe(values).mean)

    per_class = {name: class_dice(scored, lab) for lab, name in labels.items()}
    finite = [v for v in per_class.values() if v is not None]
    mean = float(sum(finite) / len(finite)) if finite else None
    per_label_metrics = set(next(iter(scored[0].per_label.values())).values) if scored else set()
    others = {
        metric: {name: _clean(describe(result.column(metric, lab)).mean) for lab, name in labels.items()}
        for metric in eval_cfg.metrics
        if metric != "dice" and metric in per_label_metrics
    }
    case_level = (
        {
            "miou": _clean(describe([c.miou for c in scored]).mean),
            # one confusion matrix over all out-of-fold cases (a test set scored as one volume)
            "miou_pooled": result.miou_pooled()["value"],
        }
        if "miou" in eval_cfg.metrics
        else {}
    )
    per_region = {  # cases where the region is empty on both sides left out, as for the classes
        name: _clean(
            describe(
                [c.per_region.get(name, math.nan) for c in scored if name not in c.regions_both_empty]
            ).mean
        )
        for name in eval_cfg.regions or {}
    }
    class_mean = mean
    if per_region:  # a region model is judged by its regions (overlap classes are often empty)
        finite_regions = [v for v in per_region.values() if v is not None]
        mean = float(sum(finite_regions) / len(finite_regions)) if finite_regions else None
    per_fold: dict[str, dict[str, float | None]] = {}
    for record in records:
        fold_cases = [c for c in scored if fold_of[c.name] == record.fold]
        per_fold[str(record.fold)] = {name: class_dice(fold_cases, lab) for lab, name in labels.items()}
    summary = {
        "dataset": read_descriptor(root).name or root.name,
        "configuration": configuration,
        "k": len(records),
        "n_cases": len(scored),
        "statistic": "per-class mean Dice over all out-of-fold cases (cases where prediction and "
        "reference are both empty are left out); mean_foreground_dice is the mean over classes"
        + (", for a region model over regions (as training's validation Dice)" if per_region else ""),
        "per_class_mean_dice": per_class,
        "mean_foreground_dice": mean,
        **({"mean_class_dice": class_mean} if per_region else {}),
        "per_fold_mean_dice": per_fold,
        **({"per_region_mean_dice": per_region} if per_region else {}),
        "per_class_mean": others,
        # mIoU: per case over the confusion matrix's classes, background included, then the mean
        "case_level_mean": case_level,
        "folds": [
            {
                "fold": r.fold,
                "action": r.action,
                "model": str(r.model_dir),
                "epochs_completed": r.epochs_completed,
                "best_val_mean_dice": r.best_val_dice,
                "val_cases": list(r.val_cases),
                **({"differs_from_request": list(r.differences)} if r.differences else {}),
            }
            for r in records
        ],
        "test_cases_not_evaluated": list(test_cases),
        "predictions": str(predictions),
        "evaluation": str(out / "evaluation"),
    }
    write_text_atomic(
        out / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n", overwrite=True
    )
    log.info(
        "cross-validation: mean foreground Dice %s over %d cases",
        "n/a" if mean is None else f"{mean:.4f}",
        len(scored),
    )
    return CrossValResult(
        out,
        tuple(records),
        per_class,
        mean,
        len(scored),
        evaluated=True,
        per_class_means=others,
        case_level_means=case_level,
        per_region_dice=per_region,
    )


POSTPROCESSING_JSON = "postprocessing.json"


def _check_same_shape(
    pred_path: Path, pred_shape: Sequence[int], ref_path: Path, ref_shape: Sequence[int]
) -> None:
    if tuple(pred_shape) != tuple(ref_shape):
        raise InputError(
            pred_path,
            "is not on its reference's grid, so its Dice cannot choose rules",
            expected=f"shape {tuple(ref_shape)} of {ref_path}",
            found=f"shape {tuple(pred_shape)}",
        )


def _region_case_loader(pred_path: Path, ref_path: Path, regions: Mapping[str, Sequence[int]]) -> Any:
    """A loader of (predicted masks, reference masks), each ``(R, *shape)``, for one case of a
    region model: the masks crossval wrote beside the label map, the reference's from its labels."""
    import numpy as np

    from medseg.evaluation.evaluate import read_region_masks
    from medseg.io import read_volume

    def load() -> tuple[Any, Any]:
        masks = read_region_masks(pred_path, list(regions))
        if masks is None:
            raise InputError(
                pred_path.parent / pred_path.name.removesuffix(".nii.gz") / "regions",
                "not found: a region model's rules are chosen on its region masks",
                expected="the masks crossval writes (rerun medseg crossval; trained folds are kept)",
            )
        ref = read_volume(ref_path).array
        pred = np.stack([masks[name].array != 0 for name in regions])
        _check_same_shape(pred_path, pred.shape[1:], ref_path, ref.shape)
        return pred, np.stack([np.isin(ref, list(values)) for values in regions.values()])

    return load


def _warn_replaced_rules(
    path: Path, new: Any, tuned: tuple[Any, float] | None, names: dict[int, str]
) -> None:
    """Name the rules of ``fold_all`` that tuning replaces, unless they act as the new ones or
    are the rules an earlier tuning wrote."""
    from medseg.postprocessing.labels import read_rules

    if not path.is_file():
        return
    try:
        old = read_rules(path)
    except MedsegError as exc:
        log.warning("%s: unreadable rules replaced by the tuned ones (%s)", path, exc)
        return
    if old.is_identity or old.effective() == new.effective():
        return
    if tuned is not None and old.effective() == tuned[0].effective():
        return
    log.warning(
        "%s: its rules (%s) are replaced by those chosen on the cross-validation (%s)",
        path,
        old.describe(names),
        new.describe(names),
    )


def _check_plan_of_rules(folder: Path, plan: Any, plan_file: Path, remedy: str) -> None:
    """A model folder that takes the tuned rules must have been trained with the plan they are
    chosen for (the dataset's, which crossval checks every numbered fold against): rules chosen
    for one preprocessing, network or label set mean something else under another."""
    from medseg.preprocessing.plan import Plan
    from medseg.training.trainer import plan_differences

    path = folder / "plan.json"
    if not path.is_file():
        return
    trained = Plan.load(path)
    if trained == plan:
        return
    changes = "; ".join(plan_differences(trained, plan)) or "(the plans differ)"
    raise ConfigError(
        f"{folder}: trained with a different plan ({path}) than the one the postprocessing rules "
        f"are chosen for ({plan_file}); {path.name} -> {plan_file.name}: {changes}; {remedy}"
    )


def tune_postprocessing(
    dataset: str | Path, *, configuration: str = "3d", min_gain: float = 0.0
) -> tuple[Any, Path]:
    """Choose largest-component rules on the out-of-fold predictions of ``medseg crossval``
    (:func:`medseg.postprocessing.tuning.choose_rules`) and store them with every fold's model.

    Writes each ``fold_k/postprocessing.json`` (which ``predict`` applies) and
    ``crossval/postprocessing.json`` (the rules and, per candidate, the out-of-fold mean Dice
    before and after). Returns the choice and that file. The predictions must have been made
    without rules: a fold whose postprocessing.json already holds rules is refused, naming it.

    A ``fold_all`` model of the configuration (``medseg train --fold all``: the same plan
    trained on every case, which has no out-of-fold predictions of its own) gets the same
    rules, as in nnU-Net; rules it held that differ are named in a warning as they are
    replaced (one trained after this starts with them: :func:`medseg.training.trainer.train`
    reads ``crossval/postprocessing.json``, which records the plan, and takes them only when
    trained with it). A fold or fold_all trained with another plan than the dataset's is
    refused before anything is written, naming the fields that differ (as crossval refuses a
    numbered fold of another plan). A lean ONNX copy of a model made before this (model.onnx and the JSON files
    copied elsewhere) keeps its old postprocessing.json: copy the new one into it
    (``predict --onnx`` warns when the copy's rules differ from its source folder's).
    """
    from medseg.data.dataset import list_cases, read_descriptor
    from medseg.io import read_volume
    from medseg.postprocessing.labels import read_rules, write_rules
    from medseg.postprocessing.tuning import choose_region_rules, choose_rules
    from medseg.preprocessing.pipeline import load_dataset_plan, plan_path
    from medseg.training.checkpoint import best_checkpoint, is_model_folder
    from medseg.training.trainer import default_model_dir

    root = Path(dataset)
    plan = load_dataset_plan(root, configuration)
    plan_file = plan_path(root, configuration)
    out = crossval_dir(root, configuration)
    summary_path = out / SUMMARY_JSON
    if not summary_path.is_file():
        raise InputError(
            summary_path,
            "not found",
            expected=f"a finished cross-validation (medseg crossval {root} -c {configuration})",
        )
    try:
        summary = json.loads(summary_path.read_text())
        # The fold folders beside crossval/ (the summary's paths may be of a moved dataset).
        fold_numbers = [int(f["fold"]) for f in summary["folds"]]
        folds = [
            (default_model_dir(root, configuration, k), [str(c) for c in f["val_cases"]])
            for k, f in zip(fold_numbers, summary["folds"], strict=True)
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(summary_path, "is not a crossval summary", found=str(exc)) from None
    # Rules written by an earlier run of this command (crossval/postprocessing.json) may be chosen
    # again (another --min-gain) on the predictions made before them.
    tuned: tuple[Any, float] | None = None
    record_path = out / POSTPROCESSING_JSON
    if record_path.is_file():
        from medseg.postprocessing.labels import PostprocessingRules

        try:
            tuned = (
                PostprocessingRules.from_json(json.loads(record_path.read_text())["rules"]),
                record_path.stat().st_mtime,
            )
        except (ValueError, KeyError, TypeError, MedsegError):
            tuned = None
    retuning = False
    for folder, _ in folds:
        # Rules are written into each fold's folder: a fold gone would come back as a folder
        # holding only postprocessing.json, which predict refuses as an incomplete model.
        if not (is_model_folder(folder) and best_checkpoint(folder).is_file()):
            raise InputError(
                folder,
                "holds no trained model",
                expected=f"every fold of {summary_path} (rerun medseg crossval {root} -c {configuration})",
            )
        _check_plan_of_rules(
            folder,
            plan,
            plan_file,
            f"rerun medseg crossval {root} -c {configuration} --overwrite to retrain every fold with it",
        )
        post = folder / POSTPROCESSING_JSON
        if post.is_file():
            rules = read_rules(post)
            active = rules.keep_largest_foreground or any(not r.is_identity for r in rules.classes.values())
            if active and tuned is not None and rules == tuned[0]:
                retuning = True  # rules this command wrote: predictions older than them were made without
            elif active:
                raise InputError(
                    post,
                    "holds postprocessing rules already, and the out-of-fold predictions were made with "
                    "them, so they cannot show what each rule does",
                    expected="no rules: to choose anew, write {} into every fold's postprocessing.json, "
                    f"delete {out / 'predictions'} and rerun medseg crossval (trained folds are kept)",
                )
    fold_all = default_model_dir(root, configuration, None)
    fold_all_takes_rules = fold_all not in [f for f, _ in folds] and is_model_folder(fold_all)
    if fold_all_takes_rules:  # before choosing: it would take rules chosen for another plan
        _check_plan_of_rules(
            fold_all,
            plan,
            plan_file,
            f"retrain it with that plan (medseg train {root} -c {configuration} --fold all --overwrite) "
            "or move it away, then choose the rules again",
        )
    cases = {c.case_id: c for c in list_cases(root, "Tr")}
    predictions = out / "predictions"
    loaders = []
    for fold, (folder, val) in enumerate(folds):
        checkpoint_time = best_checkpoint(folder).stat().st_mtime
        for case_id in val:
            pred_path = predictions / f"{case_id}.nii.gz"
            if not pred_path.is_file():
                raise InputError(
                    pred_path, "not found", expected="every out-of-fold prediction of medseg crossval"
                )
            if pred_path.stat().st_mtime < checkpoint_time:
                # crossval predicts such a case anew (predict_out_of_fold): the rules must be
                # chosen on what the fold's present model predicts
                raise InputError(
                    pred_path,
                    f"is older than fold {fold_numbers[fold]}'s model {best_checkpoint(folder)} (retrained since)",
                    expected=f"predictions of the present models: rerun medseg crossval {root} -c {configuration} "
                    "(trained folds are kept, their out-of-fold cases predicted anew)",
                )
            if retuning and tuned is not None and pred_path.stat().st_mtime > tuned[1]:
                raise InputError(
                    pred_path,
                    "was predicted after the fold's postprocessing rules were written, so with them",
                    expected="predictions without rules: write {} into every fold's postprocessing.json, "
                    f"delete {predictions} and rerun medseg crossval (trained folds are kept)",
                )
            ref_path = cases[case_id].label if case_id in cases else None
            if ref_path is None:
                raise InputError(root / "labelsTr", f"case '{case_id}' has no label")

            if plan.regions:
                loaders.append(_region_case_loader(pred_path, ref_path, plan.regions))
            else:

                def load(p: Path = pred_path, r: Path = ref_path) -> tuple[Any, Any]:
                    pred, ref = read_volume(p).array, read_volume(r).array
                    _check_same_shape(p, pred.shape, r, ref.shape)
                    return pred, ref

                loaders.append(load)
    if plan.regions:
        # A region model: its masks (overlaps kept, as crossval writes them), one Dice per region.
        choice = choose_region_rules(loaders, plan.regions_class_order, min_gain=min_gain)
        names = dict(enumerate(plan.regions))
        rule_names = dict(zip(plan.regions_class_order, plan.regions, strict=True))
    else:
        labels = [v for v in plan.labels.values() if v != 0]
        choice = choose_rules(loaders, labels, min_gain=min_gain)
        names = rule_names = {v: k for k, v in plan.labels.items()}
    targets = [folder for folder, _ in folds]
    if fold_all_takes_rules:
        _warn_replaced_rules(fold_all / POSTPROCESSING_JSON, choice.rules, tuned, rule_names)
        targets.append(fold_all)
    for folder in targets:
        write_rules(choice.rules, folder / POSTPROCESSING_JSON, overwrite=True)
    record = {
        "dataset": read_descriptor(root).name or root.name,
        "configuration": configuration,
        "n_cases": choice.n_cases,
        "method": "greedy on the out-of-fold predictions: largest foreground component, then the "
        f"largest component of each {'region' if plan.regions else 'class'}, each adopted when it raises "
        f"the mean Dice (by more than {min_gain})",
        **(
            {
                "regions": {
                    name: int(v) for name, v in zip(plan.regions, plan.regions_class_order, strict=True)
                }
            }
            if plan.regions
            else {}
        ),
        "rules": choice.rules.to_json(),
        # The plan the rules were chosen for: a fold_all trained later with another takes none.
        "plan": json.loads(plan.to_json()),
        "steps": [s.to_json(names) for s in choice.steps],
        "written_to": [str(folder / POSTPROCESSING_JSON) for folder in targets],
    }
    target = write_text_atomic(
        out / POSTPROCESSING_JSON, json.dumps(record, indent=2, allow_nan=False) + "\n", overwrite=True
    )
    return choice, target
