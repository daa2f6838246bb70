"""The progress bar: counts work, and ends where it stands when work stops early."""

from __future__ import annotations

import io

from rich import progress as rich_progress
from rich.console import Console

from medseg.progress import progress_bar


def test_finish_ends_the_bar_where_it_stands(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    buffer = io.StringIO()
    monkeypatch.setattr(
        "rich.console.Console", lambda **kw: Console(file=buffer, width=100, force_terminal=False)
    )
    seen = {}

    original = rich_progress.Progress

    class Spy(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            seen["bar"] = self

    monkeypatch.setattr(rich_progress, "Progress", Spy)
    with progress_bar(True, "training fold all", 250) as advance:
        advance(56)
        advance(finish=True)
    task = seen["bar"].tasks[0]
    assert task.completed == 56 and task.total == 56 and task.finished
    assert "training fold all" in buffer.getvalue()
    with progress_bar(False, "quiet", 10) as advance:  # disabled: same signature, no output
        advance(3)
        advance(finish=True)
