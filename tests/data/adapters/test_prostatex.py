"""PROSTATEx + Meyer zone labels against a local NBIA-like server on 127.0.0.1.

The server answers the real API's routes and query parameters
(``/nbia-api/services/v4/getSeries?Collection=PROSTATEx&PatientID=...``,
``getImage`` / ``getImageWithMD5Hash?SeriesInstanceUID=...`` returning a ZIP built from
the real DICOM files in ../shared/data/prostatex_dicom) and serves a Meyer-style label
archive (``GT Export/Train|Test/<PatientID>/*.nrrd``) generated on the axial T2 grids.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.data.adapters.prostatex import (
    ZONE_LABELS,
    TciaSeries,
    choose_t2_series,
    download_prostatex,
    extract_series_archive,
    meyer_label_index,
    pair_label,
    t2_plane,
)
from medseg.data.dataset import read_descriptor
from medseg.data.download import DownloadError
from medseg.errors import ConfigError, InputError
from medseg.io.itk import read_itk
from medseg.volume import Volume

API = "/nbia-api/services/v4"
LABELS_PATH = "/cas/isbi2019/Data.zip"
CUT = 200_000  # bytes sent before a simulated dropped connection


# ---------------------------------------------------------------- fake TCIA data
@dataclass
class FakeTcia:
    """Series listings, ZIPs and the label archive served by the test server."""

    series: dict[str, list[dict[str, Any]]]  # PatientID -> getSeries entries
    files: dict[str, list[Path]]  # SeriesInstanceUID -> DICOM files
    labels_zip: bytes
    label_arrays: dict[str, np.ndarray]  # PatientID -> label array (z, y, x) as written
    label_series: dict[str, str]  # PatientID -> SeriesInstanceUID the label was drawn on
    zips: dict[tuple[str, bool], bytes] = field(default_factory=dict)

    def zip_for(self, uid: str, with_md5: bool, corrupt_md5: bool = False) -> bytes:
        key = (uid, with_md5)
        if key not in self.zips or corrupt_md5:
            buf = io.BytesIO()
            lines = ["Filename,MD5Hash"]
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
                for f in self.files[uid]:
                    data = f.read_bytes()
                    zf.writestr(zipfile.ZipInfo(f.name, date_time=(2017, 1, 1, 0, 0, 0)), data)
                    digest = hashlib.md5(data).hexdigest()
                    lines.append(f"{f.name},{'0' * 32 if corrupt_md5 and len(lines) == 3 else digest}")
                if with_md5:
                    zf.writestr(
                        zipfile.ZipInfo("md5hashes.csv", date_time=(2017, 1, 1, 0, 0, 0)), "\n".join(lines)
                    )
            if corrupt_md5:
                return buf.getvalue()
            self.zips[key] = buf.getvalue()
        return self.zips[key]


def _zone_label(shape: tuple[int, int, int]) -> np.ndarray:
    """Nested blobs: AFS/TZ/PZ/DPU in the middle of the volume, hand-checkable."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    cz, cy, cx = shape[0] / 2, shape[1] / 2, shape[2] / 2
    r = (
        ((z - cz) / max(shape[0] / 4, 1)) ** 2
        + ((y - cy) / (shape[1] / 8)) ** 2
        + ((x - cx) / (shape[2] / 8)) ** 2
    )
    label = np.zeros(shape, np.uint8)
    label[r < 1.0] = ZONE_LABELS["PZ"]
    label[r < 0.5] = ZONE_LABELS["TZ"]
    label[(r < 0.5) & (y < cy - shape[1] / 16)] = ZONE_LABELS["AFS"]
    label[r < 0.05] = ZONE_LABELS["DPU"]
    return label


def _write_nrrd(label: np.ndarray, reference: sitk.Image) -> bytes:
    import tempfile

    img = sitk.GetImageFromArray(label)
    img.CopyInformation(reference)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "label.nrrd"
        sitk.WriteImage(img, str(path), useCompression=True)
        return path.read_bytes()


def _read_series_sitk(files: list[Path]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(files[0].parent)))
    return reader.Execute()


