"""Global threshold, Otsu and multi-Otsu."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.classical import otsu, threshold
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.volume import Volume
from tests.conftest import make_oblique_volume


def _two_levels() -> Volume:
    """Background 10, a bright box 100, on an oblique grid."""
    base = make_oblique_volume(shape=(8, 12, 10))
    arr = np.full(base.shape, 10.0, dtype=np.float32)
    arr[2:6, 3:9, 2:7] = 100.0
    return base.with_array(arr)


def test_threshold_bounds_are_inclusive() -> None:
    vol = make_oblique_volume(shape=(1, 1, 5)).with_array(np.arange(5, dtype=np.float32).reshape(1, 1, 5))
    np.testing.assert_array_equal(threshold(vol, 1, 3).array.ravel(), [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(threshold(vol, lower=3).array.ravel(), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(threshold(vol, upper=0, label=4).array.ravel(), [4, 0, 0, 0, 0])


def test_threshold_keeps_the_grid_and_does_not_touch_the_input() -> None:
    vol = _two_levels()
    before = vol.array.copy()
    out = threshold(vol, 50)
    assert out.geometry.is_close(vol.geometry) and out.dtype == np.uint8
    assert out.meta["baseline"] == {"method": "threshold", "lower": 50, "upper": None, "label": 1}
    np.testing.assert_array_equal(vol.array, before)
    assert int(out.array.sum()) == 4 * 6 * 5


def test_threshold_errors() -> None:
    vol = _two_levels()
    with pytest.raises(ConfigError, match="lower bound, an upper bound"):
        threshold(vol)
    with pytest.raises(ConfigError, match="above the upper"):
        threshold(vol, 5, 1)
    with pytest.raises(ConfigError, match="label"):
        threshold(vol, 5, label=0)


def test_otsu_separates_two_levels() -> None:
    vol = _two_levels()
    out = otsu(vol)
    t = out.meta["baseline"]["thresholds"][0]
    assert 10 <= t < 100
    np.testing.assert_array_equal(out.array, (vol.array > t).astype(np.uint8))
    assert int(out.array.sum()) == 4 * 6 * 5


def test_multi_otsu_orders_classes_by_intensity() -> None:
    vol = _two_levels()
    arr = vol.array.copy()
    arr[3:5, 4:6, 3:5] = 200.0
    out = otsu(vol.with_array(arr), classes=3)
    assert out.array[0, 0, 0] == 0 and out.array[2, 3, 2] == 1 and out.array[3, 4, 3] == 2


def test_otsu_inside_a_mask() -> None:
    vol = _two_levels()
    mask = vol.with_array(np.zeros(vol.shape, dtype=np.uint8))
    mask.array[:, :, :5] = 1
    out = otsu(vol, mask=mask)
    assert set(np.unique(out.array[:, :, 5:])) == {0}
    assert set(np.unique(out.array[:, :, :5])) == {1, 2}


def test_otsu_errors() -> None:
    vol = _two_levels()
    with pytest.raises(ConfigError, match="2 to 8"):
        otsu(vol, classes=1)
    with pytest.raises(InputError, match="single intensity"):
        otsu(vol.with_array(np.ones(vol.shape, dtype=np.float32)))
    other = Volume(np.ones(vol.shape, dtype=np.uint8))
    with pytest.raises(GeometryError, match="different grids"):
        otsu(vol, mask=other)
    with pytest.raises(InputError, match="no finite intensity"):
        otsu(vol, mask=vol.with_array(np.zeros(vol.shape, dtype=np.uint8)))


def test_a_result_on_a_two_transform_nifti_gets_both_of_its_transforms(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A NIfTI whose qform and sform disagree is read with a warning promising that NIfTI
    outputs on its grid get both transforms (predict's do); a baseline's result got only the
    one medseg reads, so FSL / nibabel (which read the sform) showed it 5 mm off the image."""
    import nibabel as nib

    from medseg.io import read_volume, write_volume
    from tests.conftest import give_nifti_a_second_transform

    src = write_volume(_two_levels(), tmp_path / "image.nii.gz")
    qform, sform = give_nifti_a_second_transform(src, sform_code=2)
    result = otsu(read_volume(src))
    out = nib.load(write_volume(result, tmp_path / "otsu.nii.gz"))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    np.testing.assert_allclose(out.header.get_sform(), sform, atol=1e-4)
    np.testing.assert_allclose(out.header.get_qform(), qform, atol=1e-4)
    assert result.meta["baseline"]["method"] == "otsu"
