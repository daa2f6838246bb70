from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io import read_volume, write_volume
from medseg.io.dicom import write_dicom_series
from medseg.io.png import write_image_stack
from tests.conftest import make_oblique_volume

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def snapshot(folder: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def two_series(folder: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    write_dicom_series(vol, folder / "a", series_description="T2 axial")
    write_dicom_series(vol.with_array(vol.array + 1), folder / "b", series_description="ADC")


# ----------------------------------------------------------------------- info
def test_info_shows_geometry(tmp_path: Path) -> None:
    vol = make_oblique_volume()
    write_volume(vol, tmp_path / "v.nii.gz")
    code, out, _ = run("info", tmp_path / "v.nii.gz")
    assert code == 0
    assert "12 x 20 x 16" in out and "spacing (z, y, x) mm" in out and vol.orientation in out
    code, out, _ = run("info", tmp_path / "v.nii.gz", "--json")
    assert code == 0
    report = json.loads(out)["volume"]
    assert report["shape_zyx"] == [12, 20, 16]
    np.testing.assert_allclose(report["spacing_zyx_mm"], vol.spacing, atol=1e-5)
    np.testing.assert_allclose(report["origin_lps_mm"], vol.origin, atol=1e-4)
    np.testing.assert_allclose(report["direction_zyx_columns"], vol.direction, atol=1e-6)
    assert report["min"] == pytest.approx(float(vol.array.min()))
    assert report["orientation"] == vol.orientation


def test_info_on_a_dataset_folder_says_what_it_takes(tmp_path: Path) -> None:
    """`medseg info data/` on a dataset said "holds no DICOM image series; ... found 63 files,
    0 DICOM", as if the dataset were a broken DICOM folder."""
    from medseg.data.phantom import write_phantom_dataset

    root = tmp_path / "data"
    write_phantom_dataset(root, n_train=1, n_test=0, size=(8, 32, 32))
    code, out, err = run("info", root)
    assert code == 2
    message = " ".join((out + err).split())
    assert f"{root}: is a dataset folder (dataset.json)" in message
    assert "holds no DICOM" not in message and f"medseg dataset check {root}" in message


def test_info_lists_dicom_series(tmp_path: Path) -> None:
    two_series(tmp_path / "study")
    code, out, _ = run("info", tmp_path / "study")
    assert code == 0
    assert "T2 axial" in out and "ADC" in out and "pick one with --series" in out
    code, out, _ = run("info", tmp_path / "study", "--series", "ADC", "--json")
    assert code == 0
    report = json.loads(out)
    assert [s["description"] for s in report["series"]] == ["T2 axial", "ADC"]
    assert report["volume"]["meta"]["series_description"] == "ADC"
    assert "PatientName" not in out


def test_info_says_a_series_uid_is_empty(tmp_path: Path) -> None:
    """TotalSegmentator's example CT DICOM has an empty SeriesInstanceUID: info printed '[0] '
    and nothing after it."""
    two_series(tmp_path / "study")
    for file in (tmp_path / "study").rglob("*.dcm"):
        ds = pydicom.dcmread(file)
        if ds.SeriesDescription == "ADC":
            ds.SeriesInstanceUID = ""
            ds.save_as(file)
    code, out, _ = run("info", tmp_path / "study")
    assert code == 0
    assert "(empty SeriesInstanceUID: blanked by an anonymiser?)" in " ".join(out.split())

    files = write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "loc")
    for f in files[:3]:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.save_as(f)
    code, out, err = run("info", tmp_path / "loc")
    assert code == 2
    assert "DICOM series" in out
    assert err.strip().count("\n") == 0 and "mixes slice orientations" in err


# -------------------------------------------------------------------- convert
def test_convert_dicom_to_nifti_to_dicom(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    write_dicom_series(vol, tmp_path / "dcm", modality="CT")
    code, _, err = run("convert", tmp_path / "dcm", tmp_path / "v.nii.gz")
    assert code == 0, err
    nii = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(nii.array, vol.array)
    code, _, err = run(
        "convert", tmp_path / "v.nii.gz", tmp_path / "dcm2", "--to", "dicom", "--modality", "CT"
    )
    assert code == 0, err
    back = read_volume(tmp_path / "dcm2")
    np.testing.assert_array_equal(back.array, vol.array)
    back.geometry.require_same(vol.geometry, origin_atol=1e-4, direction_atol=1e-6)
    assert back.meta["modality"] == "CT"


def test_convert_to_dicom_keeps_the_mr_acquisition_of_a_dicom_input(tmp_path: Path) -> None:
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "dcm")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime, ds.SliceThickness = "2D", "88", "3500", "2"
        ds.save_as(f)
    code, _, err = run("convert", tmp_path / "dcm", tmp_path / "out", "--to", "dicom")
    assert code == 0, err
    ds = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0], stop_before_pixels=True)
    assert ds.MRAcquisitionType == "2D" and float(ds.EchoTime) == 88 and float(ds.RepetitionTime) == 3500
    assert float(ds.SliceThickness) == 2
    # through NIfTI the acquisition is lost: written as unknown, even with the original as reference
    assert run("convert", tmp_path / "dcm", tmp_path / "v.nii.gz")[0] == 0
    code, _, err = run(
        "convert", tmp_path / "v.nii.gz", tmp_path / "out2", "--to", "dicom", "--reference", tmp_path / "dcm"
    )
    assert code == 0, err
    ds = pydicom.dcmread(sorted((tmp_path / "out2").iterdir())[0], stop_before_pixels=True)
    assert ds.MRAcquisitionType == "" and ds.EchoTime is None
    assert float(ds.SliceThickness) == pytest.approx(3.0)


