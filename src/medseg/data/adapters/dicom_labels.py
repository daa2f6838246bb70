"""DICOM studies with DICOM SEG or RTSTRUCT labels -> the dataset format.

The source is a folder tree holding image series and label objects in any arrangement
(series in sub-folders, SEG/RTSTRUCT beside them or elsewhere). Every file is indexed by
its DICOM header; each label object becomes one case: the image series it references
(found by SeriesInstanceUID, or through the SOP instances it references) and a label map
on that series' grid.

* DICOM SEG (binary, fractional or label-map) is decoded with highdicom. Frames are
  placed by their plane positions (``get_volume``), not by frame order, then mapped
  onto the image grid by world coordinates (nearest neighbour, exact when the grids
  coincide, which they do for a SEG derived from the series).
* RTSTRUCT contours are filled with rt-utils (``RTStructBuilder.create_from`` +
  ``get_roi_mask_by_name``). rt-utils returns masks as (rows, columns, slices) in its own
  slice order (ascending position along the normal); they are transposed to (z, y, x) and
  re-ordered by SOPInstanceUID onto medseg's slice order. rt-utils 1.2.7 mixes up row and
  column spacing and array sizes for non-square pixels or images, so for those series
  (and for contours without an image reference) the same fill rule (vertices rounded to
  pixel centres, OpenCV ``fillPoly`` of all contours of a slice, so nested contours are
  holes) is applied here with medseg's exact world->index transform.

ROIs of one RTSTRUCT that share a name (a structure contoured in parts, or exported twice)
become one label, the union of their masks, named with their ROI numbers in a warning.

Label names (SEG SegmentLabel, RTSTRUCT ROIName) map to label values through ``labels``,
which dataset.json then declares as given, every name, even one no imported case holds
(a mapping named on purpose stays the same from one import to the next; such names are
listed in a warning). Without it every name of the imported cases gets a value, 1, 2, ...
in order of first appearance: a case left out (``skip_invalid``) takes back the names only
it had, so dataset.json declares no label that no case can hold. A voxel claimed by
two segments is an error unless ``on_overlap="overwrite"`` (the higher label value wins) or
``on_overlap="regions"``: each combination of segments found overlapping gets a label value
of its own (named ``a+b``, segment names in order of their values; numbered in order of
first appearance over the import, after the values of the names known then, unless
``labels`` gives that name a value) and dataset.json declares one region per segment name
holding every value that contains it, for region-based training (:mod:`medseg.data.regions`);
nothing is lost, and painting the regions back gives what "overwrite" gives. When no case
has an overlap (and ``labels`` names none) dataset.json declares plain labels, no regions.
Patient ids are replaced by a keyed hash (``p`` + 12 hex digits of HMAC-SHA-256 under a
random key that is not stored), never stored themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.config import disable_value_validation

from medseg.data.dataset import DatasetWriter, create_dataset, import_each
from medseg.errors import ConfigError, InputError
from medseg.geometry.resample import resample_label
from medseg.io.dicom import load_files, safe_error_text
from medseg.io.folders import walk_files
from medseg.volume import Volume, VolumeGeometry

logger = logging.getLogger(__name__)

SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # SEG, label-map SEG
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
OverlapRule = Literal["error", "overwrite", "regions"]
_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality",
    "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns",
    "PixelSpacing", "FrameOfReferenceUID", "SeriesDescription",
]  # fmt: skip


# ----------------------------------------------------------------------------- index
@dataclass
class ImageSeries:
    """One single-frame image series found in the source tree."""

    uid: str
    files: list[Path] = field(default_factory=list)
    sop_uids: dict[str, Path] = field(default_factory=dict)
    patient: str = ""
    frame_of_reference: str = ""


@dataclass
class DicomIndex:
    """What a folder tree holds: image series, label objects and the patient of each."""

    series: dict[str, ImageSeries] = field(default_factory=dict)
    sop_to_series: dict[str, str] = field(default_factory=dict)
    segs: list[Path] = field(default_factory=list)
    rtstructs: list[Path] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)


# Key of the patient pseudonyms: random per process (one import) and never stored.
_PSEUDONYM_KEY = secrets.token_bytes(32)


def pseudonym(patient_id: str, key: bytes | None = None) -> str:
    """A pseudonymous group id for a DICOM PatientID (the ID itself is never stored).

    HMAC-SHA-256 under a random key that is not stored (default: one key per process),
    so one patient's series share an id within an import (folds group by it), but the id
    cannot be traced back by hashing candidate IDs: hospital IDs are short numbers, and
    an unkeyed hash of one is reversed by trying them all.
    """
    digest = hmac.new(key or _PSEUDONYM_KEY, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return "p" + digest[:12]


def _has_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def index_dicom_tree(source: Path) -> DicomIndex:
    """Read the header of every file under ``source`` (pixel data is not read)."""
    index = DicomIndex()
    # symbolic links followed: a cohort is often linked together from an archive
    for path in walk_files(source, hidden_files=True):
        name = path.name
        if name.startswith("."):
            if name.startswith("._"):
                index.ignored.append((path, "macOS resource fork"))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (
            pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError,
            IndexError, AttributeError,
        ) as exc:  # fmt: skip  # pydicom raises several types for corrupt headers
            if _has_preamble(path):
                index.ignored.append((path, f"corrupt DICOM file ({type(exc).__name__})"))
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in SEG_SOP_CLASSES:
            index.segs.append(path)
        elif sop_class == RTSTRUCT_SOP_CLASS:
            index.rtstructs.append(path)
        elif "Rows" in ds and "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds:
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                index.ignored.append((path, "multi-frame image (not used as a label reference)"))
                continue
            uid = str(ds.SeriesInstanceUID)
            series = index.series.setdefault(uid, ImageSeries(uid=uid))
            series.files.append(path)
            series.sop_uids[str(ds.SOPInstanceUID)] = path
            series.patient = pseudonym(str(ds.get("PatientID", "")) or uid)
            series.frame_of_reference = str(ds.get("FrameOfReferenceUID", ""))
            index.sop_to_series[str(ds.SOPInstanceUID)] = uid
        else:
            index.ignored.append((path, f"DICOM object not used ({ds.get('Modality', '?')})"))
    return index


# ---------------------------------------------------------------------------- series
@dataclass
class LoadedSeries:
    volume: Volume
    sop_uids: list[str]  # SOPInstanceUID of array slice z, in z order
    files: list[Path]
    datasets: Sequence[pydicom.Dataset]  # headers in z order


def load_series(series: ImageSeries) -> LoadedSeries:
    """Read an image series into a Volume with its slice-ordered instances.

    Uses :func:`medseg.io.dicom.load_files` (the one DICOM series reader): slices sorted
    along the slice normal, positions, spacing and gantry tilt checked, rescale applied.
    """
    loaded = load_files(series.files)
    return LoadedSeries(
        loaded.volume, [str(d.SOPInstanceUID) for d in loaded.datasets], loaded.files, loaded.datasets
    )


# ------------------------------------------------------------------------------ SEG
def _hd_geometry(affine: NDArray[np.float64], shape: Sequence[int]) -> VolumeGeometry:
    """medseg geometry of a highdicom Volume (same conventions: (slice, row, col) -> LPS)."""
    matrix = np.asarray(affine)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    return VolumeGeometry(tuple(shape[:3]), spacing, np.asarray(affine)[:3, 3], matrix / spacing)


def _check_inside(mask: Volume, target: VolumeGeometry, source: Path, name: str) -> None:
    """Foreground of ``mask`` must lie within the target grid (else it would be cut off)."""
    idx = np.argwhere(mask.array)
    if idx.size == 0:
        return
    corners = np.array(
        [
            [a, b, c]
            for a in (idx[:, 0].min(), idx[:, 0].max())
            for b in (idx[:, 1].min(), idx[:, 1].max())
            for c in (idx[:, 2].min(), idx[:, 2].max())
        ]
    )
    inside = target.world_to_index(mask.geometry.index_to_world(corners))
    tol = 0.5 + 1e-3
    if np.any(inside < -tol) or np.any(inside > np.asarray(target.shape) - 1 + tol):
        raise InputError(
            source,
            f"segment '{name}' extends beyond the referenced image series",
            found=f"foreground at image indices {inside.min(0).round(1)}..{inside.max(0).round(1)}",
        )


def _seg_segments(seg: Any) -> list[tuple[int, str]]:
    return [
        (int(s.SegmentNumber), str(s.SegmentLabel).strip())
        for s in seg.SegmentSequence
        if int(s.SegmentNumber) != 0
    ]  # segment 0 of a label-map SEG is background


def read_seg_label(
    path: Path,
    image: LoadedSeries,
    labels: Mapping[str, int],
    on_overlap: OverlapRule = "error",
    combinations: OverlapCombinations | None = None,
) -> Volume:
    """Label map of a DICOM SEG on the grid of ``image``.

    With ``on_overlap="regions"`` overlapping segments get the values of ``combinations``
    (a new one per import when not given; its ``values`` then tell what was added).
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # highdicom/pydicom raise many types for broken files
        raise InputError(path, "is not a readable DICOM SEG", found=safe_error_text(exc)) from None
    for_seg = str(seg.get("FrameOfReferenceUID", ""))
    for_img = str(image.datasets[0].get("FrameOfReferenceUID", ""))
    if for_seg and for_img and for_seg != for_img:
        raise InputError(
            path, "is in another frame of reference than its image series", expected=for_img, found=for_seg
        )
    segments = _seg_segments(seg)
    target = image.volume.geometry
    out = np.zeros(target.shape, dtype=np.uint16)
    if not segments:
        return image.volume.with_array(out.astype(np.uint8))
    try:
        hvol = seg.get_volume(segment_numbers=[n for n, _ in segments], combine_segments=False)
    except Exception as exc:
        raise InputError(path, "frames cannot be placed in space", found=safe_error_text(exc)) from None
    arr = np.asarray(hvol.array)
    if arr.ndim == 3:
        arr = arr[..., None]
    geom = _hd_geometry(hvol.affine, arr.shape)
    aligned = not _grid_offsets(geom, target)
    if not aligned:
        logger.warning("%s: SEG frames do not lie on the image voxels; nearest-neighbour mapping", path)
    claimed = np.zeros(target.shape, dtype=bool)
    kept: list[tuple[str, NDArray[np.bool_]]] = []
    for i, (number, name) in sorted(enumerate(segments), key=lambda t: labels[t[1][1]]):
        mask = Volume((arr[..., i] > 0).astype(np.uint8), geometry=geom)
        _check_inside(mask, target, path, name)
        on_grid = resample_label(mask, target).array.astype(bool)
        if on_overlap == "regions":
            kept.append((name, on_grid))
            continue
        overlap = on_grid & claimed
        if overlap.any() and on_overlap == "error":
            raise InputError(
                path,
                f"segment {number} '{name}' overlaps other segments in {int(overlap.sum())} voxels",
                expected="non-overlapping segments (or --overlap overwrite: higher label wins; "
                "--overlap regions: overlaps kept for region-based training)",
            )
        out[on_grid] = labels[name]
        claimed |= on_grid
    if on_overlap == "regions":
        combos = combinations if combinations is not None else OverlapCombinations(labels)
        return image.volume.with_array(_combine_overlaps(kept, target.shape, combos, path))
    return image.volume.with_array(out.astype(np.uint8) if out.max() < 256 else out)


