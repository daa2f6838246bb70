from __future__ import annotations

import csv
import errno
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

import medseg
from medseg.cli import app
from medseg.errors import ConfigError, InputError, OutputExistsError
from medseg.inference.predictor import PredictConfig, SegmentationModel, _read_case, discover_cases, predict
from medseg.io import read_volume, write_volume
from medseg.io.dicom import write_dicom_series
from medseg.volume import Volume
from tests.conftest import (
    IDENTIFIERS,
    assert_references_deidentified_copy,
    give_nifti_a_second_transform,
    identified_prostatex_t2,
    make_oblique_volume,
    write_blank_uid_cohort,
)
from tests.preprocessing.conftest import make_case


def _case_file(folder: Path, seed: int, name: str | None = None) -> tuple[Path, Volume]:
    img, lab = make_case(seed, shape=(9, 36, 30))
    folder.mkdir(parents=True, exist_ok=True)
    return write_volume(img, folder / f"{name or f'p{seed}'}.nii.gz"), lab


def test_prediction_lands_on_the_exact_input_grid(trained_model: Path, tmp_path: Path) -> None:
    path, _ = _case_file(tmp_path / "in", 11)
    image = read_volume(path)
    results = predict(
        path,
        trained_model,
        tmp_path / "out",
        PredictConfig(formats=("nifti", "volumes", "overlay", "mesh", "report")),
    )
    assert [r.ok for r in results] == [True], results
    label = read_volume(tmp_path / "out" / "p11.nii.gz")
    image.geometry.require_same(label.geometry, spacing_atol=1e-5, origin_atol=1e-4)
    assert label.shape == image.shape
    assert set(np.unique(label.array)) <= {0, 1, 2}
    case_dir = tmp_path / "out" / "p11"
    assert (case_dir / "volumes.csv").is_file() and (case_dir / "overlay.png").is_file()
    assert (case_dir / "report.html").read_text().count("<html") == 1
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["cases"][0]["ok"] is True