def test_uid_secret_file_gives_the_uids_of_the_same_key_on_the_command_line(tmp_path: Path) -> None:
    """--uid-secret on a command line shows in the process list and the shell history;
    --uid-secret-file reads the same key from a file (its first line) and maps UIDs the same way."""
    vol = make_oblique_volume(dtype=np.int16)
    write_dicom_series(vol, tmp_path / "dcm")
    key = tmp_path / "key.txt"
    key.write_text("project-key\nignored second line\n")
    deid = ("--to", "dicom", "--deidentify")
    assert run("convert", tmp_path / "dcm", tmp_path / "a", *deid, "--uid-secret", "project-key")[0] == 0
    code, out, err = run("convert", tmp_path / "dcm", tmp_path / "b", *deid, "--uid-secret-file", key)
    assert code == 0, err
    assert "no --uid-secret" not in out  # a key was given
    a, b = (
        [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((tmp_path / d).iterdir())] for d in "ab"
    )
    assert [x.SOPInstanceUID for x in a] == [x.SOPInstanceUID for x in b]
    assert a[0].StudyInstanceUID == b[0].StudyInstanceUID
    # both, an empty file, or a missing one: refused, naming the problem, nothing written
    both = ("--uid-secret", "k", "--uid-secret-file", key)
    code, _, err = run("convert", tmp_path / "dcm", tmp_path / "c", *deid, *both)
    assert code == 2 and "not both" in err and not (tmp_path / "c").exists()
    (tmp_path / "empty.txt").write_text("\n")
    code, _, err = run(
        "convert", tmp_path / "dcm", tmp_path / "c", *deid, "--uid-secret-file", tmp_path / "empty.txt"
    )
    assert code == 2 and "empty.txt" in err and "holds no UID secret" in err and not (tmp_path / "c").exists()
    code, _, err = run(
        "convert", tmp_path / "dcm", tmp_path / "c", *deid, "--uid-secret-file", tmp_path / "no.txt"
    )
    assert code == 2 and "no.txt" in err and "cannot read the UID secret" in err


