"""UW-Madison GI Tract Image Segmentation (Kaggle 2022) -> the nnU-Net v2 dataset layout.

Source layout (the competition's, unchanged)::

    SRC/train.csv                 id,class,segmentation
                                  case123_day20_slice_0105,large_bowel,12377 7 12637 15 ...
    SRC/train/case123/case123_day20/scans/slice_0105_266_266_1.50_1.50.png

* ``id`` is ``caseN_dayM_slice_XXXX``; ``class`` is ``large_bowel``, ``small_bowel`` or
  ``stomach`` (three rows per slice); ``segmentation`` is the competition's RLE
  (:mod:`medseg.io.rle`; row-major, 1-based ``start length`` pairs) or empty.
* slice file names carry ``slice_<number>_<width>_<height>_<spacing x>_<spacing y>.png``
  (width = columns, height = rows, spacing in mm), 16-bit grayscale.

Each case/day (one scan session) becomes one 3D volume: slices stacked by slice number
with the competition's 3 mm slice thickness, pixel spacing from the file names. The PNGs
carry no position or orientation, so the volumes get origin (0, 0, 0) and the identity
direction; the ``patients`` map groups all days of a case so folds never split a patient.

Overlapping masks: the competition's masks are binary per class and may overlap. A label
map holds one class per voxel, so overlaps are resolved with a fixed priority (default
``stomach`` > ``large_bowel`` > ``small_bowel``: the class listed first wins) and the
number of overlapping pixels is counted per scan, reported and saved in
``uwmadison.json`` next to dataset.json. Because of this, label -> RLE reproduces the CSV
exactly only where no masks overlap.

``overlaps="regions"`` keeps the overlaps instead, for region-based training
(:mod:`medseg.data.regions`): each combination of classes gets a label value of its own
(:data:`REGION_LABELS`; 1-3 stay the single classes) and dataset.json declares one region
per class (:func:`class_regions`) holding every value that contains it, so the label map
holds the competition's masks exactly; the overlap priority then only sets the painting
order of the regions (the class listed first is painted last, so it wins there).

:func:`labels_to_rows` and :func:`write_submission_csv` turn a predicted label volume
back into the competition's ``id,class,predicted`` submission rows.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from medseg.data.dataset import create_dataset, import_each
from medseg.errors import ConfigError, InputError
from medseg.io.atomic import atomic_file, check_writable, write_text_atomic
from medseg.io.png import read_image_file
from medseg.io.rle import RleOrder, rle_decode, rle_encode, rle_runs
from medseg.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_OVERLAP_PRIORITY",
    "LABELS",
    "REGION_LABELS",
    "SLICE_THICKNESS_MM",
    "ScanReport",
    "SliceFile",
    "UWMadisonImport",
    "class_regions",
    "import_uwmadison",
    "labels_to_rows",
    "parse_slice_filename",
    "parse_slice_id",
    "read_train_csv",
    "write_submission_csv",
]

CLASS_NAMES = ("large_bowel", "small_bowel", "stomach")  # the order of the rows in train.csv
LABELS = {"background": 0, "stomach": 1, "small_bowel": 2, "large_bowel": 3}
DEFAULT_OVERLAP_PRIORITY = ("stomach", "large_bowel", "small_bowel")
# overlaps="regions": one label value per combination of classes; 1-3 as in LABELS.
REGION_LABELS = {
    **LABELS,
    "large_bowel+small_bowel": 4,
    "small_bowel+stomach": 5,
    "large_bowel+stomach": 6,
    "large_bowel+small_bowel+stomach": 7,
}
OverlapMode = Literal["priority", "regions"]


def _combination_value(classes: Sequence[str]) -> int:
    return REGION_LABELS["+".join(sorted(classes))] if classes else 0


def class_regions(
    priority: Sequence[str] = DEFAULT_OVERLAP_PRIORITY,
) -> tuple[dict[str, list[int]], list[int]]:
    """Regions (class -> every REGION_LABELS value that contains it) and their painting order.

    Regions are listed lowest priority first, so painting them in order lets the class
    listed first in ``priority`` win where they overlap, as the priority import does.
    """
    prio = _check_priority(priority)
    regions = {
        cls: sorted(v for name, v in REGION_LABELS.items() if cls in name.split("+"))
        for cls in reversed(prio)
    }
    return regions, [LABELS[cls] for cls in regions]


SLICE_THICKNESS_MM = 3.0
RLE_ORDER: RleOrder = "C"
SIDECAR = "uwmadison.json"  # per-scan facts next to dataset.json

_ID_RE = re.compile(r"^(?P<case>case\d+)_(?P<day>day\d+)_slice_(?P<slice>\d+)$")
_FILE_RE = re.compile(
    r"^slice_(?P<slice>\d+)_(?P<width>\d+)_(?P<height>\d+)_(?P<sx>\d+(?:\.\d+)?)_(?P<sy>\d+(?:\.\d+)?)\.png$"
)
_SCAN_DIR_RE = re.compile(r"^(?P<case>case\d+)_(?P<day>day\d+)$")


@dataclass(frozen=True)
class SliceFile:
    """One PNG slice and what its file name says about it."""

    path: Path
    number: int
    width: int
    height: int
    spacing_x: float
    spacing_y: float


@dataclass
class ScanReport:
    """What was imported for one case/day."""

    case_day: str
    patient: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    first_slice: int
    labelled_pixels: dict[str, int] = field(default_factory=dict)
    overlap_pixels: int = 0  # pixels where two or more class masks overlap
    overlap_by_pair: dict[str, int] = field(default_factory=dict)


@dataclass
class UWMadisonImport:
    """Result of :func:`import_uwmadison`."""

    out: Path
    scans: list[ScanReport]

    @property
    def overlap_pixels(self) -> int:
        return sum(s.overlap_pixels for s in self.scans)


def parse_slice_id(slice_id: str) -> tuple[str, str, int]:
    """``case123_day20_slice_0105`` -> ("case123", "case123_day20", 105)."""
    m = _ID_RE.match(slice_id.strip())
    if not m:
        raise InputError(None, f"slice id {slice_id!r} is not understood", expected="caseN_dayM_slice_XXXX")
    return m["case"], f"{m['case']}_{m['day']}", int(m["slice"])


def parse_slice_filename(path: str | Path) -> SliceFile:
    """Slice number, size and pixel spacing from ``slice_0105_266_266_1.50_1.50.png``."""
    p = Path(path)
    m = _FILE_RE.match(p.name)
    if not m:
        raise InputError(
            p, "slice file name is not understood", expected="slice_XXXX_<width>_<height>_<sx>_<sy>.png"
        )
    return SliceFile(
        path=p,
        number=int(m["slice"]),
        width=int(m["width"]),
        height=int(m["height"]),
        spacing_x=float(m["sx"]),
        spacing_y=float(m["sy"]),
    )


def read_train_csv(path: str | Path) -> dict[str, dict[int, dict[str, str]]]:
    """train.csv -> {case_day: {slice number: {class: rle}}} (empty rle = no mask)."""
    src = Path(path)
    if not src.is_file():
        raise InputError(src, "not found", expected="the competition's train.csv")
    masks: dict[str, dict[int, dict[str, str]]] = {}
    with src.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM from a spreadsheet export
        reader = csv.DictReader(fh)
        missing = {"id", "class", "segmentation"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                src,
                "lacks required columns",
                expected="columns id,class,segmentation",
                found=f"columns {reader.fieldnames}",
            )
        for line, row in enumerate(reader, start=2):
            try:
                _, case_day, number = parse_slice_id(row["id"] or "")
            except InputError as exc:
                raise InputError(src, f"line {line}: {exc.problem}", expected=exc.expected) from None
            cls = (row["class"] or "").strip()
            if cls not in CLASS_NAMES:
                raise InputError(src, f"line {line}: unknown class {cls!r}", expected=" / ".join(CLASS_NAMES))
            slot = masks.setdefault(case_day, {}).setdefault(number, {})
            if cls in slot:
                raise InputError(src, f"line {line}: duplicate row for {row['id']} {cls}")
            rle = (row["segmentation"] or "").strip()
            try:
                rle_runs(rle)  # what can be checked before the image size is known
            except InputError as exc:
                raise InputError(
                    src,
                    f"line {line} ({row['id']} {cls}): {exc.problem}",
                    expected=exc.expected,
                    found=exc.found,
                ) from None
            slot[cls] = rle
    if not masks:
        raise InputError(src, "holds no rows", expected="one row per slice and class")
    return masks


def find_scans(train_dir: str | Path) -> dict[str, list[SliceFile]]:
    """{case_day: slices sorted by number} for ``train/caseN/caseN_dayM/scans/*.png``."""
    root = Path(train_dir)
    if not root.is_dir():
        raise InputError(root, "not found", expected="the competition's train/ or test/ folder")
    scans: dict[str, list[SliceFile]] = {}
    for scan_dir in sorted(root.glob("case*/case*_day*/scans")):
        day_dir = scan_dir.parent
        m = _SCAN_DIR_RE.match(day_dir.name)
        if not m or day_dir.parent.name != m["case"]:
            raise InputError(
                day_dir, "folder name is not understood", expected="train/caseN/caseN_dayM/scans"
            )
        files = sorted(
            (parse_slice_filename(f) for f in scan_dir.iterdir() if f.suffix.lower() == ".png"),
            key=lambda s: s.number,
        )
        if files:
            scans[day_dir.name] = files
    if not scans:
        raise InputError(root, "holds no scans", expected="train/caseN/caseN_dayM/scans/slice_*.png")
    return scans


