"""All outputs of one segmented case, and `medseg export` for a label map that already exists.

:func:`write_case_outputs` is the one writer behind both `medseg predict` (a label map the
model just made) and :func:`export_label` (a label map made elsewhere: an earlier prediction,
another tool such as TotalSegmentator, a manual correction in 3D Slicer, or a DICOM SEG).
Both lay their outputs out the same way (:func:`case_targets`)::

    OUT/<case>.nii.gz | .nrrd | .mha           label map (nifti / nrrd / mha)
    OUT/<case>/seg.dcm, rtstruct.dcm           DICOM SEG, RTSTRUCT on the source series
    OUT/<case>/meshes/<value>_<name>.stl       surfaces in LPS mm (mesh)
    OUT/<case>/volumes.csv (+ .json)           volume in mL per label, source study/series UIDs (volumes)
    OUT/<case>/region_volumes.csv              volume in mL per region (volumes, region models)
    OUT/<case>/overlay.png, report.html        contour montage, self-contained report
    OUT/<case>/probabilities/                  per-class (or per-region) probability maps (predict only)
    OUT/<case>/regions/<n>_<name>.nii.gz       binary mask per region, overlaps kept (region models)

A region model numbers its regions 1..R in the model's order everywhere: the files under
``regions/`` and ``probabilities/``, the ``label`` column of region_volumes.csv, the mesh
names (of the regions not empty) and the DICOM SEG segment / RTSTRUCT ROI numbers (an empty
region is a segment without frames, an ROI without contours).

:func:`export_label` never resamples silently: the label map must lie on the image's grid
(within the tolerances of :meth:`VolumeGeometry.differences`), or ``resample=True`` puts it
there with nearest-neighbour interpolation (labels are never interpolated linearly).

The DICOM outputs declare how the segments were made, and by which algorithm
(:mod:`medseg.export.algorithm`). A prediction is AUTOMATIC, made by medseg (always, for
`medseg predict`). `medseg export` writes what ``algorithm_type`` says ("manual" for a
label map a person drew, "semiautomatic" for a corrected prediction, "automatic") for every
segment; without it each segment of a DICOM SEG or RTSTRUCT label file keeps the type that
file declares (a format conversion does not change how a segment was made), and any other
label map is AUTOMATIC. The algorithm of automatic and semiautomatic segments is
``algorithm_name`` / ``algorithm_version`` when given, else the identification the SEG or
RTSTRUCT label file declares, or the record `medseg baseline` writes beside its label map
(``<label>.baseline.json``: "medseg baseline <method>", SEMIAUTOMATIC for the seeded methods,
region growing and the watershed from seeds or drawn markers, AUTOMATIC for the others); medseg
never names itself for a label map it did not just predict. A DICOM SEG must name that algorithm, so when nothing does (a NIfTI without
``algorithm_name``) :func:`export_label` refuses the dicom-seg output instead of writing
"medseg" or "unknown" into a file a radiologist reads as the source of the contours.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.export.algorithm import (
    UNKNOWN_VERSION,
    AlgorithmId,
    AlgorithmType,
    algorithm_types_for,
    algorithms_for,
    check_algorithm_family,
    check_algorithm_text,
    check_algorithm_type,
)
from medseg.export.volumes import REGION_VOLUMES_CSV
from medseg.io import IMAGE_2D_SUFFIXES, write_volume
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.io.dicom import Pseudonym

log = logging.getLogger(__name__)

FORMATS = (
    "nifti",
    "nrrd",
    "mha",
    "probabilities",
    "regions",
    "dicom-seg",
    "rtstruct",
    "mesh",
    "volumes",
    "overlay",
    "report",
)
LABEL_SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}
DICOM_FORMATS = ("dicom-seg", "rtstruct")
# What `medseg export` can write: everything but the probabilities and region masks, which
# only a model has.
EXPORT_FORMATS = tuple(f for f in FORMATS if f not in ("probabilities", "regions"))
DEFAULT_EXPORT_FORMATS = ("volumes", "overlay", "report")
_CASE_TARGETS = {
    "probabilities": "probabilities",
    "regions": "regions",
    "dicom-seg": "seg.dcm",
    "rtstruct": "rtstruct.dcm",
    "mesh": "meshes",
    "volumes": "volumes.csv",
    "overlay": "overlay.png",
    "report": "report.html",
}
MAX_LABELS = 1000  # more distinct values than any atlas: an image given as the label map
_LABEL_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def check_formats(formats: Sequence[str] | str, allowed: Sequence[str] = FORMATS) -> tuple[str, ...]:
    """The formats as a tuple, or a ConfigError naming the unknown ones and the choices.

    A string is read as the CLI's ``--format`` value, comma-separated ("nifti,report").
    """
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in allowed]
    if unknown or not formats:
        hints = [f"{_likely_format(f, allowed)} for '{f}'" for f in unknown if _likely_format(f, allowed)]
        raise ConfigError(
            f"unknown output format(s) {unknown or '(none)'}; choose from {', '.join(allowed)}"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
        )
    return tuple(dict.fromkeys(formats))


# File types users name for a format (``-f stl`` for meshes, ``-f csv`` for volumes).
_FORMAT_ALIASES = {
    "stl": "mesh",
    "obj": "mesh",
    "ply": "mesh",
    "meshes": "mesh",
    "csv": "volumes",
    "seg": "dicom-seg",
    "html": "report",
    "png": "overlay",
    "nii": "nifti",
    "nii.gz": "nifti",
}


def _likely_format(name: str, allowed: Sequence[str]) -> str | None:
    """The format a mistyped name most likely means (``dicom_seg``, ``rt-struct``, ``stl``), or None."""
    import difflib

    key = name.strip().lower()
    alias = _FORMAT_ALIASES.get(key)
    if alias in allowed:
        return alias
    squeezed = {f.replace("-", ""): f for f in allowed}
    bare = key.replace("-", "").replace("_", "").replace(" ", "")
    if bare in squeezed:
        return squeezed[bare]
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.75)
    return close[0] if close else None


def check_mesh_suffix(suffix: str) -> str:
    """``suffix`` (".stl", ".obj" or ".ply") or a ConfigError naming the choices."""
    from medseg.export.mesh import MESH_SUFFIXES

    if suffix not in MESH_SUFFIXES:
        raise ConfigError(
            f"mesh format must be one of {', '.join(x.lstrip('.') for x in MESH_SUFFIXES)}, "
            f"found {suffix.lstrip('.')!r}"
        )
    return suffix


def case_targets(case_id: str, out: Path, formats: Sequence[str]) -> dict[str, Path]:
    """Where each requested format of ``case_id`` goes under ``out`` (layout in the module docstring)."""
    targets: dict[str, Path] = {}
    for fmt in formats:
        if fmt in LABEL_SUFFIX:
            targets[fmt] = out / f"{case_id}{LABEL_SUFFIX[fmt]}"
        else:
            targets[fmt] = out / case_id / _CASE_TARGETS[fmt]
    return targets


def safe_name(name: str) -> str:
    """A label or class name as a file-name part (letters, digits, ``_.-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "label"


def region_file_name(index: int, name: str) -> str:
    """File of region ``index`` (its 0-based position in the model) under ``regions/`` and a
    region model's ``probabilities/``: numbered 1..R, as in region_volumes.csv, the DICOM SEG's
    segment numbers, the RTSTRUCT's ROI numbers and the mesh names. (Earlier outputs were
    numbered 0..R-1; :func:`medseg.evaluation.evaluate.region_mask_files` still reads them.)"""
    return f"{index + 1}_{safe_name(name)}.nii.gz"


def unwritable_dicom_formats(
    series: Any, formats: Iterable[str], *, pseudonym: Pseudonym | None = None
) -> dict[str, str]:
    """The DICOM formats among ``formats`` that ``series`` cannot give (format -> why).

    A SEG or RTSTRUCT of images without UIDs (blanked by an anonymiser, as in TotalSegmentator's
    example CT) cannot be written, nor one de-identified with ``pseudonym`` auto of a series
    without a PatientID (the pseudonym is derived from it), or with a map that lacks its ID. The other formats need no UIDs and are still written by
    `medseg predict` (checked before the network runs) and `medseg export`; when nothing else
    is asked for, the InputError naming a file, the UIDs expected and those found is raised.
    """
    from medseg.export.dicom_source import require_referenceable
    from medseg.io.dicom import PSEUDONYM_AUTO

    asked = list(formats)
    dicom = [f for f in asked if f in DICOM_FORMATS]
    if not dicom:
        return {}
    try:
        for ds, path in zip(series.datasets, series.files, strict=True):
            require_referenceable(ds, path)
        patient_id = str(series.datasets[0].get("PatientID", "")).strip()
        if pseudonym == PSEUDONYM_AUTO and not patient_id:
            raise InputError(
                series.files[0],
                "has no PatientID to derive --pseudonym auto from",
                expected="a PatientID, or --pseudonym NAME",
                found="an empty PatientID",
            )
        if isinstance(pseudonym, Mapping) and patient_id not in pseudonym:
            raise InputError(
                series.files[0],
                "has a PatientID that --pseudonym-map lacks (not shown: it identifies the patient)",
                expected="a row for it in the map",
                found="none",
            )
    except InputError as exc:
        if len(dicom) == len(asked):
            raise
        return {fmt: str(exc) for fmt in dicom}
    return {}


def write_case_outputs(
    image: Volume,
    label: Volume,
    names: Mapping[int, str],
    targets: Mapping[str, Path],
    *,
    series: Any = None,
    probabilities: np.ndarray | None = None,
    probability_names: Mapping[int, str] | None = None,
    regions: Mapping[str, np.ndarray] | None = None,
    model_info: Mapping[str, Any] | None = None,
    case_id: str,
    mesh_suffix: str = ".stl",
    algorithm_type: AlgorithmType | Mapping[int, AlgorithmType] = "automatic",
    algorithm: AlgorithmId | Mapping[int, AlgorithmId] | None = None,
    generation_descriptions: Mapping[int, str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    deidentify: bool = False,
    pseudonym: Pseudonym = "ANONYMOUS",
    uid_secret: str | None = None,
    warnings: Callable[[], Sequence[str]] | None = None,
) -> dict[str, Path]:
    """Write ``label`` (on ``image``'s grid) in every format of ``targets``; returns what was written.

    ``series`` is the source DICOM series (needed for dicom-seg / rtstruct), ``probabilities``
    the (C, *shape) class probabilities (for "probabilities"; ``probability_names`` names
    their channels, default background and ``names``), ``regions`` a region model's masks
    by region name (for "regions"; with them the DICOM SEG holds one, possibly overlapping,
    segment per region and "volumes" adds region_volumes.csv). ``algorithm_type`` is how the
    segments were made (one for all, or per label value), as the SEG and RTSTRUCT declare
    it; ``algorithm`` which algorithm made the automatic and semiautomatic ones (None: medseg,
    for a prediction of its own; a mapping names them per value and never falls back to
    medseg), ``generation_descriptions`` an input RTSTRUCT's ROI Generation Descriptions to
    carry. The volume tables name the study and series ``image`` was read from (its DICOM UIDs;
    empty for other formats). DICOM outputs of an empty label map are skipped with a warning
    (a SEG or RTSTRUCT cannot be empty). ``progress`` shows a bar over several meshes.

    ``deidentify`` de-identifies the DICOM SEG and RTSTRUCT (patient name and ID become
    ``pseudonym``; UIDs are mapped with ``uid_secret`` as `medseg convert --deidentify` maps
    them) and makes the volume tables name the de-identified study and series UIDs. The other
    outputs hold no patient name, ID, birth date or UID; their file names are the case id.

    ``warnings`` gives the case's warnings so far (``medseg predict``'s collector); the report,
    written last, lists them, including those of the formats written before it.
    """
    written: dict[str, Path] = {}
    present = bool(np.any(label.array > 0))
    stats = None
    for fmt, target in targets.items():
        if fmt in LABEL_SUFFIX:
            written[fmt] = write_volume(label, target, overwrite=overwrite)
        elif fmt == "probabilities":
            if probabilities is None:
                raise ConfigError("the probabilities output needs the class probabilities of a model")
            from medseg.io.atomic import atomic_dir

            with atomic_dir(target, overwrite=overwrite) as tmp:
                channel_names = probability_names or {0: "background", **names}
                for k, name in channel_names.items():
                    # a region model's channel k is region k: named as under regions/ (1..R)
                    file_name = (
                        region_file_name(k, name) if regions is not None else f"{k}_{safe_name(name)}.nii.gz"
                    )
                    write_volume(image.with_array(probabilities[k]), tmp / file_name)
            written[fmt] = target
        elif fmt == "regions":
            if regions is None:
                raise ConfigError("the regions output needs the region masks of a region-based model")
            from medseg.io.atomic import atomic_dir

            with atomic_dir(target, overwrite=overwrite) as tmp:
                for k, (name, mask) in enumerate(regions.items()):
                    mask_volume = image.with_array(np.asarray(mask, dtype=np.uint8))
                    write_volume(mask_volume, tmp / region_file_name(k, name))
            written[fmt] = target
        elif fmt in DICOM_FORMATS:
            if not present:
                log.warning("%s: nothing segmented; no %s written", case_id, fmt)
                continue
            if series is None:
                raise ConfigError(f"{fmt} output needs the source DICOM series")
            if fmt == "dicom-seg":
                from medseg.export.dicom_seg import write_dicom_seg

                written[fmt] = write_dicom_seg(
                    label,
                    series,
                    target,
                    names,
                    algorithm_type=algorithm_type,
                    algorithm=algorithm,
                    overwrite=overwrite,
                    region_masks=regions,  # a region model: one segment per region, overlaps kept
                    deidentify=deidentify,
                    pseudonym=pseudonym,
                    uid_secret=uid_secret,
                )
            else:
                from medseg.export.rtstruct import write_rtstruct

                written[fmt] = write_rtstruct(
                    label,
                    series,
                    target,
                    names,
                    algorithm_type=algorithm_type,
                    algorithm=algorithm,
                    generation_descriptions=generation_descriptions,
                    overwrite=overwrite,
                    region_masks=regions,  # a region model: one ROI per region, overlaps kept
                    deidentify=deidentify,
                    pseudonym=pseudonym,
                    uid_secret=uid_secret,
                )
        elif fmt == "mesh":
            if not present:
                log.warning("%s: nothing segmented; no meshes written", case_id)
                continue
            from medseg.export.mesh import write_label_meshes
            from medseg.io.atomic import atomic_dir

            with atomic_dir(target, overwrite=overwrite) as tmp:  # the folder appears complete or not at all
                # a region model: one mesh per region (overlaps included)
                meshes = write_label_meshes(
                    label,
                    tmp,
                    names,
                    suffix=mesh_suffix,
                    region_masks=regions,
                    progress=progress,
                    shown_as=target,  # warnings name the files where they will be
                )
            log.info("wrote %d meshes to %s", len(meshes), target)
            written[fmt] = target
        elif fmt == "volumes":
            from medseg.export.volumes import (
                SourceUids,
                label_statistics,
                write_volumes_csv,
                write_volumes_json,
            )

            stats = stats or label_statistics(label, names)
            source = SourceUids.of(image)
            if deidentify:
                source = source.deidentified(uid_secret)
            if regions is not None:  # per region too: the painted labels lose the overlaps
                from medseg.export.volumes import region_statistics

                write_volumes_csv(
                    region_statistics(image, regions),
                    target.with_name(REGION_VOLUMES_CSV),
                    source=source,
                    overwrite=True,
                )
            # JSON first: volumes.csv, the file that marks the output as done, comes last.
            write_volumes_json(stats, target.with_suffix(".json"), label=label, source=source, overwrite=True)
            written[fmt] = write_volumes_csv(stats, target, source=source, overwrite=overwrite)
            stale = target.with_name(REGION_VOLUMES_CSV)
            if regions is None and stale.is_file():
                # left by an earlier region model's volumes, which these replaced: it describes
                # another segmentation (and would still fill the cohort table's region columns)
                log.warning("%s: removed (it belonged to the volumes just replaced)", stale)
                stale.unlink()
        elif fmt == "overlay":
            from medseg.export.overlay import write_overlay

            written[fmt] = write_overlay(image, label, target, names, overwrite=overwrite)
        elif fmt == "report":
            from medseg.export.report import write_report

            written[fmt] = write_report(
                target,
                image,
                label,
                names,
                model_info=model_info,
                case_id=case_id,
                overwrite=overwrite,
                warnings=warnings() if warnings is not None else (),
            )
    return written


# --------------------------------------------------------------------------- medseg export
@dataclass(frozen=True)
class ExportConfig:
    """Options of `medseg export` (the CLI builds exactly this object).

    ``labels`` maps label value -> name (default: the names in a DICOM SEG label file, else
    ``label_<value>``); ``series`` picks the image series of a DICOM folder; ``spacing``
    (z, y, x mm) gives PNG/TIFF inputs, which carry none, their voxel size; ``resample``
    puts a label map that lies on another grid onto the image's (nearest neighbour);
    ``algorithm_type`` ("automatic", "semiautomatic" or "manual") is what the DICOM SEG and
    RTSTRUCT declare about how every segment was made. None (the default): a DICOM SEG or
    RTSTRUCT label file's own type per segment, else "automatic". ``algorithm_name`` and
    ``algorithm_version`` name the tool that made the automatic or semiautomatic segments
    (e.g. "TotalSegmentator", "2.4"; the version "unknown" when not given), ``algorithm_family``
    its CID 7162 family (default "artificial intelligence"); they replace what a SEG or
    RTSTRUCT label file declares. Without them a label map that names no algorithm cannot be
    written as dicom-seg unless it is manual (see the module docstring).
    ``deidentify`` de-identifies the DICOM SEG and RTSTRUCT (``pseudonym`` as patient name
    and ID, UIDs mapped with ``uid_secret`` as `medseg convert --deidentify` maps them; None:
    a new secret per process) and the UIDs of the volume tables.
    """

    formats: tuple[str, ...] = DEFAULT_EXPORT_FORMATS
    labels: Mapping[int, str] | None = None
    series: str | None = None
    spacing: tuple[float, float, float] | None = None
    resample: bool = False
    mesh_suffix: str = ".stl"
    case_id: str | None = None
    algorithm_type: AlgorithmType | None = None
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    algorithm_family: str | None = None
    overwrite: bool = False
    deidentify: bool = False
    # not in repr: a printed or logged config must not show the key or a PatientID map
    pseudonym: Pseudonym = field(default="ANONYMOUS", repr=False)
    uid_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from medseg.io.dicom import check_deidentify_options

        object.__setattr__(self, "formats", check_formats(self.formats, EXPORT_FORMATS))
        check_deidentify_options(self.deidentify, self.pseudonym, self.uid_secret)
        if self.algorithm_type is not None:
            object.__setattr__(self, "algorithm_type", check_algorithm_type(self.algorithm_type))
        if self.algorithm_name is None:
            given = [o for o in ("algorithm_version", "algorithm_family") if getattr(self, o) is not None]
            if given:
                raise ConfigError(
                    f"{' and '.join(given)} need algorithm_name (--algorithm-name): the tool they describe"
                )
        else:
            if self.algorithm_type == "manual":
                raise ConfigError(
                    "algorithm_name (--algorithm-name) names the algorithm of automatic or semiautomatic "
                    "segments; manual segments name none"
                )
            object.__setattr__(
                self, "algorithm_name", check_algorithm_text(self.algorithm_name, "algorithm name")
            )
            if self.algorithm_version is not None:
                version = check_algorithm_text(self.algorithm_version, "algorithm version")
                object.__setattr__(self, "algorithm_version", version)
            if self.algorithm_family is not None:
                check_algorithm_family(self.algorithm_family)
        if self.labels is not None:
            bad = [v for v in self.labels if not isinstance(v, int) or v <= 0]
            if bad:
                raise ConfigError(f"label values must be integers > 0 (0 is background), found {bad}")
        if self.case_id is not None and (
            self.case_id.strip() in ("", ".", "..") or any(sep in self.case_id for sep in ("/", "\\"))
        ):
            raise ConfigError(f"case id must be a file name (no path separators), found {self.case_id!r}")
        check_mesh_suffix(self.mesh_suffix)

    @property
    def algorithm(self) -> AlgorithmId | None:
        """The algorithm ``algorithm_name`` / ``_version`` / ``_family`` name, or None."""
        if self.algorithm_name is None:
            return None
        family = check_algorithm_family(self.algorithm_family or "artificial intelligence")
        return AlgorithmId(self.algorithm_name, self.algorithm_version or UNKNOWN_VERSION, family)


@dataclass(frozen=True)
class ExportResult:
    case_id: str
    outputs: dict[str, Path]
    names: dict[int, str]
    resampled: bool
    # How each label value's segments were made, as the SEG / RTSTRUCT outputs declare it,
    # and by which algorithm (automatic and semiautomatic values that name one).
    algorithm_types: dict[int, AlgorithmType] = field(default_factory=dict)
    algorithms: dict[int, AlgorithmId] = field(default_factory=dict)
    # Where the types came from: "option" (algorithm_type), "label file" (a SEG's or
    # RTSTRUCT's own), "baseline record" (the <label>.baseline.json `medseg baseline` wrote)
    # or "default" (automatic: nothing declared any).
    types_from: str = "default"
    # Formats that could not be written (format -> why: a DICOM SEG or RTSTRUCT of a series
    # without UIDs) while the others were; ``ok`` is then False.
    not_written: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every asked format that was not skipped for an empty label map was written."""
        return not self.not_written


def _case_id(label_path: Path) -> str:
    name = label_path.name
    for suffix in _LABEL_FILE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = label_path.stem
    return name  # as `medseg predict` names a case, so both land in one cohort table alike


def _read_image(path: Path, config: ExportConfig) -> tuple[Volume, Any]:
    """The image and, for a DICOM series folder, the series (for SEG / RTSTRUCT)."""
    if path.is_dir():
        from medseg.io.dicom import load_series

        series = load_series(path, series=config.series)
        return series.volume, series
    from medseg.io import read_volume

    spacing = config.spacing if path.suffix.lower() in IMAGE_2D_SUFFIXES else None
    return read_volume(path, series=config.series, spacing=spacing), None


def _is_dicom_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


# `medseg baseline` methods -> their CID 7162 family; the seeded ones are SEMIAUTOMATIC (a
# person placed the seeds or drew the markers), the others AUTOMATIC.
_BASELINE_FAMILIES = {
    "threshold": "histogram analysis",
    "otsu": "histogram analysis",
    "kmeans": "cluster analysis",
    "region-grow": "neighborhood analysis",
    "watershed": "morphological operations",
}


def _baseline_record(label_file: Path) -> tuple[AlgorithmType, AlgorithmId] | None:
    """How ``medseg baseline`` made ``label_file``, from the ``<label>.baseline.json`` it wrote
    beside it: the algorithm type and identification, or None without such a record. A record
    that cannot be read, or that describes another output file, is named in a warning and not
    used (the label map is then exported as if it had none)."""
    from medseg.io import sidecar_path

    record = sidecar_path(label_file, ".baseline.json")
    if not record.is_file():
        return None
    import json

    try:
        doc = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("%s: not used: cannot be read as the record of `medseg baseline` (%s)", record, exc)
        return None
    method = doc.get("method") if isinstance(doc, dict) else None
    if method not in _BASELINE_FAMILIES:
        log.warning(
            "%s: not used: expected the record of `medseg baseline` (a 'method' among %s), found %s",
            record,
            ", ".join(_BASELINE_FAMILIES),
            f"method {method!r}" if isinstance(doc, dict) else type(doc).__name__,
        )
        return None
    output = doc.get("output")
    if output is not None and output != label_file.name:
        log.warning("%s: not used: it records how %s was made, not %s", record, output, label_file.name)
        return None
    seeded = method == "region-grow" or (method == "watershed" and doc.get("markers") in ("seeds", "volume"))
    version = check_algorithm_text(str(doc.get("medseg_version") or UNKNOWN_VERSION), "algorithm version")
    family = check_algorithm_family(_BASELINE_FAMILIES[method])
    return ("semiautomatic" if seeded else "automatic"), AlgorithmId(
        f"medseg baseline {method}", version, family
    )


def _read_label(
    path: Path, image: Volume, config: ExportConfig
) -> tuple[Volume, dict[int, str], dict[int, AlgorithmType] | None]:
    """The label map as integers >= 0, the names it carries (a DICOM SEG's segment labels) and
    the algorithm types it declares (a SEG's or RTSTRUCT's, per value; None for other files).
    A SEG's or RTSTRUCT's algorithm identifications and ROI Generation Descriptions are in the
    label's ``meta["algorithms"]`` / ``meta["generation_descriptions"]``."""
    if not path.is_file():
        raise InputError(
            path,
            "label map not found" if not path.exists() else "is a folder, not a label map",
            expected="a label file (NIfTI, NRRD, MHA, PNG, DICOM SEG or RTSTRUCT)",
        )
    if _is_dicom_file(path):
        import pydicom

        from medseg.export.dicom_seg import read_dicom_seg
        from medseg.export.rtstruct import RTSTRUCT_SOP_CLASS_UID, read_rtstruct

        try:
            sop_class = str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPClassUID", ""))
        except Exception as exc:  # pydicom raises many types for a bad file
            raise InputError(path, "cannot be read as DICOM", found=type(exc).__name__) from None
        # Both are decoded onto the image's grid (a GeometryError when they do not fit it).
        # Declared names are matched to the file's segment / ROI names, which then take the
        # declared values (a ConfigError names a segment the declaration lacks).
        read = read_rtstruct if sop_class == RTSTRUCT_SOP_CLASS_UID else read_dicom_seg
        decoded = read(path, image, config.labels)
        return (
            decoded,
            {int(k): str(v) for k, v in decoded.meta.get("segments", {}).items()},
            {int(k): v for k, v in decoded.meta.get("algorithm_types", {}).items()},
        )
    from medseg.io import read_volume

    spacing = config.spacing if path.suffix.lower() in IMAGE_2D_SUFFIXES else None
    label = read_volume(path, spacing=spacing)
    array = label.array
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            sample = array[np.isfinite(array) & (array != np.round(array))][:3]
            raise InputError(
                path,
                "is not a label map",
                expected="whole-number label values 0..K",
                found=f"fractional values such as {', '.join(f'{v:g}' for v in sample) or 'NaN'}",
            )
    elif array.dtype.kind not in "iub":
        raise InputError(path, "is not a label map", expected="integer label values", found=str(array.dtype))
    if array.size and array.min() < 0:
        raise InputError(path, "is not a label map", expected="label values >= 0", found=f"{array.min():g}")
    values = np.unique(array)
    if len(values) > MAX_LABELS:
        raise InputError(
            path,
            "does not look like a label map",
            expected=f"at most {MAX_LABELS} distinct label values (the arguments are LABEL then IMAGE)",
            found=f"{len(values)} distinct values from {values[0]:g} to {values[-1]:g}, like an image",
        )
    top = int(values[-1]) if len(values) else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    return label.with_array(array.astype(dtype)), {}, None


def export_label(
    label_path: str | Path,
    image_path: str | Path,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    *,
    progress: bool = False,
) -> ExportResult:
    """Write the clinical outputs of an existing label map on its image (see the module docstring).

    ``image_path`` is the scan the labels were drawn on: a DICOM series folder (needed for
    dicom-seg / rtstruct, which reference it) or any image file medseg reads. Raises
    :class:`GeometryError` when the label map lies on another grid and ``resample`` is off.
    A series whose images lack the UIDs a SEG or RTSTRUCT references (blanked by an anonymiser)
    still gets the other formats; the DICOM ones are listed with the reason in the result's
    ``not_written`` (an InputError when nothing else was asked for).
    ``progress`` shows a bar while several meshes are made.
    """
    cfg = config or ExportConfig()
    label_file, image_file, out = Path(label_path), Path(image_path), Path(out_dir)
    if not image_file.exists():
        raise InputError(image_file, "image not found", expected="a DICOM series folder or an image file")
    image, series = _read_image(image_file, cfg)
    if series is None and any(f in DICOM_FORMATS for f in cfg.formats):
        raise InputError(
            image_file,
            "DICOM SEG and RTSTRUCT outputs need the DICOM series the labels belong to",
            expected="a DICOM series folder as the image",
            found="a non-DICOM image file",
        )
    # A series without UIDs cannot give a SEG or RTSTRUCT; the other formats are still written
    # and the result lists the DICOM ones under not_written (as `medseg predict` does).
    not_written = (
        unwritable_dicom_formats(series, cfg.formats, pseudonym=cfg.pseudonym if cfg.deidentify else None)
        if series is not None
        else {}
    )
    if not_written:
        # the reason (file, expected, found) is the result's not_written, which the CLI prints
        log.error("%s: %s cannot be written; writing the other formats", image_file, ", ".join(not_written))
    label, carried, declared_types = _read_label(label_file, image, cfg)
    baseline = _baseline_record(label_file) if declared_types is None else None
    declared_algorithms: dict[int, AlgorithmId] = dict(label.meta.get("algorithms", {}))
    descriptions = {int(v): str(d) for v, d in label.meta.get("generation_descriptions", {}).items()}
    resampled = False
    if label_file.suffix.lower() in IMAGE_2D_SUFFIXES:
        # A PNG/TIFF label map carries no position or orientation: it can only mean the
        # image's own grid, which it must match in shape (resampling it would be a guess).
        if label.shape != image.shape:
            from medseg.errors import GeometryError

            raise GeometryError(
                f"{label_file}: a PNG/TIFF label map carries no position, so it must have the shape of "
                f"{image_file} ({'x'.join(map(str, image.shape))} z,y,x); found "
                f"{'x'.join(map(str, label.shape))}"
            )
        label = image.with_array(label.array)
    diffs = label.geometry.differences(image.geometry)
    if diffs:
        if not cfg.resample:
            from medseg.errors import GeometryError

            raise GeometryError(
                f"{label_file}: the label map does not lie on the grid of {image_file}: "
                + "; ".join(diffs)
                + ". Pass --resample (Python: resample=True) to put it there by nearest-neighbour interpolation."
            )
        from medseg.geometry.resample import resample_label

        before = set(np.unique(label.array).tolist())
        label = resample_label(label, image.geometry)
        lost = sorted(before - set(np.unique(label.array).tolist()) - {0})
        log.warning(
            "%s resampled onto the image grid (nearest neighbour): %s", label_file.name, "; ".join(diffs)
        )
        if lost:
            log.warning(
                "label value(s) %s vanished in the resampling (smaller than a voxel of the image)", lost
            )
        resampled = True
    present = sorted(int(v) for v in np.unique(label.array) if v > 0)
    names = dict(carried)
    names.update(cfg.labels or {})
    unnamed = [v for v in present if v not in names]
    if cfg.labels is not None and unnamed:
        log.warning("label value(s) %s present but not named by --labels; named label_<value>", unnamed)
    for v in unnamed:
        names[v] = f"label_{v}"
    names = {v: names[v] for v in sorted(names)}
    case_id = cfg.case_id or _case_id(label_file)
    from medseg import __version__

    if baseline is not None:  # explicit options below still win over the record
        declared_types = dict.fromkeys(present, baseline[0])
        declared_algorithms = dict.fromkeys(present, baseline[1])
    if cfg.algorithm_type is not None:
        kinds = algorithm_types_for(present, cfg.algorithm_type)
        types_from = "option"
    elif baseline is not None:
        kinds = algorithm_types_for(present, declared_types or {})
        types_from = "baseline record"
    else:
        kinds = algorithm_types_for(present, declared_types or {})
        types_from = "label file" if declared_types else "default"
        undeclared = [names[v] for v in present if v not in (declared_types or {})]
        if declared_types is not None and undeclared:
            log.warning(
                "%s declares no algorithm type for %s; marked automatic (--algorithm-type sets one)",
                label_file.name,
                ", ".join(undeclared),
            )
    made_by = algorithms_for(kinds, cfg.algorithm if cfg.algorithm is not None else declared_algorithms)
    # An input RTSTRUCT's own descriptions, only where neither its types nor its algorithms are overridden.
    if cfg.algorithm_type is not None or cfg.algorithm_name is not None:
        descriptions = {}
    nameless = [names[v] for v in present if kinds[v] != "manual" and v not in made_by]
    if nameless and "dicom-seg" in cfg.formats and "dicom-seg" not in not_written:
        how = {
            "option": "--algorithm-type",
            "label file": f"as {label_file.name} declares",
            "baseline record": "as its .baseline.json records",
            "default": f"the default: nothing in {label_file.name} says how it was made",
        }[types_from]
        raise ConfigError(
            f"{label_file}: a DICOM SEG must name the algorithm that made its automatic and semiautomatic "
            f"segments, and nothing names it for {', '.join(nameless)} (marked "
            f"{_describe_kinds({v: k for v, k in kinds.items() if names[v] in nameless}, names)}, {how}). "
            "Pass --algorithm-name NAME [--algorithm-version VERSION] (Python: ExportConfig(algorithm_name=...)) "
            "for the tool that made it (medseg's own earlier prediction: --algorithm-name medseg), or "
            "--algorithm-type manual for a label map a person drew"
        )
    from medseg.io.atomic import prepare_output_folder

    prepare_output_folder(out)
    targets = case_targets(case_id, out, [f for f in cfg.formats if f not in not_written])
    inputs = {label_file.resolve(), image_file.resolve()}
    for fmt, target in targets.items():
        if target.resolve() in inputs:
            raise InputError(
                target, f"the {fmt} output would replace an input", expected="another output folder"
            )
    if not cfg.overwrite:
        from medseg.errors import OutputExistsError

        for target in targets.values():
            if target.exists():
                raise OutputExistsError(target)
    info = {
        "label map": label_file.name,
        "exported by": f"medseg {__version__} (medseg export)",
        "segments made": describe_algorithms(kinds, made_by, names),
    }
    if resampled:
        info["resampled"] = "nearest neighbour onto the image grid"
    written = write_case_outputs(
        image,
        label,
        names,
        targets,
        series=series,
        model_info=info,
        case_id=case_id,
        mesh_suffix=cfg.mesh_suffix,
        algorithm_type=kinds,
        algorithm=made_by,
        generation_descriptions=descriptions,
        overwrite=cfg.overwrite,
        progress=progress,
        deidentify=cfg.deidentify,
        pseudonym=cfg.pseudonym,
        uid_secret=cfg.uid_secret,
    )
    return ExportResult(case_id, written, names, resampled, kinds, made_by, types_from, not_written)


def _describe_kinds(kinds: Mapping[int, AlgorithmType], names: Mapping[int, str], upper: bool = False) -> str:
    """The one type every segment shares ("all manual"), else each segment's."""
    term = str.upper if upper else str
    if len(set(kinds.values())) <= 1:
        return f"all {term(next(iter(kinds.values()), 'automatic'))}"
    return ", ".join(f"{names[v]} {term(kind)}" for v, kind in kinds.items())


def describe_algorithms(
    kinds: Mapping[int, AlgorithmType],
    algorithms: Mapping[int, AlgorithmId],
    names: Mapping[int, str],
    *,
    defined_terms: bool = False,
) -> str:
    """How the segments were made, in a few words: "all manual", "all automatic by
    TotalSegmentator 2.4", or per segment when they differ (for the report and the CLI;
    ``defined_terms``: the types as DICOM writes them, "all MANUAL")."""
    text = _describe_kinds(kinds, names, upper=defined_terms)
    unnamed = "an unnamed algorithm"
    by = {
        v: algorithms[v].describe() if v in algorithms else unnamed for v, k in kinds.items() if k != "manual"
    }
    if not by:
        return text
    if len(set(by.values())) == 1:
        one = next(iter(by.values()))
        return f"{text} by {one}" if len(set(kinds.values())) == 1 else f"{text}; algorithm {one}"
    return f"{text}; " + ", ".join(f"{names[v]} by {who}" for v, who in by.items())
