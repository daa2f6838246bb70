"""medseg.io.atomic: the lock a run holds on the folder it writes (run_lock), atomic folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medseg.errors import InputError
from medseg.io.atomic import atomic_dir


def test_run_lock_refuses_a_second_run_and_takes_over_a_killed_ones(tmp_path: Path) -> None:
    import json
    import socket
    import subprocess
    import sys

    from medseg.errors import InputError
    from medseg.io.atomic import run_lock

    lock = tmp_path / ".predictions.json.lock"
    with run_lock(lock, "medseg predict"):
        owner = json.loads(lock.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        busy = r"being written by another medseg predict \(process \d+ on "
        with pytest.raises(InputError, match=busy), run_lock(lock, "medseg predict"):
            pass
    assert not lock.exists()
    # a run of this machine that was killed: its lock is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "then"}))
    with run_lock(lock, "medseg predict"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    # one of another machine (or unreadable) cannot be checked: refused, saying how to free it
    for text in (json.dumps({"host": "node17", "pid": 4242, "since": "then"}), "garbage"):
        lock.write_text(text)
        with pytest.raises(InputError, match=rf"remove {lock} if no run is using it"), run_lock(lock, "x"):
            pass
        assert lock.exists()  # not ours to remove
    lock.unlink()
    with pytest.raises(RuntimeError), run_lock(lock, "medseg predict"):  # released on errors too
        raise RuntimeError
    assert not lock.exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_atomic_dir_never_replaces_a_file(tmp_path: Path, overwrite: bool) -> None:
    """`evaluate pred/ ref/ -o ref.nii.gz --overwrite` replaced the file with a report folder."""
    target = tmp_path / "scan.nii.gz"
    target.write_bytes(b"an input")
    with (
        pytest.raises(InputError, match=r"scan\.nii\.gz: is a file, not an output folder"),
        atomic_dir(target, overwrite=overwrite) as tmp,
    ):
        (tmp / "summary.json").write_text("{}")
    assert target.read_bytes() == b"an input"
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]
