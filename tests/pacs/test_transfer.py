"""Local checks before a push, without a PACS: damaged files are named and nothing is sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from medseg.errors import InputError
from medseg.io.dicom import write_dicom_series
from medseg.pacs.transfer import collect_dicom_files, instance_problem, is_complete_instance, push_files
from tests.conftest import make_oblique_volume


class RecordingClient:
    """Stands in for PacsClient: accepts every instance and records what it was sent."""

    server = "http://pacs.invalid/dicom-web"

    def __init__(self) -> None:
        self.stored: list[str] = []

    def store(self, ds: Dataset, study_uid: str | None = None) -> tuple[Dataset, int | None]:
        self.stored.append(str(ds.SOPInstanceUID))
        return Dataset(), None


def series(folder: Path, patient_name: str = "Doe^Jane") -> list[Path]:
    files = write_dicom_series(make_oblique_volume(dtype=np.int16), folder)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID = patient_name, "PID-7731"
        ds.save_as(f)
    return files


def cut(path: Path, keep: int) -> None:
    """Keep the first ``keep`` bytes (``keep`` < 0: drop that many from the end)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def pixel_tag_offset(path: Path) -> int:
    return path.read_bytes().rfind(b"\xe0\x7f\x10\x00")


def test_whole_files_pass(tmp_path: Path) -> None:
    files = series(tmp_path / "s")
    assert all(instance_problem(f) is None for f in files)


def test_pixel_data_cut_short_is_found(tmp_path: Path) -> None:
    f = series(tmp_path / "s")[0]
    ds = pydicom.dcmread(f)
    expected = ds.Rows * ds.Columns * 2
    cut(f, -100)
    assert len(pydicom.dcmread(f).PixelData) == expected - 100  # pydicom reads it without complaint
    assert (
        instance_problem(f)
        == f"the file ends inside PixelData: {expected - 100} of its {expected} bytes (cut short)"
    )
    assert not is_complete_instance(f, str(ds.SOPInstanceUID))


def test_pixel_data_shorter_than_the_image_is_found(tmp_path: Path) -> None:
    """Written whole but too short for Rows x Columns (a broken writer): the size check."""
    f = series(tmp_path / "s")[0]
    ds = pydicom.dcmread(f)
    expected = ds.Rows * ds.Columns * 2
    ds.PixelData = ds.PixelData[:-64]
    ds.save_as(f)
    why = instance_problem(f)
    assert why is not None and f"{expected - 64} bytes of pixel data" in why and f"= {expected} " in why
    assert not is_complete_instance(f, str(ds.SOPInstanceUID))


def test_header_cut_before_rows_is_found(tmp_path: Path) -> None:
    """Cut at an element boundary before Rows: every element whole, but an image without an image."""
    f = series(tmp_path / "s")[0]
    cut(f, f.read_bytes().index(b"\x28\x00\x02\x00US"))  # SamplesPerPixel opens group 0028
    assert instance_problem(f) == "no Rows, Columns or pixel data in a MR Image Storage object (cut short?)"
    cut(f, -5)  # now inside an element of the header
    why = instance_problem(f)
    assert why is not None and why.startswith("the file ends inside ")


def test_file_ending_before_the_pixel_data_is_found(tmp_path: Path) -> None:
    f = series(tmp_path / "s")[0]
    cut(f, pixel_tag_offset(f))  # the whole header, not a byte of the pixel element
    assert instance_problem(f) == "an image without pixel data (the file ends before them?)"


def test_file_cut_inside_an_element_header_is_unreadable(tmp_path: Path) -> None:
    f = series(tmp_path / "s")[0]
    cut(
        f, pixel_tag_offset(f) + 10
    )  # inside the length: pydicom raises struct.error, not an InvalidDicomError
    why = instance_problem(f)
    assert why is not None and why.startswith("not a readable DICOM file")


