"""Multi-plane ROI: synthetic cases with hand-computed answers, then real PROSTATEx studies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medseg.errors import ConfigError, GeometryError
from medseg.geometry.crop import CropBox, uncrop
from medseg.geometry.roi import (
    MultiPlaneROI,
    compute_roi,
    grid_halfspaces,
    index_box_containing,
    intersect_grids,
    multiplane_roi,
)
from medseg.volume import Volume, VolumeGeometry

X, Y, Z = np.eye(3)
# direction columns in array order (z, y, x)
AXIAL = np.column_stack([Z, Y, X])  # LPS
SAGITTAL = np.column_stack([X, -Z, Y])  # PIL: slices -> L, rows -> I, columns -> P
CORONAL = np.column_stack([Y, -Z, X])  # LIP: slices -> P, rows -> I, columns -> L


def _volume(shape: tuple[int, int, int], spacing, origin, direction, **meta: str) -> Volume:
    rng = np.random.default_rng(sum(shape))
    return Volume(rng.integers(0, 1000, size=shape).astype(np.int16), spacing, origin, direction, meta=meta)


def _transformed(vol: Volume, rot: np.ndarray, shift: np.ndarray) -> Volume:
    """The same grid moved rigidly in world space (g -> rot g + shift)."""
    origin = rot @ np.asarray(vol.origin) + shift
    return Volume(vol.array, vol.spacing, origin, rot @ vol.direction, meta=vol.meta)


def _box_case() -> tuple[Volume, Volume, Volume]:
    """Three axis-aligned grids overlapping in x 9.5..29.5, y 4.5..24.5, z 3..15 (mm).

    Axial: 1 mm in-plane, 2 mm slices from z=0 (slice k spans 2k-1 .. 2k+1), so the
    overlap is axial columns 10..30, rows 5..25, slices 2..8 (upper exclusive).
    """
    axial = _volume((10, 40, 50), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), AXIAL)
    # 10 sagittal slices of 2 mm, faces at x = 9.5 .. 29.5; in-plane covers y -20.5..79.5, z -49.5..50.5
    sagittal = _volume((10, 100, 100), (2.0, 1.0, 1.0), (10.5, -20.0, 50.0), SAGITTAL)
    # 5 coronal slices of 4 mm, faces at y = 4.5 .. 24.5; 12 rows of 1 mm, faces z = 15 .. 3
    coronal = _volume((5, 12, 100), (4.0, 1.0, 1.0), (-20.0, 6.5, 14.5), CORONAL)
    return axial, sagittal, coronal


BOX_CASE_ANSWER = CropBox((2, 5, 10), (8, 25, 30))


# ------------------------------------------------------------------ synthetic, known answers
def test_axis_aligned_boxes_known_overlap() -> None:
    axial, sagittal, coronal = _box_case()
    roi = multiplane_roi(axial, sagittal, coronal)
    assert roi.box == BOX_CASE_ANSWER
    np.testing.assert_allclose(roi.world_lower, [9.5, 4.5, 3.0], atol=1e-9)
    np.testing.assert_allclose(roi.world_upper, [29.5, 24.5, 15.0], atol=1e-9)
    assert len(roi.vertices_world) == 8
    assert roi.region.volume_mm3 == pytest.approx(20 * 20 * 12)
    assert roi.cropped is not None and roi.cropped.shape == (6, 20, 20)
    np.testing.assert_array_equal(roi.cropped.array, axial.array[2:8, 5:25, 10:30])
    # axis-aligned grids: the exercise's variant gives the same answer
    assert (
        compute_roi(axial.geometry, sagittal.geometry, coronal.geometry, method="aabb").box == BOX_CASE_ANSWER
    )


@pytest.mark.parametrize("angles", [(17.0, -9.0, 23.0), (5.0, 30.0, -25.0), (-35.0, 10.0, 30.0)])
def test_rigidly_moved_study_gives_the_same_index_box(angles: tuple[float, float, float]) -> None:
    """Rotating and shifting all three grids together (an oblique study with a non-zero
    origin) must not change the ROI in index space, nor the overlap volume. (A rotation
    that turns each series into another plane, e.g. 90 degrees about x, is refused: in
    patient coordinates that is a study given in the wrong order, see below.)"""
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    shift = np.array([-31.5, 12.25, 80.0])
    axial, sagittal, coronal = (_transformed(v, rot, shift) for v in _box_case())
    roi = multiplane_roi(axial, sagittal, coronal)
    assert roi.box == BOX_CASE_ANSWER
    assert roi.region.volume_mm3 == pytest.approx(4800.0)
    expected_vertices = np.array([[x, y, z] for x in (9.5, 29.5) for y in (4.5, 24.5) for z in (3.0, 15.0)])
    moved = expected_vertices @ rot.T + shift
    dist = np.linalg.norm(roi.vertices_world[:, None, :] - moved[None, :, :], axis=-1)
    assert dist.min(axis=0).max() < 1e-6  # every expected vertex found
    np.testing.assert_array_equal(roi.cropped.array, axial.array[2:8, 5:25, 10:30])  # type: ignore[union-attr]


def _tilted_case(theta_deg: float = 20.0) -> tuple[Volume, Volume, Volume]:
    """An axial grid tilted about x (like PROSTATEx) centred on the world origin,
    cut by a sagittal slab x in [-20, 30] and a coronal slab y in [-10, 15]."""
    t = math.radians(theta_deg)
    row = np.array([0.0, math.cos(t), -math.sin(t)])
    slc = np.array([0.0, math.sin(t), math.cos(t)])
    direction = np.column_stack([slc, row, X])
    shape, spacing = (10, 200, 100), (3.0, 1.0, 1.0)
    centre = (np.asarray(shape) - 1) / 2
    origin = -(direction * np.asarray(spacing)) @ centre
    axial = _volume(shape, spacing, origin, direction)
    sagittal = _volume((25, 300, 300), (2.0, 1.0, 1.0), (-19.0, -150.0, 150.0), SAGITTAL)
    coronal = _volume((5, 300, 300), (5.0, 1.0, 1.0), (-150.0, -7.5, 150.0), CORONAL)
    return axial, sagittal, coronal


def test_tilted_axial_with_orthogonal_views_matches_hand_computation() -> None:
    theta = 20.0
    axial, sagittal, coronal = _tilted_case(theta)
    roi = multiplane_roi(axial, sagittal, coronal)
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    height = 30.0  # axial slab thickness (10 slices x 3 mm)
    # The y-strip (width 25) crosses the tilted slab (thickness 30): a parallelogram of
    # area 25 * 30 / cos(theta), extruded over the 50 mm sagittal slab.
    assert roi.region.volume_mm3 == pytest.approx(50 * 25 * height / c, rel=1e-9)
    assert len(roi.vertices_world) == 8
    # world y = u cos + v sin (u: along rows, v: along slices); u ranges over
    # [(-10 - 15 s)/c, (15 + 15 s)/c] and the row index is u + 99.5.
    u_min, u_max = (-10 - 15 * s) / c, (15 + 15 * s) / c
    rows = (math.floor(u_min + 100.0), math.ceil(u_max + 100.0))
    assert roi.box == CropBox((0, rows[0], 30), (10, rows[1], 80))  # x = col - 49.5 in [-20, 30]
    np.testing.assert_allclose(roi.world_lower[:2], [-20.0, -10.0], atol=1e-9)
    np.testing.assert_allclose(roi.world_upper[:2], [30.0, 15.0], atol=1e-9)
    assert roi.world_upper[2] - roi.world_lower[2] == pytest.approx(height / c + 25 * s / c)


def test_exercise_variant_contains_the_exact_box_on_oblique_grids() -> None:
    axial, sagittal, coronal = _tilted_case(20.0)
    exact = compute_roi(axial.geometry, sagittal.geometry, coronal.geometry)
    aabb = compute_roi(axial.geometry, sagittal.geometry, coronal.geometry, method="aabb")
    assert all(a <= e for a, e in zip(aabb.box.lower, exact.box.lower, strict=True))
    assert all(a >= e for a, e in zip(aabb.box.upper, exact.box.upper, strict=True))
    assert np.prod(aabb.box.shape) > np.prod(exact.box.shape)  # strictly larger when tilted
    assert aabb.region.volume_mm3 > exact.region.volume_mm3
    # and every exact vertex is inside the exercise's world box
    assert np.all(aabb.region.contains(exact.vertices_world))


def test_box_is_the_smallest_voxel_box_holding_the_polytope() -> None:
    axial, sagittal, coronal = _tilted_case(33.0)
    roi = compute_roi(axial.geometry, sagittal.geometry, coronal.geometry)
    idx = axial.world_to_index(roi.vertices_world)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    lower, upper = np.asarray(roi.box.lower), np.asarray(roi.box.upper)
    # the first/last voxel of the box each contain part of the polytope (up to the grid's own faces)
    assert np.all(lo >= lower - 0.5 - 1e-9) and np.all(lo < lower + 0.5)
    assert np.all(hi <= upper - 0.5 + 1e-9) and np.all(hi > upper - 1.5)


def test_every_voxel_centre_in_the_overlap_is_kept() -> None:
    axial, sagittal, coronal = _tilted_case(33.0)
    roi = multiplane_roi(axial, sagittal, coronal)
    idx = np.argwhere(np.ones(axial.shape, dtype=bool))
    inside = roi.region.contains(axial.index_to_world(idx))
    assert inside.sum() > 1000
    in_box = np.all((idx >= roi.box.lower) & (idx < roi.box.upper), axis=1)
    assert np.all(in_box[inside])
    # and the box is not much larger than the voxels it must hold
    assert in_box.sum() < 3 * inside.sum()


def test_order_of_the_three_grids_does_not_change_the_polytope() -> None:
    a, s, c = (v.geometry for v in _tilted_case(20.0))
    r1 = intersect_grids([a, s, c])
    r2 = intersect_grids([c, a, s])
    assert r1.volume_mm3 == pytest.approx(r2.volume_mm3)
    dist = np.linalg.norm(r1.vertices[:, None] - r2.vertices[None], axis=-1)
    assert dist.min(axis=1).max() < 1e-6


def test_identical_grids_give_the_whole_grid() -> None:
    """Coincident faces (a degenerate half-space set) are handled: the ROI is the grid."""
    axial = _transformed(
        _box_case()[0], Rotation.from_euler("xyz", (10, 20, 30), degrees=True).as_matrix(), np.ones(3)
    )
    roi = compute_roi(axial.geometry, axial.geometry, axial.geometry)
    assert roi.box == CropBox.full(axial.shape)
    assert len(roi.vertices_world) == 8
    np.testing.assert_allclose(
        np.sort(roi.vertices_world, axis=0), np.sort(axial.geometry.corners_world(), axis=0), atol=1e-6
    )


def test_halfspaces_hold_exactly_the_grid() -> None:
    geom = _tilted_case()[0].geometry
    normals, offsets = grid_halfspaces(geom)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0)
    corners = geom.corners_world()
    slack = offsets[None, :] - corners @ normals.T
    assert slack.min() > -1e-9  # corners are on the boundary
    outside = geom.index_to_world([[-0.6, 3, 3], [3, 3, geom.shape[2] - 0.4]])
    assert np.all(np.any(outside @ normals.T > offsets, axis=1))


def test_margin_grows_the_box_by_whole_voxels_and_is_clipped() -> None:
    axial, sagittal, coronal = _box_case()
    roi = multiplane_roi(axial, sagittal, coronal, margin_mm=2.5)
    # ceil(2.5 / spacing): 2 slices (2 mm), 3 rows and columns (1 mm)
    assert roi.box == CropBox((0, 2, 7), (10, 28, 33))
    big = compute_roi(axial.geometry, sagittal.geometry, coronal.geometry, margin_mm=1000)
    assert big.box == CropBox.full(axial.shape)
    assert roi.margin_mm == 2.5


def test_cropped_volume_keeps_world_positions_and_uncrops_exactly() -> None:
    axial, sagittal, coronal = _tilted_case(20.0)
    roi = multiplane_roi(axial, sagittal, coronal)
    assert roi.cropped is not None
    np.testing.assert_allclose(
        roi.cropped.index_to_world([0, 0, 0]), axial.index_to_world(roi.box.lower), atol=1e-9
    )
    roi.cropped.geometry.require_same(roi.crop_geometry, spacing_atol=0, origin_atol=0, direction_atol=0)
    back = uncrop(roi.cropped, axial.geometry, roi.box)
    np.testing.assert_array_equal(back.array[roi.box.slices], axial.array[roi.box.slices])
    corners = roi.crop_corners_world
    np.testing.assert_allclose(roi.cropped.geometry.corners_world(), corners, atol=1e-9)


def test_to_dict_is_json_ready() -> None:
    import json

    roi = compute_roi(*(v.geometry for v in _box_case()))
    data = json.loads(json.dumps(roi.to_dict()))
    assert data["index_box_on_axial"] == {
        "lower_zyx": [2, 5, 10],
        "upper_zyx_exclusive": [8, 25, 30],
        "shape_zyx": [6, 20, 20],
    }
    assert data["intersection_volume_ml"] == pytest.approx(4.8)
    assert data["method"] == "exact"
    assert VolumeGeometry.from_dict(data["cropped_geometry"]).shape == (6, 20, 20)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("method", ["exact", "aabb"])
def test_disjoint_grids_raise(method: str) -> None:
    axial, sagittal, coronal = _box_case()
    far = Volume(sagittal.array, sagittal.spacing, (300.0, -20.0, 50.0), SAGITTAL)
    with pytest.raises(GeometryError, match="do not overlap"):
        multiplane_roi(axial, far, coronal, method=method)  # type: ignore[arg-type]


def test_grids_that_only_touch_raise() -> None:
    axial, sagittal, coronal = _box_case()
    # sagittal slab x 49.5 .. 69.5 touches the axial grid's last face x = 49.5
    touching = Volume(sagittal.array, sagittal.spacing, (50.5, -20.0, 50.0), SAGITTAL)
    with pytest.raises(GeometryError, match="do not overlap"):
        multiplane_roi(axial, touching, coronal)


def test_oblique_grids_whose_world_boxes_overlap_but_grids_do_not() -> None:
    """Only the exact method sees that a thin tilted coronal slab misses the axial grid."""
    r = math.sqrt(0.5)
    axial = _volume((20, 40, 40), (2.0, 1.0, 1.0), (0.0, 0.0, 1.0), AXIAL)  # x, y -0.5..39.5, z 0..40
    sag = _volume((30, 150, 150), (1.0, 1.0, 1.0), (0.5, -20.0, 100.0), SAGITTAL)  # x 0..30
    # a 2 mm slab along the line y + z = 100 (tilted 45 degrees): its world box y, z ~30..70
    # overlaps the axial grid's corner (y, z up to ~40), but the slab stays ~14 mm away from it
    tilted = np.column_stack([[0, r, r], [0, r, -r], X])
    cor = _volume((2, 57, 40), (1.0, 1.0, 1.0), (0.0, 30.0, 70.0), tilted)
    with pytest.raises(GeometryError, match="do not overlap"):
        compute_roi(axial.geometry, sag.geometry, cor.geometry)
    aabb = compute_roi(axial.geometry, sag.geometry, cor.geometry, method="aabb")
    assert aabb.box.is_inside(axial.shape)
    assert not np.any(intersect_grids([axial.geometry, sag.geometry]).contains(cor.geometry.corners_world()))


def test_different_frames_of_reference_raise() -> None:
    axial, sagittal, coronal = _box_case()
    axial.meta.update(frame_of_reference_uid="1.2.3", source="t2_tra.nii.gz")
    sagittal.meta.update(frame_of_reference_uid="1.2.3")
    coronal.meta.update(frame_of_reference_uid="1.2.4")
    with pytest.raises(
        GeometryError, match=r"coronal volume and axial volume \(t2_tra.nii.gz\) belong to different frames"
    ):
        multiplane_roi(axial, sagittal, coronal)


def test_frame_of_reference_check_is_skipped_when_absent() -> None:
    axial, sagittal, coronal = _box_case()
    axial.meta["frame_of_reference_uid"] = "1.2.3"
    coronal.meta["frame_of_reference_uid"] = "1.2.3"
    assert multiplane_roi(axial, sagittal, coronal).box == BOX_CASE_ANSWER


def test_bad_options_raise_config_error() -> None:
    a, s, c = (v.geometry for v in _box_case())
    with pytest.raises(ConfigError, match="margin"):
        compute_roi(a, s, c, margin_mm=-1)
    with pytest.raises(ConfigError, match="method"):
        compute_roi(a, s, c, method="bbox")  # type: ignore[arg-type]


def test_index_box_containing_snaps_round_off_on_faces() -> None:
    geom = VolumeGeometry((4, 4, 4))
    # points on voxel faces with float noise: must not add a voxel layer
    pts = geom.index_to_world(np.array([[0.5 + 1e-12, 0.5 - 1e-12, 0.5], [2.5 - 1e-12, 2.5 + 1e-12, 2.5]]))
    assert index_box_containing(geom, pts) == CropBox((1, 1, 1), (3, 3, 3))
    assert index_box_containing(geom, pts, margin_mm=5, clip=False) == CropBox((-4, -4, -4), (8, 8, 8))


# ------------------------------------------------------------------ real PROSTATEx studies
REAL_STUDIES = {
    # patient folder: (axial, sagittal, coronal) SeriesNumber, from SOURCE.md
    "ProstateX-0000": (4, 3, 5),
    "ProstateX-0001": (10, 4, 5),
    "ProstateX-0218": (5, 4, 6),
}


def _read_series(study: Path, number: int) -> Volume:
    """Independent of medseg.io.dicom: SimpleITK's GDCM series reader + from_sitk."""
    import pydicom
    import SimpleITK as sitk

    from medseg.io.itk import from_sitk

    folders = [p for p in study.glob("*/*") if p.is_dir() and p.name.startswith(f"{number}.000000-")]
    assert len(folders) == 1, folders
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folders[0]))
    reader.SetFileNames(files)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).FrameOfReferenceUID
    return from_sitk(reader.Execute(), meta={"frame_of_reference_uid": str(uid)})


