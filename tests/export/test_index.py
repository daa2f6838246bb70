"""The cohort index page (OUT/index.html), built from an output folder on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import InputError
from medseg.export.index import build_cohort_index_html, cohort_rows, write_cohort_index
from medseg.export.volumes import REGION_VOLUMES_CSV, LabelStats, write_volumes_csv

MODEL = {"dataset": "abdomen", "configuration": "3d", "folds": 5, "predicted with medseg": "0.1.0"}


def _case(out: Path, case: str, ml: tuple[float, float], *, overlay: bool = True) -> None:
    """A case folder as predict leaves it: volumes.csv, report.html and (optionally) overlay.png."""
    stats = [
        LabelStats(1, "liver", round(ml[0] * 1000), ml[0], (0.0, 0.0, 0.0), None, None),
        LabelStats(2, "spleen", round(ml[1] * 1000), ml[1], None, None, None),
    ]
    (out / case).mkdir(parents=True)
    write_volumes_csv(stats, out / case / "volumes.csv")
    (out / case / "report.html").write_text("<html></html>")
    if overlay:
        (out / case / "overlay.png").write_bytes(b"\x89PNG")


def _summary(out: Path, name: str, cases: list[dict[str, object]], model: dict[str, object] = MODEL) -> None:
    (out / name).write_text(json.dumps({"model": "m", "model_info": model, "cases": cases}))


def _entry(out: Path, case: str, ok: bool = True, **extra: object) -> dict[str, object]:
    outputs = {"volumes": str(out / case / "volumes.csv"), "report": str(out / case / "report.html")}
    return {"case_id": case, "ok": ok, "outputs": outputs if ok else {}, "error": "", **extra}


def test_status_comes_from_every_summary_and_from_what_is_on_disk(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for case, ml in (("c1", (1500.0, 0.0)), ("c2", (1400.0, 180.0)), ("c10", (0.0, 0.0)), ("c3", (1.0, 2.0))):
        _case(out, case, ml)
    (out / "c3" / "report.html").unlink()  # deleted after the run: its summary still lists it
    (out / "notes").mkdir()
    (out / "notes" / "volumes.csv").write_text("organ,ml\nliver,1500\n")  # someone else's table
    partly = {
        "case_id": "c4",
        "ok": False,
        "outputs": {"volumes": str(out / "c4" / "volumes.csv")},
        "error": "dicom-seg not written (no UIDs)\nsecond line",
        "not_written": {"dicom-seg": "no UIDs"},
    }
    _case(out, "c4", (10.0, 1.0), overlay=False)
    unreadable = {"case_id": "c5", "ok": False, "outputs": {}, "error": "c5.nii.gz: cannot be read"}
    # c2 ok in one summary, failed in another: ok wins (its outputs are on disk), as in cohort_volumes.csv
    _summary(out, "predictions_shard0of2.json", [_entry(out, "c1"), _entry(out, "c2")])
    _summary(
        out,
        "predictions_shard1of2.json",
        [_entry(out, "c2", ok=False, error="x"), _entry(out, "c3"), _entry(out, "c10"), partly, unreadable],
    )
    rows = {r.case_id: r for r in cohort_rows(out)}
    assert list(rows) == ["c1", "c2", "c3", "c4", "c5", "c10"]  # natural order; 'notes' is no case
    assert {c: r.status for c, r in rows.items()} == {
        "c1": "ok",
        "c2": "ok",  # failed in one shard, segmented by the other
        "c3": "partly written",
        "c4": "partly written",
        "c5": "failed",
        "c10": "ok",
    }
    assert rows["c3"].error == "listed in the summary but missing: report" and rows["c3"].report is None
    assert (
        rows["c4"].error == "dicom-seg not written (no UIDs)" and "not written: dicom-seg" in rows["c4"].flags
    )
    assert rows["c5"].error == "c5.nii.gz: cannot be read" and rows["c5"].volumes == {}
    assert rows["c1"].flags == ["empty: spleen"] and rows["c10"].flags == ["nothing segmented"]
    assert rows["c2"].volumes[2] == ("spleen", 180.0, 180000) and rows["c2"].overlay == "c2/overlay.png"
    page = build_cohort_index_html(out)
    assert page.count("<h2>Model</h2>") == 1 and page.count("<th>dataset</th>") == 1  # same model: once
    assert "<th>Overlay</th>" in page and "c4/overlay.png" not in page


def test_no_overlays_no_thumbnail_column_and_different_models_each_shown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _case(out, "a", (1.0, 2.0), overlay=False)
    _case(out, "b", (1.0, 2.0), overlay=False)
    _summary(out, "predictions.json", [_entry(out, "a")])
    _summary(out, "predictions_shard0of2.json", [_entry(out, "b")], model={**MODEL, "dataset": "other"})
    page = build_cohort_index_html(out)
    assert "Overlay" not in page and "<img" not in page
    assert "<h3>predictions.json</h3>" in page and "<h3>predictions_shard0of2.json</h3>" in page


def test_an_export_folder_without_summary_is_indexed_and_an_empty_one_is_not(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _case(out, "seg", (5.0, 0.5))
    assert write_cohort_index(tmp_path) is None and not (tmp_path / "index.html").exists()
    target = write_cohort_index(out)
    assert target == out / "index.html" and "not in a predict summary" in target.read_text()
    assert "No model information" in target.read_text()
    with pytest.raises(InputError, match="is not a folder"):
        write_cohort_index(out / "seg" / "volumes.csv")


def test_export_index_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _case(out, "c1", (1.0, 2.0))
    _summary(out, "predictions.json", [_entry(out, "c1"), {"case_id": "c2", "ok": False, "error": "bad"}])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = CliRunner().invoke(app, ["export-index", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 case(s), 1 not ok" in res.output and (out / "index.html").is_file()
    assert all(p.read_bytes() == data for p, data in before.items())  # inputs untouched
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["export-index", str(empty)])
    assert res.exit_code == 2 and "holds no case" in res.output


def test_a_failed_case_shows_no_outputs_of_an_earlier_prediction(tmp_path: Path) -> None:
    """A case whose last prediction failed (e.g. predict --overwrite on a changed input) keeps the
    volume table, overlay and report of an earlier one in its folder: the page showed them beside
    'failed', while cohort_volumes.csv leaves its cells empty. What a failed prediction wrote
    (a partly written case) is still shown."""
    out = tmp_path / "out"
    _case(out, "old", (1500.0, 180.0))
    _case(out, "part", (10.0, 1.0))
    failed = {"case_id": "old", "ok": False, "outputs": {}, "error": "old.nii.gz: cannot be read"}
    partly = {
        "case_id": "part",
        "ok": False,
        "outputs": {
            "volumes": str(out / "part" / "volumes.csv"),
            "overlay": str(out / "part" / "overlay.png"),
        },
        "error": "dicom-seg not written",
    }
    _summary(out, "predictions.json", [failed, partly])
    rows = {r.case_id: r for r in cohort_rows(out)}
    assert rows["old"].status == "failed"
    assert rows["old"].volumes == {} and not rows["old"].has_volumes
    assert rows["old"].report is None and rows["old"].overlay is None
    assert rows["part"].status == "partly written" and rows["part"].volumes[1][1] == 10.0
    assert rows["part"].overlay == "part/overlay.png" and rows["part"].report is None
    page = build_cohort_index_html(out)
    assert "old/overlay.png" not in page and "old/report.html" not in page


def _regions(out: Path, case: str, regions: dict[str, float]) -> None:
    """A region model's region_volumes.csv (regions numbered 1..R in the given order)."""
    stats = [
        LabelStats(i, name, round(ml * 1000), ml, None, None, None)
        for i, (name, ml) in enumerate(regions.items(), start=1)
    ]
    write_volumes_csv(stats, out / case / REGION_VOLUMES_CSV)


