"""NIfTI, NRRD and MHA/MHD through SimpleITK, and the Volume <-> SimpleITK bridge.

SimpleITK already converts NIfTI's RAS header to LPS and orders arrays (z, y, x); this
module is the one place where medseg's array-order geometry is turned into ITK's
(x, y, z) order and back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medseg.errors import GeometryError, InputError
from medseg.io.atomic import atomic_file
from medseg.volume import Volume, VolumeGeometry

log = logging.getLogger(__name__)

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: ``Volume.meta`` key of a NIfTI input's qform and sform where the two disagree (see
#: ``_nifti_transforms_if_they_differ``): NIfTI outputs on its grid carry both.
NIFTI_TRANSFORMS_KEY = "nifti_transforms"

# dtypes that every ITK writer accepts; anything else is converted (bool -> uint8, float16 -> float32)
_DTYPE_FOR_WRITE = {np.dtype(bool): np.uint8, np.dtype(np.float16): np.float32}


def has_itk_suffix(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in ITK_SUFFIXES)


def geometry_from_sitk(image: sitk.Image) -> VolumeGeometry:
    """Geometry of a 3D SimpleITK image in medseg's (z, y, x) convention."""
    size = image.GetSize()
    if len(size) == 2:
        spacing = (1.0, *image.GetSpacing()[::-1])
        d2 = np.array(image.GetDirection()).reshape(2, 2)
        direction_itk = np.eye(3)
        direction_itk[:2, :2] = d2
        origin = (*image.GetOrigin(), 0.0)
        return VolumeGeometry((1, size[1], size[0]), spacing, origin, direction_itk[:, ::-1])
    direction_itk = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return VolumeGeometry(size[::-1], image.GetSpacing()[::-1], image.GetOrigin(), direction_itk[:, ::-1])


def _require_scalar(components: int, path: Path | None) -> None:
    if components != 1:
        raise InputError(
            path,
            "has vector pixels" if path is not None else "image has vector pixels",
            expected="one value per voxel",
            found=f"{components} components",
        )


def from_sitk(image: sitk.Image, meta: dict[str, Any] | None = None) -> Volume:
    """Wrap a scalar 2D or 3D SimpleITK image as a Volume (the array is copied)."""
    _require_scalar(image.GetNumberOfComponentsPerPixel(), None)
    geometry = geometry_from_sitk(image)
    array = sitk.GetArrayFromImage(image).reshape(geometry.shape)
    return Volume(array, geometry=geometry, meta=meta)


def to_sitk(volume: Volume) -> sitk.Image:
    """SimpleITK image with the volume's values and exact geometry."""
    array = volume.array
    if array.dtype in _DTYPE_FOR_WRITE:
        array = array.astype(_DTYPE_FOR_WRITE[array.dtype])
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    set_sitk_geometry(image, volume.geometry)
    return image


def set_sitk_geometry(image: sitk.Image, geometry: VolumeGeometry) -> None:
    image.SetSpacing(tuple(float(s) for s in geometry.spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in geometry.origin))
    image.SetDirection(tuple(float(v) for v in geometry.direction_itk.reshape(-1)))


def _reader_geometry(reader: sitk.ImageFileReader) -> VolumeGeometry:
    """Geometry from a reader's header information (the 3D part of a 4D header; a 2D
    image is one slice of 1 mm at z = 0, as in :func:`geometry_from_sitk`)."""
    dim = reader.GetDimension()
    direction = np.array(reader.GetDirection(), dtype=float).reshape(dim, dim)
    if dim == 2:
        size, spacing = reader.GetSize(), reader.GetSpacing()
        full = np.eye(3)
        full[:2, :2] = direction
        return VolumeGeometry(
            (1, size[1], size[0]), (1.0, spacing[1], spacing[0]), (*reader.GetOrigin(), 0.0), full[:, ::-1]
        )
    size = reader.GetSize()[:3]
    spacing = reader.GetSpacing()[:3]
    origin = reader.GetOrigin()[:3]
    return VolumeGeometry(size[::-1], spacing[::-1], origin, direction[:3, :3][:, ::-1])


