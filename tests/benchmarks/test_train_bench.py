"""benchmarks/train_bench.py compares medseg's trainer step with a float32 MONAI loop."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_bench.py"


def test_speed_runner_trains_float32_in_the_default_layout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not TrainingConfig's "auto" (bf16 / channels-last on some CPUs): the MONAI loop it is
    timed against runs float32 NCDHW, so the ratio would compare unlike steps."""
    import medseg.preprocessing.pipeline as pipeline
    import medseg.training.trainer as trainer_module

    spec = importlib.util.spec_from_file_location("train_bench_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_bench_under_test", bench)
    spec.loader.exec_module(bench)

    seen: dict[str, Any] = {}

    class FakeTrainer:
        def __init__(self, plan: Any, cache: Any, train_ids: Any, val_ids: Any, cfg: Any, out: Any) -> None:
            seen["config"] = cfg
            self.model = None

    monkeypatch.setattr(pipeline, "load_dataset_plan", lambda root, configuration: object())
    monkeypatch.setattr(pipeline, "default_cache_dir", lambda root, plan: tmp_path)
    monkeypatch.setattr(trainer_module, "Trainer", FakeTrainer)
    bench.Ours(tmp_path, tmp_path / "model")
    cfg = seen["config"]
    assert cfg.cpu_bf16 is False and cfg.channels_last is False
