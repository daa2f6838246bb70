from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import InputError, OutputExistsError
from medseg.inference.onnx import OnnxExportError, OnnxNetwork, export_onnx, read_metadata
from medseg.inference.predictor import PredictConfig, SegmentationModel, predict
from medseg.io import read_volume, write_volume
from medseg.training.checkpoint import load_checkpoint, save_checkpoint
from tests.preprocessing.conftest import make_case


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def test_onnx_backend_gives_the_torch_labels(model_copy: Path) -> None:
    written = export_onnx(model_copy)
    assert written == [model_copy / "model.onnx"]
    meta = read_metadata(written[0])
    assert meta["checkpoint"] == "checkpoint_best.pt" and float(meta["verified_max_abs_diff"]) < 1e-3

    img, _ = make_case(21, shape=(9, 36, 30))  # oblique toy case, predicted on its own grid
    ref, ref_probs = SegmentationModel(model_copy, device="cpu").predict([img], with_probabilities=True)
    # ONNX Runtime has kernels of its own: the CPU options of the torch backend do not apply
    onnx_model = SegmentationModel(
        model_copy, device="cpu", backend="onnx", cpu_bf16=True, channels_last=True
    )
    assert isinstance(onnx_model.networks[0], OnnxNetwork)
    assert not onnx_model.cpu_bf16 and not onnx_model.channels_last
    assert onnx_model.describe()["network precision"] == "ONNX Runtime"
    pred, probs = onnx_model.predict([img], with_probabilities=True)
    pred.geometry.require_same(img.geometry, "onnx prediction and input")
    assert ref_probs is not None and probs is not None
    assert np.abs(probs - ref_probs).max() < 1e-3
    assert (ref.array == 1).any() and (ref.array == 2).any()  # both classes present: the Dice means something
    for k in (1, 2):
        assert _dice(pred.array == k, ref.array == k) >= 0.999


def test_ensemble_exports_every_fold_and_refuses_to_overwrite(trained_model: Path, tmp_path: Path) -> None:
    ens = tmp_path / "ensemble"
    shutil.copytree(trained_model, ens / "fold_0")
    shutil.copytree(trained_model, ens / "fold_1")
    written = export_onnx(ens)
    assert written == [ens / "fold_0" / "model.onnx", ens / "fold_1" / "model.onnx"]
    before = [p.read_bytes() for p in written]
    (ens / "fold_1" / "model.onnx").unlink()
    with pytest.raises(OutputExistsError, match=r"fold_0.model\.onnx.*--overwrite"):
        export_onnx(ens)
    assert not (ens / "fold_1" / "model.onnx").exists()  # nothing written when refused
    assert written[0].read_bytes() == before[0]
    assert export_onnx(ens, overwrite=True) == written
    assert len(SegmentationModel(ens, device="cpu", backend="onnx").networks) == 2


def test_missing_export_says_how_to_make_it(model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"has no model\.onnx; run `medseg export-onnx"):
        SegmentationModel(model_copy, device="cpu", backend="onnx")
    img, _ = make_case(3, shape=(9, 36, 30))
    src = write_volume(img, tmp_path / "in" / "c3.nii.gz")
    res = CliRunner().invoke(
        app, ["predict", str(src), "-m", str(model_copy), "-o", str(tmp_path / "out"), "--onnx"]
    )
    assert res.exit_code == 2, res.output
    assert "medseg export-onnx" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out" / "c3.nii.gz").exists()


