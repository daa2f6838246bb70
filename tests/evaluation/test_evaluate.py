"""evaluate(): matching cases, grid checks, bad input, and the written report."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from medseg.errors import ConfigError, GeometryError, InputError, OutputExistsError
from medseg.evaluation import (
    EvaluationConfig,
    evaluate,
    evaluate_volumes,
    match_cases,
    match_images,
    parse_labels,
    write_report,
)
from medseg.evaluation import metrics as M
from medseg.evaluation.evaluate import case_dice, describe, load_case_volumes
from medseg.evaluation.report import overlay_cases
from medseg.export.codes import segment_color
from medseg.export.overlay import COMPARISON_MARGIN_IN, COMPARISON_PANEL_IN
from medseg.geometry.resample import resample_to_spacing
from medseg.io import write_volume
from medseg.volume import Volume
from tests.conftest import make_oblique_volume

LABELS = {1: "outer", 3: "inner"}


def _case(seed: int) -> tuple[Volume, Volume]:
    """Reference and a perturbed prediction (labels 1 and 3) on an oblique grid."""
    base = make_oblique_volume()
    z, y, x = np.meshgrid(*[np.arange(s) for s in base.shape], indexing="ij")
    rng = np.random.default_rng(seed)
    ref = np.zeros(base.shape, dtype=np.uint8)
    ref[(z - 6) ** 2 / 16 + (y - 10) ** 2 / 36 + (x - 8) ** 2 / 25 < 1] = 1
    ref[(z - 6) ** 2 / 4 + (y - 10) ** 2 / 9 + (x - 6) ** 2 / 4 < 1] = 3
    dy, dx = rng.integers(-2, 3, 2)
    pred = np.roll(ref, (int(dy), int(dx)), axis=(1, 2))
    return base.with_array(pred), base.with_array(ref)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[Volume, Volume]]]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    cases = {f"case_{i:03d}": _case(i) for i in range(3)}
    for name, (pred, ref) in cases.items():
        write_volume(pred, pred_dir / f"{name}.nii.gz")
        write_volume(ref, ref_dir / f"{name}.nrrd")  # matched by name whatever the format
    return pred_dir, ref_dir, cases


def _serial(**kw: object) -> EvaluationConfig:
    return EvaluationConfig(workers=1, **kw)  # type: ignore[arg-type]


def test_folders_are_scored_like_the_metric_functions(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, cases = folders
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS))
    assert [c.name for c in result.cases] == sorted(cases)
    for case in result.cases:
        pred, ref = cases[case.name]
        assert case.status == "ok"
        for lab in LABELS:
            direct = M.class_metrics(pred.array == lab, ref.array == lab, ref.spacing)
            for name in M.CLASS_METRICS:
                a, b = case.per_label[lab][name], direct[name]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)
        cm = M.confusion_matrix(pred.array, ref.array, [0, 1, 3])
        assert case.miou == pytest.approx(M.mean_iou(cm))


def test_labels_default_to_the_values_in_the_references(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, _ = folders
    result = evaluate(pred_dir, ref_dir, _serial(metrics=("dice",)))
    assert result.labels == {1: "1", 3: "3"}


def test_two_files(tmp_path: Path) -> None:
    pred, ref = _case(0)
    p = write_volume(pred, tmp_path / "p.nii.gz")
    r = write_volume(ref, tmp_path / "r.nii.gz")
    result = evaluate(p, r, _serial(labels=LABELS, metrics=("dice", "hd95")))
    assert len(result.cases) == 1 and result.cases[0].name == "r"
    assert result.cases[0].per_label[1]["dice"] == pytest.approx(M.dice(pred.array == 1, ref.array == 1))


def test_report_files(folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, _ = folders
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, metrics=("dice", "hd95", "miou")))
    out = tmp_path / "report"
    files = write_report(result, out)
    rows = list(csv.DictReader(files.cases_csv.open()))
    assert [r["case"] for r in rows] == ["case_000", "case_001", "case_002"]
    assert {"dice/outer", "hd95/inner", "miou", "empty/outer", "flags", "status"} <= set(rows[0])
    summary = json.loads(files.summary_json.read_text())
    dices = [float(r["dice/outer"]) for r in rows]
    stats = summary["per_class"]["outer"]["dice"]
    assert stats["mean"] == pytest.approx(np.mean(dices))
    assert stats["std"] == pytest.approx(np.std(dices, ddof=1))
    assert stats["median"] == pytest.approx(np.median(dices))
    assert summary["case_level"]["miou"]["n"] == 3
    assert sorted(p.name for p in files.plots) == ["dice.png", "hd95.png", "miou.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files.plots)
    page = files.report_html.read_text()
    assert "outer (1)" in page and "data:image/png;base64," in page
    with pytest.raises(OutputExistsError):
        write_report(result, out)
    write_report(result, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_describe_ignores_and_counts_nan() -> None:
    s = describe([1.0, math.nan, 3.0, 2.0])
    assert (s.mean, s.median, s.n, s.n_nan) == (2.0, 2.0, 3, 1)
    assert s.std == pytest.approx(1.0)
    assert describe([math.nan]).as_dict()["mean"] is None


# ----------------------------------------------------------------------------- bad input
def test_missing_prediction_is_an_error_naming_the_case(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, _ = folders
    (pred_dir / "case_001.nii.gz").unlink()
    with pytest.raises(InputError, match="case_001"):
        evaluate(pred_dir, ref_dir, _serial(labels=LABELS))


def test_images_given_as_the_reference_are_named_as_such(folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`medseg evaluate preds/ imagesTs/` said only that the reference cases case_000_0000 ...
    had no prediction; the cause (the images folder given for the labels) was left to find."""
    pred_dir, ref_dir, _ = folders
    images = tmp_path / "imagesTs"
    images.mkdir()
    for path in sorted(ref_dir.glob("*.nrrd")):
        shutil.copy(path, images / path.name.replace(".nrrd", "_0000.nrrd"))
    with pytest.raises(InputError) as exc:
        evaluate(pred_dir, images, _serial(labels=LABELS))
    assert f"{images} holds files named like images (CASE_0000, as in imagesTs/): give the label maps" in str(
        exc.value
    )
    # A prediction genuinely missing says nothing about images.
    (pred_dir / "case_001.nii.gz").unlink()
    with pytest.raises(InputError) as exc:
        evaluate(pred_dir, ref_dir, _serial(labels=LABELS))
    assert "case_001" in str(exc.value) and "named like images" not in str(exc.value)


