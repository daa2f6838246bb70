"""DICOM Segmentation (SEG) objects that reference the source series (highdicom).

One BINARY segment per label value present, named and SNOMED-coded (see
:mod:`medseg.export.codes`). Frames are paired with source images through geometry
(:func:`medseg.export.dicom_source.match_source_series`), so the SEG overlays its series
voxel-exact in 3D Slicer, OHIF or a PACS viewer, oblique series included.
:func:`read_dicom_seg` decodes a SEG back onto a reference grid to check exactly that.

Choices:

* BINARY, not LABELMAP: LABELMAP SEG (2024) is not yet read by most viewers.
* Empty frames are omitted (highdicom's default); readers place frames by position.
* A label map with no foreground raises :class:`InputError`: a SEG must hold at least
  one segment. Callers that want "no finding" objects must decide that themselves.
* Segment numbers are 1..N in increasing label value; the segment *label* carries the
  name, so :func:`read_dicom_seg` with ``segment_names`` restores the original values.
* Segment Algorithm Type AUTOMATIC (a prediction) by default; SEMIAUTOMATIC or MANUAL for
  a label map a person drew or corrected. AUTOMATIC and SEMIAUTOMATIC segments name the
  algorithm that made them (Segment Algorithm Name is required for them, PS3.3 C.8.20.2):
  medseg by default (a prediction of its own), or what the caller passes as ``algorithm``
  (another tool, or the identification a converted SEG declares). MANUAL names no algorithm,
  since no algorithm made the segments (highdicom requires one for the others and accepts
  none for MANUAL). Manufacturer, model name and software versions are always medseg's: they
  describe the software that wrote the file, not the one that segmented.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.config import disable_value_validation
from pydicom.sr.coding import Code

import medseg
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
from medseg.export.codes import Segment, region_segments, segments_for_label
from medseg.export.dicom_source import SourceLike, deidentify_derived, match_source_series
from medseg.io.atomic import atomic_file, check_writable
from medseg.io.dicom import Pseudonym, safe_error_text
from medseg.volume import Volume, VolumeGeometry

__all__ = ["read_dicom_seg", "write_dicom_seg"]

log = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.7"  # read, not written


def _cielab(rgb: tuple[int, int, int]) -> hd.color.CIELabColor:
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(rgb, dtype=float).reshape(1, 1, 3) / 255.0).reshape(3)
    return hd.color.CIELabColor(
        float(np.clip(lab[0], 0, 100)), float(np.clip(lab[1], -128, 127)), float(np.clip(lab[2], -128, 127))
    )


def _description(
    number: int,
    segment: Segment,
    algorithm_type: AlgorithmType,
    algorithm: hd.AlgorithmIdentificationSequence | None,
) -> hd.seg.SegmentDescription:
    code = segment.code
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64],
        segmented_property_category=code.category,
        segmented_property_type=code.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type.upper()],
        algorithm_identification=algorithm,
        display_color=_cielab(segment.color),
    )
    if code.modifier is not None:
        # Laterality is a modifier of the property type (PS3.3 C.8.20.2, dcmqi and Slicer
        # do the same); highdicom has no argument for it.
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(code.modifier)
        ]
    return desc


# Type 1 in the SEG IOD (Enhanced General Equipment; Multi-frame Functional Groups) and
# removed or emptied by the de-identification profile.
_SEG_REQUIRED = ("DeviceSerialNumber", "ContentDate", "ContentTime")


def write_dicom_seg(
    label: Volume,
    source: SourceLike,
    path: str | Path,
    segment_names: Mapping[int, str] | None = None,
    *,
    colors: Mapping[int, Sequence[int]] | None = None,
    overwrite: bool = False,
    series_description: str = "medseg segmentation",
    series_number: int = 9901,
    algorithm: AlgorithmId | Mapping[int, AlgorithmId] | None = None,
    manufacturer: str = "medseg",
    algorithm_type: AlgorithmType | Mapping[int, AlgorithmType] = "automatic",
    region_masks: Mapping[str, np.ndarray] | None = None,
    deidentify: bool = False,
    pseudonym: Pseudonym = "ANONYMOUS",
    uid_secret: str | None = None,
) -> Path:
    """Write ``label`` (values 0..K on the source grid) as a DICOM SEG referencing ``source``.

    ``source`` is the source series: a folder, a list of files or pydicom datasets (any
    order), or an object with ``.datasets``. ``algorithm_type`` ("automatic",
    "semiautomatic" or "manual"; one for all, or per label value) is each segment's Segment
    Algorithm Type; "manual" segments name no algorithm. ``algorithm`` (one for all, or per
    label value) names the algorithm of the others; None means medseg, for a prediction of
    its own. A mapping that lacks an automatic or semiautomatic value raises ConfigError
    rather than naming medseg for it. Returns the written path.

    ``region_masks`` (a region-based model's masks by region name, on ``label``'s grid)
    writes one segment per region instead of one per label value: BINARY segments may
    overlap, so the overlaps a painted label map loses are kept. Segment numbers (and the
    values ``algorithm_type`` / ``algorithm`` / ``colors`` mappings refer to) are then 1..R
    in region order in every case: a region empty in this case is described but has no
    frames (DICOM allows a segment without frames), so segment r is always region r.

    ``deidentify`` de-identifies the finished SEG (:func:`deidentify_derived`: patient name
    and ID become ``pseudonym``, UIDs are mapped with ``uid_secret``), so that it references
    the copy of the source series that `medseg convert --deidentify` writes with that secret.
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
            "cannot write a DICOM SEG for an empty label map",
            expected="at least one voxel with a label > 0",
            found="no foreground",
        )
    kinds = algorithm_types_for([s.value for s in segments], algorithm_type)
    made_by = algorithms_for(kinds, medseg_algorithm() if algorithm is None else algorithm)
    unnamed = [s.name for s in segments if kinds[s.value] != "manual" and s.value not in made_by]
    if unnamed:
        raise ConfigError(
            f"{target}: a DICOM SEG must name the algorithm of automatic and semiautomatic segments; "
            f"none given for {', '.join(unnamed)}"
        )
    series = match_source_series(label.geometry, source)
    descriptions = [
        _description(i + 1, s, kinds[s.value], _identification(made_by.get(s.value)))
        for i, s in enumerate(segments)
    ]
    named = set(made_by.values())
    content = (
        next(iter(named)).describe()
        if len(named) == 1
        else "segmentation"
        if named
        else "manual segmentation"
    )
    if region_masks is not None:
        stacked = np.stack([kept[s.value] for s in segments], axis=-1).astype(np.uint8)
    else:
        stacked = np.stack([label.array == s.value for s in segments], axis=-1).astype(np.uint8)
    try:
        with warnings.catch_warnings(), disable_value_validation():
            # highdicom warns about single-component person names and pydicom about malformed
            # values, quoting them: never let a patient name or birth date reach the logs.
            warnings.filterwarnings("ignore", message=".*person name.*")
            seg = hd.seg.Segmentation(
                source_images=list(series.datasets),
                pixel_array=stacked,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer=manufacturer,
                manufacturer_model_name="medseg",
                software_versions=medseg.__version__,
                device_serial_number="0",
                series_description=series_description[:64],
                content_label="SEGMENTATION",
                content_description=content[:64],
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(target, "highdicom refused to build the SEG", found=safe_error_text(exc)) from None
    if deidentify:
        deidentify_derived(seg, pseudonym=pseudonym, uid_secret=uid_secret, required=_SEG_REQUIRED)
    with atomic_file(target, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    log.info("wrote DICOM SEG with %d segments to %s", len(segments), target)
    return target


def _identification(algorithm: AlgorithmId | None) -> hd.AlgorithmIdentificationSequence | None:
    if algorithm is None:
        return None
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=Code(*algorithm.family)
    )


def _reference_geometry(reference: Volume | VolumeGeometry) -> VolumeGeometry:
    return reference.geometry if isinstance(reference, Volume) else reference


def read_dicom_seg(
    path: str | Path,
    reference: Volume | VolumeGeometry,
    segment_names: Mapping[int, str] | None = None,
) -> Volume:
    """Decode a DICOM SEG into a label map on ``reference``'s grid (no resampling).

    Voxel values are segment numbers, or with ``segment_names`` (value -> name, as given
    to :func:`write_dicom_seg`) the value whose name equals each segment's label. Raises
    :class:`GeometryError` when the SEG's frames do not lie on the reference grid and
    :class:`InputError` when the file is not a SEG. ``meta["segments"]`` maps value -> label,
    ``meta["algorithm_types"]`` value -> "automatic", "semiautomatic" or "manual" (segments
    with another Segment Algorithm Type are left out), ``meta["algorithms"]`` value ->
    :class:`AlgorithmId` of the segments that name their algorithm.
    Overlapping segments are not supported (medseg writes them only for region-based
    models, ``region_masks``).
    """
    src = Path(path)
    geometry = _reference_geometry(reference)
    try:
        header = pydicom.dcmread(src, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for a bad file
        raise InputError(src, "cannot be read as DICOM", found=safe_error_text(exc)) from None
    if str(getattr(header, "SOPClassUID", "")) not in (SEG_SOP_CLASS_UID, LABELMAP_SEG_SOP_CLASS_UID):
        raise InputError(
            src, "is not a DICOM Segmentation", found=f"SOP class {getattr(header, 'SOPClassUID', '?')}"
        )
    try:
        seg = hd.seg.segread(src)
    except Exception as exc:  # highdicom raises many types for a malformed SEG
        raise InputError(src, "cannot be read as a DICOM SEG", found=safe_error_text(exc)) from None
    # A LABELMAP SEG may describe its background as segment 0; it stays 0.
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence if int(d.SegmentNumber) > 0]
    labels = {
        int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence if int(d.SegmentNumber) > 0
    }
    value_of = {n: n for n in numbers}
    if segment_names is not None:
        by_name = {str(v)[:64]: int(k) for k, v in segment_names.items()}  # SegmentLabel is LO (64)
        unknown = [labels[n] for n in numbers if labels[n] not in by_name]
        if unknown:
            raise ConfigError(f"{src}: segments {unknown} are not among the given names {sorted(by_name)}")
        value_of = {n: by_name[labels[n]] for n in numbers}
    try:
        volume = seg.get_volume(combine_segments=True, dtype=np.uint16)
    except (ValueError, RuntimeError) as exc:
        raise InputError(
            src,
            "cannot be decoded into one label map (irregular frames or overlapping segments?)",
            found=safe_error_text(exc),
        ) from None
    if volume is None:
        raise InputError(src, "frames do not form a regular volume")
    ref = hd.VolumeGeometry(
        geometry.affine, geometry.shape, coordinate_system="PATIENT", frame_of_reference_uid=None
    )
    try:
        matched = volume.match_geometry(ref)
    except RuntimeError as exc:
        raise GeometryError(
            f"{src}: the SEG frames do not lie on the reference grid {geometry!r}: {exc}"
        ) from None
    numbers_array = np.asarray(matched.array)
    lut = np.zeros(max(numbers, default=0) + 1, dtype=np.int64)
    for n, v in value_of.items():
        lut[n] = v
    values = lut[numbers_array]
    dtype = np.uint8 if values.max(initial=0) < 256 else np.uint16
    kinds = {
        int(d.SegmentNumber): read_algorithm_type(d.get("SegmentAlgorithmType"))
        for d in seg.SegmentSequence
        if int(d.SegmentNumber) > 0
    }
    algorithms = {
        value_of[int(d.SegmentNumber)]: read_algorithm_id(
            (d.get("SegmentationAlgorithmIdentificationSequence") or [None])[0], d.get("SegmentAlgorithmName")
        )
        for d in seg.SegmentSequence
        if int(d.SegmentNumber) > 0
    }
    meta = {
        "source": src.name,
        "segments": {value_of[n]: labels[n] for n in numbers},
        "algorithm_types": {value_of[n]: kind for n, kind in kinds.items() if kind is not None},
        "algorithms": {v: a for v, a in algorithms.items() if a is not None},
    }
    return Volume(values.astype(dtype), geometry=geometry, meta=meta)