def test_model_predicts_the_phantom_structure(trained_model: Path) -> None:
    """Trained briefly, the model already finds the bright blob (a real, not random, model)."""
    model = SegmentationModel(trained_model, device="cpu")
    img, lab = make_case(21, shape=(9, 36, 30))
    pred, probs = model.predict([img], with_probabilities=True)
    assert probs is not None and probs.shape == (3, *img.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    fg_pred, fg_ref = pred.array > 0, lab.array > 0
    dice = 2 * (fg_pred & fg_ref).sum() / (fg_pred.sum() + fg_ref.sum())
    assert dice > 0.5


def test_ensemble_of_folds_and_tta(trained_model: Path, tmp_path: Path) -> None:
    ens = tmp_path / "ensemble"
    shutil.copytree(trained_model, ens / "fold_0")
    shutil.copytree(trained_model, ens / "fold_1")
    img, _ = make_case(5, shape=(9, 36, 30))
    single, _ = SegmentationModel(trained_model, device="cpu").predict([img])
    both = SegmentationModel(ens, device="cpu")
    assert len(both.networks) == 2
    twice, _ = both.predict([img])
    np.testing.assert_array_equal(single.array, twice.array)  # identical folds average to the same
    mirrored, _ = both.predict([img], tta=True)
    assert mirrored.shape == img.shape


def test_batch_continues_after_a_broken_case_and_shards(trained_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cohort"
    for seed in (1, 2, 3):
        _case_file(folder, seed)
    (folder / "p9.nii.gz").write_bytes(b"broken")
    results = predict(folder, trained_model, tmp_path / "out", PredictConfig())
    status = {r.case_id: r.ok for r in results}
    assert status == {"p1": True, "p2": True, "p3": True, "p9": False}
    assert "p9" in [
        r.case_id
        for r in results
        if "cannot be read" in r.error or "truncated" in r.error or "invalid" in r.error
    ]
    shard = predict(folder, trained_model, tmp_path / "shard", PredictConfig(shard=(1, 2)))
    assert [r.case_id for r in shard] == ["p2", "p9"]


def test_a_bug_met_on_one_case_of_a_cohort_fails_that_case_alone(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error (a KeyError deep in a DICOM library, as highdicom raised on a
    series whose UIDs an anonymiser blanked) stopped the whole cohort at that case with exit
    3. Now the case is listed failed as an internal error, the others are segmented, and the
    exit code is still 3 so that the bug is not mistaken for bad input."""
    import medseg.inference.predictor as predictor

    folder = tmp_path / "cohort"
    for seed in (1, 2, 3):
        _case_file(folder, seed)
    real = predictor.write_case_outputs

    def flaky(image: Volume, label: Volume, *args: object, **kwargs: object) -> object:
        if kwargs.get("case_id") == "p2":
            raise KeyError("")
        return real(image, label, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor, "write_case_outputs", flaky)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["predict", str(folder), "-m", str(trained_model), "-o", str(out)])
    assert res.exit_code == 3, res.output
    assert (out / "p1.nii.gz").is_file() and (out / "p3.nii.gz").is_file()
    entries = {c["case_id"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    assert [entries[p]["ok"] for p in ("p1", "p2", "p3")] == [True, False, True]
    assert entries["p2"]["error"].startswith("internal error: KeyError")
    assert entries["p2"]["internal_error"] is True
    # one case alone: the bug is raised to the caller as before
    with pytest.raises(KeyError):
        predict(folder / "p2.nii.gz", trained_model, tmp_path / "one", PredictConfig())


def test_an_mr_series_given_to_a_ct_model_is_warned_about(
    model_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CT abdomen model segmented a prostate MR series (and pacs segment pushed the result
    to the study) without a word; now each such case is named in a warning. A CT series is
    not, nor is an MR series given to a model that was not normalised as CT."""
    image, _ = make_case(3, shape=(9, 36, 30))
    image = image.with_array(image.array.astype(np.int16))
    write_dicom_series(image, tmp_path / "cohort" / "mr", modality="MR")
    write_dicom_series(image, tmp_path / "cohort" / "ct", modality="CT")
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        predict(tmp_path / "cohort", model_copy, tmp_path / "zscore", PredictConfig())
    assert "trained on CT" not in caplog.text  # the toy model is z-score normalised
    _ct_plan(model_copy)
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        results = predict(tmp_path / "cohort", model_copy, tmp_path / "ct_model", PredictConfig())
    assert [r.ok for r in results] == [True, True]
    warnings = [r.getMessage() for r in caplog.records if "trained on CT" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].startswith("mr: the model was trained on CT") and "this series is MR" in warnings[0]
    # `predict -q` (errors only) hid it: the only sign that the labels mean nothing. It shows.
    import logging

    caplog.clear()
    caplog.set_level(logging.INFO)
    args = [
        "predict",
        str(tmp_path / "cohort" / "mr"),
        "-m",
        str(model_copy),
        "-o",
        str(tmp_path / "q"),
        "-q",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    shown = [r for r in caplog.records if r.name.startswith("medseg") and r.levelno >= logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in shown] == ["mr"] and "trained on CT" in shown[
        0
    ].getMessage()
    assert not any(r.levelno < logging.WARNING for r in caplog.records if r.name.startswith("medseg"))
    assert logging.getLogger("medseg.inference.predictor.modality").level == logging.NOTSET  # restored


def test_the_reports_model_section_says_which_model_made_it(trained_model: Path, tmp_path: Path) -> None:
    """The report's Model section named only the folder ("fold_0"): a reader could not tell
    which model segmented the scan. It now gives the training dataset's name (the model
    folder's dataset.json), the folder with its parent, configuration, fold, labels, and when
    and with which medseg the model was trained (model.json; no date for older models)."""
    model = tmp_path / "abdomen" / "fold_0"
    shutil.copytree(trained_model, model)
    dataset = json.loads((model / "dataset.json").read_text())
    (model / "dataset.json").write_text(json.dumps({**dataset, "name": "Toy abdomen <v2>"}))
    record = json.loads((model / "model.json").read_text())
    labels = json.loads((model / "plan.json").read_text())["labels"]
    path, _ = _case_file(tmp_path / "in", 4)
    (done,) = predict(path, model, tmp_path / "out", PredictConfig(formats=("report",)))
    html = Path(done.outputs["report"]).read_text()
    section = html[html.index("<h2>Model</h2>") :]
    rows = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", section[: section.index("</section>")]))
    assert rows["dataset"] == "Toy abdomen &lt;v2&gt;"
    assert rows["model"] == "abdomen/fold_0"
    assert rows["configuration"] == "3d" and rows["folds"] == "1" and rows["fold"] == "0"
    assert rows["labels"] == ", ".join(
        f"{v} {k}" for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if v
    )
    assert rows["trained (UTC)"] == record["trained_utc"][:10]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", rows["trained (UTC)"])
    assert rows["trained with medseg"] == record["medseg_version"]
    assert rows["predicted with medseg"] == medseg.__version__
    # a model trained before medseg recorded the date: no date row, the rest as before
    del record["trained_utc"]
    (model / "model.json").write_text(json.dumps(record))
    (done,) = predict(path, model, tmp_path / "older", PredictConfig(formats=("report",)))
    html = Path(done.outputs["report"]).read_text()
    assert "trained (UTC)" not in html and "<th>dataset</th><td>Toy abdomen &lt;v2&gt;</td>" in html


def test_pacs_segment_reads_the_modality_a_model_expects_from_its_plan(model_copy: Path) -> None:
    """pacs segment refuses a series of another modality than its model's (tests/pacs): the
    model folder's plan says which, by its CT normalisation or its channel name."""
    from medseg.pacs.segment import model_segment_fn

    assert model_segment_fn(model_copy).expected_modality == ("MR", "its channel is named 'T2'")
    plan = json.loads((model_copy / "plan.json").read_text())
    plan["normalization"] = [
        {"scheme": "ct", "clip_low": -100.0, "clip_high": 300.0, "mean": 50.0, "std": 80.0}
    ]
    (model_copy / "plan.json").write_text(json.dumps(plan))
    assert model_segment_fn(model_copy).expected_modality == (
        "CT",
        "its plan normalises channel 'T2' as CT (Hounsfield units)",
    )


def test_a_series_without_uids_fails_before_the_network_when_dicom_outputs_are_asked(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TotalSegmentator's example CT DICOM has blank SOP/Study/Series UIDs: a SEG or RTSTRUCT
    of it cannot be written. The case was predicted first and failed at export (minutes per
    CT in a cohort); now it fails before the network runs, naming a file and the UIDs."""
    write_blank_uid_cohort(tmp_path / "cohort")
    runs: list[int] = []
    real = SegmentationModel.predict

    def counted(self: SegmentationModel, *args: object, **kwargs: object) -> object:
        runs.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SegmentationModel, "predict", counted)
    results = {
        r.case_id: r
        for r in predict(
            tmp_path / "cohort", trained_model, tmp_path / "out", PredictConfig(formats=("dicom-seg",))
        )
    }
    assert results["good"].ok and not results["blank"].ok
    assert "cannot be referenced by a DICOM SEG or RTSTRUCT" in results["blank"].error
    assert str(tmp_path / "cohort" / "blank") in results["blank"].error
    assert len(runs) == 1  # only the good case reached the network
    # without a DICOM output the same series is segmented
    (done,) = predict(tmp_path / "cohort" / "blank", trained_model, tmp_path / "nifti", PredictConfig())
    assert done.ok


def test_a_series_without_uids_still_gets_every_format_but_its_dicom_ones(
    trained_model: Path, tmp_path: Path
) -> None:
    """With dicom-seg among the formats, a series with blank UIDs (TotalSegmentator's example CT)
    was refused whole: no NIfTI, volumes or report either. Now it is segmented, the formats that
    need no UIDs are written, and the case fails for the DICOM format alone (exit 1), recorded
    with what was written, so that a re-run without dicom-seg completes it."""
    write_blank_uid_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "cohort"), "-m", str(trained_model), "-o", str(out)]
    res = CliRunner().invoke(app, [*args, "--format", "nifti,volumes,dicom-seg"])
    assert res.exit_code == 1, res.output
    assert (out / "blank.nii.gz").is_file() and (out / "blank" / "volumes.csv").is_file()
    assert not list((out / "blank").glob("*.dcm")) and (out / "good.nii.gz").is_file()
    summary = json.loads((out / "predictions.json").read_text())
    entries = {c["case_id"]: c for c in summary["cases"]}
    blank = entries["blank"]
    assert not blank["ok"] and entries["good"]["ok"]
    assert sorted(blank["outputs"]) == ["nifti", "volumes"]
    assert list(blank["not_written"]) == ["dicom-seg"]
    assert "cannot be referenced by a DICOM SEG or RTSTRUCT" in blank["not_written"]["dicom-seg"]
    assert blank["error"].startswith("dicom-seg not written") and "written: nifti, volumes" in blank["error"]
    assert blank["prediction_id"] == summary["prediction"]["id"]
    # the cohort table shows its volumes, marked partial (it was shown ok)
    with (out / "cohort_volumes.csv").open() as fh:
        cohort = {r["case"]: r for r in csv.DictReader(fh)}
    assert cohort["blank"]["status"] == "partial" and cohort["good"]["status"] == "ok"
    assert [v for k, v in cohort["blank"].items() if k.endswith("_ml")] == [
        v for k, v in cohort["good"].items() if k.endswith("_ml")
    ]
    # the written formats are this prediction's: a re-run with other options keeping them is refused
    with pytest.raises(InputError, match="made by another prediction") as refused:
        predict(tmp_path / "cohort" / "blank", trained_model, out, PredictConfig(tta=True))
    # the same model: the message blamed "two models'" segmentations although only TTA differed
    assert "two predictions' segmentations" in str(refused.value) and "models'" not in str(refused.value)
    assert "tta False -> True" in str(refused.value)
    # the remaining formats complete the case
    res = CliRunner().invoke(app, [*args, "--format", "nifti,volumes"])
    assert res.exit_code == 0, res.output
    blank = {c["case_id"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}["blank"]
    assert blank["ok"] and blank["not_written"] == {} and blank["error"] == ""
    with (out / "cohort_volumes.csv").open() as fh:
        assert {r["case"]: r["status"] for r in csv.DictReader(fh)} == {"blank": "ok", "good": "ok"}
    assert sorted(blank["outputs"]) == ["nifti", "volumes"]


def test_totalsegmentators_example_ct_without_uids_gets_its_nifti_and_volumes(
    shared_data: Path, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walkthrough's series: TotalSegmentator's example CT DICOM (blank SOP/Study/Series
    UIDs). Asked for nifti, volumes, dicom-seg and rtstruct, it gets the first two and fails
    for the DICOM ones alone. The network is stubbed (a box on the CT's grid): this is about
    the outputs, and the toy model would take minutes on a 512 x 512 CT."""
    series = shared_data / "totalseg_examples" / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip(f"TotalSegmentator's example CT DICOM not found at {series}")

    def boxed(self: SegmentationModel, channels: list[Volume], **kwargs: object) -> tuple[Volume, None]:
        label = np.zeros(channels[0].shape, dtype=np.uint8)
        label[5:15, 200:300, 200:300] = 1
        return channels[0].with_array(label), None

    monkeypatch.setattr(SegmentationModel, "predict", boxed)
    formats = ("nifti", "volumes", "dicom-seg", "rtstruct")
    (result,) = predict(series, trained_model, tmp_path / "out", PredictConfig(formats=formats))
    assert not result.ok and sorted(result.outputs) == ["nifti", "volumes"]
    assert sorted(result.not_written) == ["dicom-seg", "rtstruct"]
    assert "empty or missing SOPClassUID, SOPInstanceUID, StudyInstanceUID" in result.not_written["rtstruct"]
    assert read_volume(result.outputs["nifti"]).array.sum() == 10 * 100 * 100
    assert not list((tmp_path / "out").rglob("*.dcm"))


def test_rerunning_a_case_whose_dicom_outputs_cannot_be_written_keeps_it_partial(
    shared_data: Path, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TotalSegmentator's example CT (no UIDs) asked for nifti, volumes and dicom-seg is partial.
    The same command run again (a resume) kept nifti and volumes, and with dicom-seg alone left
    to write failed the case with no outputs: its summary entry, cohort_volumes.csv and the index
    turned it from partial to failed. It stays partial, listing the kept outputs, and the
    network does not run for nothing."""
    series = shared_data / "totalseg_examples" / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip(f"TotalSegmentator's example CT DICOM not found at {series}")
    calls: list[int] = []

    def boxed(self: SegmentationModel, channels: list[Volume], **kwargs: object) -> tuple[Volume, None]:
        calls.append(1)
        label = np.zeros(channels[0].shape, dtype=np.uint8)
        label[5:15, 200:300, 200:300] = 1
        return channels[0].with_array(label), None

    monkeypatch.setattr(SegmentationModel, "predict", boxed)
    out = tmp_path / "out"
    cfg = PredictConfig(formats=("nifti", "volumes", "dicom-seg"))
    (first,) = predict(series, trained_model, out, cfg)
    assert not first.ok and sorted(first.outputs) == ["nifti", "volumes"] and calls == [1]
    (again,) = predict(series, trained_model, out, cfg)
    assert not again.ok and sorted(again.outputs) == ["nifti", "volumes"], again.error
    assert list(again.not_written) == ["dicom-seg"] and calls == [1]
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert sorted(entry["outputs"]) == ["nifti", "volumes"] and entry["not_written"]
    with (out / "cohort_volumes.csv").open() as fh:
        (row,) = csv.DictReader(fh)
    assert row["status"] == "partial"


def _predict_a_box_in_the_prostate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The network stubbed: a box of label 1 where the PROSTATEx T2 series hold the prostate."""

    def boxed(self: SegmentationModel, channels: list[Volume], **kwargs: object) -> tuple[Volume, None]:
        label = np.zeros(channels[0].shape, dtype=np.uint8)
        label[6:12, 150:230, 160:240] = 1
        return channels[0].with_array(label), None

    monkeypatch.setattr(SegmentationModel, "predict", boxed)


def test_deidentified_predictions_overlay_the_deidentified_series(
    shared_data: Path, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`predict --deidentify --uid-secret K` on the real PROSTATEx T2 (a copy given a patient
    name, ID and birth date): the SEG and RTSTRUCT reference exactly the series that `convert
    --deidentify --uid-secret K` made of it, hold none of its identifiers or UIDs, and read back
    with highdicom and rt-utils on that series. The network is stubbed (a box on the T2's grid):
    this is about the outputs."""
    import highdicom as hd
    from rt_utils import RTStructBuilder

    from medseg.export.dicom_seg import read_dicom_seg

    original = identified_prostatex_t2(shared_data, tmp_path / "t2")

    _predict_a_box_in_the_prostate(monkeypatch)
    key = ["--deidentify", "--pseudonym", "SUBJ001", "--uid-secret", "project-key"]
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(original), str(tmp_path / "deid"), "--to", "dicom", *key])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    formats = "nifti,dicom-seg,rtstruct,volumes,report"
    res = runner.invoke(
        app, ["predict", str(original), "-m", str(trained_model), "-o", str(out), "-f", formats, *key]
    )
    assert res.exit_code == 0, res.output
    assert "changes DICOM output only (dicom-seg, rtstruct)" in res.stdout.replace("\n", " ")
    for name in ("seg.dcm", "rtstruct.dcm"):
        assert_references_deidentified_copy(out / "t2" / name, original, tmp_path / "deid")
    label = read_volume(out / "t2.nii.gz")
    deid = read_volume(tmp_path / "deid")
    assert label.array.sum() == 6 * 80 * 80
    assert hd.seg.segread(out / "t2" / "seg.dcm").PatientID == "SUBJ001"
    np.testing.assert_array_equal(read_dicom_seg(out / "t2" / "seg.dcm", deid).array, label.array)
    rt = RTStructBuilder.create_from(
        dicom_series_path=str(tmp_path / "deid"), rt_struct_path=str(out / "t2" / "rtstruct.dcm")
    )
    (roi,) = rt.get_roi_names()
    assert rt.get_roi_mask_by_name(roi).sum() > 0.9 * label.array.sum()
    # No output names the patient; the UIDs in the volume tables are the de-identified ones.
    first = pydicom.dcmread(next((tmp_path / "deid").glob("*.dcm")), stop_before_pixels=True)
    original_study = str(
        pydicom.dcmread(next(original.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    )
    for path in [*out.rglob("*.csv"), *out.rglob("*.json"), *out.rglob("*.html")]:
        text = path.read_text()
        assert not any(v in text for v in IDENTIFIERS.values()) and original_study not in text, path
        assert "project-key" not in text, path  # the UID secret is not written down anywhere
    with (out / "cohort_volumes.csv").open() as fh:
        (row,) = csv.DictReader(fh)
    assert (row["study_uid"], row["series_uid"]) == (
        str(first.StudyInstanceUID),
        str(first.SeriesInstanceUID),
    )
    # A re-run that adds a format keeps the SEG only when it asks for the same de-identification.
    args = ["predict", str(original), "-m", str(trained_model), "-o", str(out), "-f", "dicom-seg,overlay"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert "de-identified otherwise than asked" in entry["error"] and "found de-identified" in entry["error"]
    assert not (out / "t2" / "overlay.png").exists()
    res = runner.invoke(app, [*args, *key])
    assert res.exit_code == 0 and (out / "t2" / "overlay.png").is_file(), res.output
    # Nor is an RTSTRUCT added next to a SEG made with another UID key (the folder would name
    # two de-identified studies); with the SEG's key it is, and references the copy.
    (out / "t2" / "rtstruct.dcm").unlink()
    rerun = ["predict", str(original), "-m", str(trained_model), "-o", str(out), "-f", "dicom-seg,rtstruct"]
    res = runner.invoke(app, [*rerun, *key[:-1], "another-key"])
    assert res.exit_code == 1 and not (out / "t2" / "rtstruct.dcm").exists()
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert "de-identified with another UID key" in entry["error"]
    res = runner.invoke(app, [*rerun, *key])
    assert res.exit_code == 0, res.output
    assert_references_deidentified_copy(out / "t2" / "rtstruct.dcm", original, tmp_path / "deid")
    # Without --uid-secret the UIDs come from this run's own secret: said, and they match no convert.
    res = runner.invoke(
        app,
        [
            "predict",
            str(original),
            "-m",
            str(trained_model),
            "-o",
            str(tmp_path / "o2"),
            "-f",
            "dicom-seg",
            "--deidentify",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "no --uid-secret" in res.stdout and "changes DICOM output only" not in res.stdout
    seg = pydicom.dcmread(tmp_path / "o2" / "t2" / "seg.dcm")
    assert seg.PatientID == "ANONYMOUS" and seg.StudyInstanceUID not in (
        first.StudyInstanceUID,
        original_study,
    )
    with pytest.raises(ConfigError, match="only apply with --deidentify"):
        PredictConfig(formats=("dicom-seg",), uid_secret="project-key")


def test_pseudonym_auto_names_each_patient_of_a_cohort_as_convert_does(
    shared_data: Path, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`predict --deidentify --pseudonym auto --uid-secret K` on a cohort of two real PROSTATEx
    T2 series of two patients (a copy given a patient name and ID, and ProstateX-0001 as TCIA
    has it): each patient gets its own pseudonym, the one `convert` with the same key gives its
    series, stable over runs; no output holds either original ID. The network is stubbed."""
    cohort = tmp_path / "cohort"
    first = identified_prostatex_t2(shared_data, cohort / "a")
    second = shared_data / "prostatex_dicom/ProstateX-0001/07-08-2011/6.000000-t2tsetra-76610"
    if not second.is_dir():
        pytest.skip(f"{second} not found (a PROSTATEx T2 series of ../shared/data)")
    shutil.copytree(second, cohort / "b")
    own_ids = [IDENTIFIERS["PatientID"], "ProstateX-0001"]

    _predict_a_box_in_the_prostate(monkeypatch)
    key = ["--deidentify", "--pseudonym", "auto", "--uid-secret", "project-key"]
    runner = CliRunner()
    for name in ("a", "b"):
        res = runner.invoke(
            app, ["convert", str(cohort / name), str(tmp_path / f"deid_{name}"), "--to", "dicom", *key]
        )
        assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "predict",
            str(cohort),
            "-m",
            str(trained_model),
            "-o",
            str(out),
            "-f",
            "dicom-seg,rtstruct,volumes",
            *key,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "name one patient" not in res.output
    assert_references_deidentified_copy(out / "a" / "seg.dcm", first, tmp_path / "deid_a")
    names = {}
    for name in ("a", "b"):
        copy = pydicom.dcmread(next((tmp_path / f"deid_{name}").glob("*.dcm")), stop_before_pixels=True)
        for obj in ("seg.dcm", "rtstruct.dcm"):
            ds = pydicom.dcmread(out / name / obj, stop_before_pixels=True)
            assert ds.PatientID == ds.PatientName == copy.PatientID == copy.PatientName, (name, obj)
            assert ds.StudyInstanceUID == copy.StudyInstanceUID
        names[name] = str(copy.PatientID)
        assert re.fullmatch(r"ANON-[0-9A-F]{10}", names[name])
    assert names["a"] != names["b"]
    # No output, nor the run's log, holds an original ID (nor so the ID-pseudonym mapping).
    for path in [*out.rglob("*"), *tmp_path.glob("deid_*/*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not [i for i in own_ids if i.encode() in data], path
    assert not [i for i in own_ids if i in res.output]
    # Stable: another run with the key names the patient alike; another key, otherwise.
    cfg = PredictConfig(formats=("dicom-seg",), deidentify=True, pseudonym="auto", uid_secret="project-key")
    (again,) = predict(cohort / "b", trained_model, tmp_path / "again", cfg)
    assert again.ok and pydicom.dcmread(again.outputs["dicom-seg"]).PatientID == names["b"]
    other = PredictConfig(formats=("dicom-seg",), deidentify=True, pseudonym="auto", uid_secret="other-key")
    (keyed,) = predict(cohort / "b", trained_model, tmp_path / "keyed", other)
    assert keyed.ok and pydicom.dcmread(keyed.outputs["dicom-seg"]).PatientID not in names.values()
    # A SEG named by a fixed pseudonym is not kept by an auto re-run (it names the patient otherwise).
    fixed = PredictConfig(
        formats=("dicom-seg",), deidentify=True, pseudonym="SUBJ002", uid_secret="project-key"
    )
    (made,) = predict(cohort / "b", trained_model, tmp_path / "fixed", fixed)
    assert made.ok
    rerun = PredictConfig(
        formats=("dicom-seg", "overlay"), deidentify=True, pseudonym="auto", uid_secret="project-key"
    )
    (refused,) = predict(cohort / "b", trained_model, tmp_path / "fixed", rerun)
    assert not refused.ok and "de-identified otherwise than asked" in refused.error
    assert "found another pseudonym" in refused.error
    (kept,) = predict(cohort / "b", trained_model, tmp_path / "again", rerun)
    assert kept.ok and (tmp_path / "again" / "b" / "overlay.png").is_file(), kept.error


def test_pseudonym_map_names_each_patient_and_is_written_nowhere(
    shared_data: Path, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--pseudonym-map FILE` (PatientID,pseudonym) on two real PROSTATEx T2 series of two
    patients: each SEG is named by its row, as `convert` with the map names the series; the map
    is not recorded in predictions.json nor the IDs anywhere; a patient the map lacks gets its
    other outputs but no DICOM ones. The network is stubbed."""
    cohort = tmp_path / "cohort"
    first = identified_prostatex_t2(shared_data, cohort / "a")
    second = shared_data / "prostatex_dicom/ProstateX-0001/07-08-2011/6.000000-t2tsetra-76610"
    if not second.is_dir():
        pytest.skip(f"{second} not found (a PROSTATEx T2 series of ../shared/data)")
    shutil.copytree(second, cohort / "b")

    _predict_a_box_in_the_prostate(monkeypatch)
    table = tmp_path / "map.csv"
    table.write_text(f"PatientID,pseudonym\n{IDENTIFIERS['PatientID']},SUBJ-A\nProstateX-0001,SUBJ-B\n")
    key = ["--deidentify", "--pseudonym-map", str(table), "--uid-secret", "project-key"]
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(first), str(tmp_path / "deid_a"), "--to", "dicom", *key])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    args = ["predict", str(cohort), "-m", str(trained_model), "-o", str(out)]
    res = runner.invoke(app, [*args, "-f", "dicom-seg,rtstruct,volumes", *key])
    assert res.exit_code == 0, res.output
    assert "name one patient" not in res.output
    assert_references_deidentified_copy(out / "a" / "seg.dcm", first, tmp_path / "deid_a")
    assert pydicom.dcmread(out / "a" / "rtstruct.dcm").PatientID == "SUBJ-A"
    assert pydicom.dcmread(out / "b" / "seg.dcm").PatientID == "SUBJ-B"
    summary = (out / "predictions.json").read_text()
    assert json.loads(summary)["config"]["pseudonym"] == "(a map, not recorded)"
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PID-7731" not in data and b"ProstateX-0001" not in data, path
    assert "SUBJ-A" not in summary and "SUBJ-B" not in summary
    # a patient the map lacks: its other outputs, no SEG; the error does not show its ID
    table.write_text(f"PatientID,pseudonym\n{IDENTIFIERS['PatientID']},SUBJ-A\n")
    res = runner.invoke(app, [*args[:-1], str(tmp_path / "o2"), "-f", "dicom-seg,volumes", *key])
    assert res.exit_code == 1
    cases = {c["case_id"]: c for c in json.loads((tmp_path / "o2" / "predictions.json").read_text())["cases"]}
    assert cases["a"]["error"] == "" and "--pseudonym-map lacks" in cases["b"]["error"]
    assert "ProstateX-0001" not in cases["b"]["error"] and "ProstateX-0001" not in res.output
    assert (tmp_path / "o2" / "b" / "volumes.csv").is_file() and not (
        tmp_path / "o2" / "b" / "seg.dcm"
    ).exists()
    # --pseudonym and --pseudonym-map: one or the other
    res = runner.invoke(app, [*args, "-f", "dicom-seg", *key, "--pseudonym", "SUBJ001", "--overwrite"])
    assert res.exit_code == 2 and "not both" in res.output


def test_a_plain_rerun_keeps_the_seg_of_a_source_deidentified_elsewhere(
    shared_data: Path, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TCIA's PROSTATEx headers say PatientIdentityRemoved YES, and a SEG copies it: a re-run
    without --deidentify that adds a format took that SEG for one of a --deidentify run and
    failed the case. A --deidentify re-run still refuses to keep it (it names the patient)."""
    original = identified_prostatex_t2(shared_data, tmp_path / "t2")
    assert pydicom.dcmread(next(original.glob("*.dcm"))).PatientIdentityRemoved == "YES"

    _predict_a_box_in_the_prostate(monkeypatch)
    out = tmp_path / "out"
    (first,) = predict(original, trained_model, out, PredictConfig(formats=("dicom-seg",)))
    assert first.ok, first.error
    (again,) = predict(original, trained_model, out, PredictConfig(formats=("dicom-seg", "overlay")))
    assert again.ok and (out / "t2" / "overlay.png").is_file(), again.error
    deid = PredictConfig(formats=("dicom-seg", "rtstruct"), deidentify=True)
    (refused,) = predict(original, trained_model, out, deid)
    assert not refused.ok and "de-identified otherwise than asked" in refused.error
    assert "found the patient's own name and ID" in refused.error
    assert pydicom.dcmread(out / "t2" / "seg.dcm").PatientID == IDENTIFIERS["PatientID"]


def test_a_deidentified_rerun_does_not_keep_a_volume_table_naming_the_original_study(
    shared_data: Path, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --deidentify re-run that adds a SEG kept the volumes.csv of an earlier plain run, so the
    folder (and cohort_volumes.csv) still named the original StudyInstanceUID next to the
    de-identified SEG. It is refused like a kept SEG naming the patient; --overwrite redoes it,
    and a re-run with the same key keeps the de-identified table."""
    original = identified_prostatex_t2(shared_data, tmp_path / "t2")
    original_study = str(
        pydicom.dcmread(next(original.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    )

    _predict_a_box_in_the_prostate(monkeypatch)
    out = tmp_path / "out"
    (plain,) = predict(original, trained_model, out, PredictConfig(formats=("nifti", "volumes")))
    assert plain.ok and original_study in (out / "t2" / "volumes.csv").read_text()

    def keyed(*formats: str, overwrite: bool = False) -> PredictConfig:
        return PredictConfig(
            formats=formats,
            overwrite=overwrite,
            deidentify=True,
            pseudonym="SUBJ001",
            uid_secret="project-key",
        )

    (refused,) = predict(original, trained_model, out, keyed("nifti", "volumes", "dicom-seg"))
    assert not refused.ok and "volume table would be kept" in refused.error
    assert "the original study UID" in refused.error and not (out / "t2" / "seg.dcm").exists()
    # nor is the case called done when every asked output is kept (it was skipped as ok)
    (all_kept,) = predict(original, trained_model, out, keyed("nifti", "volumes"))
    assert not all_kept.ok and not all_kept.skipped and "the original study UID" in all_kept.error
    (done,) = predict(original, trained_model, out, keyed("nifti", "volumes", "dicom-seg", overwrite=True))
    assert done.ok, done.error
    assert all(original_study not in p.read_text() for p in out.rglob("*.csv"))
    (again,) = predict(original, trained_model, out, keyed("volumes", "rtstruct"))
    assert again.ok and (out / "t2" / "rtstruct.dcm").is_file(), again.error
    (skipped,) = predict(original, trained_model, out, keyed("volumes", "rtstruct"))
    assert skipped.ok and skipped.skipped  # wholly kept, as asked: not redone


def test_deidentified_cohort_warns_that_one_pseudonym_names_every_case(
    trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--pseudonym is one per run: predicting a cohort of DICOM series with --deidentify gives
    every case the same patient name and ID, which a PACS files as one patient: said."""
    vol = make_oblique_volume(dtype=np.int16)
    for name in ("a", "b"):
        write_dicom_series(vol, tmp_path / "cohort" / name)
    cfg = PredictConfig(formats=("dicom-seg",), deidentify=True, pseudonym="SUBJ001")
    with caplog.at_level(logging.WARNING, logger="medseg"):
        predict(tmp_path / "cohort", trained_model, tmp_path / "out", cfg)
    (warning,) = [r.getMessage() for r in caplog.records if "--pseudonym" in r.getMessage()]
    assert "all 2 DICOM cases name one patient, 'SUBJ001'" in warning
    assert "give --pseudonym auto" in warning
    # --pseudonym auto needs each series' PatientID (these have none): the DICOM outputs are
    # refused before the network runs, the others still written.
    auto = PredictConfig(formats=("dicom-seg",), deidentify=True, pseudonym="auto", uid_secret="k")
    (refused,) = predict(tmp_path / "cohort" / "a", trained_model, tmp_path / "noid", auto)
    assert not refused.ok and "has no PatientID to derive --pseudonym auto from" in refused.error
    partly = PredictConfig(formats=("nifti", "dicom-seg"), deidentify=True, pseudonym="auto", uid_secret="k")
    (part,) = predict(tmp_path / "cohort" / "a", trained_model, tmp_path / "noid2", partly)
    assert sorted(part.outputs) == ["nifti"] and "expected a PatientID" in part.not_written["dicom-seg"]
    # --pseudonym auto names each patient apart: nothing to warn of (the series given IDs).
    for name in ("a", "b"):
        for f in (tmp_path / "cohort" / name).glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.PatientID = f"P-{name}"
            ds.save_as(f)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medseg"):
        results = predict(tmp_path / "cohort", trained_model, tmp_path / "auto", auto)
    assert all(r.ok for r in results) and len(results) == 2
    assert not [r for r in caplog.records if "--pseudonym" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medseg"):
        predict(tmp_path / "cohort" / "a", trained_model, tmp_path / "one", cfg)
    assert not [r for r in caplog.records if "--pseudonym" in r.getMessage()]


def test_a_failed_case_reports_the_time_it_took(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cohort table showed 0.0 seconds for every failed case, also one that failed at export
    after the network had run; its time is now measured as an ok case's (a fake clock here:
    each reading one second later, so nothing depends on real time)."""
    import itertools
    import types

    import medseg.inference.predictor as predictor

    folder = tmp_path / "cohort"
    _case_file(folder, 1)
    (folder / "p9.nii.gz").write_bytes(b"broken")
    clock = itertools.count()
    monkeypatch.setattr(predictor, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
    results = {r.case_id: r for r in predict(folder, trained_model, tmp_path / "out", PredictConfig())}
    assert results["p1"].ok and not results["p9"].ok
    assert results["p9"].seconds >= 1.0
    entries = {
        c["case_id"]: c for c in json.loads((tmp_path / "out" / "predictions.json").read_text())["cases"]
    }
    assert entries["p9"]["seconds"] >= 1.0


def test_a_rerun_that_segments_an_earlier_failed_case_replaces_its_failure(
    trained_model: Path, tmp_path: Path
) -> None:
    """A case that failed in an earlier run into the same folder is no longer listed as failed
    by any summary once a re-run (the same way, with SLURM shards, or without) segments it;
    entries of cases the re-run did not touch stay as they are."""

    def cases(summary: Path) -> dict[str, dict[str, object]]:
        return {c["case_id"]: c for c in json.loads(summary.read_text())["cases"]}

    folder = tmp_path / "cohort"
    for seed in (1, 2, 3):
        _case_file(folder, seed)
    broken = folder / "p9.nii.gz"
    out = tmp_path / "out"

    def break_p9() -> None:
        broken.unlink(missing_ok=True)
        broken.write_bytes(b"broken")
        for p in out.glob("p9*"):
            p.unlink()

    def fix_p9() -> None:
        broken.unlink()
        _case_file(folder, 9)

    # 1. Same way: one summary, its entry replaced.
    break_p9()
    predict(folder, trained_model, out, PredictConfig())
    assert not cases(out / "predictions.json")["p9"]["ok"]
    fix_p9()
    predict(folder, trained_model, out, PredictConfig())
    entry = cases(out / "predictions.json")["p9"]
    assert entry["ok"] and entry["error"] == "" and "nifti" in entry["outputs"]  # type: ignore[operator]
    # 2. Failed in a run without shards, segmented again by a SLURM array (p1, p3 in shard 0 of
    # 2; p2, p9 in shard 1): predictions.json no longer calls it failed, its other cases stay.
    break_p9()
    predict(folder, trained_model, out, PredictConfig())
    before = cases(out / "predictions.json")
    assert not before["p9"]["ok"]
    fix_p9()
    (res,) = [
        r for r in predict(folder, trained_model, out, PredictConfig(shard=(1, 2))) if r.case_id == "p9"
    ]
    assert res.ok and not res.skipped
    assert cases(out / "predictions_shard1of2.json")["p9"]["ok"]
    after = cases(out / "predictions.json")
    assert "p9" not in after and after == {k: v for k, v in before.items() if k != "p9"}
    # 3. Failed in a shard, segmented by a run without shards: the shard's summary follows.
    (out / "predictions.json").unlink()
    break_p9()
    predict(folder, trained_model, out, PredictConfig(shard=(1, 2)))
    assert not cases(out / "predictions_shard1of2.json")["p9"]["ok"]
    fix_p9()
    predict(folder, trained_model, out, PredictConfig())
    assert cases(out / "predictions.json")["p9"]["ok"]
    assert set(cases(out / "predictions_shard1of2.json")) == {"p2"}
    failed = [c["case_id"] for s in out.glob("predictions*.json") for c in cases(s).values() if not c["ok"]]
    assert failed == []


def test_cohort_volume_table_covers_every_shard(trained_model: Path, tmp_path: Path) -> None:
    """cohort_volumes.csv: one row per case with each label's mL, equal to the per-case tables,
    rebuilt by each shard from what is on disk (so the last shard's table covers them all);
    a case that failed is listed as failed, with empty volumes, not left out."""

    folder = tmp_path / "cohort"
    for seed in (1, 2, 3):
        _case_file(folder, seed)
    (folder / "p4.nii.gz").write_bytes(b"broken")  # the second shard's
    out = tmp_path / "out"
    predict(folder, trained_model, out, PredictConfig(formats=("volumes",), shard=(0, 2)))
    with (out / "cohort_volumes.csv").open() as fh:
        assert [r["case"] for r in csv.DictReader(fh)] == ["p1", "p3"]
    (out / "notes").mkdir()
    (out / "notes" / "volumes.csv").write_text("organ,ml\nliver,1500\n")  # someone else's table
    predict(folder, trained_model, out, PredictConfig(formats=("volumes",), shard=(1, 2)))
    with (out / "cohort_volumes.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = {r["case"]: r for r in reader}
        columns = reader.fieldnames
    assert list(rows) == ["p1", "p2", "p3", "p4"]
    failed = rows.pop("p4")
    assert failed["status"] == "failed" and all(v == "" for k, v in failed.items() if k.endswith("_ml"))
    for case, row in rows.items():
        assert row["status"] == "ok"
        with (out / case / "volumes.csv").open() as fh:
            per_case = list(csv.DictReader(fh))
        assert columns == [
            "case",
            *(f"{r['name']}_ml" for r in per_case),
            "status",
            "study_uid",
            "series_uid",
        ]
        assert row["study_uid"] == row["series_uid"] == ""  # NIfTI input: no DICOM series
        for r in per_case:
            assert row[f"{r['name']}_ml"] == r["volume_ml"]
    assert any(float(v) > 0 for row in rows.values() for k, v in row.items() if k.endswith("_ml"))


def test_dicom_in_dicom_seg_and_rtstruct_out(trained_model: Path, tmp_path: Path) -> None:
    from medseg.export.dicom_seg import read_dicom_seg

    img, _ = make_case(4, shape=(9, 36, 30))
    img = img.with_array(np.clip(img.array, 0, 4000).round().astype(np.int16))
    series = tmp_path / "series"
    write_dicom_series(img, series, modality="MR")
    results = predict(
        series,
        trained_model,
        tmp_path / "out",
        PredictConfig(formats=("nifti", "dicom-seg", "rtstruct", "volumes")),
    )
    assert results[0].ok, results[0].error
    label = read_volume(tmp_path / "out" / "series.nii.gz")
    seg = read_dicom_seg(tmp_path / "out" / "series" / "seg.dcm", label)
    np.testing.assert_array_equal(seg.array, label.array)
    # A prediction is always AUTOMATIC and made by medseg, in both formats.
    assert set(seg.meta["algorithm_types"].values()) == {"automatic"}
    assert {(a.name, a.version) for a in seg.meta["algorithms"].values()} == {("medseg", medseg.__version__)}
    assert set(seg.meta["algorithms"]) == set(seg.meta["segments"])
    rt = pydicom.dcmread(tmp_path / "out" / "series" / "rtstruct.dcm", stop_before_pixels=True)
    assert {str(r.ROIGenerationAlgorithm) for r in rt.StructureSetROISequence} == {"AUTOMATIC"}
    assert {str(r.ROIGenerationDescription) for r in rt.StructureSetROISequence} == {
        f"medseg {medseg.__version__}"
    }
    # The cohort table names the source study and series, for joining a PACS export.
    source = pydicom.dcmread(next(series.rglob("*.dcm")), stop_before_pixels=True)
    with (tmp_path / "out" / "cohort_volumes.csv").open() as fh:
        (row,) = csv.DictReader(fh)
    assert (row["case"], row["study_uid"], row["series_uid"]) == (
        "series",
        str(source.StudyInstanceUID),
        str(source.SeriesInstanceUID),
    )


def test_bad_inputs_give_clear_errors(trained_model: Path, tmp_path: Path) -> None:
    model = SegmentationModel(trained_model, device="cpu")
    img, _ = make_case(1, shape=(9, 36, 30))
    with pytest.raises(InputError, match="wrong number of channels"):
        model.predict([img, img])
    flat = Volume(np.random.default_rng(0).normal(size=(1, 36, 30)).astype(np.float32))
    with pytest.raises(InputError, match="2D image but the model is 3D"):
        model.predict([flat])
    with pytest.raises(InputError, match="constant image"):
        model.predict([img.with_array(np.full(img.shape, 7.0, np.float32))])
    nifti_in, _ = _case_file(tmp_path / "in", 3)
    with pytest.raises(InputError, match="need a DICOM input"):
        from medseg.inference.predictor import predict_case

        predict_case(
            model, discover_cases(nifti_in)[0], tmp_path / "o", PredictConfig(formats=("dicom-seg",))
        )
    # A whole run of non-DICOM cases asking for DICOM outputs is refused before any work.
    with pytest.raises(InputError, match="dicom-seg, rtstruct output needs DICOM input"):
        predict(
            nifti_in.parent, model, tmp_path / "o2", PredictConfig(formats=("nifti", "dicom-seg", "rtstruct"))
        )
    assert not (tmp_path / "o2").exists()
    # So is the regions output of a model without regions (not one failed case after another).
    with pytest.raises(ConfigError, match="regions output needs a region-based model"):
        predict(nifti_in.parent, model, tmp_path / "o3", PredictConfig(formats=("nifti", "regions")))
    assert not (tmp_path / "o3").exists()


def test_the_picture_medseg_roi_draws_beside_a_crop_is_not_a_case(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    # `medseg roi -o roi/P0000.nii.gz` writes roi/P0000.roi.png (RGBA) beside the crop; the
    # folder of crops is then predicted as a whole (docs/prostate.md).
    crop, _ = _case_file(tmp_path / "roi", 1, "P0000")
    Image.new("RGBA", (8, 8)).save(tmp_path / "roi" / "P0000.roi.png")
    (tmp_path / "roi" / "P0000.roi.json").write_text("{}")
    with caplog.at_level("INFO"):
        cases = discover_cases(tmp_path / "roi")
    assert [(c.case_id, c.paths) for c in cases] == [("P0000", (crop,))]
    assert "P0000.roi.png" in caplog.text
    # A PNG of that name without its crop beside it is an image like any other.
    crop.unlink()
    assert [c.case_id for c in discover_cases(tmp_path / "roi")] == ["P0000.roi"]


def test_several_series_ask_for_series(trained_model: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    vol = make_oblique_volume(dtype=np.int16)
    write_dicom_series(vol, study / "a", series_description="t2 tra")
    write_dicom_series(vol, study / "a2", series_description="t2 cor")
    (study / "a2").rename(study / "a" / "b")  # two series in one study folder tree
    with pytest.raises(InputError, match="--series"):
        discover_cases(study / "a")
    cases = discover_cases(study / "a", series="t2 cor")
    assert len(cases) == 1 and cases[0].series == "t2 cor"


def test_a_cohort_is_chosen_by_description_not_by_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    cohort = tmp_path / "cohort"
    for patient in ("p1", "p2", "p3"):
        write_dicom_series(vol, cohort / patient / "t2", series_description="T2", series_number=3)
        if patient != "p3":
            write_dicom_series(vol, cohort / patient / "adc", series_description="ADC", series_number=5)
    assert [c.case_id for c in discover_cases(cohort, series="T2")] == ["p1", "p2", "p3"]
    with caplog.at_level("WARNING"):
        adc = discover_cases(cohort, series="ADC")
    # p3 holds no ADC: it is a case that fails naming its series, not a patient left out of
    # predictions.json with a warning only (hidden by -q)
    assert [c.case_id for c in adc] == ["p1", "p2", "p3"]
    assert "1 of 3 folders hold no series matching --series 'ADC'; they fail as cases: p3" in caplog.text
    with pytest.raises(InputError, match=r"has no series with UID or description 'ADC'; found .*'T2'"):
        _read_case(adc[2])
    # A description found in one patient folder only is still asked of every folder (it used
    # to give that patient alone, the others dropped without a word).
    shutil.rmtree(cohort / "p2" / "adc")
    assert [c.case_id for c in discover_cases(cohort, series="ADC")] == ["p1", "p2", "p3"]
    write_dicom_series(vol, cohort / "p2" / "adc", series_description="ADC", series_number=5)
    for number in ("3", "0"):  # a series number, or a position in the listing
        with pytest.raises(InputError, match="a number is ambiguous"):
            discover_cases(cohort, series=number)
    # A UID picks one patient's series out of the cohort: the case is that patient.
    from medseg.io.dicom import list_series, load_series

    uid = next(s.series_uid for s in list_series(cohort / "p2"))
    assert [(c.case_id, c.paths) for c in discover_cases(cohort, series=uid)] == [("p2", (cohort / "p2",))]
    # Without --series, folders with several series no longer stop the cohort: each is a case,
    # and those that need a choice fail alone (the predictor reads them with no series given).
    caplog.clear()
    with caplog.at_level("WARNING"):
        cases = discover_cases(cohort)
    assert [c.case_id for c in cases] == [
        "p1",
        "p2",
        "p3",
    ] and "2 of 3 folders hold several series" in caplog.text
    with pytest.raises(InputError, match=r"p1: holds 2 DICOM series; pick one"):
        load_series(cases[0].paths[0], series=cases[0].series)
    assert load_series(cases[2].paths[0], series=cases[2].series).volume.shape == vol.shape


def test_a_cohort_linked_from_an_archive_with_a_repeated_sequence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Patient folders linked in (not copied), one patient with t2_tse_tra acquired twice."""
    from medseg.io.dicom import load_series

    vol = make_oblique_volume(dtype=np.int16)
    archive = tmp_path / "archive"
    for patient in ("A", "B", "C"):
        write_dicom_series(vol, archive / patient / "tra", series_description="t2_tse_tra", series_number=6)
        write_dicom_series(vol, archive / patient / "sag", series_description="t2_tse_sag", series_number=4)
    repeat = vol.with_array(vol.array + 7)  # patient B moved: the sequence was run again
    write_dicom_series(repeat, archive / "B" / "tra2", series_description="t2_tse_tra", series_number=10)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name, patient in (("p1", "A"), ("p2", "B"), ("p3", "C")):
        (cohort / name).symlink_to(archive / patient, target_is_directory=True)
    (archive / "A" / "up").symlink_to(cohort, target_is_directory=True)  # a loop through the archive
    with caplog.at_level("WARNING"):
        cases = discover_cases(cohort, series="T2_TSE_TRA*@last")
    assert [(c.case_id, c.paths) for c in cases] == [(p, (cohort / p,)) for p in ("p1", "p2", "p3")]
    assert "symbolic link loop" in caplog.text
    np.testing.assert_array_equal(
        load_series(cases[1].paths[0], series=cases[1].series).volume.array, repeat.array
    )
    np.testing.assert_array_equal(
        load_series(cases[0].paths[0], series=cases[0].series).volume.array, vol.array
    )
    # without the rule only the patient with the repeat fails, listing both acquisitions
    cases = discover_cases(cohort, series="t2_tse_tra")
    assert [c.case_id for c in cases] == ["p1", "p2", "p3"]
    with pytest.raises(
        InputError, match=r"p2: has 2 series described 't2_tse_tra'.*SeriesNumber 6.*SeriesNumber 10"
    ):
        load_series(cases[1].paths[0], series=cases[1].series)
    assert load_series(cases[2].paths[0], series=cases[2].series).volume.shape == vol.shape
    # a wildcard matching in one linked folder only is asked of every folder, as a description
    # is: the others fail as cases naming their series
    write_dicom_series(vol, archive / "C" / "dwi", series_description="ep2d_diff_tra", series_number=7)
    assert [c.case_id for c in discover_cases(cohort, series="EP2D*")] == ["p1", "p2", "p3"]
    # without --series, each linked folder of one series is a case named by its link
    singles = tmp_path / "singles"
    singles.mkdir()
    for name, patient in (("q1", "A"), ("q2", "B")):
        (singles / name).symlink_to(archive / patient / "sag", target_is_directory=True)
    assert [(c.case_id, c.paths) for c in discover_cases(singles)] == [
        ("q1", (singles / "q1",)),
        ("q2", (singles / "q2",)),
    ]


def _write_study(folder: Path, seed: int) -> Volume:
    """One study laid out as TCIA downloads are (STUDY/<one folder per series>/), t2_tse_tra
    run twice (No. 6, then No. 10 on another grid after the patient moved); returns No. 10."""
    first = make_oblique_volume(dtype=np.int16, seed=seed)
    write_dicom_series(first, folder / "6-t2tsetra", series_description="t2_tse_tra", series_number=6)
    joined = folder / "6-t2tsetra"  # same StudyInstanceUID and patient as series 6
    write_dicom_series(
        first, folder / "4-t2tsesag", reference=joined, series_description="t2_tse_sag", series_number=4
    )
    repeat = make_oblique_volume(shape=(10, 20, 16), dtype=np.int16, seed=seed + 1)
    write_dicom_series(
        repeat, folder / "10-t2tsetra", reference=joined, series_description="t2_tse_tra", series_number=10
    )
    return repeat


def test_a_study_folder_of_series_folders_is_one_case(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Series subfolders of one study (by StudyInstanceUID, not folder names) are one case."""
    from medseg.io.dicom import load_series

    study = tmp_path / "study"
    repeat = _write_study(study, 3)
    with caplog.at_level("INFO", logger="medseg.inference.predictor"):
        cases = discover_cases(study, series="t2_tse_tra@last")
    assert [(c.case_id, c.paths, c.series) for c in cases] == [("study", (study,), "t2_tse_tra@last")]
    assert "one study, 3 series: picked No. 10 't2_tse_tra'" in caplog.text
    assert "cohort" not in caplog.text
    read = load_series(cases[0].paths[0], series=cases[0].series)
    assert read.info.series_number == 10
    np.testing.assert_array_equal(read.volume.array, repeat.array)
    assert discover_cases(study, series="t2_tse_tra@first")[0].paths == (study,)
    # the choice is checked against the study's series at once, each error listing them
    with pytest.raises(InputError, match=r"study: has 2 series described 't2_tse_tra'.*SeriesNumber 10"):
        discover_cases(study, series="t2_tse_tra")
    with pytest.raises(InputError, match=r"study: has no series matching 'ep2d\*'"):
        discover_cases(study, series="ep2d*")
    with pytest.raises(InputError, match=r"study: holds 3 DICOM series; pick one"):
        discover_cases(study)


def test_patient_folders_of_series_folders_stay_a_cohort(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two patients, each a study of series subfolders: one case per patient folder."""
    from medseg.io.dicom import load_series

    cohort = tmp_path / "cohort"
    repeats = {p: _write_study(cohort / p / "study", seed) for p, seed in (("p1", 1), ("p2", 5))}
    with caplog.at_level("INFO", logger="medseg.inference.predictor"):
        cases = discover_cases(cohort, series="t2_tse_tra@last")
    assert [(c.case_id, c.paths) for c in cases] == [(p, (cohort / p,)) for p in ("p1", "p2")]
    assert "cohort of 2 patient folders (not one study): 2 cases" in caplog.text
    assert "series: picked" not in caplog.text
    for case in cases:
        read = load_series(case.paths[0], series=case.series)
        np.testing.assert_array_equal(read.volume.array, repeats[case.case_id].array)
    # a patient folder alone is that patient's one study
    (one,) = discover_cases(cohort / "p2", series="t2_tse_sag")
    assert one.paths == (cohort / "p2",)


def test_a_cohort_of_patient_folders_without_series_asks_for_the_shared_description(tmp_path: Path) -> None:
    """PROSTATEx's three patient folders (43 series) without --series: the error said 'holds 43
    DICOM series; choose one' and listed 43 UIDs, as if one series of the whole folder were to be
    picked. It now says it is a cohort and which descriptions the folders share."""
    cohort = tmp_path / "cohort"
    for p, seed in (("p1", 1), ("p2", 5)):
        _write_study(cohort / p / "study", seed)
    with pytest.raises(InputError) as info:
        discover_cases(cohort)
    message = str(info.value)
    assert "is a cohort of 2 patient folders holding 6 DICOM series (several per folder)" in message
    assert "expected --series with the description of the series to segment in every folder" in message
    assert "found 't2_tse_sag' in 2 of 2 folders; 't2_tse_tra' in 2 of 2 folders" in message
    assert "choose one" not in message
    # one study's series folders still ask for one of them, listed
    with pytest.raises(InputError, match="holds 3 DICOM series; pick one"):
        discover_cases(cohort / "p1")


def test_patient_folders_without_images_are_named_not_dropped_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cohort folder whose patient folder holds no DICOM (an export that failed) gave one
    row fewer in cohort_volumes.csv without a word; now a warning names such folders. A folder
    whose series do not match --series is named by its own warning, not this one."""
    cohort = tmp_path / "cohort"
    for p, seed in (("p1", 1), ("p3", 5)):
        _write_study(cohort / p / "study", seed)
    (cohort / "p2").mkdir()
    (cohort / "p4").mkdir()
    (cohort / "p4" / "report.txt").write_text("no images here")
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        cases = discover_cases(cohort, series="t2_tse_tra@last")
    assert [c.case_id for c in cases] == ["p1", "p3"]
    assert f"2 of 4 folders in {cohort} hold no DICOM image series and are not cases: p2, p4" in caplog.text
    write_dicom_series(
        make_oblique_volume(dtype=np.int16, seed=9), cohort / "p5" / "ct", series_description="ct"
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        discover_cases(cohort, series="t2_tse_tra@last")
    assert (
        "1 of 3 folders hold no series matching --series" in caplog.text
        and "fail as cases: p5" in caplog.text
    )
    assert "5 folders in" in caplog.text and "not cases: p2, p4" in caplog.text  # p5 holds images


def test_one_unreadable_study_fails_alone_in_a_cohort(
    trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A patient folder holding a DICOM file cut short is one failed case of the cohort: the
    other patients are segmented (it used to stop the whole run before the first case)."""
    cohort = tmp_path / "cohort"
    for p, seed in (("p1", 1), ("p3", 5)):
        _write_study(cohort / p / "study", seed)
    good = next((cohort / "p1" / "study" / "10-t2tsetra").iterdir())
    (cohort / "p2" / "study").mkdir(parents=True)
    (cohort / "p2" / "study" / "1.dcm").write_bytes(good.read_bytes()[:600])  # header cut short
    with caplog.at_level("INFO", logger="medseg.inference.predictor"):
        cases = discover_cases(cohort, series="t2_tse_tra@last")
    assert [(c.case_id, c.paths) for c in cases] == [(p, (cohort / p,)) for p in ("p1", "p2", "p3")]
    assert "1 of 3 patient folders hold an unreadable DICOM file and fail alone: p2" in caplog.text
    assert "cohort of 3 patient folders (not one study): 3 cases" in caplog.text  # p2 counted
    out = tmp_path / "out"
    predict(cohort, trained_model, out, PredictConfig(formats=("volumes",), series="t2_tse_tra@last"))
    with (out / "cohort_volumes.csv").open() as fh:
        status = {r["case"]: r["status"] for r in csv.DictReader(fh)}
    assert status == {"p1": "ok", "p2": "failed", "p3": "ok"}
    entries = {c["case_id"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    assert "p2/study/1.dcm: is truncated or corrupt" in entries["p2"]["error"]
    # one study whose series folder holds the broken file is still refused, naming the file
    study = tmp_path / "study"
    _write_study(study, 7)
    (study / "12-broken").mkdir()
    (study / "12-broken" / "1.dcm").write_bytes(good.read_bytes()[:600])
    with pytest.raises(InputError, match=r"12-broken/1.dcm: is truncated or corrupt"):
        discover_cases(study, series="t2_tse_tra@last")


def test_anonymised_patient_folders_sharing_one_study_uid_stay_a_cohort(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Some anonymisers give every patient the same PatientID and StudyInstanceUID: patient
    folders each holding the same series once are still a cohort, not one study whose
    '@last' would keep only the patient scanned last."""
    cohort = tmp_path / "cohort"
    first = cohort / "p0" / "t2"
    for i, patient in enumerate(("p0", "p1", "p2")):
        vol = make_oblique_volume(dtype=np.int16, seed=10 + i)
        write_dicom_series(
            vol,
            cohort / patient / "t2",
            reference=None if i == 0 else first,  # the same study UID and patient for all
            series_description="t2_tse_tra",
            series_number=6 + i,
        )
    for choice in (None, "t2_tse_tra", "t2_tse_tra@last"):
        with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
            cases = discover_cases(cohort, series=choice)
        assert [c.case_id for c in cases] == ["p0", "p1", "p2"], choice
        assert "anonymised?" in caplog.text
        caplog.clear()


def test_prostatex_study_folder_with_last_is_one_case(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The TCIA layout of the walkthrough: ProstateX-0001's study folder, t2_tse_tra run as
    series 6 and again as 10; @last makes one case reading 10 (not two cases, one per folder)."""
    from medseg.io.dicom import load_series

    root = shared_data / "prostatex_dicom"
    study = root / "ProstateX-0001" / "07-08-2011"
    with caplog.at_level("INFO", logger="medseg.inference.predictor"):
        cases = discover_cases(study, series="t2_tse_tra@last")
    # named after the patient folder too: a date alone would clash between patients
    assert [(c.case_id, c.paths) for c in cases] == [("ProstateX-0001_07-08-2011", (study,))]
    assert "one study, 11 series: picked No. 10 't2_tse_tra'" in caplog.text
    read = load_series(cases[0].paths[0], series=cases[0].series)
    assert read.info.series_number == 10
    assert read.info.folder == study / "10.000000-t2tsetra-17541"
    caplog.clear()
    with caplog.at_level("INFO", logger="medseg.inference.predictor"):
        cohort = discover_cases(root, series="t2_tse_tra*@last")
    assert [c.case_id for c in cohort] == ["ProstateX-0000", "ProstateX-0001", "ProstateX-0218"]
    assert "cohort of 3 patient folders" in caplog.text


def test_predict_cli_segments_one_series_of_a_study_folder(trained_model: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    repeat = _write_study(study, 7)
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(study),
            "--series",
            "t2_tse_tra@last",
            "-m",
            str(trained_model),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 0, res.output
    (entry,) = json.loads((tmp_path / "o" / "predictions.json").read_text())["cases"]
    assert entry["case_id"] == "study" and entry["ok"], entry
    assert read_volume(tmp_path / "o" / "study.nii.gz").shape == repeat.shape  # series 10's grid


def test_existing_output_and_disk_full(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _case_file(tmp_path / "in", 8)
    out = tmp_path / "out"
    predict(path, trained_model, out, PredictConfig(formats=("nifti", "volumes")))
    first = json.loads((out / "predictions.json").read_text())
    nifti = out / "p8.nii.gz"
    stamp = nifti.stat().st_mtime_ns
    again = predict(path, trained_model, out, PredictConfig())
    assert again[0].ok and again[0].skipped and again[0].outputs == {"nifti": str(nifti)}
    assert nifti.stat().st_mtime_ns == stamp
    # The summary still describes the outputs on disk, not the refused re-run.
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert entry["ok"] and entry["outputs"] == first["cases"][0]["outputs"] and "not redone" in entry["note"]
    # A new case in the same folder is added; the earlier one is kept, even by --overwrite runs.
    second, _ = _case_file(tmp_path / "in2", 9)
    predict(second, trained_model, out, PredictConfig(overwrite=True))
    cases = {c["case_id"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    assert set(cases) == {"p8", "p9"} and cases["p8"]["ok"] and cases["p9"]["ok"]
    assert set(cases["p8"]["outputs"]) == {"nifti", "volumes"}
    # A killed run writes no summary: its resume records what it finds on disk.
    (out / "predictions.json").unlink()
    predict(path, trained_model, out, PredictConfig(formats=("nifti", "volumes")))
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert entry["ok"] and set(entry["outputs"]) == {"nifti", "volumes"}
    # Another format for a done case: the earlier outputs stay listed beside the new one.
    predict(path, trained_model, out, PredictConfig(formats=("overlay",)))
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert entry["ok"] and set(entry["outputs"]) == {"nifti", "volumes", "overlay"}
    # Formats added to a case whose other outputs exist (a re-run with more formats, or the
    # resume of a killed run): the missing ones are made, the existing ones kept untouched.
    (out / "predictions.json").unlink()
    stamp = nifti.stat().st_mtime_ns
    (res,) = predict(path, trained_model, out, PredictConfig(formats=("nifti", "report", "volumes")))
    assert res.ok and not res.skipped and set(res.outputs) == {"nifti", "report", "volumes"}
    assert (out / "p8" / "report.html").is_file() and nifti.stat().st_mtime_ns == stamp
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert entry["ok"] and set(entry["outputs"]) == {"nifti", "report", "volumes"}
    import medseg.io.itk as itk

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(itk.sitk, "WriteImage", full)
    res = predict(path, trained_model, tmp_path / "full", PredictConfig())
    assert not res[0].ok and "No space left" in res[0].error
    assert not list((tmp_path / "full").glob("*.nii.gz")) and not list((tmp_path / "full").glob(".*tmp*"))
    assert path.is_file()  # the input is untouched


def test_incomplete_model_folder(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "plan.json").unlink()
    with pytest.raises(InputError, match=r"incomplete.*plan\.json"):
        SegmentationModel(model_copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not a model folder"):
        SegmentationModel(empty)


def test_model_for_other_channels_is_refused(model_copy: Path) -> None:
    model = SegmentationModel(model_copy, device="cpu")
    with pytest.raises(InputError, match="channels"):
        model.check_input([make_oblique_volume()] * 2, "x")
    with pytest.raises(OutputExistsError):
        raise OutputExistsError(model_copy)


def test_predict_cli(trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.cli.common import console

    # an 80-column terminal: the table folds the output paths instead of cutting them with '…'
    monkeypatch.setattr(console, "width", 80)
    path, _ = _case_file(tmp_path / "in", 2)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "predict",
            str(path),
            "-m",
            str(trained_model),
            "-o",
            str(tmp_path / "o"),
            "--format",
            "nifti,volumes",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "p2.nii.gz").is_file()
    outputs = "".join(row.split("│")[3].strip() for row in res.stdout.splitlines() if row.count("│") == 5)
    assert "…" not in res.stdout and str(tmp_path / "o" / "p2.nii.gz") in outputs, res.stdout
    assert "cohort_volumes.csv" in res.stdout and (tmp_path / "o" / "cohort_volumes.csv").is_file()
    assert not (tmp_path / "o" / "index.html").exists()  # the index lists reports: none asked for
    summary = json.loads((tmp_path / "o" / "predictions.json").read_text())
    import medseg

    assert summary["medseg_version"] == medseg.__version__ and summary["model_info"]["folds"] == 1
    bad = runner.invoke(app, ["predict", str(path), "-m", str(tmp_path / "in"), "-o", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "not a model folder" in bad.output
    fmt = runner.invoke(
        app, ["predict", str(path), "-m", str(trained_model), "-o", str(tmp_path / "o3"), "--format", "gif"]
    )
    assert fmt.exit_code == 2 and "unknown output format" in fmt.output


def test_predict_cli_quiet_prints_only_errors_and_the_summary(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import medseg.inference.predictor as predictor

    folder = tmp_path / "cohort"
    for seed in (1, 2):
        _case_file(folder, seed)
    (folder / "p9.nii.gz").write_bytes(b"broken")
    bars: list[bool] = []
    real_bar = predictor.progress_bar

    def recording_bar(enabled: bool, description: str, total: int | None):  # type: ignore[no-untyped-def]
        bars.append(enabled)
        return real_bar(False, description, total)

    monkeypatch.setattr(predictor, "progress_bar", recording_bar)
    caplog.set_level(logging.INFO)
    args = ["predict", str(folder), "-m", str(trained_model), "--format", "nifti,volumes"]
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 1, res.output
    assert bars == [False]
    medseg_records = [r for r in caplog.records if r.name.startswith("medseg")]
    assert medseg_records and all(r.levelno >= logging.ERROR for r in medseg_records), medseg_records
    assert any("p9" in r.getMessage() for r in medseg_records)
    assert res.stdout.strip().splitlines() == [f"2 of 3 case(s) segmented; outputs in {tmp_path / 'o'}"]
    assert logging.getLogger("medseg").level == logging.NOTSET  # restored after the command
    # Without -q: the progress bar, the info lines and the per-case table are back.
    caplog.clear()
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "outputs / error" in res.stdout and "volumes of every case" in res.stdout
    assert bars == [False, True]
    assert any(r.levelno == logging.INFO for r in caplog.records if r.name.startswith("medseg"))


def test_prediction_on_the_multiplane_roi_lands_on_the_full_grid(trained_model: Path, tmp_path: Path) -> None:
    from medseg.data.phantom import make_prostate_case
    from medseg.export.dicom_seg import read_dicom_seg
    from medseg.geometry.roi import multiplane_roi

    case = make_prostate_case(3, size=(12, 64, 64), spacing=(3.0, 1.0, 1.0), views=True)
    axial = case.image.with_array(np.clip(case.image.array, 0, 4000).round().astype(np.int16))
    series = tmp_path / "axial"
    write_dicom_series(axial, series, modality="MR")
    sag = write_volume(case.views["sagittal"][0], tmp_path / "sag.nii.gz")
    cor = write_volume(case.views["coronal"][0], tmp_path / "cor.nii.gz")
    cfg = PredictConfig(formats=("nifti", "dicom-seg"), roi_views=(sag, cor))
    res = predict(series, trained_model, tmp_path / "out", cfg)
    assert res[0].ok, res[0].error
    full = read_volume(tmp_path / "out" / "axial.nii.gz")
    axial_read = read_volume(series)
    axial_read.geometry.require_same(full.geometry, spacing_atol=1e-5, origin_atol=1e-4)
    roi = multiplane_roi(axial_read, read_volume(sag), read_volume(cor))
    outside = np.ones(full.shape, bool)
    outside[roi.box.slices] = False
    assert outside.any() and not full.array[outside].any()  # nothing predicted outside the ROI
    inside, _ = SegmentationModel(trained_model, device="cpu").predict([roi.cropped])
    np.testing.assert_array_equal(full.array[roi.box.slices], inside.array)
    seg = read_dicom_seg(tmp_path / "out" / "axial" / "seg.dcm", full)
    np.testing.assert_array_equal(seg.array, full.array)
    two = tmp_path / "two"
    _case_file(two, 1)
    _case_file(two, 2)
    with pytest.raises(InputError, match="one study"):
        predict(two, trained_model, tmp_path / "o2", PredictConfig(roi_views=(sag, cor)))


def test_a_residual_encoder_model_folder_is_rebuilt_from_its_plan(
    trained_model: Path, tmp_path: Path
) -> None:
    """Network options in the plan (residual encoder, blocks per level) travel with the model."""
    import torch

    from medseg.models.blocks import ResidualStage
    from medseg.preprocessing.plan import Plan
    from medseg.training.checkpoint import save_checkpoint, write_model_json
    from medseg.training.trainer import architecture_from_plan

    plan = Plan.load(trained_model / "plan.json")
    levels = len(plan.network.pooling) + 1
    blocks = [1] + [2] * (levels - 1)
    plan = plan.with_overrides({"network": {"options": {"residual_encoder": True, "encoder_blocks": blocks}}})
    arch = architecture_from_plan(plan)
    torch.manual_seed(3)
    net = arch.build()
    folder = tmp_path / "resenc"
    folder.mkdir()
    plan.save(folder / "plan.json")
    shutil.copy(trained_model / "dataset.json", folder / "dataset.json")
    save_checkpoint(
        folder / "checkpoint_best.pt", {"model": net.state_dict(), "architecture": arch.to_dict()}
    )
    write_model_json(folder, arch, {"configuration": plan.configuration, "labels": plan.labels})

    model = SegmentationModel(folder, device="cpu")
    (loaded,) = model.networks
    assert isinstance(loaded, torch.nn.Module)
    assert sum(isinstance(m, ResidualStage) for m in loaded.modules()) == 1 + 2 * (levels - 1)
    reference = net.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    path, image = _case_file(tmp_path / "in", 5)
    label, probs = model.predict([read_volume(path)], with_probabilities=True)
    image.geometry.require_same(label.geometry, spacing_atol=1e-5, origin_atol=1e-4)
    assert label.shape == image.shape

    # The residual shortcuts (average pooling over the stride, 1 x 1 projection) export to
    # ONNX and the ONNX Runtime backend predicts the same probabilities.
    from medseg.inference.onnx import export_onnx, read_metadata

    (onnx_file,) = export_onnx(folder)
    assert float(read_metadata(onnx_file)["verified_max_abs_diff"]) < 1e-3
    onnx_label, onnx_probs = SegmentationModel(folder, device="cpu", backend="onnx").predict(
        [read_volume(path)], with_probabilities=True
    )
    assert probs is not None and onnx_probs is not None
    assert np.abs(onnx_probs - probs).max() < 1e-3
    assert (onnx_label.array == label.array).mean() > 0.999


def test_png_input_takes_a_spacing_and_a_wrong_one_is_a_clear_error(
    tmp_path: Path, trained_model: Path
) -> None:
    trained_3d = trained_model
    from dataclasses import replace

    from PIL import Image

    from medseg.preprocessing.pipeline import plan_dataset, preprocess_case
    from medseg.training.config import TrainingConfig
    from medseg.training.trainer import train
    from tests.preprocessing.conftest import write_dataset

    root = write_dataset(tmp_path / "toy", n=4)
    plan_dataset(root, "2d", overrides={"patch_size": [1, 16, 16], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(epochs=1, iterations_per_epoch=2, val_every=1, num_workers=0, max_val_cases=1)
    model_dir = train(root, 0, configuration="2d", config=cfg, folds=2).model_dir
    img, _ = make_case(3, shape=(9, 36, 30))
    slice_ = img.array[4]
    scaled = (255 * (slice_ - slice_.min()) / (slice_.max() - slice_.min())).astype(np.uint8)
    png = tmp_path / "slice.png"
    Image.fromarray(scaled).save(png)
    model = SegmentationModel(model_dir, device="cpu")
    spacing = (3.0, 0.7, 0.5)
    res = predict(png, model_dir, tmp_path / "out", PredictConfig(spacing=spacing))
    assert res[0].ok, res[0].error
    label = read_volume(tmp_path / "out" / "slice.nii.gz")
    assert label.shape == (1, 36, 30) and label.spacing == pytest.approx(spacing)
    # A folder of PNG slices: one 2D case per file.
    folder = tmp_path / "pngs"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray(scaled).save(folder / f"{name}.png")
    res = predict(folder, model_dir, tmp_path / "out_folder", PredictConfig(spacing=spacing))
    assert [(r.case_id, r.ok) for r in res] == [("a", True), ("b", True)], res
    # The same folder for a 3D model: each PNG alone would lack its neighbours; refused.
    with pytest.raises(
        InputError, match=r"2 PNG/TIFF slices would each be segmented alone.*3d model.*medseg convert"
    ):
        predict(folder, trained_3d, tmp_path / "out_3d", PredictConfig(spacing=spacing))
    assert not (tmp_path / "out_3d").exists()
    tiffs = tmp_path / "tiffs"
    tiffs.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(scaled).save(tiffs / f"{name}.tif")
    with pytest.raises(InputError, match=r"3 PNG/TIFF slices would each be segmented alone"):
        predict(tiffs, trained_3d, tmp_path / "out_3d", PredictConfig(spacing=spacing))
    # A plan for 4 nm pixels and an image read as 1 mm pixels: refused before resampling.
    tiny = replace(model.plan, target_spacing=(0.004, 0.004, 0.004))
    big = Volume(np.zeros((1, 128, 128), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing is probably wrong") as info:
        preprocess_case([big], None, tiny, "slice.png")
    assert "predict --spacing Z Y X" in str(info.value) and "slice.png" in str(info.value)


def test_options_and_output_folder_are_checked_up_front(trained_model: Path, tmp_path: Path) -> None:
    path, _ = _case_file(tmp_path / "in", 5)
    for bad, message in (
        ({"device": "gpu"}, "device must be auto, cpu or cuda"),
        ({"backend": "ort"}, "backend must be 'torch' or 'onnx'"),
        ({"sw_batch_size": 0}, "sw_batch_size and threads must be >= 1"),
        ({"mesh_suffix": ".xyz"}, "mesh format must be one of stl, obj, ply, found 'xyz'"),
    ):
        with pytest.raises(ConfigError, match=message):
            PredictConfig(**bad)  # type: ignore[arg-type]
    a_file = tmp_path / "afile"
    a_file.write_text("")
    with pytest.raises(InputError, match="afile: is a file, not an output folder"):
        predict(path, trained_model, a_file, PredictConfig())
    runner = CliRunner()
    res = runner.invoke(
        app, ["predict", str(path), "-m", str(trained_model), "-o", str(tmp_path / "o"), "--device", "gpu"]
    )
    assert res.exit_code == 2 and "device must be" in res.output
    res = runner.invoke(
        app,
        ["predict", str(path), "-m", str(trained_model), "-o", str(tmp_path / "o"), "--mesh-format", "xyz"],
    )
    assert res.exit_code == 2 and not (tmp_path / "o").exists()


def test_an_ensemble_fold_without_model_json_is_an_error(model_copy: Path, tmp_path: Path) -> None:
    import shutil

    ensemble = tmp_path / "ensemble"
    for k in range(3):
        shutil.copytree(model_copy, ensemble / f"fold_{k}")
    (ensemble / "fold_1" / "model.json").unlink()
    with pytest.raises(InputError, match=r"fold_1: model folder is incomplete.*2 other fold\(s\)"):
        SegmentationModel(ensemble, device="cpu")
    shutil.rmtree(ensemble / "fold_1")
    (ensemble / "fold_1").mkdir()  # an empty one is only ignored
    assert len(SegmentationModel(ensemble, device="cpu").folders) == 2


def test_a_model_from_a_newer_medseg_is_flagged(model_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = json.loads((model_copy / "model.json").read_text())
    record["medseg_version"] = "99.0.0"
    (model_copy / "model.json").write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        SegmentationModel(model_copy, device="cpu")
    assert any("written by medseg 99.0.0, newer than this medseg" in r.getMessage() for r in caplog.records)
    plan = json.loads((model_copy / "plan.json").read_text())
    plan["schema_version"] = 2
    (model_copy / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ConfigError, match=r"plan\.json: plan schema_version 2 is not supported"):
        SegmentationModel(model_copy, device="cpu")


def test_an_ensemble_of_configurations_with_different_rules_warns_once_naming_each(
    trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 3D and a 2D model with different postprocessing.json: the first -m's rules apply (as
    the docstring says), and one warning names each member, its rules and which apply."""
    from medseg.postprocessing.labels import ClassRule, PostprocessingRules, apply_rules, write_rules
    from medseg.preprocessing.pipeline import plan_dataset
    from medseg.training.config import TrainingConfig
    from medseg.training.trainer import train
    from tests.preprocessing.conftest import write_dataset

    root = write_dataset(tmp_path / "toy", n=4)
    plan_dataset(root, "2d", overrides={"patch_size": [1, 16, 16], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(epochs=1, iterations_per_epoch=3, val_every=1, num_workers=0, max_val_cases=1)
    model_2d = train(root, 0, configuration="2d", config=cfg, folds=2).model_dir
    model_3d = tmp_path / "m3d"
    shutil.copytree(trained_model, model_3d)
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        SegmentationModel([model_3d, model_2d], device="cpu")
    assert not caplog.records  # both without rules: nothing to say
    rules_3d = PostprocessingRules(classes={1: ClassRule(keep_largest=True)})
    rules_2d = PostprocessingRules(classes={2: ClassRule(fill_holes="2d")}, keep_largest_foreground=True)
    write_rules(rules_3d, model_3d / "postprocessing.json", overwrite=True)
    write_rules(rules_2d, model_2d / "postprocessing.json", overwrite=True)
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        both = SegmentationModel([model_3d, model_2d], device="cpu")
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"3d ({model_3d / 'postprocessing.json'}): label 1 (outer): keep largest" in message
    assert f"2d ({model_2d / 'postprocessing.json'}): label 2 (inner): fill holes 2d" in message
    assert "largest foreground component" in message and "The first model's (3d) apply" in message
    assert both.rules == rules_3d
    img, _ = make_case(6, shape=(9, 36, 30))
    raw, _ = both.predict([img], postprocess=False)
    np.testing.assert_array_equal(both.predict([img])[0].array, apply_rules(raw.array, rules_3d, raw.spacing))
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        other = SegmentationModel([model_2d, model_3d], device="cpu")  # the order chooses
    assert other.rules == rules_2d and "The first model's (2d) apply" in caplog.records[0].getMessage()
    caplog.clear()
    write_rules(rules_3d, model_2d / "postprocessing.json", overwrite=True)
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        SegmentationModel([model_3d, model_2d], device="cpu")
    assert not caplog.records


def test_an_ensemble_of_folds_with_different_rules_warns_once_naming_them(
    trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three folds of one configuration, one postprocessing.json edited by hand: the first
    fold's rules apply (as before), and one warning names the folds whose rules differ, with
    their rules, and the rules applied (the same helper as for configuration ensembles)."""
    from medseg.postprocessing.labels import ClassRule, PostprocessingRules, apply_rules, write_rules

    ens = tmp_path / "ensemble"
    for k in range(3):
        shutil.copytree(trained_model, ens / f"fold_{k}")
    tuned = PostprocessingRules(classes={1: ClassRule(keep_largest=True)})
    for k in range(3):
        write_rules(tuned, ens / f"fold_{k}" / "postprocessing.json", overwrite=True)
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        SegmentationModel(ens, device="cpu")
    assert not caplog.records  # as tune-postprocessing leaves them: nothing to say
    edited = PostprocessingRules(classes={2: ClassRule(fill_holes="3d")})
    write_rules(edited, ens / "fold_2" / "postprocessing.json", overwrite=True)
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        model = SegmentationModel(ens, device="cpu")
    (message,) = [r.getMessage() for r in caplog.records]
    assert "the 3d ensemble's folds hold different postprocessing rules" in message
    post = {k: ens / f"fold_{k}" / "postprocessing.json" for k in range(3)}
    assert (
        f"fold_0 ({post[0]}): label 1 (outer): keep largest; connectivity 26 (as do fold_1 ({post[1]}))"
        in message
    )
    assert f"fold_2 ({post[2]}): label 2 (inner): fill holes 3d" in message
    assert "The first fold's (fold_0) apply to every fold" in message
    assert model.rules == tuned
    img, _ = make_case(6, shape=(9, 36, 30))
    raw, _ = model.predict([img], postprocess=False)
    np.testing.assert_array_equal(model.predict([img])[0].array, apply_rules(raw.array, tuned, raw.spacing))
    caplog.clear()
    (ens / "fold_0" / "postprocessing.json").unlink()  # a fold without a file holds no rules
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        assert SegmentationModel(ens, device="cpu").rules == PostprocessingRules()
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"fold_0 (no {post[0]}): none; fold_1 ({post[1]}): label 1 (outer): keep largest" in message


def test_an_ensemble_of_configurations_averages_probabilities_on_the_input_grid(
    trained_model: Path, tmp_path: Path
) -> None:
    """-m a 3D model -m a 2D model of the same labels: the mean of their class probabilities on
    the input grid decides each voxel (each member's own probabilities, computed separately)."""
    from medseg.preprocessing.pipeline import plan_dataset
    from medseg.training.config import TrainingConfig
    from medseg.training.trainer import train
    from tests.preprocessing.conftest import write_dataset

    root = write_dataset(tmp_path / "toy", n=4)
    plan_dataset(root, "2d", overrides={"patch_size": [1, 16, 16], "batch_size": 2}, workers=1)
    cfg = TrainingConfig(epochs=1, iterations_per_epoch=3, val_every=1, num_workers=0, max_val_cases=1)
    model_2d = train(root, 0, configuration="2d", config=cfg, folds=2).model_dir
    img, _ = make_case(6, shape=(9, 36, 30))
    both = SegmentationModel([trained_model, model_2d], device="cpu")
    assert [p.configuration for p in both.plans] == ["3d", "2d"] and both.describe()[
        "configuration"
    ] == "3d + 2d"
    label, probs = both.predict([img], with_probabilities=True, postprocess=False)
    members = [SegmentationModel(m, device="cpu") for m in (trained_model, model_2d)]
    each = [m.predict([img], with_probabilities=True, postprocess=False)[1] for m in members]
    mean = (each[0] + each[1]) / 2
    np.testing.assert_allclose(probs, mean, atol=1e-6)
    np.testing.assert_array_equal(label.array, np.argmax(mean, axis=0))
    assert label.geometry.is_close(img.geometry)
    # The CLI takes -m twice; a model of other labels cannot join.
    src = write_volume(img, tmp_path / "in" / "c6.nii.gz")
    res = CliRunner().invoke(
        app, ["predict", str(src), "-m", str(trained_model), "-m", str(model_2d), "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(
        read_volume(tmp_path / "o" / "c6.nii.gz").array, both.predict([img])[0].array
    )
    mixed = tmp_path / "mixed"  # one folder whose folds have different plans: likely a stale fold
    shutil.copytree(trained_model, mixed / "fold_0")
    shutil.copytree(model_2d, mixed / "fold_1")
    with pytest.raises(InputError, match=r"different plans.*its own -m"):
        SegmentationModel(mixed, device="cpu")
    summary = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert summary["model"] == f"{trained_model}, {model_2d}"
    other = json.loads((model_2d / "plan.json").read_text())
    other["labels"] = {"background": 0, "a": 1, "b": 2}
    (model_2d / "plan.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="segment different labels"):
        SegmentationModel([trained_model, model_2d], device="cpu")


def test_added_formats_come_from_the_kept_label_map(trained_model: Path, tmp_path: Path) -> None:
    """A re-run with more formats derives them from the label map on disk, not from a new
    prediction (which another model or setting could make differ), so a case's outputs agree."""

    path, _ = _case_file(tmp_path / "in", 4)
    out = tmp_path / "out"
    predict(path, trained_model, out, PredictConfig(formats=("nifti",)))
    nifti = out / "p4.nii.gz"
    edited = read_volume(nifti)
    edited.array[...] = 0
    edited.array[2:4, 5:9, 5:9] = 2  # as if another model had made it: 32 voxels of class 2
    write_volume(edited, nifti, overwrite=True)
    (res,) = predict(path, trained_model, out, PredictConfig(formats=("nifti", "volumes", "mesh")))
    assert res.ok and set(res.outputs) == {"nifti", "volumes", "mesh"}
    with (out / "p4" / "volumes.csv").open() as fh:
        counts = {int(r["label"]): int(r["voxel_count"]) for r in csv.DictReader(fh)}
    assert counts[1] == 0 and counts[2] == 32
    assert [p.suffix for p in (out / "p4" / "meshes").iterdir()] == [".stl"]
    # Another mesh format for the same folder: said, not skipped.
    with pytest.raises(InputError, match=r"meshes: holds meshes of another format.*\.ply"):
        from medseg.inference.predictor import InputCase, SegmentationModel, predict_case

        predict_case(
            SegmentationModel(trained_model, device="cpu"),
            InputCase("p4", "files", (path,)),
            out,
            PredictConfig(formats=("nifti", "mesh"), mesh_suffix=".ply"),
        )


def test_meshes_of_one_case_show_a_bar_of_their_own_not_inside_the_case_bar(
    trained_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One case: its several meshes get a progress bar. Several cases: the case bar only (Rich
    shows one live display at a time; a second inside it would fail)."""
    cases = [_case_file(tmp_path / "in", seed)[0] for seed in (4, 5)]
    out = tmp_path / "out"
    predict(tmp_path / "in", trained_model, out, PredictConfig(formats=("nifti",)))
    for path in cases:  # kept label maps with two labels each, which the mesh output is made from
        nifti = out / f"{path.name.split('.')[0]}.nii.gz"
        edited = read_volume(nifti)
        edited.array[...] = 0
        edited.array[2:4, 5:9, 5:9] = 1
        edited.array[5:7, 5:9, 5:9] = 2
        write_volume(edited, nifti, overwrite=True)
    capsys.readouterr()
    (one,) = predict(cases[0], trained_model, out, PredictConfig(formats=("nifti", "mesh")), progress=True)
    assert one.ok and len(list(Path(one.outputs["mesh"]).iterdir())) == 2
    err = capsys.readouterr().err
    assert "meshes" in err and "2/2" in err
    both = predict(
        tmp_path / "in", trained_model, out, PredictConfig(formats=("nifti", "mesh")), progress=True
    )
    assert [r.ok for r in both] == [True, True], [r.error for r in both]
    err = capsys.readouterr().err
    assert "predict" in err and "meshes" not in err
    quiet = predict(
        cases[0], trained_model, tmp_path / "o2", PredictConfig(formats=("mesh",)), progress=False
    )
    assert quiet[0].ok and "meshes" not in capsys.readouterr().err


def test_an_output_folder_holding_the_input_is_refused(trained_model: Path, tmp_path: Path) -> None:
    path, _ = _case_file(tmp_path / "in", 3)
    (res,) = predict(path, trained_model, path.parent, PredictConfig(formats=("nifti", "volumes")))
    assert not res.ok and "would be the input image itself" in res.error
    assert path.is_file() and not (path.parent / "p3").exists()


def test_a_series_of_stacked_volumes_takes_a_volume_choice(trained_model: Path, tmp_path: Path) -> None:
    """A DWI-like series (two volumes at the same positions): the case asks for --volume, and
    with it predicts that volume on its grid."""
    from tests.conftest import write_stacked_series

    img, _ = make_case(2, shape=(9, 36, 30))
    write_stacked_series(tmp_path / "s", img, img.with_array(img.array // 2))
    (res,) = predict(tmp_path / "s", trained_model, tmp_path / "o1", PredictConfig())
    assert not res.ok and "volume" in res.error
    (res,) = predict(tmp_path / "s", trained_model, tmp_path / "o2", PredictConfig(volume=0))
    assert res.ok, res.error
    out = read_volume(res.outputs["nifti"])
    assert out.geometry.is_close(read_volume(tmp_path / "s", volume=0).geometry)
    code = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "s"),
            "-m",
            str(trained_model),
            "-o",
            str(tmp_path / "o3"),
            "--volume",
            "1",
        ],
    )
    assert code.exit_code == 0, code.output


def test_a_rerun_with_another_model_or_options_is_refused_before_mixing_outputs(
    trained_model: Path, model_copy: Path, tmp_path: Path
) -> None:
    """Outputs are kept on a re-run only when the same prediction made them: another model
    (by content, not path), TTA or postprocessing would leave the old segmentations beside a
    summary naming the new ones. --overwrite redoes the cases; the copy of a model matches."""
    from medseg.config import to_dict
    from medseg.inference.provenance import prediction_key

    path, _ = _case_file(tmp_path / "in", 5)
    out = tmp_path / "out"
    (first,) = predict(path, trained_model, out, PredictConfig())
    assert first.ok and not first.skipped
    summary = json.loads((out / "predictions.json").read_text())
    made = summary["cases"][0]["prediction_id"]
    assert made == summary["prediction"]["id"]
    # The same model moved elsewhere, and more formats: the kept label map is reused.
    (res,) = predict(path, model_copy, out, PredictConfig(formats=("nifti", "volumes")))
    assert res.ok and set(res.outputs) == {"nifti", "volumes"}
    # TTA changes the label map: refused before anything is predicted or written.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match=r"holds outputs of 1 of these cases \(p5\).*tta False -> True"):
        predict(path, trained_model, out, PredictConfig(tta=True))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # bfloat16 moves a few boundary voxels: refused too (float32 keys are those of before).
    with pytest.raises(InputError, match=r"cpu_bf16 False -> True"):
        predict(path, trained_model, out, PredictConfig(cpu_bf16=True))
    assert (
        prediction_key([model_copy], to_dict(PredictConfig()), backend="torch", cpu_bf16=True)["id"] != made
    )
    # Other postprocessing rules in the model folder: another model.
    (model_copy / "postprocessing.json").write_text(
        json.dumps({"classes": {"1": {"keep_largest": True}}, "schema_version": 1})
    )
    res_cli = CliRunner().invoke(app, ["predict", str(path), "-m", str(model_copy), "-o", str(out)])
    assert res_cli.exit_code != 0
    assert "another prediction" in res_cli.output
    assert "postprocessing none -> label 1: keep largest; connectivity 26" in " ".join(res_cli.output.split())
    # Another model in a folder of the same name (every fold is fold_<k>): both named by path.
    other = tmp_path / "other_dataset" / trained_model.name
    shutil.copytree(trained_model, other)
    (other / "plan.json").write_text((other / "plan.json").read_text() + "\n")  # other content
    with pytest.raises(InputError, match=rf"found model {model_copy} -> {other} \(other weights"):
        predict(path, other, out, PredictConfig())
    # ... unless its rules are switched off, which is the first prediction again.
    (res,) = predict(path, model_copy, out, PredictConfig(postprocess=False))
    assert res.ok and res.skipped
    options = to_dict(PredictConfig(postprocess=False))
    assert prediction_key([model_copy], options, backend="torch")["id"] == made
    # --overwrite redoes the case with the new model; then the first model is the other one.
    (res,) = predict(path, model_copy, out, PredictConfig(overwrite=True))
    assert res.ok and not res.skipped
    entry = json.loads((out / "predictions.json").read_text())["cases"][0]
    assert entry["prediction_id"] != made
    with pytest.raises(InputError, match="another prediction"):
        predict(path, trained_model, out, PredictConfig())
    # A summary of an older medseg (no identities) is not second-guessed.
    old = tmp_path / "old"
    predict(path, trained_model, old, PredictConfig())
    data = json.loads((old / "predictions.json").read_text())
    del data["prediction"], data["cases"][0]["prediction_id"]
    (old / "predictions.json").write_text(json.dumps(data))
    (res,) = predict(path, model_copy, old, PredictConfig())
    assert res.ok and res.skipped


@pytest.mark.parametrize(("tta", "overlap"), [(False, 0.5), (True, 0.25)])
def test_one_case_shows_a_bar_over_its_network_passes_whose_total_is_known_at_once(
    trained_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tta: bool, overlap: float
) -> None:
    """A long single case (a CT, TTA, several folds) reports each pass of the sliding window;
    the total, counted with MONAI's own window grid before the first pass, is what ran."""
    from medseg.inference.sliding_window import window_progress

    class Recorder:
        def __init__(self) -> None:
            self.announced: list[int | None] = []
            self.steps = 0

        def begin(self, passes: int | None) -> None:
            self.announced.append(passes)

        def step(self) -> None:
            self.steps += 1

    path, _ = _case_file(tmp_path / "in", 6)
    seg = SegmentationModel(trained_model, device="cpu")
    recorder = Recorder()
    with window_progress(recorder):
        seg.predict([read_volume(path)], tta=tta, overlap=overlap, sw_batch_size=3)
    assert len(recorder.announced) == len(seg.networks) and None not in recorder.announced
    assert sum(p for p in recorder.announced if p) == recorder.steps > (7 if tta else 0)
    seg.predict([read_volume(path)], tta=tta)  # outside the block: nobody is told
    assert recorder.steps == sum(p for p in recorder.announced if p)
    capsys.readouterr()
    cfg = PredictConfig(tta=tta, overlap=overlap, sw_batch_size=3)
    (res,) = predict(path, seg, tmp_path / "out", cfg, progress=True)
    err = capsys.readouterr().err
    assert res.ok and "segment p6" in err and f"{recorder.steps}/{recorder.steps}" in err


def test_a_rerun_asking_only_for_new_formats_is_refused_too(trained_model: Path, tmp_path: Path) -> None:
    """The case's earlier outputs of other formats stay in the folder (and in its entry): a
    re-run with other options asking only for formats not yet written must be refused as well,
    or the folder would hold the old label map beside volumes of another prediction."""
    path, _ = _case_file(tmp_path / "in", 5)
    out = tmp_path / "out"
    (first,) = predict(path, trained_model, out, PredictConfig(formats=("nifti",)))
    assert first.ok
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match=r"another prediction.*tta False -> True"):
        predict(path, trained_model, out, PredictConfig(formats=("volumes",), tta=True))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # the same prediction may still add the format
    (res,) = predict(path, trained_model, out, PredictConfig(formats=("volumes",)))
    assert res.ok and set(json.loads((out / "predictions.json").read_text())["cases"][0]["outputs"]) == {
        "nifti",
        "volumes",
    }


def test_overwrite_with_another_prediction_stops_listing_the_formats_it_did_not_redo(
    trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--overwrite redoes only the formats asked for: the case's other outputs hold the earlier
    prediction, so its entry (which names the new prediction) must not list them as its own."""
    path, _ = _case_file(tmp_path / "in", 5)
    out = tmp_path / "out"
    predict(path, trained_model, out, PredictConfig(formats=("nifti", "volumes")))
    with caplog.at_level("WARNING", logger="medseg.inference.predictor"):
        (res,) = predict(path, trained_model, out, PredictConfig(tta=True, overwrite=True))
    assert res.ok and not res.skipped
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert set(entry["outputs"]) == {"nifti"}
    assert any(
        "volumes.csv" in r.getMessage() and "earlier prediction" in r.getMessage() for r in caplog.records
    )
    # the same prediction redone keeps listing the other formats
    predict(path, trained_model, out, PredictConfig(formats=("volumes",), tta=True, overwrite=True))
    predict(path, trained_model, out, PredictConfig(tta=True, overwrite=True))
    (entry,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert set(entry["outputs"]) == {"nifti", "volumes"}


def test_the_newest_summary_says_which_prediction_made_a_case(trained_model: Path, tmp_path: Path) -> None:
    """A case predicted by a SLURM shard, then again without shards (--overwrite, TTA): the
    shard's summary still holds its entry, but the outputs on disk are the newer run's, so a
    re-run of that newer prediction is not refused."""
    path, _ = _case_file(tmp_path / "in", 5)
    out = tmp_path / "out"
    (first,) = predict(path, trained_model, out, PredictConfig(shard=(0, 1)))
    assert first.ok and (out / "predictions_shard0of1.json").is_file()
    (second,) = predict(path, trained_model, out, PredictConfig(tta=True, overwrite=True))
    assert second.ok and not second.skipped
    (again,) = predict(path, trained_model, out, PredictConfig(tta=True))
    assert again.ok and again.skipped
    with pytest.raises(InputError, match="another prediction"):
        predict(path, trained_model, out, PredictConfig())


def test_a_killed_run_leaves_a_summary_of_the_cases_it_finished(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary is written after every case: a run killed at its second case lists the
    first, so a resume with other options is refused for it and the same resume goes on."""
    import medseg.inference.predictor as predictor_module

    for seed in (7, 8):
        _case_file(tmp_path / "in", seed)
    out = tmp_path / "out"
    real = predictor_module.predict_case

    def killed_at_p8(model, case, *args, **kwargs):  # type: ignore[no-untyped-def]
        if case.case_id == "p8":
            raise KeyboardInterrupt
        return real(model, case, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "predict_case", killed_at_p8)
    with pytest.raises(KeyboardInterrupt):
        predict(tmp_path / "in", trained_model, out, PredictConfig())
    monkeypatch.undo()
    summary = json.loads((out / "predictions.json").read_text())
    assert [(c["case_id"], c["ok"]) for c in summary["cases"]] == [("p7", True)]
    assert summary["cases"][0]["prediction_id"] == summary["prediction"]["id"]
    with pytest.raises(InputError, match=r"\(p7\).*tta False -> True"):
        predict(tmp_path / "in", trained_model, out, PredictConfig(tta=True))
    resumed = predict(tmp_path / "in", trained_model, out, PredictConfig())
    assert [(r.case_id, r.ok, r.skipped) for r in resumed] == [("p7", True, True), ("p8", True, False)]


def test_a_second_predict_into_a_folder_being_written_is_refused(trained_model: Path, tmp_path: Path) -> None:
    """Two runs into one folder at the same time would interleave their outputs and summary:
    the second is refused, naming the running one; a shard's summary has a lock of its own."""
    import os
    import socket

    path, _ = _case_file(tmp_path / "in", 9)
    out = tmp_path / "out"
    out.mkdir()
    running = {"host": socket.gethostname(), "pid": os.getpid(), "since": "2026-12-08 01:00:00"}
    (out / ".predictions.json.lock").write_text(json.dumps(running))
    with pytest.raises(InputError, match=r"out: is being written by another medseg predict \(process"):
        predict(path, trained_model, out, PredictConfig())
    assert not (out / "p9.nii.gz").exists()
    (res,) = predict(path, trained_model, out, PredictConfig(shard=(0, 1)))  # its own summary, own lock
    assert res.ok and not (out / ".predictions_shard0of1.json.lock").exists()


def test_a_left_handed_anisotropic_input_gets_its_prediction_on_its_own_grid(
    trained_model: Path, tmp_path: Path
) -> None:
    """NRRD and MHA inputs (exact double headers) on a left-handed grid with 0.7 x 0.85 mm
    pixels: every label output lies on the input grid, and both inputs give the same labels."""
    img, _ = make_case(11, shape=(9, 36, 30))
    direction = img.direction.copy()
    direction[:, 0] *= -1  # slices stacked against row x column
    vol = Volume(img.array, (3.3, 0.7, 0.85), (12.5, -33.25, 71.0), direction)
    assert np.linalg.det(vol.geometry.direction_itk) < 0
    labels = {}
    for suffix in (".nrrd", ".mha"):
        path = write_volume(vol, tmp_path / f"in{suffix}" / f"case{suffix}")
        out = tmp_path / f"out{suffix}"
        results = predict(path, trained_model, out, PredictConfig(formats=("nrrd", "mha", "nifti")))
        assert [r.ok for r in results] == [True], results
        for name in ("case.nrrd", "case.mha"):
            label = read_volume(out / name)
            label.geometry.require_same(
                vol.geometry, spacing_atol=1e-12, origin_atol=1e-9, direction_atol=1e-12
            )
        nifti = read_volume(out / "case.nii.gz")
        nifti.geometry.require_same(vol.geometry, spacing_atol=1e-5, origin_atol=1e-4, direction_atol=1e-6)
        np.testing.assert_array_equal(nifti.array, label.array)
        labels[suffix] = label.array
    np.testing.assert_array_equal(labels[".nrrd"], labels[".mha"])


def test_a_nifti_input_whose_qform_and_sform_disagree_gets_both_in_its_nifti_outputs(
    trained_model: Path, tmp_path: Path
) -> None:
    """An input whose sform (code 2, aligned) lies 5 mm from its qform: medseg reads the qform,
    as ITK does, and FSL / nibabel read the sform; the predicted label map and probabilities
    carry both, so either kind of viewer shows them over the input."""
    import nibabel as nib

    img, _ = make_case(12, shape=(9, 36, 30))
    path = write_volume(img, tmp_path / "in" / "case.nii.gz")
    qform, sform = give_nifti_a_second_transform(path, sform_code=2)
    out = tmp_path / "out"
    (res,) = predict(path, trained_model, out, PredictConfig(formats=("nifti", "probabilities")))
    assert res.ok, res
    outputs = [out / "case.nii.gz", *sorted((out / "case" / "probabilities").glob("*.nii.gz"))]
    assert len(outputs) >= 2, outputs
    for output in outputs:
        written = nib.load(output)
        assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2), output
        np.testing.assert_allclose(written.header.get_qform(), qform, atol=1e-5)
        np.testing.assert_allclose(written.header.get_sform(), sform, atol=1e-5)
        read_volume(output).geometry.require_same(
            read_volume(path).geometry, spacing_atol=1e-5, origin_atol=1e-4, direction_atol=1e-6
        )


def test_predict_config_takes_the_cli_spelling_of_formats() -> None:
    """`PredictConfig(formats="nifti,report")`, the `--format` value, was read letter by letter
    ("unknown output format(s) ['n', 'i', 'f', ...]"); ExportConfig likewise."""
    from medseg.export.case import ExportConfig

    assert PredictConfig(formats="nifti, volumes").formats == ("nifti", "volumes")
    assert ExportConfig(formats="volumes,report").formats == ("volumes", "report")
    with pytest.raises(ConfigError, match=r"unknown output format\(s\) \['gif'\]"):
        PredictConfig(formats="nifti,gif")


def test_predict_cli_ctrl_c_keeps_finished_cases_and_says_how_to_go_on(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a cohort printed only "interrupted": nothing said that the finished cases
    are kept and that the same command predicts the rest."""
    from typer.testing import CliRunner

    import medseg.inference.predictor as predictor
    from medseg.cli import app

    folder = tmp_path / "cohort"
    for seed in (1, 2, 3):
        _case_file(folder, seed)
    out = tmp_path / "out"
    real = predictor.predict_case
    calls = {"n": 0}

    def ctrl_c_on_the_second(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    argv = ["predict", str(folder), "-m", str(trained_model), "-o", str(out)]
    with monkeypatch.context() as m:
        m.setattr(predictor, "predict_case", ctrl_c_on_the_second)
        cut = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    assert cut.exit_code == 130, cut.output
    assert f"the cases finished so far are kept in {out}; run the same command again" in cut.output
    assert (out / "p1.nii.gz").is_file() and not (out / "p2.nii.gz").exists()
    again = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert "2 of 3 case(s) segmented, 1 not redone" in again.output


def test_cases_are_discovered_in_natural_order(tmp_path: Path) -> None:
    """case2 before case10: the order of the run, its log and predictions.json."""
    for name in ("case10", "case2", "case1"):
        _case_file(tmp_path / "in", 1, name)
    assert [c.case_id for c in discover_cases(tmp_path / "in")] == ["case1", "case2", "case10"]


def test_a_cohort_run_with_reports_writes_an_index_page_of_every_case(
    trained_model: Path, tmp_path: Path
) -> None:
    """A researcher predicting 50 patients got 50 folders and no page to look through them:
    ``index.html`` now lists each case (natural order) with its status, volumes, overlay
    thumbnail and report link, escaping names that come from file names."""
    from html.parser import HTMLParser
    from urllib.parse import unquote

    folder = tmp_path / "cohort"
    _case_file(folder, 1)  # 9 x 36 x 30, 3 x 0.8 x 0.8 mm, oblique
    img, _ = make_case(2, shape=(12, 30, 40), spacing=(2.0, 1.1, 0.7))
    evil = 'p2 <script>alert("x")</script&#'.replace("/", "")  # a file name cannot hold '/'
    write_volume(img, folder / f"{evil}.nii.gz")
    (folder / "p10.nii.gz").write_bytes(b"broken")  # fails; natural order puts it last
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(folder),
            "-m",
            str(trained_model),
            "-o",
            str(out),
            "-f",
            "nifti,volumes,overlay,report",
        ],
    )
    assert res.exit_code == 1, res.output  # one case failed
    assert str(out / "index.html") in res.stdout.replace("\n", "")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;" in page  # escaped, and the page runs no script

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, list[str]]] = []
            self.head: list[str] = []
            self.in_th = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "tr" and (a.get("id") or "").startswith("case-"):
                self.rows.append({"text": [], "href": [], "src": []})
            elif tag == "a" and self.rows:
                self.rows[-1]["href"].append(a["href"] or "")
            elif tag == "img" and self.rows:
                self.rows[-1]["src"].append(a["src"] or "")
            self.in_th = tag == "th"

        def handle_data(self, data: str) -> None:
            if self.in_th and not self.rows:
                self.head.append(data)
            elif self.rows and data.strip():
                self.rows[-1]["text"].append(data.strip())

    parser = Rows()
    parser.feed(page)
    parser.close()
    summary = {c["case_id"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    assert [r["text"][1] for r in parser.rows] == ["p1", evil, "p10"]  # case names, unescaped by the parser
    for row in parser.rows:
        case = row["text"][1]
        assert row["text"][2] == ("ok" if summary[case]["ok"] else "failed")
        for link in row["href"] + row["src"]:  # relative links to files that exist
            assert not link.startswith(("/", "http")) and (out / unquote(link)).is_file(), link
        if not summary[case]["ok"]:
            assert row["text"][3] == summary[case]["error"].splitlines()[0]
            assert row["href"] == row["src"] == []
            continue
        assert [unquote(s) for s in row["src"]] == [f"{case}/overlay.png"]
        assert unquote(row["href"][-1]) == f"{case}/report.html"
        with (out / case / "volumes.csv").open() as fh:
            table = list(csv.DictReader(fh))
        shown = [float(t) for t in row["text"][3 : 3 + len(table)]]
        assert shown == pytest.approx([float(r["volume_ml"]) for r in table], abs=0.005)
        assert parser.head[4 : 4 + len(table)] == [f"{r['name']} (mL)" for r in table]
    assert page.count(">Model<") == 1 and summary["p1"]["outputs"]  # the model section once
    assert json.loads((out / "predictions.json").read_text())["model_info"]["dataset"] in page


def test_a_model_json_that_is_not_json_is_an_input_error(model_copy: Path, tmp_path: Path) -> None:
    image, _ = make_case(0)
    write_volume(image, tmp_path / "scan.nii.gz")
    (model_copy / "model.json").write_text('{"labels": ')
    res = CliRunner().invoke(
        app, ["predict", str(tmp_path / "scan.nii.gz"), "-m", str(model_copy), "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 2, res.output
    assert "model.json: is not valid JSON" in res.output and "internal error" not in res.output


def test_cpu_speed_options_resolve_as_in_training(
    trained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import medseg.training.trainer as trainer
    from medseg.inference.predictor import CHANNELS_LAST_DEFAULT, CPU_BF16_DEFAULT

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    default = SegmentationModel(trained_model, device="cpu")
    assert default.channels_last is (CHANNELS_LAST_DEFAULT is not False)
    assert default.cpu_bf16 is (CPU_BF16_DEFAULT is not False)
    cl = SegmentationModel(trained_model, device="cpu", channels_last="auto")
    assert cl.channels_last  # "auto": a 3D model on a CPU
    params = cl.networks[0].parameters()  # type: ignore[attr-defined]
    weight = next(p for p in params if p.dim() == 5 and p.shape[1] > 1)  # a 1-channel one: either layout
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    auto = SegmentationModel(trained_model, device="cpu", cpu_bf16="auto", channels_last=False)
    assert auto.cpu_bf16 and not auto.channels_last
    assert auto.precision_text() == "bfloat16 autocast, default layout"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)  # emulated bf16 would be slower
    assert not SegmentationModel(trained_model, device="cpu", cpu_bf16="auto").cpu_bf16
    forced = SegmentationModel(trained_model, device="cpu", cpu_bf16=True, channels_last=True)
    assert forced.cpu_bf16 and forced.precision_text() == "bfloat16 autocast, channels-last layout"
    with pytest.raises(ConfigError, match="cpu_bf16 must be true, false or 'auto', found 'yes'"):
        PredictConfig(cpu_bf16="yes")  # type: ignore[arg-type]


def test_predict_says_which_precision_and_layout_it_used(
    trained_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = _case_file(tmp_path / "in", 3)
    cfg = PredictConfig(device="cpu", cpu_bf16=True, channels_last=False)
    with caplog.at_level("INFO", logger="medseg.inference.predictor"):
        results = predict(path, trained_model, tmp_path / "o", cfg)
    assert results[0].ok, results[0].error
    assert "cpu: bfloat16 autocast, default layout" in caplog.text
    summary = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert summary["model_info"]["network precision"] == "bfloat16 autocast, default layout"
    assert summary["config"]["cpu_bf16"] is True and summary["config"]["channels_last"] is False


def test_predict_cli_takes_the_cpu_speed_options(trained_model: Path, tmp_path: Path) -> None:
    path, _ = _case_file(tmp_path / "in", 4)
    runner = CliRunner()
    args = ["predict", str(path), "-m", str(trained_model), "-o", str(tmp_path / "o"), "--device", "cpu"]
    res = runner.invoke(app, [*args, "--cpu-bf16", "on", "--channels-last", "off"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert summary["model_info"]["network precision"] == "bfloat16 autocast, default layout"
    bad = runner.invoke(app, [*args, "--cpu-bf16", "maybe"])
    assert bad.exit_code == 2 and "--cpu-bf16 must be auto, on or off, found 'maybe'" in bad.output


def _ct_plan(model: Path) -> None:
    """Make the toy model's plan normalise its channel as CT (it was z-score normalised)."""
    plan = json.loads((model / "plan.json").read_text())
    plan["normalization"] = [
        {
            "scheme": "ct",
            "clip_low": -100.0,
            "clip_high": 300.0,
            "mean": 50.0,
            "std": 80.0,
            "use_nonzero_mask": False,
        }
    ]
    (model / "plan.json").write_text(json.dumps(plan))


def test_each_cases_warnings_are_recorded_in_the_summary_index_and_report(
    model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CT model given an MR series only said so in the log (gone under -q or in a SLURM log):
    each case's warnings are now in its predictions.json entry, the index and its report. A
    clean case has none, one case's do not carry over to the next, and a warning that quotes
    the patient's name, ID or birth date keeps none of them."""
    import medseg.inference.predictor as predictor

    _ct_plan(model_copy)
    image, _ = make_case(3, shape=(9, 36, 30))
    image = image.with_array(image.array.astype(np.int16))
    cohort = tmp_path / "cohort"
    # natural order: the MR case (warned) runs first, the CT case (clean) after it
    for name, modality in (("a_mr", "MR"), ("b_ct", "CT")):
        for f in write_dicom_series(image, cohort / name, modality=modality):
            ds = pydicom.dcmread(f)
            for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
                setattr(ds, keyword, IDENTIFIERS[keyword])
            ds.save_as(f)
    real = predictor._warn_if_not_ct

    def quoting_header(plans, channels, case_id):  # type: ignore[no-untyped-def]
        # a warning that quotes header values, as a reader's or library's might
        if case_id == "a_mr":
            ds = pydicom.dcmread(next((cohort / case_id).iterdir()), stop_before_pixels=True)
            predictor.log.warning(
                "%s: odd header of %s (id %s, born %s-%s-%s)",
                case_id,
                str(ds.PatientName).lower(),
                ds.PatientID,
                ds.PatientBirthDate[:4],
                ds.PatientBirthDate[4:6],
                ds.PatientBirthDate[6:],
            )
        real(plans, channels, case_id)

    monkeypatch.setattr(predictor, "_warn_if_not_ct", quoting_header)
    out = tmp_path / "out"
    results = predict(cohort, model_copy, out, PredictConfig(formats=("nifti", "volumes", "report")))
    assert [r.ok for r in results] == [True, True]
    cases = {c["case_id"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    warned = cases["a_mr"]["warnings"]
    assert any(w.startswith("a_mr: the model was trained on CT") and "is MR" in w for w in warned), warned
    assert any("odd header of (patient)" in w for w in warned), warned
    assert cases["b_ct"]["warnings"] == []  # clean, and a_mr's did not leak into it
    report = (out / "a_mr" / "report.html").read_text()
    shown = report[report.index('<section class="warnings">') :]
    texts = json.dumps(cases) + (out / "index.html").read_text() + shown[: shown.index("</section>")]
    for value in ("DOE", "JANE", IDENTIFIERS["PatientID"], "19610203", "1961-02-03"):
        assert not re.search(rf"\b{re.escape(value)}\b", texts, re.IGNORECASE), value
    page = (out / "index.html").read_text()
    assert page.count("<details") == 1 and f"{len(warned)} warning" in page
    assert "trained on CT" in page and "<script" not in page
    assert "Warnings (" in report and "trained on CT" in report
    assert "Warnings (" not in (out / "b_ct" / "report.html").read_text()


def test_predict_quiet_still_records_the_cases_warnings(model_copy: Path, tmp_path: Path) -> None:
    """-q hides warnings from the console only: predictions.json still records them."""
    _ct_plan(model_copy)
    image, _ = make_case(3, shape=(9, 36, 30))
    write_dicom_series(image.with_array(image.array.astype(np.int16)), tmp_path / "mr", modality="MR")
    out = tmp_path / "q"
    res = CliRunner().invoke(
        app, ["predict", str(tmp_path / "mr"), "-m", str(model_copy), "-o", str(out), "-q"]
    )
    assert res.exit_code == 0, res.output
    (case,) = json.loads((out / "predictions.json").read_text())["cases"]
    assert any("trained on CT" in w for w in case["warnings"]), case


def test_the_real_prostatex_t2s_warnings_are_recorded_without_its_identifiers(
    shared_data: Path, model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real PROSTATEx T2 (a copy given a patient name, ID and birth date) given to a CT
    model under `predict -q`, its network stubbed to segment nothing: the modality warning and
    the SEG not written for an empty label map are in its predictions.json entry and its index
    row, and no recorded text holds an identifier of its headers."""
    _ct_plan(model_copy)
    identified_prostatex_t2(shared_data, tmp_path / "cohort" / "t2")

    def nothing(self: SegmentationModel, channels: list[Volume], **kwargs: object) -> tuple[Volume, None]:
        return channels[0].with_array(np.zeros(channels[0].shape, dtype=np.uint8)), None

    monkeypatch.setattr(SegmentationModel, "predict", nothing)
    out = tmp_path / "out"
    formats = "dicom-seg,volumes,report"
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "cohort" / "t2"),
            "-m",
            str(model_copy),
            "-o",
            str(out),
            "-f",
            formats,
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    (case,) = json.loads((out / "predictions.json").read_text())["cases"]
    warnings = case["warnings"]
    assert any("trained on CT" in w and "this series is MR" in w for w in warnings), warnings
    assert any("nothing segmented; no dicom-seg written" in w for w in warnings), warnings
    page = (out / "index.html").read_text()
    assert f"<summary>{len(warnings)} warning" in page
    texts = "\n".join(warnings) + page
    for value in (*IDENTIFIERS.values(), "DOE", "JANE"):
        assert value.lower() not in texts.lower(), value


def test_a_cases_warning_collector_takes_its_own_threads_medseg_warnings_only() -> None:
    """Another thread's warnings (a caller's work beside predict) are not the case's, nor are
    errors (the case's error says them) or other libraries' records; a long text is cut."""
    import threading

    from medseg.inference.predictor import MAX_WARNING_CHARS, case_warnings

    log = logging.getLogger("medseg.inference.predictor")
    with case_warnings() as collected:
        log.warning("mine:\n  two lines")
        log.warning("mine:\n  two lines")  # the same text once
        log.error("an error")
        logging.getLogger("pydicom").warning("another library")
        other = threading.Thread(target=lambda: log.warning("another thread"))
        other.start()
        other.join()
        log.warning("x" * (MAX_WARNING_CHARS + 50))
    log.warning("after the case")
    texts = collected.texts()
    assert texts[0] == "mine: two lines" and len(texts) == 2
    assert len(texts[1]) == MAX_WARNING_CHARS and texts[1].endswith("…")
    assert not [h for h in logging.getLogger("medseg").handlers if h is collected]  # removed
