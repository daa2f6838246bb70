"""k-means intensity clustering."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.classical import kmeans
from medseg.errors import ConfigError, InputError
from tests.conftest import make_oblique_volume


def _three_levels() -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = np.full((8, 16, 16), 20.0) + rng.normal(0, 2, (8, 16, 16))
    arr[:, 4:12, 4:12] += 80
    arr[2:6, 6:10, 6:10] += 100
    return arr.astype(np.float32)


def test_kmeans_recovers_three_levels_ordered_by_intensity() -> None:
    vol = make_oblique_volume(shape=(8, 16, 16)).with_array(_three_levels())
    out = kmeans(vol, 3)
    expected = np.zeros(vol.shape, dtype=np.uint8)
    expected[:, 4:12, 4:12] = 1
    expected[2:6, 6:10, 6:10] = 2
    np.testing.assert_array_equal(out.array, expected)
    centres = out.meta["baseline"]["centres"]
    assert centres == sorted(centres) and centres[0] == pytest.approx(20, abs=1)
    assert out.geometry.is_close(vol.geometry)


def test_kmeans_is_reproducible_and_uses_a_sample() -> None:
    vol = make_oblique_volume(shape=(8, 16, 16)).with_array(_three_levels())
    a = kmeans(vol, 3, sample_size=500, random_state=1)
    b = kmeans(vol, 3, sample_size=500, random_state=1)
    np.testing.assert_array_equal(a.array, b.array)


def test_kmeans_inside_a_mask_numbers_from_one() -> None:
    vol = make_oblique_volume(shape=(8, 16, 16)).with_array(_three_levels())
    mask = vol.with_array(np.zeros(vol.shape, dtype=np.uint8))
    mask.array[:, 2:14, 2:14] = 1
    out = kmeans(vol, 3, mask=mask)
    assert out.array[0, 0, 0] == 0 and out.array[0, 2, 2] == 1 and out.array[3, 7, 7] == 3


def test_kmeans_errors() -> None:
    vol = make_oblique_volume(shape=(4, 4, 4))
    with pytest.raises(ConfigError, match="2 to 16"):
        kmeans(vol, 1)
    with pytest.raises(InputError, match="distinct intensities"):
        kmeans(vol.with_array(np.ones(vol.shape, dtype=np.float32)), 2)
