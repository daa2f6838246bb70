"""Post-processing of predicted label maps (largest component, hole filling, per-class rules)."""

from medseg.postprocessing.labels import (
    ClassRule,
    PostprocessingRules,
    apply_rules,
    fill_holes,
    keep_largest_component,
    keep_largest_foreground,
    read_rules,
    remove_small_components,
    write_rules,
)

__all__ = [
    "ClassRule",
    "PostprocessingRules",
    "apply_rules",
    "fill_holes",
    "keep_largest_component",
    "keep_largest_foreground",
    "read_rules",
    "remove_small_components",
    "write_rules",
]
