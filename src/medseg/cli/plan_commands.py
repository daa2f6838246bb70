"""`medseg plan` and `medseg preprocess`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medseg.cli.common import Configuration, Quiet, app, cli_command, console, number_values, warnings_only
from medseg.errors import ConfigError


def _plan_table(plan: Any) -> Table:
    sx = plan.target_spacing
    table = Table(title=f"plan {plan.configuration} for {plan.dataset_name}", show_header=False)
    table.add_row("channels", ", ".join(plan.channel_names))
    table.add_row("labels", ", ".join(f"{v}={k}" for k, v in plan.labels.items()))
    if plan.regions:
        table.add_row(
            "regions (sigmoid)",
            ", ".join(
                f"{name}={list(vals)} painted as {value}"
                for (name, vals), value in zip(plan.regions.items(), plan.regions_class_order, strict=True)
            ),
        )
    table.add_row(
        "target spacing x, y, z",
        f"{sx[2]:.3g} x {sx[1]:.3g} x {sx[0]:.3g} mm" + (" (z native)" if plan.keep_native_slices else ""),
    )
    table.add_row("median shape z, y, x", " x ".join(map(str, plan.median_shape)))
    table.add_row(
        "patch z, y, x",
        " x ".join(map(str, plan.patch_size))
        + (f", {plan.slab_slices} slices as channels" if plan.slab_slices > 1 else "")
        + (f", {plan.slab_step} slices apart" if plan.slab_step > 1 else ""),
    )
    table.add_row("batch size", str(plan.batch_size))
    table.add_row(
        "network",
        f"{plan.network.name}, {plan.network.base_features} base features, pooling {list(plan.network.pooling)}",
    )
    table.add_row("normalisation", ", ".join(n.scheme for n in plan.normalization))
    return table


@app.command("plan")
@cli_command
def plan_command(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (dataset.json, imagesTr/, labelsTr/)")],
    configuration: Configuration = "3d",
    spacing: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            metavar="X Y Z",
            help="target spacing X Y Z in mm, e.g. 0.5 0.5 3",
            parser=number_values("--spacing", "X Y Z", "0.5 0.5 3"),
        ),
    ] = None,
    patch: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            metavar="Z Y X",
            help="patch size Z Y X in voxels, e.g. 21 128 128 (2d / 2.5d plans: 1 Y X)",
            parser=number_values("--patch", "Z Y X", "21 128 128, or 1 256 256 for a 2d plan", whole=True),
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="training batch size")] = None,
    slab: Annotated[
        int | None, typer.Option(help="2.5D: neighbouring slices stacked as channels (odd; default 5)")
    ] = None,
    slab_step: Annotated[
        int | None,
        typer.Option(
            help="2.5D: distance in slices between neighbouring slab slices (2: every second slice, for thin slices)"
        ),
    ] = None,
    network: Annotated[str | None, typer.Option(help="network name from the model registry")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON/YAML file of plan fields to override")] = None,
    workers: Annotated[int, typer.Option(help="worker processes")] = 2,
    overwrite: Annotated[bool, typer.Option(help="replace an existing plan")] = False,
    quiet: Quiet = False,
) -> None:
    """Fingerprint a dataset and write its plan (spacing, patch, normalisation, network)."""
    from medseg.config import load_config_file
    from medseg.preprocessing.pipeline import plan_dataset

    overrides: dict[str, Any] = dict(load_config_file(config)) if config else {}
    if spacing is not None:
        if min(spacing) <= 0:
            raise ConfigError(
                f"--spacing X Y Z must be positive mm, found {' '.join(f'{v:g}' for v in spacing)}"
            )
        overrides["target_spacing"] = [spacing[2], spacing[1], spacing[0]]  # CLI x y z -> plan z y x
    if patch is not None:
        overrides["patch_size"] = list(patch)
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if (slab is not None or slab_step is not None) and configuration != "2.5d":
        raise ConfigError(f"--slab and --slab-step apply to -c 2.5d plans, not {configuration}")
    if slab is not None:
        overrides["slab_slices"] = slab
    if slab_step is not None:
        overrides["slab_step"] = slab_step
    if network is not None:
        overrides.setdefault("network", {})["name"] = network
    try:
        with warnings_only(quiet):
            plan, path = plan_dataset(
                dataset,
                configuration,
                overrides=overrides,
                workers=workers,
                progress=not quiet,
                overwrite=overwrite,
            )
    except ConfigError as exc:
        if config is None or not str(exc).startswith("plan override"):
            raise
        # name the file the user wrote (the options above are checked before they get here)
        raise ConfigError(str(exc).replace("plan override", f"{config} (plan settings)", 1)) from None
    if not quiet:
        console.print(_plan_table(plan))
    console.print(f"wrote {path}")


@app.command("preprocess")
@cli_command
def preprocess_command(
    dataset: Annotated[Path, typer.Argument(help="dataset folder with a plan (run `medseg plan` first)")],
    configuration: Configuration = "3d",
    workers: Annotated[int, typer.Option(help="worker processes (each holds one case in memory)")] = 2,
    quiet: Quiet = False,
) -> None:
    """Crop, resample and normalise every training case into the cache the trainer reads."""
    from medseg.preprocessing.pipeline import load_dataset_plan, preprocess_dataset

    plan = load_dataset_plan(dataset, configuration)
    with warnings_only(quiet):
        out = preprocess_dataset(dataset, plan, workers=workers, progress=not quiet)
    console.print(f"preprocessed cases are in {out}")