def _grid_offsets(seg_geom: VolumeGeometry, target: VolumeGeometry) -> list[str]:
    """Why SEG voxel centres are not image voxel centres (empty when they are)."""
    problems = []
    if not np.allclose(np.abs(seg_geom.direction.T @ target.direction), np.eye(3), atol=1e-4):
        problems.append("directions differ")
    pts = seg_geom.index_to_world(np.array([[0, 0, 0], [0, 1, 1], [seg_geom.shape[0] - 1, 0, 0]], float))
    idx = target.world_to_index(pts)
    if np.abs(idx - np.round(idx)).max() > 1e-2:
        problems.append("voxel centres differ")
    return problems


# ------------------------------------------------------------------ overlaps as regions
@dataclass
class OverlapCombinations:
    """Label values of overlapping segment combinations (``on_overlap="regions"``).

    Shared by all cases of one import, so one combination has one value across the dataset.
    ``declared`` holds the label names given (``--labels``) or numbered so far; ``given``
    the combinations among them (a ``--labels`` entry named as the import names the
    overlap, ``a+b``), which keep their declared values. ``values`` holds the combinations
    found in the imported cases, given or numbered here.
    """

    declared: Mapping[str, int]
    values: dict[frozenset[str], int] = field(default_factory=dict)
    given: Mapping[frozenset[str], int] = field(default_factory=dict)

    def value(self, names: frozenset[str]) -> int:
        if len(names) == 1:
            return int(self.declared[next(iter(names))])
        if names not in self.values:
            if names in self.given:
                self.values[names] = int(self.given[names])
            else:
                self.values[names] = max([*self.declared.values(), *self.values.values()]) + 1
        return self.values[names]

    def name(self, names: frozenset[str]) -> str:
        return "+".join(sorted(names, key=lambda n: self.declared[n]))

    def labels(self) -> dict[str, int]:
        out = dict(self.declared)
        for names, value in self.values.items():
            if names in self.given:  # declared under this name already
                continue
            combined = self.name(names)
            if combined in out:
                raise ConfigError(
                    f"the overlap of {sorted(names)} would be named {combined!r}, which is already the name "
                    "of a segment; rename one of them (an overlap is named by its segment names joined by '+')"
                )
            out[combined] = value
        return out

    def regions(self) -> tuple[dict[str, list[int]], list[int]]:
        """One region per declared segment name (every value containing it), painted in order
        of the declared values (the higher value last, so it wins as with "overwrite").

        A combination ``given`` in ``--labels`` counts even where no case holds it, so one
        mapping declares the same regions from one import to the next."""
        combos = {**self.given, **self.values}
        names = sorted(
            (n for n, v in self.declared.items() if v != 0 and v not in combos.values()),
            key=lambda n: self.declared[n],
        )
        regions = {
            n: sorted([self.declared[n], *(v for combo, v in combos.items() if n in combo)]) for n in names
        }
        return regions, [int(self.declared[n]) for n in names]


