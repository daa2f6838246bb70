"""Intensity normalisation, one scheme per channel as stored in the plan."""

from __future__ import annotations

import numpy as np

from medseg.preprocessing.plan import ChannelNormalization


def normalize_channel(
    array: np.ndarray, norm: ChannelNormalization, mask: np.ndarray | None = None
) -> np.ndarray:
    """Return a float32 copy of ``array`` normalised as ``norm`` says.

    ``mask`` (the non-zero region) restricts per-case z-score statistics when
    ``norm.use_nonzero_mask``; voxels outside it are set to 0 then, like nnU-Net.
    """
    out = np.asarray(array, dtype=np.float32).copy()
    if norm.scheme == "none":
        return out
    if norm.scheme == "ct":
        if norm.clip_low is None or norm.clip_high is None or norm.mean is None or norm.std is None:
            raise ValueError("CT normalisation needs clip_low, clip_high, mean and std in the plan")
        np.clip(out, norm.clip_low, norm.clip_high, out=out)
        out -= np.float32(norm.mean)
        out /= np.float32(max(norm.std, 1e-8))
        return out
    # per-case z-score
    use_mask = norm.use_nonzero_mask and mask is not None and mask.any()
    values = out[mask] if use_mask else out
    mean = float(values.mean()) if values.size else 0.0
    std = float(values.std()) if values.size else 1.0
    out -= np.float32(mean)
    out /= np.float32(max(std, 1e-8))
    if use_mask:
        assert mask is not None
        out[~mask] = 0.0
    return out
