"""Marker-based watershed from thresholds, seeds or a marker volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.classical import watershed
from medseg.classical.watershed import gradient_magnitude
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume
from tests.conftest import make_oblique_volume

SHAPE = (10, 24, 30)


def _touching_boxes() -> Volume:
    """Two touching boxes (100 and 160) on a dark background, slightly blurred."""
    arr = np.full(SHAPE, 10.0)
    arr[2:8, 4:20, 4:15] = 100.0
    arr[2:8, 4:20, 15:26] = 160.0
    arr = ndi.gaussian_filter(arr, 0.7)
    return make_oblique_volume(shape=SHAPE).with_array(arr.astype(np.float32))


def _box(x0: int, x1: int) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[2:8, 4:20, x0:x1] = True
    return m


def test_watershed_from_thresholds_finds_the_bright_objects() -> None:
    vol = _touching_boxes()
    out = watershed(vol, low=50, high=90)
    union = _box(4, 26)
    # Boundary voxels are blurred (partial volume): most, not all, voxels agree; none spill out.
    assert np.mean((out.array == 1) == union) > 0.95
    assert not np.any((out.array == 1) & ~ndi.binary_dilation(union))
    assert out.meta["baseline"]["markers"] == "thresholds"
    assert out.geometry.is_close(vol.geometry)


def test_watershed_default_markers_come_from_multi_otsu() -> None:
    out = watershed(_touching_boxes())
    assert out.meta["baseline"]["low"] < out.meta["baseline"]["high"]
    assert set(np.unique(out.array)) == {0, 1}


def test_watershed_from_seeds_splits_touching_objects() -> None:
    vol = _touching_boxes()
    out = watershed(vol, seeds=[(5, 12, 8), (5, 12, 21)], low=50)
    assert np.mean((out.array == 1) == _box(4, 15)) > 0.95
    assert np.mean((out.array == 2) == _box(15, 26)) > 0.95
    assert not np.any((out.array == 1) & _box(16, 30)) and not np.any((out.array == 2) & _box(0, 14))


def test_watershed_from_a_marker_volume() -> None:
    vol = _touching_boxes()
    markers = np.zeros(SHAPE, dtype=np.uint8)
    markers[0] = 1
    markers[5, 12, 8] = 2
    markers[5, 12, 21] = 3
    out = watershed(vol, markers=vol.with_array(markers))
    assert out.array[5, 12, 6] == 1 and out.array[5, 12, 24] == 2 and out.array[0, 0, 0] == 0


def test_gradient_units() -> None:
    # A ramp of 1 per voxel along z with 3 mm slices: 1 per voxel step, or 1/3 per mm.
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], (6, 4, 4)).copy()
    assert gradient_magnitude(ramp, (3.0, 1.0, 1.0), 0.0)[3, 2, 2] == pytest.approx(1.0)
    assert gradient_magnitude(ramp, (3.0, 1.0, 1.0), 0.0, per_mm=True)[3, 2, 2] == pytest.approx(1 / 3)


def test_watershed_errors() -> None:
    vol = _touching_boxes()
    markers = vol.with_array(np.ones(SHAPE, dtype=np.uint8))
    with pytest.raises(ConfigError, match="not both"):
        watershed(vol, markers=markers, seeds=[(1, 1, 1)])
    with pytest.raises(InputError, match="background marker 1 and at least one object"):
        watershed(vol, markers=markers)
    with pytest.raises(GeometryError, match="different grids"):
        watershed(vol, markers=Volume(np.ones(SHAPE, dtype=np.uint8)))
    with pytest.raises(ConfigError, match="above the low"):
        watershed(vol, low=100, high=50)
    with pytest.raises(InputError, match="no background or no object"):
        watershed(vol, low=0, high=130)
    with pytest.raises(InputError, match="outside the image"):
        watershed(vol, seeds=[(5, 12, 30)], low=50)
    with pytest.raises(ConfigError, match="sigma"):
        watershed(vol, sigma_mm=-1)
    with pytest.raises(ConfigError, match=r"seed_radius_mm and background_margin_mm must be >= 0.*-2"):
        watershed(vol, seeds=[(5, 12, 8)], low=50, seed_radius_mm=-2)
    many = [(z, y, x) for z in range(2, 8) for y in range(4, 20) for x in range(4, 7)]  # 288 seeds
    with pytest.raises(ConfigError, match="at most 255 seeds, found 288"):
        watershed(vol, seeds=many, low=50)


def test_a_seed_darker_than_the_background_threshold_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vol = _touching_boxes()
    with caplog.at_level("WARNING"):
        watershed(vol, seeds=[(5, 12, 8)], low=120)
    assert "below the background threshold" in caplog.text


def test_a_seed_the_background_floods_around_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """A plain point seed on the box's edge (bright enough, high gradient): the background
    reaches the flat inside first and the seed keeps its own voxel; the lecturer is told why."""
    vol = _touching_boxes()
    plain = {"seed_radius_mm": 0.0, "background_margin_mm": 0.0}
    with caplog.at_level("WARNING"):
        out = watershed(vol, seeds=[(5, 4, 8), (5, 12, 21)], low=50, **plain)
    assert int((out.array == 1).sum()) == 1 and int((out.array == 2).sum()) > 100
    assert "seed 1 at (z, y, x) (5, 4, 8) kept only 1 voxel(s)" in caplog.text
    assert "seed 2" not in caplog.text


def test_a_seed_lost_on_a_real_mr_is_warned_about(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lecturer's CHAOS case: a seed inside the liver (label 1 there) of a fat-suppressed
    T2 MR, whose dark fat marks background next to the liver."""
    from medseg.io import read_volume

    data = shared_data / "chaos_mr_t2spir"
    image, label = read_volume(data / "image_1.nii.gz"), read_volume(data / "label_1.nii.gz")
    assert label.array[21, 150, 60] == 1
    with caplog.at_level("WARNING"):
        out = watershed(image, seeds=[(21, 150, 60)], seed_radius_mm=0, background_margin_mm=0)
    assert int((out.array == 1).sum()) < 10 and "seed 1 at (z, y, x) (21, 150, 60) kept only" in caplog.text
    # The default grows the seed into a marker and keeps the background marker away from it:
    # the liver is found (Dice 0.84 when written).
    caplog.clear()
    with caplog.at_level("WARNING"):
        out = watershed(image, seeds=[(21, 150, 60)])
    liver, found = np.rint(label.array) == 1, out.array == 1
    assert 2 * np.count_nonzero(liver & found) / (np.count_nonzero(liver) + np.count_nonzero(found)) > 0.7
    assert "kept only" not in caplog.text


