"""Per-label volume (mL), voxel count, centroid and world extent; CSV and JSON tables.

All positions are DICOM/ITK patient coordinates (LPS, mm). The extent is the tight
axis-aligned world box around the voxels (their full cubes, not only their centres), so
for an oblique grid it is the box a viewer measures in patient space.

Every table also names the DICOM study and series the case was segmented on
(:class:`SourceUids`: StudyInstanceUID and SeriesInstanceUID, empty for a NIfTI or other
non-DICOM image), so that the cohort table joins a PACS export or a clinical spreadsheet.
UIDs identify images, not patients; patient names, IDs and birth dates are never written.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import medseg
from medseg.export.codes import segments_for_label
from medseg.io.atomic import write_text_atomic
from medseg.io.png import natural_key
from medseg.volume import Volume

__all__ = [
    "LabelStats",
    "SourceUids",
    "label_statistics",
    "region_statistics",
    "volumes_to_csv",
    "write_cohort_volumes",
    "write_volumes_csv",
    "write_volumes_json",
]

log = logging.getLogger(__name__)

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class LabelStats:
    """One row of the volumes table. Positions are None for a named label with no voxels."""

    value: int
    name: str
    voxel_count: int
    volume_ml: float
    centroid_lps: Triple | None
    extent_min_lps: Triple | None
    extent_max_lps: Triple | None

    @property
    def extent_size_mm(self) -> Triple | None:
        if self.extent_min_lps is None or self.extent_max_lps is None:
            return None
        lo, hi = self.extent_min_lps, self.extent_max_lps
        return (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])


@dataclass(frozen=True)
class SourceUids:
    """The DICOM study and series a case was segmented on ("" where the image was not DICOM)."""

    study_uid: str = ""
    series_uid: str = ""

    @classmethod
    def of(cls, image: Volume) -> SourceUids:
        """The UIDs medseg's DICOM reader leaves in ``image.meta`` (none for other formats)."""
        return cls(str(image.meta.get("study_uid") or ""), str(image.meta.get("series_uid") or ""))

    def deidentified(self, uid_secret: str | None = None) -> SourceUids:
        """The UIDs that de-identification with ``uid_secret`` gives these: those of the
        de-identified copy of the series, which de-identified DICOM outputs reference."""
        from medseg.io.dicom import deidentified_uid

        return SourceUids(
            deidentified_uid(self.study_uid, uid_secret) if self.study_uid else "",
            deidentified_uid(self.series_uid, uid_secret) if self.series_uid else "",
        )


def _triple(values: Any) -> Triple:
    return (float(values[0]), float(values[1]), float(values[2]))


def label_statistics(label: Volume, segment_names: Mapping[int, str] | None = None) -> list[LabelStats]:
    """Statistics for every label present and every named label (absent ones with 0 voxels)."""
    geometry = label.geometry
    # Half the world extent of one voxel along x, y and z: the sum of the half index steps.
    half = 0.5 * np.abs(geometry.matrix).sum(axis=1)
    rows = []
    for segment in segments_for_label(label, segment_names, include_absent=True):
        index = np.argwhere(label.array == segment.value)
        count = int(index.shape[0])
        if count == 0:
            rows.append(LabelStats(segment.value, segment.name, 0, 0.0, None, None, None))
            continue
        centres = geometry.index_to_world(index)
        rows.append(
            LabelStats(
                value=segment.value,
                name=segment.name,
                voxel_count=count,
                volume_ml=count * geometry.voxel_volume_mm3 / 1000.0,
                centroid_lps=_triple(geometry.index_to_world(index.mean(axis=0))),
                extent_min_lps=_triple(centres.min(axis=0) - half),
                extent_max_lps=_triple(centres.max(axis=0) + half),
            )
        )
    return rows


def region_statistics(image: Volume, masks: Mapping[str, np.ndarray]) -> list[LabelStats]:
    """One row per region of a region-based model (``label`` = region number 1..R, in
    order; ``name`` = region name); regions may overlap, so their volumes may add up to
    more than the foreground's."""
    rows = []
    for i, (name, mask) in enumerate(masks.items()):
        one = label_statistics(image.with_array(np.asarray(mask, dtype=np.uint8)), {1: name})[0]
        rows.append(dataclasses.replace(one, value=i + 1))
    return rows


