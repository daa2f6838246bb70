"""Seeded region growing (SimpleITK ConnectedThreshold / ConfidenceConnected) and seed handling."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.classical import region_grow, seed_indices
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume
from tests.conftest import make_oblique_volume

SHAPE = (10, 20, 24)


def _two_blobs() -> Volume:
    """Two bright boxes (100 +- 3, uniform noise) on a dark background, separated by a gap."""
    rng = np.random.default_rng(0)
    arr = 10 + rng.normal(0, 1.5, SHAPE)
    arr[2:8, 3:10, 3:10] = 100 + rng.uniform(-3, 3, (6, 7, 7))
    arr[2:8, 3:10, 14:21] = 100 + rng.uniform(-3, 3, (6, 7, 7))
    return make_oblique_volume(shape=SHAPE).with_array(arr.astype(np.float32))


def _first_box() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[2:8, 3:10, 3:10] = True
    return m


@pytest.mark.parametrize("method", ["confidence", "connected"])
def test_grows_only_the_connected_blob(method: str) -> None:
    vol = _two_blobs()
    before = vol.array.copy()
    # Uniform noise of std 1.7 stays within mean +- 3 std of the seed neighbourhood.
    out = region_grow(vol, [(5, 6, 6)], method=method, multiplier=3.0)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out.array == 1, _first_box())
    assert out.geometry.is_close(vol.geometry)
    assert out.meta["baseline"]["grow"] == method
    np.testing.assert_array_equal(vol.array, before)


def test_connected_with_explicit_bounds_and_label() -> None:
    vol = _two_blobs()
    out = region_grow(vol, [(5, 6, 6), (5, 6, 17)], method="connected", lower=50, upper=200, label=3)
    assert set(np.unique(out.array)) == {0, 3}
    assert int((out.array == 3).sum()) == 2 * 6 * 7 * 7


def test_world_seed_equals_index_seed_on_an_oblique_grid() -> None:
    vol = _two_blobs()
    world = vol.index_to_world([5.2, 6.0, 5.8])  # rounds to voxel (5, 6, 6)
    assert seed_indices(vol, seeds_world=[world]) == [(5, 6, 6)]
    a = region_grow(vol, [(5, 6, 6)])
    b = region_grow(vol, seeds_world=[world])
    np.testing.assert_array_equal(a.array, b.array)


def test_seed_mask() -> None:
    vol = _two_blobs()
    mask = vol.with_array(np.zeros(SHAPE, dtype=np.uint8))
    mask.array[4:6, 5:7, 5:7] = 1
    out = region_grow(vol, seed_mask=mask, method="connected", multiplier=3.0)
    np.testing.assert_array_equal(out.array == 1, _first_box())


def test_seed_outside_the_image_is_a_clear_error() -> None:
    vol = _two_blobs()
    with pytest.raises(InputError, match=r"seed \(z, y, x\) = \(10, 0, 0\) lies outside the image"):
        region_grow(vol, [(10, 0, 0)])
    with pytest.raises(InputError, match="outside the image") as err:
        region_grow(vol, [(0, -1, 0)])
    assert "read as x, y, z" not in str(err.value)
    # a seed given X Y Z (as a viewer shows it) that fits read backwards: the error says so
    z, y, x = SHAPE[0] - 1, 1, SHAPE[2] - 1
    assert x >= SHAPE[0]  # out of range as z
    with pytest.raises(InputError, match=rf"read as x, y, z it lies inside: --seed {z} {y} {x}"):
        region_grow(vol, [(x, y, z)])
    far = vol.index_to_world([5, 6, -3])
    with pytest.raises(InputError, match=r"world seed .* lies outside the image"):
        region_grow(vol, seeds_world=[far])
    with pytest.raises(InputError, match="three integer voxel indices"):
        seed_indices(vol, [(1, 2)])


def test_region_growing_errors() -> None:
    vol = _two_blobs()
    with pytest.raises(InputError, match="at least one seed"):
        region_grow(vol)
    with pytest.raises(ConfigError, match="'confidence' or 'connected'"):
        region_grow(vol, [(5, 6, 6)], method="flood")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="apply to method 'connected'"):
        region_grow(vol, [(5, 6, 6)], lower=1)
    with pytest.raises(GeometryError, match="different grids"):
        region_grow(vol, seed_mask=Volume(np.ones(SHAPE, dtype=np.uint8)))
    with pytest.raises(InputError, match="seed mask is empty"):
        region_grow(vol, seed_mask=vol.with_array(np.zeros(SHAPE, dtype=np.uint8)))


def test_default_setting_grows_an_organ_without_flooding_its_neighbours() -> None:
    """The CT phantom's organs from one seed at each organ's deepest point: the default
    (multiplier 2.0, 1 iteration, radius 2; benchmarks/region_grow_sweep.py) stays near the
    organ, where ITK's example setting (2.5, 4 iterations, radius 1) re-estimates its way into
    the neighbouring tissue."""
    from scipy import ndimage as ndi

    from medseg.data.phantom import make_ct_case

    case = make_ct_case(0)
    ref = case.label.array
    scores: dict[str, list[float]] = {"default": [], "itk": []}
    for value in [int(v) for v in np.unique(ref) if v]:
        organ = ref == value
        depth = ndi.distance_transform_edt(organ, sampling=case.image.spacing)
        seed = tuple(int(v) for v in np.unravel_index(np.argmax(depth), organ.shape))
        for name, kwargs in (("default", {}), ("itk", {"multiplier": 2.5, "iterations": 4, "radius": 1})):
            grown = region_grow(case.image, [seed], **kwargs).array > 0  # type: ignore[arg-type]
            scores[name].append(2 * np.count_nonzero(grown & organ) / (grown.sum() + organ.sum()))
    assert np.mean(scores["default"]) > np.mean(scores["itk"]) + 0.1
    assert np.mean(scores["default"]) > 0.35


def test_a_world_seed_given_in_ras_is_named_as_such() -> None:
    """A point copied from 3D Slicer (RAS) into --seed-world (LPS): outside the oblique grid,
    and the error gives the LPS point, which lies inside and grows the box it was taken from."""
    vol = _two_blobs()
    lps = vol.index_to_world([5, 6, 6])
    ras = lps * np.array([-1.0, -1.0, 1.0])
    cont = vol.world_to_index(ras)
    assert np.any(cont < -0.5) or np.any(cont >= np.asarray(SHAPE) - 0.5)  # outside, read as LPS
    with pytest.raises(InputError, match="read as RAS") as err:
        seed_indices(vol, seeds_world=[ras])
    hint = str(err.value).split("--seed-world ")[1].split(" (")[0]
    suggested = [float(v) for v in hint.split()]
    np.testing.assert_allclose(suggested, lps, atol=1e-3)
    assert seed_indices(vol, seeds_world=[suggested]) == [(5, 6, 6)]
    far = vol.index_to_world([5, 6, -30])
    with pytest.raises(InputError, match="outside the image") as err:
        seed_indices(vol, seeds_world=[far])
    assert "RAS" not in str(err.value)  # no hint when the RAS reading is outside too


def test_the_result_records_its_seeds_as_voxel_indices() -> None:
    """baseline.json must let a class handout be made again: the seeds (a world seed as the
    voxel of the oblique grid it fell in), not only their number."""
    from medseg.classical import watershed

    vol = _two_blobs()
    world = vol.index_to_world([4.3, 4.8, 16.2])  # off the voxel centre, in voxel (4, 5, 16)
    grown = region_grow(vol, [(5, 6, 6)], seeds_world=[world], method="connected", lower=50, upper=200)
    assert grown.meta["baseline"]["seed_indices_zyx"] == [[5, 6, 6], [4, 5, 16]]
    basins = watershed(vol, seeds=[(5, 6, 6)], low=50)
    assert basins.meta["baseline"]["seed_indices_zyx"] == [[5, 6, 6]]
    mask = vol.with_array(np.where(_first_box(), 1, 0).astype(np.uint8))  # 294 seed voxels: not listed
    assert "seed_indices_zyx" not in region_grow(vol, seed_mask=mask).meta["baseline"]
