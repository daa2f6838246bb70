"""What made a prediction: the model's content and the options that change a label map.

`medseg predict` keeps the outputs an earlier run left in its output folder and only adds
missing formats (a killed run resumes, a re-run adds a format). That is only right when the
earlier run predicted the same thing. A re-run with another model, retrained weights, TTA or
other postprocessing would otherwise leave the old segmentations in place while the summary
names the new model: a folder silently mixing two models. Each case entry of
``predictions.json`` therefore records the identity of the prediction that made it, and a
re-run that would keep outputs of a different prediction is refused (``--overwrite`` redoes
them, or another folder keeps both).

The identity is the *content* of what the model folders hold (weights, plan,
postprocessing rules, empty-slice classifier), not their paths: a copied or moved model
still matches, a model retrained in place does not. No library records this for a
prediction folder (nnU-Net and TotalSegmentator overwrite), hence this small module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import InputError

if TYPE_CHECKING:
    from medseg.postprocessing.labels import PostprocessingRules

# PredictConfig fields that change which label map a case gets. Device, threads, batch size
# and the output formats do not (formats added later are derived from the kept label map).
# Postprocessing enters as the rules that act (see ``prediction_key``), not as the switch.
RESULT_OPTIONS = ("tta", "overlap", "slice_filter", "series", "volume", "spacing", "roi_views")


# A service calling predict per request with one loaded model hashes its checkpoint once:
# digests are kept per (file, size, modification time).
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[cache_key] = h.hexdigest()[:16]
    return _DIGESTS[cache_key]


def model_files(folder: Path, *, backend: str, slice_filter: bool) -> list[Path]:
    """The files of one model folder that decide its network's output under these options."""
    from medseg.training.checkpoint import best_checkpoint
    from medseg.training.slice_classifier import WEIGHTS_FILE

    files = [folder / "model.onnx" if backend == "onnx" else best_checkpoint(folder), folder / "plan.json"]
    if slice_filter:
        files.append(folder / WEIGHTS_FILE)
    return [f for f in files if f.is_file()]


