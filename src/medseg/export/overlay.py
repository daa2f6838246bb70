"""Overlay PNGs: label contours on the image, axial montage plus sagittal and coronal views.

Views are the volume's own acquisition planes (no resampling, so what is drawn is
exactly what was segmented), brought to the radiological display convention by
permuting and flipping array axes only: axial slices show the patient's right on the
left of the picture and anterior at the top; sagittal and coronal views have superior at
the top. Pixels are drawn with their true aspect ratio (e.g. 0.5 x 3 mm voxels in the
sagittal view). For an oblique series the titles say so, with the angle. A one-slice
2D image (PNG/TIFF) is drawn alone and titled "image", not "axial".

Rendering uses matplotlib's object API with the Agg canvas (no pyplot state, no
display), so it is safe in batch jobs and threads.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from matplotlib.axes import Axes

from medseg.export.codes import Segment, label_values, segments_for_label
from medseg.io.atomic import check_writable, write_bytes_atomic
from medseg.volume import Volume

__all__ = [
    "display_axes",
    "render_comparison_png",
    "render_overlay_png",
    "render_roi_png",
    "write_overlay",
]

log = logging.getLogger(__name__)


def display_axes(direction: NDArray[np.float64]) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Array-axis permutation and flips giving display order (superior->inferior, anterior->posterior, right->left).

    Each array axis is paired with a world axis so that the pairs are as close as possible
    (the permutation with the largest summed |cosine|, so strongly oblique grids still get
    one axis each); returns ``(order, flips)`` such that ``np.transpose(a, order)`` then
    flipping the axes in ``flips`` yields that display order.
    """
    mat = np.asarray(direction, dtype=float).reshape(3, 3)
    # world_of_axis[a] = world axis (0 x, 1 y, 2 z) shown by array axis a
    world_of_axis = max(
        itertools.permutations(range(3)), key=lambda p: sum(abs(mat[p[a], a]) for a in range(3))
    )
    # display axis 0 <- world z (S), 1 <- world y (P), 2 <- world x (L)
    order = tuple(world_of_axis.index(w) for w in (2, 1, 0))
    signs = [np.sign(mat[w, a]) for w, a in zip((2, 1, 0), order, strict=True)]
    # Flip so that display axis 0 runs towards inferior (-z), 1 towards posterior (+y), 2 towards left (+x).
    flips = (bool(signs[0] > 0), bool(signs[1] < 0), bool(signs[2] < 0))
    return (order[0], order[1], order[2]), flips


def _to_display(array: NDArray[Any], order: Sequence[int], flips: Sequence[bool]) -> NDArray[Any]:
    out = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
    return out


