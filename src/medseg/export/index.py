"""One HTML page for a whole output folder of `medseg predict`: a row per case.

``OUT/index.html`` lists every case of the folder in natural order with its status (ok,
failed with the first line of its error, or partly written), its per-label volumes (from
the case's ``volumes.csv``), its overlay as a thumbnail (the case's own ``overlay.png``,
linked by relative path, not re-rendered), a region model's region volumes (from its
``region_volumes.csv``, in ``region/<name>`` columns after the labels: regions may overlap),
a link to its ``report.html`` and the flags the case's tables show (empty labels, nothing
segmented, formats not written, the warnings its prediction logged), with the model
section once (the same table as each report's, :func:`medseg.export.report.model_table`).

Like ``cohort_volumes.csv`` it is rebuilt from what is on disk (the ``predictions*.json``
summaries of every run and SLURM shard, and the case folders), so it covers the cases of
earlier runs and of the other shards. The page is self-contained (inline CSS, no script,
no network request; images are the case folders' own PNGs) and every text in it is escaped,
case names included (they come from file names). Like the reports, it shows no patient name,
ID or birth date, nor the DICOM UIDs: only the case names the caller's files gave.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import medseg
from medseg.errors import InputError
from medseg.export.volumes import REGION_VOLUMES_CSV
from medseg.io.atomic import write_text_atomic
from medseg.io.png import natural_key

__all__ = ["INDEX_HTML", "CaseRow", "build_cohort_index_html", "cohort_rows", "write_cohort_index"]

log = logging.getLogger(__name__)

INDEX_HTML = "index.html"
# The per-case files the page reads or links (names as medseg.export.case lays them out).
_REPORT = "report.html"
_OVERLAY = "overlay.png"
_VOLUMES = "volumes.csv"
# A DICOM UID (PS3.5 9.1: digits and dots; here 5 or more components, so that no version or
# volume number matches, or a 2.25 UUID-derived one), as an error names the candidate series it
# lists: the page shows none (a de-identified run's failed case would otherwise show the
# original series' UIDs).
_UID = re.compile(r"(?<![\w.])(?:[0-2](?:\.(?:0|[1-9][0-9]*)){4,}|2\.25\.[0-9]{10,})(?!\w|\.[0-9])")
_UID_SHOWN = "[UID]"

_INDEX_CSS = """
main{max-width:none}
td.status-ok{color:#1b7a3a;font-weight:600}
td.status-failed{color:#b42318;font-weight:600}
td.status-partly{color:#a15c00;font-weight:600}
img.thumb{max-width:220px;max-height:140px;height:auto;border:1px solid #e3e6eb;background:#000}
.flag{display:inline-block;background:#fff4e5;color:#7a4100;border-radius:3px;padding:0 5px;margin:1px 2px;font-size:12px}
details.flag summary{cursor:pointer}
details.flag ul{margin:2px 0 2px 16px;padding:0;max-width:420px;overflow-wrap:anywhere}
.err{color:#5b6472;font-size:12px;font-weight:400;max-width:420px;overflow-wrap:anywhere}
"""


@dataclass
class CaseRow:
    """What the index shows of one case (``status``: "ok", "failed" or "partly written")."""

    case_id: str
    status: str
    error: str = ""  # first line of the case's error ("" when ok)
    volumes: dict[int, tuple[str, float, int]] = field(default_factory=dict)  # value -> (name, mL, voxels)
    has_volumes: bool = False
    report: str | None = None  # relative link from the output folder, None when absent
    overlay: str | None = None
    flags: list[str] = field(default_factory=list)
    regions: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (number, mL)
    warnings: list[str] = field(default_factory=list)  # logged while it was predicted


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _link(case_id: str, name: str) -> str:
    """Relative URL of ``OUT/<case>/<name>``: a case name may hold '#', '?', '%' or spaces."""
    return f"{quote(case_id, safe='')}/{name}"


def _summaries(out: Path) -> tuple[dict[str, dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
    """The case entries of every ``predictions*.json`` in ``out`` (an ok entry wins over a
    failed one of another summary: a re-run or another shard segmented it) and the model
    description of each summary. An unreadable summary is skipped with a warning."""
    entries: dict[str, dict[str, Any]] = {}
    models: list[tuple[str, dict[str, Any]]] = []
    for summary in sorted(out.glob("predictions*.json")):
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            cases = [c for c in data["cases"] if isinstance(c, dict) and "case_id" in c]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable (%s); its cases are not in %s", summary, exc, INDEX_HTML)
            continue
        if isinstance(data.get("model_info"), dict):
            models.append((summary.name, data["model_info"]))
        for case in cases:
            case_id = str(case["case_id"])
            if case_id not in entries or (case.get("ok") and not entries[case_id].get("ok")):
                entries[case_id] = case
    return entries, models


def _read_volumes(path: Path) -> dict[int, tuple[str, float, int]] | None:
    """A per-case volumes.csv as label value -> (name, mL, voxels); None when it is not one."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"label", "name", "volume_ml", "voxel_count"} <= set(reader.fieldnames or []):
                log.warning("%s is not a medseg volume table; left out of %s", path, INDEX_HTML)
                return None
            return {
                int(r["label"]): (r["name"], float(r["volume_ml"]), int(r["voxel_count"])) for r in reader
            }
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); left out of %s", path, exc, INDEX_HTML)
        return None


def _read_region_volumes(path: Path) -> dict[str, tuple[int, float]] | None:
    """A per-case region_volumes.csv as region name -> (number, mL); None when it is not one."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"label", "name", "volume_ml"} <= set(reader.fieldnames or []):
                log.warning("%s is not a medseg region volume table; left out of %s", path, INDEX_HTML)
                return None
            return {r["name"]: (int(r["label"]), float(r["volume_ml"])) for r in reader}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); left out of %s", path, exc, INDEX_HTML)
        return None


def _missing_outputs(out: Path, case_id: str, formats: Sequence[str]) -> list[str]:
    """The formats a summary lists for ``case_id`` that are no longer on disk (deleted, moved)."""
    from medseg.export.case import FORMATS, case_targets

    known = [f for f in formats if f in FORMATS]
    targets = case_targets(case_id, out, known)
    return [f for f, p in targets.items() if not p.exists()]


def cohort_rows(out_dir: str | Path) -> list[CaseRow]:
    """One :class:`CaseRow` per case of the output folder, in natural order.

    The cases are those the folder's ``predictions*.json`` summaries list and the case
    folders holding a report, an overlay or a volume table (e.g. written by `medseg export`).
    A case is "failed" when its summary entry says so and nothing of it is on disk, "partly
    written" when it failed with some formats written, or when its summary lists outputs that
    are gone, and "ok" otherwise. A failed case shows only the volume table, overlay and report
    its failed prediction lists (not those an earlier prediction left in its folder).
    """
    out = Path(out_dir)
    entries, _ = _summaries(out)
    names = set(entries)
    for name in (_REPORT, _OVERLAY, _VOLUMES):
        names |= {p.parent.name for p in out.glob(f"*/{name}") if p.is_file()}
    rows = []
    for case_id in sorted(names, key=natural_key):
        folder = out / case_id
        entry = entries.get(case_id)
        volumes = _read_volumes(folder / _VOLUMES) if (folder / _VOLUMES).is_file() else None
        if entry is None and volumes is None and not any((folder / n).is_file() for n in (_REPORT, _OVERLAY)):
            continue  # only a table of someone else's (not a medseg volume table) in a subfolder
        row = CaseRow(case_id, "ok")
        # A failed case shows only what its failed prediction wrote (or kept): a volume table,
        # overlay or report left by an earlier prediction is not its, as in cohort_volumes.csv.
        shown = {"volumes", "overlay", "report"}
        if entry is not None:
            outputs = entry.get("outputs") or {}
            outputs = list(outputs) if isinstance(outputs, dict) else []
            error = str(entry.get("error") or "")
            row.error = _UID.sub(_UID_SHOWN, error.splitlines()[0]) if error.strip() else ""
            warnings = entry.get("warnings") or []
            row.warnings = (
                [_UID.sub(_UID_SHOWN, str(w)) for w in warnings] if isinstance(warnings, list) else []
            )
            missing = _missing_outputs(out, case_id, outputs)
            on_disk = [f for f in outputs if f not in missing]
            if not entry.get("ok"):
                row.status = "partly written" if on_disk else "failed"
                shown &= set(on_disk)
                if entry.get("internal_error"):
                    row.flags.append("internal error (a bug to report)")
                not_written = entry.get("not_written") or {}
                if isinstance(not_written, dict) and not_written:
                    row.flags.append("not written: " + ", ".join(str(f) for f in not_written))
            elif missing:
                row.status = "partly written"
                row.error = "listed in the summary but missing: " + ", ".join(missing)
        else:
            row.flags.append("not in a predict summary")
        if volumes is not None and "volumes" in shown:
            row.volumes, row.has_volumes = volumes, True
            empty = [name for name, _, voxels in volumes.values() if voxels == 0]
            if len(empty) == len(volumes):  # also a table without rows
                row.flags.append("nothing segmented")
            elif empty:
                row.flags.append("empty: " + ", ".join(empty))
            if (folder / REGION_VOLUMES_CSV).is_file():
                row.regions = _read_region_volumes(folder / REGION_VOLUMES_CSV) or {}
        if (folder / _REPORT).is_file() and "report" in shown:
            row.report = _link(case_id, _REPORT)
        if (folder / _OVERLAY).is_file() and "overlay" in shown:
            row.overlay = _link(case_id, _OVERLAY)
        rows.append(row)
    return rows


def _flags_cell(row: CaseRow) -> str:
    """The flags, then the case's warnings: their count, opened to their texts (no script)."""
    cell = "".join(f'<span class="flag">{_e(f)}</span>' for f in row.flags)
    if row.warnings:
        n = len(row.warnings)
        items = "".join(f"<li>{_e(w)}</li>" for w in row.warnings)
        cell += (
            f'<details class="flag" title="{_e(chr(10).join(row.warnings))}"><summary>{n} '
            f"warning{'s' if n != 1 else ''}</summary><ul>{items}</ul></details>"
        )
    return f"<td>{cell}</td>"


def _status_cell(row: CaseRow) -> str:
    css = {"ok": "status-ok", "failed": "status-failed"}.get(row.status, "status-partly")
    error = f'<div class="err">{_e(row.error)}</div>' if row.error else ""
    return f'<td class="{css}">{_e(row.status)}{error}</td>'


def _models_html(models: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The model section once; a folder whose summaries name different models shows each."""
    from medseg.export.report import model_table  # loads the mesh and overlay writers: only here

    distinct: dict[str, tuple[list[str], Mapping[str, Any]]] = {}
    for name, info in models:
        key = json.dumps(info, sort_keys=True, default=str)
        distinct.setdefault(key, ([], info))[0].append(name)
    if not distinct:
        return model_table(None)
    if len(distinct) == 1:
        return model_table(next(iter(distinct.values()))[1])
    return "".join(f"<h3>{_e(', '.join(names))}</h3>{model_table(info)}" for names, info in distinct.values())


def build_cohort_index_html(out_dir: str | Path) -> str:
    """The index page of an output folder as one HTML string (see :func:`write_cohort_index`)."""
    from medseg.export.report import CSS

    out = Path(out_dir)
    rows = cohort_rows(out)
    _, models = _summaries(out)
    labels: dict[int, str] = {}
    for row in rows:
        for value, (name, _, _) in row.volumes.items():
            labels.setdefault(value, name)
    order = sorted(labels)
    region_number: dict[str, int] = {}  # region name -> its number where first seen
    for row in rows:
        for name, (number, _) in row.regions.items():
            region_number.setdefault(name, number)
    region_order = sorted(region_number, key=lambda n: (region_number[n], n))
    thumbs = any(r.overlay for r in rows)
    head = (
        "<tr><th>#</th><th>Case</th><th>Status</th>"
        + ("<th>Overlay</th>" if thumbs else "")
        + "".join(f'<th class="num">{_e(labels[v])} (mL)</th>' for v in order)
        + "".join(f'<th class="num">region/{_e(n)} (mL)</th>' for n in region_order)
        + "<th>Flags</th><th>Report</th></tr>"
    )
    body = ""
    for i, row in enumerate(rows, start=1):
        cells = f"<td class='num'>{i}</td><td>{_e(row.case_id)}</td>{_status_cell(row)}"
        if thumbs:
            cells += (
                f'<td><a href="{_e(row.overlay)}"><img class="thumb" loading="lazy" '
                f'alt="overlay of {_e(row.case_id)}" src="{_e(row.overlay)}"></a></td>'
                if row.overlay
                else "<td>–</td>"
            )
        for value in order:
            if value in row.volumes:
                cells += f"<td class='num'>{row.volumes[value][1]:.2f}</td>"
            else:  # no table (failed, not asked for): unknown; a label of another model: not in it
                cells += "<td class='num'>–</td>"
        for name in region_order:  # no region table, or a region of another model: unknown
            known = name in row.regions
            cells += f"<td class='num'>{row.regions[name][1]:.2f}</td>" if known else "<td class='num'>–</td>"
        cells += _flags_cell(row)
        cells += f'<td><a href="{_e(row.report)}">report</a></td>' if row.report else "<td>–</td>"
        body += f'<tr id="case-{i}">{cells}</tr>'
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "failed", "partly written")}
    counted = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"Segmentation cohort – {len(rows)} case{'s' if len(rows) != 1 else ''}"
    table = f"<table>{head}{body}</table>" if rows else '<p class="note">No cases in this folder yet.</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'">
<title>{_e(title)}</title>
<style>{CSS}{_INDEX_CSS}</style>
</head>
<body>
<header><h1>{_e(title)}</h1><p>{_e(counted or "no cases")} · medseg {_e(medseg.__version__)} · created {_e(created)} · research use only, not for diagnosis</p></header>
<main>
<section><h2>Cases</h2>{table}
<p class="note">Volumes in mL from each case's volumes.csv (– where the case has none), region/ columns from a region model's region_volumes.csv (regions may overlap); cohort_volumes.csv holds them all. Open a case's warnings for the texts its prediction logged. Click a thumbnail for the full overlay, a report link for the case's report with its 3D view.</p></section>
<section><h2>Model</h2>{_models_html(models)}</section>
</main>
</body>
</html>
"""


def write_cohort_index(out_dir: str | Path) -> Path | None:
    """Write ``out_dir/index.html`` (replacing an earlier one) atomically; returns its path,
    or None (nothing written) when the folder holds no case.

    Built from what is on disk (:func:`cohort_rows`), so it covers every run and SLURM shard
    that wrote into the folder; run again after adding cases.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(out, "is not a folder", expected="an output folder of medseg predict")
    if not cohort_rows(out):
        return None
    target = out / INDEX_HTML
    write_text_atomic(target, build_cohort_index_html(out), overwrite=True)
    log.debug("wrote the cohort index to %s", target)  # callers name it (predict, export-index)
    return target
