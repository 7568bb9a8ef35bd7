"""Capacity planning: forecast each rule's series and say when it will be full.

Per rule and series (:mod:`dcwatch.detectors.capacity.rules`) a forecaster is fitted on the rule's
history in a worker of the analyzer's fit backend (process pool, a thread with ``model.workers: 0``,
or Dask; BLAS pinned to one thread), refitted every ``refit`` and updated with the new points at
every step in between. Each step the forecast gives the time to exhaustion
(:func:`time_to_exhaustion`), forecasts at a few horizons and, when the estimate falls within the
rule's horizon, a ``DcwatchCapacityExhaustion`` alert through the analyzer's
:class:`~dcwatch.detectors.alerting.sender.AlertSender`. It resolves once the estimate has been past
1.2 x the horizon (or absent) for two evaluations in a row, so a forecast hovering around the
horizon does not flap. Each round (an evaluation of a rule, a fit, the start) hands its alert
changes to the sender at once (:meth:`~dcwatch.detectors.alerting.sender.AlertSender.apply`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from dcwatch.detectors.alerting.alerts import Alert, AlertingConfig
from dcwatch.detectors.alerting.sender import AlertSender
from dcwatch.detectors.capacity.fits import RuleFits
from dcwatch.detectors.capacity.rules import CapacityRule
from dcwatch.detectors.capacity.series import (
    SeriesData,
    assess,
)
from dcwatch.detectors.capacity.state import CAPACITY_ALERT, RuleState, SeriesState, capacity_alert
from dcwatch.detectors.models.fitting import FitBackend
from dcwatch.detectors.sources.base import Source

log = logging.getLogger("dcwatch.analyzer.capacity")

RESOLVE_FACTOR = 1.2  # resolve only once the estimate is beyond this many horizons ...
RESOLVE_AFTER = 2  # ... (or absent) for this many evaluations in a row
STALE_STEPS = 10  # a series without data for this many steps has no forecast


class CapacityPlanner(RuleFits):
    """Owns the rules' series states, the fit workers and the evaluation loop."""

    def __init__(
        self,
        rules: Sequence[CapacityRule],
        source: Source,
        sender: AlertSender,
        alerting: AlertingConfig,
        *,
        backend: FitBackend | None = None,
    ) -> None:
        # Each rule reads its own queries through a view of the analyzer's source.
        self.rules = {r.name: RuleState(r, source.with_queries(r.queries())) for r in rules}
        self.sender = sender
        self.alerting = alerting
        # Fits share the anomaly models' backend (process pool or Dask); a planner built alone
        # (tests, benchmarks) gets a thread of its own.
        self._own_backend = backend is None
        self.backend = backend or FitBackend(workers=0)
        self.evaluations = 0
        self._eval_pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._own_backend:
            await self.backend.start()
        self._eval_pool = ThreadPoolExecutor(1, thread_name_prefix="capacity")
        # Alerts firing before a restart: re-attached to their series, which resolve them when
        # the forecast no longer says full; those of rules no longer configured end now.
        resolve = []
        for rec in self.sender.firing():
            lab = rec.alert.labels
            if lab.get("alertname") != CAPACITY_ALERT:
                continue
            rs = self.rules.get(lab.get("rule", ""))
            if rs is None:
                resolve.append(rec.key)
                continue
            dev = lab.get(rs.rule.per) if rs.rule.per else None
            st = SeriesState(rs.rule, lab.get("instance", ""), dev, alert_key=rec.key)
            rs.series[st.key] = st
        await self._send([], resolve)
        log.info("capacity planner: %d rules (%s)", len(self.rules), ", ".join(self.rules))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._eval_pool is not None:
            self._eval_pool.shutdown(wait=False, cancel_futures=True)
        if self._own_backend:
            await self.backend.close()

    async def run(self) -> None:
        """Evaluate each rule at every multiple of its step until cancelled."""
        if not self.rules:
            return
        due = dict.fromkeys(self.rules, 0.0)
        while True:
            now = time.time()
            for name, rs in self.rules.items():
                if now >= due[name]:
                    due[name] = (math.floor(now / rs.rule.step) + 1) * rs.rule.step
                    try:
                        await self.evaluate_rule(rs, now)
                    except Exception:  # one failing rule must not stop the others
                        log.exception("capacity rule %s: evaluation failed", name)
            await asyncio.sleep(max(0.05, min(due.values()) - time.time()))

    async def evaluate(self, now: float | None = None) -> None:
        """One evaluation of every rule (the loop's work; tests call it directly)."""
        now = time.time() if now is None else now
        for rs in self.rules.values():
            await self.evaluate_rule(rs, now)

    async def wait_fits(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- evaluating ------------------------------------------------------------------------------
    async def evaluate_rule(self, rs: RuleState, now: float) -> None:
        async with rs.lock:
            fitted = [s for s in rs.series.values() if s.forecaster is not None]
            if fitted:
                ends = [getattr(s.forecaster, "end_", None) or now for s in fitted]
                # A smoothed series needs the window before its first new point too.
                start = max(min(ends) + rs.rule.step - rs.rule.smooth, now - rs.rule.history)
                data = await self._read(rs, start, now) if start <= now else {}
                if data is not None:
                    if set(data) - set(rs.series):
                        rs.next_fit = min(rs.next_fit, now)  # a new series: fit it soon
                    await self._send(*await self._assess(rs, data, now))
        if now >= rs.next_fit and not rs.fitting:
            rs.fitting = True
            task = asyncio.create_task(self._fit(rs, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.evaluations += 1

    async def _assess(
        self, rs: RuleState, data: Mapping[tuple[str, str | None], SeriesData], now: float
    ) -> tuple[list[Alert], list[str]]:
        """New forecasts for the fitted series; returns the alerts to fire and the keys to
        resolve (for :meth:`_send`)."""
        t0 = time.perf_counter()
        states = [s for s in rs.series.values() if s.forecaster is not None]
        items = []
        for st in states:
            d = data.get(st.key)
            if d is not None:
                if d.capacity is not None:
                    st.capacity = d.capacity
                if st.plot is not None:
                    st.plot.add(d.times, d.values)
            assert st.forecaster is not None
            items.append((st.forecaster, d, st.capacity, st.current))
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._eval_pool, assess, rs.rule, items, now)
        stale_before = now - STALE_STEPS * rs.rule.step
        fire: list[Alert] = []
        resolve: list[str] = []
        for st, res in zip(states, results, strict=True):
            st.current, st.exhaustion, st.forecasts = res.current, res.exhaustion, res.forecasts
            st.forecast_plot, st.evaluated_at = res.plot, now
            end = getattr(st.forecaster, "end_", None)
            st.stale = end is not None and end < stale_before
            if st.stale:  # no recent data (node down): claim nothing, resolve its alert
                st.exhaustion, st.forecasts = None, {}
            self._decide(st, fire, resolve)
        rs.eval_duration = time.perf_counter() - t0
        return fire, resolve

    # -- alerting --------------------------------------------------------------------------------
    async def _send(self, fire: list[Alert], resolve: list[str]) -> None:
        """A round's alert changes in one batch (the sender resolves before it fires)."""
        if fire or resolve:
            await self.sender.apply(fire=fire, resolve=resolve)

    def _decide(self, st: SeriesState, fire: list[Alert], resolve: list[str]) -> None:
        """This round's word on the series' alert: (re)asserted into ``fire``, or its key into
        ``resolve`` once cleared long enough."""
        rule = st.rule
        est = st.exhaustion.estimate if st.exhaustion else None
        if est is not None and est <= rule.horizon:
            st.clear_count = 0
            alert = capacity_alert(st, self.alerting)
            if not st.alert_key:
                log.warning("capacity: %s", alert.annotations["summary"])
            st.alert_key = alert.key
            fire.append(alert)
            return
        if not st.alert_key:
            return
        if est is None or est > RESOLVE_FACTOR * rule.horizon:
            st.clear_count += 1
            if st.clear_count >= RESOLVE_AFTER:
                resolve.append(st.alert_key)
                log.info("capacity %s on %s: no longer forecast full", rule.name, st.where)
                st.alert_key, st.clear_count = "", 0
        else:
            st.clear_count = 0  # between 1 and 1.2 horizons: keep the alert as it is

    # -- outputs ---------------------------------------------------------------------------------
    def all_series(self) -> Iterable[SeriesState]:
        for rs in self.rules.values():
            yield from rs.series.values()

    def ranked(self) -> list[SeriesState]:
        """Series with a forecast, soonest full first, then the most used."""

        def order(s: SeriesState) -> tuple[float, float]:
            est = s.exhaustion.estimate if s.exhaustion else None
            return (math.inf if est is None else est, -(s.utilization or 0.0))

        return sorted((s for s in self.all_series() if s.forecast_plot), key=order)