def test_a_point_seed_grows_into_a_marker_within_its_intensity_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default seed marker: voxels within seed_radius_mm of the seed, connected to it,
    in its neighbourhood's intensity range (so it never crosses into the other box), and no
    background marker within background_margin_mm; both recorded."""
    import sys

    module = sys.modules["medseg.classical.watershed"]
    seen: list[np.ndarray] = []
    original = module.sk_watershed

    def spy(elevation: np.ndarray, markers: np.ndarray, **kw: object) -> np.ndarray:
        seen.append(markers.copy())
        return original(elevation, markers=markers, **kw)

    monkeypatch.setattr(module, "sk_watershed", spy)
    vol = _touching_boxes()
    out = watershed(vol, seeds=[(5, 12, 8)], low=50, seed_radius_mm=2.0, background_margin_mm=4.0)
    (m,) = seen
    grown = m == 2
    # 2 mm at 3 x 0.7 x 0.5 mm voxels: within one slice, 5 x 9 voxels at most
    assert grown[5, 12, 8] and 10 < grown.sum() <= 45 and not grown[[4, 6]].any()
    assert not (grown & ~_box(4, 15)).any()
    away = np.ones(SHAPE, dtype=bool)
    away[5, 12, 8] = False
    dist = ndi.distance_transform_edt(away, sampling=vol.spacing)
    assert not ((m == 1) & (dist <= 4.0)).any() and ((m == 1) & (dist > 4.0)).any()
    assert (
        out.meta["baseline"]["seed_radius_mm"] == 2.0 and out.meta["baseline"]["background_margin_mm"] == 4.0
    )
