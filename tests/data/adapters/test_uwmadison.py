"""UW-Madison GI Tract adapter on a small dataset generated in the competition's exact layout."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.data.adapters.uwmadison import (
    CLASS_NAMES,
    LABELS,
    import_uwmadison,
    labels_to_rows,
    parse_slice_filename,
    parse_slice_id,
    write_submission_csv,
)
from medseg.data.dataset import list_cases, read_descriptor
from medseg.errors import ConfigError, InputError, OutputExistsError
from medseg.io.itk import read_itk
from medseg.io.rle import rle_encode

# (case, day, width, height, spacing x, spacing y, slices); non-square so a transposed mask fails
SCANS = [
    ("case1", "day0", 6, 5, 1.5, 1.63, 4),
    ("case1", "day3", 8, 7, 1.5, 1.5, 3),
    ("case7", "day0", 6, 5, 1.25, 1.25, 2),
]


def _label_map(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, size=shape).astype(np.uint8)
    label[0] = 0  # an unannotated first slice, like the real data
    return label


def make_competition_folder(root: Path, *, overlap: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write train.csv and train/caseN/caseN_dayM/scans/*.png; return {case_day: (image, label)}."""
    truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows: list[list[str]] = []
    for k, (case, day, w, h, sx, sy, n) in enumerate(SCANS):
        scan_dir = root / "train" / case / f"{case}_{day}" / "scans"
        scan_dir.mkdir(parents=True)
        rng = np.random.default_rng(100 + k)
        image = rng.integers(0, 60000, size=(n, h, w)).astype(np.uint16)
        label = _label_map((n, h, w), seed=k)
        for z in range(n):
            number = z + 1
            Image.fromarray(image[z]).save(scan_dir / f"slice_{number:04d}_{w}_{h}_{sx:.2f}_{sy:.2f}.png")
            for cls in CLASS_NAMES:
                mask = label[z] == LABELS[cls]
                if overlap and k == 0 and z == 1 and cls == "small_bowel":
                    mask = mask | (label[z] == LABELS["stomach"])  # small bowel also covers the stomach
                rows.append([f"{case}_{day}_slice_{number:04d}", cls, rle_encode(mask)])
        truth[f"{case}_{day}"] = (image, label)
    with (root / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "class", "segmentation"])
        writer.writerows(rows)
    return truth


def _csv_rows(path: Path) -> list[tuple[str, str, str]]:
    with path.open(newline="") as fh:
        return [(r["id"], r["class"], r["segmentation"]) for r in csv.DictReader(fh)]


def test_parse_names() -> None:
    assert parse_slice_id("case123_day20_slice_0105") == ("case123", "case123_day20", 105)
    info = parse_slice_filename("train/case1/case1_day0/scans/slice_0091_360_310_1.50_1.63.png")
    assert (info.number, info.width, info.height, info.spacing_x, info.spacing_y) == (91, 360, 310, 1.5, 1.63)
    with pytest.raises(InputError, match="slice id"):
        parse_slice_id("case1_slice_0001")
    with pytest.raises(InputError, match="slice file name"):
        parse_slice_filename("slice_0001_266_266.png")


def test_import_builds_one_volume_per_case_day(tmp_path: Path) -> None:
    truth = make_competition_folder(tmp_path / "src")
    result = import_uwmadison(tmp_path / "src", tmp_path / "ds")
    desc = read_descriptor(tmp_path / "ds")
    assert desc.labels == {"background": 0, "stomach": 1, "small_bowel": 2, "large_bowel": 3}
    assert desc.patients == {"case1_day0": "case1", "case1_day3": "case1", "case7_day0": "case7"}
    assert desc.num_training == 3
    cases = list_cases(tmp_path / "ds")
    assert [c.case_id for c in cases] == ["case1_day0", "case1_day3", "case7_day0"]
    assert [c.group for c in cases] == ["case1", "case1", "case7"]

    image = read_itk(tmp_path / "ds" / "imagesTr" / "case1_day0_0000.nii.gz")
    label = read_itk(tmp_path / "ds" / "labelsTr" / "case1_day0.nii.gz")
    assert image.shape == (4, 5, 6)  # slices, rows (height), columns (width)
    assert image.spacing == pytest.approx((3.0, 1.63, 1.5))  # (z, y, x): thickness, spacing y, spacing x
    np.testing.assert_array_equal(image.array, truth["case1_day0"][0])
    assert image.array.dtype == np.uint16
    np.testing.assert_array_equal(label.array, truth["case1_day0"][1])
    assert result.overlap_pixels == 0
    info = json.loads((tmp_path / "ds" / "uwmadison.json").read_text())
    assert info["rle_order"] == "C" and info["scans"]["case1_day3"]["first_slice"] == 1
    # the source is untouched
    assert (tmp_path / "src" / "train.csv").is_file()


