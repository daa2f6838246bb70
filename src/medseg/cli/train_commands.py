"""`medseg train`: train one fold (or all cases) of a planned dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medseg.cli.common import app, cli_command, console


@app.command("train")
@cli_command
def train_command(
    dataset: Annotated[Path, typer.Argument(help="dataset folder with a plan (`medseg plan` first)")],
    fold: Annotated[str, typer.Option(help="fold index, or 'all' to train on every case without validation")] = "0",
    configuration: Annotated[str, typer.Option("--configuration", "-c", help="3d, 2d or 2.5d")] = "3d",
    config: Annotated[Path | None, typer.Option(help="JSON/YAML training config (see TrainingConfig)")] = None,
    loss: Annotated[str | None, typer.Option(help="dice_ce, focal, dice_focal, dice or ce")] = None,
    epochs: Annotated[int | None, typer.Option(help="number of epochs")] = None,
    iterations: Annotated[int | None, typer.Option(help="iterations per epoch")] = None,
    lr: Annotated[float | None, typer.Option(help="initial learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="batch size (default: the plan's)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    budget_min: Annotated[float | None, typer.Option(help="stop after this many minutes of training")] = None,
    folds: Annotated[int, typer.Option(help="number of folds when splits.json is created")] = 5,
    out: Annotated[Path | None, typer.Option(help="model folder (default DATASET/models/<config>/fold_<k>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the model folder's checkpoint_last.pt")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing model folder")] = False,
    workers: Annotated[int, typer.Option(help="preprocessing worker processes")] = 2,
) -> None:
    """Train a U-Net on one fold; Ctrl-C saves a checkpoint, --resume continues it."""
    from medseg.errors import ConfigError
    from medseg.training.config import load_training_config
    from medseg.training.trainer import train

    overrides: dict[str, Any] = {
        "loss": loss,
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "learning_rate": lr,
        "batch_size": batch_size,
        "device": device,
        "time_budget_minutes": budget_min,
    }
    cfg = load_training_config(config, overrides)
    if fold == "all":
        fold_index = None
    else:
        try:
            fold_index = int(fold)
        except ValueError:
            raise ConfigError(f"--fold must be an integer or 'all', found {fold!r}") from None
    try:
        result = train(
            dataset,
            fold_index,
            configuration=configuration,
            config=cfg,
            out_dir=out,
            resume=resume,
            overwrite=overwrite,
            folds=folds,
            workers=workers,
            progress=True,
        )
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] checkpoint_last.pt saved; continue with --resume")
        raise typer.Exit(130) from None
    best = "n/a (no validation)" if result.best_epoch < 0 else f"{result.best_dice:.4f} at epoch {result.best_epoch}"
    console.print(f"trained {result.epochs_completed} epochs; best validation mean Dice {best}")
    if result.stopped_early:
        console.print(result.stopped_early)
    console.print(f"model folder: {result.model_dir}")
