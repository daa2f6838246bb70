"""Predict with a trained model folder, back on the input's exact grid, and write outputs.

checkpoint + plan -> the preprocessing used in training (``preprocess_case``) ->
sliding-window inference (optionally mirrored) -> softmax averaged over the folds of an
ensemble -> resampled back and un-cropped onto the input grid (checked) -> per-class
postprocessing rules stored with the model -> the requested outputs.

``predict(input, model, out, config)`` handles a file, a DICOM series folder or a folder
of cases; a broken case is reported and the others go on. ``config.shard = (i, n)``
takes every n-th case starting at i, so a SLURM array job can split a cohort.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

import medseg
from medseg.config import to_dict
from medseg.errors import ConfigError, InputError, MedsegError, OutputExistsError
from medseg.export.case import (
    DICOM_FORMATS,
    FORMATS,
    case_targets,
    check_formats,
    check_mesh_suffix,
    unwritable_dicom_formats,
    write_case_outputs,
)
from medseg.io import IMAGE_2D_SUFFIXES, describe_path, read_channels, sidecar_path
from medseg.io.atomic import write_text_atomic
from medseg.io.itk import has_itk_suffix
from medseg.io.png import natural_key
from medseg.preprocessing.pipeline import (
    PreprocessInfo,
    preprocess_case,
    preprocessing_key,
    restore_to_original,
)
from medseg.preprocessing.plan import Plan
from medseg.progress import progress_bar
from medseg.training.config import check_device_name
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.io.dicom import Pseudonym, SeriesInfo
    from medseg.postprocessing.labels import PostprocessingRules

log = logging.getLogger(__name__)
# The warning that a series is not of the modality the model was trained on: shown also by
# `predict --quiet` (medseg.cli.common.QUIET_KEEPS), as it is the only sign of meaningless labels.
_modality_log = logging.getLogger(f"{__name__}.modality")

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# bfloat16 autocast of the network when predicting on a CPU: opt-in (True, or "auto": where the
# CPU computes bf16 natively), off by default because it changes label maps a little. On MSD
# hippocampus (a 3D U-Net trained 3 min, 20 held-out cases;
# benchmarks/predict_precision_agreement.py) 0.024 % of the voxels changed label, Dice against
# the float32 label map 0.997 per class on average (0.994 at worst), short of our bar of 0.999
# for a default, while Dice against the reference moved by +0.0002 / +0.0003 only.
CPU_BF16_DEFAULT: bool | Literal["auto"] = False
# Channels-last layout of the network when predicting: opt-in ("auto": 3D models on a CPU, as
# training's default). Unlike a training step, sliding-window prediction measured no faster in
# it: float32 0.90x (0.62-0.96x) for the prostate configuration's sliding window, 0.96x end to end on
# MSD hippocampus (benchmarks/predict_precision_bench.py, ..._agreement.py; a shared, loaded
# machine, so the ranges are wide).
CHANNELS_LAST_DEFAULT: bool | Literal["auto"] = False


@dataclass(frozen=True)
class PredictConfig:
    """Options of `medseg predict` (the CLI builds exactly this object)."""

    formats: tuple[str, ...] = ("nifti",)
    tta: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overlap: float = 0.5
    sw_batch_size: int = 4
    postprocess: bool = True
    series: str | None = None
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    backend: Literal["torch", "onnx"] = "torch"
    mesh_suffix: str = ".stl"
    threads: int | None = None
    roi_views: tuple[Path, Path] | None = None
    slice_filter: bool = True
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm for PNG/TIFF input
    volume: int | None = None  # one of several volumes stacked in a DICOM series (b-values, echoes)
    # De-identify the DICOM SEG and RTSTRUCT as `medseg convert --deidentify` de-identifies a
    # series (medseg.export.dicom_source.deidentify_derived); the same uid_secret makes them
    # reference the de-identified copy of the source series (None: a new secret per process).
    deidentify: bool = False
    # not in repr: a printed or logged config must not show the key or a PatientID map
    pseudonym: Pseudonym = field(default="ANONYMOUS", repr=False)
    uid_secret: str | None = field(default=None, repr=False)
    # CPU speed-ups of the network call, named and resolved as in training (TrainingConfig);
    # windows are blended and softmaxed in float32 either way. See CPU_BF16_DEFAULT and the
    # figures in benchmarks/predict_precision_bench.py.
    cpu_bf16: bool | Literal["auto"] = CPU_BF16_DEFAULT
    channels_last: bool | Literal["auto"] = CHANNELS_LAST_DEFAULT

    def __post_init__(self) -> None:
        from medseg.io.dicom import check_deidentify_options

        object.__setattr__(self, "formats", check_formats(self.formats))
        check_deidentify_options(self.deidentify, self.pseudonym, self.uid_secret)
        if self.shard is not None:
            i, n = self.shard
            if n < 1 or not 0 <= i < n:
                raise ConfigError(f"shard must be i/n with 0 <= i < n, found {i}/{n}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"overlap must be in [0, 1), found {self.overlap}")
        check_device_name(self.device)
        for name in ("cpu_bf16", "channels_last"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ConfigError(f"{name} must be true, false or 'auto', found {getattr(self, name)!r}")
        if self.backend not in ("torch", "onnx"):
            raise ConfigError(f"backend must be 'torch' or 'onnx', found {self.backend!r}")
        if self.sw_batch_size < 1 or (self.threads is not None and self.threads < 1):
            raise ConfigError(
                f"sw_batch_size and threads must be >= 1, found {self.sw_batch_size} and {self.threads}"
            )
        check_mesh_suffix(self.mesh_suffix)
        if self.spacing is not None and (
            len(self.spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in self.spacing)
        ):
            raise ConfigError(f"--spacing must be three positive mm values Z Y X, found {self.spacing}")


# --------------------------------------------------------------------------- model
def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)[:3]
    return tuple(int(p) for p in parts)


def _warn_if_newer(folder: Path, written_by: str) -> None:
    """A model folder from a newer medseg may hold what this one does not understand."""
    if written_by and _version_tuple(written_by)[:2] > _version_tuple(medseg.__version__)[:2]:
        log.warning(
            "%s was written by medseg %s, newer than this medseg %s; update medseg if the prediction fails",
            folder,
            written_by,
            medseg.__version__,
        )


def _warn_if_rules_differ(
    held: Sequence[tuple[str, PostprocessingRules]], names: Mapping[int, str], ensemble: str, remedy: str
) -> None:
    """One warning when the parts of an ensemble (its configurations, or the folds of one) hold
    different postprocessing rules: the first part, whose rules apply, and each part whose rules
    differ from them, named with its rules (parts holding the first's are named beside it)."""
    effective = [rules.effective() for _, rules in held]
    if all(r == effective[0] for r in effective[1:]):
        return
    same = [name for (name, _), r in zip(held[1:], effective[1:], strict=True) if r == effective[0]]
    first = f"{held[0][0]}: {held[0][1].describe(names)}" + (f" (as do {', '.join(same)})" if same else "")
    others = [
        f"{name}: {rules.describe(names)}"
        for (name, rules), r in zip(held[1:], effective[1:], strict=True)
        if r != effective[0]
    ]
    log.warning(
        "%s hold different postprocessing rules: %s. %s", ensemble, "; ".join([first, *others]), remedy
    )


class SegmentationModel:
    """A model folder, or an ensemble, ready to predict.

    ``path`` is a model folder, a folder of ``fold_*`` model folders, or a list of such
    paths. Folds trained with the same plan are averaged inside the network pass (their
    softmax on the preprocessed grid), and the first fold's postprocessing rules apply (one
    warning names the folds whose rules differ, which only a hand-edited file makes). Folders with *different* plans (e.g. a 2.5D and a 3D
    model of the same labels) form a multi-configuration ensemble: each configuration
    predicts class probabilities on the input grid, their mean decides each voxel, and the
    first model's postprocessing rules apply (the first ``-m``: the order chooses). Rules
    are chosen per configuration (``tune-postprocessing``) on that configuration's own
    predictions, and none were chosen on the ensemble's, so no member's rules are right for
    it by construction; when the members' rules differ, one warning names each member with
    its rules and says which apply. Applying only the rules common to all members was not
    chosen: it would drop silently a rule one member's tuning found useful, and "common" has
    no clear meaning for rules of one class with different sizes.
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        *,
        device: str = "auto",
        backend: str = "torch",
        threads: int | None = None,
        cpu_bf16: bool | Literal["auto"] = CPU_BF16_DEFAULT,
        channels_last: bool | Literal["auto"] = CHANNELS_LAST_DEFAULT,
        _folders: Sequence[Path] | None = None,
    ):
        from medseg.postprocessing.labels import PostprocessingRules, read_rules
        from medseg.training.checkpoint import (
            best_checkpoint,
            load_checkpoint,
            load_weights,
            model_architecture,
            model_folders,
            read_model_record,
        )
        from medseg.training.slice_classifier import SliceFilter
        from medseg.training.trainer import choose_device, resolve_channels_last, resolve_cpu_bf16

        paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
        if not paths:
            raise ConfigError("no model folder given")
        self.path = paths[0]
        self.paths = paths
        if _folders is not None:
            self.folders = list(_folders)
        else:
            self.folders = []
            for p in paths:
                self.folders += [f for f in model_folders(p, onnx=backend == "onnx") if f not in self.folders]
        plans = [Plan.load(f / "plan.json") for f in self.folders]
        if threads:
            torch.set_num_threads(threads)
        self.device = choose_device(device)
        self.backend = backend
        # Several plans: one member per plan, combined on the input grid (see the docstring).
        self.members: list[SegmentationModel] = []
        distinct: list[Plan] = []
        for plan in plans:
            if plan not in distinct:
                distinct.append(plan)
        if len(distinct) > 1:
            if len(paths) == 1:
                # Within one folder, a fold with another plan is more likely stale than meant.
                raise InputError(
                    self.path,
                    "the ensemble's folds were trained with different plans",
                    expected="identical plan.json files; to ensemble configurations, give each one's "
                    "folder to its own -m (e.g. -m models/2.5d -m models/3d)",
                    found=f"{len(distinct)} plans ({', '.join(p.configuration for p in distinct)})",
                )
            self._init_members(distinct, plans, paths, device, backend, cpu_bf16, channels_last)
            return
        self.plan = plans[0]
        # CPU speed-ups of the network call (see PredictConfig); ONNX Runtime has its own kernels.
        self.cpu_bf16 = backend == "torch" and resolve_cpu_bf16(cpu_bf16, self.device)
        self.channels_last = backend == "torch" and resolve_channels_last(
            channels_last, self.device, self.plan.spatial_dims
        )
        # The first fold's rules apply; tune-postprocessing writes the same into every fold, but
        # a fold's file may have been edited by hand since.
        fold_rules = []
        for folder in self.folders:
            post = folder / "postprocessing.json"
            rules = read_rules(post) if post.is_file() else PostprocessingRules()
            fold_rules.append((f"{folder.name} ({'' if post.is_file() else 'no '}{post})", rules))
        self.rules = fold_rules[0][1]
        _warn_if_rules_differ(
            fold_rules,
            self.label_names,
            f"the {self.plan.configuration} ensemble's folds",
            f"The first fold's ({self.folders[0].name}) apply to every fold: write one postprocessing.json "
            "into every fold (tune-postprocessing does) to choose (predict --no-postprocess applies none)",
        )
        # Empty-slice classifiers (2D / 2.5D models; training/slice_classifier.py), one per
        # fold folder that has one; an ensemble averages their probabilities.
        filters = [SliceFilter.from_model_folder(f, device=self.device) for f in self.folders]
        self.slice_filters = [f for f in filters if f is not None]
        if self.slice_filters and len(self.slice_filters) < len(self.folders):
            log.warning(
                "%d of %d folds have an empty-slice classifier; using those",
                len(self.slice_filters),
                len(self.folders),
            )
        self.last_suppressed_slices: list[int] = []
        self.last_region_masks: dict[str, np.ndarray] = {}
        self.info = read_model_record(self.folders[0])
        _warn_if_newer(self.folders[0], str(self.info.get("medseg_version") or ""))
        # Axes the network was trained to see mirrored (absent in older models: all).
        mirror = self.info.get("mirror_axes")
        self.mirror_axes: tuple[int, ...] | None = None if mirror is None else tuple(int(a) for a in mirror)
        self.networks: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for folder in self.folders:
            arch = model_architecture(folder)
            if backend == "onnx":
                from medseg.inference.onnx import OnnxNetwork, warn_if_rules_differ_from_source

                network = OnnxNetwork(folder / "model.onnx", self.device)
                warn_if_rules_differ_from_source(folder, network.metadata)
                self.networks.append(network)
                continue
            net = arch.build()
            ckpt = best_checkpoint(folder)
            load_weights(net, load_checkpoint(ckpt, map_location="cpu")["model"], arch, ckpt)
            net.to(self.device).eval()
            if self.channels_last:
                from medseg.inference.sliding_window import network_memory_format

                fmt = network_memory_format(True, self.plan.spatial_dims)
                net.to(memory_format=fmt)  # type: ignore[call-overload]  # untyped overload
            self.networks.append(net)

    def _init_members(
        self,
        distinct: list[Plan],
        plans: list[Plan],
        paths: list[Path],
        device: str,
        backend: str,
        cpu_bf16: bool | Literal["auto"],
        channels_last: bool | Literal["auto"],
    ) -> None:
        first = distinct[0]
        for plan in distinct[1:]:
            if (
                plan.labels != first.labels
                or plan.regions != first.regions
                or plan.regions_class_order != first.regions_class_order
                or list(plan.channel_names) != list(first.channel_names)
            ):
                raise InputError(
                    paths[0] if len(paths) == 1 else Path(", ".join(map(str, paths))),
                    "the ensemble's models segment different labels or regions or read different channels",
                    expected=f"labels {first.labels}, regions {first.regions or 'none'} and channels "
                    f"{list(first.channel_names)} in every model",
                    found=f"labels {plan.labels}, regions {plan.regions or 'none'}, channels {list(plan.channel_names)}",
                )
        groups = [[f for f, p in zip(self.folders, plans, strict=True) if p == plan] for plan in distinct]
        self.members = [
            SegmentationModel(
                paths,
                device=device,
                backend=backend,
                cpu_bf16=cpu_bf16,
                channels_last=channels_last,
                _folders=group,
            )
            for group in groups
        ]
        lead = self.members[0]
        self.plan, self.rules, self.info = lead.plan, lead.rules, lead.info
        self._warn_if_member_rules_differ()
        self.mirror_axes = lead.mirror_axes
        self.cpu_bf16 = any(m.cpu_bf16 for m in self.members)
        self.channels_last = any(m.channels_last for m in self.members)
        self.networks, self.slice_filters, self.last_suppressed_slices = [], [], []
        self.last_region_masks = {}
        log.info(
            "ensemble of %d configurations (%s): class probabilities averaged on the input grid",
            len(self.members),
            ", ".join(f"{m.plan.configuration}: {len(m.folders)} fold(s)" for m in self.members),
        )

    def _warn_if_member_rules_differ(self) -> None:
        """One warning when a configuration ensemble's members hold different rules (see the
        class docstring): each member's rules, and which apply."""
        _warn_if_rules_differ(
            [
                (f"{m.plan.configuration} ({m.folders[0] / 'postprocessing.json'})", m.rules)
                for m in self.members
            ],
            self.label_names,
            "the ensemble's configurations",
            f"The first model's ({self.members[0].plan.configuration}) apply to the ensemble: give another -m "
            "first to apply its rules, or write the same postprocessing.json into every member (predict "
            "--no-postprocess applies none)",
        )

    @property
    def plans(self) -> list[Plan]:
        """Every configuration's plan (one unless this is a multi-configuration ensemble)."""
        return [m.plan for m in self.members] if self.members else [self.plan]

    @property
    def label_names(self) -> dict[int, str]:
        return {v: k for k, v in self.plan.labels.items() if v != 0}

    def describe(self) -> dict[str, Any]:
        """What the report's Model section (and predictions.json) says of the model: what a
        reader can identify it by (the training dataset's name, configuration, folds, labels,
        when and with which medseg it was trained). Nothing of the patients, and of the model's
        path only its last folders (``3d/fold_0``)."""
        records = [_model_record(f) for f in self.folders]
        folds = [str(r["fold"]) for r in records if r.get("fold") is not None]
        trained = sorted({str(r["trained_utc"])[:10] for r in records if r.get("trained_utc")})
        versions = sorted({str(r["medseg_version"]) for r in records if r.get("medseg_version")})
        info: dict[str, Any] = {
            "dataset": _dataset_name(self.folders[0]) or self.plan.dataset_name,
            "model": ", ".join(_model_name(p) for p in self.paths),
            "configuration": " + ".join(p.configuration for p in self.plans),
            "folds": len(self.folders),
        }
        if folds:  # which folds of the cross-validation (model.json), e.g. "0" or "0, 1, 2, 3, 4"
            info["fold"] = ", ".join(folds)
        info["labels"] = ", ".join(f"{v} {name}" for v, name in sorted(self.label_names.items()))
        info["architecture"] = self.info.get("architecture", {}).get("name")
        info["channels"] = ", ".join(self.plan.channel_names)
        info["target spacing (z, y, x) mm"] = ", ".join(f"{s:g}" for s in self.plan.target_spacing)
        if trained:  # models trained before medseg recorded it have no date
            info["trained (UTC)"] = " to ".join([trained[0], trained[-1]] if len(trained) > 1 else trained)
        info["trained with medseg"] = ", ".join(versions) or None
        info["predicted with medseg"] = medseg.__version__
        info["backend"] = self.backend
        info["network precision"] = self.precision_text()
        return info

    def precision_text(self) -> str:
        """How the network runs, e.g. "bfloat16 autocast, channels-last layout" (a 3D + 2.5D
        ensemble names each configuration's)."""
        if self.members:
            return "; ".join(f"{m.plan.configuration}: {m.precision_text()}" for m in self.members)
        if self.backend == "onnx":
            return "ONNX Runtime"
        if self.device.type == "cuda":
            precision = "float16 autocast"
        else:
            precision = "bfloat16 autocast" if self.cpu_bf16 else "float32"
        return f"{precision}, {'channels-last' if self.channels_last else 'default'} layout"

    def check_input(self, channels: Sequence[Volume], where: str) -> None:
        plan = self.plan
        if len(channels) != len(plan.channel_names):
            raise InputError(
                where,
                "has the wrong number of channels for this model",
                expected=f"{len(plan.channel_names)} ({', '.join(plan.channel_names)})",
                found=str(len(channels)),
            )
        shape = channels[0].shape
        if plan.configuration == "3d" and shape[0] == 1:
            raise InputError(
                where,
                "is a 2D image but the model is 3D",
                expected="a volume with several slices",
                found=f"shape {shape}",
            )
        arr = channels[0].array
        if arr.size == 0 or not np.isfinite(arr).all():
            raise InputError(where, "holds no finite image values", found="NaN/Inf or an empty array")
        if float(arr.max()) == float(arr.min()):
            raise InputError(
                where,
                "is a constant image; there is nothing to segment",
                found=f"every voxel = {float(arr.min()):g}",
            )

    def predict(
        self,
        channels: Sequence[Volume],
        *,
        tta: bool = False,
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        postprocess: bool = True,
        with_probabilities: bool = False,
        where: str = "input",
        slice_filter: bool = True,
    ) -> tuple[Volume, np.ndarray | None]:
        """Label map on the input grid (and class probabilities on it when asked).

        A region-based model (``plan.regions``) averages one sigmoid probability per region
        over folds and mirroring, thresholds each at 0.5 on the input grid and paints the
        regions into the label map in ``regions_class_order``; its probabilities are the
        regions' (R, *shape), and the masks, overlaps included, are kept in
        ``last_region_masks`` (region name -> bool array on the input grid).

        With ``slice_filter`` and a model that has an empty-slice classifier, the slices
        (along the plan's slice axis, on the preprocessed grid) that it judges empty are
        set to background before the result goes back to the input grid; their indices
        are kept in ``last_suppressed_slices``.
        """
        if self.members:
            return self._predict_members(
                channels,
                tta=tta,
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                postprocess=postprocess,
                with_probabilities=with_probabilities,
                where=where,
                slice_filter=slice_filter,
            )
        self.check_input(channels, where)
        image, _, info = preprocess_case(channels, None, self.plan, where)
        return self._predict_preprocessed(
            channels,
            image,
            info,
            tta=tta,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            postprocess=postprocess,
            with_probabilities=with_probabilities,
            slice_filter=slice_filter,
        )

    def _predict_preprocessed(
        self,
        channels: Sequence[Volume],
        image: np.ndarray,
        info: PreprocessInfo,
        *,
        tta: bool,
        overlap: float,
        sw_batch_size: int,
        postprocess: bool,
        with_probabilities: bool,
        slice_filter: bool,
    ) -> tuple[Volume, np.ndarray | None]:
        """:meth:`predict` of ``channels`` already preprocessed with this plan (``image``, ``info``)."""
        from medseg.inference.sliding_window import predict_probabilities
        from medseg.postprocessing.labels import apply_rules

        total: np.ndarray | None = None
        for net in self.networks:
            probs = predict_probabilities(
                net,
                image,
                self.plan,
                device=self.device,
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                mirror=tta,
                mirror_axes=self.mirror_axes,
                amp=self.device.type == "cuda",
                cpu_bf16=self.cpu_bf16,
                channels_last=self.channels_last,
            )
            total = probs if total is None else total + probs
        assert total is not None
        total /= len(self.networks)
        self.last_suppressed_slices = []
        if slice_filter and self.slice_filters:
            from medseg.training.slice_classifier import suppress_slices

            empty = self._slice_foreground(image) < self.slice_threshold
            if self.plan.regions:
                total[:, empty] = 0.0  # in no region
            else:
                total = suppress_slices(total, empty)
            self.last_suppressed_slices = [int(i) for i in np.flatnonzero(empty)]
        if self.plan.regions:
            from medseg.preprocessing.pipeline import restore_regions_to_original

            region_probs = restore_regions_to_original(total, info)
            return self._finish_regions(region_probs, channels, postprocess, with_probabilities)
        label = restore_to_original(total, info, is_probabilities=True)
        label.geometry.require_same(channels[0].geometry, "prediction and input grids")
        if postprocess and (self.rules.classes or self.rules.keep_largest_foreground):
            label = label.with_array(apply_rules(label.array, self.rules, label.spacing))
        probabilities = None
        if with_probabilities:
            probabilities = np.stack(
                [
                    restore_probability(total[k], info, default=1.0 if k == 0 else 0.0)
                    for k in range(total.shape[0])
                ]
            )
        meta = _output_meta(channels[0])
        return Volume(label.array, geometry=channels[0].geometry, meta=meta), probabilities

    def _finish_regions(
        self,
        region_probs: np.ndarray,
        channels: Sequence[Volume],
        postprocess: bool,
        with_probabilities: bool,
    ) -> tuple[Volume, np.ndarray | None]:
        """Region probabilities on the input grid -> masks (> 0.5) and the painted label map.

        The masks (overlaps and all) are kept in ``last_region_masks`` (region name -> bool
        array on the input grid); the label map paints them in ``regions_class_order``, a
        later region over an earlier one, except where a voxel's set of regions is that of one
        declared label value (an overlap with a value of its own keeps it). The postprocessing
        rules act on the masks first (a region takes the rule of the value it is painted with).
        """
        from medseg.data.regions import paint_regions
        from medseg.postprocessing.labels import apply_rules_to_masks

        masks = region_probs > 0.5
        if postprocess and (self.rules.classes or self.rules.keep_largest_foreground):
            # on the masks (each region whole), so the masks and the painted map agree
            masks = apply_rules_to_masks(
                masks, self.plan.regions_class_order, self.rules, channels[0].spacing
            )
        self.last_region_masks = {name: masks[r] for r, name in enumerate(self.plan.regions)}
        labels = paint_regions(
            masks,
            self.plan.regions_class_order,
            list(self.plan.regions.values()),
            list(self.plan.labels.values()),
        )
        meta = _output_meta(channels[0])
        return Volume(labels, geometry=channels[0].geometry, meta=meta), (
            region_probs if with_probabilities else None
        )

    @property
    def probability_names(self) -> dict[int, str]:
        """Channel index -> name of the probabilities ``predict`` returns (classes or regions)."""
        if self.plan.regions:
            return dict(enumerate(self.plan.regions))
        return {0: "background", **self.label_names}

    @property
    def slice_threshold(self) -> float:
        """The empty-slice classifiers' decision threshold (the mean when folds differ)."""
        return float(np.mean([f.config.threshold for f in self.slice_filters])) if self.slice_filters else 0.5

    def _slice_foreground(self, image: np.ndarray) -> np.ndarray:
        """(Z,) mean over the folds' classifiers: probability that a preprocessed slice holds foreground."""
        return np.asarray(np.mean([f.foreground_probability(image) for f in self.slice_filters], axis=0))

    def slice_foreground_map(self, channels: Sequence[Volume], where: str = "input") -> np.ndarray | None:
        """The empty-slice classifiers' judgement on the input grid, or None without a classifier.

        Each voxel gets the probability that its slice (on this model's preprocessed grid)
        holds foreground; voxels outside the model's crop get 1 (never cleared). Used by a
        configuration ensemble to clear the slices after averaging the members, so that a
        2.5D member's "empty" is not diluted by the other members' probabilities.
        """
        if not self.slice_filters:
            return None
        image, _, info = preprocess_case(channels, None, self.plan, where)
        return self._slice_foreground_on_input(image, info)

    def _slice_foreground_on_input(self, image: np.ndarray, info: PreprocessInfo) -> np.ndarray:
        """:meth:`slice_foreground_map` of a case already preprocessed with this plan."""
        p = self._slice_foreground(image).astype(np.float32)
        per_voxel = np.ascontiguousarray(np.broadcast_to(p[:, None, None], image.shape[1:]))
        return restore_probability(per_voxel, info, default=1.0)

    def _predict_members(
        self,
        channels: Sequence[Volume],
        *,
        tta: bool,
        overlap: float,
        sw_batch_size: int,
        postprocess: bool,
        with_probabilities: bool,
        where: str,
        slice_filter: bool,
    ) -> tuple[Volume, np.ndarray | None]:
        """Mean of the configurations' class probabilities on the input grid, then argmax.

        Members' empty-slice classifiers are applied after the mean: a voxel whose slice the
        classifiers judge empty (their mean probability, on the input grid, below their
        threshold) is certain background, whatever the other members predicted there.

        The case is preprocessed once per distinct preprocessing (:func:`preprocessing_key`:
        members whose plans differ only in the network, patch or training settings share it),
        for the members' networks and classifiers alike, and let go after its last member.
        """
        from medseg.postprocessing.labels import apply_rules

        total: np.ndarray | None = None
        judged = [m for m in self.members if m.slice_filters] if slice_filter else []
        keys = [preprocessing_key(m.plan) for m in self.members]
        left = Counter(keys)
        prepared: dict[tuple[Any, ...], tuple[np.ndarray, PreprocessInfo]] = {}
        maps: list[np.ndarray] = []
        for member, key in zip(self.members, keys, strict=True):
            member.check_input(channels, where)
            if key not in prepared:
                image, _, info = preprocess_case(channels, None, member.plan, where)
                prepared[key] = (image, info)
            image, info = prepared[key]
            left[key] -= 1
            if not left[key]:
                del prepared[key]
            _, probs = member._predict_preprocessed(
                channels,
                image,
                info,
                tta=tta,
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                postprocess=False,
                with_probabilities=True,
                slice_filter=False,  # applied below, after the mean
            )
            if member in judged:
                maps.append(member._slice_foreground_on_input(image, info))
            del image
            assert probs is not None
            total = probs if total is None else total + probs
        assert total is not None
        total /= len(self.members)
        self.last_suppressed_slices = []
        if judged:
            empty = np.mean(maps, axis=0) < np.mean([m.slice_threshold for m in judged])
            total[:, empty] = 0.0
            if not self.plan.regions:
                total[0, empty] = 1.0
            # input-grid slices (array axis 0) cleared entirely, for the log and the report
            self.last_suppressed_slices = [int(k) for k in np.flatnonzero(empty.all(axis=(1, 2)))]
        if self.plan.regions:  # the mean of the members' region probabilities, thresholded
            return self._finish_regions(total, channels, postprocess, with_probabilities)
        values = np.argmax(total, axis=0)
        dtype = np.uint8 if total.shape[0] <= 256 else np.uint16
        labels = values.astype(dtype)
        if postprocess and (self.rules.classes or self.rules.keep_largest_foreground):
            labels = apply_rules(labels, self.rules, channels[0].spacing)
        meta = _output_meta(channels[0])
        return Volume(labels, geometry=channels[0].geometry, meta=meta), total if with_probabilities else None


