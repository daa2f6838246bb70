"""Atomic outputs: write to a temporary sibling, then rename into place.

A crash, a full disk or an exception while writing never leaves a half-written file
or folder under the final name, and never replaces an existing output unless asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import InputError, OutputExistsError


def _suffixes(path: Path) -> str:
    # Keep compound suffixes (".nii.gz") so writers that dispatch on them still work.
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


def _default_mode(folder: bool = False) -> int:
    """Permissions a normally created file (0666) or folder (0777) gets under the umask.

    mkstemp/mkdtemp create owner-only (0600/0700) entries; outputs meant for colleagues
    or a PACS get the usual permissions instead.
    """
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Return ``path`` as a Path after checking it may be written; raise if it exists."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(target)
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InputError(parent, "cannot write output here", expected="a folder", found="a file")
    return target


def _prepare(target: Path) -> None:
    """Create the output's folder; an OSError (a file in the way, no permission) is an InputError."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            target, "cannot create the folder for this output", found=exc.strerror or type(exc).__name__
        ) from None


def _temp_error(target: Path, exc: OSError) -> InputError:
    return InputError(target.parent, "cannot write output here", found=exc.strerror or type(exc).__name__)


@contextlib.contextmanager
def atomic_file(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success rename it to ``path``.

    >>> with atomic_file("out/label.nii.gz", overwrite=True) as tmp:
    ...     write_something(tmp)
    """
    target = check_writable(path, overwrite)
    if target.is_dir():
        raise InputError(target, "is a folder", expected="a file path (a folder is never replaced by a file)")
    _prepare(target)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{_suffixes(target)}", dir=target.parent
        )
    except OSError as exc:
        raise _temp_error(target, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    An existing folder at ``path`` (only with ``overwrite``) is removed just before the
    rename, so readers never see a mixture of old and new contents. An existing file there is
    refused, with or without ``overwrite``: a folder never replaces a file (as
    :func:`atomic_file` never replaces a folder), which is most likely an input given as -o.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(
            target,
            "is a file, not an output folder",
            expected="a folder (a file is never replaced by a folder, even with --overwrite)",
            found="a file: give another output path, or move the file away",
        )
    target = check_writable(target, overwrite)
    _prepare(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _temp_error(target, exc) from None
    try:
        yield tmp
        os.chmod(tmp, _default_mode(folder=True))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)


def prepare_output_folder(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents) or say why it cannot be one."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file, not an output folder", expected="a folder (new or existing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, "cannot create the output folder", found=exc.strerror or str(exc)) from None
    return out


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def run_lock(lock: str | Path, what: str) -> Iterator[Path]:
    """Hold ``lock`` (a file) while one run writes a folder, so that a second run into it at the
    same time is refused instead of interleaving its outputs and summary with the first's.

    The file names the host and process; a lock left by a process of this host that no longer
    runs (killed) is taken over. One of another host cannot be checked: the error says to
    remove it if no run is using it. No library offers this for an output folder (filelock
    gives no owner to report), hence written here.
    """
    import json
    import socket
    import time

    path = Path(lock)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text(encoding="utf-8"))
                host, pid = str(owner["host"]), int(owner["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                owner, host, pid = {}, "", -1
            if attempt == 0 and host == me["host"] and pid > 0 and not _process_alive(pid):
                path.unlink(missing_ok=True)  # left by a killed run of this machine
                continue
            raise InputError(
                path.parent,
                f"is being written by another {what} (process {pid} on {host or '?'}, since "
                f"{owner.get('since', '?')})",
                expected=f"one run per output folder at a time; another folder, or remove {path} "
                "if no run is using it",
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
