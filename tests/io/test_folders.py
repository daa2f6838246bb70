from __future__ import annotations

from pathlib import Path

import pytest

from medseg.io.folders import walk_files


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_linked_folders_and_files_are_followed_under_their_link_names(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _touch(archive / "p1" / "s" / "a.dcm")
    _touch(archive / "p2" / "b.dcm")
    _touch(archive / "loose.dcm")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "p1").symlink_to(archive / "p1", target_is_directory=True)
    (cohort / "p2").symlink_to(archive / "p2", target_is_directory=True)
    (cohort / "extra.dcm").symlink_to(archive / "loose.dcm")
    _touch(cohort / "notes" / "c.txt")
    assert walk_files(cohort) == [
        cohort / "extra.dcm",
        cohort / "notes" / "c.txt",
        cohort / "p1" / "s" / "a.dcm",
        cohort / "p2" / "b.dcm",
    ]
    # the root itself may be a link
    (tmp_path / "link").symlink_to(cohort, target_is_directory=True)
    assert [p.relative_to(tmp_path / "link") for p in walk_files(tmp_path / "link")] == [
        p.relative_to(cohort) for p in walk_files(cohort)
    ]


def test_link_loops_end_and_a_folder_or_file_linked_twice_is_read_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    a = _touch(root / "p1" / "a.dcm")
    (root / "p1" / "back").symlink_to(root, target_is_directory=True)  # a loop to the top
    (root / "p1" / "self").symlink_to(root / "p1", target_is_directory=True)  # a loop to itself
    (root / "p1_again").symlink_to(root / "p1", target_is_directory=True)
    (root / "z.dcm").symlink_to(a)
    with caplog.at_level("WARNING"):
        files = walk_files(root)
    assert files == [root / "z.dcm"]  # a folder's own files come before its subfolders'
    assert f"{root / 'p1' / 'back'}: skipped, a symbolic link loop (to {root.resolve()}" in caplog.text
    assert f"{root / 'p1' / 'self'}: skipped, the same folder as {root / 'p1'}" in caplog.text
    assert f"{root / 'p1_again'}: skipped, the same folder as {root / 'p1'}" in caplog.text
    assert f"{a}: skipped, the same file as {root / 'z.dcm'} (linked twice)" in caplog.text


def test_a_link_above_the_root_does_not_wander_into_its_neighbours(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    own = _touch(cohort / "p1" / "a.dcm")
    _touch(cohort / "p2" / "b.dcm")  # another patient, beside the folder read
    (cohort / "p1" / "up").symlink_to(tmp_path, target_is_directory=True)
    (cohort / "p1" / "cohort").symlink_to(cohort, target_is_directory=True)
    assert walk_files(cohort / "p1") == [own]
    assert walk_files(cohort) == [own, cohort / "p2" / "b.dcm"]


def test_dangling_links_hidden_entries_and_skipped_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    keep = _touch(root / "a.dcm")
    _touch(root / ".hidden.dcm")
    _touch(root / ".git" / "b.dcm")
    _touch(root / "DICOMDIR")
    (root / "gone.dcm").symlink_to(tmp_path / "missing.dcm")
    (root / "gone_dir").symlink_to(tmp_path / "missing_dir", target_is_directory=True)
    with caplog.at_level("WARNING"):
        assert walk_files(root, skip_names=frozenset({"dicomdir"})) == [keep]
    assert f"{root / 'gone.dcm'}: skipped, a symbolic link whose target does not exist" in caplog.text
    assert walk_files(root, hidden_files=True) == [root / ".hidden.dcm", root / "DICOMDIR", keep]