def test_missing_prediction_can_be_flagged_and_scored_as_empty(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, _ = folders
    (pred_dir / "case_001.nii.gz").unlink()
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, on_missing="flag"))
    row = {r["case"]: r for r in result.rows()}["case_001"]
    assert row["status"] == "missing_prediction"
    assert row["dice/outer"] == 0.0 and math.isnan(row["hd95/outer"])
    assert "hd95/outer:pred" in row["flags"]
    assert result.summary()["missing_predictions"] == ["case_001"]


def test_prediction_without_reference_is_reported(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, cases = folders
    write_volume(cases["case_000"][0], pred_dir / "extra.nii.gz")
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, metrics=("dice",)))
    assert result.summary()["predictions_without_reference"] == ["extra"]


def test_grid_mismatch_names_the_case_and_resample_fixes_it(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, cases = folders
    pred, _ = cases["case_002"]
    coarse = resample_to_spacing(pred, (3.0, 1.4, 1.0), is_label=True)
    write_volume(coarse, pred_dir / "case_002.nii.gz", overwrite=True)
    with pytest.raises(GeometryError, match=r"case 'case_002'.*--resample"):
        evaluate(pred_dir, ref_dir, _serial(labels=LABELS))
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, resample=True))
    case = {c.name: c for c in result.cases}["case_002"]
    assert case.resampled and case.status == "ok"
    assert 0.3 < case.per_label[1]["dice"] <= 1.0
    # Another scan altogether (here: 500 mm away): not resampled into an empty map and scored.
    from medseg.volume import Volume

    far = Volume(pred.array, pred.spacing, np.asarray(pred.origin) + 500.0, pred.direction)
    write_volume(far, pred_dir / "case_002.nii.gz", overwrite=True)
    with pytest.raises(GeometryError, match=r"case 'case_002'.*covers only 0% of the reference"):
        evaluate(pred_dir, ref_dir, _serial(labels=LABELS, resample=True))


