"""DICOM SEG and RTSTRUCT on series whose rows and columns have different spacings
(0.45 mm between rows, 0.6 mm between columns, 3.3 mm slices), an odd non-square matrix,
oblique, and with the slice axis along or against the row x column normal: a swapped
PixelSpacing or a flipped axis moves the structures and fails these tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.export.dicom_seg import read_dicom_seg, write_dicom_seg
from medseg.export.rtstruct import read_rtstruct, write_rtstruct
from medseg.volume import Volume
from tests.conftest import AWKWARD_GRIDS
from tests.export.conftest import ZONES, Series, centred_zones, dice, ellipsoid_labels, write_series

SPACING = (3.3, 0.45, 0.6)
SHAPE = (7, 45, 33)  # 20.25 mm x 19.8 mm in plane


@pytest.fixture(params=["oblique", "oblique-left-handed"])
def anisotropic_series(request: pytest.FixtureRequest, tmp_path: Path) -> Series:
    direction, _, origin = AWKWARD_GRIDS[request.param]
    rng = np.random.default_rng(2)
    image = Volume((500 + 100 * rng.random(SHAPE)).astype(np.uint16), SPACING, origin, direction)
    files = write_series(tmp_path / "series", image)
    return Series(tmp_path / "series", files, image)


def test_seg_round_trip_is_voxel_exact(tmp_path: Path, anisotropic_series: Series) -> None:
    image = anisotropic_series.image
    label = centred_zones(image)
    assert set(np.unique(label.array)) == {0, 1, 2, 4}
    out = write_dicom_seg(label, anisotropic_series.folder, tmp_path / "seg.dcm", ZONES)
    back = read_dicom_seg(out, image, ZONES)
    np.testing.assert_array_equal(back.array, label.array)
    seg = pydicom.dcmread(out)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose([float(v) for v in measures.PixelSpacing], SPACING[1:], atol=1e-6)
    assert (seg.Rows, seg.Columns) == SHAPE[1:]
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose(
        [float(v) for v in orientation], [*image.direction[:, 2], *image.direction[:, 1]], atol=1e-6
    )


def test_rtstruct_contours_are_read_onto_a_grid_of_non_square_pixels(
    tmp_path: Path, anisotropic_series: Series
) -> None:
    """rt-utils writes contours only for square pixels (refused otherwise, tested in
    test_rtstruct); reading them onto the 0.45 x 0.6 mm grid of the same slices must put the
    structures where they are in world space."""
    aniso = anisotropic_series.image
    square = Volume(
        np.zeros((SHAPE[0], 41, 41), np.uint16), (SPACING[0], 0.5, 0.5), aniso.origin, aniso.direction
    )
    files = write_series(tmp_path / "square", square)
    centre = aniso.index_to_world((np.asarray(SHAPE) - 1) / 2.0)
    shapes = {1: (centre, (7.0, 5.0, 8.0)), 2: (centre, (3.0, 2.5, 4.0))}
    out = write_rtstruct(ellipsoid_labels(square, shapes), files, tmp_path / "rt.dcm", ZONES)
    back = read_rtstruct(out, aniso, ZONES)
    expected = ellipsoid_labels(aniso, shapes)
    for value in (1, 2):
        assert dice(back.array == value, expected.array == value) >= 0.85, value


def test_medseg_reads_the_independently_written_series_onto_its_grid(anisotropic_series: Series) -> None:
    """The series files come from pydicom alone (tests/export/conftest.py): medseg's reader must
    take PixelSpacing as (between rows, between columns) and stack the slices in place."""
    from medseg.io.dicom import read_dicom_series
    from tests.conftest import assert_same_world_values

    image = anisotropic_series.image
    back = read_dicom_series(anisotropic_series.folder)
    assert back.spacing == pytest.approx(SPACING, abs=1e-6)
    assert_same_world_values(image, back, atol=1e-5)
