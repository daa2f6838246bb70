"""Global and Otsu thresholding (scikit-image's Otsu and multi-Otsu)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from skimage.filters import threshold_multiotsu, threshold_otsu

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume


def _finite_values(volume: Volume, mask: Volume | None) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Intensities to fit on (inside ``mask``, finite only) and the selection used."""
    arr = np.asarray(volume.array, dtype=np.float64)
    select = np.isfinite(arr)
    if mask is not None:
        if not mask.geometry.is_close(volume.geometry):
            raise GeometryError(
                "mask and image are on different grids: "
                + "; ".join(mask.geometry.differences(volume.geometry))
            )
        select &= mask.array != 0
    values = arr[select]
    if values.size == 0:
        raise InputError(None, "no finite intensity to fit", expected="a non-empty image (or mask)")
    return values, select


def _label_volume(volume: Volume, labels: NDArray[np.uint8], method: str, **params: object) -> Volume:
    """The result on ``volume``'s grid; a NIfTI input's two disagreeing transforms ride along
    (as predict's outputs keep them), so a NIfTI result lines up with it in every viewer."""
    from medseg.io.itk import NIFTI_TRANSFORMS_KEY

    meta: dict[str, object] = {"baseline": {"method": method, **params}}
    if NIFTI_TRANSFORMS_KEY in volume.meta:
        meta[NIFTI_TRANSFORMS_KEY] = volume.meta[NIFTI_TRANSFORMS_KEY]
    return Volume(labels, geometry=volume.geometry, meta=meta)


def threshold(
    volume: Volume, lower: float | None = None, upper: float | None = None, *, label: int = 1
) -> Volume:
    """Global threshold: voxels with ``lower <= value <= upper`` get ``label``, others 0."""
    if lower is None and upper is None:
        raise ConfigError("threshold needs a lower bound, an upper bound or both")
    if lower is not None and upper is not None and lower > upper:
        raise ConfigError(f"threshold lower bound {lower} is above the upper bound {upper}")
    if not 1 <= label <= 255:
        raise ConfigError(f"label must be in 1..255, found {label}")
    arr = np.asarray(volume.array)
    keep = np.ones(arr.shape, dtype=bool)
    if lower is not None:
        keep &= arr >= lower
    if upper is not None:
        keep &= arr <= upper
    out = np.where(keep, np.uint8(label), np.uint8(0)).astype(np.uint8)
    return _label_volume(volume, out, "threshold", lower=lower, upper=upper, label=label)


def otsu(volume: Volume, classes: int = 2, *, mask: Volume | None = None, nbins: int = 256) -> Volume:
    """Otsu (``classes=2``) or multi-Otsu thresholding; labels ordered by intensity.

    Without ``mask`` the labels are 0 .. classes-1 (0 the darkest class). With ``mask``
    the thresholds are fitted inside it, voxels inside get 1 .. classes and outside 0.
    The thresholds are in ``meta["baseline"]["thresholds"]``.
    """
    if not 2 <= classes <= 8:
        raise ConfigError(f"Otsu needs 2 to 8 classes, found {classes}")
    values, select = _finite_values(volume, mask)
    if values.min() == values.max():
        raise InputError(None, "the image has a single intensity", expected="some contrast to threshold")
    try:
        if classes == 2:
            thresholds = [float(threshold_otsu(values, nbins=nbins))]
        else:
            thresholds = [float(t) for t in threshold_multiotsu(values, classes=classes, nbins=nbins)]
    except ValueError as exc:  # too few distinct intensities for the number of classes
        raise InputError(
            None, f"cannot split the intensities into {classes} classes", found=str(exc)
        ) from None
    arr = np.asarray(volume.array, dtype=np.float64)
    # Otsu's rule is "foreground if value > t": np.digitize(right=True) puts t itself below.
    labels = np.digitize(arr, thresholds, right=True).astype(np.uint8)
    labels = np.where(select, labels + (1 if mask is not None else 0), 0).astype(np.uint8)
    return _label_volume(
        volume, labels, "otsu", classes=classes, thresholds=thresholds, masked=mask is not None
    )
