"""`medseg predict` and `medseg export-onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table

from medseg.cli.common import (
    EXIT_INTERNAL_ERROR,
    DeidentifyOpt,
    PseudonymMapOpt,
    PseudonymOpt,
    Quiet,
    UidSecretFileOpt,
    UidSecretOpt,
    app,
    cli_command,
    console,
    deidentify_notes,
    errors_only,
    number_values,
    pseudonym_from,
    uid_secret_from,
    warnings_only,
)

# -m of predict and submission: one model folder, or several configurations to ensemble.
ModelsOpt = Annotated[
    list[Path],
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="model folder (or ensemble of fold_* folders); repeat to ensemble configurations, "
        "e.g. -m models/2.5d -m models/3d (class probabilities averaged)",
    ),
]


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    from medseg.errors import ConfigError

    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), found {text!r}") from None
    return (i, n)


def _parse_switch(option: str, text: str) -> bool | Literal["auto"]:
    """auto / on / off of --cpu-bf16 and --channels-last (the training config's "auto", true, false)."""
    from medseg.errors import ConfigError

    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if value in ("on", "true"):
        return True
    if value in ("off", "false"):
        return False
    raise ConfigError(f"{option} must be auto, on or off, found {text!r}")


@app.command("predict")
@cli_command
def predict_command(
    input: Annotated[Path, typer.Argument(help="image file, DICOM series folder, or folder of cases")],
    model: ModelsOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="comma list: nifti, nrrd, mha, probabilities, regions, dicom-seg, rtstruct, mesh, volumes, "
            "overlay, report",
        ),
    ] = "nifti",
    tta: Annotated[bool, typer.Option(help="mirroring test-time augmentation")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    series: Annotated[
        str | None,
        typer.Option(
            help="DICOM series description, wildcard pattern ('t2_tse_tra*', case-insensitive) or UID; a "
            "description is safest for a cohort of patient folders; a folder holding one study's series "
            "(subfolders too) is one case and this picks within it. A description matching several series "
            "of one patient (a repeated sequence) stops that patient unless it ends in @last (latest "
            "acquired) or @first, e.g. 't2_tse_tra*@last'"
        ),
    ] = None,
    overlap: Annotated[float, typer.Option(help="sliding-window overlap")] = 0.5,
    no_postprocess: Annotated[
        bool, typer.Option("--no-postprocess", help="skip the model's postprocessing rules")
    ] = False,
    no_slice_filter: Annotated[
        bool,
        typer.Option("--no-slice-filter", help="ignore the model's empty-slice classifier, if it has one"),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: predict every n-th case from i (SLURM arrays), listed in OUT/predictions_shard<i>of<n>.json "
            "instead of OUT/predictions.json"
        ),
    ] = None,
    onnx: Annotated[bool, typer.Option(help="use ONNX Runtime (after `medseg export-onnx`)")] = False,
    mesh_format: Annotated[str, typer.Option(help="stl, obj or ply")] = "stl",
    overwrite: Annotated[
        bool,
        typer.Option(
            help="predict again and replace existing outputs (without it, outputs of the same "
            "model and options are kept and only missing formats made; another model's are refused)"
        ),
    ] = False,
    roi_views: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            metavar="SAGITTAL CORONAL",
            help="sagittal and coronal series of the same study: predict on the multi-plane ROI, output on the "
            "full grid",
        ),
    ] = None,
    spacing: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            metavar="Z Y X",
            help="voxel spacing in mm of PNG/TIFF input, which carries none (else 1 mm is assumed)",
            parser=number_values("--spacing", "Z Y X", "3 0.5 0.5"),
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the network (default: all cores)")
    ] = None,
    cpu_bf16: Annotated[
        str,
        typer.Option(
            metavar="auto|on|off",
            help="bfloat16 autocast of the network on a CPU: faster, but a few voxels change label (blending "
            "and probabilities stay float32); auto: where the CPU computes bfloat16 natively (AVX512-BF16 / "
            "AMX)",
        ),
    ] = "off",
    channels_last: Annotated[
        str,
        typer.Option(
            metavar="auto|on|off",
            help="channels-last (NDHWC / NHWC) layout of the network (same result up to float rounding; "
            "measured no faster for prediction, unlike training); auto: 3D models on a CPU",
        ),
    ] = "off",
    volume: Annotated[
        int | None,
        typer.Option(help="DICOM series holding several volumes (b-values, echoes): pick one (0-based)"),
    ] = None,
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
            help="print only errors, the warning that a series is not of the model's modality, and the "
            "final summary line (no progress bar, other log lines or case table)",
        ),
    ] = False,
) -> None:
    """Segment new scans with a trained model; outputs land on the input's exact grid.

    DICOM SEG and RTSTRUCT segments are marked AUTOMATIC (`medseg export --algorithm-type` marks a corrected label map). volumes.csv and cohort_volumes.csv name each DICOM case's StudyInstanceUID and SeriesInstanceUID (empty for NIfTI and other files).

    A cohort goes on past a case that fails (listed in OUT/predictions.json); the exit code is then 1,
    or 3 when a case failed on an internal error (a bug to report, listed as 'internal error: ...').
    """
    uid_secret = uid_secret_from(uid_secret, uid_secret_file)
    names = pseudonym_from(pseudonym, pseudonym_map)
    from medseg.export.case import DICOM_FORMATS
    from medseg.inference.predictor import PredictConfig, predict

    cfg = PredictConfig(
        formats=tuple(f.strip() for f in format.split(",") if f.strip()),
        tta=tta,
        device=device,  # type: ignore[arg-type]
        overlap=overlap,
        postprocess=not no_postprocess,
        slice_filter=not no_slice_filter,
        series=series,
        overwrite=overwrite,
        shard=_parse_shard(shard),
        backend="onnx" if onnx else "torch",
        mesh_suffix="." + mesh_format.lower().lstrip("."),
        roi_views=roi_views,
        spacing=spacing,
        threads=threads,
        volume=volume,
        deidentify=deidentify,
        pseudonym=names,
        uid_secret=uid_secret,
        cpu_bf16=_parse_switch("--cpu-bf16", cpu_bf16),
        channels_last=_parse_switch("--channels-last", channels_last),
    )
    if not quiet:
        deidentify_notes(deidentify, uid_secret, cfg.formats, DICOM_FORMATS)
    try:
        with errors_only(quiet):  # a failed case is still logged as an error when it happens
            results = predict(input, model[0] if len(model) == 1 else model, out, cfg, progress=not quiet)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted:[/] the cases finished so far are kept in {escape(str(out))}; run the same "
            "command again to predict the rest (finished cases are not redone)",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    if not quiet:
        table = Table("case", "status", "outputs / error", "seconds")
        table.columns[2].overflow = "fold"  # whole paths and errors, also in a narrow terminal
        for r in results:
            table.add_row(
                escape(r.case_id),
                "[yellow]exists[/]" if r.skipped else "ok" if r.ok else "[red]failed[/]",
                escape(
                    ", ".join(r.outputs.values())
                    if r.ok
                    else "; ".join(
                        [*(["written: " + ", ".join(r.outputs.values())] if r.outputs else []), r.error]
                    )
                ),
                "-" if r.skipped else f"{r.seconds:.1f}",
            )
        console.print(table)
    failed = [r for r in results if not r.ok]
    skipped = [r for r in results if r.skipped]
    done = len(results) - len(failed) - len(skipped)
    console.print(
        f"{done} of {len(results)} case(s) segmented"
        + (f", {len(skipped)} not redone (outputs exist; --overwrite redoes them)" if skipped else "")
        + f"; outputs in {escape(str(out))}",
        soft_wrap=True,
    )
    cohort = out / "cohort_volumes.csv"
    if "volumes" in cfg.formats and cohort.is_file() and not quiet:
        console.print(f"volumes of every case (mL): {escape(str(cohort))}")
    index = out / "index.html"
    if "report" in cfg.formats and index.is_file() and not quiet:
        console.print(f"every case's status, volumes and report: {escape(str(index))}", soft_wrap=True)
    if any(r.internal_error for r in failed):  # a bug, not the input: as for one case, exit 3
        raise typer.Exit(EXIT_INTERNAL_ERROR)
    if failed:
        raise typer.Exit(1)


