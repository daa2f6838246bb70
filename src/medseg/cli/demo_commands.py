"""`medseg demo`: the whole path on a built-in synthetic phantom, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medseg.cli.common import app, cli_command, console


@app.command("demo")
@cli_command
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("demo_output"),
    minutes: Annotated[float, typer.Option(help="training time budget in minutes")] = 3.0,
    train_cases: Annotated[int, typer.Option(help="number of phantom training cases")] = 10,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
) -> None:
    """Generate a phantom dataset, crop an ROI, plan, train, predict, evaluate and export everything."""
    from medseg.pipeline import run_demo

    result = run_demo(
        out, minutes=minutes, n_train=train_cases, overwrite=overwrite, progress=True, say=console.print
    )
    console.print(
        f"[bold green]demo finished[/] in {result.seconds.get('total', 0):.0f} s; open {result.report}"
    )
