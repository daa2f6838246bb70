from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

import medseg
from medseg.cli import app

runner = CliRunner()


def test_version_names_medseg_and_its_libraries() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    first, rest = res.output.split("\n", 1)
    assert first == f"medseg {medseg.__version__}"
    flat = " ".join(rest.split())
    assert f"torch {version('torch')}" in flat and f"monai {version('monai')}" in flat


def test_no_arguments_show_the_commands() -> None:
    res = runner.invoke(app, [])
    assert "predict" in res.output and "--version" in res.output


def _help(*command: str) -> str:
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_help_says_what_the_readme_says() -> None:
    """Help texts that had drifted from README.md (each statement checked against the code)."""
    predict = _help("predict")
    assert "the exit code is then 1" in predict  # README: exits with 1 when any case failed
    # ... and 3 when one failed on an internal error (README; the help said 1 for every failure)
    assert "or 3 when a case failed on an internal error" in predict
    assert "--roi-views SAGITTAL CORONAL" in predict  # was <Path,Path>...
    assert "predictions_shard<i>of<n>.json" in predict
    assert "model folder" in _help("info")  # `medseg info MODEL` summarises a model
    assert "summarise a model folder" in " ".join(
        runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output.split()
    )
    for command in ("query", "pull", "push", "segment"):  # every key docs/pacs.md lists
        assert "url, user, password, token, ca_bundle, insecure, timeout" in _help("pacs", command)


def test_python_dash_m_medseg_runs_the_cli() -> None:
    """`python -m medseg --version` (a deployment whose venv's bin/ is not on PATH) said
    "No module named medseg.__main__"."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "medseg", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"medseg {medseg.__version__}")


def test_cli_logging_shows_medseg_info_but_not_other_libraries_info() -> None:
    """Ctrl-C while torch was still importing showed torch's atexit INFO lines ("FakeTensor
    cache stats: ...") under medseg's "interrupted": the root logger passed every library's
    INFO. medseg's own INFO lines (what each step did) still show; warnings of any library too."""
    import os
    import subprocess
    import sys

    code = (
        "import logging; from medseg.cli.common import setup_logging; setup_logging(); "
        "logging.getLogger('torch._subclasses.fake_tensor').info('FakeTensor cache stats:'); "
        "logging.getLogger('medseg.training.trainer').info('epoch 1: loss 0.5'); "
        "logging.getLogger('monai').warning('a library warning')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "120", "MEDSEG_DEBUG": ""},
    )
    assert res.returncode == 0, res.stderr
    assert "epoch 1: loss 0.5" in res.stderr and "a library warning" in res.stderr
    assert "FakeTensor" not in res.stderr
