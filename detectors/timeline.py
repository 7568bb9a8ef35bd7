"""What each node's page plots of the scoring: the last day of anomaly scores, and the current or
latest alert (its interval and top contributing series; the page computes their plots itself,
:mod:`.web.contributors`).

Fed by one call per node per scoring pass (:meth:`Timeline.record`). Bounded: per node one ring
of at most ``max_points`` buckets (``window / max_points`` seconds each, keeping the bucket's
highest score and whether any of it alerted), about 20 KB a node, so 1,000 nodes cost about
20 MB.

With a state directory the rings survive restarts: ``scores.sqlite3`` holds one row per node and
bucket of the window, written after each pass (:meth:`Timeline.unsaved` on the event loop, a
cheap snapshot of the buckets changed; :meth:`Timeline.save` in a worker thread, one transaction
of those rows plus the range of buckets that left the window) and read at start
(:meth:`Timeline.load`). A damaged file is moved aside and a new one started: the score history
is a convenience, never a reason to stop. The incident (alert interval and contributors) is kept
in memory only; after a restart the page takes the contributors from the alert history.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from dcwatch.detectors.models.node import ScoreResult

log = logging.getLogger("dcwatch.analyzer")
T = TypeVar("T")


@dataclass
class Incident:
    """The current or latest alert of a node, as the scored rows saw it (data time)."""

    start: float
    end: float | None = None
    series: dict[str, str] = field(default_factory=dict)  # top contributors -> short | season


class NodeTimeline:
    """One node's score ring and latest incident."""

    def __init__(self, max_points: int, bucket: float) -> None:
        self.bucket = bucket
        self.ts = np.full(max_points, np.nan)  # the newest row's time in each bucket
        self.score = np.full(max_points, np.nan, dtype=np.float32)
        self.alert = np.zeros(max_points, dtype=bool)
        self.head = -1  # index of the newest bucket
        self.last_bucket = -1
        self.incident: Incident | None = None
        self.dirty_from: int | None = None  # oldest bucket changed since the last snapshot

    def add(self, t: float, score: float, alerting: bool) -> None:
        b = int(t // self.bucket)
        if b < self.last_bucket:  # older than what is held: a replay, ignored
            return
        if self.dirty_from is None:
            self.dirty_from = b
        if b == self.last_bucket and self.head >= 0:
            i = self.head
            held = float(self.score[i])
            if score > held or held != held:  # the bucket's highest score; NaN loses to any
                self.score[i] = score
            self.alert[i] |= alerting
            self.ts[i] = t
            return
        self.head = (self.head + 1) % len(self.ts)
        self.last_bucket = b
        self.ts[self.head], self.score[self.head], self.alert[self.head] = t, score, alerting

    def end_alert(self, end: float) -> None:
        """An alert resolved with its last row at ``end``: the buckets after ``end``'s, which
        were flagged while the alert waited out its hold, are not part of it."""
        last = int(end // self.bucket)
        i = self.head
        for _ in range(len(self.ts) if self.head >= 0 else 0):
            t = float(self.ts[i])
            b = int(t // self.bucket) if np.isfinite(t) else -1
            if b <= last:
                break
            if self.alert[i]:
                self.alert[i] = False
                self.dirty_from = b if self.dirty_from is None else min(self.dirty_from, b)
            i = (i - 1) % len(self.ts)

    def fill(self, ts: np.ndarray, score: np.ndarray, alert: np.ndarray) -> None:
        """Start from saved buckets (oldest first; beyond the ring's size the newest)."""
        m = len(self.ts)
        ts, score, alert = ts[-m:], score[-m:], alert[-m:]
        n = len(ts)
        self.ts[:n], self.score[:n], self.alert[:n] = ts, score, alert
        self.head = n - 1
        self.last_bucket = int(ts[-1] // self.bucket) if n else -1

    def changed(self) -> list[tuple[int, float, float, bool]]:
        """(bucket, time, score, alerted) of the buckets changed since the last call."""
        out: list[tuple[int, float, float, bool]] = []
        if self.dirty_from is None:
            return out
        i = self.head
        for _ in range(len(self.ts)):
            t = float(self.ts[i])
            if not np.isfinite(t) or int(t // self.bucket) < self.dirty_from:
                break
            out.append((int(t // self.bucket), t, float(self.score[i]), bool(self.alert[i])))
            i = (i - 1) % len(self.ts)
        self.dirty_from = None
        return out

    @property
    def last_ts(self) -> float | None:
        """Time of the newest scored row (the data's clock: the page's "now")."""
        return float(self.ts[self.head]) if self.head >= 0 else None

    def points(self, since: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, scores, alerting) since ``since``, oldest first."""
        order = np.roll(np.arange(len(self.ts)), -(self.head + 1))
        ts, sc, al = self.ts[order], self.score[order].astype(float), self.alert[order]
        keep = np.isfinite(ts) & (ts >= since)
        return ts[keep], sc[keep], al[keep]

    def alert_spans(self, since: float) -> list[tuple[float, float | None]]:
        """The alert intervals in the ring: (start, end), end None while still alerting."""
        ts, _, al = self.points(since)
        out: list[tuple[float, float | None]] = []
        start = None
        for t, a in zip(ts.tolist(), al.tolist(), strict=True):
            if a and start is None:
                start = t
            elif not a and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, None))
        return out


@dataclass(frozen=True)
class ScoreBatch:
    """The buckets changed since the last :meth:`Timeline.unsaved`: plain data, safe to hand to
    another thread. Rows are (instance, bucket, time, score, alerted)."""

    rows: tuple[tuple[str, int, float, float, bool], ...] = ()


class Timeline:
    """Every node's :class:`NodeTimeline`; :meth:`record` is the service's hook. With
    ``state_dir`` the score rings are saved there (see the module's docstring); without, memory
    only (tests, backtest)."""

    def __init__(
        self,
        state_dir: Path | None = None,
        window: float = 86400.0,
        max_points: int = 1500,
        max_series: int = 3,
    ) -> None:
        self.window, self.max_points, self.max_series = window, max_points, max_series
        self.bucket = window / max_points
        self.nodes: dict[str, NodeTimeline] = {}
        self.file = None if state_dir is None else ScoreFile(state_dir, self.bucket)
        self._dirty: set[str] = set()

    def get(self, instance: str) -> NodeTimeline | None:
        return self.nodes.get(instance)

    def _node(self, instance: str) -> NodeTimeline:
        node = self.nodes.get(instance)
        if node is None:
            node = self.nodes[instance] = NodeTimeline(self.max_points, self.bucket)
        return node

    def record(self, instance: str, result: ScoreResult) -> None:
        """Add one scoring call's rows (the page computes the contributors' plots itself)."""
        if not len(result.ts):
            return
        node = self._node(instance)
        if self.file is not None:
            self._dirty.add(instance)
        was_alerting = node.head >= 0 and bool(node.alert[node.head])
        flags = result.is_anomaly
        for t, s, a in zip(result.ts.tolist(), result.score.tolist(), flags.tolist(), strict=True):
            node.add(t, s, a)
        inc = node.incident
        if flags.any() and (inc is None or inc.end is not None):
            start = float(result.ts[int(np.argmax(flags))])
            if inc is None and was_alerting:  # open before a restart: the ring knows its start
                spans = node.alert_spans(-np.inf)
                if spans and spans[-1][1] is None:
                    start = min(start, spans[-1][0])
            inc = node.incident = Incident(start=start)
        if inc is not None and inc.end is None:
            for row in result.contributors:
                for c in row:
                    if c.series not in inc.series and len(inc.series) < self.max_series:
                        inc.series[c.series] = c.feature
            if not flags[-1]:  # resolved: the incident ends at the alert's last row
                end = result.ended_at()
                if result.alert_end is not None:
                    node.end_alert(end)
                inc.end = max(end, inc.start)

    # -- persistence -----------------------------------------------------------------------------
    def load(self) -> None:
        """Read the saved rings (blocking; before the first pass). Nodes already recorded keep
        what they hold."""
        if self.file is None:
            return
        t0 = time.perf_counter()
        count = 0
        for instance, ts, score, alert in self.file.read(self.max_points):
            if instance not in self.nodes:
                self._node(instance).fill(ts, score, alert)
                count += 1
        if count:
            log.info(
                "score history of %d node(s) loaded from %s in %.2fs",
                count,
                self.file.path,
                time.perf_counter() - t0,
            )

    def unsaved(self) -> ScoreBatch:
        """What changed since the last call (cheap; on the thread that records)."""
        rows = tuple(
            (instance, *row) for instance in self._dirty for row in self.nodes[instance].changed()
        )
        self._dirty.clear()
        return ScoreBatch(rows)

    def save(self, batch: ScoreBatch) -> None:
        """Write ``batch`` (blocking; touches only the batch and the file, so it may run in a
        worker thread while passes go on)."""
        if self.file is not None and batch.rows:
            self.file.write(batch.rows, self.max_points)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    bucket INTEGER NOT NULL,
    instance TEXT NOT NULL,
    ts REAL NOT NULL,
    score REAL,
    alert INTEGER NOT NULL,
    PRIMARY KEY (bucket, instance)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Keyed by bucket first: a pass's rows land at the end of the tree and the buckets that leave
# the window go in one range delete, whatever the number of nodes saved.
_UPSERT = (
    "INSERT INTO scores VALUES (?,?,?,?,?) ON CONFLICT (bucket, instance) DO UPDATE SET "
    "ts=excluded.ts, score=excluded.score, alert=excluded.alert"
)


class ScoreFile:
    """``scores.sqlite3``: the score rings as rows; one lock, one connection, any thread."""

    FILENAME = "scores.sqlite3"

    def __init__(self, state_dir: Path, bucket: float) -> None:
        self.path = state_dir / self.FILENAME
        self.bucket = bucket
        self.moved_aside = 0  # damaged files moved aside since start
        self.failed_writes = 0  # batches not saved (disk full, read-only, ...) since start
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._failing = False

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) and not self.path.exists():
                    raise
                self._move_aside(e)
                self._db = self._connect()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a crash loses at most the last pass
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'bucket_seconds'").fetchone()
            if row is None or float(row[0]) != self.bucket:
                if row is not None:
                    log.info("score history %s: bucket size changed, starting over", self.path)
                db.execute("DELETE FROM scores")
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('bucket_seconds', ?)", (repr(self.bucket),)
                )
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, e: BaseException) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        aside = self.path.with_name(f"{self.FILENAME}.corrupt-{int(time.time())}")
        for suffix in ("-wal", "-shm"):  # a stale log must not be replayed into the new file
            extra = self.path.with_name(self.FILENAME + suffix)
            if extra.exists():
                extra.rename(aside.with_name(aside.name + suffix))
        if self.path.exists():
            self.path.rename(aside)
        self.moved_aside += 1
        log.error(
            "score history %s unreadable (%s): moved to %s, starting a new one", self.path, e, aside
        )

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T | None:
        """``fn(db)`` under the lock; a damaged file is moved aside (and ``fn`` tried once more
        on a new one); any other database error (disk full, read-only) is logged once until a
        call succeeds again, and gives None."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    out = fn(self._conn())
                    if self._failing:
                        log.info("score history %s writable again", self.path)
                    self._failing = False
                    return out
                except sqlite3.OperationalError as e:  # full, read-only, locked: not damage
                    if what == "write":
                        self.failed_writes += 1
                    if not self._failing:
                        log.warning(
                            "score history %s: %s failed (%s); scores stay in memory, "
                            "the next pass writes again",
                            self.path,
                            what,
                            e,
                        )
                    self._failing = True
                    return None
                except sqlite3.DatabaseError as e:
                    if attempt == 2:
                        raise
                    self._move_aside(e)
        return None

    def read(self, max_points: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """Per node the buckets of the window (the newest bucket saved decides where it starts),
        oldest first; older ones are deleted."""

        def read(db: sqlite3.Connection) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
            (newest,) = db.execute("SELECT max(bucket) FROM scores").fetchone()
            if newest is None:
                return []
            first = int(newest) - max_points + 1
            db.execute("DELETE FROM scores WHERE bucket < ?", (first,))
            # bucket order is the table's: no sort; per node columns in compact arrays
            cols: dict[str, tuple[array[float], array[float], array[int]]] = {}
            cur = db.execute("SELECT instance, ts, score, alert FROM scores ORDER BY bucket")
            for instance, ts, score, alert in itertools.chain.from_iterable(
                iter(lambda: cur.fetchmany(10000), [])
            ):
                c = cols.get(instance)
                if c is None:
                    c = cols[instance] = (array("d"), array("d"), array("b"))
                c[0].append(ts)
                c[1].append(np.nan if score is None else score)
                c[2].append(alert)
            return [
                (
                    inst,
                    np.frombuffer(t, dtype=float),
                    np.frombuffer(s, dtype=float),
                    np.frombuffer(a, dtype=np.int8).astype(bool),
                )
                for inst, (t, s, a) in cols.items()
            ]

        try:
            return self._run("read", read) or []
        except sqlite3.DatabaseError as e:  # damaged again right after a move: start empty
            log.error("score history %s unreadable (%s): starting empty", self.path, e)
            return []

    def write(self, rows: tuple[tuple[str, int, float, float, bool], ...], max_points: int) -> None:
        """One transaction: upsert ``rows``, delete the buckets that left the window."""
        first = max(r[1] for r in rows) - max_points + 1

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                db.executemany(
                    _UPSERT,
                    (
                        (b, inst, t, s if np.isfinite(s) else None, int(a))
                        for inst, b, t, s, a in rows
                    ),
                )
                db.execute("DELETE FROM scores WHERE bucket < ?", (first,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

        try:
            self._run("write", write)
        except sqlite3.DatabaseError as e:
            self.failed_writes += 1
            log.error("score history %s: batch not saved (%s)", self.path, e)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
