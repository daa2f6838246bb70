"""2D image slices: PNG and TIFF files, folders of them, multi-page TIFF.

These formats carry no patient geometry, so the voxel spacing (z, y, x, mm) comes from
the user and the grid gets the identity direction (columns to the patient's left, rows
to posterior, slices to superior) and a zero origin. Slices of a folder are ordered by
file name with numbers compared as numbers (``slice_2`` before ``slice_10``).

A single 2D image read without a spacing gets 1 mm pixels (and ``meta["spacing_assumed"]``
is set): that is the usual meaning of pixel units for microscopy and photos, and nothing
else is known. A stack (a folder or a multi-page TIFF) needs an explicit spacing, because
guessing the slice distance would silently distort every 3D measurement.

Values: 8-bit and 16-bit grey PNG; TIFF of any integer or float grey type. Colour images
whose channels are all equal are read as grey; others are refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medseg.errors import ConfigError, InputError
from medseg.io.atomic import atomic_dir, atomic_file
from medseg.volume import Volume

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "natural_key",
    "read_image_file",
    "read_image_stack",
    "write_image_stack",
    "write_png",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
_TIFF = (".tif", ".tiff")


def natural_key(name: str) -> tuple[list[Any], str]:
    """Sort key putting 'case2' before 'case10' (digit runs compare as numbers, letters
    case-insensitively; the name itself breaks ties, so the order never depends on listing order).

    The one natural order of medseg: slice files here, and case names wherever cases are listed.
    """
    # re.split with a group alternates text, number, text ...: position i always holds the same type.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)], name


def image_files(folder: Path) -> list[Path]:
    """PNG/TIFF files directly in ``folder`` (not hidden), in natural name order."""
    files = [
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda f: natural_key(f.name))


def _to_grey(arr: NDArray[Any], path: Path, channel_axis: int | None) -> NDArray[Any]:
    if channel_axis is None:
        return arr
    channels = np.moveaxis(arr, channel_axis, -1)
    colour = channels[..., :3] if channels.shape[-1] >= 3 else channels[..., :1]
    if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1])):
        raise InputError(
            path,
            "is a colour image",
            expected="a grey-value image (8 or 16 bit)",
            found=f"{channels.shape[-1]} different channels",
        )
    return np.ascontiguousarray(colour[..., 0])


def _png_is_16_bit_colour(path: Path) -> bool:
    """IHDR says 16 bits per sample with colour or alpha (Pillow would cut it to 8 bits)."""
    with path.open("rb") as fh:
        head = fh.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png(path: Path) -> NDArray[Any]:
    from PIL import Image, UnidentifiedImageError

    if _png_is_16_bit_colour(path):  # SimpleITK keeps all 16 bits of each sample
        import SimpleITK as sitk

        try:
            arr16 = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except RuntimeError as exc:
            raise InputError(
                path, "cannot be read (truncated or corrupt image)", found=_one_line(exc)
            ) from None
        return _to_grey(arr16, path, channel_axis=2) if arr16.ndim == 3 else arr16
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                arr = np.array(img.convert("RGBA"))
                mode = "RGBA"
            else:
                arr = np.array(img)
    except UnidentifiedImageError:
        raise InputError(path, "is not a readable image", expected="a PNG or TIFF file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, "cannot be read (truncated or corrupt image)", found=_one_line(exc)) from None
    if mode == "1":
        arr = arr.astype(np.uint8)
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16, copy=False)
    if arr.ndim == 3:  # LA, RGB, RGBA
        arr = _to_grey(arr, path, channel_axis=2)
    return arr


def _read_tiff(path: Path) -> NDArray[Any]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            arr = tif.asarray()
            series = tif.series[0]
            axes = series.axes
    except Exception as exc:  # tifffile raises many types for broken files
        raise InputError(
            path, "cannot be read as TIFF (truncated or corrupt)", found=_one_line(exc)
        ) from None
    if "S" in axes:  # samples (colour channels)
        arr = _to_grey(arr, path, channel_axis=axes.index("S"))
        axes = axes.replace("S", "")
    if arr.ndim > 3:
        raise InputError(
            path, "has more than three dimensions", expected="2D or a stack of 2D pages", found=axes
        )
    return arr


def read_image_file(path: str | Path) -> NDArray[Any]:
    """The values of one PNG/TIFF file: (rows, columns) or (pages, rows, columns), grey only.

    Raises :class:`InputError` naming the file when it is unreadable, truncated, a colour
    image or of another format.
    """
    return _read_file(Path(path))


def _read_file(path: Path) -> NDArray[Any]:
    suffix = path.suffix.lower()
    if suffix == ".png":
        return _read_png(path)
    if suffix in _TIFF:
        return _read_tiff(path)
    raise InputError(path, "unsupported image format", expected=", ".join(IMAGE_SUFFIXES), found=suffix)


def _check_spacing(spacing: Sequence[float], path: Path) -> tuple[float, float, float]:
    values = [float(v) for v in spacing]
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{path}: spacing must be three positive numbers (z, y, x) in mm, found {values}")
    return (values[0], values[1], values[2])


def _need_spacing(path: Path, what: str) -> InputError:
    return InputError(
        path,
        f"{what} carries no voxel spacing",
        expected="spacing (z, y, x) in mm from the user (CLI --spacing Z Y X)",
    )


def read_image_stack(path: str | Path, spacing: Sequence[float] | None = None) -> Volume:
    """Read a folder of PNG/TIFF slices, a multi-page TIFF or one 2D image as a Volume.

    ``spacing`` is (z, y, x) in mm; required for stacks, optional (1 mm) for one 2D image.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise InputError(p, "holds no PNG/TIFF images", expected=", ".join(IMAGE_SUFFIXES))
        if spacing is None:
            raise _need_spacing(p, f"a folder of {len(files)} image slices")
        first = _read_file(files[0])
        if first.ndim != 2:
            raise InputError(
                files[0], "is not a 2D slice", expected="one 2D image per file", found=f"shape {first.shape}"
            )
        array = np.empty((len(files), *first.shape), dtype=first.dtype)
        array[0] = first
        for k, f in enumerate(files[1:], start=1):
            arr = _read_file(f)
            if arr.shape != first.shape or arr.dtype != first.dtype:
                raise InputError(
                    f,
                    "differs from the first slice of the stack",
                    expected=f"{first.shape[0]}x{first.shape[1]} {first.dtype} like {files[0].name}",
                    found=f"{'x'.join(str(s) for s in arr.shape)} {arr.dtype}",
                )
            array[k] = arr
        meta: dict[str, Any] = {"source": p.name, "source_format": files[0].suffix.lower().lstrip(".")}
        return Volume(array, _check_spacing(spacing, p), meta=meta)
    arr = _read_file(p)
    meta = {"source": p.name, "source_format": p.suffix.lower().lstrip(".")}
    if arr.ndim == 2:
        arr = arr[None]
        if spacing is None:
            log.warning("%s: no spacing given; 1 mm pixels assumed", p)
            meta["spacing_assumed"] = True
            spacing = (1.0, 1.0, 1.0)
    elif spacing is None:
        raise _need_spacing(p, f"a multi-page image of {arr.shape[0]} slices")
    return Volume(arr, _check_spacing(spacing, p), meta=meta)


