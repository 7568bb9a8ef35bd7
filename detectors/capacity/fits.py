"""The fitting half of the capacity planner: a rule's forecasters are refitted on its history,
read a batch of nodes at a time, fitted in the fit backend's workers and installed in the rule's
series states (:class:`~dcwatch.detectors.capacity.planner.CapacityPlanner` evaluates them)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping

import numpy as np

from dcwatch.detectors.alerting.alerts import Alert
from dcwatch.detectors.capacity.rules import CapacityRule
from dcwatch.detectors.capacity.series import (
    PlotHistory,
    SeriesData,
    extract_series,
    fit_forecasters,
)
from dcwatch.detectors.capacity.state import RuleState, SeriesState
from dcwatch.detectors.models.fitting import FitBackend
from dcwatch.detectors.models.forecast import Forecaster
from dcwatch.detectors.sources.base import fetch_some

log = logging.getLogger("dcwatch.analyzer.capacity")

FIT_CHUNK = 64  # series per worker call
# Node x grid points one history read of a fit holds at most (x the rule's series per node): the
# fleet is read in batches of nodes (14 days at 5 minutes: 124 nodes a read).
READ_NODE_POINTS = 500_000


def after_failure(rule: CapacityRule, now: float) -> float:
    """When a fit that could not read (or failed) is tried again."""
    return now + min(rule.refit, 300.0)


def look_again(rule: CapacityRule, now: float) -> float:
    """When a series without enough history yet (or one whose fit failed) is tried again."""
    return now + max(rule.step, min(rule.refit, rule.min_history / 4, 600.0))


class RuleFits:
    """Reading and fitting for :class:`~dcwatch.detectors.capacity.planner.CapacityPlanner`,
    which gives the fit backend, the assessment of fitted series and the alert batches."""

    backend: FitBackend

    async def _assess(
        self, rs: RuleState, data: Mapping[tuple[str, str | None], SeriesData], now: float
    ) -> tuple[list[Alert], list[str]]:
        raise NotImplementedError

    async def _send(self, fire: list[Alert], resolve: list[str]) -> None:
        raise NotImplementedError

    async def _read(
        self, rs: RuleState, start: float, end: float, instances: list[str] | None = None
    ) -> dict | None:
        try:
            if instances is None:
                frames = await rs.source.fetch(start, end, rs.rule.step)
            else:
                frames = await fetch_some(rs.source, start, end, rs.rule.step, instances)
        except Exception as e:  # source down: keep the last forecasts, retry next step
            self._source_failed(rs, e)
            return None
        rs.last_error = ""
        return extract_series(rs.rule, frames)

    def _source_failed(self, rs: RuleState, e: Exception) -> None:
        rs.errors += 1
        msg = f"{type(e).__name__}: {e}"
        if msg != rs.last_error:
            log.warning("capacity rule %s: source unavailable (%s)", rs.rule.name, msg)
        rs.last_error = msg

    async def _fit_batches(self, rs: RuleState) -> list[list[str] | None] | None:
        """The instances of each history read of a fit: batches of at most
        ``READ_NODE_POINTS`` node-points (a fleet's 14 days of per-GPU series at once would hold
        gigabytes), or one read of everything for a rule that aggregates nodes, a source that
        cannot list its instances, or a fleet that fits one batch. None if the listing failed."""
        rule, source = rs.rule, rs.source
        per = max(1, int(READ_NODE_POINTS // (rule.history / rule.step + 1)))
        if rule.aggregate or not hasattr(source, "instances"):
            return [None]
        try:
            names = [i for i in await source.instances() if rule.wants(i)]
        except Exception as e:
            self._source_failed(rs, e)
            return None
        if len(names) <= per:
            return [None]
        return [names[i : i + per] for i in range(0, len(names), per)]

    # -- fitting ---------------------------------------------------------------------------------
    async def _fit(self, rs: RuleState, now: float) -> None:
        """Refit the rule's due series, a batch of instances at a time (``_fit_batches``), then
        forget the series gone from the whole history and assess the new fits."""
        rule = rs.rule
        try:
            batches = await self._fit_batches(rs)
            if batches is None:  # the listing failed: nothing is known gone
                rs.next_fit = after_failure(rule, now)
                return
            seen: set[tuple[str, str | None]] = set()
            next_fit, fitted_n, seconds = now + rule.refit, 0, 0.0
            need = rule.min_history / rule.step
            for batch in batches:
                data = await self._read(rs, now - rule.history, now, batch)
                if data is None:
                    break
                seen.update(data)
                due = {
                    k: d
                    for k, d in data.items()
                    if k not in rs.series
                    or rs.series[k].forecaster is None
                    or now - rs.series[k].fitted_at >= rule.refit
                }
                ready = {k: d for k, d in due.items() if np.isfinite(d.values).sum() >= need}
                t0 = time.perf_counter()
                fitted = await self._fit_all(rule, ready)
                seconds += time.perf_counter() - t0
                async with rs.lock:
                    next_fit = min(next_fit, self._install(rs, data, due, fitted, now))
                fitted_n += sum(not isinstance(f, str) for f in fitted.values())
                del data, due, ready, fitted
            else:  # every batch read: what the history no longer has is gone
                rs.fit_duration = seconds
                await self._finish_fit(rs, seen, next_fit, fitted_n, now)
                return
            rs.next_fit = after_failure(rule, now)  # a read failed: the rest later
        except asyncio.CancelledError:
            raise
        except Exception as e:
            rs.errors += 1
            rs.next_fit = after_failure(rule, now)
            log.exception("capacity rule %s: fit failed (%s); retry later", rule.name, e)
        finally:
            rs.fitting = False

    async def _finish_fit(
        self,
        rs: RuleState,
        seen: set[tuple[str, str | None]],
        next_fit: float,
        fitted: int,
        now: float,
    ) -> None:
        rule = rs.rule
        if fitted:
            log.info(
                "capacity rule %s: fitted %d series in %.2fs", rule.name, fitted, rs.fit_duration
            )
        async with rs.lock:
            gone = []
            for key in [k for k in rs.series if k not in seen]:  # gone from the whole history
                st = rs.series.pop(key)
                if st.alert_key:
                    gone.append(st.alert_key)
                    log.info("capacity %s on %s: series gone, alert resolved", rule.name, st.where)
            # Nothing to read yet (a fresh Prometheus, no such hardware): look again in a while.
            rs.next_fit = next_fit if seen else look_again(rule, now)
            try:
                fire, resolve = await self._assess(rs, {}, now) if fitted else ([], [])
            except Exception:
                await self._send([], gone)  # their series are forgotten: end them anyway
                raise
            await self._send(fire, gone + resolve)

    async def _fit_all(
        self, rule: CapacityRule, ready: Mapping[tuple[str, str | None], SeriesData]
    ) -> dict[tuple[str, str | None], Forecaster | str]:
        keys = list(ready)
        chunks = [keys[i : i + FIT_CHUNK] for i in range(0, len(keys), FIT_CHUNK)]
        parts = await asyncio.gather(
            *(
                self.backend.run(
                    fit_forecasters,
                    rule,
                    [(ready[k].times, ready[k].values) for k in chunk],
                )
                for chunk in chunks
            )
        )
        return {
            k: f
            for chunk, out in zip(chunks, parts, strict=True)
            for k, f in zip(chunk, out, strict=True)
        }

    def _install(
        self,
        rs: RuleState,
        data: Mapping[tuple[str, str | None], SeriesData],
        due: Mapping[tuple[str, str | None], SeriesData],
        fitted: Mapping[tuple[str, str | None], Forecaster | str],
        now: float,
    ) -> float:
        """Install a batch's fits; returns when its series want the next fit."""
        rule = rs.rule
        retry = look_again(rule, now)
        next_fit = now + rule.refit
        for key, d in data.items():
            st = rs.series.get(key) or SeriesState(rule, key[0], key[1])
            rs.series[key] = st
            if d.capacity is not None:
                st.capacity = d.capacity
            st.current = d.last if d.last is not None else st.current
            if key not in due:
                next_fit = min(next_fit, st.fitted_at + rule.refit)
                continue
            f = fitted.get(key)
            if f is None:  # too short: try again when enough history can be there
                n, need = int(np.isfinite(d.values).sum()), math.ceil(rule.min_history / rule.step)
                st.fit_error = f"collecting history ({n} of {need} points)"
                next_fit = min(next_fit, now + max(1, need - n) * rule.step)
            elif isinstance(f, str):
                st.fit_error = f
                next_fit = min(next_fit, retry)
                log.warning("capacity %s on %s: fit failed: %s", rule.name, st.where, f)
            else:
                st.forecaster, st.fitted_at, st.fit_error = f, now, ""
                st.plot = PlotHistory.for_rule(rule)
                st.plot.add(d.times, d.values)
        return next_fit
