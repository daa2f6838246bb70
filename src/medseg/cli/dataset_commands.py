"""``medseg dataset ...``: check a dataset, import a source into the dataset format, make splits.

:data:`dataset_app` is the ``dataset`` command group and :data:`import_app` its ``import``
sub-group; other modules (``dataset_web_commands``: prostatex, uwmadison) add their import
commands with ``@import_app.command("name")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medseg.cli.common import (
    NumberList,
    app,
    cli_command,
    console,
    err_console,
    number_list,
    number_list_command,
    warnings_only,
)
from medseg.errors import ConfigError

dataset_app = typer.Typer(
    help="Datasets in the nnU-Net v2 / MSD layout: check, import, split, stitch chunks.", no_args_is_help=True
)
import_app = typer.Typer(
    help="Convert a source (MSD, CHAOS, DICOM SEG/RTSTRUCT, 2D images ...) into the dataset format.",
    no_args_is_help=True,
)
dataset_app.add_typer(import_app, name="import")
app.add_typer(dataset_app, name="dataset")

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output dataset folder (created atomically).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk",
        min=1,
        help="Split each series into chunks of N slices (e.g. 65); 'medseg dataset stitch' joins "
        "per-chunk predictions back into one file per scan.",
    ),
]
ChunkOverlapOpt = Annotated[
    int, typer.Option("--chunk-overlap", min=0, help="Slices shared by neighbouring chunks.")
]
SkipOpt = Annotated[
    bool,
    typer.Option("--skip-invalid", help="Leave out bad cases (listed in dataset.json) instead of stopping."),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="print only warnings, errors and the final result lines (no progress bar or log lines)",
    ),
]
LabelsOpt = Annotated[
    str | None, typer.Option("--labels", help="Label declaration NAME=VALUE,... (background=0 included).")
]
DicomLabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help="Segment/ROI name -> value, NAME=VALUE,... (background=0 included), declared in dataset.json "
        "exactly as given, even a name that no imported case holds, so one mapping stays the same across "
        "imports (such names are listed in a warning). Default: the names of the imported cases, numbered "
        "1, 2, ... in order of first appearance; a case left out by --skip-invalid takes its own names "
        "with it.",
    ),
]
CaseOpt = Annotated[list[str] | None, typer.Option("--case", help="Import only this case (repeatable).")]


def _labels(text: str | None) -> dict[str, int] | None:
    from medseg.data.dataset import parse_labels

    return parse_labels(text) if text else None


def _int_map(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in text.split(","):
        raw, sep, label = part.partition("=")
        if not sep or not raw.strip().isdigit() or not label.strip().isdigit():
            raise ConfigError(f"--mask-map entries must be RAW=LABEL (e.g. 0=1,255=0), found {part!r}")
        out[int(raw)] = int(label)
    return out


def _imported(out: Path) -> None:
    from medseg.data.dataset import IMPORT_KEY, read_descriptor

    desc = read_descriptor(out)
    record = desc.extra.get(IMPORT_KEY, {})
    labels = ", ".join(f"{k}={v}" for k, v in desc.labels.items())
    console.print(
        f"imported {desc.num_training} training and {record.get('num_test', 0)} test cases into {out}"
        f"\nchannels: {', '.join(desc.modalities)}; labels: {labels}"
    )
    for item in record.get("skipped", []):
        err_console.print(
            f"[yellow]skipped[/] {escape(item['source'])}: {escape(item['reason'])}", soft_wrap=True
        )
    if record.get("ignored_files"):
        console.print(f"{len(record['ignored_files'])} files ignored (listed in dataset.json)")


# ---------------------------------------------------------------------------- check
@dataset_app.command("check")
@cli_command
def check_command(
    root: Annotated[Path, typer.Argument(help="Dataset folder (dataset.json, imagesTr/, labelsTr/).")],
    headers_only: Annotated[
        bool, typer.Option("--headers-only", help="Check grids from file headers only; skip reading voxels.")
    ] = False,
    problems_only: Annotated[
        bool, typer.Option("--problems-only", help="List only cases with problems.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Validate every case: grids, label values, NaN/Inf, orientation, channels, duplicates.

    Exits with code 1 when any problem is found.
    """
    from medseg.data.check import check_dataset
    from medseg.io.atomic import write_text_atomic

    if json_out is not None and json_out.exists() and Path(root).resolve() in json_out.resolve().parents:
        raise ConfigError(f"{json_out}: --json would overwrite a file of the dataset it checks")
    with warnings_only(quiet):
        report = check_dataset(root, read_values=not headers_only, progress=not quiet)
    table = Table(title=f"dataset check: {escape(str(root))}", title_justify="left")
    for col in ("case", "set", "shape zyx", "spacing zyx mm", "orient.", "labels", "status"):
        table.add_column(col, overflow="fold")
    for c in report.cases:
        if problems_only and c.ok:
            continue
        table.add_row(
            c.case_id,
            c.subset,
            "x".join(map(str, c.shape)) if c.shape else "-",
            "x".join(f"{s:.3g}" for s in c.spacing) if c.spacing else "-",
            c.orientation or "-",
            ",".join(map(str, c.label_values)) if c.label_values is not None else "-",
            "[green]ok[/]"
            if c.ok
            else f"[red]{len(c.problems)} problem{'s' if len(c.problems) > 1 else ''}[/]",
        )
    if table.row_count:
        console.print(table)
    for c in report.bad_cases:
        for problem in c.problems:
            console.print(f"[red]{escape(c.case_id)}:[/] {escape(problem)}", soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(report.to_json(), indent=2) + "\n", overwrite=True)
    n_bad = len(report.bad_cases)
    what = "checked" if report.values_checked else "checked (headers only)"
    checked = f"{len(report.cases)} case{'' if len(report.cases) == 1 else 's'} {what}"
    if report.ok:
        console.print(f"[green]{checked}: no problems[/]")
        return
    console.print(
        f"[red]{checked}: {report.num_problems} problem{'' if report.num_problems == 1 else 's'} "
        f"({n_bad} case{'' if n_bad == 1 else 's'}, {len(report.problems)} dataset-level)[/]"
    )
    raise typer.Exit(1)


