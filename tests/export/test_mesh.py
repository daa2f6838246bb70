"""Meshes: closed surfaces in world mm, volume faithful, files by suffix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from medseg.errors import InputError, OutputExistsError
from medseg.export.mesh import MeshOptions, label_mesh, label_meshes, write_label_meshes, write_mesh
from medseg.volume import Volume
from tests.conftest import oblique_direction
from tests.export.conftest import ellipsoid_labels

SEMI = (14.0, 11.0, 9.0)  # mm, x y z of the big ellipsoid


def _anisotropic_volume(direction: np.ndarray | None = None) -> tuple[Volume, np.ndarray]:
    """0.5 x 0.5 x 3 mm oblique grid, non-zero origin; a big and a small world-space ellipsoid."""
    grid = Volume(
        np.zeros((14, 80, 84), np.uint8),
        (3.0, 0.5, 0.5),
        (-30.0, 12.0, 95.0),
        oblique_direction() if direction is None else direction,
    )
    centre = grid.index_to_world((np.asarray(grid.shape) - 1) / 2)
    label = ellipsoid_labels(
        grid, {1: (centre, SEMI), 2: (centre + np.array([8.0, 2.0, 0.0]), (3.0, 3.0, 4.0))}
    )
    return label, centre


def _voxel_volume(label: Volume, value: int) -> float:
    return float((label.array == value).sum()) * label.geometry.voxel_volume_mm3


def _voxel_box(label: Volume, value: int) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box of all corners of the voxels of ``value``."""
    idx = np.argwhere(label.array == value)
    offsets = np.array([[dz, dy, dx] for dz in (-0.5, 0.5) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    corners = label.index_to_world((idx[:, None, :] + offsets[None]).reshape(-1, 3))
    return corners.min(axis=0), corners.max(axis=0)


@pytest.mark.parametrize("smoothing", [0, 10])
def test_raw_marching_cubes_volume_within_3_percent_and_in_place(smoothing: int) -> None:
    label, centre = _anisotropic_volume()
    mesh = label_mesh(label, 1, MeshOptions(smoothing_iterations=smoothing, preserve_volume=False))
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.volume == pytest.approx(_voxel_volume(label, 1), rel=0.03)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * np.prod(SEMI), rel=0.03)  # the true shape
    lo, hi = _voxel_box(label, 1)
    assert np.all(mesh.vertices >= lo - 1e-6) and np.all(mesh.vertices <= hi + 1e-6)
    # The surface is centred where the organ is (an axis or sign slip would move it by cm).
    np.testing.assert_allclose(mesh.center_mass, centre, atol=0.5)


def test_volume_restoring_offset_is_small_and_exact() -> None:
    label, _ = _anisotropic_volume()
    mesh = label_mesh(label, 2)  # small structure: raw marching cubes misses several percent
    raw = label_mesh(label, 2, MeshOptions(preserve_volume=False))
    assert raw.volume < 0.99 * _voxel_volume(label, 2)
    assert mesh.volume == pytest.approx(_voxel_volume(label, 2), rel=1e-3)
    assert 0 < mesh.metadata["volume_offset_mm"] < 0.25 * min(label.spacing)
    assert mesh.is_watertight


def test_reflected_grid_still_gives_outward_normals() -> None:
    direction = oblique_direction().copy()
    direction[:, 0] *= -1  # det(direction) flips sign
    label, centre = _anisotropic_volume(direction)
    mesh = label_mesh(label, 1)
    assert mesh.volume > 0 and mesh.is_watertight
    np.testing.assert_allclose(mesh.center_mass, centre, atol=0.5)


def test_organ_touching_the_border_is_closed() -> None:
    arr = np.zeros((4, 10, 12), np.uint8)
    arr[:, :5, :] = 1  # touches five faces of the grid
    label = Volume(arr, (3.0, 0.5, 0.5), (1.0, 2.0, 3.0), oblique_direction())
    mesh = label_mesh(label, 1)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(_voxel_volume(label, 1), rel=1e-3)


def test_voxels_touching_at_an_edge_or_a_corner_give_a_closed_manifold_surface() -> None:
    """A 3 x 3 x 3 piece of a PROSTATEx prediction (a diagonal of voxels touching at edges and
    corners): scikit-image's default marching cubes (Lewiner) made edges shared by four
    triangles there, and the STL was 'not watertight'."""
    piece = np.array(
        [
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 1], [0, 1, 0]],
            [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
        ],
        dtype=np.uint8,
    )
    for smoothing in (0, 10):
        mesh = label_mesh(
            Volume(piece, spacing=(3.0, 0.5, 0.5)),
            1,
            MeshOptions(smoothing_iterations=smoothing, preserve_volume=False),
        )
        _, uses = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
        assert mesh.is_watertight and int((uses != 2).sum()) == 0


