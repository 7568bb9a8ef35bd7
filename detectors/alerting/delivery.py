"""The delivery half of the alert sender: one task per Alertmanager sends what it has to get.

:class:`~dcwatch.detectors.alerting.sender.AlertSender` holds the alerts; a :class:`Deliverer`
reads them (the sender's records, never changed here) and, per Alertmanager, works out what is due
(new states, resends, everything after a failure), posts it in batches, backs off on failures and
keeps the delivery counters. Each Alertmanager has its own task, delivery state and backoff: one
that is down or slow never holds up another, and one that failed is sent every held alert once it
answers again (a restart empties its memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import aiohttp

from dcwatch.detectors.alerting.alertmanager import (
    AlertmanagerClient,
    Backoff,
    Delivery,
    DeliveryStats,
)
from dcwatch.detectors.alerting.alerts import AlertingConfig, AlertRecord, alert_payload
from dcwatch.exposition import Families, MetricSpec

log = logging.getLogger("dcwatch.alerts")

BATCH_MAX = 500  # alerts per POST
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
DELIVERY_METRICS = (SENT, FAILED, DROPPED, QUEUED, LAST_SUCCESS, UP)


def delivery_families(stats: Iterable[DeliveryStats]) -> Families:
    """The :data:`DELIVERY_METRICS` of each destination (the ``log`` one has no queue and no up)."""
    f = Families()
    for s in stats:
        f.add(SENT, s.sent, s.name)
        f.add(FAILED, s.failed, s.name)
        f.add(DROPPED, s.dropped, s.name)
        f.add(QUEUED, None if s.name == LOG_TARGET else s.queued, s.name)
        f.add(LAST_SUCCESS, s.last_success, s.name)
        f.add(UP, None if s.up is None or s.name == LOG_TARGET else int(s.up), s.name)
    return f


class Deliverer:
    """Delivers the held ``records`` to each Alertmanager; ``on_settled(key)`` is told of each
    resolved state delivered (it may be done now), ``after_round()`` awaited after each round that
    got everything through (to forget what is done)."""

    def __init__(
        self,
        config: AlertingConfig,
        records: Mapping[str, AlertRecord],
        *,
        clock: Callable[[], float],
        on_settled: Callable[[str], None],
        after_round: Callable[[], Awaitable[None]],
    ) -> None:
        self.config = config
        self.records = records
        self.clock = clock  # wall time, for endsAt and last_success; scheduling is monotonic
        self.on_settled = on_settled
        self.after_round = after_round
        self.targets: list[AlertmanagerClient] = []
        self.backoff = Backoff(config.retry_initial, config.retry_max)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, targets: list[AlertmanagerClient], background: bool = True) -> None:
        """Open the HTTP session; with ``background``, start one delivery task per target."""
        self.targets = targets
        self._session = aiohttp.ClientSession(headers={"User-Agent": "dcwatch-analyzer"})
        if background:
            self._tasks = [asyncio.create_task(self._run(t)) for t in self.targets]

    async def stop(self) -> None:
        """Cancel and await the tasks; close the session."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """Something changed: every task looks at what is due now."""
        for t in self.targets:
            t.wake.set()

    # --- what each Alertmanager has, what is due ------------------------------------------

    def pending(self, t: AlertmanagerClient, r: AlertRecord) -> bool:
        """Must this alert's current state still reach ``t``?"""
        d = t.deliveries.get(r.key)
        if d is None or d.version < r.version:
            return True
        return t.resync and self.wants_resend(r, d)

    def wants_resend(self, r: AlertRecord, d: Delivery) -> bool:
        return r.firing or d.resolved_sent < self.config.resolved_resends

    def missing(self, r: AlertRecord) -> list[AlertmanagerClient]:
        """The Alertmanagers that still have to get this alert's current state."""
        return [t for t in self.targets if self.pending(t, r)]

    def done(self, r: AlertRecord) -> bool:
        """Has every Alertmanager had this resolved state ``resolved_resends`` times?"""
        return all(
            (d := t.deliveries.get(r.key)) is not None
            and d.version == r.version
            and not self.wants_resend(r, d)
            for t in self.targets
        )

    def lose(self, r: AlertRecord) -> list[AlertmanagerClient]:
        """The sender gives ``r`` up: forget its deliveries, count it dropped for each
        Alertmanager that never got its state, and return those."""
        lost = self.missing(r)
        for t in lost:
            t.stats.dropped += 1
        self.forget(r.key)
        return lost

    def forget(self, key: str) -> None:
        for t in self.targets:
            t.deliveries.pop(key, None)

    def _due(self, t: AlertmanagerClient, now: float) -> list[AlertRecord]:
        """Pending states, plus resends that are due; resends due within half an interval ride
        along, so steady-state resends go out in a few large POSTs rather than many small ones."""
        interval = self.config.resend_interval
        now += 0.001  # the loop may wake a hair early: that is on time, not a spin
        out, soon, overdue = [], [], False
        for r in self.records.values():
            d = t.deliveries.get(r.key)
            if self.pending(t, r):
                out.append(r)
            elif d is not None and self.wants_resend(r, d) and d.last_sent + interval / 2 <= now:
                soon.append(r)
                overdue = overdue or d.last_sent + interval <= now
        return out + soon if out or overdue else []

    def _next_due(self, t: AlertmanagerClient, now: float) -> float | None:
        """Monotonic time ``t`` next has something to send; None when nothing is held."""
        times = []
        for r in self.records.values():
            d = t.deliveries.get(r.key)
            if self.pending(t, r):
                times.append(now)
            elif d is not None and self.wants_resend(r, d):
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
        await self.after_round()
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
            if self.records.get(r.key) is not r:
                continue  # evicted or re-fired while in flight
            d = t.deliveries.setdefault(r.key, Delivery())
            d.resolved_sent = 0 if firing else d.resolved_sent + (version == r.version)
            d.version, d.last_sent = max(d.version, version), now
            if not r.firing:
                self.on_settled(r.key)  # may be done now: the sender looks
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
        queued = sum(self.pending(t, r) for r in self.records.values())
        log.warning(
            "alertmanager %s %s, %d alerts queued, retry in %.1fs", t.name, err, queued, delay
        )
        return False

    def stats(self) -> list[DeliveryStats]:
        """Per Alertmanager: its counters, with the queue and the retry time brought up to date."""
        now = time.monotonic()
        for t in self.targets:
            t.stats.queued = sum(self.pending(t, r) for r in self.records.values())
            t.stats.retry_in = max(0.0, t.retry_at - now) if t.failures else None
        return [t.stats for t in self.targets]

    def problems(self) -> list[str]:
        """Each Alertmanager whose last POST failed (until one succeeds), with its queue."""
        out = []
        for t, s in zip(self.targets, self.stats(), strict=True):
            if t.failures:
                retry = f", retry in {s.retry_in:.0f}s" if s.retry_in is not None else ""
                out.append(
                    f"alertmanager {t.name} {t.last_error} ({t.failures} failed attempts, "
                    f"{s.queued} alerts queued{retry})"
                )
        return out
