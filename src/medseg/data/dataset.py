"""The one on-disk dataset format: nnU-Net v2 / Medical Segmentation Decathlon layout.

::

    DATASET/
      dataset.json        {"channel_names": {"0": "T2"}, "labels": {"background": 0, "PZ": 1, ...},
                           "numTraining": N, "file_ending": ".nii.gz", "name": ..., "patients": {...}}
      imagesTr/CASE_0000.nii.gz   one file per channel (_0000, _0001, ...)
      labelsTr/CASE.nii.gz
      imagesTs/CASE_0000.nii.gz   optional test images
      labelsTs/CASE.nii.gz        optional test labels (medseg extension, used by `evaluate`)
      splits.json                 patient-grouped folds (medseg.data.splits)

Existing nnU-Net / MSD datasets work unchanged. ``patients`` (optional, medseg extension)
maps case ids to a pseudonymous patient/group id so that folds never split a patient.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from medseg.config import load_json
from medseg.errors import ConfigError, GeometryError, InputError, MedsegError
from medseg.io.atomic import atomic_dir, write_text_atomic
from medseg.io.itk import write_itk
from medseg.progress import progress_bar
from medseg.volume import Volume

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    """Files of one case: one image per channel, and a label map when known."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    patient_id: str | None = None

    @property
    def group(self) -> str:
        """Grouping key for splits: the patient when known, else the case itself."""
        return self.patient_id or self.case_id


