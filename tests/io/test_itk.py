from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import InputError, OutputExistsError
from medseg.io import read_channels, read_volume, write_volume
from medseg.volume import Volume
from tests.conftest import make_oblique_volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_write_read_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    vol = make_oblique_volume(dtype=dtype)
    out = write_volume(vol, tmp_path / f"vol{suffix}")
    back = read_volume(out)
    assert back.dtype == vol.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    # NIfTI stores its affine in float32: allow float32 round-off only
    vol.geometry.require_same(back.geometry, spacing_atol=1e-5, origin_atol=1e-4, direction_atol=1e-6)


def test_nifti_world_coordinates_agree_with_nibabel(tmp_path: Path) -> None:
    """NIfTI is RAS; medseg is LPS. A voxel must land on the same physical point."""
    vol = make_oblique_volume()
    path = write_volume(vol, tmp_path / "v.nii.gz")
    img = nib.load(path)
    ijk = np.array([5.0, 7.0, 3.0])  # nibabel index order is (x, y, z) = (i, j, k)
    ras = img.affine @ np.r_[ijk, 1.0]
    lps = vol.index_to_world(ijk[::-1])
    np.testing.assert_allclose(ras[:3] * np.array([-1, -1, 1]), lps, atol=1e-3)
    # and the array agrees once transposed to (z, y, x)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol.array)


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    vol = make_oblique_volume()
    out = write_volume(vol, tmp_path / "v.nrrd")
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_volume(vol.with_array(vol.array * 2), out)
    assert out.read_bytes() == before
    write_volume(vol.with_array(vol.array * 2), out, overwrite=True)
    np.testing.assert_array_equal(read_volume(out).array, vol.array * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["v.nrrd"]  # no temp files left


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


def test_truncated_nifti_names_the_file(tmp_path: Path) -> None:
    path = write_volume(make_oblique_volume(), tmp_path / "v.nii")
    data = path.read_bytes()
    bad = tmp_path / "broken.nii"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"broken\.nii"):
        read_volume(bad)


def test_non_medical_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt.*not a recognised medical image"):
        read_volume(bad)


def test_4d_image_is_refused_by_read_volume_and_split_by_read_channels(tmp_path: Path) -> None:
    arr = np.stack([np.full((3, 4, 5), c, np.float32) for c in range(2)])  # (c, z, y, x)
    img = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr])
    path = tmp_path / "two.nii.gz"
    sitk.WriteImage(img, str(path))
    with pytest.raises(InputError, match="4D"):
        read_volume(path)
    chans = read_channels(path)
    assert [c.shape for c in chans] == [(3, 4, 5), (3, 4, 5)]
    assert [float(c.array.mean()) for c in chans] == [0.0, 1.0]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_truncated_files_of_every_format_are_refused(tmp_path: Path, suffix: str) -> None:
    path = write_volume(make_oblique_volume(), tmp_path / f"v{suffix}")
    data = path.read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.(nii|mha|nrrd).*(truncated|corrupt|cannot be read)"):
        read_volume(bad)


def test_outputs_get_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from medseg.io.atomic import atomic_dir

    mask = os.umask(0o022)
    try:
        out = write_volume(make_oblique_volume(), tmp_path / "v.nii.gz")
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "a.txt").write_text("x")
        assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    finally:
        os.umask(mask)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_nan_and_inf_survive_reading(tmp_path: Path, suffix: str) -> None:
    """ITK's NIfTI reader turns NaN into 0; medseg must not hide a broken prediction."""
    vol = make_oblique_volume()
    arr = vol.array.copy()
    arr[3, 4, 5] = np.nan
    arr[0, 0, 0] = np.inf
    path = write_volume(vol.with_array(arr), tmp_path / f"nan{suffix}")
    back = read_volume(path)
    assert np.isnan(back.array[3, 4, 5]) and np.isinf(back.array[0, 0, 0])
    np.testing.assert_array_equal(np.nan_to_num(back.array), np.nan_to_num(arr))
    vol.geometry.require_same(back.geometry, spacing_atol=1e-5, origin_atol=1e-4, direction_atol=1e-6)
    assert np.isnan(read_channels(path)[0].array[3, 4, 5])


def test_4d_float_channels_keep_values_and_geometry(tmp_path: Path) -> None:
    vols = [make_oblique_volume(seed=s) for s in (1, 2)]
    images = [sitk.GetImageFromArray(v.array) for v in vols]
    img4 = sitk.JoinSeries(images)
    path = tmp_path / "two.nii.gz"
    sitk.WriteImage(img4, str(path))
    ref = [sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[c] for c in range(2)]
    chans = read_channels(path)
    for c in range(2):
        np.testing.assert_array_equal(chans[c].array, ref[c])