def _model_record(folder: Path) -> dict[str, Any]:
    """A model folder's model.json ({} when unreadable: it only feeds the description)."""
    try:
        record = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _dataset_name(folder: Path) -> str:
    """The ``name`` of the dataset.json training copied into the model folder ("" if none)."""
    try:
        name = json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return ""
    return str(name).strip() if name else ""


def _model_name(path: Path) -> str:
    """A model path as a reader knows it: a fold folder with its parent (``3d/fold_0``; every
    fold is named fold_<k>), other folders by their name."""
    path = Path(os.path.abspath(path))
    if re.fullmatch(r"fold_\w+", path.name) and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def _output_meta(image: Volume) -> dict[str, Any]:
    """What a prediction keeps of its input's ``meta``: non-identifying facts, and a NIfTI
    input's two transforms where they disagree (its NIfTI outputs then carry both)."""
    from medseg.io.itk import NIFTI_TRANSFORMS_KEY

    keep = ("modality", "series_description", "source", NIFTI_TRANSFORMS_KEY)
    return {k: v for k, v in image.meta.items() if k in keep}


def restore_probability(prob: np.ndarray, info: Any, default: float) -> np.ndarray:
    """One class's probability map, linearly resampled and un-cropped onto the input grid."""
    from medseg.geometry.crop import cropped_geometry, uncrop
    from medseg.geometry.resample import resample_image

    original = info.original_geometry
    grid = cropped_geometry(original, info.crop_box)
    res = resample_image(Volume(prob, geometry=info.preprocessed_geometry), grid, default_value=default)
    return uncrop(res, original, info.crop_box, fill=default).array.astype(np.float32)


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class InputCase:
    case_id: str
    kind: Literal["files", "dicom"]
    paths: tuple[Path, ...]
    series: str | int | None = None