def test_nan_in_prediction_is_an_error(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, cases = folders
    pred, _ = cases["case_001"]
    bad = pred.array.astype(np.float32)
    bad[0, 0, 0] = np.nan
    # NRRD keeps NaN; SimpleITK's NIfTI reader turns NaN into 0 (reported to the io owner).
    (pred_dir / "case_001.nii.gz").unlink()
    write_volume(pred.with_array(bad), pred_dir / "case_001.nrrd")
    with pytest.raises(InputError, match=r"case 'case_001'.*NaN"):
        evaluate(pred_dir, ref_dir, _serial(labels=LABELS))
    # --keep-going: the case becomes a failed row, the others are scored.
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, on_case_error="flag"))
    statuses = {c.name: c.status for c in result.cases}
    assert statuses == {"case_000": "ok", "case_001": "error", "case_002": "ok"}
    assert "NaN" in result.summary()["failed_cases"]["case_001"]
    assert len(result.column("dice", 1)) == 2


def test_probabilities_are_rejected() -> None:
    pred, ref = _case(0)
    with pytest.raises(InputError, match="non-integer"):
        evaluate_volumes(pred.with_array(pred.array * 0.5), ref, _serial(labels=LABELS))


def test_undeclared_label_is_an_error(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, cases = folders
    pred, _ = cases["case_000"]
    arr = pred.array.copy()
    arr[0, 0, 0] = 7
    write_volume(pred.with_array(arr), pred_dir / "case_000.nii.gz", overwrite=True)
    with pytest.raises(InputError, match=r"case 'case_000'.*\[7\]"):
        evaluate(pred_dir, ref_dir, _serial(labels=LABELS))
    # Without declared labels, the set is taken from the references: 7 is still caught.
    with pytest.raises(InputError, match=r"case 'case_000'.*\[7\]"):
        evaluate(pred_dir, ref_dir, _serial())


def test_folder_and_file_mixed_or_missing_paths(folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, _ = folders
    with pytest.raises(InputError, match="both be folders or both be files"):
        match_cases(pred_dir, ref_dir / "case_000.nrrd")
    with pytest.raises(InputError, match="does not exist"):
        match_cases(tmp_path / "nope", ref_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no prediction images"):
        match_cases(empty, ref_dir)
    write_volume(_case(0)[0], pred_dir / "case_000.mha")
    with pytest.raises(InputError, match="two prediction files for case 'case_000'"):
        match_cases(pred_dir, ref_dir)


def test_parse_labels_and_config_errors() -> None:
    assert parse_labels("1,2") == {1: "1", 2: "2"}
    assert parse_labels("liver=1, spleen=4") == {1: "liver", 4: "spleen"}
    assert parse_labels(None) is None
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_labels("liver")
    with pytest.raises(ConfigError, match="twice"):
        parse_labels("1,a=1")
    with pytest.raises(ConfigError, match="positive"):
        EvaluationConfig(labels={0: "bg"})
    with pytest.raises(ConfigError, match="unknown metric"):
        EvaluationConfig(metrics=("dice", "volume"))
    with pytest.raises(ConfigError, match="empty-mask rule"):
        EvaluationConfig(empty="zero")  # type: ignore[arg-type]


def test_process_pool_gives_the_serial_result(folders) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, _ = folders
    serial = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, metrics=("dice", "hd95")))
    pooled = evaluate(pred_dir, ref_dir, EvaluationConfig(labels=LABELS, metrics=("dice", "hd95"), workers=2))
    assert serial.rows() == pooled.rows()


def test_real_chaos_float_labels(shared_data: Path, tmp_path: Path) -> None:
    """CHAOS stores labels as float64 (0..4): read, converted, and scored against a shifted copy."""
    from medseg.io import read_volume

    ref_path = shared_data / "chaos_mr_t2spir" / "label_1.nii.gz"
    ref = read_volume(ref_path)
    assert ref.dtype.kind == "f"
    shifted = ref.with_array(np.roll(ref.array, 2, axis=2))  # 2 columns = 2.5 mm
    pred_path = write_volume(shifted, tmp_path / "label_1.nii.gz")
    cfg = _serial(
        labels={1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}, metrics=("dice", "hd")
    )
    result = evaluate(pred_path, ref_path, cfg)
    case = result.cases[0]
    assert case.status == "ok"
    for lab in (1, 2, 3, 4):
        assert 0.7 < case.per_label[lab]["dice"] < 1.0
        assert case.per_label[lab]["hd"] == pytest.approx(2 * 1.25, abs=0.01)  # in mm, not voxels


def _colour_pixels(path: Path, rgb: tuple[int, int, int]) -> np.ndarray:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return np.abs(pixels - np.array(rgb)).max(axis=-1) <= 40


def test_report_overlays_show_reference_and_prediction_apart(folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, cases = folders
    images = tmp_path / "imagesTs"
    for name in cases:
        write_volume(make_oblique_volume(), images / f"{name}_0000.nii.gz")  # nnU-Net channel suffix
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, metrics=("dice",)))
    files = write_report(result, tmp_path / "report", image=images)
    assert [p.name for p in files.overlays] == [f"{c.name}.png" for c in sorted(
        result.cases, key=lambda c: (case_dice(c), c.name))]  # fmt: skip
    for path in files.overlays:
        assert path.is_file() and Image.open(path).size == (
            round(COMPARISON_PANEL_IN * 100),
            round((COMPARISON_PANEL_IN + COMPARISON_MARGIN_IN) * 100),
        )
    # Every case has the same reference (and slice): a prediction equal to it draws on its
    # outline, a shifted one puts its dashed outline, in the same class colour, elsewhere.
    outline = {
        case.name: _colour_pixels(files.folder / "overlays" / f"{case.name}.png", segment_color(1))[:-60]
        for case in result.cases
    }
    exact = next(c.name for c in result.cases if case_dice(c) == 1.0)
    assert outline[exact].sum() > 100
    near = binary_dilation(outline[exact], iterations=3)
    for case in result.cases:
        away = (outline[case.name] & ~near).sum() / outline[exact].sum()
        if case_dice(case) == 1.0:
            assert away < 0.02, case.name
        else:
            assert away > 0.1, case.name
    assert {case_dice(c) == 1.0 for c in result.cases} == {True, False}  # both kinds were checked
    page = files.report_html.read_text()
    assert "Reference vs prediction" in page and "over the image" in page and "--image" not in page


