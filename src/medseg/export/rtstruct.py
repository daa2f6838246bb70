"""DICOM RT Structure Sets (RTSTRUCT) on the source series, written with rt-utils.

rt-utils (1.2.7) makes assumptions that are guarded here rather than trusted:

* it reads *every* DICOM file with pixel data under a folder, recursively, and silently
  skips files it cannot decode. We therefore link exactly the matched images of one
  series into a private temporary folder, and check that rt-utils loaded all of them.
* it orders slices by ImagePositionPatient projected on the normal (row x column
  cosines), ascending, and expects the mask as ``mask[row, column, slice]`` in *that*
  order. Our label's slice axis may run either way along the normal, so the slice
  order is taken from the SOPInstanceUIDs rt-utils actually loaded, not assumed.
* it scales column steps by PixelSpacing[0] (the *row* spacing) and row steps by
  PixelSpacing[1]: correct only for square pixels. Non-square pixels raise
  :class:`GeometryError` instead of writing misplaced contours.
* its reader (``get_roi_mask_by_name``) allocates (Columns, Rows) masks, which is wrong
  for non-square matrices; :func:`read_rtstruct` therefore rasterises the contours itself,
  from their world (LPS) coordinates through the reference grid, which also makes the
  read-back an independent check of what was written.

Contours follow rt-utils / OpenCV: closed planar polygons through the centres of the
boundary voxels, holes as separate contours (filled with the even-odd rule).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.config import disable_value_validation
from skimage.draw import line, polygon_perimeter
from skimage.draw import polygon as fill_polygon

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.export.algorithm import (
    AlgorithmId,
    AlgorithmType,
    algorithm_types_for,
    algorithms_for,
    medseg_algorithm,
    read_algorithm_id,
    read_algorithm_type,
)
from medseg.export.codes import region_segments, segments_for_label
from medseg.export.dicom_source import SourceLike, deidentify_derived, match_source_series
from medseg.io.atomic import atomic_file, check_writable
from medseg.io.dicom import Pseudonym, safe_error_text
from medseg.volume import Volume, VolumeGeometry

__all__ = ["read_rtstruct", "write_rtstruct"]

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"
# A contour must lie on a slice of the reference grid to this fraction of the slice spacing.
SLICE_TOL = 0.01


@contextlib.contextmanager
def _quiet_pydicom_deprecations() -> Iterator[None]:
    """Drop pydicom 3's "will be removed in v4.0" log lines caused by rt-utils' own code.

    pydicom both warns and logs them (``warn_and_log``); the warnings are filtered where
    rt-utils is called, this filter takes the log lines. Other pydicom messages pass.
    """

    def keep(record: logging.LogRecord) -> bool:
        return "will be removed in v4.0" not in record.getMessage()

    logger = logging.getLogger("pydicom")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _link_series(files: Sequence[Path], folder: Path) -> None:
    for k, src in enumerate(files):
        dst = folder / f"{k:05d}.dcm"
        try:
            os.symlink(src.resolve(), dst)
        except OSError:  # no symlinks on this file system
            shutil.copy2(src, dst)


def write_rtstruct(
    label: Volume,
    source: SourceLike,
    path: str | Path,
    segment_names: Mapping[int, str] | None = None,
    *,
    colors: Mapping[int, Sequence[int]] | None = None,
    overwrite: bool = False,
    series_description: str = "medseg contours",
    algorithm_type: AlgorithmType | Mapping[int, AlgorithmType] = "automatic",
    algorithm: AlgorithmId | Mapping[int, AlgorithmId] | None = None,
    generation_descriptions: Mapping[int, str] | None = None,
    region_masks: Mapping[str, np.ndarray] | None = None,
    deidentify: bool = False,
    pseudonym: Pseudonym = "ANONYMOUS",
    uid_secret: str | None = None,
) -> Path:
    """Write one ROI per label value present in ``label`` as an RTSTRUCT on ``source``.

    ``region_masks`` (a region-based model's masks by region name, on ``label``'s grid)
    writes one ROI per region instead, overlaps kept (ROIs may overlap); the ROI numbers
    and the values the mappings refer to are then 1..R in region order, as for the DICOM
    SEG: a region empty in this case is an ROI without contours, so ROI r is always region r.

    ``source`` is the source series (a folder, files, datasets read from files, or an
    object with ``.datasets``/``.files``) in any order; rt-utils needs the files.
    ``algorithm_type`` ("automatic", "semiautomatic" or "manual"; one for all, or per label
    value) is each ROI's ROI Generation Algorithm. ``algorithm`` (one for all, or per value;
    None: medseg, for a prediction of its own) names the algorithm of the automatic and
    semiautomatic ROIs, as ROI Derivation Algorithm Identification and, unless
    ``generation_descriptions`` gives one (a converted RTSTRUCT's own text), as ROI Generation
    Description. Both are optional (type 3): a mapping that lacks a value leaves them out for
    that ROI; manual ROIs name no algorithm. An empty label map raises :class:`InputError`.

    ``deidentify`` de-identifies the finished RTSTRUCT (:func:`deidentify_derived`: patient
    name and ID become ``pseudonym``, UIDs are mapped with ``uid_secret``), so that it
    references the copy of the source series that `medseg convert --deidentify` writes with
    that secret. It leaves out the ``generation_descriptions`` (free text carried from an input
    RTSTRUCT, which may name who drew the contours or the patient).
    """
    target = check_writable(path, overwrite)
    kept: dict[int, np.ndarray] = {}
    if region_masks is not None:
        segments, kept = region_segments(label, region_masks, colors, target)
    else:
        segments = segments_for_label(label, segment_names, colors)
    if not segments:
        raise InputError(
            target,
            "cannot write an RTSTRUCT for an empty label map",
            expected="at least one voxel with a label > 0",
            found="no foreground",
        )
    kinds = algorithm_types_for([s.value for s in segments], algorithm_type)
    made_by = algorithms_for(kinds, medseg_algorithm() if algorithm is None else algorithm)
    series = match_source_series(label.geometry, source)
    if any(f is None or not Path(f).is_file() for f in series.files):
        raise InputError(
            None,
            "the source series was given as datasets without files",
            expected="a folder, file paths, or datasets read from files (rt-utils reads the files)",
        )
    files = [Path(f) for f in series.files if f is not None]
    row_mm, col_mm = label.spacing[1], label.spacing[2]
    if abs(row_mm - col_mm) > 1e-6 * max(row_mm, col_mm):
        raise GeometryError(
            f"rt-utils places contours correctly only for square pixels; this series has "
            f"{row_mm:g} x {col_mm:g} mm pixels (rows x columns). Use DICOM SEG instead."
        )
    from rt_utils import RTStructBuilder

    uid_to_k = {str(ds.SOPInstanceUID): k for k, ds in enumerate(series.datasets)}
    # pydicom's value validation quotes malformed values (a birth date, a name) in its
    # warnings and log; the patient module is copied as it is, so nothing is validated here.
    with (
        tempfile.TemporaryDirectory(prefix="medseg-rtstruct-") as tmp,
        disable_value_validation(),
        _quiet_pydicom_deprecations(),
    ):
        _link_series(files, Path(tmp))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # rt-utils prints progress and sets attributes that pydicom 3 deprecates.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*FileDataset.is_")
            try:
                rtstruct = RTStructBuilder.create_new(dicom_series_path=tmp)
            except Exception as exc:  # rt-utils raises bare Exceptions
                raise InputError(
                    target, "rt-utils cannot build an RTSTRUCT on this series", found=safe_error_text(exc)
                ) from None
        order = [uid_to_k.get(str(ds.SOPInstanceUID), -1) for ds in rtstruct.series_data]
        if sorted(order) != list(range(label.shape[0])):
            raise InputError(
                None,
                "rt-utils did not load the whole source series",
                expected=f"{label.shape[0]} images",
                found=f"{len(order)} (compressed pixel data without a decoder?)",
            )
        ascending = list(range(label.shape[0]))
        if order not in (ascending, ascending[::-1]):
            raise GeometryError(f"rt-utils ordered the slices unexpectedly: {order[:6]} ...")
        rtstruct.set_series_description(series_description[:64])
        for segment in segments:
            # rt-utils wants mask[row, column, slice] in its own slice order.
            voxels = kept[segment.value] if region_masks is not None else label.array == segment.value
            mask = np.moveaxis(voxels, 0, -1)[:, :, order]
            with contextlib.redirect_stdout(io.StringIO()):
                rtstruct.add_roi(
                    mask=np.ascontiguousarray(mask),
                    color=list(segment.color),
                    name=segment.name[:64],
                    description=segment.code.describe()[:64],
                    roi_generation_algorithm=kinds[segment.value].upper(),  # defined terms, C.8.8.5
                )
            _set_generation(
                rtstruct.ds.StructureSetROISequence[-1],
                made_by.get(segment.value),
                # an input RTSTRUCT's own free text may name people (PS3.15 E.1-1: X); a
                # de-identified one says only what medseg's algorithm identification says
                None if deidentify else (generation_descriptions or {}).get(segment.value),
            )
        _set_provenance(rtstruct.ds, series.datasets[0])
        if deidentify:  # the RT Structure Set IOD has no type 1 date, time or equipment serial
            deidentify_derived(rtstruct.ds, pseudonym=pseudonym, uid_secret=uid_secret)
        with atomic_file(target, overwrite=overwrite) as out:
            rtstruct.ds.save_as(out)
    log.info("wrote RTSTRUCT with %d ROIs to %s", len(segments), target)
    return target


def _set_generation(roi: pydicom.Dataset, algorithm: AlgorithmId | None, description: str | None) -> None:
    """ROI Generation Description (LO) and ROI Derivation Algorithm Identification Sequence
    (the Algorithm Identification macro, as a SEG's), both type 3 in the Structure Set ROI Sequence."""
    text = description or (algorithm.describe() if algorithm is not None else "")
    if text:
        roi.ROIGenerationDescription = text[:64]
    if algorithm is not None:
        family = pydicom.Dataset()
        family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning = algorithm.family
        ident = pydicom.Dataset()
        ident.AlgorithmFamilyCodeSequence = [family]
        ident.AlgorithmName = algorithm.name
        ident.AlgorithmVersion = algorithm.version
        roi.ROIDerivationAlgorithmIdentificationSequence = [ident]


def _set_provenance(ds: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Fix what rt-utils leaves non-conformant or wrong, before the file is saved.

    * medseg as the equipment that made the RTSTRUCT, not rt-utils' defaults ("Qurit"); the
      institution is the source scan's (or none), as for the DICOM SEG;
    * the source's character set: rt-utils always declares ISO_IR 100 (Latin-1), which
      turned a UTF-8 patient name such as "ŁÓDŹ" into "?ÓD?" -- a name that no longer
      matches the scan's, so a PACS may file the RTSTRUCT under another patient;
    * the General Study module's type-2 attributes the scan has (accession number,
      referring physician), and the RT Series' operators' name (type 2, empty); a series
      number apart from the scan's (9902; the DICOM SEG is 9901);
    * contour coordinates as DS values of at most 16 characters (rt-utils writes Python's
      full repr, e.g. "-18.685466430070193": invalid DS).
    """
    from pydicom.valuerep import format_number_as_ds

    import medseg

    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg"
    ds.SoftwareVersions = medseg.__version__
    if getattr(source, "InstitutionName", None):
        ds.InstitutionName = source.InstitutionName
    elif "InstitutionName" in ds:
        del ds.InstitutionName
    charset = source.get("SpecificCharacterSet")
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword in ("AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, keyword, source.get(keyword, ""))
    if "OperatorsName" not in ds:
        ds.OperatorsName = ""
    ds.SeriesNumber = 9902
    for roi in getattr(ds, "ROIContourSequence", []):
        for contour in getattr(roi, "ContourSequence", []):
            contour.ContourData = [format_number_as_ds(float(v)) for v in contour.ContourData]


def _rasterise_contours(contours: list[NDArray[np.float64]], shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Even-odd fill of (row, column) polygons plus their outlines (they pass through voxel centres)."""
    interior = np.zeros(shape, dtype=bool)
    outline = np.zeros(shape, dtype=bool)
    for rc in contours:
        inside = np.zeros(shape, dtype=bool)
        rr, cc = fill_polygon(rc[:, 0], rc[:, 1], shape=shape)
        inside[rr, cc] = True
        interior ^= inside
        r, c = np.rint(rc[:, 0]), np.rint(rc[:, 1])
        area = 0.5 * abs(float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1))))
        if area == 0:
            # A contour without area: one voxel, or a line of voxels (rt-utils writes such
            # islands as 1 or 2 points, diagonal ones too). skimage's polygon_perimeter clips
            # the polygon to its bounding box, which fails without an area, so draw the
            # segments between consecutive points directly.
            ends = np.stack([r, c], axis=1).astype(int)
            pieces = [line(*a, *b) for a, b in zip(ends, np.roll(ends, -1, axis=0), strict=True)]
            rr, cc = np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
        else:
            rr, cc = polygon_perimeter(r, c, shape=shape, clip=False)
        keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        outline[rr[keep], cc[keep]] = True
    return interior | outline


