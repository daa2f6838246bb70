"""A real Orthanc with its DICOMweb plugin, started for the tests and stopped after them.

The fixture installs nothing: it needs the ``Orthanc`` binary and the DICOMweb plugin
(Debian packages ``orthanc`` and ``orthanc-dicomweb``; ``.ci/run`` installs them) and
skips with a reason otherwise. Each server gets a generated JSON config: a free HTTP
port, the DICOM port disabled, a temporary storage folder, the DICOMweb plugin,
``RemoteAccessAllowed: false`` and authentication off (or on, with one user). Orthanc
1.10 has no bind-address option: it listens on all interfaces but, with remote access
disallowed, answers only requests from 127.0.0.1.

The real PROSTATEx series (../shared/data/prostatex_dicom) are uploaded through
Orthanc's own REST API (``POST /instances``), not through the code under test.
"""

from __future__ import annotations

import contextlib
import glob
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

PROSTATEX = "prostatex_dicom"
PATIENT_0000 = "ProstateX-0000"
PATIENT_0001 = "ProstateX-0001"
T2_TRA_0000 = f"{PATIENT_0000}/07-07-2011/4.000000-t2tsetra-00702"
T2_SAG_0000 = f"{PATIENT_0000}/07-07-2011/3.000000-t2tsesag-87368"
T2_TRA_0001 = f"{PATIENT_0001}/07-08-2011/10.000000-t2tsetra-17541"
STUDY_0000 = "1.3.6.1.4.1.14519.5.2.1.7311.5101.158323547117540061132729905711"
T2_TRA_0000_UID = "1.3.6.1.4.1.14519.5.2.1.7311.5101.160028252338004527274326500702"
USER, PASSWORD = "radiologist", "s3cret-Pa55word-xyz"

PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


