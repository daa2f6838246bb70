"""benchmarks/accuracy.py: the markdown writer, and a smoke run of the whole pipeline.

The smoke run imports 4 real hippocampus cases, makes 2 folds, trains medseg and the MONAI
baseline for a few seconds each, runs the classical baselines, evaluates, and checks that
the JSON and the markdown table are written (numbers are meaningless at that budget).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("accuracy_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_bench"] = module
    spec.loader.exec_module(module)
    return module


def _report(dice: float) -> dict[str, Any]:
    stat = {"mean": dice, "std": 0.01, "median": dice, "n": 2, "n_nan": 0}
    hd = {"mean": 1.5, "std": 0.2, "median": 1.5, "n": 2, "n_nan": 0}
    ev = {
        "per_class": {"anterior": {"dice": stat, "hd95": hd}, "posterior": {"dice": stat, "hd95": hd}},
        "mean_dice": dice,
        "mean_dice_std": 0.02,
        "pixel_error": 0.1,
    }
    return {
        "dataset": "hippocampus",
        "run": {
            "command": "python benchmarks/accuracy.py hippocampus",
            "started": "t",
            "quick": False,
            "budget_min": 20.0,
            "threads": 2,
            "folds": 5,
            "eval_folds": [0],
            "machine": "m",
        },
        "n_test_cases": 2,
        "rows": [
            {
                "name": "medseg 3D U-Net",
                "evaluation": ev,
                "train_seconds": 1200.0,
                "iterations": 5000,
                "peak_rss_mb": 900.0,
                "load_avg_before": 1.2,
                "load_avg_after": 2.1,
            },
            {"name": "nnU-Net v2 3d_fullres", "error": "exit code 1"},
        ],
    }


def test_markdown_section_is_replaced_and_notes_kept(tmp_path: Path) -> None:
    acc = _load()
    docs = tmp_path / "benchmarks.md"
    acc.write_markdown(_report(0.5), docs)
    text = docs.read_text()
    assert "**0.500** ± 0.020" in text
    assert "| nnU-Net v2 3d_fullres | — |" in text and "exit code 1" in text
    assert "0.500 ± 0.010" in text and "1.50 ± 0.20" in text  # per-class Dice and HD95
    assert "| 20.0 | 5000 | 900 | 1.2 / 2.1 |" in text
    assert "Dice anterior 0.90, posterior 0.89" in text  # the literature row
    docs.write_text(text + "\nMy notes stay.\n")
    acc.write_markdown(_report(0.75), docs)
    again = docs.read_text()
    assert "**0.750**" in again and "**0.500**" not in again
    assert again.count("<!-- accuracy:hippocampus start -->") == 1
    assert "My notes stay." in again
    # a second section of the same dataset (e.g. a longer budget) is added beside the first
    acc.write_markdown(_report(0.625), docs, section="hippocampus-long")
    both = docs.read_text()
    assert "**0.750**" in both and "**0.625**" in both and "### hippocampus-long" in both
    assert both.count("<!-- accuracy:hippocampus-long end -->") == 1


def test_set_options_merge_and_rules() -> None:
    acc = _load()
    base = {"plan": {"batch_size": 2, "patch_size": [40, 56, 40]}, "bf16": True}
    merged = acc.deep_merge(base, {"plan": {"batch_size": 4}, "network": {"base_features": 8}})
    assert merged == {
        "plan": {"batch_size": 4, "patch_size": [40, 56, 40]},
        "bf16": True,
        "network": {"base_features": 8},
    }
    assert base["plan"]["batch_size"] == 2  # not modified
    rules = acc.rules_from_options({"largest_per_class": [1, 3]})
    assert sorted(rules.classes) == [1, 3] and rules.classes[1].keep_largest
    assert not rules.keep_largest_foreground
    assert acc.rules_from_options({"keep_largest_foreground": True}).keep_largest_foreground


def test_only_picks_an_exact_name_alone_and_parts_of_names_broadly() -> None:
    acc = _load()
    spec = acc.DATASETS["hippocampus"]

    def names(only: str | None, extras: bool = False) -> list[str]:
        return [c.name for c in acc.choose_contenders(spec, only, quick=False, extras=extras)]

    assert names("medseg 3d u-net") == ["medseg 3D U-Net"]
    assert names("medseg 3d") == [
        "medseg 3D U-Net",
        "medseg 3D U-Net, seed 1",
    ]
    assert names("medseg 3d,ensemble") == [
        "medseg 3D U-Net",
        "medseg 3D U-Net, seed 1",
        "medseg ensemble of the two 3D seeds (softmax mean)",
    ]
    assert names("nnunet, MEDSEG 3D U-NET") == ["medseg 3D U-Net", "nnU-Net v2 3d_fullres"]
    # a kind picks that kind's default rows; its extra rows only with --extras
    assert names("medseg") == ["medseg 3D U-Net"]
    assert names("medseg", extras=True) == [
        "medseg 3D U-Net",
        "medseg 3D U-Net, seed 1",
        "medseg ensemble of the two 3D seeds (softmax mean)",
    ]
    assert names("monai,classical") == ["MONAI tutorial UNet", "classical"]
    isbi = acc.DATASETS["isbi"]
    both = "medseg 2D U-Net (elastic),medseg 2D U-Net (elastic + border weights)"
    picked_isbi = acc.choose_contenders(isbi, both, quick=False, extras=False)
    assert [c.name for c in picked_isbi] == both.split(",")
    assert picked_isbi[1].options["train"]["loss_options"]["border_class"] == 1
    assert [c.name for c in acc.choose_contenders(isbi, "medseg", quick=False, extras=False)] == [
        "medseg 2D U-Net"
    ]
    chaos = acc.DATASETS["chaos"]
    picked = acc.choose_contenders(chaos, "medseg", quick=False, extras=False)
    assert {c.kind for c in picked} >= {"medseg", "medseg-ensemble"} and not any(c.extra for c in picked)
    default = names(None)
    assert "medseg 3D U-Net, seed 1" not in default and "nnU-Net v2 3d_fullres" in default
    assert "medseg 3D U-Net, seed 1" in names(None, extras=True)
    assert [c.name for c in acc.choose_contenders(spec, None, quick=True, extras=False)] == [
        n for n in default if n != "nnU-Net v2 3d_fullres"
    ]


@pytest.mark.slow
def test_quick_run_on_four_hippocampus_cases(shared_data: Path, tmp_path: Path) -> None:
    if not (shared_data / "msd_hippocampus").is_dir():
        pytest.skip("msd_hippocampus not in the shared data")
    acc = _load()
    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    code = acc.main(
        [
            "hippocampus",
            "--quick",
            "--cases",
            "4",
            "--budget-min",
            "0.02",
            "--only",
            "medseg,classical",
            "--extras",
            "--threads",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(results),
            "--docs",
            str(docs),
        ]
    )
    assert code == 0
    report = json.loads((results / "accuracy_hippocampus_quick.json").read_text())
    assert report["n_test_cases"] == 2  # 4 cases, 2 folds, fold 0 held out
    rows = {r["name"]: r for r in report["rows"]}
    medseg = rows["medseg 3D U-Net"]
    assert "error" not in medseg, medseg.get("error")
    assert medseg["iterations"] >= 1 and medseg["peak_rss_mb"] > 0
    assert medseg["evaluation"]["n_scored"] == 2
    assert set(medseg["evaluation"]["per_class"]) == {"anterior", "posterior"}
    assert any(name.startswith("classical: ") for name in rows)
    # "medseg" with --extras also picks the second seed and the ensemble of the two (softmax mean, TTA);
    # the ensemble's training time is its members' together
    second = rows["medseg 3D U-Net, seed 1"]
    ensemble = rows["medseg ensemble of the two 3D seeds (softmax mean)"]
    assert "error" not in ensemble, ensemble.get("error")
    assert ensemble["evaluation"]["n_scored"] == 2
    assert ensemble["train_seconds"] == pytest.approx(medseg["train_seconds"] + second["train_seconds"])
    # The trained model folder is an ordinary medseg model folder.
    model_dir = Path(medseg["per_fold"]["0"]["model_dir"])
    assert (model_dir / "plan.json").is_file() and (model_dir / "checkpoint_best.pt").is_file()
    # the row's anatomical postprocessing rule travels with the model
    assert json.loads((model_dir / "postprocessing.json").read_text())["keep_largest_foreground"] is True
    text = docs.read_text()
    assert "QUICK smoke run" in text and "| medseg 3D U-Net |" in text


def test_evaluate_folder_scores_pixel_error_and_the_complement_of_a_one_class_set(tmp_path: Path) -> None:
    """ISBI-style scoring: membrane Dice, pixel error and the cell-interior (label 0) Dice."""
    import numpy as np

    from medseg.io import write_volume
    from medseg.volume import Volume

    acc = _load()
    ref = np.zeros((1, 20, 20), np.uint8)
    ref[0, :, 8:12] = 1  # a 4-pixel-wide membrane: 80 of 400 pixels
    pred = np.zeros_like(ref)
    pred[0, :, 9:13] = 1  # shifted by one column: 20 false positives, 20 false negatives
    geometry = {"spacing": (1.0, 0.004, 0.004), "origin": (0.0, 2.0, -3.0)}
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    write_volume(Volume(pred, **geometry), tmp_path / "pred" / "img01.nii.gz")
    write_volume(Volume(ref, **geometry), tmp_path / "ref" / "img01.nii.gz")
    ev = acc.evaluate_folder(tmp_path / "pred", tmp_path / "ref", {1: "membrane"})
    assert ev["per_class"]["membrane"]["dice"]["mean"] == pytest.approx(2 * 60 / 160)
    assert ev["pixel_error"] == pytest.approx(40 / 400)
    assert ev["complement_dice"] == pytest.approx(2 * 300 / 640)  # 320 cells each, 300 shared
    report = _report(0.5)
    report["dataset"] = "isbi"
    for row in report["rows"]:
        if "evaluation" in row:
            row["evaluation"] = {**ev, "mean_dice": ev["mean_dice"], "mean_dice_std": None}
    table = acc.markdown_table(report)
    assert "| pixel error | Rand error | Dice cell interior |" in table
    # shifting the membrane leaves the two cells two cells: no Rand error
    assert ev["rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert "| 0.1000 | 0.0000 | 0.938 |" in table


def test_cell_rand_error_counts_merges_and_splits_not_membrane_thickness() -> None:
    import numpy as np

    acc = _load()
    ref = np.ones((1, 40, 40), np.uint8)  # membrane everywhere but four 18 x 18 cells
    for y in (1, 21):
        for x in (1, 21):
            ref[0, y : y + 18, x : x + 18] = 0
    assert acc.cell_rand_error(ref, ref) == 0.0
    thick = ref.copy()
    thick[0, 17:23, :] = 1  # a thicker membrane, the same four cells
    assert acc.cell_rand_error(thick, ref) == pytest.approx(0.0, abs=1e-12)
    merged = ref.copy()
    merged[0, 5:15, 19:21] = 0  # a gap in the wall between the top two cells: they merge
    split = ref.copy()
    split[0, 1:19, 9] = 1  # a false wall across the top-left cell
    e_merge, e_split = acc.cell_rand_error(merged, ref), acc.cell_rand_error(split, ref)
    assert 0.05 < e_merge < 1 and 0.05 < e_split < 1
    assert acc.cell_rand_error(np.ones_like(ref), ref) > e_merge  # no cells found at all
