"""Volumes table: hand-checked numbers, tight world extent on oblique grids, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import OutputExistsError
from medseg.export.volumes import (
    SourceUids,
    label_statistics,
    volumes_to_csv,
    write_cohort_volumes,
    write_volumes_csv,
    write_volumes_json,
)
from medseg.volume import Volume
from tests.conftest import oblique_direction


def _block_label(direction: np.ndarray | None = None) -> Volume:
    arr = np.zeros((5, 6, 7), dtype=np.uint8)
    arr[1:3, 2:5, 3:7] = 2  # 2 x 3 x 4 = 24 voxels
    arr[4, 0, 0] = 5
    return Volume(arr, (2.0, 1.0, 0.5), (10.0, -20.0, 30.0), direction)


def test_hand_checked_values_on_an_axis_aligned_grid() -> None:
    stats = label_statistics(_block_label(), {2: "liver", 3: "spleen", 5: "dot"})
    liver, spleen, dot = stats
    assert (liver.value, liver.name, liver.voxel_count) == (2, "liver", 24)
    assert liver.volume_ml == pytest.approx(24 * 1.0 / 1000)  # voxel = 2 x 1 x 0.5 mm^3
    # Identity LPS grid: x = 30 + 0.5 i, y = -20 + 1 j, z = 10 + 2 k (origin given as x, y, z).
    assert liver.centroid_lps == pytest.approx((10 + 0.5 * 4.5, -20 + 3.0, 30 + 2 * 1.5))
    assert liver.extent_min_lps == pytest.approx((10 + 0.5 * 2.5, -20 + 1.5, 30 + 2 * 0.5))
    assert liver.extent_max_lps == pytest.approx((10 + 0.5 * 6.5, -20 + 4.5, 30 + 2 * 2.5))
    assert liver.extent_size_mm == pytest.approx((2.0, 3.0, 4.0))
    assert (spleen.voxel_count, spleen.volume_ml, spleen.centroid_lps, spleen.extent_size_mm) == (
        0,
        0.0,
        None,
        None,
    )
    assert dot.extent_size_mm == pytest.approx((0.5, 1.0, 2.0))


def test_oblique_extent_is_the_tight_box_of_the_voxel_corners() -> None:
    label = _block_label(oblique_direction())
    liver = label_statistics(label)[0]
    idx = np.argwhere(label.array == 2)
    offsets = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    corners = label.index_to_world((idx[:, None] + offsets[None]).reshape(-1, 3))
    np.testing.assert_allclose(liver.extent_min_lps, corners.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(liver.extent_max_lps, corners.max(axis=0), atol=1e-9)
    np.testing.assert_allclose(liver.centroid_lps, label.index_to_world(idx.mean(axis=0)), atol=1e-9)
    assert liver.volume_ml == pytest.approx(0.024)  # rotation does not change volume


def test_csv_and_json_round_trip(tmp_path: Path) -> None:
    label = _block_label(oblique_direction())
    stats = label_statistics(label, {2: "liver", 3: "spleen", 5: "dot"})
    rows = list(csv.DictReader(io.StringIO(volumes_to_csv(stats))))
    assert [r["name"] for r in rows] == ["liver", "spleen", "dot"]
    assert float(rows[0]["volume_ml"]) == pytest.approx(0.024)
    assert float(rows[0]["centroid_x_mm"]) == pytest.approx(stats[0].centroid_lps[0], abs=0.01)
    assert rows[1]["centroid_x_mm"] == "" and rows[1]["voxel_count"] == "0"

    csv_path = write_volumes_csv(stats, tmp_path / "volumes.csv")
    assert csv_path.read_text() == volumes_to_csv(stats)
    json_path = write_volumes_json(stats, tmp_path / "volumes.json", label=label)
    doc = json.loads(json_path.read_text())
    assert doc["units"] == {"volume": "mL", "position": "mm"} and doc["coordinate_system"] == "LPS"
    assert doc["labels"][0]["voxel_count"] == 24
    assert doc["labels"][0]["extent_size_mm"] == pytest.approx(list(stats[0].extent_size_mm))
    assert doc["labels"][1]["centroid_lps"] is None
    assert doc["grid"]["shape_zyx"] == [5, 6, 7]


def test_existing_outputs_are_not_overwritten(tmp_path: Path) -> None:
    stats = label_statistics(_block_label())
    for name, writer in (("v.csv", write_volumes_csv), ("v.json", write_volumes_json)):
        target = tmp_path / name
        target.write_text("old")
        with pytest.raises(OutputExistsError):
            writer(stats, target)
        assert target.read_text() == "old"
        writer(stats, target, overwrite=True)
        assert target.read_text() != "old"


def test_cohort_table_reads_old_tables_and_tables_without_rows(tmp_path: Path) -> None:
    """Per-case tables of earlier medseg versions (no UID columns) stay readable, with empty UIDs;
    a table without rows (an empty, unnamed label map) takes its UIDs from its JSON twin."""
    label = _block_label(oblique_direction())
    stats = label_statistics(label, {2: "liver", 5: "dot"})
    source = SourceUids("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2")
    rows = list(csv.DictReader(io.StringIO(volumes_to_csv(stats, source))))
    assert {(r["study_uid"], r["series_uid"]) for r in rows} == {(source.study_uid, source.series_uid)}
    assert SourceUids.of(label) == SourceUids()  # not read from DICOM
    assert SourceUids.of(label.with_array(label.array, meta={"study_uid": "1.2", "series_uid": "1.3"})) == (
        SourceUids("1.2", "1.3")
    )
    out = tmp_path / "out"
    write_volumes_csv(stats, out / "new" / "volumes.csv", source=source)
    old_columns = [
        c for c in csv.DictReader(io.StringIO(volumes_to_csv(stats))).fieldnames or [] if "uid" not in c
    ]
    (out / "old").mkdir()
    with (out / "old" / "volumes.csv").open("w", newline="") as fh:  # as earlier medseg wrote it
        writer = csv.DictWriter(fh, old_columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    empty = label.with_array(np.zeros(label.shape, np.uint8))
    write_volumes_csv(label_statistics(empty), out / "empty" / "volumes.csv", source=source)
    write_volumes_json(label_statistics(empty), out / "empty" / "volumes.json", source=source)
    with write_cohort_volumes(out).open() as fh:
        cohort = {r["case"]: r for r in csv.DictReader(fh)}
    assert (cohort["old"]["study_uid"], cohort["old"]["series_uid"]) == ("", "")
    assert cohort["old"]["liver_ml"] == cohort["new"]["liver_ml"] == rows[0]["volume_ml"]
    for case in ("new", "empty"):
        assert (cohort[case]["study_uid"], cohort[case]["series_uid"]) == (
            source.study_uid,
            source.series_uid,
        )
    assert cohort["empty"]["liver_ml"] == "0.0000"


def test_region_statistics_count_overlapping_regions_each_in_full() -> None:
    from medseg.export.volumes import region_statistics

    image = Volume(np.zeros((2, 3, 4), np.float32), (2.0, 1.0, 0.5), (1.0, 2.0, 3.0), oblique_direction())
    a = np.zeros(image.shape, bool)
    b = np.zeros(image.shape, bool)
    a[0, :2, :] = True  # 8 voxels
    b[0, 1:, :2] = True  # 4 voxels, 2 of them shared with a
    rows = region_statistics(image, {"a": a, "b": b, "none": np.zeros(image.shape, bool)})
    assert [(r.value, r.name, r.voxel_count) for r in rows] == [(1, "a", 8), (2, "b", 4), (3, "none", 0)]
    assert rows[0].volume_ml == pytest.approx(8 * 1.0 / 1000) and rows[1].volume_ml == pytest.approx(0.004)
    assert rows[2].centroid_lps is None


def test_cohort_table_lists_cases_in_natural_order(tmp_path: Path) -> None:
    stats = label_statistics(_block_label())
    for case in ("p10", "p2", "p1"):
        write_volumes_csv(stats, tmp_path / case / "volumes.csv")
    with write_cohort_volumes(tmp_path).open() as fh:
        assert [r["case"] for r in csv.DictReader(fh)] == ["p1", "p2", "p10"]


def test_cohort_status_takes_a_failed_case_from_the_predict_summary(tmp_path: Path) -> None:
    """A case the predict summary lists as failed but whose volumes were written (only its DICOM
    outputs could not be) was shown 'ok'; it is 'partial', with its volumes. A failed case whose
    failed prediction wrote no volumes is 'failed' with empty cells, also when a volume table of
    an earlier prediction is left in its folder; other cases stay 'ok'."""
    stats = label_statistics(_block_label(), {2: "liver", 5: "dot"})
    for case in ("done", "partial", "stale"):
        write_volumes_csv(stats, tmp_path / case / "volumes.csv")
    summary = {
        "cases": [
            {"case_id": "done", "ok": True, "outputs": {"volumes": "done/volumes.csv"}},
            {
                "case_id": "partial",
                "ok": False,
                "outputs": {"nifti": "partial.nii.gz", "volumes": "partial/volumes.csv"},
                "not_written": {"dicom-seg": "cannot be referenced"},
            },
            {"case_id": "stale", "ok": False, "outputs": {}, "error": "network failed"},
            {"case_id": "gone", "ok": False, "outputs": {}, "error": "unreadable"},
        ]
    }
    (tmp_path / "predictions.json").write_text(json.dumps(summary))
    with write_cohort_volumes(tmp_path).open() as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert {c: r["status"] for c, r in rows.items()} == {
        "done": "ok",
        "gone": "failed",
        "partial": "partial",
        "stale": "failed",
    }
    assert rows["partial"]["liver_ml"] == rows["done"]["liver_ml"] != ""
    assert rows["stale"]["liver_ml"] == rows["gone"]["liver_ml"] == ""


def test_cohort_status_ok_in_one_summary_wins_over_failed_in_another(tmp_path: Path) -> None:
    """A case one SLURM shard's summary lists as failed and another's (or a re-run's) as ok is
    'ok' with its volumes, as in OUT/index.html; it was shown 'failed' with empty cells."""
    stats = label_statistics(_block_label(), {2: "liver", 5: "dot"})
    write_volumes_csv(stats, tmp_path / "redone" / "volumes.csv")
    ok = {"case_id": "redone", "ok": True, "outputs": {"volumes": "redone/volumes.csv"}}
    failed = {"case_id": "redone", "ok": False, "outputs": {}, "error": "killed"}
    (tmp_path / "predictions_shard0of2.json").write_text(json.dumps({"cases": [failed]}))
    (tmp_path / "predictions_shard1of2.json").write_text(json.dumps({"cases": [ok]}))
    with write_cohort_volumes(tmp_path).open() as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert rows["redone"]["status"] == "ok" and rows["redone"]["liver_ml"] != ""