@pytest.fixture(scope="module")
def fake_tcia(shared_data: Path) -> FakeTcia:
    root = shared_data / "prostatex_dicom"
    series: dict[str, list[dict[str, Any]]] = {}
    files: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        dcm = sorted(folder.glob("*.dcm"))
        ds = pydicom.dcmread(dcm[0], stop_before_pixels=True)
        uid = str(ds.SeriesInstanceUID)
        files[uid] = dcm
        series.setdefault(str(ds.PatientID), []).append(
            {
                "SeriesInstanceUID": uid,
                "StudyInstanceUID": str(ds.StudyInstanceUID),
                "Modality": str(ds.Modality),
                "ProtocolName": str(ds.get("ProtocolName", "")),
                "SeriesDescription": str(ds.SeriesDescription),
                "SeriesNumber": int(ds.SeriesNumber),
                "Collection": "PROSTATEx",
                "PatientID": str(ds.PatientID),
                "Manufacturer": str(ds.get("Manufacturer", "")),
                "ImageCount": len(dcm),
                "FileSize": sum(f.stat().st_size for f in dcm),
            }
        )

    def t2(pid: str, description: str, number: int | None = None) -> str:
        hits = [
            s
            for s in series[pid]
            if s["SeriesDescription"] == description and number in (None, s["SeriesNumber"])
        ]
        assert len(hits) == 1
        return str(hits[0]["SeriesInstanceUID"])

    # ProstateX-0001's label is drawn on the earlier of its two axial series (#6); both
    # share one grid, so the adapter keeps its default (the later #10). ProstateX-0218's
    # label is stored on a coarser grid and must be resampled (nearest neighbour).
    label_series = {
        "ProstateX-0000": t2("ProstateX-0000", "t2_tse_tra"),
        "ProstateX-0001": t2("ProstateX-0001", "t2_tse_tra", 6),
        "ProstateX-0218": t2("ProstateX-0218", "t2_tse_tra_320_p2"),
    }
    split = {"ProstateX-0000": "Train", "ProstateX-0001": "Train", "ProstateX-0218": "Test"}
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(buf, "w") as zf:
        for pid, uid in label_series.items():
            ref = _read_series_sitk(files[uid])
            if pid == "ProstateX-0218":
                coarse = sitk.Image([s // 2 for s in ref.GetSize()[:2]] + [ref.GetSize()[2]], sitk.sitkUInt8)
                coarse.SetSpacing([ref.GetSpacing()[0] * 2, ref.GetSpacing()[1] * 2, ref.GetSpacing()[2]])
                coarse.SetDirection(ref.GetDirection())
                # keep the outer voxel faces: shift the first centre by half a fine voxel
                d = np.array(ref.GetDirection()).reshape(3, 3)
                shift = d @ np.array([ref.GetSpacing()[0] / 2, ref.GetSpacing()[1] / 2, 0.0])
                coarse.SetOrigin(tuple(np.array(ref.GetOrigin()) + shift))
                ref = coarse
            size = ref.GetSize()
            arrays[pid] = _zone_label((size[2], size[1], size[0]))
            zf.writestr(
                f"GT Export/{split[pid]}/{pid}/Segmentation-label.nrrd", _write_nrrd(arrays[pid], ref)
            )
    return FakeTcia(series, files, buf.getvalue(), arrays, label_series)


# ---------------------------------------------------------------- the server
@dataclass
class ServerState:
    tcia: FakeTcia
    requests: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)
    drop_once: set[str] = field(default_factory=set)  # series UIDs whose first transfer is cut
    corrupt_md5: set[str] = field(default_factory=set)
    not_zip: set[str] = field(default_factory=set)
    unavailable: set[str] = field(default_factory=set)  # always HTTP 503
    missing: set[str] = field(default_factory=set)  # listed by getSeries, 404 on getImage
    labels_zip: bytes | None = None

    def images_requested(self) -> list[tuple[str, str | None]]:
        return [(q["SeriesInstanceUID"][0], rng) for path, q, rng in self.requests if "getImage" in path]


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(
        self, status: int, body: bytes = b"", content_type: str = "application/json", **headers: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, data: bytes, drop: bool = False) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:
            self.wfile.write(body[:CUT])
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.state
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        state.requests.append((parts.path, query, self.headers.get("Range")))
        if parts.path == LABELS_PATH:
            self._send_file(state.labels_zip if state.labels_zip is not None else state.tcia.labels_zip)
            return
        if not parts.path.startswith(API + "/"):
            self._reply(404)
            return
        route = parts.path[len(API) + 1 :]
        if route == "getSeries":
            if query.get("Collection") != ["PROSTATEx"]:
                self._reply(200)  # NBIA answers an unknown collection with an empty body
                return
            entries = state.tcia.series.get(query.get("PatientID", [""])[0], [])
            self._reply(200, json.dumps(entries).encode() if entries else b"")
            return
        if route in ("getImage", "getImageWithMD5Hash"):
            uid = query.get("SeriesInstanceUID", [""])[0]
            if uid in state.unavailable:
                self._reply(503)
                return
            if uid not in state.tcia.files or uid in state.missing:
                self._reply(404, b"series not found", "text/plain")
                return
            if uid in state.not_zip:
                self._send_file(b"<html>maintenance</html>" * 50)
                return
            data = state.tcia.zip_for(
                uid, route == "getImageWithMD5Hash", corrupt_md5=uid in state.corrupt_md5
            )
            drop = uid in state.drop_once
            state.drop_once.discard(uid)
            self._send_file(data, drop=drop)
            return
        self._reply(404)


@pytest.fixture
def server(fake_tcia: FakeTcia) -> Iterator[tuple[str, ServerState]]:
    state = ServerState(fake_tcia)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"state": state}))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _run(base: str, tmp_path: Path, patients: list[str], **kwargs: Any) -> Any:
    return download_prostatex(
        tmp_path / "ds",
        patients,
        base_url=base + API,
        labels_url=base + LABELS_PATH,
        cache_dir=tmp_path / "cache",
        backoff=0,
        **kwargs,
    )


