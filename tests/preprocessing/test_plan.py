from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.preprocessing.fingerprint import Fingerprint, compute_fingerprint
from medseg.preprocessing.plan import (
    ChannelNormalization,
    Plan,
    expected_modality,
    plan_from_fingerprint,
    pooling_product,
    pooling_schedule,
    target_spacing_from,
)
from tests.preprocessing.conftest import write_dataset


def test_fingerprint_statistics(toy_dataset: Path, tmp_path: Path) -> None:
    fp = compute_fingerprint(toy_dataset, workers=1)
    assert len(fp.cases) == 4
    assert fp.cases[0].spacing == pytest.approx((3.0, 0.8, 0.8))
    # the zero border of 2 rows is cropped away
    assert fp.cases[0].cropped_shape == (10, 38, 36)
    # foreground intensities: 300 + 60 (outer) or + 120 (inner), noise 5
    assert 340 < fp.channels[0].mean < 420
    assert fp.channels[0].percentile_00_5 < fp.channels[0].percentile_99_5
    path = fp.save(tmp_path / "fp.json")
    assert Fingerprint.load(path) == fp


def test_fingerprint_parallel_equals_serial(toy_dataset: Path) -> None:
    assert compute_fingerprint(toy_dataset, workers=2) == compute_fingerprint(toy_dataset, workers=1)