def test_report_overlays_without_image_and_for_many_cases(folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, _ = folders
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, metrics=("dice",)))
    ranked = sorted(result.cases, key=lambda c: case_dice(c))
    assert overlay_cases([result], max_cases=2) == [ranked[0].name, ranked[-1].name]
    files = write_report(result, tmp_path / "report", max_overlays=2)
    assert sorted(p.stem for p in files.overlays) == sorted([ranked[0].name, ranked[-1].name])
    assert _colour_pixels(files.overlays[0], segment_color(1)).sum() > 100
    assert overlay_cases([result], max_cases=1) == [ranked[0].name]  # the worst only, not 2
    assert overlay_cases([result], max_cases=0) == []
    page = files.report_html.read_text()
    assert "label maps alone" in page and "--image" in page and "worst and the best" in page


def test_image_matching_errors(folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pred_dir, ref_dir, cases = folders
    images = tmp_path / "images"
    names = sorted(cases)
    for name in names[:2]:
        write_volume(make_oblique_volume(), images / f"{name}.nii.gz")
    assert match_images(images, names[:2]) == {n: images / f"{n}.nii.gz" for n in names[:2]}
    with pytest.raises(InputError, match=f"1 case\\(s\\) have no image.*{names[2]}"):
        match_images(images, names)
    with pytest.raises(InputError, match="one image file for several cases"):
        match_images(images / f"{names[0]}.nii.gz", names)
    with pytest.raises(InputError, match="does not exist"):
        match_images(tmp_path / "nowhere", names)
    # An image on another grid than the reference: the report says which case and file.
    other = tmp_path / "other"
    for name in names:
        write_volume(make_oblique_volume(shape=(12, 20, 17)), other / f"{name}.nii.gz")
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS, metrics=("dice",)))
    with pytest.raises(GeometryError, match="is not on the reference's grid"):
        write_report(result, tmp_path / "report", image=other)
    assert not (tmp_path / "report").exists()


def test_a_0_255_mask_against_a_0_1_label_map_names_the_likely_cause(tmp_path: Path) -> None:
    mask = np.zeros((12, 10), np.uint8)
    mask[3:8, 2:7] = 1
    Image.fromarray(mask).save(tmp_path / "pred.png")
    Image.fromarray(mask * 255).save(tmp_path / "ref.png")
    with pytest.raises(InputError, match=r"found in no reference.*0/255 mask image.*--mask-map 0=0,255=1"):
        evaluate(tmp_path / "pred.png", tmp_path / "ref.png", EvaluationConfig(metrics=("dice",)))


