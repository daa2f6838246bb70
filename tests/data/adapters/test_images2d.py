"""2D image/mask adapter: real ISBI 2012 EM slices, and generated PNG/TIFF folders for every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.data.adapters.images2d import ISBI2012_MASK_MAP, ISBI2012_SPACING, import_images2d
from medseg.data.check import check_dataset
from medseg.data.dataset import list_cases, read_descriptor
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.io.itk import read_itk
from tests.data.adapters import tree_state


def test_real_isbi_membrane_is_foreground(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "isbi2012_em" / "train"
    before = tree_state(src)
    out = import_images2d(
        src / "image", tmp_path / "em", masks=src / "label", spacing=ISBI2012_SPACING, mask_map=ISBI2012_MASK_MAP,
        label_name="membrane", channel_name="EM", cases=["0", "2", "10"], progress=False,
    )  # fmt: skip
    assert tree_state(src) == before
    desc = read_descriptor(out)
    assert desc.labels == {"background": 0, "membrane": 1} and desc.modalities == ["EM"]
    cases = list_cases(out)
    assert sorted(c.case_id for c in cases) == ["0", "10", "2"]
    for case in cases:
        png = np.asarray(Image.open(src / "image" / f"{case.case_id}.png"))
        mask = np.asarray(Image.open(src / "label" / f"{case.case_id}.png"))
        image = read_itk(case.images[0])
        assert image.shape == (1, 512, 512)
        assert image.spacing == pytest.approx((0.004, 0.004, 0.004))
        np.testing.assert_array_equal(image.array[0], png)
        label = read_itk(case.label)  # type: ignore[arg-type]
        np.testing.assert_array_equal(label.array[0], (mask == 0).astype(np.uint8))  # 0 = membrane
        assert 0.1 < label.array.mean() < 0.35  # membranes are the minority (17-27 %)
    assert check_dataset(out, progress=False).ok


def _pairs(root: Path, n: int = 3, rgb: bool = False, suffix: str = "") -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (6, 9, 3) if rgb else (6, 9)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(images / f"pat{i // 2}_s{i}.png")
        mask = np.zeros((6, 9), np.uint8)
        mask[1:4, 2 + i : 6] = 255
        Image.fromarray(mask).save(masks / f"pat{i // 2}_s{i}{suffix}.png")
    return images, masks


def test_rgb_channels_groups_suffix_and_test_images(tmp_path: Path) -> None:
    images, masks = _pairs(tmp_path, rgb=True, suffix="_mask")
    test = tmp_path / "test"
    test.mkdir()
    Image.fromarray(np.zeros((6, 9, 3), np.uint8)).save(test / "x.png")
    out = import_images2d(
        images, tmp_path / "out", masks=masks, spacing=(0.5, 0.25), mask_suffix="_mask", test_images=test,
        group_pattern=r"^(pat\d+)_", case_prefix="em_", progress=False,
    )  # fmt: skip
    desc = read_descriptor(out)
    assert desc.modalities == ["R", "G", "B"]
    assert desc.patients == {
        "em_pat0_s0": "pat0",
        "em_pat0_s1": "pat0",
        "em_pat1_s2": "pat1",
        "em_test_x": "em_test_x",
    }
    rgb = np.asarray(Image.open(images / "pat1_s2.png"))
    for c in range(3):
        ch = read_itk(out / "imagesTr" / f"em_pat1_s2_{c:04d}.nii.gz")
        np.testing.assert_array_equal(ch.array[0], rgb[..., c])
        assert ch.spacing == pytest.approx((0.5, 0.5, 0.25))
    label = read_itk(out / "labelsTr" / "em_pat1_s2.nii.gz").array[0]
    assert label.sum() == 3 * 2 and label[1:4, 4:6].all()
    assert (out / "imagesTs" / "em_test_x_0002.nii.gz").is_file()


def test_sixteen_bit_tiff(tmp_path: Path) -> None:
    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir()
    masks.mkdir()
    image = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000).astype(np.uint16)
    tifffile.imwrite(images / "a.tif", image)
    tifffile.imwrite(masks / "a.tiff", (image > 20000).astype(np.uint8))
    out = import_images2d(images, tmp_path / "out", masks=masks, spacing=(1, 1), progress=False)
    back = read_itk(out / "imagesTr" / "a_0000.nii.gz")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back.array[0], image)
    np.testing.assert_array_equal(read_itk(out / "labelsTr" / "a.nii.gz").array[0], image > 20000)


def _damage(images: Path, masks: Path, how: str) -> tuple[type, str]:
    if how == "missing mask":
        (masks / "pat0_s1.png").unlink()
        return InputError, "masks/pat0_s1.png: mask missing for image .*pat0_s1.png"
    if how == "orphan mask":
        (images / "pat0_s1.png").unlink()
        return InputError, "masks/pat0_s1.png: mask has no image"
    if how == "duplicate":
        Image.fromarray(np.zeros((6, 9), np.uint8)).save(images / "pat0_s1.bmp")
        return InputError, "pat0_s1.(png|bmp): duplicate case id 'pat0_s1'"
    if how == "values":
        Image.fromarray(np.full((6, 9), 128, np.uint8)).save(masks / "pat0_s1.png")
        return (
            InputError,
            r"masks/pat0_s1.png: holds mask values that the mask map does not cover.*found also \[128\]",
        )
    if how == "size":
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(masks / "pat0_s1.png")
        return (
            GeometryError,
            "masks/pat0_s1.png: label grid does not match the image grid of .*pat0_s1.png: shape",
        )
    if how == "corrupt":
        (images / "pat0_s1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        return InputError, "images/pat0_s1.png: cannot be read as an image"
    if how == "colour mask":
        Image.fromarray(
            np.dstack([np.zeros((6, 9), np.uint8), np.full((6, 9), 255, np.uint8)] * 2)[..., :3]
        ).save(masks / "pat0_s1.png")
        return InputError, "masks/pat0_s1.png: is a colour image"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["missing mask", "orphan mask", "duplicate", "values", "size", "corrupt", "colour mask"]
)
def test_bad_pairs_name_the_file(tmp_path: Path, how: str) -> None:
    images, masks = _pairs(tmp_path / "src")
    err, match = _damage(images, masks, how)
    before = tree_state(tmp_path / "src")
    with pytest.raises(err, match=match):
        import_images2d(images, tmp_path / "out", masks=masks, spacing=(1, 1), progress=False)
    assert not (tmp_path / "out").exists()
    assert tree_state(tmp_path / "src") == before


def test_empty_folder_and_bad_options(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        import_images2d(
            tmp_path / "a", tmp_path / "out", masks=tmp_path / "b", spacing=(1, 1), progress=False
        )
    images, masks = _pairs(tmp_path / "src")
    with pytest.raises(ConfigError, match="spacing"):
        import_images2d(images, tmp_path / "out", masks=masks, spacing=(1, 0), progress=False)
    with pytest.raises(InputError, match="group pattern"):
        import_images2d(images, tmp_path / "out", masks=masks, spacing=(1, 1), group_pattern=r"^(case\d+)",
                        progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"'\(pat' is not a valid regular expression"):
        import_images2d(images, tmp_path / "out", masks=masks, spacing=(1, 1), group_pattern="(pat",
                        progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="needs a group"):
        import_images2d(images, tmp_path / "out", masks=masks, spacing=(1, 1), group_pattern=r"^pat\d+",
                        progress=False)  # fmt: skip
    with pytest.raises(InputError, match="is not a folder"):
        import_images2d(images, tmp_path / "out", masks=tmp_path / "nope", spacing=(1, 1), progress=False)
    assert not (tmp_path / "out").exists()
