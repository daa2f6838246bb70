"""Options taking several numbers (--patch Z Y X, --spacing) say how many when given too few."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli import app


def _text(output: str) -> str:
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)  # Rich's error box, unwrapped


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["plan", "DATA", "--patch", "128", "128", "--batch-size", "2"],
            "Invalid value for '--patch': expected 3 whole numbers Z Y X (e.g. --patch 21 128 128, "
            "or 1 256 256 for a 2d plan), found '--batch-size' among them; were fewer than 3 values given?",
        ),
        (
            ["plan", "--patch", "128", "128", "DATA"],
            "expected 3 whole numbers Z Y X (e.g. --patch 21 128 128, or 1 256 256 for a 2d plan), "
            "found 'DATA' among them; were fewer than 3 values given?",
        ),
        (
            ["plan", "DATA", "--patch", "1.5", "128", "128"],
            "expected 3 whole numbers Z Y X (e.g. --patch 21 128 128, or 1 256 256 for a 2d plan), "
            "found '1.5' among them",
        ),
        (
            ["plan", "DATA", "--spacing", "0.5", "0.5", "--patch", "21", "128", "128"],
            "Invalid value for '--spacing': expected 3 numbers X Y Z (e.g. --spacing 0.5 0.5 3), "
            "found '--patch' among them",
        ),
        (
            ["predict", "a.nii.gz", "-m", "m", "-o", "o", "--spacing", "1", "1", "-q"],
            "Invalid value for '--spacing': expected 3 numbers Z Y X (e.g. --spacing 3 0.5 0.5), found '-q'",
        ),
        (
            ["info", "x.png", "--spacing", "1", "1", "--json"],
            "expected 3 numbers Z Y X (e.g. --spacing 3 0.5 0.5), found '--json'",
        ),
        (["plan", "DATA", "--patch", "128", "128"], "Option '--patch' requires 3 arguments"),
    ],
)
def test_too_few_values_say_how_many_are_expected(tmp_path: Path, args: list[str], expected: str) -> None:
    args = [str(tmp_path) if a == "DATA" else a for a in args]
    expected = expected.replace("'DATA'", repr(str(tmp_path)))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert expected in _text(res.output), res.output
    assert "valid integer" not in res.output and "valid number" not in res.output
