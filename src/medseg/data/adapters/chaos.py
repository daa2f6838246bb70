"""CHAOS abdominal MR (T2-SPIR) as distributed by SSL-ALPNet / Q-Net -> the dataset format.

Layout: one flat folder of ``image_<N>.nii.gz`` and ``label_<N>.nii.gz`` where ``N`` is the
CHAOS MR training patient id. Labels (already remapped from the challenge's PNG grey
levels 0/63/126/189/252): 0 background, 1 liver, 2 right kidney, 3 left kidney, 4 spleen.
Both images and labels are stored as float64; images are written as float32 (ample for
MR intensities, half the size) and labels as uint8 after checking they are whole numbers.

Case and patient id: ``chaos_<N>`` with N zero-padded to three digits (the challenge's own
patient numbering, so no real identifier is involved).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.data.check import require_finite
from medseg.data.dataset import create_dataset, import_each, source_files
from medseg.errors import InputError
from medseg.io.itk import read_itk

CHAOS_LABELS = {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
CHAOS_CHANNELS = ("T2SPIR",)
_NAME_RE = re.compile(r"^(?P<kind>image|label)_(?P<id>[A-Za-z0-9]+)\.nii(\.gz)?$")


def chaos_case_id(number: str) -> str:
    return f"chaos_{int(number):03d}" if number.isdigit() else f"chaos_{number}"


def import_chaos(
    source: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    cases: Sequence[str] | None = None,
    chunk: int | None = None,
    chunk_overlap: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a CHAOS ``image_N``/``label_N`` folder into a dataset at ``out_dir``.

    ``cases`` restricts the import to these patient numbers (``"1"``, ``"5"``, ...).
    Raises :class:`InputError` naming the file for an image without label (or the
    reverse), labels outside 0..4, a corrupt file or a folder without CHAOS files.
    """
    src = Path(source)
    if not src.is_dir():
        raise InputError(src, "is not a folder", expected="a folder of image_N.nii.gz / label_N.nii.gz")
    with create_dataset(
        out_dir,
        source=src,
        overwrite=overwrite,
        channel_names=CHAOS_CHANNELS,
        labels=CHAOS_LABELS,
        name="CHAOS_MR_T2SPIR",
        description="CHAOS MR T2-SPIR (SSL-ALPNet preprocessing): liver, kidneys, spleen",
        source_kind="chaos",
        chunk=chunk,
        chunk_overlap=chunk_overlap,
    ) as writer:
        images: dict[str, Path] = {}
        labels: dict[str, Path] = {}
        for f in source_files(src, (".nii.gz", ".nii"), writer):
            m = _NAME_RE.match(f.name)
            if not m:
                writer.ignore(f, "not named image_N / label_N")
                continue
            table = images if m["kind"] == "image" else labels
            key = m["id"].lstrip("0") or "0"
            if key in table:
                raise InputError(f, f"duplicate case id: patient {m['id']} also in {table[key].name}")
            table[key] = f
        if not images and not labels:
            raise InputError(src, "holds no CHAOS files", expected="image_N.nii.gz and label_N.nii.gz")
        ids = sorted(set(images) | set(labels), key=lambda s: (len(s), s))
        if cases is not None:
            wanted = [c.lstrip("0") or "0" for c in cases]
            unknown = sorted(set(wanted) - set(ids))
            if unknown:
                raise InputError(src, "requested cases not found", found=str(unknown))
            ids = [i for i in ids if i in wanted]

        def add(number: str) -> None:
            if number not in images:
                raise InputError(labels[number], "label has no image", expected=f"image_{number}.nii.gz")
            if number not in labels:
                raise InputError(
                    src / f"label_{number}.nii.gz", f"label file missing for image {images[number]}"
                )
            image = read_itk(images[number])
            require_finite(images[number], image.array)
            if image.dtype == np.float64:
                image = image.astype(np.float32)
            label = read_itk(labels[number])
            require_finite(labels[number], label.array)
            cid = chaos_case_id(number)
            writer.add_case(
                cid,
                [image],
                label,
                patient_id=cid,
                source=images[number],
                label_source=labels[number],
            )

        import_each(
            writer,
            ids,
            add,
            describe=lambda n: images.get(n) or labels[n],
            skip_invalid=skip_invalid,
            progress=progress,
            description="CHAOS cases",
        )
    return Path(out_dir)