def _read_png(path: Path) -> NDArray[np.generic]:
    """A 16-bit (or 8-bit) grayscale PNG as a 2D array (rows, columns)."""
    arr = read_image_file(path)  # InputError naming the file when unreadable or colour
    if arr.ndim != 2:
        raise InputError(path, "is not a grayscale image", expected="one channel", found=f"shape {arr.shape}")
    if arr.dtype == np.int32 and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # some Pillow versions read 16-bit PNGs as mode "I"
    return arr


def _check_priority(priority: Sequence[str]) -> tuple[str, ...]:
    prio = tuple(priority)
    if sorted(prio) != sorted(CLASS_NAMES):
        raise ConfigError(
            f"overlap_priority must list each of {', '.join(CLASS_NAMES)} once, found {list(prio)}"
        )
    return prio


def check_scan_slices(case_day: str, slices: Sequence[SliceFile]) -> list[int]:
    """The slice numbers, after checking they are consecutive and share one size and spacing."""
    if not slices:
        raise InputError(None, f"{case_day} has no slices")
    first = slices[0]
    numbers = [s.number for s in slices]
    expected_numbers = list(range(first.number, numbers[-1] + 1))
    if numbers != expected_numbers:
        gaps = sorted(set(expected_numbers) - set(numbers))[:5]
        raise InputError(
            first.path.parent,
            f"slices of {case_day} are not consecutive",
            expected=f"every slice from {first.number} to {numbers[-1]}",
            found=f"missing slice numbers {gaps} (duplicates: {len(numbers) != len(set(numbers))})",
        )
    for s in slices:
        if (s.width, s.height, s.spacing_x, s.spacing_y) != (
            first.width,
            first.height,
            first.spacing_x,
            first.spacing_y,
        ):
            raise InputError(
                s.path,
                f"slice size or spacing differs within {case_day}",
                expected=f"{first.width}x{first.height} at {first.spacing_x}x{first.spacing_y} mm",
                found=f"{s.width}x{s.height} at {s.spacing_x}x{s.spacing_y} mm",
            )
    return numbers


