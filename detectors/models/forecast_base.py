"""What every forecaster shares: the statsforecast contract, the regular grid, empirical bands.

A forecaster stores its keyword hyper-parameters verbatim in ``__init__``; ``fit(y)`` puts ``y`` on
its regular grid (see :func:`regularize`) and returns ``self``; ``predict(h, level)`` returns
``{"mean", "lo-80", "hi-80", "lo-95", "hi-95"}`` as numpy arrays of length ``h``;
``forecast(y, h, level)`` does both on a fresh copy and leaves the instance untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from scipy.stats import norm

SECONDS_PER_DAY = 86400.0
DEFAULT_STEP = 300.0  # the analyzer's grid; assumed for plain arrays when no step is given
DEFAULT_LEVEL: tuple[float, ...] = (80, 95)

F = TypeVar("F", bound="Forecaster")


@dataclass(frozen=True)
class Grid:
    """A series on a regular grid with its gaps filled: what models are fitted on."""

    values: np.ndarray  # float64, no NaN
    step: float | None  # seconds between points; None when y had no timestamps and no step was set
    end: float | None  # unix seconds of the last point; None without timestamps
    filled: int  # points that were missing and were filled


def _timestamps(y: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """Split ``y`` into (unix seconds or None, float values)."""
    import pandas as pd

    if isinstance(y, pd.Series):
        index = y.index
        values = y.to_numpy(dtype=float)
        if isinstance(index, pd.DatetimeIndex):
            naive = index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index
            return naive.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9, values
        if isinstance(index, pd.RangeIndex) or not pd.api.types.is_numeric_dtype(index):
            return None, values
        return index.to_numpy(dtype=float), values
    values = np.asarray(y, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D series, got shape {values.shape}")
    return None, values


def fill_gaps(values: np.ndarray, season: int | None = None, long_gap: int = 12) -> np.ndarray:
    """Interpolate NaN gaps linearly; long gaps also copy the previous season's shape."""
    v = np.array(values, dtype=float)
    missing = np.isnan(v)
    if not missing.any():
        return v
    ok = np.flatnonzero(~missing)
    if ok.size == 0:
        raise ValueError("series has no finite values")
    idx = np.arange(v.size)
    v[missing] = np.interp(idx[missing], ok, v[ok])  # edges take the nearest value
    if not season or season < 2:
        return v
    edges = np.diff(np.concatenate(([0], missing.view(np.int8), [0])))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        # A straight line over most of a day would teach the model that nights look like days.
        if b - a < long_gap or a - 1 - season < 0 or b >= v.size:
            continue
        prev = v[a - 1 - season : b - season + 1]
        shape = prev - np.linspace(prev[0], prev[-1], prev.size)
        v[a:b] += shape[1:-1]
    return v


def regularize(y: Any, step: float | None = None, season: int | None = None) -> Grid:
    """Put ``y`` (array, or Series indexed by datetimes or unix seconds) on a regular grid."""
    times, values = _timestamps(y)
    if values.size == 0:
        raise ValueError("empty series")
    if times is None:
        filled = int(np.isnan(values).sum())
        return Grid(fill_gaps(values, season), step, None, filled)
    keep = np.isfinite(times)
    times, values = times[keep], values[keep]
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    if step is None:
        diffs = np.diff(times)
        diffs = diffs[diffs > 0]
        step = float(np.median(diffs)) if diffs.size else DEFAULT_STEP
    pos = np.rint((times - times[0]) / step).astype(np.int64)
    grid = np.full(int(pos[-1]) + 1, np.nan)
    sums = np.bincount(pos, weights=np.nan_to_num(values), minlength=grid.size)
    counts = np.bincount(pos, weights=np.isfinite(values), minlength=grid.size)
    has = counts > 0
    grid[has] = sums[has] / counts[has]  # duplicates on one grid point are averaged
    if season is None:
        season = season_from_step(step)
    filled = int((~has).sum())
    return Grid(fill_gaps(grid, season), float(step), float(times[0] + pos[-1] * step), filled)


def season_from_step(step: float | None) -> int:
    """Points per day at ``step`` seconds (the analyzer's 5-minute step when unknown)."""
    return max(1, round(SECONDS_PER_DAY / (step or DEFAULT_STEP)))


def level_key(side: str, level: float) -> str:
    """``lo-95`` / ``hi-80``; non-integer levels keep their decimals (``lo-97.5``)."""
    return f"{side}-{int(level) if float(level).is_integer() else level}"


def check_levels(level: Sequence[float] | None) -> tuple[float, ...]:
    levels = tuple(level or ())
    for lv in levels:
        if not 0 < lv < 100:
            raise ValueError(f"level must be in (0, 100), got {lv}")
    return levels


def gaussian_bands(
    mean: np.ndarray, std: np.ndarray, level: Sequence[float]
) -> dict[str, np.ndarray]:
    """Symmetric normal bands around ``mean`` with per-step standard deviation ``std``."""
    out = {"mean": mean}
    for lv in check_levels(level):
        z = float(norm.ppf(0.5 + lv / 200.0))
        out[level_key("lo", lv)] = mean - z * std
        out[level_key("hi", lv)] = mean + z * std
    return out


