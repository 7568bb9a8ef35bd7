"""The score timeline: its rings survive a restart through ``scores.sqlite3`` (alert intervals and
an open incident's start included), the file keeps the window only, a pass costs one transaction
of the buckets it changed, and a damaged file is moved aside without stopping anything."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from dcwatch.detectors.decisions import Contributor
from dcwatch.detectors.models.node import ScoreResult
from dcwatch.detectors.timeline import NodeTimeline, ScoreFile, Timeline

T0 = 1_700_000_000.0 // 60 * 60
STEP = 15.0


def result(ts: list[float], scores: list[float], alerting: list[bool]) -> ScoreResult:
    top = [Contributor('gpu_temp{gpu="1"}', "short", 90.0, 60.0, 9.0)]
    return ScoreResult(
        ts=np.asarray(ts, dtype=float),
        score=np.asarray(scores, dtype=float),
        raw=np.asarray(scores, dtype=float),
        is_anomaly=np.asarray(alerting, dtype=bool),
        contributors=[top if a else [] for a in alerting],
    )


def run_passes(tl: Timeline, nodes: list[str], start: float, end: float, alert=None) -> None:
    """One row per node per pass, saved after each pass as the service does."""
    t = start
    while t < end:
        for i, inst in enumerate(nodes):
            on = alert is not None and alert[0] <= t < alert[1] and i == 0
            tl.record(inst, result([t], [3.0 if on else 0.1 + i / 100], [on]))
        tl.save(tl.unsaved())
        t += STEP


def ring(tl: Timeline, instance: str) -> NodeTimeline:
    node = tl.get(instance)
    assert node is not None
    return node


def file_rows(state: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(state / ScoreFile.FILENAME) as db:
        return db.execute("SELECT bucket, instance FROM scores").fetchall()


def test_restart_restores_scores_and_alert_intervals(tmp_path: Path) -> None:
    nodes = ["a:9478", "b:9478"]
    alert = (T0 + 3600, T0 + 5400)
    tl = Timeline(tmp_path)
    tl.load()  # nothing saved yet
    run_passes(tl, nodes, T0, T0 + 3 * 3600, alert)
    tl.close()

    again = Timeline(tmp_path)
    again.load()
    assert set(again.nodes) == set(nodes)
    for inst in nodes:
        before, after = tl.get(inst), again.get(inst)
        assert before is not None and after is not None
        for x, y in zip(before.points(0), after.points(0), strict=True):
            np.testing.assert_array_equal(x, y)
        assert after.last_ts == before.last_ts
    spans = ring(again, nodes[0]).alert_spans(0)
    # the ring's resolution is a bucket (57.6 s): an interval ends with the first quiet bucket
    assert len(spans) == 1 and alert[0] <= spans[0][0] < alert[0] + tl.bucket
    end = spans[0][1]
    assert end is not None and alert[1] <= end < alert[1] + 2 * tl.bucket
    assert ring(again, nodes[1]).alert_spans(0) == []

    # scoring goes on from there: a replayed row is ignored, a new one extends the ring
    b = again.get(nodes[1])
    assert b is not None
    n = len(b.points(0)[0])
    again.record(nodes[1], result([T0 + 60], [9.0], [False]))
    again.record(nodes[1], result([T0 + 3 * 3600 + 60], [0.5], [False]))
    ts, sc, _ = b.points(0)
    assert len(ts) == n + 1 and sc[-1] == 0.5 and sc.max() < 9.0
    again.close()


def test_open_alert_keeps_its_start_across_a_restart(tmp_path: Path) -> None:
    tl = Timeline(tmp_path)
    run_passes(tl, ["a:9478"], T0, T0 + 3600, alert=(T0 + 1800, T0 + 99999))
    tl.close()
    again = Timeline(tmp_path)
    again.load()
    again.record("a:9478", result([T0 + 3600 + STEP], [3.0], [True]))
    node = again.get("a:9478")
    assert node is not None and node.incident is not None
    assert T0 + 1800 <= node.incident.start < T0 + 1860  # not the first row after the restart
    assert node.incident.end is None and list(node.incident.series) == ['gpu_temp{gpu="1"}']
    again.close()


def test_a_resolved_incident_ends_at_the_alerts_last_row(tmp_path: Path) -> None:
    """The hold rows after an alert's last row above release are not part of the incident."""
    tl = Timeline(tmp_path, window=1500 * STEP)  # one row per bucket
    rows = [T0 + i * STEP for i in range(6)]
    tl.record("a:9478", result(rows[:3], [3.0, 3.0, 0.2], [True, True, True]))
    tl.record("a:9478", result(rows[3:5], [0.2, 0.2], [True, True]))
    done = result(rows[5:], [0.2], [False])
    done.alert_end = rows[1]  # resolved by the hold: the alert's last row was rows[1]
    tl.record("a:9478", done)
    node = tl.get("a:9478")
    assert node is not None and node.incident is not None
    assert (node.incident.start, node.incident.end) == (rows[0], rows[1])
    # The plot's alert interval agrees, and so does the saved file (read back after a restart).
    assert node.alert_spans(0) == [(rows[0], rows[2])]  # (start, first row not alerting)
    tl.save(tl.unsaved())
    tl.close()
    again = Timeline(tmp_path, window=1500 * STEP)
    again.load()
    back = again.get("a:9478")
    assert back is not None and back.alert_spans(0) == [(rows[0], rows[2])]
    again.close()


