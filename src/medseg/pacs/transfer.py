"""Pulling series from a PACS (WADO-RS) and pushing DICOM files to it (STOW-RS).

Pull is resumable and never leaves a partial file:

* the series' instances are listed with QIDO-RS; each one is fetched on its own request
  and written as ``<SOPInstanceUID>.dcm`` through a temporary file renamed into place
  (:func:`medseg.io.atomic.atomic_file`), so a dropped connection leaves only complete
  files behind;
* an instance whose file is already there and complete (it parses, has the right
  SOPInstanceUID and, for uncompressed pixel data, all its pixel bytes) is skipped, so
  running the same pull again finishes an interrupted one; temporary files left by a
  killed process are removed first;
* at the end the files present are checked against the QIDO listing and against the
  series' NumberOfSeriesRelatedInstances; a difference raises :class:`PacsError`.

Push sends one instance per STOW-RS request, so every file is reported as accepted or
rejected with the server's reason. Every file is checked locally before anything is sent
(:func:`instance_problem`): it must parse to its end, carry the UIDs a server needs and,
for an image, hold all its pixel data. pydicom reads a file cut short (an interrupted
copy) without an error, returning short or missing pixel data, and a PACS stores such a
file as it is; so a push with damaged files sends nothing and names them, unless asked to
push the whole files only (``skip_invalid``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medseg.errors import InputError
from medseg.io.atomic import atomic_file
from medseg.pacs.client import PacsClient, PacsError, PacsNotFoundError, PacsRejectedError, read_header
from medseg.pacs.query import (
    InstanceRecord,
    SeriesRecord,
    check_uid,
    find_series,
    list_instances,
    query_series,
)
from medseg.progress import progress_bar

__all__ = [
    "PullResult",
    "PushResult",
    "PushedInstance",
    "RejectedInstance",
    "SkippedFile",
    "collect_dicom_files",
    "instance_problem",
    "is_complete_instance",
    "pull_series",
    "pull_study",
    "push_files",
]

log = logging.getLogger(__name__)

# STOW-RS failure reasons (PS3.18 Table 10.5.3-1 / PS3.4 Annex GG).
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
}


# ----------------------------------------------------------------------------- pull
@dataclass
class PullResult:
    """What a pull did: where the files are and how many were fetched or already there."""

    folder: Path
    study_uid: str
    series_uid: str
    total: int
    downloaded: int
    skipped: int
    files: list[Path] = field(repr=False)
    modality: str = ""
    description: str = ""


def _instance_path(folder: Path, sop_uid: str) -> Path:
    return folder / f"{sop_uid}.dcm"


def is_complete_instance(path: Path, sop_uid: str) -> bool:
    """True when ``path`` is a whole DICOM file of instance ``sop_uid``.

    pydicom reads a truncated file without complaint, so the pixel data are also checked
    (``_pixel_data_problem``).
    """
    try:
        ds = _read_whole(path)
    except Exception:  # any parse failure means "not complete"
        return False
    if str(ds.get("SOPInstanceUID", "")) != sop_uid:
        return False
    return _pixel_data_problem(ds) is None


def _read_whole(path: Path) -> Dataset:
    # pydicom warns (and returns an empty data set) when encapsulated pixel data end
    # without their delimiter; the caller reports that instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pydicom.dcmread(path)


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _pixel_data_problem(ds: Dataset) -> str | None:
    """Why the pixel data of ``ds`` are incomplete, or None (also for objects without images).

    Uncompressed: fewer bytes than Rows x Columns x SamplesPerPixel x NumberOfFrames x
    BitsAllocated / 8. Compressed (encapsulated): pydicom drops pixel data that end before
    their sequence delimiter, so a cut file shows as an image without pixel data.
    """
    if "Rows" not in ds or "Columns" not in ds:
        return None  # no image (RTSTRUCT, SR, ...)
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        return "an image without pixel data (the file ends before them?)"
    if "PixelData" not in ds:
        return None  # float pixel data: not checked
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return None
    try:
        bits = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
        )
    except (AttributeError, TypeError, ValueError):
        return "pixel data whose size cannot be checked (Rows, Columns or BitsAllocated missing or invalid)"
    expected, found = math.ceil(bits / 8), len(ds.PixelData)
    if found < expected:
        return (
            f"{found} bytes of pixel data where Rows x Columns x SamplesPerPixel x NumberOfFrames x "
            f"BitsAllocated/8 = {expected} (the file is cut short)"
        )
    return None


def instance_problem(path: str | Path) -> str | None:
    """Why the DICOM file ``path`` must not be stored on a PACS, or None when it is whole.

    Checks that it parses, that no element is cut short, that it has the UIDs a server
    needs and, for an image, all its pixel data (``_pixel_data_problem``). The answer names attributes, never their values, so
    it holds no patient data.
    """
    p = Path(path)
    try:
        ds = _read_whole(p)
    except Exception as exc:  # any parse failure (struct.error, BytesLengthException, ...)
        return f"not a readable DICOM file ({type(exc).__name__}; cut short?)"
    if len(ds) == 0:
        # pydicom returns an empty data set when encapsulated pixel data end without their
        # sequence delimiter, though the header before them parses.
        try:
            header_elements = len(pydicom.dcmread(p, stop_before_pixels=True))
        except Exception:
            header_elements = 0
        if header_elements:
            return "compressed pixel data that end before their delimiter (the file is cut short)"
        return "no data elements after the file meta information (cut short?)"
    short = _short_element(ds)
    if short is not None:
        return short
    missing = [k for k in _REQUIRED_UIDS if k not in ds]
    if missing:
        return f"no {', '.join(missing)} (cut short, or not a storable instance)"
    blank = [k for k in _REQUIRED_UIDS if not str(ds.get(k) or "").strip()]
    if blank:  # present but empty: an anonymiser's doing (TotalSegmentator's example CT), not a cut
        return f"empty {', '.join(blank)} (blanked by an anonymiser?); a PACS files instances by these UIDs"
    if "Rows" not in ds and _is_image_class(str(ds.SOPClassUID)):
        return f"no Rows, Columns or pixel data in a {UID(str(ds.SOPClassUID)).name} object (cut short?)"
    return _pixel_data_problem(ds)


def _short_element(ds: Dataset) -> str | None:
    """The element whose value the file ends inside, if any.

    pydicom keeps the bytes there are and no error; its raw element still holds the
    declared length. Checked before any element is converted (converted ones lose it).
    """
    for tag in ds.keys():  # noqa: SIM118 -- iterating the Dataset would convert the raw elements
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED_LENGTH:
            continue
        if isinstance(elem.value, bytes) and len(elem.value) < elem.length:
            name = keyword_for_tag(elem.tag) or str(elem.tag)
            return f"the file ends inside {name}: {len(elem.value)} of its {elem.length} bytes (cut short)"
    return None


def _is_image_class(sop_class_uid: str) -> bool:
    name = UID(sop_class_uid).name
    return name.endswith("Image Storage") or name == "Segmentation Storage"


def _remove_stale_temporaries(folder: Path, sop_uids: Iterable[str]) -> int:
    removed = 0
    for sop in sop_uids:
        # atomic_file names its temporaries ".<name>.<random>.tmp.dcm" beside the target.
        for tmp in folder.glob(f".{sop}.dcm.*.tmp.dcm"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed


def _resolve_series(client: PacsClient, series_uid: str, study_uid: str | None) -> SeriesRecord:
    return find_series(client, series_uid, study_uid)


def pull_series(
    client: PacsClient,
    series_uid: str,
    out: str | Path,
    *,
    study_uid: str | None = None,
    progress: bool = False,
) -> PullResult:
    """Download every instance of a series into ``out`` (resumable; see the module doc)."""
    series = _resolve_series(client, series_uid, study_uid)
    study = series.study_uid or (check_uid(study_uid, "--study") if study_uid else "")
    if not study:
        raise PacsError(
            f"{client.server}: the server did not say which study series {series.series_uid} is in"
        )
    instances = list_instances(client, study, series.series_uid)
    if not instances:
        raise PacsNotFoundError(
            f"{client.server}: series {series.series_uid} of study {study} has no instances to pull"
        )
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "cannot pull into it", expected="a folder", found="a file")
    folder.mkdir(parents=True, exist_ok=True)
    stale = _remove_stale_temporaries(folder, (i.sop_uid for i in instances))
    if stale:
        log.info("removed %d temporary files left by an interrupted pull in %s", stale, folder)
    downloaded = skipped = 0
    files: list[Path] = []
    label = f"pull {series.modality or 'series'} '{series.description}'"[:60]
    with progress_bar(progress, label, len(instances)) as advance:
        for k, inst in enumerate(instances):
            target = _instance_path(folder, inst.sop_uid)
            if target.exists():
                if is_complete_instance(target, inst.sop_uid):
                    skipped += 1
                    files.append(target)
                    advance()
                    continue
                log.warning("%s is incomplete or not instance %s; downloading it again", target, inst.sop_uid)
            try:
                ds = client.retrieve_instance(
                    study,
                    series.series_uid,
                    inst.sop_uid,
                    what=f"pulling instance {k + 1} of {len(instances)}",
                )
            except PacsError as exc:
                present = skipped + downloaded
                raise type(exc)(
                    f"{exc}; {present} of {len(instances)} instances are complete in {folder} "
                    "(no partial files); run the same pull again to resume"
                ) from None
            if str(ds.get("SOPInstanceUID", "")) != inst.sop_uid:
                raise PacsError(
                    f"{client.server}: asked for instance {inst.sop_uid} but received "
                    f"{ds.get('SOPInstanceUID', 'no SOPInstanceUID')}"
                )
            with atomic_file(target, overwrite=True) as tmp:
                ds.save_as(tmp)
            downloaded += 1
            files.append(target)
            advance()
    _verify_count(client, folder, series, instances)
    log.info(
        "pulled series %s into %s: %d downloaded, %d already present",
        series.series_uid,
        folder,
        downloaded,
        skipped,
    )
    return PullResult(
        folder=folder,
        study_uid=study,
        series_uid=series.series_uid,
        total=len(instances),
        downloaded=downloaded,
        skipped=skipped,
        files=files,
        modality=series.modality,
        description=series.description,
    )


def _verify_count(
    client: PacsClient, folder: Path, series: SeriesRecord, instances: Sequence[InstanceRecord]
) -> None:
    sops = [i.sop_uid for i in instances]
    missing = [s for s in sops if not _instance_path(folder, s).is_file()]
    if missing:
        raise PacsError(
            f"{folder}: {len(missing)} of {len(sops)} instances are missing after the pull; run it again"
        )
    if series.n_instances is not None and series.n_instances != len(sops):
        raise PacsError(
            f"{client.server}: series {series.series_uid} reports {series.n_instances} instances "
            f"(NumberOfSeriesRelatedInstances) but lists {len(sops)}; is it still being received? "
            f"{len(sops)} files are in {folder}; pull again later"
        )


def pull_study(
    client: PacsClient, study_uid: str, out: str | Path, *, progress: bool = False
) -> list[PullResult]:
    """Pull every series of a study into ``out/<SeriesInstanceUID>/`` (resumable)."""
    study = check_uid(study_uid, "--study")
    series = query_series(client, study_uid=study)
    if not series:
        raise PacsNotFoundError(f"{client.server}: study {study} not found (or it has no series)")
    results = []
    for record in series:
        results.append(
            pull_series(
                client, record.series_uid, Path(out) / record.series_uid, study_uid=study, progress=progress
            )
        )
    return results


# ----------------------------------------------------------------------------- push
@dataclass(frozen=True)
class PushedInstance:
    path: Path
    sop_uid: str
    modality: str


@dataclass(frozen=True)
class RejectedInstance:
    path: Path
    sop_uid: str
    reason: str


@dataclass(frozen=True)
class SkippedFile:
    """A damaged file left out of a push (``skip_invalid``), and why."""

    path: Path
    reason: str


@dataclass
class PushResult:
    accepted: list[PushedInstance] = field(default_factory=list)
    rejected: list[RejectedInstance] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def raise_for_rejections(self, server: str) -> None:
        """PacsRejectedError summarising the rejected files, if any."""
        if not self.rejected:
            return
        first = self.rejected[0]
        more = f" (and {len(self.rejected) - 1} more)" if len(self.rejected) > 1 else ""
        total = len(self.rejected) + len(self.accepted)
        raise PacsRejectedError(
            f"{server}: the server rejected {len(self.rejected)} of {total} instances: "
            f"{first.path.name}: {first.reason}{more}"
        )


def _looks_like_dicom(path: Path) -> bool:
    """True when ``path`` starts with the DICOM preamble and 'DICM' (damaged or not)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def collect_dicom_files(paths: Sequence[str | Path]) -> list[tuple[Path, Dataset | None]]:
    """Files given or found (recursively) in folders, with their headers.

    A file named explicitly must be DICOM (InputError otherwise); inside folders,
    non-DICOM files (README, .json, ...) are skipped with a log message, while a file with
    the DICOM preamble whose header does not parse (cut short) is kept with header None, so
    the push can name it.
    """
    found: list[tuple[Path, Dataset | None]] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            in_folder: list[tuple[Path, Dataset | None]] = []
            for file in candidates:
                try:
                    in_folder.append((file, read_header(file)))
                except InputError:
                    if _looks_like_dicom(file):
                        in_folder.append((file, None))
                    else:
                        log.info("skipping %s: not a DICOM file", file)
            if not in_folder:
                raise InputError(path, "holds no DICOM files to push")
            found.extend(in_folder)
        elif path.is_file():
            try:
                found.append((path, read_header(path)))
            except InputError:
                if not _looks_like_dicom(path):
                    raise
                found.append((path, None))
        else:
            raise InputError(path, "does not exist", expected="DICOM files or folders to push")
    if not found:
        raise InputError(None, "nothing to push", expected="DICOM files or folders")
    return found


