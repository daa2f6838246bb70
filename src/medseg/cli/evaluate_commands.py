"""Evaluation commands: ``medseg evaluate`` (scores and report) and ``medseg baseline``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from medseg.cli.common import app, cli_command, console, number_list_command, number_values
from medseg.errors import ConfigError

_METHODS = ("threshold", "otsu", "region-grow", "watershed", "kmeans")
_TABLE_METRICS = ("dice", "hd95", "assd", "nsd", "iou", "hd", "uw")


@app.command("evaluate")
@cli_command
def evaluate_command(
    prediction: list[str] = typer.Argument(
        ...,
        show_default=False,
        help="Predicted label map, or a folder of them (matched by case name). Several compare "
        "methods in one table, e.g. 'evaluate otsu/ watershed/ unet=runs/3d/pred/ labelsTs/': a "
        "method is named after its folder (or file) unless given as NAME=PATH; the first is the "
        "baseline of the paired test.",
    ),
    reference: Path = typer.Argument(..., help="Reference label map, or a folder of them (always last)."),
    image: Path | None = typer.Option(
        None,
        "--image",
        help="With -o: the image the report's overlays are drawn on (a file, or a folder whose "
        "files are named like the references, NAME or nnU-Net's NAME_0000). Without it the "
        "overlays show the label maps alone.",
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Declared foreground labels: '1,2,3' or 'liver=1,spleen=4'. Default: all values in the references.",
    ),
    metrics: str = typer.Option(
        "all",
        "--metrics",
        help="Comma-separated, no spaces: dice, iou, miou, precision, recall, specificity, hd, hd95, "
        "assd, nsd, rvd, uw (UW-Madison score: 0.4 Dice + 0.6 (1 - HD / grid diagonal), in voxel units as the competition) or 'all'; "
        "object metrics obj_recall, obj_precision, obj_f1 (or 'objects') and are (adapted Rand error, "
        "needs --separator). E.g. 'all,objects'.",
    ),
    separator: str | None = typer.Option(
        None,
        "--separator",
        help="Label(s) that draw borders between objects, such as cell membranes (value or name): "
        "their object metrics count the regions they enclose.",
    ),
    object_iou: float | None = typer.Option(
        None,
        "--object-iou",
        help="IoU above which a predicted and a reference object match. Default: 0 (any overlap) "
        "for objects of a class, 0.5 for regions between separators.",
    ),
    resample: bool = typer.Option(
        False,
        "--resample",
        help="Resample predictions on another grid onto the reference (nearest neighbour).",
    ),
    empty: str = typer.Option(
        "nan", "--empty", help="Undefined values when one mask is empty: 'nan' (flagged) or 'worst'."
    ),
    nsd_tolerance: float = typer.Option(
        2.0, "--nsd-tolerance", help="Normalised surface Dice tolerance (mm)."
    ),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Score references without a prediction as empty predictions (flagged; with several "
        "methods, a failure of that method, so every method is scored on the same cases).",
    ),
    ignore_other_labels: bool = typer.Option(
        False,
        "--ignore-other-labels",
        help="With --labels: values not declared count as background in both label maps, "
        "instead of being an error (score one organ of a multi-organ reference: --labels spleen=4).",
    ),
    keep_going: bool = typer.Option(
        False,
        "--keep-going",
        help="Record a bad case (NaN, undeclared label, grid mismatch) as a failed row.",
    ),
    workers: int | None = typer.Option(None, "--workers", help="Processes (default: one per CPU)."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Folder for cases.csv, summary.json, plots/, overlays/ (reference vs prediction contours per "
        "case, the worst and best 3 when more than 6) and report.html (+ objects.csv with object metrics).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    regions: str | None = typer.Option(
        None,
        "--regions",
        help="Also a Dice per region (region-based models): 'large_bowel=1+3,small_bowel=2+3', or a "
        "dataset.json / model folder declaring them. Default: the dataset.json above a labelsTr/ or "
        "labelsTs/ reference.",
    ),
) -> None:
    """Score predictions against references: Dice, IoU, distances in mm, and a report.

    Several predictions before the reference compare methods: one table with a row per method and class, per-case rows with a 'method' column, a Wilcoxon signed-rank test of each method's Dice against the first's (Dice from the voxel counts, whatever --metrics asks for). Every method is scored on every reference case: a missing prediction is an error, or with --allow-missing a failure (scored empty).

    Predictions of a dataset imported with --chunk are per chunk: for per-scan scores, run 'medseg dataset stitch' on the predictions and on the labels first.
    """
    from medseg.evaluation import (
        EvaluationConfig,
        compare,
        evaluate,
        match_cases,
        match_images,
        parse_labels,
        parse_methods,
        write_comparison_report,
        write_report,
    )
    from medseg.evaluation.metrics import MM_METRICS

    methods = parse_methods(prediction)
    first = next(iter(methods.values()))
    if image is not None and output is None:
        raise ConfigError("--image is what the report's overlays are drawn on: give -o/--output too")
    if output is not None:
        for given in (*methods.values(), reference):  # --overwrite replaces the whole output folder
            if output.resolve() == given.resolve() or output.resolve() in given.resolve().parents:
                raise ConfigError(f"{output}: the output folder would replace the input {given}")
    if output is not None and output.exists() and not output.is_dir():
        from medseg.errors import InputError

        raise InputError(  # before the work, not after (the report folder never replaces a file)
            output, "is a file, not an output folder", expected="a folder", found="a file"
        )
    if output is not None and output.exists() and not overwrite:
        from medseg.errors import OutputExistsError

        raise OutputExistsError(output)  # before the work, not after
    if empty not in ("nan", "worst"):
        raise ConfigError(f"--empty must be 'nan' or 'worst', found '{empty}'")
    names = tuple(metrics.split(","))  # groups such as 'all' and 'objects' expand in the config
    declared = parse_labels(labels)
    class_names = None if declared is not None else _dataset_label_names(reference)
    region_map, region_labels = _parse_regions(regions) if regions is not None else (None, None)
    if region_map is None:
        region_map = _dataset_regions(reference)
    if declared is None and class_names is None and region_labels:
        # --regions MODEL_OR_DATASET_JSON: its labels name the classes (and the regions' values
        # are checked against them, not against the values these references happen to hold).
        class_names = region_labels
    config = EvaluationConfig(
        labels=declared,
        label_names=class_names,
        regions=region_map,
        separators=_separator_values(separator, declared or class_names),
        object_iou=object_iou,
        metrics=names,
        empty="nan" if empty == "nan" else "worst",
        nsd_tolerance_mm=nsd_tolerance,
        resample=resample,
        on_missing="flag" if allow_missing else "error",
        on_case_error="flag" if keep_going else "raise",
        workers=workers,
        ignore_other_labels=ignore_other_labels,
    )
    if image is not None:  # before the work: every reference case needs its image
        match_images(image, [pair.name for pair in match_cases(first, reference).pairs])
    if len(methods) > 1:
        comparison = compare(methods, reference, config, progress=True)
        _print_comparison(comparison)
        if output is not None:
            files = write_comparison_report(comparison, output, overwrite=overwrite, image=image)
            _print_written(files)
        else:
            console.print(NOTHING_WRITTEN)
        return
    result = evaluate(first, reference, config, progress=True)
    summary = result.summary()
    shown = _shown_metrics(config)
    table = Table(title=f"{summary['n_scored']} of {summary['n_cases']} cases scored (mean ± SD, median)")
    table.add_column("class")
    for m in shown:
        header = m.replace("obj_", "objects ") + (" (mm)" if m in MM_METRICS else "")
        table.add_column(header, justify="right", overflow="fold")
    for cname, stats in summary["per_class"].items():
        table.add_row(cname, *[_cell(stats[m], m) for m in shown])
    console.print(table)
    for rname, stats in summary.get("per_region", {}).items():
        console.print(
            f"region {rname} (labels {stats['labels']}): Dice {_cell(stats['dice'], 'dice')}",
            markup=False,
            soft_wrap=True,
        )
    for cname, stats in summary["per_class"].items() if config.object_metrics else ():
        t = stats["objects"]
        console.print(
            f"{cname}: {t['found']} of {t['reference']} reference objects found, "
            f"{t['unmatched']} of {t['predicted']} predicted objects unmatched",
            markup=False,
            soft_wrap=True,
        )
    if "miou" in summary["case_level"]:
        console.print(f"mIoU (background included): {_miou_text(summary['case_level'])}", soft_wrap=True)
    for what, items in (
        ("missing predictions (scored empty)", summary["missing_predictions"]),
        ("failed cases", list(summary["failed_cases"])),
        ("resampled", summary["resampled_cases"]),
        ("predictions without reference (not scored)", summary["predictions_without_reference"]),
    ):
        if items:
            console.print(f"{what}: {', '.join(items)}", markup=False, soft_wrap=True)
    flagged = sum(1 for r in result.rows() if r["flags"])
    if flagged:
        console.print(f"{flagged} case(s) with empty-mask rules applied (see the 'flags' column)")
    if output is not None:
        _print_written(write_report(result, output, overwrite=overwrite, image=image))
    else:
        console.print(NOTHING_WRITTEN)


NOTHING_WRITTEN = "nothing written: -o DIR keeps the per-case table, summary.json, plots and an HTML report"


def _print_written(files: Any) -> None:
    console.print(
        f"wrote {files.folder}/ ({files.cases_csv.name}, {files.summary_json.name}, "
        + (f"{files.objects_csv.name}, " if files.objects_csv else "")
        + f"{files.report_html.name}, {len(files.plots)} plots, {len(files.overlays)} overlays)",
        markup=False,
        soft_wrap=True,
    )


def _shown_metrics(config: Any) -> list[str]:
    """At most 6 columns so the table fits a terminal; every metric is in summary.json / -o."""
    voxel = [m for m in _TABLE_METRICS if m in config.metrics]
    return voxel[: 2 if config.object_metrics else 5] + list(config.object_metrics)


def _print_comparison(comparison: Any) -> None:
    """Methods as rows, grouped by class; the paired test's p against the first method."""
    from medseg.evaluation.metrics import MM_METRICS

    summary = comparison.summary()
    methods = comparison.methods
    shown = _shown_metrics(comparison.config)[:4]  # two name columns and p take the rest
    tests = {(t["label"], t["method"]): t for t in summary["paired_tests"]}
    missing = any(info["missing_predictions"] for info in summary["per_method"].values())
    table = Table(
        title=f"{len(methods)} methods, {summary['n_cases']} reference cases (mean ± SD, median)",
        # Only when it applied: cases without a prediction count as failures (--allow-missing).
        caption="cases without a prediction are scored as empty predictions, a failure of that "
        "method (--allow-missing); listed below"
        if missing
        else None,
    )
    table.add_column("class")
    table.add_column("method")
    for m in shown:
        header = m.replace("obj_", "objects ") + (" (mm)" if m in MM_METRICS else "")
        table.add_column(header, justify="right", overflow="fold")
    if tests:
        table.add_column(f"p vs {methods[0]} (Dice) (Holm p)", justify="right")
    for lab, cname in comparison.labels.items():
        for i, method in enumerate(methods):
            stats = summary["per_method"][method]["per_class"][cname]
            cells = [_cell(stats[m], m) for m in shown]
            if tests:
                t = tests.get((lab, method))
                cells.append(
                    ""
                    if t is None
                    else "–"
                    if t["p_value"] is None
                    else f"{t['p_value']:.3g} ({t['p_holm']:.3g})"
                )
            table.add_row(cname if i == 0 else "", method, *cells, end_section=i == len(methods) - 1)
    console.print(table)
    for method, info in summary["per_method"].items():
        line = f"{method}: {info['n_scored']} of {summary['n_cases']} cases scored"
        if "miou" in info["case_level"]:
            line += f"; mIoU (background included) {_miou_text(info['case_level'])}"
        console.print(line, markup=False, soft_wrap=True)
        for what, items in (
            ("missing predictions (scored empty, a failure)", info["missing_predictions"]),
            ("failed cases (not scored)", list(info["failed_cases"])),
            ("resampled", info["resampled_cases"]),
            ("predictions without reference (not scored)", info["predictions_without_reference"]),
        ):
            if items:
                console.print(f"  {what}: {', '.join(items)}", markup=False, soft_wrap=True)
    noted = [t for t in tests.values() if t["note"]]
    if noted and len(noted) == len(tests) > 1 and len({t["note"] for t in noted}) == 1:
        # One image (a lecturer's) or a handful: the same note for every test, said once.
        console.print(
            f"paired test, every method and class: {noted[0]['note']}", markup=False, soft_wrap=True
        )
    elif noted:
        notes = [f"{t['method']} / {comparison.labels[t['label']]}: {t['note']}" for t in noted]
        console.print("paired test: " + "; ".join(notes), markup=False, soft_wrap=True)
    family = sum(1 for t in tests.values() if t["p_value"] is not None)
    if family > 1:
        console.print(
            f"(Holm p): each p adjusted by Holm-Bonferroni over the table's {family} paired tests that have one",
            markup=False,
            soft_wrap=True,
        )