def read_rtstruct(
    path: str | Path,
    reference: Volume | VolumeGeometry,
    segment_names: Mapping[int, str] | None = None,
) -> Volume:
    """Rasterise the closed planar contours of an RTSTRUCT onto ``reference``'s grid.

    Each ROI becomes one value: its ROI number, or with ``segment_names`` (value -> name)
    the value whose name equals the ROI name. Later ROIs overwrite earlier ones where they
    overlap. Contours off the grid's slices raise :class:`GeometryError`.
    ``meta["segments"]`` maps value -> ROI name, ``meta["algorithm_types"]`` value ->
    "automatic", "semiautomatic" or "manual" (ROIs with an empty or other ROI Generation
    Algorithm are left out), ``meta["algorithms"]`` value -> :class:`AlgorithmId` (ROIs with a
    ROI Derivation Algorithm Identification) and ``meta["generation_descriptions"]`` value ->
    ROI Generation Description (ROIs that have one).
    """
    src = Path(path)
    geometry = reference.geometry if isinstance(reference, Volume) else reference
    try:
        ds = pydicom.dcmread(src)
    except Exception as exc:  # pydicom raises several types for a bad file
        raise InputError(src, "cannot be read as DICOM", found=safe_error_text(exc)) from None
    if str(getattr(ds, "SOPClassUID", "")) != RTSTRUCT_SOP_CLASS_UID:
        raise InputError(
            src, "is not an RT Structure Set", found=f"SOP class {getattr(ds, 'SOPClassUID', '?')}"
        )
    names = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    generation = {
        int(r.ROINumber): read_algorithm_type(r.get("ROIGenerationAlgorithm"))
        for r in getattr(ds, "StructureSetROISequence", [])
    }
    declared = {
        int(r.ROINumber): read_algorithm_id(
            (r.get("ROIDerivationAlgorithmIdentificationSequence") or [None])[0]
        )
        for r in getattr(ds, "StructureSetROISequence", [])
    }
    described = {
        int(r.ROINumber): str(r.get("ROIGenerationDescription", "") or "").strip()
        for r in getattr(ds, "StructureSetROISequence", [])
    }
    value_of = {number: number for number in names}
    if segment_names is not None:
        by_name = {str(v)[:64]: int(k) for k, v in segment_names.items()}  # ROIName is LO (64)
        unknown = [n for n in names.values() if n not in by_name]
        if unknown:
            raise ConfigError(f"{src}: ROIs {unknown} are not among the given names {sorted(by_name)}")
        value_of = {number: by_name[name] for number, name in names.items()}
    nz, ny, nx = geometry.shape
    out = np.zeros(geometry.shape, dtype=np.uint16)
    overwritten: dict[tuple[int, int], int] = {}  # (earlier value, later value) -> voxels
    for roi in getattr(ds, "ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        per_slice: dict[int, list[NDArray[np.float64]]] = {}
        for contour in getattr(roi, "ContourSequence", []):
            if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            index = geometry.world_to_index(points)
            k = int(np.rint(index[:, 0].mean()))
            if np.max(np.abs(index[:, 0] - k)) > SLICE_TOL or not 0 <= k < nz:
                raise GeometryError(
                    f"{src}: a contour of ROI '{names.get(number, number)}' is not on a slice of the reference "
                    f"grid (slice index {index[:, 0].min():.3f}..{index[:, 0].max():.3f} of 0..{nz - 1})"
                )
            per_slice.setdefault(k, []).append(index[:, 1:])
        value = value_of.get(number, number)
        for k, contours in per_slice.items():
            mask = _rasterise_contours(contours, (ny, nx))
            covered = out[k][mask]
            for earlier in np.unique(covered[covered != 0]).tolist():
                overwritten[(int(earlier), value)] = overwritten.get((int(earlier), value), 0) + int(
                    np.count_nonzero(covered == earlier)
                )
            out[k][mask] = value
    dtype = np.uint8 if out.max(initial=0) < 256 else np.uint16
    segments = {value_of.get(n, n): name for n, name in names.items()}
    for (earlier, later), count in sorted(overwritten.items()):
        left = int(np.count_nonzero(out == earlier))
        log.warning(
            "%s: ROI '%s' overlaps '%s' on %d voxels, which now belong to '%s' (%d voxels of '%s' left)%s",
            src.name,
            segments.get(later, later),
            segments.get(earlier, earlier),
            count,
            segments.get(later, later),
            left,
            segments.get(earlier, earlier),
            "; a label map holds one structure per voxel (a body outline drawn after the organs covers them)"
            if left == 0
            else "",
        )
    kinds = {value_of.get(n, n): kind for n, kind in generation.items() if kind is not None}
    meta = {
        "source": src.name,
        "segments": segments,
        "algorithm_types": kinds,
        "algorithms": {value_of.get(n, n): a for n, a in declared.items() if a is not None},
        "generation_descriptions": {value_of.get(n, n): d for n, d in described.items() if d},
    }
    return Volume(out.astype(dtype), geometry=geometry, meta=meta)
