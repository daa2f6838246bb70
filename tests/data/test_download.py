"""The HTTP downloader against a local server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medseg.data.download import DownloadError, check_zip, download_file, fetch_json


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(4):
            info = zipfile.ZipInfo(f"1-{i + 1:02d}.dcm", date_time=(2011, 7, 7, 0, 0, 0))
            zf.writestr(info, bytes(range(256)) * (40 + i))
    return buf.getvalue()


PAYLOAD = _zip_bytes()
CUT = 5000  # bytes sent before a simulated dropped connection


@dataclass
class ServerState:
    """What the test server saw and how it should misbehave."""

    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    drops_left: int = 0


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def _send_payload(self, data: bytes, *, honour_range: bool, drop: bool = False) -> None:
        start = 0
        rng = self.headers.get("Range")
        if honour_range and rng and rng.startswith("bytes="):
            start = int(rng[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if honour_range else "none")
        self.end_headers()
        if drop:
            self.wfile.write(body[:CUT])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.state
        path = self.path.split("?")[0]
        state.requests.append((self.path, self.headers.get("Range")))
        if path == "/file.zip":
            self._send_payload(PAYLOAD, honour_range=True)
        elif path == "/drop-once.zip":
            drop = state.drops_left > 0
            state.drops_left -= 1
            self._send_payload(PAYLOAD, honour_range=True, drop=drop)
        elif path == "/drop-always.zip":
            self._send_payload(PAYLOAD, honour_range=True, drop=True)
        elif path == "/no-range.zip":
            drop = state.drops_left > 0
            state.drops_left -= 1
            self._send_payload(PAYLOAD, honour_range=False, drop=drop)
        elif path == "/broken.zip":
            self._send_payload(b"PK\x03\x04 this is not really a zip archive" * 10, honour_range=True)
        elif path == "/server-error.zip":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/denied.zip":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/series.json":
            body = b'[{"SeriesInstanceUID": "1.2.3", "SeriesDescription": "t2_tse_tra"}]'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/empty.json":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_full_download_with_checksums(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "out" / "file.zip"
    got = download_file(
        f"{base}/file.zip",
        dest,
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        md5=hashlib.md5(PAYLOAD).hexdigest(),
        expected_size=len(PAYLOAD),
        validate=check_zip,
        backoff=0,
    )
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "file.zip.part").exists()
    assert state.requests == [("/file.zip", None)]
    # A second call finds the verified file and does not touch the network.
    download_file(f"{base}/file.zip", dest, expected_size=len(PAYLOAD), backoff=0)
    assert len(state.requests) == 1


def test_interrupted_download_resumes_with_range(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.drops_left = 1
    dest = tmp_path / "file.zip"
    download_file(f"{base}/drop-once.zip", dest, backoff=0, validate=check_zip)
    assert dest.read_bytes() == PAYLOAD  # byte-identical after resuming
    assert [r for _, r in state.requests] == [None, f"bytes={CUT}-"]


def test_resume_across_calls_after_retries_exhausted(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "file.zip"
    state.drops_left = 2
    with pytest.raises(
        DownloadError, match=r"gave up after 2 attempts.*partial file .*file\.zip\.part is kept"
    ):
        download_file(f"{base}/drop-once.zip", dest, retries=1, backoff=0)
    part = tmp_path / "file.zip.part"
    assert part.stat().st_size == 2 * CUT and not dest.exists()
    # A later call resumes from the kept .part file.
    download_file(f"{base}/drop-once.zip", dest, retries=1, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in state.requests] == [None, f"bytes={CUT}-", f"bytes={2 * CUT}-"]


def test_server_ignoring_range_restarts_from_zero(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.drops_left = 1
    dest = tmp_path / "file.zip"
    download_file(f"{base}/no-range.zip", dest, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in state.requests] == [None, f"bytes={CUT}-"]  # asked to resume, got 200


def test_checksum_mismatch_leaves_no_file(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "file.zip"
    with pytest.raises(DownloadError, match=r"sha256 mismatch: expected 0+, found"):
        download_file(f"{base}/file.zip", dest, sha256="0" * 64, backoff=0)
    assert not dest.exists() and not (tmp_path / "file.zip.part").exists()


def test_size_mismatch_leaves_no_file(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "file.zip"
    with pytest.raises(DownloadError, match=f"size mismatch: expected 12 bytes, found {len(PAYLOAD)}"):
        download_file(f"{base}/file.zip", dest, expected_size=12, backoff=0)
    assert list(tmp_path.iterdir()) == []


def test_broken_zip_is_rejected(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "broken.zip"
    with pytest.raises(DownloadError, match=r"broken\.zip: downloaded content is corrupt .*not a valid ZIP"):
        download_file(f"{base}/broken.zip", dest, validate=check_zip, backoff=0)
    assert list(tmp_path.iterdir()) == []


def test_404_names_the_url_and_is_not_retried(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    with pytest.raises(DownloadError, match=r"/getImage\?SeriesInstanceUID=9\.9\.9: not found \(HTTP 404\)"):
        download_file(
            f"{base}/getImage", tmp_path / "x.zip", params={"SeriesInstanceUID": "9.9.9"}, backoff=0
        )
    assert len(state.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_401_is_access_denied(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    with pytest.raises(DownloadError, match=r"access denied \(HTTP 401\)"):
        download_file(f"{base}/denied.zip", tmp_path / "x.zip", backoff=0)
    assert len(state.requests) == 1


def test_server_errors_exhaust_retries(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    with pytest.raises(DownloadError, match=r"gave up after 3 attempts; last error: HTTP 503"):
        download_file(f"{base}/server-error.zip", tmp_path / "x.zip", retries=2, backoff=0)
    assert len(state.requests) == 3
    assert list(tmp_path.iterdir()) == []


def test_connection_drops_exhaust_retries(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    with pytest.raises(DownloadError, match="gave up after 3 attempts; last error: connection"):
        download_file(f"{base}/drop-always.zip", tmp_path / "x.zip", retries=2, backoff=0)
    assert not (tmp_path / "x.zip").exists()
    # each attempt resumed where the previous one stopped
    assert [r for _, r in state.requests] == [None, f"bytes={CUT}-", f"bytes={2 * CUT}-"]


def test_unreachable_host_exhausts_retries(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a free port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="gave up after 2 attempts; last error: ConnectionError"):
        download_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", retries=1, backoff=0, timeout=5)


def test_existing_corrupt_file_is_reported(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    dest = tmp_path / "file.zip"
    dest.write_bytes(b"junk")
    with pytest.raises(DownloadError, match="exists but fails verification"):
        download_file(f"{base}/file.zip", dest, validate=check_zip, backoff=0)
    assert dest.read_bytes() == b"junk" and state.requests == []
    download_file(f"{base}/file.zip", dest, validate=check_zip, overwrite=True, backoff=0)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_json(server: tuple[str, ServerState]) -> None:
    base, _ = server
    assert fetch_json(f"{base}/series.json", params={"PatientID": "x"}) == [
        {"SeriesInstanceUID": "1.2.3", "SeriesDescription": "t2_tse_tra"}
    ]
    assert fetch_json(f"{base}/empty.json") == []
    with pytest.raises(DownloadError, match="not found"):
        fetch_json(f"{base}/missing.json", backoff=0)
    with pytest.raises(DownloadError, match="gave up after 2 attempts; last error: HTTP 503"):
        fetch_json(f"{base}/server-error.zip", retries=1, backoff=0)
    with pytest.raises(DownloadError, match="not JSON"):
        fetch_json(f"{base}/file.zip", backoff=0)


@pytest.mark.parametrize("url", ["not-a-url/file.zip", "http://"])
def test_invalid_url_is_a_download_error_without_retries(tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadError, match=r"request failed: (MissingSchema|InvalidURL)"):
        download_file(url, tmp_path / "f.zip", retries=3, backoff=30.0)
    with pytest.raises(DownloadError, match=r"request failed: (MissingSchema|InvalidURL)"):
        fetch_json(url, retries=3, backoff=30.0)
    assert not (tmp_path / "f.zip").exists() and not (tmp_path / "f.zip.part").exists()
