"""k-means clustering of intensities (scipy.cluster.vq.kmeans2).

scikit-learn is not a dependency; SciPy's ``kmeans2`` already gives k-means++
initialisation and a seedable generator, which is all a 1D intensity clustering needs.
It is fitted on a random sample of voxels (k-means on a few hundred thousand values
finds the same centres as on millions) and every voxel is then given the nearest centre.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.cluster.vq import kmeans2

from medseg.classical.threshold import _finite_values, _label_volume
from medseg.errors import ConfigError, InputError
from medseg.volume import Volume


def kmeans(
    volume: Volume,
    classes: int = 3,
    *,
    mask: Volume | None = None,
    iterations: int = 50,
    sample_size: int = 200_000,
    random_state: int = 0,
) -> Volume:
    """Cluster intensities into ``classes`` groups; labels ordered by centre intensity.

    Labels are 0 .. classes-1 (0 the darkest cluster) without ``mask``; with ``mask`` the
    clusters are fitted inside it and numbered 1 .. classes, outside 0. The centres are in
    ``meta["baseline"]["centres"]``.
    """
    if not 2 <= classes <= 16:
        raise ConfigError(f"k-means needs 2 to 16 classes, found {classes}")
    if iterations < 1 or sample_size < classes:
        raise ConfigError(
            f"iterations must be >= 1 and sample_size >= classes, found {iterations}, {sample_size}"
        )
    values, select = _finite_values(volume, mask)
    rng = np.random.default_rng(random_state)
    sample = values if values.size <= sample_size else rng.choice(values, sample_size, replace=False)
    if np.unique(sample).size < classes:
        raise InputError(
            None, f"the image has fewer than {classes} distinct intensities", expected="more contrast"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "one of the clusters is empty": checked below
        centres, _ = kmeans2(sample.reshape(-1, 1), classes, iter=iterations, minit="++", seed=rng)
    centres = np.sort(centres.reshape(-1))
    if np.unique(centres).size < classes:
        raise InputError(
            None,
            f"k-means found fewer than {classes} distinct clusters",
            expected="fewer classes or more contrast",
        )
    # Nearest centre in 1D = which interval between consecutive midpoints a value falls in.
    midpoints = (centres[1:] + centres[:-1]) / 2.0
    arr = np.asarray(volume.array, dtype=np.float64)
    labels = np.searchsorted(midpoints, arr, side="left").astype(np.uint8)
    labels = np.where(select, labels + (1 if mask is not None else 0), 0).astype(np.uint8)
    return _label_volume(
        volume,
        labels,
        "kmeans",
        classes=classes,
        centres=[float(c) for c in centres],
        masked=mask is not None,
        random_state=random_state,
    )
