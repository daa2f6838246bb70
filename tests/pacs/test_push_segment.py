"""Push and segment against a real Orthanc: the round trip, rejections, nothing pushed on failure."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import InputError, OutputExistsError
from medseg.export.dicom_seg import read_dicom_seg, write_dicom_seg
from medseg.export.rtstruct import write_rtstruct
from medseg.io.dicom import load_series
from medseg.pacs import segment as segment_module
from medseg.pacs.client import PacsClient, PacsConfig, PacsError
from medseg.pacs.query import SeriesRecord, query_series
from medseg.pacs.segment import ModelSegmentFn, check_modality, choose_series, segment_study
from medseg.pacs.transfer import pull_series, push_files
from medseg.volume import Volume
from tests.pacs.conftest import (
    STUDY_0000,
    T2_SAG_0000,
    T2_TRA_0000,
    T2_TRA_0000_UID,
    T2_TRA_0001,
    OrthancServer,
)

pytestmark = pytest.mark.orthanc
runner = CliRunner()
NAMES = {1: "prostate", 2: "transition zone"}


def client_for(server: OrthancServer) -> PacsClient:
    return PacsClient(PacsConfig(server.dicomweb))


def threshold_label(series_folder: Path) -> tuple[Volume, object]:
    """A two-class label map on the series' exact grid: smoothed T2 above two percentiles, central box."""
    series = load_series(series_folder)
    smooth = gaussian_filter(series.volume.array.astype(np.float32), 2.0)
    label = np.zeros(series.volume.shape, dtype=np.uint8)
    box = (slice(None), slice(130, 250), slice(130, 250))
    t1, t2 = np.percentile(smooth[box], [60, 90])
    inner = np.zeros_like(label)
    inner[smooth > t1] = 1
    inner[smooth > t2] = 2
    label[box] = inner[box]
    return series.volume.with_array(label), series


def make_threshold_fn(
    record: dict[str, Volume], *, rtstruct: bool = True
) -> Callable[[Path, Path], list[Path]]:
    def segment_fn(series_folder: Path, out_folder: Path) -> list[Path]:
        label, series = threshold_label(series_folder)
        record["label"] = label
        files = [write_dicom_seg(label, series, out_folder / "seg.dcm", NAMES)]
        if rtstruct:
            files.append(write_rtstruct(label, series, out_folder / "rtstruct.dcm", NAMES))
        return files

    return segment_fn


def series_by_modality(client: PacsClient) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for s in query_series(client, study_uid=STUDY_0000):
        found.setdefault(s.modality, set()).add(s.series_uid)
    return found


def new_series(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: uids - before.get(m, set()) for m, uids in after.items() if uids - before.get(m, set())}


# ----------------------------------------------------------------------------- push
def test_push_reports_accepted_and_the_seg_is_queryable(
    orthanc_rw: OrthancServer, prostatex: Path, tmp_path: Path
) -> None:
    client = client_for(orthanc_rw)
    before = series_by_modality(client)
    label, series = threshold_label(prostatex / T2_TRA_0000)
    seg = write_dicom_seg(label, series, tmp_path / "results" / "seg.dcm", NAMES)
    (tmp_path / "results" / "notes.txt").write_text("not DICOM: skipped inside a folder")
    result = push_files(client, [tmp_path / "results"], study_uid=STUDY_0000)
    assert [(p.path, p.modality) for p in result.accepted] == [(seg, "SEG")] and result.rejected == []
    seg_series = str(pydicom.dcmread(seg, stop_before_pixels=True).SeriesInstanceUID)
    assert new_series(before, series_by_modality(client)) == {"SEG": {seg_series}}


