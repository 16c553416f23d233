"""restore files writes into a host folder as root: what it copies must never follow a
link, neither the guest's (in the restored tree) nor one an earlier restore left in the
target (the guest chose where it points). Real files and links, no root needed."""

from __future__ import annotations

import os
from pathlib import Path

from frostpoint.service.restore import copy_out


def test_overwrite_replaces_a_link_left_by_an_earlier_restore_never_follows_it(
        tmp_path: Path) -> None:
    outside = tmp_path / "host-folder"  # e.g. /etc/cron.d on a real host
    outside.mkdir()
    (outside / "keep").write_text("host file\n")
    # First restore: the guest's folder z held a link d -> the host folder.
    first = tmp_path / "rp1" / "z"
    first.mkdir(parents=True)
    os.symlink(outside, first / "d")
    os.symlink(outside / "keep", first / "f")
    target = tmp_path / "restores" / "z"
    target.parent.mkdir()
    assert copy_out(first, target) == []
    assert (target / "d").is_symlink() and (target / "f").is_symlink()
    # Second restore, with --overwrite: now d is a folder with a file, f a plain file.
    second = tmp_path / "rp2" / "z"
    (second / "d").mkdir(parents=True)
    (second / "d" / "evil").write_text("from the guest\n")
    (second / "f").write_text("from the guest\n")
    assert copy_out(second, target) == []
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]  # nothing written there
    assert (outside / "keep").read_text() == "host file\n"
    assert not (target / "d").is_symlink() and (target / "d" / "evil").read_text() == (
        "from the guest\n")
    assert not (target / "f").is_symlink() and (target / "f").read_text() == (
        "from the guest\n")


def test_a_top_level_link_in_the_target_is_replaced(tmp_path: Path) -> None:
    outside = tmp_path / "host-folder"
    outside.mkdir()
    src = tmp_path / "rp" / "docs"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("guest\n")
    target = tmp_path / "restores" / "docs"
    target.parent.mkdir()
    os.symlink(outside, target)
    copy_out(src, target)
    assert list(outside.iterdir()) == []
    assert not target.is_symlink() and (target / "a.txt").read_text() == "guest\n"


def test_special_files_are_skipped_and_named(tmp_path: Path) -> None:
    src = tmp_path / "rp" / "trap"
    src.mkdir(parents=True)
    os.mkfifo(src / "pipe")
    (src / "ok.txt").write_text("fine\n")
    target = tmp_path / "out" / "trap"
    target.parent.mkdir()
    assert copy_out(src, target) == ["pipe"]
    assert (target / "ok.txt").read_text() == "fine\n" and not (target / "pipe").exists()
