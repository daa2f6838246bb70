from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.data.splits import load_splits
from medseg.errors import ConfigError, InputError
from medseg.io import read_volume
from medseg.preprocessing.pipeline import plan_dataset
from medseg.training.config import TrainingConfig
from medseg.training.crossval import cross_validate, crossval_dir, fold_state
from tests.preprocessing.conftest import write_dataset

FAST = {"epochs": 1, "iterations_per_epoch": 2, "val_every": 1, "num_workers": 0, "max_val_cases": 1}


def _config(**kw: object) -> TrainingConfig:
    return TrainingConfig().with_overrides({**FAST, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def crossvalidated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-case oblique toy dataset after one 3-fold cross-validation (1 tiny epoch per fold)."""
    torch.set_num_threads(1)
    root = write_dataset(tmp_path_factory.mktemp("cv") / "toy", n=6)
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    result = cross_validate(root, config=_config(), folds=3, workers=1)
    assert [f.action for f in result.folds] == ["trained"] * 3
    return root


@pytest.fixture
def dataset_copy(crossvalidated: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "toy"
    shutil.copytree(crossvalidated, dst)
    return dst


def _dice(pred: np.ndarray, ref: np.ndarray, k: int) -> float:
    p, r = pred == k, ref == k
    return float("nan") if p.sum() + r.sum() == 0 else 2 * float((p & r).sum()) / float(p.sum() + r.sum())


def test_every_case_is_predicted_out_of_fold_and_scored(crossvalidated: Path) -> None:
    root = crossvalidated
    out = crossval_dir(root, "3d")
    assert out == root / "models" / "3d" / "crossval"
    splits = load_splits(root)
    assert sorted(c for f in splits.folds for c in f.val) == [f"case_{i:03d}" for i in range(6)]
    for k in range(3):
        assert fold_state(root / "models" / "3d" / f"fold_{k}", epochs=1) == "complete"

    # Predictions on the ORIGINAL grids, one per case; Dice computed here by hand.
    per_class: dict[int, list[float]] = {1: [], 2: []}
    for i in range(6):
        ref = read_volume(root / "labelsTr" / f"case_{i:03d}.nii.gz")
        pred = read_volume(out / "predictions" / f"case_{i:03d}.nii.gz")
        ref.geometry.require_same(pred.geometry, spacing_atol=1e-5, origin_atol=1e-4)
        for k in per_class:
            per_class[k].append(_dice(pred.array, ref.array, k))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == 3 and summary["n_cases"] == 6 and summary["configuration"] == "3d"
    expected = {name: float(np.nanmean(per_class[k])) for k, name in ((1, "outer"), (2, "inner"))}
    assert summary["per_class_mean_dice"] == pytest.approx(expected, abs=1e-9)
    assert summary["mean_foreground_dice"] == pytest.approx(np.mean(list(expected.values())))
    assert set(summary["per_fold_mean_dice"]) == {"0", "1", "2"}
    assert [f["action"] for f in summary["folds"]] == ["trained"] * 3
    assert {c for f in summary["folds"] for c in f["val_cases"]} == {f"case_{i:03d}" for i in range(6)}
    # The colleague's evaluation report sits beside it.
    assert (out / "evaluation" / "cases.csv").is_file() and (out / "evaluation" / "report.html").is_file()
    # Its overlays are drawn over the cases' images from imagesTr, not over the label maps alone.
    page = (out / "evaluation" / "report.html").read_text()
    assert "over the image" in page and "label maps alone" not in page
    assert len(list((out / "evaluation" / "overlays").glob("case_*.png"))) == 6


def test_rerun_skips_finished_folds_and_resumes_unfinished_ones(
    dataset_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = dataset_copy
    preds = crossval_dir(root, "3d") / "predictions"
    before = {p.name: p.stat().st_mtime_ns for p in preds.iterdir()}

    # A finished fold needs only its best checkpoint to count as complete.
    last = root / "models" / "3d" / "fold_2" / "checkpoint_last.pt"
    last.rename(last.with_suffix(".kept"))
    with caplog.at_level(logging.INFO, logger="medseg.training.crossval"):
        again = cross_validate(root, config=_config(), workers=1)  # folds taken from splits.json
    # the log rounds the mean Dice as the tables do
    assert re.search(r"mean foreground Dice \d\.\d{4} over 6 cases$", caplog.text, re.M), caplog.text
    assert [f.action for f in again.folds] == ["skipped"] * 3
    last.with_suffix(".kept").rename(last)
    assert {p.name: p.stat().st_mtime_ns for p in preds.iterdir()} == before  # predictions reused
    assert again.evaluated and again.n_cases == 6

    # A fold that died before its first checkpoint is retrained; more epochs resume the others.
    for ckpt in (root / "models" / "3d" / "fold_1").glob("*.pt"):
        ckpt.unlink()
    longer = cross_validate(root, config=_config(epochs=2), workers=1)
    assert [f.action for f in longer.folds] == ["resumed", "trained", "resumed"]
    assert [f.epochs_completed for f in longer.folds] == [2, 2, 2]
    # A case is predicted again exactly when its fold's best checkpoint changed.
    after = {p.name: p.stat().st_mtime_ns for p in preds.iterdir()}
    for fold in longer.folds:
        best = (fold.model_dir / "checkpoint_best.pt").stat().st_mtime_ns
        for case in fold.val_cases:
            name = f"{case}.nii.gz"
            assert (after[name] > before[name]) == (best > before[name]), (fold.fold, case)
    assert all(after[f"{c}.nii.gz"] > before[f"{c}.nii.gz"] for c in longer.folds[1].val_cases)
    summary = json.loads((crossval_dir(root, "3d") / "summary.json").read_text())
    assert [f["action"] for f in summary["folds"]] == ["resumed", "trained", "resumed"]
    # Continuing with another loss is refused fold by fold unless asked for (and recorded).
    with pytest.raises(ConfigError, match=r"loss .*--resume-changed"):
        cross_validate(root, config=_config(epochs=3, loss="focal"), workers=1)
    changed = cross_validate(root, config=_config(epochs=3, loss="focal"), workers=1, resume_changed=True)
    assert [f.action for f in changed.folds] == ["resumed"] * 3
    info = json.loads((root / "models" / "3d" / "fold_0" / "model.json").read_text())
    assert info["resumed_with_changes"]


def test_finished_folds_trained_otherwise_are_named_not_pooled_silently(
    dataset_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = dataset_copy
    # Fold 1 as if it had been trained for 6 epochs (a longer earlier run).
    model_json = root / "models" / "3d" / "fold_1" / "model.json"
    record = json.loads(model_json.read_text())
    model_json.write_text(json.dumps({**record, "epochs_completed": 6}))
    with caplog.at_level(logging.WARNING, logger="medseg.training.crossval"):
        result = cross_validate(root, config=_config(learning_rate=5e-4), workers=1)
    assert [f.action for f in result.folds] == ["skipped"] * 3
    assert result.folds[0].differences == ("learning_rate 0.001 -> 0.0005",)
    assert result.folds[1].differences == ("epochs 6 done -> 1 requested", "learning_rate 0.001 -> 0.0005")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("fold 1 (") and "epochs 6 done -> 1 requested" in m for m in warnings)
    summary = json.loads((crossval_dir(root, "3d") / "summary.json").read_text())
    assert summary["folds"][1]["differs_from_request"] == list(result.folds[1].differences)
    # The same request as the folds were trained with: nothing to report.
    model_json.write_text(json.dumps(record))
    same = cross_validate(root, config=_config(), workers=1)
    assert all(f.differences == () for f in same.folds)
    summary = json.loads((crossval_dir(root, "3d") / "summary.json").read_text())
    assert all("differs_from_request" not in f for f in summary["folds"])


def test_bad_requests_are_clear_errors(dataset_copy: Path, tmp_path: Path) -> None:
    root = dataset_copy
    with pytest.raises(
        ConfigError, match=r"has 3 folds but 5 were asked for.*dataset split .* --folds 5 --overwrite"
    ):
        cross_validate(root, config=_config(), folds=5, workers=1)
    with pytest.raises(ConfigError, match="'dice' metric"):
        cross_validate(root, config=_config(), metrics=("iou",), workers=1)
    with pytest.raises(InputError, match="no plan"):
        cross_validate(root, configuration="2d", config=_config(), workers=1)
    # More epochs asked for, but nothing to resume from: refused, nothing deleted.
    (root / "models" / "3d" / "fold_0" / "checkpoint_last.pt").unlink()
    with pytest.raises(ConfigError, match=r"no checkpoint_last\.pt to resume"):
        cross_validate(root, config=_config(epochs=2), workers=1)
    assert (root / "models" / "3d" / "fold_0" / "checkpoint_best.pt").is_file()
    plan_file = root / "plans" / "3d.json"
    data = json.loads(plan_file.read_text())
    data["network"]["base_features"] = 8
    plan_file.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="different plan"):
        cross_validate(root, config=_config(), workers=1)


def test_folds_of_an_earlier_split_are_not_reused(dataset_copy: Path) -> None:
    """After a re-split, a kept fold would be scored on cases it trained on: refused, named."""
    from medseg.data.splits import make_splits
    from medseg.training.trainer import train

    root = dataset_copy
    record = json.loads((root / "models" / "3d" / "fold_0" / "model.json").read_text())
    assert "case_0" not in json.dumps(record)  # digests only: case ids can carry patient data
    trained = set(load_splits(root).fold(0).train)
    # Re-split with another seed (the first whose fold 0 differs); splits.json now holds it.
    next(
        s
        for s in range(1, 50)
        if set(make_splits(root, k=3, seed=s, overwrite=True).fold(0).train) != trained
    )
    assert set(load_splits(root).fold(0).train) != trained
    with pytest.raises(
        ConfigError, match=r"fold_0: this model was trained on other cases than fold 0 of splits\.json"
    ):
        cross_validate(root, config=_config(), workers=1)
    with pytest.raises(ConfigError, match="trained on other cases"):
        train(root, 0, config=_config(epochs=2), resume=True, workers=1)
    again = cross_validate(root, config=_config(), workers=1, overwrite=True)
    assert [f.action for f in again.folds] == ["trained"] * 3
    from medseg.training.checkpoint import check_trained_on

    for fold in again.folds:
        check_trained_on(fold.model_dir, load_splits(root).fold(fold.fold).train, "the split")  # no error
        with pytest.raises(ConfigError, match="trained on other cases"):
            check_trained_on(fold.model_dir, list(fold.val_cases), "the validation cases")


def test_crossval_command(dataset_copy: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps(FAST))
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "crossval",
            str(dataset_copy),
            "-c",
            "3d",
            "--config",
            str(config),
            "--device",
            "cpu",
            "--metrics",
            "dice,hd95,uw,miou",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "summary:" in res.output
    assert "out-of-fold hd95: outer" in res.output and "out-of-fold uw: outer" in res.output
    summary = json.loads((crossval_dir(dataset_copy, "3d") / "summary.json").read_text())
    cases = (crossval_dir(dataset_copy, "3d") / "evaluation" / "cases.csv").read_text()
    assert set(summary["per_class_mean"]) == {"hd95", "uw"}
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(cases)))
    uw_outer = [float(r["uw/outer"]) for r in rows if r["uw/outer"] not in ("", "nan")]
    assert summary["per_class_mean"]["uw"]["outer"] == pytest.approx(float(np.mean(uw_outer)))
    miou = [float(r["miou"]) for r in rows if r["miou"] not in ("", "nan")]
    assert summary["case_level_mean"]["miou"] == pytest.approx(float(np.mean(miou)))
    # pooled: one confusion matrix over the out-of-fold predictions, recomputed here
    labels = [0, 1, 2]
    cm = np.zeros((3, 3), np.int64)
    for r in rows:
        pred = read_volume(crossval_dir(dataset_copy, "3d") / "predictions" / f"{r['case']}.nii.gz").array
        ref = read_volume(dataset_copy / "labelsTr" / f"{r['case']}.nii.gz").array
        for i in labels:
            for j in labels:
                cm[i, j] += int(((ref == i) & (pred == j)).sum())
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    pooled = float(np.mean(inter[present] / union[present]))
    assert summary["case_level_mean"]["miou_pooled"] == pytest.approx(pooled)
    assert f"pooled over all cases (miou_pooled): {pooled:.4f}" in res.output
    assert "out-of-fold mIoU (per case, background included" in res.output
    res = runner.invoke(app, ["crossval", str(dataset_copy), "--folds", "4", "--config", str(config)])
    assert res.exit_code == 2 and "3 folds but 4" in res.output


def test_crossval_quiet_prints_the_result_without_progress_bars_table_or_log_lines(
    dataset_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`medseg crossval -q`: the out-of-fold Dice and the summary path only; no progress bar,
    fold table or INFO lines (a warning would still show)."""
    caplog.set_level(logging.INFO)
    config = dataset_copy / "fast.json"
    config.write_text(json.dumps(FAST))
    argv = ["crossval", str(dataset_copy), "--config", str(config), "--device", "cpu"]
    loud = CliRunner().invoke(app, argv)
    assert loud.exit_code == 0, loud.output
    assert "out-of-fold prediction" in loud.output and "val cases" in loud.output  # bar and table
    assert any(r.levelno == logging.INFO and r.name.startswith("medseg") for r in caplog.records)
    caplog.clear()
    quiet = CliRunner().invoke(app, [*argv, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "out-of-fold prediction" not in quiet.output and "val cases" not in quiet.output
    assert not [r for r in caplog.records if r.name.startswith("medseg") and r.levelno < logging.WARNING]
    assert "out-of-fold Dice over 6 cases" in quiet.output and "summary:" in quiet.output
    assert CliRunner().invoke(app, [*argv, "-q"]).exit_code == 0


def test_slice_classifier_reaches_every_fold_within_a_tenth_of_the_budget(
    dataset_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crossval --slice-classifier --budget-min 2`: each trained fold also trains its classifier,
    for at most 0.2 minutes (it used to run its 400 iterations whatever the budget)."""
    import medseg.training.trainer as trainer_module

    seen: list[object] = []
    real_train = trainer_module.train

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("slice_classifier"))
        return real_train(*args, **{**kwargs, "slice_classifier": None})  # the 3D toy has no 2D classifier

    monkeypatch.setattr(trainer_module, "train", spy)
    config = dataset_copy / "fast.json"
    config.write_text(json.dumps(FAST))
    res = CliRunner().invoke(
        app,
        [
            "crossval",
            str(dataset_copy),
            "--config",
            str(config),
            "--overwrite",
            "--budget-min",
            "2",
            "--slice-classifier",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(seen) == 3 and all(getattr(c, "time_budget_minutes", None) == pytest.approx(0.2) for c in seen)
    # no more iterations than the network's 1 epoch x 2 (a smoke run spent minutes on 400)
    assert all(getattr(c, "iterations", None) == 2 for c in seen)
    from medseg.cli.train_commands import _slice_classifier_config

    real = _slice_classifier_config(True, _config(epochs=100, iterations_per_epoch=250))
    assert real is not None and real.iterations == 400 and real.time_budget_minutes is None
    assert _slice_classifier_config(False, _config()) is None


def test_info_summarises_a_model_folder_without_loading_weights(crossvalidated: Path) -> None:
    models = crossvalidated / "models" / "3d"
    res = CliRunner().invoke(app, ["info", str(models), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["kind"] == "model"
    model = report["model"]
    assert [f["folder"] for f in model["folds"]] == ["fold_0", "fold_1", "fold_2"]  # crossval/ is no fold
    assert [f["fold"] for f in model["folds"]] == [0, 1, 2] and all(f["checkpoint"] for f in model["folds"])
    assert model["plan"]["configuration"] == "3d" and model["plan"]["labels"]["outer"] == 1
    table = CliRunner().invoke(app, ["info", str(models / "fold_1")])
    assert table.exit_code == 0 and "fold_1" in table.stdout and "outer" in table.stdout


def test_postprocessing_is_chosen_on_the_out_of_fold_predictions_and_stored_with_every_fold(
    dataset_copy: Path,
) -> None:
    """The out-of-fold predictions replaced by the references plus a stray island of class 1
    far from the organ: keeping the largest foreground component is adopted, and predict's
    rules in every fold folder say so."""
    from medseg.io import write_volume
    from medseg.postprocessing.labels import read_rules
    from medseg.training.crossval import tune_postprocessing

    out = crossval_dir(dataset_copy, "3d")
    for pred_path in sorted((out / "predictions").glob("*.nii.gz")):
        ref = read_volume(dataset_copy / "labelsTr" / pred_path.name)
        arr = ref.array.copy()
        assert arr[0, :2, :2].max() == 0
        arr[0, :2, :2] = 1
        write_volume(ref.with_array(arr), pred_path, overwrite=True)
    res = CliRunner().invoke(app, ["tune-postprocessing", str(dataset_copy), "-c", "3d"])
    assert res.exit_code == 0, res.output
    assert "keep_largest_foreground" in res.output and "yes" in res.output
    assert "lean ONNX copy" not in res.output  # nothing exported: no copy to update
    assert "┃ gain " in res.output

    record = json.loads((out / "postprocessing.json").read_text())
    assert record["n_cases"] == 6 and record["rules"]["keep_largest_foreground"] is True
    first = record["steps"][0]
    assert first["adopted"] and first["mean_dice_after"]["outer"] > first["mean_dice_before"]["outer"]
    for k in range(3):
        rules = read_rules(dataset_copy / "models" / "3d" / f"fold_{k}" / "postprocessing.json")
        assert rules.keep_largest_foreground
    # The predictions were made before these rules: choosing again (another --min-gain) is fine.
    (dataset_copy / "models" / "3d" / "fold_1" / "model.onnx").write_bytes(b"exported")
    res = CliRunner().invoke(app, ["tune-postprocessing", str(dataset_copy), "--min-gain", "0.9"])
    assert res.exit_code == 0, res.output
    assert "lean ONNX copy made before this keeps its old postprocessing.json" in " ".join(res.output.split())
    (dataset_copy / "models" / "3d" / "fold_1" / "model.onnx").unlink()
    again = json.loads((out / "postprocessing.json").read_text())
    assert again["rules"]["keep_largest_foreground"] is False  # no rule adds 0.9
    # ... but not on a prediction made after rules were written (with them),
    tune_postprocessing(dataset_copy, configuration="3d")
    import os
    import time

    first_pred = sorted((out / "predictions").glob("*.nii.gz"))[0]
    later = time.time() + 10
    os.utime(first_pred, (later, later))
    with pytest.raises(InputError, match=r"was predicted after the fold's postprocessing rules were written"):
        tune_postprocessing(dataset_copy, configuration="3d")
    # ... nor with rules written by hand (not the ones this command chose).
    from medseg.postprocessing.labels import ClassRule, PostprocessingRules, write_rules

    hand = PostprocessingRules(classes={2: ClassRule(fill_holes="3d")})
    write_rules(hand, dataset_copy / "models" / "3d" / "fold_0" / "postprocessing.json", overwrite=True)
    with pytest.raises(InputError, match=r"fold_0/postprocessing.json: holds postprocessing rules already"):
        tune_postprocessing(dataset_copy, configuration="3d")
    # crossval again: the folds are kept, the out-of-fold cases predicted anew with the rules
    rules_time = (dataset_copy / "models" / "3d" / "fold_1" / "postprocessing.json").stat().st_mtime
    cross_validate(dataset_copy, config=_config(), folds=3, workers=1)
    assert all(p.stat().st_mtime >= rules_time for p in (out / "predictions").glob("*.nii.gz"))
    (out / "summary.json").unlink()
    with pytest.raises(InputError, match=r"crossval/summary.json: not found.*medseg crossval"):
        tune_postprocessing(dataset_copy, configuration="3d")


def test_tuned_postprocessing_reaches_fold_all_and_names_rules_it_replaces(
    dataset_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`train --fold all` (the configuration trained on every case) takes the rules chosen on
    the folds' out-of-fold predictions, whether trained before tuning or after: it used to keep
    {} and predict without them. Rules written there by hand are replaced, with a warning
    naming both."""
    from medseg.io import write_volume
    from medseg.postprocessing.labels import ClassRule, PostprocessingRules, read_rules, write_rules
    from medseg.training.crossval import tune_postprocessing
    from medseg.training.trainer import train

    models = dataset_copy / "models" / "3d"
    fold_all = train(dataset_copy, None, config=_config(), folds=3).model_dir
    assert fold_all == models / "fold_all"
    assert read_rules(fold_all / "postprocessing.json").is_identity
    out = crossval_dir(dataset_copy, "3d")
    for pred_path in sorted((out / "predictions").glob("*.nii.gz")):  # a stray island in every case
        ref = read_volume(dataset_copy / "labelsTr" / pred_path.name)
        arr = ref.array.copy()
        arr[0, :2, :2] = 1
        write_volume(ref.with_array(arr), pred_path, overwrite=True)
    hand = PostprocessingRules(classes={2: ClassRule(fill_holes="3d")})
    write_rules(hand, fold_all / "postprocessing.json", overwrite=True)
    with caplog.at_level(logging.WARNING, logger="medseg.training.crossval"):
        res = CliRunner().invoke(app, ["tune-postprocessing", str(dataset_copy), "-c", "3d"])
    assert res.exit_code == 0, res.output
    assert "every fold and fold_all" in " ".join(res.output.split())
    rules = read_rules(fold_all / "postprocessing.json")
    assert rules.keep_largest_foreground and rules == read_rules(models / "fold_0" / "postprocessing.json")
    record = json.loads((out / "postprocessing.json").read_text())
    assert str(fold_all / "postprocessing.json") in record["written_to"] and len(record["written_to"]) == 4
    warned = [r.getMessage() for r in caplog.records if "fold_all" in r.getMessage()]
    assert len(warned) == 1
    assert "label 2 (inner): fill holes 3d" in warned[0] and "largest foreground component" in warned[0]
    # Choosing again replaces the rules the first run wrote, without a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medseg.training.crossval"):
        tune_postprocessing(dataset_copy, configuration="3d", min_gain=0.9)
    assert read_rules(fold_all / "postprocessing.json").is_identity
    assert not [r for r in caplog.records if "fold_all" in r.getMessage()]
    # fold_all trained after tuning starts with the tuned rules (it used to start with none)
    tune_postprocessing(dataset_copy, configuration="3d")
    tuned = read_rules(models / "fold_0" / "postprocessing.json")
    assert tuned.keep_largest_foreground
    again = train(dataset_copy, None, config=_config(), folds=3, overwrite=True).model_dir
    assert read_rules(again / "postprocessing.json") == tuned
    # a numbered fold trained anew is not given rules it was not tuned with
    other = train(dataset_copy, 0, config=_config(), folds=3, out_dir=dataset_copy / "other").model_dir
    assert read_rules(other / "postprocessing.json").is_identity


def test_rules_are_given_to_no_model_trained_with_another_plan_than_they_were_chosen_for(
    dataset_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """fold_all takes the rules chosen on the numbered folds only when it was trained with
    their plan: tuning refuses a fold_all (or a numbered fold) of another plan, naming the
    difference, before writing anything; a fold_all trained after tuning with another plan
    starts without the rules, with a warning naming the difference."""
    import dataclasses

    from medseg.postprocessing.labels import read_rules
    from medseg.preprocessing.plan import Plan
    from medseg.training.crossval import tune_postprocessing
    from medseg.training.trainer import train

    models = dataset_copy / "models" / "3d"
    out = crossval_dir(dataset_copy, "3d")
    fold_all = train(dataset_copy, None, config=_config(), folds=3).model_dir
    plan = Plan.load(fold_all / "plan.json")
    other = dataclasses.replace(plan, batch_size=plan.batch_size + 1)
    other.save(fold_all / "plan.json")
    with pytest.raises(ConfigError, match=r"fold_all: trained with a different plan") as err:
        tune_postprocessing(dataset_copy, configuration="3d")
    text = str(err.value)
    assert f"batch_size {plan.batch_size + 1} -> {plan.batch_size}" in text and "plans/3d.json" in text
    assert "--fold all --overwrite" in text
    assert not (out / "postprocessing.json").exists()
    assert read_rules(models / "fold_0" / "postprocessing.json").is_identity
    plan.save(fold_all / "plan.json")
    other.save(models / "fold_1" / "plan.json")  # a numbered fold: the same check
    with pytest.raises(ConfigError, match=r"fold_1: trained with a different plan.*batch_size"):
        tune_postprocessing(dataset_copy, configuration="3d")
    plan.save(models / "fold_1" / "plan.json")
    tune_postprocessing(dataset_copy, configuration="3d")
    record = json.loads((out / "postprocessing.json").read_text())
    assert Plan.from_mapping(record["plan"]) == plan
    # rules recorded for another plan (e.g. the dataset planned anew since) are not taken
    record["rules"]["keep_largest_foreground"] = True
    record["plan"]["batch_size"] = plan.batch_size + 1
    (out / "postprocessing.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="medseg.training.trainer"):
        again = train(dataset_copy, None, config=_config(), folds=3, overwrite=True).model_dir
    assert read_rules(again / "postprocessing.json").is_identity
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "chosen for another plan" in warned
        and f"batch_size {plan.batch_size + 1} -> {plan.batch_size}" in warned
    )
    # ... and rules recorded for this plan are
    record["plan"]["batch_size"] = plan.batch_size
    (out / "postprocessing.json").write_text(json.dumps(record))
    again = train(dataset_copy, None, config=_config(), folds=3, overwrite=True).model_dir
    assert read_rules(again / "postprocessing.json").keep_largest_foreground


def test_postprocessing_is_not_chosen_on_predictions_older_than_a_fold_or_without_a_fold(
    dataset_copy: Path,
) -> None:
    """A fold retrained after crossval made the out-of-fold predictions of its cases with an
    older model: choosing rules on them is refused (crossval would predict them anew). A fold
    folder gone is refused too, and no stray fold folder holding only postprocessing.json is
    left behind (predict would refuse the ensemble for it)."""
    import os

    from medseg.training.crossval import tune_postprocessing

    models = dataset_copy / "models" / "3d"
    out = crossval_dir(dataset_copy, "3d")
    summary = json.loads((out / "summary.json").read_text())
    case = summary["folds"][1]["val_cases"][0]
    newest = max(p.stat().st_mtime for p in (out / "predictions").glob("*.nii.gz"))
    best = models / "fold_1" / "checkpoint_best.pt"
    os.utime(best, (newest + 60, newest + 60))  # fold 1 retrained since
    with pytest.raises(InputError, match=rf"{case}.nii.gz: is older than fold 1's model.*medseg crossval"):
        tune_postprocessing(dataset_copy, configuration="3d")
    assert json.loads((models / "fold_0" / "postprocessing.json").read_text())["classes"] == {}

    os.utime(best, (newest - 60, newest - 60))
    # a prediction off its reference's grid is named (not a bare shape error)
    from medseg.io import write_volume
    from medseg.volume import Volume

    odd = out / "predictions" / f"{case}.nii.gz"
    write_volume(Volume(read_volume(odd).array[:-1]), odd, overwrite=True)
    with pytest.raises(InputError, match=rf"{case}.nii.gz: is not on its reference's grid.*expected shape"):
        tune_postprocessing(dataset_copy, configuration="3d")
    shutil.rmtree(models / "fold_2")
    with pytest.raises(InputError, match=r"fold_2: .*no trained model"):
        tune_postprocessing(dataset_copy, configuration="3d")
    assert not (models / "fold_2").exists()
    assert json.loads((models / "fold_0" / "postprocessing.json").read_text())["classes"] == {}


def test_a_class_absent_from_both_prediction_and_reference_is_left_out_of_its_mean(
    dataset_copy: Path,
) -> None:
    """summary.json's statistic says cases where prediction and reference of a class are both
    empty are left out (as training's validation Dice and tune-postprocessing do): such a case
    must not count as a perfect 1.0 in the class's mean or its fold's."""
    from medseg.io import write_volume

    out = crossval_dir(dataset_copy, "3d")
    summary = json.loads((out / "summary.json").read_text())
    fold = summary["folds"][0]
    gone = fold["val_cases"][0]
    for path in (dataset_copy / "labelsTr" / f"{gone}.nii.gz", out / "predictions" / f"{gone}.nii.gz"):
        vol = read_volume(path)
        arr = vol.array.copy()
        arr[arr == 2] = 0  # class 2 ('inner') absent from this case on both sides
        write_volume(vol.with_array(arr), path, overwrite=True)
    result = cross_validate(dataset_copy, config=_config(), folds=3, workers=1)
    assert [f.action for f in result.folds] == ["skipped"] * 3
    inner: list[float] = []
    inner_fold: list[float] = []
    for f in summary["folds"]:
        for case in f["val_cases"]:
            ref = read_volume(dataset_copy / "labelsTr" / f"{case}.nii.gz").array
            pred = read_volume(out / "predictions" / f"{case}.nii.gz").array
            d = _dice(pred, ref, 2)
            inner.append(d)
            if f is fold:
                inner_fold.append(d)
    assert sum(np.isnan(inner)) == 1
    new = json.loads((out / "summary.json").read_text())
    assert new["per_class_mean_dice"]["inner"] == pytest.approx(float(np.nanmean(inner)), abs=1e-9)
    fold_mean = new["per_fold_mean_dice"][str(fold["fold"])]["inner"]
    if np.isnan(inner_fold).all():
        assert fold_mean is None
    else:
        assert fold_mean == pytest.approx(float(np.nanmean(inner_fold)), abs=1e-9)


def test_tuning_table_shows_a_gain_rounding_would_hide() -> None:
    """A rule adopted for a Dice gain of 0.000001 (it raised the class's Dice: adopted) read
    '0.3004 -> 0.3004 yes'; the table's gain column shows the digits it needs."""
    from medseg.cli.train_commands import gain_text

    assert gain_text(0.038334, 0.038335) == "+1.0e-06"
    assert gain_text(0.304572, 0.307393) == "+0.0028"
    assert gain_text(0.36825, 0.179811) == "-0.1884"
    assert gain_text(0.5, 0.5) == "+0.0000"
    assert gain_text(float("nan"), 0.5) == "n/a"
