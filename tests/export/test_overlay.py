"""Overlay montage: display orientation, contours in label colours, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from medseg.errors import GeometryError, OutputExistsError
from medseg.export.codes import segment_color
from medseg.export.overlay import display_axes, render_overlay_png, write_overlay
from medseg.volume import Volume
from tests.export.conftest import centred_zones, synthetic_image


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
