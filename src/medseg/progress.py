"""Progress reporting for long loops: a Rich bar when asked for, silent otherwise.

Library functions take ``progress: bool`` (the CLI passes True); with it off they only
log, so the Python API stays quiet inside notebooks and batch jobs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, finish=False)``; shows a Rich progress bar on stderr when ``enabled``.

    ``advance(finish=True)`` ends the bar where it stands (work stopped early, e.g. at a
    time budget), so it shows neither unfinished work nor a time remaining.
    """
    if not enabled:
        yield lambda n=1, finish=False: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, finish: bool = False) -> None:
            if finish:
                bar.update(task, total=bar.tasks[0].completed)
            else:
                bar.advance(task, n)

        yield advance
