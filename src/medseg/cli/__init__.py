"""The ``medseg`` command line: a Typer app whose commands are thin calls into the library.

Command groups live in one module each (``cli/io_commands.py`` ...) and register
themselves on the shared :data:`app` when imported. Heavy libraries (torch, MONAI) are
imported inside commands so that ``medseg info`` starts quickly.
"""

from __future__ import annotations

from medseg.cli import (  # noqa: F401  (imported for their command registrations)
    dataset_commands,
    dataset_web_commands,
    demo_commands,
    evaluate_commands,
    export_commands,
    geometry_commands,
    io_commands,
    pacs_commands,
    phantom_commands,
    plan_commands,
    predict_commands,
    train_commands,
)
from medseg.cli.common import app, main

__all__ = ["app", "main"]