def read_geometry(path: str | Path) -> VolumeGeometry:
    """The grid of a NIfTI / NRRD / MHA file from its header only (no voxel is read).

    Raises :class:`InputError` for an unreadable header, vector pixels, or a 4D image
    with several channels or time points.
    """
    src = Path(path)
    reader = _open(src)
    _require_scalar(reader.GetNumberOfComponents(), src)
    if _is_nifti(src):
        _check_nifti_voxel_size(src)
    size = reader.GetSize()
    if reader.GetDimension() not in (2, 3) and not (reader.GetDimension() == 4 and size[3] == 1):
        raise InputError(src, "is not a 3D image", expected="one 3D volume per file", found=f"size {size}")
    try:
        return _reader_geometry(reader)
    except GeometryError as exc:
        raise InputError(src, "has an invalid geometry in its header", found=str(exc)) from None


_SITK_TO_NUMPY = {
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt32: np.int32,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}


def _nifti_arrays(src: Path, reader: sitk.ImageFileReader) -> list[np.ndarray] | None:
    """Channels (z, y, x) of a NIfTI read with nibabel, or None to let ITK read it.

    Two cases go through nibabel: floating-point data, because ITK's NIfTI reader
    replaces NaN and +-Inf by 0 (fixed upstream in ITK PR #6683, not in SimpleITK 2.5),
    which would hide broken predictions from every check; and uncompressed, unscaled
    .nii files, which nibabel reads about twice as fast and without a second copy
    (benchmarks/io_bench.py). The voxel order (i, j, k) = (x, y, z) is ITK's, so only
    the axes are reversed; the geometry still comes from ITK's header parsing and the
    dtype is the one ITK would give.
    """
    name = src.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")) or reader.GetNumberOfComponents() != 1:
        return None
    dtype = _SITK_TO_NUMPY.get(reader.GetPixelID())
    if dtype is None:
        return None
    import nibabel as nib

    img: Any = nib.load(str(src), mmap=False)
    stored = img.header.get_data_dtype()
    slope, inter = img.header.get_slope_inter()
    unscaled = slope in (None, 1.0) and inter in (None, 0.0)
    if stored.kind == "f":
        pass
    elif not (name.endswith(".nii") and unscaled and np.dtype(stored) == np.dtype(dtype)):
        return None  # gzipped or scaled integers: ITK is as fast and cannot meet NaN there
    try:
        data = np.asanyarray(img.dataobj).astype(dtype, copy=False)
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(src, "is truncated or corrupt", found=str(exc)) from None
    if data.ndim == 3:
        return [np.ascontiguousarray(data.transpose(2, 1, 0))]
    if data.ndim == 4:
        return [np.ascontiguousarray(data[..., c].transpose(2, 1, 0)) for c in range(data.shape[3])]
    return None


