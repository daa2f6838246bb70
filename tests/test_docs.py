"""The documentation's commands against the current CLI: every ``medseg ...`` line in a shell
code block of README.md, docs/prostate.md, docs/pacs.md and scripts/slurm/README.md parses
(command names, option names, value counts and types), every ``--option`` the pages name
exists on some medseg command, and every Python block compiles with imports that resolve.
Nothing is run: a renamed or removed option fails here instead of on a user's terminal."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.main import get_command

from medseg.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/prostate.md", "docs/pacs.md", "scripts/slurm/README.md")

# Options of other programs the pages show (pip, make, ruff, sbatch, torchrun).
FOREIGN_OPTIONS = {
    "--check",
    "--extra-index-url",
    "--index-url",
    "--no-deps",
    "--array",
    "--dependency",
    "--export",
    "--gpus-per-node",
    "--mem",
    "--nodes",
    "--nproc",
    "--nproc_per_node",
    "--open-mode",
    "--requeue",
    "--signal",
    "--standalone",
    "--time",
    "--wrap",
}


def _blocks(text: str, languages: tuple[str, ...]) -> list[str]:
    """The fenced code blocks whose info string is one of ``languages`` ("" for none)."""
    found: list[str] = []
    current: list[str] | None = None
    keep = False
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, keep = [], line[3:].strip() in languages
            else:
                if keep:
                    found.append("\n".join(current))
                current = None
            continue
        if current is not None:
            current.append(line)
    return found


def _command_lines(block: str) -> list[str]:
    """Shell lines (continuations joined) that run ``medseg``."""
    lines: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True) if line and not line.startswith("#") else []
        if words and words[0] == "medseg":
            lines.append(line)
    return lines


def _doc_commands() -> list[tuple[str, str]]:
    return [
        (page, line)
        for page in PAGES
        for block in _blocks((ROOT / page).read_text(), ("bash", "sh", ""))
        for line in _command_lines(block)
    ]


@functools.cache
def _leaf_commands() -> dict[str, object]:
    """``"dataset import msd"`` -> its Click command, for every command of the app."""
    root = get_command(app)
    found: dict[str, object] = {}

    def walk(command: object, path: list[str]) -> None:
        if isinstance(command, TyperGroup):
            ctx = command.make_context("medseg", ["--help"], resilient_parsing=True)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name])
        else:
            found[" ".join(path)] = command

    walk(root, [])
    return found


def test_the_pages_show_medseg_commands() -> None:
    pages = {page for page, _ in _doc_commands()}
    assert pages == set(PAGES)  # the extraction finds the commands of every page
    assert len(_doc_commands()) > 50


@pytest.mark.parametrize(("page", "line"), _doc_commands())
def test_documented_command_parses(page: str, line: str) -> None:
    commands = _leaf_commands()
    words = shlex.split(line, comments=True)[1:]
    if ">" in words:  # `medseg ... > file`: the redirect is the shell's, not an argument
        words = words[: words.index(">")]
    path: list[str] = []
    while words and " ".join([*path, words[0]]) not in commands:
        path.append(words.pop(0))
        assert any(name.startswith(" ".join(path)) for name in commands), f"{page}: no command {path}: {line}"
    assert words, f"{page}: no command in {line}"
    path.append(words.pop(0))
    command = commands[" ".join(path)]
    # make_context parses and converts every value as a run would, without calling the command
    command.make_context("medseg " + " ".join(path), words)  # type: ignore[attr-defined]


def test_every_option_the_pages_name_exists() -> None:
    known: set[str] = {"--help", "--version"}
    for command in _leaf_commands().values():
        for param in command.params:  # type: ignore[attr-defined]
            known.update(param.opts, param.secondary_opts)
    missing = {
        (page, option)
        for page in PAGES
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", (ROOT / page).read_text())
        if option not in known and option not in FOREIGN_OPTIONS
    }
    assert not missing, f"options named in the docs that no medseg command has: {sorted(missing)}"


def _inline_commands() -> list[tuple[str, str]]:
    """``medseg ...`` spans in the prose (outside code blocks), e.g. `medseg predict --shard i/n`."""
    found = []
    for page in PAGES:
        prose = re.sub(r"```.*?```", "", (ROOT / page).read_text(), flags=re.S).replace("\n", " ")
        found += [(page, span) for span in re.findall(r"`(medseg [^`]+)`", prose)]
    return found


def test_commands_named_in_the_prose_have_their_options() -> None:
    """A span may leave arguments out (`medseg predict --shard i/n`), but its command and options
    must exist. Spans whose second word is no command are not commands (`medseg segmentation`
    is a series description, `medseg COMMAND --help` a pattern)."""
    commands = _leaf_commands()
    groups = {name.split()[0] for name in commands if " " in name}
    checked = 0
    for page, span in _inline_commands():
        words = shlex.split(span)[1:]
        if not words or (words[0] not in groups and words[0] not in commands):
            continue
        path: list[str] = []
        while words and " ".join(path) not in commands and not words[0].startswith("-"):
            path.append(words.pop(0))
        if " ".join(path) not in commands:
            continue  # a group alone (`medseg pacs`)
        command = commands[" ".join(path)]
        try:
            command.make_context("medseg " + " ".join(path), words)  # type: ignore[attr-defined]
        except typer.BadParameter as exc:
            # unknown options are found before missing arguments, which a span may leave out
            if type(exc).__name__ != "MissingParameter":
                raise AssertionError(f"{page}: `{span}`: {exc}") from None
        except Exception as exc:
            raise AssertionError(f"{page}: `{span}`: {exc}") from None
        checked += 1
    assert checked > 20


def _python_blocks() -> list[tuple[str, str]]:
    return [(page, block) for page in PAGES for block in _blocks((ROOT / page).read_text(), ("python",))]


@pytest.mark.parametrize(("page", "block"), _python_blocks())
def test_python_examples_import_and_call_with_valid_arguments(page: str, block: str) -> None:
    tree = ast.parse(block, filename=page)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports, f"{page}: a Python example without imports"
    names: dict[str, object] = {}
    exec(compile(ast.Module(body=imports, type_ignores=[]), page, "exec"), names)
    # every call of an imported function or class passes arguments its signature takes
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            target = names[node.func.id]
            args = [None] * len(node.args)
            kwargs = {k.arg: None for k in node.keywords if k.arg is not None}
            try:
                inspect.signature(target).bind(*args, **kwargs)  # type: ignore[arg-type]
            except TypeError as exc:
                raise AssertionError(f"{page}: {ast.unparse(node)}: {exc}") from None


def test_python_names_the_pages_give_exist() -> None:
    """`medseg.io.dicom.write_dicom_series`, `medseg.pipeline.SegmentationModel`, ...: each
    dotted name in the pages is a module, or an attribute of one."""
    missing = []
    for page in PAGES:
        for name in sorted(set(re.findall(r"\bmedseg(?:\.[A-Za-z_]\w*)+", (ROOT / page).read_text()))):
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj: object = importlib.import_module(".".join(parts[:i]))
                    break
                except ImportError:
                    continue
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    missing.append(f"{page}: {name}")
                    break
                obj = getattr(obj, attr)
    assert not missing, missing
