"""Segment names, DICOM codes and display colours shared by every export.

A label map carries integers; clinical formats need each segment named (a free-text
label), coded (SNOMED CT concepts, so that a PACS or an AI pipeline can tell the liver
from the spleen without parsing text) and coloured consistently across the DICOM SEG,
RTSTRUCT, meshes, overlays and the HTML report.

Codes come from pydicom's dictionaries (``pydicom.sr.codedict.codes``: DICOM PS3.16
CID 7150 "Segmentation Property Categories", CID 7151 "Segmentation Property Types",
CID 244 "Laterality"). Left/right organs use the generic organ concept plus a
laterality *modifier* (SCT 7771000 Left, 24028007 Right), as DICOM SEG and dcmqi /
3D Slicer do: SNOMED has no pre-coordinated "right kidney" concept in CID 7151.

Prostate zones (Meyer et al.: PZ, TZ, DPU, AFS):

* PZ: SCT 279706003 "Peripheral zone of the prostate"
* TZ: SCT 399384005 "Transition zone of the prostate"
* AFS: SCT 717025007 "Anterior fibromuscular stroma of prostate"
* DPU (distal prostatic urethra): SNOMED has no concept for the *distal* part; we use
  SCT 71553001 "Prostatic urethra" and keep "distal prostatic urethra" in the label.

A name not in the table gets category and type SCT 85756007 "Tissue" with the name as
the segment label, so the file stays valid and the name is never lost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume

__all__ = [
    "Segment",
    "SegmentCode",
    "label_values",
    "numbered_region_masks",
    "region_segments",
    "segment_code",
    "segment_color",
    "segments_for_label",
]

_SCT = codes.SCT
ANATOMICAL_STRUCTURE: Code = codes.cid7150.AnatomicalStructure  # SCT 91723000
TISSUE: Code = codes.cid7150.Tissue  # SCT 85756007
LEFT: Code = codes.cid244.Left  # SCT 7771000
RIGHT: Code = codes.cid244.Right  # SCT 24028007


@dataclass(frozen=True)
class SegmentCode:
    """How one segment is coded in DICOM: category, type and optional laterality modifier."""

    category: Code
    type: Code
    modifier: Code | None = None
    known: bool = True  # False when the generic "Tissue" fallback was used

    def describe(self) -> str:
        text = f"{self.type.scheme_designator} {self.type.value} {self.type.meaning}"
        if self.modifier is not None:
            text += f" ({self.modifier.meaning})"
        return text


def _organ(type_code: Code, modifier: Code | None = None) -> SegmentCode:
    return SegmentCode(ANATOMICAL_STRUCTURE, type_code, modifier)


# Keys are normalised names (see _normalise); several spellings map to one code.
_TABLE: dict[str, SegmentCode] = {}


def _add(names: Sequence[str], code: SegmentCode) -> None:
    for name in names:
        _TABLE[_normalise(name)] = code


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _add_paired(names: Sequence[str], type_code: Code) -> None:
    """An organ with a left and a right: bare name, 'left X', 'X_left', 'X_l' (TotalSegmentator)."""
    _add(names, _organ(type_code))
    for side, code, short in (("left", LEFT, "l"), ("right", RIGHT, "r")):
        spellings = []
        for n in names:
            spellings += [f"{side} {n}", f"{n} {side}", f"{n} {short}"]
        _add(spellings, _organ(type_code, code))


# Prostate (seed 000)
_add(["prostate", "prostate gland", "whole gland", "wg"], _organ(_SCT.Prostate))
_add(["pz", "peripheral zone", "peripheral zone of the prostate"], _organ(_SCT.PeripheralZoneOfTheProstate))
_add(["tz", "transition zone", "transition zone of the prostate"], _organ(_SCT.TransitionZoneOfTheProstate))
_add(
    ["dpu", "distal prostatic urethra", "prostatic urethra"],
    _organ(_SCT.ProstaticUrethra),  # no SNOMED concept for the distal part; see module docstring
)
_add(["urethra"], _organ(_SCT.Urethra))
_add(
    ["afs", "afms", "anterior fibromuscular stroma", "anterior fibromuscular stroma of prostate"],
    _organ(_SCT.AnteriorFibromuscularStromaOfProstate),
)
_add(["seminal vesicle", "seminal vesicles"], _organ(_SCT.SeminalVesicle))
# Abdomen (seed 002, CHAOS, TotalSegmentator-style names)
_add(["liver"], _organ(_SCT.Liver))
_add(["spleen"], _organ(_SCT.Spleen))
_add(["pancreas"], _organ(_SCT.Pancreas))
_add(["gallbladder", "gall bladder"], _organ(_SCT.Gallbladder))
_add(["stomach"], _organ(_SCT.Stomach))
_add(["esophagus", "oesophagus"], _organ(_SCT.Esophagus))
_add(["duodenum"], _organ(_SCT.Duodenum))
_add(["small intestine", "small bowel"], _organ(_SCT.SmallIntestine))
_add(["colon"], _organ(_SCT.Colon))
_add(["rectum"], _organ(_SCT.Rectum))
_add(["urinary bladder", "bladder"], _organ(_SCT.Bladder))
_add(["aorta"], _organ(_SCT.Aorta))
_add(["inferior vena cava", "ivc", "vena cava inferior"], _organ(_SCT.InferiorVenaCava))
_add(["portal vein", "portal vein and splenic vein"], _organ(_SCT.PortalVein))
_add(["heart"], _organ(_SCT.Heart))
_add(["hippocampus"], _organ(_SCT.Hippocampus))
_add_paired(["kidney"], _SCT.Kidney)
_add_paired(["adrenal gland", "adrenal"], _SCT.AdrenalGland)
_add_paired(["lung"], _SCT.Lung)


def segment_code(name: str) -> SegmentCode:
    """The DICOM codes for a segment name; unknown names get the generic "Tissue" code."""
    found = _TABLE.get(_normalise(name))
    if found is not None:
        return found
    return SegmentCode(TISSUE, TISSUE, None, known=False)


# Colour-blind-friendly first colours (Okabe-Ito), then a deterministic golden-angle hue walk.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (153, 153, 153),
)


def segment_color(value: int) -> tuple[int, int, int]:
    """Default RGB (0-255) display colour of label ``value`` (stable across outputs)."""
    if 1 <= value <= len(_PALETTE):
        return _PALETTE[value - 1]
    import colorsys

    hue = (value * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.9)
    return (round(r * 255), round(g * 255), round(b * 255))


@dataclass(frozen=True)
class Segment:
    """One label value of a label map, with its name, codes and colour."""

    value: int
    name: str
    code: SegmentCode
    color: tuple[int, int, int]


def label_values(label: Volume) -> list[int]:
    """Sorted foreground values (> 0) present in a label map; checks that it is one."""
    arr = label.array
    if arr.dtype.kind == "b":
        return [1] if bool(arr.any()) else []
    if arr.dtype.kind not in "iuf":
        raise InputError(None, "label map has a non-numeric data type", found=str(arr.dtype))
    values: NDArray[Any] = np.unique(arr)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise InputError(
            None,
            "label map holds non-integer values",
            expected="integer labels 0..K (a probability map must be thresholded first)",
            found=f"values such as {values[values != np.round(values)][:3].tolist()}",
        )
    if values.size and values[0] < 0:
        raise InputError(
            None, "label map holds negative values", expected="labels 0..K", found=str(values[0])
        )
    return [int(v) for v in values if v > 0]


def segments_for_label(
    label: Volume,
    segment_names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[int]] | None = None,
    *,
    include_absent: bool = False,
) -> list[Segment]:
    """Describe the segments of a label map, one per label value present (sorted).

    ``segment_names`` maps label value -> name (e.g. ``{1: "PZ", 2: "TZ"}``); with None the
    names are "label 1", "label 2", ... . A value present in the map but missing from
    ``segment_names`` raises :class:`ConfigError` (the names and the model disagree).
    ``include_absent`` also lists named values with no voxels (for tables).
    """
    present = label_values(label)
    names = {int(k): str(v) for k, v in (segment_names or {}).items()}
    if segment_names is not None:
        missing = [v for v in present if v not in names]
        if missing:
            raise ConfigError(
                f"label values {missing} are present in the label map but have no name; "
                f"names were given for {sorted(names)}"
            )
        bad = [k for k in names if k <= 0]
        if bad:
            raise ConfigError(f"segment names must be for label values >= 1, found keys {bad}")
    values = sorted(set(present) | (set(names) if include_absent else set()))
    segments = []
    for value in values:
        name = names.get(value, f"label {value}")
        rgb = tuple(int(c) for c in colors[value]) if colors and value in colors else segment_color(value)
        if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb):
            raise ConfigError(f"colour for label {value} must be three integers 0-255, found {rgb}")
        segments.append(Segment(value, name, segment_code(name), (rgb[0], rgb[1], rgb[2])))
    return segments


def numbered_region_masks(
    label: Volume, region_masks: Mapping[str, Any], where: object, *, include_empty: bool = False
) -> dict[int, tuple[str, NDArray[np.bool_]]]:
    """A region model's masks numbered 1..R in region order, the non-empty ones only unless
    ``include_empty``, each checked to lie on ``label``'s grid (``where`` names the output in
    the error). A region keeps its number whether or not the others are empty."""
    out: dict[int, tuple[str, NDArray[np.bool_]]] = {}
    for i, (name, m) in enumerate(region_masks.items()):
        mask = np.asarray(m, dtype=bool)
        if mask.shape != label.shape:
            raise GeometryError(
                f"{where}: region mask '{name}' of shape {mask.shape} is not on the label map's grid {label.shape}"
            )
        if include_empty or mask.any():
            out[i + 1] = (str(name), mask)
    return out


def region_segments(
    label: Volume,
    region_masks: Mapping[str, Any],
    colors: Mapping[int, Sequence[int]] | None,
    where: object,
) -> tuple[list[Segment], dict[int, NDArray[np.bool_]]]:
    """Segments (values 1..R in region order) and their masks, for a DICOM SEG or RTSTRUCT
    holding one, possibly overlapping, segment per region.

    Every region is a segment, an empty one too (described, without frames or contours, as
    DICOM allows), so segment / ROI number r is region r in every case of a cohort, as in
    region_volumes.csv and ``regions/``. None at all when every region is empty: a SEG or
    RTSTRUCT needs some foreground."""
    kept = numbered_region_masks(label, region_masks, where, include_empty=True)
    if not any(mask.any() for _, mask in kept.values()):
        return [], {}
    empty_map = label.with_array(np.zeros(label.shape, dtype=np.uint8))
    names = {k: name for k, (name, _) in kept.items()}
    segments = segments_for_label(empty_map, names, colors, include_absent=True)
    return segments, {k: mask for k, (_, mask) in kept.items()}
