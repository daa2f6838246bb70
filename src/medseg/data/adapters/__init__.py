"""Adapters: one module per source layout, each converting it into the dataset format.

Every adapter is a function ``import_X(source, out_dir, *, overwrite=False, ...) -> Path``
that writes the nnU-Net v2 layout atomically (temporary folder, then rename), never
modifies its source, records a pseudonymous patient id per case in dataset.json and
raises an error naming the file for a bad case (or, with ``skip_invalid=True``, leaves
it out and lists it in dataset.json under ``medseg_import``).

:data:`ADAPTERS` is the explicit registry (name -> function) the CLI and users look up;
a new source adds its module here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medseg.data.adapters.chaos import import_chaos
from medseg.data.adapters.dicom_labels import import_dicom_seg, import_rtstruct
from medseg.data.adapters.images2d import import_images2d
from medseg.data.adapters.msd import import_msd
from medseg.data.adapters.uwmadison import import_uwmadison

ADAPTERS: dict[str, Callable[..., Any]] = {
    "msd": import_msd,
    "chaos": import_chaos,
    "dicom-seg": import_dicom_seg,
    "rtstruct": import_rtstruct,
    "images2d": import_images2d,
    "uwmadison": import_uwmadison,
}


def get_adapter(name: str) -> Callable[..., Any]:
    """The import function registered under ``name``."""
    from medseg.errors import ConfigError

    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset source '{name}'; known: {', '.join(sorted(ADAPTERS))}") from None


__all__ = [
    "ADAPTERS",
    "get_adapter",
    "import_chaos",
    "import_dicom_seg",
    "import_images2d",
    "import_msd",
    "import_rtstruct",
    "import_uwmadison",
]