def _uid(tcia: FakeTcia, pid: str, description: str, number: int | None = None) -> str:
    hits = [
        s["SeriesInstanceUID"]
        for s in tcia.series[pid]
        if s["SeriesDescription"] == description and number in (None, s["SeriesNumber"])
    ]
    assert len(hits) == 1
    return str(hits[0])


# ---------------------------------------------------------------- unit tests
def test_t2_plane_names() -> None:
    assert t2_plane("t2_tse_tra") == "tra"
    assert t2_plane("t2_tse_sag_320_p2") == "sag"
    assert t2_plane("T2_TSE_COR") == "cor"
    for other in ("t2_localizer", "t2_loc sag", "ep2d_diff_tra_DYNDIST", "tfl_3d PD ref_tra_1.5x1.5_t3"):
        assert t2_plane(other) is None


def test_duplicate_axial_series_prefer_the_later_one() -> None:
    series = [
        TciaSeries("1.6", "p", "t2_tse_tra", 6),
        TciaSeries("1.10", "p", "t2_tse_tra", 10),
        TciaSeries("1.4", "p", "t2_tse_sag", 4),
        TciaSeries("1.5", "p", "t2_tse_cor", 5),
        TciaSeries("1.1", "p", "t2_localizer", 1),
    ]
    chosen = choose_t2_series(series)
    assert [s.uid for s in chosen["tra"]] == ["1.10", "1.6"]
    assert [s.uid for s in chosen["sag"]] == ["1.4"]
    with pytest.raises(InputError, match="no T2 series for plane"):
        choose_t2_series(series[:3])


def test_pair_label_uses_the_series_the_label_lies_on(oblique_volume: Volume) -> None:
    other = Volume(oblique_volume.array, oblique_volume.spacing, (0.0, 0.0, 0.0), oblique_volume.direction)
    later, earlier = TciaSeries("1.10", "p", "t2_tse_tra", 10), TciaSeries("1.6", "p", "t2_tse_tra", 6)
    label = oblique_volume.with_array((oblique_volume.array > 150).astype(np.uint8))
    series, t2, on_grid, diffs = pair_label([(later, other), (earlier, oblique_volume)], label)
    assert series is earlier and t2 is oblique_volume and diffs == []
    np.testing.assert_array_equal(on_grid.array, label.array)
    # no candidate matches: the preferred one is used and the label resampled (nearest neighbour)
    series, t2, on_grid, diffs = pair_label([(later, other)], label)
    assert series is later and diffs and on_grid.geometry.is_close(other.geometry)
    assert set(np.unique(on_grid.array)) <= {0, 1}