def _strip_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover_cases(path: str | Path, *, series: str | None = None, channels: int = 1) -> list[InputCase]:
    """The cases found at ``path``: a file, a DICOM series folder, or a folder of cases.

    A folder of image files is grouped by nnU-Net's ``CASE_XXXX`` channel suffix when
    the model has several channels. DICOM is judged by its headers, not by folder names: a
    folder whose series all belong to one study of one patient (StudyInstanceUID, PatientID)
    is one case, however its series are laid out (a TCIA download: STUDY/<one folder per
    series>/), and ``series`` (UID, description, wildcard pattern or index; ``@last``/``@first``
    settles a sequence repeated within it) picks one of them. Otherwise a folder whose series
    live in subfolders is a cohort: one case per subfolder (linked subfolders count, named by
    their link), each reading the ``series`` it holds.
    """
    src = Path(path)
    kind = describe_path(src)
    if kind in ("itk", "image-2d", "dicom-file"):
        stem = _strip_suffix(src.name)
        m = _CHANNEL_RE.match(stem)
        return [InputCase(m["case"] if m else stem, "files", (src,))]
    files = sorted(
        f
        for f in src.iterdir()
        if f.is_file()
        and not f.name.startswith(".")
        and (has_itk_suffix(f) or f.suffix.lower() in IMAGE_2D_SUFFIXES)
    )
    # `medseg roi -o CROP.nii.gz` draws CROP.roi.png beside the crop: a picture to look at,
    # not a case (read as one, a colour PNG fails the run).
    pictures = {sidecar_path(f, ".roi.png") for f in files if has_itk_suffix(f)}
    roi_pictures = [f for f in files if f in pictures]
    if roi_pictures:
        log.info(
            "%s: %d picture(s) that `medseg roi` drew beside its crops are not cases: %s",
            src,
            len(roi_pictures),
            ", ".join(f.name for f in roi_pictures),
        )
        files = [f for f in files if f not in pictures]
    if files:  # image files (a folder of PNG/TIFF slices too: one 2D case per file)
        groups: dict[str, dict[int, Path]] = {}
        for f in files:
            stem = _strip_suffix(f.name)
            m = _CHANNEL_RE.match(stem)
            if channels > 1 and not m:
                raise InputError(
                    f,
                    "name lacks a channel suffix",
                    expected=f"CASE_0000 ... CASE_{channels - 1:04d} for a {channels}-channel model",
                )
            case, ch = (m["case"], int(m["channel"])) if m else (stem, 0)
            groups.setdefault(case, {})[ch] = f
        out = []
        for case in sorted(groups, key=natural_key):  # case2 before case10
            chans = groups[case]
            out.append(InputCase(case, "files", tuple(chans[c] for c in sorted(chans))))
        return out
    found, broken = _list_cohort_series(src)
    cases = _discover_dicom_cases(src, series, found, broken)
    holding = {_top_folder(src, Path(s.folder)) for s in found} | {b for b, _ in broken}
    _warn_folders_without_images(src, cases, holding)
    return sorted(cases, key=lambda c: natural_key(c.case_id))  # patient2 before patient10


