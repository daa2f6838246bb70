from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.training.config import TrainingConfig


@pytest.mark.parametrize("command", ["train", "crossval"])
def test_help_names_the_defaults_of_the_training_options(command: str) -> None:
    """`--epochs`, `--loss` ... default to TrainingConfig's values, which --help did not say
    (a student could not tell how long `medseg train` would run), nor which field each sets."""
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "240"})
    assert res.exit_code == 0, res.output
    lines = {m.group(1): m.group(2) for m in re.finditer(r"(--[a-z-]+)\s+<\w+>\s+(.*?)\s*│", res.output)}
    defaults = TrainingConfig()
    assert f"(default {defaults.epochs}; epochs in a --config file" in lines["--epochs"]
    # The field's name, which differs from the option's for some (the Python API's spelling).
    assert f"(default {defaults.iterations_per_epoch}; iterations_per_epoch in" in lines["--iterations"]
    assert f"(default {defaults.loss}; loss in" in lines["--loss"]
    assert f"(default {defaults.learning_rate}; learning_rate in" in lines["--lr"]
    assert f"(default {defaults.device}; device in" in lines["--device"]


def test_ctrl_c_says_whether_there_is_a_checkpoint_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while preprocessing said "checkpoint_last.pt saved; continue with --resume", and
    the --resume that followed failed with "nothing to resume from"."""
    import medseg.preprocessing.pipeline as preprocessing
    from medseg.preprocessing.pipeline import plan_dataset
    from medseg.training.trainer import Trainer
    from tests.preprocessing.conftest import write_dataset

    root = write_dataset(tmp_path / "toy[b]", n=6)  # [b] would be Rich markup, if not escaped
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    config_file = tmp_path / "fast.json"
    config_file.write_text('{"epochs": 2, "iterations_per_epoch": 2, "num_workers": 0, "max_val_cases": 1}')
    argv = ["train", str(root), "--folds", "3", "--config", str(config_file)]
    runner = CliRunner()

    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(preprocessing, "preprocess_dataset", ctrl_c)
        early = runner.invoke(app, argv, env={"COLUMNS": "200"})
    assert early.exit_code == 130, early.output
    assert "nothing to resume" in early.output and "continue with --resume" not in early.output

    original = Trainer._after_epoch

    def ctrl_c_after_first_epoch(self: Trainer, record: object, tb: object) -> None:
        original(self, record, tb)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_after_epoch", ctrl_c_after_first_epoch)
        late = runner.invoke(app, argv, env={"COLUMNS": "200"})
    assert late.exit_code == 130, late.output
    last = root / "models" / "3d" / "fold_0" / "checkpoint_last.pt"
    assert f"{last} saved; continue with --resume" in " ".join(late.output.split())
    resumed = runner.invoke(app, [*argv[:4], "--resume", "-q"])
    assert resumed.exit_code == 0 and "trained 2 epochs" in resumed.output, resumed.output
    # The last line says where the curves and the log are, which a new user looks for next.
    folder = last.parent
    assert f"curves: {folder / 'curves.png'}, per-epoch log: {folder / 'log.csv'}" in resumed.output
    assert (folder / "curves.png").is_file() and (folder / "log.csv").is_file()
