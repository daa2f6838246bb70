"""Exceptions raised by medseg.

Every error that a user can cause (a bad file, a wrong option, grids that do not
match) is a :class:`MedsegError`. The CLI prints such errors as one line and exits
with a non-zero code; anything else is a bug and is reported as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class MedsegError(Exception):
    """Base class for errors caused by input, configuration or environment."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its message (args) and attributes, without calling __init__ again: an
        # error with its own __init__ (InputError's path, problem, expected, found) could not be
        # rebuilt from the message alone, and a multiprocessing worker that raised it failed
        # with a TypeError in the parent instead.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


def _restore(cls: type[MedsegError], args: tuple[Any, ...], state: dict[str, Any]) -> MedsegError:
    """An unpickled MedsegError: ``args`` (the message) and attributes as they were."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class InputError(MedsegError):
    """A file or folder is missing, unreadable, or not what was expected.

    The message always names the path, what was expected and what was found.
    """

    def __init__(self, path: str | Path | None, problem: str, *, expected: str = "", found: str = ""):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.expected = expected
        self.found = found
        parts = [f"{self.path}: {problem}" if self.path is not None else problem]
        if expected:
            parts.append(f"expected {expected}")
        if found:
            parts.append(f"found {found}")
        super().__init__("; ".join(parts))


class GeometryError(MedsegError):
    """Two grids that must agree do not, or a geometric operation is impossible."""


class ConfigError(MedsegError):
    """A configuration, plan or option is invalid (unknown key, wrong type, bad value)."""


class OutputExistsError(MedsegError):
    """An output path exists and overwriting was not requested."""

    def __init__(self, path: str | Path, *, alternative: str = ""):
        """``alternative``: what else the user may want than replacing it (e.g. resuming)."""
        self.path = Path(path)
        other = f"{alternative}, or " if alternative else ""
        super().__init__(
            f"{self.path}: output exists; {other}use --overwrite (in Python: overwrite=True) to replace it"
        )
