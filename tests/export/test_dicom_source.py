"""Source series matching: what a SEG or RTSTRUCT needs from every image it references."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from medseg.errors import InputError
from medseg.export.dicom_seg import write_dicom_seg
from medseg.export.rtstruct import write_rtstruct
from tests.export.conftest import ZONES, Series, centred_zones


@pytest.mark.parametrize("writer", [write_dicom_seg, write_rtstruct], ids=["seg", "rtstruct"])
def test_images_whose_uids_an_anonymiser_blanked_are_refused_naming_the_file(
    tmp_path: Path, synthetic_series: Series, writer: object
) -> None:
    """TotalSegmentator's example CT DICOM has empty SOPClassUID/SOPInstanceUID/Study/Series
    UIDs: highdicom failed on it with a bare KeyError(''), an internal error that stopped a
    whole predict cohort. Now it is an input error naming the file and the empty UIDs."""
    for file in synthetic_series.files:
        ds = pydicom.dcmread(file)
        ds.SOPClassUID = ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.save_as(file)
    with pytest.raises(InputError, match="cannot be referenced by a DICOM SEG or RTSTRUCT") as info:
        writer(centred_zones(synthetic_series.image), synthetic_series.folder, tmp_path / "out.dcm", ZONES)  # type: ignore[operator]
    message = str(info.value)
    assert str(synthetic_series.folder) in message
    assert "empty or missing SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID" in message
    assert not (tmp_path / "out.dcm").exists()
