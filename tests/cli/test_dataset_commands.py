"""`medseg dataset check / import / split` through the Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli import app
from medseg.cli.dataset_commands import dataset_app, import_app
from medseg.data.dataset import list_cases, read_descriptor
from medseg.data.splits import load_splits
from medseg.io.itk import read_itk, write_itk

runner = CliRunner()


def _pairs(root: Path, n: int = 6) -> tuple[Path, Path]:
    images, masks = root / "img", root / "msk"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        Image.fromarray(np.full((5, 7), 10 * i, np.uint8)).save(images / f"s{i}.png")
        mask = np.full((5, 7), 255, np.uint8)
        mask[2, 1 : 2 + i] = 0
        Image.fromarray(mask).save(masks / f"s{i}.png")
    return images, masks


def test_sub_apps_are_importable_for_other_command_modules() -> None:
    names = {c.name for c in import_app.registered_commands}
    assert {"msd", "chaos", "dicom-seg", "rtstruct", "images2d"} <= names
    assert {"check", "split"} <= {c.name for c in dataset_app.registered_commands}


def test_import_check_split(tmp_path: Path) -> None:
    images, masks = _pairs(tmp_path)
    out = tmp_path / "ds"
    args = ["dataset", "import", "images2d", str(images), "-o", str(out), "--masks", str(masks),
            "--spacing", "0.004,0.004", "--mask-map", "0=1,255=0", "--label-name", "membrane", "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "imported 6 training and 0 test cases" in result.output
    label = read_itk(out / "labelsTr" / "s3.nii.gz")
    assert label.array.sum() == 4 and read_descriptor(out).labels == {"background": 0, "membrane": 1}

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "output exists" in again.output and "Traceback" not in again.output

    result = runner.invoke(app, ["dataset", "check", str(out), "-q", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "6 cases checked: no problems" in result.output and "s5" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    before = (out / "dataset.json").read_text()
    result = runner.invoke(app, ["dataset", "check", str(out), "-q", "--json", str(out / "dataset.json")])
    assert result.exit_code == 2 and "would overwrite a file of the dataset" in result.output
    assert (out / "dataset.json").read_text() == before

    result = runner.invoke(
        app, ["dataset", "split", str(out), "--folds", "3", "--seed", "1", "--test-fraction", "0.3"]
    )
    assert result.exit_code == 0, result.output
    splits = load_splits(out)
    assert splits.k == 3 and len(splits.test) == 2 and splits.seed == 1
    result = runner.invoke(app, ["dataset", "split", str(out), "--folds", "7"])
    assert result.exit_code == 2 and "cannot make 7 folds from 6 patients" in result.output


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        (["0.5", "0.25"], (0.5, 0.5, 0.25)),  # as every other option taking numbers
        (["2", "0.5", "0.25"], (2.0, 0.5, 0.25)),  # with the slice spacing
        (["0.5,0.25"], (0.5, 0.5, 0.25)),  # the comma form of older releases
        (["2,0.5,0.25"], (2.0, 0.5, 0.25)),
    ],
)
def test_images2d_spacing_takes_space_separated_numbers(
    tmp_path: Path, spacing: list[str], expected: tuple[float, ...]
) -> None:
    images, masks = _pairs(tmp_path, n=1)
    out = tmp_path / "ds"
    # --spacing before the IMAGES argument and before another option: the numbers end at either
    args = ["dataset", "import", "images2d", "--spacing", *spacing, str(images), "-o", str(out),
            "--masks", str(masks), "--mask-map", "0=1,255=0", "--spacing", *spacing, "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_itk(out / "imagesTr" / "s0_0000.nii.gz").geometry.spacing == pytest.approx(expected)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        (["0.5", "0.5x"], "found '0.5x', which is not a number"),
        (["0.5,a"], "found 'a', which is not a number"),
        (["--mask-map", "0=1"], "found '--mask-map' among them; were fewer values given?"),
        (["0.5"], "found 1: 0.5"),
        (["1", "2", "3", "4"], "found 4: 1 2 3 4"),
        (["0.5", "--mask-map", "0=1"], "found 1: 0.5"),
    ],
)
def test_images2d_spacing_errors_name_the_option_and_value(
    tmp_path: Path, spacing: list[str], expected: str
) -> None:
    images, masks = _pairs(tmp_path, n=1)
    args = ["dataset", "import", "images2d", str(images), "-o", str(tmp_path / "ds"), "--masks", str(masks),
            "--spacing", *spacing]  # fmt: skip
    result = runner.invoke(app, args)
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, result.output
    assert expected in text, text
    assert (
        "Invalid value for '--spacing': expected 2 or 3 numbers [Z] ROW COL (e.g. --spacing 0.5 0.5)" in text
    )
    assert not (tmp_path / "ds").exists()


def test_join_number_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.cli.common import join_number_tokens

    assert join_number_tokens(["x", "--spacing", "1", "-2", ".5", "7x", "y"], "--spacing") == [
        "x", "--spacing", "1,-2,.5,7x", "y",
    ]  # fmt: skip
    assert join_number_tokens(["--spacing", "1,2", "-q"], "--spacing") == ["--spacing", "1,2", "-q"]
    assert join_number_tokens(["--spacing", "--other", "1"], "--spacing") == ["--spacing", "--other", "1"]
    # after "--" every token is an argument, even one spelled like the option
    assert join_number_tokens(["--", "--spacing", "1", "2"], "--spacing") == ["--", "--spacing", "1", "2"]
    # an existing folder named like a number is the IMAGES argument
    monkeypatch.chdir(tmp_path)
    Path("2024_scans").mkdir()
    assert join_number_tokens(["--spacing", "1", "1", "2024_scans"], "--spacing") == [
        "--spacing", "1,1", "2024_scans",
    ]  # fmt: skip
    # only numbers are joined: an argument starting with a digit ends them, existing or not
    # (an output file, a folder to create), as does a name Python's float() would read (1_0)
    for argument in ("2025_scans", "2_out.nii.gz", "3d/out.nii.gz", "1_0", "3d\\out"):
        assert join_number_tokens(["--seed", "120", "140", "12", argument], "--seed") == [
            "--seed", "120,140,12", argument,
        ]  # fmt: skip
    assert join_number_tokens(["--seed-world", "-12.5", "3e1", "-.5", "4_x"], "--seed", "--seed-world") == [
        "--seed-world", "-12.5,3e1,-.5", "4_x",
    ]  # fmt: skip
    # a token that is neither a number nor a file name is joined, for the parser to name it
    assert join_number_tokens(["--seed", "12", "80x", "95", "out"], "--seed") == [
        "--seed",
        "12,80x,95",
        "out",
    ]


def test_check_reports_problems_with_exit_code_1(tmp_path: Path) -> None:
    images, masks = _pairs(tmp_path, n=2)
    out = tmp_path / "ds"
    runner.invoke(app, ["dataset", "import", "images2d", str(images), "-o", str(out), "--masks", str(masks),
                        "--spacing", "1,1", "--mask-map", "0=1,255=0", "-q"])  # fmt: skip
    bad = read_itk(out / "labelsTr" / "s1.nii.gz")
    write_itk(bad.with_array(bad.array + 3), out / "labelsTr" / "s1.nii.gz", overwrite=True)
    result = runner.invoke(app, ["dataset", "check", str(out), "-q", "--problems-only"])
    assert result.exit_code == 1
    assert "s1: " in result.output and "undeclared label values [3, 4]" in result.output
    assert "│ s0" not in result.output  # --problems-only hides good cases
    assert "1 problem (1 case, 0 dataset-level)" in " ".join(result.output.split())


def test_import_errors_are_one_line(tmp_path: Path, shared_data: Path) -> None:
    result = runner.invoke(app, ["dataset", "import", "msd", str(shared_data / "msd_hippocampus"),
                                 "-o", str(tmp_path / "x"), "--case", "hippocampus_001", "-q"])  # fmt: skip
    assert (
        result.exit_code == 2 and "labels are unknown" in result.output and "Traceback" not in result.output
    )
    result = runner.invoke(app, ["dataset", "import", "msd", str(shared_data / "msd_hippocampus"),
                                 "-o", str(tmp_path / "x"), "--labels", "liver=1", "-q"])  # fmt: skip
    assert result.exit_code == 2 and "background as 0" in result.output
    assert not (tmp_path / "x").exists()


def test_import_real_sources(tmp_path: Path, shared_data: Path) -> None:
    result = runner.invoke(app, ["dataset", "import", "msd", str(shared_data / "msd_hippocampus"),
                                 "-o", str(tmp_path / "hip"), "--labels", "background=0,anterior=1,posterior=2",
                                 "--channels", "MRI", "--case", "hippocampus_001", "--chunk", "20", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [c.case_id for c in list_cases(tmp_path / "hip")] == [
        "hippocampus_001_chunk000",
        "hippocampus_001_chunk001",
    ]
    seg = shared_data / "dcmqi_seg" / "segmentations"
    result = runner.invoke(app, ["dataset", "import", "dicom-seg", str(seg), "-o", str(tmp_path / "seg"),
                                 "--seg", str(seg / "partial_overlaps.dcm"), "-q"])  # fmt: skip
    assert result.exit_code == 2 and "overlaps other segments" in result.output
    result = runner.invoke(app, ["dataset", "import", "dicom-seg", str(seg), "-o", str(tmp_path / "seg"),
                                 "--seg", str(seg / "partial_overlaps.dcm"), "--overlap", "overwrite", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rt = shared_data / "rtstruct"
    result = runner.invoke(app, ["dataset", "import", "rtstruct", str(rt), "-o", str(tmp_path / "rt"),
                                 "--skip-invalid", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "imported 1 training" in result.output
    chaos = shared_data / "chaos_mr_t2spir"
    result = runner.invoke(app, ["dataset", "import", "chaos", str(chaos), "-o", str(tmp_path / "chaos"),
                                 "--case", "99", "-q"])  # fmt: skip
    assert result.exit_code == 2 and "requested cases not found" in result.output


def test_stitch_gives_back_the_real_scan_label(tmp_path: Path, shared_data: Path) -> None:
    msd = shared_data / "msd_hippocampus"
    result = runner.invoke(app, ["dataset", "import", "msd", str(msd), "-o", str(tmp_path / "hip"),
                                 "--labels", "background=0,anterior=1,posterior=2", "--channels", "MRI",
                                 "--case", "hippocampus_001", "--chunk", "16", "--chunk-overlap", "5", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list_cases(tmp_path / "hip")) > 2  # overlapping chunks
    result = runner.invoke(app, ["dataset", "stitch", str(tmp_path / "hip"), str(tmp_path / "hip" / "labelsTr"),
                                 "-o", str(tmp_path / "stitched")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stitched 1 scan into" in result.output
    original = read_itk(msd / "labelsTr" / "hippocampus_001.nii.gz")
    back = read_itk(tmp_path / "stitched" / "hippocampus_001.nii.gz")
    np.testing.assert_array_equal(back.array, original.array)
    back.geometry.require_same(original.geometry, spacing_atol=1e-6, origin_atol=1e-5, direction_atol=1e-6)
    # a second run needs --overwrite; a dataset without chunks is a one-line error
    result = runner.invoke(app, ["dataset", "stitch", str(tmp_path / "hip"), str(tmp_path / "hip" / "labelsTr"),
                                 "-o", str(tmp_path / "stitched")])  # fmt: skip
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["dataset", "import", "msd", str(msd), "-o", str(tmp_path / "whole"),
                                 "--labels", "background=0,anterior=1,posterior=2", "--channels", "MRI",
                                 "--case", "hippocampus_001", "-q"])  # fmt: skip
    result = runner.invoke(app, ["dataset", "stitch", str(tmp_path / "whole"), str(tmp_path / "whole" / "labelsTr"),
                                 "-o", str(tmp_path / "s2")])  # fmt: skip
    assert result.exit_code == 2 and "records no chunks" in result.output


def test_import_dicom_seg_labels_name_an_overlap(tmp_path: Path, shared_data: Path) -> None:
    """--labels GREEN+ORANGE=20 --overlap regions on the real partial_overlaps.dcm: accepted, and
    dataset.json gives that overlap 20 (the command refused it before)."""
    seg = shared_data / "dcmqi_seg" / "segmentations"
    labels = "background=0,GREEN=1,ORANGE=2,PURPLE=3,LIGHT_BLUE=4,DARK_BLUE=5,GREEN+ORANGE=20"
    result = runner.invoke(app, ["dataset", "import", "dicom-seg", str(seg), "-o", str(tmp_path / "seg"),
                                 "--seg", str(seg / "partial_overlaps.dcm"), "--overlap", "regions",
                                 "--labels", labels, "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    desc = read_descriptor(tmp_path / "seg")
    assert desc.labels["GREEN+ORANGE"] == 20 and 20 in desc.regions["ORANGE"]
