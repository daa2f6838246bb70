"""Format round trips on awkward grids (oblique, left-handed, 0.6 x 0.45 x 3.3 mm, odd sizes,
non-zero origins), checked against the headers the formats define and against SimpleITK,
nibabel and pydicom reading the same files; and on the real files of ../shared/data."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.io import read_volume, write_volume
from medseg.io.dicom import load_series, read_dicom_series, write_dicom_series
from medseg.volume import Volume
from tests.conftest import (
    AWKWARD_GRIDS,
    assert_same_world_values,
    give_nifti_a_second_transform,
    make_awkward_volume,
)

GRIDS = sorted(AWKWARD_GRIDS)
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
# NIfTI stores its affine (and the quaternion) in float32
FLOAT32_HEADER = {"spacing_atol": 1e-5, "origin_atol": 1e-4, "direction_atol": 1e-6}
# NRRD and MHA write doubles as text
DOUBLE_HEADER = {"spacing_atol": 1e-12, "origin_atol": 1e-9, "direction_atol": 1e-12}


def _corner_indices(vol: Volume) -> np.ndarray:
    """A few (z, y, x) indices: the first voxel, the far corner and two in between."""
    z, y, x = (s - 1 for s in vol.shape)
    return np.array([[0, 0, 0], [z, y, x], [z, 0, x // 2], [1, y, 0]])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_itk_formats_keep_every_voxel_where_simpleitk_finds_it(
    tmp_path: Path, grid: str, suffix: str, dtype: type
) -> None:
    vol = make_awkward_volume(grid, dtype=dtype)
    path = write_volume(vol, tmp_path / f"v{suffix}")
    back = read_volume(path)
    assert back.dtype == vol.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    back.geometry.require_same(vol.geometry, **(FLOAT32_HEADER if suffix == ".nii.gz" else DOUBLE_HEADER))
    # SimpleITK, reading the file on its own, puts voxel (i, j, k) = (x, y, z) where medseg does
    ref = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), vol.array)
    for zyx in _corner_indices(vol):
        itk_point = ref.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]])
        np.testing.assert_allclose(itk_point, vol.index_to_world(zyx), atol=1e-4)
    assert np.sign(np.linalg.det(np.reshape(ref.GetDirection(), (3, 3)))) == np.sign(
        np.linalg.det(vol.geometry.direction_itk)
    )


@pytest.mark.parametrize("grid", GRIDS)
def test_nifti_qform_and_sform_both_hold_the_grid(tmp_path: Path, grid: str) -> None:
    """Readers that use either the quaternion (qfac -1 for a left-handed grid) or the sform
    must find every voxel in the same place (NIfTI is RAS, medseg LPS)."""
    vol = make_awkward_volume(grid)
    img = nib.load(write_volume(vol, tmp_path / "v.nii.gz"))
    header = img.header
    assert int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0
    ijk = _corner_indices(vol)[:, ::-1]
    expected_ras = vol.index_to_world(ijk[:, ::-1]) * LPS_TO_RAS
    for affine in (header.get_qform(), header.get_sform()):
        np.testing.assert_allclose(nib.affines.apply_affine(affine, ijk), expected_ras, atol=1e-4)
    left_handed = np.linalg.det(vol.geometry.direction_itk) < 0
    # RAS flips two axes, so handedness is kept: a left-handed grid needs qfac = -1
    assert float(header["pixdim"][0]) == (-1.0 if left_handed else 1.0)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol.array)


def _nrrd_header(path: Path) -> dict[str, str]:
    with path.open("rb") as fh:
        head = fh.read(4096).split(b"\n\n", 1)[0].decode("ascii")
    return dict(
        line.split(": ", 1) for line in head.splitlines()[1:] if ": " in line and not line.startswith("#")
    )


def _nrrd_vectors(text: str) -> np.ndarray:
    return np.array([[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)", text)])


@pytest.mark.parametrize("grid", GRIDS)
def test_nrrd_space_directions_and_origin_hold_the_grid(tmp_path: Path, grid: str) -> None:
    vol = make_awkward_volume(grid)
    header = _nrrd_header(write_volume(vol, tmp_path / "v.nrrd"))
    assert header["space"] == "left-posterior-superior"
    assert [int(v) for v in header["sizes"].split()] == list(vol.shape[::-1])
    # one vector per file axis (x, y, z): that axis's world step in mm
    directions = _nrrd_vectors(header["space directions"])
    np.testing.assert_allclose(directions, vol.geometry.matrix[:, ::-1].T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_nrrd_vectors(header["space origin"])[0], vol.origin, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid", GRIDS)
def test_dicom_series_keeps_every_voxel_in_place(tmp_path: Path, grid: str) -> None:
    """A left-handed grid comes back with its slices reversed (DICOM stacks slices along
    row x column), but every voxel value stays at its world position."""
    vol = make_awkward_volume(grid, dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")
    back = read_dicom_series(tmp_path / "s")
    assert back.dtype.kind in "iu"  # stored as 16 bits (non-negative int16 as uint16): values exact
    assert_same_world_values(vol, back, atol=1e-5)
    left_handed = np.linalg.det(vol.geometry.direction_itk) < 0
    assert np.array_equal(back.array, vol.array[::-1] if left_handed else vol.array)
    # the tags themselves: row and column cosines of each file and its first pixel's position
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        np.testing.assert_allclose(iop[:3], vol.direction[:, 2], atol=1e-9)  # along a row: x
        np.testing.assert_allclose(iop[3:], vol.direction[:, 1], atol=1e-9)  # down a column: y
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], vol.index_to_world((k, 0, 0)), atol=1e-6
        )
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], vol.spacing[1:], atol=1e-9)


# ------------------------------------------------------------------ real files
PYRADIOMICS = ["brain1", "brain2", "breast1"]


def _pyradiomics_pair(shared_data: Path, name: str) -> tuple[Path, Path]:
    folder = shared_data / "pyradiomics"
    image, label = folder / f"{name}_image.nrrd", folder / f"{name}_label.nrrd"
    if not image.is_file() or not label.is_file():
        pytest.skip(f"pyradiomics NRRD pair '{name}' not found in {folder}")
    return image, label


@pytest.mark.parametrize("name", PYRADIOMICS)
def test_pyradiomics_nrrd_pairs_survive_every_format(shared_data: Path, tmp_path: Path, name: str) -> None:
    image_path, label_path = _pyradiomics_pair(shared_data, name)
    image, label = read_volume(image_path), read_volume(label_path)
    label.geometry.require_same(image.geometry, "image and label grids", **DOUBLE_HEADER)
    original = _nrrd_header(label_path)
    for suffix in (".nrrd", ".nii.gz", ".mha"):
        out = write_volume(label, tmp_path / f"label{suffix}")
        back = read_volume(out)
        assert back.dtype == label.dtype  # int32 / int16 labels stay integer
        np.testing.assert_array_equal(back.array, label.array)
        back.geometry.require_same(
            label.geometry, **(FLOAT32_HEADER if suffix == ".nii.gz" else DOUBLE_HEADER)
        )
        if suffix == ".nrrd":
            # the header's own numbers come back (LPS in, LPS out)
            written = _nrrd_header(out)
            assert written["space"] == original["space"] == "left-posterior-superior"
            assert written["sizes"] == original["sizes"]
            np.testing.assert_allclose(
                _nrrd_vectors(written["space directions"]),
                _nrrd_vectors(original["space directions"]),
                rtol=1e-15,
                atol=0,
            )
            np.testing.assert_allclose(
                _nrrd_vectors(written["space origin"]),
                _nrrd_vectors(original["space origin"]),
                rtol=1e-15,
                atol=0,
            )


def test_prostate_phantom_nrrd_with_flipped_axes(shared_data: Path, tmp_path: Path) -> None:
    """Negative space directions (x and y run right-to-left and anterior): the voxels keep their place."""
    path = shared_data / "pyradiomics" / "prostate_phantom_subvolume-label.nrrd"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    label = read_volume(path)
    ref = sitk.ReadImage(str(path))
    for zyx in _corner_indices(label):
        np.testing.assert_allclose(
            ref.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]),
            label.index_to_world(zyx),
            atol=1e-9,
        )
    back = read_volume(write_volume(label, tmp_path / "l.nii.gz"))
    np.testing.assert_array_equal(back.array, label.array)
    back.geometry.require_same(label.geometry, **FLOAT32_HEADER)


TILTED_T2 = "ProstateX-0218/02-18-2011/5.000000-t2tsetra320p2-09906"  # axial, tilted 23 degrees


def test_tilted_prostatex_series_keeps_its_orientation_and_positions_through_dicom(
    shared_data: Path, tmp_path: Path
) -> None:
    """ImageOrientationPatient, ImagePositionPatient and PixelSpacing of every slice come back
    (to the precision of a DICOM decimal string) through DICOM -> NIfTI -> DICOM."""
    folder = shared_data / "prostatex_dicom" / TILTED_T2
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    original = load_series(folder)
    assert original.volume.geometry.obliquity > 20
    via_nifti = read_volume(write_volume(original.volume, tmp_path / "t2.nii.gz"))
    write_dicom_series(via_nifti, tmp_path / "dicom", reference=original)
    back = load_series(tmp_path / "dicom")
    assert len(back.datasets) == len(original.datasets)
    np.testing.assert_array_equal(back.volume.array, original.volume.array)
    for before, after in zip(original.datasets, back.datasets, strict=True):
        for tag, atol in (
            ("ImageOrientationPatient", 1e-6),
            ("ImagePositionPatient", 1e-3),
            ("PixelSpacing", 1e-6),
        ):
            np.testing.assert_allclose(
                [float(v) for v in after[tag].value],
                [float(v) for v in before[tag].value],
                atol=atol,
                err_msg=tag,
            )


@pytest.mark.parametrize(
    "relative", ["chaos_mr_t2spir/label_1.nii.gz", "totalseg_examples/example_seg.nii.gz"]
)
def test_real_nifti_affine_survives_a_round_trip(shared_data: Path, tmp_path: Path, relative: str) -> None:
    """The affine nibabel reads (sform, or qform where there is no sform) is the one written back."""
    path = shared_data / relative
    if not path.is_file():
        pytest.skip(f"{path} not found")
    before = nib.load(path)
    vol = read_volume(path)
    assert vol.dtype == before.get_data_dtype()  # CHAOS labels are float64 in the file and stay so
    out = write_volume(vol, tmp_path / "out.nii.gz")
    after = nib.load(out)
    np.testing.assert_allclose(after.affine, before.affine, atol=1e-5)
    np.testing.assert_allclose(after.header.get_qform(), before.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(after.dataobj), np.asarray(before.dataobj))


@pytest.mark.parametrize("grid", GRIDS)
def test_convert_through_every_format_keeps_every_voxel_in_place(tmp_path: Path, grid: str) -> None:
    """NIfTI -> NRRD -> MHA -> DICOM series -> NIfTI with medseg's ``convert``; then PNG, which
    keeps the voxel values and spacing but, having no position, none of the rest."""
    from medseg.io import convert

    vol = make_awkward_volume(grid, dtype=np.int16)
    chain = [
        tmp_path / "a.nii.gz",
        tmp_path / "b.nrrd",
        tmp_path / "c.mha",
        tmp_path / "d",
        tmp_path / "e.nii.gz",
    ]
    write_volume(vol, chain[0])
    for src, dst in itertools.pairwise(chain):
        convert(src, dst, to="dicom" if dst.suffix == "" else None)
        assert_same_world_values(vol, read_volume(dst), atol=1e-4)
    end = read_volume(chain[-1])
    np.testing.assert_array_equal(np.sort(end.array, axis=None), np.sort(vol.array, axis=None))
    # PNG: values and the slice order of the file come back; the grid is the identity one
    convert(chain[-1], tmp_path / "png", to="png")
    png = read_volume(tmp_path / "png", spacing=end.spacing)
    np.testing.assert_array_equal(png.array, end.array)
    assert png.spacing == pytest.approx(end.spacing)


def _nifti_with_two_transforms(path: Path, dtype: type, sform_code: int, shear: float = 0.0) -> Path:
    """A NIfTI whose sform lies 5 mm (along x) from its qform (code 1, scanner)."""
    write_volume(make_awkward_volume("oblique-left-handed", dtype=dtype), path)
    give_nifti_a_second_transform(path, sform_code=sform_code, shear=shear)
    return path


@pytest.mark.parametrize("dtype", [np.int16, np.float32])  # ITK's reader / nibabel's array path
@pytest.mark.parametrize(
    ("sform_code", "shear", "used"), [(2, 0.0, "qform"), (4, 0.1, "qform"), (1, 0.0, "sform")]
)
def test_a_nifti_whose_qform_and_sform_disagree_is_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, dtype: type, sform_code: int, shear: float, used: str
) -> None:
    """ITK (so medseg) reads the sform only when its code is 1 (scanner); nibabel whenever it is
    set. The user must hear which one medseg read, since its outputs carry it in both fields."""
    from medseg.io import read_channels

    path = _nifti_with_two_transforms(tmp_path / "two.nii.gz", dtype, sform_code, shear)
    header = nib.load(path).header
    with caplog.at_level("WARNING", logger="medseg.io.itk"):
        vol = read_volume(path)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "qform (code 1, scanner)" in message and f"sform (code {sform_code}," in message
    assert f"medseg reads the {used}" in message
    assert "5 mm apart" in message or shear
    chosen = header.get_qform() if used == "qform" else header.get_sform()
    ijk = _corner_indices(vol)[:, ::-1]
    np.testing.assert_allclose(
        vol.index_to_world(ijk[:, ::-1]) * LPS_TO_RAS, nib.affines.apply_affine(chosen, ijk), atol=1e-3
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.io.itk"):
        read_channels(path)
    assert len(caplog.records) == 1


def test_a_nifti_written_by_medseg_reads_without_a_transform_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_volume(make_awkward_volume("oblique-44deg-left-handed"), tmp_path / "v.nii.gz")
    with caplog.at_level("WARNING", logger="medseg.io.itk"):
        read_volume(path)
    assert not caplog.records


@pytest.mark.parametrize(("qform_code", "sform_code"), [(1, 0), (0, 2), (0, 1), (2, 2)])
def test_a_nifti_with_one_transform_or_two_that_agree_is_read_as_nibabel_reads_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, qform_code: int, sform_code: int
) -> None:
    vol = make_awkward_volume("oblique-44deg-left-handed")
    path = write_volume(vol, tmp_path / "v.nii.gz")
    img = nib.load(path)
    affine = img.header.get_sform()
    out = nib.Nifti1Image(np.asarray(img.dataobj), None, img.header)
    out.set_qform(affine, code=qform_code)
    out.set_sform(affine, code=sform_code)
    nib.save(out, path)
    with caplog.at_level("WARNING", logger="medseg.io.itk"):
        back = read_volume(path)
    assert not caplog.records
    ijk = _corner_indices(vol)[:, ::-1]
    np.testing.assert_allclose(
        back.index_to_world(ijk[:, ::-1]) * LPS_TO_RAS,
        nib.affines.apply_affine(nib.load(path).affine, ijk),
        atol=1e-4,
    )
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize(("sform_code", "shear"), [(2, 0.0), (4, 0.1), (1, 0.0)])
def test_a_nifti_output_on_the_grid_of_a_two_transform_input_carries_both(
    tmp_path: Path, suffix: str, sform_code: int, shear: float
) -> None:
    """Where a NIfTI's qform and sform disagree, an output on its grid gets both of them (and
    their codes), so a viewer reading either transform shows the output over the input; the
    voxels are written as usual and medseg reads the output onto the input's grid."""
    src = _nifti_with_two_transforms(tmp_path / "two.nii.gz", np.int16, sform_code, shear)
    before = nib.load(src)
    vol = read_volume(src)
    label = vol.with_array((vol.array > np.median(vol.array)).astype(np.uint8))
    out = write_volume(label, tmp_path / f"label{suffix}")
    after = nib.load(out)
    for field in ("qform_code", "sform_code"):
        assert int(after.header[field]) == int(before.header[field])
    np.testing.assert_allclose(after.header.get_qform(), before.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(after.header.get_sform(), before.header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(after.affine, before.affine, atol=1e-5)  # what nibabel / FSL use
    assert after.shape == before.shape
    # the voxels in the file's own order: (i, j, k) of the output is (i, j, k) of the input
    np.testing.assert_array_equal(np.asarray(after.dataobj), np.transpose(label.array, (2, 1, 0)))
    back = read_volume(out)
    back.geometry.require_same(vol.geometry, spacing_atol=1e-5, origin_atol=1e-4, direction_atol=1e-6)
    np.testing.assert_array_equal(back.array, label.array)


def test_an_output_off_the_grid_of_a_two_transform_input_carries_medsegs_transform(tmp_path: Path) -> None:
    """Once cropped (another grid), or written as NRRD, an output holds the transform medseg read."""
    from medseg.geometry.crop import CropBox, crop

    src = _nifti_with_two_transforms(tmp_path / "two.nii.gz", np.float32, 2)
    vol = read_volume(src)
    cropped = crop(vol, CropBox((1, 2, 0), (5, 9, 6)))
    out = nib.load(write_volume(cropped, tmp_path / "crop.nii.gz"))
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1
    np.testing.assert_allclose(out.header.get_qform(), out.header.get_sform(), atol=1e-4)
    read_volume(tmp_path / "crop.nii.gz").geometry.require_same(
        cropped.geometry, spacing_atol=1e-5, origin_atol=1e-4, direction_atol=1e-6
    )
    nrrd = read_volume(write_volume(vol, tmp_path / "v.nrrd"))
    nrrd.geometry.require_same(vol.geometry, spacing_atol=1e-9, origin_atol=1e-9, direction_atol=1e-9)


def test_a_nifti_medseg_wrote_on_a_grid_rotated_near_180_degrees_reads_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The demo's oblique prostate phantom (128 x 128 x 20 of 0.5 x 0.5 x 3 mm, rotated ~180
    degrees in RAS) was read with a qform/sform warning: the float32 quaternion of a near-half-turn
    is that coarse (0.05 mm at a corner), which is no disagreement between two transforms."""
    import nibabel as nib

    # the phantom's RAS rotation, as its NIfTI quaternion (b, c, d) says
    quat = np.array([0.0016236145, -0.16823418, 0.98574567])
    a = np.sqrt(max(0.0, 1.0 - float(quat @ quat)))
    from scipy.spatial.transform import Rotation

    ras = Rotation.from_quat([*quat, a]).as_matrix()  # scipy: (x, y, z, w)
    direction_itk = np.diag([-1.0, -1.0, 1.0]) @ ras  # RAS -> LPS, columns i, j, k
    vol = Volume(
        np.zeros((20, 128, 128), dtype=np.int16),
        (3.0, 0.5, 0.5),
        (-33.4, -3.44, -80.3),
        direction_itk[:, ::-1],
    )
    path = write_volume(vol, tmp_path / "phantom.nii.gz")
    header = nib.load(path).header
    corners = _corner_indices(vol)[:, ::-1]
    apart = np.linalg.norm(
        nib.affines.apply_affine(header.get_qform(), corners)
        - nib.affines.apply_affine(header.get_sform(), corners),
        axis=1,
    ).max()
    assert apart > 0.01  # the quaternion's own coarseness, beyond the old fixed 0.01 mm
    with caplog.at_level("WARNING", logger="medseg.io.itk"):
        back = read_volume(path)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert "nifti_transforms" not in back.meta
