"""QIDO-RS queries: studies and series by patient, date (range), modality, description.

Records keep the patient's ID and name for the user's own terminal (``medseg pacs query``
prints them, as any PACS client does) but out of ``repr`` and out of log records.

Matching follows DICOM (PS3.4 C.2.2.2): UIDs and patient IDs match exactly; a
description without ``*`` or ``?`` is searched as a substring (``*text*``); dates are
``YYYYMMDD`` or ranges ``YYYYMMDD-YYYYMMDD`` (either end may be left open), ISO dates
(``2011-07-07``, ``2011-01-01..2011-12-31``) are accepted too. A space in a description
matches any one character (query strings carry spaces as ``+``, which servers that do
not decode queries would compare literally).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medseg.errors import ConfigError
from medseg.pacs.client import PacsClient, PacsNotFoundError

__all__ = [
    "NON_IMAGE_MODALITIES",
    "InstanceRecord",
    "SeriesRecord",
    "StudyRecord",
    "check_uid",
    "find_series",
    "list_instances",
    "parse_date_range",
    "query_series",
    "query_studies",
]

log = logging.getLogger(__name__)

# Objects that are not image series (segment one of the others).
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_COMPACT = re.compile(r"^\d{8}$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}$")

STUDY_FIELDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "ModalitiesInStudy",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "StudyDate",
    "PatientID",
    "NumberOfSeriesRelatedInstances",
)


def check_uid(value: str, what: str) -> str:
    """A syntactically valid DICOM UID, or ConfigError naming the option."""
    text = str(value).strip()
    if not _UID.match(text) or len(text) > 64:
        raise ConfigError(
            f"{what} must be a DICOM UID (digits and dots, at most 64 characters), found {text!r}"
        )
    return text


def _date(text: str, what: str) -> str:
    if _ISO.match(text):
        text = text.replace("-", "")
    if not _COMPACT.match(text):
        raise ConfigError(
            f"{what}: {text!r} is not a date; use YYYYMMDD or YYYY-MM-DD, "
            "a range YYYYMMDD-YYYYMMDD or YYYY-MM-DD..YYYY-MM-DD (either end may be open)"
        )
    try:
        _dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a calendar date") from None
    return text


def parse_date_range(text: str) -> str:
    """A DICOM date or date range (``YYYYMMDD``, ``A-B``, ``A-``, ``-B``) from user text."""
    raw = text.strip()
    if ".." in raw:
        start, _, end = raw.partition("..")
    elif _ISO.match(raw) or _COMPACT.match(raw):
        return _date(raw, "--date")
    elif "-" in raw:
        start, _, end = raw.partition("-")
    else:
        return _date(raw, "--date")
    start, end = start.strip(), end.strip()
    if not start and not end:
        raise ConfigError(f"--date: {text!r} is an empty range")
    a = _date(start, "--date") if start else ""
    b = _date(end, "--date") if end else ""
    if a and b and a > b:
        raise ConfigError(f"--date: the range {text!r} ends before it starts")
    return f"{a}-{b}"


def _pattern(text: str) -> str:
    # A space becomes "?" (any one character); see the module docstring.
    pattern = text.strip().replace(" ", "?")
    return pattern if any(c in text for c in "*?") else f"*{pattern}*"


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)  # str, PersonName, numbers


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class StudyRecord:
    """One study found on the PACS; patient data are kept out of ``repr``."""

    study_uid: str
    date: str
    description: str
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    accession: str = field(default="", repr=False)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyRecord:
        return cls(
            study_uid=_str(ds, "StudyInstanceUID"),
            date=_str(ds, "StudyDate"),
            description=_str(ds, "StudyDescription"),
            modalities=_values(ds, "ModalitiesInStudy"),
            n_series=_int(ds, "NumberOfStudyRelatedSeries"),
            n_instances=_int(ds, "NumberOfStudyRelatedInstances"),
            patient_id=_str(ds, "PatientID"),
            patient_name=_str(ds, "PatientName"),
            accession=_str(ds, "AccessionNumber"),
        )


@dataclass(frozen=True)
class SeriesRecord:
    """One series found on the PACS; the patient ID is kept out of ``repr``."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    n_instances: int | None
    date: str = ""
    patient_id: str = field(default="", repr=False)
    acquired: str = ""  # SeriesDate + SeriesTime ("" when the server gave either none)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SeriesRecord:
        return cls(
            study_uid=_str(ds, "StudyInstanceUID"),
            series_uid=_str(ds, "SeriesInstanceUID"),
            modality=_str(ds, "Modality"),
            description=_str(ds, "SeriesDescription"),
            number=_int(ds, "SeriesNumber"),
            n_instances=_int(ds, "NumberOfSeriesRelatedInstances"),
            date=_str(ds, "StudyDate"),
            patient_id=_str(ds, "PatientID"),
            acquired=_str(ds, "SeriesDate") + _str(ds, "SeriesTime")
            if _str(ds, "SeriesDate") and _str(ds, "SeriesTime")
            else "",
        )

    def summary(self) -> str:
        """A patient-free one-liner for messages and logs."""
        count = "?" if self.n_instances is None else str(self.n_instances)
        return (
            f"#{self.number if self.number is not None else '?'} '{self.description}' {self.modality} "
            f"({count} instances) {self.series_uid}"
        )


