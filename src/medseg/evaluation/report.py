"""Write an evaluation to disk: per-case CSV, summary JSON, box plots (PNG), reference vs
prediction overlays (PNG) and an HTML page.

Overlays: one PNG per case (the 3 worst and 3 best by Dice when there are more than 6)
with the reference and prediction contours on the axial slice where they disagree most,
drawn by :func:`medseg.export.overlay.render_comparison_png` over the image when one is
given (``image=``, CLI ``--image``), over the label maps alone otherwise. A comparison of
several methods (:func:`write_comparison_report`) puts one panel per method in each PNG.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import GeometryError
from medseg.evaluation.compare import ComparisonResult
from medseg.evaluation.evaluate import (
    CaseResult,
    EvaluationResult,
    case_dice,
    describe,
    load_case_volumes,
    match_images,
)
from medseg.evaluation.metrics import LOWER_IS_BETTER, METRIC_TITLES, MM_METRICS
from medseg.io.atomic import atomic_dir
from medseg.io.png import natural_key

CASES_CSV = "cases.csv"
OBJECTS_CSV = "objects.csv"
SUMMARY_JSON = "summary.json"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
OVERLAYS_DIR = "overlays"
# Up to this many cases get an overlay each; beyond, the worst and best half of it by Dice.
MAX_OVERLAYS = 6


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    cases_csv: Path
    summary_json: Path
    report_html: Path
    plots: tuple[Path, ...]
    objects_csv: Path | None = None  # only with object metrics
    overlays: tuple[Path, ...] = ()


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


def overlay_cases(results: Sequence[EvaluationResult], max_cases: int = MAX_OVERLAYS) -> list[str]:
    """Cases that get an overlay, worst first: every case scored by some method when there
    are at most ``max_cases``, otherwise ``max_cases`` of them by Dice
    (:func:`~medseg.evaluation.evaluate.case_dice`, averaged over the methods): the worst
    half, rounded up, and the best half (``max_cases=1``: the worst case only)."""
    if max_cases <= 0:
        return []
    scores: dict[str, list[float]] = {}
    for res in results:
        for case in res.scored_cases:
            scores.setdefault(case.name, []).append(case_dice(case))
    if len(scores) <= max_cases:  # cases without any foreground (Dice NaN) last
        return sorted(scores, key=lambda n: (_mean_or_inf(scores[n]), natural_key(n)))
    ranked = sorted(
        (n for n in scores if math.isfinite(_mean_or_inf(scores[n]))),
        key=lambda n: (_mean_or_inf(scores[n]), natural_key(n)),
    )
    if len(ranked) <= max_cases:
        return ranked
    worst, best = (max_cases + 1) // 2, max_cases // 2
    return ranked[:worst] + (ranked[-best:] if best else [])


def _mean_or_inf(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf


def overlay_pngs(
    results: Mapping[str, EvaluationResult],
    image: str | Path | Mapping[str, Path] | None = None,
    max_cases: int = MAX_OVERLAYS,
) -> dict[str, bytes]:
    """{case: PNG} of reference vs prediction contours (one panel per method) on the slice
    where they disagree most, for the cases :func:`overlay_cases` picks."""
    from medseg.export.overlay import render_comparison_png
    from medseg.io import read_volume

    chosen = overlay_cases(list(results.values()), max_cases)
    if isinstance(image, Mapping):  # already matched, e.g. a dataset's case list
        images = {name: Path(image[name]) for name in chosen if name in image}
    else:
        images = match_images(image, chosen) if image is not None and chosen else {}
    several = len(results) > 1
    pngs: dict[str, bytes] = {}
    for name in chosen:
        reference = None
        panels = {}
        for method, res in results.items():
            case = next(c for c in res.cases if c.name == name)
            if case.status == "error":
                continue
            ref, pred = load_case_volumes(case)
            if reference is None:
                reference = ref
            score = panel_score(case)
            if case.status == "missing_prediction":
                score = "no prediction, scored empty"
            panels[f"{method if several else 'prediction'} ({score})"] = pred
        if reference is None:
            continue
        scan = None
        if name in images:
            scan = read_volume(images[name])
            if not scan.geometry.is_close(reference.geometry):
                diffs = "; ".join(scan.geometry.differences(reference.geometry))
                raise GeometryError(
                    f"case '{name}': image {images[name]} is not on the reference's grid ({diffs}); "
                    "give the images the references were drawn on"
                )
        pngs[name] = render_comparison_png(reference, panels, scan, dict(results_labels(results)), title=name)
    return pngs


def panel_score(case: CaseResult) -> str:
    """The Dice an overlay panel's title gives: one class's, or the mean over the classes
    present (:func:`~medseg.evaluation.evaluate.case_dice`) said to be one, since the
    table shows only per-class values and a bare "Dice 0.040" matched none of them."""
    dice = case_dice(case)
    if not math.isfinite(dice):
        return "no foreground"
    present = sum(1 for cm in case.per_label.values() if cm.counts.tp + cm.counts.fp + cm.counts.fn > 0)
    return f"Dice {dice:.3f}" if present == 1 else f"mean Dice {dice:.3f} of {present} classes"


def results_labels(results: Mapping[str, EvaluationResult]) -> Mapping[int, str]:
    return next(iter(results.values())).labels


def _overlay_section(overlays: Mapping[str, bytes], with_image: bool, several: bool, every_case: bool) -> str:
    if not overlays:
        return ""
    esc = html.escape
    how = (
        "over the image"
        if with_image
        else "over the label maps alone (no image given: <code>medseg evaluate ... --image IMAGE_OR_FOLDER</code> "
        "draws them over the scan)"
    )
    figures = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{esc(name)}: <code>{OVERLAYS_DIR}/{esc(name)}.png</code></figcaption></figure>"
        for name, png in overlays.items()
    )
    which = "each case (worst first)" if every_case else "the worst and the best cases by Dice (worst first)"
    panels = ", one panel per method" if several else ""
    return (
        f"<h2>Reference vs prediction</h2><p>For {which}{panels}: every class in its label colour, "
        f"the reference outlined solid (its area tinted), the prediction dashed, so a wrong class "
        f"shows as dashes of another colour; {how}, on the axial slice where they disagree most (of those the reference covers); "
        f"the title gives the slice's array index.</p>{figures}"
    )


def _fmt(v: float | None, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.2f}" if metric in MM_METRICS else f"{v:.3f}"


def render_html(
    result: EvaluationResult,
    summary: Mapping[str, Any],
    plots: Mapping[str, bytes],
    overlays: Mapping[str, bytes] | None = None,
    *,
    with_image: bool = False,
    every_case: bool = True,
) -> str:
    """A self-contained HTML page (plots and overlays embedded) with the summary table and flagged cases."""
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
        pooled = summary["case_level"].get("miou_pooled", {}).get("value")
        miou_line = (
            f"<p>Mean IoU over classes (background included, per case): "
            f"{_fmt(s['mean'], 'miou')} ± {_fmt(s['std'], 'miou')} (median {_fmt(s['median'], 'miou')})"
            + (
                f"; pooled over all cases (one confusion matrix, miou_pooled): {_fmt(pooled, 'miou')}"
                if pooled is not None
                else ""
            )
            + "</p>"
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
    return f"""{_page_head("medseg evaluation")}
