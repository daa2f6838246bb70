"""ONNX export of a model folder and an ONNX Runtime network for the predictor.

``export_onnx(model_dir)`` writes ``model.onnx`` into each fold folder of a model (or
ensemble) folder: the network in eval mode, traced with PyTorch's TorchScript-based
exporter (``dynamo=False``: it handles our U-Net and needs no ``onnxscript``), a dynamic
batch axis and FIXED spatial axes equal to the plan's patch size, which is what
sliding-window inference feeds it (MONAI pads an image smaller than the patch).

Why fixed spatial axes: the networks pad an input to a multiple of their total stride
and crop the logits back, with Python arithmetic on the input shape that the tracer
freezes. With dynamic spatial axes the graph still runs on other sizes that need the
same padding, but a size that needs a different padding fails in ONNX Runtime (tested:
"Concat ... mismatched dimensions"), so the export promises only what it was traced for.

Every export is verified before it is written: ONNX Runtime and PyTorch run the same
random batch of two patches and the largest absolute logit difference must be small.
The ONNX file records the SHA-256 of the checkpoint it came from, so a model that was
retrained after its export is refused instead of silently predicting with old weights.
It also records where it was exported from: the postprocessing rules are not in the
graph but in the folder's ``postprocessing.json``, so a lean copy made before ``medseg
tune-postprocessing`` (or before rules were edited) keeps the old ones;
:func:`warn_if_rules_differ_from_source` names both files when the source folder can still
be read (the export itself need not be redone: copy the new postprocessing.json). The
folder is recorded relative to the home folder (``~/...``), never as an absolute path, which
would carry the user's name into every copy (a folder outside the home folder is not
recorded); the rules the folder held at export are recorded too, so a copy whose source
cannot be read can still say that its rules are not those it was exported with.

``OnnxNetwork(path, device)`` is a callable with the torch network's contract (a
``(B, C, *patch)`` tensor in, logits out) that runs the graph with ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import __version__
from medseg.errors import InputError, MedsegError, OutputExistsError
from medseg.io.atomic import write_bytes_atomic
from medseg.preprocessing.plan import Plan

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
#: Opset 17 is supported by every onnxruntime >= 1.14 and by torch's TorchScript exporter.
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Metadata key of the model folder an export was made from, relative to the home folder
#: ("~/data/models/3d/fold_0"); absent when the folder was outside it.
SOURCE_HOME_KEY = "source_folder_in_home"
#: The absolute path of that folder, as medseg recorded it before SOURCE_HOME_KEY: still read.
SOURCE_KEY = "source_folder"
#: Metadata key of the postprocessing rules (JSON) the folder held when it was exported.
RULES_KEY = "postprocessing_rules"
#: Verification tolerance: |onnx - torch| <= ATOL + RTOL * max|torch logits|.
ATOL = 1e-3
RTOL = 1e-4


class OnnxExportError(MedsegError):
    """The network cannot be exported to ONNX, or the export does not reproduce it."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def network_input_shape(plan: Plan) -> tuple[int, ...]:
    """The network's input for one window: (C, Z, Y, X) for 3D, (C * slab, Y, X) for 2D/2.5D."""
    if plan.spatial_dims == 3:
        return (plan.in_channels, *plan.patch_size)
    return (plan.in_channels, *plan.patch_size[1:])


def _load_network(folder: Path) -> tuple[torch.nn.Module, Path]:
    from medseg.training.checkpoint import best_checkpoint, load_checkpoint, load_weights, model_architecture

    arch = model_architecture(folder)
    net = arch.build()
    ckpt = best_checkpoint(folder)
    load_weights(net, load_checkpoint(ckpt, map_location="cpu")["model"], arch, ckpt)
    return net.eval(), ckpt


def _trace(net: torch.nn.Module, example: torch.Tensor, opset: int, name: str) -> bytes:
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # Expected and harmless here: the tracer freezes the shape checks and the
            # pad-to-divisible arithmetic (the spatial axes are fixed on purpose).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*instance_norm.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                net,
                (example,),
                buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types for unsupported operators
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise OnnxExportError(
            f"{name}: the network cannot be exported to ONNX (opset {opset}): {type(exc).__name__}: {first}"
        ) from exc
    return buf.getvalue()


def _session(
    model: bytes | str, threads: int | None, providers: Sequence[str], memory_arena: bool = False
) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Without ONNX Runtime's CPU memory arena, a batch of 4 exercise-sized windows (24 x 128
    # x 128, 16 base features) raised the peak memory by about 190 MiB instead of about
    # 600 MiB, at the same speed (6.2 s per batch either way, interleaved, 2 threads).
    options.enable_cpu_mem_arena = memory_arena
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; ORT's warnings about unused initialisers are noise
    return ort.InferenceSession(model, options, providers=list(providers))