def test_series_entries_and_archive_checks(tmp_path: Path) -> None:
    s = TciaSeries.from_json(
        {"Series UID": "1.2", "Series Description": "t2_tse_tra", "Series Number": "10", "Image Count": 3},
        "x",
    )
    assert (s.uid, s.description, s.number, s.image_count) == ("1.2", "t2_tse_tra", 10, 3)
    with pytest.raises(InputError, match="no SeriesInstanceUID"):
        TciaSeries.from_json({"SeriesDescription": "t2_tse_tra"}, "getSeries")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.dcm", b"x")
    with pytest.raises(InputError, match=r"unsafe member name '\.\./evil\.dcm'"):
        extract_series_archive(archive, tmp_path / "out" / "1.2", s)
    assert not (tmp_path / "out" / "1.2").exists() and not (tmp_path / "out" / "evil.dcm").exists()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("1-01.dcm", b"x")
    with pytest.raises(InputError, match=r"series 1\.2 is incomplete; expected 3 images"):
        extract_series_archive(archive, tmp_path / "out" / "1.2", s)
    assert not (tmp_path / "out" / "1.2").exists()


def test_label_index_rejects_archives_without_labels(tmp_path: Path) -> None:
    archive = tmp_path / "Data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("GT Export/readme.txt", "nothing here")
    with pytest.raises(InputError, match="holds no zone labels"):
        meyer_label_index(archive)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("GT Export/Train/ProstateX-0004/a.nrrd", b"x")
        zf.writestr("GT Export/Train/ProstateX-0004/b.nrrd", b"x")
    with pytest.raises(InputError, match="several label files for ProstateX-0004"):
        meyer_label_index(archive)


# ---------------------------------------------------------------- end to end
def test_full_download(server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia) -> None:
    base, state = server
    result = _run(base, tmp_path, ["ProstateX-0000", "ProstateX-0001", "ProstateX-0218"])
    ds = tmp_path / "ds"
    desc = read_descriptor(ds)
    assert desc.channel_names == {"0": "T2"}
    assert desc.labels == {"background": 0, "PZ": 1, "TZ": 2, "DPU": 3, "AFS": 4}
    assert desc.num_training == 2  # Meyer's Train split; 0218 is in her Test split
    assert desc.patients == {c: c for c in ("prostatex_0000", "prostatex_0001", "prostatex_0218")}
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == [
        "prostatex_0000_0000.nii.gz",
        "prostatex_0001_0000.nii.gz",
    ]
    assert sorted(p.name for p in (ds / "labelsTs").iterdir()) == ["prostatex_0218.nii.gz"]
    assert (ds / "auxiliary" / "prostatex_0000_sag.nii.gz").is_file()
    assert (ds / "auxiliary" / "prostatex_0218_cor.nii.gz").is_file()

    cases = {c.case_id: c for c in result.cases}
    # 0001's two axial series (#6, #10) share one grid: the later one (#10) is used
    assert cases["prostatex_0001"].series["tra"] == _uid(fake_tcia, "ProstateX-0001", "t2_tse_tra", 10)
    assert not cases["prostatex_0001"].label_resampled
    assert cases["prostatex_0218"].label_resampled

    for pid, uid in (
        ("ProstateX-0000", fake_tcia.label_series["ProstateX-0000"]),
        ("ProstateX-0001", cases["prostatex_0001"].series["tra"]),
    ):
        case = "prostatex_" + pid[-4:]
        image = read_itk(ds / "imagesTr" / f"{case}_0000.nii.gz")
        label = read_itk(ds / "labelsTr" / f"{case}.nii.gz")
        reference = _read_series_sitk(fake_tcia.files[uid])
        np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(reference))
        assert image.geometry.is_close(label.geometry)
        np.testing.assert_allclose(image.origin, reference.GetOrigin(), atol=1e-3)
        np.testing.assert_array_equal(label.array, fake_tcia.label_arrays[pid])
    # 0218: the coarse label, resampled with nearest neighbour, keeps only declared values
    image = read_itk(ds / "imagesTs" / "prostatex_0218_0000.nii.gz")
    label = read_itk(ds / "labelsTs" / "prostatex_0218.nii.gz")
    assert label.shape == image.shape == (20, 320, 320)
    assert set(np.unique(label.array)) == {0, 1, 2, 3, 4}
    coarse = fake_tcia.label_arrays["ProstateX-0218"]
    np.testing.assert_array_equal(label.array[:, ::2, ::2], coarse)  # each coarse voxel covers 2x2 fine ones

    info = json.loads((ds / "prostatex.json").read_text())
    assert info["cases"]["prostatex_0218"]["split"] == "Test"
    # only the T2 series were downloaded (0001: both axial candidates), each exactly once
    uids = [u for u, _ in state.images_requested()]
    assert len(uids) == len(set(uids)) == 3 + 4 + 3
    # the cache is kept for resuming; the archives are removed after extraction
    assert not list((tmp_path / "cache" / "archives").glob("*.zip"))


