from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medseg.errors import ConfigError, InputError, OutputExistsError
from medseg.io import read_volume, write_volume
from medseg.io.dicom import (
    PSEUDONYM_AUTO,
    DicomSeries,
    check_deidentify_options,
    deidentified_uid,
    deidentify_dataset,
    list_series,
    load_file,
    load_files,
    load_series,
    patient_pseudonym,
    read_dicom_file,
    read_dicom_series,
    read_pseudonym_map,
    write_dicom_series,
)
from medseg.io.itk import from_sitk
from medseg.volume import Volume, VolumeGeometry
from tests.conftest import make_oblique_volume

# Geometry survives DICOM's decimal strings (up to 16 characters) almost exactly.
EXACT = {"spacing_atol": 1e-6, "origin_atol": 1e-6, "direction_atol": 1e-7}


def require_exact(a: Volume | VolumeGeometry, b: Volume | VolumeGeometry) -> None:
    ga = a.geometry if isinstance(a, Volume) else a
    gb = b.geometry if isinstance(b, Volume) else b
    ga.require_same(gb, "geometries", **EXACT)


PROSTATEX_T2 = [
    "ProstateX-0000/07-07-2011/3.000000-t2tsesag-87368",
    "ProstateX-0000/07-07-2011/4.000000-t2tsetra-00702",
    "ProstateX-0000/07-07-2011/5.000000-t2tsecor-03471",
    "ProstateX-0001/07-08-2011/4.000000-t2tsesag-22089",
    "ProstateX-0001/07-08-2011/5.000000-t2tsecor-26539",
    "ProstateX-0001/07-08-2011/6.000000-t2tsetra-76610",
    "ProstateX-0001/07-08-2011/10.000000-t2tsetra-17541",
    "ProstateX-0218/02-18-2011/4.000000-t2tsesag320p2-41180",
    "ProstateX-0218/02-18-2011/5.000000-t2tsetra320p2-09906",
    "ProstateX-0218/02-18-2011/6.000000-t2tsecor320p2-02127",
]