def _read_slice(s: SliceFile) -> NDArray[np.generic]:
    arr = _read_png(s.path)
    if arr.shape != (s.height, s.width):
        raise InputError(
            s.path,
            "image size differs from its file name",
            expected=f"{s.height} rows x {s.width} columns",
            found=f"{arr.shape[0]} rows x {arr.shape[1]} columns",
        )
    return arr


def _check_bit_depth(
    case_day: str, slices: Sequence[SliceFile], arrays: Sequence[NDArray[np.generic]]
) -> None:
    """An 8-bit slice among 16-bit ones has another intensity scale: refused, not stacked."""
    first = arrays[0].dtype
    for s, arr in zip(slices, arrays, strict=True):
        if arr.dtype != first:
            raise InputError(
                s.path,
                f"bit depth differs within {case_day}",
                expected=f"{first.itemsize * 8}-bit like {slices[0].path.name}",
                found=f"{arr.dtype.itemsize * 8}-bit",
            )


def stack_scan(
    case_day: str, slices: Sequence[SliceFile], *, slice_thickness: float = SLICE_THICKNESS_MM
) -> Volume:
    """One case/day's PNG slices as a (z, y, x) volume: the geometry :func:`load_scan` gives.

    For scans without masks (the competition's test set): what a model trained on an
    imported dataset sees, slice ``z`` being slice number ``slices[0].number + z``.
    """
    check_scan_slices(case_day, slices)
    first = slices[0]
    arrays = [_read_slice(s) for s in slices]
    _check_bit_depth(case_day, slices, arrays)
    image = np.stack(arrays).astype(np.uint16)
    spacing = (float(slice_thickness), first.spacing_y, first.spacing_x)
    return Volume(image, spacing, (0.0, 0.0, 0.0), meta={"source": case_day, "modality": "MR"})


