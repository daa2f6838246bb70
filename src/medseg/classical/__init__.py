"""Classical segmentation baselines (seed 003): thresholding, region growing, watershed, k-means.

Each takes an intensity :class:`~medseg.volume.Volume` and returns a label Volume on the
same grid (uint8, 0 = background), with the method and the parameters actually used
(including derived ones, such as Otsu's threshold) in ``meta["baseline"]``. They are
scored with the same :func:`medseg.evaluation.evaluate` path as the networks.
"""

from __future__ import annotations

from medseg.classical.kmeans import kmeans
from medseg.classical.region_growing import region_grow
from medseg.classical.seeds import seed_indices
from medseg.classical.threshold import otsu, threshold
from medseg.classical.watershed import watershed

BASELINES = ("threshold", "otsu", "region-grow", "watershed", "kmeans")

__all__ = ["BASELINES", "kmeans", "otsu", "region_grow", "seed_indices", "threshold", "watershed"]
