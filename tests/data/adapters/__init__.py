"""Adapter tests. :func:`tree_state` lets every test prove an import left its source untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_state(root: Path) -> dict[str, tuple[int, int, str]]:
    """Size, mtime (ns) and SHA-256 of every file under ``root``, keyed by relative path."""
    state = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            st = f.stat()
            state[f.relative_to(root).as_posix()] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(f.read_bytes()).hexdigest(),
            )
    return state
