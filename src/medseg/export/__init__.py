"""Clinical outputs of a segmentation: DICOM SEG, RTSTRUCT, meshes, volumes, overlays, report.

Every writer takes a label map ``Volume`` on the source image's grid (values 0..K) and
a mapping label value -> name, writes atomically and refuses to overwrite unless
``overwrite=True``:

* :func:`write_dicom_seg` / :func:`read_dicom_seg` - DICOM SEG referencing the source series
* :func:`write_rtstruct` / :func:`read_rtstruct` - RT Structure Set on the source series
* :func:`write_label_meshes`, :func:`label_mesh`, :func:`write_mesh` - STL / OBJ / PLY surfaces in LPS mm
* :func:`label_statistics`, :func:`write_volumes_csv`, :func:`write_volumes_json` - volumes in mL
  with the source's study / series UIDs (:class:`SourceUids`);
  :func:`write_cohort_volumes` - one row per case
* :data:`ALGORITHM_TYPES` - how the segments were made, as the SEG and RTSTRUCT declare it
* :func:`write_overlay`, :func:`render_overlay_png` - contour montage PNG
* :func:`write_report` - one self-contained HTML file per case
* :func:`write_cohort_index` - ``index.html`` of a whole output folder: a row per case with its
  status, volumes, overlay thumbnail and report link

Names are imported lazily (PEP 562) so that ``import medseg.export`` stays cheap for the
CLI; highdicom, trimesh and matplotlib load only when a writer is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medseg.export.algorithm import ALGORITHM_TYPES, AlgorithmType
    from medseg.export.codes import Segment, SegmentCode, segment_code, segment_color, segments_for_label
    from medseg.export.dicom_seg import read_dicom_seg, write_dicom_seg
    from medseg.export.dicom_source import SourceSeries, match_source_series
    from medseg.export.index import build_cohort_index_html, write_cohort_index
    from medseg.export.mesh import MeshOptions, label_mesh, label_meshes, write_label_meshes, write_mesh
    from medseg.export.overlay import render_overlay_png, write_overlay
    from medseg.export.report import build_report_html, write_report
    from medseg.export.rtstruct import read_rtstruct, write_rtstruct
    from medseg.export.volumes import (
        LabelStats,
        SourceUids,
        label_statistics,
        write_cohort_volumes,
        write_volumes_csv,
        write_volumes_json,
    )

_WHERE = {
    "ALGORITHM_TYPES": "algorithm",
    "AlgorithmType": "algorithm",
    "Segment": "codes",
    "SegmentCode": "codes",
    "segment_code": "codes",
    "segment_color": "codes",
    "segments_for_label": "codes",
    "read_dicom_seg": "dicom_seg",
    "write_dicom_seg": "dicom_seg",
    "SourceSeries": "dicom_source",
    "match_source_series": "dicom_source",
    "build_cohort_index_html": "index",
    "write_cohort_index": "index",
    "MeshOptions": "mesh",
    "label_mesh": "mesh",
    "label_meshes": "mesh",
    "write_label_meshes": "mesh",
    "write_mesh": "mesh",
    "render_overlay_png": "overlay",
    "write_overlay": "overlay",
    "build_report_html": "report",
    "write_report": "report",
    "read_rtstruct": "rtstruct",
    "write_rtstruct": "rtstruct",
    "LabelStats": "volumes",
    "SourceUids": "volumes",
    "label_statistics": "volumes",
    "write_cohort_volumes": "volumes",
    "write_volumes_csv": "volumes",
    "write_volumes_json": "volumes",
}

__all__ = [
    "ALGORITHM_TYPES",
    "AlgorithmType",
    "LabelStats",
    "MeshOptions",
    "Segment",
    "SegmentCode",
    "SourceSeries",
    "SourceUids",
    "build_cohort_index_html",
    "build_report_html",
    "label_mesh",
    "label_meshes",
    "label_statistics",
    "match_source_series",
    "read_dicom_seg",
    "read_rtstruct",
    "render_overlay_png",
    "segment_code",
    "segment_color",
    "segments_for_label",
    "write_cohort_index",
    "write_cohort_volumes",
    "write_dicom_seg",
    "write_label_meshes",
    "write_mesh",
    "write_overlay",
    "write_report",
    "write_rtstruct",
    "write_volumes_csv",
    "write_volumes_json",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'medseg.export' has no attribute '{name}'")
    return getattr(importlib.import_module(f"medseg.export.{module}"), name)
