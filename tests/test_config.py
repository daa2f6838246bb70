from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from medseg.config import from_dict, load_config_file, replace_from_overrides, to_dict
from medseg.errors import ConfigError, InputError


@dataclass(frozen=True)
class Inner:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Outer:
    size: tuple[int, int, int]
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=lambda: Inner("x"))
    items: tuple[Inner, ...] = ()
    extra: dict[str, int] = field(default_factory=dict)
    maybe: float | None = None


def test_round_trip() -> None:
    obj = Outer((1, 2, 3), "b", Inner("y", 2), (Inner("z"),), {"k": 1}, 0.5)
    assert from_dict(Outer, to_dict(obj)) == obj


def test_int_accepted_for_float_and_integral_float_for_int() -> None:
    obj = from_dict(Outer, {"size": [1.0, 2, 3], "inner": {"name": "n", "weight": 3}})
    assert obj.size == (1, 2, 3) and obj.inner.weight == 3.0


@pytest.mark.parametrize(
    "data, match",
    [
        ({"size": [1, 2, 3], "sise": 1}, r"unknown key\(s\) \['sise'\]"),
        ({"size": [1, 2]}, "expected 3 values"),
        ({"size": [1, 2, "x"]}, r"size\[2\]: expected an integer"),
        ({"size": [1, 2, 3], "mode": "c"}, "expected one of"),
        ({"size": [1, 2, 3], "inner": {"name": "n", "wieght": 2}}, r"Outer.inner: unknown key"),
        ({"size": [1, 2, 3], "maybe": "no"}, "expected a number"),
        ({}, "missing required key 'size'"),
        ({"size": [1, 2, 3], "inner": {"name": True}}, "expected a string"),
    ],
)
def test_errors_name_the_key(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_overrides_are_checked() -> None:
    base = Outer((1, 2, 3))
    new = replace_from_overrides(base, {"inner": {"weight": 5}})
    assert new.inner == Inner("x", 5.0)
    with pytest.raises(ConfigError, match="unknown"):
        replace_from_overrides(base, {"nope": 1})


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_config_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(InputError, match=r"bad\.json: is not valid JSON"):
        load_config_file(bad)
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(InputError, match="one object"):
        load_config_file(lst)


def test_a_yaml_training_config_loads_like_its_json(tmp_path: Path) -> None:
    """PyYAML is a dependency: `medseg train --config train.yaml` works on a default install."""
    from medseg.training.config import load_training_config

    (tmp_path / "train.yaml").write_text("loss: focal\nlearning_rate: 1.0e-4\nloss_options:\n  gamma: 2.0\n")
    (tmp_path / "train.json").write_text(
        '{"loss": "focal", "learning_rate": 1e-4, "loss_options": {"gamma": 2.0}}'
    )
    assert load_training_config(tmp_path / "train.yaml") == load_training_config(tmp_path / "train.json")
    (tmp_path / "bad.yaml").write_text("loss: [focal\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*not valid YAML"):
        load_config_file(tmp_path / "bad.yaml")


def test_a_printed_config_shows_no_uid_key_or_pseudonym_map() -> None:
    """A config printed or logged (repr) must not show the de-identification key or a
    PatientID -> pseudonym map: either undoes the de-identification."""
    from medseg.pipeline import ExportConfig, PredictConfig

    for cls in (PredictConfig, ExportConfig):
        cfg = cls(deidentify=True, uid_secret="k3y-s3cret", pseudonym={"PID-7731": "SUBJ01"})
        text = repr(cfg)
        assert "deidentify=True" in text
        assert "k3y-s3cret" not in text and "PID-7731" not in text and "SUBJ01" not in text
