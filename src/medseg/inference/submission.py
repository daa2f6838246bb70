"""A Kaggle submission from a trained model: UW-Madison GI Tract (2022) test scans -> CSV.

The competition's test folder has the training folder's layout
(``test/caseN/caseN_dayM/scans/slice_XXXX_<w>_<h>_<sx>_<sy>.png``) without masks, and a
``sample_submission.csv`` listing the ``id,class`` rows to fill. Each scan is stacked as
the importer stacks training scans (:func:`~medseg.data.adapters.uwmadison.stack_scan`:
same spacing, same slice order), predicted in memory on the scan's own grid, and encoded
with the competition's RLE (:func:`~medseg.data.adapters.uwmadison.labels_to_rows`).

A label map holds one class per pixel, so predicted masks never overlap (the competition's
masks may; see the importer's overlap priority).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.adapters.uwmadison import (
    CLASS_NAMES,
    SLICE_THICKNESS_MM,
    SliceFile,
    check_scan_slices,
    find_scans,
    labels_to_rows,
    parse_slice_id,
    stack_scan,
    write_submission_csv,
)
from medseg.errors import ConfigError, InputError
from medseg.inference.predictor import SegmentationModel
from medseg.io.atomic import check_writable
from medseg.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmissionResult:
    path: Path
    scans: int
    rows: int
    rows_with_masks: int


def _region_rows(model: SegmentationModel, case_day: str, first_slice: int) -> list[tuple[str, str, str]]:
    """Rows from a region model's masks (one region per class), so overlapping predicted
    masks are all submitted: each voxel gets a bit per class, each class the values with its bit."""
    masks = model.last_region_masks
    bits = sum(np.asarray(masks[c], dtype=np.uint8) << i for i, c in enumerate(CLASS_NAMES))
    combos = range(1, 2 ** len(CLASS_NAMES))
    regions = {c: [v for v in combos if v >> i & 1] for i, c in enumerate(CLASS_NAMES)}
    return labels_to_rows(np.asarray(bits), case_day, first_slice=first_slice, regions=regions)


def _model_labels(model: SegmentationModel) -> dict[str, int]:
    if set(CLASS_NAMES) <= set(model.plan.regions):
        return dict(model.plan.labels)  # a region model: rows come from its region masks
    labels = {name: int(value) for name, value in model.plan.labels.items()}
    missing = [c for c in CLASS_NAMES if c not in labels]
    if missing:
        raise ConfigError(
            f"{model.path}: the model's classes {sorted(n for n in labels if n != 'background')} are not the "
            f"competition's ({', '.join(CLASS_NAMES)}); train it on a dataset made by "
            "`medseg dataset import uwmadison`"
        )
    return labels


def _sample_order(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise InputError(path, "not found", expected="the competition's sample_submission.csv")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not {"id", "class"} <= set(reader.fieldnames or []):
            raise InputError(
                path, "lacks required columns", expected="id,class", found=f"{reader.fieldnames}"
            )
        return [(row["id"].strip(), row["class"].strip()) for row in reader]


def _check_sample_against_scans(
    order: Sequence[tuple[str, str]], scans: Mapping[str, Sequence[SliceFile]], sample: Path
) -> None:
    if not order:
        raise InputError(sample, "lists no rows", expected="one row per test slice and class")
    unknown: list[str] = []
    for slice_id, cls in order:
        try:
            _, case_day, number = parse_slice_id(slice_id)
        except InputError as exc:
            raise InputError(sample, f"{slice_id}: {exc.problem}", expected=exc.expected) from None
        numbers = {s.number for s in scans.get(case_day, ())}
        if number not in numbers or cls not in CLASS_NAMES:
            unknown.append(f"{slice_id} {cls}")
    if unknown:
        raise InputError(
            sample,
            f"{len(unknown)} of its rows have no test slice or an unknown class",
            expected=f"ids of the PNG slices under the test folder, classes {', '.join(CLASS_NAMES)}",
            found=", ".join(unknown[:3]),
        )


def predict_uwmadison_submission(
    test_dir: str | Path,
    model: str | Path | Sequence[str | Path] | SegmentationModel,
    out_csv: str | Path,
    *,
    sample_submission: str | Path | None = None,
    tta: bool = False,
    slice_thickness: float = SLICE_THICKNESS_MM,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = False,
) -> SubmissionResult:
    """Predict every scan under ``test_dir`` and write the ``id,class,predicted`` CSV.

    ``model`` is what :class:`SegmentationModel` takes: a model folder, a folder of folds,
    or a list of configurations' folders (an ensemble, probabilities averaged).

    With ``sample_submission``, the rows follow its order and every row it lists must be
    predicted (an error names the first missing ones); rows it does not list are dropped
    with a warning. Without it, rows come scan by scan, slice by slice, classes in the
    competition's order.
    """
    target = check_writable(out_csv, overwrite)  # before hours of prediction, not after
    seg = model if isinstance(model, SegmentationModel) else SegmentationModel(model, device=device)
    labels = _model_labels(seg)
    scans = find_scans(test_dir)
    # Everything that can be checked is checked before hours of prediction, not after.
    for case_day, slices in scans.items():
        check_scan_slices(case_day, slices)
    order = None
    if sample_submission is not None:
        order = _sample_order(Path(sample_submission))
        _check_sample_against_scans(order, scans, Path(sample_submission))
    log.info("predicting %d test scan(s) with %s", len(scans), " + ".join(str(p) for p in seg.paths))
    rows: list[tuple[str, str, str]] = []
    with progress_bar(progress, "test scans", len(scans)) as advance:
        for case_day, slices in sorted(scans.items()):
            image = stack_scan(case_day, slices, slice_thickness=slice_thickness)
            label, _ = seg.predict([image], tta=tta, where=str(slices[0].path.parent))
            if set(CLASS_NAMES) <= set(seg.plan.regions):
                rows.extend(_region_rows(seg, case_day, slices[0].number))
            else:
                rows.extend(labels_to_rows(label, case_day, first_slice=slices[0].number, labels=labels))
            advance()
    if order is not None:
        rows = _in_sample_order(rows, order, Path(str(sample_submission)))
    write_submission_csv(rows, target, overwrite=overwrite)
    filled = sum(1 for r in rows if r[2])
    # debug: the CLI prints this summary, and the returned SubmissionResult holds it
    log.debug("wrote %d rows (%d with a mask) for %d scans to %s", len(rows), filled, len(scans), target)
    return SubmissionResult(target, len(scans), len(rows), filled)


def _in_sample_order(
    rows: Sequence[tuple[str, str, str]], order: Sequence[tuple[str, str]], sample: Path
) -> list[tuple[str, str, str]]:
    by_key = {(r[0], r[1]): r for r in rows}
    missing = [key for key in order if key not in by_key]
    if missing:
        raise InputError(
            sample,
            f"{len(missing)} of its rows have no prediction",
            expected="a scan folder under the test folder for every id it lists",
            found=", ".join(f"{i} {c}" for i, c in missing[:3]),
        )
    extra = len(by_key) - len(set(order) & set(by_key))
    if extra:
        log.warning("%d predicted rows are not in %s and are left out", extra, sample.name)
    return [by_key[key] for key in order]
