"""Clean-up of predicted label maps: small components, largest component, holes.

Pure functions on integer label arrays (z, y, x); sizes in millilitres need the voxel
spacing (z, y, x, mm). Every function only ever changes a voxel of class ``c`` to
background (removal) or a background voxel to ``c`` (hole filling), so a voxel never
gets a label that no class rule could give it:

* removed components become background (0);
* a hole of class ``c`` is filled with ``c`` only where it is background: a hole
  holding another class (the urethra inside the transition zone) keeps that class.

Connected components come from ``cc3d`` (connected-components-3d); holes from
``scipy.ndimage.binary_fill_holes`` (a hole is background not connected to the
array border; 2D filling works slice by slice along axis 0, the acquisition plane).

:class:`PostprocessingRules` stores per-class choices with a model (JSON, unknown keys
rejected) and :func:`apply_rules` applies them in a fixed order: remove small
components, keep the largest component, fill holes, then (optionally) keep the largest
component of the whole foreground.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import binary_fill_holes

from medseg.config import load_json
from medseg.errors import ConfigError, InputError

__all__ = [
    "ClassRule",
    "PostprocessingRules",
    "apply_rules",
    "component_sizes",
    "fill_holes",
    "keep_largest_component",
    "keep_largest_foreground",
    "read_rules",
    "remove_small_components",
    "write_rules",
]

RULES_SCHEMA_VERSION = 1
Connectivity = Literal[6, 18, 26]
HoleMode = Literal["none", "2d", "3d"]
_CONNECTIVITIES = (6, 18, 26)
_HOLE_MODES = ("none", "2d", "3d")


def _check_labels(labels: NDArray[Any]) -> NDArray[Any]:
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise InputError(None, "label map must be 3D (z, y, x)", found=f"shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise InputError(None, "label map must hold integer labels", found=f"dtype {arr.dtype}")
    return arr


def _check_connectivity(connectivity: int) -> int:
    if connectivity not in _CONNECTIVITIES:
        raise ConfigError(f"connectivity must be 6, 18 or 26, found {connectivity!r}")
    return int(connectivity)


def _classes(labels: NDArray[Any], classes: Iterable[int] | None) -> list[int]:
    present = [int(c) for c in np.unique(labels) if c != 0]
    if classes is None:
        return present
    wanted = {int(c) for c in classes}
    return [c for c in present if c in wanted]


def _voxel_ml(spacing: Sequence[float]) -> float:
    sp = [float(s) for s in spacing]
    if len(sp) != 3 or any(not math.isfinite(s) or s <= 0 for s in sp):
        raise ConfigError(f"spacing must be 3 positive values (z, y, x) in mm, found {list(spacing)}")
    return sp[0] * sp[1] * sp[2] / 1000.0


def component_sizes(
    mask: NDArray[Any], connectivity: int = 26
) -> tuple[NDArray[np.unsignedinteger[Any]], NDArray[np.intp]]:
    """Connected components of a binary mask: (component ids, voxel count per id).

    ``counts[0]`` is the background count; component ``i`` has ``counts[i]`` voxels.
    """
    conn = cast(Connectivity, _check_connectivity(connectivity))
    comps = cc3d.connected_components(np.ascontiguousarray(mask, dtype=bool), connectivity=conn)
    counts = np.bincount(comps.ravel())
    return comps, counts


def remove_small_components(
    labels: NDArray[Any],
    *,
    min_voxels: int | Mapping[int, int] = 0,
    min_ml: float | Mapping[int, float] = 0.0,
    spacing: Sequence[float] | None = None,
    classes: Iterable[int] | None = None,
    connectivity: int = 26,
) -> NDArray[Any]:
    """Set to background every component of a class smaller than the minimum size.

    A component is removed when it has fewer than ``min_voxels`` voxels or a volume
    below ``min_ml`` millilitres (needs ``spacing``). Either may be one number for all
    classes or a mapping class -> minimum (classes absent from it are kept).
    """
    arr = _check_labels(labels)
    out = arr.copy()
    if (isinstance(min_ml, Mapping) and any(v > 0 for v in min_ml.values())) or (
        not isinstance(min_ml, Mapping) and min_ml > 0
    ):
        if spacing is None:
            raise ConfigError("a minimum size in mL needs the voxel spacing (z, y, x) in mm")
        voxel_ml = _voxel_ml(spacing)
    else:
        voxel_ml = 0.0
    for cls in _classes(arr, classes):
        n_min = min_voxels.get(cls, 0) if isinstance(min_voxels, Mapping) else min_voxels
        ml_min = min_ml.get(cls, 0.0) if isinstance(min_ml, Mapping) else min_ml
        threshold = float(n_min)
        if ml_min > 0:
            threshold = max(threshold, ml_min / voxel_ml)
        if threshold <= 1:
            continue
        comps, counts = component_sizes(arr == cls, connectivity)
        small = np.flatnonzero(counts < threshold)
        small = small[small != 0]
        if small.size:
            out[np.isin(comps, small)] = 0
    return out


def keep_largest_component(
    labels: NDArray[Any], *, classes: Iterable[int] | None = None, connectivity: int = 26
) -> NDArray[Any]:
    """Keep only the largest connected component of each class; the rest becomes background.

    Ties keep the component that cc3d numbers first (the first in C order), so the
    result is deterministic.
    """
    arr = _check_labels(labels)
    out = arr.copy()
    for cls in _classes(arr, classes):
        comps, counts = component_sizes(arr == cls, connectivity)
        if len(counts) <= 2:  # background + one component
            continue
        largest = int(np.argmax(counts[1:])) + 1
        out[(comps != 0) & (comps != largest)] = 0
    return out


def keep_largest_foreground(labels: NDArray[Any], *, connectivity: int = 26) -> NDArray[Any]:
    """Keep the largest connected component of the union of all classes (e.g. the whole
    gland), setting every voxel outside it to background; classes inside are kept."""
    arr = _check_labels(labels)
    comps, counts = component_sizes(arr != 0, connectivity)
    if len(counts) <= 2:
        return arr.copy()
    largest = int(np.argmax(counts[1:])) + 1
    out = arr.copy()
    out[(comps != 0) & (comps != largest)] = 0
    return out


def fill_holes(
    labels: NDArray[Any], *, classes: Iterable[int] | None = None, mode: HoleMode = "3d"
) -> NDArray[Any]:
    """Fill holes of each class with that class, where the hole is background.

    ``mode="3d"`` fills cavities enclosed in 3D; ``"2d"`` fills holes in each slice
    (axis 0), which also closes a ring that is open through the slice stack.
    """
    arr = _check_labels(labels)
    if mode not in _HOLE_MODES:
        raise ConfigError(f"hole filling mode must be one of {_HOLE_MODES}, found {mode!r}")
    out = arr.copy()
    if mode == "none":
        return out
    for cls in _classes(arr, classes):
        mask = arr == cls
        if mode == "3d":
            filled = binary_fill_holes(mask)
        else:
            filled = np.zeros_like(mask)
            for z in np.flatnonzero(mask.any(axis=(1, 2))):
                filled[z] = binary_fill_holes(mask[z])
        out[filled & ~mask & (out == 0)] = cls
    return out


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class ClassRule:
    """Clean-up of one class.

    ``min_size_voxels`` / ``min_size_ml``: remove components smaller than either;
    ``keep_largest``: keep only the largest component; ``fill_holes``: "none", "2d" or "3d".
    """

    keep_largest: bool = False
    fill_holes: HoleMode = "none"
    min_size_voxels: int = 0
    min_size_ml: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.keep_largest, bool):
            raise ConfigError(f"keep_largest must be true or false, found {self.keep_largest!r}")
        if self.fill_holes not in _HOLE_MODES:
            raise ConfigError(f"fill_holes must be one of {_HOLE_MODES}, found {self.fill_holes!r}")
        if (
            not isinstance(self.min_size_voxels, int)
            or isinstance(self.min_size_voxels, bool)
            or self.min_size_voxels < 0
        ):
            raise ConfigError(f"min_size_voxels must be an integer >= 0, found {self.min_size_voxels!r}")
        if (
            not isinstance(self.min_size_ml, (int, float))
            or isinstance(self.min_size_ml, bool)
            or not math.isfinite(self.min_size_ml)
            or self.min_size_ml < 0
        ):
            raise ConfigError(f"min_size_ml must be a number >= 0, found {self.min_size_ml!r}")

    @property
    def is_identity(self) -> bool:
        return (
            not self.keep_largest
            and self.fill_holes == "none"
            and self.min_size_voxels == 0
            and self.min_size_ml == 0
        )

    def describe(self) -> str:
        """The rule in words ("keep largest, fill holes 3d"; "none" for a rule that changes nothing)."""
        parts = []
        if self.min_size_voxels:
            parts.append(f"remove < {self.min_size_voxels} voxels")
        if self.min_size_ml:
            parts.append(f"remove < {self.min_size_ml:g} ml")
        if self.keep_largest:
            parts.append("keep largest")
        if self.fill_holes != "none":
            parts.append(f"fill holes {self.fill_holes}")
        return ", ".join(parts) or "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "keep_largest": self.keep_largest,
            "fill_holes": self.fill_holes,
            "min_size_voxels": self.min_size_voxels,
            "min_size_ml": float(self.min_size_ml),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "class rule") -> ClassRule:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a JSON object, found {type(data).__name__}")
        _reject_unknown(data, {f.name for f in fields(cls)}, where)
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class PostprocessingRules:
    """Per-class clean-up rules stored with a model (``postprocessing.json``).

    ``classes`` maps a foreground label value to its :class:`ClassRule`; labels without
    a rule are left as predicted. ``keep_largest_foreground`` keeps only the largest
    component of all classes together (applied last).
    """

    classes: Mapping[int, ClassRule] = field(default_factory=dict)
    connectivity: Connectivity = 26
    keep_largest_foreground: bool = False
    schema_version: int = RULES_SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_connectivity(self.connectivity)
        if not isinstance(self.keep_largest_foreground, bool):
            raise ConfigError(
                f"keep_largest_foreground must be true or false, found {self.keep_largest_foreground!r}"
            )
        if self.schema_version != RULES_SCHEMA_VERSION:
            raise ConfigError(
                f"postprocessing rules schema_version {self.schema_version!r} is not supported "
                f"(this medseg reads version {RULES_SCHEMA_VERSION})"
            )
        clean: dict[int, ClassRule] = {}
        for key, rule in dict(self.classes).items():
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or int(key) <= 0:
                raise ConfigError(f"rules are for foreground label values > 0, found key {key!r}")
            if not isinstance(rule, ClassRule):
                raise ConfigError(f"rule for label {key} must be a ClassRule, found {type(rule).__name__}")
            clean[int(key)] = rule
        object.__setattr__(self, "classes", dict(sorted(clean.items())))

    @classmethod
    def uniform(
        cls,
        labels: Iterable[int],
        rule: ClassRule,
        *,
        connectivity: Connectivity = 26,
        keep_largest_foreground: bool = False,
    ) -> PostprocessingRules:
        """The same rule for every listed label."""
        return cls(
            {int(c): rule for c in labels if int(c) != 0},
            connectivity=connectivity,
            keep_largest_foreground=keep_largest_foreground,
        )

    @property
    def is_identity(self) -> bool:
        """True when applying the rules changes no voxel."""
        return not self.keep_largest_foreground and all(r.is_identity for r in self.classes.values())

    def effective(self) -> PostprocessingRules:
        """The same rules without the parts that change nothing, so that two files acting the
        same compare equal (a class rule that does nothing; the connectivity of no rule)."""
        if self.is_identity:
            return PostprocessingRules()
        return PostprocessingRules(
            {k: r for k, r in self.classes.items() if not r.is_identity},
            connectivity=self.connectivity,
            keep_largest_foreground=self.keep_largest_foreground,
        )

    def describe(self, names: Mapping[int, str] | None = None) -> str:
        """The rules in one line ("none"; "label 1 (liver): keep largest; largest foreground
        component; connectivity 26"), for messages."""
        rules = self.effective()
        if rules.is_identity:
            return "none"
        parts = [
            f"label {k}{f' ({names[k]})' if names and k in names else ''}: {r.describe()}"
            for k, r in rules.classes.items()
        ]
        if rules.keep_largest_foreground:
            parts.append("largest foreground component")
        parts.append(f"connectivity {rules.connectivity}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "connectivity": self.connectivity,
            "keep_largest_foreground": self.keep_largest_foreground,
            "classes": {str(k): r.to_json() for k, r in self.classes.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> PostprocessingRules:
        if not isinstance(data, Mapping):
            raise ConfigError(f"postprocessing rules must be a JSON object, found {type(data).__name__}")
        _reject_unknown(data, {f.name for f in fields(cls)}, "postprocessing rules")
        raw_classes = data.get("classes", {})
        if not isinstance(raw_classes, Mapping):
            raise ConfigError(
                f"'classes' must be an object label -> rule, found {type(raw_classes).__name__}"
            )
        classes: dict[int, ClassRule] = {}
        for key, value in raw_classes.items():
            try:
                label = int(key)
            except (TypeError, ValueError):
                raise ConfigError(f"'classes' keys must be label values, found {key!r}") from None
            classes[label] = ClassRule.from_json(value, f"rule for label {key}")
        return cls(
            classes=classes,
            connectivity=data.get("connectivity", 26),
            keep_largest_foreground=data.get("keep_largest_foreground", False),
            schema_version=data.get("schema_version", RULES_SCHEMA_VERSION),
        )


def _reject_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected only {sorted(known)}")


def apply_rules(
    label_array: NDArray[Any], rules: PostprocessingRules, spacing: Sequence[float] | None = None
) -> NDArray[Any]:
    """Apply ``rules`` to a label map and return a new array (the input is not modified).

    Order per class: remove small components, keep the largest component, fill holes;
    then the largest-foreground rule. ``spacing`` (z, y, x mm) is needed only when a
    rule has a size in mL.
    """
    out = _check_labels(label_array).copy()
    conn = rules.connectivity
    for cls, rule in rules.classes.items():
        if rule.is_identity or not np.any(out == cls):
            continue
        if rule.min_size_voxels or rule.min_size_ml:
            out = remove_small_components(
                out,
                min_voxels=rule.min_size_voxels,
                min_ml=rule.min_size_ml,
                spacing=spacing,
                classes=[cls],
                connectivity=conn,
            )
        if rule.keep_largest:
            out = keep_largest_component(out, classes=[cls], connectivity=conn)
        if rule.fill_holes != "none":
            out = fill_holes(out, classes=[cls], mode=rule.fill_holes)
    if rules.keep_largest_foreground:
        out = keep_largest_foreground(out, connectivity=conn)
    return out


def apply_rules_to_masks(
    masks: NDArray[Any],
    class_order: Sequence[int],
    rules: PostprocessingRules,
    spacing: Sequence[float] | None = None,
) -> NDArray[np.bool_]:
    """Apply ``rules`` to a region model's boolean masks ``(R, *shape)`` (overlaps allowed).

    Region r takes the rule of the label value it is painted with (``class_order[r]``), on its
    own whole mask; ``keep_largest_foreground`` keeps the largest component of the union of
    the regions. Painting the result gives what the rules mean for the label map, and the
    masks, SEG, RTSTRUCT and meshes agree with it.
    """
    if len(masks) != len(class_order):
        raise ConfigError(f"{len(masks)} region masks but {len(class_order)} painting values")
    out = np.asarray(masks, dtype=bool).copy()
    for r, value in enumerate(class_order):
        rule = rules.classes.get(int(value))
        if rule is None or rule.is_identity or not out[r].any():
            continue
        single = PostprocessingRules(classes={1: rule}, connectivity=rules.connectivity)
        out[r] = apply_rules(out[r].astype(np.uint8), single, spacing) == 1
    if rules.keep_largest_foreground and len(out):
        union = np.asarray(out.any(axis=0), dtype=np.uint8)
        out &= keep_largest_foreground(union, connectivity=rules.connectivity).astype(bool)[None]
    return out


def write_rules(rules: PostprocessingRules, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write rules as JSON atomically."""
    from medseg.io.atomic import write_text_atomic

    return write_text_atomic(path, json.dumps(rules.to_json(), indent=2) + "\n", overwrite=overwrite)


def read_rules(path: str | Path) -> PostprocessingRules:
    """Read rules written by :func:`write_rules`; a bad file raises with its path."""
    src = Path(path)
    if not src.is_file():
        raise InputError(src, "not found", expected="a postprocessing rules JSON file")
    data = load_json(src)
    try:
        return PostprocessingRules.from_json(data)
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None