def _find_plugin() -> str | None:
    for pattern in PLUGIN_CANDIDATES:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancServer:
    """One running Orthanc: its URLs, the process we started, and REST helpers."""

    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    auth: tuple[str, str] | None = None
    uploaded: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, **kwargs: object) -> requests.Response:
        return requests.request(method, self.url + path, auth=self.auth, timeout=30, **kwargs)  # type: ignore[arg-type]

    def upload_folder(self, folder: Path) -> int:
        count = 0
        for file in sorted(folder.glob("*.dcm")):
            r = self.rest("POST", "/instances", data=file.read_bytes())
            assert r.status_code == 200, f"Orthanc refused {file}: {r.status_code} {r.text[:200]}"
            count += 1
        self.uploaded[folder.name] = count
        return count

    def count(self, level: str = "instances") -> int:
        r = self.rest("GET", f"/{level}")
        r.raise_for_status()
        return len(r.json())

    def log_tail(self) -> str:
        log = self.folder / "orthanc.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_orthanc(folder: Path, *, users: dict[str, str] | None = None, attempts: int = 3) -> OrthancServer:
    """Start Orthanc with a generated config in ``folder``; wait until it answers."""
    binary = shutil.which("Orthanc")
    plugin = _find_plugin()
    if binary is None or plugin is None:  # the fixtures skip before this; keep it safe
        raise RuntimeError("Orthanc or its DICOMweb plugin is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(attempts):
        port = _free_port()
        storage = folder / f"storage-{attempt}"
        config = {
            "Name": "medseg-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "HttpDescribeErrors": True,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
        }
        config_path = folder / f"orthanc-{attempt}.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_file = (folder / "orthanc.log").open("ab")
        process = subprocess.Popen(
            [binary, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT, cwd=folder
        )
        log_file.close()
        server = OrthancServer(port, process, folder, auth=next(iter(users.items())) if users else None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if server.rest("GET", "/system").status_code == 200:
                    return server
            time.sleep(0.1)
        last_error = server.log_tail()
        server.stop()  # port taken or start failure: try another port
    raise RuntimeError(f"Orthanc did not start; its log ends with:\n{last_error}")


@pytest.fixture(scope="session")
def orthanc_available() -> None:
    if shutil.which("Orthanc") is None:
        pytest.skip(
            "the Orthanc binary is not installed (Debian: apt-get install orthanc orthanc-dicomweb; "
            ".ci/run installs them when apt is available)"
        )
    if _find_plugin() is None:
        pytest.skip(
            f"the Orthanc DICOMweb plugin is not installed (looked for {', '.join(PLUGIN_CANDIDATES)})"
        )


@pytest.fixture(scope="session")
def prostatex(shared_data: Path) -> Path:
    root = shared_data / PROSTATEX
    if not (root / T2_TRA_0000).is_dir():
        pytest.skip(f"PROSTATEx DICOM not found at {root}")
    return root


@pytest.fixture(scope="session")
def orthanc_factory(
    orthanc_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., OrthancServer]]:
    """Start servers on demand; every server started is stopped (by its PID) at the end."""
    started: list[OrthancServer] = []

    def start(users: dict[str, str] | None = None) -> OrthancServer:
        server = start_orthanc(tmp_path_factory.mktemp("orthanc"), users=users)
        started.append(server)
        return server

    yield start
    for server in started:  # stop them side by side: a graceful Orthanc stop takes ~3 s
        if server.process.poll() is None:
            server.process.terminate()
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def orthanc(orthanc_factory: Callable[..., OrthancServer], prostatex: Path) -> OrthancServer:
    """Read-only server: T2 axial and sagittal of ProstateX-0000, T2 axial of ProstateX-0001."""
    server = orthanc_factory()
    for rel in (T2_TRA_0000, T2_SAG_0000, T2_TRA_0001):
        server.upload_folder(prostatex / rel)
    return server


@pytest.fixture(scope="module")
def orthanc_rw(orthanc_factory: Callable[..., OrthancServer], prostatex: Path) -> Iterator[OrthancServer]:
    """A server that tests push to (one per module): T2 axial and sagittal of ProstateX-0000.

    Tests on it compare the study before and after instead of assuming it is pristine.
    """
    server = orthanc_factory()
    for rel in (T2_TRA_0000, T2_SAG_0000):
        server.upload_folder(prostatex / rel)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_auth(orthanc_factory: Callable[..., OrthancServer], prostatex: Path) -> OrthancServer:
    """Authentication enabled with one user; T2 axial of ProstateX-0000."""
    server = orthanc_factory(users={USER: PASSWORD})
    server.upload_folder(prostatex / T2_TRA_0000)
    return server


# ------------------------------------------------------------------ dropping proxy
class DroppingProxy:
    """A TCP proxy to a server that can cut the connection mid-transfer.

    After :meth:`arm` (n), the proxy forwards n more bytes of server answers, then closes
    both sockets of that connection and drops every new one (the network is down: the
    client's own retry fails too) until :meth:`restore`. Working at the TCP level (not
    by mocking requests) means the client's real error handling is tested.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._budget: int | None = None
        self._lock = threading.Lock()
        self.drops = 0
        self.down = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def arm(self, n_bytes: int) -> None:
        with self._lock:
            self._budget = n_bytes

    def restore(self) -> None:
        with self._lock:
            self.down = False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                if downstream:
                    with self._lock:
                        if self._budget is not None:
                            if len(data) >= self._budget:
                                data, cut = data[: self._budget], True
                                self._budget = None
                                self.drops += 1
                                self.down = True
                            else:
                                self._budget -= len(data)
                if data:
                    dst.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()


@pytest.fixture
def dropping_proxy(orthanc: OrthancServer) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(orthanc.port)
    yield proxy
    proxy.close()


# ------------------------------------------------------------------------- helpers
@pytest.fixture
def no_pacs_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MEDSEG_PACS_* variables and no user config file leak into a test."""
    for name in ("URL", "USER", "PASSWORD", "TOKEN", "CA_BUNDLE", "CONFIG"):
        monkeypatch.delenv(f"MEDSEG_PACS_{name}", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
