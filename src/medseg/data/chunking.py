"""Chunking of long series into sub-volumes of N slices along the slice (z) axis.

Seed 002 grouped long CT series into chunks of about 65 slices so that a 3D network
fits in memory. Each chunk is a valid :class:`Volume`: same spacing and direction, its
origin moved along the slice axis to the world position of its first slice, so chunk
voxel ``[k, y, x]`` is the same world point as source voxel ``[start + k, y, x]``.
:func:`join_chunks` is the inverse: it places chunks back on the source grid by their
world origin.

Chunks all have ``size`` slices (a series shorter than ``size`` gives one chunk, the whole
series): consecutive chunks start ``size - overlap`` slices apart, and the last chunk is
moved back to end at the last slice, so it may overlap its predecessor by more than
``overlap``. A short remainder chunk would be a poor training sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.errors import ConfigError, GeometryError
from medseg.volume import Volume, VolumeGeometry


def chunk_bounds(n_slices: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` slice ranges (stop exclusive) covering ``n_slices`` slices."""
    if size < 1:
        raise ConfigError(f"chunk size must be at least 1 slice, found {size}")
    if not 0 <= overlap < size:
        raise ConfigError(f"chunk overlap must be in 0..{size - 1} for chunks of {size}, found {overlap}")
    if n_slices < 1:
        raise ConfigError(f"cannot chunk a series of {n_slices} slices")
    if n_slices <= size:
        return [(0, n_slices)]
    step = size - overlap
    starts = list(range(0, n_slices - size + 1, step))
    if starts[-1] + size < n_slices:
        starts.append(n_slices - size)
    return [(s, s + size) for s in starts]


def chunk_geometry(geometry: VolumeGeometry, start: int, stop: int) -> VolumeGeometry:
    """Grid of slices ``start:stop`` of ``geometry`` (origin = world centre of slice ``start``)."""
    if not 0 <= start < stop <= geometry.shape[0]:
        raise GeometryError(f"slice range {start}:{stop} is outside 0:{geometry.shape[0]}")
    origin = geometry.index_to_world([float(start), 0.0, 0.0])
    return VolumeGeometry((stop - start, *geometry.shape[1:]), geometry.spacing, origin, geometry.direction)


def chunk_volume(volume: Volume, size: int, overlap: int = 0) -> list[Volume]:
    """Split ``volume`` into sub-volumes of ``size`` slices (see the module docstring)."""
    chunks = []
    for k, (start, stop) in enumerate(chunk_bounds(volume.shape[0], size, overlap)):
        geom = chunk_geometry(volume.geometry, start, stop)
        meta = dict(volume.meta, chunk=k, chunk_start=start, chunk_stop=stop)
        chunks.append(Volume(volume.array[start:stop].copy(), geometry=geom, meta=meta))
    return chunks


def join_chunks(chunks: Sequence[Volume], reference: VolumeGeometry, fill: float = 0) -> Volume:
    """Inverse of :func:`chunk_volume`: place chunks back on the ``reference`` grid.

    Each chunk's position is found from its world origin, so chunks may come in any
    order; where chunks overlap the later one wins. Raises :class:`GeometryError` when a
    chunk does not lie on whole slices of ``reference``.
    """
    if not chunks:
        raise GeometryError("join_chunks needs at least one chunk")
    out = np.full(reference.shape, fill, dtype=chunks[0].array.dtype)
    for k, chunk in enumerate(chunks):
        g = chunk.geometry
        start_f = reference.world_to_index(np.asarray(g.origin))
        start = round(float(start_f[0]))
        inside = start >= 0 and start + g.shape[0] <= reference.shape[0]
        on_grid = inside and np.allclose(start_f[1:], 0.0, atol=1e-3)
        if not on_grid or chunk_geometry(reference, start, start + g.shape[0]).differences(g):
            raise GeometryError(
                f"chunk {k} ({g}) does not lie on whole slices of the reference grid ({reference})"
            )
        out[start : start + g.shape[0]] = chunk.array
    return Volume(out, geometry=reference)
