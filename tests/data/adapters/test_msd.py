"""MSD adapter: real Task04 Hippocampus files, and a generated Task05-like 4D T2+ADC task."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medseg.data.adapters.msd import import_msd
from medseg.data.check import check_dataset
from medseg.data.dataset import IMPORT_KEY, list_cases, read_descriptor
from medseg.errors import GeometryError, InputError
from medseg.io.itk import read_itk
from tests.data.adapters import tree_state

HIPPO_CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
HIPPO_LABELS = {"background": 0, "anterior": 1, "posterior": 2}

# An oblique RAS affine (what MSD NIfTI headers hold), voxel (i, j, k) -> RAS mm
AFFINE = np.eye(4)
AFFINE[:3, :3] = Rotation.from_euler("xyz", [12.0, -7.0, 20.0], degrees=True).as_matrix() @ np.diag(
    [0.6, 0.65, 3.6]
)
AFFINE[:3, 3] = [-40.0, 25.0, -12.5]
SHAPE_XYZ = (10, 9, 5)


def _task05(root: Path, n: int = 2, junk: bool = True) -> Path:
    """A Task05_Prostate-like folder: 4D (x, y, z, 2) T2+ADC images, 3D labels, imagesTs, '._' forks."""
    task = root / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    training = []
    for i in range(n):
        name = f"prostate_{i:02d}.nii.gz"
        data = rng.normal(500, 100, (*SHAPE_XYZ, 2)).astype(np.float32)
        data[..., 1] = 1000 + i  # ADC channel is constant so channel mix-ups show
        nib.save(nib.Nifti1Image(data, AFFINE), task / "imagesTr" / name)
        label = np.zeros(SHAPE_XYZ, np.uint8)
        label[2:5, 3:6, 1:3] = 1
        label[6:8, 3:6, 2:4] = 2
        nib.save(nib.Nifti1Image(label, AFFINE), task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        if junk:
            (task / "imagesTr" / f"._{name}").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
            (task / "labelsTr" / f"._{name}").write_bytes(b"\x00\x05\x16\x07")
    nib.save(
        nib.Nifti1Image(np.ones((*SHAPE_XYZ, 2), np.float32), AFFINE),
        task / "imagesTs" / "prostate_50.nii.gz",
    )
    (task / "dataset.json").write_text(
        json.dumps(
            {
                "name": "PROSTATE",
                "modality": {"0": "T2", "1": "ADC"},
                "labels": {"0": "background", "1": "PZ", "2": "TZ"},
                "numTraining": n,
                "numTest": 1,
                "training": training,
                "test": ["./imagesTs/prostate_50.nii.gz"],
            }
        )
    )
    return task


def test_real_hippocampus(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "msd_hippocampus"
    before = tree_state(src)
    out = import_msd(
        src, tmp_path / "hip", labels=HIPPO_LABELS, channel_names=["MRI"], cases=HIPPO_CASES, progress=False
    )
    assert tree_state(src) == before
    desc = read_descriptor(out)
    assert desc.labels == HIPPO_LABELS and desc.modalities == ["MRI"] and desc.num_training == 3
    assert desc.patients == {c: c for c in HIPPO_CASES}
    cases = list_cases(out)
    assert [c.case_id for c in cases] == HIPPO_CASES
    for case in cases:
        original = nib.load(src / "imagesTr" / f"{case.case_id}.nii.gz")
        image = read_itk(case.images[0])
        np.testing.assert_array_equal(image.array, np.asarray(original.dataobj).transpose(2, 1, 0))
        ijk = np.array([3.0, 5.0, 7.0])
        ras = original.affine @ np.r_[ijk, 1]
        np.testing.assert_allclose(image.index_to_world(ijk[::-1]), ras[:3] * [-1, -1, 1], atol=1e-3)
        label = read_itk(case.label)  # type: ignore[arg-type]
        assert label.dtype == np.uint8 and set(np.unique(label.array)) == {0, 1, 2}
    assert check_dataset(out, progress=False).ok


def test_real_hippocampus_needs_labels_without_dataset_json(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(InputError, match=r"dataset.json: not found, so the labels are unknown"):
        import_msd(shared_data / "msd_hippocampus", tmp_path / "hip", cases=HIPPO_CASES[:1], progress=False)
    assert not (tmp_path / "hip").exists()


def test_task05_channels_are_split(tmp_path: Path) -> None:
    task = _task05(tmp_path)
    before = tree_state(task)
    out = import_msd(task, tmp_path / "out", progress=False)
    assert tree_state(task) == before
    desc = read_descriptor(out)
    assert desc.modalities == ["T2", "ADC"]
    assert desc.labels == {"background": 0, "PZ": 1, "TZ": 2}
    assert desc.num_training == 2 and desc.extra[IMPORT_KEY]["num_test"] == 1
    ignored = desc.extra[IMPORT_KEY]["ignored_files"]
    assert sorted(ignored) == sorted(
        f"{sub}/._prostate_{i:02d}.nii.gz: macOS resource fork"
        for sub in ("imagesTr", "labelsTr")
        for i in range(2)
    )
    source = np.asarray(nib.load(task / "imagesTr" / "prostate_01.nii.gz").dataobj)
    t2 = read_itk(out / "imagesTr" / "prostate_01_0000.nii.gz")
    adc = read_itk(out / "imagesTr" / "prostate_01_0001.nii.gz")
    np.testing.assert_array_equal(t2.array, source[..., 0].transpose(2, 1, 0))
    np.testing.assert_array_equal(adc.array, np.full(t2.shape, 1001, np.float32))
    label = read_itk(out / "labelsTr" / "prostate_01.nii.gz")
    assert not t2.geometry.differences(label.geometry) and not t2.geometry.differences(adc.geometry)
    ijk = np.array([4.0, 2.0, 3.0])
    np.testing.assert_allclose(
        t2.index_to_world(ijk[::-1]), (AFFINE @ np.r_[ijk, 1])[:3] * [-1, -1, 1], atol=1e-3
    )
    assert (out / "imagesTs" / "prostate_50_0001.nii.gz").is_file()
    assert check_dataset(out, progress=False).ok


def test_task05_chunked(tmp_path: Path) -> None:
    task = _task05(tmp_path, n=1)
    out = import_msd(task, tmp_path / "out", chunk=3, chunk_overlap=1, include_test=False, progress=False)
    ids = [c.case_id for c in list_cases(out)]
    assert ids == ["prostate_00_chunk000", "prostate_00_chunk001"]  # 5 slices: 0-3, 2-5
    assert set(read_descriptor(out).patients.values()) == {"prostate_00"}
    whole = np.asarray(nib.load(task / "imagesTr" / "prostate_00.nii.gz").dataobj)[..., 0].transpose(2, 1, 0)
    np.testing.assert_array_equal(
        read_itk(out / "imagesTr" / "prostate_00_chunk001_0000.nii.gz").array, whole[2:5]
    )


def _break(task: Path, how: str) -> str:
    """Damage the generated task; returns the expected error text."""
    img, lab = task / "imagesTr" / "prostate_01.nii.gz", task / "labelsTr" / "prostate_01.nii.gz"
    if how == "missing label":
        lab.unlink()
        return "labelsTr/prostate_01.nii.gz: label file missing for image"
    if how == "orphan label":
        img.unlink()
        return "labelsTr/prostate_01.nii.gz: label has no image"
    if how == "undeclared":
        data = np.asarray(nib.load(lab).dataobj).copy()
        data[0, 0, 0] = 5
        nib.save(nib.Nifti1Image(data, AFFINE), lab)
        return r"labelsTr/prostate_01.nii.gz: holds undeclared label values; expected values in \[0, 1, 2\]; found also \[5\]"
    if how == "grid":
        shifted = AFFINE.copy()
        shifted[:3, 3] += 1.0
        nib.save(nib.Nifti1Image(np.asarray(nib.load(lab).dataobj), shifted), lab)
        return "labelsTr/prostate_01.nii.gz: label grid does not match the image grid of .*prostate_01.nii.gz: origin"
    if how == "corrupt":
        data = img.read_bytes()
        img.write_bytes(data[: len(data) // 3])
        return "imagesTr/prostate_01.nii.gz: (has an invalid NIfTI header|is truncated|cannot be read)"
    if how == "channels":
        nib.save(nib.Nifti1Image(np.ones((*SHAPE_XYZ, 3), np.float32), AFFINE), img)
        return "prostate_01.nii.gz: has the wrong number of channels; expected 2 .T2, ADC.; found 3"
    if how == "nan":
        data = np.asarray(nib.load(img).dataobj).copy()
        data[1, 1, 1, 0] = np.nan
        nib.save(nib.Nifti1Image(data, AFFINE), img)
        return "imagesTr/prostate_01.nii.gz: holds NaN or Inf values"
    if how == "duplicate":
        nib.save(nib.load(img), task / "imagesTr" / "prostate_01.nii")
        return r"imagesTr/prostate_01.nii.gz: duplicate case id 'prostate_01'; found already imported from .*prostate_01.nii$"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["missing label", "orphan label", "undeclared", "grid", "corrupt", "channels", "nan", "duplicate"]
)
def test_bad_cases_name_the_file_and_leave_no_output(tmp_path: Path, how: str) -> None:
    task = _task05(tmp_path)
    match = _break(task, how)
    before = tree_state(task)
    err = GeometryError if how == "grid" else InputError
    with pytest.raises(err, match=match):
        import_msd(task, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task05_Prostate"]  # no temp folder left
    assert tree_state(task) == before
    if how not in ("orphan label", "duplicate"):  # skip_invalid imports the good case and lists the bad one
        out = import_msd(task, tmp_path / "out", skip_invalid=True, progress=False)
        skipped = read_descriptor(out).extra[IMPORT_KEY]["skipped"]
        assert [s["source"] for s in skipped] == ["imagesTr/prostate_01.nii.gz"]
        assert [c.case_id for c in list_cases(out)] == ["prostate_00"]


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    task = _task05(tmp_path, n=1, junk=True)
    for f in (task / "imagesTr").iterdir():
        if not f.name.startswith("._"):
            f.unlink()
    (task / "labelsTr" / "prostate_00.nii.gz").unlink()
    with pytest.raises(InputError, match="imagesTr: holds no images"):
        import_msd(task, tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="is not a folder"):
        import_msd(tmp_path / "nope", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="requested cases not found"):
        import_msd(_task05(tmp_path / "b"), tmp_path / "out", cases=["prostate_99"], progress=False)