@pytest.fixture(scope="module", params=sorted(REAL_STUDIES))
def real_study(request: pytest.FixtureRequest, shared_data: Path) -> tuple[str, Volume, Volume, Volume]:
    patient = request.param
    study = shared_data / "prostatex_dicom" / patient
    if not study.is_dir():
        pytest.skip(f"{study} not found")
    axial, sagittal, coronal = (_read_series(study, n) for n in REAL_STUDIES[patient])
    return patient, axial, sagittal, coronal


def test_real_prostatex_roi(real_study: tuple[str, Volume, Volume, Volume]) -> None:
    _, axial, sagittal, coronal = real_study
    assert axial.geometry.obliquity > 5  # the studies are tilted
    roi: MultiPlaneROI = multiplane_roi(axial, sagittal, coronal)
    assert roi.cropped is not None
    # non-empty and inside the axial grid
    assert roi.box.is_inside(axial.shape)
    assert roi.region.volume_mm3 > 50_000  # > 50 ml: the three fields of view share the pelvis
    # in-plane the sagittal/coronal fields of view are smaller than the axial one
    assert roi.box.shape[1] < axial.shape[1] and roi.box.shape[2] < axial.shape[2]
    # world positions unchanged by the crop
    np.testing.assert_allclose(
        roi.cropped.index_to_world([0, 0, 0]), axial.index_to_world(roi.box.lower), atol=1e-9
    )
    np.testing.assert_array_equal(roi.cropped.array, axial.array[roi.box.slices])
    # every axial voxel whose centre lies in the exact overlap is kept (checked slice by slice)
    yy, xx = np.meshgrid(np.arange(axial.shape[1]), np.arange(axial.shape[2]), indexing="ij")
    kept_inside = 0
    for z in range(axial.shape[0]):
        idx = np.column_stack([np.full(yy.size, z), yy.ravel(), xx.ravel()])
        inside = roi.region.contains(axial.index_to_world(idx))
        in_box = np.all((idx >= roi.box.lower) & (idx < roi.box.upper), axis=1)
        assert np.all(in_box[inside])
        kept_inside += int(inside.sum())
    assert kept_inside > 0
    # the exercise's world-box variant contains the exact box and is larger on tilted studies
    aabb = compute_roi(axial.geometry, sagittal.geometry, coronal.geometry, method="aabb")
    assert all(a <= e for a, e in zip(aabb.box.lower, roi.box.lower, strict=True))
    assert all(a >= e for a, e in zip(aabb.box.upper, roi.box.upper, strict=True))
    assert np.prod(aabb.box.shape) > np.prod(roi.box.shape)


