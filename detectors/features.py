"""Feature building: a regular-grid frame of named series -> residual z-scores per series.

Input is one node's frame: index = unix seconds (or a DatetimeIndex) on a regular grid, one column
per named series, counters already converted to rates by the caller, NaN for missing points.

For each series two residuals of a cheap forecast are built (the backtests chose these over raw
levels, which turn every lasting level shift into hours of alerts):

- ``short``: value minus the median of the previous ``short_window`` points (sudden changes);
- ``season``: value minus its time-of-day profile (median per bin over the training days), minus
  the median of that difference over the previous ``long_window`` points (deviations from the usual
  daily shape that last longer than the short window). Without two full cycles of training data the
  profile is zero and this is a plain long-window residual.

Each residual is centred and scaled with its training median and a robust scale, so the output is a
matrix of robust z-scores; first it is shrunk towards its centre by a deadband, a share
(``min_relative_deviation``) of the series' typical level, so that a deviation too small to act
on is no evidence however smooth the series was in training. Series that are constant (or empty)
in training are dropped, gaps are forward-filled from the last seen value (training median before
any), so NaN never reaches a model.

Everything is causal and works on a history buffer plus new rows, so a backtest over a month and a
live call with one new row run the same code (``FeatureBuilder.transform``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import numpy as np
import pandas as pd

KINDS = ("short", "season")
_MAD_TO_SIGMA = 1.4826
_CHUNK = 4096
# A chunk's sliding windows are copied by ``np.median``: rows x series x window floats. Bounded in
# bytes, so many series mean fewer rows per chunk (results are the same whatever the chunk).
_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class FeatureConfig:
    """Windows are in points of the frame's grid."""

    short_window: int = 10
    long_window: int = 60
    season_seconds: int = 86400
    season_bin_seconds: int = 300
    min_season_cycles: float = 2.0
    # The deadband: deviations smaller than this share of a series' typical level (its training
    # median, in absolute value; none for a series at zero, such as an error rate) are not
    # evidence, and larger ones count by how far they pass it. A series that is very smooth in
    # training (a counter's rate over 2 minutes, a steady power draw) otherwise turns a 0.3 %
    # wobble into a rare event: the demo's healthy nodes alerted on such wobbles of their network
    # and energy rates. 5 %: the accuracy NVML documents for its power readings (on older GPUs)
    # and the tolerance of supply rails. On the dev families it cut false alerts on the
    # multi-metric ones (0.33 -> 0.20 and 0.63 -> 0.48 per entity-day) and caught as many events
    # or more on each (``bench/detect_quality.py``).
    min_relative_deviation: float = 0.05


@dataclass
class History:
    """The last raw (gap-filled) rows a node has seen: the context the next rows need."""

    ts: np.ndarray  # (h,) float seconds
    values: np.ndarray  # (h, n_series)


@dataclass
class FeatureBlock:
    """Features for a block of rows: z-scores plus what each feature observed and expected."""

    ts: np.ndarray  # (n,)
    z: np.ndarray  # (n, n_features)
    observed: np.ndarray  # (n, n_features) raw value of the feature's series
    expected: np.ndarray  # (n, n_features) forecast of that value
    history: History = field(repr=False)  # context to pass to the next call


class FrameLike(Protocol):
    """``dcwatch.detectors.frame.Frame``: ``times`` (epoch seconds), ``columns``, ``values``
    (2-D)."""

    times: np.ndarray
    columns: tuple[str, ...]
    values: np.ndarray

    def __len__(self) -> int: ...


AnyFrame: TypeAlias = "pd.DataFrame | FrameLike"


def frame_timestamps(frame: pd.DataFrame) -> np.ndarray:
    """Unix seconds (float) of a DataFrame's index (numbers or a DatetimeIndex)."""
    idx = frame.index
    if isinstance(idx, pd.DatetimeIndex):
        if idx.tz is not None:
            idx = idx.tz_convert("UTC").tz_localize(None)
        return idx.as_unit("ns").asi8.astype(float) / 1e9
    return np.asarray(idx, dtype=float)


