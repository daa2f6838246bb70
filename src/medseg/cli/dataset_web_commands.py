"""CLI commands (see medseg.cli)."""

from __future__ import annotations