def test_a_region_models_region_volumes_get_columns_after_the_labels(tmp_path: Path) -> None:
    """cohort_volumes.csv had a region model's region/<name> columns, the index did not."""
    out = tmp_path / "out"
    for case in ("r1", "r2", "plain", "gone"):
        _case(out, case, (10.0, 2.0))
    _regions(out, "r1", {"whole tumor": 12.0, "tumor core": 5.0})
    _regions(out, "r2", {"whole tumor": 8.5, "tumor core": 3.25, "<enhancing>": 1.0})
    _regions(out, "gone", {"whole tumor": 99.0})
    failed = {"case_id": "gone", "ok": False, "outputs": {}, "error": "cannot be read"}
    _summary(out, "predictions.json", [_entry(out, "r1"), _entry(out, "r2"), _entry(out, "plain"), failed])
    rows = {r.case_id: r for r in cohort_rows(out)}
    assert rows["r2"].regions == {"whole tumor": (1, 8.5), "tumor core": (2, 3.25), "<enhancing>": (3, 1.0)}
    assert rows["plain"].regions == {} and rows["gone"].regions == {}  # a failed case: not its table
    page = build_cohort_index_html(out)
    head = page[page.index("<tr><th>#") : page.index("</tr>")]
    assert head.index("spleen (mL)") < head.index("region/whole tumor (mL)") < head.index("region/tumor core")
    assert "region/&lt;enhancing&gt; (mL)" in head and "<enhancing>" not in page
    # natural order: gone, plain, r1, r2
    row = page[page.index('<tr id="case-3">') : page.index('<tr id="case-4">')]
    assert "<td class='num'>12.00</td><td class='num'>5.00</td><td class='num'>–</td>" in row  # r1
    plain = page[page.index('<tr id="case-2">') : page.index('<tr id="case-3">')]
    assert plain.count("<td class='num'>–</td>") == 3  # no region table: unknown, not 0


