"""2D image/mask pairs (PNG, TIFF, BMP, JPEG images; lossless masks) -> the dataset format.

Each image becomes a one-slice volume of shape (1, H, W). 2D files carry no physical
geometry, so the caller gives the pixel spacing ``(row, column)`` in mm; the slice
spacing defaults to the larger in-plane spacing, origin 0 and identity direction. A
grey image is one channel, an RGB image three (R, G, B), as nnU-Net does.

Masks are paired with images by file stem (``0.png`` with ``0.png`` or, with
``mask_suffix="_mask"``, ``0_mask.tif``). Their raw pixel values are mapped to labels
through ``mask_map``; the default ``{0: 0, 1: 1, 255: 1}`` reads the usual binary masks.
Any mask value outside the map is an error, never guessed.

ISBI 2012 EM (``../shared/data/isbi2012_em``): the masks are 255 = cell interior and
0 = membrane. The challenge segments membranes, so medseg's convention for this set is
foreground 1 = membrane: ``mask_map={0: 1, 255: 0}`` with ``label_name="membrane"``
(:data:`ISBI2012_MASK_MAP`). The nominal pixel size is 4 nm = 0.004 mm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from medseg.data.dataset import create_dataset, import_each, source_files
from medseg.errors import ConfigError, InputError
from medseg.io.png import natural_key
from medseg.volume import Volume, VolumeGeometry

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")  # lossless only: JPEG would blur label values
DEFAULT_MASK_MAP = {0: 0, 1: 1, 255: 1}
ISBI2012_MASK_MAP = {0: 1, 255: 0}  # foreground = membrane (mask value 0)
ISBI2012_SPACING = (0.004, 0.004)  # mm: the challenge's nominal 4 x 4 nm pixels


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _read_2d(path: Path) -> NDArray[Any]:
    """(H, W) or (H, W, C) array of a 2D image file."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise InputError(path, "cannot be read as an image", found=lines[-1] if lines else "") from None
    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2:
        raise InputError(path, "is not a 2D image", expected="one 2D image per file", found=f"size {size}")
    return sitk.GetArrayFromImage(image)


def _geometry(shape: tuple[int, int], spacing: tuple[float, float, float]) -> VolumeGeometry:
    return VolumeGeometry((1, shape[0], shape[1]), spacing)


