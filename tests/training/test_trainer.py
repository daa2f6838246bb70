from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from medseg.errors import ConfigError, OutputExistsError
from medseg.training.checkpoint import load_checkpoint, model_folders
from medseg.training.config import TrainingConfig, load_training_config
from medseg.training.trainer import Trainer, TrainingError, train

FAST = {"epochs": 2, "iterations_per_epoch": 3, "val_every": 1, "num_workers": 0, "max_val_cases": 1}


def _config(**kw: object) -> TrainingConfig:
    return TrainingConfig().with_overrides({**FAST, **kw})


def test_training_writes_a_complete_model_folder(planned_dataset: Path) -> None:
    res = train(planned_dataset, 0, config=_config(), folds=3)
    folder = res.model_dir
    assert folder == planned_dataset / "models" / "3d" / "fold_0"
    assert model_folders(folder) == [folder]
    for name in (
        "checkpoint_best.pt",
        "checkpoint_last.pt",
        "log.csv",
        "curves.png",
        "training_config.json",
        "postprocessing.json",
    ):
        assert (folder / name).is_file(), name
    rows = list(csv.DictReader((folder / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["train_loss"]) > 0 for r in rows)
    info = json.loads((folder / "model.json").read_text())
    assert info["architecture"]["name"] == "unet" and info["epochs_completed"] == 2
    assert info["mirror_axes"] == [0, 1, 2]  # no left / right labels: mirror along every axis
    ckpt = load_checkpoint(folder / "checkpoint_last.pt")
    assert ckpt["epoch"] == 2 and ckpt["plan"]["patch_size"] == [8, 16, 16]
    assert res.best_epoch in (1, 2) and 0 <= res.best_dice <= 1
    assert (planned_dataset / "splits.json").is_file()


def test_too_many_folds_or_a_missing_fold_is_refused_before_preprocessing(planned_dataset: Path) -> None:
    """`medseg train` on a 6-case dataset with the default 5 folds is fine; with more folds than
    patients the error came only after every case was preprocessed, and did not say which
    option to change."""
    with pytest.raises(
        ConfigError, match=re.escape("cannot make 7 folds from 6 patients; use fewer folds (--folds 6")
    ):
        train(planned_dataset, 0, config=_config(), folds=7)
    assert not (planned_dataset / "preprocessed").exists()
    assert not (planned_dataset / "splits.json").exists()
    # The same for a fold that splits.json does not have, naming the file.
    splits = planned_dataset / "splits.json"
    with pytest.raises(
        ConfigError, match=re.escape(f"{splits}: fold 3 does not exist; the splits have folds 0..2")
    ):
        train(planned_dataset, 3, config=_config(), folds=3)
    assert not (planned_dataset / "preprocessed").exists()
    # Split into 3 folds earlier, now asked for 5 folds: --folds was silently ignored for an
    # existing splits.json (fold 0 of the 3 trained as if of 5); it is refused, as by crossval.
    expected = (
        f"{splits} has 3 folds but 5 were asked for (--folds); leave --folds out or give --folds 3 "
        f"to use them, or re-split with `medseg dataset split {planned_dataset} --folds 5 --overwrite`"
    )
    for fold in (0, 3):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            train(planned_dataset, fold, config=_config(), folds=5)
    assert not (planned_dataset / "preprocessed").exists()


def test_epoch_log_line_names_each_class_dice(
    planned_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The per-epoch line showed the validation Dice as a bare list ("[0.5005, 0.6437, ...]"):
    which number was which class was left to guess."""
    import logging

    from medseg.preprocessing.pipeline import load_dataset_plan

    caplog.set_level(logging.INFO, logger="medseg")
    res = train(planned_dataset, 0, config=_config(epochs=1), folds=3)
    names = load_dataset_plan(planned_dataset, "3d").output_names
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1:")]
    dice = res.history[0].val_dice
    expected = ", ".join(f"{n} {d:.4f}" for n, d in zip(names, dice, strict=True))
    assert len(names) >= 2 and f"val Dice {res.history[0].mean_dice:.4f} ({expected})" in line


def test_splits_written_by_another_job_meanwhile_are_used(
    planned_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folds of a SLURM array start together: a job whose splits.json was written by a
    sibling between its check and its write trains on that file instead of failing."""
    import medseg.data.splits as splits_module

    real = splits_module.make_splits

    def sibling_wins(root: Path, **kw: object) -> object:
        real(root, **kw)  # type: ignore[arg-type]  # the sibling's write ...
        raise OutputExistsError(root / "splits.json")  # ... then ours finds the file

    monkeypatch.setattr(splits_module, "make_splits", sibling_wins)
    res = train(planned_dataset, 1, config=_config(epochs=1), folds=3)
    assert res.epochs_completed == 1
    assert json.loads((planned_dataset / "splits.json").read_text())


def test_existing_model_folder_needs_resume_or_overwrite(planned_dataset: Path) -> None:
    train(planned_dataset, 0, config=_config(epochs=1), folds=3)
    # Rerunning the command after an interruption: the error offers --resume before --overwrite
    # (which would throw the run away); it offered only --overwrite.
    with pytest.raises(
        OutputExistsError, match=r"holds checkpoint_last\.pt of an earlier run: use --resume .*--overwrite"
    ):
        train(planned_dataset, 0, config=_config(epochs=1), folds=3)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(
    planned_dataset: Path, monkeypatch: pytest.MonkeyPatch, ema_decay: float | None
) -> None:
    cfg = _config(epochs=3, ema_decay=ema_decay)
    full = train(planned_dataset, 0, config=cfg, out_dir=planned_dataset / "full", folds=3)

    original = Trainer._after_epoch

    def crash_after_first(self: Trainer, record: object, tb: object) -> None:
        original(self, record, tb)  # type: ignore[arg-type]
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_after_epoch", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(planned_dataset, 0, config=cfg, out_dir=planned_dataset / "cut", folds=3)
    assert load_checkpoint(planned_dataset / "cut" / "checkpoint_last.pt")["epoch"] == 1
    monkeypatch.setattr(Trainer, "_after_epoch", original)
    resumed = train(planned_dataset, 0, config=cfg, out_dir=planned_dataset / "cut", resume=True, folds=3)
    assert resumed.epochs_completed == 3
    for part in ("model", "training_model") if ema_decay else ("model",):
        a = load_checkpoint(full.model_dir / "checkpoint_last.pt")[part]
        b = load_checkpoint(resumed.model_dir / "checkpoint_last.pt")[part]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{part}: {key}")
    assert [round(h.train_loss, 6) for h in full.history] == [round(h.train_loss, 6) for h in resumed.history]


def test_ema_of_the_weights_is_what_the_checkpoint_keeps_as_the_model(
    planned_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.optim.swa_utils import AveragedModel

    decay = 0.6
    seen: list[dict[str, torch.Tensor]] = []  # the optimised weights after every step
    original = AveragedModel.update_parameters

    def record(self: AveragedModel, model: torch.nn.Module) -> None:
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        original(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", record)
    res = train(planned_dataset, 0, config=_config(ema_decay=decay), folds=3)
    ckpt = load_checkpoint(res.model_dir / "checkpoint_last.pt")
    assert ckpt["ema_updates"] == len(seen) == 2 * 3  # epochs x iterations
    expected = dict(seen[0])  # torch's EMA starts from the first step's weights
    for weights in seen[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    changed = 0
    for key, value in ckpt["model"].items():
        if not value.is_floating_point():
            continue
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(ckpt["training_model"][key], seen[-1][key], rtol=0, atol=0, msg=key)
        changed += int(not torch.equal(value, seen[-1][key]))
    assert changed > 0  # the saved weights are the average, not the last step's
    with pytest.raises(ConfigError, match="ema_decay"):
        _config(ema_decay=1.0)


def test_ctrl_c_mid_epoch_writes_a_checkpoint(planned_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = Trainer._loss

    def interrupt(self: Trainer, logits: object, label: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 5:  # during the second epoch
            raise KeyboardInterrupt
        return original(self, logits, label)

    monkeypatch.setattr(Trainer, "_loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(planned_dataset, 0, config=_config(epochs=3), folds=3)
    ckpt = load_checkpoint(planned_dataset / "models" / "3d" / "fold_0" / "checkpoint_last.pt")
    assert ckpt["epoch"] == 1  # the epoch in progress is redone on resume


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    planned_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = Trainer._loss

    def nan_in_second_epoch(self: Trainer, logits: object, label: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = original(self, logits, label)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(Trainer, "_loss", nan_in_second_epoch)
    with pytest.raises(TrainingError, match="loss became nan at epoch 2"):
        train(planned_dataset, 0, config=_config(epochs=3), folds=3)
    folder = planned_dataset / "models" / "3d" / "fold_0"
    ckpt = load_checkpoint(folder / "checkpoint_last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_resume_with_a_different_architecture_is_refused(planned_dataset: Path) -> None:
    train(planned_dataset, 0, config=_config(epochs=1), folds=3)
    plan_file = planned_dataset / "plans" / "3d.json"
    data = json.loads(plan_file.read_text())
    data["network"]["base_features"] = 8
    plan_file.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"plan\.network\.base_features 16 -> 8"):
        train(planned_dataset, 0, config=_config(epochs=2), resume=True, folds=3)
    # Allowing changed settings does not make other weights fit the network.
    with pytest.raises(TrainingError, match="different network"):
        train(planned_dataset, 0, config=_config(epochs=2), resume=True, resume_changed=True, folds=3)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_with_other_settings_is_refused_naming_each_difference(planned_dataset: Path) -> None:
    res = train(planned_dataset, 0, config=_config(epochs=1, loss="focal"), folds=3)
    folder = res.model_dir
    before = _snapshot(folder)
    with pytest.raises(ConfigError) as err:
        train(planned_dataset, 0, config=_config(epochs=2, learning_rate=5e-4), resume=True, folds=3)
    message = str(err.value)
    assert str(folder / "checkpoint_last.pt") in message and "\n" not in message
    assert "loss 'focal' -> 'dice_ce'" in message and "learning_rate 0.001 -> 0.0005" in message
    assert "epochs 1 -> 2" not in message  # training longer is what resuming is for
    # The plan of the dataset changed after training (`medseg plan --spacing ... --overwrite`).
    plan_file = planned_dataset / "plans" / "3d.json"
    plan = json.loads(plan_file.read_text())
    old_spacing = plan["target_spacing"]
    plan["target_spacing"] = [s * 2 for s in old_spacing]
    plan_file.write_text(json.dumps(plan))
    expected = f"plan.target_spacing {old_spacing!r} -> {plan['target_spacing']!r}"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train(planned_dataset, 0, config=_config(epochs=2, loss="focal"), resume=True, folds=3)
    assert _snapshot(folder) == before  # nothing was trained or rewritten
    plan["target_spacing"] = old_spacing
    plan_file.write_text(json.dumps(plan))

    # More epochs (and another device or validation setting) resume without complaint ...
    longer = train(
        planned_dataset, 0, config=_config(epochs=2, loss="focal", val_every=2), resume=True, folds=3
    )
    assert longer.epochs_completed == 2 and not longer.already_complete
    assert "resumed_with_changes" not in json.loads((folder / "model.json").read_text())
    # ... and other settings only when allowed, which model.json and the checkpoint record.
    changed = train(planned_dataset, 0, config=_config(epochs=3), resume=True, resume_changed=True, folds=3)
    assert changed.epochs_completed == 3
    record = json.loads((folder / "model.json").read_text())["resumed_with_changes"]
    assert record == [{"epoch": 2, "changes": ["loss 'focal' -> 'dice_ce'"]}]
    assert load_checkpoint(folder / "checkpoint_last.pt")["resume_changes"] == record
    assert json.loads((folder / "training_config.json").read_text())["loss"] == "dice_ce"
    with pytest.raises(ConfigError, match="only applies with --resume"):
        train(planned_dataset, 0, config=_config(), overwrite=True, resume_changed=True, folds=3)


def test_resume_without_repeating_the_options_continues_with_the_recorded_settings(
    planned_dataset: Path, tmp_path: Path
) -> None:
    """`medseg train --loss focal ...`, Ctrl-C, then `medseg train --resume` (as the interrupt
    message says): the resume takes the settings the checkpoint was trained with from the model
    folder's training_config.json, not the defaults (which were refused as another loss)."""
    from typer.testing import CliRunner

    from medseg.cli import app

    config_file = tmp_path / "fast.json"
    config_file.write_text(json.dumps({**FAST, "epochs": 1}))
    base = ["train", str(planned_dataset), "--folds", "3"]
    first = CliRunner().invoke(
        app, [*base, "--config", str(config_file), "--loss", "focal", "-q"], catch_exceptions=False
    )
    assert first.exit_code == 0, first.output
    folder = planned_dataset / "models" / "3d" / "fold_0"
    # Trained on a cluster node with --device cuda, resumed here: the device is this machine's
    # choice, not the record's.
    record = json.loads((folder / "training_config.json").read_text())
    (folder / "training_config.json").write_text(json.dumps({**record, "device": "cuda"}))
    # The Python API: no config given means the recorded one (here: already complete).
    again = train(planned_dataset, 0, resume=True, folds=3)
    assert again.already_complete and again.epochs_completed == 1
    # The CLI: only the options given (more epochs) change.
    longer = CliRunner().invoke(app, [*base, "--resume", "--epochs", "2", "-q"], catch_exceptions=False)
    assert longer.exit_code == 0, longer.output
    assert "trained 2 epochs" in longer.output
    recorded = json.loads((folder / "training_config.json").read_text())
    assert recorded["loss"] == "focal" and recorded["epochs"] == 2
    assert recorded["iterations_per_epoch"] == FAST["iterations_per_epoch"]
    assert recorded["device"] == "auto"
    assert "resumed_with_changes" not in json.loads((folder / "model.json").read_text())
    # An option that shapes the weights is still refused unless allowed.
    other = CliRunner().invoke(app, [*base, "--resume", "--epochs", "3", "--loss", "dice", "-q"])
    assert other.exit_code == 2 and "loss 'focal' -> 'dice'" in other.output


def test_resume_of_a_finished_run_trains_and_writes_nothing(planned_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli import app

    res = train(planned_dataset, 0, config=_config(epochs=2), folds=3)
    folder = res.model_dir
    before = _snapshot(folder)
    again = train(planned_dataset, 0, config=_config(epochs=1), resume=True, folds=3)
    assert again.already_complete and again.epochs_completed == 2
    assert again.stopped_early == "fold 0 already complete (2 epochs); nothing to train"
    assert [h.epoch for h in again.history] == [1, 2] and again.best_epoch == res.best_epoch
    assert _snapshot(folder) == before  # training_config.json still says 2 epochs
    # The same through the CLI (a SLURM re-run with EXTRA_ARGS="--epochs 2" after the fold finished).
    config_file = tmp_path / "fast.json"
    config_file.write_text(json.dumps(FAST))
    out = CliRunner().invoke(
        app,
        ["train", str(planned_dataset), "--folds", "3", "--config", str(config_file), "--resume"],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    assert "fold 0 already complete (2 epochs); nothing to train" in out.output
    assert "trained" not in out.output and _snapshot(folder) == before
    # A mismatched --folds was answered "already complete" (the other options are checked
    # first); it is refused as for a fold that has not finished, before anything else.
    splits = planned_dataset / "splits.json"
    with pytest.raises(ConfigError, match=re.escape(f"{splits} has 3 folds but 5 were asked for (--folds)")):
        train(planned_dataset, 0, config=_config(epochs=1), resume=True, folds=5)
    out = CliRunner().invoke(
        app, ["train", str(planned_dataset), "--folds", "5", "--config", str(config_file), "--resume"]
    )
    assert out.exit_code == 2 and "has 3 folds but 5 were asked for" in out.output, out.output
    assert "already complete" not in out.output and _snapshot(folder) == before


def test_resume_of_a_finished_run_trained_on_another_split_is_refused(planned_dataset: Path) -> None:
    """The training cases are checked against splits.json before a finished run is reported
    complete, as for an unfinished one: a fold of an earlier split is not passed off as done."""
    from medseg.data.splits import load_splits, make_splits

    res = train(planned_dataset, 0, config=_config(epochs=1), folds=3)
    trained = set(load_splits(planned_dataset).fold(0).train)
    next(
        s
        for s in range(1, 50)
        if set(make_splits(planned_dataset, k=3, seed=s, overwrite=True).fold(0).train) != trained
    )
    before = _snapshot(res.model_dir)
    with pytest.raises(ConfigError, match=r"fold_0: this model was trained on other cases than fold 0"):
        train(planned_dataset, 0, config=_config(epochs=1), resume=True, folds=3)
    assert _snapshot(res.model_dir) == before


def test_best_checkpoint_keeps_no_optimiser_state_and_old_ones_still_work(
    planned_dataset: Path, tmp_path: Path
) -> None:
    """checkpoint_best.pt holds what prediction needs, checkpoint_last.pt also the training
    state a resume reads; best checkpoints of older medseg (with the optimiser) still predict,
    export to ONNX, show in `medseg info` and join ensembles."""
    import shutil

    import numpy as np

    from medseg.errors import InputError
    from medseg.inference.onnx import export_onnx
    from medseg.inference.predictor import SegmentationModel
    from medseg.training.checkpoint import model_folder_summary
    from tests.preprocessing.conftest import make_case

    resume_only = {"optimizer", "scheduler", "scaler", "rng", "training_model", "ema_updates"}
    res = train(planned_dataset, 0, config=_config(epochs=2), folds=3)
    folder = res.model_dir
    best, last = (load_checkpoint(folder / f"checkpoint_{n}.pt") for n in ("best", "last"))
    assert not resume_only & set(best), sorted(best)
    assert {"model", "architecture", "plan", "dataset", "epoch", "best_dice", "training_config"} <= set(best)
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    assert (folder / "checkpoint_best.pt").stat().st_size < (folder / "checkpoint_last.pt").stat().st_size
    image, _ = make_case(5, shape=(9, 36, 30))
    lean, _ = SegmentationModel(folder, device="cpu").predict([image])
    # A model trained without validation (fold None): its best checkpoint is lean as well.
    whole = train(planned_dataset, None, config=_config(epochs=1), folds=3)
    assert not resume_only & set(load_checkpoint(whole.model_dir / "checkpoint_best.pt"))
    # An older model folder whose best checkpoint kept the optimiser (here: last's, same weights
    # when epoch 2 was the best) works everywhere the lean one does.
    old = tmp_path / "ensemble" / "fold_0"
    shutil.copytree(folder, old)
    shutil.copyfile(old / "checkpoint_last.pt", old / "checkpoint_best.pt")
    assert "optimizer" in load_checkpoint(old / "checkpoint_best.pt")
    shutil.copytree(folder, tmp_path / "ensemble" / "fold_1")
    fat, _ = SegmentationModel(old, device="cpu").predict([image])
    assert fat.shape == lean.shape == image.shape
    if res.best_epoch == 2:
        np.testing.assert_array_equal(fat.array, lean.array)
    assert len(SegmentationModel(tmp_path / "ensemble", device="cpu").networks) == 2
    summary = model_folder_summary(tmp_path / "ensemble")
    assert summary is not None and [f["checkpoint"] for f in summary["folds"]] == [True, True]
    assert [p.parent.name for p in export_onnx(tmp_path / "ensemble")] == ["fold_0", "fold_1"]
    # Resume reads checkpoint_last.pt (old and new folders alike); a lean one is refused by name.
    more = train(planned_dataset, 0, config=_config(epochs=3), resume=True, folds=3, out_dir=old)
    assert more.epochs_completed == 3
    shutil.copyfile(folder / "checkpoint_best.pt", folder / "checkpoint_last.pt")
    with pytest.raises(InputError, match=r"checkpoint_last\.pt: holds the weights only"):
        train(planned_dataset, 0, config=_config(epochs=3), resume=True, folds=3)


def test_log_ends_at_the_checkpoints_epoch_after_an_interrupt(
    planned_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Trainer.save
    calls = {"last": 0}

    def interrupt_second_save(self: Trainer, name: str, **kwargs: bool) -> Path:
        if name == "checkpoint_last.pt":
            calls["last"] += 1
            if calls["last"] == 2:  # epoch 2 is done and validated; its checkpoint is being written
                raise KeyboardInterrupt
        return original(self, name, **kwargs)

    monkeypatch.setattr(Trainer, "save", interrupt_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(planned_dataset, 0, config=_config(epochs=3), folds=3)
    monkeypatch.setattr(Trainer, "save", original)
    folder = planned_dataset / "models" / "3d" / "fold_0"
    ckpt = load_checkpoint(folder / "checkpoint_last.pt")
    logged = [int(r["epoch"]) for r in csv.DictReader((folder / "log.csv").open())]
    assert ckpt["epoch"] == 2 and [h["epoch"] for h in ckpt["history"]] == logged == [1, 2]
    assert json.loads((folder / "model.json").read_text())["epochs_completed"] == 2

    # A log left behind by an older medseg is repaired by a resume that has nothing to train.
    lines = (folder / "log.csv").read_text().splitlines(keepends=True)
    (folder / "log.csv").write_text("".join(lines[:2]))
    (folder / "curves.png").unlink()
    config_before = (folder / "training_config.json").read_bytes()
    done = train(planned_dataset, 0, config=_config(epochs=2), resume=True, folds=3)
    assert done.already_complete
    assert [int(r["epoch"]) for r in csv.DictReader((folder / "log.csv").open())] == [1, 2]
    assert (folder / "curves.png").is_file()
    assert (folder / "training_config.json").read_bytes() == config_before


def test_training_config_file_is_strict(tmp_path: Path) -> None:
    cfg = tmp_path / "train.json"
    cfg.write_text(
        json.dumps({"loss": "focal", "learning_rate": 1e-4, "schedule": "step", "step_epochs": 100})
    )
    loaded = load_training_config(cfg, {"epochs": 4})
    assert loaded.loss == "focal" and loaded.epochs == 4 and loaded.learning_rate == 1e-4
    cfg.write_text(json.dumps({"learning_rat": 1e-4}))
    with pytest.raises(ConfigError, match="learning_rat"):
        load_training_config(cfg)
    cfg.write_text(json.dumps({"epochs": "ten"}))
    with pytest.raises(ConfigError, match="epochs"):
        load_training_config(cfg)
    # values refused by the config itself, and a nested augmentation typo, name the file too
    cfg.write_text(json.dumps({"learning_rate": -1}))
    with pytest.raises(ConfigError, match=r"train\.json: learning_rate must be positive"):
        load_training_config(cfg)
    cfg.write_text(json.dumps({"augmentation": {"flip_axis": [2]}}))
    with pytest.raises(ConfigError, match=r"train\.json: augmentation: unknown key\(s\) \['flip_axis'\]"):
        load_training_config(cfg)


def test_step_schedule_matches_the_exercise() -> None:
    from medseg.training.trainer import _lr_lambda

    f = _lr_lambda(TrainingConfig(schedule="step", step_epochs=100, learning_rate=1e-4))
    assert f(0) == 1.0 and f(99) == 1.0 and f(100) == pytest.approx(0.1)


def test_time_budget_decays_the_learning_rate_and_bf16_trains(planned_dataset: Path) -> None:
    import time

    original = Trainer._train_epoch

    def slow_epoch(self: Trainer, *args: object, **kwargs: object) -> object:
        out = original(self, *args, **kwargs)  # type: ignore[arg-type]
        time.sleep(1.0)
        return out

    cfg = _config(epochs=100, iterations_per_epoch=1, val_every=100, time_budget_minutes=0.1, cpu_bf16=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_train_epoch", slow_epoch)
        res = train(planned_dataset, 0, config=cfg, folds=3)
    assert res.stopped_early and res.epochs_completed < 100
    lrs = [h.learning_rate for h in res.history]
    # poly over 100 epochs would still be at >= 0.9 of the base after a few epochs;
    # following the 6 s budget it has decayed by more than half
    assert lrs[-1] < 0.5 * lrs[0]
    assert all(torch.isfinite(torch.tensor(h.train_loss)) for h in res.history)


def test_border_weighted_loss_trains_from_the_config(
    planned_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.training import losses

    maps: list[torch.Tensor] = []
    original = losses.border_weights

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        maps.append(out)
        return out

    monkeypatch.setattr(losses, "border_weights", spy)
    cfg = _config(loss_options={"border_weight": 10.0, "border_sigma": 2.0, "border_class": 0}, epochs=1)
    res = train(planned_dataset, 0, config=cfg, folds=3)
    assert len(maps) == 3  # one map per training step
    assert all(m.shape[0] == 2 and float(m.min()) >= 1.0 for m in maps)
    assert all(torch.isfinite(torch.tensor(h.train_loss)) for h in res.history)
    saved = json.loads((res.model_dir / "training_config.json").read_text())
    assert saved["loss_options"]["border_weight"] == 10.0


@pytest.mark.parametrize("configuration", ["3d", "2.5d"])
def test_channels_last_trains_the_same_network_in_the_channels_last_layout(
    tmp_path: Path, configuration: str
) -> None:
    """channels_last changes the memory layout only: the same losses step by step (float32)."""
    from medseg.preprocessing.pipeline import plan_dataset
    from tests.preprocessing.conftest import write_dataset

    torch.set_num_threads(1)
    root = write_dataset(tmp_path / "toy", n=6)
    overrides = (
        {"patch_size": [8, 16, 16], "batch_size": 2}
        if configuration == "3d"
        else {"patch_size": [1, 16, 16], "batch_size": 2, "slab_slices": 3}
    )
    plan_dataset(root, configuration, overrides=overrides, workers=1)
    layout = torch.channels_last_3d if configuration == "3d" else torch.channels_last
    steps: dict[bool, list[tuple[bool, float]]] = {False: [], True: []}
    original = Trainer._loss

    def spy(self: Trainer, logits: object, label: torch.Tensor) -> torch.Tensor:
        # a kernel with several input channels and a spatial extent (else both layouts agree)
        conv = next(p for p in self.model.parameters() if p.dim() >= 4 and p.shape[1] > 1 and p.shape[-1] > 1)
        in_layout = conv.is_contiguous(memory_format=layout) and not conv.is_contiguous()
        loss = original(self, logits, label)
        steps[self.config.channels_last].append((in_layout, float(loss.detach())))
        return loss

    for channels_last in (False, True):
        cfg = _config(epochs=2, val_every=1, channels_last=channels_last, deterministic=True, cpu_bf16=False)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Trainer, "_loss", spy)
            res = train(
                root,
                0,
                configuration=configuration,
                config=cfg,
                folds=3,
                out_dir=tmp_path / f"model_{channels_last}",
            )
        assert res.epochs_completed == 2
    plain, fast = steps[False], steps[True]
    assert len(plain) == len(fast) == 6
    # the layout asked for is the one used at every step
    assert not any(s[0] for s in plain) and all(s[0] for s in fast)
    # same initial weights and batch: the first loss agrees to rounding; later ones stay
    # close (Adam amplifies rounding differences in near-zero gradients a little)
    assert fast[0][1] == pytest.approx(plain[0][1], rel=1e-5)
    for (_, a), (_, b) in zip(plain, fast, strict=True):
        assert b == pytest.approx(a, rel=2e-3)
    saved = load_checkpoint(tmp_path / "model_True" / "checkpoint_last.pt")
    assert saved["training_config"]["channels_last"] is True


def test_cpu_speed_settings_resolve_by_device_and_network() -> None:
    from medseg.training import trainer as trainer_module

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.MonkeyPatch.context() as mp:
        for native in (False, True):
            mp.setattr(trainer_module, "cpu_has_native_bf16", lambda native=native: native)
            assert trainer_module.resolve_cpu_bf16("auto", cpu) is native
            assert trainer_module.resolve_cpu_bf16(True, cpu) is True
            assert trainer_module.resolve_cpu_bf16(False, cpu) is False
            # CUDA trains in float16 AMP, never in CPU bf16 autocast
            assert trainer_module.resolve_cpu_bf16("auto", cuda) is False
            assert trainer_module.resolve_cpu_bf16(True, cuda) is False
    assert trainer_module.resolve_channels_last("auto", cpu, 3) is True
    assert trainer_module.resolve_channels_last("auto", cpu, 2) is False  # measured slower in 2D
    assert trainer_module.resolve_channels_last("auto", cuda, 3) is False
    assert trainer_module.resolve_channels_last(True, cpu, 2) is True
    assert trainer_module.resolve_channels_last(False, cpu, 3) is False


def test_default_cpu_training_uses_bf16_only_where_native_and_channels_last_in_3d(
    planned_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults ("auto") follow the CPU: bf16 autocast with native support, float32 without."""
    from medseg.training import trainer as trainer_module

    assert TrainingConfig().cpu_bf16 == "auto" and TrainingConfig().channels_last == "auto"
    seen: list[tuple[bool, torch.dtype, bool]] = []
    original = Trainer._loss

    def spy(self: Trainer, logits: object, label: torch.Tensor) -> torch.Tensor:
        first = logits[0] if isinstance(logits, (list, tuple)) else logits
        assert isinstance(first, torch.Tensor)
        conv = next(p for p in self.model.parameters() if p.dim() == 5 and p.shape[1] > 1)
        in_layout = conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
        seen.append((native, first.dtype, in_layout))
        return original(self, logits, label)

    monkeypatch.setattr(Trainer, "_loss", spy)
    for native in (False, True):
        monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda native=native: native)
        res = train(
            planned_dataset,
            0,
            config=_config(epochs=1, device="cpu"),
            folds=3,
            out_dir=planned_dataset / f"m{native}",
        )
        assert res.epochs_completed == 1
        saved = json.loads((res.model_dir / "training_config.json").read_text())
        assert saved["cpu_bf16"] == "auto"  # the setting, resolved again on the machine that resumes
    assert {dtype for native, dtype, _ in seen if not native} == {torch.float32}
    assert {dtype for native, dtype, _ in seen if native} == {torch.bfloat16}
    assert all(layout for _, _, layout in seen)  # a 3D network on a CPU: channels-last


def test_cpu_speed_settings_in_a_config_file(tmp_path: Path) -> None:
    from medseg.errors import ConfigError
    from medseg.training.config import load_training_config

    good = tmp_path / "train.json"
    good.write_text(json.dumps({"cpu_bf16": False, "channels_last": "auto"}))
    cfg = load_training_config(good)
    assert cfg.cpu_bf16 is False and cfg.channels_last == "auto"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cpu_bf16": "yes"}))
    with pytest.raises(ConfigError, match="cpu_bf16"):
        load_training_config(bad)


def test_left_right_labels_turn_off_mirroring_along_the_left_right_axis(tmp_path: Path) -> None:
    """A mirrored left kidney looks like a right one: no flips (training or TTA) along that axis."""
    from medseg.inference.predictor import SegmentationModel
    from medseg.inference.sliding_window import _flips
    from medseg.preprocessing.pipeline import plan_dataset
    from tests.preprocessing.conftest import write_dataset

    torch.set_num_threads(1)
    root = write_dataset(tmp_path / "toy", n=4)
    desc = json.loads((root / "dataset.json").read_text())
    desc["labels"] = {"background": 0, "left_kidney": 1, "right_kidney": 2}
    (root / "dataset.json").write_text(json.dumps(desc))
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    res = train(root, 0, config=_config(epochs=1, val_every=1), folds=2)
    # the toy cases are axial, tilted by up to 23 degrees: left-right is the x (last) axis
    assert json.loads((res.model_dir / "model.json").read_text())["mirror_axes"] == [0, 1]
    model = SegmentationModel(res.model_dir)
    assert model.mirror_axes == (0, 1)
    assert sorted(_flips(3, True, model.mirror_axes)) == [(), (2,), (2, 3), (3,)]
    # asked for explicitly, mirroring stays on
    res2 = train(
        root,
        1,
        config=_config(epochs=1, augmentation={"mirror_left_right": True}),
        folds=2,
    )
    assert json.loads((res2.model_dir / "model.json").read_text())["mirror_axes"] == [0, 1, 2]


def test_training_longer_follows_the_schedule_of_the_new_epoch_count(planned_dataset: Path) -> None:
    """Resuming a finished 1-epoch run with 2 epochs: poly had brought the learning rate to 0
    at the end of the old schedule; the added epoch must run at the new schedule's rate
    (1e-3 * (1 - 1/2) ** 0.9), not at 0, which would train nothing."""
    train(planned_dataset, 0, config=_config(epochs=1, schedule="poly", learning_rate=1e-3), folds=3)
    longer = train(
        planned_dataset,
        0,
        config=_config(epochs=2, schedule="poly", learning_rate=1e-3),
        resume=True,
        folds=3,
    )
    assert [h.epoch for h in longer.history] == [1, 2]
    assert longer.history[1].learning_rate == pytest.approx(1e-3 * 0.5**0.9)


def test_train_quiet_shows_warnings_and_the_result_but_no_progress_bar_or_log_lines(
    planned_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`medseg train -q` (as `predict -q`): no progress bars, no INFO lines; a warning (here a
    resume with changed settings) and the final result still show."""
    import logging

    from typer.testing import CliRunner

    from medseg.cli import app

    caplog.set_level(logging.INFO)
    config_file = tmp_path / "fast.json"
    config_file.write_text(json.dumps({**FAST, "epochs": 1}))
    argv = ["train", str(planned_dataset), "--folds", "3", "--config", str(config_file), "--device", "cpu"]
    loud = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert loud.exit_code == 0, loud.output
    assert "training fold 0" in loud.output  # the bar, for the contrast below
    assert any(r.levelno == logging.INFO and r.name.startswith("medseg") for r in caplog.records)
    caplog.clear()
    quiet = CliRunner().invoke(
        app,
        [*argv, "--epochs", "2", "--loss", "focal", "--resume", "--resume-changed", "-q"],
        catch_exceptions=False,
    )
    assert quiet.exit_code == 0, quiet.output
    assert "training fold 0" not in quiet.output and "preprocess" not in quiet.output
    medseg_records = [r for r in caplog.records if r.name.startswith("medseg")]
    assert medseg_records and all(r.levelno >= logging.WARNING for r in medseg_records)
    assert any("resuming at epoch 1 with changed settings" in r.getMessage() for r in medseg_records)
    assert "trained 2 epochs" in quiet.output and "model folder:" in quiet.output
    assert logging.getLogger("medseg").level == logging.NOTSET  # restored after the command


def test_curves_show_both_panels_over_the_same_whole_epochs() -> None:
    """Validated at epochs 5 and 6 only (val_every 5), the Dice panel was drawn over its own
    axis, at epochs 5.0, 5.2, 5.4 ..., beside a loss panel of epochs 1-6."""
    import matplotlib.pyplot as plt

    from medseg.training.trainer import EpochRecord, curves_figure

    history = [
        EpochRecord(e, 1e-3, 1.0 / e, 1.0, [0.4 + e / 100, 0.5] if e >= 5 else []) for e in range(1, 7)
    ]
    fig = curves_figure(history, ["PZ", "TZ"])
    try:
        loss_axis, dice_axis = fig.axes
        assert dice_axis.get_xlim() == loss_axis.get_xlim()
        assert dice_axis.get_xlim()[0] < 1.5 and dice_axis.get_xlim()[1] > 5.5
        ticks = [t for t in dice_axis.get_xticks() if 1 <= t <= 6]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    finally:
        plt.close(fig)