def horizon_grid(h: int, points: int = 24) -> np.ndarray:
    """Log-spaced horizons 1..h at which empirical error quantiles are measured."""
    return np.unique(np.rint(np.geomspace(1, max(h, 1), points)).astype(np.int64))


def empirical_bands(
    mean: np.ndarray,
    errors_at: Callable[[int], np.ndarray],
    max_k: int,
    level: Sequence[float],
    min_samples: int = 20,
) -> dict[str, np.ndarray]:
    """Bands from quantiles of past ``k``-step errors (``errors_at(k)``: actual - forecast).

    Quantiles are measured at log-spaced horizons up to ``max_k`` (the longest horizon with at least
    ``min_samples`` past errors), interpolated in between and widened as ``sqrt(k)`` beyond it.
    Half-widths never shrink with the horizon, and the mean always lies inside every band.
    """
    h = mean.size
    levels = check_levels(level)
    out = {"mean": mean}
    if not levels:
        return out
    probs = sorted({p for lv in levels for p in (0.5 - lv / 200.0, 0.5 + lv / 200.0)})
    ks = horizon_grid(min(h, max(max_k, 1)))
    table = np.zeros((ks.size, len(probs)))
    for i, k in enumerate(ks):
        e = errors_at(int(k))
        e = e[np.isfinite(e)]
        if e.size >= min_samples:
            table[i] = np.quantile(e, probs)
        elif i:
            table[i] = table[i - 1]
    steps = np.arange(1, h + 1)
    scale = np.sqrt(np.maximum(steps / float(ks[-1]), 1.0))
    quantiles = {}
    for j, p in enumerate(probs):
        q = np.interp(steps, ks, table[:, j]) * scale
        quantiles[p] = np.maximum.accumulate(q) if p > 0.5 else np.minimum.accumulate(q)
    for lv in levels:
        out[level_key("lo", lv)] = mean + np.minimum(quantiles[0.5 - lv / 200.0], 0.0)
        out[level_key("hi", lv)] = mean + np.maximum(quantiles[0.5 + lv / 200.0], 0.0)
    return out


class Forecaster:
    """Base class: statsforecast's ``fit`` / ``predict`` / ``forecast`` and scikit-learn params."""

    step: float | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = [
            p.name
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self" and p.kind is not p.VAR_KEYWORD
        ]
        return {name: getattr(self, name) for name in names}

    def set_params(self: F, **params: Any) -> F:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _season(self, grid_step: float | None) -> int:
        season = getattr(self, "season_length", None)
        return int(season) if season else season_from_step(grid_step)

    def _grid(self, y: Any) -> Grid:
        step = self.step
        season = getattr(self, "season_length", None)
        return regularize(y, step, season)

    def _set_grid(self, grid: Grid) -> None:
        self.step_ = grid.step if grid.step is not None else (self.step or DEFAULT_STEP)
        self.end_ = grid.end
        self.n_filled_ = grid.filled

    def _continue_grid(self, y_new: Any) -> np.ndarray:
        """New observations as values continuing the fitted grid (gaps filled, overlap dropped)."""
        times, values = _timestamps(y_new)
        last = self._last_value()
        if times is None or self.end_ is None:
            return fill_gaps(np.concatenate(([last], values)))[1:]
        pos = np.rint((times - self.end_) / self.step_).astype(np.int64)
        keep = (pos > 0) & np.isfinite(values)
        if not keep.any():
            return np.zeros(0)
        pos, values = pos[keep], values[keep]
        grid = np.full(int(pos.max()) + 1, np.nan)
        grid[0] = last
        sums = np.bincount(pos, weights=values, minlength=grid.size)
        counts = np.bincount(pos, minlength=grid.size)
        grid[counts > 0] = sums[counts > 0] / counts[counts > 0]
        return fill_gaps(grid)[1:]

    def update(self: F, y_new: Any) -> F:
        """Append observations that follow the fitted series, without re-estimating parameters."""
        values = self._continue_grid(y_new)
        if values.size:
            self._update_values(values)
            if self.end_ is not None:
                self.end_ += values.size * self.step_
        return self

    def _update_values(self, values: np.ndarray) -> None:
        raise NotImplementedError

    def _last_value(self) -> float:
        raise NotImplementedError

    def fit(self: F, y: Any) -> F:
        raise NotImplementedError

    def predict(
        self, h: int, level: Sequence[float] | None = DEFAULT_LEVEL
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forecast(
        self, y: Any, h: int, level: Sequence[float] | None = DEFAULT_LEVEL
    ) -> dict[str, np.ndarray]:
        """Fit a fresh copy on ``y`` and predict ``h`` steps; ``self`` is left as it was."""
        return type(self)(**self.get_params()).fit(y).predict(h, level)

    def forecast_times(self, h: int) -> np.ndarray:
        """Unix seconds of the next ``h`` grid points (needs a fitted series with timestamps)."""
        end = getattr(self, "end_", None)
        if end is None:
            raise ValueError("the fitted series had no timestamps")
        return end + self.step_ * np.arange(1, h + 1)
