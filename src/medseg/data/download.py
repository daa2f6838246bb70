"""Robust HTTP downloads: resume, retries with backoff, size and checksum checks.

The only module in medseg.data that talks to the network, and only when one of its
functions is called (dataset adapters call it from explicit download commands).

:func:`download_file` writes into ``DEST.part`` and renames to ``DEST`` only after every
check passed, so a file under the final name is always complete and verified:

* an interrupted transfer leaves ``DEST.part``; the next attempt (in the same call, after
  a backoff, or in a later call) asks for the rest with ``Range: bytes=N-``. A server that
  ignores the range (HTTP 200) is handled by starting over; a 206 at the wrong offset too.
* connection errors, timeouts, HTTP 408/429/5xx are retried with exponential backoff;
  404 and 401/403 are not retried and raise at once, naming the URL.
* the final size is checked against Content-Length / Content-Range and ``expected_size``,
  then ``sha256`` / ``md5`` and an optional ``validate(path)`` hook (e.g. :func:`check_zip`).
  A failed check deletes the ``.part`` file and raises :class:`DownloadError`.

requests is used instead of urllib for its connection handling and streaming; the resume
and verification logic is written here because no small maintained library does all of
it (MONAI's ``download_url`` neither resumes nor retries).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
import urllib3

from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

__all__ = ["DownloadError", "check_zip", "download_file", "fetch_json", "file_digest"]

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$")
USER_AGENT = "medseg-downloader (https://github.com/medseg)"


class DownloadError(MedsegError):
    """A download failed: not found, access denied, corrupt content or retries exhausted."""

    def __init__(self, url: str, problem: str):
        self.url = url
        self.problem = problem
        super().__init__(f"{url}: {problem}")


class _Retryable(Exception):
    """An attempt failed in a way worth retrying (network, 5xx, short read)."""


# requests' errors worth another attempt; any other RequestException (invalid URL, too
# many redirects ...) fails at once as a DownloadError.
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def file_digest(path: str | Path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_zip(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a readable ZIP whose members' CRCs are right."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"not a valid ZIP archive ({exc})") from None
    if bad is not None:
        raise ValueError(f"ZIP member '{bad}' fails its CRC check")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from ``bytes start-end/total`` or ``bytes */total``; None when absent."""
    if not value:
        return None, None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


