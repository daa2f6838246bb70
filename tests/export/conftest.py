"""Fixtures for the export tests: oblique synthetic DICOM series and the real PROSTATEx T2.

The synthetic series is written with pydicom here (independent of medseg.io.dicom) so
that the DICOM exporters are tested against files whose geometry we chose: oblique
direction, non-zero origin, anisotropic voxels, a non-square matrix and, on request, a
slice axis that runs *against* the row x column normal (file order reversed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medseg.io.itk import from_sitk
from medseg.volume import Volume
from tests.conftest import oblique_direction

PROSTATEX_T2 = Path("prostatex_dicom/ProstateX-0000/07-07-2011/4.000000-t2tsetra-00702")
ZONES = {1: "PZ", 2: "TZ", 3: "DPU", 4: "AFS"}


@dataclass
class Series:
    """A DICOM series on disk and the Volume whose grid it is."""

    folder: Path
    files: list[Path]
    image: Volume

    def datasets(self, *, shuffle: int | None = None) -> list[Dataset]:
        dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in self.files]
        if shuffle is not None:
            random.Random(shuffle).shuffle(dss)
        return dss


def write_series(
    folder: Path, image: Volume, *, series_uid: str | None = None, description: str = "synthetic"
) -> list[Path]:
    """One MR file per slice of ``image`` (uint16), file k = slice k, IPP from the geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    g = image.geometry
    study, frame = generate_uid(), generate_uid()
    series = series_uid or generate_uid()
    files = []
    for k in range(g.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "SYNTHETIC^PHANTOM",
            "SYN0001",
            "",
            "O",
        )
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "medseg-tests"
        ds.SeriesNumber, ds.InstanceNumber = 7, k + 1
        ds.SeriesDescription = description
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in g.index_to_world([k, 0, 0])]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*g.direction[:, 2], *g.direction[:, 1])]
        ds.PixelSpacing = [f"{g.spacing[1]:.6f}", f"{g.spacing[2]:.6f}"]
        ds.SliceThickness = f"{g.spacing[0]:.6f}"
        ds.Rows, ds.Columns = g.shape[1], g.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(image.array[k].astype(np.uint16)).tobytes()
        path = folder / f"IM{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def ellipsoid_labels(
    geometry_volume: Volume, shapes: dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]]
) -> Volume:
    """Label map with world-space ellipsoids ``value: (centre LPS mm, semi-axes mm)``, later values on top."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geometry_volume.shape], indexing="ij"), axis=-1)
    world = geometry_volume.index_to_world(idx)
    label = np.zeros(geometry_volume.shape, dtype=np.uint8)
    for value, (centre, semi) in shapes.items():
        r2 = (((world - np.asarray(centre)) / np.asarray(semi)) ** 2).sum(axis=-1)
        label[r2 < 1] = value
    return geometry_volume.with_array(label)


def synthetic_image(
    shape: tuple[int, int, int] = (8, 36, 28),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    origin: tuple[float, float, float] = (-40.0, 25.0, 60.0),
    direction: np.ndarray | None = None,
) -> Volume:
    rng = np.random.default_rng(1)
    array = (500 + 100 * rng.random(shape)).astype(np.uint16)
    return Volume(array, spacing, origin, oblique_direction() if direction is None else direction)


def centred_zones(image: Volume) -> Volume:
    """Nested ellipsoids at the grid centre, like prostate zones (a hole in 1 where 2 is)."""
    centre = image.index_to_world((np.asarray(image.shape) - 1) / 2.0)
    ext = np.asarray(image.shape) * np.asarray(image.spacing)
    base = min(ext[1], ext[2]) / 2
    return ellipsoid_labels(
        image,
        {
            1: (centre, (0.7 * base, 0.6 * base, min(0.35 * ext[0], 0.7 * base))),
            2: (centre, (0.35 * base, 0.3 * base, min(0.25 * ext[0], 0.35 * base))),
            4: (
                centre + np.array([0.0, -0.45 * base, 0.0]),
                (0.12 * base, 0.12 * base, max(0.6 * image.spacing[0], 2.0)),
            ),
        },
    )


def prostate_zones(image: Volume) -> Volume:
    """``centred_zones`` plus a thin urethra (3) through the transition zone: all four zone labels."""
    label = centred_zones(image)
    centre = image.index_to_world((np.asarray(image.shape) - 1) / 2.0)
    urethra = ellipsoid_labels(image, {3: (centre, (2.0, 2.0, 3.0 * image.spacing[0]))}).array == 3
    label.array[urethra] = 3
    return label


@pytest.fixture
def synthetic_series(tmp_path: Path) -> Series:
    """Oblique 8-slice series, 36 x 28 matrix (rows x columns), 0.8 mm pixels, 2.5 mm slices."""
    image = synthetic_image()
    files = write_series(tmp_path / "series", image)
    return Series(tmp_path / "series", files, image)


@pytest.fixture
def reversed_series(tmp_path: Path) -> Series:
    """Like ``synthetic_series`` but the Volume's slice axis points against the row x column normal."""
    direction = oblique_direction().copy()
    direction[:, 0] *= -1  # left-handed grid: file order runs opposite to the DICOM normal
    image = synthetic_image(direction=direction)
    files = write_series(tmp_path / "series_rev", image)
    return Series(tmp_path / "series_rev", files, image)


def read_series_with_sitk(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return from_sitk(reader.Execute())


@pytest.fixture(scope="session")
def prostatex_t2(shared_data: Path) -> Series:
    """The real PROSTATEx-0000 T2 axial series: 384 x 384 x 19, 0.5 x 0.5 x 3 mm, tilted 18.5 degrees."""
    folder = shared_data / PROSTATEX_T2
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    image = read_series_with_sitk(folder)
    return Series(folder, sorted(folder.glob("*.dcm")), image)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def give_malformed_birth_date(series: Series, value: str = "1961-02-03 SECRET") -> None:
    """Rewrite the series' files with a PatientBirthDate that is not a valid DA."""
    import warnings

    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        for f in series.files:
            ds = pydicom.dcmread(f)
            ds.PatientBirthDate = value
            ds.save_as(f)