@app.command("export-onnx")
@cli_command
def export_onnx_command(
    model: Annotated[Path, typer.Argument(help="model folder (or ensemble of fold_* folders)")],
    opset: Annotated[int, typer.Option(help="ONNX opset version")] = 17,
    overwrite: Annotated[bool, typer.Option(help="replace an existing model.onnx")] = False,
) -> None:
    """Export a model to ONNX (model.onnx in each fold folder), verified against PyTorch; then `predict --onnx`."""
    from medseg.inference.onnx import export_onnx, read_metadata

    for path in export_onnx(model, opset=opset, overwrite=overwrite):
        diff = read_metadata(path).get("verified_max_abs_diff", "?")
        console.print(f"wrote {path} (max |onnx - torch| logit difference {diff})")


@app.command("submission")
@cli_command
def submission_command(
    test_dir: Annotated[
        Path, typer.Argument(help="the competition's test/ folder (caseN/caseN_dayM/scans/*.png)")
    ],
    model: ModelsOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="submission CSV to write")] = Path(
        "submission.csv"
    ),
    sample_submission: Annotated[
        Path | None,
        typer.Option(help="the competition's sample_submission.csv: its row order, every row filled"),
    ] = None,
    tta: Annotated[bool, typer.Option(help="mirroring test-time augmentation")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    slice_thickness: Annotated[
        float, typer.Option(help="slice spacing in mm used to stack the PNGs (as at import)")
    ] = 3.0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing CSV")] = False,
    quiet: Quiet = False,
) -> None:
    """UW-Madison GI Tract (Kaggle 2022): predict the test scans and write id,class,predicted (RLE)."""
    from medseg.inference.submission import predict_uwmadison_submission

    with warnings_only(quiet):
        result = predict_uwmadison_submission(
            test_dir,
            model[0] if len(model) == 1 else model,
            out,
            sample_submission=sample_submission,
            tta=tta,
            slice_thickness=slice_thickness,
            device=device,
            overwrite=overwrite,
            progress=not quiet,
        )
    console.print(
        f"wrote {escape(str(result.path))}: {result.rows} rows for {result.scans} scan(s), "
        f"{result.rows_with_masks} with a mask",
        soft_wrap=True,
    )