def _declared_combinations(
    declared: Mapping[str, int], held: set[str], what: str
) -> dict[frozenset[str], int]:
    """The ``--labels`` entries that name an overlap: a name no imported case holds, spelt as
    the import names that overlap (its segment names joined by ``+`` in order of their values,
    e.g. ``GREEN+ORANGE``). Such an entry sets the value of that overlap. One naming known
    segments in another order is refused with the spelling to use (dataset.json would otherwise
    declare one overlap under two names across imports)."""
    candidates = [n for n, v in declared.items() if v != 0 and "+" in n and n not in held]
    singles = {n: v for n, v in declared.items() if v != 0 and n not in candidates}
    out: dict[frozenset[str], int] = {}
    for entry in candidates:
        parts = _split_combination(entry, singles)
        if parts is None:
            continue  # a plain label name with '+' in it
        canonical = "+".join(sorted(parts, key=lambda n: singles[n]))
        if entry != canonical:
            raise ConfigError(
                f"--labels entry {entry!r} names the overlap of {' and '.join(parts)}, which the import "
                f"names {canonical!r} (its {what} names joined by '+' in order of their values); "
                f"write {canonical}={declared[entry]}"
            )
        out[frozenset(parts)] = int(declared[entry])
    return out


def _split_combination(text: str, singles: Mapping[str, int]) -> list[str] | None:
    """``text`` as 2 or more distinct names of ``singles`` joined by ``+`` (None if it is not);
    names may hold ``+`` themselves, so every split is tried."""

    def split(rest: str, used: list[str]) -> list[str] | None:
        if rest in singles and rest not in used:
            return [*used, rest]
        for name in singles:
            if name not in used and rest.startswith(name + "+"):
                found = split(rest[len(name) + 1 :], [*used, name])
                if found is not None:
                    return found
        return None

    parts = split(text, [])
    return parts if parts is not None and len(parts) >= 2 else None


