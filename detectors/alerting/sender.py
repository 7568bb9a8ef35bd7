"""Delivers alerts to every configured Alertmanager, durably, with resends and retries.

The queue is the latest state of each alert (updates collapse per alert), held in
:class:`~dcwatch.detectors.alerting.queue.AlertStore` so it survives restarts. Each Alertmanager has
its own task, delivery state and backoff: one that is down or slow never holds up another, and one
that failed is sent every held alert once it answers again (a restart empties its memory). With no
Alertmanager, state changes go to the log and the JSON-lines alert log.

The analyzer hands over a whole pass at once (:meth:`AlertSender.apply`): a fleet-wide event
(power, network) changes thousands of alerts in one pass, and each change written, logged and
scanned for alone cost a transaction and a scan of every held alert per alert.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client.core import Metric

from dcwatch.detectors.alerting.alertmanager import (
    AlertmanagerClient,
    Backoff,
    Delivery,
    DeliveryStats,
    clients_from_config,
)
from dcwatch.detectors.alerting.alerts import Alert, AlertingConfig, AlertRecord, alert_payload
from dcwatch.detectors.alerting.history import AlertHistory
from dcwatch.detectors.alerting.log import AlertLog, log_entry
from dcwatch.detectors.alerting.queue import AlertStore
from dcwatch.exposition import Families, MetricSpec

log = logging.getLogger("dcwatch.alerts")
T = TypeVar("T")

BATCH_MAX = 500  # alerts per POST
LOG_LINES_MAX = 20  # state changes logged one per line in a batch; the rest in one summary line
LOG_TARGET = "log"  # the ``alertmanager`` label of the JSON-lines log in the metrics

_AM = ("alertmanager",)
SENT = MetricSpec("dcwatch_alerts_sent_total", "Alert states delivered", _AM, "counter")
FAILED = MetricSpec(
    "dcwatch_alerts_failed_total", "Alert states in failed deliveries (retried)", _AM, "counter"
)
DROPPED = MetricSpec(
    "dcwatch_alerts_dropped_total",
    "Alert states given up on (queue full, rejected)",
    _AM,
    "counter",
)
QUEUED = MetricSpec("dcwatch_alerts_queued", "Alerts waiting for delivery", _AM)
LAST_SUCCESS = MetricSpec(
    "dcwatch_alerts_last_success_timestamp_seconds", "Time of the last delivery", _AM
)
UP = MetricSpec("dcwatch_alertmanager_up", "1 if the last delivery attempt succeeded", _AM)
HELD = MetricSpec("dcwatch_alerts_held", "Alerts held by the analyzer, by state", ("state",))
SENDER_METRICS = (SENT, FAILED, DROPPED, QUEUED, LAST_SUCCESS, UP, HELD)


@dataclass(frozen=True)
class Applied:
    """What :meth:`AlertSender.apply` did, in the order it was given the alerts and keys."""

    fired: tuple[AlertRecord, ...]  # per alert fired: its record (startsAt kept if firing)
    resolved: tuple[bool, ...]  # per key resolved: False if it was not firing


@dataclass
class _Batch:
    """What one :meth:`AlertSender.apply` changed, to write and announce once."""

    changes: list[AlertRecord] = field(default_factory=list)  # state changes, snapshots, in order
    put: dict[str, AlertRecord] = field(default_factory=dict)  # records to store, by key
    evicted: list[str] = field(default_factory=list)
    room: list[tuple[tuple[int, float], int, str, AlertRecord]] | None = None  # eviction heap
    seq: Iterator[int] = field(default_factory=itertools.count)  # heap tie-break: arrival order


def _copy(r: AlertRecord) -> AlertRecord:
    return AlertRecord(r.alert, r.starts_at, r.resolved_at, r.changed_at, r.version)


class AlertSender:
    """``await apply(fire, resolve)`` per pass (or ``fire(alert)`` / ``resolve(key)`` one at a
    time); a background task per Alertmanager delivers.

    Use as ``async with AlertSender(cfg) as s:`` or ``app.cleanup_ctx.append(s.cleanup_ctx)``.
    """

    def __init__(self, config: AlertingConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock  # wall time, for startsAt/endsAt; scheduling uses time.monotonic
        self.targets: list[AlertmanagerClient] = []
        self.backoff = Backoff(config.retry_initial, config.retry_max)
        self.store = AlertStore(config.state_dir)
        self.history = AlertHistory(config.state_dir)  # fired/resolved, kept 30 days
        path = config.alert_log_path
        self.alert_log = AlertLog(path) if path else None
        self.log_stats = DeliveryStats(LOG_TARGET)
        self._records: dict[str, AlertRecord] = {}
        self._settled: set[str] = set()  # resolved alerts that may have been delivered enough
        self._executor: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, background: bool = True) -> None:
        """Open the store (re-queueing what it holds); start one delivery task per Alertmanager.

        ``background=False`` starts no tasks: deliveries happen only in :meth:`flush` (tests).
        """
        self.targets = clients_from_config(self.config)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dcwatch-alerts")
        for r in await self._io(self.store.open):
            self._records[r.key] = r
            if not r.firing:
                self._settled.add(r.key)
        self._session = aiohttp.ClientSession(headers={"User-Agent": "dcwatch-analyzer"})
        dest = ", ".join(t.name for t in self.targets) or f"log only ({self.alert_log_path})"
        log.info(
            "alerts: %d held in %s, delivering to %s", len(self._records), self.store.path, dest
        )
        if background:
            self._tasks = [asyncio.create_task(self._run(t)) for t in self.targets]

    async def stop(self) -> None:
        """Cancel and await the tasks; close the session and the store. Nothing held is lost."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._executor is not None:
            await self._io(self.store.close)
            await self._io(self.history.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> AlertSender:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: started with the app, stopped (tasks awaited) with it."""
        await self.start()
        yield
        await self.stop()

    @property
    def alert_log_path(self) -> str:
        return str(self.alert_log.path) if self.alert_log else "none"

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file/SQLite work on the one store thread (keeps writes ordered)."""
        if self._executor is None:
            raise RuntimeError("AlertSender is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- the analyzer's side ----------------------------------------------------------------

    async def apply(
        self, fire: Sequence[Alert] = (), resolve: Sequence[str | Alert] = ()
    ) -> Applied:
        """One pass's state changes: as :meth:`resolve` for each of ``resolve`` then :meth:`fire`
        for each of ``fire``, but written in one hop to the store thread (one store transaction,
        one history transaction, one alert-log append), logged in at most ``LOG_LINES_MAX``
        lines and a summary, and with one wake of the delivery tasks."""
        now = self.clock()
        batch = _Batch()
        resolved = tuple(
            self._resolve(a if isinstance(a, str) else a.key, now, batch) for a in resolve
        )
        done = self._take_done()  # forgotten before the fires, as if each resolve were alone
        fired = tuple(self._fire(a, now, batch) for a in fire)
        put = [_copy(r) for k, r in batch.put.items() if self._records.get(k) is r]
        delete = [k for k in (*batch.evicted, *done) if k not in self._records]
        if put or delete or batch.changes:
            errors = await self._io(self._write, put, delete, batch.changes, now)
            self._written(batch.changes, now, *errors)
        return Applied(fired, resolved)

    async def fire(self, alert: Alert) -> AlertRecord:
        """Assert ``alert``. New (or resolved before): sent now with ``startsAt`` = now. Already
        firing: ``startsAt`` is kept and changed annotations go out with the next resend."""
        return (await self.apply(fire=[alert])).fired[0]

    async def resolve(self, alert: str | Alert) -> bool:
        """End an alert (by key or alert): sent now with ``endsAt`` = now. False if not firing."""
        return (await self.apply(resolve=[alert])).resolved[0]

    def get(self, key: str) -> AlertRecord | None:
        return self._records.get(key)

    def firing(self) -> list[AlertRecord]:
        """Alerts now firing (e.g. to reconcile with the detectors' state after a restart)."""
        return [r for r in self._records.values() if r.firing]

    def _fire(self, alert: Alert, now: float, batch: _Batch) -> AlertRecord:
        key = alert.key
        rec = self._records.get(key)
        if rec is not None and rec.firing:
            if rec.alert != alert:  # new annotations: stored, sent with the next resend
                rec.alert = alert
                batch.put[key] = rec
            return rec
        if rec is None:
            self._make_room(batch)
        new = AlertRecord(alert, now, None, now, rec.version + 1 if rec else 1)
        self._records[key] = new
        self._changed(key, new, batch)
        return new

    def _resolve(self, key: str, now: float, batch: _Batch) -> bool:
        rec = self._records.get(key)
        if rec is None or not rec.firing:
            return False
        rec.resolved_at = rec.changed_at = max(now, rec.starts_at)
        rec.version += 1
        self._settled.add(key)
        self._changed(key, rec, batch)
        return True

    def _changed(self, key: str, rec: AlertRecord, batch: _Batch) -> None:
        batch.changes.append(_copy(rec))  # this state, as history and the alert log keep it
        batch.put[key] = rec
        if batch.room is not None:  # its eviction rank changed
            heapq.heappush(batch.room, (self._rank(rec), next(batch.seq), key, rec))

    def _write(
        self, put: list[AlertRecord], delete: list[str], changes: list[AlertRecord], now: float
    ) -> tuple[Exception | None, OSError | None]:
        """The blocking half of :meth:`apply` (store thread): the store, then history and the
        alert log, whose failures are returned (alerting goes on without them)."""
        self.store.write(put, delete)
        if not changes:
            return None, None
        history_error = log_error = None
        try:
            self.history.record_many(changes, now)
        except Exception as e:
            history_error = e
        if self.alert_log is not None:
            try:
                self.alert_log.write_many(log_entry(r, now, self.config) for r in changes)
            except OSError as e:
                log_error = e
        return history_error, log_error

    def _written(
        self,
        changes: list[AlertRecord],
        now: float,
        history_error: Exception | None,
        log_error: OSError | None,
    ) -> None:
        if not changes:
            return
        if history_error is not None:
            log.error("alert history %s: cannot write (%s)", self.history.path, history_error)
        if self.alert_log is not None:
            if log_error is None:
                self.log_stats.sent += len(changes)
                self.log_stats.last_success, self.log_stats.up = now, True
            else:
                self.log_stats.dropped += len(changes)
                self.log_stats.up = False
                log.error(
                    "alert log %s: cannot write (%s): %d entries lost",
                    self.alert_log.path,
                    log_error,
                    len(changes),
                )
        self._announce(changes)
        for t in self.targets:
            t.wake.set()

    def _announce(self, changes: list[AlertRecord]) -> None:
        """A line per state change, the first ``LOG_LINES_MAX`` of a batch; then one summary."""
        level = logging.INFO if self.targets else logging.WARNING
        for rec in changes[:LOG_LINES_MAX]:
            state = "firing" if rec.firing else "resolved"
            labels = " ".join(f"{k}={v}" for k, v in rec.alert.labels.items())
            summary = rec.alert.annotations.get("summary", "")
            log.log(level, "alert %s: %s: %s", state, labels, summary)
        more = changes[LOG_LINES_MAX:]
        if more:
            firing = sum(r.firing for r in more)
            kept = f"the alert log {self.alert_log.path} and " if self.alert_log else ""
            log.log(
                level,
                "... and %d more alert state changes (%d firing, %d resolved); see %s"
                "the alert history %s",
                len(more),
                firing,
                len(more) - firing,
                kept,
                self.history.path,
            )

    # --- what is held, what is due --------------------------------------------------------

    def _pending(self, t: AlertmanagerClient, r: AlertRecord) -> bool:
        """Must this alert's current state still reach ``t``?"""
        d = t.deliveries.get(r.key)
        if d is None or d.version < r.version:
            return True
        return t.resync and self._wants_resend(r, d)

    def _wants_resend(self, r: AlertRecord, d: Delivery) -> bool:
        return r.firing or d.resolved_sent < self.config.resolved_resends

    def _rank(self, r: AlertRecord) -> tuple[int, float]:
        """Eviction order: resolved ones every Alertmanager has, then the oldest resolved, then
        the oldest firing."""
        undelivered = any(self._pending(t, r) for t in self.targets)
        return (2 if r.firing else int(undelivered), r.changed_at)

    def _make_room(self, batch: _Batch) -> None:
        """Evict until one more alert fits, lowest :meth:`_rank` first. What an Alertmanager
        never got is counted and logged. The ranking is built once per batch (a heap)."""
        excess = len(self._records) + 1 - self.config.queue_max
        if excess <= 0:
            return
        if batch.room is None:
            held = self._records.items()
            batch.room = [(self._rank(r), i, k, r) for i, (k, r) in enumerate(held)]
            heapq.heapify(batch.room)
            batch.seq = itertools.count(len(batch.room))
        while excess > 0 and batch.room:
            _, _, key, r = heapq.heappop(batch.room)
            if self._records.get(key) is not r:
                continue  # evicted or replaced since (a record changes rank in place only when
                # resolved, and a batch resolves before it fires, before any eviction)
            self._evict(r)
            batch.evicted.append(key)
            excess -= 1

    def _evict(self, r: AlertRecord) -> None:
        lost = [t for t in self.targets if self._pending(t, r)]
        for t in lost:
            t.stats.dropped += 1
        if not self.targets:
            self.log_stats.dropped += 1
        if lost or r.firing:
            log.error(
                "alert queue full (queue_max=%d): dropping %s alert %s, never delivered to %s",
                self.config.queue_max,
                "firing" if r.firing else "resolved",
                dict(r.alert.labels),
                ", ".join(t.name for t in lost) or "-",
            )
        self._drop(r.key)

    def _drop(self, key: str) -> None:
        self._records.pop(key, None)
        for t in self.targets:
            t.deliveries.pop(key, None)

    def _take_done(self) -> list[str]:
        """Forget resolved alerts that every Alertmanager has had ``resolved_resends`` times;
        return their keys. Only alerts resolved or delivered since the last call can be done."""
        done = [
            key
            for key in self._settled
            if (r := self._records.get(key)) is not None
            and not r.firing
            and all(
                (d := t.deliveries.get(key)) is not None
                and d.version == r.version
                and not self._wants_resend(r, d)
                for t in self.targets
            )
        ]
        self._settled.clear()
        for key in done:
            self._drop(key)
        return done

    async def _forget_done(self) -> None:
        if done := self._take_done():
            await self._io(self.store.delete, done)

    def _due(self, t: AlertmanagerClient, now: float) -> list[AlertRecord]:
        """Pending states, plus resends that are due; resends due within half an interval ride
        along, so steady-state resends go out in a few large POSTs rather than many small ones."""
        interval = self.config.resend_interval
        now += 0.001  # the loop may wake a hair early: that is on time, not a spin
        out, soon, overdue = [], [], False
        for r in self._records.values():
            d = t.deliveries.get(r.key)
            if self._pending(t, r):
                out.append(r)
            elif d is not None and self._wants_resend(r, d) and d.last_sent + interval / 2 <= now:
                soon.append(r)
                overdue = overdue or d.last_sent + interval <= now
        return out + soon if out or overdue else []

    def _next_due(self, t: AlertmanagerClient, now: float) -> float | None:
        """Monotonic time ``t`` next has something to send; None when nothing is held."""
        times = []
        for r in self._records.values():
            d = t.deliveries.get(r.key)
            if self._pending(t, r):
                times.append(now)
            elif d is not None and self._wants_resend(r, d):
                times.append(d.last_sent + self.config.resend_interval)
        return max(min(times), t.retry_at) if times else None

    # --- delivery ---------------------------------------------------------------------------

    async def _run(self, t: AlertmanagerClient) -> None:
        while True:
            t.wake.clear()
            if time.monotonic() >= t.retry_at:
                try:
                    await self._deliver(t)
                except Exception:  # a bug must not stop deliveries for good
                    wait = self.config.retry_max
                    log.exception("alertmanager %s: delivery failed, retry in %gs", t.name, wait)
                    t.retry_at = time.monotonic() + wait
            due = self._next_due(t, time.monotonic())
            timeout = None if due is None else max(0.0, due - time.monotonic())
            # asyncio.wait, not wait_for: 3.10/3.11's wait_for can swallow a cancellation.
            waiter = asyncio.ensure_future(t.wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=timeout)
            finally:
                waiter.cancel()

    async def flush(self) -> bool:
        """One delivery round to every Alertmanager now, backoff or not; True if all succeeded."""
        return all(await asyncio.gather(*(self._deliver(t) for t in self.targets)))

    async def _deliver(self, t: AlertmanagerClient) -> bool:
        """Send ``t`` what is due; False when a POST failed (a retry is then scheduled)."""
        async with t.lock:
            batch = self._due(t, time.monotonic())
            for i in range(0, len(batch), BATCH_MAX):
                if not await self._post_chunk(t, batch[i : i + BATCH_MAX]):
                    return False
            t.resync = False
        await self._forget_done()
        return True

    async def _post_chunk(self, t: AlertmanagerClient, chunk: list[AlertRecord]) -> bool:
        assert self._session is not None, "AlertSender is not started"
        sent = [(r, r.version, r.firing) for r in chunk]
        body = [alert_payload(r, self.clock(), self.config) for r in chunk]
        status, err = await t.post(self._session, body, self.config.timeout)
        if status is not None and 200 <= status < 300:
            self._delivered(t, sent)
            return True
        if status != 400:
            return self._failed(t, len(chunk), err)
        # Alertmanager rejects the whole batch for one bad alert: send one by one, drop the bad.
        for one, payload in zip(sent, body, strict=True):
            status, err = await t.post(self._session, [payload], self.config.timeout)
            if status is not None and 200 <= status < 300:
                self._delivered(t, [one])
            elif status == 400:
                log.error("alertmanager %s rejected %s: %s: dropped", t.name, payload, err)
                t.stats.dropped += 1
                self._delivered(t, [one], count=False)
                if (d := t.deliveries.get(one[0].key)) is not None:
                    d.resolved_sent = self.config.resolved_resends  # a resolved one: forget it
            else:
                return self._failed(t, 1, err)
        return True

    def _delivered(
        self,
        t: AlertmanagerClient,
        sent: Iterable[tuple[AlertRecord, int, bool]],
        count: bool = True,
    ) -> None:
        now, n = time.monotonic(), 0
        for r, version, firing in sent:
            if self._records.get(r.key) is not r:
                continue  # evicted or re-fired while in flight
            d = t.deliveries.setdefault(r.key, Delivery())
            d.resolved_sent = 0 if firing else d.resolved_sent + (version == r.version)
            d.version, d.last_sent = max(d.version, version), now
            if not r.firing:
                self._settled.add(r.key)  # may be done now: _take_done looks
            n += 1
        if count:
            t.stats.sent += n
        if t.failures:
            log.info("alertmanager %s reachable again after %d failures", t.name, t.failures)
        t.failures, t.retry_at = 0, 0.0
        t.stats.up, t.stats.last_success = True, self.clock()

    def _failed(self, t: AlertmanagerClient, n: int, err: str) -> bool:
        t.failures += 1
        t.last_error = err
        t.stats.failed += n
        t.stats.up = False
        t.resync = True
        delay = self.backoff.delay(t.failures)
        t.retry_at = time.monotonic() + delay
        queued = sum(self._pending(t, r) for r in self._records.values())
        log.warning(
            "alertmanager %s %s, %d alerts queued, retry in %.1fs", t.name, err, queued, delay
        )
        return False

    # --- health and self-metrics -----------------------------------------------------------

    def problems(self) -> list[str]:
        """Why alerts are not getting through now, one line each; empty when they are.

        An Alertmanager whose last POST failed (until one succeeds), the alert log when its
        last write failed, and a queue at ``queue_max`` (the next new alert evicts one).
        """
        out = []
        for s, t in zip(self.stats(), self.targets, strict=False):
            if t.failures:
                retry = f", retry in {s.retry_in:.0f}s" if s.retry_in is not None else ""
                out.append(
                    f"alertmanager {t.name} {t.last_error} ({t.failures} failed attempts, "
                    f"{s.queued} alerts queued{retry})"
                )
        if self.alert_log is not None and self.log_stats.up is False:
            out.append(f"alert log {self.alert_log.path} cannot be written: entries are lost")
        if len(self._records) >= self.config.queue_max:
            out.append(
                f"alert queue full ({len(self._records)} of queue_max={self.config.queue_max}): "
                "new alerts evict old ones"
            )
        return out

    def stats(self) -> list[DeliveryStats]:
        """Per Alertmanager (and ``log`` for the JSON-lines file, if any): counters and queue."""
        now = time.monotonic()
        out = []
        for t in self.targets:
            t.stats.queued = sum(self._pending(t, r) for r in self._records.values())
            t.stats.retry_in = max(0.0, t.retry_at - now) if t.failures else None
            out.append(t.stats)
        if self.alert_log is not None:
            out.append(self.log_stats)
        return out

    def collect(self) -> Iterable[Metric]:
        """Metric families for the analyzer's ``/metrics`` (names in :data:`SENDER_METRICS`)."""
        f = Families()
        for s in self.stats():
            f.add(SENT, s.sent, s.name)
            f.add(FAILED, s.failed, s.name)
            f.add(DROPPED, s.dropped, s.name)
            f.add(QUEUED, None if s.name == LOG_TARGET else s.queued, s.name)
            f.add(LAST_SUCCESS, s.last_success, s.name)
            f.add(UP, None if s.up is None or s.name == LOG_TARGET else int(s.up), s.name)
        firing = sum(r.firing for r in self._records.values())
        f.add(HELD, firing, "firing")
        f.add(HELD, len(self._records) - firing, "resolved")
        return f
