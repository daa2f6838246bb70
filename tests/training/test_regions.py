"""Region-based training end to end on a phantom with two overlapping structures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.data.regions import paint_regions, region_masks
from medseg.errors import InputError
from medseg.inference.predictor import PredictConfig, SegmentationModel, predict
from medseg.io import read_volume, write_volume
from medseg.preprocessing.pipeline import plan_dataset
from medseg.training.config import TrainingConfig
from medseg.training.trainer import train
from medseg.volume import Volume
from tests.conftest import oblique_direction

REGIONS = {"left_blob": [1, 3], "right_blob": [2, 3]}  # 3: where the two blobs overlap


def overlapping_case(
    seed: int, shape=(10, 36, 32), spacing=(3.0, 0.8, 0.9), angles=(17.0, -9.0, 23.0)
) -> tuple[Volume, Volume]:
    """Two ellipsoids that overlap in the middle: label 1 / 2 for each alone, 3 for both."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    cz, cy = shape[0] / 2 + rng.uniform(-0.5, 0.5), shape[1] / 2 + rng.uniform(-2, 2)
    cx = shape[2] / 2 + rng.uniform(-2, 2)

    def blob(dx: float) -> np.ndarray:
        r = (
            ((z - cz) * spacing[0]) ** 2 / 81
            + ((y - cy) * spacing[1]) ** 2 / 49
            + ((x - cx - dx) * spacing[2]) ** 2 / 49
        )
        return r < 1

    left, right = blob(-4.0), blob(4.0)
    label = np.zeros(shape, np.uint8)
    label[left] = 1
    label[right] = 2
    label[left & right] = 3
    image = 100.0 + 80.0 * left + 50.0 * right + rng.normal(0, 4, shape)
    origin = (-12.0 + seed, 18.5, 30.25)
    img = Volume(image.astype(np.float32), spacing, origin, oblique_direction(angles))
    return img, img.with_array(label)


