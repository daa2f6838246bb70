"""``medseg dataset import prostatex|uwmadison``: adapters for web-published datasets.

Registered on the ``import`` sub-group of ``medseg dataset`` (see dataset_commands).
``prostatex`` is the only command here that uses the network (TCIA and the label archive).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medseg.cli.common import cli_command, console, err_console, warnings_only
from medseg.cli.dataset_commands import (
    ChunkOpt,
    ChunkOverlapOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    SkipOpt,
    import_app,
)
from medseg.errors import ConfigError


@import_app.command("prostatex")
@cli_command
def prostatex_command(
    out: OutOpt,
    patients: Annotated[
        list[str] | None,
        typer.Option(
            "--patient",
            "-p",
            help="TCIA subject id, e.g. ProstateX-0000 (repeatable). Default: all 98 with Meyer labels.",
        ),
    ] = None,
    labels: Annotated[
        str, typer.Option("--labels", help="Zone labels to pair: 'meyer' (Meyer et al. 2019).")
    ] = "meyer",
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="NBIA REST API base URL (default: TCIA's public v4 API).")
    ] = None,
    labels_url: Annotated[
        str | None, typer.Option("--labels-url", help="URL of Meyer et al.'s Data.zip.")
    ] = None,
    labels_sha256: Annotated[
        str | None, typer.Option("--labels-sha256", help="Expected SHA-256 of the label archive.")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache", help="Download cache, kept for resuming (default: OUT.downloads beside OUT)."
        ),
    ] = None,
    all_train: Annotated[
        bool,
        typer.Option(
            "--all-train", help="Put every case in imagesTr (default: Meyer's Test cases in imagesTs)."
        ),
    ] = False,
    crop_roi: Annotated[
        bool, typer.Option("--crop-roi", help="Crop the axial T2 and its label to the multi-plane ROI.")
    ] = False,
    roi_margin: Annotated[float, typer.Option("--roi-margin", min=0.0, help="ROI margin in mm.")] = 0.0,
    no_md5: Annotated[
        bool, typer.Option("--no-md5", help="Use getImage without per-file MD5 checks (getImageWithMD5Hash).")
    ] = False,
    keep_archives: Annotated[
        bool, typer.Option("--keep-archives", help="Keep the series ZIPs in the cache after extraction.")
    ] = False,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Retries per request after the first try.")
    ] = 5,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for the server.")
    ] = 60.0,
    skip_invalid: SkipOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download PROSTATEx T2 (axial, sagittal, coronal) from TCIA plus Meyer et al.'s zone labels.

    Downloads resume after an interruption (run the same command again); the dataset is
    written atomically in the nnU-Net v2 layout with labels background/PZ/TZ/DPU/AFS.
    """
    from medseg.data.adapters import prostatex

    with warnings_only(quiet):
        result = prostatex.download_prostatex(
            out,
            patients or None,
            base_url=base_url or prostatex.TCIA_BASE_URL,
            labels=labels,
            labels_url=labels_url or prostatex.MEYER_LABELS_URL,
            labels_sha256=labels_sha256,
            cache_dir=cache,
            meyer_split=not all_train,
            crop_roi=crop_roi,
            roi_margin_mm=roi_margin,
            verify_md5=not no_md5,
            keep_archives=keep_archives,
            skip_invalid=skip_invalid,
            overwrite=overwrite,
            retries=retries,
            timeout=timeout,
            progress=not quiet,
        )
    n_test = 0 if all_train else sum(c.split == "Test" for c in result.cases)
    resampled = [c.case_id for c in result.cases if c.label_resampled]
    console.print(
        f"imported {len(result.cases) - n_test} training and {n_test} test cases into {result.out}",
        soft_wrap=True,
    )
    if resampled:
        console.print(
            f"labels resampled onto the axial T2 grid (nearest neighbour): {', '.join(resampled)}",
            soft_wrap=True,
        )
    for case_id, reason in result.skipped.items():
        err_console.print(f"[yellow]skipped[/] {case_id}: {escape(reason)}", soft_wrap=True)


@import_app.command("uwmadison")
@cli_command
def uwmadison_command(
    source: Annotated[
        Path, typer.Argument(help="Competition folder holding train.csv and train/caseN/caseN_dayM/scans/.")
    ],
    out: OutOpt,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Masks CSV (default: SOURCE/train.csv).")
    ] = None,
    slice_thickness: Annotated[
        float, typer.Option("--slice-thickness", help="Slice thickness in mm (the competition's: 3).")
    ] = 3.0,
    overlap_priority: Annotated[
        str,
        typer.Option(
            "--overlap-priority",
            help="Where masks overlap, the class listed first wins.",
        ),
    ] = "stomach,large_bowel,small_bowel",
    keep_overlaps: Annotated[
        bool,
        typer.Option(
            "--keep-overlaps",
            help="Keep overlapping masks as label values of their own and declare one region per class "
            "in dataset.json (region-based training); the priority then only orders the painting.",
        ),
    ] = False,
    chunk: ChunkOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    skip_invalid: SkipOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert UW-Madison GI Tract PNG slices + RLE masks into one 3D volume per case/day."""
    from medseg.data.adapters.uwmadison import import_uwmadison

    if slice_thickness <= 0:
        raise ConfigError(f"--slice-thickness must be positive, found {slice_thickness}")
    with warnings_only(quiet):
        result = import_uwmadison(
            source,
            out,
            csv_path=csv_path,
            slice_thickness=slice_thickness,
            overlap_priority=[c.strip() for c in overlap_priority.split(",") if c.strip()],
            chunk=chunk,
            chunk_overlap=chunk_overlap,
            skip_invalid=skip_invalid,
            overwrite=overwrite,
            progress=not quiet,
            overlaps="regions" if keep_overlaps else "priority",
        )
    patients = len({s.patient for s in result.scans})
    console.print(f"imported {len(result.scans)} scans of {patients} cases into {result.out}", soft_wrap=True)
    if result.overlap_pixels and keep_overlaps:
        console.print(
            f"{result.overlap_pixels} pixels where masks overlap were kept as label values of their own "
            "(regions in dataset.json; counts per scan in uwmadison.json)",
            soft_wrap=True,
        )
    elif result.overlap_pixels:
        console.print(
            f"{result.overlap_pixels} pixels where masks overlap were resolved by priority "
            f"{' > '.join(c.strip() for c in overlap_priority.split(','))} (counts per scan in uwmadison.json)",
            soft_wrap=True,
        )