def sitk_read(folder: Path) -> Volume:
    """Independent reference: SimpleITK's GDCM series sorting and reader."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return from_sitk(reader.Execute())


def edit_files(files: list[Path], change: Callable[[int, Dataset], None]) -> None:
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(k, ds)
        ds.save_as(f, enforce_file_format=True)


def same_series_as(file: Path) -> Callable[[int, Dataset], None]:
    """An ``edit_files`` change moving slices into the series (and study) of ``file``."""
    head = pydicom.dcmread(file, stop_before_pixels=True)

    def change(_k: int, ds: Dataset) -> None:
        ds.SeriesInstanceUID = head.SeriesInstanceUID
        ds.StudyInstanceUID = head.StudyInstanceUID
        ds.FrameOfReferenceUID = head.FrameOfReferenceUID

    return change


def fake_reference() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-7731"
    ds.PatientBirthDate = "19610203"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.StudyInstanceUID = "1.2.3.4.5.6.7"
    ds.FrameOfReferenceUID = "1.2.3.4.5.6.8"
    ds.StudyDate = "20200101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC99812"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyID = "ST-55"
    ds.InstitutionName = "Princeton Plainsboro"
    ds.Modality = "MR"
    ds.SeriesNumber = 7
    return ds


def write_reference(folder: Path, volume: Volume) -> DicomSeries:
    """A series carrying the fake patient (written, then read back as a reference)."""
    files = write_dicom_series(volume, folder, modality="MR")

    def set_patient(_k: int, ds: Dataset) -> None:
        for elem in fake_reference():
            ds[elem.tag] = elem
        ds.add_new((0x0029, 0x0010), "LO", "SECRET CREATOR")
        ds.add_new((0x0029, 0x1010), "LO", "PRIVATE-PID-7731")

    edit_files(files, set_patient)
    return load_series(folder)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8])
def test_integer_volume_round_trips_exactly(tmp_path: Path, dtype: type) -> None:
    vol = make_oblique_volume(dtype=dtype)
    if dtype == np.int16:
        vol = vol.with_array(vol.array - 200)  # negative values
    files = write_dicom_series(vol, tmp_path / "s")
    assert len(files) == vol.shape[0] and all(f.is_file() for f in files)
    back = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.dtype == (np.uint16 if dtype == np.uint8 else dtype)  # DICOM images are 16 bit
    require_exact(vol, back)
    # SimpleITK reads the same thing from our files
    ref = sitk_read(tmp_path / "s")
    np.testing.assert_array_equal(ref.array, back.array)
    ref.geometry.require_same(back.geometry)


def test_float_volume_round_trips_within_quantisation(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.float32)
    write_dicom_series(vol, tmp_path / "s")
    back = read_dicom_series(tmp_path / "s")
    assert back.dtype == np.float32
    ds = pydicom.dcmread(next((tmp_path / "s").iterdir()))
    slope = float(ds.RescaleSlope)
    assert slope < 0.01  # 16-bit quantisation of a ~200-wide range
    assert np.max(np.abs(back.array - vol.array)) <= slope / 2 + 1e-4
    require_exact(vol, back)


def test_large_integer_range_uses_intercept_exactly(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.float32)
    scaled = (vol.array - vol.array.min()) / np.ptp(vol.array)
    arr = np.rint(scaled * 60000).astype(np.int32) - 40000  # -40000 .. 20000: neither int16 nor uint16
    vol = vol.with_array(arr)
    write_dicom_series(vol, tmp_path / "s", modality="CT")
    back = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(back.array, arr)
    assert back.dtype == np.int32  # like GDCM: uint16 stored + integer intercept


def test_slices_are_sorted_by_position_not_file_name_or_instance_number(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")
    order = [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]
    # scramble both the names and the InstanceNumbers
    edit_files(files, lambda k, ds: setattr(ds, "InstanceNumber", order[k] + 1))
    for k, f in enumerate(files):
        f.rename(f.with_name(f"x{order[k]:02d}.dcm"))
    loaded = load_series(tmp_path / "s")
    np.testing.assert_array_equal(loaded.volume.array, vol.array)
    for k, ds in enumerate(loaded.datasets):  # datasets[k] is slice k
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], vol.index_to_world((k, 0, 0)), atol=1e-6
        )
    assert [Path(f).name for f in loaded.files] == [f"x{order[k]:02d}.dcm" for k in range(len(files))]


def test_left_handed_volume_reads_back_reversed_in_the_same_place(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    direction = vol.direction.copy()
    direction[:, 0] *= -1  # slice axis opposite to row x column
    flipped = Volume(vol.array, vol.spacing, vol.origin, direction)
    write_dicom_series(flipped, tmp_path / "s")
    back = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(back.array, flipped.array[::-1])
    np.testing.assert_allclose(back.index_to_world((0, 0, 0)), flipped.index_to_world((11, 0, 0)), atol=1e-6)


def test_meta_has_uids_and_no_patient_data(tmp_path: Path) -> None:
    ref = write_reference(tmp_path / "ref", make_oblique_volume(dtype=np.int16))
    meta = ref.volume.meta
    assert meta["modality"] == "MR"
    assert meta["study_uid"] == "1.2.3.4.5.6.7"
    assert meta["frame_of_reference_uid"] == "1.2.3.4.5.6.8"
    assert meta["series_uid"] == str(ref.datasets[0].SeriesInstanceUID)
    text = repr(meta) + repr(ref.info) + repr(ref.volume)
    for secret in ("Doe", "PID-7731", "19610203"):
        assert secret not in text


def test_reference_keeps_patient_study_and_frame_of_reference(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    ref = write_reference(tmp_path / "ref", vol)
    write_dicom_series(vol.with_array(vol.array * 2), tmp_path / "out", reference=ref, modality="CT")
    out = load_series(tmp_path / "out")
    ds = out.datasets[0]
    assert ds.StudyInstanceUID == "1.2.3.4.5.6.7"
    assert ds.FrameOfReferenceUID == "1.2.3.4.5.6.8"
    assert ds.SeriesInstanceUID != ref.datasets[0].SeriesInstanceUID
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "PID-7731"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert len({d.SOPInstanceUID for d in out.datasets}) == vol.shape[0]
    # the reference given as a folder works the same
    write_dicom_series(vol, tmp_path / "out2", reference=tmp_path / "ref")
    assert load_series(tmp_path / "out2").datasets[0].StudyInstanceUID == "1.2.3.4.5.6.7"


def test_deidentified_output_holds_no_identifiers(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    ref = write_reference(tmp_path / "ref", vol)
    files = write_dicom_series(vol, tmp_path / "a", reference=ref, deidentify=True)
    files_b = write_dicom_series(vol, tmp_path / "b", reference=ref, deidentify=True)
    for f in files:
        data = f.read_bytes()
        for secret in (
            b"Doe",
            b"PID-7731",
            b"19610203",
            b"ACC99812",
            b"House",
            b"Plainsboro",
            b"SECRET",
            b"20200101",
        ):
            assert secret not in data
    a = pydicom.dcmread(files[0])
    b = pydicom.dcmread(files_b[0])
    assert ref.datasets[0].StudyInstanceUID == "1.2.3.4.5.6.7"  # the reference is not changed
    assert a.PatientIdentityRemoved == "YES"
    assert a.PatientSex == "F" and a.PatientAge == "063Y"  # patient characteristics kept
    # UIDs replaced, consistently: two de-identified series still share study and frame
    assert a.StudyInstanceUID != "1.2.3.4.5.6.7"
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID != "1.2.3.4.5.6.8"
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "a").array, vol.array)


def test_deidentify_dataset_clears_nested_names_dates_and_private_tags() -> None:
    ds = fake_reference()
    item = Dataset()
    item.PerformingPhysicianName = "Cuddy^Lisa"
    item.InstitutionName = "Nested Hospital"
    item.PerformedProcedureStepStartDate = "20200101"
    ds.PerformedProtocolCodeSequence = [item]
    ds.add_new((0x0029, 0x1010), "LO", "PRIVATE")
    ds.add_new((0x6000, 0x3000), "OW", b"\x00\x01")  # overlay data
    out = deidentify_dataset(ds, pseudonym="case-1")
    assert out is ds
    assert str(ds.PatientName) == "case-1" and ds.PatientID == "case-1"
    assert ds.PatientBirthDate == "" and ds.StudyDate == "" and ds.AccessionNumber == ""
    assert ds.ReferringPhysicianName == ""
    assert "InstitutionName" not in ds
    nested = ds.PerformedProtocolCodeSequence[0]
    assert nested.PerformingPhysicianName == "" and nested.PerformedProcedureStepStartDate == ""
    assert "InstitutionName" not in nested
    assert (0x0029, 0x1010) not in ds and (0x6000, 0x3000) not in ds
    assert ds.PatientSex == "F"


def test_deidentify_dataset_removes_clinical_trial_and_patient_study_text() -> None:
    """highdicom copies the Clinical Trial Subject/Study and Patient Study modules of the source
    into a SEG: their subject and site IDs, diagnoses, alerts and issuers named the patient; a
    source's own de-identification codes claimed options this profile does not apply."""
    ds = fake_reference()
    ds.ClinicalTrialSubjectID = "CT-SUBJ-42"
    ds.ClinicalTrialSponsorName = "Sponsor Inc"
    ds.ClinicalTrialSiteName = "Site Plainsboro"
    ds.ClinicalTrialSubjectReadingID = "READ-9"
    ds.ClinicalTrialTimePointDescription = "visit of Jane"
    ds.AdmittingDiagnosesDescription = "Jane's prostate"
    ds.MedicalAlerts = "alert"
    ds.Allergies = "peanuts"
    ds.ResponsibleOrganization = "Plainsboro"
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "PLAINSBORO-RIS"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.IssuerOfPatientIDQualifiersSequence = [issuer]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "113105",
        "DCM",
        "Clean Descriptors Option",
    )
    ds.DeidentificationMethodCodeSequence = [code]
    deidentify_dataset(ds, pseudonym="case-1")
    left = [e.keyword for e in ds if e.tag.group == 0x0012]
    assert left == ["PatientIdentityRemoved", "DeidentificationMethod"]
    for kw in ("AdmittingDiagnosesDescription", "MedicalAlerts", "Allergies", "ResponsibleOrganization"):
        assert kw not in ds, kw
    assert "IssuerOfAccessionNumberSequence" not in ds and "IssuerOfPatientIDQualifiersSequence" not in ds
    assert ds.PatientAge == "063Y"  # a patient characteristic, kept


