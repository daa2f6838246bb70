from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medseg.errors import ConfigError
from medseg.geometry.orientation import (
    closest_orientation,
    parse_orientation_code,
    plan_reorientation,
    reorient,
    to_canonical,
)
from medseg.volume import Volume
from tests.conftest import make_oblique_volume

ALL_CODES = [
    "".join(letters)
    for perm in itertools.permutations([("L", "R"), ("P", "A"), ("S", "I")])
    for letters in itertools.product(*perm)
]


def _assert_same_world_values(a: Volume, b: Volume) -> None:
    """Every voxel of b sits on a voxel centre of a with the same value."""
    idx_b = np.argwhere(np.ones(b.shape, dtype=bool))
    idx_a = a.world_to_index(b.index_to_world(idx_b))
    rounded = np.round(idx_a)
    np.testing.assert_allclose(idx_a, rounded, atol=1e-9)
    rounded = rounded.astype(int)
    np.testing.assert_array_equal(a.array[tuple(rounded.T)], b.array[tuple(idx_b.T)])


def test_all_48_codes_are_listed() -> None:
    assert len(set(ALL_CODES)) == 48
    assert "LPS" in ALL_CODES and "RAS" in ALL_CODES and "PIL" in ALL_CODES


@pytest.mark.parametrize("code", ALL_CODES)
def test_reorient_to_every_code_keeps_world_positions_and_inverts_exactly(code: str) -> None:
    vol = make_oblique_volume(shape=(4, 6, 5))
    out = reorient(vol, code)
    assert closest_orientation(out) == code
    assert out.orientation == code
    assert sorted(out.shape) == sorted(vol.shape)
    _assert_same_world_values(vol, out)
    back = reorient(out, vol.orientation)
    np.testing.assert_array_equal(back.array, vol.array)
    back.geometry.require_same(vol.geometry, spacing_atol=0, origin_atol=1e-9, direction_atol=1e-15)


def test_ras_flips_x_and_y_of_an_lps_volume() -> None:
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    vol = Volume(arr, spacing=(2.0, 1.0, 0.5), origin=(10.0, 20.0, 30.0))
    assert vol.orientation == "LPS"
    ras = reorient(vol, "RAS")
    np.testing.assert_array_equal(ras.array, arr[:, ::-1, ::-1])
    # new first voxel is the old voxel [0, 2, 3]: x = 10 + 3*0.5, y = 20 + 2*1
    np.testing.assert_allclose(ras.origin, (11.5, 22.0, 30.0))
    np.testing.assert_allclose(ras.direction, np.diag([-1.0, -1.0, 1.0])[:, ::-1])
    assert ras.spacing == vol.spacing


def test_sagittal_to_lps_transposes_axes() -> None:
    # sagittal DICOM (PIL): columns -> P (+y), rows -> I (-z), slices -> L (+x)
    direction = np.column_stack([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # array order z, y, x
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    vol = Volume(arr, spacing=(3.6, 0.6, 0.5), origin=(5.0, -7.0, 40.0), direction=direction)
    assert vol.orientation == "PIL"
    lps = to_canonical(vol)
    assert lps.orientation == "LPS"
    assert lps.shape == (4, 5, 3)
    assert lps.spacing == (0.6, 0.5, 3.6)
    np.testing.assert_allclose(lps.direction, np.eye(3)[:, ::-1], atol=0)
    _assert_same_world_values(vol, lps)


def test_oblique_volume_gets_closest_code_and_stays_oblique() -> None:
    vol = make_oblique_volume()
    out = reorient(vol, "ASR")
    assert out.orientation == "ASR"
    assert out.geometry.obliquity == pytest.approx(vol.geometry.obliquity)
    _assert_same_world_values(vol, out)


def test_labels_are_moved_not_interpolated(oblique_label: Volume) -> None:
    out = reorient(oblique_label, "RAI")
    assert out.dtype == oblique_label.dtype
    assert np.array_equal(np.unique(out.array), np.unique(oblique_label.array))
    assert np.bincount(out.array.ravel()).tolist() == np.bincount(oblique_label.array.ravel()).tolist()


def test_same_code_returns_an_independent_copy(oblique_volume: Volume) -> None:
    out = reorient(oblique_volume, oblique_volume.orientation)
    assert out.geometry is oblique_volume.geometry
    np.testing.assert_array_equal(out.array, oblique_volume.array)
    out.array[0, 0, 0] = -1
    assert oblique_volume.array[0, 0, 0] != -1


def test_result_does_not_share_memory_with_input(oblique_volume: Volume) -> None:
    out = reorient(oblique_volume, "RAS")
    assert not np.shares_memory(out.array, oblique_volume.array)
    assert out.array.flags.c_contiguous


def test_plan_applies_to_channel_arrays_and_inverts() -> None:
    vol = make_oblique_volume(shape=(4, 6, 5))
    plan = plan_reorientation(vol.geometry, "IRA")
    channels = np.stack([vol.array, 2 * vol.array])
    moved = plan.apply_array(channels)
    np.testing.assert_array_equal(moved[0], reorient(vol, "IRA").array)
    np.testing.assert_array_equal(moved[1], 2 * reorient(vol, "IRA").array)
    np.testing.assert_array_equal(plan.inverse().apply_array(moved), channels)
    assert plan.inverse().apply_geometry(plan.apply_geometry(vol.geometry)).is_close(vol.geometry)


def test_direction_where_per_axis_argmax_collides_still_gets_a_valid_code() -> None:
    # 48 degrees in the L-P plane, then tilted 35 degrees about x: both the x and the y
    # array axes are most parallel to world x, so the per-axis code is invalid ("LRS");
    # closest_orientation must still give a one-to-one code and the round trip must hold.
    rot = Rotation.from_euler("zx", [48, 35], degrees=True).as_matrix()
    vol = Volume(
        np.arange(24.0).reshape(2, 3, 4), spacing=(2, 1, 1), origin=(3, -4, 5), direction=rot[:, ::-1]
    )
    with pytest.raises(ConfigError):
        parse_orientation_code(vol.orientation)
    code = closest_orientation(vol)
    assert parse_orientation_code(code) == code
    out = reorient(vol, "LPS")
    assert closest_orientation(out) == "LPS"
    _assert_same_world_values(vol, out)
    back = reorient(out, code)
    np.testing.assert_array_equal(back.array, vol.array)
    back.geometry.require_same(vol.geometry, origin_atol=1e-9)


def test_plan_inverse_undoes_an_exact_45_degree_tie() -> None:
    # At exactly 45 degrees there is no unique closest code; the plan's inverse still
    # undoes the move exactly.
    rot = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    vol = Volume(np.arange(24.0).reshape(2, 3, 4), spacing=(2, 1, 1), direction=rot[:, ::-1])
    plan = plan_reorientation(vol.geometry, "RAS")
    moved = plan.apply_array(vol.array)
    np.testing.assert_array_equal(plan.inverse().apply_array(moved), vol.array)
    grid = plan.inverse().apply_geometry(plan.apply_geometry(vol.geometry))
    grid.require_same(vol.geometry, origin_atol=1e-9)


@pytest.mark.parametrize("bad", ["LPX", "LLS", "LP", "LPSS", "RLS", ""])
def test_invalid_codes_raise_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="orientation code"):
        parse_orientation_code(bad)
    with pytest.raises(ConfigError):
        reorient(make_oblique_volume(), bad)


def test_lower_case_codes_are_accepted() -> None:
    assert parse_orientation_code(" ras ") == "RAS"