@contextlib.contextmanager
def _byte_progress(enabled: bool, description: str) -> Iterator[Callable[[int, int | None], None]]:
    """Yield ``update(done_bytes, total_bytes)``; a Rich transfer bar on stderr when enabled."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _attempt(
    session: requests.Session,
    url: str,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str],
    part: Path,
    timeout: float,
    chunk_size: int,
    update: Callable[[int, int | None], None],
) -> int | None:
    """One GET, resuming ``part``; returns the resource's total size when the server told it."""
    offset = part.stat().st_size if part.exists() else 0
    req_headers = dict(headers)
    if offset:
        req_headers["Range"] = f"bytes={offset}-"
    with session.get(url, params=params, headers=req_headers, stream=True, timeout=timeout) as resp:
        status = resp.status_code
        if status == 416 and offset:
            _, total = _parse_content_range(resp.headers.get("Content-Range"))
            if total is not None and total == offset:
                return total  # the .part file already holds everything
            part.unlink(missing_ok=True)
            raise _Retryable(f"server refused to resume at byte {offset} (HTTP 416); starting over")
        if status == 404:
            raise DownloadError(resp.url or url, "not found (HTTP 404); check the identifier or URL")
        if status in (401, 403):
            raise DownloadError(
                resp.url or url, f"access denied (HTTP {status}); the resource needs permission or a login"
            )
        if status in RETRY_STATUS:
            raise _Retryable(f"HTTP {status} {resp.reason}")
        if status not in (200, 206):
            raise DownloadError(resp.url or url, f"unexpected HTTP {status} {resp.reason}")

        if status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start} instead of {offset}; starting over")
            mode = "ab"
        else:
            if offset:
                logger.info("server ignored the resume request; downloading %s from the start", url)
            offset = 0
            mode = "wb"
            length = resp.headers.get("Content-Length")
            encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
            total = int(length) if length and length.isdigit() and not encoded else None

        done = offset
        update(done, total)
        with part.open(mode) as fh:
            while True:
                # read1 returns what has arrived (up to chunk_size), so the bytes received
                # before a dropped connection reach the .part file and the resume is exact.
                try:
                    chunk = resp.raw.read1(chunk_size, decode_content=True)
                except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
                    raise _Retryable(f"connection lost after {done} bytes ({type(exc).__name__})") from None
                if not chunk:
                    break
                fh.write(chunk)
                done += len(chunk)
                update(done, total)
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retryable(f"connection closed early after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink(missing_ok=True)
        raise DownloadError(
            resp.url or url,
            f"received {size} bytes but the server announced {total}; the partial file was deleted",
        )
    return total


def _verify(
    path: Path,
    *,
    expected_size: int | None,
    sha256: str | None,
    md5: str | None,
    validate: Callable[[Path], None] | None,
) -> str | None:
    """The first problem found with a downloaded file, or None when it passes every check."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"size mismatch: expected {expected_size} bytes, found {size}"
    for algorithm, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = file_digest(path, algorithm)
            if got.lower() != want.lower():
                return f"{algorithm} mismatch: expected {want.lower()}, found {got}"
    if validate is not None:
        try:
            validate(path)
        except Exception as exc:  # any failure of a user-supplied check means corrupt content
            return f"content check failed: {exc}"
    return None


def download_file(
    url: str,
    dest: str | Path,
    *,
    params: Mapping[str, str] | None = None,
    expected_size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    validate: Callable[[Path], None] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 16,
    headers: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    overwrite: bool = False,
    progress: bool = False,
    description: str | None = None,
) -> Path:
    """Download ``url`` (with query ``params``) to ``dest`` with resume, retries and checks.

    An existing ``dest`` is reused when it passes the given checks (``overwrite=False``);
    one that fails them raises. ``retries`` is the number of attempts after the first;
    the wait before retry ``k`` (0-based) is ``min(max_backoff, backoff * 2**k)`` seconds.
    When all attempts fail the ``.part`` file is kept, so the next call resumes from it.
    """
    target = Path(dest)
    shown = _display_url(url, params)  # errors name the full URL, query included
    if target.exists() and not overwrite:
        problem = _verify(target, expected_size=expected_size, sha256=sha256, md5=md5, validate=validate)
        if problem is None:
            logger.debug("%s already downloaded", target)
            return target
        raise DownloadError(
            shown,
            f"{target} exists but fails verification ({problem}); delete it or use --overwrite (in Python: overwrite=True)",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    own_session = session is None
    sess = session or requests.Session()
    req_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **dict(headers or {})}
    last_error = ""
    try:
        with _byte_progress(progress, description or target.name) as update:
            for attempt in range(retries + 1):
                try:
                    _attempt(sess, url, params, req_headers, part, timeout, chunk_size, update)
                    break
                except _Retryable as exc:
                    last_error = str(exc)
                except _TRANSIENT as exc:
                    last_error = f"{type(exc).__name__}: {_short(exc)}"
                except requests.RequestException as exc:  # a bad URL, too many redirects ...
                    raise DownloadError(
                        shown, f"request failed: {type(exc).__name__}: {_short(exc)}"
                    ) from None
                if attempt < retries:
                    _pause(f"download of {target.name}", last_error, attempt, retries, backoff, max_backoff)
            else:
                kept = (
                    f"; the partial file {part} is kept and the next call resumes from it"
                    if part.exists()
                    else ""
                )
                raise DownloadError(
                    shown, f"gave up after {retries + 1} attempts; last error: {last_error}{kept}"
                )
    finally:
        if own_session:
            sess.close()

    problem = _verify(part, expected_size=expected_size, sha256=sha256, md5=md5, validate=validate)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(shown, f"downloaded content is corrupt ({problem}); the partial file was deleted")
    if target.exists():  # only with overwrite=True
        target.unlink()
    os.replace(part, target)
    logger.info("downloaded %s (%d bytes)", target, target.stat().st_size)
    return target


def fetch_json(
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    timeout: float = 60.0,
    session: requests.Session | None = None,
) -> Any:
    """GET a JSON document with the same retry and error rules as :func:`download_file`.

    An empty body (how NBIA answers a query without results) is returned as ``[]``.
    """
    own_session = session is None
    sess = session or requests.Session()
    last_error = ""
    try:
        for attempt in range(retries + 1):
            try:
                resp = sess.get(url, params=params, timeout=timeout, headers={"User-Agent": USER_AGENT})
            except _TRANSIENT as exc:
                last_error = f"{type(exc).__name__}: {_short(exc)}"
            except requests.RequestException as exc:
                raise DownloadError(
                    _display_url(url, params), f"request failed: {type(exc).__name__}: {_short(exc)}"
                ) from None
            else:
                if resp.status_code == 404:
                    raise DownloadError(resp.url, "not found (HTTP 404)")
                if resp.status_code in (401, 403):
                    raise DownloadError(resp.url, f"access denied (HTTP {resp.status_code})")
                if resp.status_code in RETRY_STATUS:
                    last_error = f"HTTP {resp.status_code} {resp.reason}"
                elif resp.status_code != 200:
                    raise DownloadError(resp.url, f"unexpected HTTP {resp.status_code} {resp.reason}")
                else:
                    if not resp.content.strip():
                        return []
                    try:
                        return resp.json()
                    except ValueError:
                        raise DownloadError(
                            resp.url, f"response is not JSON (starts with {resp.text[:60]!r})"
                        ) from None
            if attempt < retries:
                _pause(f"query {url}", last_error, attempt, retries, backoff, max_backoff)
        raise DownloadError(
            _display_url(url, params), f"gave up after {retries + 1} attempts; last error: {last_error}"
        )
    finally:
        if own_session:
            sess.close()


def _pause(what: str, error: str, attempt: int, retries: int, backoff: float, max_backoff: float) -> None:
    """Log the failed attempt and wait ``min(max_backoff, backoff * 2**attempt)`` seconds."""
    wait = min(max_backoff, backoff * 2**attempt)
    logger.warning("%s failed (%s); retry %d of %d in %.1f s", what, error, attempt + 1, retries, wait)
    if wait > 0:
        time.sleep(wait)


def _display_url(url: str, params: Mapping[str, str] | None) -> str:
    if not params:
        return url
    prepared = requests.Request("GET", url, params=dict(params)).prepare().url
    return prepared or url


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
