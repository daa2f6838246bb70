"""Evaluation: metrics as pure functions of arrays and spacing, and an evaluator over files.

``metrics`` holds the formulas and the documented empty-mask rules; ``evaluate`` matches
prediction and reference files by case name and scores them; ``compare`` scores several
methods against one reference; ``report`` writes the per-case CSV, summary JSON, box plots,
reference-vs-prediction overlays and HTML page.
"""

from __future__ import annotations

from medseg.evaluation.compare import ComparisonResult, compare, parse_methods
from medseg.evaluation.evaluate import (
    CaseResult,
    EvaluationConfig,
    EvaluationResult,
    evaluate,
    evaluate_volumes,
    match_cases,
    match_images,
    parse_labels,
)
from medseg.evaluation.metrics import (
    ALL_METRICS,
    CLASS_METRICS,
    ClassMetrics,
    average_symmetric_surface_distance,
    class_metrics,
    confusion_matrix,
    dice,
    hausdorff_distance,
    hd95,
    iou,
    label_metrics,
    mean_iou,
    normalized_surface_dice,
    precision,
    recall,
    region_dice,
    relative_volume_difference,
    specificity,
    surface_distances,
    uw_madison_score,
)
from medseg.evaluation.report import ReportFiles, write_comparison_report, write_report

__all__ = [
    "ALL_METRICS",
    "CLASS_METRICS",
    "CaseResult",
    "ClassMetrics",
    "ComparisonResult",
    "EvaluationConfig",
    "EvaluationResult",
    "ReportFiles",
    "average_symmetric_surface_distance",
    "class_metrics",
    "compare",
    "confusion_matrix",
    "dice",
    "evaluate",
    "evaluate_volumes",
    "hausdorff_distance",
    "hd95",
    "iou",
    "label_metrics",
    "match_cases",
    "match_images",
    "mean_iou",
    "normalized_surface_dice",
    "parse_labels",
    "parse_methods",
    "precision",
    "recall",
    "region_dice",
    "relative_volume_difference",
    "specificity",
    "surface_distances",
    "uw_madison_score",
    "write_comparison_report",
    "write_report",
]
