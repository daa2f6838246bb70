"""Run-length encoding of binary masks, as used by Kaggle segmentation competitions.

Format (UW-Madison GI Tract, and most Kaggle mask competitions): a space-separated list
of ``start length`` pairs; ``start`` is a **1-based** pixel index into the flattened 2D
mask, ``length`` the number of consecutive foreground pixels. An empty mask is the empty
string. Runs are sorted, positive and never overlap (the competition metric rejects
anything else).

Pixel order. Kaggle's generic evaluation text says pixels are numbered "top to bottom,
then left to right" (column-major, Fortran order). The UW-Madison GI Tract data do
**not** follow that text: train.csv masks are row-major (C order) on the (height, width)
image array. Evidence: the first-place solution that seed 004 cites
(CarnoZhao/Kaggle-UWMGIT, ``data_preprocess.py`` and ``inference.py``) decodes with
``img.reshape((h, w))`` and encodes submissions with ``img.flatten()`` (both C order) on
arrays read with ``cv2.imread``, and that submission was scored by the competition. The
default here is therefore ``order="C"``; ``order="F"`` gives the column-major variant
for competitions that really use it (e.g. Kaggle's "Understanding Clouds").

Written by hand because it is a few lines of numpy; no maintained library exposes
exactly this competition format.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medseg.errors import InputError

__all__ = ["RleOrder", "rle_decode", "rle_encode", "rle_runs"]

RleOrder = Literal["C", "F"]


def _check_order(order: str) -> None:
    if order not in ("C", "F"):
        raise InputError(
            None,
            "unknown RLE pixel order",
            expected="'C' (row-major) or 'F' (column-major)",
            found=repr(order),
        )


def rle_encode(mask: ArrayLike, *, order: RleOrder = "C") -> str:
    """Encode a 2D mask (non-zero = foreground) as ``"start length start length ..."``.

    >>> rle_encode([[0, 1, 1], [1, 0, 0]])
    '2 3'
    >>> rle_encode([[0, 1, 1], [1, 0, 0]], order="F")  # columns: (0, 1), (1, 0), (1, 0)
    '2 2 5 1'
    """
    _check_order(order)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(
            None, "RLE encodes one 2D mask", expected="a 2D array (height, width)", found=f"shape {arr.shape}"
        )
    pixels = (arr != 0).ravel(order=order).astype(np.int8)
    # Pad with background on both sides so every run has a start and an end transition.
    padded = np.concatenate(([0], pixels, [0]))
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-based positions of transitions
    starts = changes[0::2]
    lengths = changes[1::2] - starts
    runs = np.empty(2 * starts.size, dtype=np.int64)
    runs[0::2] = starts
    runs[1::2] = lengths
    return " ".join(str(int(v)) for v in runs)


def rle_runs(rle: str | None) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The 0-based run starts and their exclusive ends of ``"start length ..."`` (1-based starts).

    Blank strings (``None``, ``""``, NaN-like) have no runs. Raises :class:`InputError` for an
    odd number of values, non-integers, starts or lengths < 1, or runs unsorted or overlapping:
    everything that can be checked without the image size (see :func:`rle_decode`).
    """
    text = "" if rle is None else str(rle).strip()
    if not text or text.lower() == "nan":
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    try:
        values = np.array([int(tok) for tok in text.split()], dtype=np.int64)
    except ValueError:
        raise InputError(
            None,
            "RLE string holds a non-integer value",
            expected="'start length ...' integers",
            found=_clip(text),
        ) from None
    if values.size % 2:
        raise InputError(
            None,
            "RLE string has an odd number of values",
            expected="'start length' pairs",
            found=f"{values.size} values",
        )
    starts, lengths = values[0::2], values[1::2]
    if np.any(starts < 1) or np.any(lengths < 1):
        raise InputError(None, "RLE starts and lengths must be >= 1 (starts are 1-based)", found=_clip(text))
    ends = starts - 1 + lengths  # exclusive end, 0-based
    if np.any(starts[1:] - 1 < ends[:-1]):
        raise InputError(
            None, "RLE runs are unsorted or overlap", expected="increasing, disjoint runs", found=_clip(text)
        )
    return starts - 1, ends


def rle_decode(
    rle: str | None, shape: tuple[int, int], *, order: RleOrder = "C", dtype: type = np.uint8
) -> NDArray[np.generic]:
    """Decode ``"start length ..."`` into a 2D mask of ``shape`` (height, width), values 0/1.

    ``None``, ``""`` and NaN-like blanks decode to an empty mask. Raises :class:`InputError`
    for malformed strings (:func:`rle_runs`) and for runs past the end of the image.
    """
    _check_order(order)
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise InputError(None, "RLE mask shape must be (height, width) > 0", found=str(tuple(shape)))
    height, width = int(shape[0]), int(shape[1])
    n_pixels = height * width
    flat: NDArray[np.generic] = np.zeros(n_pixels, dtype=dtype)
    starts, ends = rle_runs(rle)
    if ends.size and int(ends.max()) > n_pixels:
        raise InputError(
            None,
            "RLE run extends past the end of the image",
            expected=f"at most {n_pixels} pixels ({height} x {width})",
            found=f"a run ending at pixel {int(ends.max())}",
        )
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        flat[lo:hi] = 1
    return flat.reshape((height, width), order=order)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
