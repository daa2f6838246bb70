"""PROSTATEx T2 MRI from TCIA + the prostate zone labels of Meyer et al. (ISBI 2019).

What :func:`download_prostatex` does, per patient:

1. **Query** TCIA's public NBIA REST API: ``GET {base_url}/getSeries?Collection=PROSTATEx&PatientID=...``
   returns a JSON list of series (``SeriesInstanceUID``, ``SeriesDescription``,
   ``SeriesNumber``, ``ImageCount``, ...).
2. **Pick** the T2 axial / sagittal / coronal series by SeriesDescription
   (``t2_tse_tra`` / ``t2_tse_sag`` / ``t2_tse_cor``, also the TrioTim variants such as
   ``t2_tse_tra_320_p2``; localizers are not T2 TSE and never match). Some patients have
   two series of a plane (ProstateX-0001: two ``t2_tse_tra``, #6 and #10, 9 minutes
   apart). Candidates are ranked by **highest SeriesNumber** first (the later
   acquisition, usually the repeat the radiographer kept), ties broken by
   SeriesInstanceUID. For the axial plane every candidate is downloaded and the first
   whose grid the zone label lies on is used (:func:`pair_label`); when several match
   (ProstateX-0001's #6 and #10 share one grid exactly) the later one wins, as it does
   for the sagittal and coronal planes.
3. **Download** each series as a ZIP with ``GET {base_url}/getImageWithMD5Hash?SeriesInstanceUID=...``
   (the same archive as ``getImage`` plus ``md5hashes.csv``, columns ``Filename,MD5Hash``)
   through :func:`medseg.data.download.download_file` (resume, retries, ZIP check), then
   extract it safely, checking every file's MD5 and the file count against ``ImageCount``.
4. **Labels**: Meyer et al. published their expert zone segmentations of 98 PROSTATEx
   cases as one archive (``Data.zip``, default :data:`MEYER_LABELS_URL`, linked from
   https://github.com/AnnekeMeyer/zone-segmentation and fetched the same way by the
   exercise's ``data/download.py``): ``GT Export/Train/<PatientID>/*.nrrd`` and
   ``GT Export/Test/<PatientID>/*.nrrd``, drawn on the axial T2. Values are taken as
   0 background, 1 PZ, 2 TZ (central gland), 3 DPU (distal prostatic urethra), 4 AFS,
   the order of Meyer's network outputs ("pz=1, cz=2, us=3, afs=4" in her
   ``UNet_zones.py``). A label must lie on the axial T2 grid; otherwise it is resampled
   onto it with nearest neighbour (never linear) and the case is flagged.
5. **Optionally crop** the axial T2 and its label to the multi-plane ROI (the overlap of
   the three T2 series, :func:`medseg.geometry.roi.multiplane_roi`).
6. **Write** the nnU-Net v2 layout through :func:`medseg.data.dataset.create_dataset`
   (atomic): Meyer's Train cases in imagesTr/labelsTr, Test cases in imagesTs/labelsTs,
   channel ``{"0": "T2"}``, labels background/PZ/TZ/DPU/AFS. The sagittal and coronal T2
   go to ``auxiliary/CASE_sag.nii.gz`` / ``_cor`` (for ``medseg roi`` later), and
   ``prostatex.json`` records the series chosen, the label pairing and the ROI per case.

Case ids are ``prostatex_NNNN`` from the TCIA subject ids (ProstateX-NNNN), which are
TCIA's own pseudonyms; one study per patient, so the ``patients`` map is the identity.

Downloads go to ``cache_dir`` (default: ``<out>.downloads`` beside the output), which is
kept so that an interrupted import resumes where it stopped; delete it when done.

Not verified against the live services (no internet where this was written): the exact
JSON of getSeries on the current API version, whether the NBIA servers honour HTTP
Range on the generated ZIPs (the downloader falls back to a full restart when they do
not), the label archive's exact member names and the label value encoding.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from medseg.data.dataset import DatasetWriter, create_dataset
from medseg.data.download import DownloadError, check_zip, download_file, fetch_json
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io.atomic import atomic_dir, atomic_file, check_writable, write_text_atomic
from medseg.io.itk import read_itk, write_itk
from medseg.progress import progress_bar
from medseg.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "COLLECTION",
    "MEYER_LABELS_URL",
    "TCIA_BASE_URL",
    "ZONE_LABELS",
    "MeyerLabel",
    "ProstatexCase",
    "ProstatexImport",
    "TciaSeries",
    "choose_t2_series",
    "download_prostatex",
    "extract_series_archive",
    "fetch_meyer_labels",
    "fetch_series",
    "meyer_label_index",
    "pair_label",
    "query_series",
    "t2_plane",
]

# NBIA "Search" REST API without login. v4 is the current version per TCIA's maintainers
# (tcia_utils' nbia_v4.py, late 2025); v1 (.../services/v1, used by MONAI's TCIA helpers)
# serves the same routes and is being deprecated. Pass base_url to use another.
TCIA_BASE_URL = "https://services.cancerimagingarchive.net/nbia-api/services/v4"
COLLECTION = "PROSTATEx"
MEYER_LABELS_URL = "https://isgwww.cs.uni-magdeburg.de/cas/isbi2019/Data.zip"
ZONE_LABELS = {"background": 0, "PZ": 1, "TZ": 2, "DPU": 3, "AFS": 4}
PLANES = ("tra", "sag", "cor")
SIDECAR = "prostatex.json"

_T2_RE = re.compile(r"^t2_tse_(?P<plane>tra|sag|cor)(?:_.*)?$", re.IGNORECASE)
_PATIENT_RE = re.compile(r"^ProstateX-\d{4}$", re.IGNORECASE)
_MD5_NAME = "md5hashes.csv"


# ------------------------------------------------------------------ TCIA series
@dataclass(frozen=True)
class TciaSeries:
    """One entry of NBIA's getSeries answer (only the fields used here)."""

    uid: str
    patient_id: str
    description: str
    number: int | None = None
    modality: str = ""
    image_count: int | None = None

    @classmethod
    def from_json(cls, item: Mapping[str, Any], where: str) -> TciaSeries:
        def get(*keys: str) -> Any:
            for key in keys:
                if item.get(key) not in (None, ""):
                    return item[key]
            return None

        # getSeries answers with DICOM-keyword keys (v1/v2); some NBIA routes use spaced
        # names ("Series UID", as tcia_utils' column renaming shows), accepted as well.
        uid = str(get("SeriesInstanceUID", "Series UID", "Series Instance UID", "Series ID") or "").strip()
        if not uid:
            raise InputError(
                None, f"{where}: a series entry has no SeriesInstanceUID", found=str(dict(item))[:120]
            )
        return cls(
            uid=uid,
            patient_id=str(get("PatientID", "Patient ID", "Subject ID") or ""),
            description=str(get("SeriesDescription", "Series Description", "ProtocolName") or ""),
            number=_as_int(get("SeriesNumber", "Series Number")),
            modality=str(get("Modality") or ""),
            image_count=_as_int(get("ImageCount", "Image Count", "Number of Images")),
        )


