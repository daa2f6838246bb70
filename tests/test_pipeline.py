"""End to end: the README demo's whole path, shrunk to seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import OutputExistsError
from medseg.io import read_volume
from medseg.pipeline import run_demo


def test_quick_demo_runs_the_whole_path(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    lines: list[str] = []
    res = run_demo(tmp_path / "demo", minutes=1.0, n_train=3, quick=True, say=lines.append)
    assert [line[:3] for line in lines] == [f"{i}/7" for i in range(1, 8)]
    assert "_roi.nii.gz" in lines[1] and str(res.roi_json) in lines[1]  # the crop and its box named
    case_dir = res.report.parent
    for name in ("seg.dcm", "rtstruct.dcm", "volumes.csv", "volumes.json", "overlay.png", "report.html"):
        assert (case_dir / name).is_file(), name
    assert any((case_dir / "meshes").iterdir())
    # the prediction lies on the test image's exact grid
    image = read_volume(next((res.dataset / "imagesTs").glob("*_0000.nii.gz")))
    pred = read_volume(next(res.predictions.glob("*.nii.gz")))
    image.geometry.require_same(pred.geometry, spacing_atol=1e-5, origin_atol=1e-4)
    assert set(np.unique(pred.array)) <= {0, 1, 2, 3, 4}
    roi = json.loads(res.roi_json.read_text())
    assert roi  # the multi-plane ROI box was written
    summary = json.loads((res.out / "demo_summary.json").read_text())
    assert set(summary["seconds"]) >= {"phantom", "train", "predict", "evaluate", "total"}
    assert res.evaluation.is_file()
    page = res.evaluation.read_text() if res.evaluation.suffix == ".html" else ""
    assert "overlays/" in page and "no image given" not in page  # drawn over the test images
    with pytest.raises(OutputExistsError):
        run_demo(tmp_path / "demo", quick=True)


def test_demo_command_refuses_existing_output(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "exists" in res.output


def test_every_cli_option_is_an_api_name_or_its_mapping_is_documented() -> None:
    """The Python API mirrors the CLI: an option whose Python name differs (--lr is
    ``learning_rate``, plan's ``--spacing X Y Z`` is ``target_spacing`` Z Y X) is named in
    medseg.pipeline's docstring, which an engineer reads with help(); several were not."""
    import dataclasses
    import inspect

    from typer.main import get_command

    import medseg.pipeline as P

    commands = get_command(app).commands  # type: ignore[attr-defined]
    api: dict[str, list[object]] = {
        "predict": [P.predict, P.PredictConfig],
        "train": [P.train, P.TrainingConfig],
        "crossval": [P.cross_validate, P.TrainingConfig],
        "evaluate": [P.evaluate, P.EvaluationConfig, P.write_report],
        "export": [P.export_label, P.ExportConfig],
        "export-onnx": [P.export_onnx],
        "export-index": [P.write_cohort_index],
        "plan": [P.plan_dataset],
        "convert": [P.convert],
        "demo": [P.run_demo],
    }
    doc = " ".join((P.__doc__ or "").split())
    undocumented = []
    for name, objects in api.items():
        known: set[str] = set()
        for obj in objects:
            if dataclasses.is_dataclass(obj):
                known |= {f.name for f in dataclasses.fields(obj)}
            else:
                known |= set(inspect.signature(obj).parameters)  # type: ignore[arg-type]
        for param in commands[name].params:
            if param.param_type_name == "argument" or param.name in ("quiet", "help") or param.name in known:
                continue
            flags = [o for o in param.opts if o.startswith("--")]
            if not any(f"``{flag}" in doc for flag in flags):
                undocumented.append(f"{name} {flags}")
    assert not undocumented, undocumented
