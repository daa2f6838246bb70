"""``medseg dataset check``: validate every case of a dataset and list every problem.

Checks per case: all channels present and readable (a truncated or corrupt file is a
problem, not a crash), the channels and the label on one grid, the label present (for
training cases), no NaN/Inf intensities, label values whole numbers declared in
dataset.json. Across cases: one orientation and channel count, no duplicate case ids
(also across imagesTr/imagesTs and up to letter case), no stray files, numTraining right.

Geometry comes from the file headers (SimpleITK ``ReadImageInformation``, cheap); values
need a full read, which ``read_values=False`` skips. Nothing is skipped silently: a case
that cannot be checked carries a problem saying why.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medseg.data.dataset import (
    _CHANNEL_RE,
    DATASET_JSON,
    DatasetDescriptor,
    label_file_name,
    read_descriptor,
)
from medseg.errors import InputError, MedsegError
from medseg.io.itk import read_geometry, read_itk
from medseg.io.png import natural_key
from medseg.progress import progress_bar
from medseg.volume import VolumeGeometry

logger = logging.getLogger(__name__)

SUBSETS = ("Tr", "Ts")


@dataclass
class CaseReport:
    """What was found for one case, and its problems (empty when the case is fine)."""

    case_id: str
    subset: str  # "Tr" (imagesTr/labelsTr) or "Ts"
    files: list[str] = field(default_factory=list)
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    num_channels: int = 0
    label_values: list[int] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "subset": self.subset,
            "files": self.files,
            "shape_zyx": list(self.shape) if self.shape else None,
            "spacing_zyx": list(self.spacing) if self.spacing else None,
            "orientation": self.orientation,
            "num_channels": self.num_channels,
            "label_values": self.label_values,
            "problems": self.problems,
            "notes": self.notes,
        }


@dataclass
class DatasetReport:
    """Per-case reports plus problems that belong to no single case."""

    root: Path
    descriptor: DatasetDescriptor | None
    cases: list[CaseReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values_checked: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.cases)

    @property
    def num_problems(self) -> int:
        return len(self.problems) + sum(len(c.problems) for c in self.cases)

    @property
    def bad_cases(self) -> list[CaseReport]:
        return [c for c in self.cases if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "values_checked": self.values_checked,
            "num_cases": len(self.cases),
            "num_problems": self.num_problems,
            "problems": self.problems,
            "notes": self.notes,
            "cases": [c.to_json() for c in self.cases],
        }


def _scan_images(folder: Path, ending: str, report: DatasetReport) -> dict[str, dict[int, Path]]:
    channels: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return channels
    for f in sorted(folder.iterdir()):
        rel = f"{folder.name}/{f.name}"
        if f.name.startswith("._"):
            report.notes.append(f"{rel}: macOS resource fork, ignored")
            continue
        if f.name.startswith("."):
            report.notes.append(f"{rel}: hidden file, ignored")
            continue
        if f.is_dir() or not f.name.endswith(ending):
            report.problems.append(
                f"{rel}: unexpected {'folder' if f.is_dir() else 'file'} "
                f"(expected files named CASE_0000{ending})"
            )
            continue
        m = _CHANNEL_RE.match(f.name[: -len(ending)])
        if not m:
            report.problems.append(f"{rel}: name lacks a channel suffix (expected CASE_0000{ending})")
            continue
        channels.setdefault(m["case"], {})[int(m["channel"])] = f
    return channels


def read_values(path: Path) -> NDArray[Any]:
    """Voxel values of an image file, with NaN and Inf as stored.

    :func:`medseg.io.itk.read_itk` reads floating-point NIfTI with nibabel, because ITK's
    NIfTI reader (SimpleITK <= 2.5, ITK < 6; ITK pull request 6683) silently replaces NaN
    and +-Inf with 0. Raises :class:`InputError` for an unreadable or truncated file.
    """
    return read_itk(path).array


def count_nonfinite(path: Path, values: NDArray[Any] | None = None) -> int:
    """Number of NaN/Inf voxels in an image file (0 for integer types).

    ``values`` are the file's voxels when the caller has already read them (the file is
    then not read again).
    """
    arr = read_values(path) if values is None else np.asarray(values)
    return int(arr.size - np.count_nonzero(np.isfinite(arr))) if arr.dtype.kind in "fc" else 0


def require_finite(path: Path, values: NDArray[Any] | None = None) -> None:
    """Raise :class:`InputError` naming ``path`` when the image stores NaN or Inf voxels.

    ``values``: the voxels already read from ``path`` (see :func:`count_nonfinite`).
    """
    bad = count_nonfinite(path, values)
    if bad:
        raise InputError(
            path, "holds NaN or Inf values", expected="finite intensities", found=f"{bad} voxels"
        )


def _check_values(case: CaseReport, files: list[Path], label: Path | None, declared: list[int]) -> None:
    for c, f in enumerate(files):
        try:
            arr = read_values(f)
        except MedsegError as exc:
            case.problems.append(str(exc))
            continue
        if arr.dtype.kind == "f":
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                case.problems.append(f"{f.name}: channel {c} holds {bad} NaN/Inf voxels")
    if label is None:
        return
    try:
        lab = read_values(label)
    except MedsegError as exc:
        case.problems.append(str(exc))
        return
    if lab.dtype.kind == "f":
        finite = np.isfinite(lab)
        if not finite.all():
            case.problems.append(f"{label.name}: label holds NaN/Inf values")
            lab = np.where(finite, lab, 0)
        frac = lab != np.round(lab)
        if frac.any():
            case.problems.append(
                f"{label.name}: label holds non-integer values (e.g. {float(lab[frac].flat[0]):g})"
            )
            lab = np.round(lab)
    values = sorted(int(v) for v in np.unique(lab))
    case.label_values = values
    undeclared = sorted(set(values) - set(declared))
    if undeclared:
        case.problems.append(
            f"{label.name}: undeclared label values {undeclared} (dataset.json declares {declared})"
        )
    if values == [0] or not values:
        case.notes.append(f"{label.name}: no foreground")


def _check_case(
    case: CaseReport, found: dict[int, Path], label: Path | None, desc: DatasetDescriptor, read_values: bool
) -> None:
    n_ch = desc.num_channels
    missing = sorted(set(range(n_ch)) - set(found))
    extra = sorted(set(found) - set(range(n_ch)))
    if missing:
        case.problems.append(f"missing channel(s) {missing} (dataset.json declares {n_ch})")
    if extra:
        case.problems.append(f"unexpected channel(s) {extra} (dataset.json declares {n_ch})")
    files = [found[c] for c in sorted(found)]
    case.files = [f"images{case.subset}/{f.name}" for f in files] + (
        [f"labels{case.subset}/{label.name}"] if label else []
    )
    case.num_channels = len(files)
    geoms: dict[int, VolumeGeometry] = {}
    for c in sorted(found):
        try:
            geoms[c] = read_geometry(found[c])
        except MedsegError as exc:
            case.problems.append(str(exc))
    ref_channel = min(geoms) if geoms else None
    if ref_channel is not None:
        ref = geoms[ref_channel]
        case.shape, case.spacing, case.orientation = ref.shape, ref.spacing, ref.orientation
        for c, g in geoms.items():
            diffs = ref.differences(g)
            if diffs:
                case.problems.append(
                    f"{found[c].name}: not on the grid of {found[ref_channel].name}: " + "; ".join(diffs)
                )
    if label is not None:
        try:
            lg = read_geometry(label)
        except MedsegError as exc:
            case.problems.append(str(exc))
            label = None
        else:
            if ref_channel is not None:
                diffs = geoms[ref_channel].differences(lg)
                if diffs:
                    case.problems.append(
                        f"{label.name}: label grid does not match the image: " + "; ".join(diffs)
                    )
    if read_values:
        readable = [found[c] for c in sorted(geoms)]
        _check_values(case, readable, label, desc.label_values)


def check_dataset(root: str | Path, *, read_values: bool = True, progress: bool = True) -> DatasetReport:
    """Check every case of the dataset at ``root``; never raises for a bad case.

    Raises :class:`InputError` only when ``root`` is not a folder. A missing or invalid
    dataset.json is reported as a dataset problem (nothing else can then be checked).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "is not a folder", expected="a dataset folder with dataset.json")
    try:
        desc = read_descriptor(root)
    except InputError as exc:
        return DatasetReport(root=root, descriptor=None, problems=[str(exc)], values_checked=read_values)
    report = DatasetReport(root=root, descriptor=desc, values_checked=read_values)
    ending = desc.file_ending

    todo: list[tuple[CaseReport, dict[int, Path], Path | None]] = []
    seen: dict[str, str] = {}
    for subset in SUBSETS:
        images_dir, labels_dir = root / f"images{subset}", root / f"labels{subset}"
        if not images_dir.is_dir():
            if subset == "Tr":
                report.problems.append(f"imagesTr/: not found (expected a folder of CASE_0000{ending})")
            continue
        channels = _scan_images(images_dir, ending, report)
        for case_id in sorted(channels, key=natural_key):
            case = CaseReport(case_id=case_id, subset=subset)
            key = case_id.lower()
            if key in seen:
                case.problems.append(f"duplicate case id: '{case_id}' is also {seen[key]}")
            seen.setdefault(key, f"'{case_id}' in images{subset}")
            label: Path | None = labels_dir / label_file_name(case_id, ending)
            if label is not None and not label.is_file():
                if subset == "Tr":
                    case.problems.append(f"labels{subset}/{label.name}: label file missing")
                label = None
            todo.append((case, channels[case_id], label))
        if labels_dir.is_dir():
            for f in sorted(labels_dir.iterdir()):
                if f.name.startswith("."):
                    continue
                stem = f.name[: -len(ending)] if f.name.endswith(ending) else None
                if stem is None or stem not in channels:
                    report.problems.append(f"labels{subset}/{f.name}: label without an image")
        if subset == "Tr" and not channels:
            report.problems.append(f"imagesTr/: holds no cases (expected files named CASE_0000{ending})")

    with progress_bar(progress, "checking cases", len(todo)) as advance:
        for case, found, label in todo:
            try:
                _check_case(case, found, label, desc, read_values)
            except Exception as exc:  # a checker must report, not crash, on any bad file
                logger.debug("check of %s failed", case.case_id, exc_info=True)
                case.problems.append(f"could not be checked: {type(exc).__name__}: {exc}")
            report.cases.append(case)
            advance()

    orientations = Counter(c.orientation for c in report.cases if c.orientation)
    if len(orientations) > 1:
        majority = orientations.most_common(1)[0][0]
        for c in report.cases:
            if c.orientation and c.orientation != majority:
                c.problems.append(f"orientation {c.orientation} differs from the other cases' {majority}")
    n_tr = sum(1 for c in report.cases if c.subset == "Tr")
    if desc.num_training != n_tr:
        report.problems.append(
            f"{DATASET_JSON}: numTraining is {desc.num_training} but imagesTr holds {n_tr} cases"
        )
    unknown = sorted(set(desc.patients) - {c.case_id for c in report.cases})
    if unknown:
        report.notes.append(
            f"{DATASET_JSON}: 'patients' names {len(unknown)} unknown cases, e.g. {unknown[:3]}"
        )
    return report
