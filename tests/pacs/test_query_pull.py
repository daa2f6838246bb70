"""Query and pull against a real Orthanc, including faults: server down, 401, 404, dropped connection."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io.dicom import load_series
from medseg.pacs.client import (
    PacsAuthError,
    PacsClient,
    PacsConfig,
    PacsConnectionError,
    PacsNotFoundError,
)
from medseg.pacs.query import query_series, query_studies
from medseg.pacs.transfer import is_complete_instance, pull_series, pull_study
from tests.pacs.conftest import (
    PASSWORD,
    PATIENT_0000,
    PATIENT_0001,
    STUDY_0000,
    T2_TRA_0000,
    T2_TRA_0000_UID,
    USER,
    DroppingProxy,
    OrthancServer,
    _free_port,
)

pytestmark = pytest.mark.orthanc
runner = CliRunner()


def client_for(url: str, **kwargs: object) -> PacsClient:
    return PacsClient(PacsConfig(url, **kwargs))  # type: ignore[arg-type]


def all_files(folder: Path) -> list[Path]:
    """Every file, hidden temporaries included."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------- query
def test_query_studies_by_patient_date_modality_description(orthanc: OrthancServer) -> None:
    client = client_for(orthanc.dicomweb)
    everything = query_studies(client)
    assert {s.patient_id for s in everything} == {PATIENT_0000, PATIENT_0001}
    (study,) = query_studies(client, patient_id=PATIENT_0000)
    assert study.study_uid == STUDY_0000 and study.date == "20110707"
    assert study.n_series == 2 and study.n_instances == 19 + 19 and study.modalities == ("MR",)
    assert PATIENT_0000 not in repr(study)  # patient data stay out of reprs (and so out of logs)
    assert [s.patient_id for s in query_studies(client, date="2011-07-08")] == [PATIENT_0001]
    assert len(query_studies(client, date="20110701-20110731")) == 2
    assert query_studies(client, date="20120101-") == []
    assert len(query_studies(client, modality="mr")) == 2
    assert query_studies(client, modality="CT") == []


def test_query_series_in_a_study(orthanc: OrthancServer) -> None:
    client = client_for(orthanc.dicomweb)
    series = query_series(client, study_uid=STUDY_0000)
    assert [(s.number, s.description, s.n_instances) for s in series] == [
        (3, "t2_tse_sag", 19),
        (4, "t2_tse_tra", 19),
    ]
    (tra,) = query_series(client, study_uid=STUDY_0000, description="tra")  # substring
    assert tra.series_uid == T2_TRA_0000_UID and tra.modality == "MR"
    assert len(query_series(client, description="t2_tse_*")) == 3  # glob, all studies
    assert [s.patient_id for s in query_series(client, patient_id=PATIENT_0001)] == [PATIENT_0001]


