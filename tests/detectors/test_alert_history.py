"""The alert history: fired and resolved alerts kept across restarts, pruned after 30 days and
capped in rows, read back by time and instance; ``since=`` parsing; a corrupt file moved aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcwatch.detectors.alerting.alerts import Alert, AlertRecord
from dcwatch.detectors.alerting.history import AlertHistory
from dcwatch.detectors.web.history import parse_since

T0 = 1_700_000_000.0


def record(instance: str, start: float, end: float | None = None, name: str = "X") -> AlertRecord:
    alert = Alert(
        {"alertname": name, "instance": instance, "severity": "warning"},
        {"summary": f"{instance} odd", "description": 'top contributors: t{gpu="1"}=91'},
    )
    return AlertRecord(alert, start, end)


def test_fired_then_resolved_survives_reopen(tmp_path: Path) -> None:
    h = AlertHistory(tmp_path)
    h.record(record("n1", T0))
    (firing,) = h.since(T0 - 10)
    assert firing.resolved_at is None and firing.as_json()["state"] == "firing"
    h.record(record("n1", T0, T0 + 600))
    h.close()
    again = AlertHistory(tmp_path)  # a restart
    (past,) = again.since(T0)
    assert past.resolved_at == T0 + 600 and past.duration(T0 + 10**6) == 600
    assert past.description.startswith("top contributors") and past.labels["instance"] == "n1"
    assert past.as_json()["resolved_at"] == "2023-11-14T22:23:20Z"
    # resolved before ``since``: not returned; a second incident of the same alert is its own row
    assert again.since(T0 + 601) == []
    again.record(record("n1", T0 + 7200), now=T0 + 7200)
    assert [a.starts_at for a in again.since(T0)] == [T0 + 7200, T0]


def test_filters_by_instance_and_limit(tmp_path: Path) -> None:
    h = AlertHistory(tmp_path)
    for i in range(5):
        h.record(record(f"n{i % 2}", T0 + i))
    assert {a.instance for a in h.since(0, "n1")} == {"n1"}
    assert len(h.since(0, "n1")) == 2
    assert len(h.since(0, limit=3)) == 3


def test_pruned_after_keep_and_capped(tmp_path: Path) -> None:
    h = AlertHistory(tmp_path, keep_seconds=86400, max_rows=3)
    h.record(record("old", T0, T0 + 60), now=T0 + 60)
    for i in range(4):
        h.record(record(f"n{i}", T0 + 3 * 86400 + i))
    # prune runs on the first write and every 100th: force one
    h._prune(h._conn(), T0 + 3 * 86400 + 10)
    left = h.since(0)
    assert "old" not in {a.instance for a in left}
    assert [a.instance for a in left] == ["n3", "n2", "n1"]  # the cap keeps the newest


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / AlertHistory.FILENAME).write_bytes(b"not a database at all" * 100)
    h = AlertHistory(tmp_path)
    h.record(record("n1", T0))
    assert len(h.since(0)) == 1
    assert list(tmp_path.glob("alert_history.sqlite3.corrupt-*"))


def test_parse_since() -> None:
    assert parse_since("1700000000", T0 + 5) == T0
    assert parse_since("2023-11-14T22:13:20Z", 0) == T0
    assert parse_since("2023-11-14T23:13:20+01:00", 0) == T0
    assert parse_since("2h", T0) == T0 - 7200
    for bad in ("yesterday", "2023-11-14T22:13:20", ""):
        with pytest.raises(ValueError):
            parse_since(bad, T0)