def prediction_key(
    folders: Sequence[Path],
    options: Mapping[str, Any],
    *,
    backend: str,
    rules: PostprocessingRules | None = None,
    cpu_bf16: bool = False,
) -> dict[str, Any]:
    """The identity of a prediction: a digest per model folder (by content), the
    postprocessing rules that act (``rules``, if ``options["postprocess"]``) and the options
    that change results. ``id`` is a short digest of the whole, stored with each case.

    Rules enter by what they do: a model without rules, one whose rules change nothing and
    ``--no-postprocess`` all give the same key. ``cpu_bf16`` (the precision the network runs
    in, as resolved) enters only when on: bfloat16 moves a few boundary voxels, while the
    float32 key stays that of earlier medseg versions (the channels-last layout, float32
    either way, does not enter).
    """
    slice_filter = bool(options.get("slice_filter", True))
    # "folder:digest"; the folder only helps a reader, so it is the path as given: every fold's
    # folder is named fold_<k>, and "model fold_0 -> fold_0" would not say which models differ
    models = []
    for folder in folders:
        h = hashlib.sha256()
        for f in model_files(folder, backend=backend, slice_filter=slice_filter):
            h.update(f"{f.name}:{_file_digest(f)};".encode())
        models.append(f"{folder}:{h.hexdigest()[:16]}")
    chosen = {k: _plain(options.get(k)) for k in RESULT_OPTIONS}
    if chosen.get("roi_views"):  # the same views given by another (relative) path are the same
        chosen["roi_views"] = [str(Path(v).resolve()) for v in chosen["roi_views"]]
    acting = None
    if rules is not None and options.get("postprocess", True):
        classes = {str(k): r.to_json() for k, r in rules.classes.items() if not r.is_identity}
        if classes or rules.keep_largest_foreground:
            acting = {**rules.to_json(), "classes": classes}
    chosen["postprocessing"] = acting
    if cpu_bf16:
        chosen["cpu_bf16"] = True
    key: dict[str, Any] = {"models": models, "backend": backend, "options": chosen}
    # The names are left out of the id: a copied or renamed model folder is the same model.
    identity = {**key, "models": sorted(m.rsplit(":", 1)[1] for m in models)}
    key["id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return key


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _rules_in_words(rules: Any) -> str:
    """Stored acting rules (``prediction_key``) in the words ``medseg info`` uses."""
    from medseg.errors import MedsegError
    from medseg.postprocessing.labels import PostprocessingRules

    if not isinstance(rules, Mapping):
        return "none"
    try:
        return PostprocessingRules.from_json(rules).describe()
    except MedsegError:
        return str(dict(rules))


def describe_difference(before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> str:
    """What changed between two prediction keys, in words."""
    if not before or "models" not in before:
        return "another model or other options"
    parts = []

    def split(models: Any) -> tuple[list[str], list[str]]:
        pairs = [str(m).rsplit(":", 1) for m in models or []]
        return [p[0] for p in pairs], sorted(p[-1] for p in pairs)

    (old_names, old_digests), (new_names, new_digests) = split(before.get("models")), split(now["models"])
    if old_digests != new_digests:
        parts.append(
            f"model {', '.join(old_names) or '?'} -> {', '.join(new_names)} "
            "(other weights, plan or slice classifier)"
        )
    if before.get("backend") != now["backend"]:
        parts.append(f"backend {before.get('backend')} -> {now['backend']}")
    old_opts = dict(before.get("options", {}))
    new_opts = dict(now["options"])
    absent = {"cpu_bf16": False}  # options a key holds only when they are on
    for name in [*new_opts, *(n for n in old_opts if n not in new_opts)]:
        old, value = old_opts.get(name, absent.get(name)), new_opts.get(name, absent.get(name))
        if old != value:
            show = _rules_in_words if name == "postprocessing" else str
            parts.append(f"{name} {show(old)} -> {show(value)}")
    return "; ".join(parts) or "another model or other options"


def _written_at(summary: Path) -> tuple[int, str]:
    try:
        return summary.stat().st_mtime_ns, summary.name
    except OSError:
        return 0, summary.name


def check_kept_outputs_match(
    out: Path,
    key: Mapping[str, Any],
    kept_cases: Sequence[str],
) -> None:
    """Refuse a run that would keep, beside its own, outputs another prediction made.

    ``kept_cases`` are this run's cases that have outputs on disk. Their entries in the
    folder's summaries (``predictions*.json``) say which prediction made them; entries
    without one (older medseg) are not checked.
    """
    made_by: dict[str, str] = {}
    keys: dict[str, Mapping[str, Any]] = {}
    # Oldest first, so that a case in several summaries (a SLURM shard's, then a run without
    # shards that redid it with --overwrite) is attributed to the run that wrote it last.
    for summary in sorted(out.glob("predictions*.json"), key=_written_at):
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            top = data.get("prediction")
            if isinstance(top, Mapping) and "id" in top:
                keys[str(top["id"])] = top
            for entry in data["cases"]:
                # failed entries too: one with some formats written names their prediction
                if entry.get("prediction_id"):
                    made_by[str(entry["case_id"])] = str(entry["prediction_id"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # unreadable summaries are reported (and replaced) by the merge
    other = [c for c in kept_cases if made_by.get(c, key["id"]) != key["id"]]
    if not other:
        return
    earlier = made_by[other[0]]
    shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
    raise InputError(
        out,
        f"holds outputs of {len(other)} of these cases ({shown}) made by another prediction; "
        "keeping them would mix two predictions' segmentations in one folder",
        expected="the same model and options as the earlier run (to add formats or resume), "
        "--overwrite to predict these cases again, or another output folder",
        found=describe_difference(keys.get(earlier), key),
    )
