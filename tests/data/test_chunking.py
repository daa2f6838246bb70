"""Chunking long series into sub-volumes: bounds, world geometry of each chunk, and the inverse."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.chunking import chunk_bounds, chunk_geometry, chunk_volume, join_chunks
from medseg.errors import ConfigError, GeometryError
from tests.conftest import make_oblique_volume


@pytest.mark.parametrize(
    ("n", "size", "overlap", "expected"),
    [
        (130, 65, 0, [(0, 65), (65, 130)]),
        (150, 65, 0, [(0, 65), (65, 130), (85, 150)]),  # last chunk moved back to end at 150
        (40, 65, 0, [(0, 40)]),  # shorter than a chunk: the whole series
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (11, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]),
        (5, 1, 0, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
    ],
)
def test_chunk_bounds(n: int, size: int, overlap: int, expected: list[tuple[int, int]]) -> None:
    bounds = chunk_bounds(n, size, overlap)
    assert bounds == expected
    covered = np.zeros(n, bool)
    for start, stop in bounds:
        covered[start:stop] = True
    assert covered.all()


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (4, 4), (4, -1)])
def test_bad_chunk_options(size: int, overlap: int) -> None:
    with pytest.raises(ConfigError):
        chunk_bounds(10, size, overlap)


def test_chunk_voxels_keep_their_world_position() -> None:
    vol = make_oblique_volume(shape=(12, 20, 16))
    chunks = chunk_volume(vol, 5, overlap=2)
    assert [c.shape[0] for c in chunks] == [5, 5, 5, 5]
    idx = np.array([[0, 0, 0], [4, 19, 15], [2, 7, 3]], float)
    for chunk, (start, stop) in zip(chunks, chunk_bounds(12, 5, 2), strict=True):
        np.testing.assert_array_equal(chunk.array, vol.array[start:stop])
        np.testing.assert_allclose(
            chunk.index_to_world(idx), vol.index_to_world(idx + np.array([start, 0, 0])), atol=1e-9
        )
        assert chunk.spacing == vol.spacing
        np.testing.assert_array_equal(chunk.direction, vol.direction)
        assert chunk.meta["chunk_start"] == start


def test_join_chunks_is_the_inverse() -> None:
    vol = make_oblique_volume(shape=(13, 6, 7))
    chunks = chunk_volume(vol, 4, overlap=1)
    back = join_chunks(chunks[::-1], vol.geometry)  # order does not matter: placed by world origin
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry.is_close(vol.geometry)


def test_join_refuses_chunks_off_the_grid() -> None:
    vol = make_oblique_volume(shape=(10, 6, 7))
    chunk = chunk_volume(vol, 4)[1]
    half_slice = vol.geometry.index_to_world([4.5, 0, 0])
    shifted = type(chunk)(chunk.array, chunk.spacing, half_slice, chunk.direction)
    with pytest.raises(GeometryError, match="whole slices"):
        join_chunks([shifted], vol.geometry)
    beyond = chunk_geometry(make_oblique_volume(shape=(20, 6, 7)).geometry, 12, 16)
    with pytest.raises(GeometryError, match="whole slices"):
        join_chunks([type(chunk)(chunk.array, geometry=beyond)], vol.geometry)
    with pytest.raises(GeometryError, match="outside"):
        chunk_geometry(vol.geometry, 8, 12)
