"""Delivers alerts to every configured Alertmanager, durably, with resends and retries.

The queue is the latest state of each alert (updates collapse per alert), held in
:class:`~dcwatch.detectors.alerting.queue.AlertStore` so it survives restarts. This module holds
it (firing, resolving, eviction, forgetting what was delivered enough, health);
:class:`~dcwatch.detectors.alerting.delivery.Deliverer` delivers it, a task per Alertmanager, and
:class:`~dcwatch.detectors.alerting.journal.AlertJournal` records each state change (history,
alert log, process log). With no Alertmanager, state changes go to the log and the alert log.

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

from aiohttp import web
from prometheus_client.core import Metric

from dcwatch.detectors.alerting.alertmanager import (
    AlertmanagerClient,
    DeliveryStats,
    clients_from_config,
)
from dcwatch.detectors.alerting.alerts import Alert, AlertingConfig, AlertRecord
from dcwatch.detectors.alerting.delivery import DELIVERY_METRICS, Deliverer, delivery_families
from dcwatch.detectors.alerting.journal import LOG_LINES_MAX as LOG_LINES_MAX
from dcwatch.detectors.alerting.journal import AlertJournal
from dcwatch.detectors.alerting.queue import AlertStore
from dcwatch.exposition import MetricSpec

log = logging.getLogger("dcwatch.alerts")
T = TypeVar("T")

HELD = MetricSpec("dcwatch_alerts_held", "Alerts held by the analyzer, by state", ("state",))
SENDER_METRICS = (*DELIVERY_METRICS, HELD)


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
    time); a background task per Alertmanager delivers (:attr:`delivery`).

    Use as ``async with AlertSender(cfg) as s:`` or ``app.cleanup_ctx.append(s.cleanup_ctx)``.
    """

    def __init__(self, config: AlertingConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock  # wall time, for startsAt/endsAt; scheduling uses time.monotonic
        self.store = AlertStore(config.state_dir)
        self.journal = AlertJournal(config)  # the history, the alert log, the process log
        self.history, self.alert_log = self.journal.history, self.journal.alert_log
        self.log_stats = self.journal.log_stats
        self._records: dict[str, AlertRecord] = {}
        self._settled: set[str] = set()  # resolved alerts that may have been delivered enough
        self._executor: ThreadPoolExecutor | None = None
        self.delivery = Deliverer(
            config,
            self._records,
            clock=lambda: self.clock(),  # looked up per call, as the sender does
            on_settled=self._settled.add,
            after_round=self._forget_done,
        )

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, background: bool = True) -> None:
        """Open the store (re-queueing what it holds); start one delivery task per Alertmanager.

        ``background=False`` starts no tasks: deliveries happen only in :meth:`flush` (tests).
        """
        targets = clients_from_config(self.config)  # reads credential files: may raise
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dcwatch-alerts")
        for r in await self._io(self.store.open):
            self._records[r.key] = r
            if not r.firing:
                self._settled.add(r.key)
        self.delivery.start(targets, background)  # the tasks run from the next await
        dest = ", ".join(t.name for t in self.targets) or f"log only ({self.alert_log_path})"
        log.info(
            "alerts: %d held in %s, delivering to %s", len(self._records), self.store.path, dest
        )

    async def stop(self) -> None:
        """Cancel and await the tasks; close the session and the store. Nothing held is lost."""
        await self.delivery.stop()
        if self._executor is not None:
            await self._io(self.store.close)
            await self._io(self.journal.close)
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
    def targets(self) -> list[AlertmanagerClient]:
        """The Alertmanagers, each with its delivery state (empty before :meth:`start`)."""
        return self.delivery.targets

    async def flush(self) -> bool:
        """One delivery round to every Alertmanager now, backoff or not; True if all succeeded."""
        return await self.delivery.flush()

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
            if batch.changes:
                self.journal.written(batch.changes, now, *errors, delivering=bool(self.targets))
                self.delivery.wake()
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
        """The blocking half of :meth:`apply` (store thread): the store, then the journal."""
        self.store.write(put, delete)
        return self.journal.write(changes, now)

    # --- what is held -----------------------------------------------------------------------

    def _rank(self, r: AlertRecord) -> tuple[int, float]:
        """Eviction order: resolved ones every Alertmanager has, then the oldest resolved, then
        the oldest firing."""
        return (2 if r.firing else int(bool(self.delivery.missing(r))), r.changed_at)

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
        lost = self.delivery.lose(r)  # counted as dropped for each Alertmanager that lacks it
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
        self._records.pop(r.key, None)

    def _take_done(self) -> list[str]:
        """Forget resolved alerts that every Alertmanager has had ``resolved_resends`` times;
        return their keys. Only alerts resolved or delivered since the last call can be done."""
        done = [
            key
            for key in self._settled
            if (r := self._records.get(key)) is not None and not r.firing and self.delivery.done(r)
        ]
        self._settled.clear()
        for key in done:
            self._records.pop(key, None)
            self.delivery.forget(key)
        return done

    async def _forget_done(self) -> None:
        if done := self._take_done():
            await self._io(self.store.delete, done)

    # --- health and self-metrics -----------------------------------------------------------

    def problems(self) -> list[str]:
        """Why alerts are not getting through now, one line each; empty when they are.

        An Alertmanager whose last POST failed (until one succeeds), the alert log when its
        last write failed, and a queue at ``queue_max`` (the next new alert evicts one).
        """
        out = self.delivery.problems()
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
        out = self.delivery.stats()
        if self.alert_log is not None:
            out.append(self.log_stats)
        return out

    def collect(self) -> Iterable[Metric]:
        """Metric families for the analyzer's ``/metrics`` (names in :data:`SENDER_METRICS`)."""
        f = delivery_families(self.stats())
        firing = sum(r.firing for r in self._records.values())
        f.add(HELD, firing, "firing")
        f.add(HELD, len(self._records) - firing, "resolved")
        return f