def test_file_cut_before_its_uids_is_found(tmp_path: Path) -> None:
    files = series(tmp_path / "s")
    data = files[0].read_bytes()
    sop_instance_uid_tag = data.index(b"\x08\x00\x18\x00UI", 200)  # after the file meta group
    cut(files[0], sop_instance_uid_tag)
    assert instance_problem(files[0]) == (
        "no SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID (cut short, or not a storable instance)"
    )
    # present but empty (an anonymiser blanked them, as in TotalSegmentator's example CT DICOM):
    # said so, not "cut short"
    ds = pydicom.dcmread(files[2])
    ds.SOPClassUID = ds.StudyInstanceUID = ""
    ds.save_as(files[2])
    assert instance_problem(files[2]) == (
        "empty SOPClassUID, StudyInstanceUID (blanked by an anonymiser?); a PACS files instances by these UIDs"
    )
    meta_end = data.index(b"\x08\x00\x05\x00CS")  # SpecificCharacterSet opens the data set
    cut(files[1], meta_end)
    assert instance_problem(files[1]) == "no data elements after the file meta information (cut short?)"


def test_compressed_pixel_data_cut_short_is_found(tmp_path: Path) -> None:
    """pydicom returns an empty data set when encapsulated pixel data lack their delimiter."""
    f = series(tmp_path / "s")[0]
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x01" * 500])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.save_as(f, enforce_file_format=True)
    assert instance_problem(f) is None
    cut(f, -20)
    assert (
        instance_problem(f) == "compressed pixel data that end before their delimiter (the file is cut short)"
    )


def test_bit_packed_pixel_data_is_checked_by_bits(tmp_path: Path) -> None:
    """A binary SEG packs 1-bit pixels over all frames: 3 x 3 x 2 frames = 18 bits = 3 bytes."""
    f = series(tmp_path / "s")[0]
    ds = pydicom.dcmread(f)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 3, 3, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = b"\xff\xff\xff\x00"  # padded to even length
    ds.save_as(f)
    assert instance_problem(f) is None
    ds.PixelData = b"\xff\xff"
    ds.save_as(f)
    why = instance_problem(f)
    assert why is not None and "2 bytes of pixel data" in why and "= 3 " in why


def test_push_with_a_damaged_file_sends_nothing_and_names_it(tmp_path: Path) -> None:
    files = series(tmp_path / "study")
    cut(files[3], -1000)
    cut(files[7], 200)  # preamble and DICM kept: damaged DICOM, not a stray non-DICOM file
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    client = RecordingClient()
    with pytest.raises(InputError) as info:
        push_files(client, [tmp_path / "study"])  # type: ignore[arg-type]
    message = str(info.value)
    assert client.stored == []
    assert message.startswith(f"2 of {len(files)} files cannot be stored, nothing was pushed")
    assert str(files[3]) in message and str(files[7]) in message and "notes.txt" not in message
    assert "--skip-invalid" in message
    assert "Doe" not in message and "PID-7731" not in message


def test_push_skip_invalid_sends_the_whole_files_only(tmp_path: Path) -> None:
    files = series(tmp_path / "study")
    cut(files[3], -1000)
    client = RecordingClient()
    result = push_files(client, [tmp_path / "study"], skip_invalid=True)  # type: ignore[arg-type]
    whole = [str(pydicom.dcmread(f).SOPInstanceUID) for i, f in enumerate(files) if i != 3]
    assert client.stored == whole
    assert [p.path for p in result.accepted] == [f for i, f in enumerate(files) if i != 3]
    assert [(s.path, "cut short" in s.reason) for s in result.skipped] == [(files[3], True)]


def test_a_named_damaged_file_is_kept_for_the_check_a_named_non_dicom_file_is_refused(
    tmp_path: Path,
) -> None:
    files = series(tmp_path / "s")
    # 128-byte preamble, "DICM", then (0002,0000) UL: its 4-byte value at 140-143; then
    # (0002,0001) OB, whose 4-byte length is at 152-155.
    cut(files[0], 142)  # pydicom: BytesLengthException
    cut(files[1], 153)  # pydicom: struct.error
    assert collect_dicom_files(files[:2]) == [(files[0], None), (files[1], None)]  # named later
    assert all((instance_problem(f) or "").startswith("not a readable DICOM file") for f in files[:2])
    assert [p for p, h in collect_dicom_files([tmp_path / "s"]) if h is None] == files[:2]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200)
    with pytest.raises(InputError, match=r"junk\.dcm: is not a readable DICOM file"):
        collect_dicom_files([junk])
