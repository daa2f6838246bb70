"""medseg's errors survive pickling (a multiprocessing worker's error is re-raised in the parent)."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import pytest

import medseg.errors
from medseg.data.download import DownloadError
from medseg.errors import ConfigError, GeometryError, InputError, MedsegError, OutputExistsError

# One instance of every class in medseg.errors (checked below), with all its attributes set,
# and the medseg errors elsewhere with a custom __init__.
EXAMPLES: list[MedsegError] = [
    MedsegError("something failed"),
    InputError(Path("/data/scan.nii.gz"), "cannot be read", expected="a NIfTI", found="12 bytes"),
    InputError(None, "no input given"),
    GeometryError("grids differ: spacing (1, 1, 1) vs (2, 2, 2)"),
    ConfigError("unknown key 'lr'"),
    OutputExistsError(Path("/out/case.nii.gz"), alternative="use --resume to continue"),
    OutputExistsError("/out/other"),
    DownloadError("https://example.org/data.zip", "HTTP 404"),
]


def test_every_error_class_is_covered() -> None:
    defined = {
        obj
        for obj in vars(medseg.errors).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == "medseg.errors"
    }
    assert defined == {type(e) for e in EXAMPLES if type(e).__module__ == "medseg.errors"}


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: f"{type(e).__name__}:{e}")
def test_errors_round_trip_through_pickle(error: MedsegError) -> None:
    """InputError, OutputExistsError and DownloadError have their own __init__: unpickling
    called it with the message alone and failed with a TypeError."""
    error.add_note("while reading case 3")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error) and back.args == error.args
    assert vars(back) == vars(error)  # path, problem, expected, found, url ... and the note


def test_an_error_raised_in_a_worker_process_is_raised_in_the_parent_as_it_was() -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_fail, "/data/scan.nii.gz")
        with pytest.raises(InputError) as caught:
            future.result()
    assert caught.value.path == Path("/data/scan.nii.gz") and caught.value.found == "12 bytes"
    assert str(caught.value) == "/data/scan.nii.gz: cannot be read; expected a NIfTI; found 12 bytes"


def _fail(path: str) -> None:
    raise InputError(path, "cannot be read", expected="a NIfTI", found="12 bytes")
