"""Shared CLI plumbing: the Typer app, the console, and turning errors into one line."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperCommand

from medseg.errors import MedsegError

app = typer.Typer(
    name="medseg",
    help="Medical image segmentation: read, convert, crop, train, predict, evaluate and export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

# De-identification options of convert (the DICOM series it writes), predict and export (the
# DICOM SEG and RTSTRUCT they write): one definition, the same names and meaning everywhere.
DeidentifyOpt = Annotated[
    bool,
    typer.Option(
        "--deidentify",
        help="DICOM output (a series, SEG, RTSTRUCT): remove patient names, IDs, dates, institutions "
        "and replace UIDs (basic profile); other formats are unchanged.",
    ),
]
PseudonymOpt = Annotated[
    str,
    typer.Option(
        "--pseudonym",
        help="With --deidentify: the patient name and ID to write (one per patient, e.g. SUBJ001), or "
        "'auto': a pseudonym per patient, ANON- and 10 hex digits derived from its PatientID with the "
        "--uid-secret (the same in every run given the same key; without one, new per run).",
    ),
]
PseudonymMapOpt = Annotated[
    Path | None,
    typer.Option(
        "--pseudonym-map",
        help="With --deidentify: a CSV with the header PatientID,pseudonym naming each patient's "
        "pseudonym (in place of --pseudonym); a patient it lacks gets no DICOM output.",
    ),
]
UidSecretOpt = Annotated[
    str | None,
    typer.Option(
        "--uid-secret",
        help="With --deidentify: a private key from which new UIDs are derived, so that outputs of "
        "separate runs keep one study, and a SEG or RTSTRUCT from predict or export references the "
        "series convert wrote with the same key (default: a new key per run, whose UIDs match no "
        "other run's). On a shared machine prefer --uid-secret-file: a command line shows in the "
        "process list and the shell history.",
    ),
]
UidSecretFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--uid-secret-file",
        help="With --deidentify: read the --uid-secret KEY from this file (its first line), so that "
        "the key shows in no process list or shell history.",
    ),
]


def pseudonym_from(pseudonym: str, pseudonym_map: Path | None) -> str | dict[str, str]:
    """The --pseudonym given, or the map read from --pseudonym-map (not both)."""
    if pseudonym_map is None:
        return pseudonym
    from medseg.errors import ConfigError
    from medseg.io.dicom import read_pseudonym_map

    if pseudonym != "ANONYMOUS":
        raise ConfigError("give --pseudonym or --pseudonym-map, not both")
    return read_pseudonym_map(pseudonym_map)


def uid_secret_from(uid_secret: str | None, uid_secret_file: Path | None) -> str | None:
    """The UID secret given as --uid-secret or read from --uid-secret-file (its first line)."""
    if uid_secret_file is None:
        return uid_secret
    from medseg.errors import ConfigError, InputError

    if uid_secret is not None:
        raise ConfigError("give --uid-secret or --uid-secret-file, not both")
    try:
        lines = uid_secret_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            uid_secret_file,
            "cannot read the UID secret",
            expected="a readable text file",
            found=type(exc).__name__,
        ) from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise InputError(
            uid_secret_file,
            "holds no UID secret",
            expected="the key on its first line",
            found="an empty first line",
        )
    return key


def deidentify_notes(
    deidentify: bool, uid_secret: str | None, formats: Sequence[str], dicom: Sequence[str]
) -> None:
    """What --deidentify does not do for these output ``formats`` (``dicom``: those it changes)."""
    if not deidentify:
        return
    others = [f for f in formats if f not in dicom]
    if others:
        console.print(
            f"note: --deidentify changes DICOM output only ({', '.join(dicom)}); medseg writes no patient "
            f"name, ID or birth date into {', '.join(others)} anyway, but output names come from the input's "
            "folder and file names, which may themselves be patient IDs",
            markup=False,
            soft_wrap=True,
        )
    if uid_secret is None and len(others) < len(formats):
        console.print(
            "note: no --uid-secret: the new UIDs (and --pseudonym auto pseudonyms) come from a secret made "
            "for this run alone, so they match no separate run (a de-identified SEG or RTSTRUCT then overlays no series from `medseg convert "
            "--deidentify`); give every run the same --uid-secret KEY to keep them together",
            markup=False,
            soft_wrap=True,
        )


EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


def _debug() -> bool:
    return os.environ.get("MEDSEG_DEBUG", "") not in ("", "0")


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose or _debug() else logging.INFO
    # medseg's own INFO lines; other libraries' only from WARNING up (torch's atexit
    # "FakeTensor cache stats" INFO lines showed after a Ctrl-C during its import).
    logging.basicConfig(
        level=logging.DEBUG if level == logging.DEBUG else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("medseg").setLevel(level)
    # Third-party chatter users cannot act on (pydicom deprecations triggered by rt-utils,
    # highdicom's per-frame INFO lines, matplotlib's "created a temporary cache directory" for
    # a service account without a writable HOME: MONAI imports matplotlib even for NIfTI
    # output); MEDSEG_DEBUG=1 shows it again.
    if level > logging.DEBUG:
        for name in ("pydicom", "highdicom", "matplotlib"):
            logging.getLogger(name).setLevel(logging.ERROR)


def number_values(option: str, names: str, example: str, *, whole: bool = False) -> Callable[[str], Any]:
    """``parser=`` of an option taking several numbers (``--patch Z Y X``, ``--spacing``); called
    once per value. Given too few values, the parser takes the next option or argument as the
    missing one: the error then says how many values the option takes (the raw message
    names neither the count nor the value)."""
    count = len(names.split())
    expected = f"expected {count} {'whole numbers' if whole else 'numbers'} {names} (e.g. {option} {example})"

    def parse(text: str) -> int | float:
        try:
            return int(text) if whole else float(text)
        except ValueError:
            pass
        raise typer.BadParameter(_not_a_number(expected, text, f"fewer than {count}", whole=whole))

    return parse


def _misplaced(token: str) -> bool:
    """Whether ``token``, refused as a number, is rather the next option or an argument (an
    option given too few values takes it as one), not a mistyped number like ``12x8``."""
    if token.startswith("-") and not _number_like(token):
        return True  # an option
    if any(sep in token for sep in "/\\") or Path(token).exists():
        return True  # a file or folder argument
    return not any(c.isdigit() for c in token)  # a word, no number


def _not_a_number(expected: str, token: str, fewer: str | None, *, whole: bool = False) -> str:
    """The error for ``token`` refused by an option taking numbers: asks whether (``fewer``)
    values are missing only when the token looks like the next option or argument; else it
    names the token as a mistyped number. ``fewer=None``: the token cannot be another's."""
    if fewer is not None and _misplaced(token):
        return f"{expected}, found {token!r} among them; were {fewer} values given?"
    text = f"{expected}, found {token!r}, which is not a {'whole ' if whole else ''}number"
    return text + (" (separate the numbers by spaces)" if "," in token else "")