def test_deidentify_dataset_maps_an_item_shared_by_two_sequences_once() -> None:
    """highdicom puts one source-image item in both the Referenced Series Sequence and the
    per-frame Source Image Sequence: visited twice, its UID was mapped twice and named no image
    of the de-identified series."""
    ds = fake_reference()
    ds.SOPInstanceUID = "1.2.3.4.5.6.9"
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.9"
    ds.file_meta = meta
    shared = Dataset()
    shared.ReferencedSOPClassUID = pydicom.uid.MRImageStorage
    shared.ReferencedSOPInstanceUID = "1.2.3.4.5.6.10"
    first, second = Dataset(), Dataset()
    first.ReferencedInstanceSequence = [shared]
    second.SourceImageSequence = [shared]
    ds.ReferencedSeriesSequence = [first]
    ds.PerFrameFunctionalGroupsSequence = [second]
    deidentify_dataset(ds, uid_secret="k")
    assert shared.ReferencedSOPInstanceUID == deidentified_uid("1.2.3.4.5.6.10", "k")
    assert (
        ds.StudyInstanceUID
        == deidentified_uid("1.2.3.4.5.6.7", "k")
        != deidentified_uid("1.2.3.4.5.6.7", "j")
    )
    assert (
        ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == deidentified_uid("1.2.3.4.5.6.9", "k")
    )
    assert shared.ReferencedSOPClassUID == pydicom.uid.MRImageStorage  # a class, not an instance


def test_a_deidentified_copy_of_its_source_derives_series_and_image_uids(tmp_path: Path) -> None:
    """DICOM to DICOM with --deidentify on the source's own grid: the copy's series and image UIDs
    are the source's, mapped with the secret (as in a de-identified SEG that references them);
    a resampled volume, another reference or no de-identification gets new ones."""
    vol = make_oblique_volume(dtype=np.int16)
    source = write_reference(tmp_path / "ref", vol)
    write_dicom_series(vol, tmp_path / "a", reference=source, source=source, deidentify=True, uid_secret="k")
    copy = load_series(tmp_path / "a")
    assert copy.info.series_uid == deidentified_uid(source.info.series_uid, "k")
    assert [d.SOPInstanceUID for d in copy.datasets] == [
        deidentified_uid(d.SOPInstanceUID, "k") for d in source.datasets
    ]
    np.testing.assert_array_equal(copy.volume.array, vol.array)
    # the source named again as reference (`convert IN OUT --reference IN`) is the same series
    write_dicom_series(
        vol, tmp_path / "again", reference=tmp_path / "ref", source=source, deidentify=True, uid_secret="k"
    )
    again = load_series(tmp_path / "again")
    assert [d.SOPInstanceUID for d in again.datasets] == [d.SOPInstanceUID for d in copy.datasets]
    other = write_reference(tmp_path / "other", vol)
    for folder, kwargs in (
        ("b", {"reference": other, "deidentify": True, "uid_secret": "k"}),
        ("c", {"reference": source}),
    ):
        write_dicom_series(vol, tmp_path / folder, source=source, **kwargs)  # type: ignore[arg-type]
        uids = {d.SOPInstanceUID for d in load_series(tmp_path / folder).datasets}
        assert not uids & {deidentified_uid(d.SOPInstanceUID, "k") for d in source.datasets}
    cropped = Volume(vol.array[1:], vol.spacing, vol.index_to_world((1, 0, 0)), vol.direction)
    write_dicom_series(
        cropped, tmp_path / "d", reference=source, source=source, deidentify=True, uid_secret="k"
    )
    assert load_series(tmp_path / "d").info.series_uid != copy.info.series_uid