def test_row_major_hand_example(tmp_path: Path) -> None:
    src = tmp_path / "src"
    scan = src / "train" / "case2" / "case2_day1" / "scans"
    scan.mkdir(parents=True)
    Image.fromarray(np.zeros((5, 6), np.uint16)).save(scan / "slice_0001_6_5_1.50_1.50.png")
    (src / "train.csv").write_text(
        "id,class,segmentation\n"
        "case2_day1_slice_0001,large_bowel,5 1\n"  # pixel 5 = row 0, column 4 (row-major, 1-based)
        "case2_day1_slice_0001,small_bowel,7 2\n"  # pixels 7-8 = row 1, columns 0-1
        "case2_day1_slice_0001,stomach,\n"
    )
    import_uwmadison(src, tmp_path / "ds")
    label = read_itk(tmp_path / "ds" / "labelsTr" / "case2_day1.nii.gz").array[0]
    expected = np.zeros((5, 6), np.uint8)
    expected[0, 4] = 3
    expected[1, 0:2] = 2
    np.testing.assert_array_equal(label, expected)


def test_round_trip_rle_volume_rle_equals_csv(tmp_path: Path) -> None:
    make_competition_folder(tmp_path / "src")
    import_uwmadison(tmp_path / "src", tmp_path / "ds")
    rows = []
    for case_day in ("case1_day0", "case1_day3", "case7_day0"):
        label = read_itk(tmp_path / "ds" / "labelsTr" / f"{case_day}.nii.gz")
        rows += labels_to_rows(label, case_day)
    assert rows == _csv_rows(tmp_path / "src" / "train.csv")
    sub = write_submission_csv(rows, tmp_path / "submission.csv")
    lines = sub.read_text().splitlines()
    assert lines[0] == "id,class,predicted"
    assert lines[1:4] == [
        "case1_day0_slice_0001,large_bowel,",
        "case1_day0_slice_0001,small_bowel,",
        "case1_day0_slice_0001,stomach,",
    ]
    with pytest.raises(OutputExistsError):
        write_submission_csv(rows, sub)


def test_overlapping_masks_are_counted_and_resolved_by_priority(tmp_path: Path) -> None:
    truth = make_competition_folder(tmp_path / "src", overlap=True)
    stomach = truth["case1_day0"][1][1] == LABELS["stomach"]
    n_overlap = int(stomach.sum())
    assert n_overlap > 0
    result = import_uwmadison(tmp_path / "src", tmp_path / "ds")
    report = {r.case_day: r for r in result.scans}["case1_day0"]
    assert report.overlap_pixels == n_overlap == result.overlap_pixels
    assert report.overlap_by_pair == {"small_bowel+stomach": n_overlap}
    label = read_itk(tmp_path / "ds" / "labelsTr" / "case1_day0.nii.gz").array
    assert np.all(label[1][stomach] == LABELS["stomach"])  # default priority: stomach wins
    info = json.loads((tmp_path / "ds" / "uwmadison.json").read_text())
    assert info["scans"]["case1_day0"]["overlap_pixels"] == n_overlap

    import_uwmadison(
        tmp_path / "src", tmp_path / "ds2", overlap_priority=("small_bowel", "stomach", "large_bowel")
    )
    label2 = read_itk(tmp_path / "ds2" / "labelsTr" / "case1_day0.nii.gz").array
    assert np.all(label2[1][stomach] == LABELS["small_bowel"])


def test_bad_priority_and_thickness(tmp_path: Path) -> None:
    make_competition_folder(tmp_path / "src")
    with pytest.raises(ConfigError, match="overlap_priority"):
        import_uwmadison(tmp_path / "src", tmp_path / "ds", overlap_priority=("stomach",))
    with pytest.raises(ConfigError, match="slice_thickness"):
        import_uwmadison(tmp_path / "src", tmp_path / "ds", slice_thickness=0)


def test_existing_output_is_refused(tmp_path: Path) -> None:
    make_competition_folder(tmp_path / "src")
    (tmp_path / "ds").mkdir()
    with pytest.raises(OutputExistsError):
        import_uwmadison(tmp_path / "src", tmp_path / "ds")
    import_uwmadison(tmp_path / "src", tmp_path / "ds", overwrite=True)
    assert (tmp_path / "ds" / "dataset.json").is_file()


