from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

import medseg
from medseg.cli import app

runner = CliRunner()


def test_version_names_medseg_and_its_libraries() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    first, rest = res.output.split("\n", 1)
    assert first == f"medseg {medseg.__version__}"
    flat = " ".join(rest.split())
    assert f"torch {version('torch')}" in flat and f"monai {version('monai')}" in flat


def test_no_arguments_show_the_commands() -> None:
    res = runner.invoke(app, [])
    assert "predict" in res.output and "--version" in res.output