def test_pooled_miou_sums_one_confusion_matrix_over_all_cases(tmp_path: Path) -> None:
    """Hand-made cases where the pooled mIoU (one confusion matrix summed over the test set)
    and the per-case mean differ; case b holds no label 2, which the pooled matrix still has.

    a: ref 0 0 1 1 2 2, pred 0 1 1 1 2 0 -> IoU 1/3, 2/3, 1/2: mIoU 1/2
    b: ref 0 0 0 1,     pred 0 0 1 1     -> IoU 2/3, 1/2:      mIoU 7/12
    per-case mean (1/2 + 7/12) / 2 = 13/24; pooled [[3 2 0] [0 3 0] [1 0 1]] -> IoU 1/2, 3/5,
    1/2: mIoU 8/15.
    """
    from typer.testing import CliRunner

    from medseg.cli import app

    arrays = {
        "a": ([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]),
        "b": ([0, 0, 0, 1], [0, 0, 1, 1]),
    }
    for name, (ref, pred) in arrays.items():
        for folder, values in (("ref", ref), ("pred", pred)):
            grid = make_oblique_volume(shape=(1, 1, len(values)))
            write_volume(
                grid.with_array(np.array(values, dtype=np.uint8).reshape(grid.shape)),
                tmp_path / folder / f"{name}.nii.gz",
            )
    result = evaluate(tmp_path / "pred", tmp_path / "ref", _serial(metrics=("iou", "miou")))
    np.testing.assert_array_equal(result.pooled_confusion(), [[3, 2, 0], [0, 3, 0], [1, 0, 1]])
    assert [c.miou for c in result.cases] == [pytest.approx(1 / 2), pytest.approx(7 / 12)]
    case_level = result.summary()["case_level"]
    assert case_level["miou"]["mean"] == pytest.approx(13 / 24)
    pooled = case_level["miou_pooled"]
    assert pooled["value"] == pytest.approx(8 / 15) and pooled["n_cases"] == 2
    assert pooled["per_class_iou"] == {
        "background": pytest.approx(1 / 2),
        "1": pytest.approx(3 / 5),
        "2": pytest.approx(1 / 2),
    }
    # The pure functions: a label a case lacks counts 0; a class absent everywhere is NaN.
    cm = M.pooled_confusion([((0, 1), [[2, 1], [0, 1]]), ((0, 2), [[4, 0], [1, 1]])], [0, 1, 2])
    np.testing.assert_array_equal(cm, [[6, 1, 0], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_allclose(M.iou_per_class([[5, 0, 0], [0, 0, 0], [0, 0, 1]]), [1, np.nan, 1])
    with pytest.raises(ConfigError, match=r"\[3\] not among them"):
        M.pooled_confusion([((0, 3), [[1, 0], [0, 1]])], [0, 1, 2])
    # Printed next to the per-case mean, each named.
    res = CliRunner().invoke(
        app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--metrics", "iou,miou"]
    )
    assert res.exit_code == 0, res.output
    assert (
        "mIoU (background included): per-case mean 0.542 ± 0.059 (0.542), "
        "pooled over all cases (miou_pooled) 0.533"
    ) in res.output


def test_missing_predictions_and_images_name_the_first_20_cases(tmp_path: Path) -> None:
    """Both 'missing ...' errors (one shared helper): the count, where, what was expected, and
    the first 20 missing cases followed by '...'."""
    from medseg.evaluation.evaluate import check_matching

    names = [f"c{i:02d}" for i in range(23)]
    for folder in ("ref", "pred", "img"):
        (tmp_path / folder).mkdir()
    for name in names:
        (tmp_path / "ref" / f"{name}.nii.gz").write_bytes(b"")  # matched by name only
    (tmp_path / "pred" / "c00.nii.gz").write_bytes(b"")
    (tmp_path / "img" / "c00_0000.nii.gz").write_bytes(b"")
    listed = "missing " + ", ".join(names[1:21]) + " ..."
    with pytest.raises(InputError) as exc:
        check_matching(tmp_path / "pred", tmp_path / "ref", _serial())
    assert str(exc.value) == (
        f"{tmp_path / 'pred'}: 22 reference case(s) have no prediction; expected one prediction per "
        f"reference case (or --allow-missing to score them as empty); found {listed}"
    )
    with pytest.raises(InputError) as exc:
        match_images(tmp_path / "img", names[:3])
    assert str(exc.value) == (
        f"{tmp_path / 'img'}: 2 case(s) have no image; expected one image per reference case, named "
        "NAME or NAME_0000; found missing c01, c02"
    )


def test_regions_add_a_dice_per_region_to_rows_and_summary(tmp_path: Path) -> None:
    from medseg.evaluation.evaluate import EvaluationResult
    from medseg.volume import Volume

    ref = np.zeros((2, 3, 4), np.uint8)
    ref[0, 0, :] = [1, 3, 3, 2]
    pred = np.zeros_like(ref)
    pred[0, 0, :] = [1, 1, 2, 2]
    cfg = EvaluationConfig(metrics=("dice",), regions={"large": [1, 3], "small": [2, 3]})
    case = evaluate_volumes(Volume(pred), Volume(ref), cfg, name="c")
    # large: ref 3 voxels, pred 2 (both inside) -> 0.8; small: ref 3, pred 2, overlap 2 -> 0.8
    assert case.per_region == {"large": pytest.approx(0.8), "small": pytest.approx(0.8)}
    assert case.regions_both_empty == ()
    # a region absent from both sides: Dice 1 by convention, and named so means can leave it out
    cfg4 = EvaluationConfig(metrics=("dice",), regions={"large": [1, 3], "other": [4]})
    other = evaluate_volumes(Volume(pred), Volume(ref), cfg4, name="c")
    assert other.per_region["other"] == 1.0 and other.regions_both_empty == ("other",)
    result = EvaluationResult((case,), {1: "a", 2: "b", 3: "ab"}, cfg)
    row = result.rows()[0]
    assert row["region_dice/large"] == pytest.approx(0.8)
    summary = result.summary()
    assert summary["per_region"]["small"]["labels"] == [2, 3]
    assert summary["per_region"]["small"]["dice"]["mean"] == pytest.approx(0.8)
    assert (
        "per_region" not in EvaluationResult((case,), {1: "a"}, EvaluationConfig(metrics=("dice",))).summary()
    )
    with pytest.raises(ConfigError, match="foreground label values"):
        EvaluationConfig(regions={"bad": [0, 1]})
    with pytest.raises(ConfigError, match=r"region 'large' holds label value\(s\) \[5\] that no label has"):
        EvaluationConfig(labels={1: "a", 2: "b", 3: "ab"}, regions={"large": [1, 5]})
    with pytest.raises(ConfigError, match=r"declared by the dataset: \[1, 2\]"):
        EvaluationConfig(label_names={1: "a", 2: "b"}, regions={"large": [1, 3]})


def test_a_region_value_found_in_no_reference_is_refused(tmp_path: Path) -> None:
    from medseg.io import write_volume
    from medseg.volume import Volume

    ref = np.zeros((2, 3, 4), np.uint8)
    ref[0, 0, :] = [1, 3, 3, 2]
    write_volume(Volume(ref), tmp_path / "ref" / "c.nii.gz")
    write_volume(Volume(ref), tmp_path / "pred" / "c.nii.gz")
    cfg = EvaluationConfig(metrics=("dice",), regions={"large": [1, 3], "small": [2, 6]})
    with pytest.raises(
        ConfigError, match=r"\[6\] that no label has \(label values found in the references: \[1, 2, 3\]"
    ):
        evaluate(tmp_path / "pred", tmp_path / "ref", cfg)


def test_a_region_value_found_in_no_reference_is_refused_before_any_case_is_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The references' values are read first (until every region value is seen), so a typo
    such as 'small=2+6' is refused without scoring the cohort first."""
    import importlib

    from medseg.io import write_volume
    from medseg.volume import Volume

    evaluate_module = importlib.import_module("medseg.evaluation.evaluate")  # the package exports evaluate()
    first = np.zeros((2, 3, 4), np.uint8)
    first[0, 0, :] = [1, 3, 3, 0]
    second = first.copy()
    second[1, 0, 0] = 2  # value 2 only in the second reference
    for name, ref in (("a", first), ("b", second)):
        write_volume(Volume(ref), tmp_path / "ref" / f"{name}.nii.gz")
        write_volume(Volume(ref), tmp_path / "pred" / f"{name}.nii.gz")
    scored: list[str] = []
    real_run_pairs = evaluate_module._run_pairs

    def run_pairs(pairs: Any, *args: Any) -> None:
        scored.extend(p.name for p in pairs)
        real_run_pairs(pairs, *args)

    monkeypatch.setattr(evaluate_module, "_run_pairs", run_pairs)
    cfg = EvaluationConfig(metrics=("dice",), regions={"large": [1, 3], "small": [2, 6]}, workers=1)
    with pytest.raises(
        ConfigError, match=r"\[6\] that no label has \(label values found in the references: \[1, 2, 3\]"
    ):
        evaluate(tmp_path / "pred", tmp_path / "ref", cfg)
    assert scored == []
    # a value found only in a later reference is no error
    ok = EvaluationConfig(metrics=("dice",), regions={"large": [1, 3], "small": [2, 3]}, workers=1)
    result = evaluate(tmp_path / "pred", tmp_path / "ref", ok)
    assert scored == ["a", "b"] and result.summary()["per_region"]["small"]["dice"]["mean"] == 1.0


def test_region_dice_reads_the_region_masks_predict_wrote_next_to_the_label_map(tmp_path: Path) -> None:
    """A region model's label map is painted (one value per voxel, overlaps lost); the masks
    `predict --format regions` writes keep them, and the region Dice must come from them."""
    from medseg.io import write_volume
    from medseg.volume import Volume

    ref = np.zeros((2, 3, 4), np.uint8)
    ref[0, 0, :] = [1, 3, 3, 2]  # 3: both regions
    painted = np.zeros_like(ref)
    painted[0, 0, :] = [1, 2, 2, 2]  # the overlap painted as the later region
    large = np.isin(ref, [1, 3]).astype(np.uint8)
    small = np.isin(ref, [2, 3]).astype(np.uint8)
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    write_volume(Volume(ref), tmp_path / "ref" / "c.nii.gz")
    write_volume(Volume(painted), tmp_path / "pred" / "c.nii.gz")
    write_volume(Volume(large), tmp_path / "pred" / "c" / "regions" / "1_large.nii.gz")
    write_volume(Volume(small), tmp_path / "pred" / "c" / "regions" / "2_small.nii.gz")
    cfg = EvaluationConfig(
        metrics=("dice",), labels={1: "a", 2: "b", 3: "ab"}, regions={"large": [1, 3], "small": [2, 3]}
    )
    result = evaluate(tmp_path / "pred", tmp_path / "ref", cfg)
    assert result.cases[0].per_region == {"large": pytest.approx(1.0), "small": pytest.approx(1.0)}
    # a masks folder that lacks a region's file is an error naming the file
    (tmp_path / "pred" / "c" / "regions" / "2_small.nii.gz").unlink()
    result = evaluate(tmp_path / "pred", tmp_path / "ref", dataclasses.replace(cfg, on_case_error="flag"))
    assert result.cases[0].status == "error"
    assert str(tmp_path / "pred" / "c" / "regions" / "2_small.nii.gz") in result.cases[0].message


@pytest.mark.parametrize("first", [1, 0])  # predict numbers regions 1..R; earlier outputs 0..R-1
def test_region_masks_are_found_by_name_when_fewer_or_reordered_regions_are_scored(
    tmp_path: Path, first: int
) -> None:
    """`--regions 'small=2+3'` (one region of a two-region model, or the regions in another
    order) must read `2_small.nii.gz`, the mask predict wrote for that region, not look for
    `1_small.nii.gz` by the region's position in the --regions list (nor, in an output of an
    earlier medseg that numbered from 0, `0_small.nii.gz` for `1_small.nii.gz`)."""
    from medseg.io import write_volume
    from medseg.volume import Volume

    ref = np.zeros((2, 3, 4), np.uint8)
    ref[0, 0, :] = [1, 3, 3, 2]
    painted = np.zeros_like(ref)
    painted[0, 0, :] = [1, 2, 2, 2]  # the overlap painted as the later region
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    write_volume(Volume(ref), tmp_path / "ref" / "c.nii.gz")
    write_volume(Volume(painted), tmp_path / "pred" / "c.nii.gz")
    folder = tmp_path / "pred" / "c" / "regions"
    write_volume(Volume(np.isin(ref, [1, 3]).astype(np.uint8)), folder / f"{first}_large.nii.gz")
    write_volume(Volume(np.isin(ref, [2, 3]).astype(np.uint8)), folder / f"{first + 1}_small.nii.gz")
    for regions in ({"small": [2, 3]}, {"small": [2, 3], "large": [1, 3]}):
        cfg = EvaluationConfig(metrics=("dice",), labels={1: "a", 2: "b", 3: "ab"}, regions=regions)
        result = evaluate(tmp_path / "pred", tmp_path / "ref", cfg)
        assert result.cases[0].per_region == {name: pytest.approx(1.0) for name in regions}


def test_ignore_other_labels_scores_one_organ_of_a_multi_organ_reference(folders) -> None:  # type: ignore[no-untyped-def]
    """A one-organ result (a baseline's --label 3) against references holding labels 1 and 3:
    an error naming the way out, or with ignore_other_labels label 3 alone, the others
    background on both sides, in the scores and in the overlays' label maps alike."""
    pred_dir, ref_dir, cases = folders
    one_organ = pred_dir.parent / "inner_only"
    for name, (pred, _) in cases.items():
        write_volume(
            pred.with_array(np.where(pred.array == 3, 3, 0).astype(np.uint8)), one_organ / f"{name}.nii.gz"
        )
    with pytest.raises(InputError, match=r"reference holds \[1\]") as err:
        evaluate(one_organ, ref_dir, _serial(labels={3: "inner"}, metrics=("dice",)))
    assert "--ignore-other-labels" in str(err.value)
    with pytest.raises(ConfigError, match="give --labels too"):
        _serial(ignore_other_labels=True)
    result = evaluate(
        one_organ, ref_dir, _serial(labels={3: "inner"}, metrics=("dice",), ignore_other_labels=True)
    )
    assert list(result.labels) == [3]
    for case in result.cases:
        pred, ref = cases[case.name]
        assert case.per_label[3]["dice"] == pytest.approx(M.dice(pred.array == 3, ref.array == 3))
        shown_ref, shown_pred = load_case_volumes(case)
        assert set(np.unique(shown_ref.array)) == set(np.unique(shown_pred.array)) == {0, 3}
        assert shown_ref.geometry.is_close(ref.geometry)


def test_a_float_reference_with_negative_values_is_refused_as_an_integer_one_is(tmp_path: Path) -> None:
    """A CT stored as float (whole HU values) given as the reference: an int16 one was refused
    ("holds negative labels"), a float one was scored with a class -1000, and with --regions
    the check of the references' values before scoring failed with a bare ValueError of
    np.bincount (an internal error)."""
    pred = np.zeros((4, 5, 6), dtype=np.uint8)
    pred[1:3, 1:3, 1:3] = 1
    ref = np.full(pred.shape, -1000.0, dtype=np.float32)
    ref[1:3, 1:3, 1:3] = 1.0
    write_volume(Volume(pred, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path / "pred" / "c1.nii.gz")
    write_volume(Volume(ref, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path / "ref" / "c1.nii.gz")
    with pytest.raises(InputError, match=r"c1\.nii\.gz: case 'c1': reference holds negative labels.*-1000"):
        evaluate(tmp_path / "pred", tmp_path / "ref", _serial(regions={"a": [1, 2]}))
    with pytest.raises(InputError, match="reference holds negative labels"):
        evaluate(tmp_path / "pred", tmp_path / "ref", _serial())


def test_cases_are_listed_in_natural_order(tmp_path: Path) -> None:
    """case2 before case10 in the matching, so in cases.csv and every table built from it."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred, ref = _case(0)
    for name in ("case10", "case2", "case1"):
        write_volume(ref, ref_dir / f"{name}.nii.gz")
    for name in ("case10", "case2", "extra11", "extra9"):
        write_volume(pred, pred_dir / f"{name}.nii.gz")
    write_volume(ref, ref_dir / "case3.nii.gz")
    matching = match_cases(pred_dir, ref_dir)
    assert [p.name for p in matching.pairs] == ["case1", "case2", "case3", "case10"]
    assert list(matching.references_without_prediction) == ["case1", "case3"]
    assert list(matching.predictions_without_reference) == ["extra9", "extra11"]
    for name in ("case1", "case3"):
        write_volume(pred, pred_dir / f"{name}.nii.gz")
    result = evaluate(pred_dir, ref_dir, _serial(labels=LABELS))
    assert [c.name for c in result.cases] == ["case1", "case2", "case3", "case10"]


def test_missing_predictions_also_name_the_predictions_that_match_no_reference(tmp_path: Path) -> None:
    """Names that differ (a prefix, another numbering) show side by side in one error."""
    from medseg.evaluation.evaluate import check_matching

    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        (tmp_path / "ref" / f"case_{i:03d}.nii.gz").write_bytes(b"")  # matched by name only
        (tmp_path / "pred" / f"pred_case_{i:03d}.nii.gz").write_bytes(b"")
    with pytest.raises(InputError) as exc:
        check_matching(tmp_path / "pred", tmp_path / "ref", _serial())
    assert str(exc.value).endswith(
        "found missing case_000, case_001, case_002; 3 prediction(s) match no reference case: "
        "pred_case_000, pred_case_001, pred_case_002"
    )