def test_push_rejected_by_the_server_is_one_clear_line(
    orthanc_rw: OrthancServer, prostatex: Path, tmp_path: Path, no_pacs_env: None
) -> None:
    before = orthanc_rw.count()
    image = sorted((prostatex / T2_TRA_0000).glob("*.dcm"))[0]
    # Posting to /studies/{other UID}: Orthanc refuses the instance (HTTP 409, FailureReason 0x0110).
    result = runner.invoke(
        app, ["pacs", "push", str(image), "--study", "1.2.3.4", "--url", orthanc_rw.dicomweb, "-q"]
    )
    assert result.exit_code == 2, result.output
    assert (
        "rejected 1 of 1 instances" in result.output and "0x0110" in result.output and "409" in result.output
    )
    assert "Traceback" not in result.output
    # A file without SOPInstanceUID: medseg refuses it before sending anything ...
    broken = tmp_path / "broken.dcm"
    ds = pydicom.dcmread(image)
    del ds.SOPInstanceUID
    ds.save_as(broken)
    result = runner.invoke(app, ["pacs", "push", str(broken), "--url", orthanc_rw.dicomweb, "-q"])
    assert result.exit_code == 2 and "no SOPInstanceUID" in result.output
    # ... and the server refuses it too when sent anyway (HTTP 400), reported per file
    pushed = push_files(client_for(orthanc_rw), [broken], check_local=False)
    assert pushed.accepted == [] and len(pushed.rejected) == 1 and "HTTP 400" in pushed.rejected[0].reason
    with pytest.raises(PacsError, match="rejected 1 of 1"):
        pushed.raise_for_rejections(orthanc_rw.dicomweb)
    assert orthanc_rw.count() == before


def test_push_of_a_non_dicom_file_sends_nothing(
    orthanc_rw: OrthancServer, prostatex: Path, tmp_path: Path
) -> None:
    before = orthanc_rw.count()
    good = sorted((prostatex / T2_TRA_0000).glob("*.dcm"))[0]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200 + b"not dicom")
    with pytest.raises(InputError, match=r"junk.dcm: is not a readable DICOM file"):
        push_files(client_for(orthanc_rw), [good, junk])
    assert orthanc_rw.count() == before


