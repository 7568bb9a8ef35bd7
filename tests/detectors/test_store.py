"""The embedded SQLite store: round trip, layouts, retention, reader/writer threads, read speed."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from dcwatch.detectors.sources.store import AsyncStore, Scrape, Store

K_TEMP = ("dcwatch_gpu_temperature_celsius", 'gpu="0",uuid="GPU-0"')
K_TEMP1 = ("dcwatch_gpu_temperature_celsius", 'gpu="1",uuid="GPU-1"')
K_RX = ("dcwatch_network_receive_bytes_total", 'device="eth0"')


def test_round_trip_in_time_order(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    s.write([Scrape("a:1", t, [K_TEMP, K_RX], [40.0 + t, 1e9 + t]) for t in (30.0, 0.0, 15.0)])
    s.write([Scrape("b:1", 15.0, [K_TEMP], [99.0])])
    got = s.read(0, 100)
    assert set(got) == {"a:1", "b:1"}
    ts, v = got["a:1"][K_TEMP]
    np.testing.assert_array_equal(ts, [0, 15, 30])
    np.testing.assert_array_equal(v, [40, 55, 70])
    np.testing.assert_array_equal(got["a:1"][K_RX][1], [1e9, 1e9 + 15, 1e9 + 30])
    # range, instance and name filters
    assert list(s.read(10, 20, instances=["a:1"])["a:1"][K_TEMP][0]) == [15]
    assert set(s.read(0, 100, names={"dcwatch_network_receive_bytes_total"})["a:1"]) == {K_RX}
    assert s.read(0, 100, instances=["nope:1"]) == {}
    assert s.instances() == ["a:1", "b:1"]
    s.close()
    # reopened: everything is on disk
    s2 = Store(tmp_path / "db.sqlite")
    np.testing.assert_array_equal(s2.read(0, 100)["b:1"][K_TEMP][1], [99])
    s2.close()


def test_series_appearing_and_moving_between_layouts(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    s.write([Scrape("a:1", 0, [K_TEMP], [1.0])])
    s.write([Scrape("a:1", 15, [K_TEMP1, K_TEMP], [2.0, 3.0])])  # new GPU, order changed
    s.write([Scrape("a:1", 30, [K_TEMP], [4.0])])
    got = s.read(0, 100)["a:1"]
    np.testing.assert_array_equal(got[K_TEMP][0], [0, 15, 30])
    np.testing.assert_array_equal(got[K_TEMP][1], [1, 3, 4])
    np.testing.assert_array_equal(got[K_TEMP1][1], [2])
    n_layouts = s.db.execute("SELECT count(*) FROM layouts").fetchone()[0]
    assert n_layouts == 2  # the first layout is reused at t=30
    s.close()


def test_same_timestamp_replaces(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    s.write([Scrape("a:1", 0, [K_TEMP], [1.0])])
    s.write([Scrape("a:1", 0, [K_TEMP], [2.0])])
    np.testing.assert_array_equal(s.read(0, 1)["a:1"][K_TEMP][1], [2.0])
    s.close()


def test_failed_write_rolls_back_and_store_stays_usable(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    with pytest.raises(ValueError):
        s.write([Scrape("a:1", 0, [K_TEMP], [1.0]), Scrape("b:1", 0, [K_TEMP, K_RX], [1.0])])
    assert s.read(0, 1) == {}
    assert s.write([Scrape("a:1", 0, [K_TEMP], [5.0])]) == 1
    np.testing.assert_array_equal(s.read(0, 1)["a:1"][K_TEMP][1], [5.0])
    s.close()


def test_wal_mode_and_indexed_range_reads(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plan = s.db.execute(
        "EXPLAIN QUERY PLAN SELECT ts, layout_id, vals FROM scrapes "
        "WHERE instance_id = 1 AND ts BETWEEN 0 AND 10 ORDER BY ts"
    ).fetchall()
    assert "USING INDEX" in " ".join(str(r) for r in plan)
    s.close()


def test_retention_deletes_old_scrapes_and_forgets_dead_nodes(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    s.write([Scrape("a:1", t, [K_TEMP], [t]) for t in range(0, 100, 10)])
    s.write([Scrape("gone:1", 5, [K_RX], [1.0])])
    assert s.expire(before=50) == 6  # a:1 at 0..40, gone:1 at 5
    np.testing.assert_array_equal(s.read(0, 1000)["a:1"][K_TEMP][0], [50, 60, 70, 80, 90])
    assert s.instances() == ["a:1"]
    db = s.db
    assert db.execute("SELECT count(*) FROM series").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM layouts").fetchone()[0] == 1
    # a node that returns is stored afresh
    s.write([Scrape("gone:1", 200, [K_RX], [2.0])])
    assert s.read(150, 250)["gone:1"][K_RX][1].tolist() == [2.0]
    s.close()


async def test_async_store_reader_sees_writer(tmp_path: Path) -> None:
    st = AsyncStore(tmp_path / "db.sqlite", retention=60)
    await st.open()
    try:
        now = time.time()
        await st.write([Scrape("a:1", now - 120, [K_TEMP], [1.0])])
        await st.write([Scrape("a:1", now, [K_TEMP1, K_TEMP], [2.0, 3.0])])  # new series, layout
        got = await st.read(now - 200, now + 1)
        assert got["a:1"][K_TEMP][1].tolist() == [1.0, 3.0]
        assert got["a:1"][K_TEMP1][1].tolist() == [2.0]
        assert await st.expire(now) == 1
        assert (await st.read(now - 200, now + 1))["a:1"][K_TEMP][1].tolist() == [3.0]
        # the reader runs on its own thread and connection
        names = await st.run_reader(lambda s: s.instances())
        assert names == ["a:1"]
    finally:
        await st.close()
    # closed cleanly: the database is consistent for another connection
    assert sqlite3.connect(tmp_path / "db.sqlite").execute("PRAGMA integrity_check").fetchone() == (
        "ok",
    )


def test_read_speed_sanity(tmp_path: Path) -> None:
    """100 nodes x 30 series x 1 h at 15 s: written and read back whole (no timing assert)."""
    s = Store(tmp_path / "db.sqlite")
    keys = [(f"dcwatch_m{j}", f'gpu="{j % 8}"') for j in range(30)]
    rng = np.random.default_rng(0)
    for k in range(240):
        vals = rng.random((100, 30))
        s.write([Scrape(f"n{i}:9478", k * 15.0, keys, vals[i].tolist()) for i in range(100)])
    t0 = time.perf_counter()
    got = s.read(0, 3600)
    elapsed = time.perf_counter() - t0
    assert len(got) == 100 and all(len(v) == 30 for v in got.values())
    assert all(len(ts) == 240 for ser in got.values() for ts, _ in ser.values())
    print(f"read 100 x 30 x 240 samples in {elapsed:.3f}s")
    s.close()