def test_deidentify_options_are_checked() -> None:
    check_deidentify_options(True, "SUBJ001", "k")
    check_deidentify_options(False)
    for args, message in (
        ((False, "SUBJ001"), "--pseudonym only apply with --deidentify"),
        ((False, "ANONYMOUS", "k"), "--uid-secret only apply"),
        ((True, "x" * 65), "1 to 64 characters"),
        ((True, "A\\B"), "without a backslash"),
        ((True, "SUBJ", ""), "must not be empty"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_deidentify_options(*args)  # type: ignore[arg-type]


def test_pseudonym_auto_is_keyed_by_the_secret_and_one_per_patient() -> None:
    """--pseudonym auto: ANON- and 10 hex digits of an HMAC of the PatientID keyed by the UID
    secret: the same for the same patient and key, different for another patient or key, and
    neither the ID nor a plain hash of it (IDs are guessable)."""
    import hashlib

    one = patient_pseudonym("PID-7731", PSEUDONYM_AUTO, "k")
    assert re.fullmatch(r"ANON-[0-9A-F]{10}", one)
    assert one == patient_pseudonym(" PID-7731 ", PSEUDONYM_AUTO, "k")  # DICOM pads LO with spaces
    assert one != patient_pseudonym("PID-7732", PSEUDONYM_AUTO, "k")
    assert one != patient_pseudonym("PID-7731", PSEUDONYM_AUTO, "k2")
    assert one[5:].lower() not in hashlib.sha256(b"PID-7731").hexdigest()
    # no secret: this process's own, so not that of any key
    assert patient_pseudonym("PID-7731", PSEUDONYM_AUTO) != one
    assert patient_pseudonym("PID-7731", "SUBJ001", "k") == "SUBJ001"
    with pytest.raises(ConfigError, match=r"has none .* give --pseudonym NAME"):
        patient_pseudonym("  ", PSEUDONYM_AUTO, "k")
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.OtherPatientIDs = "DOE^JANE", "PID-7731", "PID-0001"
    deidentify_dataset(ds, pseudonym=PSEUDONYM_AUTO, uid_secret="k")
    assert ds.PatientID == one and ds.PatientName == one and "OtherPatientIDs" not in ds
    check_deidentify_options(True, PSEUDONYM_AUTO, "k")
    with pytest.raises(ConfigError, match="only apply with --deidentify"):
        check_deidentify_options(False, PSEUDONYM_AUTO)


def test_pseudonym_map_is_read_checked_and_looked_up(tmp_path: Path) -> None:
    """--pseudonym-map FILE: PatientID,pseudonym rows; errors name the file and the row but
    never an ID; a map that gives two patients one pseudonym is refused."""
    table = tmp_path / "map.csv"
    table.write_text("PatientID,pseudonym\nPID-7731,SUBJ001\n PID-7732 , SUBJ002 \n\n")
    names = read_pseudonym_map(table)
    assert names == {"PID-7731": "SUBJ001", "PID-7732": "SUBJ002"}
    assert patient_pseudonym("PID-7732 ", names, "k") == "SUBJ002"
    with pytest.raises(ConfigError, match="not in --pseudonym-map") as info:
        patient_pseudonym("PID-9999", names)
    assert "PID-9999" not in str(info.value)
    check_deidentify_options(True, names, "k")
    for bad, message in (
        ("id,name\nPID-1,S1\n", "expected the header PatientID,pseudonym"),
        ("", "found an empty file"),
        ("PatientID,pseudonym\nPID-1\n", "row 2 is not a pair"),
        ("PatientID,pseudonym\nPID-1,S1\nPID-1,S2\n", "row 3 repeats a PatientID"),
    ):
        table.write_text(bad)
        with pytest.raises(InputError, match=message) as err:
            read_pseudonym_map(table)
        assert str(table) in str(err.value) and "PID-1" not in str(err.value)
    for mapping, message in (
        ({"PID-1": "S1", "PID-2": "S1"}, "one pseudonym to several patients"),
        ({}, "holds no patient"),
        ({"PID-1": "A\\B"}, "without a backslash"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_deidentify_options(True, mapping)
    with pytest.raises(ConfigError, match="only apply with --deidentify"):
        check_deidentify_options(False, names)
    ds = Dataset()
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID-7731"
    deidentify_dataset(ds, pseudonym=names)
    assert ds.PatientID == ds.PatientName == "SUBJ001"


def test_pseudonym_auto_without_a_secret_differs_per_run() -> None:
    """Without --uid-secret a run's pseudonyms come from its own secret, as its UIDs do: two
    processes give the same patient two pseudonyms."""
    import subprocess
    import sys

    code = "from medseg.io.dicom import patient_pseudonym; print(patient_pseudonym('PID-7731'))"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(runs) == 2 and all(r.startswith("ANON-") for r in runs)


def test_existing_output_folder_is_kept_without_overwrite(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    write_dicom_series(vol, tmp_path / "s")
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    with pytest.raises(OutputExistsError):
        write_dicom_series(vol, tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    write_dicom_series(vol.with_array(vol.array + 1), tmp_path / "s", overwrite=True)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, vol.array + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp folders left


def test_write_refuses_bad_values_and_modality(tmp_path: Path) -> None:
    vol = make_oblique_volume()
    bad = vol.array.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_dicom_series(vol.with_array(bad), tmp_path / "s")
    with pytest.raises(ConfigError, match="MR or CT"):
        write_dicom_series(vol, tmp_path / "s", modality="US")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------- MR acquisition attributes
def _mr_series_with_acquisition(folder: Path, **attributes: object) -> DicomSeries:
    """A written MR series whose slices then all get ``attributes``."""
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), folder)
    for f in files:
        ds = pydicom.dcmread(f)
        for kw, value in attributes.items():
            setattr(ds, kw, value)
        ds.save_as(f)
    return load_series(folder)


def test_written_mr_without_source_leaves_the_acquisition_unknown(tmp_path: Path) -> None:
    """From NIfTI nothing is known of the acquisition: empty type 2 attributes, not '3D'."""
    write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "s")
    for f in sorted((tmp_path / "s").iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.MRAcquisitionType == "" and ds.EchoTime is None and ds.RepetitionTime is None
        assert "FlipAngle" not in ds and "MagneticFieldStrength" not in ds
        assert ds.ScanningSequence == "RM"
        assert float(ds.SliceThickness) == pytest.approx(3.0)  # the slice spacing


def test_written_mr_keeps_the_source_acquisition(tmp_path: Path) -> None:
    source = _mr_series_with_acquisition(
        tmp_path / "src",
        MRAcquisitionType="2D",
        EchoTime="101",
        RepetitionTime="4000",
        FlipAngle="150",
        MagneticFieldStrength="3",
        ScanningSequence="SE",
        SequenceVariant=["SK", "SP"],
        SliceThickness="2.5",  # thinner than the 3 mm spacing: a gap between slices
    )
    write_dicom_series(source.volume, tmp_path / "out", source=source)
    back = load_series(tmp_path / "out")
    np.testing.assert_array_equal(back.volume.array, source.volume.array)
    require_exact(back.volume, source.volume)
    ds = back.datasets[0]
    assert ds.MRAcquisitionType == "2D"
    assert (float(ds.EchoTime), float(ds.RepetitionTime), float(ds.FlipAngle)) == (101, 4000, 150)
    assert float(ds.MagneticFieldStrength) == 3
    assert ds.ScanningSequence == "SE" and list(ds.SequenceVariant) == ["SK", "SP"]
    assert float(ds.SliceThickness) == 2.5
    # resampled to another spacing, the acquired thickness no longer describes the slices
    coarse = Volume(
        source.volume.array[::2],
        geometry=VolumeGeometry(
            (6, 20, 16), (6.0, *source.volume.spacing[1:]), source.volume.origin, source.volume.direction
        ),
    )
    write_dicom_series(coarse, tmp_path / "coarse", source=source)
    ds = pydicom.dcmread(sorted((tmp_path / "coarse").iterdir())[0], stop_before_pixels=True)
    assert float(ds.SliceThickness) == 6.0 and ds.MRAcquisitionType == "2D"
    # written as CT, no MR attribute is carried over
    write_dicom_series(source.volume, tmp_path / "ct", source=source, modality="CT")
    ds = pydicom.dcmread(sorted((tmp_path / "ct").iterdir())[0], stop_before_pixels=True)
    assert "EchoTime" not in ds and "MRAcquisitionType" not in ds


def test_source_values_that_differ_between_slices_are_left_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "src")
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.EchoTime = "90" if k < 6 else "95"
        ds.RepetitionTime = "3000"
        ds.save_as(f)
    source = load_series(tmp_path / "src")
    write_dicom_series(source.volume, tmp_path / "out", source=source)
    ds = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0], stop_before_pixels=True)
    assert ds.EchoTime is None and float(ds.RepetitionTime) == 3000
    assert "EchoTime differs between the source slices" in caplog.text


def test_source_acquisition_from_enhanced_functional_groups(tmp_path: Path) -> None:
    """An enhanced MR header keeps TE/TR/flip angle in functional groups (FD values)."""
    write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "s")
    single = load_series(tmp_path / "s")
    n = single.volume.shape[0]
    enhanced = Dataset()
    enhanced.MRAcquisitionType = "3D"
    timing = Dataset()
    timing.RepetitionTime = 7.5
    timing.FlipAngle = 12.0
    shared = Dataset()
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    pixel = Dataset()
    pixel.SliceThickness = 1.25
    shared.PixelMeasuresSequence = Sequence([pixel])
    enhanced.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for _ in range(n):
        echo, item = Dataset(), Dataset()
        echo.EffectiveEchoTime = 3.25
        item.MREchoSequence = Sequence([echo])
        per_frame.append(item)
    enhanced.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    source = dataclasses.replace(single, datasets=[enhanced] * n, frames=list(range(n)))
    write_dicom_series(source.volume, tmp_path / "out", source=source)
    ds = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0], stop_before_pixels=True)
    assert ds.MRAcquisitionType == "3D"
    assert (float(ds.EchoTime), float(ds.RepetitionTime), float(ds.FlipAngle)) == (3.25, 7.5, 12.0)
    assert float(ds.SliceThickness) == 1.25


