"""The service's clock (service/clock.py): tests move time with it; production cannot
move it by accident. No root, no server."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service import clock as clockmod
from frostpoint.service.clock import Clock, real_utcnow
from frostpoint.service.models import utcnow


def test_the_offset_file_moves_a_running_clock_forward_only(tmp_path: Path) -> None:
    f = tmp_path / "clock"
    reader, writer = Clock(f), Clock(f)  # the server's clock, the test's hand
    assert abs((reader.now() - real_utcnow()).total_seconds()) < 5  # no file: real time
    writer.advance(86400)
    assert reader.offset() == timedelta(days=1)  # seen by the other process's clock
    writer.advance(60)
    assert reader.offset() == timedelta(days=1, minutes=1)
    with pytest.raises(ValueError):
        writer.advance(-1)
    f.write_text("-86400\n")  # a hand-written negative offset is no offset
    assert reader.offset() == timedelta(0)
    f.write_text("soon\n")
    assert reader.offset() == timedelta(0)


def test_a_clock_file_others_can_write_stops_the_server(tmp_path: Path) -> None:
    f = tmp_path / "clock"
    Clock().check_offset_file()  # no variable: nothing to check
    Clock(f).check_offset_file()  # not made yet: real time until it is
    f.write_text("0\n")
    os.chmod(f, 0o600)
    Clock(f).check_offset_file()
    os.chmod(f, 0o666)
    with pytest.raises(FrostpointError) as e:
        Clock(f).check_offset_file()
    assert e.value.code == "ServiceStartFailed"


def test_utcnow_everywhere_is_the_process_clock() -> None:
    moved = Clock(offset_s=3 * 86400)
    old = clockmod.use(moved)
    try:
        assert (utcnow() - real_utcnow()) > timedelta(days=2, hours=23)
    finally:
        clockmod.use(old)
    assert abs((utcnow() - real_utcnow()).total_seconds()) < 5