def test_a_cases_warnings_show_as_a_count_that_opens_to_their_texts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for case in ("warned", "clean"):
        _case(out, case, (1.0, 2.0))
    texts = ["warned: the model was trained on CT but this series is MR", "warned: <b>odd</b> & more"]
    uid_text = "warned: series 1.2.826.0.1.3680043.8.498.12345678901234567890 kept"
    _summary(
        out, "predictions.json", [_entry(out, "warned", warnings=texts), _entry(out, "clean", warnings=[])]
    )
    rows = {r.case_id: r for r in cohort_rows(out)}
    assert rows["warned"].warnings == texts and rows["clean"].warnings == []
    page = build_cohort_index_html(out)
    assert page.count("<details") == 1 and "<summary>2 warnings</summary>" in page
    assert "<li>warned: &lt;b&gt;odd&lt;/b&gt; &amp; more</li>" in page and "<b>odd" not in page
    assert "<script" not in page
    # a DICOM UID in a warning is not shown on the page (as in an error line)
    _summary(out, "predictions.json", [_entry(out, "warned", warnings=[uid_text]), _entry(out, "clean")])
    page = build_cohort_index_html(out)
    assert "1.2.826.0.1.3680043" not in page and "<li>warned: series [UID] kept</li>" in page
    # a summary of an older medseg (no warnings key) or a hand-edited one (not a list): none shown
    _summary(out, "predictions.json", [_entry(out, "warned"), _entry(out, "clean", warnings="text")])
    assert "<details" not in build_cohort_index_html(out)


def test_a_failed_case_error_shows_no_dicom_uid(tmp_path: Path) -> None:
    """An error listing the candidate series names their UIDs; the page (meant to be looked
    through, and shared with a de-identified run) shows the series by index and description only."""
    out = tmp_path / "out"
    out.mkdir()
    uid = "1.3.6.1.4.1.14519.5.2.1.7311.5101.143550427570936841761028976610"
    error = (
        f"cohort/p1: has 2 series described 't2*'; found [5] 't2_tse_tra' 19 slices, UID {uid}; "
        f"[9] 't2_tse_tra' 3.0 mm, medseg 0.1.0, UID 2.25.1234, 2.25.331234567890123; file work/{uid}.dcm\nsecond line {uid}"
    )
    _summary(out, "predictions.json", [_entry(out, "p1", ok=False, error=error)])
    row = cohort_rows(out)[0]
    assert row.error == (
        "cohort/p1: has 2 series described 't2*'; found [5] 't2_tse_tra' 19 slices, UID [UID]; "
        "[9] 't2_tse_tra' 3.0 mm, medseg 0.1.0, UID 2.25.1234, [UID]; file work/[UID].dcm"
    )
    assert "7311.5101" not in build_cohort_index_html(out)
