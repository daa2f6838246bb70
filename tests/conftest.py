"""Shared fixtures: tiny volumes with oblique directions and non-zero origins.

Any axis-order or sign mistake moves voxels in world space, so tests built on these
fixtures fail loudly instead of passing on an identity grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medseg.volume import Volume

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def oblique_direction(angles_deg: tuple[float, float, float] = (17.0, -9.0, 23.0)) -> np.ndarray:
    """A proper rotation (det +1) in array order (columns: z, y, x axes)."""
    rot = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()  # ITK order columns x, y, z
    return rot[:, ::-1].copy()


def make_oblique_volume(
    shape: tuple[int, int, int] = (12, 20, 16),
    spacing: tuple[float, float, float] = (3.0, 0.7, 0.5),
    origin: tuple[float, float, float] = (-31.5, 12.25, 80.0),
    seed: int = 0,
    dtype: type = np.float32,
) -> Volume:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    array = (100 + 10 * z + 3 * y + x + rng.normal(0, 1, shape)).astype(dtype)
    return Volume(array, spacing, origin, oblique_direction())


@pytest.fixture
def oblique_volume() -> Volume:
    return make_oblique_volume()


@pytest.fixture
def oblique_label(oblique_volume: Volume) -> Volume:
    z, y, x = np.meshgrid(*[np.arange(s) for s in oblique_volume.shape], indexing="ij")
    label = np.zeros(oblique_volume.shape, dtype=np.uint8)
    label[(z - 6) ** 2 / 16 + (y - 10) ** 2 / 36 + (x - 8) ** 2 / 25 < 1] = 1
    label[(z - 6) ** 2 / 4 + (y - 10) ** 2 / 9 + (x - 6) ** 2 / 4 < 1] = 3
    return oblique_volume.with_array(label)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real test data not found at {SHARED_DATA} (CI provides ../shared/data beside the checkout)"
        )
    return SHARED_DATA


def write_stacked_series(folder: Path, first: Volume, second: Volume) -> None:
    """One DICOM series in ``folder`` holding two volumes at the same positions (like DWI
    b-values), told apart by EchoTime 10 / 20: ``first`` is volume 0, ``second`` volume 1."""
    import pydicom

    from medseg.io.dicom import write_dicom_series

    a = write_dicom_series(first, folder, series_description="dwi")
    b = write_dicom_series(second, folder.with_name(folder.name + "_second"))
    head = pydicom.dcmread(a[0])
    for k, f in enumerate(b):
        ds = pydicom.dcmread(f)
        # one series of one study (a series spanning two studies is refused as a merge fault)
        ds.SeriesInstanceUID = head.SeriesInstanceUID
        ds.StudyInstanceUID = head.StudyInstanceUID
        ds.FrameOfReferenceUID = head.FrameOfReferenceUID
        ds.EchoTime = 20
        ds.save_as(folder / f"t{k}.dcm")
    for f in a:
        ds = pydicom.dcmread(f)
        ds.EchoTime = 10
        ds.save_as(f)


# Awkward grids for property-style geometry tests: anisotropic spacing (0.6 x 0.45 x 3.3 mm),
# odd sizes, non-zero origins, oblique and left-handed directions. ITK's direction matrix is
# "left-handed" when its determinant is -1 (the slice axis runs against row x column);
# medseg's array-order direction is ITK's with its columns reversed, so its determinant
# has the opposite sign.
def _left_handed(direction: np.ndarray) -> np.ndarray:
    flipped = direction.copy()
    flipped[:, 0] *= -1  # the slice (z) axis
    return flipped


# ITK columns x -> P, y -> I, z -> L (a sagittal series stacked right to left): det -1
_SAGITTAL_ITK = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

AWKWARD_GRIDS: dict[str, tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]] = {
    # name: (direction in array order, spacing (z, y, x), origin LPS)
    "oblique": (oblique_direction(), (3.3, 0.45, 0.6), (-101.25, 33.5, 12.125)),
    "oblique-left-handed": (_left_handed(oblique_direction()), (3.3, 0.45, 0.6), (-101.25, 33.5, 12.125)),
    "sagittal-left-handed": (_SAGITTAL_ITK[:, ::-1].copy(), (0.6, 3.3, 0.45), (57.0, -20.5, 91.75)),
    "oblique-44deg-left-handed": (
        _left_handed(oblique_direction((44.0, -3.0, 12.0))),
        (0.45, 3.3, 0.6),
        (7.5, 140.0, -66.6),
    ),
}
AWKWARD_SHAPE = (7, 11, 9)


def make_awkward_volume(
    grid: str, dtype: type = np.int16, shape: tuple[int, int, int] = AWKWARD_SHAPE, seed: int = 0
) -> Volume:
    """A small volume on one of :data:`AWKWARD_GRIDS` with distinct-looking voxel values.

    Integer dtypes get labels 0..4 in blobs (label-like); float dtypes a smooth ramp plus noise.
    """
    direction, spacing, origin = AWKWARD_GRIDS[grid]
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    if np.dtype(dtype).kind in "iub":
        array = ((z // 2 + y // 3 + x // 2 + rng.integers(0, 2, shape)) % 5).astype(dtype)
    else:
        array = (50 + 7 * z + 3 * y + x + rng.normal(0, 1, shape)).astype(dtype)
    return Volume(array, spacing, origin, direction)


def assert_same_world_values(a: Volume, b: Volume, atol: float = 1e-6) -> None:
    """Every voxel of ``b`` sits on a voxel centre of ``a`` (within ``atol`` voxels) with the same value."""
    idx_b = np.argwhere(np.ones(b.shape, dtype=bool))
    idx_a = a.world_to_index(b.index_to_world(idx_b))
    rounded = np.round(idx_a)
    np.testing.assert_allclose(idx_a, rounded, atol=atol)
    rounded = rounded.astype(int)
    assert np.all(rounded >= 0) and np.all(rounded < np.asarray(a.shape))
    np.testing.assert_array_equal(a.array[tuple(rounded.T)], b.array[tuple(idx_b.T)])


def give_nifti_a_second_transform(
    path: Path, *, sform_code: int = 2, shift_mm: float = 5.0, shear: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite the NIfTI at ``path`` so that its sform (``sform_code``) lies ``shift_mm`` along x
    (and sheared by ``shear``) from its qform (code 1, scanner); returns (qform, sform)."""
    import nibabel as nib

    img = nib.load(path)
    qform = img.header.get_qform()
    sform = qform.copy()
    sform[0, 3] += shift_mm
    sform[:3, :3] = sform[:3, :3] @ np.array([[1.0, shear, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    two = nib.Nifti1Image(np.asarray(img.dataobj), None, img.header)
    two.set_qform(qform, code=1)
    two.set_sform(sform, code=sform_code)
    nib.save(two, path)
    return qform, sform


# The real PROSTATEx T2 series that the de-identification tests copy; its own header names
# the patient only by TCIA's pseudonym and has no birth date, so the copy gets identifiers
# that a leak would show.
PROSTATEX_T2_SERIES = Path("prostatex_dicom/ProstateX-0000/07-07-2011/4.000000-t2tsetra-00702")
IDENTIFIERS = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-7731",
    "PatientBirthDate": "19610203",
    # highdicom copies these modules into a SEG (Clinical Trial Subject, Patient Study)
    "ClinicalTrialSubjectID": "CTSUBJ-0042",
    "AdmittingDiagnosesDescription": "DX-OF-JANE",
}


def identified_prostatex_t2(shared_data: Path, folder: Path) -> Path:
    """A copy of the real PROSTATEx T2 series in ``folder`` whose headers carry ``IDENTIFIERS``."""
    import pydicom

    source = shared_data / PROSTATEX_T2_SERIES
    if not source.is_dir():
        pytest.skip(f"{source} not found (the PROSTATEx T2 series of ../shared/data)")
    folder.mkdir(parents=True)
    for f in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f.name)
    return folder


def assert_references_deidentified_copy(written: Path, original: Path, copy: Path) -> None:
    """``written`` (a de-identified DICOM SEG or RTSTRUCT made from the series ``original``)
    references exactly the study, series, frame of reference and images of ``copy`` (that
    series after `medseg convert --deidentify`) and holds no byte of the patient's name, ID,
    birth date or of any original UID."""
    import pydicom

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(original.glob("*.dcm"))]
    copied = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(copy.glob("*.dcm"))]
    ds = pydicom.dcmread(written)
    data = written.read_bytes()
    secrets = {*IDENTIFIERS.values(), str(IDENTIFIERS["PatientName"]).split("^")[0]}
    for h in headers:
        secrets |= {str(h.StudyInstanceUID), str(h.SeriesInstanceUID), str(h.SOPInstanceUID)}
        secrets.add(str(h.FrameOfReferenceUID))
    leaked = sorted(s for s in secrets if s.encode() in data)
    assert not leaked, f"{written.name} holds {leaked}"
    first = copied[0]
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    assert ds.PatientName == first.PatientName and ds.PatientID == first.PatientID
    assert ds.PatientIdentityRemoved == "YES"
    # the source's (TCIA's) method codes would claim options medseg's profile does not apply
    assert "DeidentificationMethodCodeSequence" not in ds
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID  # never remapped
    assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    sops = {str(c.SOPInstanceUID) for c in copied}
    refs: set[str] = set()
    series_refs: set[str] = set()
    frames: set[str] = set()
    image_classes: set[str] = set()

    def visit(_: pydicom.Dataset, elem: pydicom.DataElement) -> None:
        if elem.keyword == "ReferencedSOPInstanceUID":
            refs.add(str(elem.value))
        elif elem.keyword == "SeriesInstanceUID":
            series_refs.add(str(elem.value))
        elif elem.keyword in ("FrameOfReferenceUID", "ReferencedFrameOfReferenceUID"):
            frames.add(str(elem.value))
        elif elem.keyword == "ReferencedSOPClassUID":
            image_classes.add(str(elem.value))

    ds.walk(visit)
    # every image is referenced, and nothing else but the study (an RTSTRUCT's study reference)
    assert sops <= refs and refs - sops <= {str(first.StudyInstanceUID)}
    assert series_refs == {str(ds.SeriesInstanceUID), str(first.SeriesInstanceUID)}
    assert frames == {str(first.FrameOfReferenceUID)}
    assert str(first.SOPClassUID) in image_classes  # the images' SOP class, not remapped


def write_blank_uid_cohort(cohort: Path) -> None:
    """``cohort/good`` and ``cohort/blank``: the same DICOM series, the second with its SOP
    class / instance, study and series UIDs blanked (as in TotalSegmentator's example CT)."""
    import pydicom

    from medseg.io.dicom import write_dicom_series
    from tests.preprocessing.conftest import make_case

    image, _ = make_case(3, shape=(9, 36, 30))
    image = image.with_array(image.array.astype(np.int16))
    write_dicom_series(image, cohort / "good")
    for file in write_dicom_series(image, cohort / "blank"):
        ds = pydicom.dcmread(file)
        ds.SOPClassUID = ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.save_as(file)