# ------------------------------------------------------------- rescale / dtypes
def test_rescale_types_follow_gdcm(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.uint16)
    files = write_dicom_series(vol, tmp_path / "s", modality="CT")

    def rescale(slope: str, intercept: str, bits_stored: int) -> Callable[[int, Dataset], None]:
        def change(_k: int, ds: Dataset) -> None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1

        return change

    cases = [("1", "-1024", 12, np.int16), ("1", "-1024", 16, np.int32), ("0.5", "-10.25", 12, np.float32)]
    for slope, intercept, bits, expected in cases:
        edit_files(files, rescale(slope, intercept, bits))
        back = read_dicom_series(tmp_path / "s")
        assert back.dtype == expected, (slope, intercept, bits)
        np.testing.assert_allclose(back.array, vol.array * float(slope) + float(intercept))
        ref = sitk_read(tmp_path / "s")
        np.testing.assert_allclose(ref.array, back.array, rtol=1e-7)
        if expected != np.float32:
            assert ref.dtype == back.dtype


def test_bits_above_bits_stored_are_cleared(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.uint16)
    files = write_dicom_series(vol, tmp_path / "s")

    def dirty(_k: int, ds: Dataset) -> None:
        arr = np.frombuffer(ds.PixelData, dtype="<u2") | np.uint16(0xF000)  # garbage in the top 4 bits
        ds.PixelData = arr.tobytes()
        ds.BitsStored, ds.HighBit = 12, 11

    edit_files(files, dirty)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, vol.array)


# ----------------------------------------------------------------- validation
def test_missing_slice_is_reported(tmp_path: Path) -> None:
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "s")
    files[5].unlink()
    with pytest.raises(InputError, match=r"missing slices: about 1 slice"):
        read_dicom_series(tmp_path / "s")


def test_non_uniform_spacing_is_reported(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")

    def move(k: int, ds: Dataset) -> None:
        if k == 4:
            ds.ImagePositionPatient = [f"{v:.6f}" for v in vol.index_to_world((4.4, 0, 0))]

    edit_files(files, move)
    with pytest.raises(InputError, match="non-uniform slice spacing"):
        read_dicom_series(tmp_path / "s")


def test_gantry_tilt_is_reported(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")

    def shear(k: int, ds: Dataset) -> None:  # each slice shifted along the rows: a tilted gantry
        ds.ImagePositionPatient = [f"{v:.6f}" for v in vol.index_to_world((k, 0.5 * k, 0))]

    edit_files(files, shear)
    with pytest.raises(InputError, match="gantry tilt"):
        read_dicom_series(tmp_path / "s")


def test_mixed_orientations_are_reported(tmp_path: Path) -> None:
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "s")

    def turn(k: int, ds: Dataset) -> None:
        if k < 3:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    edit_files(files, turn)
    with pytest.raises(InputError, match=r"mixes slice orientations.*2 orientations"):
        read_dicom_series(tmp_path / "s")


def test_mixed_sizes_are_reported(tmp_path: Path) -> None:
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "s")
    other = write_dicom_series(make_oblique_volume(shape=(2, 10, 16), dtype=np.int16), tmp_path / "t")
    edit_files(other, same_series_as(files[0]))
    for f in other:
        shutil.move(f, tmp_path / "s" / f"other_{f.name}")
    with pytest.raises(InputError, match=r"different sizes.*12 slices of 20x16, 2 slices of 10x16"):
        read_dicom_series(tmp_path / "s")


def _two_echoes(tmp_path: Path, *, distinguish: bool) -> Volume:
    vol = make_oblique_volume(dtype=np.int16)
    first = write_dicom_series(vol, tmp_path / "a")
    second = write_dicom_series(vol.with_array(vol.array * 2), tmp_path / "b")
    join = same_series_as(first[0])

    def label(echo: float) -> Callable[[int, Dataset], None]:
        def change(k: int, ds: Dataset) -> None:
            join(k, ds)
            ds.ContentTime = "120000"
            if distinguish:
                ds.EchoTime = echo

        return change

    edit_files(first, label(10.0))
    edit_files(second, label(20.0))
    (tmp_path / "s").mkdir()
    for f in [*first, *second]:
        shutil.move(f, tmp_path / "s" / f"{f.parent.name}_{f.name}")
    return vol


def test_stacked_volumes_need_a_choice(tmp_path: Path) -> None:
    vol = _two_echoes(tmp_path, distinguish=True)
    with pytest.raises(InputError, match=r"2 volumes .* echo time.*\[0\] echo time 10 \(12 slices\)"):
        read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s", volume=1).array, vol.array * 2)
    assert read_dicom_series(tmp_path / "s", volume=0).meta["volume"] == "echo time 10"
    with pytest.raises(InputError, match="no volume 2"):
        read_dicom_series(tmp_path / "s", volume=2)
    assert list_series(tmp_path / "s")[0].n_volumes == 2


def test_stacked_volumes_without_a_telling_attribute(tmp_path: Path) -> None:
    _two_echoes(tmp_path, distinguish=False)
    with pytest.raises(InputError, match="no attribute tells the volumes apart"):
        read_dicom_series(tmp_path / "s")


def test_series_selection(tmp_path: Path) -> None:
    a = make_oblique_volume(dtype=np.int16)
    write_dicom_series(a, tmp_path / "study" / "x", series_description="T2 axial", series_number=3)
    write_dicom_series(
        a.with_array(a.array + 5), tmp_path / "study" / "y", series_description="ADC", series_number=4
    )
    series = list_series(tmp_path / "study")
    assert [s.description for s in series] == ["T2 axial", "ADC"]
    assert series[0].n_files == 12 and series[0].rows == 20 and series[0].cols == 16
    with pytest.raises(InputError, match=r"holds 2 DICOM series.*\[0\] .* 'T2 axial' MR 12 slices; \[1\]"):
        read_dicom_series(tmp_path / "study")
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "study", "adc").array, a.array + 5)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "study", 1).array, a.array + 5)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "study", "0").array, a.array)
    np.testing.assert_array_equal(
        read_dicom_series(tmp_path / "study", series[1].series_uid).array, a.array + 5
    )
    with pytest.raises(InputError, match="no series with index 2"):
        read_dicom_series(tmp_path / "study", 2)
    with pytest.raises(InputError, match="no series with UID or description 'DWI'"):
        read_dicom_series(tmp_path / "study", "DWI")


