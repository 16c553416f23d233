"""fabric/guestfs.py on its own: what a guest may plant in its folders, the host's reads
and writes there never follow (no service needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from frostpoint.fabric import guestfs


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A machine folder (with etc/ and log/) and a host file outside it."""
    machine = tmp_path / "machine"
    (machine / "etc").mkdir(parents=True)
    (machine / "log").mkdir()
    host = tmp_path / "host-file"
    host.write_text("host\n")
    return machine, host


def test_write_replaces_a_planted_symlink(planted: tuple[Path, Path]) -> None:
    machine, host = planted
    (machine / "etc" / "agent.installed").symlink_to(host)
    guestfs.write_text(machine, "etc/agent.installed", "frostpoint-agent 0.1.0\n")
    assert host.read_text() == "host\n"
    assert not (machine / "etc" / "agent.installed").is_symlink()
    assert guestfs.read_text(machine, "etc/agent.installed") == "frostpoint-agent 0.1.0\n"


def test_append_replaces_a_planted_symlink_or_fifo(planted: tuple[Path, Path]) -> None:
    machine, host = planted
    (machine / "log" / "init.log").symlink_to(host)
    fd = guestfs.open_append(machine, "log/init.log")
    os.write(fd, b"line\n")
    os.close(fd)
    assert host.read_text() == "host\n"
    assert (machine / "log" / "init.log").read_text() == "line\n"
    (machine / "log" / "init.log").unlink()
    os.mkfifo(machine / "log" / "init.log")  # would block an open for writing
    fd = guestfs.open_append(machine, "log/init.log")
    os.close(fd)
    assert (machine / "log" / "init.log").is_file()


def test_reads_refuse_links_and_fifos(planted: tuple[Path, Path]) -> None:
    machine, host = planted
    (machine / "etc" / "status.json").symlink_to(host)
    with pytest.raises(guestfs.GuestPathError):
        guestfs.read_bytes(machine, "etc/status.json")
    os.mkfifo(machine / "etc" / "pipe")
    with pytest.raises(guestfs.GuestPathError):  # and does not block
        guestfs.read_bytes(machine, "etc/pipe")
    assert guestfs.glob_files(machine, "etc", "*") == []


def test_a_symlinked_folder_is_not_walked(planted: tuple[Path, Path]) -> None:
    machine, host = planted
    (machine / "lib").symlink_to(host.parent)
    with pytest.raises(guestfs.GuestPathError):
        guestfs.write_text(machine, "lib/host-file", "overwritten\n")
    with pytest.raises(guestfs.GuestPathError):
        guestfs.read_bytes(machine, "lib/host-file")
    assert not guestfs.exists(machine, "lib/host-file")
    guestfs.unlink(machine, "lib/host-file")
    assert host.read_text() == "host\n"
    with pytest.raises(guestfs.GuestPathError):
        guestfs.read_bytes(machine, "../host-file")


def test_append_replaces_a_planted_folder(planted: tuple[Path, Path]) -> None:
    machine, host = planted
    (machine / "log" / "init.log").mkdir()
    (machine / "log" / "init.log" / "link").symlink_to(host)
    os.close(guestfs.open_append(machine, "log/init.log"))
    assert (machine / "log" / "init.log").is_file() and host.read_text() == "host\n"