def frame_arrays(frame: AnyFrame) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(timestamps, column names, float values with NaN for missing) of either kind of frame."""
    if isinstance(frame, pd.DataFrame):
        ts = frame_timestamps(frame)
        cols = [str(c) for c in frame.columns]
        try:
            vals = frame.to_numpy(dtype=float, na_value=np.nan)
        except (TypeError, ValueError):
            num = frame.apply(pd.to_numeric, errors="coerce")
            vals = num.to_numpy(dtype=float, na_value=np.nan)
    else:
        ts = np.asarray(frame.times, dtype=float)
        cols = [str(c) for c in frame.columns]
        vals = np.asarray(frame.values, dtype=float)
    vals = np.array(vals, dtype=float, copy=True).reshape(len(ts), len(cols))
    vals[~np.isfinite(vals)] = np.nan
    return ts, cols, vals


def varying_columns(names: Sequence[str], raw: np.ndarray) -> list[str]:
    """The series with at least two distinct finite values (constant or empty ones carry no
    signal and are dropped)."""
    with np.errstate(all="ignore"):
        finite = np.isfinite(raw)
        lo = np.min(np.where(finite, raw, np.inf), axis=0) if raw.size else np.zeros(len(names))
        hi = np.max(np.where(finite, raw, -np.inf), axis=0) if raw.size else np.zeros(len(names))
    keep = finite.any(axis=0) & (hi > lo)
    return [str(c) for c, k in zip(names, keep, strict=True) if k]


def robust_center_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and a robust scale with fallbacks (MAD, IQR, std, 1) that is never 0."""
    x = np.asarray(x, dtype=float)
    if x.shape[0] == 0 or x.shape[1] == 0:
        ones = np.ones(x.shape[1])
        return np.zeros(x.shape[1]), ones
    med = np.nanmedian(x, axis=0)
    mad = _MAD_TO_SIGMA * np.nanmedian(np.abs(x - med), axis=0)
    q1, q3 = np.nanpercentile(x, [25, 75], axis=0)
    scale = np.maximum(mad, (q3 - q1) / 1.349)
    std = np.nanstd(x, axis=0)
    scale = np.where(scale > 0, scale, std)
    tiny = 1e-9 * np.maximum(np.abs(med), 1.0)
    scale = np.where(np.isfinite(scale) & (scale > tiny), scale, np.maximum(std, tiny))
    scale = np.where(scale > 0, scale, 1.0)
    return np.nan_to_num(med), scale


