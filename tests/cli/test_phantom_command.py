"""``medseg phantom``: writes a dataset, refuses to overwrite, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.data.dataset import list_cases, read_descriptor
from medseg.io import read_volume

runner = CliRunner()


def test_phantom_command_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = runner.invoke(
        app, ["phantom", str(out), "--train", "2", "--test", "1", "--seed", "3", "--views", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "2 training and 1 test prostate phantom cases" in result.output
    assert str(out) in result.output
    assert read_descriptor(out).channel_names == {"0": "T2"}
    assert len(list_cases(out)) == 2 and len(list_cases(out, "Ts")) == 1
    views = json.loads((out / "views" / "views.json").read_text())
    assert sorted(views) == ["prostate_000", "prostate_001", "prostate_002"]
    entry = views["prostate_002"]  # the test case
    assert entry["axial"] == "imagesTs/prostate_002_0000.nii.gz"
    axial, sagittal = read_volume(out / entry["axial"]), read_volume(out / entry["sagittal"])
    sag_label = read_volume(out / entry["sagittal_label"])
    sagittal.geometry.require_same(sag_label.geometry, "sagittal image and label")
    assert int(np.argmax(np.abs(sagittal.direction[:, 0]))) == 0  # slices stacked left-right
    assert int(np.argmax(np.abs(axial.direction[:, 0]))) == 2  # slices stacked foot-head
    assert set(np.unique(sag_label.array)) - {0} and len(list((out / "views").glob("*_sagittal.nii.gz"))) == 3


def test_phantom_command_ct_with_size(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    result = runner.invoke(
        app, ["phantom", str(out), "--kind", "ct", "--train", "1", "--test", "0", "--size", "6x24x32", "-q"]
    )
    assert result.exit_code == 0, result.output
    (case,) = list_cases(out)
    assert read_volume(case.images[0]).shape == (6, 24, 32)
    assert read_descriptor(out).channel_names == {"0": "CT"}


def test_phantom_command_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["phantom", str(out), "--kind", "ct", "--train", "1", "--test", "0", "--size", "4x16x16", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "output exists" in result.output and "Traceback" not in result.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kind", "mri"], "--kind must be"),
        (["--kind", "ct", "--views"], "only for the prostate"),
        (["--size", "20x128"], "--size must be"),
        (["--size", "axbxc"], "--size must"),
    ],
)
def test_phantom_command_bad_options(tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "ds"
    result = runner.invoke(app, ["phantom", str(out), "-q", *extra])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_phantom_command_rejects_zero_training_cases(tmp_path: Path) -> None:
    result = runner.invoke(app, ["phantom", str(tmp_path / "ds"), "--train", "0"])
    assert result.exit_code != 0
    assert not (tmp_path / "ds").exists()


def test_phantom_uwmadison_then_the_competition_commands(tmp_path: Path) -> None:
    """The competitor's start: `phantom --kind uwmadison`, then `dataset import uwmadison`."""
    src = tmp_path / "uw"
    res = runner.invoke(
        app,
        [
            "phantom",
            str(src),
            "--kind",
            "uwmadison",
            "--train",
            "2",
            "--test",
            "1",
            "--size",
            "4x24x32",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "2 training and 1 test UW-Madison phantom scans" in res.output
        and "dataset import uwmadison" in res.output
    )
    assert (src / "train.csv").is_file() and (src / "sample_submission.csv").is_file()
    res = runner.invoke(app, ["dataset", "import", "uwmadison", str(src), "-o", str(tmp_path / "ds"), "-q"])
    assert res.exit_code == 0 and "imported 2 scans of 1 cases" in res.output, res.output
    res = runner.invoke(app, ["phantom", str(tmp_path / "x"), "--kind", "uwmadison", "--views"])
    assert res.exit_code == 2 and "--views exists only for --kind prostate" in res.output


@pytest.mark.parametrize("size", [["8", "32", "24"], ["8x32x24"]])
def test_phantom_size_takes_space_separated_numbers_as_every_other_option(
    tmp_path: Path, size: list[str]
) -> None:
    """The README says numbers are always given space-separated (`plan --patch 21 128 128`), but
    `phantom --size 8 32 24` was refused ("Got unexpected extra arguments (32 24)")."""
    out = tmp_path / "ds"
    result = runner.invoke(app, ["phantom", "--size", *size, str(out), "--train", "1", "--test", "0", "-q"])
    assert result.exit_code == 0, result.output
    (case,) = list_cases(out)
    assert read_volume(case.images[0]).shape == (8, 32, 24)
    bad = runner.invoke(app, ["phantom", str(tmp_path / "bad"), "--size", "8", "32", "-q"])
    assert (
        bad.exit_code == 2
        and "three positive whole numbers Z Y X like 20 128 128, found '8 32'" in bad.output
    )
