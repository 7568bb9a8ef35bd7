"""Univariate residual detector: per-feature tail calibration of forecast-error z-scores.

Each column of X is one series' residual z-score (see ``dcwatch.detectors.features``). For each
column and each side (above / below the forecast) the detector learns the training distribution of
the deviation and turns a new deviation into a *surprise*: ``-log10`` of the training probability of
a deviation at least that large (from training quantiles, and an exponential tail fitted to the top
``tail_fraction`` beyond the largest quantile). A series that is always spiky in training (a nightly
disk job) thus needs a much larger spike to count than one that is normally flat, without any
per-series setting. On a short training window the grid stops at the ``1 - 1/n`` quantile and the
tail is fitted to at least ``MIN_TAIL_POINTS`` values (``tail_levels``, ``fit_tail``).

The anomaly score of a row is the largest surprise over its features (the backtests preferred the
maximum to sums and top-k means: anomalies typically show in a few series, and a sum rewards noise
in many). ``surprises`` returns the whole matrix for the contributors and the ensemble.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin

from dcwatch.detectors.decisions import MIN_TAIL_POINTS  # the fewest points a tail is fitted to
from dcwatch.detectors.models.numeric import finite, require_fitted
from dcwatch.detectors.models.persist import State, array, expect, integer, number, params

# ``surprise`` works through this many values at a time: its dozen temporaries per value stay
# small however many rows and series a fit has (whole, they were most of a fit's peak memory).
_BLOCK_VALUES = 2**20
# Quantile levels of the one-sided deviation at which the surprise is known exactly.
LEVELS = np.array([0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999])


def tail_levels(n: int) -> np.ndarray:
    """The grid's quantile levels for ``n`` training rows: ``LEVELS``, none above ``1 - 1 / n``.

    A short window cannot vouch for a 1-in-1000 tail; and with the top level below the largest
    training value, the largest values of training are scored by the exponential tail like new
    values beyond the grid. Otherwise the training scores of a short window would stop at the
    grid's top while one new row in a few goes beyond it, and a threshold calibrated on the
    training scores would sit far too low (about ``1 / n`` of new rows pass the top level in
    each of a node's features)."""
    return np.minimum(LEVELS, 1.0 - 1.0 / max(n, 2))


def _knots(levels: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], -np.log10(1.0 - levels)])


def _as_2d(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {X.shape}")
    return finite(X, nan=0.0, posinf=1e6, neginf=-1e6)


def one_sided(X: np.ndarray) -> np.ndarray:
    """(n, d) signed deviations -> (n, 2d): [above, below], both >= 0."""
    return np.concatenate([np.maximum(X, 0.0), np.maximum(-X, 0.0)], axis=1)


class RobustResidualDetector(OutlierMixin, BaseEstimator):
    """Max over features of the calibrated tail surprise of robust z-scores (scikit-learn contract).

    Parameters
    ----------
    tail_fraction : share of training deviations above which the tail is treated as exponential.
    contamination : share of training rows above ``offset_`` (only for ``predict``; alerting uses
        ``dcwatch.detectors.decisions`` instead, which calibrates to an alert rate).
    """

    def __init__(self, tail_fraction: float = 0.01, contamination: float = 0.001) -> None:
        self.tail_fraction = tail_fraction
        self.contamination = contamination

    def fit(self, X: np.ndarray, y: object = None) -> RobustResidualDetector:
        X = _as_2d(X)
        if not 0 < self.tail_fraction < 0.5:
            raise ValueError(f"tail_fraction must be in (0, 0.5), got {self.tail_fraction}")
        if not 0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5), got {self.contamination}")
        self.n_features_in_ = X.shape[1]
        if X.shape[0] == 0:
            raise ValueError("cannot fit on 0 rows")
        self.grid_, self.knots_, self.tail_scale_ = fit_tail(one_sided(X), self.tail_fraction)
        train = self.score_samples(X)
        self.offset_ = float(np.quantile(train, self.contamination))
        return self

    def surprises(self, X: np.ndarray) -> np.ndarray:
        """(n, 2d) surprise per feature and side: ``-log10`` training tail probability."""
        require_fitted(self, "grid_")
        X = _as_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, fitted on {self.n_features_in_}")
        return surprise(one_sided(X), self.grid_, self.knots_, self.tail_scale_)

    def feature_surprises(self, X: np.ndarray) -> np.ndarray:
        """(n, d) surprise per feature, the larger of its two sides."""
        S = self.surprises(X)
        d = self.n_features_in_
        return np.maximum(S[:, :d], S[:, d:])

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Minus the largest surprise: lower is more abnormal."""
        S = self.surprises(X)
        if S.shape[1] == 0:
            return np.zeros(S.shape[0])
        return -S.max(axis=1)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    def state(self) -> State:
        """The fitted detector as data (``dcwatch.detectors.models.persist``)."""
        return tail_state(self)

    @classmethod
    def from_state(cls, state: State) -> RobustResidualDetector:
        return load_tail(cls(**params(state)), state, sides=2)


class TailCalibrated(Protocol):
    """What :func:`tail_state` and :func:`load_tail` read and set (residual and onset)."""

    n_features_in_: int
    grid_: np.ndarray
    knots_: np.ndarray
    tail_scale_: np.ndarray
    offset_: float

    def get_params(self, deep: bool = ...) -> dict[str, Any]: ...


def tail_state(det: TailCalibrated) -> State:
    """A tail-calibrated detector's fitted state as data: the one layout both detectors share."""
    require_fitted(det, "grid_")
    return {
        "params": det.get_params(),
        "n_features_in": det.n_features_in_,
        "grid": det.grid_,
        "knots": det.knots_,
        "tail_scale": det.tail_scale_,
        "offset": det.offset_,
    }