def write_overlap_dataset(root: Path, n: int = 5) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        img, lab = overlapping_case(i)
        write_volume(img, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_volume(lab, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    desc = {
        "name": "overlap",
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "left_only": 1, "right_only": 2, "both": 3},
        "regions": REGIONS,
        "regions_class_order": [1, 2],
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(desc))
    return root


@pytest.fixture(scope="module")
def region_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = write_overlap_dataset(tmp_path_factory.mktemp("regions") / "overlap")
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(
        epochs=3, iterations_per_epoch=8, val_every=1, num_workers=0, max_val_cases=1, learning_rate=3e-3
    )
    return train(root, 0, config=cfg, folds=3).model_dir


def test_a_region_model_has_one_output_per_region_and_logs_region_dice(region_model: Path) -> None:
    info = json.loads((region_model / "model.json").read_text())
    assert info["architecture"]["out_channels"] == 2
    assert info["regions"] == REGIONS and info["regions_class_order"] == [1, 2]
    plan = json.loads((region_model / "plan.json").read_text())
    assert plan["regions"] == REGIONS
    rows = list(csv.DictReader((region_model / "log.csv").open()))
    assert len(rows) == 3
    assert {"val_dice_left_blob", "val_dice_right_blob"} <= set(rows[0])
    assert all(0.0 <= float(r["val_dice_left_blob"]) <= 1.0 for r in rows)


def test_info_shows_a_region_models_regions(region_model: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli import app
    from medseg.training.checkpoint import model_folder_summary

    summary = model_folder_summary(region_model)
    assert summary is not None
    assert summary["plan"]["regions"] == REGIONS and summary["plan"]["regions_class_order"] == [1, 2]
    res = CliRunner().invoke(app, ["info", str(region_model)])
    assert res.exit_code == 0, res.output
    assert "left_blob=[1, 3] painted as 1" in res.output.replace("\n", " ")


def test_evaluate_takes_the_regions_of_a_model_folder(region_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli import app

    _, label = overlapping_case(0)
    write_volume(label, tmp_path / "ref" / "a.nii.gz")
    write_volume(label, tmp_path / "pred" / "a.nii.gz")
    out = tmp_path / "ev"
    res = CliRunner().invoke(
        app,
        ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--metrics", "dice",
         "--regions", str(region_model), "-o", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["labels"] for k, v in summary["per_region"].items()} == REGIONS
    assert summary["per_region"]["right_blob"]["dice"]["mean"] == pytest.approx(1.0)


def test_region_prediction_lands_on_the_input_grid_with_its_masks(region_model: Path, tmp_path: Path) -> None:
    # a case on another oblique grid than the training cases
    image, _ = overlapping_case(11, shape=(9, 34, 30), spacing=(3.3, 0.85, 0.8), angles=(11.0, 4.0, -19.0))
    model = SegmentationModel(region_model, device="cpu")
    label, probs = model.predict([image], postprocess=False, with_probabilities=True, tta=True)
    assert label.geometry == image.geometry and label.shape == image.shape
    assert probs is not None and probs.shape == (2, *image.shape)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    masks = model.last_region_masks
    assert list(masks) == ["left_blob", "right_blob"]
    stacked = np.stack(list(masks.values()))
    assert stacked.shape == (2, *image.shape) and stacked.dtype == bool
    np.testing.assert_array_equal(stacked, probs > 0.5)
    # the overlap keeps its own value ("both" = 3): the label map gives the masks back
    painted = paint_regions(stacked, (1, 2), list(REGIONS.values()), [0, 1, 2, 3])
    np.testing.assert_array_equal(label.array, painted)
    np.testing.assert_array_equal(region_masks(label.array, list(REGIONS.values())), stacked)
    assert (label.array == 3).sum() == (stacked[0] & stacked[1]).sum() > 0
    assert set(np.unique(label.array)) <= {0, 1, 2, 3}

    write_volume(image, tmp_path / "in" / "case_x_0000.nii.gz")
    out = tmp_path / "out"
    results = predict(
        tmp_path / "in",
        model,
        out,
        PredictConfig(
            formats=("nifti", "regions", "probabilities", "volumes", "mesh"), device="cpu", postprocess=False
        ),
    )
    assert [r.ok for r in results] == [True], results
    written = read_volume(out / "case_x.nii.gz")
    assert written.geometry.is_close(image.geometry)
    files = sorted(p.name for p in (out / "case_x" / "regions").iterdir())
    # numbered 1..R like region_volumes.csv's label column and the meshes
    assert files == ["1_left_blob.nii.gz", "2_right_blob.nii.gz"]
    right = read_volume(out / "case_x" / "regions" / "2_right_blob.nii.gz")
    assert right.geometry.is_close(image.geometry)
    assert sorted(p.name for p in (out / "case_x" / "probabilities").iterdir()) == files
    table = list(csv.DictReader((out / "case_x" / "region_volumes.csv").open()))
    assert [r["name"] for r in table] == ["left_blob", "right_blob"]
    assert [f"{r['label']}_{r['name']}.nii.gz" for r in table] == files
    voxel_ml = image.geometry.voxel_volume_mm3 / 1000
    again = model.last_region_masks  # the same network and input: the same masks
    assert [int(r["voxel_count"]) for r in table] == [int(m.sum()) for m in again.values()]
    assert float(table[1]["volume_ml"]) == pytest.approx(int(again["right_blob"].sum()) * voxel_ml, abs=1e-4)
    # one mesh per predicted region (each whole, overlap included), not per painted value
    meshes = sorted(p.name for p in (out / "case_x" / "meshes").iterdir())
    assert meshes == [f"{k + 1:02d}_{n}.stl" for k, (n, m) in enumerate(again.items()) if m.any()]


def test_region_masks_of_the_reference_are_what_the_model_learns() -> None:
    _, label = overlapping_case(0)
    masks = region_masks(label.array, list(REGIONS.values()))
    assert (masks[0] & masks[1]).sum() == (label.array == 3).sum() > 0  # the overlap is in both


def test_regions_added_after_planning_are_not_silently_ignored(tmp_path: Path) -> None:
    root = write_overlap_dataset(tmp_path / "ds", n=3)
    desc = json.loads((root / "dataset.json").read_text())
    regions = desc.pop("regions")
    order = desc.pop("regions_class_order")
    (root / "dataset.json").write_text(json.dumps(desc))
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16]}, workers=1)
    desc.update(regions=regions, regions_class_order=order)
    (root / "dataset.json").write_text(json.dumps(desc))
    with pytest.raises(InputError, match=r"the plan.s regions differ from those of dataset\.json"):
        train(root, 0, config=TrainingConfig(epochs=1, iterations_per_epoch=1, num_workers=0))