def test_decimation_reduces_faces_and_stays_closed() -> None:
    pytest.importorskip("fast_simplification")
    label, _ = _anisotropic_volume()
    full = label_mesh(label, 1)
    small = label_mesh(label, 1, MeshOptions(max_faces=1500))
    assert len(small.faces) < 0.5 * len(full.faces)
    assert small.is_watertight  # may exceed the budget rather than pinch the surface
    assert small.volume == pytest.approx(full.volume, rel=0.01)
    preview = label_mesh(label, 1, MeshOptions(max_faces=1500, keep_watertight=False))
    assert len(preview.faces) <= 1500


@pytest.mark.parametrize("kind", ["prostate", "ct"])
def test_phantom_meshes_match_voxel_volumes(kind: str) -> None:
    phantom = pytest.importorskip("medseg.data.phantom")
    case = phantom.make_case(kind, 0)
    names = {v: k for k, v in case.label.meta["labels"].items() if v > 0}
    meshes = label_meshes(case.label, names)
    assert sorted(meshes) == [1, 2, 3, 4]
    for value, mesh in meshes.items():
        assert mesh.is_watertight, names[value]
        assert mesh.volume == pytest.approx(_voxel_volume(case.label, value), rel=0.03), names[value]
        raw = label_mesh(case.label, value, MeshOptions(smoothing_iterations=0, preserve_volume=False))
        assert raw.volume == pytest.approx(_voxel_volume(case.label, value), rel=0.04), names[value]
        lo, hi = _voxel_box(case.label, value)
        assert np.all(raw.vertices >= lo) and np.all(raw.vertices <= hi), names[value]
        # Smoothing and the volume offset may move the surface out by a fraction of a voxel.
        slack = 0.2 * max(case.label.spacing)
        assert np.all(mesh.vertices >= lo - slack) and np.all(mesh.vertices <= hi + slack), names[value]


@pytest.mark.parametrize("suffix", [".stl", ".obj", ".ply"])
def test_files_by_suffix_read_back_in_world_mm(tmp_path: Path, suffix: str) -> None:
    label, _ = _anisotropic_volume()
    mesh = label_mesh(label, 1)
    path = write_mesh(mesh, tmp_path / f"organ{suffix}")
    back = trimesh.load(path, force="mesh")
    assert back.is_watertight
    assert back.volume == pytest.approx(mesh.volume, rel=1e-4)
    np.testing.assert_allclose(back.bounds, mesh.bounds, atol=1e-3)


def test_unknown_suffix_and_existing_file(tmp_path: Path) -> None:
    label, _ = _anisotropic_volume()
    mesh = label_mesh(label, 2)
    with pytest.raises(InputError, match="unsupported mesh format"):
        write_mesh(mesh, tmp_path / "organ.vtk")
    target = tmp_path / "organ.stl"
    target.write_text("old")
    with pytest.raises(OutputExistsError):
        write_mesh(mesh, target)
    assert target.read_text() == "old"
    write_mesh(mesh, target, overwrite=True)
    assert trimesh.load(target).is_watertight


def test_write_label_meshes_names_files_and_checks_all_targets_first(tmp_path: Path) -> None:
    label, _ = _anisotropic_volume()
    names = {1: "Right kidney", 2: "tumour/bed"}
    paths = write_label_meshes(label, tmp_path / "meshes", names, suffix=".ply")
    assert {p.name for p in paths.values()} == {"01_right_kidney.ply", "02_tumour_bed.ply"}
    assert all(trimesh.load(p).is_watertight for p in paths.values())
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "02_tumour_bed.stl").write_text("old")
    with pytest.raises(OutputExistsError):
        write_label_meshes(label, tmp_path / "again", names)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["02_tumour_bed.stl"]
    with pytest.raises(InputError, match="unsupported mesh format"):
        write_label_meshes(label, tmp_path / "x", names, suffix=".vtk")


