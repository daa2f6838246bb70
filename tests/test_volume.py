from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import GeometryError
from medseg.volume import Volume, VolumeGeometry, orientation_code
from tests.conftest import make_oblique_volume, oblique_direction


def test_index_world_round_trip_oblique() -> None:
    vol = make_oblique_volume()
    rng = np.random.default_rng(1)
    idx = rng.uniform(-2, 20, size=(50, 3))
    world = vol.index_to_world(idx)
    np.testing.assert_allclose(vol.world_to_index(world), idx, atol=1e-9)


def test_index_to_world_matches_exercise_formula() -> None:
    """g = R x + o with R = direction * spacing, and x = R^-1 (g - o)."""
    vol = make_oblique_volume()
    r = vol.direction @ np.diag(vol.spacing)
    x = np.array([3.0, 7.0, 2.0])
    g = r @ x + np.array(vol.origin)
    np.testing.assert_allclose(vol.index_to_world(x), g)
    np.testing.assert_allclose(np.linalg.inv(r) @ (g - np.array(vol.origin)), x)


def test_steps_along_axes_have_spacing_length() -> None:
    vol = make_oblique_volume()
    base = vol.index_to_world([0, 0, 0])
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1
        assert np.linalg.norm(vol.index_to_world(step) - base) == pytest.approx(vol.spacing[axis])


def test_origin_is_centre_of_first_voxel() -> None:
    vol = make_oblique_volume()
    np.testing.assert_allclose(vol.index_to_world([0, 0, 0]), vol.origin)


def test_corners_and_bounding_box_contain_all_voxel_centres() -> None:
    vol = make_oblique_volume()
    corners = vol.geometry.corners_world()
    assert corners.shape == (8, 3)
    lo, hi = vol.geometry.world_bounding_box()
    centres = vol.index_to_world(np.argwhere(np.ones(vol.shape, bool)))
    assert np.all(centres >= lo) and np.all(centres <= hi)
    # corners are half a voxel outside the first/last centres
    np.testing.assert_allclose(vol.world_to_index(corners).min(axis=0), [-0.5, -0.5, -0.5], atol=1e-9)


def test_orientation_codes() -> None:
    identity_itk = np.eye(3)
    assert orientation_code(identity_itk[:, ::-1]) == "LPS"
    ras_itk = np.diag([-1.0, -1.0, 1.0])
    assert orientation_code(ras_itk[:, ::-1]) == "RAS"
    # sagittal DICOM: rows along y (P), columns along -z (I), slices along x (L)
    sag_itk = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float)
    assert orientation_code(sag_itk[:, ::-1]) == "PIL"


def test_geometry_comparison_with_tolerance() -> None:
    g = VolumeGeometry((4, 5, 6), (3, 0.5, 0.5), (1, 2, 3), oblique_direction())
    assert g.is_close(VolumeGeometry((4, 5, 6), (3, 0.5, 0.50001), (1, 2, 3.0002), oblique_direction()))
    other = VolumeGeometry((4, 5, 6), (3, 0.5, 0.5), (1, 2, 3.5), oblique_direction())
    assert not g.is_close(other)
    with pytest.raises(GeometryError, match="origin"):
        g.require_same(other)
    with pytest.raises(GeometryError, match="shape"):
        g.require_same(VolumeGeometry((4, 5, 7), (3, 0.5, 0.5), (1, 2, 3), oblique_direction()))


def test_with_array_keeps_geometry_and_checks_shape() -> None:
    vol = make_oblique_volume()
    lab = vol.with_array(np.zeros(vol.shape, np.uint8))
    assert lab.geometry is vol.geometry
    with pytest.raises(GeometryError, match="shape"):
        vol.with_array(np.zeros((1, 2, 3)))


def test_repr_is_informative() -> None:
    text = repr(make_oblique_volume())
    assert "shape zyx=(12, 20, 16)" in text
    assert "spacing zyx=(3, 0.7, 0.5)" in text
    assert "oblique" in text and "orientation" in text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spacing": (0, 1, 1)}, "positive"),
        ({"spacing": (1, 1)}, "3 values"),
        ({"direction": np.ones((3, 3))}, "unit|orthonormal"),
        # unit columns, det cos(2.5 deg) = 0.999: a sheared grid, not a rotation
        (
            {"direction": [[1, np.sin(np.radians(2.5)), 0], [0, np.cos(np.radians(2.5)), 0], [0, 0, 1]]},
            r"orthonormal, found axes 2.5 degrees from perpendicular",
        ),
        ({"origin": (np.nan, 0, 0)}, "finite"),
    ],
)
def test_invalid_geometry_is_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        Volume(np.zeros((2, 3, 4)), **kwargs)


def test_volume_must_be_3d() -> None:
    with pytest.raises(GeometryError, match="3D"):
        Volume(np.zeros((3, 4)))


def test_geometry_dict_round_trip() -> None:
    g = make_oblique_volume().geometry
    assert VolumeGeometry.from_dict(g.to_dict()).is_close(g, spacing_atol=0, origin_atol=0, direction_atol=0)


def test_differences_name_the_angle_between_two_oblique_directions() -> None:
    a = VolumeGeometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), oblique_direction((10.0, 0.0, 0.0)))
    b = VolumeGeometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), oblique_direction((15.0, 0.0, 0.0)))
    (diff,) = a.differences(b)
    assert a.orientation == b.orientation and "(5.00 degrees apart)" in diff
    assert a.differences(a) == []
    mirrored = a.direction.copy()
    mirrored[:, 2] *= -1  # the x axis runs the other way
    flipped = VolumeGeometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), mirrored)
    (diff,) = flipped.differences(a)
    assert "mirrored: an axis is flipped" in diff
