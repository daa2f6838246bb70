"""Walking the folder trees that scans arrive in.

A cohort is often assembled from an archive by symbolic links instead of copies (one link
per patient folder, or per file). :func:`walk_files` follows linked folders and files, and
visits each real folder once: a link back to the root or above it (a loop, which would
also wander into the root's neighbours: other patients), a link to a folder already walked
and a second link to a file already listed are skipped with a warning, instead of recursing
forever or reading the same slices twice. Paths are returned under ``root`` as the user sees them
(through the links), never resolved to their targets, so folder names stay the case names.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["walk_files"]


def walk_files(
    root: str | Path, *, skip_names: frozenset[str] = frozenset(), hidden_files: bool = False
) -> list[Path]:
    """Every file under ``root`` (recursively, links followed), in a stable sorted order.

    Hidden folders (names starting with '.') are not entered; hidden files are left out
    unless ``hidden_files`` (for a caller that reports them, e.g. macOS ``._`` forks), and
    so are names in ``skip_names`` (compared upper-case, e.g. ``{"DICOMDIR"}``). A link
    whose target is missing is skipped with a warning naming it. ``root`` may be a link.
    """
    top = Path(root)
    files: list[Path] = []
    seen: dict[tuple[int, int], Path] = {}
    seen_files: dict[tuple[int, int], Path] = {}
    skip = {n.upper() for n in skip_names}
    # The root and its parents, as written and as resolved: the folder read is reached
    # through both (a linked patient folder's parent is the cohort, not the archive).
    lexical = Path(os.path.abspath(top))
    above = {os.path.realpath(p) for p in (lexical, *lexical.parents)}
    for dirpath, dirs, names in os.walk(top, followlinks=True):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError:
            dirs[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        real = os.path.realpath(here)
        if seen and any(a == real or a.startswith(real.rstrip(os.sep) + os.sep) for a in above):
            # a link up to the root or above it: following it would walk into the root's
            # neighbours (other patients) before the loop closes
            log.warning("%s: skipped, a symbolic link loop (to %s, which holds the folder read)", here, real)
            dirs[:] = []
            continue
        if key in seen:
            log.warning(
                "%s: skipped, the same folder as %s (a symbolic link loop or a second link to it)",
                here,
                seen[key],
            )
            dirs[:] = []
            continue
        seen[key] = here
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if (name.startswith(".") and not hidden_files) or name.upper() in skip:
                continue
            path = here / name
            try:
                fst = path.stat()
            except OSError:  # os.walk lists a dangling link as a file
                log.warning("%s: skipped, a symbolic link whose target does not exist", path)
                continue
            if not path.is_file():
                continue
            fkey = (fst.st_dev, fst.st_ino)
            if fkey in seen_files:
                log.warning("%s: skipped, the same file as %s (linked twice)", path, seen_files[fkey])
                continue
            seen_files[fkey] = path
            files.append(path)
    return files