def _filters(
    *,
    patient_id: str | None,
    date: str | None,
    modality: str | None,
    description: str | None,
    level: str,
) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if patient_id:
        filters["PatientID"] = patient_id
    if date:
        filters["StudyDate"] = parse_date_range(date)
    if modality:
        filters["ModalitiesInStudy" if level == "studies" else "Modality"] = modality.upper()
    if description:
        filters["StudyDescription" if level == "studies" else "SeriesDescription"] = _pattern(description)
    return filters


def query_studies(
    client: PacsClient,
    *,
    patient_id: str | None = None,
    date: str | None = None,
    modality: str | None = None,
    description: str | None = None,
    study_uid: str | None = None,
    limit: int | None = None,
) -> list[StudyRecord]:
    """Studies matching every given criterion (none given: all studies, up to ``limit``)."""
    filters = _filters(
        patient_id=patient_id, date=date, modality=modality, description=description, level="studies"
    )
    if study_uid:
        filters["StudyInstanceUID"] = check_uid(study_uid, "--study")
    found = client.search("studies", filters, fields=STUDY_FIELDS, limit=limit, what="searching studies")
    records = [StudyRecord.from_dataset(ds) for ds in found]
    log.debug("%d studies found on %s", len(records), client.server)
    return sorted(records, key=lambda r: (r.date, r.study_uid))


def query_series(
    client: PacsClient,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str | None = None,
    date: str | None = None,
    modality: str | None = None,
    description: str | None = None,
    limit: int | None = None,
) -> list[SeriesRecord]:
    """Series matching every given criterion, within one study when ``study_uid`` is given."""
    filters = _filters(
        patient_id=patient_id, date=date, modality=modality, description=description, level="series"
    )
    if series_uid:
        filters["SeriesInstanceUID"] = check_uid(series_uid, "--series")
    study = check_uid(study_uid, "--study") if study_uid else None
    found = client.search(
        "series", filters, study_uid=study, fields=SERIES_FIELDS, limit=limit, what="searching series"
    )
    records = [SeriesRecord.from_dataset(ds) for ds in found]
    if study:
        # Some servers leave StudyInstanceUID out of study-scoped answers.
        records = [r if r.study_uid else SeriesRecord(**{**r.__dict__, "study_uid": study}) for r in records]
    log.debug("%d series found on %s", len(records), client.server)
    return sorted(
        records, key=lambda r: (r.study_uid, r.number if r.number is not None else 1 << 30, r.series_uid)
    )


def find_series(client: PacsClient, series_uid: str, study_uid: str | None = None) -> SeriesRecord:
    """The one series with this UID, or PacsNotFoundError."""
    uid = check_uid(series_uid, "--series")
    found = [r for r in query_series(client, study_uid=study_uid, series_uid=uid) if r.series_uid == uid]
    if not found:
        where = f"in study {study_uid}" if study_uid else "on the server"
        raise PacsNotFoundError(
            f"{client.server}: series {uid} not found {where} (the search returned nothing)"
        )
    return found[0]


@dataclass(frozen=True)
class InstanceRecord:
    sop_uid: str
    sop_class_uid: str
    number: int | None


def list_instances(client: PacsClient, study_uid: str, series_uid: str) -> list[InstanceRecord]:
    """The instances of one series (QIDO-RS), in InstanceNumber order."""
    found = client.search(
        "instances",
        {},
        study_uid=check_uid(study_uid, "--study"),
        series_uid=check_uid(series_uid, "--series"),
        fields=("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
        what="listing the instances of a series",
    )
    records = {}
    for ds in found:
        sop = _str(ds, "SOPInstanceUID")
        if sop and _UID.match(sop):
            records[sop] = InstanceRecord(sop, _str(ds, "SOPClassUID"), _int(ds, "InstanceNumber"))
        elif sop:
            log.warning("skipping an instance with an invalid SOPInstanceUID %r", sop)
    return sorted(records.values(), key=lambda r: (r.number if r.number is not None else 1 << 30, r.sop_uid))