# ------------------------------------------------------------------ inputs in the wrong order
def test_series_given_in_another_plane_order_are_refused_with_the_order_that_fits() -> None:
    axial, sagittal, coronal = _box_case()
    sagittal.meta["source"] = "sag_dir"
    axial.meta["source"] = "tra_dir"
    coronal.meta["source"] = "cor_dir"
    # A sagittal series given as the axial one would be cropped and segmented in its place.
    with pytest.raises(GeometryError) as err:
        multiplane_roi(sagittal, axial, coronal)
    message = str(err.value)
    assert "'sag_dir' (given as axial) is sagittal" in message
    assert "'tra_dir' (given as sagittal) is axial" in message
    assert "(given as coronal)" not in message  # the coronal one was right
    assert message.endswith("give them as axial, sagittal, coronal: 'tra_dir', 'sag_dir', 'cor_dir'")
    # The same happens to a whole study turned 90 degrees about x (axial <-> coronal).
    rot = Rotation.from_euler("xyz", (90.0, 0.0, 0.0), degrees=True).as_matrix()
    with pytest.raises(GeometryError, match="the series given as axial is coronal"):
        multiplane_roi(*(_transformed(v, rot, np.zeros(3)) for v in _box_case()))
    # Without file names (grids only) the roles name the inputs.
    with pytest.raises(
        GeometryError,
        match=r"coronal: the series given as sagittal, the series given as coronal, the series given as axial$",
    ):
        compute_roi(coronal.geometry, axial.geometry, sagittal.geometry)