# ---------------------------------------------------------------------------- split
@dataset_app.command("split")
@cli_command
def split_command(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    folds: Annotated[int, typer.Option("--folds", "-k", help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same splits).")] = 0,
    test_fraction: Annotated[
        float,
        typer.Option("--test-fraction", help="Fraction of cases held out as a test set (whole patients)."),
    ] = 0.0,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing splits.json (crossval then refuses folds trained on the old one).",
        ),
    ] = False,
) -> None:
    """Patient-grouped K-fold splits (no patient in two folds), saved as DIR/splits.json."""
    from medseg.data.splits import SPLITS_JSON, make_splits

    splits = make_splits(root, k=folds, seed=seed, test_fraction=test_fraction, overwrite=overwrite)
    n_patients = len(set(splits.groups.values()))
    sizes = ", ".join(str(len(f.val)) for f in splits.folds)
    console.print(
        f"{len(splits.groups)} cases of {n_patients} patients: {splits.k} folds of {sizes} validation cases"
        + (f", {len(splits.test)} test cases" if splits.test else "")
        + f"\nwrote {Path(root) / SPLITS_JSON}"
    )


# --------------------------------------------------------------------------- stitch
@dataset_app.command("stitch")
@cli_command
def stitch_command(
    root: Annotated[Path, typer.Argument(help="Dataset folder imported with --chunk (its dataset.json).")],
    folder: Annotated[
        Path,
        typer.Argument(
            help="Per-chunk files: predictions named CASE_chunk000.nii.gz ..., or the dataset's labelsTr."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one CASE.nii.gz per scan.")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Join per-chunk files back into one file per scan, on the scan's grid (inverse of --chunk).

    For per-scan evaluation: stitch the predictions and the dataset's labelsTr, then
    'medseg evaluate STITCHED_PRED STITCHED_LABELS'. Where chunks overlap, each slice comes
    from the chunk in which it lies farthest from a cut. A scan with only some of its chunks
    is an error naming the missing ones; scans without any file are skipped.
    """
    from medseg.data.chunking import stitch_chunk_files

    written = stitch_chunk_files(root, folder, out, overwrite=overwrite)
    console.print(
        f"stitched {len(written)} scan{'' if len(written) == 1 else 's'} into {out}",
        soft_wrap=True,
        markup=False,
    )


# --------------------------------------------------------------------------- import
@import_app.command("msd")
@cli_command
def import_msd_command(
    source: Annotated[Path, typer.Argument(help="MSD task folder (Task05_Prostate, ...).")],
    out: OutOpt,
    labels: LabelsOpt = None,
    channels: Annotated[
        str | None, typer.Option("--channels", help="Channel names, comma-separated (e.g. T2,ADC).")
    ] = None,
    case: CaseOpt = None,
    no_test: Annotated[bool, typer.Option("--no-test", help="Do not import imagesTs.")] = False,
    chunk: ChunkOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    skip_invalid: SkipOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Medical Segmentation Decathlon task (4D multi-channel NIfTI split into channels)."""
    from medseg.data.adapters.msd import import_msd

    with warnings_only(quiet):
        result = import_msd(
            source, out, overwrite=overwrite, labels=_labels(labels),
            channel_names=channels.split(",") if channels else None, cases=case, include_test=not no_test,
            chunk=chunk, chunk_overlap=chunk_overlap, skip_invalid=skip_invalid, progress=not quiet,
        )  # fmt: skip
    _imported(result)


@import_app.command("chaos")
@cli_command
def import_chaos_command(
    source: Annotated[Path, typer.Argument(help="Folder of CHAOS image_N.nii.gz / label_N.nii.gz.")],
    out: OutOpt,
    case: CaseOpt = None,
    chunk: ChunkOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    skip_invalid: SkipOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """CHAOS MR T2-SPIR (liver, right/left kidney, spleen)."""
    from medseg.data.adapters.chaos import import_chaos

    with warnings_only(quiet):
        result = import_chaos(
            source, out, overwrite=overwrite, cases=case, chunk=chunk, chunk_overlap=chunk_overlap,
            skip_invalid=skip_invalid, progress=not quiet,
        )  # fmt: skip
    _imported(result)


OverlapOpt = Annotated[
    str,
    typer.Option(
        "--overlap",
        help="Overlapping segments: 'error', 'overwrite' (higher label value wins) or 'regions' (each "
        "overlap gets a label value of its own, named A+B (segment names in order of their values; "
        "--labels A+B=VALUE sets it), and dataset.json one region per segment, for region-based "
        "training; no regions when no case has an overlap).",
    ),
]


@import_app.command("dicom-seg")
@cli_command
def import_seg_command(
    source: Annotated[Path, typer.Argument(help="Folder tree with DICOM image series and SEG objects.")],
    out: OutOpt,
    seg: Annotated[
        list[Path] | None, typer.Option("--seg", help="SEG file to import (repeatable; default: all found).")
    ] = None,
    labels: DicomLabelsOpt = None,
    overlap: OverlapOpt = "error",
    chunk: ChunkOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    skip_invalid: SkipOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """DICOM series with DICOM SEG labels (one case per SEG)."""
    from medseg.data.adapters.dicom_labels import import_dicom_seg

    with warnings_only(quiet):
        result = import_dicom_seg(
            source, out, seg_files=seg, overwrite=overwrite, labels=_labels(labels),
            on_overlap=overlap,  # type: ignore[arg-type]  # checked by the adapter
            chunk=chunk, chunk_overlap=chunk_overlap, skip_invalid=skip_invalid, progress=not quiet,
        )  # fmt: skip
    _imported(result)


@import_app.command("rtstruct")
@cli_command
def import_rtstruct_command(
    source: Annotated[Path, typer.Argument(help="Folder tree with DICOM image series and RTSTRUCT files.")],
    out: OutOpt,
    rtstruct: Annotated[
        list[Path] | None,
        typer.Option("--rtstruct", help="RTSTRUCT file to import (repeatable; default: all found)."),
    ] = None,
    labels: DicomLabelsOpt = None,
    overlap: OverlapOpt = "error",
    chunk: ChunkOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    skip_invalid: SkipOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """DICOM series with RTSTRUCT contours (one case per RTSTRUCT; ROI names become labels)."""
    from medseg.data.adapters.dicom_labels import import_rtstruct

    with warnings_only(quiet):
        result = import_rtstruct(
            source, out, rtstruct_files=rtstruct, overwrite=overwrite, labels=_labels(labels),
            on_overlap=overlap,  # type: ignore[arg-type]  # checked by the adapter
            chunk=chunk, chunk_overlap=chunk_overlap, skip_invalid=skip_invalid, progress=not quiet,
        )  # fmt: skip
    _imported(result)


@import_app.command("images2d", cls=number_list_command("--spacing"))
@cli_command
def import_images2d_command(
    images: Annotated[Path, typer.Argument(help="Folder of 2D images (PNG/TIFF/...).")],
    out: OutOpt,
    masks: Annotated[Path, typer.Option("--masks", help="Folder of masks, paired with images by file stem.")],
    spacing: Annotated[
        NumberList,
        typer.Option(
            "--spacing",
            metavar="[Z] ROW COL",
            help="Pixel spacing in mm, array order: ROW COL (e.g. 0.5 0.5), or Z ROW COL with the slice "
            "spacing (default: the larger in-plane one). The comma form ROW,COL of older releases still works.",
            parser=number_list("--spacing", "[Z] ROW COL", "0.5 0.5", (2, 3)),
        ),
    ],
    test: Annotated[Path | None, typer.Option("--test", help="Folder of unlabelled test images.")] = None,
    mask_map: Annotated[
        str | None,
        typer.Option("--mask-map", help="Mask value -> label, e.g. 0=1,255=0 (default 0=0,1=1,255=1)."),
    ] = None,
    label_name: Annotated[str, typer.Option("--label-name", help="Name of label 1.")] = "foreground",
    channel_name: Annotated[str, typer.Option("--channel-name", help="Name of a grey channel.")] = "image",
    mask_suffix: Annotated[str, typer.Option("--mask-suffix", help="Mask stem suffix, e.g. _mask.")] = "",
    case_prefix: Annotated[str, typer.Option("--case-prefix", help="Prefix of case ids.")] = "",
    group_pattern: Annotated[
        str | None, typer.Option("--group-pattern", help="Regex whose group 1 (of the stem) is the patient.")
    ] = None,
    case: CaseOpt = None,
    skip_invalid: SkipOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """2D image/mask pairs, each a one-slice volume. ISBI 2012 EM: --mask-map 0=1,255=0 --label-name membrane."""
    from medseg.data.adapters.images2d import import_images2d

    with warnings_only(quiet):
        result = import_images2d(
            images, out, masks=masks, spacing=spacing, test_images=test,
            mask_map=_int_map(mask_map) if mask_map else None, label_name=label_name,
            channel_name=channel_name, mask_suffix=mask_suffix, case_prefix=case_prefix,
            group_pattern=group_pattern, cases=case, skip_invalid=skip_invalid, overwrite=overwrite,
            progress=not quiet,
        )  # fmt: skip
    _imported(result)
