"""A CPU-time clock for training budgets that stay fair on a shared machine.

``budget_clock(threads)`` returns a function that reads the CPU time used so far by this
process and all its descendants (live ones from /proc, reaped ones through the kernel's
cumulative child times), divided by ``threads``. On an otherwise idle machine with ``threads``
busy cores it advances like the wall clock; when other jobs take CPU from a contender, its
clock slows down with it, so every contender gets the same amount of computation for a
"20-minute" budget however loaded the machine was. Linux only (/proc).

Data-loading workers are descendants, so their work counts against the budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it start past the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_tree_cpu_seconds(root: int | None = None) -> float:
    """utime + stime of ``root`` and its live descendants, plus the reaped children's times."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])  # field 4: ppid
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])  # fields 14-17
        times[pid] = (utime + stime + (cutime + cstime if pid == root else 0)) / _TICK
    total = times.get(root, 0.0)
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid != root:
                total += times.get(pid, 0.0)
                frontier.append(pid)
    return total


def budget_clock(threads: int) -> Callable[[], float]:
    """Seconds of 'full use of ``threads`` cores' consumed by this process tree so far."""
    return lambda: process_tree_cpu_seconds() / max(1, threads)
