"""How the segments were made, as both DICOM formats declare it.

DICOM SEG's Segment Algorithm Type (PS3.3 C.8.20.2) and RTSTRUCT's ROI Generation Algorithm
(C.8.8.5) take the same three defined terms: AUTOMATIC (a model's prediction), SEMIAUTOMATIC
(an algorithm a person guided or corrected) and MANUAL (drawn by a person). The writers take one type
for every segment or one per label value (a converted SEG or RTSTRUCT keeps each segment's
own). Kept apart from :mod:`medseg.export.codes` so that configuration objects need not
import pydicom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from medseg.errors import ConfigError

AlgorithmType = Literal["automatic", "semiautomatic", "manual"]
ALGORITHM_TYPES: tuple[AlgorithmType, ...] = ("automatic", "semiautomatic", "manual")


def check_algorithm_type(value: str) -> AlgorithmType:
    """``value`` (any case) as one of :data:`ALGORITHM_TYPES`, or a ConfigError naming them."""
    lowered = str(value).strip().lower()
    if lowered not in ALGORITHM_TYPES:
        raise ConfigError(f"algorithm type must be one of {', '.join(ALGORITHM_TYPES)}, found {value!r}")
    return lowered


def read_algorithm_type(text: object) -> AlgorithmType | None:
    """A defined term as a file holds it ("MANUAL"), or None for an empty or non-standard value."""
    lowered = str(text or "").strip().lower()
    return lowered if lowered in ALGORITHM_TYPES else None


def algorithm_types_for(
    values: Sequence[int], algorithm_type: AlgorithmType | Mapping[int, AlgorithmType]
) -> dict[int, AlgorithmType]:
    """Each label value's algorithm type: one for all, or per value (values not given: automatic)."""
    if isinstance(algorithm_type, str):
        kind = check_algorithm_type(algorithm_type)
        return dict.fromkeys(values, kind)
    return {v: check_algorithm_type(algorithm_type.get(v, "automatic")) for v in values}
