"""`medseg train` (one fold, or all cases) and `medseg crossval` (every fold, then out-of-fold evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from medseg.cli.common import Configuration, Quiet, app, cli_command, console, warnings_only
from medseg.training.config import TrainingConfig

if TYPE_CHECKING:
    from medseg.training.slice_classifier import SliceClassifierConfig


def _with_default(text: str, name: str) -> str:
    """Help of an option that overrides TrainingConfig field ``name``, naming its default."""
    default = TrainingConfig.__dataclass_fields__[name].default
    shown = "none" if default is None else default
    return f"{text} (default {shown}; {name} in a --config file and in Python's TrainingConfig)"


LOSS_HELP = _with_default("dice_ce, focal, dice_focal, dice or ce", "loss")
EPOCHS_HELP = _with_default("number of epochs", "epochs")
ITERATIONS_HELP = _with_default("iterations per epoch", "iterations_per_epoch")
LR_HELP = _with_default("initial learning rate", "learning_rate")
DEVICE_HELP = _with_default("auto, cpu or cuda", "device")

SLICE_CLASSIFIER_HELP = (
    "also train an empty-slice classifier (2D / 2.5D models; 400 iterations, or as many as the network "
    "when fewer; with --budget-min at most a tenth of that budget more): `medseg predict` then clears "
    "the slices it judges empty"
)


def _slice_classifier_config(enabled: bool, cfg: TrainingConfig) -> SliceClassifierConfig | None:
    """The classifier's settings; under a time budget it trains for at most a tenth of it."""
    from medseg.training.slice_classifier import SliceClassifierConfig

    if not enabled:
        return None
    budget = cfg.time_budget_minutes
    # Never more iterations than the segmentation network gets (a 2-iteration smoke run
    # spent minutes on the classifier's 400); real runs get the classifier's default.
    iterations = min(SliceClassifierConfig.iterations, cfg.epochs * cfg.iterations_per_epoch)
    return SliceClassifierConfig(
        iterations=iterations, time_budget_minutes=None if budget is None else budget / 10
    )


