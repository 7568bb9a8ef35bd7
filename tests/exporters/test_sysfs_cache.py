"""FileCache: kept-open reads see fresh values; failures are absent, counted and retried."""

from __future__ import annotations

import os
from pathlib import Path

from dcwatch.exporters.sources.sysfs import FileCache, Rediscovered


def test_kept_open_reads_are_fresh(tmp_path: Path) -> None:
    f = tmp_path / "temp1_input"
    f.write_text("42000\n")
    c = FileCache()
    assert c.read_int(f) == 42000
    with open(f, "r+") as w:  # in-place update, as the kernel does
        w.write("43500\n")
    assert c.read_int(f) == 43500
    assert c.errors == 0


def test_missing_is_absent_not_an_error(tmp_path: Path) -> None:
    c = FileCache()
    assert c.read(tmp_path / "nope") is None
    assert c.errors == 0


def test_unparsable_and_unreadable_are_counted(tmp_path: Path) -> None:
    f = tmp_path / "bad"
    f.write_text("garbage\n")
    c = FileCache()
    assert c.read_int(f) is None
    assert c.errors == 1
    d = tmp_path / "dir"
    d.mkdir()
    assert c.read(d) is None  # EISDIR: a real failure
    assert c.errors == 2


def test_recreated_file_is_reopened(tmp_path: Path) -> None:
    f = tmp_path / "speed"
    f.write_text("1000\n")
    c = FileCache()
    assert c.read_int(f) == 1000
    os.unlink(f)  # the kept descriptor now points at the old file
    f.write_text("25000\n")
    # The kept fd still reads the old inode; after rediscovery drops it, a fresh open sees the
    # new file. Simulate a stale fd failing by closing it under the cache.
    os.close(c._fds[os.fspath(f)])
    assert c.read_int(f) == 25000
    assert c.errors == 0
    c.close()


def test_rediscovered_ttl() -> None:
    now = [0.0]
    calls = []
    r = Rediscovered(lambda: calls.append(1) or len(calls), ttl=10, clock=lambda: now[0])
    assert r.get() == 1 and r.get() == 1
    now[0] = 10.0
    assert r.get() == 2
    r.invalidate()
    assert r.get() == 3
