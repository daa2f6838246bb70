"""Overlay montage: display orientation, contours in label colours, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation
from scipy.spatial.transform import Rotation

from medseg.errors import GeometryError, OutputExistsError
from medseg.export.codes import segment_color
from medseg.export.overlay import (
    COMPARISON_MARGIN_IN,
    COMPARISON_PANEL_IN,
    disagreement_slice,
    display_axes,
    render_comparison_png,
    render_overlay_png,
    write_overlay,
)
from medseg.volume import Volume
from tests.export.conftest import centred_zones, ellipsoid_labels, synthetic_image


@pytest.mark.parametrize(
    ("direction", "order", "flips"),
    [
        (np.eye(3)[:, ::-1], (0, 1, 2), (True, False, False)),  # standard axial LPS
        (np.diag([-1.0, -1.0, 1.0])[:, ::-1], (0, 1, 2), (True, True, True)),  # RAS-stored array
        # PROSTATEx sagittal: rows along (0, 1, 0), columns along (0, 0, -1), slices along -x
        (np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float), (1, 2, 0), (False, False, True)),
    ],
)
def test_display_axes_for_known_orientations(direction: np.ndarray, order: tuple, flips: tuple) -> None:
    assert display_axes(direction) == (order, flips)


def test_display_axes_always_give_radiological_view() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        rot = Rotation.from_euler("xyz", rng.uniform(-40, 40, 3), degrees=True).as_matrix()
        perm = rng.permutation(3)
        direction = rot[:, perm] * rng.choice([-1.0, 1.0], 3)
        order, flips = display_axes(direction)
        shown = direction[:, list(order)] * np.where(flips, -1.0, 1.0)
        # display axis 0 runs towards inferior, 1 towards posterior, 2 towards the patient's left
        assert shown[2, 0] < 0 and shown[1, 1] > 0 and shown[0, 2] > 0


def _colour_present(png: bytes, rgb: tuple[int, int, int], tol: int = 12) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_overlay_shows_each_label_colour_on_an_oblique_volume(tmp_path: Path) -> None:
    image = synthetic_image(shape=(10, 40, 32), spacing=(3.0, 0.5, 0.5))
    label = centred_zones(image)
    path = write_overlay(image, label, tmp_path / "overlay.png", {1: "PZ", 2: "TZ", 4: "AFS"})
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = Image.open(path).size
    assert width >= 800 and height >= 400
    for value in (1, 2, 4):
        assert _colour_present(png, segment_color(value)) > 20, value
    assert _colour_present(png, segment_color(3)) == 0  # absent label is not drawn


def test_overlay_without_labels_still_renders() -> None:
    image = synthetic_image()
    png = render_overlay_png(image, image.with_array(np.zeros(image.shape, np.uint8)))
    assert Image.open(io.BytesIO(png)).size[0] >= 800


def test_mismatched_grids_and_existing_output(tmp_path: Path) -> None:
    image = synthetic_image()
    label = centred_zones(image)
    moved = Volume(label.array, label.spacing, np.add(label.origin, (1.0, 0, 0)), label.direction)
    with pytest.raises(GeometryError, match="image and label grids"):
        render_overlay_png(image, moved)
    target = tmp_path / "o.png"
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        write_overlay(image, label, target)
    assert target.read_bytes() == b"old"


def _colour_mask(png: bytes, rgb: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol


# PROSTATEx-like sagittal grid: the axial display axis is array axis 1, not 0.
SAGITTAL = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)


@pytest.mark.parametrize("direction", [None, SAGITTAL])
def test_disagreement_slice_is_an_array_index_along_the_axial_axis(direction: np.ndarray | None) -> None:
    image = synthetic_image(shape=(12, 30, 26), direction=direction)
    reference = centred_zones(image)
    order, _ = display_axes(image.direction)
    axis = order[0]
    pred = reference.array.copy()
    present = np.nonzero((reference.array > 0).any(axis=tuple(a for a in range(3) if a != axis)))[0]
    k = int(present.min()) + 1  # off-centre, so a flipped index would point elsewhere
    assert reference.shape[axis] - 1 - k != k
    index = [slice(None)] * 3
    index[axis] = k
    pred[tuple(index)] = 0
    assert disagreement_slice(reference, [image.with_array(pred)]) == k
    # No disagreement: the slice of largest reference area.
    areas = (reference.array > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    assert areas[disagreement_slice(reference, [reference])] == areas.max()
    # More false positives on a slice the reference misses than errors where it lies: the
    # slice shown is still one of the reference's (false positives alone compare with nothing).
    outside = int(np.nonzero(areas == 0)[0][-1])
    index[axis] = outside
    pred[tuple(index)] = 1
    assert (pred != reference.array).sum(axis=tuple(a for a in range(3) if a != axis)).argmax() == outside
    assert disagreement_slice(reference, [image.with_array(pred)]) == k
    assert disagreement_slice(image.with_array(np.zeros_like(pred)), [image.with_array(pred)]) == outside


def _two_blobs(image: Volume) -> Volume:
    """Label 1 left and label 2 right, apart: each outline has one colour only."""
    centre = image.index_to_world((np.asarray(image.shape) - 1) / 2.0)
    ext = np.asarray(image.shape) * np.asarray(image.spacing)
    r = min(ext[1], ext[2]) / 6
    axes = (r, r, 0.3 * ext[0])
    step = image.direction[:, 2] * 1.6 * r  # along the array's x axis
    return ellipsoid_labels(image, {1: (centre - step, axes), 2: (centre + step, axes)})


def test_comparison_png_shows_a_class_mix_up() -> None:
    """Right outline, wrong classes: the prediction's dashes on label 1's reference outline
    are label 2's colour, so the picture differs from the one of a correct prediction."""
    image = synthetic_image(shape=(10, 40, 48), spacing=(3.0, 0.5, 0.5))
    reference = _two_blobs(image)
    swapped = reference.array.copy()
    swapped[reference.array == 1], swapped[reference.array == 2] = 2, 1
    k = disagreement_slice(reference, [reference.with_array(swapped)])

    def render(pred: np.ndarray) -> bytes:
        return render_comparison_png(reference, {"p": reference.with_array(pred)}, image, slice_index=k)

    correct, mixed = render(reference.array), render(swapped)
    c1, c2 = segment_color(1), segment_color(2)
    outline1 = binary_dilation(_colour_mask(correct, c1), iterations=2)  # label 1's outline
    assert outline1.sum() > 100
    # A correct prediction: label 1's outline carries label 1's colour only.
    assert (_colour_mask(correct, c2) & outline1).sum() == 0
    # Swapped: label 2's dashes run along it (and label 1's along label 2's outline).
    assert (_colour_mask(mixed, c2) & outline1).sum() > 50
    outline2 = binary_dilation(_colour_mask(correct, c2), iterations=2)
    assert (_colour_mask(mixed, c1) & outline2).sum() > 50
    assert (_colour_mask(correct, c1) & outline2).sum() == 0


