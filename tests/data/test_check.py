"""`dataset check`: every problem of every case is listed; nothing is skipped silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.data.check import check_dataset
from medseg.data.dataset import create_dataset
from medseg.errors import InputError
from medseg.io.itk import read_itk, write_itk
from medseg.volume import Volume
from tests.conftest import make_oblique_volume, oblique_direction

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def _make(tmp_path: Path, n: int = 3, channels: int = 2) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    with create_dataset(
        tmp_path / "ds", source=src, channel_names=["T2", "ADC"][:channels], labels=LABELS
    ) as w:
        for i in range(n):
            image = make_oblique_volume(seed=i)
            label = np.zeros(image.shape, np.uint8)
            label[3:6, 4:9, 4:9] = 1
            label[4, 6, 6] = 2
            w.add_case(f"c{i}", [image] * channels, image.with_array(label), test=False)
        w.add_case("t0", [make_oblique_volume(seed=9)] * channels, None, test=True)
    return tmp_path / "ds"


def _problems(report) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {c.case_id: c.problems for c in report.cases if c.problems}


def test_good_dataset_passes(tmp_path: Path) -> None:
    root = _make(tmp_path)
    report = check_dataset(root, progress=False)
    assert report.ok, report.to_json()
    assert [(c.case_id, c.subset) for c in report.cases] == [
        ("c0", "Tr"),
        ("c1", "Tr"),
        ("c2", "Tr"),
        ("t0", "Ts"),
    ]
    c0 = report.cases[0]
    assert c0.shape == (12, 20, 16) and c0.num_channels == 2 and c0.label_values == [0, 1, 2]
    assert c0.spacing == pytest.approx((3.0, 0.7, 0.5))
    json.dumps(report.to_json())  # serialisable


def test_every_problem_is_listed(tmp_path: Path) -> None:
    root = _make(tmp_path, n=6)
    tr, lab = root / "imagesTr", root / "labelsTr"
    vol = read_itk(tr / "c0_0000.nii.gz")
    # c0: label on a shifted grid
    shifted = Volume(read_itk(lab / "c0.nii.gz").array, vol.spacing, np.add(vol.origin, 2.0), vol.direction)
    write_itk(shifted, lab / "c0.nii.gz", overwrite=True)
    # c1: undeclared label value 7
    bad = read_itk(lab / "c1.nii.gz")
    bad.array[0, 0, 0] = 7
    write_itk(bad, lab / "c1.nii.gz", overwrite=True)
    # c2: NaN in channel 1
    nan = read_itk(tr / "c2_0001.nii.gz")
    nan.array[1, 1, 1] = np.nan
    write_itk(nan, tr / "c2_0001.nii.gz", overwrite=True)
    # c3: missing label and missing channel 1
    (lab / "c3.nii.gz").unlink()
    (tr / "c3_0001.nii.gz").unlink()
    # c4: truncated (corrupt) channel 0
    data = (tr / "c4_0000.nii.gz").read_bytes()
    (tr / "c4_0000.nii.gz").write_bytes(data[: len(data) // 2])
    # c5: other orientation (flipped direction) on both image and label
    for f in [tr / "c5_0000.nii.gz", tr / "c5_0001.nii.gz", lab / "c5.nii.gz"]:
        v = read_itk(f)
        write_itk(Volume(v.array, v.spacing, v.origin, -oblique_direction()), f, overwrite=True)
    # dataset level: orphan label, stray file, macOS fork, test id duplicating a training id
    shutil.copy(lab / "c1.nii.gz", lab / "ghost.nii.gz")
    (tr / "notes.txt").write_text("x")
    (tr / "._c1_0000.nii.gz").write_bytes(b"junk")
    shutil.copy(root / "imagesTs" / "t0_0000.nii.gz", root / "imagesTs" / "C1_0000.nii.gz")
    shutil.copy(root / "imagesTs" / "t0_0001.nii.gz", root / "imagesTs" / "C1_0001.nii.gz")

    report = check_dataset(root, progress=False)
    probs = _problems(report)
    assert not report.ok
    assert any("label grid does not match" in p and "origin" in p for p in probs["c0"])
    assert any("undeclared label values [7]" in p for p in probs["c1"])
    assert any("c2_0001.nii.gz: channel 1 holds 1 NaN/Inf" in p for p in probs["c2"])
    assert any("missing channel(s) [1]" in p for p in probs["c3"])
    assert any("labelsTr/c3.nii.gz: label file missing" in p for p in probs["c3"])
    assert any("c4_0000.nii.gz" in p and "truncated" in p for p in probs["c4"])
    assert any("orientation" in p for p in probs["c5"])
    assert any("duplicate case id" in p for p in probs["C1"])
    text = " | ".join(report.problems)
    assert "labelsTr/ghost.nii.gz: label without an image" in text
    assert "imagesTr/notes.txt: unexpected file" in text
    assert any("._c1_0000.nii.gz" in n and "ignored" in n for n in report.notes)
    assert report.num_problems >= 10


def test_headers_only_skips_values_but_still_checks_grids(tmp_path: Path) -> None:
    root = _make(tmp_path, n=2)
    bad = read_itk(root / "labelsTr" / "c1.nii.gz")
    bad.array[0, 0, 0] = 9
    write_itk(bad, root / "labelsTr" / "c1.nii.gz", overwrite=True)
    v = read_itk(root / "labelsTr" / "c0.nii.gz")
    short = Volume(v.array[:-1], geometry=v.geometry.with_shape_origin((11, 20, 16), v.origin))
    write_itk(short, root / "labelsTr" / "c0.nii.gz", overwrite=True)
    report = check_dataset(root, read_values=False, progress=False)
    assert not report.values_checked
    assert "c1" not in _problems(report)  # values not read
    assert any("shape" in p for p in _problems(report)["c0"])
    assert "c1" in _problems(check_dataset(root, progress=False))


def test_dataset_level_problems(tmp_path: Path) -> None:
    root = _make(tmp_path, n=2)
    desc = json.loads((root / "dataset.json").read_text())
    desc["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(desc))
    assert any("numTraining is 5" in p for p in check_dataset(root, progress=False).problems)
    (root / "dataset.json").write_text("{not json")
    report = check_dataset(root, progress=False)
    assert not report.ok and "not valid JSON" in report.problems[0] and not report.cases
    with pytest.raises(InputError, match="is not a folder"):
        check_dataset(tmp_path / "missing")


def test_empty_images_folder(tmp_path: Path) -> None:
    root = _make(tmp_path, n=1)
    for f in (root / "imagesTr").iterdir():
        f.unlink()
    report = check_dataset(root, progress=False)
    assert any("holds no cases" in p for p in report.problems)
    assert any("label without an image" in p for p in report.problems)


def test_real_msd_hippocampus_after_import(tmp_path: Path, shared_data: Path) -> None:
    from medseg.data.adapters.msd import import_msd

    out = import_msd(
        shared_data / "msd_hippocampus", tmp_path / "hip", labels={"background": 0, "anterior": 1, "posterior": 2},
        channel_names=["MRI"], cases=["hippocampus_001", "hippocampus_003", "hippocampus_004"], progress=False,
    )  # fmt: skip
    report = check_dataset(out, progress=False)
    assert report.ok, report.to_json()
    assert {c.orientation for c in report.cases} == {"RAS"}
    assert all(c.label_values == [0, 1, 2] for c in report.cases)


def test_cases_are_listed_in_natural_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with create_dataset(tmp_path / "ds", source=src, channel_names=["T2"], labels=LABELS) as w:
        for name in ("c10", "c2", "c1"):
            image = make_oblique_volume(seed=1)
            w.add_case(name, [image], image.with_array(np.zeros(image.shape, np.uint8)), test=False)
    report = check_dataset(tmp_path / "ds", progress=False)
    assert [c.case_id for c in report.cases] == ["c1", "c2", "c10"]