def test_cross_validation_of_a_region_model_reports_a_dice_per_region(tmp_path: Path) -> None:
    from medseg.training.crossval import cross_validate

    torch.set_num_threads(1)
    root = write_overlap_dataset(tmp_path / "ds", n=4)
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(epochs=1, iterations_per_epoch=2, val_every=1, num_workers=0, max_val_cases=1)
    result = cross_validate(root, config=cfg, folds=2, workers=1)
    assert list(result.per_region_dice) == ["left_blob", "right_blob"]
    summary = json.loads(result.summary_path.read_text())
    assert list(summary["per_region_mean_dice"]) == ["left_blob", "right_blob"]
    # the headline mean is over the regions, as training's validation Dice; classes kept beside
    regions_mean = np.mean([v for v in summary["per_region_mean_dice"].values() if v is not None])
    assert summary["mean_foreground_dice"] == pytest.approx(regions_mean)
    assert result.mean_dice == pytest.approx(regions_mean)
    classes = [v for v in summary["per_class_mean_dice"].values() if v is not None]
    assert summary["mean_class_dice"] == pytest.approx(np.mean(classes))
    evaluation = json.loads((result.folder / "evaluation" / "summary.json").read_text())
    assert evaluation["per_region"]["left_blob"]["labels"] == [1, 3]
    # scored on the out-of-fold region masks (overlaps kept), not on the painted label maps
    predictions = result.folder / "predictions"
    rows = list(csv.DictReader((result.folder / "evaluation" / "cases.csv").open()))
    assert len(rows) == 4
    for row in rows:
        reference = read_volume(root / "labelsTr" / f"{row['case']}.nii.gz").array
        for k, (name, values) in enumerate(REGIONS.items(), start=1):
            mask = read_volume(predictions / row["case"] / "regions" / f"{k}_{name}.nii.gz").array > 0
            truth = np.isin(reference, values)
            denom = int(mask.sum() + truth.sum())
            expected = 1.0 if denom == 0 else 2.0 * float((mask & truth).sum()) / denom
            assert float(row[f"region_dice/{name}"]) == pytest.approx(expected)


def test_a_region_models_postprocessing_acts_on_its_masks(region_model: Path, tmp_path: Path) -> None:
    """The model's rules (keep the largest component of the region painted 1) apply to that
    region's whole mask; the painted map is painted from the cleaned masks, so they agree."""
    import shutil

    import cc3d

    from medseg.postprocessing.labels import ClassRule, PostprocessingRules, write_rules

    folder = tmp_path / "model"
    shutil.copytree(region_model, folder)
    # value 1's region: its largest component; value 2's: components under 10^9 voxels (all) go
    rules = PostprocessingRules(
        classes={1: ClassRule(keep_largest=True), 2: ClassRule(min_size_voxels=10**9)}
    )
    write_rules(rules, folder / "postprocessing.json", overwrite=True)
    image, _ = overlapping_case(11, shape=(9, 34, 30), spacing=(3.3, 0.85, 0.8), angles=(11.0, 4.0, -19.0))
    raw = SegmentationModel(region_model, device="cpu")
    raw.predict([image], postprocess=False)
    raw_left = raw.last_region_masks["left_blob"]
    assert raw.last_region_masks["right_blob"].any()
    model = SegmentationModel(folder, device="cpu")
    label, _ = model.predict([image])
    left = model.last_region_masks["left_blob"]
    assert int(cc3d.connected_components(left.astype(np.uint8)).max()) <= 1
    assert left.sum() <= raw_left.sum() and not (left & ~raw_left).any()
    assert not model.last_region_masks["right_blob"].any()  # the whole region, overlap included
    assert set(np.unique(label.array)) <= {0, 1}
    stacked = np.stack(list(model.last_region_masks.values()))
    np.testing.assert_array_equal(
        label.array, paint_regions(stacked, (1, 2), list(REGIONS.values()), [0, 1, 2, 3])
    )


