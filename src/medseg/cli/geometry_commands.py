"""Geometry commands: ``medseg roi`` (multi-plane ROI crop of the axial series)."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg.cli.common import app, cli_command, console
from medseg.errors import ConfigError
from medseg.geometry.roi import write_roi


@app.command("roi")
@cli_command
def roi_command(
    axial: Path = typer.Argument(..., help="Axial T2: NIfTI/NRRD/MHA file or DICOM series folder."),
    sagittal: Path = typer.Argument(..., help="Sagittal T2 of the same study."),
    coronal: Path = typer.Argument(..., help="Coronal T2 of the same study."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Cropped axial volume (.nii.gz, .nii, .nrrd, .mha)."
    ),
    margin: float = typer.Option(
        0.0, "--margin", help="Margin in mm added around the overlap (clipped to the axial grid)."
    ),
    method: str = typer.Option(
        "exact", "--method", help="'exact' (polytope of the 3 grids) or 'aabb' (the exercise's world boxes)."
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Where to write the box as JSON (default: OUTPUT with suffix .roi.json)."
    ),
    png: bool = typer.Option(
        True,
        "--png/--no-png",
        help="Draw the overlap on each series' slice through its centre (OUTPUT with suffix .roi.png).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Crop the axial series to where the axial, sagittal and coronal series overlap (Meyer et al.).

    Writes the crop, its box as JSON and a picture of the overlap outlined on each series (check it). Series given in another plane order (the sagittal one as the axial) are refused, naming the order that fits.
    """
    from medseg.geometry.roi import default_roi_png_path
    from medseg.io.atomic import check_writable, write_bytes_atomic

    if method not in ("exact", "aabb"):
        raise ConfigError(f"--method must be 'exact' or 'aabb', found '{method}'")
    picture = default_roi_png_path(output) if png else None
    if picture is not None:
        check_writable(picture, overwrite)
    result = write_roi(
        axial,
        sagittal,
        coronal,
        output,
        margin_mm=margin,
        method="exact" if method == "exact" else "aabb",
        json_path=json_path,
        overwrite=overwrite,
    )
    roi = result.roi
    console.print(
        f"wrote {result.volume_path}: shape zyx {roi.box.shape} of axial {roi.axial_geometry.shape}, "
        f"index box {roi.box.lower}..{roi.box.upper} (z, y, x; upper exclusive), "
        f"overlap {roi.region.volume_mm3 / 1000.0:.1f} ml",
        markup=False,
        soft_wrap=True,
    )
    console.print(f"wrote {result.json_path}", markup=False, soft_wrap=True)
    if picture is not None:
        from medseg.export.overlay import render_roi_png

        try:
            image = render_roi_png(
                result.inputs,
                roi.region.contains,
                crop=(roi.box.lower, roi.box.upper),
                centre=roi.region.vertices.mean(axis=0),
            )
        except Exception as exc:  # the picture is a check: the crop and JSON written above stand
            console.print(f"[yellow]warning:[/] the ROI picture could not be drawn: {exc}", soft_wrap=True)
            return
        write_bytes_atomic(picture, image, overwrite=overwrite)
        console.print(f"wrote {picture} (the overlap outlined on each series)", markup=False, soft_wrap=True)
