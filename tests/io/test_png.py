from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.errors import ConfigError, InputError, OutputExistsError
from medseg.io import read_volume, write_volume
from medseg.io.png import read_image_stack, write_image_stack
from medseg.volume import Volume


def ramp(dtype: type, shape: tuple[int, int, int] = (3, 5, 7), scale: int = 1) -> Volume:
    arr: np.ndarray = (np.arange(np.prod(shape)).reshape(shape) * scale).astype(dtype)
    return Volume(arr, (2.5, 0.8, 0.6), (10.0, -4.0, 7.0))


@pytest.mark.parametrize(("dtype", "scale"), [(np.uint8, 1), (np.uint16, 600)])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_folder_round_trip_8_and_16_bit(tmp_path: Path, dtype: type, scale: int, fmt: str) -> None:
    vol = ramp(dtype, scale=scale)
    out = write_image_stack(vol, tmp_path / "slices", fmt=fmt)
    names = sorted(p.name for p in out.iterdir())
    ext = ".png" if fmt == "png" else ".tif"
    assert names == [f"slice_000{k}{ext}" for k in range(3)]
    back = read_image_stack(out, spacing=vol.spacing)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing == vol.spacing
    # no geometry in PNG/TIFF: identity direction, zero origin
    np.testing.assert_array_equal(back.direction, Volume(np.zeros((1, 1, 1))).direction)
    assert back.origin == (0.0, 0.0, 0.0)


def test_slices_are_ordered_naturally(tmp_path: Path) -> None:
    for k in (0, 1, 2, 10, 11):
        Image.fromarray(np.full((4, 6), k, np.uint8)).save(tmp_path / f"img_{k}.png")
    vol = read_image_stack(tmp_path, spacing=(1, 1, 1))
    assert vol.array[:, 0, 0].tolist() == [0, 1, 2, 10, 11]  # not 0, 1, 10, 11, 2


def test_16_bit_png_written_by_pillow_is_read_as_uint16(tmp_path: Path) -> None:
    arr = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    vol = read_image_stack(tmp_path / "a.png")
    assert vol.dtype == np.uint16 and vol.shape == (1, 2, 2)
    np.testing.assert_array_equal(vol.array[0], arr)


def test_single_image_defaults_to_1mm_and_says_so(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "a.png")
    vol = read_volume(tmp_path / "a.png")
    assert vol.spacing == (1.0, 1.0, 1.0)
    assert vol.meta["spacing_assumed"] is True
    vol2 = read_image_stack(tmp_path / "a.png", spacing=(3, 0.5, 0.25))
    assert vol2.spacing == (3.0, 0.5, 0.25) and "spacing_assumed" not in vol2.meta


def test_stack_needs_spacing(tmp_path: Path) -> None:
    write_image_stack(ramp(np.uint8), tmp_path / "s")
    with pytest.raises(InputError, match=r"carries no voxel spacing.*--spacing Z Y X"):
        read_image_stack(tmp_path / "s")
    with pytest.raises(ConfigError, match="three positive numbers"):
        read_image_stack(tmp_path / "s", spacing=(1, 0, 1))
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((3, 4, 5), np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match="multi-page image of 3 slices carries no voxel spacing"):
        read_image_stack(tmp_path / "m.tif")


def test_multipage_tiff_keeps_dtype(tmp_path: Path) -> None:
    vol = ramp(np.int16, scale=-3)
    write_volume(vol, tmp_path / "v.tif")
    back = read_volume(tmp_path / "v.tif", spacing=vol.spacing)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)


