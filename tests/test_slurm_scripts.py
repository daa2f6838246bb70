"""scripts/slurm/*.slurm: valid bash, and every command they run parses with the real CLI.

The scripts run under bash with stub ``medseg``, ``torchrun``, ``srun`` and ``scontrol``
executables that record their arguments. The recorded ``medseg`` command lines are then
run through the real Typer app with the library call replaced by a recorder (so options,
types and the training config are checked without training), and torchrun's arguments
through torchrun's own parser. The time-limit path is exercised with a real USR1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medseg.cli import app

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "slurm"

STUB = f"""#!{sys.executable}
import json, os, signal, sys, time
log = os.environ["STUB_LOG"]
def record(entry):
    with open(log, "a") as fh:
        fh.write(json.dumps(entry) + "\\n")
prog = os.path.basename(sys.argv[0])
if prog == "scontrol" and sys.argv[1:3] == ["show", "hostnames"]:
    print("gpu-node-7")
    print("gpu-node-8")
    sys.exit(0)
record({{"prog": prog, "argv": sys.argv[1:]}})
if os.environ.get("STUB_WAIT_FOR_TERM") and prog == "medseg":
    def on_term(signum, frame):
        record({{"prog": prog, "signal": "TERM"}})
        sys.exit(130)
    signal.signal(signal.SIGTERM, on_term)
    time.sleep(60)
"""


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("medseg", "torchrun", "srun", "scontrol"):
        path = bin_dir / name
        path.write_text(STUB)
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "STUB_LOG": str(tmp_path / "calls.jsonl")})
    return env


def _run(script: str, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / script)], env={**env, **extra}, capture_output=True, text=True, timeout=60
    )


def _calls(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["STUB_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _parse_medseg(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Run the real CLI on ``argv`` with the library call recorded instead of executed."""
    from medseg.inference import predictor
    from medseg.training import trainer

    seen: dict[str, Any] = {}

    def fake_train(*args: Any, **kwargs: Any) -> Any:
        seen["call"] = (args, kwargs)
        return trainer.TrainResult(Path("model"), 0, -1.0, -1, [])

    def fake_predict(*args: Any, **kwargs: Any) -> list[Any]:
        seen["call"] = (args, kwargs)
        return []

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(predictor, "predict", fake_predict)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, (argv, result.output)
    return seen["call"]


@pytest.mark.parametrize("script", ["train.slurm", "test.slurm"])
def test_scripts_are_valid_bash(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --array=" in (SCRIPTS / script).read_text()


def test_train_script_one_fold_per_task_and_resume(
    stubs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = tmp_path / "Dataset001"
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"loss": "focal", "learning_rate": 1e-4, "schedule": "step"}))
    slurm = {"SLURM_JOB_ID": "778", "SLURM_ARRAY_JOB_ID": "777", "SLURM_ARRAY_TASK_ID": "2"}
    proc = _run(
        "train.slurm", stubs, DATASET=str(dataset), TRAIN_CONFIG=str(config), EXTRA_ARGS="--epochs 3", **slurm
    )
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(stubs)
    assert call["prog"] == "medseg" and call["argv"][0] == "train"
    args, kwargs = _parse_medseg(call["argv"], monkeypatch)
    assert args == (dataset, 2) and kwargs["resume"] is False and kwargs["configuration"] == "3d"
    assert kwargs["config"].loss == "focal" and kwargs["config"].epochs == 3

    # After a requeue the fold's checkpoint_last.pt is there: the task resumes it.
    folder = dataset / "models" / "3d" / "fold_2"
    folder.mkdir(parents=True)
    (folder / "checkpoint_last.pt").write_bytes(b"")
    Path(stubs["STUB_LOG"]).unlink()
    proc = _run("train.slurm", stubs, DATASET=str(dataset), **slurm)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(stubs)
    _, kwargs = _parse_medseg(call["argv"], monkeypatch)
    assert kwargs["resume"] is True