def _combine_overlaps(
    masks: Sequence[tuple[str, NDArray[np.bool_]]],
    shape: Sequence[int],
    combos: OverlapCombinations,
    path: Path,
) -> NDArray[Any]:
    """One label map from possibly overlapping masks: each voxel gets the value of the set of
    names covering it (a single name keeps its declared value)."""
    names = sorted({n for n, _ in masks}, key=lambda n: combos.declared[n])
    if len(names) > 63:
        raise InputError(
            path, "has too many segments to combine overlaps", expected="at most 63", found=str(len(names))
        )
    bit = {n: np.uint64(1) << np.uint64(i) for i, n in enumerate(names)}
    bits = np.zeros(tuple(shape), dtype=np.uint64)
    for n, m in masks:
        bits[np.asarray(m, dtype=bool)] |= bit[n]
    present, inverse = np.unique(bits, return_inverse=True)
    table = [
        0 if int(u) == 0 else combos.value(frozenset(n for i, n in enumerate(names) if int(u) >> i & 1))
        for u in present
    ]
    dtype = np.uint8 if max(table) < 256 else np.uint16
    return np.asarray(table, dtype=dtype)[inverse.reshape(-1)].reshape(tuple(shape))


# -------------------------------------------------------------------------- RTSTRUCT
def _rt_series_uid(ds: pydicom.Dataset, index: DicomIndex) -> str | None:
    for for_item in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in for_item.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                uid = str(series.get("SeriesInstanceUID", ""))
                if uid in index.series:
                    return uid
    for roi in ds.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            for ref in contour.get("ContourImageSequence", []):
                found = index.sop_to_series.get(str(ref.ReferencedSOPInstanceUID))
                if found is not None:
                    return found
    return None


