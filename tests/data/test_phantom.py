"""Synthetic phantoms: determinism, anatomy, geometry across views, intensities, dataset layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.data import phantom as ph
from medseg.data.dataset import list_cases, read_descriptor
from medseg.errors import ConfigError, OutputExistsError
from medseg.geometry.resample import resample_to_reference
from medseg.io import read_volume
from medseg.volume import Volume

PZ, TZ, DPU, AFS = 1, 2, 3, 4
LIVER, RIGHT_KIDNEY, LEFT_KIDNEY, SPLEEN = 1, 2, 3, 4


@pytest.fixture(scope="module")
def prostate() -> ph.PhantomCase:
    return ph.make_prostate_case(11, views=True)


@pytest.fixture(scope="module")
def ct() -> ph.PhantomCase:
    return ph.make_ct_case(11)


def _ml(label: Volume, value: int) -> float:
    return float(np.count_nonzero(label.array == value) * label.geometry.voxel_volume_mm3 / 1000.0)


def _label_at(label: Volume, world: np.ndarray) -> int:
    idx = np.rint(label.world_to_index(world)).astype(int)
    assert np.all(idx >= 0) and np.all(idx < np.asarray(label.shape)), f"{world} outside {label.geometry}"
    return int(label.array[tuple(idx)])


# --------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_case() -> None:
    a = ph.make_prostate_case(3, views=True)
    b = ph.make_prostate_case(3, views=True)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.label.array, b.label.array)
    assert a.image.geometry.is_close(b.image.geometry, origin_atol=0, spacing_atol=0, direction_atol=0)
    for name in ("sagittal", "coronal"):
        assert np.array_equal(a.views[name][0].array, b.views[name][0].array)
        assert a.views[name][0].geometry.is_close(b.views[name][0].geometry, origin_atol=0)
    c1, c2 = ph.make_ct_case(3), ph.make_ct_case(3)
    assert np.array_equal(c1.image.array, c2.image.array)
    assert np.array_equal(c1.label.array, c2.label.array)


def test_different_seeds_differ() -> None:
    a, b = ph.make_prostate_case(1), ph.make_prostate_case(2)
    assert not np.array_equal(a.label.array, b.label.array)
    assert not a.image.geometry.is_close(b.image.geometry)
    assert a.image.meta["frame_of_reference_uid"] != b.image.meta["frame_of_reference_uid"]
    assert not np.array_equal(ph.make_ct_case(1).label.array, ph.make_ct_case(2).label.array)


def test_case_seed_is_stable_and_distinct() -> None:
    assert ph.case_seed(0, 0) == ph.case_seed(0, 0)
    seeds = {ph.case_seed(s, i) for s in range(3) for i in range(20)}
    assert len(seeds) == 60


# --------------------------------------------------------------------------- prostate
def test_prostate_axial_grid_is_oblique_and_anisotropic(prostate: ph.PhantomCase) -> None:
    g = prostate.image.geometry
    assert g.shape == ph.PROSTATE_SIZE
    assert g.spacing == (3.0, 0.5, 0.5)
    assert 9.0 < g.obliquity < 22.0  # 10-20 degrees about x, plus up to 2 degrees of yaw
    assert g.orientation == "LPS"
    assert np.linalg.norm(g.origin) > 10.0
    # Tilted about the left-right axis: the column (x) axis stays close to world x.
    assert g.direction[:, 2] @ np.array([1.0, 0.0, 0.0]) > 0.99
    assert abs(g.direction[2, 1]) > 0.15  # rows run partly inferior, like PROSTATEx t2_tse_tra
    assert prostate.image.dtype == np.float32 and prostate.label.dtype == np.uint8


def test_prostate_views_have_their_own_oblique_grids(prostate: ph.PhantomCase) -> None:
    sag, cor = prostate.views["sagittal"][0].geometry, prostate.views["coronal"][0].geometry
    assert sag.spacing == ph.SAGITTAL_SPACING and cor.spacing == ph.CORONAL_SPACING
    assert sag.orientation[2] in "LR"  # slices stacked left-right
    assert cor.orientation[2] in "AP"  # slices stacked anterior-posterior
    assert sag.obliquity > 1.0 and cor.obliquity > 1.0
    uids = {prostate.image.meta["frame_of_reference_uid"]}
    uids |= {img.meta["frame_of_reference_uid"] for img, _ in prostate.views.values()}
    uids |= {lab.meta["frame_of_reference_uid"] for _, lab in prostate.views.values()}
    assert len(uids) == 1
    assert [prostate.views[n][0].meta["view"] for n in ("sagittal", "coronal")] == ["sagittal", "coronal"]


def test_every_zone_is_present_with_plausible_volume() -> None:
    # Documented sizes (module docstring): gland ~16-31 mL, TZ 20-45 % of it, AFS 5-20 %,
    # DPU 1-5 % (a tube of 2.5-3.5 mm radius).
    for seed in range(4):
        lab = ph.make_prostate_case(ph.case_seed(0, seed), noise=False).label
        assert set(np.unique(lab.array)) == {0, PZ, TZ, DPU, AFS}
        gland = sum(_ml(lab, v) for v in (PZ, TZ, DPU, AFS))
        assert 14.0 < gland < 35.0
        assert 0.15 < _ml(lab, TZ) / gland < 0.5
        assert 0.05 < _ml(lab, AFS) / gland < 0.2
        assert 0.01 < _ml(lab, DPU) / gland < 0.05
        assert _ml(lab, PZ) > _ml(lab, AFS) > _ml(lab, DPU)


def test_gland_lies_inside_the_axial_field_of_view() -> None:
    for seed in range(4):
        lab = ph.make_prostate_case(ph.case_seed(0, seed), noise=False).label.array > 0
        faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]]
        assert not any(f.any() for f in faces)


def test_zones_are_where_the_anatomy_puts_them(prostate: ph.PhantomCase) -> None:
    anatomy = ph.prostate_anatomy(11)
    lab = prostate.label
    assert _label_at(lab, anatomy.tz_point_world()) == TZ
    assert _label_at(lab, anatomy.pz_point_world()) == PZ
    # The PZ lies posterior to the TZ, the AFS anterior (LPS: +y is posterior).
    centroid = {v: lab.index_to_world(np.argwhere(lab.array == v).mean(axis=0)) for v in (PZ, TZ, AFS)}
    local = {v: (c - anatomy.centre) @ anatomy.rotation for v, c in centroid.items()}
    assert local[AFS][1] < local[TZ][1] < local[PZ][1]


def test_label_map_is_the_analytic_label_at_voxel_centres(prostate: ph.PhantomCase) -> None:
    anatomy = ph.prostate_anatomy(11)
    lab = prostate.label
    rng = np.random.default_rng(0)
    idx = np.argwhere(lab.array > 0)
    idx = np.vstack([idx[rng.choice(len(idx), 300)], rng.integers(0, lab.shape, size=(100, 3))])
    expected = ph.prostate_labels_at(anatomy, lab.index_to_world(idx))
    assert np.array_equal(lab.array[tuple(idx.T)], expected)


def test_views_agree_in_world_space(prostate: ph.PhantomCase) -> None:
    anatomy = ph.prostate_anatomy(11)
    for point, value in ((anatomy.tz_point_world(), TZ), (anatomy.pz_point_world(), PZ)):
        assert _label_at(prostate.label, point) == value
        for name in ("sagittal", "coronal"):
            assert _label_at(prostate.views[name][1], point) == value, name
    # Whole-gland agreement: a view's label resampled onto the axial grid overlaps the axial label.
    axial = prostate.label.array
    for name in ("sagittal", "coronal"):
        moved = resample_to_reference(prostate.views[name][1], prostate.label, is_label=True).array
        a, b = axial > 0, moved > 0
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice > 0.9, name


def test_views_crop_the_axial_box_but_keep_the_gland(prostate: ph.PhantomCase) -> None:
    axial = prostate.label
    for name in ("sagittal", "coronal"):
        view = prostate.views[name][0].geometry
        corners = view.world_to_index(axial.geometry.corners_world())
        inside = np.all((corners >= -0.5) & (corners <= np.asarray(view.shape) - 0.5), axis=1)
        assert not inside.all(), f"the {name} view covers the whole axial box"
        gland = view.world_to_index(axial.index_to_world(np.argwhere(axial.array > 0)))
        assert np.all((gland >= -0.5) & (gland <= np.asarray(view.shape) - 0.5)), name


def test_t2_contrast_between_zones() -> None:
    for seed in range(3):
        case = ph.make_prostate_case(ph.case_seed(0, seed))
        img, lab = case.image.array, case.label.array
        mean = {v: float(img[lab == v].mean()) for v in (PZ, TZ, DPU, AFS)}
        assert mean[PZ] > mean[TZ] > mean[AFS]
        assert mean[DPU] > mean[AFS]
        # The PZ/TZ difference stands well above the noise.
        sigma = ph.prostate_anatomy(ph.case_seed(0, seed)).noise_sigma
        assert mean[PZ] - mean[TZ] > 2 * sigma
        assert img.min() >= 0.0  # Rician magnitude


def test_noise_is_rician_like_and_seeded() -> None:
    noisy = ph.make_prostate_case(5).image.array
    clean = ph.make_prostate_case(5, noise=False).image.array
    sigma = ph.prostate_anatomy(5).noise_sigma
    bright = clean > 20 * sigma  # high SNR: Rician noise is close to Gaussian with this sigma
    diff = (noisy - clean)[bright]
    assert 0.8 * sigma < diff.std() < 1.2 * sigma
    dark = clean < 0.5 * sigma  # air: the magnitude floor sigma * sqrt(pi / 2) makes the mean positive
    assert np.count_nonzero(dark) > 100
    assert 1.0 * sigma < noisy[dark].mean() < 1.6 * sigma


def test_custom_grid_and_spacing() -> None:
    case = ph.make_prostate_case(2, size=(8, 40, 48), spacing=(4.0, 1.5, 1.5))
    assert case.image.shape == (8, 40, 48) and case.image.spacing == (4.0, 1.5, 1.5)
    assert {PZ, TZ} <= set(np.unique(case.label.array))


@pytest.mark.parametrize(
    "kwargs",
    [{"size": (20, 128)}, {"size": (0, 128, 128)}, {"size": "big"}, {"spacing": (3.0, 0.0, 0.5)}],
)
def test_bad_size_or_spacing_is_a_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ph.make_prostate_case(0, **kwargs)


# --------------------------------------------------------------------------- CT
def test_ct_grid_and_labels(ct: ph.PhantomCase) -> None:
    g = ct.image.geometry
    assert g.shape == ph.CT_SIZE
    assert g.spacing == (5.0, 3.0, 3.0)
    assert 0.0 < g.obliquity < 8.0
    assert ct.image.dtype == np.int16 and ct.image.meta["modality"] == "CT"
    assert set(np.unique(ct.label.array)) == {0, LIVER, RIGHT_KIDNEY, LEFT_KIDNEY, SPLEEN}
    assert 700 < _ml(ct.label, LIVER) < 2500
    for kidney in (RIGHT_KIDNEY, LEFT_KIDNEY):
        assert 50 < _ml(ct.label, kidney) < 300
    assert 80 < _ml(ct.label, SPLEEN) < 450


def test_ct_organs_sit_on_the_correct_side(ct: ph.PhantomCase) -> None:
    lab = ct.label
    x = {v: lab.index_to_world(np.argwhere(lab.array == v).mean(axis=0))[0] for v in (1, 2, 3, 4)}
    # LPS: +x is the patient's left. Liver and right kidney on the right, spleen and left kidney on the left.
    assert x[LIVER] < 0 < x[SPLEEN]
    assert x[RIGHT_KIDNEY] < 0 < x[LEFT_KIDNEY]


def test_ct_hounsfield_ranges(ct: ph.PhantomCase) -> None:
    img, lab = ct.image.array, ct.label.array
    for organ in (LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY):
        assert 20 <= np.median(img[lab == organ]) <= 200, organ
    assert np.median(img[lab == LIVER]) >= 40
    corner = img[:, :4, :4]  # outside the body
    assert corner.mean() < -950
    assert img.max() > 700  # cortical bone
    assert img.min() >= -1024
    fat = (img > -150) & (img < -50)
    assert np.count_nonzero(fat) > 0.02 * img.size


def test_ct_full_field_of_view_spacing() -> None:
    g = ph.ct_geometry(ph.ct_anatomy(0), ph.CT_FULL_SIZE)
    assert g.spacing == (2.5, 1.5, 1.5)


def test_unknown_kind_and_views_for_ct_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown phantom kind"):
        ph.make_case("mri", 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="only for the prostate"):
        ph.make_case("ct", 0, views=True)


# --------------------------------------------------------------------------- dataset
def test_written_dataset_reads_back(tmp_path: Path) -> None:
    out = ph.write_phantom_dataset(tmp_path / "ds", "prostate", n_train=2, n_test=1, seed=4, with_views=True)
    desc = read_descriptor(out)
    assert desc.channel_names == {"0": "T2"}
    assert desc.labels == {"background": 0, "PZ": 1, "TZ": 2, "DPU": 3, "AFS": 4}
    assert desc.num_training == 2 and desc.file_ending == ".nii.gz"
    train, test = list_cases(out), list_cases(out, "Ts")
    assert [c.case_id for c in train] == ["prostate_000", "prostate_001"]
    assert [c.case_id for c in test] == ["prostate_002"] and test[0].label is not None
    assert len({c.patient_id for c in train + test}) == 3

    expected = ph.make_prostate_case(ph.case_seed(4, 1), views=True)
    image = read_volume(train[1].images[0])
    label = read_volume(train[1].label)  # type: ignore[arg-type]
    image.geometry.require_same(expected.image.geometry)
    assert image.geometry.obliquity > 9.0
    assert np.array_equal(image.array, expected.image.array)
    assert np.array_equal(label.array, expected.label.array)

    views = json.loads((out / "views" / "views.json").read_text())
    entry = views["prostate_001"]
    assert entry["frame_of_reference_uid"] == expected.image.meta["frame_of_reference_uid"]
    sag = read_volume(out / entry["sagittal"])
    sag.geometry.require_same(expected.views["sagittal"][0].geometry)
    assert np.array_equal(read_volume(out / entry["coronal_label"]).array, expected.views["coronal"][1].array)
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_written_ct_dataset(tmp_path: Path) -> None:
    out = ph.write_phantom_dataset(tmp_path / "ct", "ct", n_train=1, n_test=0, size=(8, 32, 40))
    desc = read_descriptor(out)
    assert desc.channel_names == {"0": "CT"}
    assert desc.labels == {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    (case,) = list_cases(out)
    img = read_volume(case.images[0])
    assert img.shape == (8, 32, 40) and img.dtype == np.int16
    assert not (out / "imagesTs").exists() and list_cases(out, "Ts") == []


def test_dataset_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    ph.write_phantom_dataset(out, "ct", n_train=1, n_test=0, size=(4, 16, 16))
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(OutputExistsError):
        ph.write_phantom_dataset(out, "ct", n_train=2, n_test=0, size=(4, 16, 16))
    assert sorted(p.name for p in out.rglob("*")) == before
    ph.write_phantom_dataset(out, "ct", n_train=2, n_test=0, size=(4, 16, 16), overwrite=True)
    assert len(list_cases(out)) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "mri"}, "unknown phantom kind"),
        ({"n_train": 0}, "at least 1 training case"),
        ({"n_test": -1}, "at least 1 training case"),
        ({"kind": "ct", "with_views": True}, "only for the prostate"),
        ({"size": (4, 16)}, "3 positive integers"),
    ],
)
def test_dataset_config_errors_leave_nothing(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ph.write_phantom_dataset(tmp_path / "ds", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_uwmadison_phantom_is_the_competition_layout_and_imports_exactly(tmp_path: Path) -> None:
    """`phantom --kind uwmadison`: PNG slices + train.csv that `dataset import uwmadison`
    reads back to the CT phantom's organs (overlaps kept), two scans per patient, a test
    folder and a sample submission listing every test slice and class."""
    import csv

    from medseg.data.adapters.uwmadison import import_uwmadison
    from medseg.data.regions import region_masks

    size = (12, 30, 40)  # rows != columns: a transposed RLE would not fit; 9.6 mm pixels
    src = ph.write_uwmadison_phantom(tmp_path / "src", n_train=3, n_test=2, seed=4, size=size)
    names = sorted(p.name for p in (src / "train" / "case1" / "case1_day0" / "scans").iterdir())
    assert names[0] == "slice_0001_40_30_9.60_9.60.png" and len(names) == 12
    assert sorted(p.name for p in (src / "train").iterdir()) == ["case1", "case2"]
    with (src / "sample_submission.csv").open(newline="") as fh:
        sample = list(csv.DictReader(fh))
    assert len(sample) == 2 * 12 * 3 and {r["id"].split("_slice")[0] for r in sample} == {
        "case3_day0",
        "case3_day14",
    }
    result = import_uwmadison(src, tmp_path / "ds", overlaps="regions")
    desc = read_descriptor(tmp_path / "ds")
    assert desc.patients["case1_day14"] == "case1" and len(result.scans) == 3
    assert result.overlap_pixels > 0  # the spleen lies in stomach and small bowel
    for index, case_day in enumerate(["case1_day0", "case1_day14", "case2_day0"]):
        truth = ph.make_ct_case(ph.case_seed(4, index), size=size, spacing=(3.0, 9.6, 9.6)).label.array
        label = read_volume(tmp_path / "ds" / "labelsTr" / f"{case_day}.nii.gz")
        assert label.spacing == pytest.approx((3.0, 9.6, 9.6))
        masks = region_masks(label.array, list(desc.regions.values()))
        for r, name in enumerate(desc.regions):
            np.testing.assert_array_equal(masks[r], np.isin(truth, ph.UWMADISON_REGIONS[name]), err_msg=name)
