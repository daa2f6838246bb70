from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from medseg.cli import app
from medseg.preprocessing.plan import Plan

runner = CliRunner()


def test_plan_and_preprocess_commands(toy_dataset: Path) -> None:
    res = runner.invoke(
        app, ["plan", str(toy_dataset), "--spacing", "0.8", "0.8", "1.5", "--patch", "8", "32", "32"]
    )
    assert res.exit_code == 0, res.output
    plan = Plan.load(toy_dataset / "plans" / "3d.json")
    assert plan.target_spacing == (1.5, 0.8, 0.8)  # given as x y z, stored z y x
    assert plan.patch_size == (8, 32, 32)
    assert (toy_dataset / "plans" / "fingerprint.json").is_file()
    again = runner.invoke(app, ["plan", str(toy_dataset)])
    assert again.exit_code == 2 and "exists" in again.output
    res = runner.invoke(app, ["preprocess", str(toy_dataset), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert (toy_dataset / "preprocessed" / "3d" / "case_000_image.npy").is_file()


def test_plan_and_preprocess_take_quiet_as_train_does(toy_dataset: Path) -> None:
    """`medseg plan -q` / `preprocess -q` (as `train -q`, `crossval -q`): only the result line."""
    res = runner.invoke(app, ["plan", str(toy_dataset), "-q"])
    assert res.exit_code == 0, res.output
    assert "".join(res.output.split()) == f"wrote{toy_dataset / 'plans' / '3d.json'}"  # Rich wraps paths
    res = runner.invoke(app, ["preprocess", str(toy_dataset), "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "".join(res.output.split()) == f"preprocessedcasesarein{toy_dataset / 'preprocessed' / '3d'}"


def test_preprocess_without_plan_and_bad_config(toy_dataset: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["preprocess", str(toy_dataset)])
    assert res.exit_code == 2 and "medseg plan" in res.output
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"batch_sise": 3}')
    res = runner.invoke(app, ["plan", str(toy_dataset), "--config", str(cfg)])
    assert res.exit_code == 2 and "batch_sise" in res.output
    res = runner.invoke(app, ["plan", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output


def test_plan_takes_a_2_5d_slab_and_its_step(toy_dataset: Path) -> None:
    res = runner.invoke(app, ["plan", str(toy_dataset), "-c", "2.5d", "--slab", "3", "--slab-step", "2"])
    assert res.exit_code == 0, res.output
    plan = Plan.load(toy_dataset / "plans" / "2.5d.json")
    assert (plan.slab_slices, plan.slab_step, plan.in_channels) == (3, 2, 3)
    assert "2 slices apart" in res.output
    res = runner.invoke(app, ["plan", str(toy_dataset), "--slab-step", "2"])
    assert res.exit_code == 2 and "2.5d" in res.output
    res = runner.invoke(app, ["plan", str(toy_dataset), "-c", "2.5d", "--slab", "4", "--overwrite"])
    assert res.exit_code == 2 and "odd" in res.output


def test_plan_refuses_a_zero_spacing_in_the_order_given(toy_dataset: Path) -> None:
    res = runner.invoke(app, ["plan", str(toy_dataset), "--spacing", "0", "0.8", "0.8"])
    assert res.exit_code == 2 and "found 0 0.8 0.8" in res.output


def test_plan_refuses_network_options_its_network_cannot_take(toy_dataset: Path, tmp_path: Path) -> None:
    # One encoder block count per level: refused when planning, not when training starts.
    cfg = tmp_path / "net.json"
    cfg.write_text(
        '{"network": {"options": {"residual_encoder": true, "encoder_blocks": [1, 1, 1, 1, 1, 1, 1, 1, 1]}}}'
    )
    res = runner.invoke(app, ["plan", str(toy_dataset), "--config", str(cfg)])
    assert res.exit_code == 2 and "encoder_blocks" in res.output and "levels" in res.output, res.output
    assert not (toy_dataset / "plans" / "3d.json").exists()
    res = runner.invoke(app, ["plan", str(toy_dataset)])
    assert res.exit_code == 0, res.output
    levels = len(Plan.load(toy_dataset / "plans" / "3d.json").network.pooling) + 1
    blocks = ", ".join(["1"] * levels)
    cfg.write_text(
        f'{{"network": {{"options": {{"residual_encoder": true, "encoder_blocks": [{blocks}]}}}}}}'
    )
    res = runner.invoke(app, ["plan", str(toy_dataset), "--config", str(cfg), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_a_bad_plan_setting_in_a_config_file_names_the_file(toy_dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "plan.json"
    cfg.write_text('{"network": {"base_features": "many"}}')
    res = runner.invoke(app, ["plan", str(toy_dataset), "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "plan.json (plan settings)" in text and "plan override" not in text, text
