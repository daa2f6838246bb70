"""Reading and writing volumes at the file boundary.

``read_volume(path)`` and ``write_volume(volume, path)`` look at what the path is
(a DICOM folder or file, NIfTI, NRRD, MHA/MHD, PNG/TIFF) and call the right reader.
Conventions are converted here and nowhere else: inside medseg every Volume is
(z, y, x) with LPS geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError, InputError
from medseg.io.itk import has_itk_suffix, read_channels, read_itk, write_itk
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.io.dicom import Pseudonym

__all__ = [
    "OUTPUT_FORMATS",
    "convert",
    "describe_path",
    "read_channels",
    "read_volume",
    "sidecar_path",
    "write_volume",
]

IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff")


def sidecar_path(image: str | Path, suffix: str) -> Path:
    """A file beside an image, named after it without its image suffix:
    ``crop.nii.gz`` + ``.roi.json`` -> ``crop.roi.json``."""
    from medseg.io.itk import ITK_SUFFIXES

    path = Path(image)
    name = path.name
    for known in sorted((*ITK_SUFFIXES, *IMAGE_2D_SUFFIXES), key=len, reverse=True):
        if name.lower().endswith(known):
            name = name[: -len(known)]
            break
    return path.with_name(name + suffix)


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
    volume: int | None = None,
) -> Volume:
    """Read any supported input into a Volume.

    ``series`` picks one DICOM series (UID, description or index) when a folder holds
    several; ``volume`` one of several volumes stacked in one DICOM series (b-values,
    echoes). ``spacing`` (z, y, x mm) is required for PNG/TIFF stacks, which carry no
    geometry.
    """
    p = Path(path)
    kind = describe_path(p)
    if kind == "itk":
        return read_itk(p)
    if kind == "dicom-folder":
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(p, series=series, volume=volume)
    if kind == "dicom-file":
        from medseg.io.dicom import read_dicom_file

        return read_dicom_file(p, volume=volume)
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


# Output formats of :func:`convert` and the suffix each is recognised by.
OUTPUT_FORMATS = {
    "nifti": (".nii.gz", ".nii"),
    "nrrd": (".nrrd",),
    "mha": (".mha",),
    "png": (".png",),
    "tiff": (".tif", ".tiff"),
    "dicom": (),
}
_FORMAT_ALIASES = {"nii": "nifti", "nii.gz": "nifti", "tif": "tiff", "dcm": "dicom"}


def _output_format(path: Path, to: str | None) -> str:
    name = path.name.lower()
    by_suffix = next((f for f, sfx in OUTPUT_FORMATS.items() if any(name.endswith(s) for s in sfx)), None)
    if to is None:
        if by_suffix is None:
            raise ConfigError(
                f"{path}: cannot tell the output format from the name; use a .nii.gz/.nrrd/.mha/.png/.tif "
                "suffix, or pass --to dicom|png|tiff to write a folder"
            )
        return by_suffix
    fmt = _FORMAT_ALIASES.get(to.lower().lstrip("."), to.lower().lstrip("."))
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format '{to}'; expected one of {', '.join(OUTPUT_FORMATS)}")
    if fmt in ("nifti", "nrrd", "mha") and by_suffix != fmt:
        raise ConfigError(
            f"{path}: --to {fmt} needs a file name ending in {' or '.join(OUTPUT_FORMATS[fmt])}"
        )
    if fmt == "dicom" and by_suffix is not None:
        raise ConfigError(f"{path}: a DICOM series is written as a folder; give a folder name without suffix")
    return fmt


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    series: str | int | None = None,
    volume: int | None = None,
    spacing: Sequence[float] | None = None,
    to: str | None = None,
    modality: str | None = None,
    reference: str | Path | None = None,
    series_description: str | None = None,
    deidentify: bool = False,
    overwrite: bool = False,
    pseudonym: Pseudonym = "ANONYMOUS",
    uid_secret: str | None = None,
) -> Path:
    """Convert one image to another format (the API behind ``medseg convert``).

    The format of ``dst`` comes from its suffix (.nii/.nii.gz, .nrrd, .mha, .png, .tif) or
    from ``to`` ("dicom", "png" or "tiff" write a folder). A DICOM output joins the study
    and frame of reference of ``reference``, or of the input when the input is DICOM;
    ``modality`` (MR/CT) defaults to the input's, else MR. From a DICOM input an MR output
    keeps the input's acquisition attributes (MRAcquisitionType, EchoTime, RepetitionTime,
    FlipAngle, MagneticFieldStrength, SliceThickness, ...); from other formats they are
    unknown and left empty. ``deidentify`` applies
    :func:`medseg.io.dicom.deidentify_dataset` to what a DICOM output copies (patient name
    and ID become ``pseudonym``; UIDs are derived with ``uid_secret``, a fresh secret per
    process when None); the other formats carry no patient data. Inputs are never modified;
    outputs are atomic.
    """
    from medseg.io.atomic import check_writable
    from medseg.io.dicom import check_deidentify_options

    check_deidentify_options(deidentify, pseudonym, uid_secret)
    source, target = Path(src), Path(dst)
    fmt = _output_format(target, to)
    kind = describe_path(source)
    src_r, dst_r = source.resolve(), target.resolve()
    if dst_r == src_r or dst_r in src_r.parents:
        # with overwrite, the atomic replacement of the output folder would delete the input
        raise ConfigError(f"{target}: the output would replace the input {source} (or a folder holding it)")
    if src_r.is_dir() and src_r in dst_r.parents:
        raise ConfigError(f"{target}: the output would be written inside the input folder {source}")
    check_writable(target, overwrite)
    ref: Any = reference
    acquired_from: Any = None  # the DICOM series read: a DICOM output keeps its acquisition
    if kind == "dicom-folder":
        from medseg.io.dicom import load_series

        loaded = load_series(source, series, volume=volume)
        vol = loaded.volume
        ref = loaded if reference is None else reference
        acquired_from = loaded
    elif kind == "dicom-file":
        from medseg.io.dicom import load_file

        loaded = load_file(source, volume=volume)
        vol = loaded.volume
        ref = loaded if reference is None else reference
        acquired_from = loaded
    else:
        vol = read_volume(source, series=series, spacing=spacing, volume=volume)
    if fmt == "dicom":
        from medseg.io.dicom import write_dicom_series

        mod = modality or str(vol.meta.get("modality", "") or "")
        mod = mod.upper() if mod.upper() in ("MR", "CT") else "MR"
        description = series_description or str(vol.meta.get("series_description", "") or "medseg")
        write_dicom_series(
            vol,
            target,
            reference=ref,
            modality=mod,
            series_description=description,
            overwrite=overwrite,
            deidentify=deidentify,
            pseudonym=pseudonym,
            uid_secret=uid_secret,
            source=acquired_from,
        )
        return target
    if fmt in ("png", "tiff"):
        from medseg.io.png import write_image_stack

        return write_image_stack(vol, target, overwrite=overwrite, fmt=fmt)
    return write_itk(vol, target, overwrite=overwrite)
