"""Write an evaluation to disk: per-case CSV, summary JSON, box plots (PNG) and an HTML page.

With object metrics, ``objects.csv`` lists every connected object of both sides (centre in
world LPS mm, volume in mL, best IoU, matched or not): the missed lesions and the false
positives, one per row.

Everything goes into one output folder that appears atomically (built in a temporary
sibling, then renamed), so a crash never leaves a half-written report.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.evaluation.evaluate import EvaluationResult, describe
from medseg.evaluation.metrics import LOWER_IS_BETTER, METRIC_TITLES, MM_METRICS
from medseg.io.atomic import atomic_dir

CASES_CSV = "cases.csv"
OBJECTS_CSV = "objects.csv"
SUMMARY_JSON = "summary.json"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    cases_csv: Path
    summary_json: Path
    report_html: Path
    plots: tuple[Path, ...]
    objects_csv: Path | None = None  # only with object metrics


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def write_cases_csv(result: EvaluationResult, path: Path) -> None:
    rows = result.rows()
    _write_csv(rows, list(rows[0]) if rows else ["case", "status"], path)


def write_objects_csv(result: EvaluationResult, path: Path) -> None:
    """One row per connected object of every scored case (``EvaluationResult.object_rows``)."""
    rows = result.object_rows()
    head = ["case", "class", "label", "side", "object", "voxels", "volume_ml"]
    head += ["centre_x_mm", "centre_y_mm", "centre_z_mm", "best_iou", "matched"]
    _write_csv(rows, head, path)


def _write_csv(rows: list[dict[str, Any]], fieldnames: list[str], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def boxplot_png(result: EvaluationResult, metric: str) -> bytes:
    """One box per class for ``metric`` (NaNs left out, their count in the label)."""
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data: list[list[float]] = []
    names: list[str] = []
    if metric == "miou":
        values = [c.miou for c in result.scored_cases]
        data.append([v for v in values if math.isfinite(v)])
        names.append(f"all classes\n(n={len(data[-1])})")
    else:
        for lab, cname in result.labels.items():
            values = result.column(metric, lab)
            finite = [v for v in values if math.isfinite(v)]
            n_nan = len(values) - len(finite)
            data.append(finite)
            names.append(f"{cname}\n(n={len(finite)}" + (f", {n_nan} NaN)" if n_nan else ")"))
    fig = Figure(figsize=(max(3.0, 1.4 * len(data) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    title = METRIC_TITLES.get(metric, metric)
    ax.set_title(title + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(v: float | None, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.2f}" if metric in MM_METRICS else f"{v:.3f}"


def render_html(result: EvaluationResult, summary: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    """A self-contained HTML page (plots embedded) with the summary table and flagged cases."""
    esc = html.escape
    metrics = list(result.config.class_metrics)
    head = "".join(f"<th>{esc(METRIC_TITLES.get(m, m))}</th>" for m in metrics)
    body_rows = []
    for cname, stats in summary["per_class"].items():
        cells = []
        for m in metrics:
            s = stats[m]
            nan_note = f", {s['n_nan']} NaN" if s["n_nan"] else ""
            cells.append(
                f"<td>{_fmt(s['mean'], m)} ± {_fmt(s['std'], m)}<br><small>median "
                f"{_fmt(s['median'], m)}{nan_note}</small></td>"
            )
        body_rows.append(f"<tr><th>{esc(cname)} ({stats['label']})</th>{''.join(cells)}</tr>")
    miou_line = ""
    if "miou" in summary["case_level"]:
        s = summary["case_level"]["miou"]
        miou_line = (
            f"<p>Mean IoU over classes (background included, per case): "
            f"{_fmt(s['mean'], 'miou')} ± {_fmt(s['std'], 'miou')} (median {_fmt(s['median'], 'miou')})</p>"
        )
    issues = []
    for name in summary["missing_predictions"]:
        issues.append(f"<li>{esc(name)}: no prediction, scored as an empty prediction</li>")
    for name, msg in summary["failed_cases"].items():
        issues.append(f"<li>{esc(name)}: not scored: {esc(msg)}</li>")
    for name in summary["resampled_cases"]:
        issues.append(
            f"<li>{esc(name)}: prediction resampled onto the reference grid (nearest neighbour)</li>"
        )
    for name in summary["predictions_without_reference"]:
        issues.append(f"<li>{esc(name)}: prediction without reference, not scored</li>")
    flagged = [(r["case"], r["flags"]) for r in result.rows() if r["flags"]]
    for name, flags in flagged:
        issues.append(f"<li>{esc(name)}: empty-mask rule applied to {esc(flags)}</li>")
    images = "".join(
        f'<figure><img alt="{esc(m)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
        for m, png in plots.items()
    )
    opts = summary["options"]
    object_line, objects_file = "", ""
    if result.config.object_metrics:
        seps = [result.labels.get(v, str(v)) for v in opts["separators"]]
        iou = opts["object_iou"]
        rule = (
            f"IoU &gt; {iou}"
            if iou is not None
            else "any overlap (IoU &gt; 0), IoU &gt; 0.5 for regions between separators"
        )
        object_line = (
            "<p>Objects: connected components of each class (26-connected)"
            + (f"; for {esc(', '.join(seps))}, the regions between them (6-connected)" if seps else "")
            + f"; a predicted and a reference object match at {rule}.</p>"
        )
        objects_file = f"; every object: <code>{OBJECTS_CSV}</code>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medseg evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}}figure{{display:inline-block;margin:4px}}</style>
</head><body>
<h1>Segmentation evaluation</h1>
<p>Prediction: <code>{esc(summary["prediction"])}</code><br>Reference: <code>{esc(summary["reference"])}</code><br>
{summary["n_scored"]} of {summary["n_cases"]} cases scored. Empty-mask rule: <b>{esc(opts["empty_rule"])}</b>;
NSD tolerance {opts["nsd_tolerance_mm"]} mm. Distances in mm. Mean ± sample SD, NaN values left out.</p>
{miou_line}{object_line}
<table><tr><th>class</th>{head}</tr>{"".join(body_rows)}</table>
<h2>Flagged cases</h2><ul>{"".join(issues) or "<li>none</li>"}</ul>
<h2>Distributions</h2>{images}
<p>Per-case values: <code>{CASES_CSV}</code>; statistics: <code>{SUMMARY_JSON}</code>{objects_file}.</p>
</body></html>
"""


