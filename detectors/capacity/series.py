"""The capacity planner's numeric work: series out of frames, fits, forecasts, time to full.

Everything here is plain functions of arrays so the planner can run them in workers (fits in a
process pool, assessments in a thread) and tests can check the maths exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcwatch.detectors.capacity.rules import CAPACITY_QUERY, SERIES_QUERY, CapacityRule
from dcwatch.detectors.frame import Frame, combine, split_column
from dcwatch.detectors.models.forecast import Forecaster

PLOT_POINTS = 300  # history buckets kept per series for the page
FORECAST_POINTS = 200  # forecast points kept per series for the page
Key = tuple[str, str | None]  # (instance, per-label value)


@dataclass(frozen=True)
class Exhaustion:
    """Seconds from now until the threshold is reached: by the forecast mean (``estimate``), by
    its upper 95 % band (``earliest``) and its lower band (``latest``); None = not within the
    forecast."""

    estimate: float | None
    earliest: float | None
    latest: float | None


def time_to_exhaustion(
    times: np.ndarray,
    bands: Mapping[str, np.ndarray],
    threshold: float,
    now: float,
    current: float | None = None,
) -> Exhaustion:
    """First forecast step at which each of mean / hi-95 / lo-95 is at or above ``threshold``.

    ``times`` are the forecast's timestamps; a ``current`` value already at the threshold means
    full now (0 for all three).
    """
    if current is not None and current >= threshold:
        return Exhaustion(0.0, 0.0, 0.0)

    def first(values: np.ndarray) -> float | None:
        hit = np.flatnonzero(values >= threshold)
        return None if not hit.size else max(0.0, float(times[hit[0]] - now))

    est, early, late = first(bands["mean"]), first(bands["hi-95"]), first(bands["lo-95"])
    # The bands bracket the mean; keep the interval ordered even where rounding says otherwise.
    if est is not None:
        early = est if early is None else min(early, est)
        late = None if late is None else max(late, est)
    return Exhaustion(est, early, late)


@dataclass(frozen=True, eq=False)
class SeriesData:
    """One series read for a rule: its grid times and values, and its capacity (latest known)."""

    times: np.ndarray
    values: np.ndarray
    capacity: float | None

    @property
    def last(self) -> float | None:
        ok = np.flatnonzero(np.isfinite(self.values))
        return float(self.values[ok[-1]]) if ok.size else None


def _latest(values: np.ndarray | None) -> float | None:
    if values is None:
        return None
    ok = np.flatnonzero(np.isfinite(values) & (values > 0))
    return float(values[ok[-1]]) if ok.size else None


def extract_series(rule: CapacityRule, frames: Mapping[str, Frame]) -> dict[Key, SeriesData]:
    """The rule's series per (instance, device) from its source's frames; one series for an
    ``aggregate`` rule. Series without a known capacity are left out."""
    found: dict[Key, tuple[np.ndarray, np.ndarray, float | None]] = {}
    for instance, frame in frames.items():
        if not rule.wants(instance):
            continue
        caps: dict[str | None, np.ndarray] = {}
        cols: dict[str | None, np.ndarray] = {}
        # Copies: a frame's values may be a view of its whole read (``GridColumns``), which a
        # kept column would otherwise hold in memory.
        for j, col in enumerate(frame.columns):
            name, _, value = split_column(col)
            if name == CAPACITY_QUERY:
                caps[value] = frame.values[:, j].copy()
            elif name == SERIES_QUERY:
                cols[value] = frame.values[:, j].copy()
        for value, v in cols.items():
            if isinstance(rule.capacity, float):
                cap: float | None = rule.capacity
            else:  # the device's own capacity, else one for the whole node
                cap = _latest(caps.get(value, caps.get(None)))
            found[(instance, value)] = (frame.times, v, cap)
    out: dict[Key, SeriesData]
    if rule.aggregate and found:
        out = {(rule.group or rule.name, None): _aggregate(rule, list(found.values()))}
    else:
        out = {k: SeriesData(t, v, c) for k, (t, v, c) in found.items() if c is not None}
    w = round(rule.smooth / rule.step)
    if w > 1:
        out = {
            k: SeriesData(d.times, trailing_mean(d.values, w), d.capacity) for k, d in out.items()
        }
    return out


def trailing_mean(values: np.ndarray, w: int) -> np.ndarray:
    """Mean of the last ``w`` points at each point, over the values present; NaN stays NaN.

    The first ``w - 1`` points average what there is: callers read ``w`` points more than they
    use where it matters (the planner's updates)."""
    ok = np.isfinite(values)
    c = np.concatenate(([0.0], np.cumsum(np.where(ok, values, 0.0))))
    n = np.concatenate(([0], np.cumsum(ok)))
    i = np.arange(1, values.size + 1)
    lo = np.maximum(i - w, 0)
    count = n[i] - n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok & (count > 0), (c[i] - c[lo]) / count, np.nan)


def _aggregate(
    rule: CapacityRule, members: Sequence[tuple[np.ndarray, np.ndarray, float | None]]
) -> SeriesData:
    grid = members[0][0]
    for t, _, _ in members[1:]:
        if t.shape != grid.shape or not np.array_equal(t, grid):
            grid = np.union1d(grid, t)
    cols = []
    for t, v, _ in members:
        col = np.full(grid.size, np.nan)
        col[np.searchsorted(grid, t)] = v
        cols.append(col)
    how = rule.aggregate or "sum"
    values = combine(cols, how)
    if isinstance(rule.capacity, float):
        return SeriesData(grid, values, rule.capacity)
    caps = [np.array([c]) for _, _, c in members if c is not None]
    cap = float(combine(caps, how)[0]) if caps else None
    return SeriesData(grid, values, cap)