def test_target_spacing_anisotropy_rule() -> None:
    iso = np.array([[1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [0.8, 1.0, 1.0]])
    assert target_spacing_from(iso) == pytest.approx((1.0, 1.0, 1.0))
    aniso = np.array([[3.0, 0.5, 0.5], [3.6, 0.5, 0.5], [6.0, 0.6, 0.6], [4.0, 0.5, 0.5]])
    tz, ty, tx = target_spacing_from(aniso)
    assert tz == pytest.approx(np.percentile(aniso[:, 0], 10))
    assert (ty, tx) == pytest.approx((0.5, 0.5))


def test_pooling_schedule_thick_slices() -> None:
    pools, kernels = pooling_schedule((21, 128, 128), (3.0, 0.5, 0.5))
    # thick slices: first two levels pool in-plane only, with in-plane kernels
    assert pools[0] == (1, 2, 2) and pools[1] == (1, 2, 2)
    assert kernels[0] == (1, 3, 3)
    assert len(kernels) == len(pools) + 1
    iso, _ = pooling_schedule((32, 48, 32), (1.0, 1.0, 1.0))
    assert iso[0] == (2, 2, 2)
    assert pooling_product(iso) == (8, 8, 8)  # stops before an axis drops below 4 voxels
    flat, k2 = pooling_schedule((1, 256, 256), (7.7, 1.25, 1.25), spatial_dims=2)
    assert all(p[0] == 1 for p in flat) and all(k[0] == 1 for k in k2)


def test_plan_from_fingerprint_is_valid_and_round_trips(toy_dataset: Path, tmp_path: Path) -> None:
    fp = compute_fingerprint(toy_dataset, workers=1)
    for config in ("3d", "2d", "2.5d"):
        plan = plan_from_fingerprint(fp, config)
        mult = pooling_product(plan.network.pooling)
        assert all(p % m == 0 for p, m in zip(plan.patch_size, mult, strict=True))
        assert plan.normalization[0].scheme == "zscore"
        assert plan.num_classes == 3
        path = plan.save(tmp_path / f"{config}.json")
        assert Plan.load(path) == plan
    assert plan_from_fingerprint(fp, "2.5d").in_channels == 5
    assert plan_from_fingerprint(fp, "2d").patch_size[0] == 1


def test_ct_normalisation_from_dataset_stats(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ct", ct=True)
    plan = plan_from_fingerprint(compute_fingerprint(root, workers=1), "3d")
    norm = plan.normalization[0]
    assert norm.scheme == "ct" and norm.clip_low < norm.clip_high and norm.std > 0


@pytest.mark.parametrize(
    ("name", "scheme", "modality"),
    [
        ("CT", "ct", "CT"),
        ("T2", "ct", "CT"),  # the CT normalisation decides, whatever the name
        ("ct", "zscore", "CT"),
        ("T2", "zscore", "MR"),
        ("MRI", "zscore", "MR"),
        ("t2w_tra", "zscore", "MR"),
        ("ADC", "zscore", "MR"),
        ("PET", "zscore", "PT"),
        ("image", "zscore", None),
        ("nonCT-ish", "none", None),
    ],
)
def test_the_modality_a_model_was_trained_on_comes_from_its_plan(
    toy_dataset: Path, name: str, scheme: str, modality: str | None
) -> None:
    """pacs segment refuses a series of another modality than the model's; the model's is read
    from its plan: CT normalisation, else the channel name (dataset.json channel_names)."""
    plan = plan_from_fingerprint(compute_fingerprint(toy_dataset, workers=1), "3d")
    plan = plan.with_overrides({"channel_names": [name], "normalization": [{"scheme": scheme}]})
    assert isinstance(plan.normalization[0], ChannelNormalization)
    found = expected_modality(plan)
    assert (found[0] if found else None) == modality
    if found:
        assert f"'{name}'" in found[1]


def test_exercise_overrides(toy_dataset: Path) -> None:
    plan = plan_from_fingerprint(compute_fingerprint(toy_dataset, workers=1), "3d")
    ex = plan.with_overrides({"target_spacing": [3.0, 0.5, 0.5], "patch_size": [21, 128, 128]})
    assert ex.patch_size == (21, 128, 128)
    assert ex.target_spacing == (3.0, 0.5, 0.5)
    # 21 slices are never pooled along z; in-plane pooled
    assert all(p[0] == 1 for p in ex.network.pooling)
    assert pooling_product(ex.network.pooling)[1] >= 16


@pytest.mark.parametrize(
    "network",
    [
        {"options": {"residual_encoder": True}},
        {"name": "unet"},
        {"base_features": 8, "deep_supervision": True},
    ],
)
def test_network_settings_keep_the_pooling_of_the_patch(
    toy_dataset: Path, network: dict[str, object]
) -> None:
    """A --config naming network options (README: "network": {"options": ...}) or `plan --network`
    beside --patch / --spacing: the pooling is still derived for the new patch and spacing (it
    kept the dataset's default plan's, for another patch and spacing)."""
    plan = plan_from_fingerprint(compute_fingerprint(toy_dataset, workers=1), "3d")
    change = {"target_spacing": [3.0, 0.5, 0.5], "patch_size": [21, 128, 128]}
    alone = plan.with_overrides(change)
    both = plan.with_overrides({**change, "network": network})
    assert both.network.pooling == alone.network.pooling and both.network.kernels == alone.network.kernels
    for key, value in network.items():
        assert getattr(both.network, key) == value
    # pooling given explicitly is kept as given
    given = {"pooling": [[1, 2, 2], [1, 2, 2]], "kernels": [[1, 3, 3], [1, 3, 3], [1, 3, 3]]}
    explicit = plan.with_overrides({**change, "network": {**network, **given}})
    assert [list(p) for p in explicit.network.pooling] == given["pooling"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"learning_rate": 1}, "unknown key"),
        ({"patch_size": [1, 2]}, "expected 3 values"),
        ({"configuration": "4d"}, "expected one of"),
        ({"batch_size": "two"}, "expected an integer"),
        ({"schema_version": 99}, "schema_version"),
        ({"target_spacing": [0, 1, 1]}, "positive"),
        ({"slab_step": 2}, "needs a 2.5D slab"),
        ({"slab_step": 0}, "slab_step must be >= 1"),
    ],
)
def test_bad_plans_are_rejected(toy_dataset: Path, tmp_path: Path, change: dict, match: str) -> None:
    plan = plan_from_fingerprint(compute_fingerprint(toy_dataset, workers=1), "3d")
    data = json.loads(plan.to_json())
    data.update(change)
    with pytest.raises(ConfigError, match=match):
        Plan.from_mapping(data)


def test_patch_not_divisible_by_pooling_is_rejected(toy_dataset: Path) -> None:
    plan = plan_from_fingerprint(compute_fingerprint(toy_dataset, workers=1), "3d")
    data = json.loads(plan.to_json())
    data["patch_size"] = [7, 33, 33]
    with pytest.raises(ConfigError, match="not divisible"):
        Plan.from_mapping(data)


def test_fingerprint_names_a_label_off_the_image_grid(toy_dataset: Path) -> None:
    from medseg.errors import InputError
    from medseg.io import read_volume, write_volume
    from medseg.volume import Volume

    path = toy_dataset / "labelsTr" / "case_002.nii.gz"
    lab = read_volume(path)
    moved = Volume(lab.array, lab.spacing, np.asarray(lab.origin) + 5.0, lab.direction)
    write_volume(moved, path, overwrite=True)
    with pytest.raises(
        InputError, match=r"case_002\.nii\.gz: label of case 'case_002' is not on the image grid"
    ):
        compute_fingerprint(toy_dataset, workers=1)


