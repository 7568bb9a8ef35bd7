"""Onset detector: a one-sided CUSUM of per-feature evidence, calibrated to a tail probability.

The residual channel needs one point far in the tail; a fault that rises slowly (a leak, a queue
filling, a fan wearing out) shows instead as many moderately unusual points in a row, and is
found late or never. This channel accumulates that evidence per feature (Page's CUSUM):

    C_t = max(0, C_{t-1} + min(E_t, clip) - drift)

where ``E`` is a non-negative evidence per feature and time step, in the ensemble the residual
surprise (``-log10`` of the training tail probability of the deviation; ``drift`` = 1 means points
rarer than 1 in 10 add evidence, commoner ones remove it). Each feature's ``C`` is then put
through its own training distribution (``residual.fit_tail``, the same quantile grid and
exponential tail as the residual surprises), so a feature whose evidence is persistent in normal
operation (a slowly drifting series) needs a correspondingly larger sum. The score of a row is the
largest of these calibrated surprises.

``C`` is carried between calls (``stream``), so a backtest over a month and a live call per row
give the same scores; ``score_samples`` starts from ``C = 0``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin

from dcwatch.detectors.models.numeric import finite, require_fitted
from dcwatch.detectors.models.persist import State, params
from dcwatch.detectors.models.residual import fit_tail, load_tail, surprise, tail_state


def cusum(
    E: np.ndarray, drift: float, carry: np.ndarray | None = None, forget: float = 1.0
) -> np.ndarray:
    """``C_t = max(0, forget * C_{t-1} + E_t - drift)`` per column of E (n, m), from ``carry``
    (m,) or 0.

    With ``forget`` = 1 (Page's CUSUM) vectorised in Lindley's form, ``C_t = S_t - min(-carry,
    min_{s<=t} S_s)`` with S the cumulative sum of ``E - drift``; below 1 (a leaky sum, whose
    memory is about ``1 / (1 - forget)`` points, so it falls back soon after the evidence stops)
    row by row.
    """
    n, m = E.shape
    c0 = np.zeros(m) if carry is None else np.asarray(carry, dtype=float)
    if n == 0:
        return np.zeros((0, m))
    if forget >= 1.0:
        S = np.cumsum(E - drift, axis=0)
        low = np.minimum(np.minimum.accumulate(S, axis=0), -c0[None, :])
        return S - low
    X = E - drift
    out = np.empty((n, m))
    c = c0.copy()
    for i in range(n):
        c *= forget
        c += X[i]
        np.maximum(c, 0.0, out=c)
        out[i] = c
    return out


class OnsetDetector(OutlierMixin, BaseEstimator):
    """Calibrated CUSUM of non-negative evidence per column (scikit-learn outlier contract).

    Rows of X are consecutive time steps; negative values count as 0. ``drift``: evidence per step
    that is expected in normal operation; ``clip``: the most one step can add (one spike alone is
    the residual channel's business); ``tail_fraction`` as in ``RobustResidualDetector``.
    """

    def __init__(
        self,
        drift: float = 1.0,
        forget: float = 1.0,
        clip: float = 10.0,
        tail_fraction: float = 0.01,
        contamination: float = 0.001,
    ) -> None:
        self.drift = drift
        self.forget = forget
        self.clip = clip
        self.tail_fraction = tail_fraction
        self.contamination = contamination

    def _evidence(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {X.shape}")
        return np.clip(finite(X, nan=0.0, posinf=self.clip), 0.0, self.clip)

    def fit(self, X: np.ndarray, y: object = None) -> OnsetDetector:
        if self.drift <= 0 or self.clip <= self.drift:
            raise ValueError(f"need 0 < drift < clip, got {self.drift}, {self.clip}")
        if not 0 < self.forget <= 1:
            raise ValueError(f"forget must be in (0, 1], got {self.forget}")
        if not 0 < self.tail_fraction < 0.5:
            raise ValueError(f"tail_fraction must be in (0, 0.5), got {self.tail_fraction}")
        E = self._evidence(X)
        if E.shape[0] == 0:
            raise ValueError("cannot fit on 0 rows")
        self.n_features_in_ = E.shape[1]
        C = cusum(E, self.drift, None, self.forget)
        self.grid_, self.knots_, self.tail_scale_ = fit_tail(C, self.tail_fraction)
        self.offset_ = float(np.quantile(self.score_samples(X), self.contamination))
        return self

    def stream(
        self, X: np.ndarray, carry: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated surprise per column (n, m) of rows following ``carry``, and the new carry."""
        require_fitted(self, "grid_")
        E = self._evidence(X)
        if E.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {E.shape[1]} features, fitted on {self.n_features_in_}")
        C = cusum(E, self.drift, carry, self.forget)
        after = C[-1].copy() if len(C) else self.initial_carry(carry)
        return surprise(C, self.grid_, self.knots_, self.tail_scale_), after

    def initial_carry(self, carry: np.ndarray | None = None) -> np.ndarray:
        return np.zeros(self.n_features_in_) if carry is None else np.asarray(carry, dtype=float)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Minus the largest calibrated surprise per row, from ``C = 0``: lower is more abnormal."""
        S, _ = self.stream(X)
        return -S.max(axis=1) if S.shape[1] else np.zeros(len(S))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    def state(self) -> State:
        return tail_state(self)

    @classmethod
    def from_state(cls, state: State) -> OnsetDetector:
        return load_tail(cls(**params(state)), state, sides=1)
