"""pacs segment over several studies against a real Orthanc: one failing study does not stop
the others, the summary lists each outcome, and a re-run skips the studies already pushed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pydicom
import pytest

from medseg.cli import app
from medseg.errors import InputError
from medseg.pacs import segment as segment_module
from medseg.pacs.client import PacsClient, PacsError
from medseg.pacs.query import query_series
from medseg.pacs.segment import ModelSegmentFn, read_study_list, segment_studies
from tests.pacs.conftest import STUDY_0000, T2_TRA_0000, T2_TRA_0000_UID, T2_TRA_0001, OrthancServer
from tests.pacs.test_push_segment import (
    CT_MODEL,
    client_for,
    fake_predict_writing_a_seg,
    make_threshold_fn,
    runner,
)

pytestmark = pytest.mark.orthanc

# ProstateX-0218 is uploaded with its sagittal T2 only: no series matches --description 't2*tra*'
SAG_0218 = "ProstateX-0218/02-18-2011/4.000000-t2tsesag320p2-41180"
TRA_0218 = "ProstateX-0218/02-18-2011/5.000000-t2tsetra320p2-09906"
MR_MODEL = ("MR", "its channel is named 'T2'")


def study_of(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def three_studies(
    orthanc_factory: Callable[..., OrthancServer], prostatex: Path
) -> Iterator[tuple[OrthancServer, list[str]]]:
    """Studies of ProstateX-0000 (T2 axial), -0001 (T2 axial) and -0218 (T2 sagittal only)."""
    server = orthanc_factory()
    for rel in (T2_TRA_0000, T2_TRA_0001, SAG_0218):
        server.upload_folder(prostatex / rel)
    studies = [STUDY_0000, study_of(prostatex / T2_TRA_0001), study_of(prostatex / SAG_0218)]
    yield server, studies
    server.stop()


def segs_of(client: PacsClient, study: str) -> set[str]:
    """SOPInstanceUIDs of the SEG instances the server holds in the study."""
    found = set()
    for s in query_series(client, study_uid=study):
        if s.modality == "SEG":
            for ds in client.retrieve_series_metadata(study, s.series_uid, what="test"):
                found.add(str(ds.SOPInstanceUID))
    return found


class FakeNetwork:
    """Stands in for SegmentationModel: counts how often a model is loaded."""

    loads: ClassVar[list[Path]] = []

    def __init__(self, path: Path, **kwargs: object):
        FakeNetwork.loads.append(Path(path))


def test_pacs_segment_several_studies_goes_on_past_a_failure_and_resumes(
    three_studies: tuple[OrthancServer, list[str]],
    prostatex: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_pacs_env: None,
) -> None:
    import medseg.inference.predictor as predictor

    server, studies = three_studies
    client = client_for(server)
    env = {"MEDSEG_PACS_URL": server.dicomweb}
    # the list comes from pacs query, as a user would make it
    listed = runner.invoke(app, ["pacs", "query", "--modality", "MR", "--study-uids"], env=env)
    assert listed.exit_code == 0, listed.output
    assert sorted(listed.stdout.split()) == sorted(studies)
    (tmp_path / "studies.txt").write_text(listed.stdout)

    calls: list[Path] = []
    seen_models: list[object] = []
    fake = fake_predict_writing_a_seg(calls)

    def fake_predict(series: Path, model: object, out: Path, config: object) -> list[object]:
        seen_models.append(model)
        return fake(series, model, out, config)

    FakeNetwork.loads = []
    monkeypatch.setattr(predictor, "predict", fake_predict)
    monkeypatch.setattr(predictor, "SegmentationModel", FakeNetwork)
    monkeypatch.setattr(segment_module, "_model_modality", lambda model: MR_MODEL)
    out = tmp_path / "out"
    args = ["pacs", "segment", "--studies", str(tmp_path / "studies.txt"), "-m", str(tmp_path / "model")]
    args += ["--description", "t2*tra*", "--format", "dicom-seg", "-o", str(out), "-q"]
    result = runner.invoke(app, args, env=env)
    # one study failed, the others were segmented and pushed: exit 1, as predict's cohort
    assert result.exit_code == 1, result.output
    assert "2 of 3 studies segmented and pushed, 1 failed" in result.output
    assert f"study {studies[2]}: failed no image series matching --description 't2*tra*'" in result.output
    # the model was loaded once and used for both studies
    assert FakeNetwork.loads == [tmp_path / "model"] and len(calls) == 2
    assert all(isinstance(m, FakeNetwork) for m in seen_models)

    summary = json.loads((out / "pacs_segment.json").read_text())
    entries = {e["study_uid"]: e for e in summary["studies"]}
    assert [e["study_uid"] for e in summary["studies"]] == sorted(studies, key=listed.stdout.index)
    first, second, third = (entries[s] for s in studies)
    assert first["status"] == "pushed" and first["series_uid"] == T2_TRA_0000_UID
    assert first["series"].startswith("#4 't2_tse_tra' MR (19 instances)") and first["error"] == ""
    assert second["status"] == "pushed" and "'t2_tse_tra'" in second["series"]
    assert third["status"] == "failed" and third["pushed"] == [] and not third["internal_error"]
    assert "no image series matching --description 't2*tra*'" in third["error"]
    assert "t2_tse_sag_320_p2" in third["error"]  # the candidates are listed
    for entry in (first, second):
        (pushed,) = entry["pushed"]
        assert pushed["modality"] == "SEG"
        # the SEG named in the summary is on the server, in its own study, and is the only one
        assert segs_of(client, entry["study_uid"]) == {pushed["sop_instance_uid"]}
    assert segs_of(client, studies[2]) == set()
    # no patient names or IDs in what the command printed
    assert "ProstateX" not in result.output

    # a re-run skips the studies pushed, retries the failed one: nothing pushed twice
    calls.clear()
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    assert calls == [] and "0 of 3 studies segmented and pushed, 2 already pushed" in result.output
    assert all(len(segs_of(client, s)) == 1 for s in studies[:2])

    # the missing series arrives on the PACS: the re-run completes the cohort, exit 0
    server.upload_folder(prostatex / TRA_0218)
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and "1 of 3 studies segmented and pushed, 2 already pushed" in result.output
    entries = {e["study_uid"]: e for e in json.loads((out / "pacs_segment.json").read_text())["studies"]}
    assert entries[studies[2]]["status"] == "pushed" and entries[studies[2]]["error"] == ""
    assert segs_of(client, studies[2]) == {entries[studies[2]]["pushed"][0]["sop_instance_uid"]}
    assert entries[studies[0]]["pushed"] == first["pushed"]  # the skipped ones keep their record

    # --overwrite segments and pushes a pushed study again (beside the first SEG), here only one
    result = runner.invoke(app, ["pacs", "segment", "--study", studies[0], *args[4:], "--overwrite"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 of 1 studies segmented and pushed" in result.output
    assert len(segs_of(client, studies[0])) == 2
    entries = {e["study_uid"]: e for e in json.loads((out / "pacs_segment.json").read_text())["studies"]}
    assert entries[studies[0]]["pushed"] != first["pushed"] and len(entries) == 3  # others kept


def test_segment_studies_keeps_the_modality_check_and_lists_a_bug_as_internal(
    three_studies: tuple[OrthancServer, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each study still gets the modality refusal (nothing pulled); a bug in one study is listed
    as an internal error and the next study is still segmented."""
    import medseg.inference.predictor as predictor

    server, studies = three_studies
    client = client_for(server)
    calls: list[Path] = []
    monkeypatch.setattr(predictor, "predict", fake_predict_writing_a_seg(calls))
    monkeypatch.setattr(predictor, "SegmentationModel", FakeNetwork)
    ct = ModelSegmentFn(tmp_path / "ct_model", ("dicom-seg",), expected_modality=CT_MODEL)
    outcomes = segment_studies(
        client, studies[:2], ct, tmp_path / "ct", work_dir=tmp_path / "work", description="t2*tra*"
    )
    assert [o.status for o in outcomes] == ["failed", "failed"] and calls == []
    assert all("is MR, but the model" in o.error and "nothing was pulled" in o.error for o in outcomes)
    assert not (tmp_path / "work").exists()

    threshold = make_threshold_fn({}, rtstruct=False)

    def broken_on_the_first(series_folder: Path, out_folder: Path) -> list[Path]:
        if not calls:
            calls.append(series_folder)
            raise ZeroDivisionError("a bug")
        return threshold(series_folder, out_folder)

    before = segs_of(client, studies[1])
    outcomes = segment_studies(
        client, studies[:2], broken_on_the_first, tmp_path / "bug", description="t2*tra*"
    )
    assert outcomes[0].status == "failed" and outcomes[0].internal_error
    assert outcomes[0].error == "internal error: ZeroDivisionError: a bug"
    assert outcomes[1].status == "pushed" and len(segs_of(client, studies[1])) == len(before) + 1
    summary = json.loads((tmp_path / "bug" / "pacs_segment.json").read_text())
    assert [e["internal_error"] for e in summary["studies"]] == [True, False]

    with pytest.raises(PacsError, match="--series names one series of one study, but 2 studies"):
        segment_studies(client, studies[:2], threshold, tmp_path / "x", series_uid=T2_TRA_0000_UID)