@app.command("train")
@cli_command
def train_command(
    dataset: Annotated[Path, typer.Argument(help="dataset folder with a plan (`medseg plan` first)")],
    fold: Annotated[
        str, typer.Option(help="fold index, or 'all' to train on every case without validation")
    ] = "0",
    configuration: Configuration = "3d",
    config: Annotated[
        Path | None, typer.Option(help="JSON/YAML training config (see TrainingConfig)")
    ] = None,
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    epochs: Annotated[int | None, typer.Option(help=EPOCHS_HELP)] = None,
    iterations: Annotated[int | None, typer.Option(help=ITERATIONS_HELP)] = None,
    lr: Annotated[float | None, typer.Option(help=LR_HELP)] = None,
    batch_size: Annotated[int | None, typer.Option(help="batch size (default: the plan's)")] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    budget_min: Annotated[
        float | None,
        typer.Option(help=_with_default("stop after this many minutes of training", "time_budget_minutes")),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="number of folds (default: splits.json's, or 5 when it is created)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="model folder (default DATASET/models/<config>/fold_<k>)")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="continue from the model folder's checkpoint_last.pt with the settings it was trained with "
            "(its training_config.json; options given here, e.g. more --epochs, override them)"
        ),
    ] = False,
    resume_changed: Annotated[
        bool,
        typer.Option(
            help="with --resume: continue even though the loss, optimiser, augmentation or plan differ from "
            "the checkpoint's (recorded in model.json); without it such a resume is refused"
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing model folder")] = False,
    workers: Annotated[int, typer.Option(help="preprocessing worker processes")] = 2,
    slice_classifier: Annotated[
        bool,
        typer.Option(help=SLICE_CLASSIFIER_HELP),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Train a U-Net on one fold; Ctrl-C saves a checkpoint, --resume continues it."""
    from medseg.errors import ConfigError
    from medseg.training.trainer import default_model_dir, is_main_process, recorded_training_config, train

    if fold == "all":
        fold_index = None
    else:
        try:
            fold_index = int(fold)
        except ValueError:
            raise ConfigError(f"--fold must be an integer or 'all', found {fold!r}") from None
    if resume and config is None:
        # Continue with what the checkpoint was trained with (`train --loss focal`, Ctrl-C,
        # `train --resume`), not with the defaults; options given here still override it.
        recorded = recorded_training_config(out or default_model_dir(dataset, configuration, fold_index))
    else:
        recorded = None
    cfg = _training_config(
        config, loss, epochs, iterations, lr, batch_size, device, budget_min, base=recorded
    )
    try:
        with warnings_only(quiet):
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
                progress=not quiet,
                slice_classifier=_slice_classifier_config(slice_classifier, cfg),
                resume_changed=resume_changed,
            )
    except KeyboardInterrupt:
        if is_main_process():
            last = (out or default_model_dir(dataset, configuration, fold_index)) / "checkpoint_last.pt"
            if last.is_file():
                console.print(
                    f"[yellow]interrupted:[/] {escape(str(last))} saved; continue with --resume",
                    soft_wrap=True,
                )
            else:  # stopped while preprocessing or before the first checkpoint
                console.print(
                    "[yellow]interrupted[/] before training wrote a checkpoint: nothing to resume; run the "
                    "same command again (preprocessed cases are kept)",
                    soft_wrap=True,
                )
        raise typer.Exit(130) from None
    if not is_main_process():  # torchrun: rank 0 reports
        return
    if result.already_complete:
        console.print(result.stopped_early)
        console.print(f"model folder: {result.model_dir} (unchanged)")
        return
    best = (
        "n/a (no validation)"
        if result.best_epoch < 0
        else f"{result.best_dice:.4f} at epoch {result.best_epoch}"
    )
    n = result.epochs_completed
    console.print(f"trained {n} epoch{'' if n == 1 else 's'}; best validation mean Dice {best}")
    if result.stopped_early:
        console.print(result.stopped_early)
    folder = result.model_dir
    console.print(
        f"model folder: {folder} (curves: {folder / 'curves.png'}, per-epoch log: {folder / 'log.csv'})",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


def _training_config(
    config: Path | None,
    loss: str | None,
    epochs: int | None,
    iterations: int | None,
    lr: float | None,
    batch_size: int | None,
    device: str | None,
    budget_min: float | None,
    *,
    base: TrainingConfig | None = None,
) -> Any:
    """The TrainingConfig of a config file (or ``base``, or the defaults) with the command-line
    overrides."""
    from medseg.training.config import load_training_config

    overrides: dict[str, Any] = {
        "loss": loss,
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "learning_rate": lr,
        "batch_size": batch_size,
        "device": device,
        "time_budget_minutes": budget_min,
    }
    if config is None and base is not None:
        return base.with_overrides(overrides)
    return load_training_config(config, overrides)


@app.command("crossval")
@cli_command
def crossval_command(
    dataset: Annotated[Path, typer.Argument(help="dataset folder with a plan (`medseg plan` first)")],
    configuration: Configuration = "3d",
    folds: Annotated[
        int | None, typer.Option(help="number of folds (default: splits.json's, or 5 when it is created)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="JSON/YAML training config (see TrainingConfig)")
    ] = None,
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    epochs: Annotated[int | None, typer.Option(help=EPOCHS_HELP)] = None,
    iterations: Annotated[int | None, typer.Option(help=ITERATIONS_HELP)] = None,
    lr: Annotated[float | None, typer.Option(help=LR_HELP)] = None,
    batch_size: Annotated[int | None, typer.Option(help="batch size (default: the plan's)")] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    budget_min: Annotated[
        float | None,
        typer.Option(
            help=_with_default("stop each fold after this many minutes of training", "time_budget_minutes")
        ),
    ] = None,
    resume_changed: Annotated[
        bool,
        typer.Option(
            help="continue an interrupted fold even though the loss, optimiser, augmentation or plan "
            "differ from its checkpoint's (recorded in model.json); without it such a fold is refused"
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="retrain every fold from scratch and replace the predictions")
    ] = False,
    workers: Annotated[int, typer.Option(help="preprocessing worker processes")] = 2,
    tta: Annotated[
        bool, typer.Option(help="mirroring test-time augmentation for the out-of-fold predictions")
    ] = False,
    metrics: Annotated[
        str, typer.Option(help="comma list of evaluation metrics (dice is required)")
    ] = "dice,iou",
    slice_classifier: Annotated[bool, typer.Option(help=SLICE_CLASSIFIER_HELP)] = False,
    quiet: Quiet = False,
) -> None:
    """Train every fold (finished folds are skipped, interrupted ones resumed), then predict and evaluate each fold's validation cases; writes models/<config>/crossval/summary.json."""
    from rich.table import Table

    from medseg.training.crossval import cross_validate
    from medseg.training.trainer import is_main_process

    cfg = _training_config(config, loss, epochs, iterations, lr, batch_size, device, budget_min)
    try:
        with warnings_only(quiet):
            result = cross_validate(
                dataset,
                configuration=configuration,
                config=cfg,
                slice_classifier=_slice_classifier_config(slice_classifier, cfg),
                folds=folds,
                workers=workers,
                overwrite=overwrite,
                tta=tta,
                metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
                progress=not quiet,
                resume_changed=resume_changed,
            )
    except KeyboardInterrupt:
        if is_main_process():
            console.print(
                "[yellow]interrupted:[/] rerun the same command to continue (finished folds are kept, "
                "the interrupted one resumes from its checkpoint_last.pt when it wrote one)",
                soft_wrap=True,
            )
        raise typer.Exit(130) from None
    if not result.evaluated:  # torchrun: rank 0 reports
        return
    if not quiet:
        table = Table("fold", "action", "epochs", "best val Dice", "val cases")
        for r in result.folds:
            best = "n/a" if r.best_val_dice is None else f"{r.best_val_dice:.4f}"
            table.add_row(str(r.fold), r.action, str(r.epochs_completed), best, str(len(r.val_cases)))
        console.print(table)
    for r in result.folds:
        if r.differences:
            console.print(
                f"[yellow]fold {r.fold} was trained differently from this request[/] (used as it is): "
                + "; ".join(r.differences)
            )
    dice = ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in result.per_class_dice.items())
    mean = "n/a" if result.mean_dice is None else f"{result.mean_dice:.4f}"
    if result.per_region_dice:  # a region model: the mean is over the regions
        console.print(f"out-of-fold Dice per class over {result.n_cases} cases: {dice}")
        text = ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in result.per_region_dice.items()
        )
        console.print(f"out-of-fold Dice per region: {text}; mean over regions {mean}")
    else:
        console.print(f"out-of-fold Dice over {result.n_cases} cases: {dice}; mean {mean}")
    for metric, values in result.per_class_means.items():
        text = ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in values.items())
        console.print(f"out-of-fold {metric}: {text}")
    if "miou" in result.case_level_means:
        value = result.case_level_means["miou"]
        pooled = result.case_level_means.get("miou_pooled")
        console.print(
            f"out-of-fold mIoU (per case, background included; mean over cases): "
            f"{'n/a' if value is None else f'{value:.4f}'}; pooled over all cases (miou_pooled): "
            f"{'n/a' if pooled is None else f'{pooled:.4f}'}"
        )
    console.print(f"summary: {result.summary_path}")


