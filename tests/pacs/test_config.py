"""PACS configuration: precedence, validation, secrets never shown (no server needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from medseg.errors import ConfigError, InputError
from medseg.pacs.client import PacsClient, PacsConfig, resolve_config
from medseg.pacs.query import parse_date_range

SECRET = "hunter2-very-secret"
TOKEN = "eyJ-token-very-secret"


def _write(path: Path, data: object, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    path.chmod(mode)
    return path


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "pacs.json", {"url": "https://file.example/dicom-web", "timeout": 12})
    env = {"MEDSEG_PACS_URL": "https://env.example/dicom-web"}
    assert resolve_config(config_path=cfg, env={}).url == "https://file.example/dicom-web"
    assert resolve_config(config_path=cfg, env=env).url == "https://env.example/dicom-web"
    got = resolve_config(url="https://cli.example/dicom-web/", config_path=cfg, env=env)
    assert got.url == "https://cli.example/dicom-web"  # trailing slash dropped
    assert got.timeout == 12.0 and got.verify is True


def test_default_config_file_under_xdg(tmp_path: Path) -> None:
    _write(tmp_path / "medseg" / "pacs.json", {"url": "http://127.0.0.1:8042/dicom-web"})
    assert resolve_config(env={"XDG_CONFIG_HOME": str(tmp_path)}).url == "http://127.0.0.1:8042/dicom-web"
    # the environment may name another file
    other = _write(tmp_path / "other.json", {"url": "http://other/dicom-web"})
    env = {"XDG_CONFIG_HOME": str(tmp_path), "MEDSEG_PACS_CONFIG": str(other)}
    assert resolve_config(env=env).url == "http://other/dicom-web"


def test_credentials_come_as_a_unit_from_one_source(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "pacs.json", {"url": "https://p/dicom-web", "user": "u", "password": SECRET})
    assert resolve_config(config_path=cfg, env={}).auth_kind == "basic"
    # a token in the environment replaces the file's user/password instead of mixing with them
    got = resolve_config(config_path=cfg, env={"MEDSEG_PACS_TOKEN": TOKEN})
    assert got.auth_kind == "token" and got.user is None and got.password is None


def test_secrets_never_in_repr_or_describe() -> None:
    basic = PacsConfig("https://p/dicom-web", user="u", password=SECRET)
    token = PacsConfig("https://p/dicom-web", token=TOKEN)
    for text in (
        repr(basic),
        str(basic),
        basic.describe(),
        repr(token),
        token.describe(),
        repr(PacsClient(token)),
    ):
        assert SECRET not in text and TOKEN not in text
    assert "basic auth" in basic.describe() and "bearer token" in token.describe()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"url": "ftp://host/x"}, "must look like"),
        ({"url": "pacs.example.org"}, "must look like"),
        ({"url": "https://p/dicom-web", "user": "u"}, "needs both a user and a password"),
        ({"url": "https://p/dicom-web", "user": "u", "password": SECRET, "token": TOKEN}, "not both"),
        ({"url": "https://p/dicom-web?x=1"}, "query string"),
        ({"url": "https://p/dicom-web", "timeout": 0}, "timeout"),
    ],
)
def test_bad_config_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        PacsConfig(**kwargs)  # type: ignore[arg-type]
    assert SECRET not in str(info.value) and TOKEN not in str(info.value)


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="contains credentials") as info:
        resolve_config(url=f"https://bob:{SECRET}@pacs.example.org/dicom-web", env={})
    assert SECRET not in str(info.value) and "bob" not in str(info.value)


def test_no_url_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MEDSEG_PACS_URL"):
        resolve_config(env={"XDG_CONFIG_HOME": str(tmp_path)})


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        resolve_config(config_path=tmp_path / "missing.json", env={})
    bad = tmp_path / "bad.json"
    bad.write_text('{"url": "https://p", "password": "' + SECRET + '",,}')
    with pytest.raises(InputError, match="not valid JSON") as info:
        resolve_config(config_path=bad, env={})
    assert SECRET not in str(info.value)
    typo = _write(tmp_path / "typo.json", {"url": "https://p/dicom-web", "pasword": SECRET})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pasword'\]") as info:
        resolve_config(config_path=typo, env={})
    assert SECRET not in str(info.value)
    wrong_type = _write(tmp_path / "wrong.json", {"url": "https://p/dicom-web", "password": 12345678})
    with pytest.raises(ConfigError, match="'password' must be a string") as info:
        resolve_config(config_path=wrong_type, env={})
    assert "12345678" not in str(info.value)


def test_world_readable_secret_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _write(tmp_path / "pacs.json", {"url": "https://p/dicom-web", "token": TOKEN}, mode=0o644)
    with caplog.at_level(logging.WARNING):
        resolve_config(config_path=cfg, env={})
    assert "chmod 600" in caplog.text and TOKEN not in caplog.text


def test_insecure_and_ca_bundle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_config(url="https://p/dicom-web", env={}).verify is True
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert resolve_config(url="https://p/dicom-web", ca_bundle=bundle, env={}).verify == str(bundle)
    env = {"MEDSEG_PACS_CA_BUNDLE": str(bundle)}
    assert resolve_config(url="https://p/dicom-web", env=env).verify == str(bundle)
    with pytest.raises(InputError, match="CA bundle not found"):
        resolve_config(url="https://p/dicom-web", ca_bundle=tmp_path / "nope.pem", env={})
    insecure = resolve_config(url="https://p/dicom-web", insecure=True, env={})
    assert insecure.verify is False and "TLS NOT verified" in insecure.describe()
    with caplog.at_level(logging.WARNING):
        PacsClient(insecure)
    assert "TLS certificate verification is OFF" in caplog.text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("20110707", "20110707"),
        ("2011-07-07", "20110707"),
        ("20110101-20111231", "20110101-20111231"),
        ("2011-01-01..2011-12-31", "20110101-20111231"),
        ("20110101-", "20110101-"),
        ("-20111231", "-20111231"),
        ("..2011-12-31", "-20111231"),
    ],
)
def test_parse_date_range(text: str, expected: str) -> None:
    assert parse_date_range(text) == expected


@pytest.mark.parametrize("text", ["2011", "20111301", "20111231-20110101", "-", "yesterday", "2011-02-30"])
def test_parse_date_range_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--date"):
        parse_date_range(text)