def load_scan(
    case_day: str,
    slices: Sequence[SliceFile],
    masks: Mapping[int, Mapping[str, str]],
    *,
    slice_thickness: float = SLICE_THICKNESS_MM,
    overlap_priority: Sequence[str] = DEFAULT_OVERLAP_PRIORITY,
    csv_name: str = "train.csv",
    overlaps: OverlapMode = "priority",
) -> tuple[Volume, Volume, ScanReport]:
    """Stack one case/day's PNG slices and decode its masks into (image, label, report).

    ``csv_name`` names the CSV the masks came from in error messages. ``overlaps``:
    "priority" paints overlapping masks by ``overlap_priority``; "regions" gives each
    combination of classes its REGION_LABELS value (nothing is lost).
    """
    prio = _check_priority(overlap_priority)
    first = slices[0]
    numbers = check_scan_slices(case_day, slices)
    unlisted = [n for n in numbers if n not in masks]
    if unlisted:
        raise InputError(
            first.path.parent,
            f"{len(unlisted)} slices of {case_day} have no rows in {csv_name}",
            expected="rows for every slice (empty segmentation for slices without masks)",
            found=f"no rows for slice numbers {unlisted[:5]}",
        )
    extra = sorted(set(masks) - set(numbers))
    if extra:
        raise InputError(
            first.path.parent,
            f"{csv_name} lists slices of {case_day} without a PNG file",
            found=f"slice numbers {extra[:5]}",
        )

    shape2d = (first.height, first.width)
    image = np.empty((len(slices), *shape2d), dtype=np.uint16)
    label = np.zeros((len(slices), *shape2d), dtype=np.uint8)
    pixels = dict.fromkeys(CLASS_NAMES, 0)
    pair_counts: dict[str, int] = {}
    overlap_total = 0
    arrays = [_read_slice(s) for s in slices]
    _check_bit_depth(case_day, slices, arrays)
    for z, s in enumerate(slices):
        image[z] = arrays[z]
        decoded: dict[str, NDArray[np.bool_]] = {}
        for cls in CLASS_NAMES:
            rle = masks[s.number].get(cls, "")
            try:
                decoded[cls] = rle_decode(rle, shape2d, order=RLE_ORDER).astype(bool)
            except InputError as exc:
                raise InputError(
                    s.path,
                    f"mask {cls} of slice {s.number} ({csv_name}): {exc.problem}",
                    expected=exc.expected,
                    found=exc.found,
                ) from None
            pixels[cls] += int(decoded[cls].sum())
        count = np.sum([m.astype(np.uint8) for m in decoded.values()], axis=0)
        overlap_total += int(np.count_nonzero(count > 1))
        for i, a in enumerate(CLASS_NAMES):
            for b in CLASS_NAMES[i + 1 :]:
                n = int((decoded[a] & decoded[b]).sum())
                if n:
                    pair_counts[f"{a}+{b}"] = pair_counts.get(f"{a}+{b}", 0) + n
        if overlaps == "regions":
            # bits: large_bowel 1, small_bowel 2, stomach 4 (CLASS_NAMES order) -> combination value
            bits = sum(decoded[cls].astype(np.uint8) << i for i, cls in enumerate(CLASS_NAMES))
            table = np.array(
                [
                    _combination_value([c for i, c in enumerate(CLASS_NAMES) if b >> i & 1])
                    for b in range(2 ** len(CLASS_NAMES))
                ],
                dtype=np.uint8,
            )
            label[z] = table[bits]
            continue
        for cls in reversed(prio):  # paint lowest priority first; the first-listed class wins
            label[z][decoded[cls]] = LABELS[cls]

    spacing = (float(slice_thickness), first.spacing_y, first.spacing_x)
    meta = {"source": case_day, "modality": "MR"}
    image_vol = Volume(image, spacing, (0.0, 0.0, 0.0), meta=meta)
    label_vol = Volume(label, geometry=image_vol.geometry, meta=meta)
    report = ScanReport(
        case_day=case_day,
        patient=case_day.split("_")[0],
        shape=image_vol.shape,
        spacing=image_vol.spacing,
        first_slice=first.number,
        labelled_pixels=pixels,
        overlap_pixels=overlap_total,
        overlap_by_pair=pair_counts,
    )
    return image_vol, label_vol, report