def test_the_file_keeps_the_window_only(tmp_path: Path) -> None:
    tl = Timeline(tmp_path, window=600.0, max_points=10)  # 60 s buckets
    run_passes(tl, ["a:9478", "b:9478"], T0, T0 + 1800)
    rows = file_rows(tmp_path)
    buckets = sorted({b for b, _ in rows})
    assert len(buckets) == 10 and len(rows) == 20
    assert buckets[-1] == int((T0 + 1800 - STEP) // 60)
    tl.close()

    # a node gone for longer than the window is dropped at the next start too
    later = Timeline(tmp_path, window=600.0, max_points=10)
    later.load()
    run_passes(later, ["b:9478"], T0 + 3600, T0 + 3600 + 300)
    later.close()
    again = Timeline(tmp_path, window=600.0, max_points=10)
    again.load()
    assert set(again.nodes) == {"b:9478"} and {i for _, i in file_rows(tmp_path)} == {"b:9478"}
    ts, _, _ = ring(again, "b:9478").points(0)
    assert ts.min() >= T0 + 3600
    again.close()


def test_a_pass_is_one_transaction_of_the_buckets_it_changed(tmp_path: Path) -> None:
    nodes = [f"n{i:03d}:9478" for i in range(50)]
    tl = Timeline(tmp_path)
    run_passes(tl, nodes, T0, T0 + 600)
    assert tl.unsaved().rows == ()  # everything was handed over

    statements: list[str] = []
    assert tl.file is not None
    tl.file._conn().set_trace_callback(statements.append)
    for inst in nodes:  # one pass: a new row per node
        tl.record(inst, result([T0 + 600], [0.2], [False]))
    # a node back after a pause: a backfill of 10 minutes touches ~11 buckets of its own
    back = [T0 + 600 + STEP * k for k in range(1, 41)]
    tl.record(nodes[0], result(back, [0.3] * 40, [False] * 40))
    batch = tl.unsaved()
    touched = {int(t // tl.bucket) for t in [T0 + 600, *back]}
    assert len(batch.rows) == 49 + len(touched)
    assert {r[0] for r in batch.rows} == set(nodes)
    tl.save(batch)
    assert sum(s.strip().upper() == "BEGIN" for s in statements) == 1
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1
    assert sum("INSERT INTO scores" in s for s in statements) == len(batch.rows)
    tl.close()
    again = Timeline(tmp_path)
    again.load()
    assert ring(again, nodes[0]).last_ts == back[-1]
    again.close()


def test_damaged_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ScoreFile.FILENAME).write_bytes(b"this is not a database" * 100)
    tl = Timeline(tmp_path)
    with caplog.at_level(logging.ERROR, "dcwatch.analyzer"):
        tl.load()
    assert tl.nodes == {} and "moved to" in caplog.text
    assert len(list(tmp_path.glob(ScoreFile.FILENAME + ".corrupt-*"))) == 1
    assert tl.file is not None and tl.file.moved_aside == 1
    run_passes(tl, ["a:9478"], T0, T0 + 300)  # a new file works
    tl.close()
    again = Timeline(tmp_path)
    again.load()
    saved = ring(tl, "a:9478").points(0)[0]
    assert len(saved) >= 5 and list(ring(again, "a:9478").points(0)[0]) == list(saved)
    again.close()


def test_memory_only_without_a_state_dir(tmp_path: Path) -> None:
    tl = Timeline()
    tl.load()
    run_passes(tl, ["a:9478"], T0, T0 + 300)
    assert tl.unsaved().rows == () and len(ring(tl, "a:9478").points(0)[0]) >= 5
    tl.close()
    assert list(tmp_path.iterdir()) == []