def ffill(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Forward-fill NaN down the rows; leading NaN take ``fill`` (per column)."""
    v = np.array(values, dtype=float, copy=True)
    mask = np.isnan(v)
    if not mask.any():
        return v
    n = v.shape[0]
    idx = np.where(~mask, np.arange(n)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    cols = np.broadcast_to(np.arange(v.shape[1]), v.shape)
    out = np.where(idx >= 0, v[np.maximum(idx, 0), cols], fill[None, :])
    return out


def _column_median(block: np.ndarray) -> np.ndarray:
    """``np.median(block, axis=0)`` for the live scoring path: one partition, without the
    generic reduction's per-call overhead (NaN, which that path never has, still propagate)."""
    n = block.shape[0]
    if not n or np.isnan(block).any():
        return np.median(block, axis=0)
    k = n // 2
    if n % 2:
        return np.partition(block, k, axis=0)[k]
    part = np.partition(block, (k - 1, k), axis=0)
    return (part[k - 1] + part[k]) / 2.0


def trailing_median(x: np.ndarray, window: int, start: int) -> np.ndarray:
    """Median of the ``window`` rows before each row ``i >= start`` of ``x`` (fewer at the top).

    Returns an array of shape ``(len(x) - start, n_cols)``.
    """
    n, d = x.shape
    if n - start == 1 and start >= window:  # the live case: one new row after a full history
        return _column_median(x[start - window : start])[None, :]
    out = np.empty((n - start, d))
    # Rows with fewer than ``window`` rows before them (only without history): one by one.
    head = min(n, max(start, window))
    for i in range(start, head):
        out[i - start] = np.median(x[max(0, i - window) : i], axis=0) if i > 0 else x[0]
    chunk = max(1, min(_CHUNK, _CHUNK_BYTES // max(1, d * window * 8)))
    for lo in range(head, n, chunk):
        hi = min(n, lo + chunk)
        win = np.lib.stride_tricks.sliding_window_view(x[lo - window : hi - 1], window, axis=0)
        out[lo - start : hi - start] = np.median(win, axis=-1)
    return out


class FeatureBuilder:
    """Fit on a training frame; ``transform`` new rows with the history carried between calls."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, frame: AnyFrame, exclude: np.ndarray | None = None) -> FeatureBuilder:
        """Learn kept columns, fill values, seasonal profile and feature scaling from training.

        ``exclude`` (one bool per row) marks rows not to learn from, e.g. periods that alerted.
        """
        self.fit_transform(frame, exclude)
        return self

    def fit_transform(
        self,
        frame: AnyFrame,
        exclude: np.ndarray | None = None,
        columns: Sequence[str] | None = None,
    ) -> FeatureBlock:
        """``fit``, then the features of the training rows (as ``transform(frame, None)``).

        ``columns`` fixes the series used and their order (a group of nodes shares one
        detector, so every member needs the same features); by default, the varying ones.
        """
        cfg = self.config
        ts, names, raw = frame_arrays(frame)
        if columns is None:
            columns = varying_columns(names, raw)
        index = {n: i for i, n in enumerate(names)}
        take = [index[c] for c in columns]
        self.columns_ = [str(c) for c in columns]
        kept = set(self.columns_)
        self.dropped_ = [str(n) for n in names if n not in kept]
        raw = raw[:, take]
        self.fill_ = np.nan_to_num(np.nanmedian(raw, axis=0)) if raw.shape[0] else np.zeros(0)
        self.step_ = float(np.median(np.diff(ts))) if ts.size > 1 else 60.0
        values = ffill(raw, self.fill_)

        self.bin_seconds_ = max(float(cfg.season_bin_seconds), self.step_)
        self.n_bins_ = max(1, round(cfg.season_seconds / self.bin_seconds_))
        span = (ts[-1] - ts[0] + self.step_) if ts.size else 0.0
        self.profile_ = np.zeros((self.n_bins_, values.shape[1]))
        if values.shape[1] and span >= cfg.min_season_cycles * cfg.season_seconds:
            ph = self._phase(ts)
            keep_rows = slice(None) if exclude is None else ~np.asarray(exclude, dtype=bool)
            prof = pd.DataFrame(values[keep_rows]).groupby(ph[keep_rows]).median()
            self.profile_[:] = np.median(values, axis=0)
            self.profile_[prof.index.to_numpy()] = prof.to_numpy()
        self.history_len_ = max(cfg.short_window, cfg.long_window)

        # Feature scaling from the training residuals themselves (same code as transform).
        r, obs, exp = self._residuals(0, ts, values)
        use = np.ones(len(r), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
        use[: self.warmup_rows(len(r))] = False
        self.center_, self.scale_ = robust_center_scale(r[use] if use.any() else r)
        self.deadband_ = self.level_deadband()
        self.feature_names_ = [f"{c}:{k}" for k in KINDS for c in self.columns_]
        self.series_index_ = np.tile(np.arange(len(self.columns_)), len(KINDS))
        h = self.history_len_
        return FeatureBlock(
            ts=ts,
            z=self._z(r),
            observed=obs,
            expected=exp,
            history=History(ts=ts[-h:].copy(), values=values[-h:].copy()),
        )

    def level_deadband(self) -> np.ndarray:
        """Per feature, the deviation that is no evidence: ``min_relative_deviation`` of its
        series' training level (the fill value), the same for each kind of residual."""
        return np.tile(self.config.min_relative_deviation * np.abs(self.fill_), len(KINDS))

    def warmup_rows(self, n: int) -> int:
        """Leading rows of an ``n``-row training frame whose windows are not yet full: not learnt
        from. At most half the rows, so a short training frame (a minute at 1 s against a
        60-point window) still scales each feature on many rows, not on the last one alone."""
        return min(self.history_len_, n // 2)

    @property
    def n_features(self) -> int:
        return len(self.feature_names_)

    def empty_history(self) -> History:
        return History(ts=np.zeros(0), values=np.zeros((0, len(self.columns_))))

    def history_from(self, frame: AnyFrame) -> History:
        """The context after ``frame``: what the features of the rows that follow it need."""
        return self.transform(frame, None).history

    def select(self, frame: AnyFrame) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps and the model's columns of ``frame`` (absent columns are all NaN)."""
        ts, names, vals = frame_arrays(frame)
        if names == self.columns_:
            return ts, vals
        out = np.full((len(ts), len(self.columns_)), np.nan)
        pos = {n: i for i, n in enumerate(names)}
        for j, c in enumerate(self.columns_):
            i = pos.get(c)
            if i is not None:
                out[:, j] = vals[:, i]
        return ts, out

    def transform(self, frame: AnyFrame, history: History | None) -> FeatureBlock:
        """Features of the rows of ``frame`` given the history before them (None = none)."""
        ts, raw = self.select(frame)
        return self.transform_values(ts, raw, history)

    def transform_values(
        self, ts: np.ndarray, raw: np.ndarray, history: History | None
    ) -> FeatureBlock:
        """Like ``transform`` on arrays: ``raw`` is (n, n_kept_columns) with NaN for gaps."""
        hist = history if history is not None else self.empty_history()
        start_fill = hist.values[-1] if len(hist.values) else self.fill_
        values = ffill(np.concatenate([start_fill[None, :], raw]), self.fill_)[1:]
        all_ts = np.concatenate([hist.ts, ts])
        x = np.concatenate([hist.values, values])
        r, obs, exp = self._residuals(len(hist.values), all_ts, x)
        z = self._z(r)
        h = self.history_len_
        all_ts, all_vals = all_ts[-h:], x[-h:]
        return FeatureBlock(
            ts=ts,
            z=z,
            observed=obs,
            expected=exp,
            history=History(ts=all_ts, values=all_vals),
        )

    def _z(self, r: np.ndarray) -> np.ndarray:
        """Robust z-scores of residuals, each shrunk towards its centre by the deadband."""
        d = r - self.center_
        return np.sign(d) * np.maximum(np.abs(d) - self.deadband_, 0.0) / self.scale_

    def _phase(self, ts: np.ndarray) -> np.ndarray:
        season = float(self.config.season_seconds)
        return ((np.mod(ts, season) // self.bin_seconds_).astype(np.int64)) % self.n_bins_

    def _residuals(
        self, k: int, all_ts: np.ndarray, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Residuals, observed and expected values of the rows ``x[k:]`` (``x[:k]`` is history)."""
        cfg = self.config
        ts, values = all_ts[k:], x[k:]
        n = len(values)
        if n == 0:
            e = np.zeros((0, 2 * x.shape[1]))
            return e, e, e
        short_base = trailing_median(x, cfg.short_window, k)
        d = x - self.profile_[self._phase(all_ts)]
        level = trailing_median(d, cfg.long_window, k)
        season_base = self.profile_[self._phase(ts)] + level
        expected = np.concatenate([short_base, season_base], axis=1)
        observed = np.concatenate([values, values], axis=1)
        return observed - expected, observed, expected