def test_png_refuses_values_it_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"PNG cannot hold these values.*int16 values from -104 to 0"):
        write_image_stack(ramp(np.int16, scale=-1), tmp_path / "s")
    with pytest.raises(InputError, match="a PNG file holds one slice"):
        write_image_stack(ramp(np.uint8), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []
    # float values that are whole numbers in range are fine
    one = Volume(np.array([[[0.0, 255.0]]], dtype=np.float32))
    write_image_stack(one, tmp_path / "a.png")
    assert read_image_stack(tmp_path / "a.png").array.tolist() == [[[0, 255]]]


def test_grey_rgb_is_accepted_and_colour_refused(tmp_path: Path) -> None:
    grey = np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4)[..., None], 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image_stack(tmp_path / "grey.png").array[0], grey[..., 0])
    colour = grey.copy()
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match=r"colour\.png: is a colour image"):
        read_image_stack(tmp_path / "colour.png")


def test_mismatched_slice_is_named(tmp_path: Path) -> None:
    write_image_stack(ramp(np.uint8), tmp_path / "s")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "s" / "slice_0003.png")
    with pytest.raises(InputError, match=r"slice_0003.png: differs from the first slice.*found 9x9 uint8"):
        read_image_stack(tmp_path / "s", spacing=(1, 1, 1))


def test_truncated_and_fake_images(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"a\.png: cannot be read"):
        read_image_stack(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("hello")
    with pytest.raises(InputError, match=r"b\.png: is not a readable image"):
        read_image_stack(tmp_path / "b.png")
    (tmp_path / "c.tif").write_text("hello")
    with pytest.raises(InputError, match=r"c\.tif: cannot be read as TIFF"):
        read_image_stack(tmp_path / "c.tif")
    with pytest.raises(InputError, match="does not exist"):
        read_image_stack(tmp_path / "none.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no PNG/TIFF images"):
        read_image_stack(tmp_path / "empty", spacing=(1, 1, 1))


def test_existing_output_is_kept(tmp_path: Path) -> None:
    write_image_stack(ramp(np.uint8), tmp_path / "s")
    with pytest.raises(OutputExistsError):
        write_image_stack(ramp(np.uint8, scale=2), tmp_path / "s")
    np.testing.assert_array_equal(read_image_stack(tmp_path / "s", (1, 1, 1)).array, ramp(np.uint8).array)
    write_image_stack(ramp(np.uint8, scale=2), tmp_path / "s", overwrite=True)
    np.testing.assert_array_equal(
        read_image_stack(tmp_path / "s", (1, 1, 1)).array, ramp(np.uint8, scale=2).array
    )
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_16_bit_colour_png_keeps_its_16_bits(tmp_path: Path) -> None:
    """Pillow reads 48-bit RGB PNG as 8-bit; a grey image stored as RGB must keep 16 bits."""
    import SimpleITK as sitk

    grey = np.arange(8 * 10, dtype=np.uint16).reshape(8, 10) * 700  # up to 55,300: needs 16 bits
    rgb = np.repeat(grey[..., None], 3, axis=2)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb16.png"))
    vol = read_volume(tmp_path / "rgb16.png")
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array[0], grey)


def test_write_png_keeps_16_bit_values_and_refuses_what_png_cannot_hold(tmp_path: Path) -> None:
    from medseg.io.png import read_image_file, write_png

    grey = (np.arange(6 * 7, dtype=np.uint16).reshape(6, 7) * 1500).astype(np.uint16)  # rows != columns
    np.testing.assert_array_equal(read_image_file(write_png(grey, tmp_path / "s.png")), grey)
    with pytest.raises(OutputExistsError):
        write_png(grey, tmp_path / "s.png")
    with pytest.raises(InputError, match="a PNG slice is a 2D array"):
        write_png(grey[None], tmp_path / "t.png")
    with pytest.raises(InputError, match="PNG cannot hold these values"):
        write_png(grey.astype(np.int32) - 1, tmp_path / "u.png")


def test_natural_key_orders_numbers_by_value_and_breaks_ties_by_name() -> None:
    from medseg.io.png import natural_key

    names = ["case10", "Case2", "case2", "case1", "a", "10", "2"]
    assert sorted(names, key=natural_key) == ["2", "10", "a", "case1", "Case2", "case2", "case10"]