def test_cli_export_then_predict_with_onnx(model_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["export-onnx", str(model_copy)])
    assert res.exit_code == 0, res.output
    assert "model.onnx" in res.output
    again = runner.invoke(app, ["export-onnx", str(model_copy)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["export-onnx", str(model_copy), "--overwrite", "--opset", "18"]).exit_code == 0

    img, _ = make_case(7, shape=(9, 36, 30))
    src = write_volume(img, tmp_path / "in" / "c7.nii.gz")
    res = runner.invoke(
        app, ["predict", str(src), "-m", str(model_copy), "-o", str(tmp_path / "onnx"), "--onnx"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", str(src), "-m", str(model_copy), "-o", str(tmp_path / "torch")])
    assert res.exit_code == 0, res.output
    a, b = read_volume(tmp_path / "onnx" / "c7.nii.gz"), read_volume(tmp_path / "torch" / "c7.nii.gz")
    a.geometry.require_same(read_volume(src).geometry, "onnx output and input")
    for k in (1, 2):
        assert _dice(a.array == k, b.array == k) >= 0.999


def test_stale_export_after_retraining_is_refused(model_copy: Path) -> None:
    export_onnx(model_copy)
    ckpt = model_copy / "checkpoint_best.pt"
    data = load_checkpoint(ckpt)
    data["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in data["model"].items()}
    save_checkpoint(ckpt, {k: v for k, v in data.items() if k not in ("format", "version", "medseg_version")})
    with pytest.raises(InputError, match=r"does not match checkpoint_best\.pt.*retrained.*--overwrite"):
        OnnxNetwork(model_copy / "model.onnx")
    export_onnx(model_copy, overwrite=True)
    OnnxNetwork(model_copy / "model.onnx")  # fresh again


def test_a_lean_onnx_folder_predicts_without_checkpoints(model_copy: Path, tmp_path: Path) -> None:
    """A deployment copy: model.onnx + the JSON files, no 60 MB checkpoints."""
    export_onnx(model_copy)
    img, _ = make_case(5, shape=(9, 36, 30))
    src = write_volume(img, tmp_path / "in" / "c5.nii.gz")
    full = predict(src, model_copy, tmp_path / "full", PredictConfig(backend="onnx"))
    for ckpt in model_copy.glob("checkpoint_*.pt"):
        ckpt.unlink()
    lean = predict(src, model_copy, tmp_path / "lean", PredictConfig(backend="onnx"))
    assert full[0].ok and lean[0].ok, lean[0].error
    name = Path(full[0].outputs["nifti"]).name
    np.testing.assert_array_equal(
        read_volume(tmp_path / "full" / name).array, read_volume(tmp_path / "lean" / name).array
    )
    # the PyTorch path still needs its weights; the error points to --onnx
    with pytest.raises(
        InputError, match=r"model folder is incomplete.*checkpoint_best.*predicts with --onnx"
    ):
        SegmentationModel(model_copy, device="cpu")


def test_a_lean_copy_with_older_rules_than_its_source_warns_naming_both(
    model_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lean ONNX copy made before `tune-postprocessing` keeps the old postprocessing.json (the
    rules are not in the graph): predict --onnx warns, naming the copy's and the source's files.
    model.onnx finds its source by a path relative to the home folder, not an absolute one."""
    import logging

    from medseg.postprocessing.labels import ClassRule, PostprocessingRules, read_rules, write_rules

    monkeypatch.setenv("HOME", str(tmp_path))
    written = export_onnx(model_copy)
    meta = read_metadata(written[0])
    assert meta["source_folder_in_home"] == "~/model" and "source_folder" not in meta
    assert not any(str(tmp_path) in value for value in meta.values())  # no absolute path, no user name
    lean = tmp_path / "lean"
    lean.mkdir()
    for name in ("model.onnx", "model.json", "plan.json", "dataset.json", "postprocessing.json"):
        shutil.copy2(model_copy / name, lean / name)
    with caplog.at_level(logging.WARNING, logger="medseg.inference.onnx"):
        SegmentationModel(lean, device="cpu", backend="onnx")
    assert not caplog.records  # same rules: nothing to say
    tuned = PostprocessingRules(classes={1: ClassRule(keep_largest=True)}, keep_largest_foreground=True)
    write_rules(tuned, model_copy / "postprocessing.json", overwrite=True)  # tuned after the copy
    with caplog.at_level(logging.WARNING, logger="medseg.inference.onnx"):
        model = SegmentationModel(lean, device="cpu", backend="onnx")
    assert model.rules.is_identity  # the copy's rules apply, as the warning says
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"{lean / 'postprocessing.json'}: this copy's postprocessing rules (none)" in message
    assert f"{model_copy.resolve() / 'postprocessing.json'}" in message
    assert "label 1: keep largest; largest foreground component" in message
    assert "the copy's rules apply" in message and "need not be exported again" in message
    # The source itself never warns about itself; an identical copy is quiet again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medseg.inference.onnx"):
        SegmentationModel(model_copy, device="cpu", backend="onnx")
        shutil.copy2(model_copy / "postprocessing.json", lean / "postprocessing.json")
        assert read_rules(lean / "postprocessing.json") == tuned
        SegmentationModel(lean, device="cpu", backend="onnx")
    assert not caplog.records


def _with_source_metadata(onnx_file: Path, meta: dict[str, str]) -> None:
    """Rewrite model.onnx's source metadata as ``meta`` (e.g. as an older medseg wrote it)."""
    import onnx

    proto = onnx.load(str(onnx_file))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in meta and "source" not in p.key]
    del proto.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx_file.write_bytes(proto.SerializeToString())


def _lean_copy(model: Path, lean: Path) -> Path:
    lean.mkdir()
    for name in ("model.onnx", "model.json", "plan.json", "dataset.json", "postprocessing.json"):
        shutil.copy2(model / name, lean / name)
    return lean


def test_an_export_of_an_older_medseg_still_finds_its_source_by_its_absolute_path(
    model_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from medseg.postprocessing.labels import PostprocessingRules, write_rules

    export_onnx(model_copy)
    _with_source_metadata(model_copy / "model.onnx", {"source_folder": str(model_copy.resolve())})
    lean = _lean_copy(model_copy, tmp_path / "lean")
    write_rules(
        PostprocessingRules(keep_largest_foreground=True), model_copy / "postprocessing.json", overwrite=True
    )
    with caplog.at_level(logging.WARNING, logger="medseg.inference.onnx"):
        SegmentationModel(lean, device="cpu", backend="onnx")
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"{model_copy.resolve() / 'postprocessing.json'}" in message and "this copy's" in message


def test_a_copy_whose_source_is_out_of_reach_compares_its_rules_with_those_exported(
    model_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exported outside the home folder (no source recorded) or read on another machine: the
    rules recorded at export tell the copy (info, not a warning: newer rules copied in on
    purpose differ too) that its postprocessing.json is not the one it was exported with."""
    import logging

    from medseg.postprocessing.labels import PostprocessingRules, write_rules

    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    meta = read_metadata(export_onnx(model_copy)[0])
    assert "source_folder_in_home" not in meta and "source_folder" not in meta
    assert json.loads(meta["postprocessing_rules"])["keep_largest_foreground"] is False
    lean = _lean_copy(model_copy, tmp_path / "lean")
    with caplog.at_level(logging.INFO, logger="medseg.inference.onnx"):
        SegmentationModel(lean, device="cpu", backend="onnx")
    assert not [r for r in caplog.records if "postprocessing" in r.getMessage()]  # as exported
    write_rules(
        PostprocessingRules(keep_largest_foreground=True), lean / "postprocessing.json", overwrite=True
    )
    with caplog.at_level(logging.INFO, logger="medseg.inference.onnx"):
        SegmentationModel(lean, device="cpu", backend="onnx")
    (record,) = [r for r in caplog.records if "postprocessing" in r.getMessage()]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert (
        f"{lean / 'postprocessing.json'}: the postprocessing rules here (largest foreground component"
        in message
    )
    assert "not those" in message and "exported with (none)" in message


def test_network_has_a_dynamic_batch_and_fixed_window(model_copy: Path) -> None:
    export_onnx(model_copy)
    net = OnnxNetwork(model_copy / "model.onnx", "cpu", threads=1)
    assert net.providers == ["CPUExecutionProvider"]
    window = tuple(int(v) for v in net.input_shape[1:])
    assert window == (1, 8, 16, 16)  # the plan's patch (fixture: patch_size [8, 16, 16]), one channel
    out = net(torch.randn(3, *window))
    assert out.shape == (3, 3, 8, 16, 16) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"windows of shape \(batch, 1, 8, 16, 16\)"):
        net(torch.randn(1, 1, 8, 16, 24))


def test_corrupt_onnx_and_failed_verification(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (model_copy / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(InputError):
        OnnxNetwork(model_copy / "model.onnx", check_checkpoint=False)
    (model_copy / "model.onnx").unlink()

    import medseg.inference.onnx as onnx_mod

    monkeypatch.setattr(onnx_mod, "verify_onnx", lambda *a, **k: (0.5, 1.0))
    with pytest.raises(OnnxExportError, match=r"does not reproduce the network.*found 0\.5"):
        export_onnx(model_copy)
    assert not (model_copy / "model.onnx").exists()
    assert not list(model_copy.glob(".model.onnx*"))


def _random_model_folder(plan_path: Path, folder: Path, overrides: dict) -> Path:
    """A randomly initialised model folder for another configuration of the fixture's plan."""
    import json

    from medseg.preprocessing.plan import Plan
    from medseg.training.checkpoint import write_model_json
    from medseg.training.trainer import architecture_from_plan

    plan = Plan.load(plan_path).with_overrides(overrides)
    arch = architecture_from_plan(plan)
    torch.manual_seed(0)
    net = arch.build()
    folder.mkdir(parents=True)
    plan.save(folder / "plan.json")
    shutil.copy(plan_path.parent / "dataset.json", folder / "dataset.json")
    save_checkpoint(
        folder / "checkpoint_best.pt", {"model": net.state_dict(), "architecture": arch.to_dict()}
    )
    write_model_json(folder, arch, {"configuration": plan.configuration, "labels": plan.labels})
    assert json.loads((folder / "model.json").read_text())["architecture"]["spatial_dims"] == 2
    return folder


def test_2_5d_model_exports_with_slices_as_channels(trained_model: Path, tmp_path: Path) -> None:
    folder = _random_model_folder(
        trained_model / "plan.json",
        tmp_path / "m25",
        {"configuration": "2.5d", "slab_slices": 3, "slab_step": 2, "patch_size": [1, 16, 16]},
    )
    export_onnx(folder)
    net = OnnxNetwork(folder / "model.onnx")
    assert tuple(net.input_shape[1:]) == (3, 16, 16)  # 3 neighbouring slices x 1 channel, one 2D window
    img, _ = make_case(4, shape=(9, 36, 30))
    _, ref = SegmentationModel(folder, device="cpu").predict([img], with_probabilities=True)
    _, got = SegmentationModel(folder, device="cpu", backend="onnx").predict([img], with_probabilities=True)
    assert ref is not None and got is not None
    assert np.abs(got - ref).max() < 1e-3
    # the step reaches both backends: the same weights fed adjacent slices predict otherwise
    plan = json.loads((folder / "plan.json").read_text())
    plan["slab_step"] = 1
    (folder / "plan.json").write_text(json.dumps(plan))
    _, adjacent = SegmentationModel(folder, device="cpu", backend="onnx").predict(
        [img], with_probabilities=True
    )
    assert adjacent is not None and np.abs(adjacent - got).max() > 1e-3


def test_ensemble_export_writes_nothing_when_a_fold_fails(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medseg.inference.onnx as onnx_mod

    ens = tmp_path / "ensemble"
    shutil.copytree(trained_model, ens / "fold_0")
    shutil.copytree(trained_model, ens / "fold_1")
    results = iter([(0.0, 1.0), (0.5, 1.0)])  # fold_0 verifies, fold_1 does not
    monkeypatch.setattr(onnx_mod, "verify_onnx", lambda *a, **k: next(results))
    with pytest.raises(OnnxExportError, match="fold_1"):
        export_onnx(ens)
    assert not list(ens.rglob("*.onnx")) and not list(ens.rglob(".model.onnx*"))