def gain_text(before: float, after: float) -> str:
    """A Dice gain as the tuning table shows it: 4 decimals, or the digits a gain (or loss)
    smaller than that needs, so that a rule adopted for +0.000001 does not read '+0.0000'."""
    if before != before or after != after:
        return "n/a"
    gain = after - before
    if gain == 0 or abs(gain) >= 5e-5:
        return f"{gain:+.4f}"
    return f"{gain:+.1e}"


@app.command("tune-postprocessing")
@cli_command
def tune_postprocessing_command(
    dataset: Annotated[Path, typer.Argument(help="dataset folder after `medseg crossval`")],
    configuration: Configuration = "3d",
    min_gain: Annotated[
        float, typer.Option(help="Dice a rule must add to be adopted (default: any gain)", min=0.0)
    ] = 0.0,
) -> None:
    """Choose largest-component clean-up rules on the cross-validation predictions (as nnU-Net does) and store them with every fold's model and fold_all's (if trained), so predict applies them (a region model's are chosen on its region masks); copy postprocessing.json again into a lean ONNX copy made before."""
    from rich.table import Table

    from medseg.preprocessing.pipeline import load_dataset_plan
    from medseg.training.crossval import tune_postprocessing

    choice, record = tune_postprocessing(dataset, configuration=configuration, min_gain=min_gain)
    plan = load_dataset_plan(dataset, configuration)
    # what each keep_largest:<value> acts on: the class of that value, or the region painted with it
    acts_on = (
        dict(zip((str(v) for v in plan.regions_class_order), plan.regions, strict=True))
        if plan.regions
        else {str(v): name for name, v in plan.labels.items()}
    )
    # the Dice whose gain decides a rule: the mean for the largest foreground component, the
    # class's (region's) own for its largest component (keyed by label value, or region index)
    scored_key = (
        {str(v): i for i, v in enumerate(plan.regions_class_order)}
        if plan.regions
        else {str(v): v for v in plan.labels.values()}
    )
    table = Table(
        "rule",
        "mean Dice before",
        "after",
        "gain",
        "adopted",
        caption="gain: of the mean Dice for the foreground rule, of its class's Dice for a class "
        "rule (what decides)",
    )
    for step in choice.steps:
        value = step.rule.partition(":")[2]
        before = [v for v in step.dice_before.values() if v == v]
        after = [v for v in step.dice_after.values() if v == v]
        if value in scored_key:
            key = scored_key[value]
            gain = gain_text(step.dice_before[key], step.dice_after[key])  # the class's own Dice
        else:
            gain = (
                gain_text(sum(before) / len(before), sum(after) / len(after)) if before and after else "n/a"
            )
        table.add_row(
            f"{step.rule} ({acts_on[value]})" if value in acts_on else step.rule,
            f"{sum(before) / len(before):.4f}" if before else "n/a",
            f"{sum(after) / len(after):.4f}" if after else "n/a",
            gain,
            "[green]yes[/]" if step.adopted else "no",
        )
    console.print(table)
    import json

    written = json.loads(record.read_text())["written_to"]
    also = " and fold_all" if any(Path(w).parent.name == "fold_all" for w in written) else ""
    console.print(
        f"rules over {choice.n_cases} out-of-fold cases written to every fold{also}; details: {record}"
    )
    if any((Path(w).parent / "model.onnx").is_file() for w in written):  # exported: copies may exist
        console.print(
            "a lean ONNX copy made before this keeps its old postprocessing.json: copy the new one into it"
        )