def import_images2d(
    images: str | Path,
    out_dir: str | Path,
    *,
    masks: str | Path,
    spacing: Sequence[float],
    test_images: str | Path | None = None,
    mask_map: Mapping[int, int] | None = None,
    labels: Mapping[str, int] | None = None,
    label_name: str = "foreground",
    channel_name: str = "image",
    mask_suffix: str = "",
    case_prefix: str = "",
    group_pattern: str | None = None,
    name: str = "",
    overwrite: bool = False,
    cases: Sequence[str] | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a folder of 2D images and a folder of masks into a dataset at ``out_dir``.

    ``spacing`` is ``(row, column)`` or ``(slice, row, column)`` in mm. ``labels`` declares
    the label names (default ``{"background": 0, label_name: 1}``). ``group_pattern`` is a
    regular expression whose first group, matched against the file stem, names the
    patient/specimen (default: every image its own group). ``cases`` restricts the import
    to these file stems. Test images (no masks) go to imagesTs as ``test_<stem>``.
    Raises :class:`InputError` naming the file for a missing mask, a mask without image,
    two files with one stem, mask values outside ``mask_map``, an unreadable file or an
    empty folder; :class:`GeometryError` when image and mask sizes differ.
    """
    img_dir, mask_dir = Path(images), Path(masks)
    sp = [float(s) for s in spacing]
    if len(sp) == 2:
        sp = [max(sp), *sp]
    if len(sp) != 3 or any(not s > 0 for s in sp):
        raise ConfigError(
            f"spacing must be 2 (row, column) or 3 positive values in mm, found {list(spacing)}"
        )
    spacing3 = (sp[0], sp[1], sp[2])
    mapping = {int(k): int(v) for k, v in (mask_map or DEFAULT_MASK_MAP).items()}
    declared = dict(labels) if labels is not None else {"background": 0, label_name: 1}
    try:
        group_re = re.compile(group_pattern) if group_pattern else None
    except re.error as exc:
        raise ConfigError(
            f"group pattern {group_pattern!r} is not a valid regular expression: {exc}"
        ) from None
    if group_re is not None and group_re.groups < 1:
        raise ConfigError(f"group pattern {group_pattern!r} needs a group (...) that captures the patient id")
    for folder in (img_dir, mask_dir):
        if not folder.is_dir():
            raise InputError(folder, "is not a folder", expected="a folder of 2D images")

    def by_stem(files: list[Path], suffix: str = "") -> dict[str, Path]:
        table: dict[str, Path] = {}
        for f in files:
            stem = _stem(f)
            if suffix:
                if not stem.endswith(suffix):
                    continue
                stem = stem[: -len(suffix)]
            if stem in table:
                raise InputError(f, f"duplicate case id '{stem}'", found=f"also {table[stem].name}")
            table[stem] = f
        return table

    image_files = by_stem(source_files(img_dir, IMAGE_SUFFIXES))
    if not image_files:
        raise InputError(img_dir, "holds no images", expected=f"files ending in {', '.join(IMAGE_SUFFIXES)}")
    first = _read_2d(image_files[min(image_files, key=natural_key)])
    n_ch = 1 if first.ndim == 2 else first.shape[2]
    channel_names = (
        [channel_name]
        if n_ch == 1
        else (["R", "G", "B"] if n_ch == 3 else [f"{channel_name}{i}" for i in range(n_ch)])
    )

    with create_dataset(
        out_dir,
        source=[img_dir, mask_dir] + ([Path(test_images)] if test_images is not None else []),
        overwrite=overwrite,
        channel_names=channel_names,
        labels=declared,
        name=name or img_dir.name,
        description=f"2D image/mask pairs imported from {img_dir.name}",
        source_kind="images2d",
    ) as writer:
        image_files = by_stem(source_files(img_dir, IMAGE_SUFFIXES, writer))
        mask_files = by_stem(source_files(mask_dir, MASK_SUFFIXES, writer), mask_suffix)
        stems = sorted(image_files, key=natural_key)
        if cases is not None:
            unknown = sorted(set(cases) - set(stems))
            if unknown:
                raise InputError(img_dir, "requested cases not found", found=str(unknown[:5]))
            stems = [s for s in stems if s in set(cases)]
        for stem in sorted(set(mask_files) - set(image_files), key=natural_key):
            if not skip_invalid:
                raise InputError(mask_files[stem], "mask has no image", expected=f"{img_dir}/{stem}.*")
            writer.skip(mask_files[stem], "mask has no image")

        def channels_of(path: Path) -> list[Volume]:
            arr = _read_2d(path)
            geom = _geometry(arr.shape[:2], spacing3)
            if arr.ndim == 2:
                return [Volume(arr[None], geometry=geom, meta={"source": path.name})]
            return [
                Volume(arr[None, :, :, c], geometry=geom, meta={"source": path.name})
                for c in range(arr.shape[2])
            ]

        def group_of(stem: str) -> str:
            if group_re is None:
                return case_prefix + stem
            m = group_re.search(stem)
            if not m or not m.groups():
                raise InputError(
                    image_files[stem], f"file stem does not match the group pattern {group_re.pattern!r}"
                )
            return str(m.group(1))

        def add(stem: str) -> None:
            img = image_files[stem]
            mask_path = mask_files.get(stem)
            if mask_path is None:
                raise InputError(mask_dir / f"{stem}{mask_suffix}.png", f"mask missing for image {img}")
            mask = _read_2d(mask_path)
            if mask.ndim == 3:
                if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
                    raise InputError(mask_path, "is a colour image", expected="a grey-level mask")
                mask = mask[..., 0]
            values = sorted(int(v) for v in np.unique(mask))
            unmapped = sorted(set(values) - set(mapping))
            if unmapped:
                raise InputError(
                    mask_path,
                    "holds mask values that the mask map does not cover",
                    expected=f"values in {sorted(mapping)}",
                    found=f"also {unmapped[:10]}",
                )
            lut = np.zeros(max(values) + 1, dtype=np.int64)
            for raw, lab in mapping.items():
                if raw <= max(values):
                    lut[raw] = lab
            label = Volume(lut[mask.astype(np.int64)][None], geometry=_geometry(mask.shape, spacing3))
            writer.add_case(
                case_prefix + stem,
                channels_of(img),
                label,
                patient_id=group_of(stem),
                source=img,
                label_source=mask_path,
            )

        import_each(
            writer,
            stems,
            add,
            describe=lambda s: image_files[s],
            skip_invalid=skip_invalid,
            progress=progress,
            description="2D cases",
        )
        if test_images is not None:
            test_files = by_stem(source_files(Path(test_images), IMAGE_SUFFIXES, writer))

            def add_test(stem: str) -> None:
                writer.add_case(
                    f"{case_prefix}test_{stem}",
                    channels_of(test_files[stem]),
                    None,
                    test=True,
                    source=test_files[stem],
                )

            import_each(
                writer,
                sorted(test_files, key=natural_key),
                add_test,
                describe=lambda s: test_files[s],
                skip_invalid=skip_invalid,
                progress=progress,
                description="2D test images",
            )
    return Path(out_dir)
