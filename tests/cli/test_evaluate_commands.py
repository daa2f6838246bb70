"""`medseg evaluate` and `medseg baseline` through the Typer app."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io import read_volume, write_volume
from medseg.volume import Volume
from tests.conftest import make_oblique_volume

runner = CliRunner()


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    base = make_oblique_volume()
    ref = np.zeros(base.shape, dtype=np.uint8)
    ref[3:9, 5:15, 4:12] = 1
    ref[5:7, 8:12, 6:9] = 2
    pred = np.roll(ref, 1, axis=2)
    pdir, rdir = tmp_path / "pred", tmp_path / "ref"
    for name in ("a", "b"):
        write_volume(base.with_array(pred), pdir / f"{name}.nii.gz")
        write_volume(base.with_array(ref), rdir / f"{name}.nii.gz")
    return pdir, rdir


def test_evaluate_prints_a_table_and_writes_the_report(tmp_path: Path) -> None:
    pdir, rdir = _pair(tmp_path)
    out = tmp_path / "eval"
    args = ["evaluate", str(pdir), str(rdir), "--labels", "body=1,core=2", "--metrics", "dice,hd95,miou"]
    res = runner.invoke(app, [*args, "-o", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "body" in res.output and "core" in res.output and f"wrote {out}" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and set(summary["per_class"]) == {"body", "core"}
    # core: 2 x 4 x 3 voxels shifted by one column, so 2 x 4 x 2 overlap: Dice 32 / 48
    assert summary["per_class"]["core"]["dice"]["mean"] == pytest.approx(2 / 3)
    ref, pred = (read_volume(d / "a.nii.gz").array == 1 for d in (rdir, pdir))
    body = 2 * np.sum(ref & pred) / (np.sum(ref) + np.sum(pred))
    assert summary["per_class"]["body"]["dice"]["mean"] == pytest.approx(body) and 0.5 < body < 0.95
    table = (out / "cases.csv").read_text()
    assert table.count("\n") >= 3 and "a" in table and "b" in table
    assert "<html" in (out / "report.html").read_text().lower()
    assert (out / "plots" / "dice.png").is_file()
    again = runner.invoke(app, [*args, "-o", str(out), "--workers", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "-o", str(out), "--overwrite", "--workers", "1"]).exit_code == 0
    printed_only = runner.invoke(app, [*args, "--workers", "1"])
    assert printed_only.exit_code == 0 and "nothing written: -o DIR" in printed_only.output


def test_evaluate_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    pdir, rdir = _pair(tmp_path)
    (pdir / "b.nii.gz").unlink()
    res = runner.invoke(app, ["evaluate", str(pdir), str(rdir), "--workers", "1"])
    assert res.exit_code == 2 and "have no prediction" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["evaluate", str(pdir), str(rdir), "--allow-missing", "--workers", "1"])
    assert res.exit_code == 0 and "missing predictions (scored empty): b" in res.output
    res = runner.invoke(app, ["evaluate", str(pdir), str(rdir), "--metrics", "dice,volume"])
    assert res.exit_code == 2 and "unknown metric 'volume'" in res.output
    res = runner.invoke(app, ["evaluate", str(pdir), str(rdir), "--empty", "zero"])
    assert res.exit_code == 2 and "--empty" in res.output
    for out in (pdir, tmp_path):  # --overwrite would delete the predictions
        res = runner.invoke(app, ["evaluate", str(pdir), str(rdir), "-o", str(out), "--overwrite"])
        assert res.exit_code == 2 and "would replace the input" in res.output
    assert sorted(p.name for p in pdir.iterdir()) == ["a.nii.gz"]


def _blob_image(tmp_path: Path) -> Path:
    base = make_oblique_volume(shape=(10, 20, 24))
    rng = np.random.default_rng(0)
    arr = 10 + rng.normal(0, 1.0, base.shape)
    arr[2:8, 3:10, 3:10] = 100 + rng.uniform(-2, 2, (6, 7, 7))
    return write_volume(base.with_array(arr.astype(np.float32)), tmp_path / "img.nii.gz")


@pytest.mark.parametrize(
    ("method", "params", "foreground"),
    [
        ("threshold", ["--threshold", "50"], 294),
        ("otsu", [], 294),
        ("kmeans", ["--classes", "2"], 294),
        ("region-grow", ["--seed", "5 6 6", "--grow", "connected", "--multiplier", "3"], 294),
        ("watershed", ["--seed", "5,6,6", "--lower", "50", "--sigma", "0.5"], None),
    ],
)
def test_baseline_methods(tmp_path: Path, method: str, params: list[str], foreground: int | None) -> None:
    img = _blob_image(tmp_path)
    out = tmp_path / f"{method}.nii.gz"
    res = runner.invoke(app, ["baseline", method, str(img), "-o", str(out), *params])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and f"method={method}" in res.output
    record = json.loads((tmp_path / f"{method}.baseline.json").read_text())  # how it was made
    assert record["method"] == method and record["output"] == out.name
    assert str(tmp_path) not in json.dumps(record)  # no input path
    if method == "region-grow":
        assert record["grow"] == "connected" and record["lower"] < 100 < record["upper"]  # bounds used
    label = read_volume(out)
    assert label.geometry.is_close(read_volume(img).geometry)
    if foreground is not None:
        assert int((label.array == 1).sum()) == foreground
    else:
        assert (label.array[4:6, 5:8, 5:8] == 1).all() and label.array[0, 0, 0] == 0


def test_baseline_world_seed(tmp_path: Path) -> None:
    img = _blob_image(tmp_path)
    world = read_volume(img).index_to_world([5, 6, 6])
    out = tmp_path / "rg.nii.gz"
    seed = " ".join(f"{v:.4f}" for v in world)
    res = runner.invoke(
        app, ["baseline", "region-grow", str(img), "-o", str(out), "--seed-world", seed, "--multiplier", "3"]
    )
    assert res.exit_code == 0, res.output
    assert int(read_volume(out).array.sum()) == 294


def test_baseline_seeds_as_separate_numbers(tmp_path: Path) -> None:
    """The form USERS.md shows (`--seed 120 140 12`, unquoted; repeatable; negative world
    coordinates) gives what the quoted form gives."""
    img = _blob_image(tmp_path)
    world = [f"{v:.4f}" for v in read_volume(img).index_to_world([5, 6, 6])]
    assert any(v.startswith("-") for v in world)  # the blob image's origin makes one negative
    for name, seed in (("quoted", ["--seed", "5 6 6"]), ("split", ["--seed", "5", "6", "6"])):
        res = runner.invoke(
            app, ["baseline", "region-grow", str(img), *seed, "-o", str(tmp_path / f"{name}.nii.gz")]
        )
        assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        ["baseline", "region-grow", str(img), "--seed-world", *world, "--seed", "5", "6", "7",
         "--multiplier", "3", "-o", str(tmp_path / "world.nii.gz")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    quoted, split = (read_volume(tmp_path / f"{n}.nii.gz").array for n in ("quoted", "split"))
    np.testing.assert_array_equal(quoted, split)
    assert int(read_volume(tmp_path / "world.nii.gz").array.sum()) == 294
    # a fourth number, or only one: named by the seed's parser (not left over as an argument)
    for seed in (["5", "6", "6", "4"], ["5"]):
        argv = ["baseline", "region-grow", str(img), "-o", str(tmp_path / "o.nii.gz"), "--seed", *seed]
        res = runner.invoke(app, argv)
        assert res.exit_code == 2 and f"found '{' '.join(seed)}'" in res.output, res.output


def test_an_argument_starting_with_a_digit_after_the_seed_is_no_seed_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--seed 5 6 6 3d/scan.nii.gz`: the path is the IMAGE argument, not a fourth number (it was
    joined to the seed, and Click then said only 'Missing argument image')."""
    img = _blob_image(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2_scan.nii.gz").write_bytes(img.read_bytes())
    res = runner.invoke(
        app, ["baseline", "region-grow", "--seed", "5", "6", "6", "2_scan.nii.gz", "-o", "1.nii.gz"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["baseline", "region-grow", "--seed", "5", "6", "6", "3d/scan.nii.gz", "-o", "o.nii.gz"]
    )
    assert res.exit_code == 2 and "3d/scan.nii.gz: does not exist" in res.output, res.output
    argv = [
        "baseline",
        "region-grow",
        "2_scan.nii.gz",
        "-o",
        "o.nii.gz",
        "--seed",
        "5",
        "6",
        "6",
        "2_out.nii.gz",
    ]
    res = runner.invoke(app, argv)
    assert res.exit_code == 2 and "unexpected extra argument(s) (2_out.nii.gz)" in res.output, res.output
    # a mistyped number is still named as one
    argv = ["baseline", "region-grow", "2_scan.nii.gz", "-o", "o.nii.gz", "--seed", "5", "6x", "6"]
    res = runner.invoke(app, argv)
    assert res.exit_code == 2 and "found '5 6x 6'" in res.output, res.output


def test_baseline_errors(tmp_path: Path) -> None:
    img = _blob_image(tmp_path)
    out = tmp_path / "o.nii.gz"
    res = runner.invoke(app, ["baseline", "region-grow", str(img), "-o", str(out), "--seed", "10 0 0"])
    assert res.exit_code == 2 and f"{img}: seed (z, y, x) = (10, 0, 0) lies outside the image" in res.output
    res = runner.invoke(app, ["baseline", "watershed", str(img), "-o", str(out), "--seed-world", "0 0 1e4"])
    assert res.exit_code == 2 and f"{img}: world seed (x, y, z)" in res.output, res.output
    res = runner.invoke(app, ["baseline", "region-grow", str(img), "-o", str(out), "--seed", "1 2"])
    assert res.exit_code == 2 and "three numbers" in res.output
    res = runner.invoke(app, ["baseline", "snake", str(img), "-o", str(out)])
    assert res.exit_code == 2 and "unknown baseline 'snake'" in res.output
    res = runner.invoke(app, ["baseline", "threshold", str(img), "-o", str(out)])
    low, high = (float(f(read_volume(img).array)) for f in (np.min, np.max))
    assert res.exit_code == 2 and "--threshold T (keeps values >= T), --upper U" in res.output, res.output
    assert f"holds values {low:.6g} .. {high:.6g}" in res.output
    write_volume(Volume(np.zeros((2, 2, 2), dtype=np.uint8)), out)
    res = runner.invoke(app, ["baseline", "otsu", str(img), "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert not out.with_name("missing.nii.gz").exists()


def test_baseline_label_keep_class_and_options_that_do_not_apply(tmp_path: Path) -> None:
    """A lecturer scores one organ of a multi-organ reference: the result takes its label value;
    the dark class of otsu/kmeans can be kept; options a method ignores are refused."""
    img = _blob_image(tmp_path)
    out = tmp_path / "o.nii.gz"
    res = runner.invoke(
        app, ["baseline", "threshold", str(img), "-o", str(out), "--threshold", "50", "--label", "4"]
    )
    assert res.exit_code == 0, res.output
    assert (
        sorted(np.unique(read_volume(out).array).tolist()) == [0, 4]
        and int((read_volume(out).array == 4).sum()) == 294
    )
    res = runner.invoke(
        app,
        ["baseline", "otsu", str(img), "-o", str(out), "--keep-class", "0", "--label", "2", "--overwrite"],
    )
    assert res.exit_code == 0, res.output
    arr = read_volume(out).array
    assert int((arr == 2).sum()) == arr.size - 294 and arr[4, 5, 5] == 0  # the dark background kept
    for args, message in (
        (
            ["threshold", "--lower", "40"],
            "--lower does not apply to threshold (its lower bound is --threshold)",
        ),
        (["otsu", "--seed", "1 2 3"], "--seed does not apply to otsu"),
        (["kmeans", "--classes", "0"], "--classes must be at least 2"),
        (["kmeans", "--label", "3"], "pick one class with --keep-class"),
        (["otsu", "--keep-class", "5"], "--keep-class 5 is not among the result's classes [0, 1]"),
    ):
        res = runner.invoke(app, ["baseline", args[0], str(img), "-o", str(tmp_path / "x.nii.gz"), *args[1:]])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    res = runner.invoke(
        app, ["baseline", "threshold", str(img), "-o", str(tmp_path / "e.nii.gz"), "--threshold", "1e6"]
    )
    assert res.exit_code == 0 and "the result is empty" in res.output


def test_baseline_on_a_png_takes_a_spacing_and_a_2d_seed(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.full((30, 40), 20, np.uint8)
    pixels[10:20, 12:30] = 200
    Image.fromarray(pixels).save(tmp_path / "em.png")
    out = tmp_path / "rg.nii.gz"
    res = runner.invoke(
        app,
        ["baseline", "region-grow", str(tmp_path / "em.png"), "-o", str(out), "--seed", "15 20",
         "--grow", "connected", "--lower", "100", "--upper", "255", "--spacing", "1", "0.004", "0.004"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    label = read_volume(out)
    assert int(label.array.sum()) == 180 and label.spacing == pytest.approx((1.0, 0.004, 0.004))


@pytest.mark.parametrize(
    ("method", "extra", "expected"),
    [
        ("kmeans", [], 50),
        ("kmeans", ["--iterations", "7"], 7),
        ("region-grow", [], 1),  # the library default (benchmarks/region_grow_sweep.py)
        ("region-grow", ["--iterations", "2"], 2),
    ],
)
def test_baseline_iterations_reach_the_method_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, extra: list[str], expected: int
) -> None:
    from medseg import classical

    seen: dict[str, object] = {}
    real = classical.kmeans if method == "kmeans" else classical.region_grow

    def spy(*args: object, **kwargs: object) -> Volume:
        seen.update(kwargs)
        return real(*args, **kwargs)  # type: ignore[operator]

    monkeypatch.setattr(classical, "kmeans" if method == "kmeans" else "region_grow", spy)
    img = _blob_image(tmp_path)
    seed = ["--seed", "5 6 6"] if method == "region-grow" else []
    res = runner.invoke(app, ["baseline", method, str(img), "-o", str(tmp_path / "o.nii.gz"), *seed, *extra])
    assert res.exit_code == 0, res.output
    assert seen["iterations"] == expected


def test_evaluate_object_metrics_and_separator_by_name(tmp_path: Path) -> None:
    pdir, rdir = _pair(tmp_path)
    out = tmp_path / "eval"
    args = ["evaluate", str(pdir), str(rdir), "--labels", "body=1,core=2", "--workers", "1"]
    res = runner.invoke(app, [*args, "--metrics", "dice,objects,are", "--separator", "core", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "recall" in res.output and "precision" in res.output and " are ┃" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["separators"] == [2]
    # body: one block shifted by a column, found on both sides; core as a separator encloses
    # one region (everything else) in each map, and they match.
    assert summary["per_class"]["body"]["obj_f1"]["mean"] == 1.0
    assert summary["per_class"]["core"]["obj_recall"]["mean"] == 1.0
    assert summary["per_class"]["core"]["are"]["mean"] == pytest.approx(0.0, abs=1e-3)
    assert summary["per_class"]["body"]["are"]["n_nan"] == 2  # not a separator class
    assert "body: 2 of 2 reference objects found, 0 of 2 predicted objects unmatched" in res.output
    assert "objects.csv" in res.output and (out / "objects.csv").is_file()
    page = (out / "report.html").read_text()
    assert "objects.csv" in page and "for core, the regions between them" in page
    header = (out / "cases.csv").read_text().splitlines()[0]
    assert "ref_objects/body" in header and "pred_objects/core" in header
    assert (out / "plots" / "obj_f1.png").is_file()
    res = runner.invoke(app, [*args, "--metrics", "are"])
    assert res.exit_code == 2 and "--separator" in res.output
    res = runner.invoke(app, [*args, "--separator", "membrane"])
    assert res.exit_code == 2 and "neither a label value nor a class name" in res.output
    res = runner.invoke(app, [*args, "--metrics", "objects", "--object-iou", "1.5"])
    assert res.exit_code == 2 and "IoU" in res.output


def test_class_names_come_from_the_dataset_json_beside_the_references(tmp_path: Path) -> None:
    base = make_oblique_volume(shape=(2, 24, 24))
    ref = np.zeros(base.shape, dtype=np.uint8)
    ref[:, 11, :] = ref[:, :, 11] = 1  # membranes: four cells
    pred = ref.copy()
    pred[:, 11, :5] = 0  # a gap: two cells merge
    ds = tmp_path / "em"
    write_volume(base.with_array(ref), ds / "labelsTs" / "a.nii.gz")
    write_volume(base.with_array(pred), tmp_path / "pred" / "a.nii.gz")
    descriptor = {
        "channel_names": {"0": "EM"},
        "labels": {"background": 0, "membrane": 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(descriptor))
    out = tmp_path / "eval"
    args = ["evaluate", str(tmp_path / "pred"), str(ds / "labelsTs"), "--workers", "1", "-o", str(out)]
    res = runner.invoke(app, [*args, "--metrics", "dice,objects,are", "--separator", "membrane"])
    assert res.exit_code == 0, res.output
    assert "class names from" in res.output and "membrane: 3 of 4 reference objects found" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_class"]) == {"membrane"} and summary["per_class"]["membrane"]["are"]["mean"] > 0
    res = runner.invoke(app, [*args[:-2], "--metrics", "objects", "--separator", "7"])
    assert res.exit_code == 2 and "separator label(s) [7] found in no reference" in res.output
    res = runner.invoke(app, [*args[:-2], "--metrics", "objects", "--separator", "1", "--object-iou", "0"])
    assert res.exit_code == 2 and "tile the image" in res.output


def test_watershed_smooths_one_voxel_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default sigma follows the grid (1 mm on 1 mm MR, 4 nm on EM), not a fixed 1 mm."""
    from PIL import Image

    from medseg import classical

    seen: dict[str, object] = {}
    real = classical.watershed

    def spy(*args: object, **kwargs: object) -> Volume:
        seen.update(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(classical, "watershed", spy)
    pixels = np.full((30, 40), 20, np.uint8)
    pixels[10:20, 12:30] = 200
    Image.fromarray(pixels).save(tmp_path / "em.png")
    res = runner.invoke(
        app,
        ["baseline", "watershed", str(tmp_path / "em.png"), "-o", str(tmp_path / "w.nii.gz"), "--seed", "15 20",
         "--lower", "100", "--spacing", "1", "0.004", "0.004"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["sigma_mm"] == pytest.approx(0.004)


def test_evaluate_several_methods_in_one_table(tmp_path: Path) -> None:
    pdir, rdir = _pair(tmp_path)
    base = read_volume(rdir / "a.nii.gz")
    good = tmp_path / "runs" / "unet"
    for name in ("a", "b"):
        write_volume(base, good / f"{name}.nii.gz")  # perfect prediction
    out = tmp_path / "cmp"
    args = ["evaluate", str(pdir), f"U-Net={good}", str(rdir), "--labels", "body=1,core=2"]
    res = runner.invoke(app, [*args, "--metrics", "dice,hd95", "-o", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "2 methods" in res.output and "p vs pred (Dice)" in res.output and "Holm p" in res.output
    lines = [line for line in res.output.splitlines() if "U-Net" in line and "1.000 ± 0" in line]
    assert len(lines) == 2  # one row per class for the perfect method
    assert "pred: 2 of 2 cases scored" in res.output and "U-Net: 2 of 2 cases scored" in res.output
    assert "only 2 non-zero difference(s)" in res.output
    rows = (out / "cases.csv").read_text().splitlines()
    assert rows[0].startswith("method,case,") and len(rows) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert all("p_holm" in t for t in summary["paired_tests"])
    assert summary["per_method"]["U-Net"]["per_class"]["core"]["dice"]["mean"] == pytest.approx(1.0)
    assert summary["per_method"]["pred"]["per_class"]["core"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png"]
    assert "2 overlays" in res.output
    # Nothing missing: no missing-cases caption, and no Python wording in any case.
    assert "--allow-missing" not in res.output and "on_missing" not in res.output
    # Without Dice among the metrics the paired test is still there (Dice from voxel counts).
    res = runner.invoke(app, [*args, "--metrics", "iou", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "p vs pred (Dice)" in res.output and "only 2 non-zero difference(s)" in res.output


def test_evaluate_help_paragraphs_are_not_broken_by_hand() -> None:
    res = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    # One paragraph, one line at 200 columns: the docstring's line breaks are not kept.
    line = next(x for x in res.output.splitlines() if "Several predictions before the reference" in x)
    assert "a Wilcoxon signed-rank test of each method's Dice" in line
    assert "whatever --metrics asks for" in text


def test_evaluate_several_methods_errors(tmp_path: Path) -> None:
    pdir, rdir = _pair(tmp_path)
    other = tmp_path / "other" / "pred"
    other.mkdir(parents=True)
    write_volume(read_volume(pdir / "a.nii.gz"), other / "a.nii.gz")
    res = runner.invoke(app, ["evaluate", str(pdir), str(other), str(rdir), "--workers", "1"])
    assert res.exit_code == 2 and "two methods named 'pred'" in res.output and "NAME=PATH" in res.output
    res = runner.invoke(app, ["evaluate", str(pdir), f"o={other}", str(rdir), "--workers", "1"])
    assert res.exit_code == 2 and "have no prediction" in res.output and "missing b" in res.output
    res = runner.invoke(
        app, ["evaluate", str(pdir), f"o={other}", str(rdir), "--allow-missing", "--workers", "1"]
    )
    assert res.exit_code == 0 and "missing predictions (scored empty, a failure): b" in res.output
    caption = " ".join(res.output.split())  # the caption wraps at the table's width
    assert "scored as empty predictions, a failure of that method (--allow-missing)" in caption
    assert "on_missing" not in res.output
    res = runner.invoke(app, ["evaluate", str(rdir)])
    assert res.exit_code == 2 and "Missing argument" in res.output


def test_evaluate_image_for_the_overlays(tmp_path: Path) -> None:
    pdir, rdir = _pair(tmp_path)
    images = tmp_path / "images"
    write_volume(make_oblique_volume(), images / "a_0000.nii.gz")
    out = tmp_path / "eval"
    base = ["evaluate", str(pdir), str(rdir), "--metrics", "dice", "--workers", "1"]
    res = runner.invoke(app, [*base, "--image", str(images)])
    assert res.exit_code == 2 and "give -o/--output too" in res.output
    res = runner.invoke(app, [*base, "--image", str(images), "-o", str(out)])
    assert res.exit_code == 2 and "1 case(s) have no image" in res.output and "missing b" in res.output
    assert not out.exists()
    write_volume(make_oblique_volume(), images / "b_0000.nii.gz")
    res = runner.invoke(app, [*base, "--image", str(images), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "over the image" in (out / "report.html").read_text()
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png"]


def test_evaluate_scores_the_regions_of_the_references_dataset_json(tmp_path: Path) -> None:
    base = make_oblique_volume()
    ref = np.zeros(base.shape, dtype=np.uint8)
    ref[3:9, 5:15, 4:8] = 1
    ref[3:9, 5:15, 8:10] = 3  # the overlap of the two structures
    ref[3:9, 5:15, 10:13] = 2
    pred = np.where(ref == 3, 2, ref).astype(np.uint8)  # painted: the overlap shows as 2
    root = tmp_path / "ds"
    write_volume(base.with_array(ref), root / "labelsTs" / "a.nii.gz")
    write_volume(base.with_array(pred), tmp_path / "pred" / "a.nii.gz")
    desc = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "large": 1, "small": 2, "both": 3},
        "regions": {"large_bowel": [1, 3], "small_bowel": [2, 3]},
        "regions_class_order": [1, 2],
        "numTraining": 0,
    }
    (root / "dataset.json").write_text(json.dumps(desc))
    out = tmp_path / "eval"
    args = ["evaluate", str(tmp_path / "pred"), str(root / "labelsTs"), "--metrics", "dice", "--workers", "1"]
    res = runner.invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "region large_bowel" in res.output
    summary = json.loads((out / "summary.json").read_text())
    # large bowel: reference 4 + 2 columns, prediction 4 columns -> 2 * 4 / (6 + 4)
    assert summary["per_region"]["large_bowel"]["dice"]["mean"] == pytest.approx(0.8)
    assert summary["per_region"]["small_bowel"]["dice"]["mean"] == pytest.approx(1.0)
    assert "region_dice/small_bowel" in (out / "cases.csv").read_text()


def test_regions_are_given_on_the_command_line_or_by_a_dataset_json(tmp_path: Path) -> None:
    """References outside a dataset (no labelsTr/ above them): --regions names the regions."""
    base = make_oblique_volume(shape=(1, 1, 6))
    ref = np.array([1, 1, 3, 2, 2, 0], np.uint8).reshape(base.shape)
    pred = np.array([1, 3, 3, 2, 0, 0], np.uint8).reshape(base.shape)
    write_volume(base.with_array(ref), tmp_path / "ref" / "a.nii.gz")
    write_volume(base.with_array(pred), tmp_path / "pred" / "a.nii.gz")
    # large = {1, 3}: ref voxels 0,1,2 / pred 0,1,2 -> Dice 1; small = {2, 3}: ref 2,3,4 / pred 1,2,3 -> 2/3
    runner = CliRunner()
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--metrics", "dice"]
    for i, spec in enumerate(["large=1+3,small=2+3", str(tmp_path / "ds" / "dataset.json")]):
        if i == 1:
            (tmp_path / "ds").mkdir()
            (tmp_path / "ds" / "dataset.json").write_text(
                json.dumps(
                    {
                        "channel_names": {"0": "MR"},
                        "labels": {"background": 0, "large_only": 1, "small_only": 2, "both": 3},
                        "regions": {"large": [1, 3], "small": [2, 3]},
                        "numTraining": 0,
                        "file_ending": ".nii.gz",
                    }
                )
            )
        out = tmp_path / f"out{i}"
        res = runner.invoke(app, [*args, "--regions", spec, "-o", str(out)])
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["per_region"]["large"]["dice"]["mean"] == pytest.approx(1.0)
        assert summary["per_region"]["small"]["dice"]["mean"] == pytest.approx(2 / 3)
    res = runner.invoke(app, [*args, "--regions", "large=1+x"])
    assert res.exit_code == 2 and "--regions: cannot read 'large=1+x'" in res.output


def test_a_region_value_no_label_has_is_refused_naming_it_and_the_values_there_are(tmp_path: Path) -> None:
    """'large=1+5' where the labels are 1..3: value 5 would silently score as nothing."""
    base = make_oblique_volume(shape=(1, 1, 6))
    ref = np.array([1, 1, 3, 2, 2, 0], np.uint8).reshape(base.shape)
    write_volume(base.with_array(ref), tmp_path / "ref" / "a.nii.gz")
    write_volume(base.with_array(ref), tmp_path / "pred" / "a.nii.gz")
    runner = CliRunner()
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--metrics", "dice"]
    # values found in the references
    res = runner.invoke(app, [*args, "--regions", "large=1+5,small=2+3"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "region 'large' holds label value(s) [5] that no label has" in text
    assert "found in the references: [1, 2, 3]" in text
    # values declared with --labels
    res = runner.invoke(app, [*args, "--labels", "1,2,3", "--regions", "large=1+3,small=2+4"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "region 'small' holds label value(s) [4]" in text and "declared with --labels: [1, 2, 3]" in text
    # values declared by the dataset.json above labelsTr/
    root = tmp_path / "ds"
    write_volume(base.with_array(ref), root / "labelsTr" / "a.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MR"},
                "labels": {"background": 0, "large_only": 1, "small_only": 2, "both": 3, "rare": 4},
                "numTraining": 0,
                "file_ending": ".nii.gz",
            }
        )
    )
    dataset_args = ["evaluate", str(tmp_path / "pred"), str(root / "labelsTr"), "--metrics", "dice"]
    res = runner.invoke(app, [*dataset_args, "--regions", "large=1+3,small=2+7"])
    assert res.exit_code == 2, res.output
    assert "declared by the dataset: [1, 2, 3, 4]" in " ".join(res.output.split())
    # a declared value these references do not hold is accepted (a region empty on both sides)
    res = runner.invoke(app, [*dataset_args, "--regions", "large=1+3,rare=4"])
    assert res.exit_code == 0, res.output
    # so is a dataset.json's region whose values no reference holds, given with --regions FILE
    desc = json.loads((root / "dataset.json").read_text())
    desc["regions"] = {"large": [1, 3], "small": [2, 3], "rare": [4]}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataset.json").write_text(json.dumps(desc))
    res = runner.invoke(app, [*args, "--regions", str(tmp_path / "other" / "dataset.json")])
    assert res.exit_code == 0, res.output


def test_evaluate_one_organ_of_a_multi_organ_reference(tmp_path: Path) -> None:
    """The lecturer's `baseline ... --label 2` scored against a reference holding 1 and 2."""
    pdir, rdir = _pair(tmp_path)
    pred = read_volume(pdir / "a.nii.gz")
    organ = tmp_path / "organ.nii.gz"
    write_volume(pred.with_array(np.where(pred.array == 2, 2, 0).astype(np.uint8)), organ)
    args = ["evaluate", str(organ), str(rdir / "a.nii.gz"), "--labels", "core=2", "--metrics", "dice"]
    res = runner.invoke(app, args)
    assert (
        res.exit_code == 2 and "reference holds [1]" in res.output and "--ignore-other-labels" in res.output
    )
    res = runner.invoke(app, [*args, "--ignore-other-labels", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader((tmp_path / "out" / "cases.csv").open()))
    ref = read_volume(rdir / "a.nii.gz").array
    expected = 2 * np.sum((pred.array == 2) & (ref == 2)) / (np.sum(pred.array == 2) + np.sum(ref == 2))
    assert float(row["dice/core"]) == pytest.approx(expected)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["options"]["ignore_other_labels"] is True  # how the table was made
    res = runner.invoke(app, ["evaluate", str(organ), str(rdir / "a.nii.gz"), "--ignore-other-labels"])
    assert res.exit_code == 2 and "give --labels too" in res.output


def test_a_region_grown_over_half_the_image_is_flagged_as_a_leak(tmp_path: Path) -> None:
    """Grown from a background seed, the region fills the 94% of the image around the blob:
    a leak the lecturer must hear about (the warning used to start at 95%)."""
    img = _blob_image(tmp_path)
    out = tmp_path / "leak.nii.gz"
    argv = ["baseline", "region-grow", str(img), "-o", str(out), "--grow", "connected", "--overwrite"]
    res = runner.invoke(app, [*argv, "--seed", "0 15 20", "--lower", "0", "--upper", "50"])
    assert res.exit_code == 0, res.output
    fraction = np.count_nonzero(read_volume(out).array) / read_volume(out).array.size
    assert 0.9 < fraction < 0.95
    assert f"covers {fraction:.0%} of the image" in res.output and "smaller --multiplier" in res.output
    res = runner.invoke(app, [*argv, "--seed", "5 6 6", "--lower", "50", "--upper", "200"])
    assert res.exit_code == 0 and "covers" not in res.output, res.output  # the blob alone: no warning


def test_one_image_three_methods_says_the_paired_test_note_once(tmp_path: Path) -> None:
    """The lecturer's one image: every method x class test has the same note; it is said
    once instead of once per test (4 times here, for 2 methods x 2 classes)."""
    _, rdir = _pair(tmp_path)
    ref = read_volume(rdir / "a.nii.gz")
    paths = []
    for shift in (1, 2, 3):
        paths.append(
            write_volume(ref.with_array(np.roll(ref.array, shift, axis=2)), tmp_path / f"m{shift}.nii.gz")
        )
    res = runner.invoke(app, ["evaluate", *map(str, paths), str(rdir / "a.nii.gz"), "--metrics", "dice"])
    assert res.exit_code == 0, res.output
    note = "only 1 non-zero difference(s): p cannot fall below 0.05"
    assert res.output.count(note) == 1 and "paired test, every method and class: " + note in res.output


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_output_that_is_a_file_is_refused_before_scoring(tmp_path: Path, overwrite: list[str]) -> None:
    """With --overwrite the report folder replaced the file (e.g. a scan given as -o by mistake)."""
    pdir, rdir = _pair(tmp_path)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not to be lost")
    res = runner.invoke(
        app, ["evaluate", str(pdir), str(rdir), "-o", str(scan), "--workers", "1", *overwrite]
    )
    assert res.exit_code == 2, res.output
    assert "scan.nii.gz: is a file, not an output folder" in res.output
    assert "Dice" not in res.output  # refused before the work
    assert scan.read_bytes() == b"not to be lost"