def test_comparison_png_draws_reference_and_prediction_contours_apart() -> None:
    image = synthetic_image(shape=(10, 40, 32), spacing=(3.0, 0.5, 0.5))
    reference = centred_zones(image)
    shifted = reference.with_array(np.roll(reference.array, 6, axis=2))
    png = render_comparison_png(
        reference, {"shifted": shifted, "same": reference}, image, {1: "PZ", 2: "TZ", 4: "AFS"}
    )
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (
        round(2 * COMPARISON_PANEL_IN * 100),
        round((COMPARISON_PANEL_IN + COMPARISON_MARGIN_IN) * 100),
    )
    k = disagreement_slice(reference, [shifted])
    alone = {
        name: render_comparison_png(reference, {"p": pred}, image, slice_index=k)
        for name, pred in (("same", reference), ("shifted", shifted))
    }
    c1 = segment_color(1)
    same, moved = (_colour_mask(alone[n], c1)[:-60] for n in ("same", "shifted"))  # above the legend
    assert same.sum() > 100
    # Shifted by 6 voxels: many of label 1's pixels (its thin dashed outline) lie away from
    # its reference outline, which is all that a prediction equal to the reference shows.
    away = (moved & ~binary_dilation(same, iterations=3)).sum()
    assert away > 0.15 * same.sum()


def test_comparison_png_without_image_and_bad_grids() -> None:
    image = synthetic_image()
    reference = centred_zones(image)
    png = render_comparison_png(reference, {"p": reference.with_array(np.roll(reference.array, 3, axis=1))})
    assert Image.open(io.BytesIO(png)).size == (
        round(COMPARISON_PANEL_IN * 100),
        round((COMPARISON_PANEL_IN + COMPARISON_MARGIN_IN) * 100),
    )
    for value in (1, 2, 4):  # each class in its label colour, drawn on light grey
        assert _colour_mask(png, segment_color(value)).sum() > 20, value
    grey = _colour_mask(png, (237, 237, 237), tol=3)[:-60]
    assert grey.sum() > 0.3 * grey.size
    moved = Volume(
        reference.array, reference.spacing, np.add(reference.origin, (1.0, 0, 0)), reference.direction
    )
    with pytest.raises(GeometryError, match="prediction 'p' and reference grids"):
        render_comparison_png(reference, {"p": moved})
    with pytest.raises(GeometryError, match="image and reference grids"):
        render_comparison_png(reference, {"p": reference}, moved)


def test_a_one_slice_image_claims_no_radiological_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2D image (an ISBI EM PNG read as a one-slice volume) is titled 'image', not 'axial';
    a volume's montage keeps its plane and slice index."""
    import medseg.export.overlay as overlay

    titles: list[str] = []
    draw = overlay._draw
    monkeypatch.setattr(overlay, "_draw", lambda *a, **k: (titles.append(a[6]), draw(*a, **k))[1])
    flat = np.zeros((1, 24, 20), np.uint8)
    flat[0, 6:14, 5:12] = 1
    image = Volume(np.random.default_rng(0).random(flat.shape).astype(np.float32), spacing=(1.0, 0.5, 0.5))
    render_overlay_png(image, image.with_array(flat))
    assert titles == ["image"]
    titles.clear()
    render_comparison_png(image.with_array(flat), {"otsu": image.with_array(np.roll(flat, 2, axis=2))}, image)
    assert titles == ["otsu\nimage"]
    titles.clear()
    thick = np.repeat(flat, 3, axis=0)
    volume = Volume(np.random.default_rng(0).random(thick.shape).astype(np.float32))
    render_overlay_png(volume, volume.with_array(thick), n_axial=1)
    assert titles[0].startswith("axial, z = ")