def _roi_names(ds: pydicom.Dataset) -> dict[int, str]:
    return {int(r.ROINumber): str(r.ROIName).strip() for r in ds.get("StructureSetROISequence", [])}


def _square(image: LoadedSeries) -> bool:
    d = image.datasets[0]
    sp = [float(v) for v in d.PixelSpacing]
    return int(d.Rows) == int(d.Columns) and abs(sp[0] - sp[1]) < 1e-6


@contextlib.contextmanager
def _series_folder(files: Sequence[Path]) -> Iterator[Path]:
    """A temporary folder of links to exactly one series (rt-utils reads a whole folder)."""
    with tempfile.TemporaryDirectory(prefix="medseg-rt-") as tmp:
        for i, f in enumerate(files):
            os.symlink(f.resolve(), Path(tmp) / f"{i:05d}.dcm")
        yield Path(tmp)


def _fill_contours(
    ds: pydicom.Dataset, roi_number: int, image: LoadedSeries, path: Path, writer: DatasetWriter | None
) -> NDArray[np.bool_]:
    """(z, y, x) mask of one ROI: rt-utils' fill rule with medseg's world->index transform."""
    import cv2

    geometry = image.volume.geometry
    slice_of = {uid: k for k, uid in enumerate(image.sop_uids)}
    polygons: dict[int, list[NDArray[np.int32]]] = {}
    skipped = 0
    for roi in ds.get("ROIContourSequence", []):
        if int(roi.ReferencedROINumber) != roi_number:
            continue
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                skipped += 1
                continue
            pts = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            idx = geometry.world_to_index(pts)  # (n, 3) as (z, y, x)
            refs = contour.get("ContourImageSequence", [])
            if refs:
                k = slice_of[str(refs[0].ReferencedSOPInstanceUID)]
            else:
                k = round(float(idx[:, 0].mean()))
                if np.abs(idx[:, 0] - k).max() > 0.25 or not 0 <= k < geometry.shape[0]:
                    raise InputError(
                        path,
                        f"a contour of ROI {roi_number} lies on no slice of the image series",
                        found=f"slice index {idx[:, 0].min():.2f}..{idx[:, 0].max():.2f}",
                    )
            polygons.setdefault(k, []).append(np.round(idx[:, [2, 1]]).astype(np.int32))
    if skipped and writer is not None:
        writer.ignore(path, f"ROI {roi_number}: {skipped} contours that are not CLOSED_PLANAR")
    mask = np.zeros(geometry.shape, dtype=np.uint8)
    for k, polys in polygons.items():
        plane = np.zeros(geometry.shape[1:], dtype=np.uint8)
        cv2.fillPoly(plane, polys, 1)
        mask[k] = plane
    return mask.astype(bool)


def _merge_same_names(
    names: Mapping[int, str], per_number: Mapping[int, NDArray[np.bool_]], path: Path
) -> dict[str, NDArray[np.bool_]]:
    """One mask per ROI name: ROIs that share a name (a structure drawn in parts, or saved
    twice by a planning system) become their union, named with their numbers in a warning
    (a label map holds one value per name, so one of them would otherwise be lost)."""
    numbers_of: dict[str, list[int]] = {}
    for number, name in names.items():
        numbers_of.setdefault(name, []).append(number)
    masks: dict[str, NDArray[np.bool_]] = {}
    for name, numbers in numbers_of.items():
        merged = per_number[numbers[0]].copy()
        for number in numbers[1:]:
            merged |= per_number[number]
        masks[name] = merged
        if len(numbers) > 1:
            sizes = ", ".join(f"ROI {n}: {int(per_number[n].sum())}" for n in numbers)
            logger.warning(
                "%s: ROIs %s share the name '%s'; their masks are merged into one label (union: %d voxels; %s)",
                path,
                " and ".join(str(n) for n in numbers),
                name,
                int(merged.sum()),
                sizes,
            )
    return masks