def _warn_folders_without_images(src: Path, cases: Sequence[InputCase], holding: set[Path]) -> None:
    """In a cohort of patient folders, name the folders that hold no DICOM image (an export
    that failed, a folder of reports): a cohort of 300 that gives 299 rows says which one
    is missing. ``holding``: the top folders with a series or an unreadable file."""
    if len(cases) < 2 or any(p.parent != src for c in cases for p in c.paths):
        return
    folders = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    empty = [d.name for d in folders if d not in holding]
    if empty:
        log.warning(
            "%d of %d folders in %s hold no DICOM image series and are not cases: %s",
            len(empty),
            len(folders),
            src,
            ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""),
        )


def _discover_dicom_cases(
    src: Path, series: str | None, found: list[SeriesInfo], broken: list[tuple[Path, InputError]]
) -> list[InputCase]:
    """The cases of the DICOM folder ``src`` (see :func:`discover_cases`)."""
    if not broken:
        return _dicom_cases(src, found, series)
    # One patient folder's unreadable file fails that case alone (read again when the case
    # runs, so its error is the case's), not the cohort.
    good_roots = {_top_folder(src, Path(s.folder)) for s in found}
    if _one_study(found) and len(good_roots) > 1:
        raise broken[0][1]  # series folders of one study, one of them unreadable: not a cohort
    if len(good_roots) == 1:  # one readable patient folder left
        (root,) = good_roots
        cases = [InputCase(root.name, "dicom", (root,), series)]
        _log_cohort(1 + len(broken), 1 + len(broken))
    else:
        cases = _dicom_cases(src, found, series, unreadable=len(broken))
    if any(src in c.paths for c in cases):
        raise broken[0][1]
    log.warning(
        "%d of %d patient folders hold an unreadable DICOM file and fail alone: %s",
        len(broken),
        len(broken) + len({p for c in cases for p in c.paths}),
        ", ".join(b.name for b, _ in broken[:10]) + (" ..." if len(broken) > 10 else ""),
    )
    cases += [InputCase(b.name, "dicom", (b,), series) for b, _ in broken]
    return sorted(cases, key=lambda c: c.case_id)


def _list_cohort_series(src: Path) -> tuple[list[SeriesInfo], list[tuple[Path, InputError]]]:
    """The image series under ``src`` and the top-level folders that could not be read (each with
    its error): a file that stops the scan of a folder of patient folders stops only its own
    folder's. An unreadable file directly in ``src``, or in every folder, is raised."""
    from medseg.io.dicom import list_series

    try:
        return list_series(src), []
    except InputError as exc:
        bad = exc.path
        if bad is None or _top_folder(src, bad.parent) == src:
            raise
        first = exc
    found: list[SeriesInfo] = []
    broken: list[tuple[Path, InputError]] = []
    for child in sorted(c for c in src.iterdir() if c.is_dir() and not c.name.startswith(".")):
        try:
            found += list_series(child)
        except InputError as exc:
            if exc.problem.startswith("holds no DICOM image series"):
                continue  # a folder of other files: not a case, as in one scan of ``src``
            broken.append((child, exc))
    if not found or not broken:
        raise first
    return found, broken


