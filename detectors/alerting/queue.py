"""The durable half of the alert queue: one SQLite row per alert the sender still holds.

A row is the latest state of one alert (updates collapse per key by construction), so the table
is both the set of active alerts (their ``startsAt`` survives restarts) and the queue of updates
not yet delivered: after a restart the sender re-sends every row. Calls block briefly; the sender
runs them on its single store thread, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from dcwatch.detectors.alerting.alerts import Alert, AlertRecord

log = logging.getLogger("dcwatch.alerts")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    generator_url TEXT NOT NULL,
    starts_at REAL NOT NULL,
    resolved_at REAL,
    changed_at REAL NOT NULL
)
"""


class AlertStore:
    """``alerts.sqlite3`` in the state directory (WAL; a corrupt file is moved aside, loudly)."""

    FILENAME = "alerts.sqlite3"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.FILENAME
        self._db: sqlite3.Connection | None = None

    def open(self) -> list[AlertRecord]:
        """Open (creating the directory and table) and return the stored records."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connect()
            return self._load()
        except sqlite3.OperationalError as e:  # cannot open or write: a setup problem, not data
            raise sqlite3.OperationalError(f"alert store {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            if self._db is not None:
                self._db.close()
            aside = self.path.with_name(f"{self.FILENAME}.corrupt-{int(time.time())}")
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.FILENAME + suffix).unlink(missing_ok=True)
            log.error(
                "alert store %s unreadable (%s): moved to %s, starting empty; alerts that were "
                "active will be sent again when the analyzer next decides they fire",
                self.path,
                e,
                aside,
            )
            self._connect()
            return []

    def _connect(self) -> None:
        # check_same_thread off: the sender confines every call to one executor thread anyway.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # few writes; each must survive a crash
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
        self._db.execute(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _load(self) -> list[AlertRecord]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT labels, annotations, generator_url, starts_at, resolved_at, changed_at "
            "FROM alerts ORDER BY changed_at"
        ).fetchall()
        out = []
        for labels, ann, gen, starts_at, resolved_at, changed_at in rows:
            try:
                alert = Alert(json.loads(labels), json.loads(ann), gen)
            except (ValueError, TypeError) as e:
                log.error("alert store: skipping unreadable row %s: %s", labels, e)
                continue
            out.append(AlertRecord(alert, starts_at, resolved_at, changed_at))
        return out

    def put(self, records: Iterable[AlertRecord]) -> None:
        """Insert or replace records (one transaction)."""
        self.write(put=records)

    def delete(self, keys: Iterable[str]) -> None:
        self.write(delete=keys)

    def write(self, put: Iterable[AlertRecord] = (), delete: Iterable[str] = ()) -> None:
        """Delete ``delete``, then insert or replace ``put``: one transaction, one fsync."""
        rows = [
            (
                r.key,
                json.dumps(dict(r.alert.labels), sort_keys=True),
                json.dumps(dict(r.alert.annotations), sort_keys=True),
                r.alert.generator_url,
                r.starts_at,
                r.resolved_at,
                r.changed_at,
            )
            for r in put
        ]
        gone = [(k,) for k in delete]
        if not rows and not gone:
            return
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM alerts WHERE key = ?", gone)
            self._db.executemany("INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?)", rows)

    def count(self) -> int:
        assert self._db is not None
        return int(self._db.execute("SELECT count(*) FROM alerts").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
