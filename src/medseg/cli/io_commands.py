"""``medseg info`` and ``medseg convert``: look at an image and change its format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from medseg.cli.common import (
    DeidentifyOpt,
    PseudonymMapOpt,
    PseudonymOpt,
    UidSecretFileOpt,
    UidSecretOpt,
    app,
    cli_command,
    console,
    deidentify_notes,
    number_values,
    pseudonym_from,
    uid_secret_from,
)
from medseg.errors import InputError, MedsegError
from medseg.volume import Volume

SERIES_HELP = (
    "DICOM folder with several series: pick one by the '#' column of `medseg info` (not the "
    "series number 'No.'), its UID or its description (case-insensitive; shell wildcards such as "
    "'t2_tse_tra*'). A description matching several series (a repeated sequence) needs a rule: "
    "'t2_tse_tra*@last' takes the latest acquired (by SeriesDate/SeriesTime, else AcquisitionTime, else SeriesNumber), '@first' the earliest."
)
VOLUME_HELP = (
    "DICOM series holding several volumes at the same positions (b-values, echoes): pick one (0-based)."
)
SPACING_HELP = "Voxel spacing Z Y X in mm for PNG/TIFF input (required for a stack of slices)."


def volume_summary(volume: Volume) -> dict[str, Any]:
    """Facts about a volume for ``medseg info`` (JSON-ready; no patient data)."""
    g = volume.geometry
    arr = volume.array
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    lo = float(finite.min()) if finite.size else None
    hi = float(finite.max()) if finite.size else None
    meta = {k: v for k, v in volume.meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return {
        "shape_zyx": list(g.shape),
        "spacing_zyx_mm": list(g.spacing),
        "orientation": g.orientation,
        "obliquity_deg": round(g.obliquity, 4),
        "direction_zyx_columns": g.direction.tolist(),
        "origin_lps_mm": list(g.origin),
        "dtype": str(arr.dtype),
        "min": lo,
        "max": hi,
        "meta": meta,
    }


def _fmt(values: Any, digits: int = 6) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


def _series_table(series: list[dict[str, Any]], with_uid: bool = True) -> Table:
    """The series list; without ``with_uid`` (narrow terminals) UIDs are printed below it."""
    table = Table(title="DICOM series", title_justify="left")
    columns = ["#", "Description", "Mod.", "No.", "Time", "Files", "Slices", "Vols", "Rows x Cols"]
    for name in [*columns, "Series UID"] if with_uid else columns:
        table.add_column(name, overflow="fold", min_width=12 if name == "Description" else None)
    for i, s in enumerate(series):
        row = [
            str(i),
            escape(s["description"]),
            s["modality"],
            "" if s["series_number"] is None else str(s["series_number"]),
            s.get("acquisition_time") or "",
            str(s["n_files"]),
            str(s["n_frames"]),
            str(s["n_volumes"]) + (f" ({s['orientations']} planes)" if s["orientations"] > 1 else ""),
            f"{s['rows']} x {s['cols']}",
        ]
        table.add_row(*row, _uid_text(s["series_uid"])) if with_uid else table.add_row(*row)
    return table


def _uid_text(uid: str) -> str:
    # TotalSegmentator's example CT DICOM: an anonymiser left the UIDs empty
    return uid or "(empty SeriesInstanceUID: blanked by an anonymiser?)"


def _volume_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Volume", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    direction = np.asarray(summary["direction_zyx_columns"])
    oblique = f", oblique {summary['obliquity_deg']:.1f} degrees" if summary["obliquity_deg"] > 0.05 else ""
    table.add_row("shape (z, y, x)", " x ".join(str(s) for s in summary["shape_zyx"]))
    table.add_row("spacing (z, y, x) mm", _fmt(summary["spacing_zyx_mm"]))
    table.add_row("orientation", f"{summary['orientation']} (x, y, z axes point to){oblique}")
    table.add_row(
        "direction (LPS)",
        "; ".join(f"{axis}: {_fmt(direction[:, i], 5)}" for i, axis in enumerate(("z", "y", "x"))),
    )
    table.add_row("origin (LPS mm, voxel [0,0,0])", _fmt(summary["origin_lps_mm"]))
    table.add_row("dtype", summary["dtype"])
    if summary["min"] is not None:
        table.add_row("value range", f"{summary['min']:.6g} .. {summary['max']:.6g}")
    for key in ("modality", "series_description", "volume"):
        if summary["meta"].get(key):
            table.add_row(key.replace("_", " "), str(summary["meta"][key]))
    return table


def gather_info(
    path: Path,
    *,
    series: str | None = None,
    volume: int | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """What ``medseg info`` reports, as a dict (the DICOM series table and/or the volume, or a
    model folder's summary)."""
    from medseg.io import describe_path, read_volume
    from medseg.training.checkpoint import model_folder_summary

    model = model_folder_summary(path)
    if model is not None:
        return {"path": str(path), "kind": "model", "model": model}
    if path.is_dir() and (path / "dataset.json").is_file():
        # Else reported as a folder without DICOM files, which a dataset is not meant to be.
        raise InputError(
            path,
            "is a dataset folder (dataset.json), not one image or model",
            expected=f"an image, a DICOM series folder or a model folder, e.g. a file in {path / 'imagesTr'} "
            f"or {path / 'models' / '3d'}; `medseg dataset check {path}` validates the dataset",
        )

    kind = describe_path(path)
    report: dict[str, Any] = {"path": str(path), "kind": kind}
    if kind == "dicom-folder":
        from medseg.io.dicom import inspect_folder

        infos, loaded, problem = inspect_folder(path, series, volume=volume)
        report["series"] = [i.to_dict() for i in infos]
        picked = [i for i in infos if i.n_volumes > 1 and i.orientations == 1]
        if problem is not None and volume is None and len(infos) == 1 and picked:
            # Several volumes in one series (b-values, echoes) is what info is asked to show,
            # not an error: say how to see one.
            report["note"] = (
                f"the series holds {picked[0].n_volumes} volumes at the same slice positions; "
                f"see one with --volume i ({problem.found})"
                if isinstance(problem, InputError) and problem.found
                else f"the series holds {picked[0].n_volumes} volumes; see one with --volume i"
            )
        elif problem is not None:
            report["error"] = str(problem)
        if loaded is not None:
            report["volume"] = volume_summary(loaded.volume)
            report["warnings"] = list(loaded.warnings)
        return report
    report["volume"] = volume_summary(read_volume(path, series=series, spacing=spacing, volume=volume))
    return report


@app.command("info")
@cli_command
def info(
    path: Path = typer.Argument(
        ..., help="DICOM folder or file, NIfTI, NRRD, MHA, PNG/TIFF file or folder, or a model folder."
    ),
    series: str | None = typer.Option(None, "--series", "-s", help=SERIES_HELP),
    volume: int | None = typer.Option(None, "--volume", help=VOLUME_HELP),
    spacing: tuple[float, float, float] | None = typer.Option(
        None,
        "--spacing",
        metavar="Z Y X",
        help=SPACING_HELP,
        parser=number_values("--spacing", "Z Y X", "3 0.5 0.5"),
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show an image's shape, spacing (z, y, x), orientation, origin and values, or summarise a model folder.

    An image: also its direction matrix and data type; a DICOM folder: the table of series it holds. A model folder, without loading it: configuration, labels, spacing, per fold the medseg version, epochs, best validation Dice and weights present, and the postprocessing rules predict applies.
    """
    report = gather_info(path, series=series, volume=volume, spacing=spacing)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)
    if "error" in report:
        raise MedsegError(report["error"])


def _print_model(model: dict[str, Any]) -> None:
    plan = model.get("plan", {})
    if plan:
        labels = ", ".join(f"{v}={k}" for k, v in plan["labels"].items() if v != 0)
        console.print(
            f"model {escape(model['path'])}: {plan['configuration']}, channels "
            f"{escape(', '.join(plan['channels']))}, labels {escape(labels)}, spacing z,y,x "
            f"{_fmt(plan['target_spacing_zyx_mm'])} mm, patch {'x'.join(map(str, plan['patch_size_zyx']))}",
            soft_wrap=True,
            highlight=False,
        )
        if plan.get("regions"):
            regions = ", ".join(
                f"{name}={values} painted as {value}"
                for (name, values), value in zip(
                    plan["regions"].items(), plan["regions_class_order"], strict=True
                )
            )
            console.print(
                f"regions (one sigmoid output each; best val Dice is their mean): {escape(regions)}",
                soft_wrap=True,
                highlight=False,
            )
    table = Table("folder", "fold", "medseg", "epochs", "best val Dice", "train cases", "weights")
    for f in model["folds"]:
        files = [n for n, present in (("pt", f["checkpoint"]), ("onnx", f["onnx"])) if present]
        if f["slice_classifier"]:
            files.append("slice classifier")
        best = f["best_val_mean_dice"]
        table.add_row(
            escape(f["folder"]),
            "all" if f["fold"] is None else str(f["fold"]),
            str(f["medseg_version"]),
            str(f["epochs_completed"]),
            "-" if best is None else f"{best:.4f}",
            str(f["train_cases"]),
            ", ".join(files) or "[red]none[/]",
        )
    console.print(table)
    rules = {f["folder"]: f.get("postprocessing", "none") for f in model["folds"]}
    if len(set(rules.values())) <= 1:
        every = "every fold" if len(rules) > 1 else "predict applies"
        console.print(
            f"postprocessing ({every}): {escape(next(iter(rules.values()), 'none'))}", soft_wrap=True
        )
    else:
        console.print("[yellow]postprocessing differs between the folds[/] (the first fold's apply):")
        for folder, text in rules.items():
            console.print(f"  {escape(folder)}: {escape(text)}", soft_wrap=True)
    if model.get("not_an_ensemble"):
        console.print(
            "[yellow]not an ensemble:[/] none of these is a fold_<k> folder, so `medseg predict -m` "
            "refuses this folder; pass one of the models to -m (or name them fold_0, fold_1, ...)",
            soft_wrap=True,
        )
    if model.get("not_in_ensemble"):
        console.print(
            "[yellow]not in the ensemble[/] (not fold_* folders, or fold_all beside numbered folds; "
            f"`medseg predict -m` uses only the folds above): {escape(', '.join(model['not_in_ensemble']))}",
            soft_wrap=True,
        )


def _print_report(report: dict[str, Any]) -> None:
    if "model" in report:
        _print_model(report["model"])
        return
    if "series" in report:
        wide = console.width >= 150
        console.print(_series_table(report["series"], with_uid=wide))
        if not wide:
            for i, s in enumerate(report["series"]):
                console.print(f"  [{i}] {_uid_text(s['series_uid'])}", markup=False, highlight=False)
    if "volume" in report:
        console.print(_volume_table(report["volume"]))
        for w in report.get("warnings", []):
            console.print(f"[yellow]warning:[/] {escape(w)}")
    elif "note" in report:
        console.print(escape(report["note"]), soft_wrap=True, highlight=False)
    elif "series" in report and "error" not in report:
        console.print(
            "Several series: pick one with --series (index, UID, description or pattern, "
            "e.g. 't2_tse_tra*@last') to see its volume."
        )


@app.command("convert")
@cli_command
def convert(
    src: Path = typer.Argument(..., metavar="IN", help="Input image (any format medseg reads)."),
    dst: Path = typer.Argument(
        ..., metavar="OUT", help="Output: .nii.gz/.nii/.nrrd/.mha/.png/.tif file, or a folder with --to."
    ),
    to: str | None = typer.Option(
        None, "--to", help="Output format: nifti, nrrd, mha, png, tiff or dicom (default: from OUT's suffix)."
    ),
    series: str | None = typer.Option(None, "--series", "-s", help=SERIES_HELP),
    volume: int | None = typer.Option(None, "--volume", help=VOLUME_HELP),
    spacing: tuple[float, float, float] | None = typer.Option(
        None,
        "--spacing",
        metavar="Z Y X",
        help=SPACING_HELP,
        parser=number_values("--spacing", "Z Y X", "3 0.5 0.5"),
    ),
    modality: str | None = typer.Option(
        None, "--modality", help="DICOM output: MR or CT image storage (default: the input's, else MR)."
    ),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        help="DICOM output: series whose patient, study and frame of reference it joins (default: a DICOM input).",
    ),
    description: str | None = typer.Option(None, "--description", help="DICOM output: SeriesDescription."),
    deidentify: DeidentifyOpt = False,
    pseudonym: PseudonymOpt = "ANONYMOUS",
    pseudonym_map: PseudonymMapOpt = None,
    uid_secret: UidSecretOpt = None,
    uid_secret_file: UidSecretFileOpt = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Convert IN to OUT: NIfTI, NRRD, MHA, PNG/TIFF, or a DICOM series folder (--to dicom).

    A DICOM output from a DICOM input keeps its MR acquisition (MRAcquisitionType, echo and
    repetition times, flip angle, field strength, slice thickness); from other formats these
    are unknown and left empty.
    """
    uid_secret = uid_secret_from(uid_secret, uid_secret_file)
    names = pseudonym_from(pseudonym, pseudonym_map)
    from medseg.io import convert as convert_image

    out = convert_image(
        src,
        dst,
        series=series,
        volume=volume,
        spacing=spacing,
        to=to,
        modality=modality,
        reference=reference,
        series_description=description,
        deidentify=deidentify,
        overwrite=overwrite,
        pseudonym=names,
        uid_secret=uid_secret,
    )
    console.print(f"wrote {out}")
    from medseg.io import _output_format

    fmt = _output_format(dst, to)
    deidentify_notes(deidentify, uid_secret, [fmt], ["dicom"])