def import_uwmadison(
    src: str | Path,
    out: str | Path,
    *,
    csv_path: str | Path | None = None,
    slice_thickness: float = SLICE_THICKNESS_MM,
    overlap_priority: Sequence[str] = DEFAULT_OVERLAP_PRIORITY,
    chunk: int | None = None,
    chunk_overlap: int = 0,
    skip_invalid: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    overlaps: OverlapMode = "priority",
) -> UWMadisonImport:
    """Convert the competition folder ``src`` (train.csv + train/) into a dataset at ``out``.

    The dataset is written into a temporary folder and renamed into place at the end
    (:func:`medseg.data.dataset.create_dataset`), so a failure never leaves a half-written
    dataset; the source files are only read. ``skip_invalid`` leaves broken scans out
    (listed in dataset.json) instead of stopping; ``chunk`` splits volumes into chunks of
    that many slices. Besides dataset.json, ``uwmadison.json`` records the RLE order, slice
    thickness, overlap priority, first slice number and overlap counts per scan, which
    :func:`labels_to_rows` needs to write a submission. ``overlaps="regions"`` keeps
    overlapping masks as label values of their own and declares one region per class in
    dataset.json (region-based training; see the module docstring).
    """
    root = Path(src)
    prio = _check_priority(overlap_priority)
    if overlaps not in ("priority", "regions"):
        raise ConfigError(f"overlaps must be 'priority' or 'regions', found {overlaps!r}")
    labels = REGION_LABELS if overlaps == "regions" else LABELS
    region_options: dict[str, object] = {}
    if overlaps == "regions":
        regions, order = class_regions(prio)
        region_options = {"regions": regions, "regions_class_order": order}
    if slice_thickness <= 0:
        raise ConfigError(f"slice_thickness must be positive, found {slice_thickness}")
    check_writable(out, overwrite)
    csv_file = Path(csv_path) if csv_path is not None else root / "train.csv"
    masks = read_train_csv(csv_file)
    scans = find_scans(root / "train")
    unmatched = sorted(set(masks) - set(scans))
    if unmatched:
        raise InputError(
            root / "train",
            f"{csv_file.name} lists scans that have no PNG folder",
            expected=f"train/caseN/caseN_dayM/scans for every case/day in {csv_file.name}",
            found=", ".join(unmatched[:5]),
        )
    reports: list[ScanReport] = []

    with create_dataset(
        out,
        source=root,
        overwrite=overwrite,
        channel_names=["MR"],
        labels=labels,
        name="UWMadisonGITract",
        description="UW-Madison GI Tract Image Segmentation (Kaggle 2022), one volume per case/day",
        source_kind="uwmadison",
        chunk=chunk,
        chunk_overlap=chunk_overlap,
        **region_options,
    ) as writer:

        def add(case_day: str) -> None:
            image, label, report = load_scan(
                case_day,
                scans[case_day],
                masks.get(case_day, {}),
                slice_thickness=slice_thickness,
                overlap_priority=prio,
                csv_name=csv_file.name,
                overlaps=overlaps,
            )
            writer.add_case(
                case_day,
                [image],
                label,
                patient_id=report.patient,
                source=scans[case_day][0].path.parent,
                label_source=csv_file,
            )
            if report.overlap_pixels and overlaps == "priority":
                logger.info(
                    "%s: %d pixels where masks overlap, resolved by priority %s",
                    case_day,
                    report.overlap_pixels,
                    " > ".join(prio),
                )
            reports.append(report)

        import_each(
            writer,
            sorted(scans),
            add,
            describe=lambda cd: scans[cd][0].path.parent,
            skip_invalid=skip_invalid,
            progress=progress,
            description="UW-Madison scans",
        )
        info = {
            "rle_order": RLE_ORDER,
            "slice_thickness_mm": slice_thickness,
            "overlap_priority": list(prio),
            "overlaps": overlaps,
            "labels": dict(labels),
            "scans": {
                r.case_day: {
                    "patient": r.patient,
                    "first_slice": r.first_slice,
                    "num_slices": r.shape[0],
                    "labelled_pixels": r.labelled_pixels,
                    "overlap_pixels": r.overlap_pixels,
                    "overlap_by_pair": r.overlap_by_pair,
                }
                for r in reports
            },
        }
        write_text_atomic(writer.root / SIDECAR, json.dumps(info, indent=2) + "\n", overwrite=True)
    target = Path(out)
    # debug: the CLI prints this summary, and the returned UWMadisonImport holds it
    logger.debug(
        "imported %d scans of %d cases into %s (%d overlapping mask pixels %s)",
        len(reports),
        len({r.patient for r in reports}),
        target,
        sum(r.overlap_pixels for r in reports),
        "kept as label values of their own" if overlaps == "regions" else "resolved by priority",
    )
    return UWMadisonImport(out=target, scans=reports)