def _png_array(array: NDArray[Any], path: Path) -> NDArray[Any]:
    """The volume's values as uint8/uint16 for PNG, exactly, or an error."""
    a = array
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype in (np.uint8, np.uint16):
        return a
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    integer = a.dtype.kind in "iu" or bool(np.all(np.isfinite(a)) and np.all(a == np.rint(a)))
    if integer and lo >= 0 and hi <= 65535:
        return a.astype(np.uint8 if hi <= 255 else np.uint16)
    raise InputError(
        path,
        "PNG cannot hold these values",
        expected="integers from 0 to 65535 (write .tif for signed or float values)",
        found=f"{a.dtype} values from {lo:g} to {hi:g}",
    )


def _write_png(array: NDArray[Any], path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def write_png(array: NDArray[Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write one 2D array (rows, columns) of 0..65535 integers as an 8/16-bit grey PNG,
    atomically, without logging (for many files at once, e.g. a phantom's competition slices)."""
    target = Path(path)
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise InputError(
            target, "a PNG slice is a 2D array", expected="(rows, columns)", found=f"shape {arr.shape}"
        )
    data = _png_array(arr, target)
    with atomic_file(target, overwrite=overwrite) as tmp:
        _write_png(data, tmp)
    return target


def _write_tiff(array: NDArray[Any], path: Path) -> None:
    import tifffile

    a = array.astype(np.uint8) if array.dtype == bool else array
    tifffile.imwrite(path, np.ascontiguousarray(a), photometric="minisblack")


def write_image_stack(
    volume: Volume, path: str | Path, overwrite: bool = False, *, fmt: str | None = None
) -> Path:
    """Write a Volume as 2D images, atomically; the geometry (spacing, direction) is lost.

    * ``path`` ending in .png/.tif/.tiff: one file. PNG needs a single slice; TIFF holds
      any number (multi-page).
    * any other ``path``: a folder of ``slice_0000.png`` ... (``fmt`` "png", the default,
      or "tiff"), one file per slice along z.

    PNG stores 0..65535 integers exactly (8 bit when the values fit, else 16 bit); other
    values are refused rather than rescaled. TIFF keeps the dtype.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    g = volume.geometry
    if suffix in IMAGE_SUFFIXES:
        if suffix == ".png":
            if volume.shape[0] != 1:
                raise InputError(
                    target,
                    "a PNG file holds one slice",
                    expected="a folder path (one PNG per slice) or a .tif file (multi-page)",
                    found=f"{volume.shape[0]} slices",
                )
            data = _png_array(volume.array, target)
            with atomic_file(target, overwrite=overwrite) as tmp:
                _write_png(data[0], tmp)
        else:
            with atomic_file(target, overwrite=overwrite) as tmp:
                _write_tiff(volume.array[0] if volume.shape[0] == 1 else volume.array, tmp)
        log.info("%s: wrote %s; spacing (z, y, x) %s mm is not stored in the file", target, suffix, g.spacing)
        return target
    kind = (fmt or "png").lower().lstrip(".")
    if kind not in ("png", "tif", "tiff"):
        raise ConfigError(f"image format must be png or tiff, found '{fmt}'")
    ext = ".png" if kind == "png" else ".tif"
    data = _png_array(volume.array, target) if ext == ".png" else volume.array
    width = max(4, len(str(volume.shape[0] - 1)))
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for k in range(volume.shape[0]):
            name = f"slice_{k:0{width}d}{ext}"
            if ext == ".png":
                _write_png(data[k], tmp / name)
            else:
                _write_tiff(data[k], tmp / name)
    log.info(
        "%s: wrote %d %s slices; spacing (z, y, x) %s mm is not stored in the files",
        target,
        volume.shape[0],
        ext,
        g.spacing,
    )
    return target


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
