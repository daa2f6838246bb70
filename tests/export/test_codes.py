"""Segment names -> SNOMED CT codes and colours."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError, InputError
from medseg.export.codes import segment_code, segment_color, segments_for_label
from medseg.volume import Volume


@pytest.mark.parametrize(
    ("name", "code", "modifier"),
    [
        ("PZ", "279706003", None),
        ("peripheral zone", "279706003", None),
        ("TZ", "399384005", None),
        ("DPU", "71553001", None),  # prostatic urethra: no SNOMED concept for the distal part
        ("AFS", "717025007", None),
        ("prostate", "41216001", None),
        ("urethra", "13648007", None),
        ("liver", "10200004", None),
        ("Spleen", "78961009", None),
        ("right kidney", "64033007", "24028007"),
        ("kidney_left", "64033007", "7771000"),
        ("Kidney L", "64033007", "7771000"),
        ("pancreas", "15776009", None),
        ("gallbladder", "28231008", None),
        ("left adrenal gland", "23451007", "7771000"),
    ],
)
def test_known_names_get_snomed_codes(name: str, code: str, modifier: str | None) -> None:
    found = segment_code(name)
    assert found.known
    assert (found.type.scheme_designator, found.type.value) == ("SCT", code)
    assert found.category.value == "91723000"  # Anatomical Structure (CID 7150)
    assert (found.modifier.value if found.modifier else None) == modifier


def test_unknown_name_gets_generic_tissue_code() -> None:
    found = segment_code("tumour bed 3")
    assert not found.known
    assert found.type.value == "85756007" and found.category.value == "85756007"


def test_segments_follow_present_values_and_names() -> None:
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    arr[0, 0, 0] = 1
    arr[1, 2, 3] = 3
    label = Volume(arr)
    segs = segments_for_label(label, {1: "liver", 2: "right kidney", 3: "spleen"})
    assert [(s.value, s.name) for s in segs] == [(1, "liver"), (3, "spleen")]
    with_absent = segments_for_label(label, {1: "liver", 2: "right kidney", 3: "spleen"}, include_absent=True)
    assert [s.value for s in with_absent] == [1, 2, 3]
    assert [s.name for s in segments_for_label(label)] == ["label 1", "label 3"]
    assert segs[0].color == segment_color(1) != segment_color(3)


def test_custom_colours_and_bad_colour() -> None:
    label = Volume(np.ones((1, 2, 2), dtype=np.uint8))
    assert segments_for_label(label, colors={1: (1, 2, 3)})[0].color == (1, 2, 3)
    with pytest.raises(ConfigError, match="colour"):
        segments_for_label(label, colors={1: (300, 0, 0)})


def test_present_value_without_name_is_an_error() -> None:
    label = Volume(np.array([[[0, 1, 2]]], dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"\[2\]"):
        segments_for_label(label, {1: "PZ"})


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[[0.0, 0.5]]]), "non-integer"),
        (np.array([[[0, -1]]], dtype=np.int16), "negative"),
    ],
)
def test_label_map_values_are_checked(array: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        segments_for_label(Volume(array))


def test_float_label_map_with_integer_values_is_accepted() -> None:
    assert [s.value for s in segments_for_label(Volume(np.array([[[0.0, 2.0]]])))] == [2]


def test_colours_are_distinct_for_many_labels() -> None:
    colours = {segment_color(v) for v in range(1, 40)}
    assert len(colours) == 39


def test_package_exports_resolve_lazily() -> None:
    import medseg.export as export
    from medseg.export import report

    assert export.write_report is report.write_report
    # every name resolves: functions and classes, and the upper-case constants (ALGORITHM_TYPES)
    assert all(callable(getattr(export, name)) or name.isupper() for name in export.__all__)
    with pytest.raises(AttributeError):
        _ = export.no_such_name