def _dataset_label_names(reference: Path) -> dict[int, str] | None:
    """Class names from the dataset.json above a labelsTr/ or labelsTs/ reference folder."""
    from medseg.data.dataset import DATASET_JSON, read_descriptor
    from medseg.errors import InputError

    folder = reference if reference.is_dir() else reference.parent
    if not folder.resolve().name.lower().startswith("labels"):  # labelsTr/, labelsTs/ only
        return None
    root = folder.resolve().parent
    if not (root / DATASET_JSON).is_file():
        return None
    try:
        descriptor = read_descriptor(root)
    except InputError as exc:
        console.print(f"class names not read: {exc}", markup=False, soft_wrap=True)
        return None
    console.print(f"class names from {root / DATASET_JSON}", markup=False, soft_wrap=True)
    return {v: k for k, v in descriptor.foreground_labels.items()}


def _parse_regions(spec: str) -> tuple[dict[str, tuple[int, ...]], dict[int, str] | None]:
    """``--regions``: 'name=1+3,other=2+3', or a dataset.json / plan.json / model folder.

    Returns the regions and, when a file declared them, its foreground labels (value -> name);
    the values of regions given as text are checked by EvaluationConfig / evaluate against
    --labels, the dataset's labels or the values the references hold.
    """
    from medseg.data.dataset import DATASET_JSON, read_descriptor
    from medseg.errors import InputError

    path = Path(spec)
    if path.exists():
        if path.is_dir() and (path / "plan.json").is_file():  # a model folder
            from medseg.preprocessing.plan import Plan

            plan = Plan.load(path / "plan.json")
            found = dict(plan.regions)
            declared = {int(v): str(k) for k, v in plan.labels.items() if int(v) != 0}
            source = path / "plan.json"
        else:
            root = path if path.is_dir() else path.parent
            if path.is_file() and path.name != DATASET_JSON:
                raise InputError(path, "is not a dataset.json", expected="a dataset.json or a model folder")
            descriptor = read_descriptor(root)
            found = dict(descriptor.regions)
            declared = {int(v): str(k) for k, v in descriptor.foreground_labels.items()}
            source = root / DATASET_JSON
        if not found:
            raise InputError(source, "declares no regions", expected='"regions": {"name": [label values]}')
        console.print(f"region Dice for the regions of {source}", markup=False, soft_wrap=True)
        return {str(k): tuple(int(v) for v in vals) for k, vals in found.items()}, declared
    out: dict[str, tuple[int, ...]] = {}
    for item in spec.split(","):
        name, sep, values = item.partition("=")
        try:
            parsed = tuple(int(v) for v in values.split("+")) if sep else ()
        except ValueError:
            parsed = ()
        if not name.strip() or not parsed or min(parsed) <= 0:
            raise ConfigError(
                f"--regions: cannot read {item!r}; expected name=label values joined by '+', e.g. "
                "'large_bowel=1+3,small_bowel=2+3', or a dataset.json / model folder"
            )
        out[name.strip()] = parsed
    return out, None


