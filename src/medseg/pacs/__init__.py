"""PACS integration over DICOMweb: query (QIDO-RS), pull (WADO-RS), push (STOW-RS), segment.

Network access in medseg happens only here and in explicit download code. See
docs/pacs.md for a worked example against Orthanc.
"""

from __future__ import annotations

from medseg.pacs.client import (
    PacsAuthError,
    PacsClient,
    PacsConfig,
    PacsConnectionError,
    PacsError,
    PacsNotFoundError,
    PacsRejectedError,
    resolve_config,
)
from medseg.pacs.query import SeriesRecord, StudyRecord, parse_date_range, query_series, query_studies
from medseg.pacs.segment import (
    SegmentFn,
    SegmentResult,
    StudyOutcome,
    choose_series,
    model_segment_fn,
    read_study_list,
    segment_studies,
    segment_study,
)
from medseg.pacs.transfer import PullResult, PushResult, pull_series, pull_study, push_files

__all__ = [
    "PacsAuthError",
    "PacsClient",
    "PacsConfig",
    "PacsConnectionError",
    "PacsError",
    "PacsNotFoundError",
    "PacsRejectedError",
    "PullResult",
    "PushResult",
    "SegmentFn",
    "SegmentResult",
    "SeriesRecord",
    "StudyOutcome",
    "StudyRecord",
    "choose_series",
    "model_segment_fn",
    "parse_date_range",
    "pull_series",
    "pull_study",
    "push_files",
    "query_series",
    "query_studies",
    "read_study_list",
    "resolve_config",
    "segment_studies",
    "segment_study",
]
