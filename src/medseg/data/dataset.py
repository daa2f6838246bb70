"""The one on-disk dataset format: nnU-Net v2 / Medical Segmentation Decathlon layout.

::

    DATASET/
      dataset.json        {"channel_names": {"0": "T2"}, "labels": {"background": 0, "PZ": 1, ...},
                           "numTraining": N, "file_ending": ".nii.gz", "name": ..., "patients": {...}}
      imagesTr/CASE_0000.nii.gz   one file per channel (_0000, _0001, ...)
      labelsTr/CASE.nii.gz
      imagesTs/CASE_0000.nii.gz   optional test images
      labelsTs/CASE.nii.gz        optional test labels (medseg extension, used by `evaluate`)
      splits.json                 patient-grouped folds (medseg.data.splits)

Existing nnU-Net / MSD datasets work unchanged. ``patients`` (optional, medseg extension)
maps case ids to a pseudonymous patient/group id so that folds never split a patient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import InputError

DATASET_JSON = "dataset.json"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    """Files of one case: one image per channel, and a label map when known."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    patient_id: str | None = None

    @property
    def group(self) -> str:
        """Grouping key for splits: the patient when known, else the case itself."""
        return self.patient_id or self.case_id


@dataclass(frozen=True)
class DatasetDescriptor:
    """The contents of dataset.json (validated)."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    num_training: int
    name: str = ""
    description: str = ""
    patients: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels.values())

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if v != 0}

    @property
    def modalities(self) -> list[str]:
        return [self.channel_names[k] for k in sorted(self.channel_names, key=int)]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        data.update(
            {
                "name": self.name,
                "description": self.description,
                "channel_names": self.channel_names,
                "labels": self.labels,
                "numTraining": self.num_training,
                "file_ending": self.file_ending,
            }
        )
        if self.patients:
            data["patients"] = self.patients
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path | None = None) -> DatasetDescriptor:
        src = path or Path(DATASET_JSON)

        def need(key: str, kind: type) -> Any:
            if key not in data:
                raise InputError(src, f"missing key '{key}'", expected="an nnU-Net v2 dataset.json")
            if not isinstance(data[key], kind):
                raise InputError(
                    src,
                    f"key '{key}' has the wrong type",
                    expected=kind.__name__,
                    found=type(data[key]).__name__,
                )
            return data[key]

        channels_raw = data.get("channel_names", data.get("modality"))  # MSD uses "modality"
        if not isinstance(channels_raw, dict) or not channels_raw:
            raise InputError(src, "missing or empty 'channel_names'", expected='e.g. {"0": "T2"}')
        labels_raw = need("labels", dict)
        labels: dict[str, int] = {}
        for key, value in labels_raw.items():
            # nnU-Net v2: {"name": int}; MSD: {"0": "name"}. Accept both.
            if isinstance(value, int) and not isinstance(value, bool):
                labels[str(key)] = value
            elif isinstance(value, str) and str(key).isdigit():
                labels[value] = int(key)
            else:
                raise InputError(
                    src, f"label entry {key!r}: {value!r} is not understood", expected='{"name": int}'
                )
        if 0 not in labels.values():
            raise InputError(src, "labels must declare background as 0", found=str(labels))
        if len(set(labels.values())) != len(labels):
            raise InputError(src, "label values must be unique", found=str(labels))
        known = {
            "name",
            "description",
            "channel_names",
            "modality",
            "labels",
            "numTraining",
            "file_ending",
            "patients",
        }
        return cls(
            channel_names={str(k): str(v) for k, v in channels_raw.items()},
            labels=labels,
            file_ending=str(data.get("file_ending", ".nii.gz")),
            num_training=int(data.get("numTraining", 0)),
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            patients={str(k): str(v) for k, v in dict(data.get("patients", {})).items()},
            extra={k: v for k, v in data.items() if k not in known},
        )


def read_descriptor(root: str | Path) -> DatasetDescriptor:
    root = Path(root)
    path = root / DATASET_JSON
    if not root.is_dir():
        raise InputError(
            root, "is not a dataset folder", expected="a folder with dataset.json, imagesTr/, labelsTr/"
        )
    if not path.is_file():
        raise InputError(path, "not found", expected="an nnU-Net v2 / MSD dataset.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, "is not valid JSON", found=str(exc)) from None
    if not isinstance(data, dict):
        raise InputError(path, "is not a JSON object")
    return DatasetDescriptor.from_json(data, path)


def list_cases(
    root: str | Path, subset: str = "Tr", descriptor: DatasetDescriptor | None = None
) -> list[CaseFiles]:
    """Cases of ``imagesTr`` (subset "Tr") or ``imagesTs`` ("Ts"), with labels when present.

    Raises :class:`InputError` for a case missing a channel or (for "Tr") its label.
    """
    root = Path(root)
    desc = descriptor or read_descriptor(root)
    images_dir = root / f"images{subset}"
    labels_dir = root / f"labels{subset}"
    if not images_dir.is_dir():
        if subset == "Ts":
            return []
        raise InputError(
            images_dir, "not found", expected="a folder of images named CASE_0000" + desc.file_ending
        )
    ending = desc.file_ending
    channels: dict[str, dict[int, Path]] = {}
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith(".") or not f.name.endswith(ending):
            continue
        stem = f.name[: -len(ending)]
        m = _CHANNEL_RE.match(stem)
        if not m:
            raise InputError(f, "image name lacks a channel suffix", expected=f"CASE_0000{ending}")
        channels.setdefault(m["case"], {})[int(m["channel"])] = f
    cases = []
    n_ch = desc.num_channels
    for case_id in sorted(channels):
        found = channels[case_id]
        if sorted(found) != list(range(n_ch)):
            raise InputError(
                images_dir / f"{case_id}_XXXX{ending}",
                f"case '{case_id}' has the wrong channels",
                expected=f"channels {list(range(n_ch))}",
                found=f"channels {sorted(found)}",
            )
        label = labels_dir / f"{case_id}{ending}"
        if not label.is_file():
            if subset == "Tr":
                raise InputError(label, f"label of case '{case_id}' is missing")
            label_path: Path | None = None
        else:
            label_path = label
        cases.append(
            CaseFiles(
                case_id=case_id,
                images=tuple(found[c] for c in range(n_ch)),
                label=label_path,
                patient_id=desc.patients.get(case_id),
            )
        )
    if not cases and subset == "Tr":
        raise InputError(images_dir, "holds no cases", expected=f"files named CASE_0000{ending}")
    return cases


def write_descriptor(root: str | Path, descriptor: DatasetDescriptor) -> Path:
    path = Path(root) / DATASET_JSON
    path.write_text(json.dumps(descriptor.to_json(), indent=2) + "\n")
    return path