@dataclass(frozen=True)
class DatasetDescriptor:
    """The contents of dataset.json (validated)."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    num_training: int
    name: str = ""
    description: str = ""
    patients: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Region-based training (medseg.data.regions): region name -> label values, and the
    # label value each region is painted with. Empty: ordinary disjoint-label training.
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    regions_class_order: tuple[int, ...] = ()

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels.values())

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if v != 0}

    @property
    def modalities(self) -> list[str]:
        return [self.channel_names[k] for k in sorted(self.channel_names, key=int)]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        data.update(
            {
                "name": self.name,
                "description": self.description,
                "channel_names": self.channel_names,
                "labels": self.labels,
                "numTraining": self.num_training,
                "file_ending": self.file_ending,
            }
        )
        if self.patients:
            data["patients"] = self.patients
        if self.regions:
            data["regions"] = {k: list(v) for k, v in self.regions.items()}
            data["regions_class_order"] = list(self.regions_class_order)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path | None = None) -> DatasetDescriptor:
        src = path or Path(DATASET_JSON)

        def need(key: str, kind: type) -> Any:
            if key not in data:
                raise InputError(src, f"missing key '{key}'", expected="an nnU-Net v2 dataset.json")
            if not isinstance(data[key], kind):
                raise InputError(
                    src,
                    f"key '{key}' has the wrong type",
                    expected=kind.__name__,
                    found=type(data[key]).__name__,
                )
            return data[key]

        channels_raw = data.get("channel_names", data.get("modality"))  # MSD uses "modality"
        if not isinstance(channels_raw, dict) or not channels_raw:
            raise InputError(src, "missing or empty 'channel_names'", expected='e.g. {"0": "T2"}')
        if sorted(str(k) for k in channels_raw) != sorted(str(i) for i in range(len(channels_raw))):
            raise InputError(
                src,
                "'channel_names' keys must be the channel numbers 0, 1, ...",
                expected='e.g. {"0": "T2", "1": "ADC"}',
                found=str(sorted(channels_raw)),
            )
        num_training = data.get("numTraining", 0)
        if isinstance(num_training, float) and num_training.is_integer():
            num_training = int(num_training)
        if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
            raise InputError(src, "key 'numTraining' must be a whole number >= 0", found=repr(num_training))
        patients_raw = data.get("patients", {})
        if not isinstance(patients_raw, dict):
            raise InputError(
                src, "key 'patients' must map case ids to patient ids", found=type(patients_raw).__name__
            )
        file_ending = data.get("file_ending", ".nii.gz")
        if not isinstance(file_ending, str) or not file_ending.startswith("."):
            raise InputError(
                src, "key 'file_ending' must be a suffix such as '.nii.gz'", found=repr(file_ending)
            )
        labels_raw = need("labels", dict)
        labels: dict[str, int] = {}
        for key, value in labels_raw.items():
            # nnU-Net v2: {"name": int}; MSD: {"0": "name"}. Accept both.
            if isinstance(value, int) and not isinstance(value, bool):
                labels[str(key)] = value
            elif isinstance(value, str) and str(key).isdigit():
                labels[value] = int(key)
            elif isinstance(value, list):
                raise InputError(
                    src,
                    f"label entry {key!r}: {value!r} is a region (a list of label values)",
                    expected="one value per label in 'labels', and regions under their own key, e.g. "
                    '"regions": {"tumour_core": [2, 3]} (see README, region-based training)',
                )
            else:
                raise InputError(
                    src, f"label entry {key!r}: {value!r} is not understood", expected='{"name": int}'
                )
        if 0 not in labels.values():
            raise InputError(src, "labels must declare background as 0", found=str(labels))
        if len(set(labels.values())) != len(labels):
            raise InputError(src, "label values must be unique", found=str(labels))
        regions: dict[str, tuple[int, ...]] = {}
        class_order: tuple[int, ...] = ()
        if "regions" in data:
            from medseg.data.regions import validate_regions

            try:
                regions, class_order = validate_regions(
                    data["regions"], labels, data.get("regions_class_order")
                )
            except ValueError as exc:
                raise InputError(src, str(exc)) from None
        elif "regions_class_order" in data:
            raise InputError(src, "'regions_class_order' is given without 'regions'")
        known = {
            "name",
            "description",
            "channel_names",
            "modality",
            "labels",
            "numTraining",
            "file_ending",
            "patients",
            "regions",
            "regions_class_order",
        }
        return cls(
            channel_names={str(k): str(v) for k, v in channels_raw.items()},
            labels=labels,
            file_ending=file_ending,
            num_training=num_training,
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            patients={str(k): str(v) for k, v in patients_raw.items()},
            extra={k: v for k, v in data.items() if k not in known},
            regions=regions,
            regions_class_order=class_order,
        )


def read_descriptor(root: str | Path) -> DatasetDescriptor:
    root = Path(root)
    path = root / DATASET_JSON
    if not root.is_dir():
        raise InputError(
            root, "is not a dataset folder", expected="a folder with dataset.json, imagesTr/, labelsTr/"
        )
    if not path.is_file():
        raise InputError(path, "not found", expected="an nnU-Net v2 / MSD dataset.json")
    data = load_json(path)
    if not isinstance(data, dict):
        raise InputError(path, "is not a JSON object")
    return DatasetDescriptor.from_json(data, path)


def list_cases(
    root: str | Path, subset: str = "Tr", descriptor: DatasetDescriptor | None = None
) -> list[CaseFiles]:
    """Cases of ``imagesTr`` (subset "Tr") or ``imagesTs`` ("Ts"), with labels when present.

    Raises :class:`InputError` for a case missing a channel or (for "Tr") its label.
    """
    root = Path(root)
    desc = descriptor or read_descriptor(root)
    images_dir = root / f"images{subset}"
    labels_dir = root / f"labels{subset}"
    if not images_dir.is_dir():
        if subset == "Ts":
            return []
        raise InputError(
            images_dir, "not found", expected="a folder of images named CASE_0000" + desc.file_ending
        )
    ending = desc.file_ending
    channels: dict[str, dict[int, Path]] = {}
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith(".") or not f.name.endswith(ending):
            continue
        stem = f.name[: -len(ending)]
        m = _CHANNEL_RE.match(stem)
        if not m:
            raise InputError(f, "image name lacks a channel suffix", expected=f"CASE_0000{ending}")
        channels.setdefault(m["case"], {})[int(m["channel"])] = f
    cases = []
    n_ch = desc.num_channels
    for case_id in sorted(channels):
        found = channels[case_id]
        if sorted(found) != list(range(n_ch)):
            raise InputError(
                images_dir / f"{case_id}_XXXX{ending}",
                f"case '{case_id}' has the wrong channels",
                expected=f"channels {list(range(n_ch))}",
                found=f"channels {sorted(found)}",
            )
        label = labels_dir / f"{case_id}{ending}"
        if not label.is_file():
            if subset == "Tr":
                raise InputError(label, f"label of case '{case_id}' is missing")
            label_path: Path | None = None
        else:
            label_path = label
        cases.append(
            CaseFiles(
                case_id=case_id,
                images=tuple(found[c] for c in range(n_ch)),
                label=label_path,
                patient_id=desc.patients.get(case_id),
            )
        )
    if not cases and subset == "Tr":
        raise InputError(images_dir, "holds no cases", expected=f"files named CASE_0000{ending}")
    return cases


def write_descriptor(root: str | Path, descriptor: DatasetDescriptor) -> Path:
    path = Path(root) / DATASET_JSON
    return write_text_atomic(path, json.dumps(descriptor.to_json(), indent=2) + "\n", overwrite=True)


# --------------------------------------------------------------------------- writing
# Adapters build a dataset through DatasetWriter, inside create_dataset(), so that every
# source goes through the same checks and the output appears atomically or not at all.

IMPORT_KEY = "medseg_import"  # dataset.json key recording what an import skipped and why
CHUNKS_KEY = "chunks"  # dataset.json key: chunk case id -> {"case", "start", "stop"}
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_LABEL = 65535


def image_file_name(case_id: str, channel: int, file_ending: str = ".nii.gz") -> str:
    """nnU-Net v2 file name of one channel of a case: ``CASE_0000.nii.gz``."""
    return f"{case_id}_{channel:04d}{file_ending}"


def label_file_name(case_id: str, file_ending: str = ".nii.gz") -> str:
    return f"{case_id}{file_ending}"


def validate_labels(labels: Mapping[str, int], source: str | Path | None = None) -> dict[str, int]:
    """Check a ``{"name": value}`` label declaration: background 0, unique non-negative ints."""
    out = {str(k): int(v) for k, v in labels.items()}
    if 0 not in out.values():
        raise InputError(source, "labels must declare background as 0", found=str(out))
    if len(set(out.values())) != len(out):
        raise InputError(source, "label values must be unique", found=str(out))
    bad = [v for v in out.values() if not 0 <= v <= _MAX_LABEL]
    if bad:
        raise InputError(source, "label values must lie in 0..65535", found=str(bad))
    return out


def parse_labels(text: str) -> dict[str, int]:
    """Parse ``"background=0,liver=1"`` (the CLI's --labels) into ``{"background": 0, "liver": 1}``."""
    labels: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise InputError(None, f"cannot parse label declaration {part!r}", expected="NAME=VALUE,...")
        labels[name.strip()] = int(value)
    return validate_labels(labels)


def label_array(volume: Volume, source: str | Path | None) -> NDArray[np.integer[Any]]:
    """The label map of ``volume`` as uint8 (uint16 when needed), refusing non-integral values.

    Many public datasets store labels as float (CHAOS: float64 after resampling); values
    must still be whole numbers, or the file is not a label map.
    """
    arr = volume.array
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(source, "label map holds NaN or Inf values")
        if not np.array_equal(arr, np.round(arr)):
            frac = np.unique(arr[arr != np.round(arr)])[:5]
            raise InputError(
                source, "label map holds non-integer values", expected="whole numbers", found=str(frac)
            )
    elif arr.dtype.kind not in "uib":
        raise InputError(source, "label map has a non-numeric type", found=str(arr.dtype))
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > _MAX_LABEL:
        raise InputError(source, "label values out of range", expected="0..65535", found=f"{lo}..{hi}")
    return arr.astype(np.uint8 if hi < 256 else np.uint16, copy=False)


def check_label_values(
    values: NDArray[Any] | Sequence[int], declared: Sequence[int], source: str | Path | None
) -> None:
    """Raise when a label map holds values that dataset.json does not declare."""
    undeclared = sorted(set(int(v) for v in np.unique(np.asarray(values))) - set(declared))
    if undeclared:
        raise InputError(
            source,
            "holds undeclared label values",
            expected=f"values in {sorted(declared)}",
            found=f"also {undeclared}",
        )


def read_training_label(path: Path, declared: Sequence[int]) -> Volume:
    """A case's label map, refused (naming the file) when it holds fractional, negative or
    undeclared values: cast to the training's integer type they would silently become other
    classes (-1 as 255, 1.5 as 1) or break the loss."""
    from medseg.io import read_volume

    volume = read_volume(path)
    arr = label_array(volume, path)
    check_label_values(arr, declared, path)
    return volume.with_array(arr)


def _source_name(source: str | Path | None) -> str:
    return str(source) if source is not None else "<unknown source>"


class DatasetWriter:
    """Writes cases into a folder in the dataset layout, checking each case on the way in.

    Every case is checked before any of its files is written: channel count, all channels
    and the label on one grid, finite intensities, whole-number labels that dataset.json
    declares, a unique case id. Use it through :func:`create_dataset`, which writes into
    a temporary folder and renames it only when the whole import succeeded.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        channel_names: Sequence[str],
        labels: Mapping[str, int],
        name: str = "",
        description: str = "",
        file_ending: str = ".nii.gz",
        source_kind: str = "",
        chunk: int | None = None,
        chunk_overlap: int = 0,
        regions: Mapping[str, Sequence[int]] | None = None,
        regions_class_order: Sequence[int] | None = None,
    ) -> None:
        if not channel_names:
            raise InputError(None, "a dataset needs at least one channel name")
        self.root = Path(root)
        self.channel_names = {str(i): str(n) for i, n in enumerate(channel_names)}
        self.labels = validate_labels(labels)
        self.regions: dict[str, tuple[int, ...]] = {}
        self.regions_class_order: tuple[int, ...] = ()
        if regions:
            from medseg.data.regions import validate_regions

            try:
                self.regions, self.regions_class_order = validate_regions(
                    {k: list(v) for k, v in regions.items()},
                    self.labels,
                    None if regions_class_order is None else list(regions_class_order),
                )
            except ValueError as exc:
                raise ConfigError(f"dataset regions: {exc}") from None
        self.name = name
        self.description = description
        self.file_ending = file_ending
        self.source_kind = source_kind
        if chunk is not None:
            from medseg.data.chunking import chunk_bounds

            chunk_bounds(chunk, chunk, chunk_overlap)  # validates size and overlap early
        self.chunk = chunk
        self.chunk_overlap = chunk_overlap
        self.patients: dict[str, str] = {}
        self.chunks: dict[str, dict[str, Any]] = {}
        self.skipped: list[dict[str, str]] = []
        self.ignored: list[str] = []
        self._sources: dict[str, str] = {}
        self.num_training = 0
        self.num_test = 0
        self.source_roots: list[Path] = []  # set by create_dataset; paths in dataset.json are relative

    # -------------------------------------------------------------- bookkeeping
    def _relative(self, path: str | Path) -> str:
        """``path`` relative to its source folder: dataset.json never stores absolute paths
        (exported DICOM trees often carry patient names in folder names above the source)."""
        p = Path(path)
        for root in self.source_roots:
            with contextlib.suppress(ValueError):
                return p.relative_to(root).as_posix() or p.name
        return p.name

    def skip(self, source: str | Path, reason: str) -> None:
        """Record a case left out (``skip_invalid``); the reason goes into dataset.json."""
        prefix = f"{source}: "
        reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
        reason = reason.replace(str(source), self._relative(source))
        for root in self.source_roots:
            reason = reason.replace(str(root), "<source>")
        # The log gets the same relative names as dataset.json: folder names above the
        # source (PACS exports name them after the patient) reach neither.
        logger.warning("skipped %s: %s", self._relative(source), reason)
        self.skipped.append({"source": self._relative(source), "reason": reason})

    def ignore(self, path: str | Path, reason: str) -> None:
        """Record a file that is not a case (e.g. macOS '._' resource forks)."""
        logger.debug("ignored %s (%s)", self._relative(path), reason)
        self.ignored.append(f"{self._relative(path)}: {reason}")

    # ------------------------------------------------------------------- cases
    def add_case(
        self,
        case_id: str,
        images: Sequence[Volume],
        label: Volume | None = None,
        *,
        patient_id: str | None = None,
        test: bool = False,
        source: str | Path | None = None,
        label_source: str | Path | None = None,
    ) -> list[str]:
        """Check and write one case; returns the case ids written (several when chunking).

        ``source`` (the image file or series) and ``label_source`` name the inputs in errors.
        """
        src = _source_name(source)
        lsrc = label_source if label_source is not None else src
        if not _CASE_ID_RE.match(case_id):
            raise InputError(
                source,
                f"case id {case_id!r} cannot be used in file names",
                expected="letters, digits, '.', '_' or '-'",
            )
        key = case_id.lower()  # case-insensitive file systems would merge 'A' and 'a'
        if key in self._sources:
            raise InputError(
                source, f"duplicate case id '{case_id}'", found=f"already imported from {self._sources[key]}"
            )
        n_ch = len(self.channel_names)
        if len(images) != n_ch:
            raise InputError(
                source,
                "has the wrong number of channels",
                expected=f"{n_ch} ({', '.join(self.channel_names.values())})",
                found=str(len(images)),
            )
        ref = images[0].geometry
        for c, img in enumerate(images[1:], start=1):
            diffs = ref.differences(img.geometry)
            if diffs:
                raise GeometryError(
                    f"{src}: channel {c} is not on the grid of channel 0: " + "; ".join(diffs)
                )
        for c, img in enumerate(images):
            if img.array.dtype.kind == "f" and not np.all(np.isfinite(img.array)):
                bad = int(np.size(img.array) - np.count_nonzero(np.isfinite(img.array)))
                raise InputError(source, f"channel {c} holds NaN or Inf values", found=f"{bad} voxels")
        label_vol: Volume | None = None
        if label is not None:
            diffs = ref.differences(label.geometry)
            if diffs:
                raise GeometryError(
                    f"{_source_name(lsrc)}: label grid does not match the image grid of {src}: "
                    + "; ".join(diffs)
                )
            arr = label_array(label, lsrc)
            check_label_values(arr, list(self.labels.values()), lsrc)
            # Same grid within header round-off: write the image's exact geometry, so the
            # dataset's image and label headers agree bit for bit (nnU-Net compares them).
            label_vol = Volume(arr, geometry=ref, meta=label.meta)
        elif not test:
            raise InputError(source, f"training case '{case_id}' has no label")
        self._sources[key] = src

        pieces: list[tuple[str, list[Volume], Volume | None]]
        if self.chunk is None:
            pieces = [(case_id, list(images), label_vol)]
        else:
            from medseg.data.chunking import chunk_bounds, chunk_volume

            bounds = chunk_bounds(ref.shape[0], self.chunk, self.chunk_overlap)
            image_chunks = [chunk_volume(img, self.chunk, self.chunk_overlap) for img in images]
            label_chunks = (
                chunk_volume(label_vol, self.chunk, self.chunk_overlap) if label_vol is not None else None
            )
            pieces = []
            for k, (start, stop) in enumerate(bounds):
                cid = f"{case_id}_chunk{k:03d}"
                pieces.append(
                    (cid, [ch[k] for ch in image_chunks], label_chunks[k] if label_chunks else None)
                )
                self.chunks[cid] = {"case": case_id, "start": start, "stop": stop}
        subset = "Ts" if test else "Tr"
        for cid, imgs, lab in pieces:
            for c, img in enumerate(imgs):
                write_itk(img, self.root / f"images{subset}" / image_file_name(cid, c, self.file_ending))
            if lab is not None:
                write_itk(lab, self.root / f"labels{subset}" / label_file_name(cid, self.file_ending))
            self.patients[cid] = patient_id or case_id
            if test:
                self.num_test += 1
            else:
                self.num_training += 1
        return [cid for cid, _, _ in pieces]

    def finish(self) -> DatasetDescriptor:
        """Write dataset.json; raises when no training case was written."""
        if self.num_training == 0:
            why = f" ({len(self.skipped)} skipped: {self.skipped[0]['reason']} ...)" if self.skipped else ""
            where = self.source_roots[0] if self.source_roots else None
            raise InputError(where, f"no training case could be imported{why}")
        extra: dict[str, Any] = {}
        record: dict[str, Any] = {"source_kind": self.source_kind, "num_test": self.num_test}
        if self.skipped:
            record["skipped"] = self.skipped
        if self.ignored:
            record["ignored_files"] = self.ignored
        extra[IMPORT_KEY] = record
        if self.chunks:
            extra[CHUNKS_KEY] = self.chunks
            extra["chunking"] = {"size": self.chunk, "overlap": self.chunk_overlap}
        desc = DatasetDescriptor(
            channel_names=self.channel_names,
            labels=self.labels,
            file_ending=self.file_ending,
            num_training=self.num_training,
            name=self.name,
            description=self.description,
            patients=dict(sorted(self.patients.items())),
            extra=extra,
            regions=self.regions,
            regions_class_order=self.regions_class_order,
        )
        write_descriptor(self.root, desc)
        return desc


def _check_separate(source: Path, out_dir: Path) -> None:
    """The output must not be, contain or lie inside the source: overwrite would delete it."""
    src = source.resolve()
    out = out_dir.resolve()
    if src == out or out in src.parents or src in out.parents:
        raise InputError(
            out_dir,
            "output overlaps the source",
            expected="an output folder outside the source (the source is never modified)",
            found=f"source {source}",
        )


@contextlib.contextmanager
def create_dataset(
    out_dir: str | Path,
    *,
    source: str | Path | Sequence[str | Path],
    overwrite: bool = False,
    channel_names: Sequence[str],
    labels: Mapping[str, int],
    **writer_options: Any,
) -> Iterator[DatasetWriter]:
    """Yield a :class:`DatasetWriter` on a temporary folder; rename it to ``out_dir`` on success.

    ``source`` (one or several input folders) must exist and must not overlap ``out_dir``.
    An exception inside the block leaves no output (and an existing ``out_dir`` untouched).
    """
    sources = [Path(source)] if isinstance(source, str | Path) else [Path(s) for s in source]
    for src in sources:
        if not src.exists():
            raise InputError(src, "does not exist")
        _check_separate(src, Path(out_dir))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writer = DatasetWriter(tmp, channel_names=channel_names, labels=labels, **writer_options)
        writer.source_roots = [p for s in sources for p in dict.fromkeys([s, s.resolve()])]
        yield writer
        writer.finish()


T = TypeVar("T")


def import_each(
    writer: DatasetWriter,
    items: Sequence[T],
    add: Callable[[T], object],
    *,
    describe: Callable[[T], str | Path],
    skip_invalid: bool = False,
    progress: bool = True,
    description: str = "importing",
) -> None:
    """Run ``add(item)`` for every item with a progress bar.

    A :class:`MedsegError` stops the import (the output is not created) unless
    ``skip_invalid``, in which case the case is left out and listed in dataset.json.
    """
    with progress_bar(progress, description, len(items)) as advance:
        for item in items:
            try:
                add(item)
            except MedsegError as exc:
                if not skip_invalid:
                    raise
                writer.skip(describe(item), str(exc))
            advance()


def source_files(folder: Path, endings: Sequence[str], writer: DatasetWriter | None = None) -> list[Path]:
    """Files of ``folder`` whose names end with one of ``endings`` (case-insensitive), sorted.

    macOS resource forks (``._name``, common in MSD archives) and other hidden files are
    left out and, when a writer is given, recorded in dataset.json rather than dropped silently.
    """
    if not folder.is_dir():
        raise InputError(folder, "not found", expected="a folder")
    out = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("._"):
            if writer is not None:
                writer.ignore(f, "macOS resource fork")
            continue
        if f.name.startswith(".") or not f.is_file():
            continue
        if any(f.name.lower().endswith(e.lower()) for e in endings):
            out.append(f)
    return out