def labels_to_rows(
    label: Volume | NDArray[np.generic],
    case_day: str,
    *,
    first_slice: int = 1,
    labels: Mapping[str, int] = LABELS,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> list[tuple[str, str, str]]:
    """A (z, y, x) label volume of one case/day -> competition rows ``(id, class, rle)``.

    Rows come slice by slice, classes in train.csv's order; array slice ``z`` is the
    competition's slice number ``first_slice + z``. With ``regions`` (class -> label
    values, e.g. :func:`class_regions` for an ``overlaps="regions"`` import) a class's mask
    is every voxel whose value its region holds, so overlapping masks come back whole.
    """
    if not _SCAN_DIR_RE.match(case_day):
        raise InputError(None, f"case/day id {case_day!r} is not understood", expected="caseN_dayM")
    arr = label.array if isinstance(label, Volume) else np.asarray(label)
    if arr.ndim != 3:
        raise InputError(None, "label volume must be 3D (slices, rows, columns)", found=f"shape {arr.shape}")
    values: dict[str, list[int]] = (
        {c: [labels[c]] for c in CLASS_NAMES if c in labels}
        if regions is None
        else {c: [int(v) for v in regions[c]] for c in CLASS_NAMES if c in regions}
    )
    missing = [c for c in CLASS_NAMES if c not in values]
    if missing:
        what = "labels" if regions is None else "regions"
        raise ConfigError(f"{what} must give a value for each of {', '.join(CLASS_NAMES)}; missing {missing}")
    rows: list[tuple[str, str, str]] = []
    for z in range(arr.shape[0]):
        slice_id = f"{case_day}_slice_{first_slice + z:04d}"
        for cls in CLASS_NAMES:
            rows.append((slice_id, cls, rle_encode(np.isin(arr[z], values[cls]), order=RLE_ORDER)))
    return rows


def write_submission_csv(
    rows: Iterable[tuple[str, str, str]], path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``id,class,predicted`` rows (the competition's submission format) atomically."""
    target = Path(path)
    with atomic_file(target, overwrite=overwrite) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "class", "predicted"])
        writer.writerows(rows)
    return target