def _replace_in_csv(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda src: (src / "train/case1/case1_day3/scans/slice_0002_8_7_1.50_1.50.png").unlink(),
            "not consecutive",
        ),
        (
            lambda src: Image.fromarray(np.zeros((7, 8), np.uint8)).save(
                src / "train/case1/case1_day3/scans/slice_0002_8_7_1.50_1.50.png"
            ),
            r"slice_0002_8_7_1\.50_1\.50\.png: bit depth differs within case1_day3; expected 16-bit",
        ),
        (
            lambda src: (src / "train/case7/case7_day0/scans/slice_0002_6_5_1.25_1.25.png").rename(
                src / "train/case7/case7_day0/scans/slice_0002_5_6_1.25_1.25.png"
            ),
            "slice size or spacing differs",
        ),
        (
            lambda src: _replace_in_csv(
                src / "train.csv", "case7_day0_slice_0002,stomach,", "case7_day0_slice_0002,liver,"
            ),
            "unknown class 'liver'",
        ),
        (
            lambda src: _replace_in_csv(
                src / "train.csv", "case7_day0_slice_0002,stomach,", "case9_day0_slice_0002,stomach,"
            ),
            "case9_day0",
        ),
        (
            lambda src: _replace_in_csv(
                src / "train.csv", "case7_day0_slice_0002,stomach,", "case7_day0_slice_0002,large_bowel,"
            ),
            "duplicate row",
        ),
        (lambda src: (src / "train.csv").write_text("id,klass\n"), "lacks required columns"),
        (
            lambda src: (src / "train/case1/case1_day0/scans/slice_0003_6_5_1.50_1.63.png").write_bytes(
                b"not a png"
            ),
            r"slice_0003_6_5_1\.50_1\.63\.png: (is not a readable image|cannot be read)",
        ),
    ],
)
def test_bad_input_names_the_problem_and_writes_nothing(
    tmp_path: Path, corrupt: object, message: str
) -> None:
    src = tmp_path / "src"
    make_competition_folder(src)
    corrupt(src)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        import_uwmadison(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left behind


def test_bad_rle_names_the_slice_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_competition_folder(src)
    lines = (src / "train.csv").read_text().splitlines()
    lines = [
        "case7_day0_slice_0002,stomach,29 5" if ln.startswith("case7_day0_slice_0002,stomach,") else ln
        for ln in lines
    ]
    (src / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError,
        match=r"slice_0002_6_5_1\.25_1\.25\.png: mask stomach of slice 2 \(train\.csv\): RLE run extends",
    ):
        import_uwmadison(src, tmp_path / "ds")


def test_malformed_rle_names_the_csv_line_and_the_csv_given(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_competition_folder(src)
    lines = (src / "train.csv").read_text().splitlines()
    bad = next(i for i, ln in enumerate(lines) if ln.startswith("case7_day0_slice_0002,stomach,"))
    lines[bad] = "case7_day0_slice_0002,stomach,0 5"  # a 0-based start
    filtered = src / "train_filtered.csv"
    filtered.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")  # with a BOM, as Excel saves
    with pytest.raises(
        InputError,
        match=rf"train_filtered\.csv: line {bad + 1} \(case7_day0_slice_0002 stomach\): RLE starts and lengths must be >= 1",
    ):
        import_uwmadison(src, tmp_path / "ds", csv_path=filtered)
    # Without the bad row the same BOM-prefixed file imports, and errors name it, not train.csv.
    lines = [ln for ln in lines if not ln.startswith("case7_day0_slice_0002,")]
    filtered.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"1 slices of case7_day0 have no rows in train_filtered\.csv"):
        import_uwmadison(src, tmp_path / "ds", csv_path=filtered)


def test_image_size_must_match_file_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_competition_folder(src)
    png = src / "train/case7/case7_day0/scans/slice_0001_6_5_1.25_1.25.png"
    Image.fromarray(np.zeros((6, 5), np.uint16)).save(png)  # transposed content
    with pytest.raises(
        InputError, match="image size differs from its file name; expected 5 rows x 6 columns"
    ):
        import_uwmadison(src, tmp_path / "ds")


def test_skip_invalid_leaves_the_broken_scan_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_competition_folder(src)
    (src / "train/case1/case1_day3/scans/slice_0002_8_7_1.50_1.50.png").unlink()
    result = import_uwmadison(src, tmp_path / "ds", skip_invalid=True)
    assert sorted(r.case_day for r in result.scans) == ["case1_day0", "case7_day0"]
    desc = read_descriptor(tmp_path / "ds")
    assert desc.num_training == 2
    assert "not consecutive" in json.dumps(desc.extra)


def test_labels_to_rows_checks_its_input() -> None:
    with pytest.raises(InputError, match="case/day id"):
        labels_to_rows(np.zeros((1, 2, 2)), "case1")
    with pytest.raises(InputError, match="3D"):
        labels_to_rows(np.zeros((2, 2)), "case1_day0")
    rows = labels_to_rows(np.array([[[1, 0], [0, 3]]]), "case4_day2", first_slice=61)
    assert rows == [
        ("case4_day2_slice_0061", "large_bowel", "4 1"),
        ("case4_day2_slice_0061", "small_bowel", ""),
        ("case4_day2_slice_0061", "stomach", "1 1"),
    ]


def test_cli_import(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from typer.testing import CliRunner

    from medseg.cli import app

    make_competition_folder(tmp_path / "src", overlap=True)
    runner = CliRunner()
    caplog.set_level(logging.INFO, logger="medseg")
    res = runner.invoke(
        app, ["dataset", "import", "uwmadison", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "-q"]
    )
    assert res.exit_code == 0, res.output
    # -q: the final lines only, not the per-scan log lines (nor the summary's log line twice)
    assert [r.getMessage() for r in caplog.records if r.levelno < logging.WARNING] == []
    res = runner.invoke(
        app, ["dataset", "import", "uwmadison", str(tmp_path / "src"), "--out", str(tmp_path / "loud")]
    )
    assert res.exit_code == 0 and any("overlap" in r.getMessage() for r in caplog.records)
    # ... the per-scan lines; the summary only once, printed, not also as a log line above it
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert res.output.count("imported 3 scans of 2 cases") == 1
    assert not [m for m in logged if m.startswith("imported")]
    assert "imported 3 scans of 2 cases" in res.output
    assert "resolved by priority stomach > large_bowel > small_bowel" in res.output
    assert read_descriptor(tmp_path / "ds").num_training == 3
    res = runner.invoke(
        app, ["dataset", "import", "uwmadison", str(tmp_path / "src"), "--out", str(tmp_path / "ds")]
    )
    assert res.exit_code == 2 and "output exists" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        app,
        [
            "dataset",
            "import",
            "uwmadison",
            str(tmp_path / "src"),
            "-o",
            str(tmp_path / "x"),
            "--overlap-priority",
            "stomach",
        ],
    )
    assert res.exit_code == 2 and "overlap_priority" in res.output


def test_keep_overlaps_declares_regions_and_loses_no_mask(tmp_path: Path) -> None:
    from medseg.data.adapters.uwmadison import REGION_LABELS, class_regions

    truth = make_competition_folder(tmp_path / "src", overlap=True)
    stomach = truth["case1_day0"][1][1] == LABELS["stomach"]
    result = import_uwmadison(tmp_path / "src", tmp_path / "ds", overlaps="regions")
    assert result.overlap_pixels == int(stomach.sum()) > 0
    desc = read_descriptor(tmp_path / "ds")
    assert desc.labels == REGION_LABELS
    # lowest priority first, so the default priority's stomach is painted last (it wins)
    assert desc.regions == {"small_bowel": (2, 4, 5, 7), "large_bowel": (3, 4, 6, 7), "stomach": (1, 5, 6, 7)}
    assert desc.regions_class_order == (2, 3, 1)
    label = read_itk(tmp_path / "ds" / "labelsTr" / "case1_day0.nii.gz").array
    assert np.all(label[1][stomach] == REGION_LABELS["small_bowel+stomach"])
    # the region label maps give back train.csv exactly, the overlapping masks included
    rows = []
    for case_day in ("case1_day0", "case1_day3", "case7_day0"):
        vol = read_itk(tmp_path / "ds" / "labelsTr" / f"{case_day}.nii.gz")
        rows += labels_to_rows(vol, case_day, regions=desc.regions)
    assert rows == _csv_rows(tmp_path / "src" / "train.csv")
    assert json.loads((tmp_path / "ds" / "uwmadison.json").read_text())["overlaps"] == "regions"
    # the default import is unchanged: no regions, the priority's label map
    import_uwmadison(tmp_path / "src", tmp_path / "plain")
    assert read_descriptor(tmp_path / "plain").regions == {}
    regions, order = class_regions(("small_bowel", "stomach", "large_bowel"))
    assert list(regions) == ["large_bowel", "stomach", "small_bowel"] and order == [3, 1, 2]
    with pytest.raises(ConfigError, match="overlaps must be"):
        import_uwmadison(tmp_path / "src", tmp_path / "x", overlaps="union")  # type: ignore[arg-type]
