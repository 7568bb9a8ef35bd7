"""Alert history that survives restarts: every alert the analyzer fired, with when it resolved.

``alert_history.sqlite3`` in the state directory, one row per incident (an alert's key and the
time it started): written when it fires and again when it resolves. Bounded: resolved rows older
than ``keep_seconds`` (30 days) go, and beyond ``max_rows`` the oldest go. A corrupt file is moved
aside and a new one started (history is a convenience, never a reason not to alert).

Calls block briefly; the sender runs them on its store thread. The pages and ``/api/alerts`` read
through :meth:`AlertHistory.since` on a connection of their own.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dcwatch.detectors.alerting.alerts import AlertRecord

log = logging.getLogger("dcwatch.alerts")

KEEP_SECONDS = 30 * 86400.0
MAX_ROWS = 20000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    key TEXT NOT NULL,
    starts_at REAL NOT NULL,
    resolved_at REAL,
    alertname TEXT NOT NULL,
    instance TEXT NOT NULL,
    labels TEXT NOT NULL,
    summary TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (key, starts_at)
);
CREATE INDEX IF NOT EXISTS history_instance ON history (instance, starts_at);
CREATE INDEX IF NOT EXISTS history_end ON history (resolved_at);
"""


@dataclass(frozen=True)
class PastAlert:
    """One incident: fired at ``starts_at``, resolved at ``resolved_at`` (None: still firing)."""

    key: str
    alertname: str
    instance: str
    labels: dict[str, str]
    summary: str
    description: str  # the top contributors, as the alert said them
    starts_at: float
    resolved_at: float | None

    def duration(self, now: float) -> float:
        return (now if self.resolved_at is None else self.resolved_at) - self.starts_at

    def as_json(self) -> dict[str, object]:
        return {
            "alertname": self.alertname,
            "instance": self.instance,
            "labels": self.labels,
            "summary": self.summary,
            "description": self.description,
            "starts_at": _rfc3339(self.starts_at),
            "resolved_at": None if self.resolved_at is None else _rfc3339(self.resolved_at),
            "state": "firing" if self.resolved_at is None else "resolved",
            "duration_seconds": round(self.duration(time.time()), 1),
        }


def _row(rec: AlertRecord) -> tuple[object, ...]:
    lab = dict(rec.alert.labels)
    ann = rec.alert.annotations
    return (
        rec.key,
        rec.starts_at,
        rec.resolved_at,
        lab.get("alertname", ""),
        lab.get("instance", ""),
        json.dumps(lab, sort_keys=True),
        ann.get("summary", "")[:1000],
        ann.get("description", "")[:4000],
    )


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class AlertHistory:
    """The history table; safe to use from several threads (one lock, short statements)."""

    FILENAME = "alert_history.sqlite3"

    def __init__(
        self, state_dir: Path, keep_seconds: float = KEEP_SECONDS, max_rows: int = MAX_ROWS
    ) -> None:
        self.path = state_dir / self.FILENAME
        self.keep_seconds, self.max_rows = keep_seconds, max_rows
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._writes = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) and not self.path.exists():
                    raise
                aside = self.path.with_name(f"{self.FILENAME}.corrupt-{int(time.time())}")
                self.path.rename(aside)
                log.error("alert history %s unreadable (%s): moved to %s", self.path, e, aside)
                self._db = self._connect()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db.execute("SELECT count(*) FROM history").fetchone()
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def record(self, rec: AlertRecord, now: float | None = None) -> None:
        """Write ``rec``'s current state (fired or resolved); prune now and then."""
        self.record_many([rec], now)

    def record_many(self, records: Iterable[AlertRecord], now: float | None = None) -> None:
        """Write each record's state, in order, in one transaction; prune every 100 rows."""
        rows = [_row(r) for r in records]
        if not rows:
            return
        with self._lock:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                # what paged (summary, contributors) is kept; resolving only sets the end
                db.executemany(
                    "INSERT INTO history VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (key, starts_at) "
                    "DO UPDATE SET resolved_at=excluded.resolved_at",
                    rows,
                )
                before, self._writes = self._writes, self._writes + len(rows)
                if (self._writes + 99) // 100 > (before + 99) // 100:  # passed row 1, 101, ...
                    self._prune(db, time.time() if now is None else now)

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        db.execute(
            "DELETE FROM history WHERE resolved_at IS NOT NULL AND resolved_at < ?",
            (now - self.keep_seconds,),
        )
        db.execute(
            "DELETE FROM history WHERE rowid IN (SELECT rowid FROM history ORDER BY starts_at "
            "DESC LIMIT -1 OFFSET ?)",
            (self.max_rows,),
        )

    def since(
        self, since: float, instance: str | None = None, limit: int = 1000
    ) -> list[PastAlert]:
        """Incidents active at or after ``since`` (still firing, or resolved since), newest
        first; of one ``instance`` if given; at most ``limit``."""
        sql = (
            "SELECT key, alertname, instance, labels, summary, description, starts_at, "
            "resolved_at FROM history WHERE (resolved_at IS NULL OR resolved_at >= ?)"
        )
        args: list[object] = [since]
        if instance is not None:
            sql += " AND instance = ?"
            args.append(instance)
        sql += " ORDER BY starts_at DESC LIMIT ?"
        args.append(max(0, limit))
        with self._lock:
            rows = self._conn().execute(sql, args).fetchall()
        return [
            PastAlert(k, n, i, json.loads(lab), s, d, float(a), None if r is None else float(r))
            for k, n, i, lab, s, d, a, r in rows
        ]