def _window(image: NDArray[Any], window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        return float(window[0]), float(window[1])
    values = np.asarray(image, dtype=np.float32).ravel()
    if values.size > 2_000_000:
        values = values[:: values.size // 1_000_000]
    lo, hi = np.percentile(values, [0.5, 99.5])
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def _slice_choice(mask: NDArray[np.bool_], n: int) -> list[int]:
    """``n`` evenly spaced indices along axis 0 through the foreground (or the whole volume)."""
    if mask.any():
        zs = np.nonzero(mask.any(axis=(1, 2)))[0]
        lo, hi = int(zs.min()), int(zs.max())
    else:
        lo, hi = 0, mask.shape[0] - 1
    if hi - lo + 1 <= n:
        return list(range(lo, hi + 1))
    return sorted({round(float(v)) for v in np.linspace(lo, hi, n)})


def _contour(
    ax: Axes,
    mask: NDArray[np.bool_],
    rgb: Sequence[float],
    width: float = 1.2,
    linestyle: Any = "solid",
) -> None:
    if mask.any() and min(mask.shape) >= 2:  # matplotlib's contour needs a 2 x 2 grid at least
        ax.contour(
            mask.astype(np.float32),
            levels=[0.5],
            colors=[tuple(rgb)],
            linewidths=width,
            linestyles=[linestyle],
        )


def _draw(
    ax: Axes,
    image2d: NDArray[Any],
    label2d: NDArray[Any],
    segments: Sequence[Segment],
    aspect: float,
    window: tuple[float, float],
    title: str,
    *,
    contours: bool = True,
) -> None:
    """Image, each label tinted in its colour and (with ``contours``) outlined in it."""
    ax.imshow(image2d, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
    for seg in segments:
        mask = label2d == seg.value
        if not mask.any():
            continue
        rgb = tuple(c / 255.0 for c in seg.color)
        tint = np.zeros((*mask.shape, 4), dtype=np.float32)
        tint[mask] = (*rgb, 0.25)
        ax.imshow(tint, aspect=aspect, interpolation="nearest")
        if contours:
            _contour(ax, mask, rgb)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _axial_title(k: int, n_slices: int, order: Sequence[int], flips: Sequence[bool], note: str) -> str:
    """``axial, z = 5``: the slice's array index (what `baseline --seed` and viewers' voxel
    coordinates use), not its rank in the display order. A one-slice image (a 2D PNG/TIFF
    read as a volume, an EM section) is titled ``image``: it claims no radiological plane."""
    if n_slices == 1:
        return f"image{note}"
    index = n_slices - 1 - k if flips[0] else k
    return f"axial, {'zyx'[order[0]]} = {index}{note}"


def _draw_sides(
    fig: Any,
    sides: Any,
    img: NDArray[Any],
    lab: NDArray[Any],
    centre: NDArray[Any],
    segments: Sequence[Segment],
    sp: Sequence[float],
    limits: tuple[float, float],
    note: str,
    where: Sequence[str],
) -> None:
    """The sagittal and coronal panels through ``centre`` (``where``: their array indices)."""
    _draw(
        fig.add_subplot(sides[0, 0]),
        img[:, :, centre[2]],
        lab[:, :, centre[2]],
        segments,
        sp[0] / sp[1],
        limits,
        f"sagittal, {where[0]} (anterior left){note}",
    )
    _draw(
        fig.add_subplot(sides[0, 1]),
        img[:, centre[1], :],
        lab[:, centre[1], :],
        segments,
        sp[0] / sp[2],
        limits,
        f"coronal, {where[1]} (patient right on the left){note}",
    )


def render_overlay_png(
    image: Volume,
    label: Volume,
    segment_names: Mapping[int, str] | None = None,
    *,
    colors: Mapping[int, Sequence[int]] | None = None,
    n_axial: int = 6,
    window: tuple[float, float] | None = None,
    dpi: int = 100,
) -> bytes:
    """PNG bytes: ``n_axial`` axial slices through the labels, sagittal and coronal views at their centre, legend."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image.geometry.require_same(label.geometry, "image and label grids")
    segments = segments_for_label(label, segment_names, colors)
    order, flips = display_axes(image.direction)
    img = _to_display(image.array, order, flips)
    lab = _to_display(label.array, order, flips)
    sp = [image.spacing[a] for a in order]
    limits = _window(image.array, window)
    foreground = lab > 0
    axial = _slice_choice(foreground, n_axial)
    if foreground.any():
        centre = np.rint(np.argwhere(foreground).mean(axis=0)).astype(int)
    else:
        centre = np.array(lab.shape) // 2
    oblique = image.geometry.obliquity
    note = f" (oblique {oblique:.0f}°)" if oblique > 0.5 else ""

    ncols = 3 if len(axial) in (3, 5, 6, 9) else min(len(axial), 4)
    nrows = int(np.ceil(len(axial) / ncols))
    # Panel heights (inches) from the physical aspect of what they show; the figure is 12 in wide.
    axial_h = 12.0 / ncols * float(np.clip(lab.shape[1] * sp[1] / (lab.shape[2] * sp[2]), 0.3, 2.0))
    # A single slice (a 2D image) has no sagittal or coronal view worth drawing.
    with_sides = lab.shape[0] > 1
    side_h = 6.0 * float(
        np.clip(
            max(lab.shape[0] * sp[0] / (lab.shape[1] * sp[1]), lab.shape[0] * sp[0] / (lab.shape[2] * sp[2])),
            0.2,
            1.2,
        )
    )
    if not with_sides:
        side_h = 0.0
    fig = Figure(figsize=(12, axial_h * nrows + side_h + 1.0), dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(
        nrows + int(with_sides), ncols, height_ratios=[axial_h] * nrows + ([side_h] if with_sides else [])
    )
    for i in range(nrows * ncols):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        if i < len(axial):
            k = axial[i]
            title = _axial_title(k, lab.shape[0], order, flips, note)
            _draw(ax, img[k], lab[k], segments, sp[1] / sp[2], limits, title)
        else:
            ax.set_axis_off()
    if with_sides:
        where = [
            f"{'zyx'[order[d]]} = {lab.shape[d] - 1 - int(centre[d]) if flips[d] else int(centre[d])}"
            for d in (2, 1)
        ]
        _draw_sides(
            fig, grid[nrows, :].subgridspec(1, 2), img, lab, centre, segments, sp, limits, note, where
        )
    handles = [
        Patch(facecolor=(s.color[0] / 255, s.color[1] / 255, s.color[2] / 255), label=f"{s.value}: {s.name}")
        for s in segments
    ]
    if handles:
        fig.legend(
            handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False, fontsize=10
        )
    else:
        fig.suptitle("no labelled voxels", fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


# A comparison draws every class in its own label colour, so that a class mix-up shows:
# the reference solid, wide and tinted; the prediction dashed and thin, its dashes on a
# white line so that they stand out where they lie on the reference's line of one colour.
REFERENCE_WIDTH = 5.0
PREDICTION_WIDTH = 2.4
PREDICTION_DASHES: tuple[float, tuple[float, float]] = (0.0, (4.0, 1.2))  # on, off (x line width)
# One comparison panel is this many inches wide and its picture as high; the figure adds
# COMPARISON_MARGIN_IN for the title and legend, so a PNG is
# (panels * COMPARISON_PANEL_IN * dpi) x ((COMPARISON_PANEL_IN + COMPARISON_MARGIN_IN) * dpi) pixels.
COMPARISON_PANEL_IN = 5.0
COMPARISON_MARGIN_IN = 1.2


def _unit_rgb(rgb: Sequence[int]) -> tuple[float, float, float]:
    return (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)


def disagreement_slice(reference: Volume, predictions: Sequence[Volume]) -> int:
    """Array index along the axial display axis of the slice where the predictions disagree
    most with the reference (voxel count, summed over predictions), among the slices the
    reference covers when it covers any: a slice of false positives alone shows nothing to
    compare them with (a k-means baseline's worst slice of a hippocampus lay above it). With
    no disagreement there, the slice of largest reference area; with no reference either, the
    slice of most disagreement, else the middle slice."""
    order, flips = display_axes(reference.direction)
    ref = _to_display(reference.array, order, flips)
    wrong = np.zeros(ref.shape[0], dtype=np.int64)
    for pred in predictions:
        wrong += (_to_display(pred.array, order, flips) != ref).sum(axis=(1, 2))
    area = (ref > 0).sum(axis=(1, 2))
    if area.any():
        wrong = np.where(area > 0, wrong, 0)
    k = int(np.argmax(wrong)) if wrong.any() else int(np.argmax(area)) if area.any() else ref.shape[0] // 2
    return ref.shape[0] - 1 - k if flips[0] else k


def render_comparison_png(
    reference: Volume,
    predictions: Mapping[str, Volume],
    image: Volume | None = None,
    segment_names: Mapping[int, str] | None = None,
    *,
    slice_index: int | None = None,
    title: str = "",
    window: tuple[float, float] | None = None,
    dpi: int = 100,
) -> bytes:
    """PNG bytes: one axial panel per prediction (keys are the panel titles) over the image,
    every class in its label colour: the reference's outline solid and wide, its area
    tinted; the prediction's outline dashed and thin. A prediction with the right outline
    but the wrong class is therefore a dashed line of another colour on the reference's.

    ``slice_index`` is the array index along the axis shown as axial (default: the slice
    of largest disagreement, :func:`disagreement_slice`). Without ``image`` the label maps
    are drawn on light grey (so that the grid's extent shows) and the title says so.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not predictions:
        raise ValueError("render_comparison_png needs at least one prediction")
    for name, vol in predictions.items():
        vol.geometry.require_same(reference.geometry, f"prediction '{name}' and reference grids")
    if image is not None:
        image.geometry.require_same(reference.geometry, "image and reference grids")
    order, flips = display_axes(reference.direction)
    ref = _to_display(reference.array, order, flips)
    preds = {name: _to_display(p.array, order, flips) for name, p in predictions.items()}
    if slice_index is None:
        slice_index = disagreement_slice(reference, list(predictions.values()))
    n = ref.shape[0]
    if not 0 <= slice_index < n:
        raise ValueError(f"slice index {slice_index} outside 0..{n - 1}")
    k = n - 1 - slice_index if flips[0] else slice_index
    if image is None:
        # Light grey, not white, so that the grid's extent shows.
        img2d, limits = np.full(ref.shape[1:], 0.93, dtype=np.float32), (0.0, 1.0)
        title = (title + " " if title else "") + "(labels only: no image given)"
    else:
        img = _to_display(image.array, order, flips)
        img2d, limits = img[k], _window(image.array, window)
    all_values = sorted(set(np.unique(ref).tolist()).union(*(np.unique(p).tolist() for p in preds.values())))
    values = [int(v) for v in all_values if v > 0]
    lab_volume = Volume(np.asarray(values or [0], dtype=np.int32).reshape(-1, 1, 1))
    names = None if segment_names is None else {v: segment_names.get(v, f"label {v}") for v in values}
    segments = segments_for_label(lab_volume, names)
    sp = [reference.spacing[a] for a in order]
    oblique = reference.geometry.obliquity
    note = f" (oblique {oblique:.0f}°)" if oblique > 0.5 else ""
    where = _axial_title(k, n, order, flips, note)
    fig = Figure(
        figsize=(COMPARISON_PANEL_IN * len(preds), COMPARISON_PANEL_IN + COMPARISON_MARGIN_IN),
        dpi=dpi,
        layout="constrained",
    )
    for i, (name, pred) in enumerate(preds.items()):
        ax = fig.add_subplot(1, len(preds), i + 1)
        _draw(ax, img2d, ref[k], segments, sp[1] / sp[2], limits, f"{name}\n{where}", contours=False)
        for seg in segments:  # every reference line first: no prediction dash hides under one
            _contour(ax, ref[k] == seg.value, _unit_rgb(seg.color), REFERENCE_WIDTH)
        for seg in segments:
            mask = pred[k] == seg.value
            _contour(ax, mask, (1.0, 1.0, 1.0), PREDICTION_WIDTH)  # the gaps between the dashes
            _contour(ax, mask, _unit_rgb(seg.color), PREDICTION_WIDTH, PREDICTION_DASHES)
    grey = (0.25, 0.25, 0.25)
    handles: list[Any] = [
        Line2D([], [], color=grey, linewidth=REFERENCE_WIDTH, label="reference (solid, tinted)"),
        Line2D(
            [],
            [],
            color=grey,
            linewidth=PREDICTION_WIDTH,
            linestyle=PREDICTION_DASHES,
            label="prediction (dashed)",
        ),
    ]
    handles += [Patch(facecolor=_unit_rgb(s.color), label=f"{s.value}: {s.name}") for s in segments]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 3 * len(preds)),  # 3 entries fit a 5-inch panel,
        frameon=False,
        fontsize=9,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


ROI_COLOR = (255, 200, 0)
CROP_COLOR = (0, 190, 255)


def render_roi_png(
    views: Mapping[str, Volume],
    inside: Any,
    *,
    crop: tuple[Sequence[int], Sequence[int]] | None = None,
    centre: Sequence[float] | None = None,
    dpi: int = 100,
) -> bytes:
    """PNG bytes: each view's slice through ``centre`` (LPS mm) with the ROI outlined.

    ``views`` are the series by role (axial, sagittal, coronal), each drawn in its own
    acquisition plane (no resampling) in display orientation; ``inside`` maps (N, 3) world
    points to a bool array (e.g. :meth:`medseg.geometry.roi.ConvexRegion.contains`) and
    gives the ROI's cross-section with each slice. ``crop``: the (lower, upper exclusive)
    index box on the first view's grid, drawn as a dashed rectangle -- what the crop keeps.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(5.0 * len(views), 6.0), dpi=dpi, layout="constrained")
    roi_rgb = _unit_rgb(ROI_COLOR)
    crop_rgb = _unit_rgb(CROP_COLOR)
    for i, (role, vol) in enumerate(views.items()):
        # Each series in its own acquisition plane: slices along array axis 0, the two
        # in-plane axes in display order (superior up, anterior up in an axial view,
        # patient right on the left).
        order, flips = display_axes(vol.direction)
        d0 = order.index(0)  # the display axis that array axis 0 (the slice axis) becomes
        rows, cols = [d for d in range(3) if d != d0]
        where = np.asarray(
            centre if centre is not None else vol.geometry.index_to_world(np.array(vol.shape) / 2)
        )
        k = int(np.clip(np.rint(vol.geometry.world_to_index(where[None])[0][0]), 0, vol.shape[0] - 1))
        grids = np.meshgrid([k], np.arange(vol.shape[1]), np.arange(vol.shape[2]), indexing="ij")
        index = np.stack([g.ravel() for g in grids], axis=1)
        mask = np.zeros(vol.shape, dtype=bool)
        mask[k] = np.asarray(inside(vol.geometry.index_to_world(index)), dtype=bool).reshape(vol.shape[1:])
        kd = vol.shape[0] - 1 - k if flips[d0] else k
        img = np.take(_to_display(vol.array, order, flips), kd, axis=d0)
        roi2d = np.take(_to_display(mask, order, flips), kd, axis=d0)
        sp = [vol.spacing[a] for a in order]
        ax = fig.add_subplot(1, len(views), i + 1)
        oblique = vol.geometry.obliquity
        note = f" (oblique {oblique:.0f}°)" if oblique > 0.5 else ""
        limits = _window(vol.array, None)
        ax.imshow(
            img,
            cmap="gray",
            aspect=sp[rows] / sp[cols],
            interpolation="nearest",
            vmin=limits[0],
            vmax=limits[1],
        )
        if roi2d.any():  # padded, so that an ROI reaching the picture's edge is closed there
            h, w = roi2d.shape
            ax.contour(
                np.arange(-1, w + 1),
                np.arange(-1, h + 1),
                np.pad(roi2d, 1).astype(np.float32),
                levels=[0.5],
                colors=[roi_rgb],
                linewidths=2.0,
            )
        if crop is not None and i == 0:
            lo, hi = [], []
            for d in (rows, cols):
                a, n = order[d], vol.shape[order[d]]
                low, high = int(crop[0][a]), int(crop[1][a])
                lo.append(n - high if flips[d] else low)
                hi.append(n - low if flips[d] else high)
            ax.add_patch(
                Rectangle(
                    (lo[1] - 0.5, lo[0] - 0.5),
                    hi[1] - lo[1],
                    hi[0] - lo[0],
                    fill=False,
                    edgecolor=crop_rgb,
                    linewidth=1.6,
                    linestyle="--",
                    zorder=4,  # above the overlap's outline, which it often runs along
                )
            )
        inside_roi = "" if roi2d.any() else " -- the ROI misses this slice"
        ax.set_title(f"{role}, slice z = {k}{note}{inside_roi}", fontsize=10)
        ax.set_axis_off()
    handles = [Line2D([], [], color=roi_rgb, linewidth=2.0, label="overlap of the three series (ROI)")]
    if crop is not None:
        handles.append(
            Line2D([], [], color=crop_rgb, linewidth=1.6, linestyle="--", label="crop box (axial)")
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def write_overlay(
    image: Volume,
    label: Volume,
    path: str | Path,
    segment_names: Mapping[int, str] | None = None,
    *,
    overwrite: bool = False,
    colors: Mapping[int, Sequence[int]] | None = None,
    n_axial: int = 6,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write the overlay montage as a PNG (atomically)."""
    target = check_writable(path, overwrite)
    png = render_overlay_png(image, label, segment_names, colors=colors, n_axial=n_axial, window=window)
    write_bytes_atomic(target, png, overwrite=overwrite)
    log.info("wrote overlay of %d labels to %s", len(label_values(label)), target)
    return target