def _dicom_cases(
    src: Path, found: list[SeriesInfo], series: str | None, unreadable: int = 0
) -> list[InputCase]:
    """The cases of the DICOM series ``found`` under the folder ``src``; ``unreadable`` patient
    folders beside them (each a failing case, added by the caller) count in the cohort's log."""
    from medseg.io.dicom import match_series, split_series_rule

    if not found:
        raise InputError(src, "holds no images", expected="image files or DICOM series")
    if len(found) == 1:
        return [InputCase(src.name, "dicom", (src,), series)]
    if _one_study(found):
        if not _one_series_per_folder(src, found, series):
            return [_study_case(src, found, series)]
        # Patient folders that an anonymiser gave one PatientID and StudyInstanceUID: the
        # layout (the same series once in every folder) says cohort, not one study.
        log.warning(
            "%s: every series has the same StudyInstanceUID and PatientID (anonymised?) but each "
            "folder holds one %s: read as a cohort of patient folders",
            src,
            "series" if series is None else f"series matching {series!r}",
        )
    if series is not None:
        # the same matching as load_series (UID, description, wildcards); an @last/@first
        # rule is applied per patient folder when each case is read
        by_name_hits = set(match_series(found, split_series_rule(series)[0]))
        matches = [s for i, s in enumerate(found) if i in by_name_hits or str(series) == str(s.series_number)]
        roots = {_top_folder(src, Path(s.folder)) for s in matches}
        per_root = Counter(_top_folder(src, Path(s.folder)) for s in found)
        by_name = bool(by_name_hits)
        # A number in a cohort of patient folders: with several series per folder it would
        # pick one series of the whole cohort; matched as a series number in several folders,
        # each folder would then read it as a position. Either way, ask for the description.
        cohort = len(per_root) > 1 and max(per_root.values()) > 1 and src not in per_root
        if not by_name and (cohort or (len(matches) > 1 and len(roots) > 1)):
            raise InputError(
                src,
                f"--series {series}: in a cohort of {len(per_root)} patient folders a number is ambiguous",
                expected="the series description (or UID) shared by the patients, e.g. --series t2_tse_tra "
                "(wildcards allowed: 't2_tse_tra*'; add @last for a sequence repeated in a study)",
            )
        # A UID names one patient's series; a description is asked of every patient folder.
        by_uid = any(str(series) == s.series_uid for s in matches)
        if len(matches) <= 1 or len(roots) == 1:
            if cohort and len(roots) == 1 and by_uid:  # one patient's series picked out of a cohort
                (root,) = roots
                return [InputCase(root.name, "dicom", (root,), series)]
            if not (cohort and roots):
                return [InputCase(src.name, "dicom", (src,), series)]
        if len(per_root) > len(roots):
            # Not dropped: each such folder is a case that fails naming the series it holds, so
            # predictions.json, the index and cohort_volumes.csv list every patient of the cohort
            # (a patient left out with only a warning was missing from them, silently under -q).
            missing = sorted(r.name for r in set(per_root) - roots)
            log.warning(
                "%d of %d folders hold no series matching --series %r; they fail as cases: %s",
                len(missing),
                len(per_root),
                series,
                ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
            )
        _log_cohort(len(per_root) + unreadable, len(per_root) + unreadable)
        return [InputCase(r.name, "dicom", (r,), series) for r in sorted(per_root)]
    roots_all = [_top_folder(src, Path(s.folder)) for s in found]
    if len(set(roots_all)) == len(found) and all(r != src for r in roots_all):
        _log_cohort(len(found) + unreadable, len(found) + unreadable)
        return [InputCase(r.name, "dicom", (r,)) for r in sorted(set(roots_all))]
    per_folder = Counter(roots_all)
    if len(per_folder) > 1 and src not in per_folder and min(per_folder.values()) == 1:
        # A cohort of patient folders where some hold several series: those cases fail alone
        # (each asks for --series, listing its series) instead of stopping the whole cohort.
        several = sorted(r.name for r, n in per_folder.items() if n > 1)
        log.warning(
            "%d of %d folders hold several series and need --series (a description they share): %s",
            len(several),
            len(per_folder),
            ", ".join(several[:10]) + (" ..." if len(several) > 10 else ""),
        )
        _log_cohort(len(per_folder) + unreadable, len(per_folder) + unreadable)
        return [InputCase(r.name, "dicom", (r,)) for r in sorted(per_folder)]
    if len(per_folder) > 1 and src not in per_folder and not _one_study(found):
        # Patient folders that each hold several series: a cohort that needs the description
        # of the series to segment in every folder, not one series of the 43 picked.
        folders_with: dict[str, set[Path]] = {}
        for s, root in zip(found, roots_all, strict=True):
            folders_with.setdefault(s.description or "?", set()).add(root)
        shared = sorted(folders_with.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        raise InputError(
            src,
            f"is a cohort of {len(per_folder)} patient folders holding {len(found)} DICOM series "
            "(several per folder)",
            expected="--series with the description of the series to segment in every folder, e.g. "
            f"--series '{shared[0][0]}' (wildcards allowed: 't2_tse_tra*'; add @last for a sequence "
            "repeated in a study)",
            found="; ".join(f"'{d}' in {len(r)} of {len(per_folder)} folders" for d, r in shared[:15])
            + (f"; and {len(shared) - 15} more descriptions" if len(shared) > 15 else ""),
        )
    listing = "; ".join(
        f"[{i}] {s.description or '?'} ({s.modality}, {s.n_files} files, UID {s.series_uid})"
        for i, s in enumerate(found)
    )
    raise InputError(
        src,
        f"holds {len(found)} DICOM series; choose one with --series (UID, description or index)",
        found=listing,
    )


def _one_study(found: Sequence[SeriesInfo]) -> bool:
    """True when every series comes from the same study of the same patient (by the digest of
    their StudyInstanceUID and PatientID; a series without one known study never counts)."""
    keys = {s.study_key for s in found}
    return len(keys) == 1 and "" not in keys


def _one_series_per_folder(src: Path, found: Sequence[SeriesInfo], series: str | None) -> bool:
    """True when every top-level folder under ``src`` holds exactly one of the series asked for
    (all of them without ``series``, which must then share one description): patient folders
    of a cohort, not the series folders of one study."""
    from medseg.io.dicom import match_series, split_series_rule

    tops = [_top_folder(src, Path(s.folder)) for s in found]
    if src in tops or len(set(tops)) < 2:
        return False
    if series is None:
        return len(set(tops)) == len(tops) and len({s.description for s in found}) == 1
    hits = Counter(tops[i] for i in match_series(found, split_series_rule(series)[0]))
    return len(hits) == len(set(tops)) and all(n == 1 for n in hits.values())


def _study_case(src: Path, found: Sequence[SeriesInfo], series: str | None) -> InputCase:
    """The one case of a folder holding one study's series, ``series`` checked against them now
    (an error lists the series, as reading the case would)."""
    from medseg.io.dicom import select_series_index

    picked = found[select_series_index(found, series, src)]
    number = "?" if picked.series_number is None else picked.series_number
    # header values only, never a patient's name or ID
    log.info(
        "one study, %d series: picked No. %s '%s' (--series %s)",
        len(found),
        number,
        picked.description,
        series,
    )
    return InputCase(_study_case_id(src), "dicom", (src,), series)


# TCIA and many PACS exports name a study folder after its date ("07-08-2011", "2011-07-08-NA-...").
_DATE_FOLDER = re.compile(r"^\d{1,4}[-./_]\d{1,2}[-./_]\d{1,4}(?!\d)")


def _study_case_id(src: Path) -> str:
    """The case name of one study folder: its name, or, when that is a date (two patients
    scanned the same day would write the same output), ``<patient folder>_<date>``."""
    resolved = src if src.name else src.resolve()
    parent = resolved.parent.name or resolved.resolve().parent.name
    if _DATE_FOLDER.match(resolved.name) and parent:
        return f"{parent}_{resolved.name}"
    return resolved.name


def _log_cohort(n_folders: int, n_cases: int) -> None:
    log.info(
        "cohort of %d patient folders (not one study): %d case%s",
        n_folders,
        n_cases,
        "" if n_cases == 1 else "s",
    )


def _top_folder(root: Path, folder: Path) -> Path:
    # Compared as written, not resolved: a patient folder linked in from an archive lies
    # under ``root`` by its link's name (its target does not).
    try:
        rel = Path(os.path.abspath(folder)).relative_to(os.path.abspath(root))
    except ValueError:
        return root
    return root / rel.parts[0] if rel.parts else root


# --------------------------------------------------------------------------- running
@dataclass
class CaseResult:
    case_id: str
    ok: bool
    outputs: dict[str, str] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    # True when every requested output existed and the case was not predicted again
    # (``ok`` stays True: its outputs are there; ``overwrite`` redoes them).
    skipped: bool = False
    # True when the case failed on an unexpected error (a bug) rather than on its input.
    internal_error: bool = False
    # Formats that could not be written (format -> why) while the others were: the case is
    # failed (``ok`` False) and ``outputs`` lists what was written, so that a re-run without
    # these formats completes it.
    not_written: dict[str, str] = field(default_factory=dict)
    # The warnings medseg logged while this case ran (a CT model given an MR series, outputs
    # not written because nothing was segmented, ...), as short texts without the patient's name, ID or birth date:
    # recorded in predictions.json so that the index and a quiet or batch run show them.
    warnings: list[str] = field(default_factory=list)


# A recorded warning is cut to this many characters (a list of 300 folders stays readable).
MAX_WARNING_CHARS = 300


class _CaseWarnings(logging.Handler):
    """Collects the warnings medseg logs while one case is predicted (see :func:`case_warnings`).

    Only records of the thread that runs the case count: a case is predicted in the calling
    thread (cases run one after another), and a record of another thread (a caller's own
    work beside ``predict``) is not this case's. Errors are not collected: a case's error is
    its ``error`` (or ``not_written``) already.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.raw: list[str] = []
        self.identifiers: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread or record.levelno >= logging.ERROR:
            return
        try:
            text = record.getMessage()
        except Exception:  # a malformed log call must not fail the case
            return
        self.raw.append(text)

    def texts(self) -> list[str]:
        """The case's warnings, in order and each once, with the patient's identifiers
        replaced by ``(patient)``, on one line and cut to :data:`MAX_WARNING_CHARS`."""
        words = sorted(self.identifiers, key=len, reverse=True)
        alternatives = "|".join(rf"(?<!\w){re.escape(w)}(?!\w)" for w in words)
        pattern = re.compile(alternatives, re.IGNORECASE) if words else None
        out: list[str] = []
        for text in self.raw:
            text = " ".join(text.split())
            if pattern is not None:
                text = pattern.sub("(patient)", text)
            if len(text) > MAX_WARNING_CHARS:
                text = text[: MAX_WARNING_CHARS - 1] + "…"
            if text not in out:
                out.append(text)
        return out


@contextlib.contextmanager
def case_warnings() -> Iterator[_CaseWarnings]:
    """Within the block, collect the warnings of the ``medseg`` loggers (one case's).

    What the ``medseg`` logger lets through is collected: ``predict --quiet`` hides warnings
    from the console only (:func:`medseg.cli.common.errors_only`), so they are still recorded.
    """
    handler = _CaseWarnings()
    logger = logging.getLogger("medseg")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _active_collectors() -> list[_CaseWarnings]:
    """The warning collectors of the cases running in this thread (:func:`case_warnings`)."""
    me = threading.get_ident()
    return [
        h for h in logging.getLogger("medseg").handlers if isinstance(h, _CaseWarnings) and h.thread == me
    ]


def _note_patient_identifiers(series: Any) -> None:
    """Tell the active case's warning collector the patient's name, ID and birth date as the
    source series gives them, so that no recorded warning holds them (a warning quoting a
    header value, a folder named after the patient)."""
    collectors = _active_collectors()
    if not collectors or series is None or not series.datasets:
        return
    ds = series.datasets[0]
    values: set[str] = set()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs"):
        value = str(ds.get(keyword, "") or "").strip()
        if not value:
            continue
        values.add(value)
        if keyword == "PatientBirthDate" and re.fullmatch(r"\d{8}", value):  # also as 1961-02-03
            values.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        if keyword == "PatientName":  # Family^Given^Middle: each part alone too
            values |= {part.strip() for part in re.split(r"[\^=]", value) if len(part.strip()) >= 2}
    for collector in collectors:
        collector.identifiers |= values


def _outputs_for(case_id: str, out: Path, config: PredictConfig) -> dict[str, Path]:
    return case_targets(case_id, out, config.formats)


def _read_case(
    case: InputCase, spacing: tuple[float, float, float] | None = None, volume: int | None = None
) -> tuple[list[Volume], Any]:
    if case.kind == "dicom":
        from medseg.io.dicom import load_series

        series = load_series(case.paths[0], series=case.series, volume=volume)
        return [series.volume], series
    return [ch for p in case.paths for ch in _read_channels(p, spacing)], None


def _read_channels(path: Path, spacing: tuple[float, float, float] | None) -> list[Volume]:
    if path.suffix.lower() in IMAGE_2D_SUFFIXES:  # PNG/TIFF: no geometry in the file
        from medseg.io import read_volume

        return [read_volume(path, spacing=spacing)]
    if spacing is not None:
        log.warning("%s: --spacing ignored (the file has its own geometry)", path)
    return read_channels(path)


def predict_case(
    model: SegmentationModel, case: InputCase, out: Path, config: PredictConfig, *, progress: bool = False
) -> CaseResult:
    """Predict one case and write its outputs; raises MedsegError on bad input. ``progress``
    shows a bar over the network passes and one over several meshes (not inside another
    bar: Rich shows one at a time)."""
    start = time.monotonic()
    targets = _outputs_for(case.case_id, out, config)
    inputs = {p.resolve() for p in case.paths}
    for fmt, path in targets.items():
        if path.resolve() in inputs:
            raise InputError(
                path, f"the {fmt} output would be the input image itself", expected="another output folder"
            )
    kept: dict[str, Path] = {}
    if not config.overwrite:
        # Outputs of an earlier (or killed) run are kept; only the missing formats are made,
        # from the kept label map when there is one (so that all outputs agree).
        kept = {fmt: p for fmt, p in targets.items() if p.is_file()}
        meshes = targets.get("mesh")
        if meshes is not None and meshes.is_dir():  # written atomically: complete when present
            if not any(meshes.glob(f"*{config.mesh_suffix}")):
                raise InputError(
                    meshes,
                    "holds meshes of another format",
                    expected=f"{config.mesh_suffix} files, or --overwrite to replace the folder",
                )
            kept["mesh"] = meshes
        for folder_format in ("probabilities", "regions"):
            folder = targets.get(folder_format)
            if folder is not None and folder.is_dir():
                kept[folder_format] = folder
        _check_kept_dicom_identity(kept, config)
        # Under --deidentify a kept volumes.csv is checked against the source's study first
        # (_check_kept_volume_table): a case wholly kept is read before it is called done.
        check_source = config.deidentify and "volumes" in kept and case.kind == "dicom"
        if len(kept) == len(targets) and not check_source:
            raise OutputExistsError(next(iter(kept.values())))
        if kept and len(kept) < len(targets):
            log.info(
                "%s: %s exist and are kept; writing %s",
                case.case_id,
                ", ".join(kept),
                ", ".join(f for f in targets if f not in kept),
            )
        targets = {fmt: p for fmt, p in targets.items() if fmt not in kept}
    if case.kind != "dicom" and any(f in DICOM_FORMATS for f in config.formats):
        raise InputError(
            case.paths[0],
            "DICOM SEG and RTSTRUCT outputs need a DICOM input series",
            found="a non-DICOM file",
        )
    if "regions" in config.formats and not model.plan.regions:
        raise ConfigError("the regions output needs a region-based model (its plan declares no regions)")
    channels, series = _read_case(case, config.spacing, config.volume)
    _note_patient_identifiers(series)
    collectors = _active_collectors()
    warnings_so_far = collectors[-1].texts if collectors else None  # for the report
    _check_kept_against_source(kept, targets, channels[0], series, config)
    if kept and not targets:  # wholly kept, and its kept volume table names the study as asked
        raise OutputExistsError(next(iter(kept.values())))
    _warn_if_not_ct(model.plans, channels, case.case_id)
    not_written: dict[str, str] = {}
    if series is not None and any(f in DICOM_FORMATS for f in targets):
        # The kept formats count as asked: a re-run left with only the impossible DICOM formats
        # to write keeps the case partial (its kept outputs listed), not failed with none.
        not_written = unwritable_dicom_formats(
            series, [*targets, *kept], pseudonym=config.pseudonym if config.deidentify else None
        )
        not_written = {f: why for f, why in not_written.items() if f in targets}
        if not_written:
            log.error(
                "case %s: %s cannot be written (%s); writing the other formats",
                case.case_id,
                ", ".join(not_written),
                next(iter(not_written.values())),
            )
        targets = {fmt: p for fmt, p in targets.items() if fmt not in not_written}
        if not targets:  # all else was kept: nothing for the network to make
            return _case_result(case.case_id, kept, not_written, start)
    # A region model's outputs need its masks, which a kept label map (painted) has lost.
    reused = None if model.plan.regions else _kept_label_map(kept, targets, channels[0], case.case_id)
    if reused is not None:
        written = write_case_outputs(
            channels[0],
            reused,
            model.label_names,
            targets,
            series=series,
            model_info=model.describe(),
            case_id=case.case_id,
            mesh_suffix=config.mesh_suffix,
            progress=progress,
            deidentify=config.deidentify,
            pseudonym=config.pseudonym,
            uid_secret=config.uid_secret,
            warnings=warnings_so_far,
        )
        return _case_result(case.case_id, {**kept, **written}, not_written, start)
    box = None
    if config.roi_views is not None:
        channels, box = _crop_to_multiplane_roi(channels, config.roi_views)
    from medseg.inference.sliding_window import window_progress
    from medseg.progress import growing_progress_bar

    # One case can take minutes on a CPU (a CT, TTA, five folds): a bar over the network
    # passes of every fold and configuration, closed before the outputs' own bars.
    calls = sum(len(m.networks) for m in model.members) if model.members else len(model.networks)
    with (
        growing_progress_bar(progress, f"segment {case.case_id}", calls) as reporter,
        window_progress(reporter),
    ):
        label, probs = model.predict(
            channels,
            tta=config.tta,
            overlap=config.overlap,
            sw_batch_size=config.sw_batch_size,
            postprocess=config.postprocess,
            slice_filter=config.slice_filter,
            with_probabilities="probabilities" in config.formats,
            where=str(case.paths[0]),
        )
    # A region model's masks (overlaps kept) also feed the DICOM SEG and the volume tables.
    regions = dict(model.last_region_masks) if model.plan.regions else None
    if box is not None:
        # Back onto the full axial grid: outside the ROI is background (probability 1).
        from medseg.geometry.crop import uncrop_array

        full = channels[0].meta["roi_full_geometry"]
        label = Volume(uncrop_array(label.array, full.shape, box, fill=0), geometry=full, meta=label.meta)
        if probs is not None:
            fills = [0.0 if model.plan.regions else 1.0] + [0.0] * (probs.shape[0] - 1)
            probs = np.stack(
                [uncrop_array(p, full.shape, box, fill=f) for p, f in zip(probs, fills, strict=True)]
            )
        if regions is not None:
            regions = {k: uncrop_array(m, full.shape, box, fill=False) for k, m in regions.items()}
        channels = channels[0].meta["roi_full_channels"]
    written = write_case_outputs(
        channels[0],
        label,
        model.label_names,
        targets,
        series=series,
        probabilities=probs,
        probability_names=model.probability_names,
        regions=regions,
        model_info=model.describe(),
        case_id=case.case_id,
        mesh_suffix=config.mesh_suffix,
        overwrite=config.overwrite,
        progress=progress,
        deidentify=config.deidentify,
        pseudonym=config.pseudonym,
        uid_secret=config.uid_secret,
        warnings=warnings_so_far,
    )
    return _case_result(case.case_id, {**kept, **written}, not_written, start)


def _check_kept_dicom_identity(kept: Mapping[str, Path], config: PredictConfig) -> None:
    """Under --deidentify, refuse to keep a SEG or RTSTRUCT of an earlier run that named the
    patient otherwise than this run asks (one without --deidentify, or with another
    --pseudonym): the folder would hold it while the user believes it de-identified.

    Whether medseg de-identified it is told by its DeidentificationMethod, not by
    PatientIdentityRemoved: a SEG copies that from its source, and public data (TCIA) says YES.
    The reverse (a plain re-run next to a de-identified output) is checked against the source
    once it is read (:func:`_check_kept_against_source`)."""
    if not config.deidentify:
        return
    import pydicom

    from medseg.io.dicom import DEIDENTIFICATION_METHOD, PSEUDONYM_AUTO

    # --pseudonym auto or a map: the expected pseudonym needs the source's PatientID, checked
    # once the source is read (_check_kept_against_source)
    auto = not isinstance(config.pseudonym, str) or config.pseudonym == PSEUDONYM_AUTO
    for fmt in DICOM_FORMATS:
        if fmt not in kept:
            continue
        ds = pydicom.dcmread(
            kept[fmt], stop_before_pixels=True, specific_tags=["DeidentificationMethod", "PatientID"]
        )
        ours = str(ds.get("DeidentificationMethod", "")) == DEIDENTIFICATION_METHOD
        if not ours or (not auto and str(ds.get("PatientID", "")) != config.pseudonym):
            raise InputError(
                kept[fmt],
                "an earlier run's output would be kept, de-identified otherwise than asked",
                expected="--deidentify and --pseudonym as that run had them, --overwrite to redo it, "
                "or another output folder",
                found="another pseudonym" if ours else "the patient's own name and ID",
            )


def _refuse_kept_dicom_unless(
    kept: Mapping[str, Path], keyword: str, value: str, problem: str, *, expected: str, found: str
) -> None:
    """An InputError naming the first kept SEG / RTSTRUCT whose ``keyword`` is not ``value``."""
    import pydicom

    for fmt in DICOM_FORMATS:
        if fmt in kept:
            ds = pydicom.dcmread(kept[fmt], stop_before_pixels=True, specific_tags=[keyword])
            if str(ds.get(keyword, "")) != value:
                raise InputError(kept[fmt], problem, expected=expected, found=found)


def _check_kept_against_source(
    kept: Mapping[str, Path], targets: Mapping[str, Path], image: Volume, series: Any, config: PredictConfig
) -> None:
    """Refuse to add outputs next to a kept SEG or RTSTRUCT that names the patient or study
    otherwise than they will: without --deidentify, one whose PatientID is not the source's
    (an earlier --deidentify run's); with it, one whose UIDs another --uid-secret made (or no
    secret: one per run), so that the case folder would name two de-identified studies, or
    (--pseudonym auto) whose PatientID is not the pseudonym this run derives for the source's."""
    _check_kept_volume_table(kept, targets, image, config)
    if not config.deidentify:
        if series is not None:
            _refuse_kept_dicom_unless(
                kept,
                "PatientID",
                str(series.datasets[0].get("PatientID", "")),
                "an earlier run's output would be kept, de-identified otherwise than asked",
                expected="--deidentify and --pseudonym as that run had them, --overwrite to redo it, "
                "or another output folder",
                found="de-identified",
            )
        return
    from medseg.io.dicom import PSEUDONYM_AUTO, patient_pseudonym

    patient_id = str(series.datasets[0].get("PatientID", "")).strip() if series is not None else ""
    derived = not isinstance(config.pseudonym, str) or config.pseudonym == PSEUDONYM_AUTO
    if derived and patient_id and (isinstance(config.pseudonym, str) or patient_id in config.pseudonym):
        # --pseudonym auto or a map: the pseudonym this run gives the source's patient (checked
        # here, whatever the formats, as _check_kept_dicom_identity checks a fixed one)
        _refuse_kept_dicom_unless(
            kept,
            "PatientID",
            patient_pseudonym(patient_id, config.pseudonym, config.uid_secret),
            "an earlier run's output would be kept, de-identified otherwise than asked",
            expected="--deidentify and --pseudonym as that run had them, --overwrite to redo it, "
            "or another output folder",
            found="another pseudonym",
        )
    if not any(f in targets for f in (*DICOM_FORMATS, "volumes")):
        return
    study = str(image.meta.get("study_uid") or "")
    if not study:
        return
    from medseg.io.dicom import deidentified_uid

    _refuse_kept_dicom_unless(
        kept,
        "StudyInstanceUID",
        str(deidentified_uid(study, config.uid_secret)),
        "an earlier run's output would be kept, de-identified with another UID key",
        expected="the --uid-secret that run had (a run without one cannot be matched), "
        "--overwrite to redo it, or another output folder",
        found="a study UID this run's key does not give",
    )


def _check_kept_volume_table(
    kept: Mapping[str, Path], targets: Mapping[str, Path], image: Volume, config: PredictConfig
) -> None:
    """Refuse to keep a case's volumes.csv that names the source study otherwise than this run's
    outputs will: under --deidentify one naming the original study (an earlier run without it:
    the folder would keep the UIDs de-identification replaces, and cohort_volumes.csv show them),
    and, where this run adds a DICOM SEG or RTSTRUCT, one naming another de-identified study
    (another --uid-secret) or, without --deidentify, a de-identified one."""
    if "volumes" not in kept:
        return
    study = str(image.meta.get("study_uid") or "")
    if not study:
        return
    from medseg.export.volumes import table_source
    from medseg.io.dicom import deidentified_uid

    recorded = table_source(kept["volumes"]).study_uid
    expected = str(deidentified_uid(study, config.uid_secret)) if config.deidentify else study
    if not recorded or recorded == expected:
        return
    adds_dicom = any(f in targets for f in DICOM_FORMATS)
    if config.deidentify and recorded == study:
        found = "the original study UID (a run without --deidentify)"
    elif adds_dicom:
        found = (
            "a study UID of another de-identification" if config.deidentify else "a de-identified study UID"
        )
    else:
        return
    raise InputError(
        kept["volumes"],
        "an earlier run's volume table would be kept, naming the study otherwise than this run",
        expected="--deidentify and --uid-secret as that run had them, --overwrite to redo it, "
        "or another output folder",
        found=found,
    )


def _case_result(
    case_id: str, made: Mapping[str, Path], not_written: Mapping[str, str], start: float
) -> CaseResult:
    """A predicted case's result: failed when some asked formats could not be written."""
    outputs = {k: str(v) for k, v in made.items()}
    seconds = time.monotonic() - start
    if not not_written:
        return CaseResult(case_id, True, outputs, seconds=seconds)
    reasons = dict.fromkeys(not_written.values())  # one reason usually covers every format
    error = (
        f"{', '.join(not_written)} not written ({'; '.join(reasons)}); written: "
        f"{', '.join(outputs) or 'nothing'} (run again without {', '.join(not_written)} to complete the case)"
    )
    return CaseResult(case_id, False, outputs, error=error, seconds=seconds, not_written=dict(not_written))


def _warn_if_not_ct(plans: Sequence[Plan], channels: Sequence[Volume], case_id: str) -> None:
    """One warning when a DICOM series of another modality meets a model trained on CT.

    A plan normalises a channel as ``ct`` (Hounsfield units clipped to the training range)
    only when it was trained on CT: an MR series given to it is segmented without complaint
    into labels that mean nothing. Local files only get this warning; ``pacs segment``
    refuses such a series before pulling it (``medseg.pacs.segment.check_modality``). It is
    logged by its own logger, which ``predict --quiet`` (errors only) still lets through.
    """
    for plan in plans:
        for name, norm, image in zip(plan.channel_names, plan.normalization, channels, strict=False):
            modality = str(image.meta.get("modality") or "").strip().upper()
            if norm.scheme == "ct" and modality and modality != "CT":
                _modality_log.warning(
                    "%s: the model was trained on CT (its plan normalises channel '%s' as CT, in Hounsfield "
                    "units) but this series is %s: its labels are likely meaningless",
                    case_id,
                    name,
                    modality,
                )
                return


def _kept_label_map(
    kept: Mapping[str, Path], missing: Mapping[str, Path], image: Volume, case_id: str
) -> Volume | None:
    """The label map an earlier run left, to derive the missing formats from (None: predict).

    Deriving them from it, rather than from a new prediction (another model, TTA setting or
    GPU run), keeps all of a case's outputs in agreement. Probabilities need the model.
    """
    from medseg.export.case import LABEL_SUFFIX

    source = next((kept[f] for f in LABEL_SUFFIX if f in kept), None)
    if source is None or "probabilities" in missing or "regions" in missing:
        if kept:
            log.warning(
                "%s: kept outputs (%s) come from an earlier prediction; %s made from a new one",
                case_id,
                ", ".join(kept),
                ", ".join(missing),
            )
        return None
    from medseg.io import read_volume

    label = read_volume(source)
    if not label.geometry.is_close(image.geometry) or label.array.dtype.kind not in "iub":
        raise InputError(
            source,
            "the kept label map does not fit this case",
            expected="the input's grid and integer labels (or --overwrite to predict again)",
            found="; ".join(label.geometry.differences(image.geometry)) or f"{label.array.dtype} values",
        )
    log.info("%s: %s made from the kept %s", case_id, ", ".join(missing), source.name)
    return Volume(label.array, geometry=image.geometry, meta=label.meta)


def _crop_to_multiplane_roi(channels: list[Volume], views: tuple[Path, Path]) -> tuple[list[Volume], Any]:
    """Crop every channel to the multi-plane ROI of the axial image and its two views.

    The model then sees what it was trained on (Meyer et al. crop to the ROI); the
    full channels and grid ride along in ``meta`` so the prediction can be put back.
    """
    from medseg.geometry.crop import crop
    from medseg.geometry.roi import multiplane_roi
    from medseg.io import read_volume

    sagittal, coronal = (read_volume(v) for v in views)
    roi = multiplane_roi(channels[0], sagittal, coronal)
    cropped = [crop(ch, roi.box, outside="error") for ch in channels]
    cropped[0].meta = {
        **cropped[0].meta,
        "roi_full_geometry": channels[0].geometry,
        "roi_full_channels": channels,
    }
    log.info("multi-plane ROI: predicting on %s of the axial grid %s", roi.box.shape, channels[0].shape)
    return cropped, roi.box


def predict(
    input_path: str | Path,
    model: str | Path | Sequence[str | Path] | SegmentationModel,
    out_dir: str | Path,
    config: PredictConfig | None = None,
    *,
    progress: bool = False,
) -> list[CaseResult]:
    """Predict every case at ``input_path``; returns one result per case (failed ones included).

    Writes ``out_dir/predictions.json`` with each case's status and outputs, merged with an
    earlier run's file in the folder so that it describes every case on disk. Without
    ``overwrite``, existing outputs are kept: a case with all of them is not redone (its
    result has ``skipped=True``), a case with some is predicted and only the missing formats
    are written (see :func:`_merge_with_earlier`). Kept outputs must come from the same
    prediction (model content, acting rules and options; ``medseg.inference.provenance``):
    otherwise the run is refused before anything is written.
    """
    cfg = config or PredictConfig()
    seg = (
        model
        if isinstance(model, SegmentationModel)
        else SegmentationModel(
            model,
            device=cfg.device,
            backend=cfg.backend,
            threads=cfg.threads,
            cpu_bf16=cfg.cpu_bf16,
            channels_last=cfg.channels_last,
        )
    )
    cases = discover_cases(input_path, series=cfg.series, channels=len(seg.plan.channel_names))
    if cfg.roi_views is not None and len(cases) != 1:
        raise InputError(
            input_path,
            "--roi-views gives the sagittal and coronal views of one study",
            expected="one axial image or series",
            found=f"{len(cases)} cases",
        )
    for plan in seg.plans:
        _check_slices_for_volume_model(input_path, cases, plan)
    if "regions" in cfg.formats and not seg.plan.regions:
        raise ConfigError(
            f"{seg.path}: the regions output needs a region-based model (its plan declares no regions)"
        )
    dicom_formats = [f for f in cfg.formats if f in DICOM_FORMATS]
    if dicom_formats and cases and not any(c.kind == "dicom" for c in cases):
        raise InputError(
            input_path,
            f"{', '.join(dicom_formats)} output needs DICOM input (the segmentation refers to the "
            "source series)",
            expected="a DICOM series folder, or formats such as nifti,mesh,volumes,overlay,report",
            found=f"{len(cases)} non-DICOM case(s)",
        )
    dicom_cases = sum(1 for c in cases if c.kind == "dicom")
    from medseg.io.dicom import PSEUDONYM_AUTO

    fixed = isinstance(cfg.pseudonym, str) and cfg.pseudonym != PSEUDONYM_AUTO
    if cfg.deidentify and dicom_formats and dicom_cases > 1 and fixed:
        # one fixed --pseudonym per run: a cohort of several patients would become one patient
        log.warning(
            "--deidentify: the %s of all %d DICOM cases name one patient, %r (--pseudonym); if they "
            "are different patients, a PACS files them as one: give --pseudonym auto (one pseudonym "
            "per patient, derived from its PatientID with the --uid-secret), or run predict once per "
            "patient, each with its own --pseudonym",
            " and ".join(dicom_formats),
            dicom_cases,
            cfg.pseudonym,
        )
    if cfg.shard is not None:
        i, n = cfg.shard
        cases = cases[i::n]
    from medseg.io.atomic import prepare_output_folder, run_lock

    out = prepare_output_folder(out_dir)
    summary_name = (
        "predictions.json" if cfg.shard is None else f"predictions_shard{cfg.shard[0]}of{cfg.shard[1]}.json"
    )
    # One run per summary at a time (the shards of a SLURM array write their own): a second
    # run into the folder would interleave its outputs and summary with this one's.
    with run_lock(out / f".{summary_name}.lock", "medseg predict"):
        return _predict_into(seg, cases, out, cfg, summary_name, progress)


def _predict_into(
    seg: SegmentationModel,
    cases: Sequence[InputCase],
    out: Path,
    cfg: PredictConfig,
    summary_name: str,
    progress: bool,
) -> list[CaseResult]:
    """:func:`predict` once its output folder is held: check kept outputs, predict every case,
    write the summary (after every case) and the cohort table."""
    from medseg.inference.provenance import check_kept_outputs_match, prediction_key

    key = prediction_key(
        seg.folders, to_dict(cfg), backend=seg.backend, rules=seg.rules, cpu_bf16=seg.cpu_bf16
    )
    if not cfg.overwrite:
        # Outputs of every format count, not only those asked for now: a case re-run for a new
        # format keeps its other outputs (and its summary entry names them with this run's id).
        kept_cases = [
            c.case_id
            for c in cases
            if any(p.exists() for p in case_targets(c.case_id, out, FORMATS).values())
        ]
        check_kept_outputs_match(out, key, kept_cases)
    log.info(
        "predicting %d case(s) with %s (%s, %d fold(s), %s on %s: %s%s)",
        len(cases),
        seg.path,
        " + ".join(p.configuration for p in seg.plans),
        len(seg.folders),
        seg.backend,
        seg.device,
        seg.precision_text(),
        ", mirroring TTA" if cfg.tta else "",
    )
    results: list[CaseResult] = []
    existing: dict[str, dict[str, Path]] = {}  # cases not redone: their outputs exist
    model_name = ", ".join(str(p) for p in seg.paths)
    earlier = _read_earlier(out / summary_name, model_name)
    warned: set[str] = set()

    def write_summary() -> None:
        # a failed case that wrote some formats (others impossible) says which prediction made them
        new_entries = [
            {**to_dict(r), "prediction_id": key["id"]} if r.outputs and not r.skipped else to_dict(r)
            for r in results
        ]
        entries = _merge_with_earlier(out / summary_name, new_entries, existing, earlier, warned)
        write_text_atomic(
            out / summary_name,
            json.dumps(
                {
                    "medseg_version": medseg.__version__,
                    "model": model_name,
                    "model_info": seg.describe(),
                    # the UID secret never: with it the original UIDs map to the shared ones
                    "config": {
                        **to_dict(cfg),
                        "uid_secret": "(given, not recorded)" if cfg.uid_secret else None,
                        # nor a --pseudonym-map: it links each patient's ID to its pseudonym
                        **(
                            {"pseudonym": "(a map, not recorded)"}
                            if not isinstance(cfg.pseudonym, str)
                            else {}
                        ),
                    },
                    "prediction": key,
                    "cases": entries,
                },
                indent=2,
            )
            + "\n",
            overwrite=True,
        )

    with progress_bar(progress and len(cases) > 1, "predict", len(cases)) as advance:
        for case in cases:
            if len(cases) == 1:  # no progress bar for one case: say what is running
                log.info("case %s ...", case.case_id)
            started = time.monotonic()  # a failed case's time too: failing fast or after the network
            with case_warnings() as collected:
                _run_case(
                    seg, case, out, cfg, progress and len(cases) == 1, len(cases), started, results, existing
                )
            results[-1].warnings = collected.texts()
            # after every case, so that a killed run's outputs say which prediction made them
            # (a resume with another model is refused) and its summary lists what it did
            write_summary()
            advance()
    write_summary()
    _drop_superseded_failures(out, summary_name, {r.case_id for r in results if r.ok})
    if "volumes" in cfg.formats:
        from medseg.export.volumes import write_cohort_volumes

        table = write_cohort_volumes(out)
        if table is not None:
            log.info("volumes of every case in %s: %s", out, table)
    if "report" in cfg.formats:
        # Also for one case: the folder may gather more (re-runs, SLURM shards), and a run
        # asked for reports then always leaves the page that lists them.
        from medseg.export.index import write_cohort_index

        index = write_cohort_index(out)
        if index is not None:
            log.info("every case's status and report: %s", index)
    return results


def _run_case(
    seg: SegmentationModel,
    case: InputCase,
    out: Path,
    cfg: PredictConfig,
    progress: bool,
    n_cases: int,
    started: float,
    results: list[CaseResult],
    existing: dict[str, dict[str, Path]],
) -> None:
    """Predict one case of :func:`_predict_into`'s loop and append its result to ``results``:
    a failure on its input (or a bug, in a cohort) is the case's, not the run's."""
    try:
        # one case: no case bar, so its meshes may have theirs
        results.append(predict_case(seg, case, out, cfg, progress=progress))
    except OutputExistsError:
        log.info("case %s not redone: its outputs exist (overwrite redoes them)", case.case_id)
        existing[case.case_id] = _outputs_for(case.case_id, out, cfg)
        on_disk = {fmt: str(p) for fmt, p in existing[case.case_id].items()}
        results.append(CaseResult(case.case_id, True, on_disk, skipped=True))
    except MedsegError as exc:
        log.error("case %s failed: %s", case.case_id, exc)
        results.append(CaseResult(case.case_id, False, error=str(exc), seconds=time.monotonic() - started))
    except OSError as exc:  # e.g. disk full while writing: nothing partial is left (atomic writes)
        log.error("case %s failed while writing: %s", case.case_id, exc)
        results.append(
            CaseResult(
                case.case_id,
                False,
                error=f"{type(exc).__name__}: {exc}",
                seconds=time.monotonic() - started,
            )
        )
    except Exception as exc:
        if n_cases == 1:  # one case: the caller reports the bug (the CLI: exit 3)
            raise
        # A bug met on one study of a cohort must not cost the rest of the cohort; the
        # case is listed failed and internal_error says it is a bug to report.
        from medseg.io.dicom import safe_error_text

        text = f"internal error: {safe_error_text(exc)}"
        log.error(
            "case %s failed with an %s (please report it; MEDSEG_DEBUG=1 shows the traceback)",
            case.case_id,
            text,
        )
        log.debug("traceback of case %s", case.case_id, exc_info=True)
        results.append(
            CaseResult(
                case.case_id,
                False,
                error=text,
                internal_error=True,
                seconds=time.monotonic() - started,
            )
        )


def _check_slices_for_volume_model(input_path: str | Path, cases: Sequence[InputCase], plan: Plan) -> None:
    """A folder of PNG slices is one 2D case per file; a 2.5D or 3D model needs the stack.

    Each PNG alone would be segmented without its neighbouring slices (a 2.5D model sees
    copies of the slice, a 3D one a one-slice volume): the result would differ silently from
    predicting the stacked scan, so this is refused with the command that stacks the slices.
    """
    if plan.configuration == "2d" or (plan.configuration == "2.5d" and plan.slab_slices == 1):
        return
    pngs = [c for c in cases if c.kind == "files" and all(p.suffix.lower() == ".png" for p in c.paths)]
    tiffs = [
        c for c in cases if c.kind == "files" and all(p.suffix.lower() in (".tif", ".tiff") for p in c.paths)
    ]
    if tiffs:  # a TIFF may hold a whole stack; one page means a 2D slice
        from medseg.io import read_volume

        if read_volume(tiffs[0].paths[0], spacing=(1.0, 1.0, 1.0)).shape[0] == 1:
            pngs += tiffs
    if not pngs:
        return
    what = f"a {plan.configuration} model" + (
        f" ({plan.slab_slices} slices per input)" if plan.slab_slices > 1 else ""
    )
    if len(pngs) > 1:
        folder = pngs[0].paths[0].parent
        raise InputError(
            input_path,
            f"{len(pngs)} PNG/TIFF slices would each be segmented alone, but this is {what}, which needs the "
            "neighbouring slices of a scan",
            expected=f"the slices stacked into one volume first: medseg convert {folder} scan.nii.gz "
            "--spacing Z Y X, then predict scan.nii.gz",
            found="a folder of 2D images",
        )
    log.warning(
        "%s: one 2D PNG image given to %s; it is predicted as a one-slice volume without neighbours",
        pngs[0].paths[0],
        what,
    )


def _read_earlier(summary: Path, model: str) -> dict[str, dict[str, Any]]:
    """The case entries of the folder's summary as it was before this run (read once: the run
    rewrites the file after every case)."""
    if not summary.is_file():
        return {}
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
        earlier = {str(c["case_id"]): c for c in data["cases"]}
        if data.get("model") not in (None, model):
            log.warning("%s: earlier cases were predicted with %s", summary, data.get("model"))
        return earlier
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: earlier summary unreadable (%s); writing this run's cases only", summary, exc)
        return {}


def _merge_with_earlier(
    summary: Path,
    entries: list[dict[str, Any]],
    existing: Mapping[str, Mapping[str, Path]],
    earlier: Mapping[str, dict[str, Any]],
    warned: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Merge this run's case entries into the folder's earlier summary (``earlier``, from
    :func:`_read_earlier`), so that the file describes every case whose outputs are on disk.

    Cases this run did not touch keep their earlier entry. A case not redone because its
    outputs exist (a re-run without ``--overwrite``, or the resume of a killed run) is
    recorded with the outputs found on disk. A case done again keeps the earlier outputs of
    other formats that still exist.
    """
    merged = dict(earlier)
    for entry in entries:
        case_id = str(entry["case_id"])
        before = earlier.get(case_id, {})
        # an earlier entry whose outputs this run keeps: ok, or failed with some formats written
        old = before if before.get("ok") or before.get("prediction_id") else None
        old_outputs = {k: v for k, v in (old or {}).get("outputs", {}).items() if Path(v).exists()}
        if case_id in existing:
            on_disk = {fmt: str(p) for fmt, p in existing[case_id].items() if p.exists()}
            merged[case_id] = {
                **(old or {"case_id": case_id, "seconds": 0.0}),
                "ok": True,
                "outputs": {**old_outputs, **on_disk},
                "error": "",
                "not_written": {},
                "note": "not redone: its outputs exist (--overwrite redoes them)",
            }
        elif entry.get("ok") or entry.get("prediction_id"):  # written, all formats or some
            made_by = (old or {}).get("prediction_id")
            if made_by and entry.get("prediction_id") and made_by != entry["prediction_id"]:
                # --overwrite with another model or options: the formats not redone hold the
                # earlier prediction, so they are not listed as this one's
                stale = {k: v for k, v in old_outputs.items() if k not in entry["outputs"]}
                if stale and (warned is None or case_id not in warned):
                    if warned is not None:
                        warned.add(case_id)  # the summary is rewritten after every case: say it once
                    log.warning(
                        "%s: %s made by the earlier prediction remain on disk and are no longer listed "
                        "in %s (ask for these formats with --overwrite to redo them, or delete them)",
                        case_id,
                        ", ".join(stale.values()),
                        summary,
                    )
                old_outputs = {}
            merged[case_id] = {**entry, "outputs": {**old_outputs, **entry["outputs"]}}
        else:  # failed now: say so, and keep naming the earlier outputs still on disk
            merged[case_id] = {**entry, "outputs": old_outputs}
            if old_outputs and (old or {}).get("prediction_id"):  # and which prediction made them
                merged[case_id]["prediction_id"] = old["prediction_id"]  # type: ignore[index]
    return list(merged.values())


def _drop_superseded_failures(out: Path, own: str, done: set[str]) -> None:
    """Remove from the folder's other summaries (``predictions.json`` and the SLURM shards'
    ``predictions_shard*.json``) the failed entries of cases this run has segmented, so that
    no summary keeps calling a case failed after a re-run (with other shards, or none)
    succeeded for it; their other entries stay as they are.

    A file is rewritten only when it holds such an entry, and only if it is unchanged since
    it was read (shards of one array write their own summaries at the same time).
    """
    for other in sorted(out.glob("predictions*.json")):
        if other.name == own:
            continue
        try:
            before = other.stat()
            data = json.loads(other.read_text(encoding="utf-8"))
            cases = list(data["cases"])
            stale = [c for c in cases if not c.get("ok") and str(c.get("case_id")) in done]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a summary this run can read: left as it is
        if not stale:
            continue
        data["cases"] = [c for c in cases if not any(c is s for s in stale)]
        try:
            now = other.stat()
        except OSError:
            continue
        if (now.st_mtime_ns, now.st_size, now.st_ino) != (before.st_mtime_ns, before.st_size, before.st_ino):
            log.warning(
                "%s changed while being updated; its failed entries of %s stay",
                other,
                ", ".join(sorted(str(c["case_id"]) for c in stale)),
            )
            continue
        write_text_atomic(other, json.dumps(data, indent=2) + "\n", overwrite=True)
        log.info(
            "%s: earlier failure of %s dropped (segmented now, see %s)",
            other,
            ", ".join(str(c["case_id"]) for c in stale),
            own,
        )