_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_LISTED_PROBLEMS = 10  # damaged files named in the error; the log names the others


def _refuse_damaged(problems: list[tuple[Path, str]], total: int) -> None:
    for path, why in problems[_LISTED_PROBLEMS:]:
        log.warning("%s: %s", path, why)
    listed = "; ".join(f"{path}: {why}" for path, why in problems[:_LISTED_PROBLEMS])
    more = (
        f"; and {len(problems) - _LISTED_PROBLEMS} more (logged above)"
        if len(problems) > _LISTED_PROBLEMS
        else ""
    )
    raise InputError(
        None,
        f"{len(problems)} of {total} files cannot be stored, nothing was pushed: {listed}{more}",
        expected="whole DICOM files (push the others with --skip-invalid / skip_invalid=True)",
    )


def _describe_failure(response: Dataset, status: int | None) -> str:
    reasons = []
    for item in response.get("FailedSOPSequence", []) or []:
        code = item.get("FailureReason")
        if code is not None:
            text = _FAILURE_REASONS.get(int(code), "failure")
            reasons.append(f"{text} (0x{int(code):04X})")
    why = "; ".join(reasons) or "refused without a reason"
    return f"{why}, HTTP {status}" if status is not None else why


def push_files(
    client: PacsClient,
    paths: Sequence[str | Path],
    *,
    study_uid: str | None = None,
    check_local: bool = True,
    skip_invalid: bool = False,
    progress: bool = False,
) -> PushResult:
    """Store DICOM files on the server with STOW-RS, one instance per request.

    ``study_uid`` posts to ``/studies/{uid}``: the server then refuses instances of
    other studies. With ``check_local`` (the default) every file is checked first
    (:func:`instance_problem`: unreadable, cut short, no UIDs) and, if any is damaged,
    :class:`InputError` names them and nothing is sent; with ``skip_invalid`` the whole
    files are pushed and the damaged ones listed in ``PushResult.skipped``. Returns which
    instances were accepted, rejected (with the server's reason) or skipped; connection
    and credential failures raise.
    """
    study = check_uid(study_uid, "--study") if study_uid else None
    files = collect_dicom_files(paths)
    result = PushResult()
    if check_local:
        problems = [(path, why) for path, _ in files if (why := instance_problem(path)) is not None]
        if problems and not skip_invalid:
            _refuse_damaged(problems, len(files))
        for path, why in problems:
            log.warning("not pushed: %s: %s", path, why)
            result.skipped.append(SkippedFile(path, why))
        damaged = {path for path, _ in problems}
        files = [(path, header) for path, header in files if path not in damaged]
    with progress_bar(progress, "push", len(files)) as advance:
        for path, _ in files:
            try:
                ds = pydicom.dcmread(path)
            except Exception as exc:  # header was readable but the body is not
                raise InputError(path, "is not a readable DICOM file", found=type(exc).__name__) from None
            sop = str(ds.get("SOPInstanceUID", ""))
            response, status = client.store(ds, study_uid=study)
            stored = {
                str(i.get("ReferencedSOPInstanceUID", "")) for i in response.get("ReferencedSOPSequence", [])
            }
            failed = response.get("FailedSOPSequence", []) or []
            if status is None and not failed and (sop in stored or not stored):
                result.accepted.append(PushedInstance(path, sop, str(ds.get("Modality", ""))))
            else:
                reason = _describe_failure(response, status)
                log.warning("the server rejected %s: %s", path.name, reason)
                result.rejected.append(RejectedInstance(path, sop, reason))
            advance()
    log.info(
        "pushed %d instances to %s, %d rejected, %d damaged files skipped",
        len(result.accepted),
        client.server,
        len(result.rejected),
        len(result.skipped),
    )
    return result