T = TypeVar("T", bound=TailCalibrated)


def load_tail(det: T, state: State, sides: int) -> T:
    """Set ``det``'s fitted attributes from :func:`tail_state`'s layout and check their shapes:
    ``sides`` calibrated columns per feature (residual: above and below; onset: one)."""
    det.n_features_in_ = integer(state, "n_features_in")
    det.grid_ = array(state, "grid", np.float64, 2)
    det.knots_ = array(state, "knots", np.float64, 1)
    det.tail_scale_ = array(state, "tail_scale", np.float64, 1)
    det.offset_ = number(state, "offset")
    m = sides * det.n_features_in_
    expect(det.grid_.shape == (len(det.knots_), m) and len(det.knots_) > 0, "grid is (K, columns)")
    expect(det.tail_scale_.shape == (m,), "one tail scale per calibrated column")
    return det


def fit_tail(D: np.ndarray, tail_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column calibration of non-negative deviations D (n, m) for ``surprise``: the quantile
    grid (K, m), the surprise at each grid row (K,) and the exponential tail scale (m,) fitted to
    the top ``tail_fraction`` (the mean excess over that quantile; over the top
    ``MIN_TAIL_POINTS`` on short training)."""
    n = D.shape[0]
    levels = tail_levels(n)
    grid = np.quantile(D, levels, axis=0)  # (L, m)
    # A strictly increasing grid keeps the interpolation well defined on ties (e.g. many zeros).
    eps = 1e-9 * np.maximum(1.0, np.abs(grid).max(axis=0))
    grid = grid + np.arange(len(levels))[:, None] * eps[None, :]
    grid = np.vstack([np.zeros((1, D.shape[1])), np.maximum(grid, 0.0)])
    grid[1:] = np.maximum(grid[1:], grid[:-1] + eps)
    u = np.quantile(D, 1.0 - max(tail_fraction, min(0.5, MIN_TAIL_POINTS / max(n, 1))), axis=0)
    over = u < D
    n_over = over.sum(axis=0)
    beta = np.where(over, D - u, 0.0).sum(axis=0) / np.maximum(n_over, 1)
    beta = np.where(n_over > 0, beta, np.nan)
    fallback = np.maximum(grid[-1] - grid[-4], 1.0)
    tail = np.where(np.isfinite(beta) & (beta > 0), beta, fallback)
    return grid, _knots(levels), tail


def surprise(D: np.ndarray, grid: np.ndarray, knots: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Piecewise-linear map of deviations D (n, m) through per-column knots, exponential beyond.

    ``grid`` is (K, m) increasing per column, ``knots`` (K,) the surprise at each grid value,
    ``tail`` (m,) the exponential scale beyond the last grid value. Vectorised over rows and
    columns.
    """
    n, m = D.shape
    if n == 0 or m == 0:
        return np.zeros((n, m))
    rows = max(1, _BLOCK_VALUES // m)
    if n <= rows:
        return _surprise_block(D, grid, knots, tail)
    out = np.empty((n, m))
    for lo in range(0, n, rows):
        out[lo : lo + rows] = _surprise_block(D[lo : lo + rows], grid, knots, tail)
    return out


def _surprise_block(
    D: np.ndarray, grid: np.ndarray, knots: np.ndarray, tail: np.ndarray
) -> np.ndarray:
    n, m = D.shape
    K = grid.shape[0]
    # Number of grid values strictly below each deviation (searchsorted 'left', per column).
    if n <= 64:
        idx = (D[:, None, :] > grid[None, :, :]).sum(axis=1)  # (n, m) in [0, K]
    else:
        idx = np.empty((n, m), dtype=np.int64)
        for j in range(m):
            idx[:, j] = np.searchsorted(grid[:, j], D[:, j], side="left")
    cols = np.arange(m)[None, :]
    hi = np.minimum(idx, K - 1)
    lo = np.maximum(hi - 1, 0)
    g_lo, g_hi = grid[lo, cols], grid[hi, cols]
    k_lo, k_hi = knots[lo], knots[hi]
    width = np.where(g_hi > g_lo, g_hi - g_lo, 1.0)
    frac = np.clip((D - g_lo) / width, 0.0, 1.0)
    out = k_lo + frac * (k_hi - k_lo)
    beyond = idx >= K
    if beyond.any():
        ext = knots[-1] + (D - grid[-1][None, :]) / (tail[None, :] * np.log(10.0))
        out = np.where(beyond, ext, out)
    return out
