"""CHAOS adapter: real T2-SPIR cases, and generated folders in the same layout for every error."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.adapters.chaos import CHAOS_LABELS, import_chaos
from medseg.data.check import check_dataset
from medseg.data.dataset import list_cases, read_descriptor
from medseg.errors import GeometryError, InputError
from medseg.io.itk import read_itk
from tests.data.adapters import tree_state

AFFINE = np.diag([-1.25, 1.25, 7.7, 1.0])  # LAS, like the real files
AFFINE[:3, 3] = [160.0, -150.0, -80.0]


def test_real_chaos(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "chaos_mr_t2spir"
    before = tree_state(src)
    out = import_chaos(src, tmp_path / "chaos", cases=["5"], progress=False)
    assert tree_state(src) == before
    desc = read_descriptor(out)
    assert desc.labels == CHAOS_LABELS and desc.patients == {"chaos_005": "chaos_005"}
    for case, n in zip(list_cases(out), ["5"], strict=True):
        original = nib.load(src / f"image_{n}.nii.gz")
        image = read_itk(case.images[0])
        assert image.dtype == np.float32 and image.orientation == "LAS"
        np.testing.assert_allclose(image.array, np.asarray(original.dataobj).transpose(2, 1, 0), rtol=1e-6)
        label = read_itk(case.label)  # type: ignore[arg-type]
        assert label.dtype == np.uint8 and set(np.unique(label.array)) == {0, 1, 2, 3, 4}
        expected = np.asarray(nib.load(src / f"label_{n}.nii.gz").dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(label.array, expected)
        assert not image.geometry.differences(label.geometry)
    assert check_dataset(out, progress=False).ok


def _folder(root: Path, ids: tuple[str, ...] = ("1", "3")) -> Path:
    src = root / "chaos"
    src.mkdir()
    for n in ids:
        image = np.random.default_rng(int(n)).normal(100, 20, (8, 7, 4))
        label = np.zeros((8, 7, 4))
        label[2:5, 2:5, 1:3] = 1.0
        label[6, 1, 2] = 4.0
        nib.save(nib.Nifti1Image(image, AFFINE), src / f"image_{n}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), src / f"label_{n}.nii.gz")
    return src


def _label(src: Path, n: str, fn) -> None:  # type: ignore[no-untyped-def]
    path = src / f"label_{n}.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    nib.save(nib.Nifti1Image(fn(data), img.affine), path)


@pytest.mark.parametrize(
    ("how", "err", "match"),
    [
        ("missing label", InputError, "label_3.nii.gz: label file missing for image"),
        ("orphan label", InputError, "label_3.nii.gz: label has no image"),
        ("undeclared", InputError, r"label_3.nii.gz: holds undeclared label values.*found also \[5\]"),
        ("fraction", InputError, "label_3.nii.gz: label map holds non-integer values"),
        (
            "grid",
            GeometryError,
            "label_3.nii.gz: label grid does not match the image grid of .*image_3.nii.gz",
        ),
        ("duplicate", InputError, r"image_3.nii.gz: duplicate case id: patient 3 also in image_03.nii.gz"),
        ("nan", InputError, "image_3.nii.gz: holds NaN or Inf values"),
    ],
)
def test_bad_cases(tmp_path: Path, how: str, err: type, match: str) -> None:
    src = _folder(tmp_path)
    if how == "missing label":
        (src / "label_3.nii.gz").unlink()
    elif how == "orphan label":
        (src / "image_3.nii.gz").unlink()
    elif how == "undeclared":
        _label(src, "3", lambda a: np.where(a == 4, 5.0, a))
    elif how == "fraction":
        _label(src, "3", lambda a: a * 0.5)
    elif how == "grid":
        _label(src, "3", lambda a: a[:, :, :3])
    elif how == "duplicate":
        (src / "image_03.nii.gz").write_bytes((src / "image_3.nii.gz").read_bytes())
    elif how == "nan":
        img = nib.load(src / "image_3.nii.gz")
        data = np.asarray(img.dataobj).copy()
        data[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(data, AFFINE), src / "image_3.nii.gz")
    before = tree_state(src)
    with pytest.raises(err, match=match):
        import_chaos(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert tree_state(src) == before


def test_empty_folder_and_unknown_case(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "._image_1.nii.gz").write_bytes(b"junk")
    with pytest.raises(InputError, match="holds no CHAOS files"):
        import_chaos(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match=r"requested cases not found; found \['7'\]"):
        import_chaos(_folder(tmp_path), tmp_path / "out", cases=["7"], progress=False)