_CSV_FIELDS = (
    "label",
    "name",
    "voxel_count",
    "volume_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "extent_min_x_mm",
    "extent_min_y_mm",
    "extent_min_z_mm",
    "extent_max_x_mm",
    "extent_max_y_mm",
    "extent_max_z_mm",
    "study_uid",
    "series_uid",
)


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def volumes_to_csv(stats: Sequence[LabelStats], source: SourceUids | None = None) -> str:
    """CSV text, one row per label; coordinates are LPS mm (empty for absent labels).

    Every row repeats the ``source`` series' study and series UIDs (empty when not given),
    so the table joins other tables on its own and the cohort table can be rebuilt from it.
    """
    src = source or SourceUids()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for s in stats:
        centroid = s.centroid_lps or (None, None, None)
        lo = s.extent_min_lps or (None, None, None)
        hi = s.extent_max_lps or (None, None, None)
        writer.writerow(
            [s.value, s.name, s.voxel_count, f"{s.volume_ml:.4f}"]
            + [_fmt(v, 2) for v in (*centroid, *lo, *hi)]
            + [src.study_uid, src.series_uid]
        )
    return buffer.getvalue()


def write_volumes_csv(
    stats: Sequence[LabelStats],
    path: str | Path,
    *,
    source: SourceUids | None = None,
    overwrite: bool = False,
) -> Path:
    write_text_atomic(path, volumes_to_csv(stats, source), overwrite=overwrite)
    return Path(path)


def write_volumes_json(
    stats: Sequence[LabelStats],
    path: str | Path,
    *,
    label: Volume | None = None,
    source: SourceUids | None = None,
    overwrite: bool = False,
) -> Path:
    """JSON with units, the source series' UIDs and the label grid (when given) next to the per-label rows."""
    document: dict[str, Any] = {
        "medseg_version": medseg.__version__,
        "source": asdict(source or SourceUids()),
        "coordinate_system": "LPS",
        "units": {"volume": "mL", "position": "mm"},
        "labels": [
            {**asdict(s), "extent_size_mm": list(s.extent_size_mm) if s.extent_size_mm else None}
            for s in stats
        ],
    }
    if label is not None:
        document["grid"] = label.geometry.to_dict()
    write_text_atomic(path, json.dumps(document, indent=2) + "\n", overwrite=overwrite)
    return Path(path)


COHORT_CSV = "cohort_volumes.csv"
REGION_VOLUMES_CSV = "region_volumes.csv"  # next to volumes.csv, for region-based models


def table_source(table: str | Path) -> SourceUids:
    """The study and series UIDs a per-case ``volumes.csv`` names (empty when it names none or
    cannot be read)."""
    path = Path(table)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, ValueError):
        return SourceUids()
    return _case_source(path, rows)


def _case_source(table: Path, rows: Sequence[Mapping[str, str]]) -> SourceUids:
    """The source UIDs of a per-case table: its rows, else (a table without rows) its JSON twin.

    Tables written before medseg recorded the UIDs have neither column: empty UIDs.
    """
    if rows:
        first = rows[0]
        return SourceUids(first.get("study_uid") or "", first.get("series_uid") or "")
    twin = table.with_suffix(".json")
    try:
        source = json.loads(twin.read_text(encoding="utf-8")).get("source") or {}
        return SourceUids(str(source.get("study_uid") or ""), str(source.get("series_uid") or ""))
    except (OSError, ValueError, AttributeError):
        return SourceUids()


