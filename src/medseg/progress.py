"""Progress reporting for long loops: a Rich bar when asked for, silent otherwise.

Library functions take ``progress: bool`` (the CLI passes True); with it off they only
log, so the Python API stays quiet inside notebooks and batch jobs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, finish=False, total=None)``; shows a Rich progress bar on stderr when
    ``enabled``.

    ``advance(finish=True)`` ends the bar where it stands (work stopped early, e.g. at a
    time budget), so it shows neither unfinished work nor a time remaining;
    ``advance(0, total=N)`` sets the total once it is known.
    """
    if not enabled:
        yield lambda n=1, finish=False, total=None: None
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

        def advance(n: int = 1, finish: bool = False, total: int | None = None) -> None:
            if finish:
                bar.update(task, total=bar.tasks[0].completed)
                return
            if total is not None:
                bar.update(task, total=total)
            if n:
                bar.advance(task, n)

        yield advance


class GrowingTotal:
    """Steps of work whose size is learnt as it starts: ``begin(n)`` announces one call of ``n``
    steps; the first sets the total to ``n`` times the calls expected (e.g. the folds of an
    ensemble, each predicting the same windows), later ones raise it only when exceeded."""

    def __init__(self, advance: Callable[..., None], calls: int):
        self._advance, self._calls = advance, max(1, calls)
        self._announced = 0
        self._total: int | None = None

    def begin(self, passes: int | None) -> None:
        if passes is None:
            return
        self._announced += passes
        if self._total is None or self._announced > self._total:
            self._total = passes * self._calls if self._total is None else self._announced
            self._advance(0, total=self._total)

    def step(self) -> None:
        self._advance(1)


@contextlib.contextmanager
def growing_progress_bar(enabled: bool, description: str, calls: int = 1) -> Iterator[GrowingTotal | None]:
    """A progress bar for work whose size is known only as it starts (the network passes of one
    long case); yields a :class:`GrowingTotal`, or None when not ``enabled``."""
    if not enabled:
        yield None
        return
    with progress_bar(True, description, None) as advance:
        yield GrowingTotal(advance, calls)