def test_spacing_override_rescales_the_median_shape(toy_dataset: Path) -> None:
    plan = plan_from_fingerprint(compute_fingerprint(toy_dataset, workers=1), "3d")
    finer = plan.with_overrides({"target_spacing": [plan.target_spacing[0] / 2, *plan.target_spacing[1:]]})
    assert finer.median_shape[0] == 2 * plan.median_shape[0]
    assert finer.median_shape[1:] == plan.median_shape[1:]


def test_slab_step_is_written_only_when_used(toy_dataset: Path) -> None:
    """A plan without a slab step reads the same as before slab steps existed: earlier medseg
    versions load it and its preprocessing cache key (a hash of the JSON) is unchanged."""
    fingerprint = compute_fingerprint(toy_dataset, workers=1)
    plain = plan_from_fingerprint(fingerprint, "2.5d", slab_slices=3)
    assert "slab_step" not in json.loads(plain.to_json())
    assert Plan.from_mapping(json.loads(plain.to_json())) == plain
    stepped = plan_from_fingerprint(fingerprint, "2.5d", slab_slices=3, slab_step=2)
    assert json.loads(stepped.to_json())["slab_step"] == 2
    assert Plan.from_mapping(json.loads(stepped.to_json())) == stepped
    assert plan_from_fingerprint(fingerprint, "3d", slab_step=2).slab_step == 1  # 2.5D only


def test_plan_warns_about_a_patch_that_loses_pooling_and_reversed_spacing(
    toy_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A patch that does not halve evenly costs the network its pooling levels, and a spacing
    given Z Y X to an X Y Z option resamples the slices finely: both are said, not silent."""
    from medseg.preprocessing.pipeline import plan_dataset

    with caplog.at_level("WARNING"):
        plan, _ = plan_dataset(toy_dataset, "3d", overrides={"patch_size": [8, 31, 32]}, workers=1)
    assert pooling_product(plan.network.pooling)[1] == 1
    assert "patch y = 31 allows 0 of the 2 pooling levels" in caplog.text and "e.g. 32" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        plan_dataset(toy_dataset, "3d", overrides={"patch_size": [8, 32, 32]}, workers=1, overwrite=True)
        plan_dataset(
            toy_dataset, "3d", overrides={"target_spacing": [3.0, 1.0, 1.0]}, workers=1, overwrite=True
        )
    assert "pooling levels" not in caplog.text and "reversed" not in caplog.text
    # the toy data is 3 mm slices of 0.8 mm pixels: x 3, y 0.8, z 0.8 is the reversed order
    with caplog.at_level("WARNING"):
        plan_dataset(
            toy_dataset, "3d", overrides={"target_spacing": [0.8, 0.8, 3.0]}, workers=1, overwrite=True
        )
    assert "did you mean --spacing 0.8 0.8 3?" in caplog.text
    with pytest.raises(ConfigError, match="target_spacing must be positive"):
        plan_dataset(
            toy_dataset, "3d", overrides={"target_spacing": [0, 0.5, 0.5]}, workers=1, overwrite=True
        )


def test_regions_travel_in_the_plan_and_leave_plans_without_them_unchanged(toy_dataset: Path) -> None:
    import dataclasses

    from medseg.preprocessing.pipeline import plan_dataset, plan_hash

    plain, _ = plan_dataset(toy_dataset, "3d", workers=1)
    text = plain.to_json()
    assert "regions" not in json.loads(text)  # older plans: the same JSON, the same cache key
    assert plain.num_outputs == 3 and plain.output_names == ["outer", "inner"]
    desc = json.loads((toy_dataset / "dataset.json").read_text())
    desc["regions"] = {"whole": [1, 2], "inner_only": [2]}
    (toy_dataset / "dataset.json").write_text(json.dumps(desc))
    regional, path = plan_dataset(toy_dataset, "3d", workers=1, overwrite=True)
    assert regional.regions == {"whole": (1, 2), "inner_only": (2,)}
    assert regional.regions_class_order == (1, 2)
    assert regional.num_outputs == 2 and regional.output_names == ["whole", "inner_only"]
    assert Plan.load(path) == regional
    # the regions do not change how cases are preprocessed: the cache is shared
    assert plan_hash(regional) == plan_hash(plain)
    assert dataclasses.replace(regional, regions={}, regions_class_order=()).to_json() == text
    with pytest.raises(ConfigError, match="plan regions: region 'x' names label value"):
        dataclasses.replace(regional, regions={"x": (7,)}, regions_class_order=(1,))
    # dataset.json refuses a label in no region; a plan saved before that rule still loads
    older = dataclasses.replace(regional, regions={"inner_only": (2,)}, regions_class_order=(2,))
    assert Plan.load(older.save(path)) == older
