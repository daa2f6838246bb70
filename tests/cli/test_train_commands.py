from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.training.config import TrainingConfig


@pytest.mark.parametrize("command", ["train", "crossval"])
def test_help_names_the_defaults_of_the_training_options(command: str) -> None:
    """`--epochs`, `--loss` ... default to TrainingConfig's values, which --help did not say
    (a student could not tell how long `medseg train` would run)."""
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "240"})
    assert res.exit_code == 0, res.output
    lines = {m.group(1): m.group(2) for m in re.finditer(r"(--[a-z-]+)\s+<\w+>\s+(.*?)\s*│", res.output)}
    defaults = TrainingConfig()
    assert f"(default {defaults.epochs}," in lines["--epochs"]
    assert f"(default {defaults.iterations_per_epoch}," in lines["--iterations"]
    assert f"(default {defaults.loss}," in lines["--loss"]
    assert f"(default {defaults.learning_rate}," in lines["--lr"]
    assert f"(default {defaults.device}," in lines["--device"]
