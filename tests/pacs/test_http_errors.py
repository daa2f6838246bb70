"""HTTP answers Orthanc does not give on demand: busy (503), server error (500), not DICOM JSON."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from medseg.pacs.client import PacsClient, PacsConfig, PacsError
from medseg.pacs.query import query_studies

ANSWERS = {
    "/busy/studies": (503, b""),
    "/broken/studies": (500, b"oops"),
    "/html/studies": (200, b"<html>hi</html>"),
}
PATIENT = "Doe^Jane-123"


class _Canned(BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        _Canned.hits[path] = _Canned.hits.get(path, 0) + 1
        status, body = ANSWERS.get(path, (404, b""))
        self.send_response(status)
        self.send_header(
            "Content-Type", "text/html" if path.startswith("/html") else "application/dicom+json"
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_busy_server_is_retried_once_then_reported(canned: str) -> None:
    with pytest.raises(PacsError, match=r"busy \(HTTP 503, retried\)"):
        query_studies(PacsClient(PacsConfig(f"{canned}/busy")), patient_id=PATIENT)
    assert _Canned.hits["/busy/studies"] == 2


def test_server_error_and_non_json_answers(canned: str) -> None:
    with pytest.raises(PacsError, match="answered HTTP 500") as info:
        query_studies(PacsClient(PacsConfig(f"{canned}/broken")), patient_id=PATIENT)
    assert PATIENT not in str(info.value)
    with pytest.raises(PacsError, match="not DICOM JSON; is the URL the DICOMweb root") as info:
        query_studies(PacsClient(PacsConfig(f"{canned}/html")), patient_id=PATIENT)
    assert PATIENT not in str(info.value)
