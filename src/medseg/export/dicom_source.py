"""Match the source DICOM series to a label map's grid, slice by slice.

DICOM SEG and RTSTRUCT reference the source images instance by instance, so every
slice ``k`` of the label map must be paired with the dataset that *is* slice ``k``.
File-name or directory order means nothing (PROSTATEx numbers some series head to
foot and others foot to head), and a label map predicted on another grid must not be
written onto this series. The pairing therefore goes through geometry only: each
dataset's ImagePositionPatient is mapped through the label grid's ``world_to_index``
and must land on a whole slice index, in-plane index (0, 0); orientation, pixel
spacing and matrix size must agree too. Any disagreement raises GeometryError.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medseg.errors import GeometryError, InputError
from medseg.io.dicom import Pseudonym, deidentify_dataset, safe_error_text
from medseg.io.folders import walk_files
from medseg.volume import VolumeGeometry

__all__ = [
    "POSITION_TOL_MM",
    "SourceLike",
    "SourceSeries",
    "deidentify_derived",
    "match_source_series",
    "read_source_datasets",
    "require_referenceable",
]

log = logging.getLogger(__name__)

# DICOM decimal strings carry 10+ significant digits, but labels may come through a NIfTI
# (float32 affine) or a resampling round trip; these tolerances still catch a shift of a
# tenth of a 0.5 mm voxel, a flipped axis or a wrong series.
POSITION_TOL_MM = 0.05
SPACING_TOL_MM = 1e-3
COSINE_TOL = 1e-3

# What a SEG's Referenced Series Sequence / an RTSTRUCT's Contour Image Sequence name for
# every source image; highdicom fails with a bare KeyError('') on an empty SOPClassUID.
_REFERENCED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# A folder, a list of files or datasets, or an object with ``.datasets`` (and optionally
# ``.files``) such as medseg.io.dicom's DicomSeries.
SourceLike = str | Path | Sequence[Dataset | str | Path] | Any


@dataclass(frozen=True)
class SourceSeries:
    """The source series ordered so that ``datasets[k]`` is slice ``k`` of the label grid."""

    datasets: tuple[Dataset, ...]
    files: tuple[Path | None, ...]

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


# Derived objects that may sit beside the images (a SEG written earlier, an RTSTRUCT, an
# SR): never part of the source series.
_DERIVED_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # segmentation, registration, fiducials
    "1.2.840.10008.5.1.4.1.1.481",  # RT objects
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports
)


# What pydicom raises for a file that is not DICOM or whose header is truncated or corrupt.
_UNREADABLE = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


def _is_source_image(ds: Dataset) -> bool:
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class.startswith(_DERIVED_SOP_CLASS_PREFIXES):
        return False
    return "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds


def _dataset_path(ds: Dataset) -> Path | None:
    name = getattr(ds, "filename", None)
    return Path(name) if isinstance(name, (str, Path)) and str(name) else None


def _iter_files(folder: Path) -> Iterable[Path]:
    # symbolic links followed (like the series reader), loops guarded
    return walk_files(folder)


def read_source_datasets(source: SourceLike) -> list[tuple[Dataset, Path | None]]:
    """Datasets (header only when read here) and their file paths, from any SourceLike.

    A folder is searched recursively; non-DICOM files and derived objects (an existing
    SEG, RTSTRUCT or SR) are skipped. Several series
    in the folder raise :class:`InputError` naming them.
    """
    items: list[tuple[Dataset, Path | None]] = []
    if hasattr(source, "datasets"):
        datasets = list(source.datasets)
        files = list(getattr(source, "files", [None] * len(datasets)))
        items = [
            (ds, Path(f) if f is not None else _dataset_path(ds))
            for ds, f in zip(datasets, files, strict=True)
        ]
    elif isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(folder, "is not a folder of DICOM files", expected="the source series folder")
        for path in _iter_files(folder):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except _UNREADABLE:
                continue
            if _is_source_image(ds):
                items.append((ds, path))
        if not items:
            raise InputError(folder, "holds no DICOM images", expected="the source image series")
    else:
        for entry in source:
            if isinstance(entry, Dataset):
                items.append((entry, _dataset_path(entry)))
            else:
                file = Path(entry)
                try:
                    items.append((pydicom.dcmread(file, stop_before_pixels=True), file))
                except _UNREADABLE as exc:
                    raise InputError(
                        file, "is not a readable DICOM file", found=safe_error_text(exc)
                    ) from None
    if not items:
        raise InputError(None, "no source DICOM datasets were given", expected="the source image series")
    series: dict[str, list[tuple[Dataset, Path | None]]] = {}
    for item in items:
        series.setdefault(str(getattr(item[0], "SeriesInstanceUID", "")), []).append(item)
    if len(series) > 1:
        found = "; ".join(
            f"{len(v)} images of series '{getattr(v[0][0], 'SeriesDescription', '?')}' "
            f"(#{getattr(v[0][0], 'SeriesNumber', '?')})"
            for v in series.values()
        )
        where = source if isinstance(source, (str, Path)) else None
        raise InputError(
            where, "holds several DICOM series", expected="the images of one series", found=found
        )
    return items


def require_referenceable(ds: Dataset, path: Path | None) -> None:
    """Raise InputError naming ``path`` when ``ds`` lacks a UID a SEG or RTSTRUCT must reference.

    An anonymiser that blanked them leaves nothing to reference (highdicom then fails with
    a bare ``KeyError('')``); ``predict`` checks this before running the network.
    """
    no_uid = [k for k in _REFERENCED_UIDS if not str(getattr(ds, k, "") or "").strip()]
    if no_uid:
        raise InputError(
            path,
            "cannot be referenced by a DICOM SEG or RTSTRUCT",
            expected=f"an image with its {', '.join(_REFERENCED_UIDS)} (a SEG and an RTSTRUCT "
            "name the images they segment by these UIDs)",
            found=f"empty or missing {', '.join(no_uid)} (removed by an anonymiser?); "
            "the other formats (nifti, nrrd, mha, mesh, volumes, overlay, report) need no UIDs",
        )


def _where(ds: Dataset, path: Path | None) -> str:
    return str(path) if path is not None else f"instance {getattr(ds, 'InstanceNumber', '?')}"


def match_source_series(
    geometry: VolumeGeometry,
    source: SourceLike,
    *,
    position_tol_mm: float = POSITION_TOL_MM,
) -> SourceSeries:
    """Pair every slice of ``geometry`` with its source dataset, whatever order they come in.

    Raises :class:`GeometryError` when the series is not exactly the label grid: another
    matrix size, pixel spacing or orientation, a slice position between grid slices or
    outside the grid, two images at one position (e.g. several b-values or echoes in one
    series), or grid slices with no image.
    """
    items = read_source_datasets(source)
    nz, ny, nx = geometry.shape
    row_cos = geometry.direction[:, 2]  # along a row = increasing column index = array x
    col_cos = geometry.direction[:, 1]  # down a column = increasing row index = array y
    slices: dict[int, tuple[Dataset, Path | None]] = {}
    for ds, path in items:
        where = _where(ds, path)
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(
                path,
                "is a multi-frame image",
                expected="a series of single-frame images (CT/MR Image Storage)",
                found=f"{ds.NumberOfFrames} frames in one file",
            )
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if keyword not in ds:
                raise InputError(path, f"DICOM image lacks {keyword}", expected="a CT/MR image with geometry")
        require_referenceable(ds, path)
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx):
            raise GeometryError(
                f"{where}: image matrix {int(ds.Rows)} x {int(ds.Columns)} (rows x columns) does not match "
                f"the label grid's {ny} x {nx}"
            )
        spacing = np.asarray(ds.PixelSpacing, dtype=float)  # (between rows, between columns) = (y, x)
        if not np.allclose(spacing, geometry.spacing[1:], atol=SPACING_TOL_MM, rtol=0):
            raise GeometryError(
                f"{where}: pixel spacing {spacing.tolist()} mm (rows, columns) does not match the label "
                f"grid's {list(geometry.spacing[1:])} mm"
            )
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if not (
            np.allclose(iop[:3], row_cos, atol=COSINE_TOL) and np.allclose(iop[3:], col_cos, atol=COSINE_TOL)
        ):
            raise GeometryError(
                f"{where}: image orientation {np.round(iop, 4).tolist()} does not match the label grid's "
                f"{np.round(np.concatenate([row_cos, col_cos]), 4).tolist()}"
            )
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        k = int(np.rint(geometry.world_to_index(ipp)[0]))
        error_mm = float(np.linalg.norm(ipp - geometry.index_to_world([k, 0, 0])))
        if error_mm > position_tol_mm or not 0 <= k < nz:
            raise GeometryError(
                f"{where}: image position {np.round(ipp, 3).tolist()} is not on the label grid "
                f"(nearest slice {k} of 0..{nz - 1}, {error_mm:.3f} mm away; tolerance {position_tol_mm} mm)"
            )
        if k in slices:
            raise GeometryError(
                f"{where} and {_where(*slices[k])} are both at slice {k}: the series holds several "
                "images per position (several b-values, echoes or time points?); pass one volume's images"
            )
        slices[k] = (ds, path)
    missing = [k for k in range(nz) if k not in slices]
    if missing:
        raise GeometryError(
            f"the source series has {len(slices)} images but the label grid has {nz} slices; "
            f"no image for slices {missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    ordered = [slices[k] for k in range(nz)]
    log.debug("matched %d source images to the label grid", nz)
    return SourceSeries(tuple(ds for ds, _ in ordered), tuple(p for _, p in ordered))


# What PS3.15's basic profile calls "D" (replace with a dummy value) for a type 1 date or
# time: the profile empties every date and time, which a required one may not be.
DUMMY_DATE = "19000101"
DUMMY_TIME = "000000"


def deidentify_derived(
    ds: Dataset,
    *,
    pseudonym: Pseudonym = "ANONYMOUS",
    uid_secret: str | None = None,
    required: Sequence[str] = (),
) -> Dataset:
    """De-identify a finished SEG or RTSTRUCT ``ds`` in place, as `medseg convert --deidentify`
    de-identifies its source series.

    :func:`medseg.io.dicom.deidentify_dataset` replaces the patient name and ID by
    ``pseudonym``, empties the birth date and every other date, and maps every instance UID
    with ``uid_secret``: the references to the source images, series, study and frame of
    reference become exactly the UIDs of the de-identified copy of that series made with the
    same secret, and the object's own SOPInstanceUID and file meta MediaStorageSOPInstanceUID
    stay equal (both mapped). SOP class and transfer syntax UIDs are not instance UIDs and
    are kept. ``required`` names the type 1 attributes of the object's IOD that medseg wrote
    and the profile would remove or empty: those of medseg's own equipment keep their value,
    a required date or time gets a dummy value.
    """
    kept = {kw: ds.get(kw) for kw in required}
    deidentify_dataset(ds, pseudonym=pseudonym, uid_secret=uid_secret)
    for kw, value in kept.items():
        vr = pydicom.datadict.dictionary_VR(kw)
        if vr == "DA":
            setattr(ds, kw, DUMMY_DATE)
        elif vr == "TM":
            setattr(ds, kw, DUMMY_TIME)
        elif value not in (None, ""):
            setattr(ds, kw, value)
    return ds