def test_interrupted_series_download_resumes(
    server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia
) -> None:
    base, state = server
    uid = _uid(fake_tcia, "ProstateX-0000", "t2_tse_tra")
    state.drop_once.add(uid)
    _run(base, tmp_path, ["ProstateX-0000"], keep_archives=True)
    transfers = [rng for u, rng in state.images_requested() if u == uid]
    assert transfers == [None, f"bytes={CUT}-"]  # the second request resumed from the .part offset
    archive = tmp_path / "cache" / "archives" / f"{uid}.zip"
    assert archive.read_bytes() == fake_tcia.zip_for(uid, True)  # byte-identical
    assert (tmp_path / "ds" / "labelsTr" / "prostatex_0000.nii.gz").is_file()
    # running again reuses the cache: no series is downloaded twice
    n = len(state.images_requested())
    _run(base, tmp_path, ["ProstateX-0000"], overwrite=True)
    assert len(state.images_requested()) == n


def test_corrupt_md5_is_a_clear_error(
    server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia
) -> None:
    base, state = server
    uid = _uid(fake_tcia, "ProstateX-0000", "t2_tse_sag")
    state.corrupt_md5.add(uid)
    with pytest.raises(DownloadError, match=rf"fails its MD5 check.*{uid}|{uid}.*fails its MD5 check"):
        _run(base, tmp_path, ["ProstateX-0000"])
    assert not (tmp_path / "ds").exists()
    assert not (tmp_path / "cache" / "series" / uid).exists()  # no half-extracted series
    assert not (tmp_path / "cache" / "archives" / f"{uid}.zip").exists()  # a rerun downloads it anew
    state.corrupt_md5.clear()
    _run(base, tmp_path, ["ProstateX-0000"])
    assert (tmp_path / "ds" / "imagesTr" / "prostatex_0000_0000.nii.gz").is_file()


def test_broken_zip_is_a_clear_error(
    server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia
) -> None:
    base, state = server
    uid = _uid(fake_tcia, "ProstateX-0000", "t2_tse_cor")
    state.not_zip.add(uid)
    with pytest.raises(
        DownloadError, match=rf"SeriesInstanceUID={uid}: downloaded content is corrupt .*not a valid ZIP"
    ):
        _run(base, tmp_path, ["ProstateX-0000"])
    assert not (tmp_path / "ds").exists()
    assert not (tmp_path / "cache" / "archives" / f"{uid}.zip").exists()
    assert not (tmp_path / "cache" / "archives" / f"{uid}.zip.part").exists()


def test_missing_series_404_names_the_series(
    server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia
) -> None:
    base, state = server
    uid = _uid(fake_tcia, "ProstateX-0000", "t2_tse_tra")
    state.missing.add(uid)
    with pytest.raises(
        DownloadError, match=rf"getImageWithMD5Hash\?SeriesInstanceUID={uid}: not found \(HTTP 404\)"
    ):
        _run(base, tmp_path, ["ProstateX-0000"])
    assert not (tmp_path / "ds").exists()


def test_retries_exhausted(server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia) -> None:
    base, state = server
    uid = _uid(fake_tcia, "ProstateX-0000", "t2_tse_tra")
    state.unavailable.add(uid)
    with pytest.raises(DownloadError, match="gave up after 3 attempts; last error: HTTP 503"):
        _run(base, tmp_path, ["ProstateX-0000"], retries=2)
    assert len([u for u, _ in state.images_requested() if u == uid]) == 3
    assert not (tmp_path / "ds").exists()