<h1>Segmentation evaluation</h1>
<p>Prediction: <code>{esc(summary["prediction"])}</code><br>Reference: <code>{esc(summary["reference"])}</code><br>
{summary["n_scored"]} of {summary["n_cases"]} cases scored. Empty-mask rule: <b>{esc(opts["empty_rule"])}</b>;
NSD tolerance {opts["nsd_tolerance_mm"]} mm. Distances in mm. Mean ± sample SD, NaN values left out.</p>
{miou_line}{object_line}
<table><tr><th>class</th>{head}</tr>{"".join(body_rows)}</table>
<h2>Flagged cases</h2><ul>{"".join(issues) or "<li>none</li>"}</ul>
<h2>Distributions</h2>{images}
{_overlay_section(overlays or {}, with_image, several=False, every_case=every_case)}
<p>Per-case values: <code>{CASES_CSV}</code>; statistics: <code>{SUMMARY_JSON}</code>{objects_file}.</p>
</body></html>
"""


def write_report(
    result: EvaluationResult,
    folder: str | Path,
    *,
    overwrite: bool = False,
    image: str | Path | Mapping[str, Path] | None = None,
    max_overlays: int = MAX_OVERLAYS,
) -> ReportFiles:
    """Write cases.csv, summary.json, plots/<metric>.png, overlays/<case>.png and report.html
    into ``folder``. ``image`` (a file, a folder matched by case name, or {case: file}) is
    what the overlays are drawn on; without it they show the label maps alone."""
    target = Path(folder)
    summary = result.summary()
    plots = {m: boxplot_png(result, m) for m in result.config.metrics}
    overlays = overlay_pngs({"prediction": result}, image, max_overlays)
    every_case = len(overlays) == len(result.scored_cases)
    page = render_html(result, summary, plots, overlays, with_image=image is not None, every_case=every_case)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        write_cases_csv(result, tmp / CASES_CSV)
        if result.config.object_metrics:
            write_objects_csv(result, tmp / OBJECTS_CSV)
        (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
        _write_pngs(tmp, plots, overlays)
        (tmp / REPORT_HTML).write_text(page, encoding="utf-8")
    return _report_files(target, plots, overlays, objects=bool(result.config.object_metrics))


def _page_head(title: str) -> str:
    """The opening of both report pages (evaluation, comparison): one style for both."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n'
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\n"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}"
        "figure{display:inline-block;margin:4px}</style>\n</head><body>"
    )