def test_two_series_in_one_plane_only_warn(caplog: pytest.LogCaptureFixture) -> None:
    axial, sagittal, _coronal = _box_case()
    with caplog.at_level("WARNING", logger="medseg"):
        roi = compute_roi(axial.geometry, sagittal.geometry, axial.geometry)
    assert roi.box.lower[0] >= 0
    assert "the series given as coronal has orientation" in caplog.text


def test_a_series_near_45_degrees_between_planes_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Swapped by argmax but not clearly in either plane: an oblique study, not a mix-up."""
    rot = Rotation.from_euler("xyz", (0.0, 0.0, 50.0), degrees=True).as_matrix()
    axial, sagittal, coronal = (_transformed(v, rot, np.zeros(3)) for v in _box_case())
    with caplog.at_level("WARNING", logger="medseg"):
        roi = multiplane_roi(axial, sagittal, coronal)
    assert roi.box == BOX_CASE_ANSWER
    assert "its slices are not sagittal" in caplog.text


@pytest.mark.parametrize("code", ["LPI", "RAS", "LAS"])
def test_roi_of_a_reoriented_axial_grid_holds_the_same_voxels(code: str) -> None:
    """A left-handed axial grid (one axis flipped: LPI, LAS) or a rotated one (RAS) gives
    the same ROI: the same region, and a crop holding the same voxels at the same places."""
    from medseg.geometry.orientation import reorient
    from tests.conftest import assert_same_world_values

    axial, sagittal, coronal = _tilted_case(20.0)
    moved = reorient(axial, code)
    assert (np.linalg.det(moved.geometry.direction_itk) < 0) == (code != "RAS")
    roi = multiplane_roi(axial, sagittal, coronal)
    other = multiplane_roi(moved, sagittal, coronal)
    assert other.region.volume_mm3 == pytest.approx(roi.region.volume_mm3, rel=1e-9)
    assert roi.cropped is not None and other.cropped is not None
    assert other.cropped.array.size == roi.cropped.array.size
    assert_same_world_values(roi.cropped, other.cropped)
    back = uncrop(other.cropped, moved.geometry, other.box)
    np.testing.assert_array_equal(back.array[other.box.slices], moved.array[other.box.slices])