def _as_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def t2_plane(description: str) -> str | None:
    """'tra', 'sag' or 'cor' for a T2 TSE SeriesDescription, None for anything else."""
    m = _T2_RE.match(description.strip())
    return m["plane"].lower() if m else None


def choose_t2_series(series: Iterable[TciaSeries], patient_id: str = "") -> dict[str, list[TciaSeries]]:
    """T2 candidates per plane, preferred first (highest SeriesNumber, then UID).

    Raises :class:`InputError` when a plane has no T2 series.
    """
    found: dict[str, list[TciaSeries]] = {p: [] for p in PLANES}
    for s in series:
        plane = t2_plane(s.description)
        if plane is not None:
            found[plane].append(s)
    for plane in PLANES:
        found[plane].sort(key=lambda s: (-(s.number if s.number is not None else -1), s.uid))
    missing = [p for p in PLANES if not found[p]]
    if missing:
        raise InputError(
            None,
            f"{patient_id or 'patient'}: no T2 series for plane(s) {', '.join(missing)}",
            expected="SeriesDescription t2_tse_tra, t2_tse_sag and t2_tse_cor",
        )
    return found


def query_series(
    patient_id: str,
    *,
    base_url: str = TCIA_BASE_URL,
    collection: str = COLLECTION,
    session: requests.Session | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> list[TciaSeries]:
    """All series of one patient: ``getSeries?Collection=...&PatientID=...``."""
    url = f"{base_url.rstrip('/')}/getSeries"
    data = fetch_json(
        url,
        params={"Collection": collection, "PatientID": patient_id},
        session=session,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
    )
    if not isinstance(data, list):
        raise DownloadError(url, f"getSeries answered {type(data).__name__}, expected a JSON list")
    if not data:
        raise DownloadError(url, f"no series found for {patient_id} in collection {collection}")
    return [TciaSeries.from_json(item, url) for item in data if isinstance(item, Mapping)]


# ------------------------------------------------------------ series archives
def _safe_member_name(name: str, archive: Path) -> str:
    """The base name of a ZIP member; refuses absolute paths and '..' (zip-slip)."""
    parts = Path(name.replace("\\", "/")).parts
    if not parts or name.startswith("/") or ".." in parts:
        raise InputError(archive, f"unsafe member name {name!r} in archive")
    return parts[-1]


def _md5_table(zf: zipfile.ZipFile) -> dict[str, str]:
    names = [n for n in zf.namelist() if Path(n).name.lower() == _MD5_NAME]
    if not names:
        return {}
    text = zf.read(names[0]).decode("utf-8", errors="replace")
    table: dict[str, str] = {}
    for row in csv.DictReader(io.StringIO(text)):
        fname = (row.get("Filename") or row.get("filename") or "").strip()
        digest = (row.get("MD5Hash") or row.get("md5hash") or "").strip().lower()
        if fname and digest:
            table[Path(fname.replace("\\", "/")).name] = digest
    return table


def extract_series_archive(
    archive: Path, folder: Path, series: TciaSeries, *, verify_md5: bool = True
) -> Path:
    """Extract a series ZIP into ``folder`` (atomically), checking MD5s and the image count."""
    with zipfile.ZipFile(archive) as zf, atomic_dir(folder, overwrite=True) as tmp:
        hashes = _md5_table(zf) if verify_md5 else {}
        if verify_md5 and not hashes:
            logger.warning("%s has no %s; file checksums were not verified", archive.name, _MD5_NAME)
        count = unchecked = 0
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = _safe_member_name(info.filename, archive)
            if name.lower() == _MD5_NAME:
                continue
            data = zf.read(info)
            if name in hashes and hashlib.md5(data).hexdigest() != hashes[name]:
                raise DownloadError(
                    str(archive),
                    f"file {name} of series {series.uid} fails its MD5 check; the archive is deleted, "
                    "run again to download it anew",
                )
            if hashes and name not in hashes:
                unchecked += 1
            out = tmp / name
            if out.exists():
                raise InputError(archive, f"two members are named {name}")
            out.write_bytes(data)
            count += 1
        if series.image_count is not None and count != series.image_count:
            raise InputError(
                archive,
                f"series {series.uid} is incomplete",
                expected=f"{series.image_count} images (getSeries ImageCount)",
                found=f"{count} files",
            )
        if count == 0:
            raise InputError(archive, f"archive of series {series.uid} holds no files")
        if unchecked:
            logger.warning(
                "%s: %d of %d files have no entry in %s", archive.name, unchecked, count, _MD5_NAME
            )
    return folder


def fetch_series(
    series: TciaSeries,
    cache_dir: str | Path,
    *,
    base_url: str = TCIA_BASE_URL,
    verify_md5: bool = True,
    keep_archive: bool = False,
    session: requests.Session | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download and extract one series into ``cache_dir/series/<uid>/``; reuse it when present."""
    cache = Path(cache_dir)
    folder = cache / "series" / series.uid
    if folder.is_dir():  # extraction is atomic: a folder under the final name is complete
        return folder
    route = "getImageWithMD5Hash" if verify_md5 else "getImage"
    archive = cache / "archives" / f"{series.uid}.zip"
    download_file(
        f"{base_url.rstrip('/')}/{route}",
        archive,
        params={"SeriesInstanceUID": series.uid},
        validate=check_zip,
        session=session,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        progress=progress,
        description=f"series {series.description} #{series.number}",
    )
    try:
        extract_series_archive(archive, folder, series, verify_md5=verify_md5)
    except MedsegError:
        archive.unlink(missing_ok=True)  # a rerun downloads it anew instead of reusing it
        raise
    if not keep_archive:
        archive.unlink()
    return folder


# ------------------------------------------------------------------ zone labels
@dataclass(frozen=True)
class MeyerLabel:
    """Where one patient's zone label is: Meyer's split and the archive member."""

    patient_id: str
    split: str  # "Train" or "Test"
    member: str


def meyer_label_index(archive: str | Path) -> dict[str, MeyerLabel]:
    """Map PatientID -> label member of Meyer's archive (``.../Train|Test/<PatientID>/*.nrrd``)."""
    path = Path(archive)
    index: dict[str, MeyerLabel] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            parts = Path(name.replace("\\", "/")).parts
            if len(parts) < 3 or not parts[-1].lower().endswith(".nrrd"):
                continue
            split, patient = parts[-3], parts[-2]
            if split.lower() not in ("train", "test") or not _PATIENT_RE.match(patient):
                continue
            patient = "ProstateX-" + patient[-4:]
            if patient in index:
                raise InputError(
                    path,
                    f"several label files for {patient}",
                    expected="one .nrrd per patient folder",
                    found=f"{Path(index[patient].member).name} and {parts[-1]}",
                )
            index[patient] = MeyerLabel(patient, "Train" if split.lower() == "train" else "Test", name)
    if not index:
        raise InputError(
            path, "holds no zone labels", expected="members like 'GT Export/Train/ProstateX-0000/*.nrrd'"
        )
    return index


def fetch_meyer_labels(
    cache_dir: str | Path,
    *,
    url: str = MEYER_LABELS_URL,
    sha256: str | None = None,
    session: requests.Session | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = False,
) -> tuple[Path, dict[str, MeyerLabel]]:
    """Download Meyer et al.'s label archive into the cache; return it and its index."""
    archive = download_file(
        url,
        Path(cache_dir) / "labels" / "meyer_isbi2019_Data.zip",
        sha256=sha256,
        validate=check_zip,
        session=session,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        progress=progress,
        description="Meyer et al. zone labels",
    )
    return archive, meyer_label_index(archive)


def _extract_label(archive: Path, label: MeyerLabel, cache_dir: Path) -> Path:
    target = cache_dir / "labels" / label.split / f"{label.patient_id}.nrrd"
    if target.is_file():
        return target
    with zipfile.ZipFile(archive) as zf, atomic_file(target, overwrite=True) as tmp:
        tmp.write_bytes(zf.read(label.member))
    return target


# ------------------------------------------------------------------- import
@dataclass
class ProstatexCase:
    """What was imported for one patient."""

    case_id: str
    split: str
    series: dict[str, str]  # plane -> SeriesInstanceUID
    label_resampled: bool = False
    label_differences: list[str] = field(default_factory=list)
    roi: dict[str, Any] | None = None


@dataclass
class ProstatexImport:
    """Result of :func:`download_prostatex`."""

    out: Path
    cases: list[ProstatexCase]
    skipped: dict[str, str] = field(default_factory=dict)  # case id -> reason


def _read_t2(folder: Path) -> Volume:
    """One downloaded T2 series folder as a Volume (LPS geometry from the DICOM headers)."""
    from medseg.io.dicom import read_dicom_series

    return read_dicom_series(folder)


def _case_id(patient_id: str) -> str:
    return "prostatex_" + patient_id[-4:]


@dataclass
class _Fetched:
    """Downloaded files of one patient (phase 1)."""

    patient_id: str
    candidates: dict[str, list[tuple[TciaSeries, Path]]]
    label: MeyerLabel
    label_path: Path


def pair_label(
    candidates: Sequence[tuple[TciaSeries, Volume]], label: Volume, label_name: str = "label"
) -> tuple[TciaSeries, Volume, Volume, list[str]]:
    """Choose the axial series a label was drawn on and put the label on its grid.

    ``candidates`` are in order of preference. The first whose grid matches the label's
    (within header round-off) is used and the label keeps its voxels on that grid; when
    none matches, the first candidate is used and the label is resampled onto it with
    nearest neighbour. Returns (series, T2 volume, label on the T2 grid, differences),
    ``differences`` empty when no resampling was needed.
    """
    from medseg.geometry.resample import resample_to_reference

    if not candidates:
        raise InputError(None, f"no axial T2 series to pair {label_name} with")
    for series, t2 in candidates:
        if t2.geometry.is_close(label.geometry):
            # same grid within header round-off: keep the voxels, take the DICOM geometry
            return series, t2, Volume(label.array, geometry=t2.geometry, meta=label.meta), []
    series, t2 = candidates[0]
    diffs = t2.geometry.differences(label.geometry)
    logger.warning(
        "%s does not lie on the axial T2 grid (%s); resampled onto it with nearest neighbour",
        label_name,
        "; ".join(diffs),
    )
    return series, t2, resample_to_reference(label, t2, is_label=True), diffs


def download_prostatex(
    out: str | Path,
    patients: Sequence[str] | None = None,
    *,
    base_url: str = TCIA_BASE_URL,
    collection: str = COLLECTION,
    labels: str = "meyer",
    labels_url: str = MEYER_LABELS_URL,
    labels_sha256: str | None = None,
    cache_dir: str | Path | None = None,
    meyer_split: bool = True,
    crop_roi: bool = False,
    roi_margin_mm: float = 0.0,
    verify_md5: bool = True,
    keep_archives: bool = False,
    skip_invalid: bool = False,
    overwrite: bool = False,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = False,
    session: requests.Session | None = None,
) -> ProstatexImport:
    """Download PROSTATEx T2 series and Meyer et al.'s zone labels; write a dataset at ``out``.

    ``patients`` are TCIA subject ids (``ProstateX-0000``); default: every patient with a
    Meyer label (98). Network access happens only here (through medseg.data.download).
    ``meyer_split`` puts Meyer's Test cases in imagesTs/labelsTs (her 78/20 split);
    ``False`` puts every case in imagesTr/labelsTr. ``skip_invalid`` leaves out patients
    whose download or pairing fails (listed in dataset.json) instead of stopping. See the
    module docstring for every step.
    """
    if labels != "meyer":
        raise ConfigError(f"labels must be 'meyer' (Meyer et al. 2019 zone labels), found {labels!r}")
    if roi_margin_mm < 0:
        raise ConfigError(f"roi_margin_mm must be >= 0, found {roi_margin_mm}")
    target = check_writable(out, overwrite)
    cache = Path(cache_dir) if cache_dir is not None else target.with_name(target.name + ".downloads")
    cache.mkdir(parents=True, exist_ok=True)
    net: dict[str, Any] = {"session": session, "retries": retries, "backoff": backoff, "timeout": timeout}
    own_session = session is None
    if own_session:
        net["session"] = requests.Session()
    try:
        archive, label_index = fetch_meyer_labels(
            cache, url=labels_url, sha256=labels_sha256, progress=progress, **net
        )
        wanted = _wanted_patients(patients, label_index)
        if meyer_split and all(label_index[p].split == "Test" for p in wanted):
            raise ConfigError(
                "every requested patient is in Meyer et al.'s Test split, which leaves no training case; "
                "add Train patients or pass meyer_split=False (--all-train)"
            )
        fetched: dict[str, _Fetched] = {}
        failures: dict[str, str] = {}
        # Phase 1: downloads (resumable; each file shows its own transfer bar).
        for pid in wanted:
            try:
                fetched[pid] = _fetch_patient(
                    pid,
                    label_index[pid],
                    archive,
                    cache,
                    base_url,
                    collection,
                    verify_md5,
                    keep_archives,
                    progress,
                    net,
                )
            except MedsegError as exc:
                if not skip_invalid:
                    raise
                logger.warning("%s: %s", _case_id(pid), exc)
                failures[pid] = str(exc)
    finally:
        if own_session:
            net["session"].close()

    # Phase 2: read, pair, crop and write the dataset (atomic).
    cases: list[ProstatexCase] = []
    skipped = {_case_id(p): r for p, r in failures.items()}
    with create_dataset(
        target,
        source=cache,
        overwrite=overwrite,
        channel_names=["T2"],
        labels=ZONE_LABELS,
        name="PROSTATEx-Meyer2019",
        description="PROSTATEx axial T2 (TCIA) with the prostate zone labels of Meyer et al., ISBI 2019",
        source_kind="prostatex",
    ) as writer:
        for pid, reason in failures.items():
            writer.skip(_case_id(pid), reason)
        aux = writer.root / "auxiliary"
        with progress_bar(progress, "PROSTATEx cases", len(fetched)) as advance:
            for pid in wanted:
                if pid not in fetched:
                    continue
                try:
                    cases.append(
                        _import_patient(
                            fetched[pid],
                            writer,
                            aux,
                            test=meyer_split and fetched[pid].label.split == "Test",
                            crop_roi=crop_roi,
                            roi_margin_mm=roi_margin_mm,
                        )
                    )
                except MedsegError as exc:
                    if not skip_invalid:
                        raise
                    writer.skip(_case_id(pid), str(exc))
                    skipped[_case_id(pid)] = str(exc)
                advance()
        info = {
            "source": {
                "collection": collection,
                "base_url": base_url,
                "labels_url": labels_url,
                "label_values": ZONE_LABELS,
                "label_encoding_note": "assumed 1 PZ, 2 TZ, 3 DPU, 4 AFS (Meyer's UNet_zones.py output order)",
            },
            "cases": {
                c.case_id: {
                    "split": c.split,
                    "series": c.series,
                    "label_resampled": c.label_resampled,
                    "label_differences": c.label_differences,
                    "roi": c.roi,
                }
                for c in cases
            },
        }
        write_text_atomic(writer.root / SIDECAR, json.dumps(info, indent=2) + "\n", overwrite=True)
    logger.info("imported %d PROSTATEx cases into %s (%d skipped)", len(cases), target, len(skipped))
    return ProstatexImport(out=target, cases=cases, skipped=skipped)


def _wanted_patients(patients: Sequence[str] | None, label_index: Mapping[str, MeyerLabel]) -> list[str]:
    if patients is None:
        return sorted(label_index)
    wanted: list[str] = []
    for p in patients:
        if not _PATIENT_RE.match(p.strip()):
            raise ConfigError(f"patient ids look like ProstateX-0000, found {p!r}")
        pid = "ProstateX-" + p.strip()[-4:]
        if pid not in label_index:
            raise ConfigError(
                f"{pid} has no zone label in Meyer et al.'s archive ({len(label_index)} labelled patients)"
            )
        if pid not in wanted:
            wanted.append(pid)
    if not wanted:
        raise ConfigError("no patients given")
    return wanted


def _fetch_patient(
    pid: str,
    label: MeyerLabel,
    archive: Path,
    cache: Path,
    base_url: str,
    collection: str,
    verify_md5: bool,
    keep_archives: bool,
    progress: bool,
    net: Mapping[str, Any],
) -> _Fetched:
    series = query_series(pid, base_url=base_url, collection=collection, **net)
    chosen = choose_t2_series(series, _case_id(pid))
    planes: dict[str, list[TciaSeries]] = {
        # every axial candidate is fetched: the label decides which one it was drawn on
        "tra": chosen["tra"],
        "sag": chosen["sag"][:1],
        "cor": chosen["cor"][:1],
    }
    candidates = {
        plane: [
            (
                s,
                fetch_series(
                    s,
                    cache,
                    base_url=base_url,
                    verify_md5=verify_md5,
                    keep_archive=keep_archives,
                    progress=progress,
                    **net,
                ),
            )
            for s in items
        ]
        for plane, items in planes.items()
    }
    return _Fetched(pid, candidates, label, _extract_label(archive, label, cache))


def _import_patient(
    item: _Fetched, writer: DatasetWriter, aux: Path, *, test: bool, crop_roi: bool, roi_margin_mm: float
) -> ProstatexCase:
    case_id = _case_id(item.patient_id)
    label = read_itk(item.label_path)
    axial = [(series, _read_t2(folder)) for series, folder in item.candidates["tra"]]
    tra_series, tra, label_on_t2, diffs = pair_label(axial, label, item.label_path.name)
    sag_series, sag_folder = item.candidates["sag"][0]
    cor_series, cor_folder = item.candidates["cor"][0]
    sag = _read_t2(sag_folder)
    cor = _read_t2(cor_folder)
    roi_info: dict[str, Any] | None = None
    image, lab = tra, label_on_t2
    if crop_roi:
        from medseg.geometry.crop import crop
        from medseg.geometry.roi import multiplane_roi

        roi = multiplane_roi(tra, sag, cor, margin_mm=roi_margin_mm)
        assert roi.cropped is not None
        image = roi.cropped
        lab = crop(label_on_t2, roi.box, outside="error")
        roi_info = roi.to_dict()
    writer.add_case(
        case_id,
        [image],
        lab,
        patient_id=case_id,
        test=test,
        source=f"{case_id} axial T2 series {tra_series.uid}",
        label_source=item.label_path,
    )
    aux.mkdir(exist_ok=True)
    write_itk(sag, aux / f"{case_id}_sag.nii.gz", overwrite=True)
    write_itk(cor, aux / f"{case_id}_cor.nii.gz", overwrite=True)
    return ProstatexCase(
        case_id=case_id,
        split=item.label.split,
        series={"tra": tra_series.uid, "sag": sag_series.uid, "cor": cor_series.uid},
        label_resampled=bool(diffs),
        label_differences=diffs,
        roi=roi_info,
    )