def test_several_studies_need_an_output_folder(tmp_path: Path, no_pacs_env: None) -> None:
    result = runner.invoke(
        app,
        ["pacs", "segment", "--study", "1.2.3", "--study", "1.2.4", "-m", str(tmp_path)],
        env={"MEDSEG_PACS_URL": "http://127.0.0.1:9/dicom-web"},
    )
    assert result.exit_code == 2 and "2 studies need --out DIR" in result.output
    result = runner.invoke(app, ["pacs", "segment", "-m", str(tmp_path)])
    assert result.exit_code == 2 and "--study UID (repeatable) or --studies FILE" in result.output


def test_read_study_list(tmp_path: Path) -> None:
    """One UID per line (what pacs query --study-uids prints) or a table with the column."""
    lines = tmp_path / "uids.txt"
    lines.write_text("# cohort\n1.2.3\n\n 1.2.4 \n1.2.3\n")
    assert read_study_list(lines) == ["1.2.3", "1.2.4"]
    table = tmp_path / "studies.csv"
    table.write_text("patient ID,StudyInstanceUID,date\nA,1.2.5,2011\nB,1.2.6,2011\n")
    assert read_study_list(table) == ["1.2.5", "1.2.6"]
    tsv = tmp_path / "studies.tsv"
    tsv.write_text("studyinstanceuid\tnote\n1.2.7\tx\n")
    assert read_study_list(tsv) == ["1.2.7"]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("patient,uid\nA,1.2.5\n")
    with pytest.raises(InputError, match=r"wrong.csv.*without a StudyInstanceUID column"):
        read_study_list(wrong)
    bad = tmp_path / "bad.txt"
    bad.write_text("1.2.3\nProstateX 12\n")
    with pytest.raises(InputError, match=r"bad.txt.*entry 2 is not a StudyInstanceUID"):
        read_study_list(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no study"):
        read_study_list(empty)


def test_a_summary_of_another_server_is_refused_not_skipped(tmp_path: Path) -> None:
    """Studies pushed to one PACS (pacs_segment.json names it) were skipped as 'already pushed'
    by a run against another PACS into the same folder, which then never received them, and the
    summary listed those pushes under the new server. The folder is now refused, naming both."""
    from types import SimpleNamespace

    out = tmp_path / "out"
    out.mkdir()
    pushed = {"study_uid": "1.2.3", "status": "pushed", "series_uid": "1.2.3.4", "series": "#4", "pushed": []}
    summary = {"server": "https://test-pacs/dicom-web", "model": "m", "studies": [pushed]}
    (out / "pacs_segment.json").write_text(json.dumps(summary))
    calls: list[Path] = []

    def never(series_folder: Path, out_folder: Path) -> list[Path]:
        calls.append(series_folder)
        return []

    client: Any = SimpleNamespace(server="https://clinical-pacs/dicom-web")
    with pytest.raises(InputError, match="runs against another PACS server") as info:
        segment_studies(client, ["1.2.3"], never, out)
    assert "https://test-pacs/dicom-web" in str(info.value) and "https://clinical-pacs" in str(info.value)
    assert calls == [] and json.loads((out / "pacs_segment.json").read_text()) == summary
    # the same server resumes: the pushed study is skipped
    client.server = "https://test-pacs/dicom-web"
    (outcome,) = segment_studies(client, ["1.2.3"], never, out)
    assert outcome.status == "already pushed" and calls == []