def _failed_cases(out: Path) -> dict[str, bool]:
    """Cases that ``predict``'s summaries (``predictions*.json``, one per SLURM shard) list as
    failed -> whether that failed prediction wrote (or kept) their volume table, i.e. lists
    ``volumes`` among its outputs (a case whose DICOM outputs alone could not be written).
    A case that another summary lists as ok (a re-run or another shard segmented it) is not
    failed, as in ``OUT/index.html`` (:func:`medseg.export.index.cohort_rows`). A summary that
    cannot be read is skipped with a warning."""
    failed: dict[str, bool] = {}
    segmented: set[str] = set()
    for summary in sorted(out.glob("predictions*.json")):
        try:
            cases = json.loads(summary.read_text(encoding="utf-8"))["cases"]
            for c in cases:
                case = str(c["case_id"])
                if c.get("ok"):
                    segmented.add(case)
                else:
                    failed[case] = failed.get(case, False) or "volumes" in (c.get("outputs") or {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable (%s); its failed cases are not in %s", summary, exc, COHORT_CSV)
    return {case: wrote for case, wrote in sorted(failed.items()) if case not in segmented}


def _region_volumes(path: Path) -> dict[str, tuple[int, str]] | None:
    """A per-case region_volumes.csv as region name -> (number, mL); None when there is none."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"label", "name", "volume_ml"} <= set(reader.fieldnames or []):
            log.warning("%s is not a medseg region volume table; left out of %s", path, COHORT_CSV)
            return None
        return {row["name"]: (int(row["label"]), row["volume_ml"]) for row in reader}


def write_cohort_volumes(out_dir: str | Path, case_ids: Sequence[str] | None = None) -> Path | None:
    """One row per case, one ``<name>_ml`` column per label: the volume table of a whole cohort.

    Built from the per-case ``<case>/volumes.csv`` files under ``out_dir`` (of ``case_ids``, or
    every case folder that has one), so that it covers the cases of earlier runs and of the
    other shards of a SLURM array as well; written atomically to ``out_dir/cohort_volumes.csv``
    (replacing an earlier one). The columns ``study_uid`` and ``series_uid``, after the label volumes, name the DICOM series each case was segmented on (empty for non-DICOM images and for
    per-case tables of medseg versions that did not record them). ``status`` comes from the
    ``predict`` summaries in ``out_dir`` where they list a case as failed: ``partial`` for a
    failed case whose failed prediction wrote its volume table (some other format asked for
    could not be written, e.g. a DICOM SEG of a series without UIDs: its volumes are shown),
    ``failed`` for one without (its volume cells are empty, not 0, also when a volume table of
    an earlier prediction is left in its folder), so a failed case is neither silently missing
    from the cohort nor shown as ``ok``. Every other case with a volume table is ``ok``. A region model's cases (``<case>/region_volumes.csv``)
    add one ``region/<name>_ml`` column per region after those, in region order: regions may
    overlap, so they come last and apart from the label columns, which add up to the
    foreground; a case without a region table has them empty. Returns None when no case has a
    volume table.
    """
    out = Path(out_dir)
    if case_ids is None:
        files = sorted(out.glob("*/volumes.csv"))
    else:
        files = [out / c / "volumes.csv" for c in sorted(case_ids) if (out / c / "volumes.csv").is_file()]
    if not files:
        return None
    columns: dict[int, str] = {}
    rows: list[tuple[str, SourceUids, dict[int, str]]] = []
    region_columns: dict[str, int] = {}  # region name -> its number (1..R) where first seen
    region_rows: dict[str, dict[str, str]] = {}
    for path in files:
        volumes: dict[int, str] = {}
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"label", "name", "volume_ml"} <= set(reader.fieldnames or []):
                log.warning("%s is not a medseg volume table; left out of %s", path, COHORT_CSV)
                continue
            table = list(reader)
        for row in table:
            value = int(row["label"])
            name = row["name"]
            if columns.setdefault(value, name) != name:
                log.warning("%s: label %d is '%s' here but '%s' elsewhere", path, value, name, columns[value])
            volumes[value] = row["volume_ml"]
        rows.append((path.parent.name, _case_source(path, table), volumes))
        regions = _region_volumes(path.with_name(REGION_VOLUMES_CSV))
        if regions is not None:
            region_rows[path.parent.name] = {name: ml for name, (_, ml) in regions.items()}
            for name, (number, _) in regions.items():
                region_columns.setdefault(name, number)
    if not rows:
        return None
    region_order = sorted(region_columns, key=lambda n: (region_columns[n], n))
    order = sorted(columns)
    wanted = None if case_ids is None else set(case_ids)
    failures = _failed_cases(out)
    # A failed case's table is shown only when its failed prediction wrote it (partial).
    rows = [row for row in rows if failures.get(row[0], True)]
    done = {case for case, _, _ in rows}
    failed = [c for c in failures if c not in done and (wanted is None or c in wanted)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The volumes come right after the case (as before these columns existed), so scripts
    # that read columns 2.. as mL keep working; status and UIDs are appended.
    writer.writerow(
        [
            "case",
            *(f"{columns[v]}_ml" for v in order),
            "status",
            "study_uid",
            "series_uid",
            *(f"region/{name}_ml" for name in region_order),
        ]
    )
    table_rows = [
        # A label missing from a case's table: 0 mL (the per-case table lists every named label).
        [
            case,
            *(volumes.get(v, "0.0000") for v in order),
            "partial" if case in failures else "ok",
            source.study_uid,
            source.series_uid,
        ]
        # A region missing (no region table, or one of another model): unknown, so empty.
        + [region_rows.get(case, {}).get(name, "") for name in region_order]
        for case, source, volumes in rows
    ]
    table_rows += [
        [case, *([""] * len(order)), "failed", "", "", *([""] * len(region_order))] for case in failed
    ]
    for line in sorted(table_rows, key=lambda r: natural_key(r[0])):
        writer.writerow(line)
    target = out / COHORT_CSV
    write_text_atomic(target, buffer.getvalue(), overwrite=True)
    return target