def test_convert_dicom_to_dicom_deidentified(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "dcm")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-7731"
        ds.save_as(f)
    code, first, err = run("convert", tmp_path / "dcm", tmp_path / "anon", "--to", "dicom", "--deidentify")
    assert code == 0, err
    for f in (tmp_path / "anon").iterdir():
        data = f.read_bytes()
        assert b"Doe" not in data and b"PID-7731" not in data
    np.testing.assert_array_equal(read_volume(tmp_path / "anon").array, vol.array)
    assert "--deidentify changes DICOM output only" not in first
    assert "no --uid-secret" in first  # these UIDs match no other run's, and the user is told
    # A pseudonym without --deidentify would write the patient's own name: refused, nothing written.
    code, _, err = run("convert", tmp_path / "dcm", tmp_path / "named", "--to", "dicom", "--pseudonym", "S1")
    assert (
        code == 2 and "--pseudonym only apply with --deidentify" in err and not (tmp_path / "named").exists()
    )
    # To NIfTI the option has nothing to do: the user is told, and no name or ID is written.
    code, out, err = run("convert", tmp_path / "dcm", tmp_path / "anon.nii.gz", "--deidentify")
    assert code == 0, err
    assert "--deidentify changes DICOM output only" in out + err
    data = gzip.decompress((tmp_path / "anon.nii.gz").read_bytes())
    assert b"Doe" not in data and b"PID-7731" not in data
    code, out, err = run("convert", tmp_path / "dcm", tmp_path / "pngs", "--to", "png", "--deidentify")
    assert code == 0, err
    assert "--deidentify changes DICOM output only" in out + err  # a folder, but not DICOM


def test_deidentified_uids_need_the_secret_and_patients_keep_apart(tmp_path: Path) -> None:
    """New UIDs cannot be recomputed from the originals (they used a public salt); the same
    --uid-secret keeps separate runs in one study; --pseudonym names the patient."""
    from pydicom.uid import generate_uid

    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "dcm")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyDescription = "MRT Becken bei Frau Doe"
        ds.save_as(f)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)

    def converted(name: str, *extra: str) -> pydicom.Dataset:
        code, _, err = run(
            "convert", tmp_path / "dcm", tmp_path / name, "--to", "dicom", "--deidentify", *extra
        )
        assert code == 0, err
        return pydicom.dcmread(next((tmp_path / name).iterdir()))

    a = converted("a", "--pseudonym", "SUBJ001", "--uid-secret", "k3y")
    b = converted("b", "--uid-secret", "k3y")
    c = converted("c", "--uid-secret", "other")
    assert str(a.PatientName) == a.PatientID == "SUBJ001" and b.PatientID == "ANONYMOUS"
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID != study
    assert a.StudyInstanceUID != generate_uid(
        entropy_srcs=["medseg-deidentify", study]
    )  # the old public salt
    assert "StudyDescription" not in a


def test_convert_with_pseudonym_auto_needs_a_patient_id(tmp_path: Path) -> None:
    """--pseudonym auto derives the pseudonym from the source's PatientID: a NIfTI converted to
    DICOM without a reference has none, and every such patient would get one pseudonym: refused,
    nothing written. With a DICOM source each patient gets its own."""
    vol = make_oblique_volume(dtype=np.int16)
    write_volume(vol, tmp_path / "v.nii.gz")
    code, _, err = run(
        "convert",
        tmp_path / "v.nii.gz",
        tmp_path / "d",
        "--to",
        "dicom",
        "--deidentify",
        "--pseudonym",
        "auto",
    )
    assert code == 2 and "give --pseudonym NAME" in err and not (tmp_path / "d").exists()
    names = set()
    for patient in ("PID-1", "PID-2"):
        files = write_dicom_series(vol, tmp_path / patient)
        for f in files:
            ds = pydicom.dcmread(f)
            ds.PatientID = patient
            ds.save_as(f)
        key = ("--deidentify", "--pseudonym", "auto", "--uid-secret", "k3y")
        code, _, err = run("convert", tmp_path / patient, tmp_path / f"{patient}.deid", "--to", "dicom", *key)
        assert code == 0, err
        ds = pydicom.dcmread(next((tmp_path / f"{patient}.deid").iterdir()))
        assert str(ds.PatientName) == ds.PatientID != patient
        names.add(ds.PatientID)
    assert len(names) == 2