def test_output_below_a_file_is_an_input_error(tmp_path: Path) -> None:
    from medseg.io.atomic import atomic_dir

    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(
        InputError, match=r"notes\.txt/sub/v\.nii\.gz: cannot create the folder for this output"
    ):
        write_volume(make_oblique_volume(), tmp_path / "notes.txt" / "sub" / "v.nii.gz")
    with (
        pytest.raises(InputError, match="cannot create the folder"),
        atomic_dir(tmp_path / "notes.txt" / "sub" / "out"),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_read_geometry_reads_the_header_grid_only(tmp_path: Path) -> None:
    from medseg.io.itk import read_geometry

    vol = make_oblique_volume()
    path = write_volume(vol, tmp_path / "v.nii.gz")
    vol.geometry.require_same(read_geometry(path), spacing_atol=1e-5, origin_atol=1e-4, direction_atol=1e-6)
    flat = sitk.GetImageFromArray(np.zeros((5, 7), np.uint8))
    flat.SetSpacing((0.5, 0.25))  # x, y
    flat.SetOrigin((3.0, -2.0))
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    g = read_geometry(tmp_path / "flat.nrrd")
    assert g.shape == (1, 5, 7) and g.spacing == (1.0, 0.25, 0.5) and g.origin == (3.0, -2.0, 0.0)
    assert g.orientation == "LPS"
    four = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))] * 2)
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match=r"four\.nii\.gz: is not a 3D image"):
        read_geometry(tmp_path / "four.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"junk\.nii\.gz: cannot be read"):
        read_geometry(tmp_path / "junk.nii.gz")


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_uncompressed_nifti_fast_path_equals_itk(tmp_path: Path, dtype: type) -> None:
    vol = make_oblique_volume(dtype=dtype)
    path = write_volume(vol, tmp_path / "v.nii")
    back = read_volume(path)
    ref = sitk.ReadImage(str(path))
    assert back.dtype == sitk.GetArrayFromImage(ref).dtype
    np.testing.assert_array_equal(back.array, sitk.GetArrayFromImage(ref))
    back.array[0, 0, 0] = 1  # an ordinary, writable in-memory array (not a file map)


def _with_pixdim(src: Path, dst: Path, axis: int, value: float) -> Path:
    """A copy of a NIfTI whose pixdim[axis] is ``value`` (raw header bytes; nibabel would fix it)."""
    import gzip
    import struct

    raw = bytearray(gzip.decompress(src.read_bytes()))
    pixdim = list(struct.unpack_from("<8f", raw, 76))  # NIfTI-1 pixdim: offset 76, little endian
    pixdim[axis] = value
    struct.pack_into("<8f", raw, 76, *pixdim)
    dst.write_bytes(gzip.compress(bytes(raw)) if dst.name.endswith(".gz") else bytes(raw))
    return dst


@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf")])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_zero_or_nan_voxel_size_is_refused(tmp_path: Path, value: float, suffix: str) -> None:
    """ITK (and nibabel) read such a pixdim as 1 mm without a word: a silently wrong grid."""
    from medseg.io.itk import read_geometry

    good = write_volume(make_oblique_volume(), tmp_path / "good.nii.gz")
    bad = _with_pixdim(good, tmp_path / f"bad{suffix}", 3, value)
    before = bad.read_bytes()
    for reader in (read_volume, read_channels, read_geometry):
        with pytest.raises(
            InputError, match=rf"bad{suffix}: has an invalid voxel size.*found pixdim\[1\.\.3\] = "
        ):
            reader(bad)
    assert bad.read_bytes() == before
    assert read_volume(_with_pixdim(good, tmp_path / f"fine{suffix}", 3, 2.5)).spacing[0] == pytest.approx(
        2.5
    )
    if value != 0.0:
        return
    # a single slice's slice axis has no spacing to get wrong: some tools write pixdim 0 there
    one = make_oblique_volume()
    one = Volume(np.ascontiguousarray(one.array[:1]), one.spacing, one.origin, one.direction)
    single = _with_pixdim(write_volume(one, tmp_path / "one.nii.gz"), tmp_path / f"one0{suffix}", 3, value)
    assert read_volume(single).shape[0] == 1


def test_a_negative_voxel_size_is_an_error_naming_the_file(tmp_path: Path) -> None:
    good = write_volume(make_oblique_volume(), tmp_path / "good.nii.gz")
    bad = _with_pixdim(good, tmp_path / "negative.nii.gz", 3, -2.0)
    with pytest.raises(
        InputError, match=r"negative\.nii\.gz: has an invalid geometry.*spacing must be positive"
    ):
        read_volume(bad)