class NumberList(tuple[float, ...]):
    """The values of an option taking a varying count of numbers (see :func:`number_list`)."""


def _number_like(token: str) -> bool:
    """``0.5``, ``-3``, ``.5``, ``12x8``: a number or a mistyped one, not an option or a path."""
    body = token[1:] if token[:1] in "+-" else token
    return body[:1].isdigit() or (body[:1] == "." and body[1:2].isdigit())


def _is_number(token: str) -> bool:
    """``12``, ``-12.5``, ``.5``, ``1e-3``: a number as written on a command line (not
    ``1_000``, which Python's float() reads but is rather a name such as ``2_out.nii.gz``'s)."""
    if "_" in token or not _number_like(token):
        return False
    try:
        float(token)
    except ValueError:
        return False
    return True


def _mistyped_number(token: str) -> bool:
    """A number-like token that is no number and cannot be a file name either (``7x``,
    ``12x8``, ``0.5,0.5``): joined with the numbers so that the option's parser names it.
    One with a path separator, an underscore or a suffix (``3d/out.nii.gz``, ``2_out.nii.gz``,
    ``2024_scans``), or that exists, is the next argument."""
    if not _number_like(token) or any(c in token for c in "/\\_"):
        return False
    if re.search(r"\.[A-Za-z]", token):
        return False
    return not Path(token).exists()


