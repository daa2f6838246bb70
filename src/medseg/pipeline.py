"""The end-to-end functions the CLI calls, for use from Python with the same options.

The CLI's commands are thin calls into these (or into the functions re-exported here:
``convert``, ``multiplane_roi``, ``plan_dataset``, ``train``, ``cross_validate``,
``tune_postprocessing``, ``predict``, ``export_onnx``, ``export_label``, ``write_cohort_index`` (export-index), ``evaluate`` + ``write_report``,
``compare`` + ``write_comparison_report`` (several methods against one reference),
``predict_uwmadison_submission``), so ``medseg predict IN -m MODEL -o OUT --format
nifti,report`` is::

    from medseg.pipeline import PredictConfig, predict
    predict("IN", "MODEL", "OUT", PredictConfig(formats=("nifti", "report")))

Options keep their meaning but take Python values: ``--format`` (predict, export) is
``formats``, ``--onnx`` is ``backend="onnx"``,
``--mesh-format stl`` is ``mesh_suffix=".stl"``, ``--shard 0/4`` is ``shard=(0, 4)``,
``--no-postprocess`` is ``postprocess=False``, ``--no-slice-filter`` ``slice_filter=False``. Where
a name differs: train's ``--iterations``, ``--lr`` and ``--budget-min`` are ``TrainingConfig``'s
``iterations_per_epoch``, ``learning_rate`` and ``time_budget_minutes``; ``--out`` (train,
predict) is ``out_dir``; plan's options are ``plan_dataset(overrides={...})`` keys (a ``--config``
file holds the same): ``--spacing X Y Z`` is ``"target_spacing": [Z, Y, X]`` (the plan's array
order, reversed from the command line's), ``--patch`` ``"patch_size"`` (Z Y X), ``--batch-size``
``"batch_size"``, ``--slab`` ``"slab_slices"``, ``--slab-step`` ``"slab_step"``, ``--network NAME``
``"network": {"name": NAME}``; evaluate's
``--nsd-tolerance``, ``--separator``, ``--allow-missing`` and ``--keep-going`` are
``EvaluationConfig``'s ``nsd_tolerance_mm``, ``separators``, ``on_missing="flag"`` and
``on_case_error="flag"``, and its ``--output`` DIR is ``write_report(result, DIR)``; convert's ``--description`` is ``series_description``; ``--uid-secret-file F``
(convert, predict, export) is ``uid_secret=`` its first line, stripped, and ``--pseudonym-map F``
``pseudonym=medseg.io.dicom.read_pseudonym_map(F)`` (a PatientID -> pseudonym dict); demo's
``--train-cases`` is ``run_demo(n_train=...)``. ``formats`` (and ``EvaluationConfig``'s
``metrics``) take a tuple or the CLI's comma-separated string. ``predict`` returns one result per case (a
failed case has ``ok=False``, and ``internal_error=True`` when it met a bug rather than bad
input, in a cohort; one case alone raises the bug; the CLI exits 1, or 3 for an internal error) and shows no progress bar unless
``progress=True``. A server that predicts many requests loads the model once with
``SegmentationModel(path)`` and passes it instead of the path.

``run_demo`` is the README's main job: the whole path on a synthetic phantom, offline.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import OutputExistsError
from medseg.evaluation import EvaluationConfig, compare, evaluate, write_comparison_report, write_report
from medseg.export.case import ExportConfig, export_label
from medseg.export.index import write_cohort_index
from medseg.geometry.roi import multiplane_roi
from medseg.inference.onnx import export_onnx
from medseg.inference.predictor import PredictConfig, SegmentationModel, predict
from medseg.inference.submission import predict_uwmadison_submission
from medseg.io import convert, read_volume, write_volume
from medseg.io.atomic import write_text_atomic
from medseg.preprocessing.pipeline import plan_dataset, preprocess_dataset
from medseg.training.config import TrainingConfig
from medseg.training.crossval import cross_validate, tune_postprocessing
from medseg.training.trainer import train

__all__ = [
    "DemoResult",
    "EvaluationConfig",
    "ExportConfig",
    "PredictConfig",
    "SegmentationModel",
    "TrainingConfig",
    "compare",
    "convert",
    "cross_validate",
    "evaluate",
    "export_label",
    "export_onnx",
    "multiplane_roi",
    "plan_dataset",
    "predict",
    "predict_uwmadison_submission",
    "preprocess_dataset",
    "read_volume",
    "run_demo",
    "train",
    "tune_postprocessing",
    "write_cohort_index",
    "write_comparison_report",
    "write_report",
    "write_volume",
]

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    out: Path
    dataset: Path
    model: Path
    predictions: Path
    evaluation: Path
    report: Path
    roi_json: Path
    dice: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    out: str | Path = "demo_output",
    *,
    minutes: float = 3.0,
    n_train: int = 10,
    overwrite: bool = False,
    progress: bool = False,
    say: Any = None,
    quick: bool = False,
) -> DemoResult:
    """Phantom dataset -> multi-plane ROI -> plan -> train -> predict a held-out case -> evaluate -> export.

    Everything is generated here (no downloads). ``minutes`` bounds the training time.
    ``say`` is called with one line per step (the CLI prints them). ``quick`` shrinks the
    phantom and the training to seconds (for tests); the numbers are then meaningless.
    """
    from medseg.data.phantom import write_phantom_dataset
    from medseg.evaluation import EvaluationConfig, evaluate, write_report
    from medseg.geometry.roi import write_roi
    from medseg.io import read_volume
    from medseg.io.dicom import write_dicom_series

    tell = say or (lambda msg: log.info("%s", msg))
    root = Path(out)
    if root.exists():
        if not overwrite:
            raise OutputExistsError(root)
        shutil.rmtree(root)
    root.mkdir(parents=True)
    times: dict[str, float] = {}
    t0 = time.monotonic()

    # 1. data
    dataset = write_phantom_dataset(
        root / "dataset", "prostate", n_train=n_train, n_test=2, seed=7, with_views=True, progress=progress
    )
    times["phantom"] = time.monotonic() - t0
    tell(
        f"1/7 wrote a synthetic prostate MR dataset ({n_train} training + 2 test cases, oblique, 0.5 x 0.5 x 3 mm) to {dataset}"
    )

    # 2. the exercise's multi-plane ROI on a test case's axial, sagittal and coronal views
    test_images = sorted((dataset / "imagesTs").glob("*_0000.nii.gz"))
    case = test_images[0].name[: -len("_0000.nii.gz")]
    views = dataset / "views"
    roi_files = write_roi(
        test_images[0],
        views / f"{case}_sagittal.nii.gz",
        views / f"{case}_coronal.nii.gz",
        root / "roi" / f"{case}_roi.nii.gz",
    )
    tell(
        f"2/7 multi-plane ROI of {case}: cropped axial volume {roi_files.volume_path}, "
        f"its box {roi_files.json_path}"
    )

    # 3. plan: the exercise's anisotropic spacing kept along z, a CPU-sized patch
    t = time.monotonic()
    plan, plan_file = plan_dataset(
        dataset,
        "3d",
        overrides=(
            {"target_spacing": [4.0, 1.4, 1.4], "patch_size": [8, 32, 32], "batch_size": 2}
            if quick
            else {
                "target_spacing": [3.0, 1.0, 1.0],
                "patch_size": [16, 64, 64],
                "batch_size": 2,
                "foreground_fraction": 0.5,
            }
        ),
        workers=2,
        progress=progress,
    )
    times["plan"] = time.monotonic() - t
    tell(
        f"3/7 planned: spacing z,y,x {plan.target_spacing} mm, patch {plan.patch_size}, pooling {list(plan.network.pooling)} -> {plan_file}"
    )

    # 4. train (all training cases, bounded by the time budget)
    t = time.monotonic()
    cfg = TrainingConfig(
        loss="dice_ce",
        epochs=2 if quick else 40,
        iterations_per_epoch=3 if quick else 25,
        learning_rate=2e-3,
        num_workers=0 if quick else 1,
        time_budget_minutes=minutes,
        augmentation={"affine_prob": 0.2, "elastic_prob": 0.0},
    )
    result = train(dataset, None, config=cfg, workers=2, progress=progress)
    times["train"] = time.monotonic() - t
    tell(
        f"4/7 trained a 3D U-Net for {result.epochs_completed} epoch{'' if result.epochs_completed == 1 else 's'} "
        f"in {times['train']:.0f} s -> {result.model_dir}"
    )

    # 5. predict the held-out cases: NIfTI folder for scoring, and one case from DICOM with every output
    t = time.monotonic()
    preds = root / "predictions"
    predict(dataset / "imagesTs", result.model_dir, preds, PredictConfig(formats=("nifti",)))
    dicom_in = root / "dicom_input" / case
    image = read_volume(test_images[0])
    write_dicom_series(image, dicom_in, modality="MR", series_description="phantom T2 tra")
    outputs = root / "outputs"
    formats = ("nifti", "dicom-seg", "rtstruct", "mesh", "volumes", "overlay", "report")
    res = predict(dicom_in, result.model_dir, outputs, PredictConfig(formats=formats))
    times["predict"] = time.monotonic() - t
    if not res[0].ok:
        raise RuntimeError(f"demo prediction failed: {res[0].error}")
    tell(f"5/7 predicted {case} from a DICOM series; outputs: {', '.join(formats)} in {outputs / case}")

    # 6. evaluate against the phantom's ground truth
    t = time.monotonic()
    names = {v: k for k, v in plan.labels.items() if v != 0}
    evaluation = evaluate(preds, dataset / "labelsTs", EvaluationConfig(labels=names, workers=1))
    # the overlays over each case's image (imagesTs holds CASE_0000.nii.gz, matched by name)
    report_files = write_report(evaluation, root / "evaluation", overwrite=True, image=dataset / "imagesTs")
    summary = evaluation.summary()
    times["evaluate"] = time.monotonic() - t
    dice = _mean_dice(summary, names)
    tell("6/7 Dice on the held-out phantom cases: " + ", ".join(f"{n} {d:.3f}" for n, d in dice.items()))
    report = outputs / case / "report.html"
    tell(f"7/7 case report: {report}   evaluation report: {report_files.report_html}")
    times["total"] = time.monotonic() - t0
    write_text_atomic(
        root / "demo_summary.json",
        json.dumps({"dice": dice, "seconds": times}, indent=2) + "\n",
        overwrite=True,
    )
    return DemoResult(
        root,
        dataset,
        result.model_dir,
        preds,
        report_files.report_html,
        report,
        roi_files.json_path,
        dice,
        times,
    )


def _mean_dice(summary: dict[str, Any], names: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    per_class = summary.get("per_class", {})
    for name in names.values():
        entry = per_class.get(name, {}).get("dice", {})
        value = entry.get("mean") if isinstance(entry, dict) else None
        if value is not None:
            out[name] = float(value)
    return out
