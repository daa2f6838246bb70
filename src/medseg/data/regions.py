"""Region-based (multi-label) segmentation: overlapping structures from a disjoint label map.

The label map on disk stays disjoint (one value per voxel; an overlap of two structures
gets a value of its own). A *region* is a named set of label values; a voxel belongs to
every region that lists its value, so regions may overlap or nest (BraTS: whole tumour
``[1, 2, 3]`` contains tumour core ``[2, 3]`` contains enhancing ``[3]``). The network has
one sigmoid output per region. This is nnU-Net's "region-based training"; dataset.json
declares it (a medseg key next to ``labels``)::

    "regions": {"large_bowel": [2, 4], "small_bowel": [3, 4]},
    "regions_class_order": [2, 3]

``regions_class_order`` gives, per region, the label value that region is painted with
when the predicted regions are turned back into one label map: regions are painted in
their declared order, a later region over an earlier one. Without it each region is
painted with its smallest label value. Overlaps cannot all survive painting; the
per-region masks keep them (``medseg predict --format regions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

Regions = dict[str, tuple[int, ...]]


def validate_regions(
    regions: Any,
    labels: Mapping[str, int],
    class_order: Any = None,
    *,
    cover_labels: bool = True,
) -> tuple[Regions, tuple[int, ...]]:
    """Checked regions and painting order; raises ValueError saying what is wrong.

    Rules: a mapping of distinct non-empty names to non-empty lists of distinct label
    values that the labels declare, never background (0); no two regions with the same
    values; ``class_order`` (optional) one declared foreground label value per region, a
    value of that region. With ``cover_labels`` every declared foreground label lies in
    some region: a label in none trains as background (every region's target is 0
    there), so the model could never predict it. Plans saved before this rule pass
    ``cover_labels=False`` so that trained models stay loadable.
    """
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(
            f"'regions' must map region names to lists of label values, found {regions!r}"
            ' (e.g. {"large_bowel": [2, 4], "small_bowel": [3, 4]})'
        )
    known = {int(v): k for k, v in labels.items()}
    out: Regions = {}
    seen: dict[tuple[int, ...], str] = {}
    for name, values in regions.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"region names must be non-empty text, found {name!r}")
        if isinstance(values, int) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"region {name!r} must be a list of label values, found {values!r}")
        if not values:
            raise ValueError(f"region {name!r} is empty; it needs at least one label value")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ValueError(f"region {name!r} holds values that are not whole numbers: {list(values)}")
        if 0 in values:
            raise ValueError(f"region {name!r} contains background (0); regions hold foreground labels only")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"region {name!r} names label value(s) {unknown} that 'labels' does not declare "
                f"(declared: {sorted(known)})"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"region {name!r} lists a label value twice: {list(values)}")
        key = tuple(sorted(int(v) for v in values))
        if key in seen:
            raise ValueError(f"regions {seen[key]!r} and {name!r} hold the same label values {list(key)}")
        seen[key] = name
        out[name] = key
    if class_order is None:
        order = tuple(min(v) for v in out.values())
    else:
        if not isinstance(class_order, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in class_order
        ):
            raise ValueError(f"'regions_class_order' must be a list of label values, found {class_order!r}")
        if len(class_order) != len(out):
            raise ValueError(
                f"'regions_class_order' needs one label value per region ({len(out)}), "
                f"found {len(class_order)}: {list(class_order)}"
            )
        bad = [v for v in class_order if v == 0 or v not in known]
        if bad:
            raise ValueError(
                f"'regions_class_order' holds {bad}, which are not declared foreground label values "
                f"(declared: {sorted(k for k in known if k)})"
            )
        order = tuple(int(v) for v in class_order)
        for (name, values), value in zip(out.items(), order, strict=True):
            if value not in values:
                # Its painted voxels would read back as outside the region (and inside others).
                raise ValueError(
                    f"'regions_class_order' paints region {name!r} with {value}, which is not one of "
                    f"its label values {list(values)}"
                )
    if cover_labels:
        covered = {v for values in out.values() for v in values}
        outside = {name: value for value, name in sorted(known.items()) if value and value not in covered}
        if outside:
            raise ValueError(
                f"label(s) {', '.join(f'{n!r} = {v}' for n, v in outside.items())} lie in no region, so a "
                "region model would train them as background and could never predict them; add each to "
                "a region (e.g. a region of its own) or drop it from 'labels'"
            )
    return out, order


def region_targets(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Integer label maps ``(B, *spatial)`` or ``(B, 1, *spatial)`` -> float ``(B, R, *spatial)``.

    Channel r is 1 where the voxel's label value belongs to region r. Built from the
    (nearest-neighbour) augmented label patch, so no membership is ever interpolated.
    """
    if labels.is_floating_point():
        labels = labels.round()
    labels = labels.long()
    if labels.ndim >= 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    channels = [torch.isin(labels, torch.as_tensor(list(r), device=labels.device)) for r in regions]
    return torch.stack(channels, dim=1).float()


def region_masks(labels: NDArray[Any], regions: Sequence[Sequence[int]]) -> NDArray[np.bool_]:
    """Label map (any shape) -> boolean ``(R, *shape)``: membership of each voxel in each region."""
    return np.stack([np.isin(labels, list(r)) for r in regions])


def paint_regions(
    masks: NDArray[Any],
    class_order: Sequence[int],
    regions: Sequence[Sequence[int]] | None = None,
    labels: Sequence[int] | None = None,
) -> NDArray[Any]:
    """Boolean region masks ``(R, *shape)`` -> one label map.

    Region r's voxels get ``class_order[r]``; a later region overwrites an earlier one
    (nested regions are declared outermost first), voxels in no region stay 0. With
    ``regions`` (each region's label values) and ``labels`` (the declared values), a voxel
    whose set of regions is exactly that of one declared value gets that value instead: an
    overlap declared as a value of its own (UW-Madison's large+small bowel = 4) survives in
    the label map, so ``region_masks`` of the result gives the masks back. Nested regions
    paint as before (each value's set is the painting order's answer).
    """
    if len(masks) != len(class_order):
        raise ValueError(f"{len(masks)} region masks but {len(class_order)} values to paint them with")
    values = [int(v) for v in class_order]
    if regions is not None and labels is not None:
        values += [int(v) for v in labels]
    dtype = np.uint8 if max(values, default=0) <= 255 else np.uint16
    out = np.zeros(masks.shape[1:], dtype=dtype)
    for mask, value in zip(masks, class_order, strict=True):
        out[np.asarray(mask, dtype=bool)] = value
    if regions is None or labels is None or len(masks) > 62:
        return out
    if len(regions) != len(masks):
        raise ValueError(f"{len(masks)} region masks but {len(regions)} regions")
    # Each voxel's set of regions as bits; each declared value's set likewise.
    bits = np.zeros(masks.shape[1:], dtype=np.int64)
    for r, mask in enumerate(masks):
        bits |= np.asarray(mask, dtype=np.int64) << r
    by_set: dict[int, list[int]] = {}
    for value in labels:
        if int(value) == 0:
            continue
        key = sum(1 << r for r, members in enumerate(regions) if int(value) in members)
        by_set.setdefault(key, []).append(int(value))
    for key, candidates in by_set.items():
        if key and len(candidates) == 1:  # one value means exactly this set of regions
            out[bits == key] = candidates[0]
    return out


__all__ = ["Regions", "paint_regions", "region_masks", "region_targets", "validate_regions"]
