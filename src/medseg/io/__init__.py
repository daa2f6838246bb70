"""Reading and writing volumes at the file boundary.

``read_volume(path)`` and ``write_volume(volume, path)`` look at what the path is
(a DICOM folder or file, NIfTI, NRRD, MHA/MHD, PNG/TIFF) and call the right reader.
Conventions are converted here and nowhere else: inside medseg every Volume is
(z, y, x) with LPS geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.errors import InputError
from medseg.io.itk import has_itk_suffix, read_channels, read_itk, write_itk
from medseg.volume import Volume

__all__ = ["describe_path", "read_channels", "read_volume", "write_volume"]

IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff")


def _is_dicom_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def describe_path(path: str | Path) -> str:
    """What kind of input ``path`` is: 'dicom-folder', 'dicom-file', 'itk', 'image-2d', 'image-stack'."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
        if files and all(f.suffix.lower() in IMAGE_2D_SUFFIXES for f in files):
            return "image-stack"
        return "dicom-folder"
    if has_itk_suffix(p):
        return "itk"
    if p.suffix.lower() in IMAGE_2D_SUFFIXES:
        return "image-2d"
    if _is_dicom_file(p):
        return "dicom-file"
    raise InputError(
        p,
        "is not a recognised medical image",
        expected="a DICOM file or folder, .nii/.nii.gz, .nrrd, .mha/.mhd, .png or .tif",
        found=f"a file with suffix '{p.suffix}' and no DICOM preamble",
    )


def read_volume(
    path: str | Path,
    *,
    series: str | int | None = None,
    spacing: Sequence[float] | None = None,
) -> Volume:
    """Read any supported input into a Volume.

    ``series`` picks one DICOM series (UID, description or index) when a folder holds
    several. ``spacing`` (z, y, x mm) is required for PNG/TIFF, which carry no geometry.
    """
    p = Path(path)
    kind = describe_path(p)
    if kind == "itk":
        return read_itk(p)
    if kind == "dicom-folder":
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(p, series=series)
    if kind == "dicom-file":
        from medseg.io.dicom import read_dicom_file

        return read_dicom_file(p)
    from medseg.io.png import read_image_stack

    return read_image_stack(p, spacing=spacing)


def write_volume(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a Volume as NIfTI / NRRD / MHA (by suffix), atomically.

    DICOM series are written with :func:`medseg.io.dicom.write_dicom_series`, which needs
    more context (modality, reference series) than a path can carry.
    """
    p = Path(path)
    if p.suffix.lower() in IMAGE_2D_SUFFIXES:
        from medseg.io.png import write_image_stack

        return write_image_stack(volume, p, overwrite=overwrite)
    return write_itk(volume, p, overwrite=overwrite)