def _dataset_regions(reference: Path) -> dict[str, tuple[int, ...]] | None:
    """Regions declared by the dataset.json above a labelsTr/ or labelsTs/ reference folder."""
    from medseg.data.dataset import DATASET_JSON, read_descriptor
    from medseg.errors import InputError

    folder = reference if reference.is_dir() else reference.parent
    root = folder.resolve().parent
    if not folder.resolve().name.lower().startswith("labels") or not (root / DATASET_JSON).is_file():
        return None
    try:
        regions = read_descriptor(root).regions
    except InputError:
        return None  # _dataset_label_names has said why
    if regions:
        console.print(f"region Dice for the regions of {root / DATASET_JSON}", markup=False, soft_wrap=True)
    return regions or None


def _separator_values(spec: str | None, declared: dict[int, str] | None) -> tuple[int, ...]:
    """``--separator 1`` or ``--separator membrane`` (a name from --labels or dataset.json)."""
    if not spec:
        return ()
    by_name = {name: value for value, name in (declared or {}).items()}
    out: list[int] = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        if item in by_name:
            out.append(by_name[item])
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError(
                f"--separator '{item}' is neither a label value nor a class name "
                f"({', '.join(by_name) or 'none known: declare them with --labels, e.g. membrane=1'})"
            ) from None
    return tuple(out)


