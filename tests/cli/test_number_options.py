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


PATCH = "expected 3 whole numbers Z Y X (e.g. --patch 21 128 128, or 1 256 256 for a 2d plan)"
SPACING = "expected 3 numbers X Y Z (e.g. --spacing 0.5 0.5 3)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--patch", "1.5", "128", "128"], f"{PATCH}, found '1.5', which is not a whole number"),
        (["--patch", "128", "12x8", "128"], f"{PATCH}, found '12x8', which is not a whole number"),
        (["--patch", "128", "128", "x8"], f"{PATCH}, found 'x8', which is not a whole number"),
        (["--spacing", ".5x", "1", "1"], f"{SPACING}, found '.5x', which is not a number"),
        (["--spacing", "-0.5y", "1", "1"], f"{SPACING}, found '-0.5y', which is not a number"),
        (
            ["--spacing", "0.5,0.5,3", "--patch", "21", "128", "128"],
            f"{SPACING}, found '0.5,0.5,3', which is not a number (separate the numbers by spaces)",
        ),
    ],
)
def test_a_mistyped_number_is_named_without_asking_for_missing_values(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    """The hint 'were fewer values given?' is for an option or argument taken as a value,
    not for a mistyped number among the right count of values."""
    res = CliRunner().invoke(app, ["plan", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    text = _text(res.output)
    assert expected in text, res.output
    assert "fewer" not in text and "among them" not in text


def test_a_word_or_folder_taken_as_a_value_asks_for_missing_values(tmp_path: Path) -> None:
    folder = tmp_path / "scans_2024"
    folder.mkdir()
    for value in ("prostate", str(folder), "data/prostate_2024"):
        res = CliRunner().invoke(app, ["plan", "--spacing", "0.5", "0.5", value])
        assert res.exit_code == 2, res.output
        assert f"{SPACING}, found {value!r} among them; were fewer than 3 values given?" in _text(res.output)