def _repeated_study(folder: Path, times: dict[str, str | None] | None = None) -> Volume:
    """A study with t2_tse_tra acquired twice (#6, then #10 after the patient moved) and a sagittal."""
    a = make_oblique_volume(dtype=np.int16)
    times = times if times is not None else {"6": "114336.031", "10": "115225.328", "4": "113000"}
    for number, desc, offset in ((4, "t2_tse_sag", 0), (6, "t2_tse_tra", 1), (10, "T2_TSE_TRA", 2)):
        files = write_dicom_series(
            a.with_array(a.array + offset),
            folder / f"s{number}",
            series_description=desc,
            series_number=number,
        )
        time = times.get(str(number))

        def stamp(_k: int, ds: Dataset, time: str | None = time) -> None:
            ds.SeriesDate = "20110708"
            if time is None:
                del ds.SeriesTime
            else:
                ds.SeriesTime = time

        edit_files(files, stamp)
    return a


def test_series_description_wildcards_and_repeated_sequences(tmp_path: Path) -> None:
    a = _repeated_study(tmp_path / "study")
    study = tmp_path / "study"
    # several match: the error lists index, description, slices, SeriesNumber and time, and says how to pick
    with pytest.raises(
        InputError,
        match=r"has 2 series described 't2_tse_tra'; pick one by index or UID, or add @last .*"
        r"--series 't2_tse_tra@last'; found \[1\] 't2_tse_tra' 12 slices, SeriesNumber 6, acquired 11:43:36, "
        r"UID [0-9.]+; \[2\] 'T2_TSE_TRA' 12 slices, SeriesNumber 10, acquired 11:52:25",
    ):
        read_dicom_series(study, "t2_tse_tra")
    np.testing.assert_array_equal(read_dicom_series(study, "t2_tse_tra@last").array, a.array + 2)
    np.testing.assert_array_equal(read_dicom_series(study, "t2_tse_tra @ FIRST").array, a.array + 1)
    # shell wildcards, case-insensitive
    np.testing.assert_array_equal(read_dicom_series(study, "*SAG").array, a.array)
    np.testing.assert_array_equal(read_dicom_series(study, "t2_tse_t[r]a*@last").array, a.array + 2)
    with pytest.raises(InputError, match=r"has 3 series described 't2_\*'"):
        read_dicom_series(study, "t2_*")
    with pytest.raises(InputError, match=r"has no series matching 'dwi\*'; found \[0\]"):
        read_dicom_series(study, "dwi*@last")
    # a single match needs no rule, and a rule does no harm
    np.testing.assert_array_equal(read_dicom_series(study, "t2_tse_sag@last").array, a.array)
    # the existing choices still work: index, UID, exact description
    np.testing.assert_array_equal(read_dicom_series(study, 2).array, a.array + 2)
    uid = list_series(study)[1].series_uid
    np.testing.assert_array_equal(read_dicom_series(study, uid).array, a.array + 1)
    with pytest.raises(ConfigError, match="give a description before @last"):
        read_dicom_series(study, "@last")
    infos = list_series(study)
    assert [(s.series_number, s.acquisition_time) for s in infos] == [
        (4, "113000.000000"),
        (6, "114336.031000"),
        (10, "115225.328000"),
    ]
    assert infos[1].to_dict()["acquisition_time"] == "11:43:36"


def test_last_acquired_falls_back_to_series_number_and_refuses_a_tie(tmp_path: Path) -> None:
    # times contradict the numbers: the acquisition time decides
    a = _repeated_study(tmp_path / "t", {"6": "120000", "10": "110000", "4": "100000"})
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "t", "t2_tse_tra@last").array, a.array + 1)
    # a time missing on one: the SeriesNumber decides
    a = _repeated_study(tmp_path / "n", {"6": "120000", "10": None, "4": None})
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "n", "t2_tse_tra@last").array, a.array + 2)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "n", "t2_tse_tra@first").array, a.array + 1)
    # same time and same number: nothing tells them apart
    _repeated_study(tmp_path / "tie", {"6": "120000", "10": "120000", "4": None})
    edit_files(sorted((tmp_path / "tie" / "s10").iterdir()), lambda _k, ds: setattr(ds, "SeriesNumber", 6))
    with pytest.raises(InputError, match=r"cannot tell which of 2 series was acquired last: two share"):
        read_dicom_series(tmp_path / "tie", "t2_tse_tra@last")
    # neither a time nor a number on every one
    _repeated_study(tmp_path / "none", {"6": None, "10": None, "4": None})
    edit_files(sorted((tmp_path / "none" / "s10").iterdir()), lambda _k, ds: delattr(ds, "SeriesNumber"))
    with pytest.raises(InputError, match=r"cannot tell which of 2 series was acquired first; expected a"):
        read_dicom_series(tmp_path / "none", "t2_tse_tra@first")


@pytest.mark.parametrize("attribute", ["PatientID", "StudyInstanceUID"])
def test_a_series_uid_shared_by_two_patients_or_studies_is_refused(tmp_path: Path, attribute: str) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")
    first, second = ("PID-7731", "PID-9912") if attribute == "PatientID" else ("1.2.3.4", "1.2.3.5")

    def set_patient(k: int, ds: Dataset) -> None:
        ds.PatientName = "Doe^Jane" if k < 6 else "Roe^Richard"
        ds.PatientID = "PID-7731" if k < 6 or attribute != "PatientID" else "PID-9912"
        ds.PatientBirthDate = "19610203"
        if attribute == "StudyInstanceUID":
            ds.StudyInstanceUID = first if k < 6 else second

    edit_files(files, set_patient)
    before = {f: f.read_bytes() for f in files}
    what = "2 different patients \\(PatientID\\)" if attribute == "PatientID" else "2 different studies"
    for read in (lambda: read_dicom_series(tmp_path / "s"), lambda: load_files(files)):
        with pytest.raises(InputError, match=rf"/s: series [0-9.]+ holds slices of {what}") as err:
            read()
        text = str(err.value)
        for secret in ("PID-7731", "PID-9912", "Doe", "Roe", "19610203", first, second):
            assert secret not in text
    assert {f: f.read_bytes() for f in files} == before
    (info,) = list_series(tmp_path / "s")  # still listed (medseg info), with the counts only
    assert (info.n_patients, info.n_studies) == ((2, 1) if attribute == "PatientID" else (1, 2))
    assert "PID" not in json.dumps(info.to_dict())


def test_a_study_uid_per_file_of_one_patient_is_read_with_a_warning(tmp_path: Path) -> None:
    """Writing a series slice by slice without a study UID (SimpleITK's example) is no merge."""
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")
    edit_files(files, lambda k, ds: setattr(ds, "StudyInstanceUID", f"1.2.3.{k + 1}"))
    loaded = load_series(tmp_path / "s")
    np.testing.assert_array_equal(loaded.volume.array, vol.array)
    assert loaded.warnings == [
        "each of the 12 files has its own StudyInstanceUID (written slice by slice without a study UID?); "
        "read as one series"
    ]
    # ... but two groups of slices are two studies
    edit_files(files, lambda k, ds: setattr(ds, "StudyInstanceUID", f"1.2.3.{k % 2}"))
    with pytest.raises(InputError, match="holds slices of 2 different studies"):
        load_series(tmp_path / "s")