def _as_series(times: np.ndarray, values: np.ndarray) -> Any:
    import pandas as pd

    ok = np.isfinite(values)
    return pd.Series(values[ok], index=times[ok])


def fit_forecasters(
    rule: CapacityRule, series: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[Forecaster | str]:
    """Fit one forecaster per ``(times, values)``; runs in a worker. A failure is its message."""
    from threadpoolctl import threadpool_limits

    out: list[Forecaster | str] = []
    with threadpool_limits(1):  # one series per core: BLAS threads would only contend
        for times, values in series:
            try:
                out.append(rule.make_forecaster().fit(_as_series(times, values)))
            except Exception as e:  # one bad series must not sink the batch
                out.append(f"{type(e).__name__}: {e}")
    return out


@dataclass(frozen=True, eq=False)
class Assessment:
    current: float | None
    exhaustion: Exhaustion | None
    forecasts: dict[float, tuple[float, float, float]]  # horizon -> (mean, lo-95, hi-95)
    plot: tuple[np.ndarray, ...]  # (times, mean, lo-95, hi-95), thinned


def assess(
    rule: CapacityRule,
    items: Sequence[tuple[Forecaster, SeriesData | None, float | None, float | None]],
    now: float,
) -> list[Assessment]:
    """Update each forecaster with its new points, forecast, and find the time to full.

    ``items``: (fitted forecaster, new data or None, capacity, last known value).
    """
    out = []
    steps = rule.steps
    for f, data, capacity, current in items:
        if data is not None:
            if data.times.size:
                f.update(_as_series(data.times, data.values))
            current = data.last if data.last is not None else current
        bands = f.predict(steps, (95,))
        times = f.forecast_times(steps)
        ex = None
        if capacity is not None:
            ex = time_to_exhaustion(times, bands, rule.threshold * capacity, now, current)
        forecasts = {}
        # The exported horizons and the rule's own (what "units needed" is judged at).
        for h in dict.fromkeys((*rule.forecast_horizons, rule.horizon)):
            i = int(np.clip(round((now + h - times[0]) / rule.step), 0, steps - 1))
            mean, lo, hi = (float(bands[k][i]) for k in ("mean", "lo-95", "hi-95"))
            forecasts[h] = (mean, lo, hi)
        idx = np.unique(np.linspace(0, steps - 1, min(steps, FORECAST_POINTS)).round().astype(int))
        plot = (times[idx], bands["mean"][idx], bands["lo-95"][idx], bands["hi-95"][idx])
        out.append(Assessment(current, ex, forecasts, plot))
    return out


class PlotHistory:
    """A series' recent history in at most ~``PLOT_POINTS`` buckets (mean time and value)."""

    def __init__(self, bucket: float, span: float) -> None:
        self.bucket, self.span = bucket, span
        self.tsum = self.vsum = self.n = np.zeros(0)
        self.last = -math.inf

    @classmethod
    def for_rule(cls, rule: CapacityRule) -> PlotHistory:
        span = min(rule.history, max(2 * rule.horizon, 60 * rule.step))
        return cls(rule.step * max(1, math.ceil(span / rule.step / PLOT_POINTS)), span)

    def add(self, times: np.ndarray, values: np.ndarray) -> None:
        ok = np.isfinite(values) & (times > self.last)
        if not ok.any():
            return
        t, v = times[ok], values[ok]
        self.last = float(t[-1])
        buckets, inv = np.unique(np.floor(t / self.bucket), return_inverse=True)
        tsum, vsum, n = np.bincount(inv, t), np.bincount(inv, v), np.bincount(inv).astype(float)
        if self.n.size and self.tsum[-1] / self.n[-1] // self.bucket == buckets[0]:
            self.tsum[-1] += tsum[0]
            self.vsum[-1] += vsum[0]
            self.n[-1] += n[0]
            tsum, vsum, n = tsum[1:], vsum[1:], n[1:]
        self.tsum = np.concatenate((self.tsum, tsum))
        self.vsum = np.concatenate((self.vsum, vsum))
        self.n = np.concatenate((self.n, n))
        keep = self.tsum / self.n > self.last - self.span
        self.tsum, self.vsum, self.n = self.tsum[keep], self.vsum[keep], self.n[keep]

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tsum / self.n, self.vsum / self.n


def human_duration(seconds: float) -> str:
    """``3 days``, ``5 hours``, ``40 minutes``, ``20 seconds`` (rounded; for summaries)."""
    for unit, size, upto in (
        ("second", 1, 90),
        ("minute", 60, 90 * 60),
        ("hour", 3600, 36 * 3600),
        ("day", 86400, math.inf),
    ):
        if seconds < upto:
            n = max(1, round(seconds / size))
            return f"{n} {unit}{'s' if n != 1 else ''}"
    raise AssertionError("unreachable")


def horizon_label(seconds: float) -> str:
    """``1h``, ``6h``, ``1d``, ``7d``, ``90s``: the ``horizon`` label of forecast metrics."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and (unit != "w" or seconds > 7 * 86400):
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
