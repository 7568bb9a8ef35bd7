"""Baseline forecasters: naive (last value), seasonal naive and Prometheus-style ``predict_linear``.

They serve as benchmarks and as the ARIMA forecaster's fallbacks. Their bands are empirical: the
quantiles of the errors the same rule made at each horizon over the fitted history, so they need no
distributional assumption and stay honest on jumpy series (a job starting moves a GPU count by 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from dcwatch.detectors.models.forecast_base import DEFAULT_LEVEL, Forecaster, empirical_bands

H = TypeVar("H", bound="HistoryForecaster")
MAX_HISTORY_DAYS = 28  # errors older than four weeks say little about the next day's


class HistoryForecaster(Forecaster):
    """A rule applied to the stored history; ``update`` just appends."""

    def _store(self, y: Any) -> None:
        grid = self._grid(y)
        self._set_grid(grid)
        self.season_length_ = self._season(grid.step)
        self.y_ = grid.values

    def _update_values(self, values: np.ndarray) -> None:
        keep = MAX_HISTORY_DAYS * self.season_length_
        self.y_ = np.concatenate((self.y_, values))[-max(keep, values.size) :]

    def _last_value(self) -> float:
        return float(self.y_[-1])

    def fit(self: H, y: Any) -> H:
        self._store(y)
        return self

    def _mean(self, h: int) -> np.ndarray:
        raise NotImplementedError

    def _errors_at(self, k: int) -> np.ndarray:
        raise NotImplementedError

    def predict(
        self, h: int, level: Sequence[float] | None = DEFAULT_LEVEL
    ) -> dict[str, np.ndarray]:
        if h < 1:
            raise ValueError(f"horizon must be >= 1, got {h}")
        return empirical_bands(self._mean(h), self._errors_at, self._max_k(h), level or ())

    def _max_k(self, h: int) -> int:
        return min(h, self.y_.size - 20)


class NaiveForecaster(HistoryForecaster):
    """The last value, carried forward (ARIMA(0,1,0) without drift)."""

    def __init__(self, step: float | None = None) -> None:
        self.step = step

    def _mean(self, h: int) -> np.ndarray:
        return np.full(h, self.y_[-1])

    def _errors_at(self, k: int) -> np.ndarray:
        return self.y_[k:] - self.y_[:-k]


class SeasonalNaiveForecaster(HistoryForecaster):
    """The value one season (default: one day) earlier."""

    def __init__(self, season_length: int | None = None, step: float | None = None) -> None:
        self.season_length = season_length
        self.step = step

    def _mean(self, h: int) -> np.ndarray:
        m = min(self.season_length_, self.y_.size)
        last = self.y_[-m:]
        return last[np.arange(h) % m]

    def _errors_at(self, k: int) -> np.ndarray:
        m = min(self.season_length_, self.y_.size)
        lag = m * -(-k // m)  # the forecast for k steps ahead is the value `lag` steps before
        return self.y_[lag:] - self.y_[:-lag] if lag < self.y_.size else np.zeros(0)

    def _max_k(self, h: int) -> int:
        m = self.season_length_
        # Errors exist up to the horizon whose lag still leaves 20 points of history.
        seasons = max((self.y_.size - 20) // max(m, 1), 1)
        return min(h, seasons * m)


class LinearTrendForecaster(HistoryForecaster):
    """Least squares over the last ``window`` points, extrapolated (PromQL ``predict_linear``).

    ``window`` defaults to one day of points.
    """

    def __init__(self, window: int | None = None, step: float | None = None) -> None:
        self.window = window
        self.step = step

    def _window(self) -> int:
        w = self.window or self.season_length_
        return int(max(2, min(w, self.y_.size)))

    def _lines(self, ends: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(value at the last point, slope) of the LS lines over ``y[end - w:end]`` per end."""
        y = self.y_
        idx = np.arange(y.size, dtype=float)
        c0 = np.concatenate(([0.0], np.cumsum(y)))
        c1 = np.concatenate(([0.0], np.cumsum(idx * y)))
        sy = c0[ends] - c0[ends - w]
        sxy = c1[ends] - c1[ends - w] - (ends - w) * sy  # x = 0..w-1 inside each window
        sx = w * (w - 1) / 2.0
        sxx = (w - 1) * w * (2 * w - 1) / 6.0
        slope = (w * sxy - sx * sy) / (w * sxx - sx * sx)
        intercept = (sy - slope * sx) / w
        return intercept + slope * (w - 1), slope

    def _mean(self, h: int) -> np.ndarray:
        if self.y_.size < 2:
            return np.full(h, self.y_[-1])
        w = self._window()
        last, slope = self._lines(np.array([self.y_.size]), w)
        return last[0] + slope[0] * np.arange(1, h + 1)

    def _errors_at(self, k: int) -> np.ndarray:
        w = self._window()
        ends = np.arange(w, self.y_.size - k + 1)
        if ends.size > 2000:  # neighbouring origins' errors are nearly identical; thin them
            ends = ends[:: ends.size // 2000 + 1]
        last, slope = self._lines(ends, w)
        return self.y_[ends + k - 1] - (last + slope * k)

    def _max_k(self, h: int) -> int:
        return min(h, self.y_.size - self._window() - 20)