def test_rtutils_oriented_series_with_a_study_uid_per_slice(shared_data: Path) -> None:
    loaded = load_series(shared_data / "rtstruct" / "oriented_data")
    assert loaded.volume.shape == (3, 50, 100) and loaded.info.n_studies == 3
    assert "own StudyInstanceUID" in loaded.warnings[0]


def test_series_in_linked_folders_are_found_and_loops_end(tmp_path: Path) -> None:
    a = make_oblique_volume(dtype=np.int16)
    archive = tmp_path / "archive"
    write_dicom_series(a, archive / "p1" / "t2", series_description="T2")
    files = write_dicom_series(a.with_array(a.array + 3), archive / "p2" / "adc", series_description="ADC")
    study = tmp_path / "study"
    study.mkdir()
    (study / "t2").symlink_to(archive / "p1" / "t2", target_is_directory=True)
    (study / "adc").mkdir()
    for f in files:  # linked file by file
        (study / "adc" / f.name).symlink_to(f)
    (study / "t2_again").symlink_to(archive / "p1" / "t2", target_is_directory=True)  # read once
    (study / "loop").symlink_to(study, target_is_directory=True)
    infos = list_series(study)
    assert [(s.description, s.n_files, s.folder) for s in infos] == [
        ("ADC", 12, study / "adc"),
        ("T2", 12, study / "t2"),
    ]
    np.testing.assert_array_equal(read_dicom_series(study, "t2").array, a.array)
    loaded = load_series(study, "adc")
    np.testing.assert_array_equal(loaded.volume.array, a.array + 3)
    assert all(f.parent == study / "adc" for f in loaded.files)


def test_load_files_reads_exactly_the_given_files_of_one_series(tmp_path: Path) -> None:
    a = make_oblique_volume(dtype=np.int16)
    xs = write_dicom_series(a, tmp_path / "study" / "x", series_description="T2 axial")
    ys = write_dicom_series(a.with_array(a.array + 5), tmp_path / "study" / "y", series_description="ADC")
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    scrambled = [xs[k] for k in (7, 0, 11, 3, 5, 1, 10, 2, 9, 4, 8, 6)]
    loaded = load_files(scrambled)
    np.testing.assert_array_equal(loaded.volume.array, a.array)
    require_exact(loaded.volume, a)
    assert loaded.files == xs  # slice order, whatever order the files came in
    assert loaded.info.n_files == 12 and loaded.volume.meta["series_description"] == "T2 axial"
    with pytest.raises(InputError, match=r"x: the files belong to several series"):
        load_files([*xs, ys[0]], where=tmp_path / "x")
    with pytest.raises(InputError, match=r"notes\.txt: is not a DICOM file"):
        load_files([xs[0], tmp_path / "study" / "notes.txt"])
    with pytest.raises(InputError, match=r"missing\.dcm: does not exist"):
        load_files([tmp_path / "missing.dcm"])
    with pytest.raises(InputError, match="no DICOM files were given"):
        load_files([])
    with pytest.raises(InputError, match="missing slices"):
        load_files(xs[:5] + xs[6:])


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="holds no DICOM image series"):
        list_series(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        list_series(tmp_path / "missing")


def test_truncated_files_are_named(tmp_path: Path) -> None:
    files = write_dicom_series(make_oblique_volume(shape=(4, 60, 50), dtype=np.int16), tmp_path / "s")
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-100])  # pixel data cut short
    # named as cut short, as pacs push names it, not with pydicom's "the dataset may be
    # corrupted, have an invalid group 0028 element value, or the transfer syntax ..."
    with pytest.raises(InputError) as info:
        read_dicom_series(tmp_path / "s")
    assert str(info.value) == (
        f"{files[2]}: is cut short (an interrupted copy?): the file ends inside its pixel data; expected "
        "6000 bytes of pixel data (Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated/8); "
        "found 5900 bytes"
    )
    files[2].write_bytes(data[:700])  # header cut short
    with pytest.raises(InputError, match=f"{files[2].name}: is truncated"):
        read_dicom_series(tmp_path / "s")


def test_single_file(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")
    one = read_dicom_file(files[3])
    assert one.shape == (1, 20, 16)
    np.testing.assert_array_equal(one.array[0], vol.array[3])
    np.testing.assert_allclose(one.origin, vol.index_to_world((3, 0, 0)), atol=1e-6)
    assert one.spacing[0] == pytest.approx(3.0)  # from SpacingBetweenSlices
    (tmp_path / "x.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(InputError, match="not a DICOM file"):
        load_file(tmp_path / "x.dcm")


def test_read_volume_dispatches_to_dicom(tmp_path: Path) -> None:
    vol = make_oblique_volume(dtype=np.int16)
    files = write_dicom_series(vol, tmp_path / "s")
    np.testing.assert_array_equal(read_volume(tmp_path / "s").array, vol.array)
    assert read_volume(files[0]).shape == (1, 20, 16)


def test_inputs_are_not_modified_by_reading(tmp_path: Path) -> None:
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), tmp_path / "s")
    before = {f: (f.read_bytes(), os.stat(f).st_mtime_ns) for f in files}
    load_series(tmp_path / "s")
    assert {f: (f.read_bytes(), os.stat(f).st_mtime_ns) for f in files} == before


# ------------------------------------------------------------------- real data
@pytest.mark.parametrize("series", PROSTATEX_T2)
def test_prostatex_t2_equals_simpleitk(shared_data: Path, series: str) -> None:
    folder = shared_data / "prostatex_dicom" / series
    loaded = load_series(folder)
    ref = sitk_read(folder)
    assert loaded.volume.dtype == ref.dtype
    np.testing.assert_array_equal(loaded.volume.array, ref.array)
    loaded.volume.geometry.require_same(ref.geometry)
    assert loaded.warnings == []
    assert loaded.volume.meta["frame_of_reference_uid"]


