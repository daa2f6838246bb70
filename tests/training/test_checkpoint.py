from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from medseg.errors import InputError
from medseg.training.checkpoint import (
    model_architecture,
    model_folder_summary,
    model_folders,
    read_model_record,
)


def _model(folder: Path, fold: int | None) -> Path:
    """A model folder's files (no weights are loaded by what is tested here)."""
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"fold": fold, "epochs_completed": 5}))
    for name in ("dataset.json", "checkpoint_best.pt"):
        (folder / name).write_text("")
    return folder


def _with_plan(folder: Path) -> Path:
    (folder / "plan.json").write_text("")  # model_folders checks it exists; summary tests go without
    return folder


def test_an_ensemble_is_its_numbered_folds_and_other_models_beneath_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folds = [_with_plan(_model(tmp_path / f"fold_{k}", k)) for k in (0, 1, 2, 10)]
    _with_plan(_model(tmp_path / "int0", 0))  # `medseg train --out models/3d/int0` experiment
    _with_plan(_model(tmp_path / "fold_all", None))
    _with_plan(_model(tmp_path / "fold_0_old", 0))
    with caplog.at_level(logging.WARNING):
        assert model_folders(tmp_path) == folds  # fold_10 after fold_2
    warning = [r.getMessage() for r in caplog.records if "not using" in r.getMessage()]
    assert len(warning) == 1 and "fold_0_old, fold_all, int0" in warning[0]


def test_fold_all_is_the_ensemble_only_when_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    only = _with_plan(_model(tmp_path / "fold_all", None))
    with caplog.at_level(logging.WARNING):
        assert model_folders(tmp_path) == [only]
    assert not caplog.records


def test_a_folder_of_models_not_named_fold_is_no_ensemble(tmp_path: Path) -> None:
    _with_plan(_model(tmp_path / "int0", 0))
    _with_plan(_model(tmp_path / "int1", 1))
    with pytest.raises(InputError, match="model folder\\(s\\) int0, int1; pass one of them with -m") as err:
        model_folders(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert model_folders(tmp_path / "int1") == [tmp_path / "int1"]  # each is usable on its own


def test_info_lists_only_the_ensemble_as_folds(tmp_path: Path) -> None:
    for k in range(2):
        _model(tmp_path / f"fold_{k}", k)
    _model(tmp_path / "int0", 0)
    summary = model_folder_summary(tmp_path)
    assert summary is not None
    assert [f["folder"] for f in summary["folds"]] == ["fold_0", "fold_1"]
    assert summary["not_in_ensemble"] == ["int0"]
    # Without fold_* folders the models are listed, as none of them is an ensemble member.
    other = tmp_path / "experiments"
    _model(other / "a", 0)
    only = model_folder_summary(other)
    assert only is not None and [f["folder"] for f in only["folds"]] == ["a"]
    assert "not_in_ensemble" not in only
    assert (
        only["not_an_ensemble"] is True and "not_an_ensemble" not in summary
    )  # info says predict refuses it
    from typer.testing import CliRunner

    from medseg.cli import app

    res = CliRunner().invoke(app, ["info", str(other)])
    assert res.exit_code == 0 and "not an ensemble" in res.output and "refuses this folder" in res.output


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"labels": ', r"model\.json: is not valid JSON"),
        ("[1, 2]", r"model\.json: is not a model record; expected a JSON object; found list"),
        ('{"fold": 0}', r"model\.json: has no architecture record"),
        ('{"architecture": {"name": "unet"}}', r"model\.json: architecture record is incomplete"),
    ],
)
def test_a_broken_model_json_is_named(tmp_path: Path, text: str, match: str) -> None:
    """A hand-edited or cut-short model.json used to surface as an internal error in predict."""
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(InputError, match=match):
        model_architecture(tmp_path, read_model_record(tmp_path) if text.startswith('{"') else None)