def _miou_text(case_level: dict[str, Any]) -> str:
    """The per-case mIoU (mean ± SD (median) over cases) and the pooled one (one confusion
    matrix summed over all cases), each named."""
    text = f"per-case mean {_cell(case_level['miou'], 'miou')}"
    pooled = case_level.get("miou_pooled", {}).get("value")
    if pooled is not None:
        text += f", pooled over all cases (miou_pooled) {pooled:.3f}"
    return text


def _cell(stats: dict[str, float | int | None], metric: str) -> str:
    from medseg.evaluation.metrics import MM_METRICS

    mean, std, median = stats["mean"], stats["std"], stats["median"]
    if mean is None:
        return "–"
    fmt = "{:.3f}"
    if metric in MM_METRICS:  # 2 decimals of a mm, or 3 significant digits at microscopy scale
        fmt = "{:.3g}" if 0 < abs(float(mean)) < 1 else "{:.2f}"
    sd = fmt.format(std) if std is not None else "–"
    return f"{fmt.format(mean)} ± {sd} ({fmt.format(median)})"


@app.command("baseline", cls=number_list_command("--seed", "--seed-world"))
@cli_command
def baseline_command(
    method: str = typer.Argument(..., help="One of: threshold, otsu, region-grow, watershed, kmeans."),
    image: Path = typer.Argument(
        ..., help="Input image (NIfTI/NRRD/MHA/PNG/TIFF file or DICOM series folder)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Output label map (.nii.gz, .nrrd, .mha)."),
    threshold: float | None = typer.Option(None, "--threshold", help="threshold: lower bound (value >= T)."),
    upper: float | None = typer.Option(None, "--upper", help="threshold / region-grow: upper bound."),
    lower: float | None = typer.Option(
        None, "--lower", help="region-grow (connected) / watershed: lower bound."
    ),
    high: float | None = typer.Option(None, "--high", help="watershed: object marker above this value."),
    seed: list[str] | None = typer.Option(
        None,
        "--seed",
        help="Seed voxel Z Y X (array indices, 0-based, as the overlay titles show; "
        "Y X for a 2D image; repeatable), e.g. --seed 12 80 95 (quoted '12 80 95' works too).",
    ),
    seed_world: list[str] | None = typer.Option(
        None,
        "--seed-world",
        help="Seed point X Y Z in LPS mm, as DICOM and ITK (3D Slicer shows RAS: negate X and Y; "
        "repeatable), e.g. --seed-world -12.5 30 4.",
    ),
    seed_mask: Path | None = typer.Option(
        None, "--seed-mask", help="Label map whose non-zero voxels are seeds."
    ),
    classes: int | None = typer.Option(
        None, "--classes", help="otsu (default 2) / kmeans (default 3): classes."
    ),
    grow: str = typer.Option("confidence", "--grow", help="region-grow: 'confidence' or 'connected'."),
    multiplier: float | None = typer.Option(
        None, "--multiplier", help="region-grow: mean ± multiplier × std (default 2.0)."
    ),
    iterations: int | None = typer.Option(
        None, "--iterations", help="region-grow (confidence; default 1) / kmeans (default 50) iterations."
    ),
    radius: int | None = typer.Option(
        None, "--radius", help="region-grow: seed neighbourhood radius in voxels (default 2)."
    ),
    sigma: float | None = typer.Option(
        None,
        "--sigma",
        help="watershed: gradient smoothing sigma in mm (default: the smallest voxel spacing).",
    ),
    label: int | None = typer.Option(
        None,
        "--label",
        help="Value of the result's voxels (e.g. the organ's label in the reference); default 1.",
    ),
    keep_class: int | None = typer.Option(
        None,
        "--keep-class",
        help="otsu / kmeans: keep only this class (0 = darkest, e.g. 0 for dark membranes) as --label.",
    ),
    series: str | None = typer.Option(
        None,
        "--series",
        "-s",
        help="DICOM folder with several series: pick one (index, UID, description or pattern, "
        "e.g. 't2_tse_tra*@last').",
    ),
    spacing: tuple[float, float, float] | None = typer.Option(
        None,
        "--spacing",
        metavar="Z Y X",
        help="Voxel spacing in mm of a PNG/TIFF image, which carries none.",
        parser=number_values("--spacing", "Z Y X", "3 0.5 0.5"),
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Run a classical baseline (threshold, Otsu, region growing, watershed, k-means) on the input grid."""
    import json

    import medseg
    from medseg import classical
    from medseg.io import read_volume, sidecar_path, write_volume
    from medseg.io.atomic import check_writable, write_text_atomic

    if method not in _METHODS:
        raise ConfigError(f"unknown baseline '{method}'; expected one of {', '.join(_METHODS)}")
    if output.exists() and not overwrite:
        from medseg.errors import OutputExistsError

        raise OutputExistsError(output)
    given = {
        "--threshold": threshold is not None,
        "--upper": upper is not None,
        "--lower": lower is not None,
        "--high": high is not None,
        "--seed": bool(seed),
        "--seed-world": bool(seed_world),
        "--seed-mask": seed_mask is not None,
        "--classes": classes is not None,
        "--grow": grow != "confidence",
        "--multiplier": multiplier is not None,
        "--iterations": iterations is not None,
        "--radius": radius is not None,
        "--sigma": sigma is not None,
        "--keep-class": keep_class is not None,
    }
    _check_options(method, [name for name, on in given.items() if on])
    if classes is not None and classes < 2:
        raise ConfigError(f"--classes must be at least 2, found {classes}")
    volume = read_volume(image, series=series, spacing=spacing)
    seeds = [_seed(s, volume.shape) for s in seed or []]
    seeds_world = [_triple(s, "--seed-world", float) for s in seed_world or []]
    mask_vol = read_volume(seed_mask) if seed_mask is not None else None
    if seeds or seeds_world:
        _check_seeds(volume, image, seeds, seeds_world)
    if method == "threshold":
        if threshold is None and upper is None:
            raise ConfigError(
                "threshold needs a bound: --threshold T (keeps values >= T), --upper U (values <= U) "
                f"or both; {image} holds values {float(np.nanmin(volume.array)):.6g} .. "
                f"{float(np.nanmax(volume.array)):.6g}"
            )
        result = classical.threshold(volume, threshold, upper)
    elif method == "otsu":
        result = classical.otsu(volume, 2 if classes is None else classes)
    elif method == "kmeans":
        result = classical.kmeans(
            volume, 3 if classes is None else classes, iterations=50 if iterations is None else iterations
        )
    elif method == "region-grow":
        from medseg.classical import region_growing as grow_defaults

        if grow not in ("confidence", "connected"):
            raise ConfigError(f"--grow must be 'confidence' or 'connected', found '{grow}'")
        result = classical.region_grow(
            volume,
            seeds,
            seeds_world=seeds_world,
            seed_mask=mask_vol,
            method="confidence" if grow == "confidence" else "connected",
            lower=lower,
            upper=upper,
            multiplier=grow_defaults.DEFAULT_MULTIPLIER if multiplier is None else multiplier,
            iterations=grow_defaults.DEFAULT_ITERATIONS if iterations is None else iterations,
            radius=grow_defaults.DEFAULT_RADIUS if radius is None else radius,
        )
    else:
        result = classical.watershed(
            volume,
            markers=mask_vol,
            seeds=seeds,
            seeds_world=seeds_world,
            low=lower,
            high=high,
            sigma_mm=min(volume.spacing) if sigma is None else sigma,
        )
    result = _relabel(result, label, keep_class)
    params = result.meta.get("baseline", {})
    record = sidecar_path(output, ".baseline.json")
    check_writable(record, overwrite)
    write_volume(result, output, overwrite=overwrite)
    # How the result was made, for a report or a class handout: method and every parameter
    # (the defaults included), no input path (file names may carry patient names).
    document = {"medseg_version": medseg.__version__, "output": output.name, **params}
    write_text_atomic(record, json.dumps(document, indent=2, default=_short) + "\n", overwrite=overwrite)
    console.print(
        "baseline " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()), markup=False, soft_wrap=True
    )
    table = Table()
    table.add_column("label", justify="right")
    table.add_column("voxels", justify="right")
    table.add_column("volume (mL)", justify="right")
    values, counts = np.unique(result.array, return_counts=True)
    ml = result.geometry.voxel_volume_mm3 / 1000.0
    for v, c in zip(values, counts, strict=True):
        table.add_row(str(int(v)), str(int(c)), f"{c * ml:.1f}")
    console.print(table)
    foreground = float(np.count_nonzero(result.array)) / max(result.array.size, 1)
    if foreground == 0:
        console.print(
            "[yellow]warning:[/] the result is empty: no voxel met the criterion (check the bounds "
            "against the value range `medseg info` shows)",
            soft_wrap=True,
        )
    elif (foreground > 0.95 and method in ("threshold", "watershed")) or (
        foreground > 0.5 and method == "region-grow"
    ):
        # A region grown from seeds inside one structure rarely fills half the image: it leaked
        # (a liver seed of a CHAOS MR filled 90% with the defaults, unwarned at 95%).
        console.print(
            f"[yellow]warning:[/] the result covers {foreground:.0%} of the image: the bounds or "
            "the seed's statistics probably let everything in"
            + (
                " (try a smaller --multiplier, or --grow connected with --lower/--upper)"
                if method == "region-grow"
                else ""
            ),
            soft_wrap=True,
        )
    console.print(
        f"wrote {output} and {record.name} (the method and its parameters)", markup=False, soft_wrap=True
    )


# Options each method reads (the others would be ignored silently, so they are refused).
_METHOD_OPTIONS = {
    "threshold": {"--threshold", "--upper"},
    "otsu": {"--classes", "--keep-class"},
    "kmeans": {"--classes", "--iterations", "--keep-class"},
    "region-grow": {
        "--seed", "--seed-world", "--seed-mask", "--grow", "--lower", "--upper",
        "--multiplier", "--iterations", "--radius",
    },
    "watershed": {"--seed", "--seed-world", "--seed-mask", "--lower", "--high", "--sigma"},
}  # fmt: skip


def _check_options(method: str, given: Sequence[str]) -> None:
    unused = [name for name in given if name not in _METHOD_OPTIONS.get(method, set())]
    if unused:
        hint = " (its lower bound is --threshold)" if method == "threshold" and "--lower" in unused else ""
        raise ConfigError(
            f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to {method}{hint}; "
            f"it takes {', '.join(sorted(_METHOD_OPTIONS[method]))}"
        )


def _check_seeds(
    volume: Any, image: Path, seeds: Sequence[Sequence[int]], seeds_world: Sequence[Sequence[float]]
) -> None:
    """A seed outside the image is an error naming the image (the library's names no file)."""
    from medseg.classical.seeds import seed_indices
    from medseg.errors import InputError

    try:
        seed_indices(volume, seeds, seeds_world=seeds_world)
    except InputError as exc:
        raise InputError(image, exc.problem, expected=exc.expected, found=exc.found) from None


def _relabel(result: Any, label: int | None, keep_class: int | None) -> Any:
    """``--keep-class`` picks one class of a multi-class result; ``--label`` sets the value."""
    arr = result.array
    value = 1 if label is None else label
    if not 1 <= value <= 255:
        raise ConfigError(f"--label must be in 1..255, found {value}")
    if keep_class is not None:
        present = sorted(int(v) for v in np.unique(arr))
        if keep_class not in present:
            raise ConfigError(f"--keep-class {keep_class} is not among the result's classes {present}")
        return result.with_array(np.where(arr == keep_class, value, 0).astype(np.uint8))
    if label is None:
        return result
    if len(np.unique(arr[arr != 0])) > 1:
        raise ConfigError("--label sets the value of a one-label result; pick one class with --keep-class")
    return result.with_array(np.where(arr != 0, value, 0).astype(np.uint8))


def _seed(text: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """'Z Y X', or 'Y X' for a 2D image (one slice)."""
    parts = text.replace(",", " ").split()
    if len(parts) == 2 and shape[0] == 1:
        text = f"0 {parts[0]} {parts[1]}"
    return _triple(text, "--seed", int)


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _triple(text: str, option: str, kind: type) -> tuple:
    parts = text.replace(",", " ").split()
    try:
        if len(parts) != 3:
            raise ValueError
        return tuple(kind(p) for p in parts)
    except ValueError:
        shown = " ".join(text.replace(",", " ").split())  # as typed: the CLI joined the numbers with commas
        raise ConfigError(f"{option} needs three numbers, e.g. {option} 12 80 95; found '{shown}'") from None