def test_tune_postprocessing_chooses_a_region_models_rules_on_its_out_of_fold_masks(tmp_path: Path) -> None:
    """A region model's rules are chosen on its region masks (overlaps kept), one Dice per
    region: an island added to one region's out-of-fold masks, inside the other region (so the
    foreground stays one piece), makes its largest-component rule pay (written under the value
    it is painted with); the other region's rule changes nothing."""
    from medseg.evaluation.evaluate import region_mask_files
    from medseg.postprocessing.labels import read_rules
    from medseg.training.crossval import cross_validate, tune_postprocessing

    torch.set_num_threads(1)
    root = write_overlap_dataset(tmp_path / "ds", n=4)
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(epochs=1, iterations_per_epoch=2, val_every=1, num_workers=0, max_val_cases=1)
    result = cross_validate(root, config=cfg, folds=2, workers=1)
    # As if the model were exact but for one stray voxel of left_blob at the far side of right_blob.
    for case in (f"case_{i:03d}" for i in range(4)):
        reference = read_volume(root / "labelsTr" / f"{case}.nii.gz")
        files = region_mask_files(result.folder / "predictions" / f"{case}.nii.gz", list(REGIONS))
        assert files is not None
        for (name, values), path in zip(REGIONS.items(), files, strict=True):
            mask = np.isin(reference.array, values).astype(np.uint8)
            if name == "left_blob":
                right_only = np.argwhere(reference.array == 2)
                mask[tuple(right_only[np.argmax(right_only[:, 2])])] = 1
            write_volume(reference.with_array(mask), path, overwrite=True)
    from typer.testing import CliRunner

    from medseg.cli import app

    res = CliRunner().invoke(app, ["tune-postprocessing", str(root), "-c", "3d"])
    assert res.exit_code == 0, res.output
    assert "keep_largest:1 (left_blob)" in res.output and "keep_largest:2 (right_blob)" in res.output
    # chosen again (its own rules, on the predictions made before them): the same choice
    choice, record_path = tune_postprocessing(root, configuration="3d")
    record = json.loads(record_path.read_text())
    assert record["regions"] == {"left_blob": 1, "right_blob": 2}
    steps = {s["rule"]: s for s in record["steps"]}
    assert not steps["keep_largest_foreground"]["adopted"]
    assert steps["keep_largest:1"]["adopted"] and not steps["keep_largest:2"]["adopted"]
    assert steps["keep_largest:1"]["mean_dice_after"]["left_blob"] == pytest.approx(1.0)
    assert steps["keep_largest:1"]["mean_dice_before"]["left_blob"] < 1.0
    assert steps["keep_largest:2"]["mean_dice_after"]["right_blob"] == pytest.approx(1.0)
    for k in range(2):
        rules = read_rules(root / "models" / "3d" / f"fold_{k}" / "postprocessing.json")
        assert rules == choice.rules and set(rules.classes) == {1} and rules.classes[1].keep_largest
    # `medseg info` shows what predict will apply, named by region; and folds that disagree
    res = CliRunner().invoke(app, ["info", str(root / "models" / "3d")])
    assert "postprocessing (every fold): label 1 (left_blob): keep largest; connectivity 26" in " ".join(
        res.output.split()
    )
    (root / "models" / "3d" / "fold_1" / "postprocessing.json").write_text("{}")
    res = CliRunner().invoke(app, ["info", str(root / "models" / "3d")])
    text = " ".join(res.output.split())
    assert "postprocessing differs between the folds" in text and "fold_1: none" in text