def test_absent_label_has_no_surface() -> None:
    label, _ = _anisotropic_volume()
    with pytest.raises(InputError, match="no voxels"):
        label_mesh(label, 7)


def test_empty_label_writes_no_meshes(tmp_path: Path) -> None:
    label, _ = _anisotropic_volume()
    empty = label.with_array(np.zeros(label.shape, np.uint8))
    assert write_label_meshes(empty, tmp_path / "meshes") == {}
    assert not (tmp_path / "meshes").exists()


def test_region_masks_give_one_mesh_per_region_each_whole(tmp_path: Path) -> None:
    """Nested regions (the small ellipsoid inside the big one): the outer region's mesh is the
    whole big ellipsoid, not the label map's big-minus-small shell."""
    label, _ = _anisotropic_volume()
    outer, inner = label.array > 0, label.array == 2
    masks = {"outer": outer, "inner": inner, "empty": np.zeros_like(outer)}
    written = write_label_meshes(label, tmp_path / "m", suffix=".stl", region_masks=masks)
    assert sorted(p.name for p in written.values()) == ["01_outer.stl", "02_inner.stl"]
    voxel_mm3 = label.geometry.voxel_volume_mm3
    for value, mask in ((1, outer), (2, inner)):
        mesh = trimesh.load(written[value])
        assert mesh.is_watertight
        assert mesh.volume == pytest.approx(float(mask.sum()) * voxel_mm3, rel=0.05)
    shell = label_mesh(label, 1)  # the label map's value 1 alone has the inner one cut out
    assert trimesh.load(written[1]).volume > shell.volume + 0.5 * float(inner.sum()) * voxel_mm3


def test_several_meshes_show_a_progress_bar_one_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    label, _ = _anisotropic_volume()
    write_label_meshes(label, tmp_path / "two", progress=True)
    err = capsys.readouterr().err
    assert "meshes" in err and "2/2" in err  # the bar, on stderr
    write_label_meshes(label, tmp_path / "quiet", progress=False)
    write_label_meshes(label, tmp_path / "one", values=[2], progress=True)  # nothing to follow
    assert capsys.readouterr().err == ""
    masks = {"outer": label.array > 0, "inner": label.array == 2}
    write_label_meshes(label, tmp_path / "regions", region_masks=masks, progress=True)
    err = capsys.readouterr().err
    assert err.count("meshes") == 1 and "2/2" in err  # one bar over the regions, none per region


def test_mesh_warnings_name_the_file_and_a_display_mesh_does_not_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In a cohort the warnings read 'label 3: mesh volume kept at ...' and 'decimation kept
    30160 faces (budget 3000) to keep the surface closed', naming neither the case nor the
    file; the second came from the report's display-only 3D view, which keeps nothing closed."""
    from tests.export.conftest import prostate_zones, synthetic_image

    label = prostate_zones(synthetic_image())
    with caplog.at_level("WARNING", logger="medseg.export.mesh"):
        written = write_label_meshes(
            label, tmp_path / "case" / "meshes", {1: "PZ", 2: "TZ", 3: "DPU", 4: "AFS"}
        )
    kept = [r.getMessage() for r in caplog.records if "mesh volume kept" in r.getMessage()]
    assert kept and all(m.startswith(str(tmp_path / "case" / "meshes")) for m in kept), caplog.text
    assert any(m.startswith(f"{written[4]}: mesh volume kept") for m in kept)  # the thin AFS

    # a decimation that misses its budget: a warning naming the mesh when the surface is kept
    # closed, only a debug line for a display mesh
    monkeypatch.setattr(trimesh.Trimesh, "simplify_quadric_decimation", lambda self, **_: self.copy())
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.export.mesh"):
        label_mesh(label, 1, MeshOptions(max_faces=10, preserve_volume=False), what="liver.stl")
    assert "liver.stl: decimation kept" in caplog.text and "to keep the surface closed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.export.mesh"):
        label_mesh(label, 1, MeshOptions(max_faces=10, keep_watertight=False, preserve_volume=False))
    assert caplog.text == ""