def _open(src: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(src, "cannot be read as a medical image", found=_first_line(exc)) from None
    return reader


def read_itk(path: str | Path) -> Volume:
    """Read a NIfTI / NRRD / MHA / MHD file into a Volume (3D, scalar)."""
    src = Path(path)
    try:
        return _read_itk(src)
    except GeometryError as exc:  # e.g. a negative voxel size, which ITK passes on
        raise InputError(src, "has an invalid geometry in its header", found=str(exc)) from None


def _read_itk(src: Path) -> Volume:
    reader = _open(src)
    size = reader.GetSize()
    if reader.GetDimension() == 4 and size[3] > 1:
        raise InputError(
            src,
            "is a 4D image with several channels or time points",
            expected="one 3D volume (split channels with read_channels())",
            found=f"size {size}",
        )
    base = _source_meta(src, reader)
    arrays = _nifti_arrays(src, reader)
    if arrays is not None:
        return Volume(arrays[0], geometry=_reader_geometry(reader), meta=base)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(src, "cannot be read as a medical image", found=_first_line(exc)) from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return from_sitk(image, meta=base)


def _source_meta(src: Path, reader: sitk.ImageFileReader) -> dict[str, Any]:
    """``meta`` of a volume read from ``src``: its file name and, for a NIfTI whose qform and
    sform disagree, both transforms (checked for truncation first, as every NIfTI read is)."""
    meta: dict[str, Any] = {"source": src.name}
    header = _check_nifti_complete(src)
    if header is not None:
        transforms = _nifti_transforms_if_they_differ(src, header, _reader_geometry(reader))
        if transforms is not None:
            meta[NIFTI_TRANSFORMS_KEY] = transforms
    return meta


def read_channels(path: str | Path) -> list[Volume]:
    """Read a 3D or 4D image (e.g. MSD's T2+ADC NIfTI) as one Volume per channel."""
    src = Path(path)
    try:
        return _read_channels(src)
    except GeometryError as exc:
        raise InputError(src, "has an invalid geometry in its header", found=str(exc)) from None


def _read_channels(src: Path) -> list[Volume]:
    reader = _open(src)
    base = _source_meta(src, reader)
    arrays = _nifti_arrays(src, reader)
    if arrays is not None:
        geometry = _reader_geometry(reader)
        meta = [{**base, "channel": c} if len(arrays) > 1 else dict(base) for c in range(len(arrays))]
        return [Volume(a, geometry=geometry, meta=m) for a, m in zip(arrays, meta, strict=True)]
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(src, "cannot be read as a medical image", found=_first_line(exc)) from None
    if image.GetDimension() == 4:
        size = image.GetSize()
        return [from_sitk(image[:, :, :, c], meta={**base, "channel": c}) for c in range(size[3])]
    if image.GetNumberOfComponentsPerPixel() > 1:
        return [
            from_sitk(sitk.VectorIndexSelectionCast(image, c), meta={**base, "channel": c})
            for c in range(image.GetNumberOfComponentsPerPixel())
        ]
    return [from_sitk(image, meta=base)]


def write_itk(volume: Volume, path: str | Path, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write a Volume as NIfTI / NRRD / MHA atomically (temp file, then rename)."""
    target = Path(path)
    if not has_itk_suffix(target):
        raise InputError(target, "unsupported output format", expected=", ".join(ITK_SUFFIXES))
    if target.name.lower().endswith(".mhd"):
        raise InputError(target, "MHD writes two files and cannot be written atomically", expected=".mha")
    image = to_sitk(volume)
    transforms = _nifti_transforms_for(volume, target)
    with atomic_file(target, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            raise InputError(target, "could not be written", found=_first_line(exc)) from None
        if transforms is not None:
            _set_nifti_transforms(tmp, transforms)
    return target


def _nifti_transforms_for(volume: Volume, target: Path) -> dict[str, Any] | None:
    """The input's own qform and sform, for a NIfTI output still on the grid they were read with.

    Only recorded where the input's two transforms disagree (see
    :func:`_nifti_transforms_if_they_differ`); a volume resampled, cropped or reoriented since
    has another grid, and its output carries medseg's transform in both fields as usual.
    """
    record = volume.meta.get(NIFTI_TRANSFORMS_KEY)
    name = target.name.lower()
    if not record or not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    if not VolumeGeometry.from_dict(record["grid"]).is_close(volume.geometry):
        return None
    return dict(record)


def nifti_transforms_from_slice(record: dict[str, Any], start: int, grid: VolumeGeometry) -> dict[str, Any]:
    """``record`` (``meta[NIFTI_TRANSFORMS_KEY]``) for the grid whose slice 0 is slice ``start``
    of the recorded one: both affines moved ``start`` voxels along NIfTI's k axis (medseg's
    slice axis 0; ITK keeps a NIfTI's voxel order), ``grid`` recorded as the grid they now
    place. A chunk of slices (``start`` > 0) and the scan stitched back from its first chunk
    (``start`` 0, a longer grid) keep the input's qform and sform this way."""
    shift = np.eye(4)
    shift[2, 3] = float(start)
    return {
        **record,
        "qform": (np.asarray(record["qform"], dtype=float) @ shift).tolist(),
        "sform": (np.asarray(record["sform"], dtype=float) @ shift).tolist(),
        "grid": grid.to_dict(),
    }


def _set_nifti_transforms(path: Path, record: dict[str, Any]) -> None:
    """Put the input's qform and sform (and their codes) into the header ITK just wrote.

    Only the header (348 bytes, NIfTI-1; 540, NIfTI-2) changes; the voxel bytes stay those ITK
    wrote, in the input's voxel order (ITK does not reorder a NIfTI's voxels).
    """
    import gzip
    import io

    import nibabel as nib

    packed = path.name.lower().endswith(".gz")
    raw = path.read_bytes()
    data = gzip.decompress(raw) if packed else raw
    nifti2 = data[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # sizeof_hdr 540, either byte order
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(io.BytesIO(data))
    header.set_qform(np.asarray(record["qform"], dtype=float), code=int(record["qform_code"]))
    header.set_sform(np.asarray(record["sform"], dtype=float), code=int(record["sform_code"]))
    block = header.binaryblock
    data = block + data[len(block) :]
    path.write_bytes(gzip.compress(data, compresslevel=6) if packed else data)


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _check_nifti_voxel_size(path: Path) -> None:
    """Refuse a zero, NaN or infinite voxel size (pixdim[1..3]): ITK reads it as 1 mm without a
    word (and nibabel's checked header as well), so a broken header would silently give every
    downstream step a wrong grid. The header is read unchecked for that reason."""
    import gzip

    import nibabel as nib

    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(540)
        nifti2 = raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # sizeof_hdr 540
        # the header block alone: extensions may follow it
        header: Any = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)(
            binaryblock=raw[: 540 if nifti2 else 348], check=False
        )
    except Exception as exc:  # gzip and nibabel raise several types for bad headers
        raise InputError(path, "has an invalid NIfTI header", found=str(exc)) from None
    ndim = int(header["dim"][0])
    sizes = tuple(float(v) for v in header["pixdim"][1 : 1 + min(max(ndim, 1), 3)])
    dims = tuple(int(v) for v in header["dim"][1 : 1 + len(sizes)])
    # An axis one voxel long has no spacing to get wrong (some tools write pixdim 0 for the
    # slice axis of a single slice; ITK reads it as 1 mm, as medseg reads 2D images).
    if not all(np.isfinite(v) and v != 0.0 for v, n in zip(sizes, dims, strict=True) if n > 1):
        raise InputError(
            path,
            "has an invalid voxel size in its header",
            expected="non-zero, finite pixdim[1..3] (mm)",
            found=f"pixdim[1..{len(sizes)}] = {', '.join(f'{v:g}' for v in sizes)}",
        )


def _check_nifti_complete(path: Path) -> Any:
    """ITK's NIfTI reader silently zero-fills truncated files; detect truncation here.

    Uncompressed: the file must hold vox_offset + data bytes. Gzipped: the gzip trailer
    stores the uncompressed size (mod 2**32); when it disagrees, decompress fully to
    tell a truncated file from a multi-member gzip stream. Returns the NIfTI header
    (nibabel's), None for other formats.
    """
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    import gzip
    import struct

    import nibabel as nib

    _check_nifti_voxel_size(path)
    try:
        image: Any = nib.load(str(path))
        header = image.header
        # a loaded image's header reports offset 0; the array proxy keeps the file's vox_offset
        offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))
        expected = offset + int(np.prod(header.get_data_shape()) * header.get_data_dtype().itemsize)
    except Exception as exc:  # nibabel raises several types for bad headers
        raise InputError(path, "has an invalid NIfTI header", found=str(exc)) from None
    if name.endswith(".nii"):
        size = path.stat().st_size
        if size < expected:
            raise InputError(path, "is truncated", expected=f"{expected} bytes", found=f"{size} bytes")
        return header
    with path.open("rb") as fh:
        fh.seek(-4, 2)
        (isize,) = struct.unpack("<I", fh.read(4))
    if isize == expected % 2**32:
        return header
    try:
        with gzip.open(path, "rb") as gz:
            total = 0
            while chunk := gz.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError) as exc:
        raise InputError(path, "is truncated or corrupt", found=str(exc)) from None
    if total < expected:
        raise InputError(path, "is truncated", expected=f"{expected} bytes of image data", found=f"{total}")
    return header