@pytest.mark.parametrize("command", ["train", "crossval"])
def test_softmax_loss_options_of_a_region_plan_are_refused_before_preprocessing(
    tmp_path: Path, command: str
) -> None:
    """ce_weight / border_weight (softmax only) with a region plan: refused at once, before any
    case is preprocessed (it used to come after preprocessing, which takes minutes on real data)."""
    from typer.testing import CliRunner

    from medseg.cli import app

    root = write_overlap_dataset(tmp_path / "ds", n=3)
    plan_dataset(root, "3d", overrides={"patch_size": [8, 16, 16]}, workers=1)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"epochs": 1, "loss_options": {"ce_weight": [1, 2], "border_weight": 3}}))
    argv = [command, str(root), "--folds", "3", "--config", str(config), "--device", "cpu", "-q"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "loss 'dice_ce' of a region-based model does not take border_weight, ce_weight" in text
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # no preprocessed/, splits, models


def test_cohort_volumes_of_a_region_model_have_a_column_per_region(
    region_model: Path, tmp_path: Path
) -> None:
    """cohort_volumes.csv: the label columns as before, then one region/<name>_ml column per
    region, equal to each case's region_volumes.csv (regions overlap, so they stay apart)."""
    import shutil

    from medseg.export.volumes import write_cohort_volumes

    for i in (20, 21):
        image, _ = overlapping_case(i, shape=(6, 32, 32))
        write_volume(image, tmp_path / "in" / f"case_{i}_0000.nii.gz")
    out = tmp_path / "out"
    results = predict(
        tmp_path / "in",
        SegmentationModel(region_model, device="cpu"),
        out,
        PredictConfig(formats=("nifti", "volumes"), device="cpu", postprocess=False),
    )
    assert [r.ok for r in results] == [True, True], results
    with (out / "cohort_volumes.csv").open() as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        cohort = {r["case"]: r for r in reader}
    assert header == [
        "case", "left_only_ml", "right_only_ml", "both_ml", "status", "study_uid", "series_uid",
        "region/left_blob_ml", "region/right_blob_ml",
    ]  # fmt: skip
    for case in ("case_20", "case_21"):
        regions = list(csv.DictReader((out / case / "region_volumes.csv").open()))
        assert [r["name"] for r in regions] == list(REGIONS)
        for r in regions:
            assert cohort[case][f"region/{r['name']}_ml"] == r["volume_ml"]
        labels = {r["name"]: r["volume_ml"] for r in csv.DictReader((out / case / "volumes.csv").open())}
        assert {k: cohort[case][f"{k}_ml"] for k in labels} == labels
        # the overlap counts in both regions: each region is its own label plus "both"
        left = float(cohort[case]["region/left_blob_ml"])
        assert left == pytest.approx(float(labels["left_only"]) + float(labels["both"]), abs=1e-3)
    # a case without a region table (another model's) has its region cells empty, not 0
    (out / "other").mkdir()
    shutil.copy(out / "case_20" / "volumes.csv", out / "other" / "volumes.csv")
    with write_cohort_volumes(out).open() as fh:  # type: ignore[union-attr]
        other = {r["case"]: r for r in csv.DictReader(fh)}["other"]
    assert other["region/left_blob_ml"] == other["region/right_blob_ml"] == ""
    assert other["left_only_ml"] == cohort["case_20"]["left_only_ml"]
    # the index shows the same region columns after the labels ("–" for the case without)
    from medseg.export.index import build_cohort_index_html, cohort_rows

    rows = {r.case_id: r for r in cohort_rows(out)}
    for case in ("case_20", "case_21"):
        assert {k: f"{ml:.4f}" for k, (_, ml) in rows[case].regions.items()} == {
            k: f"{float(cohort[case][f'region/{k}_ml']):.4f}" for k in REGIONS
        }
    assert rows["other"].regions == {}
    page = build_cohort_index_html(out)
    head = page[page.index("<tr><th>#") : page.index("</tr>")]
    assert (
        head.index("both (mL)") < head.index("region/left_blob (mL)") < head.index("region/right_blob (mL)")
    )