def test_push_of_a_study_with_truncated_files_stores_nothing(
    orthanc_rw: OrthancServer, prostatex: Path, tmp_path: Path, no_pacs_env: None
) -> None:
    """An interrupted copy: one file cut inside its pixel data, one inside its header."""
    copy = tmp_path / "t2"
    shutil.copytree(prostatex / T2_TRA_0001, copy)
    files = sorted(copy.glob("*.dcm"))
    pixels_cut, header_cut = files[4], files[11]
    pixels_cut.write_bytes(pixels_cut.read_bytes()[:-5000])
    header_cut.write_bytes(header_cut.read_bytes()[:1500])
    before = orthanc_rw.count()
    result = runner.invoke(app, ["pacs", "push", str(copy), "--url", orthanc_rw.dicomweb, "-q"])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert f"2 of {len(files)} files cannot be stored, nothing was pushed" in out
    assert pixels_cut.name in out and header_cut.name in out and "--skip-invalid" in out
    assert "ProstateX" not in out.replace(str(tmp_path), "")  # no patient name or ID
    assert orthanc_rw.count() == before
    result = runner.invoke(
        app, ["pacs", "push", str(copy), "--skip-invalid", "--url", orthanc_rw.dicomweb, "-q"]
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"{len(files) - 2} accepted, 0 rejected" in out and "2 damaged files not pushed" in out
    assert orthanc_rw.count() == before + len(files) - 2
    # why the check is needed: sent anyway, Orthanc stores the truncated file as it is
    sent = push_files(client_for(orthanc_rw), [pixels_cut], check_local=False)
    assert [p.path for p in sent.accepted] == [pixels_cut]


# -------------------------------------------------------------------------- segment
def test_segment_round_trip_is_voxel_exact(
    orthanc_rw: OrthancServer, prostatex: Path, tmp_path: Path
) -> None:
    client = client_for(orthanc_rw)
    before = series_by_modality(client)
    record: dict[str, Volume] = {}
    result = segment_study(
        client, STUDY_0000, make_threshold_fn(record), description="t2*tra*", work_dir=tmp_path / "work"
    )
    assert result.series.series_uid == T2_TRA_0000_UID and result.pulled.total == 19
    assert sorted(p.modality for p in result.pushed.accepted) == ["RTSTRUCT", "SEG"]
    # the query shows the new objects in the same study
    found = new_series(before, series_by_modality(client))
    assert sorted(found) == ["RTSTRUCT", "SEG"] and len(found["SEG"]) == len(found["RTSTRUCT"]) == 1
    # pull the SEG back and decode it onto the source grid (read from the original files)
    back = pull_series(client, found["SEG"].pop(), tmp_path / "seg-back")
    (seg_file,) = back.files
    source = load_series(prostatex / T2_TRA_0000).volume
    decoded = read_dicom_seg(seg_file, source, NAMES)
    expected = record["label"]
    assert set(np.unique(expected.array)) == {0, 1, 2}
    assert decoded.geometry.is_close(source.geometry)
    assert np.array_equal(decoded.array, expected.array)
    ds = pydicom.dcmread(seg_file, stop_before_pixels=True)
    assert ds.StudyInstanceUID == STUDY_0000
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == T2_TRA_0000_UID
    # the work folder kept the pulled series and the results; a second run refuses to mix them
    assert len(list((tmp_path / "work" / "series").glob("*.dcm"))) == 19
    with pytest.raises(OutputExistsError, match="output exists"):
        segment_study(
            client, STUDY_0000, make_threshold_fn({}), description="t2*tra*", work_dir=tmp_path / "work"
        )


def test_nothing_is_pushed_when_segmentation_fails(orthanc_rw: OrthancServer, tmp_path: Path) -> None:
    client = client_for(orthanc_rw)
    before = orthanc_rw.count()

    def fails_with_user_error(series_folder: Path, out_folder: Path) -> list[Path]:
        (out_folder / "half.dcm").write_bytes(b"partial")
        raise InputError(series_folder, "the model was trained for CT", expected="CT", found="MR")

    with pytest.raises(PacsError, match=r"segmentation failed, nothing was pushed: .*trained for CT"):
        segment_study(client, STUDY_0000, fails_with_user_error, series_uid=T2_TRA_0000_UID)

    def crashes(series_folder: Path, out_folder: Path) -> list[Path]:
        raise RuntimeError("bug in the model")

    with pytest.raises(RuntimeError, match="bug in the model"):
        segment_study(client, STUDY_0000, crashes, series_uid=T2_TRA_0000_UID)
    with pytest.raises(PacsError, match="produced no files"):
        segment_study(client, STUDY_0000, lambda s, o: [], series_uid=T2_TRA_0000_UID)
    assert orthanc_rw.count() == before


def test_outputs_that_do_not_reference_the_source_are_refused(
    orthanc_rw: OrthancServer, prostatex: Path, tmp_path: Path
) -> None:
    client = client_for(orthanc_rw)
    before = orthanc_rw.count()

    def seg_of_another_series(series_folder: Path, out_folder: Path) -> list[Path]:
        label, series = threshold_label(prostatex / T2_SAG_0000)  # same study, other series
        return [write_dicom_seg(label, series, out_folder / "seg.dcm", NAMES)]

    with pytest.raises(PacsError, match=r"does not reference the source series.*nothing was pushed"):
        segment_study(client, STUDY_0000, seg_of_another_series, series_uid=T2_TRA_0000_UID)

    def returns_a_source_image(series_folder: Path, out_folder: Path) -> list[Path]:
        src = sorted(series_folder.glob("*.dcm"))[0]
        return [Path(shutil.copy(src, out_folder / "copy.dcm"))]

    with pytest.raises(PacsError, match="instance of the source series itself"):
        segment_study(client, STUDY_0000, returns_a_source_image, series_uid=T2_TRA_0000_UID)
    assert orthanc_rw.count() == before


def test_series_choice(orthanc_rw: OrthancServer) -> None:
    client = client_for(orthanc_rw)
    with pytest.raises(PacsError, match=r"2 image series in the study.*t2_tse_sag.*t2_tse_tra"):
        segment_study(client, STUDY_0000, lambda s, o: [])
    with pytest.raises(PacsError, match="no image series matching --description 'ct\\*'") as info:
        segment_study(client, STUDY_0000, lambda s, o: [], description="ct*")
    # it said 'Series: none'; now the study's image series, to choose a description from
    assert "Image series of the study: #3 't2_tse_sag'" in str(info.value)
    assert "#4 't2_tse_tra'" in str(info.value)
    with pytest.raises(PacsError, match=r"2 image series matching --description 't2\*'.*add @last or @first"):
        choose_series(client, STUDY_0000, description="t2*")
    # a sequence run again: '@last' / '@first' pick among the matches, as predict --series does
    assert choose_series(client, STUDY_0000, description="T2*@last").series_uid == T2_TRA_0000_UID
    first = choose_series(client, STUDY_0000, description="t2*@first")
    assert (first.number, first.description) == (3, "t2_tse_sag") and first.acquired


def test_segment_cli_with_an_injected_predictor(
    orthanc_rw: OrthancServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_pacs_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    args = [
        "pacs",
        "segment",
        "--study",
        STUDY_0000,
        "--description",
        "t2_tse_tra",
        "-m",
        str(tmp_path / "model"),
    ]
    result = runner.invoke(app, [*args, "--format", "nifti"], env={"MEDSEG_PACS_URL": orthanc_rw.dicomweb})
    assert result.exit_code == 2 and "only dicom-seg and rtstruct" in result.output
    calls: list[tuple[Path, tuple[str, ...], int | None]] = []

    def fake_model_segment_fn(
        model: Path, *, formats: tuple[str, ...], device: str, threads: int | None
    ) -> Callable[..., list[Path]]:
        calls.append((model, formats, threads))
        return make_threshold_fn({}, rtstruct="rtstruct" in formats)

    monkeypatch.setattr(segment_module, "model_segment_fn", fake_model_segment_fn)
    before = series_by_modality(client_for(orthanc_rw))
    with caplog.at_level("INFO"):
        result = runner.invoke(
            app,
            [*args, "--format", "dicom-seg", "--threads", "1", "-q"],
            env={"MEDSEG_PACS_URL": orthanc_rw.dicomweb},
        )
    assert result.exit_code == 0, result.output
    # -q: no INFO lines ('segmenting series ...', 'wrote DICOM SEG ... to /tmp/medseg-pacs-...',
    # 'pushed 1 instances ...'), only the result lines
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("medseg") and r.levelno < 30]
    assert calls == [(tmp_path / "model", ("dicom-seg",), 1)]
    assert "pushed SEG" in result.output and "t2_tse_tra" in result.output
    assert list(new_series(before, series_by_modality(client_for(orthanc_rw)))) == ["SEG"]


CT_MODEL = ("CT", "its plan normalises channel 'CT' as CT (Hounsfield units)")


def fake_predict_writing_a_seg(calls: list[Path]) -> Callable[..., list[object]]:
    """Stands in for medseg's predictor (no trained model needed): a SEG of the pulled series."""
    from medseg.inference.predictor import CaseResult

    def fake_predict(series: Path, model: Path, out: Path, config: object) -> list[object]:
        calls.append(Path(series))
        label, source = threshold_label(Path(series))
        seg = write_dicom_seg(label, source, Path(out) / "seg.dcm", NAMES)
        return [CaseResult("series", True, {"dicom-seg": str(seg)})]

    return fake_predict


def test_a_series_of_another_modality_than_the_models_is_refused_before_the_pull(
    orthanc_rw: OrthancServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pacs segment with a CT model on an MR series only warned, and pushed a meaningless SEG
    into the study. The series is now refused before anything is pulled, naming the series,
    its modality and the model's; --allow-modality-mismatch segments and pushes it anyway."""
    import medseg.inference.predictor as predictor

    calls: list[Path] = []
    monkeypatch.setattr(predictor, "predict", fake_predict_writing_a_seg(calls))
    client = client_for(orthanc_rw)
    fn = ModelSegmentFn(tmp_path / "ct_model", ("dicom-seg",), expected_modality=CT_MODEL)
    before = series_by_modality(client)
    with pytest.raises(PacsError) as info:
        segment_study(client, STUDY_0000, fn, series_uid=T2_TRA_0000_UID, work_dir=tmp_path / "work")
    message = str(info.value)
    assert f"series #4 't2_tse_tra' MR (19 instances) {T2_TRA_0000_UID} is MR" in message, message
    assert f"the model {tmp_path / 'ct_model'} expects CT ({CT_MODEL[1]})" in message
    assert "nothing was pulled or pushed" in message and "--allow-modality-mismatch" in message
    assert not (tmp_path / "work" / "series").exists() and calls == []
    assert new_series(before, series_by_modality(client)) == {}
    with caplog.at_level("WARNING", logger="medseg.pacs.segment"):
        result = segment_study(
            client, STUDY_0000, fn, series_uid=T2_TRA_0000_UID, allow_modality_mismatch=True
        )
    assert len(calls) == 1 and [i.modality for i in result.pushed.accepted] == ["SEG"]
    assert "segmenting it anyway (--allow-modality-mismatch)" in caplog.text
    assert list(new_series(before, series_by_modality(client))) == ["SEG"]


def test_pacs_segment_cli_refuses_a_modality_mismatch_unless_allowed(
    orthanc_rw: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pacs_env: None
) -> None:
    """The CLI reads the model's modality from its plan (stubbed here) and has the override."""
    import medseg.inference.predictor as predictor

    calls: list[Path] = []
    monkeypatch.setattr(predictor, "predict", fake_predict_writing_a_seg(calls))
    monkeypatch.setattr(segment_module, "_model_modality", lambda model: CT_MODEL)
    args = [
        "pacs",
        "segment",
        "--study",
        STUDY_0000,
        "--description",
        "t2_tse_tra",
        "-m",
        str(tmp_path / "m"),
    ]
    env = {"MEDSEG_PACS_URL": orthanc_rw.dicomweb}
    before = series_by_modality(client_for(orthanc_rw))
    result = runner.invoke(app, [*args, "--format", "dicom-seg"], env=env)
    assert result.exit_code == 2, result.output
    assert "is MR, but the model" in result.output and "expects CT" in result.output
    assert calls == [] and new_series(before, series_by_modality(client_for(orthanc_rw))) == {}
    result = runner.invoke(app, [*args, "--format", "dicom-seg", "--allow-modality-mismatch", "-q"], env=env)
    assert result.exit_code == 0, result.output
    assert "pushed SEG" in result.output and len(calls) == 1


def test_a_series_of_the_models_modality_or_an_unknown_one_is_not_refused() -> None:
    """No server needed: the check alone."""
    record = SeriesRecord("1.2.3", "1.2.3.4", "MR", "t2_tse_tra", 4, 19)
    check_modality(record, ("MR", "its channel is named 'T2'"), model="m")
    check_modality(record, None, model="m")  # channel names that say nothing: not checked
    check_modality(SeriesRecord("1.2.3", "1.2.3.4", "", "x", 1, 1), CT_MODEL, model="m")
    with pytest.raises(PacsError, match="is MR, but the model m expects CT"):
        check_modality(record, CT_MODEL, model="m")
    reverse = SeriesRecord("1.2.3", "1.2.3.5", "CT", "abdomen", 2, 90)
    with pytest.raises(PacsError, match="is CT, but the model m expects MR"):
        check_modality(reverse, ("MR", "its channel is named 'T2'"), model="m")


def test_a_local_format_asked_of_segment_says_how_to_get_it(tmp_path: Path) -> None:
    """`pacs segment --format volumes` was refused without saying how to get the volumes of
    what was pushed; the error now gives the export command (no server needed)."""
    with pytest.raises(PacsError) as info:
        segment_module.model_segment_fn(tmp_path / "model", formats=("dicom-seg", "volumes"))
    message = str(info.value)
    assert "only dicom-seg and rtstruct can be pushed to a PACS, found ['dicom-seg', 'volumes']" in message
    assert "keep --work DIR and run: medseg export DIR/results/series/seg.dcm DIR/series" in message


def test_model_segment_fn_runs_predict_with_the_threads_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pacs segment had no --threads (predict has): on a shared CPU server the network took
    every core. The predictor now gets the cap (no server needed to check)."""
    import medseg.inference.predictor as predictor

    seen: list[object] = []

    def fake_predict(series: Path, model: Path, out: Path, config: object) -> list[object]:
        seen.append(config)
        return []

    monkeypatch.setattr(predictor, "predict", fake_predict)
    run = segment_module.model_segment_fn(tmp_path / "model", formats=("dicom-seg",), device="cpu", threads=2)
    with pytest.raises(PacsError, match="found nothing to segment"):
        run(tmp_path / "series", tmp_path / "out")
    (config,) = seen
    assert config.threads == 2 and config.device == "cpu" and config.formats == ("dicom-seg",)  # type: ignore[attr-defined]


def test_a_second_segmentation_of_a_series_warns_of_the_first(
    orthanc_rw: OrthancServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each run pushes new objects; a cohort segmented twice left every study with two SEGs and
    two RTSTRUCTs without a word. The second run now names the earlier ones (found by what
    they reference, via WADO-RS metadata), and a series nobody segmented gets no warning."""
    client = client_for(orthanc_rw)
    sag = next(s for s in query_series(client, study_uid=STUDY_0000) if s.description == "t2_tse_sag")
    with caplog.at_level("WARNING", logger="medseg.pacs.segment"):
        first = segment_study(
            client, STUDY_0000, make_threshold_fn({}), series_uid=sag.series_uid, work_dir=tmp_path / "w"
        )
    assert "already holds" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medseg.pacs.segment"):
        segment_study(client, STUDY_0000, make_threshold_fn({}), series_uid=sag.series_uid)
    (message,) = [r.getMessage() for r in caplog.records if "already holds" in r.getMessage()]
    assert message.startswith(
        f"the study already holds 2 RTSTRUCT/SEG series referencing series {sag.series_uid}"
    )
    assert len(first.outputs) == 2
    assert all(pydicom.dcmread(p).SeriesInstanceUID in message for p in first.outputs)
