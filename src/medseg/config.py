"""Strict conversion between frozen dataclasses and JSON-able dicts.

Plans, training configs and model folders are data: they are saved as JSON and loaded
back with every key and type checked. An unknown key (a typo like ``"learning_rat"``) or
a wrong type is an error that names the key, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from medseg.errors import ConfigError, InputError

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict / list / scalars, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    return typing.cast(T, _convert(cls, data, where or cls.__name__))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, found {type(value).__name__}")
        hints = get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key '{name}'")
        try:
            return tp(**kwargs)
        except (TypeError, ValueError, ConfigError) as exc:  # ConfigError: a value __post_init__ refuses
            raise ConfigError(f"{where}: {exc}") from None
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}"
        )
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(get_args(tp))}, found {value!r}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, found {len(value)}")
        return tuple(
            _convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is list:
        (arg,) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {type(value).__name__}")
        return [_convert(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, found {type(value).__name__}")
        return {_convert(kt, k, f"{where} key"): _convert(vt, v, f"{where}[{k!r}]") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, found {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, found {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def load_json(path: str | Path) -> Any:
    src = Path(path)
    if not src.is_file():
        raise InputError(src, "not found")
    try:
        return json.loads(src.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(src, "is not valid JSON", found=str(exc)) from None
    except OSError as exc:
        raise InputError(src, "cannot be read", found=str(exc)) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML file holding one object (PyYAML is a dependency; the ImportError path
    is for environments that removed it)."""
    src = Path(path)
    if src.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InputError(
                src, "YAML config needs PyYAML", expected="a .json config or `pip install pyyaml`"
            ) from None
        if not src.is_file():
            raise InputError(src, "not found")
        try:
            data = yaml.safe_load(src.read_text())
        except yaml.YAMLError as exc:
            raise InputError(src, "is not valid YAML", found=str(exc).splitlines()[0]) from None
    else:
        data = load_json(src)
    if not isinstance(data, dict):
        raise InputError(src, "must hold one object", found=type(data).__name__)
    return data


def replace_from_overrides(obj: T, overrides: Mapping[str, Any], where: str = "") -> T:
    """Copy of dataclass ``obj`` with keys overridden and type-checked.

    A nested dataclass field given as a dict is updated key by key; any other field
    (including dict-valued ones such as label maps) is replaced as a whole.
    """
    return from_dict(type(obj), _merge(obj, overrides), where or type(obj).__name__)


def _merge(obj: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    out = to_dict(obj)
    for key, value in extra.items():
        current = getattr(obj, key, None)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current) and not isinstance(current, type):
            out[key] = _merge(current, value)
        else:
            out[key] = value
    return out