def _report_files(
    target: Path, plots: Mapping[str, bytes], overlays: Mapping[str, bytes], *, objects: bool
) -> ReportFiles:
    return ReportFiles(
        target,
        target / CASES_CSV,
        target / SUMMARY_JSON,
        target / REPORT_HTML,
        tuple(target / PLOTS_DIR / f"{m}.png" for m in plots),
        target / OBJECTS_CSV if objects else None,
        tuple(target / OVERLAYS_DIR / f"{name}.png" for name in overlays),
    )


def _write_pngs(tmp: Path, plots: Mapping[str, bytes], overlays: Mapping[str, bytes]) -> None:
    (tmp / PLOTS_DIR).mkdir()
    for metric, png in plots.items():
        (tmp / PLOTS_DIR / f"{metric}.png").write_bytes(png)
    if overlays:
        (tmp / OVERLAYS_DIR).mkdir()
        for name, png in overlays.items():
            (tmp / OVERLAYS_DIR / f"{name}.png").write_bytes(png)


# --------------------------------------------------------------------------- several methods
def comparison_boxplot_png(comparison: ComparisonResult, metric: str) -> bytes:
    """Boxes of ``metric`` per class, one per method side by side (NaNs left out)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = comparison.methods
    groups: list[tuple[str, list[list[float]]]] = []
    if metric == "miou":
        groups.append(
            ("all classes", [[c.miou for c in r.scored_cases] for r in comparison.results.values()])
        )
    else:
        for lab, cname in comparison.labels.items():
            groups.append((cname, [r.column(metric, lab) for r in comparison.results.values()]))
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(4.0, 0.5 * len(methods) * len(groups) + 2.5), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = [f"C{i % 10}" for i in range(len(methods))]
    for g, (_, per_method) in enumerate(groups):
        for i, values in enumerate(per_method):
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                continue
            # Median and mean in the method's colour too: with one case (a lecturer's single
            # image) the box is a line, and matplotlib's orange median / green mean made every
            # method look like the legend's orange and green ones.
            box = ax.boxplot(
                [finite], positions=[g + 1 + (i - (len(methods) - 1) / 2) * width], widths=width * 0.9,
                showmeans=True, patch_artist=True,
                medianprops={"color": colours[i], "linewidth": 2},
                meanprops={"marker": "^", "markerfacecolor": colours[i], "markeredgecolor": "black"},
            )  # fmt: skip
            for patch in box["boxes"]:
                patch.set_facecolor(colours[i])
                patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(groups) + 1), [name for name, _ in groups], fontsize=8)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(facecolor=c, alpha=0.5, label=m) for c, m in zip(colours, methods, strict=True)],
        fontsize=8,
        loc="best",
    )
    title = METRIC_TITLES.get(metric, metric)
    ax.set_title(title + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _p_value(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def render_comparison_html(
    comparison: ComparisonResult,
    summary: Mapping[str, Any],
    plots: Mapping[str, bytes],
    overlays: Mapping[str, bytes] | None = None,
    *,
    with_image: bool = False,
    every_case: bool = True,
) -> str:
    """One page: per class, one row per method (mean ± SD, median), the paired tests, what
    was flagged per method, the box plots and the overlays."""
    esc = html.escape
    metrics = list(comparison.config.class_metrics)
    head = "".join(f"<th>{esc(METRIC_TITLES.get(m, m))}</th>" for m in metrics)
    rows = []
    for lab, cname in comparison.labels.items():
        for i, method in enumerate(comparison.methods):
            stats = summary["per_method"][method]["per_class"][cname]
            cells = []
            for m in metrics:
                s = stats[m]
                nan_note = f", {s['n_nan']} NaN" if s["n_nan"] else ""
                cells.append(
                    f"<td>{_fmt(s['mean'], m)} ± {_fmt(s['std'], m)}<br><small>median "
                    f"{_fmt(s['median'], m)}, n={s['n']}{nan_note}</small></td>"
                )
            first = f'<th rowspan="{len(comparison.methods)}">{esc(cname)} ({lab})</th>' if i == 0 else ""
            rows.append(f"<tr>{first}<td>{esc(method)}</td>{''.join(cells)}</tr>")
    tests = summary["paired_tests"]
    test_rows = "".join(
        f"<tr><td>{esc(comparison.labels[t['label']])}</td><td>{esc(t['method'])} − {esc(t['baseline'])}</td>"
        f"<td>{t['n']}</td><td>{_fmt(t['median_difference'], 'dice')}</td>"
        f"<td>{_p_value(t['p_value'])}</td><td>{_p_value(t['p_holm'])}</td><td>{esc(t['note'])}</td></tr>"
        for t in tests
    )
    test_part = (
        f"<h2>Paired comparison with {esc(comparison.methods[0])} (Dice)</h2>"
        f"<p>{esc(summary['paired_test_note'])}.</p><table><tr><th>class</th><th>difference</th><th>n</th>"
        f"<th>median difference</th><th>p</th><th>Holm p</th><th>note</th></tr>{test_rows}</table>"
        if tests
        else ""
    )
    issues = []
    for method, info in summary["per_method"].items():
        m = esc(method)
        for name in info["missing_predictions"]:
            issues.append(
                f"<li>{m}: {esc(name)}: no prediction, scored as an empty prediction (a failure)</li>"
            )
        for name, msg in info["failed_cases"].items():
            issues.append(f"<li>{m}: {esc(name)}: not scored: {esc(msg)}</li>")
        for name in info["resampled_cases"]:
            issues.append(f"<li>{m}: {esc(name)}: prediction resampled onto the reference grid</li>")
        for name in info["predictions_without_reference"]:
            issues.append(f"<li>{m}: {esc(name)}: prediction without reference, not scored</li>")
    methods = "".join(
        f"<li>{esc(m)}: <code>{esc(info['prediction'])}</code>, {info['n_scored']} of "
        f"{summary['n_cases']} cases scored</li>"
        for m, info in summary["per_method"].items()
    )
    images = "".join(
        f'<figure><img alt="{esc(m)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
        for m, png in plots.items()
    )
    opts = summary["options"]
    overlay_part = _overlay_section(overlays or {}, with_image, several=True, every_case=every_case)
    return f"""{_page_head("medseg comparison")}
