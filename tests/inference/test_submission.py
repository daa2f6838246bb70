"""`medseg submission`: UW-Madison test scans -> the competition's id,class,predicted CSV."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.data.adapters.uwmadison import LABELS, import_uwmadison
from medseg.errors import ConfigError, InputError, OutputExistsError
from medseg.inference.predictor import SegmentationModel
from medseg.inference.submission import predict_uwmadison_submission
from medseg.io import read_volume
from medseg.io.rle import rle_decode
from medseg.preprocessing.pipeline import plan_dataset
from medseg.training.config import TrainingConfig
from medseg.training.trainer import train
from tests.data.adapters.test_uwmadison import SCANS, make_competition_folder


@pytest.fixture(scope="module")
def uw_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(competition folder, a tiny 2.5D model trained on its import)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("uw")
    make_competition_folder(root / "src")
    import_uwmadison(root / "src", root / "ds")
    plan_dataset(
        root / "ds", "2.5d", overrides={"patch_size": [1, 8, 8], "batch_size": 2, "slab_slices": 3}, workers=1
    )
    cfg = TrainingConfig(epochs=1, iterations_per_epoch=2, val_every=1, num_workers=0, max_val_cases=1)
    model = train(root / "ds", 0, configuration="2.5d", config=cfg, folds=2).model_dir
    return root, model


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_rows_decode_to_the_prediction_on_the_imported_scan(
    uw_model: tuple[Path, Path], tmp_path: Path
) -> None:
    """The CSV holds exactly what the model predicts on the imported volume of each scan:
    stacking, slice numbering, RLE order and class values all agree."""
    root, model = uw_model
    result = predict_uwmadison_submission(root / "src" / "train", model, tmp_path / "submission.csv")
    rows = _rows(result.path)
    assert list(rows[0]) == ["id", "class", "predicted"]
    assert result.scans == 3 and result.rows == len(rows) == 3 * sum(s[-1] for s in SCANS)
    seg = SegmentationModel(model, device="cpu")
    by_id = {(r["id"], r["class"]): r["predicted"] for r in rows}
    for case, day, width, height, _, _, n in SCANS:
        image = read_volume(root / "ds" / "imagesTr" / f"{case}_{day}_0000.nii.gz")
        label, _ = seg.predict([image])
        for z in range(n):
            for cls in ("large_bowel", "small_bowel", "stomach"):
                mask = rle_decode(by_id[(f"{case}_{day}_slice_{z + 1:04d}", cls)], (height, width))
                np.testing.assert_array_equal(
                    mask, label.array[z] == LABELS[cls], err_msg=f"{case}_{day} {z} {cls}"
                )


def test_reference_labels_give_back_train_csv(uw_model: tuple[Path, Path], tmp_path: Path) -> None:
    """With the imported reference labels as the "prediction", the submission is train.csv itself
    (no overlapping masks in this data): the full competition round trip, row for row."""
    root, model = uw_model
    seg = SegmentationModel(model, device="cpu")
    references = [
        (read_volume(p), read_volume(root / "ds" / "labelsTr" / p.name.replace("_0000", "")))
        for p in sorted((root / "ds" / "imagesTr").glob("*.nii.gz"))
    ]

    def oracle(channels: list, **_: object) -> tuple:
        (label,) = [lab for img, lab in references if np.array_equal(img.array, channels[0].array)]
        assert label.geometry.is_close(channels[0].geometry)  # stacked exactly as imported
        return label, None

    seg.predict = oracle  # type: ignore[method-assign]
    result = predict_uwmadison_submission(root / "src" / "train", seg, tmp_path / "oracle.csv")
    assert result.rows_with_masks > 0
    with (root / "src" / "train.csv").open(newline="") as fh:
        truth = sorted((r["id"], r["class"], r["segmentation"]) for r in csv.DictReader(fh))
    assert sorted((r["id"], r["class"], r["predicted"]) for r in _rows(result.path)) == truth


def test_sample_submission_order_and_gaps(uw_model: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = uw_model
    first = predict_uwmadison_submission(root / "src" / "train", model, tmp_path / "a.csv")
    keys = [(r["id"], r["class"]) for r in _rows(first.path)]
    sample = tmp_path / "sample_submission.csv"
    wanted = list(reversed(keys))[:-3]  # another order, one slice left out
    sample.write_text("id,class,predicted\n" + "".join(f"{i},{c},\n" for i, c in wanted))
    ordered = predict_uwmadison_submission(
        root / "src" / "train", model, tmp_path / "b.csv", sample_submission=sample
    )
    assert [(r["id"], r["class"]) for r in _rows(ordered.path)] == wanted
    sample.write_text("id,class,predicted\ncase99_day1_slice_0001,stomach,\n")
    with pytest.raises(
        InputError, match=r"sample_submission\.csv: 1 of its rows have no test slice.*case99_day1"
    ):
        predict_uwmadison_submission(
            root / "src" / "train", model, tmp_path / "c.csv", sample_submission=sample
        )
    sample.write_text("id,class,predicted\n")
    with pytest.raises(InputError, match=r"sample_submission\.csv: lists no rows"):
        predict_uwmadison_submission(
            root / "src" / "train", model, tmp_path / "c.csv", sample_submission=sample
        )
    assert not (tmp_path / "c.csv").exists()
    with pytest.raises(OutputExistsError):
        predict_uwmadison_submission(root / "src" / "train", model, tmp_path / "a.csv")


def test_errors_and_cli(
    uw_model: tuple[Path, Path], trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, model = uw_model
    with pytest.raises(ConfigError, match="are not the competition's"):
        predict_uwmadison_submission(root / "src" / "train", trained_model, tmp_path / "x.csv")
    caplog.set_level(logging.INFO, logger="medseg")
    res = CliRunner().invoke(
        app, ["submission", str(root / "src" / "train"), "-m", str(model), "-o", str(tmp_path / "s.csv")]
    )
    assert res.exit_code == 0, res.output
    assert "27 rows for 3 scan(s)" in res.stdout and (tmp_path / "s.csv").is_file()
    assert not [
        r for r in caplog.records if r.getMessage().startswith("wrote")
    ]  # printed once, not logged too
    caplog.clear()
    argv = ["submission", str(root / "src" / "train"), "-m", str(model), "-o", str(tmp_path / "q.csv"), "-q"]
    res = CliRunner().invoke(app, argv)  # -q: the final line only, no log lines
    assert res.exit_code == 0 and "27 rows for 3 scan(s)" in res.stdout, res.output
    assert [r.getMessage() for r in caplog.records if r.levelno < logging.WARNING] == []
    res = CliRunner().invoke(
        app, ["submission", str(tmp_path / "nothing"), "-m", str(model), "-o", str(tmp_path / "n.csv")]
    )
    assert res.exit_code == 2 and "nothing: not found" in res.output


def test_a_broken_scan_stops_the_run_before_any_prediction(
    uw_model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    root, model = uw_model
    test_dir = tmp_path / "test"
    shutil.copytree(root / "src" / "train", test_dir)
    next((test_dir / "case1" / "case1_day0" / "scans").glob("slice_0002_*.png")).unlink()
    calls: list[str] = []
    monkeypatch.setattr(SegmentationModel, "predict", lambda self, *a, **k: calls.append("predict"))
    with pytest.raises(InputError, match="slices of case1_day0 are not consecutive"):
        predict_uwmadison_submission(test_dir, model, tmp_path / "s.csv")
    assert calls == [] and not (tmp_path / "s.csv").exists()


def test_a_region_models_overlapping_masks_are_all_submitted() -> None:
    from types import SimpleNamespace

    import numpy as np

    from medseg.inference.submission import _region_rows
    from medseg.io.rle import rle_encode

    large = np.zeros((2, 2, 3), bool)
    small = np.zeros((2, 2, 3), bool)
    large[1, 0, :2] = True
    small[1, 0, 1:] = True  # overlaps large at (1, 0, 1)
    stomach = np.zeros((2, 2, 3), bool)
    model = SimpleNamespace(
        last_region_masks={"stomach": stomach, "small_bowel": small, "large_bowel": large}
    )
    rows = _region_rows(model, "case9_day2", 5)  # type: ignore[arg-type]
    assert rows[:3] == [
        ("case9_day2_slice_0005", "large_bowel", ""),
        ("case9_day2_slice_0005", "small_bowel", ""),
        ("case9_day2_slice_0005", "stomach", ""),
    ]
    assert rows[3:] == [
        ("case9_day2_slice_0006", "large_bowel", rle_encode(large[1])),
        ("case9_day2_slice_0006", "small_bowel", rle_encode(small[1])),
        ("case9_day2_slice_0006", "stomach", ""),
    ]
    assert rle_encode(large[1]) == "1 2" and rle_encode(small[1]) == "2 2"


def test_repeated_model_options_ensemble_the_configurations(
    uw_model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`submission -m 2.5d -m 2d` ensembles both configurations (as `predict` does); it used to
    keep only the last -m without a word."""
    import medseg.inference.submission as submission

    root, model_25d = uw_model
    plan_dataset(root / "ds", "2d", overrides={"patch_size": [1, 8, 8], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(epochs=1, iterations_per_epoch=2, val_every=1, num_workers=0, max_val_cases=1)
    model_2d = train(root / "ds", 0, configuration="2d", config=cfg, folds=2).model_dir
    seen: list[object] = []
    real = submission.predict_uwmadison_submission

    def spy(test_dir: Path, model: object, *args: object, **kwargs: object) -> object:
        seen.append(model)
        return real(test_dir, model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(submission, "predict_uwmadison_submission", spy)
    out = tmp_path / "ensemble.csv"
    res = CliRunner().invoke(
        app,
        [
            "submission",
            str(root / "src" / "train"),
            "-m",
            str(model_25d),
            "-m",
            str(model_2d),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert seen == [[model_25d, model_2d]]
    ensemble = SegmentationModel([model_25d, model_2d], device="cpu")
    assert [m.plan.configuration for m in ensemble.members] == ["2.5d", "2d"]
    expected = predict_uwmadison_submission(root / "src" / "train", ensemble, tmp_path / "api.csv")
    assert _rows(out) == _rows(expected.path)