def test_no_patient_data_in_log_records(orthanc: OrthancServer, caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(orthanc.dicomweb)
    with caplog.at_level(logging.DEBUG):  # DEBUG: urllib3 and dicomweb-client log request URLs
        studies = query_studies(client, patient_id=PATIENT_0000)
        query_series(client, patient_id=PATIENT_0000)
    assert studies and caplog.records, "the query should have logged something"
    assert PATIENT_0000 not in caplog.text
    assert "query redacted" in caplog.text  # the request line was logged, without its query string


def test_query_cli_prints_a_table(orthanc: OrthancServer, no_pacs_env: None) -> None:
    result = runner.invoke(app, ["pacs", "query", "--url", orthanc.dicomweb, "--patient", PATIENT_0000])
    assert result.exit_code == 0, result.output
    assert "1 studies" in result.output and STUDY_0000 in result.output and PATIENT_0000 in result.output
    result = runner.invoke(
        app, ["pacs", "query", "--study", STUDY_0000], env={"MEDSEG_PACS_URL": orthanc.dicomweb}
    )
    assert result.exit_code == 0, result.output
    assert "2 series" in result.output and "t2_tse_tra" in result.output


def test_query_cli_is_capped_and_says_when_more_may_match(
    orthanc: OrthancServer, no_pacs_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'medseg pacs query' with no filter listed every study of the server: on a hospital PACS,
    millions. It now stops at --limit (100 by default) and says when more may match."""
    env = {"MEDSEG_PACS_URL": orthanc.dicomweb}
    result = runner.invoke(app, ["pacs", "query"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 studies" in result.output and "more may match" not in result.output
    result = runner.invoke(app, ["pacs", "query", "--limit", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 studies" in result.output
    assert "the first 1 results; more may match: narrow the search" in " ".join(result.output.split())
    import medseg.pacs.query as query_module

    asked: list[object] = []
    real = query_module.query_studies
    monkeypatch.setattr(
        query_module, "query_studies", lambda client, **kw: asked.append(kw["limit"]) or real(client, **kw)
    )
    assert runner.invoke(app, ["pacs", "query"], env=env).exit_code == 0
    assert asked == [100]


def test_query_cli_bad_date_is_one_line(no_pacs_env: None) -> None:
    result = runner.invoke(
        app, ["pacs", "query", "--url", "http://127.0.0.1:1/dicom-web", "--date", "2011-13-01"]
    )
    assert result.exit_code == 2
    assert "--date" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- pull
def test_pull_series_matches_the_source_files(
    orthanc: OrthancServer, prostatex: Path, tmp_path: Path
) -> None:
    client = client_for(orthanc.dicomweb)
    out = tmp_path / "t2"
    result = pull_series(client, T2_TRA_0000_UID, out)
    assert (result.total, result.downloaded, result.skipped) == (19, 19, 0)
    assert result.study_uid == STUDY_0000
    assert len(all_files(out)) == 19
    pulled = load_series(out)
    source = load_series(prostatex / T2_TRA_0000)
    assert pulled.volume.geometry.is_close(source.volume.geometry)
    assert np.array_equal(pulled.volume.array, source.volume.array)
    # a second run downloads nothing
    again = pull_series(client, T2_TRA_0000_UID, out, study_uid=STUDY_0000)
    assert (again.downloaded, again.skipped) == (0, 19)


def test_pull_replaces_a_truncated_file_and_removes_stale_temporaries(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    client = client_for(orthanc.dicomweb)
    out = tmp_path / "t2"
    first = pull_series(client, T2_TRA_0000_UID, out, progress=True)
    victim = first.files[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # pydicom still parses it; the pixel check catches it
    assert not is_complete_instance(victim, victim.stem)
    stale = out / f".{victim.name}.abc123.tmp.dcm"  # what a killed process leaves (atomic_file's naming)
    stale.write_bytes(b"partial")
    again = pull_series(client, T2_TRA_0000_UID, out)
    assert (again.downloaded, again.skipped) == (1, 18)
    assert victim.read_bytes() == data
    assert not stale.exists() and len(all_files(out)) == 19


def test_pull_study_puts_each_series_in_its_folder(orthanc: OrthancServer, tmp_path: Path) -> None:
    results = pull_study(client_for(orthanc.dicomweb), STUDY_0000, tmp_path / "study")
    assert sorted(r.description for r in results) == ["t2_tse_sag", "t2_tse_tra"]
    for r in results:
        assert r.folder == tmp_path / "study" / r.series_uid and len(list(r.folder.glob("*.dcm"))) == 19


def test_pull_cli_reports_and_resumes(orthanc: OrthancServer, tmp_path: Path, no_pacs_env: None) -> None:
    args = [
        "pacs",
        "pull",
        "--url",
        orthanc.dicomweb,
        "--series",
        T2_TRA_0000_UID,
        "-o",
        str(tmp_path / "s"),
        "-q",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "19 instances" in result.output and "19 downloaded" in result.output
    result = runner.invoke(app, args)
    assert "0 downloaded, 19 already present" in result.output
    result = runner.invoke(app, ["pacs", "pull", "--url", orthanc.dicomweb, "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--series" in result.output


# ---------------------------------------------------------------------------- faults
def test_server_down_is_one_clear_line_and_no_files(
    tmp_path: Path, no_pacs_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"  # nothing listens there
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(PacsConnectionError, match="connection refused") as info,
    ):
        query_studies(client_for(url), patient_id=PATIENT_0000)
    # the failed request's URL (with ?PatientID=...) is logged by the retry machinery: redacted
    assert PATIENT_0000 not in caplog.text and PATIENT_0000 not in str(info.value)
    with pytest.raises(PacsConnectionError, match="connection refused"):
        pull_series(client_for(url), T2_TRA_0000_UID, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = runner.invoke(
        app,
        ["pacs", "pull", "--url", url, "--series", T2_TRA_0000_UID, "-o", str(tmp_path / "out")],
        env={"MEDSEG_PACS_USER": USER, "MEDSEG_PACS_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "connection refused" in lines[0], result.output
    assert PASSWORD not in result.output and "Traceback" not in result.output


def test_series_that_does_not_exist(orthanc: OrthancServer, tmp_path: Path) -> None:
    client = client_for(orthanc.dicomweb)
    with pytest.raises(PacsNotFoundError, match=r"series 1\.2\.3\.4 not found"):
        pull_series(client, "1.2.3.4", tmp_path / "out")
    with pytest.raises(PacsNotFoundError, match=r"study 1\.2\.3 not found"):
        pull_study(client, "1.2.3", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_dicomweb_root_is_http_404(orthanc: OrthancServer, tmp_path: Path) -> None:
    client = client_for(orthanc.url + "/not-dicom-web")
    with pytest.raises(PacsNotFoundError, match="HTTP 404"):
        pull_series(client, T2_TRA_0000_UID, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_credentials_401_never_shows_the_password(
    orthanc_auth: OrthancServer, tmp_path: Path, no_pacs_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ng-Passw0rd-zzz"
    with pytest.raises(PacsAuthError, match=r"refused the credentials.*401"):
        pull_series(
            client_for(orthanc_auth.dicomweb, user=USER, password=wrong), T2_TRA_0000_UID, tmp_path / "a"
        )
    with pytest.raises(PacsAuthError, match="requires authentication"):
        query_studies(client_for(orthanc_auth.dicomweb))
    with pytest.raises(PacsAuthError, match="401"):
        query_studies(client_for(orthanc_auth.dicomweb, token="not-a-valid-token-qqq"))
    env = {"MEDSEG_PACS_URL": orthanc_auth.dicomweb, "MEDSEG_PACS_USER": USER, "MEDSEG_PACS_PASSWORD": wrong}
    with caplog.at_level(logging.DEBUG):
        result = runner.invoke(app, ["pacs", "query", "--patient", PATIENT_0000], env=env)
    assert result.exit_code == 2 and "401" in result.output, result.output
    assert wrong not in result.output and wrong not in caplog.text
    result = runner.invoke(
        app, ["pacs", "query", "--url", orthanc_auth.dicomweb, "--token", "not-a-valid-token-qqq"]
    )
    assert result.exit_code == 2 and "not-a-valid-token-qqq" not in result.output
    # the right password works, from the environment
    env["MEDSEG_PACS_PASSWORD"] = PASSWORD
    result = runner.invoke(app, ["pacs", "query", "--patient", PATIENT_0000], env=env)
    assert result.exit_code == 0, result.output
    assert "1 studies" in result.output and PASSWORD not in result.output
    assert not (tmp_path / "a").exists()


def test_dropped_connection_leaves_no_partial_file_and_a_rerun_completes(
    dropping_proxy: DroppingProxy, tmp_path: Path
) -> None:
    client = client_for(dropping_proxy.url)
    out = tmp_path / "t2"
    # ~300 kB per instance: the cut falls inside the 4th or so instance download.
    dropping_proxy.arm(1_000_000)
    with pytest.raises(PacsConnectionError, match=r"dropped.*run the same pull again to resume") as info:
        pull_series(client, T2_TRA_0000_UID, out, study_uid=STUDY_0000)
    assert dropping_proxy.drops == 1
    dropping_proxy.restore()
    assert "\n" not in str(info.value)
    present = all_files(out)
    assert 0 < len(present) < 19
    assert all(not p.name.startswith(".") for p in present)  # no temporaries
    assert all(is_complete_instance(p, p.stem) for p in present)  # every file is whole
    again = pull_series(client, T2_TRA_0000_UID, out, study_uid=STUDY_0000)
    assert (again.skipped, again.downloaded) == (len(present), 19 - len(present))
    assert len(all_files(out)) == 19 and load_series(out).volume.shape == (19, 384, 384)