<h1>Segmentation methods compared</h1>
<p>Reference: <code>{esc(summary["reference"])}</code>, {summary["n_cases"]} cases.</p><ul>{methods}</ul>
<p>Missing cases: {esc(summary["missing_cases_rule"])}. Empty-mask rule: <b>{esc(opts["empty_rule"])}</b>;
NSD tolerance {opts["nsd_tolerance_mm"]} mm. Distances in mm. Mean ± sample SD over cases, NaN values left out.</p>
<table><tr><th>class</th><th>method</th>{head}</tr>{"".join(rows)}</table>
{test_part}
<h2>Flagged cases</h2><ul>{"".join(issues) or "<li>none</li>"}</ul>
<h2>Distributions</h2>{images}
{overlay_part}
<p>Per-case values of every method: <code>{CASES_CSV}</code> (column <code>method</code>); statistics:
<code>{SUMMARY_JSON}</code>.</p>
</body></html>
"""


def write_comparison_report(
    comparison: ComparisonResult,
    folder: str | Path,
    *,
    overwrite: bool = False,
    image: str | Path | Mapping[str, Path] | None = None,
    max_overlays: int = MAX_OVERLAYS,
) -> ReportFiles:
    """:func:`write_report` for several methods: cases.csv (and objects.csv) with a ``method``
    column, summary.json per method with the paired tests, grouped box plots, overlays with
    one panel per method."""
    target = Path(folder)
    summary = comparison.summary()
    plots = {m: comparison_boxplot_png(comparison, m) for m in comparison.config.metrics}
    overlays = overlay_pngs(comparison.results, image, max_overlays)
    scored = {c.name for r in comparison.results.values() for c in r.scored_cases}
    page = render_comparison_html(
        comparison,
        summary,
        plots,
        overlays,
        with_image=image is not None,
        every_case=len(overlays) == len(scored),
    )
    objects = bool(comparison.config.object_metrics)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        rows = comparison.rows()
        _write_csv(rows, list(rows[0]) if rows else ["method", "case", "status"], tmp / CASES_CSV)
        if objects:
            head = ["method", "case", "class", "label", "side", "object", "voxels", "volume_ml"]
            head += ["centre_x_mm", "centre_y_mm", "centre_z_mm", "best_iou", "matched"]
            obj_rows = [
                {"method": m, **r} for m, res in comparison.results.items() for r in res.object_rows()
            ]
            _write_csv(obj_rows, head, tmp / OBJECTS_CSV)
        (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
        _write_pngs(tmp, plots, overlays)
        (tmp / REPORT_HTML).write_text(page, encoding="utf-8")
    return _report_files(target, plots, overlays, objects=objects)


__all__ = [
    "MAX_OVERLAYS",
    "ReportFiles",
    "boxplot_png",
    "comparison_boxplot_png",
    "describe",
    "overlay_cases",
    "overlay_pngs",
    "render_comparison_html",
    "render_html",
    "write_cases_csv",
    "write_comparison_report",
    "write_objects_csv",
    "write_report",
]