def verify_onnx(
    model: bytes, net: torch.nn.Module, input_shape: Sequence[int], *, seed: int = 0
) -> tuple[float, float]:
    """(largest |ONNX Runtime - PyTorch| logit difference, largest |PyTorch logit|) on a
    random batch of two windows; the difference is infinite when the output shapes differ."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *input_shape), generator=gen)
    with torch.no_grad():
        ref = net(x)
    assert isinstance(ref, torch.Tensor)
    out = _session(model, None, ["CPUExecutionProvider"]).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    scale = float(ref.abs().max())
    if out.shape != tuple(ref.shape):
        return float("inf"), scale
    return float(np.abs(out - ref.numpy()).max()), scale


def export_onnx(model_dir: str | Path, *, opset: int = DEFAULT_OPSET, overwrite: bool = False) -> list[Path]:
    """Write ``model.onnx`` into every fold folder of a model folder; returns the files written.

    Refuses (before writing anything) when a ``model.onnx`` exists and ``overwrite`` is
    False; every fold is exported and verified before the first file is written. Raises :class:`OnnxExportError` when the network cannot be exported or ONNX
    Runtime does not reproduce PyTorch's logits.
    """
    from medseg.training.checkpoint import model_folders

    folders = model_folders(model_dir)
    targets = [f / ONNX_FILE for f in folders]
    if not overwrite:
        for target in targets:
            if target.exists():
                raise OutputExistsError(target)
    exports: list[bytes] = []  # every fold is exported and verified before any file is written
    for folder in folders:
        plan = Plan.load(folder / "plan.json")
        net, ckpt = _load_network(folder)
        shape = network_input_shape(plan)
        data = _trace(net, torch.zeros((1, *shape)), opset, str(folder))
        diff, scale = verify_onnx(data, net, shape)
        tolerance = ATOL + RTOL * max(scale, 1.0)
        if not diff <= tolerance:
            raise OnnxExportError(
                f"{folder}: the ONNX export does not reproduce the network; expected max |onnx - torch| "
                f"<= {tolerance:.2g}, found {diff:.3g}"
            )
        data = _with_metadata(
            data,
            {
                "medseg_version": __version__,
                "checkpoint": ckpt.name,
                "checkpoint_sha256": _sha256(ckpt),
                **_source_metadata(folder),
                "input_shape": json.dumps(list(shape)),
                "verified_max_abs_diff": f"{diff:.3g}",
            },
        )
        exports.append(data)
        log.info(
            "%s: exported (opset %d, input (batch, %s)); max |onnx - torch| = %.3g",
            folder,
            opset,
            ", ".join(map(str, shape)),
            diff,
        )
    return [
        write_bytes_atomic(target, data, overwrite=overwrite)
        for target, data in zip(targets, exports, strict=True)
    ]


def _home_relative(folder: Path) -> str | None:
    """``folder`` as ``~/...`` when it lies in the home folder, else None."""
    try:
        home = Path.home().resolve()
    except (RuntimeError, OSError):  # no home folder known
        return None
    try:
        return "~/" + folder.resolve().relative_to(home).as_posix()
    except ValueError:
        return None


def _source_metadata(folder: Path) -> dict[str, str]:
    """Where the export comes from, without an absolute path: the folder relative to the home
    folder (when in it) and the rules it holds (read here, so a bad file fails the export)."""
    from medseg.postprocessing.labels import PostprocessingRules, read_rules

    post = folder / "postprocessing.json"
    rules = read_rules(post) if post.is_file() else PostprocessingRules()
    meta = {RULES_KEY: json.dumps(rules.to_json(), sort_keys=True)}
    located = _home_relative(folder)
    if located is not None:
        meta[SOURCE_HOME_KEY] = located
    return meta


def _with_metadata(model: bytes, meta: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(model)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "medseg"
    return bytes(proto.SerializeToString())


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``medseg`` metadata an export stored in an ONNX file."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(path, "is not a readable ONNX model", found=f"{type(exc).__name__}: {exc}") from None
    return {p.key: p.value for p in proto.metadata_props}


def _recorded_source(meta: dict[str, str]) -> Path | None:
    """The exported folder the metadata names: ``~/...`` in this user's home folder, or the
    absolute path an export of an older medseg recorded."""
    located = meta.get(SOURCE_HOME_KEY)
    if located:
        try:
            return Path(located).expanduser()
        except RuntimeError:  # no home folder known here
            return None
    old = meta.get(SOURCE_KEY)
    return Path(old) if old else None


def warn_if_rules_differ_from_source(folder: str | Path, meta: dict[str, str]) -> bool:
    """Warn when ``folder`` is a copy of the model folder an export was made from (``meta``:
    its ONNX metadata) and the two folders' postprocessing rules differ; True when warned.

    The copy's rules are the ones predict applies. Nothing is compared when the export does
    not record its source (made by an older medseg, or outside the home folder), the copy is
    the source itself, or the source folder cannot be read here (another machine): then the
    copy's rules are compared with those the export recorded, and a difference is only
    logged (info), since it is what copying newer rules into the copy makes too.
    """
    from medseg.postprocessing.labels import PostprocessingRules, read_rules

    here = Path(folder)
    own_post = here / "postprocessing.json"
    src = _recorded_source(meta)
    try:
        is_source = src is not None and src.resolve() == here.resolve()
    except OSError:
        is_source = False
    src_post = src / "postprocessing.json" if src is not None and not is_source else None
    if src_post is None or not src_post.is_file():
        if not is_source:
            _note_rules_differ_from_export(here, meta)
        return False
    try:
        theirs = read_rules(src_post)
        mine = read_rules(own_post) if own_post.is_file() else PostprocessingRules()
    except MedsegError:
        return False  # an unreadable copy fails on its own when the predictor reads it
    if theirs.effective() == mine.effective():
        return False
    newer = own_post.is_file() and src_post.stat().st_mtime > own_post.stat().st_mtime
    log.warning(
        "%s: this copy's postprocessing rules (%s) differ from those of %s, the model folder it was "
        "exported from (%s)%s; the copy's rules apply. To use the source's (e.g. chosen by medseg "
        "tune-postprocessing after the copy was made), copy %s into %s (model.onnx need not be exported again)",
        own_post,
        mine.describe(),
        src_post,
        theirs.describe(),
        ", which is newer" if newer else "",
        src_post,
        here,
    )
    return True


def _note_rules_differ_from_export(folder: Path, meta: dict[str, str]) -> None:
    """A copy whose source cannot be read: say (info) when its rules are not those recorded at
    export, which is either newer rules copied in or an older postprocessing.json."""
    from medseg.postprocessing.labels import PostprocessingRules, read_rules

    recorded = meta.get(RULES_KEY)
    if not recorded:
        return
    own_post = folder / "postprocessing.json"
    try:
        exported = PostprocessingRules.from_json(json.loads(recorded))
        mine = read_rules(own_post) if own_post.is_file() else PostprocessingRules()
    except (ValueError, MedsegError):
        return
    if exported.effective() != mine.effective():
        log.info(
            "%s: the postprocessing rules here (%s) are not those %s was exported with (%s); these "
            "apply. Newer rules copied in on purpose need nothing more; otherwise copy the model "
            "folder's postprocessing.json here",
            own_post,
            mine.describe(),
            folder / ONNX_FILE,
            exported.describe(),
        )


class OnnxNetwork:
    """An exported network run by ONNX Runtime, called like the torch network.

    CPUExecutionProvider by default; CUDAExecutionProvider when ``device`` is CUDA and
    the installed onnxruntime has it (the ``onnxruntime-gpu`` package). ``threads`` sets
    ONNX Runtime's intra-op threads (default: torch's thread count, so the predictor's
    ``threads`` option applies to both backends); ``memory_arena`` turns ONNX Runtime's
    CPU memory arena on (faster allocation, much higher peak memory).
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        *,
        threads: int | None = None,
        check_checkpoint: bool = True,
        memory_arena: bool = False,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(
                self.path.parent,
                f"has no {ONNX_FILE}; run `medseg export-onnx {self.path.parent}` first (or predict without --onnx)",
            )
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif self.device.type == "cuda":
            log.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu); running ONNX on the CPU")
        try:
            self.session = _session(str(self.path), threads, providers, memory_arena)
        except Exception as exc:  # ORT raises its own exception types for corrupt graphs
            raise InputError(
                self.path,
                "is not a readable ONNX model (truncated or corrupt?)",
                found=f"{type(exc).__name__}: {exc}",
            ) from None
        #: what the export recorded (checkpoint digest, source folder, medseg version)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if check_checkpoint:
            self._check_fresh(self.metadata)
        self.providers: list[str] = list(self.session.get_providers())
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        self.output_name: str = self.session.get_outputs()[0].name
        self.input_shape: tuple[Any, ...] = tuple(inp.shape)

    def _check_fresh(self, meta: dict[str, str]) -> None:
        name, digest = meta.get("checkpoint"), meta.get("checkpoint_sha256")
        if not name or not digest:
            return  # not exported by medseg: nothing to compare with
        ckpt = self.path.parent / name
        if ckpt.is_file() and _sha256(ckpt) != digest:
            raise InputError(
                self.path,
                f"does not match {name} it was exported from (the model was retrained since, or "
                f"{name} was changed or damaged)",
                expected=f"an intact {name}, then `medseg export-onnx {self.path.parent} --overwrite`",
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.input_shape[1:]
        found = tuple(x.shape[1:])
        if len(found) != len(expected) or any(
            isinstance(e, int) and e != f for e, f in zip(expected, found, strict=False)
        ):
            raise ValueError(
                f"{self.path}: the ONNX graph takes windows of shape (batch, {', '.join(map(str, expected))}), "
                f"found {tuple(x.shape)}"
            )
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(out).to(x.device)


__all__ = [
    "DEFAULT_OPSET",
    "ONNX_FILE",
    "OnnxExportError",
    "OnnxNetwork",
    "export_onnx",
    "network_input_shape",
    "read_metadata",
    "verify_onnx",
    "warn_if_rules_differ_from_source",
]
