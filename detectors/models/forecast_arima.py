"""ARIMA forecaster that chooses per series between seasonal and non-seasonal structure.

How a fit works (``y`` at a regular step, ``m`` points a day):

1. The last ``max_days`` days are kept and averaged into bins of ``k`` points so a day has at most
   ``points_per_day`` bins (5-minute data: 30-minute bins). A one-day horizon then needs ~48 ARIMA
   steps, not 288, and a fit costs milliseconds.
2. Candidates: ``naive`` (the last value: ARIMA(0,1,0) at the original step), ``arima``
   (ARIMA(p,1,q) on the bins, order by AICc over ``orders``, drift if AICc prefers it),
   ``seasonal-arima`` (daily Fourier terms, and weekly ones given three weeks of history, fitted by
   least squares; ARIMA(p,1,q) on what remains) and ``seasonal-naive`` (the value a day earlier).
   No seasonal ARIMA of period 288: that took 24 minutes and 24 GiB for one series.
3. Seasonal candidates only compete when the history has a daily cycle: its seasonal strength
   (share of the detrended variance a mean daily profile explains, net of what noise alone
   explains) is at least ``min_seasonal_strength``. Below that a profile cannot gain much and
   its estimate is mostly noise.
4. Each candidate is fitted once on the history before the last ``validation_days`` days and
   forecasts one day ahead from origins every quarter-day inside them (the state is advanced with
   the observed values, parameters stay fixed). Of the candidates whose mean absolute error is
   within ``parsimony`` standard errors of the best, the simplest wins (naive, seasonal naive,
   ARIMA, seasonal ARIMA: the one-standard-error rule). On GPU job counts the last value beats
   any daily profile; on business-hours series the order flips.
5. The winner is refitted on all of it. Bin-level forecasts are interpolated back to the original
   step from the last observed value, and the bands add the spread of points within a bin.

Too little history (under ``min_days`` days) or a failed fit falls back to seasonal naive (naive
below one day), recorded in ``model_`` and ``fallback_reason_``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from dcwatch.detectors.models.forecast_arma import (
    bin_factor,
    bin_means,
    fourier,
    seasonal_strength,
    select_arma,
)
from dcwatch.detectors.models.forecast_base import DEFAULT_LEVEL, Forecaster, gaussian_bands
from dcwatch.detectors.models.forecast_baselines import (
    HistoryForecaster,
    NaiveForecaster,
    SeasonalNaiveForecaster,
)

log = logging.getLogger(__name__)

CANDIDATES = ("naive", "arima", "seasonal-arima", "seasonal-naive")
ORDERS = ((0, 0), (1, 0), (0, 1), (1, 1), (2, 1))
SIMPLICITY = ("naive", "seasonal-naive", "arima", "seasonal-arima")
SEASONAL = ("seasonal-naive", "seasonal-arima")


def _to_fine(anchor: float, bins: np.ndarray, k: int, h: int, offset: float) -> np.ndarray:
    """Interpolate bin values (centres at ``offset + j*k``) to steps 1..h, from ``anchor`` at 0."""
    centres = offset + k * np.arange(bins.size)
    keep = centres > 0
    x = np.concatenate(([0.0], centres[keep]))
    steps = np.arange(1, h + 1, dtype=float)
    return np.interp(steps, x, np.concatenate(([anchor], bins[keep])))


class ArimaForecaster(Forecaster):
    """ARIMA(p,1,q) with optional Fourier seasonality, chosen against naive rules per series."""

    def __init__(
        self,
        season_length: int | None = None,
        step: float | None = None,
        candidates: Sequence[str] = CANDIDATES,
        orders: Sequence[tuple[int, int]] = ORDERS,
        drift: bool = True,
        fourier_terms: tuple[int, int] = (6, 3),
        points_per_day: int = 48,
        max_days: int = 28,
        validation_days: int | None = None,
        min_days: float = 3.0,
        parsimony: float = 1.0,
        min_seasonal_strength: float = 0.3,
    ) -> None:
        self.season_length = season_length
        self.step = step
        self.candidates = candidates
        self.orders = orders
        self.drift = drift
        self.fourier_terms = fourier_terms
        self.points_per_day = points_per_day
        self.max_days = max_days
        self.validation_days = validation_days
        self.min_days = min_days
        self.parsimony = parsimony
        self.min_seasonal_strength = min_seasonal_strength

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, y: Any) -> ArimaForecaster:
        grid = self._grid(y)
        self._set_grid(grid)
        m = self.season_length_ = self._season(grid.step)
        unknown = set(self.candidates) - set(CANDIDATES)
        if unknown or not self.candidates:
            raise ValueError(f"candidates must be a non-empty subset of {CANDIDATES}")
        y = grid.values[-int(self.max_days * m) :] if self.max_days else grid.values
        self.y_last_ = float(y[-1])
        self.fallback_reason_: str | None = None
        self.scores_: dict[str, float] = {}
        self.order_: tuple[int, int, int] | None = None
        self.baseline_: HistoryForecaster | None = None
        self.res_: Any = None  # statsmodels SARIMAXResults of the bins (None for naive rules)
        self.seasonal_strength_: float | None = None
        if y.size < self.min_days * m:
            return self._fallback(y, f"history of {y.size} points is under {self.min_days} days")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                errors = self._validate(y, m)
                self.scores_ = {name: float(e.mean()) for name, e in errors.items()}
                self._fit_model(self._choose(errors, y.size, m), y, m)
        except Exception as exc:  # numerical trouble of any kind: a forecast beats none
            log.debug("forecast fit failed, falling back to seasonal naive: %r", exc)
            return self._fallback(y, f"fit failed: {exc}")
        return self

    def _fallback(self, y: np.ndarray, reason: str) -> ArimaForecaster:
        self.fallback_reason_ = reason
        self._fit_model("seasonal-naive" if y.size >= self.season_length_ else "naive", y, 0)
        return self

    def _validation_days(self, n: int, m: int) -> int:
        if self.validation_days:
            return int(self.validation_days)
        return int(np.clip(n // m // 3, 1, 7))

    def _choose(self, errors: dict[str, np.ndarray], n: int, m: int) -> str:
        """The simplest candidate within ``parsimony`` standard errors of the best one."""
        best = min(errors, key=lambda c: errors[c].mean())
        days = self._validation_days(n, m)  # origins a quarter-day apart overlap; count days
        for name in sorted(errors, key=SIMPLICITY.index):
            diff = errors[name] - errors[best]
            se = diff.std() / np.sqrt(days) if diff.size > 1 else 0.0
            if diff.mean() <= self.parsimony * se:
                return name
        return best

    def _validate(self, y: np.ndarray, m: int) -> dict[str, np.ndarray]:
        """Mean absolute one-day-ahead error of each candidate from each origin in the last days."""
        n = y.size
        k = bin_factor(m, self.points_per_day)
        train = n - self._validation_days(n, m) * m
        candidates = list(self.candidates)
        # A test of structure, not a fit: all of the history (three days at least) may speak.
        self.seasonal_strength_ = seasonal_strength(bin_means(y, k), m // k)
        if self.seasonal_strength_ < self.min_seasonal_strength:
            candidates = [c for c in candidates if c not in SEASONAL] or candidates
        if len(candidates) == 1:
            return {candidates[0]: np.zeros(1)}
        spacing = max(k, (m // 4) // k * k)
        origins = np.arange(train, n - m + 1, spacing)
        actual = np.stack([y[o : o + m] for o in origins])
        scores = {}
        for name in candidates:
            if name == "naive":
                pred = np.repeat(y[origins - 1][:, None], m, axis=1)
            elif name == "seasonal-naive":
                pred = np.stack([y[o - m : o] for o in origins])
            else:
                pred = self._arima_paths(name, y, m, k, train, origins)
            scores[name] = np.mean(np.abs(pred - actual), axis=1)
        return scores

    def _seasonal_design(self, name: str, m: int, k: int, nbins: int) -> tuple:
        if name != "seasonal-arima":
            return ()
        daily, weekly = self.fourier_terms
        mc = m // k
        terms = [(float(mc), min(daily, mc // 2))]
        if weekly and nbins >= 21 * mc:
            terms.append((7.0 * mc, weekly))
        return tuple(terms)

    def _deseasonalise(
        self, z: np.ndarray, fit_bins: int, terms: tuple
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fourier coefficients fitted on the first ``fit_bins`` bins, and ``z`` minus the cycle."""
        if not terms:
            return np.zeros(0), z
        X = fourier(np.arange(z.size, dtype=float), terms)
        A = np.column_stack((np.ones(fit_bins), X[:fit_bins]))
        beta = np.linalg.lstsq(A, z[:fit_bins], rcond=None)[0][1:]
        return beta, z - X @ beta

    def _arima_paths(
        self, name: str, y: np.ndarray, m: int, k: int, train: int, origins: np.ndarray
    ) -> np.ndarray:
        """One-day forecasts from each origin by the candidate fitted on ``y[:train]``."""
        start = train % k
        z = bin_means(y[start:], k)
        fit_bins = (train - start) // k
        terms = self._seasonal_design(name, m, k, fit_bins)
        beta, r = self._deseasonalise(z, fit_bins, terms)
        x = np.diff(r)
        arma = select_arma(x[: fit_bins - 1], tuple(self.orders), self.drift)
        ends = (origins - start) // k - 1  # last known bin per origin = x[:ends] known
        steps = m // k + 1
        diffs = arma.paths(x, ends, steps)
        rbins = r[ends][:, None] + np.cumsum(diffs, axis=1)
        if terms:
            future = ends[:, None] + 1 + np.arange(steps)
            rbins = rbins + (fourier(future.ravel().astype(float), terms) @ beta).reshape(
                future.shape
            )
        offset = (k + 1) / 2.0
        return np.stack(
            [_to_fine(y[o - 1], rb, k, m, offset) for o, rb in zip(origins, rbins, strict=True)]
        )

    def _fit_model(self, name: str, y: np.ndarray, m: int) -> None:
        self.model_ = name
        if name in ("naive", "seasonal-naive"):
            base = (
                NaiveForecaster(step=self.step_)
                if name == "naive"
                else SeasonalNaiveForecaster(self.season_length_, self.step_)
            )
            self.baseline_ = base.fit(y)
            return
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        k = self.k_ = bin_factor(m, self.points_per_day)
        start = y.size % k
        z = bin_means(y[start:], k)
        self.terms_ = self._seasonal_design(name, m, k, z.size)
        self.beta_, r = self._deseasonalise(z, z.size, self.terms_)
        arma = self.arma_ = select_arma(np.diff(r), tuple(self.orders), self.drift)
        self.order_ = arma.order
        model = SARIMAX(r[:-1], order=arma.order, trend="c" if arma.drift else "n")
        # Kept results hold per-observation arrays: extending by the last bin leaves a results
        # object of one observation with the same state (~5 KB instead of ~1.4 MB pickled).
        self.res_ = model.filter(arma.sarimax_params()).extend(r[-1:])
        self.next_bin_ = z.size
        self.tail_ = np.zeros(0)
        fine = y[start:].reshape(-1, k)
        self.within_var_ = float(np.mean((fine - fine.mean(axis=1, keepdims=True)) ** 2))

    def _seasonal(self, bins: np.ndarray) -> np.ndarray:
        if not self.terms_:
            return np.zeros(bins.size)
        return fourier(bins.astype(float), self.terms_) @ self.beta_

    # ---- updating and predicting ---------------------------------------------------------
    def _last_value(self) -> float:
        return self.y_last_

    def _update_values(self, values: np.ndarray) -> None:
        self.y_last_ = float(values[-1])
        if self.baseline_ is not None:
            self.baseline_._update_values(values)
            return
        k = self.k_
        buf = np.concatenate((self.tail_, values))
        full = buf.size // k
        if full:
            z = buf[: full * k].reshape(full, k).mean(axis=1)
            r = z - self._seasonal(self.next_bin_ + np.arange(full))
            self.res_ = self.res_.extend(r)
            self.next_bin_ += full
        self.tail_ = buf[full * k :]

    def predict(
        self, h: int, level: Sequence[float] | None = DEFAULT_LEVEL
    ) -> dict[str, np.ndarray]:
        if h < 1:
            raise ValueError(f"horizon must be >= 1, got {h}")
        if self.baseline_ is not None:
            return self.baseline_.predict(h, level)
        k = self.k_
        steps = int(np.ceil((h + self.tail_.size) / k)) + 1
        fc = self.res_.get_forecast(steps)
        zbins = np.asarray(fc.predicted_mean) + self._seasonal(self.next_bin_ + np.arange(steps))
        offset = (k + 1) / 2.0 - self.tail_.size
        mean = _to_fine(self.y_last_, zbins, k, h, offset)
        var = _to_fine(0.0, np.asarray(fc.var_pred_mean), k, h, offset)
        var += self.within_var_ * np.minimum(np.arange(1, h + 1) / k, 1.0)
        return gaussian_bands(mean, np.sqrt(np.maximum(var, 0.0)), level or ())