def test_train_script_uses_torchrun_on_several_gpus_and_nodes(
    stubs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.distributed.run import get_args_parser

    dataset = tmp_path / "Dataset001"
    proc = _run("train.slurm", stubs, DATASET=str(dataset), SLURM_ARRAY_TASK_ID="1", SLURM_GPUS_ON_NODE="4")
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(stubs)
    assert call["prog"] == "torchrun"
    ns = get_args_parser().parse_args(call["argv"])
    assert ns.standalone and ns.nproc_per_node == "4" and ns.module and ns.training_script == "medseg.cli"
    args, _ = _parse_medseg(ns.training_script_args, monkeypatch)
    assert args == (dataset, 1)

    Path(stubs["STUB_LOG"]).unlink()
    multi = {"SLURM_NNODES": "2", "SLURM_JOB_ID": "900", "SLURM_JOB_NODELIST": "gpu-node-[7-8]"}
    proc = _run("train.slurm", stubs, DATASET=str(dataset), SLURM_GPUS_ON_NODE="4", **multi)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(stubs)
    assert call["prog"] == "srun" and call["argv"][:2] == ["--ntasks-per-node=1", "torchrun"]
    ns = get_args_parser().parse_args(call["argv"][2:])
    assert (ns.nnodes, ns.nproc_per_node, ns.rdzv_backend) == ("2", "4", "c10d")
    assert ns.rdzv_endpoint == "gpu-node-7:29500" and ns.rdzv_id == "900"
    args, _ = _parse_medseg(ns.training_script_args, monkeypatch)
    assert args == (dataset, 0)


def test_train_script_checkpoints_and_requeues_before_the_time_limit(
    stubs: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **stubs,
        "DATASET": str(tmp_path / "Dataset001"),
        "STUB_WAIT_FOR_TERM": "1",
        "SLURM_JOB_ID": "778",
        "SLURM_ARRAY_JOB_ID": "777",
        "SLURM_ARRAY_TASK_ID": "3",
    }
    proc = subprocess.Popen(
        ["bash", str(SCRIPTS / "train.slurm")], env=env, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not any(c.get("prog") == "medseg" for c in _calls(stubs)):
        assert time.monotonic() < deadline, "the training command never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` sends
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    calls = _calls(stubs)
    assert {"prog": "medseg", "signal": "TERM"} in calls  # the trainer saves checkpoint_last.pt on TERM
    assert {"prog": "scontrol", "argv": ["requeue", "777_3"]} in calls


def test_train_script_needs_a_dataset(stubs: dict[str, str]) -> None:
    proc = _run("train.slurm", stubs)
    assert proc.returncode != 0 and "DATASET" in proc.stderr
    assert _calls(stubs) == []


def test_test_script_predicts_one_shard_per_task(
    stubs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = {
        "INPUT": str(tmp_path / "cohort"),
        "MODEL": str(tmp_path / "models" / "3d"),
        "OUT": str(tmp_path / "pred"),
    }
    proc = _run(
        "test.slurm",
        stubs,
        **paths,
        FORMATS="nifti,volumes",
        EXTRA_ARGS="--tta",
        SLURM_ARRAY_TASK_ID="1",
        SLURM_ARRAY_TASK_COUNT="4",
    )
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(stubs)
    assert call["prog"] == "medseg" and call["argv"][0] == "predict"
    args, _ = _parse_medseg(call["argv"], monkeypatch)
    source, model, out, cfg = args
    assert (str(source), str(model), str(out)) == (paths["INPUT"], paths["MODEL"], paths["OUT"])
    assert cfg.shard == (1, 4) and cfg.formats == ("nifti", "volumes") and cfg.tta is True

    proc = _run("test.slurm", stubs, INPUT=paths["INPUT"], MODEL=paths["MODEL"])
    assert proc.returncode != 0 and "OUT" in proc.stderr
