"""`medseg export`: the clinical outputs of a label map that already exists."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    warnings_only,
)

if TYPE_CHECKING:
    from medseg.export.case import ExportConfig, ExportResult


@app.command("export")
@cli_command
def export_command(
    label: Annotated[
        Path,
        typer.Argument(
            help="label map: NIfTI/NRRD/MHA/PNG with values 0..K, a DICOM SEG or an RTSTRUCT file"
        ),
    ],
    image: Annotated[
        Path,
        typer.Argument(
            help="the scan it was drawn on: DICOM series folder (for dicom-seg/rtstruct) or image file"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="comma list: nifti, nrrd, mha, dicom-seg, rtstruct, mesh, volumes, overlay, report",
        ),
    ] = "volumes,overlay,report",
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="label names: 'liver=1,spleen=2' (default: a SEG's or RTSTRUCT's own names, else "
            "label_<value>); for a SEG or RTSTRUCT input, its segments are matched by name and take these values",
        ),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(
            help="DICOM series of the image folder: index, UID, description or pattern "
            "('t2_tse_tra*'; '@last'/'@first' for a repeated sequence)"
        ),
    ] = None,
    resample: Annotated[
        bool,
        typer.Option(help="put a label map from another grid onto the image's (nearest neighbour)"),
    ] = False,
    mesh_format: Annotated[str, typer.Option(help="stl, obj or ply")] = "stl",
    case_id: Annotated[
        str | None, typer.Option(help="name of the case's outputs (default: the label file's name)")
    ] = None,
    spacing: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            metavar="Z Y X",
            help="voxel spacing in mm of PNG/TIFF inputs, which carry none",
            parser=number_values("--spacing", "Z Y X", "3 0.5 0.5"),
        ),
    ] = None,
    algorithm_type: Annotated[
        str | None,
        typer.Option(
            metavar="TYPE",
            help="how every segment was made, as the DICOM SEG (Segment Algorithm Type) and RTSTRUCT "
            "(ROI Generation Algorithm) declare it: manual for a label map a person drew, semiautomatic "
            "for a corrected prediction, automatic for a model's output. Replaces what a SEG or RTSTRUCT "
            "input declares. Default: a SEG or RTSTRUCT input keeps each segment's own type; any other "
            "label map is automatic",
        ),
    ] = None,
    algorithm_name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="the tool that made the automatic or semiautomatic segments (e.g. TotalSegmentator), "
            "named in the DICOM SEG and RTSTRUCT; replaces what a SEG or RTSTRUCT input names. A "
            "dicom-seg of an automatic or semiautomatic label map that names no algorithm (any NIfTI) "
            "needs it; medseg names itself only in what `medseg predict` writes",
        ),
    ] = None,
    algorithm_version: Annotated[
        str | None,
        typer.Option(metavar="VERSION", help="version of --algorithm-name (default: unknown)"),
    ] = None,
    algorithm_family: Annotated[
        str | None,
        typer.Option(
            metavar="FAMILY",
            help="DICOM family (CID 7162) of --algorithm-name: 'artificial intelligence' (default), "
            "'cluster analysis', 'deformable models', 'edge detection', 'histogram analysis', "
            "'morphological operations', ...",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    deidentify: DeidentifyOpt = False,
    pseudonym: PseudonymOpt = "ANONYMOUS",
    pseudonym_map: PseudonymMapOpt = None,
    uid_secret: UidSecretOpt = None,
    uid_secret_file: UidSecretFileOpt = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="print only warnings, errors and one final line (no progress bar, log lines or output table)",
        ),
    ] = False,
) -> None:
    """Write DICOM SEG, RTSTRUCT, meshes, volumes, overlay or a report for an existing label map.

    For a segmentation made elsewhere (another tool, a manual correction) or earlier; a DICOM SEG becomes an RTSTRUCT and back. The label map must lie on the image's grid, or --resample puts it there (nearest neighbour). SEG and RTSTRUCT segments keep the algorithm type and algorithm a SEG or RTSTRUCT input declares; a label map of `medseg baseline` is named by the LABEL.baseline.json written beside it ("medseg baseline METHOD", SEMIAUTOMATIC for region-grow and seeded or marker watershed); any other label map is marked AUTOMATIC. --algorithm-type sets the type of every segment and --algorithm-name the algorithm, replacing what the input declares. A DICOM SEG must name the algorithm of automatic and semiautomatic segments: for a label map that names none, give --algorithm-name or --algorithm-type manual. volumes.csv names the study and series UIDs of a DICOM image (empty for other images). A series whose UIDs were blanked still gets the other formats; dicom-seg/rtstruct are then listed as not written with the reason, and the exit code is 1.
    """
    uid_secret = uid_secret_from(uid_secret, uid_secret_file)
    names = pseudonym_from(pseudonym, pseudonym_map)
    from medseg.evaluation import parse_labels
    from medseg.export.case import DICOM_FORMATS, ExportConfig, export_label

    declared = parse_labels(labels)
    cfg = ExportConfig(
        formats=tuple(f.strip() for f in format.split(",") if f.strip()),
        labels=declared,
        series=series,
        spacing=spacing,
        resample=resample,
        mesh_suffix="." + mesh_format.lower().lstrip("."),
        case_id=case_id,
        algorithm_type=algorithm_type,  # type: ignore[arg-type]  # checked by ExportConfig
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        algorithm_family=algorithm_family,
        overwrite=overwrite,
        deidentify=deidentify,
        pseudonym=names,
        uid_secret=uid_secret,
    )
    if not quiet:
        deidentify_notes(deidentify, uid_secret, cfg.formats, DICOM_FORMATS)
    with warnings_only(quiet):  # a warning (a thin structure's mesh, a resampled grid) still shows
        result = export_label(label, image, out, cfg, progress=not quiet)
    skipped = [f for f in cfg.formats if f not in result.outputs and f not in result.not_written]
    if quiet:
        console.print(
            f"case {escape(result.case_id)}: {len(result.outputs)} output(s) in {escape(str(out))}",
            soft_wrap=True,
        )
    else:
        _report(result, cfg, label)
    if skipped:
        console.print(f"[yellow]not written:[/] {', '.join(skipped)} (nothing segmented)")
    if result.not_written:
        # As `medseg predict`: the formats the source cannot give fail the case (exit 1), with
        # the reason (file, expected, found); a run without them completes it.
        for reason in dict.fromkeys(result.not_written.values()):
            formats = ", ".join(f for f, r in result.not_written.items() if r == reason)
            console.print(f"[red]not written:[/] {escape(formats)}: {escape(reason)}", soft_wrap=True)
        console.print(
            f"case {escape(result.case_id)} failed: run again without {', '.join(result.not_written)} "
            "to complete it",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _report(result: ExportResult, cfg: ExportConfig, label: Path) -> None:
    """The outputs written, the label names and, for DICOM outputs, how the segments are marked."""
    from medseg.export.case import describe_algorithms

    table = Table("output", "path")
    table.columns[1].overflow = "fold"  # whole paths, also in a narrow terminal
    for fmt, path in result.outputs.items():
        table.add_row(fmt, escape(str(path)))
    console.print(table)
    names = ", ".join(f"{v}={n}" for v, n in result.names.items()) or "none (empty label map)"
    console.print(f"case {escape(result.case_id)}: labels {escape(names)}", soft_wrap=True)
    if any(f in result.outputs for f in ("dicom-seg", "rtstruct")):
        made = describe_algorithms(
            result.algorithm_types, result.algorithms, result.names, defined_terms=True
        )
        source = {
            "option": "--algorithm-type",
            "label file": f"as {label.name} declares",
            "baseline record": "as its .baseline.json from `medseg baseline` records",
            "default": "default for a label map that declares none; --algorithm-type sets it",
        }[result.types_from]
        if cfg.algorithm_name is not None:
            source += "; algorithm: --algorithm-name"
        console.print(f"segments marked {escape(made)} ({escape(source)})", soft_wrap=True)


@app.command("export-index")
@cli_command
def export_index_command(
    out: Annotated[
        Path,
        typer.Argument(
            help="output folder of `medseg predict` (or of `medseg export` runs with one case each)"
        ),
    ],
) -> None:
    """Rebuild OUT/index.html, the page listing every case of an output folder.

    One row per case with its status (ok, failed with its error, partly written), per-label volumes, overlay thumbnail, flags and a link to its report.html, and the model once. `medseg predict` with the report format writes it after each run; run this after adding cases by other means (`medseg export`, copying in the folders of another machine's shards).
    """
    from medseg.errors import InputError
    from medseg.export.index import cohort_rows, write_cohort_index

    target = write_cohort_index(out)
    if target is None:
        raise InputError(
            out,
            "holds no case",
            expected="predictions*.json or case folders with report.html, overlay.png or volumes.csv",
        )
    rows = cohort_rows(out)
    failed = sum(r.status != "ok" for r in rows)
    console.print(
        f"wrote {escape(str(target))}: {len(rows)} case(s)" + (f", {failed} not ok" if failed else ""),
        soft_wrap=True,
    )