# Two transforms further apart than this at a grid corner are told apart: 0.01 mm, or 1e-3 of
# the grid's diagonal where that is more. NIfTI keeps both in float32, and the qform as a
# quaternion whose first component is recomputed as sqrt(1 - b^2 - c^2 - d^2): near a 180 degree
# rotation (common for oblique MR in RAS) that loses up to ~sqrt(float32 eps) = 3.5e-4 rad, i.e.
# 0.05 mm at a corner of a 128 x 128 x 20 grid of 0.5 x 0.5 x 3 mm that medseg itself wrote
# (the demo's phantom); a real disagreement (an sform registered elsewhere) is mm to cm.
_QFORM_SFORM_MM = 0.01
_QFORM_SFORM_RAD = 1e-3
_XFORM_NAMES = {1: "scanner", 2: "aligned", 3: "Talairach", 4: "MNI", 5: "template"}


def _nifti_transforms_if_they_differ(
    path: Path, header: Any, geometry: VolumeGeometry
) -> dict[str, Any] | None:
    """Warn when a NIfTI's qform and sform place the grid in different places.

    NIfTI allows both (e.g. the scanner's qform and an sform aligned to another scan or an
    atlas). ITK, and so medseg, uses the sform only when its code is 1 (scanner) or there
    is no qform; nibabel, FSL and most viewers use the sform whenever it is set. Returns the
    two transforms, their codes and the grid medseg read (``meta[NIFTI_TRANSFORMS_KEY]`` of
    the volume), so that a NIfTI output on that grid gets this input's own qform and sform
    (:func:`write_itk`) and lines up with it in every viewer, whichever transform it uses;
    None when they agree or one of them is unset.
    """
    q_code, s_code = int(header["qform_code"]), int(header["sform_code"])
    if q_code == 0 or s_code == 0:
        return None
    z, y, x = (s - 1 for s in geometry.shape)
    ijk = np.array([[i, j, k, 1.0] for i in (0, x) for j in (0, y) for k in (0, z)])
    qform = ijk @ np.asarray(header.get_qform(), dtype=float).T
    sform = ijk @ np.asarray(header.get_sform(), dtype=float).T
    apart = float(np.max(np.linalg.norm(qform[:, :3] - sform[:, :3], axis=1)))
    diagonal = float(np.max(np.linalg.norm(sform[:, :3] - sform[0, :3], axis=1)))
    if apart <= max(_QFORM_SFORM_MM, _QFORM_SFORM_RAD * diagonal):
        return None
    ours = geometry.index_to_world(ijk[:, 2::-1]) * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    used = "qform" if np.max(np.abs(ours - qform[:, :3])) < np.max(np.abs(ours - sform[:, :3])) else "sform"
    if used == "qform":
        consequence = (
            "medseg reads the qform, as ITK does, while nibabel, FSL and most viewers read the sform"
        )
    else:
        consequence = "medseg reads the sform (as ITK, nibabel and FSL do)"
    consequence += (
        "; NIfTI outputs on this grid get both of this file's transforms, so they line up with it in "
        "any viewer; outputs in other formats (NRRD, MHA, DICOM) and on other grids hold the one medseg reads"
    )
    log.warning(
        "%s: its qform (code %d, %s) and sform (code %d, %s) place the grid up to %.3g mm apart; %s",
        path,
        q_code,
        _XFORM_NAMES.get(q_code, "unknown"),
        s_code,
        _XFORM_NAMES.get(s_code, "unknown"),
        apart,
        consequence,
    )
    return {
        "qform": np.asarray(header.get_qform(), dtype=float).tolist(),
        "qform_code": q_code,
        "sform": np.asarray(header.get_sform(), dtype=float).tolist(),
        "sform_code": s_code,
        "grid": geometry.to_dict(),
    }


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines)
    if "data not read completely" in text or ("expected" in text and "received" in text):
        return "truncated data (fewer bytes than the header declares)"
    # ITK messages start with a source location; the description is usually last.
    return lines[-1] if lines else type(exc).__name__