def read_rtstruct_label(
    path: Path,
    image: LoadedSeries,
    labels: Mapping[str, int],
    on_overlap: OverlapRule = "error",
    writer: DatasetWriter | None = None,
    combinations: OverlapCombinations | None = None,
) -> Volume:
    """Label map of an RTSTRUCT on the grid of ``image`` (overlaps as in :func:`read_seg_label`)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(path, "is not a readable DICOM file", found=safe_error_text(exc)) from None
    names = _roi_names(ds)
    in_series = set(image.sop_uids)
    all_referenced = True
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"#{roi.ReferencedROINumber}")
        for contour in roi.get("ContourSequence", []):
            refs = contour.get("ContourImageSequence", [])
            all_referenced &= bool(refs)
            for ref in refs:
                if str(ref.ReferencedSOPInstanceUID) not in in_series:
                    z = np.asarray(contour.ContourData, float).reshape(-1, 3)[:, 2].mean()
                    raise InputError(
                        path,
                        f"ROI '{name}' has a contour (z = {z:.1f} mm) on an image that is not in its series",
                        expected=f"SOP instances of series {image.volume.meta.get('series_description', '')!r} "
                        f"({len(in_series)} slices)",
                        found=f"SOPInstanceUID {ref.ReferencedSOPInstanceUID}",
                    )
    per_number: dict[int, NDArray[np.bool_]] = {}  # one mask per ROI number (names may repeat)
    if _square(image) and all_referenced:
        from rt_utils import RTStructBuilder, image_helper

        with _series_folder(image.files) as folder:
            try:
                rt = RTStructBuilder.create_from(str(folder), str(path))
            except Exception as exc:  # rt-utils raises bare Exceptions
                raise InputError(
                    path, "rt-utils cannot load this RTSTRUCT", found=safe_error_text(exc)
                ) from None
            rt_order = [str(d.SOPInstanceUID) for d in rt.series_data]
            if sorted(rt_order) != sorted(image.sop_uids):  # rt-utils skips files it cannot decode
                raise InputError(
                    path,
                    "rt-utils did not load the whole image series",
                    expected=f"{len(image.sop_uids)} images",
                    found=f"{len(rt_order)} (compressed pixel data without a decoder?)",
                )
            perm = [rt_order.index(uid) for uid in image.sop_uids]
            for number in names:
                # rt-utils' get_roi_mask_by_name, by number: it fills only the first ROI of a name
                contours = [
                    c
                    for roi in ds.get("ROIContourSequence", [])
                    if int(roi.ReferencedROINumber) == number
                    for c in roi.get("ContourSequence", [])
                ]
                if not contours:  # an ROI without contours (an empty structure) is empty
                    per_number[number] = np.zeros(image.volume.shape, dtype=bool)
                    continue
                m = np.asarray(
                    image_helper.create_series_mask_from_contour_sequence(rt.series_data, contours)
                )
                per_number[number] = np.transpose(m, (2, 0, 1))[perm].astype(
                    bool
                )  # from (rows, cols, slices)
    else:
        for number in names:
            per_number[number] = _fill_contours(ds, number, image, path, writer)
    masks = _merge_same_names(names, per_number, path)
    if on_overlap == "regions":
        combos = combinations if combinations is not None else OverlapCombinations(labels)
        combined = _combine_overlaps(list(masks.items()), image.volume.shape, combos, path)
        return image.volume.with_array(combined)
    out = np.zeros(image.volume.shape, dtype=np.uint16)
    claimed = np.zeros(image.volume.shape, dtype=bool)
    for name in sorted(masks, key=lambda n: labels[n]):
        overlap = masks[name] & claimed
        if overlap.any() and on_overlap == "error":
            raise InputError(
                path,
                f"ROI '{name}' overlaps other ROIs in {int(overlap.sum())} voxels",
                expected="non-overlapping ROIs (or --overlap overwrite: higher label wins; "
                "--overlap regions: overlaps kept for region-based training)",
            )
        out[masks[name]] = labels[name]
        claimed |= masks[name]
    return image.volume.with_array(out.astype(np.uint8) if out.max() < 256 else out)


# ---------------------------------------------------------------------------- import
def _label_names(path: Path, kind: str) -> list[str]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise InputError(path, "is not a readable DICOM file", found=safe_error_text(exc)) from None
    if kind == "seg":
        if str(ds.get("SOPClassUID", "")) not in SEG_SOP_CLASSES:
            raise InputError(path, "is not a DICOM SEG", found=f"SOP class {ds.get('SOPClassUID', '?')}")
        return [
            str(s.SegmentLabel).strip() for s in ds.get("SegmentSequence", []) if int(s.SegmentNumber) != 0
        ]
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise InputError(path, "is not an RTSTRUCT", found=f"SOP class {ds.get('SOPClassUID', '?')}")
    return list(dict.fromkeys(_roi_names(ds).values()))  # ROIs sharing a name are one label


def _seg_series_uid(path: Path, index: DicomIndex) -> str | None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for item in ds.get("ReferencedSeriesSequence", []):
        uid = str(item.get("SeriesInstanceUID", ""))
        if uid in index.series:
            return uid
        for inst in item.get("ReferencedInstanceSequence", []):
            found = index.sop_to_series.get(str(inst.ReferencedSOPInstanceUID))
            if found:
                return found
    return None


def _import_dicom_labels(
    kind: Literal["seg", "rtstruct"],
    source: str | Path,
    out_dir: str | Path,
    *,
    label_files: Sequence[str | Path] | None,
    overwrite: bool,
    labels: Mapping[str, int] | None,
    on_overlap: OverlapRule,
    chunk: int | None,
    chunk_overlap: int,
    skip_invalid: bool,
    progress: bool,
) -> Path:
    src = Path(source)
    if not src.is_dir():
        raise InputError(
            src, "is not a folder", expected="a folder with DICOM image series and label objects"
        )
    if on_overlap not in ("error", "overwrite", "regions"):
        raise ConfigError(f"--overlap must be 'error', 'overwrite' or 'regions', found {on_overlap!r}")
    what = "DICOM SEG" if kind == "seg" else "RTSTRUCT"
    index = index_dicom_tree(src)
    found = index.segs if kind == "seg" else index.rtstructs
    files = [Path(f) for f in label_files] if label_files is not None else found
    if not files:
        raise InputError(src, f"holds no {what} objects", expected=f"at least one {what} file")
    for f in files:
        if not f.is_file():
            raise InputError(f, "does not exist")
    names_per_file = {f: _label_names(f, kind) for f in files}
    # Without --labels, names get values as the cases that hold them are imported (module docstring).
    numbering = labels is None
    if labels is None:
        declared = {"background": 0}
    else:
        declared = dict(labels)
        for f, names in names_per_file.items():
            unknown = [n for n in names if n not in declared]
            if unknown:
                raise InputError(
                    f,
                    f"holds {what} names that the labels do not declare",
                    expected=str(sorted(declared)),
                    found=str(unknown),
                )

    combos = None
    if on_overlap == "regions":
        held = {n for names in names_per_file.values() for n in names}
        given = {} if numbering else _declared_combinations(declared, held, what)
        combos = OverlapCombinations(declared, given=given)
    with create_dataset(
        out_dir,
        source=src,
        overwrite=overwrite,
        channel_names=["image"],
        labels=declared,
        name=src.name,
        description=f"DICOM series with {what} labels",
        source_kind=kind,
        chunk=chunk,
        chunk_overlap=chunk_overlap,
    ) as writer:
        for path, reason in index.ignored:
            writer.ignore(path, reason)
        cases: list[tuple[str, Path]] = []
        for f in files:
            cases.append((f"case_{len(cases) + 1:04d}", f))
        modality = ""
        imported_names: set[str] = set()
        imported_files: list[Path] = []

        def add(item: tuple[str, Path]) -> None:
            nonlocal modality
            case_id, path = item
            if kind == "seg":
                uid = _seg_series_uid(path, index)
            else:
                uid = _rt_series_uid(pydicom.dcmread(path, stop_before_pixels=True), index)
            if uid is None:
                raise InputError(
                    path,
                    f"references no image series found under {src}",
                    expected="the referenced series in the source folder",
                )
            image = load_series(index.series[uid])
            # A case that fails (skipped with skip_invalid) must not leave the overlap values it
            # found in dataset.json: they are taken back with it.
            known_combos = dict(combos.values) if combos is not None else {}
            known_labels = dict(writer.labels)
            new_names = []
            try:
                if numbering:  # this case's names not seen before take the next free values
                    for n in names_per_file[path]:
                        if n not in declared:
                            taken = [*declared.values(), *(combos.values.values() if combos else ())]
                            declared[n] = max(taken) + 1
                            new_names.append(n)
                    # inside the try: a name clashing with an overlap's is taken back with the case
                    writer.labels = combos.labels() if combos is not None else dict(declared)
                if kind == "seg":
                    label = read_seg_label(path, image, declared, on_overlap, combos)
                else:
                    label = read_rtstruct_label(path, image, declared, on_overlap, writer, combos)
                if combos is not None:  # combinations first seen in this case become labels
                    writer.labels = combos.labels()
                writer.add_case(
                    case_id,
                    [image.volume],
                    label,
                    patient_id=index.series[uid].patient,
                    source=image.files[0].parent,
                    label_source=path,
                )
            except Exception:
                if combos is not None:
                    combos.values = known_combos
                for n in new_names:
                    del declared[n]
                writer.labels = known_labels
                raise
            imported_names.update(names_per_file[path])
            imported_files.append(path)
            modality = modality or str(image.volume.meta.get("modality", ""))

        # pydicom's value validation would quote malformed values (names, birth dates) in
        # warnings and logs while highdicom and rt-utils read the files.
        with disable_value_validation():
            import_each(
                writer,
                cases,
                add,
                describe=lambda c: c[1],
                skip_invalid=skip_invalid,
                progress=progress,
                description=f"{what} cases",
            )
        if modality:
            writer.channel_names = {"0": modality}
        if combos is not None:
            _declare_regions(writer, combos, what, len(imported_files))
            combo_names = {combos.name(c) for c in combos.given}
            unheld_combos = [combos.name(c) for c in combos.given if c not in combos.values]
            if unheld_combos:
                logger.warning(
                    "--labels declares the overlap(s) %s, which no imported %s has%s; dataset.json keeps them "
                    "as given",
                    ", ".join(f"{n}={declared[n]}" for n in unheld_combos),
                    what,
                    f" ({len(writer.skipped)} case(s) skipped)" if writer.skipped else "",
                )
        else:
            combo_names = set()
        unheld = [
            n for n, v in declared.items() if v != 0 and n not in imported_names and n not in combo_names
        ]
        if unheld:
            logger.warning(
                "--labels declares %s, which no imported %s names%s; dataset.json keeps them as given",
                ", ".join(f"{n}={declared[n]}" for n in unheld),
                what,
                f" ({len(writer.skipped)} case(s) skipped)" if writer.skipped else "",
            )
    return Path(out_dir)


def _declare_regions(writer: DatasetWriter, combos: OverlapCombinations, what: str, imported: int) -> None:
    """dataset.json of an ``on_overlap="regions"`` import: the combinations' labels and one
    region per segment name; no regions when no case has an overlap and ``--labels`` names
    none (a plain label dataset, said in one log line)."""
    from medseg.data.regions import validate_regions

    writer.labels = combos.labels()
    if not combos.values and not combos.given:
        writer.regions, writer.regions_class_order = {}, ()
        logger.warning(
            "--overlap regions: no %s segments overlap in the %d imported case(s); dataset.json declares "
            "plain labels, no regions",
            what,
            imported,
        )
        return
    regions, order = combos.regions()
    writer.regions, writer.regions_class_order = validate_regions(regions, writer.labels, order)
    if combos.values:
        logger.info(
            "overlapping segments kept as %d label value(s) of their own: %s",
            len(combos.values),
            ", ".join(f"{combos.name(n)} = {v}" for n, v in combos.values.items()),
        )


def import_dicom_seg(
    source: str | Path,
    out_dir: str | Path,
    *,
    seg_files: Sequence[str | Path] | None = None,
    overwrite: bool = False,
    labels: Mapping[str, int] | None = None,
    on_overlap: OverlapRule = "error",
    chunk: int | None = None,
    chunk_overlap: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> Path:
    """One case per DICOM SEG: the referenced series under ``source`` and its label map.

    ``seg_files`` picks SEG files (default: every SEG under ``source``); ``labels`` maps
    segment labels to values. Raises :class:`InputError` naming the SEG for a referenced
    series that is absent, undeclared or overlapping segments, a frame of reference
    mismatch, segments outside the image or an unreadable file.
    """
    return _import_dicom_labels(
        "seg",
        source,
        out_dir,
        label_files=seg_files,
        overwrite=overwrite,
        labels=labels,
        on_overlap=on_overlap,
        chunk=chunk,
        chunk_overlap=chunk_overlap,
        skip_invalid=skip_invalid,
        progress=progress,
    )


def import_rtstruct(
    source: str | Path,
    out_dir: str | Path,
    *,
    rtstruct_files: Sequence[str | Path] | None = None,
    overwrite: bool = False,
    labels: Mapping[str, int] | None = None,
    on_overlap: OverlapRule = "error",
    chunk: int | None = None,
    chunk_overlap: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> Path:
    """One case per RTSTRUCT: the referenced series under ``source`` and its ROIs as labels.

    ``rtstruct_files`` picks files (default: every RTSTRUCT under ``source``); ``labels``
    maps ROI names to values. ROIs of one file that share a name are merged (union, with a
    warning naming their numbers). Raises :class:`InputError` naming the RTSTRUCT for contours
    on images missing from the series, no referenced series, undeclared or overlapping
    ROIs, contours between slices or an unreadable file.
    """
    return _import_dicom_labels(
        "rtstruct",
        source,
        out_dir,
        label_files=rtstruct_files,
        overwrite=overwrite,
        labels=labels,
        on_overlap=on_overlap,
        chunk=chunk,
        chunk_overlap=chunk_overlap,
        skip_invalid=skip_invalid,
        progress=progress,
    )
