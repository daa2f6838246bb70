"""How the segments were made, as both DICOM formats declare it.

DICOM SEG's Segment Algorithm Type (PS3.3 C.8.20.2) and RTSTRUCT's ROI Generation Algorithm
(C.8.8.5) take the same three defined terms: AUTOMATIC (a model's prediction), SEMIAUTOMATIC
(an algorithm a person guided or corrected) and MANUAL (drawn by a person). The writers take one type
for every segment or one per label value (a converted SEG or RTSTRUCT keeps each segment's
own).

AUTOMATIC and SEMIAUTOMATIC segments also say *which* algorithm made them (:class:`AlgorithmId`:
name, version, family). A SEG must (Segment Algorithm Name, type 1C); an RTSTRUCT may (ROI
Generation Description and ROI Derivation Algorithm Identification Sequence, type 3). medseg
names itself only for what its models predicted: a converted SEG or RTSTRUCT keeps the
identification it declares, another tool's label map is named by the caller, and MANUAL
segments name none (no algorithm made them). Kept apart from :mod:`medseg.export.codes` so that configuration objects need not
import pydicom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


# ----------------------------------------------------------------- which algorithm made them
# CID 7162 "Surface Processing Algorithm Families": the Algorithm Family Code of a SEG segment
# (and of an RTSTRUCT ROI's ROI Derivation Algorithm Identification). (code value, scheme, meaning)
ALGORITHM_FAMILIES: dict[str, tuple[str, str, str]] = {
    "artificial intelligence": ("123110", "DCM", "Artificial Intelligence"),
    "neighborhood analysis": ("123101", "DCM", "Neighborhood Analysis"),
    "adaptive filtering": ("123102", "DCM", "Adaptive Filtering"),
    "edge detection": ("123103", "DCM", "Edge Detection"),
    "morphological operations": ("123104", "DCM", "Morphological Operations"),
    "histogram analysis": ("123105", "DCM", "Histogram Analysis"),
    "multi-scale/resolution filtering": ("123106", "DCM", "Multi-Scale/Resolution Filtering"),
    "cluster analysis": ("123107", "DCM", "Cluster Analysis"),
    "multispectral processing": ("123108", "DCM", "Multispectral Processing"),
    "deformable models": ("123111", "DCM", "Deformable Models"),
}
# A SEG that names its algorithm (Segment Algorithm Name) but no family: CID 7162 is extensible,
# and SNOMED's "Unknown" says what medseg knows rather than guessing a family.
UNKNOWN_FAMILY = ("261665006", "SCT", "Unknown")
UNKNOWN_VERSION = "unknown"
_LO = 64  # AlgorithmName, AlgorithmVersion: LO, at most 64 characters, no backslash


@dataclass(frozen=True)
class AlgorithmId:
    """The algorithm that made AUTOMATIC or SEMIAUTOMATIC segments, as DICOM identifies it
    (Algorithm Identification macro, PS3.3 Table 10-19): name, version, family code."""

    name: str
    version: str = UNKNOWN_VERSION
    family: tuple[str, str, str] = ALGORITHM_FAMILIES["artificial intelligence"]

    def describe(self) -> str:
        """``name version`` (the version left out when unknown), for a description or a message."""
        return self.name if self.version == UNKNOWN_VERSION else f"{self.name} {self.version}"


def check_algorithm_text(value: str, what: str) -> str:
    """An algorithm name or version as DICOM holds it (LO), or a ConfigError saying why not."""
    text = str(value).strip()
    if not text or len(text) > _LO or "\\" in text or any(ord(c) < 32 for c in text):
        raise ConfigError(
            f"{what} must be 1 to {_LO} characters without backslash or control characters, found {value!r}"
        )
    return text


def check_algorithm_family(value: str) -> tuple[str, str, str]:
    """A CID 7162 family given by its meaning (any case), or a ConfigError naming the choices."""
    family = ALGORITHM_FAMILIES.get(str(value).strip().lower())
    if family is None:
        raise ConfigError(f"algorithm family must be one of {', '.join(ALGORITHM_FAMILIES)}; found {value!r}")
    return family


def medseg_algorithm() -> AlgorithmId:
    """medseg itself, for the segments its models predict (and only those)."""
    from medseg import __version__

    return AlgorithmId("medseg", __version__, ALGORITHM_FAMILIES["artificial intelligence"])


def algorithms_for(
    kinds: Mapping[int, AlgorithmType], algorithm: AlgorithmId | Mapping[int, AlgorithmId] | None
) -> dict[int, AlgorithmId]:
    """The identification of each label value that an algorithm made (not manual): one for all,
    or per value; values without one are left out (the caller decides whether that is allowed)."""
    made = [v for v, kind in kinds.items() if kind != "manual"]
    if algorithm is None:
        return {}
    if isinstance(algorithm, AlgorithmId):
        return dict.fromkeys(made, algorithm)
    return {v: algorithm[v] for v in made if v in algorithm}


def read_algorithm_id(ident: Any, name: object = "") -> AlgorithmId | None:
    """An Algorithm Identification macro item as a file holds it (a pydicom Dataset, or None),
    or only an algorithm ``name`` (a SEG's Segment Algorithm Name from an older writer); None
    when neither names an algorithm. Version and family missing from the file stay unknown."""
    if ident is not None:
        name = ident.get("AlgorithmName", "") or name
    text = str(name or "").strip()
    if not text:
        return None
    if ident is None:
        return AlgorithmId(text, UNKNOWN_VERSION, UNKNOWN_FAMILY)
    families = ident.get("AlgorithmFamilyCodeSequence")
    family = UNKNOWN_FAMILY
    if families and "CodeValue" in families[0]:
        code = families[0]
        family = (str(code.CodeValue), str(code.CodingSchemeDesignator), str(code.get("CodeMeaning", "")))
    return AlgorithmId(text, str(ident.get("AlgorithmVersion", "") or "").strip() or UNKNOWN_VERSION, family)
