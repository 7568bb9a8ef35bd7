"""The numerical pieces under :class:`ArimaForecaster`: bins, Fourier terms, CSS estimation.

ARIMA(p, 1, q) parameters are estimated by conditional sum of squares (the residual recursion is
one ``scipy.signal.lfilter`` call), which agrees with statsmodels' exact likelihood to a few
decimals on hundreds of points at a tenth of the cost; statsmodels then filters the series once with
those parameters to give the fitted state that ``update`` extends and that the bands come from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter


def bin_factor(season: int, points_per_day: int) -> int:
    """Smallest divisor ``k`` of ``season`` with at most ``points_per_day`` bins a season."""
    for k in range(1, season + 1):
        if season % k == 0 and season // k <= points_per_day:
            return k
    return season


def bin_means(y: np.ndarray, k: int) -> np.ndarray:
    """Means of consecutive ``k``-point bins aligned to the end (a leading remainder is dropped)."""
    n = y.size // k * k
    return y[y.size - n :].reshape(-1, k).mean(axis=1)


def fourier(t: np.ndarray, terms: tuple[tuple[float, int], ...]) -> np.ndarray:
    """Sine/cosine pairs for each ``(period, harmonics)`` at (bin) times ``t``."""
    cols = []
    for period, harmonics in terms:
        for j in range(1, harmonics + 1):
            angle = 2.0 * np.pi * j * t / period
            cols += [np.sin(angle), np.cos(angle)]
    return np.column_stack(cols) if cols else np.zeros((t.size, 0))


def seasonal_strength(z: np.ndarray, period: int) -> float:
    """Share of the detrended variance explained by the mean profile over ``period``, net of chance.

    Hyndman's ``F_s = 1 - var(remainder) / var(detrended)`` with a centred moving-average trend;
    a profile averaged over ``D`` periods of pure noise still explains about ``1/D``, so that
    share is taken out: ``(F_s - 1/D) / (1 - 1/D)``. 0 without a daily cycle, ~1 when it dominates.
    """
    days = z.size // period
    if period < 2 or days < 3:  # the moving average eats a day; two more to compare
        return 0.0
    z = z[-days * period :]
    weights = np.r_[0.5, np.ones(period - 1), 0.5] / period
    trend = np.convolve(z, weights, mode="valid")
    half = period // 2
    detrended = z[half : half + trend.size] - trend
    phase = (np.arange(detrended.size) + half) % period
    profile = np.bincount(phase, detrended, period) / np.maximum(
        np.bincount(phase, None, period), 1
    )
    total = detrended.var()
    if not total > 0:
        return 0.0
    raw = max(0.0, 1.0 - (detrended - profile[phase]).var() / total)
    chance = period / detrended.size
    return max(0.0, (raw - chance) / (1.0 - chance))


@dataclass(frozen=True)
class Arma:
    """ARMA(p, q) on differences ``x`` with statsmodels' signs.

    ``x_t - mu = sum ar_i (x_{t-i} - mu) + e_t + sum ma_j e_{t-j}``
    """

    ar: np.ndarray
    ma: np.ndarray
    mu: float  # mean of the differences: the drift (0 without drift)
    sigma2: float
    aicc: float
    drift: bool

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.ar.size, 1, self.ma.size)

    def sarimax_params(self) -> np.ndarray:
        """The same model as statsmodels SARIMAX(order, trend='c' if drift else 'n') parameters."""
        head = [self.mu * (1.0 - self.ar.sum())] if self.drift else []
        return np.concatenate((head, self.ar, self.ma, [self.sigma2]))

    def residuals(self, x: np.ndarray) -> np.ndarray:
        """One-step CSS residuals (zero before the series starts)."""
        return lfilter(np.r_[1.0, -self.ar], np.r_[1.0, self.ma], x - self.mu)

    def paths(self, x: np.ndarray, ends: np.ndarray, steps: int) -> np.ndarray:
        """Forecasts of the next ``steps`` differences after ``x[:end]`` for each ``end``."""
        p, q = self.ar.size, self.ma.size
        e = self.residuals(x)
        xs = np.zeros((ends.size, p + steps))
        es = np.zeros((ends.size, q + steps))
        for i in range(p):  # lag i+1 sits at column p-1-i
            idx = ends - 1 - i
            xs[:, p - 1 - i] = np.where(idx >= 0, x[np.maximum(idx, 0)] - self.mu, 0.0)
        for j in range(q):
            idx = ends - 1 - j
            es[:, q - 1 - j] = np.where(idx >= 0, e[np.maximum(idx, 0)], 0.0)
        for s in range(steps):
            val = np.zeros(ends.size)
            for i in range(p):
                val += self.ar[i] * xs[:, p + s - 1 - i]
            for j in range(q):
                val += self.ma[j] * es[:, q + s - 1 - j]
            xs[:, p + s] = val
        return xs[:, p:] + self.mu


def _stable(c: np.ndarray, bound: float = 0.995) -> bool:
    """Whether ``1 - c_1 z - ... - c_p z^p`` has all roots outside the unit circle (with margin)."""
    if c.size == 0:
        return True
    if c.size == 1:
        return abs(float(c[0])) < bound
    return bool(np.all(np.abs(np.roots(np.r_[1.0, -c])) < bound))


def _lags(v: np.ndarray, lags: int) -> np.ndarray:
    """Columns ``v[t-1], ..., v[t-lags]`` (zeros before the start)."""
    out = np.zeros((v.size, lags))
    for i in range(1, lags + 1):
        out[i:, i - 1] = v[:-i]
    return out


def _hannan_rissanen(xc: np.ndarray, p: int, q: int) -> np.ndarray:
    """Starting values: regress on lagged values and on residuals of a long autoregression."""
    long = min(10, max(xc.size // 10, p + q + 1))
    lagged = _lags(xc, long)
    coef = np.linalg.lstsq(lagged[long:], xc[long:], rcond=None)[0]
    ehat = xc - lagged @ coef
    design = np.column_stack((_lags(xc, p), _lags(ehat, q)))[long + q :]
    beta = np.linalg.lstsq(design, xc[long + q :], rcond=None)[0]
    if not (_stable(beta[:p]) and _stable(-beta[p:])):
        beta = np.zeros(p + q)
    return beta


def fit_arma(x: np.ndarray, p: int, q: int, drift: bool = False, iterations: int = 10) -> Arma:
    """Conditional-sum-of-squares ARMA(p, q) fit to differences ``x`` (Gauss-Newton).

    Starting values come from a Hannan-Rissanen regression. The residuals' derivatives are filtered
    series themselves (``-x/theta(L)`` lagged for AR terms, ``-e/theta(L)`` for MA terms), so each
    iteration is three ``lfilter`` calls and one small least squares; steps are halved until the
    fit improves and stays stationary and invertible.
    """
    mu = float(x.mean()) if drift else 0.0
    xc = x - mu
    floor = 1e-12 * max(float(np.mean(x * x)), 1.0)
    beta = _hannan_rissanen(xc, p, q) if p + q and xc.size > 3 * (p + q) + 12 else np.zeros(p + q)

    def residuals(b: np.ndarray) -> np.ndarray:
        return lfilter(np.r_[1.0, -b[:p]], np.r_[1.0, b[p:]], xc)

    e = residuals(beta)
    sse = float(e[p:] @ e[p:])
    for _ in range(iterations if p + q else 0):
        ma_poly = np.r_[1.0, beta[p:]]
        jac = np.column_stack(
            (-_lags(lfilter([1.0], ma_poly, xc), p), -_lags(lfilter([1.0], ma_poly, e), q))
        )
        delta = np.linalg.lstsq(jac[p:], -e[p:], rcond=None)[0]
        step, improved = 1.0, False
        while step > 1e-3:
            cand = beta + step * delta
            if _stable(cand[:p]) and _stable(-cand[p:]):
                e_c = residuals(cand)
                sse_c = float(e_c[p:] @ e_c[p:])
                if sse_c < sse:
                    improved = sse - sse_c > 1e-10 * sse
                    beta, e, sse = cand, e_c, sse_c
                    break
            step /= 2.0
        if not improved:
            break
    n = max(xc.size - p, 1)
    sigma2 = max(sse / n, floor)
    k = p + q + 1 + int(drift)
    aicc = n * np.log(sigma2) + 2 * k + 2 * k * (k + 1) / max(n - k - 1, 1)
    return Arma(beta[:p].copy(), beta[p:].copy(), mu, sigma2, float(aicc), drift)


def select_arma(x: np.ndarray, orders: tuple[tuple[int, int], ...], drift: bool = True) -> Arma:
    """The order with the lowest AICc over ``orders``; then drift kept if it lowers AICc too."""
    fits = [fit_arma(x, p, q) for p, q in orders if x.size > 2 * (p + q) + 8]
    best = min(fits, key=lambda f: f.aicc) if fits else fit_arma(x, 0, 0)
    if drift and x.size > 20:
        with_drift = fit_arma(x, best.ar.size, best.ma.size, drift=True)
        if with_drift.aicc < best.aicc:
            best = with_drift
    return best