def test_prostatex_series_choice_and_problems(shared_data: Path) -> None:
    study = shared_data / "prostatex_dicom" / "ProstateX-0001" / "07-08-2011"
    infos = list_series(study)
    assert len(infos) == 11
    sag = read_dicom_series(study, "t2_tse_sag")
    ref = sitk_read(study / "4.000000-t2tsesag-22089")
    np.testing.assert_array_equal(sag.array, ref.array)
    # two t2_tse_tra series: the description is ambiguous; @last picks the repeat (#10)
    with pytest.raises(
        InputError,
        match=r"2 series described 't2_tse_tra'.*SeriesNumber 6, acquired 11:43:36.*SeriesNumber 10, "
        r"acquired 11:52:25",
    ):
        read_dicom_series(study, "t2_tse_tra")
    last = read_dicom_series(study, "t2_tse_t*@last")
    np.testing.assert_array_equal(last.array, sitk_read(study / "10.000000-t2tsetra-17541").array)
    assert last.meta["series_number"] == 10
    assert read_dicom_series(study, "t2_tse_tra@first").meta["series_number"] == 6
    # the localizer holds 3 orientations
    with pytest.raises(InputError, match="3 orientations: 3 sagittal, 5 coronal, 5 axial"):
        read_dicom_series(study / "1.000000-t2localizer-75055")
    loc = next(i for i in infos if i.description == "t2_localizer")
    assert loc.orientations == 3


def test_prostatex_dwi_b_values(shared_data: Path, tmp_path: Path) -> None:
    folder = (
        shared_data
        / "prostatex_dicom"
        / "ProstateX-0000"
        / "07-07-2011"
        / "6.000000-ep2ddifftraDYNDIST-69284"
    )
    with pytest.raises(InputError, match=r"3 volumes.*b-value.*\[1\] b-value 400 \(19 slices\)"):
        read_dicom_series(folder)
    b400 = read_dicom_series(folder, volume=1)
    # SimpleITK on just the b=400 files (linked into a folder of their own)
    (tmp_path / "b400").mkdir()
    for f in sorted(folder.iterdir()):
        if pydicom.dcmread(f, stop_before_pixels=True)[0x0019, 0x100C].value.strip() == b"400":
            (tmp_path / "b400" / f.name).symlink_to(f)
    ref = sitk_read(tmp_path / "b400")
    np.testing.assert_array_equal(b400.array, ref.array)
    b400.geometry.require_same(ref.geometry)


def test_prostatex_lone_localizer_slice(shared_data: Path) -> None:
    folder = shared_data / "prostatex_dicom" / "ProstateX-0218" / "02-18-2011" / "2.000000-localizer-18571"
    vol = read_dicom_file(next(folder.iterdir()))
    assert vol.shape == (1, 128, 128)
    assert vol.spacing == pytest.approx((6.0, 3.125, 3.125))


def test_prostatex_dicom_nifti_dicom_round_trip(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "prostatex_dicom" / "ProstateX-0000" / "07-07-2011" / "4.000000-t2tsetra-00702"
    original = load_series(folder)
    nifti = write_volume(original.volume, tmp_path / "t2.nii.gz")
    via_nifti = read_volume(nifti)
    write_dicom_series(via_nifti, tmp_path / "dicom", reference=original)
    back = load_series(tmp_path / "dicom")
    np.testing.assert_array_equal(back.volume.array, original.volume.array)
    assert back.volume.dtype == original.volume.dtype
    # NIfTI stores the affine in float32: allow its round-off only
    back.volume.geometry.require_same(original.volume.geometry, origin_atol=1e-4, direction_atol=1e-6)
    assert back.volume.meta["study_uid"] == original.volume.meta["study_uid"]
    assert back.volume.meta["frame_of_reference_uid"] == original.volume.meta["frame_of_reference_uid"]
    assert back.volume.meta["series_uid"] != original.volume.meta["series_uid"]


def test_prostatex_t2_to_dicom_keeps_its_acquisition(shared_data: Path, tmp_path: Path) -> None:
    """A 2D TSE stack (3 mm slices 3.6 mm apart) stays 2D with its TE/TR; via NIfTI it is unknown."""
    folder = (
        shared_data / "prostatex_dicom" / "ProstateX-0218" / "02-18-2011" / "4.000000-t2tsesag320p2-41180"
    )
    original = load_series(folder)
    assert original.volume.spacing[0] == pytest.approx(3.6)
    write_dicom_series(original.volume, tmp_path / "dicom", reference=original, source=original)
    back = load_series(tmp_path / "dicom")
    np.testing.assert_array_equal(back.volume.array, original.volume.array)
    require_exact(back.volume, original.volume)
    ds, src = back.datasets[0], original.datasets[0]
    for kw in (
        "MRAcquisitionType",
        "EchoTime",
        "RepetitionTime",
        "FlipAngle",
        "MagneticFieldStrength",
        "EchoTrainLength",
        "ScanningSequence",
        "SequenceVariant",
        "ImagedNucleus",
    ):
        assert ds.get(kw) == src.get(kw), kw
    assert ds.MRAcquisitionType == "2D"
    assert float(ds.SliceThickness) == 3.0  # acquired thickness, not the 3.6 mm spacing
    via_nifti = read_volume(write_volume(original.volume, tmp_path / "t2.nii.gz"))
    write_dicom_series(via_nifti, tmp_path / "from_nifti", reference=original)
    ds = load_series(tmp_path / "from_nifti").datasets[0]
    assert ds.MRAcquisitionType == "" and ds.EchoTime is None
    assert float(ds.SliceThickness) == pytest.approx(3.6)


def test_jpeg2000_ct_equals_simpleitk(shared_data: Path) -> None:
    folder = shared_data / "totalseg_examples" / "example_ct_dicom"
    vol = read_dicom_series(folder)
    ref = sitk_read(folder)
    assert vol.shape == (20, 512, 512) and vol.dtype == np.int16
    np.testing.assert_array_equal(vol.array, ref.array)
    vol.geometry.require_same(ref.geometry)
    assert vol.spacing[0] == pytest.approx(2.0)  # from positions, not SliceThickness 3.0


def test_dcmqi_ct_and_multiframe(shared_data: Path) -> None:
    seg = shared_data / "dcmqi_seg" / "segmentations"
    ct = read_dicom_series(seg / "ct-3slice")
    ref = sitk_read(seg / "ct-3slice")
    assert ct.dtype == np.int32 == ref.dtype  # int16 stored + intercept -1024 needs int32
    np.testing.assert_array_equal(ct.array, ref.array)
    label = read_volume(seg / "liver_seg.nrrd")
    ct.geometry.require_same(label.geometry)
    # the Legacy Converted Enhanced multi-frame object equals the single-frame series
    single = read_dicom_series(seg / "23x38x3" / "image")
    multi = load_file(seg / "23x38x3" / "multiframe" / "mf.dcm")
    np.testing.assert_array_equal(multi.volume.array, single.array)
    require_exact(multi.volume, single)
    assert multi.frames == [0, 1, 2]  # frame 0 is the lowest (z -177.75), frame 2 the highest
    # SEG objects beside the images are not listed as image series
    assert all(s.modality == "CT" for s in list_series(seg))
