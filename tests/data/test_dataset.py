"""The dataset format: dataset.json reading, list_cases, and the checked, atomic DatasetWriter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.data.dataset import (
    CHUNKS_KEY,
    IMPORT_KEY,
    DatasetDescriptor,
    create_dataset,
    import_each,
    label_array,
    list_cases,
    parse_labels,
    read_descriptor,
    source_files,
)
from medseg.errors import ConfigError, GeometryError, InputError, OutputExistsError
from medseg.io.itk import read_itk
from medseg.volume import Volume
from tests.conftest import make_oblique_volume

LABELS = {"background": 0, "organ": 1, "lesion": 3}


def _case(seed: int = 0) -> tuple[Volume, Volume]:
    image = make_oblique_volume(seed=seed)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[4:8, 5:12, 3:10] = 1
    label[5:7, 7:9, 5:7] = 3
    return image, image.with_array(label)


def _write(out: Path, source: Path, n: int = 2, **options: object) -> None:
    with create_dataset(out, source=source, channel_names=["CT"], labels=LABELS, **options) as w:  # type: ignore[arg-type]
        for i in range(n):
            image, label = _case(i)
            w.add_case(f"case_{i:03d}", [image], label, patient_id=f"pat{i // 2}", source=f"src{i}")


def test_written_dataset_reads_back_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(tmp_path / "ds", src, n=3)
    desc = read_descriptor(tmp_path / "ds")
    assert desc.labels == LABELS and desc.num_training == 3 and desc.modalities == ["CT"]
    assert desc.patients == {"case_000": "pat0", "case_001": "pat0", "case_002": "pat1"}
    cases = list_cases(tmp_path / "ds")
    assert [c.case_id for c in cases] == ["case_000", "case_001", "case_002"]
    assert [c.group for c in cases] == ["pat0", "pat0", "pat1"]
    assert cases[0].images[0].name == "case_000_0000.nii.gz"
    image, label = _case(0)
    back = read_itk(cases[0].images[0])
    np.testing.assert_array_equal(back.array, image.array)
    back.geometry.require_same(image.geometry, origin_atol=1e-3, direction_atol=1e-5)
    lab = read_itk(cases[0].label)  # type: ignore[arg-type]
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab.array, label.array)
    assert {p.name for p in tmp_path.iterdir()} == {"src", "ds"}  # no temp folder left


def test_msd_style_dataset_json_is_understood() -> None:
    desc = DatasetDescriptor.from_json(
        {
            "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "PZ", "2": "TZ"},
            "numTraining": 2,
        }
    )
    assert desc.modalities == ["T2", "ADC"] and desc.labels == {"background": 0, "PZ": 1, "TZ": 2}


def test_failed_import_leaves_no_output_and_keeps_old_one(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "ds"
    _write(out, src, n=1)
    before = (out / "dataset.json").read_bytes()
    image, label = _case()
    with (
        pytest.raises(InputError, match="undeclared"),
        create_dataset(out, source=src, overwrite=True, channel_names=["CT"], labels=LABELS) as w,
    ):
        w.add_case("good", [image], label, source="good")
        w.add_case("bad", [image], label.with_array(label.array * 2), source="bad.nii.gz")
    assert (out / "dataset.json").read_bytes() == before  # old output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]  # no temp folder left


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(tmp_path / "ds", src, n=1)
    with pytest.raises(OutputExistsError):
        _write(tmp_path / "ds", src, n=1)
    _write(tmp_path / "ds", src, n=2, overwrite=True)
    assert read_descriptor(tmp_path / "ds").num_training == 2


@pytest.mark.parametrize("out_rel", [".", "inside", ".."])
def test_output_overlapping_the_source_is_refused(tmp_path: Path, out_rel: str) -> None:
    src = tmp_path / "a" / "src"
    src.mkdir(parents=True)
    with pytest.raises(InputError, match="overlaps the source"):
        _write(src / out_rel, src)


def test_case_errors_name_the_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    image, label = _case()
    other_grid = make_oblique_volume(origin=(0.0, 0.0, 0.0))
    nan_image = image.copy()
    nan_image.array[0, 0, 0] = np.nan
    bad_cases = [
        ("dup", [image], label, InputError, "duplicate case id 'DUP'"),
        ("x", [image, image], label, InputError, "wrong number of channels"),
        (
            "x",
            [image],
            other_grid.with_array(label.array),
            GeometryError,
            "lab.nii.gz: label grid does not match",
        ),
        ("x", [nan_image], label, InputError, "NaN or Inf"),
        ("x", [image], label.with_array(label.array.astype(np.float32) + 0.5), InputError, "non-integer"),
        (
            "x",
            [image],
            label.with_array(label.array + 4),
            InputError,
            "lab.nii.gz: holds undeclared label values",
        ),
        ("x", [image], None, InputError, "has no label"),
        ("a/b", [image], label, InputError, "cannot be used in file names"),
    ]
    for case_id, images, lab, err, match in bad_cases:
        with (
            pytest.raises(err, match=match),
            create_dataset(tmp_path / "ds", source=src, channel_names=["CT"], labels=LABELS) as w,
        ):
            w.add_case("dup", [image], label, source="first.nii.gz")
            w.add_case(case_id.upper(), images, lab, source="img.nii.gz", label_source="lab.nii.gz")
        assert not (tmp_path / "ds").exists()


def test_empty_import_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with (
        pytest.raises(InputError, match="no training case"),
        create_dataset(tmp_path / "ds", source=src, channel_names=["CT"], labels=LABELS),
    ):
        pass
    assert not (tmp_path / "ds").exists()


def test_skip_invalid_lists_skipped_cases_with_relative_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "DOE^JANE" / "src"  # exports name folders after the patient
    src.mkdir(parents=True)
    image, label = _case()
    items = ["good", "bad"]

    def add(name: str) -> None:
        lab = label if name == "good" else label.with_array(label.array + 7)
        w.add_case(name, [image], lab, source=src / f"{name}.nii.gz", label_source=src / f"{name}_seg.nii.gz")

    with (
        caplog.at_level("DEBUG", logger="medseg.data.dataset"),
        create_dataset(tmp_path / "ds", source=src, channel_names=["CT"], labels=LABELS) as w,
    ):
        import_each(w, items, add, describe=lambda n: src / f"{n}.nii.gz", skip_invalid=True, progress=False)
    record = read_descriptor(tmp_path / "ds").extra[IMPORT_KEY]
    assert record["skipped"][0]["source"] == "bad.nii.gz"
    assert "undeclared label values" in record["skipped"][0]["reason"]
    assert str(tmp_path) not in json.dumps(record)
    assert "skipped bad.nii.gz: " in caplog.text and "undeclared label values" in caplog.text
    assert "DOE^JANE" not in caplog.text and "DOE^JANE" not in json.dumps(record)
    assert [c.case_id for c in list_cases(tmp_path / "ds")] == ["good"]


def test_chunked_cases_share_their_patient(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(tmp_path / "ds", src, n=1, chunk=5, chunk_overlap=1)
    desc = read_descriptor(tmp_path / "ds")
    # 12 slices, chunks of 5 with overlap 1: starts 0, 4, then the last moved back to 7
    assert desc.extra[CHUNKS_KEY] == {
        "case_000_chunk000": {"case": "case_000", "start": 0, "stop": 5},
        "case_000_chunk001": {"case": "case_000", "start": 4, "stop": 9},
        "case_000_chunk002": {"case": "case_000", "start": 7, "stop": 12},
    }
    assert set(desc.patients.values()) == {"pat0"} and desc.num_training == 3
    image, _ = _case(0)
    chunk = read_itk(tmp_path / "ds" / "imagesTr" / "case_000_chunk001_0000.nii.gz")
    np.testing.assert_array_equal(chunk.array, image.array[4:9])
    np.testing.assert_allclose(chunk.index_to_world([0, 3, 2]), image.index_to_world([4, 3, 2]), atol=1e-3)


def test_bad_chunk_options_fail_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ConfigError, match="overlap"):
        _write(tmp_path / "ds", src, chunk=4, chunk_overlap=4)
    assert not (tmp_path / "ds").exists()


def test_label_array_and_parse_labels() -> None:
    vol = make_oblique_volume()
    assert label_array(vol.with_array(np.full(vol.shape, 2.0)), "x").dtype == np.uint8
    assert label_array(vol.with_array(np.full(vol.shape, 300, np.int32)), "x").dtype == np.uint16
    with pytest.raises(InputError, match="out of range"):
        label_array(vol.with_array(np.full(vol.shape, -1, np.int16)), "x")
    assert parse_labels("background=0, liver=1,spleen=4") == {"background": 0, "liver": 1, "spleen": 4}
    with pytest.raises(InputError, match="background"):
        parse_labels("liver=1")
    with pytest.raises(InputError, match="unique"):
        parse_labels("background=0,a=1,b=1")
    with pytest.raises(InputError, match="cannot parse"):
        parse_labels("background")


def test_source_files_skips_and_records_macos_forks(tmp_path: Path) -> None:
    for name in ["b.nii.gz", "a.nii.gz", "._a.nii.gz", ".hidden.nii.gz", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [f.name for f in source_files(tmp_path, (".nii.gz",))] == ["a.nii.gz", "b.nii.gz"]
    with pytest.raises(InputError, match="not found"):
        source_files(tmp_path / "nope", (".nii.gz",))


def test_list_cases_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(tmp_path / "ds", src, n=1)
    (tmp_path / "ds" / "labelsTr" / "case_000.nii.gz").unlink()
    with pytest.raises(InputError, match="label of case 'case_000' is missing"):
        list_cases(tmp_path / "ds")
    with pytest.raises(InputError, match="not found"):
        read_descriptor(src)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"numTraining": "ten"}, r"'numTraining' must be a whole number >= 0; found 'ten'"),
        ({"numTraining": -1}, "'numTraining' must be a whole number"),
        ({"patients": ["p1"]}, "'patients' must map case ids to patient ids; found list"),
        ({"channel_names": {"T2": "0"}}, r"'channel_names' keys must be the channel numbers"),
        ({"channel_names": {"0": "T2", "2": "ADC"}}, r"keys must be the channel numbers.*\['0', '2'\]"),
        ({"file_ending": 7}, "'file_ending' must be a suffix"),
    ],
)
def test_bad_dataset_json_values_are_input_errors(tmp_path: Path, change: dict, message: str) -> None:
    data = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "a": 1}, "numTraining": 1, **change}
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"dataset\.json: .*{message}"):
        read_descriptor(tmp_path)


def test_unreadable_dataset_json_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InputError, match=r"dataset\.json: is not valid JSON"):
        read_descriptor(tmp_path)
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"dataset\.json: is not a JSON object"):
        read_descriptor(tmp_path)


def test_label_within_round_off_is_written_on_the_image_grid(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    image, label = _case()
    nudged = Volume(label.array, label.spacing, np.add(label.origin, 4e-4), label.direction)  # float32-ish
    with create_dataset(tmp_path / "ds", source=src, channel_names=["CT"], labels=LABELS) as w:
        w.add_case("c", [image], nudged)
    (case,) = list_cases(tmp_path / "ds")
    img_back, lab_back = read_itk(case.images[0]), read_itk(case.label)  # type: ignore[arg-type]
    assert img_back.origin == lab_back.origin and img_back.spacing == lab_back.spacing
    np.testing.assert_array_equal(img_back.direction, lab_back.direction)
    np.testing.assert_array_equal(lab_back.array, label.array)