def test_skip_invalid_keeps_the_other_patients(
    server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia
) -> None:
    base, state = server
    state.unavailable.add(_uid(fake_tcia, "ProstateX-0218", "t2_tse_sag_320_p2"))
    result = _run(base, tmp_path, ["ProstateX-0000", "ProstateX-0218"], retries=0, skip_invalid=True)
    assert [c.case_id for c in result.cases] == ["prostatex_0000"]
    assert "HTTP 503" in result.skipped["prostatex_0218"]
    assert "prostatex_0218" in json.dumps(read_descriptor(tmp_path / "ds").extra)


def test_unknown_patient_and_bad_options(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(ConfigError, match="ProstateX-0042 has no zone label"):
        _run(base, tmp_path, ["ProstateX-0042"])
    with pytest.raises(ConfigError, match="look like ProstateX-0000"):
        _run(base, tmp_path, ["patient7"])
    with pytest.raises(ConfigError, match="labels must be 'meyer'"):
        _run(base, tmp_path, ["ProstateX-0000"], labels="none")
    with pytest.raises(
        DownloadError, match="no series found for ProstateX-0000 in collection PROSTATEx-typo"
    ):
        _run(base, tmp_path, ["ProstateX-0000"], collection="PROSTATEx-typo")


def test_label_with_undeclared_values_is_rejected(
    server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia
) -> None:
    base, state = server
    ref = _read_series_sitk(fake_tcia.files[fake_tcia.label_series["ProstateX-0000"]])
    bad = fake_tcia.label_arrays["ProstateX-0000"].copy()
    bad[0, 0, 0] = 7
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("GT Export/Train/ProstateX-0000/Segmentation-label.nrrd", _write_nrrd(bad, ref))
    state.labels_zip = buf.getvalue()
    with pytest.raises(InputError, match=r"ProstateX-0000\.nrrd: holds undeclared label values.*also \[7\]"):
        _run(base, tmp_path, ["ProstateX-0000"])
    assert not (tmp_path / "ds").exists()


def test_crop_to_multiplane_roi(server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia) -> None:
    base, _ = server
    result = _run(base, tmp_path, ["ProstateX-0000"], crop_roi=True)
    image = read_itk(tmp_path / "ds" / "imagesTr" / "prostatex_0000_0000.nii.gz")
    label = read_itk(tmp_path / "ds" / "labelsTr" / "prostatex_0000.nii.gz")
    roi = result.cases[0].roi
    assert roi is not None
    box = roi["index_box_on_axial"]
    lower, upper = box["lower_zyx"], box["upper_zyx_exclusive"]
    assert image.shape == tuple(u - lo for lo, u in zip(lower, upper, strict=True))
    assert image.shape[1] < 384 and image.shape[2] < 384  # the sagittal/coronal FOVs cut the axial one
    full = fake_tcia.label_arrays["ProstateX-0000"]
    np.testing.assert_array_equal(
        label.array, full[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]]
    )
    assert image.geometry.is_close(label.geometry)


def test_cli_import(server: tuple[str, ServerState], tmp_path: Path, fake_tcia: FakeTcia) -> None:
    from typer.testing import CliRunner

    from medseg.cli import app

    base, state = server
    common = [
        "--base-url",
        base + API,
        "--labels-url",
        base + LABELS_PATH,
        "--cache",
        str(tmp_path / "cache"),
    ]  # progress bars on: they must not break anything
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["dataset", "import", "prostatex", "-p", "ProstateX-0000", "--out", str(tmp_path / "ds"), *common],
    )
    assert res.exit_code == 0, res.output
    assert "imported 1 training and 0 test cases" in res.output
    assert (tmp_path / "ds" / "labelsTr" / "prostatex_0000.nii.gz").is_file()

    state.missing.add(_uid(fake_tcia, "ProstateX-0001", "t2_tse_sag"))
    res = runner.invoke(
        app,
        [
            "dataset",
            "import",
            "prostatex",
            "-p",
            "ProstateX-0001",
            "--out",
            str(tmp_path / "ds2"),
            "--retries",
            "0",
            *common,
        ],
    )
    assert res.exit_code == 2
    assert "not found (HTTP 404)" in res.output and "SeriesInstanceUID=" in res.output
    assert "Traceback" not in res.output
