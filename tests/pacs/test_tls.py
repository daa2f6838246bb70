"""TLS verification is on by default: a self-signed server is refused unless trusted or --insecure.

Orthanc 1.10 from Debian resets TLS connections in this setup, so the HTTPS side is a
tiny Python server answering QIDO with an empty list; the certificate is made with the
``openssl`` binary (skips when it is missing).
"""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.pacs.client import PacsClient, PacsConnectionError, resolve_config
from medseg.pacs.query import query_studies

runner = CliRunner()
TOKEN = "tls-test-token-secret-123"


class _EmptyQido(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl binary is needed to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmptyQido)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/dicom-web", cert
    server.shutdown()
    server.server_close()


def test_self_signed_certificate_is_refused_by_default(https_server: tuple[str, Path]) -> None:
    url, _ = https_server
    client = PacsClient(resolve_config(url=url, token=TOKEN, env={}))
    with pytest.raises(PacsConnectionError, match="TLS certificate verification failed") as info:
        query_studies(client)
    assert "--ca-bundle" in str(info.value) and TOKEN not in str(info.value)


def test_trusted_ca_bundle_or_insecure_work(
    https_server: tuple[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = https_server
    # requests would let this variable override session.verify: our choice must still win
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    assert query_studies(PacsClient(resolve_config(url=url, ca_bundle=cert, env={}))) == []
    with caplog.at_level(logging.WARNING):
        assert query_studies(PacsClient(resolve_config(url=url, insecure=True, env={}))) == []
    assert "TLS certificate verification is OFF" in caplog.text


def test_tls_failure_in_the_cli_is_one_line(https_server: tuple[str, Path], no_pacs_env: None) -> None:
    url, cert = https_server
    result = runner.invoke(app, ["pacs", "query", "--url", url], env={"MEDSEG_PACS_TOKEN": TOKEN})
    assert result.exit_code == 2 and "TLS certificate verification failed" in result.output
    assert TOKEN not in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["pacs", "query", "--url", url, "--ca-bundle", str(cert)])
    assert result.exit_code == 0, result.output
    assert "0 studies" in result.output