def join_number_tokens(args: list[str], *options: str) -> list[str]:
    """``OPTION a b [c]`` -> ``OPTION a,b[,c]``: the numbers after one of ``options`` become its
    one value, which the option's parser splits (and refuses with the count when there are too
    many). They end at the first token that is no number: an option, or an argument even when
    it starts with a digit (``2_out.nii.gz``, ``3d/scan.nii.gz``, ``2024_scans``); only a
    token that can be neither a number nor a file name (``7x``) is joined too, for the parser
    to name it. A bare number is always a value, even where a file of that name exists (an
    argument named ``2024`` goes before the option). A single token is left as it is (the comma
    form ``a,b`` of older releases, or a value for the parser to refuse)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        out.append(token)
        i += 1
        if token == "--":  # the rest are arguments
            out.extend(args[i:])
            break
        if token in options:
            values: list[str] = []
            while i < len(args) and (_is_number(args[i]) or _mistyped_number(args[i])):
                values.append(args[i])
                i += 1
            if values:
                out.append(",".join(values))
    return out


def number_list_command(*options: str) -> type[TyperCommand]:
    """``cls=`` of a command whose ``options`` take a varying count of space-separated numbers
    (``--spacing ROW COL`` or ``--spacing Z ROW COL``; ``baseline --seed Z Y X``, repeatable): a
    Click option takes a fixed count of values (a repeatable one cannot vary it), so the command
    joins them into one before parsing (:func:`join_number_tokens`)."""

    class NumberListCommand(TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            result: list[str] = super().parse_args(ctx, join_number_tokens(args, *options))
            return result

    return NumberListCommand


def number_list(
    option: str, names: str, example: str, counts: tuple[int, ...]
) -> Callable[[str], NumberList]:
    """``parser=`` of an option of a :func:`number_list_command`: ``counts`` numbers given
    space-separated (as every other option taking numbers) or, for compatibility, in one
    comma-separated value (``0.5,0.5``)."""
    expected = f"expected {' or '.join(map(str, counts))} numbers {names} (e.g. {option} {example})"

    def parse(text: str) -> NumberList:
        pieces = [p.strip() for p in text.split(",")]
        values: list[float] = []
        for piece in pieces:
            try:
                values.append(float(piece))
            except ValueError:
                # one piece: maybe the next option, taken as the value; a comma list's piece is ours
                fewer = "fewer" if len(pieces) == 1 else None
                raise typer.BadParameter(_not_a_number(expected, piece, fewer)) from None
        if len(values) not in counts:
            raise typer.BadParameter(f"{expected}, found {len(values)}: {' '.join(pieces)}")
        return NumberList(values)

    return parse


class _QuietFilter(logging.Filter):
    """Drops medseg's records below ``level`` (those of the ``keep`` loggers from WARNING up pass)."""

    def __init__(self, level: int, keep: tuple[str, ...]) -> None:
        super().__init__()
        self.level = level
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if record.levelno >= self.level or not (name == "medseg" or name.startswith("medseg.")):
            return True
        kept = any(name == k or name.startswith(k + ".") for k in self.keep)
        return kept and record.levelno >= logging.WARNING


@contextlib.contextmanager
def _medseg_log_level(enabled: bool, level: int, keep: tuple[str, ...] = ()) -> Iterator[None]:
    """Hide medseg's records below ``level`` from the console (the handlers of the root and
    ``medseg`` loggers), not from the loggers: what a run records of its own logging (the
    per-case warnings of predictions.json, :func:`medseg.inference.predictor.case_warnings`)
    still sees them."""
    if not enabled:
        yield
        return
    quiet = _QuietFilter(level, keep)
    handlers = [*logging.getLogger().handlers, *logging.getLogger("medseg").handlers]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


# Warnings that predict's --quiet (errors only) still shows: a model given a series of another
# modality than it was trained on (a CT model and an MR series) segments it without any error
# into labels that mean nothing, and this warning is the only sign of it; a quiet batch run is
# where nobody would notice otherwise.
QUIET_KEEPS = ("medseg.inference.predictor.modality",)


def errors_only(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Within the block, medseg logs only errors (predict's ``--quiet``), and the warnings of
    :data:`QUIET_KEEPS`; restored after."""
    return _medseg_log_level(enabled, logging.ERROR, QUIET_KEEPS)


def warnings_only(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Within the block, medseg logs only warnings and errors (train's and crossval's
    ``--quiet``: a warning such as a resume with changed settings still shows); restored after."""
    return _medseg_log_level(enabled, logging.WARNING)


def cli_command(func: F) -> F:
    """Wrap a command so user errors print one line (exit 2) and bugs one line (exit 3).

    Set MEDSEG_DEBUG=1 to see the traceback of an unexpected error.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MedsegError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, markup=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _debug():
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                "(set MEDSEG_DEBUG=1 for the traceback and please report it)",
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:
    """Console-script entry point."""
    setup_logging()
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


# The -c option of plan, preprocess, train, crossval and tune-postprocessing.
Configuration = Annotated[str, typer.Option("--configuration", "-c", help="3d, 2d or 2.5d")]

# --quiet of plan, preprocess, train and crossval (predict's -q also hides warnings: it runs
# cohorts unattended).
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="print only warnings, errors and the final result lines (no progress bars or log lines)",
    ),
]


def _print_version(value: bool) -> None:
    """``medseg --version``: medseg's version and the libraries a bug report needs (read from
    the installed packages' metadata, without importing them: it answers at once)."""
    if not value:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import medseg

    found = []
    for package in ("torch", "monai", "SimpleITK", "nibabel", "pydicom", "highdicom", "onnxruntime"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    console.print(f"medseg {medseg.__version__}")
    console.print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}; " + ", ".join(found)
    )
    raise typer.Exit()


@app.callback()
def _top_level(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Show medseg's version and those of the libraries it runs on, then exit.",
        ),
    ] = False,
) -> None:
    """Medical image segmentation: read, convert, crop, train, predict, evaluate and export."""
