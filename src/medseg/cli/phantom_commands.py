"""``medseg phantom``: write a synthetic dataset (prostate MR zones or abdominal CT)."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg.cli.common import app, cli_command, console, number_list_command
from medseg.errors import ConfigError


def _parse_size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    # "20 128 128" arrives joined as "20,128,128" (number_list_command); "20x128x128" as it is.
    parts = text.lower().replace(",", "x").split("x")
    shown = " ".join(parts)
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"--size must be three whole numbers Z Y X like 20 128 128, found {shown!r}"
        ) from None
    if len(values) != 3 or any(v < 1 for v in values):
        raise ConfigError(
            f"--size must be three positive whole numbers Z Y X like 20 128 128, found {shown!r}"
        )
    return (values[0], values[1], values[2])


@app.command("phantom", cls=number_list_command("--size"))
@cli_command
def phantom(
    out: Path = typer.Argument(..., metavar="OUT", help="Dataset folder to create (nnU-Net v2 layout)."),
    kind: str = typer.Option(
        "prostate",
        "--kind",
        "-k",
        help="prostate (T2 MR zones), ct (abdominal organs), or uwmadison (the UW-Madison GI Tract "
        "Kaggle layout: 16-bit PNG slices, train.csv of RLE masks, test/, sample_submission.csv; "
        "--train / --test count scans, two per patient).",
    ),
    train: int = typer.Option(8, "--train", min=1, help="Number of training cases (imagesTr/labelsTr)."),
    test: int = typer.Option(2, "--test", min=0, help="Number of test cases (imagesTs/labelsTs)."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; case i uses its own seed derived from it."),
    size: str | None = typer.Option(
        None,
        "--size",
        metavar="Z Y X",
        help="Grid size Z Y X in voxels, e.g. 20 128 128 (default 20 128 128 prostate, 32 96 128 ct; "
        "clinical-sized grids are 24 384 384 prostate, 64 256 256 ct); the form 20x128x128 also works.",
    ),
    views: bool = typer.Option(
        False,
        "--views",
        help="Prostate only: also write sagittal and coronal views (views/) for `medseg roi`.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate a deterministic synthetic dataset for demos, tests and benchmarks."""
    from medseg.data.phantom import write_phantom_dataset, write_uwmadison_phantom

    if kind not in ("prostate", "ct", "uwmadison"):
        raise ConfigError(f"--kind must be 'prostate', 'ct' or 'uwmadison', found {kind!r}")
    if kind == "uwmadison":
        if views:
            raise ConfigError("--views exists only for --kind prostate")
        path = write_uwmadison_phantom(
            out, n_train=train, n_test=test, seed=seed, size=_parse_size(size), overwrite=overwrite,
            progress=not quiet,
        )  # fmt: skip
        console.print(f"wrote {train} training and {test} test UW-Madison phantom scans to {path}")
        console.print(
            f"  {path / 'train.csv'}, train/" + (f", test/, {path / 'sample_submission.csv'}" if test else "")
        )
        console.print(f"  then: medseg dataset import uwmadison {path} -o DATASET", markup=False)
        return
    path = write_phantom_dataset(
        out,
        kind,  # type: ignore[arg-type]
        n_train=train,
        n_test=test,
        seed=seed,
        size=_parse_size(size),
        overwrite=overwrite,
        with_views=views,
        progress=not quiet,
    )
    parts = [f"{train} training", f"{test} test"]
    console.print(f"wrote {' and '.join(parts)} {kind} phantom cases to {path}")
    console.print(
        f"  {path / 'dataset.json'}, imagesTr/, labelsTr/" + (", imagesTs/, labelsTs/" if test else "")
    )
    if views:
        console.print(f"  sagittal and coronal views: {path / 'views'} (index: views/views.json)")
