"""Dataset fingerprint: the statistics a plan is derived from.

Per case: spacing, shape, shape after cropping to the non-zero region, and a sample of
foreground intensities per channel. Dataset-wide: intensity percentiles, mean and std of
the foreground per channel (used by CT normalisation), and spacing/shape medians.
Cases are read in worker processes so the fingerprint of a large dataset stays fast and
each process holds one case at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config import from_dict, to_dict
from medseg.data.dataset import CaseFiles, DatasetDescriptor, list_cases, read_descriptor, read_training_label
from medseg.errors import InputError
from medseg.geometry.crop import CropBox, bounding_box
from medseg.io import read_volume
from medseg.io.atomic import write_text_atomic
from medseg.progress import progress_bar
from medseg.volume import Volume

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    cropped_shape: tuple[int, int, int]
    orientation: str
    foreground_voxels: int


@dataclass(frozen=True)
class ChannelStats:
    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class Fingerprint:
    schema_version: int
    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    cases: tuple[CaseFingerprint, ...]
    channels: tuple[ChannelStats, ...]

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=float)

    @property
    def shapes(self) -> np.ndarray:
        return np.array([c.shape for c in self.cases], dtype=float)

    @property
    def cropped_shapes(self) -> np.ndarray:
        return np.array([c.cropped_shape for c in self.cases], dtype=float)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(to_dict(self), indent=1) + "\n", overwrite=True)

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        from medseg.config import load_json

        return from_dict(cls, load_json(path), where=str(path))


def check_case_grids(
    images: Sequence[Volume], label: Volume | None, case_id: str, files: Sequence[Path | None] = ()
) -> None:
    """Every channel and the label must lie on channel 0's grid; the error names the file."""
    ref = images[0].geometry
    named = list(files) + [None] * (len(images) + 1 - len(files))
    for i, img in enumerate(images[1:], start=1):
        diffs = ref.differences(img.geometry)
        if diffs:
            raise InputError(
                named[i],
                f"channel {i} of case '{case_id}' is not on the grid of channel 0",
                found="; ".join(diffs),
            )
    if label is not None:
        diffs = ref.differences(label.geometry)
        if diffs:
            raise InputError(
                named[len(images)],
                f"label of case '{case_id}' is not on the image grid",
                found="; ".join(diffs),
            )


def _fingerprint_case(
    case: CaseFiles, seed: int, declared: tuple[int, ...]
) -> tuple[CaseFingerprint, list[np.ndarray]]:
    images = [read_volume(p) for p in case.images]
    label = read_training_label(case.label, declared) if case.label is not None else None
    check_case_grids(images, label, case.case_id, [*case.images, case.label])
    ref = images[0].geometry
    nonzero = np.zeros(ref.shape, bool)
    for img in images:
        nonzero |= img.array != 0
    box = bounding_box(nonzero) if nonzero.any() else CropBox.full(ref.shape)
    fg = label.array > 0 if label is not None else nonzero
    rng = np.random.default_rng(seed)
    samples = []
    n_fg = int(fg.sum())
    for img in images:
        values = img.array[fg] if n_fg else img.array.reshape(-1)
        if values.size > SAMPLES_PER_CASE:
            values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
        samples.append(values.astype(np.float64))
    fp = CaseFingerprint(
        case_id=case.case_id,
        spacing=ref.spacing,
        shape=ref.shape,
        cropped_shape=box.shape,
        orientation=ref.orientation,
        foreground_voxels=n_fg,
    )
    return fp, samples


def _channel_stats(values: np.ndarray) -> ChannelStats:
    if values.size == 0:
        values = np.zeros(1)
    return ChannelStats(
        mean=float(values.mean()),
        std=float(values.std()),
        median=float(np.median(values)),
        min=float(values.min()),
        max=float(values.max()),
        percentile_00_5=float(np.percentile(values, 0.5)),
        percentile_99_5=float(np.percentile(values, 99.5)),
    )


def compute_fingerprint(
    root: str | Path,
    *,
    workers: int = 2,
    progress: bool = False,
    descriptor: DatasetDescriptor | None = None,
) -> Fingerprint:
    """Fingerprint of the training cases of a dataset folder."""
    root = Path(root)
    desc = descriptor or read_descriptor(root)
    cases = list_cases(root, "Tr", desc)
    declared = tuple(desc.labels.values())
    results: list[tuple[CaseFingerprint, list[np.ndarray]]] = []
    with progress_bar(progress, "fingerprint", len(cases)) as advance:
        if workers > 1 and len(cases) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for res in pool.map(_fingerprint_case, cases, range(len(cases)), [declared] * len(cases)):
                    results.append(res)
                    advance()
        else:
            for i, case in enumerate(cases):
                results.append(_fingerprint_case(case, i, declared))
                advance()
    n_ch = desc.num_channels
    channels = tuple(_channel_stats(np.concatenate([r[1][c] for r in results])) for c in range(n_ch))
    return Fingerprint(
        schema_version=FINGERPRINT_VERSION,
        dataset_name=desc.name or root.name,
        channel_names=tuple(desc.modalities),
        labels=dict(desc.labels),
        cases=tuple(r[0] for r in results),
        channels=channels,
    )