def test_convert_png_stack_needs_spacing(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.uint16)
    write_image_stack(vol, tmp_path / "png")
    code, _, err = run("convert", tmp_path / "png", tmp_path / "v.nrrd")
    assert code == 2 and "--spacing Z Y X" in err and not (tmp_path / "v.nrrd").exists()
    code, _, err = run("convert", tmp_path / "png", tmp_path / "v.nrrd", "--spacing", "3", "0.7", "0.5")
    assert code == 0, err
    back = read_volume(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing == pytest.approx((3.0, 0.7, 0.5))


def test_convert_to_png_folder(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.uint16)
    write_volume(vol, tmp_path / "v.mha")
    code, _, err = run("convert", tmp_path / "v.mha", tmp_path / "slices", "--to", "png")
    assert code == 0, err
    assert len(list((tmp_path / "slices").glob("*.png"))) == 12


def test_convert_stacked_volume_with_volume_option(tmp_path: Path) -> None:
    from tests.conftest import write_stacked_series

    vol = make_oblique_volume(dtype=np.int16)
    write_stacked_series(tmp_path / "s", vol, vol.with_array(vol.array * 2))
    code, _, err = run("convert", tmp_path / "s", tmp_path / "v.nii.gz")
    assert code == 2 and "--volume" in err
    code, _, err = run("convert", tmp_path / "s", tmp_path / "v.nii.gz", "--volume", "1")
    assert code == 0, err
    np.testing.assert_array_equal(read_volume(tmp_path / "v.nii.gz").array, vol.array * 2)


def test_convert_a_repeated_sequence_by_pattern_and_rule(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    study = tmp_path / "study"
    for number, time, offset in ((6, "114336", 0), (10, "115225", 5)):
        files = write_dicom_series(
            vol.with_array(vol.array + offset),
            study / f"s{number}",
            series_description="t2_tse_tra",
            series_number=number,
        )
        for f in files:
            ds = pydicom.dcmread(f)
            ds.SeriesTime = time
            ds.save_as(f)
    code, _, err = run("convert", study, tmp_path / "v.nii.gz", "--series", "T2_TSE*")
    assert code == 2
    assert "has 2 series described 'T2_TSE*'" in err and "--series 'T2_TSE*@last'" in err
    assert "[0] 't2_tse_tra' 12 slices, SeriesNumber 6, acquired 11:43:36" in err
    assert "[1] 't2_tse_tra' 12 slices, SeriesNumber 10, acquired 11:52:25" in err
    assert not (tmp_path / "v.nii.gz").exists()
    code, _, err = run("convert", study, tmp_path / "v.nii.gz", "--series", "T2_TSE*@last")
    assert code == 0, err
    np.testing.assert_array_equal(read_volume(tmp_path / "v.nii.gz").array, vol.array + 5)
    code, out, _ = run("info", study, "--json")
    assert [s["acquisition_time"] for s in json.loads(out)["series"]] == ["11:43:36", "11:52:25"]
    code, out, _ = run("convert", "--help")
    assert code == 0 and "'t2_tse_tra*@last'" in out


# -------------------------------------------------------------------- bad input
def _bad_case(tmp_path: Path, case: str) -> tuple[list[str | Path], str]:
    """Set up one kind of bad input; return the CLI arguments and the expected message."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    vol = make_oblique_volume(shape=(4, 40, 30))
    if case == "missing":
        return ["convert", inputs / "nope.nii.gz", out / "v.nrrd"], "nope.nii.gz: does not exist"
    if case == "truncated-nifti":
        path = write_volume(vol, inputs / "v.nii")
        path.write_bytes(path.read_bytes()[:-200])  # less than the 352-byte header offset
        return ["convert", path, out / "v.nrrd"], "v.nii: is truncated"
    if case == "truncated-dicom":
        files = write_dicom_series(vol.astype(np.int16), inputs / "dcm")
        files[1].write_bytes(files[1].read_bytes()[:-300])
        return ["convert", inputs / "dcm", out / "v.nrrd"], f"{files[1].name}: is cut short"
    if case == "not-medical":
        (inputs / "notes.txt").write_text("hello")
        return [
            "convert",
            inputs / "notes.txt",
            out / "v.nrrd",
        ], "notes.txt: is not a recognised medical image"
    if case == "fake-nifti":
        (inputs / "fake.nii.gz").write_text("hello")
        return ["info", inputs / "fake.nii.gz"], "fake.nii.gz: cannot be read as a medical image"
    if case == "ambiguous-dicom":
        two_series(inputs / "study")
        return ["convert", inputs / "study", out / "v.nrrd"], "holds 2 DICOM series; pick one"
    if case == "output-exists":
        write_volume(vol, inputs / "v.nii.gz")
        write_volume(vol, out / "v.nrrd")
        return ["convert", inputs / "v.nii.gz", out / "v.nrrd"], "v.nrrd: output exists; use --overwrite"
    if case == "output-exists-dicom":
        write_volume(vol, inputs / "v.nii.gz")
        write_dicom_series(vol, out / "dcm")
        return ["convert", inputs / "v.nii.gz", out / "dcm", "--to", "dicom"], "dcm: output exists"
    if case == "no-format":
        write_volume(vol, inputs / "v.nii.gz")
        return ["convert", inputs / "v.nii.gz", out / "result"], "cannot tell the output format"
    if case == "same-file":
        write_volume(vol, inputs / "v.nii.gz")
        return ["convert", inputs / "v.nii.gz", inputs / "v.nii.gz", "--overwrite"], "would replace the input"
    if case == "output-holds-input":  # --overwrite would swap out the folder that holds the input
        write_dicom_series(vol.astype(np.int16), inputs / "dcm")
        return ["convert", inputs / "dcm", inputs, "--to", "dicom", "--overwrite"], "would replace the input"
    if case == "output-inside-input":
        write_dicom_series(vol.astype(np.int16), inputs / "dcm")
        return [
            "convert",
            inputs / "dcm",
            inputs / "dcm" / "copy",
            "--to",
            "dicom",
        ], "inside the input folder"
    if case == "file-over-folder":
        write_volume(vol, inputs / "v.nii.gz")
        (out / "x.nrrd").mkdir()
        (out / "x.nrrd" / "keep.txt").write_text("kept")
        return ["convert", inputs / "v.nii.gz", out / "x.nrrd", "--overwrite"], "x.nrrd: is a folder"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "truncated-nifti",
        "truncated-dicom",
        "not-medical",
        "fake-nifti",
        "ambiguous-dicom",
        "output-exists",
        "output-exists-dicom",
        "no-format",
        "same-file",
        "output-holds-input",
        "output-inside-input",
        "file-over-folder",
    ],
)
def test_bad_input_gives_one_line_and_changes_nothing(tmp_path: Path, case: str) -> None:
    args, message = _bad_case(tmp_path, case)
    before_in = snapshot(tmp_path / "in")
    before_out = snapshot(tmp_path / "out")
    os.utime(tmp_path / "in")  # folder listing below must not change either
    names_before = sorted(p.name for p in (tmp_path / "out").iterdir())
    code, out, err = run(*args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in out + err
    assert snapshot(tmp_path / "in") == before_in  # inputs untouched
    assert snapshot(tmp_path / "out") == before_out  # no partial output, nothing replaced
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names_before  # no temp files


def test_error_messages_show_bracketed_paths_literally(tmp_path: Path) -> None:
    """Rich markup must not eat '[raw]' from a path, nor crash on a '[/...]' in a message."""
    missing = tmp_path / "[raw]" / "scan.nii.gz"
    code, _, err = run("info", missing)
    assert code == 2
    assert f"{missing}: does not exist" in " ".join(err.split())


def test_info_on_a_series_of_several_volumes_says_how_to_see_one(tmp_path: Path) -> None:
    """Several volumes at the same positions (b-values, echoes) is what info is asked to show:
    the table and a note, exit 0; --volume shows one."""
    from tests.conftest import write_stacked_series

    vol = make_oblique_volume(dtype=np.int16)
    write_stacked_series(tmp_path / "s", vol, vol.with_array(vol.array * 2))
    code, out, err = run("info", tmp_path / "s")
    assert code == 0, err
    assert "holds 2 volumes at the same slice positions; see one with --volume i" in " ".join(out.split())
    code, out, err = run("info", tmp_path / "s", "--json")
    assert code == 0 and "error" not in json.loads(out) and "volume" not in json.loads(out)
    code, out, err = run("info", tmp_path / "s", "--volume", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["volume"]["max"] == float(vol.array.max() * 2)