def write_report(result: EvaluationResult, folder: str | Path, *, overwrite: bool = False) -> ReportFiles:
    """Write cases.csv, summary.json, plots/<metric>.png and report.html into ``folder``."""
    target = Path(folder)
    summary = result.summary()
    plots = {m: boxplot_png(result, m) for m in result.config.metrics}
    with atomic_dir(target, overwrite=overwrite) as tmp:
        write_cases_csv(result, tmp / CASES_CSV)
        if result.config.object_metrics:
            write_objects_csv(result, tmp / OBJECTS_CSV)
        (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
        (tmp / PLOTS_DIR).mkdir()
        for metric, png in plots.items():
            (tmp / PLOTS_DIR / f"{metric}.png").write_bytes(png)
        (tmp / REPORT_HTML).write_text(render_html(result, summary, plots), encoding="utf-8")
    return ReportFiles(
        target,
        target / CASES_CSV,
        target / SUMMARY_JSON,
        target / REPORT_HTML,
        tuple(target / PLOTS_DIR / f"{m}.png" for m in plots),
        target / OBJECTS_CSV if result.config.object_metrics else None,
    )


__all__ = [
    "ReportFiles",
    "boxplot_png",
    "describe",
    "render_html",
    "write_cases_csv",
    "write_objects_csv",
    "write_report",
]
