"""Forecast accuracy: MASE (seasonal-naive scale), sMAPE and interval coverage."""

from __future__ import annotations

import numpy as np


def seasonal_scale(history: np.ndarray, season: int) -> float:
    """In-sample mean absolute seasonal-naive error (lag ``season``; lag 1 if history is short)."""
    y = np.asarray(history, dtype=float)
    lag = season if y.size > season else 1
    if y.size <= lag:
        return float("nan")
    return float(np.mean(np.abs(y[lag:] - y[:-lag])))


def mase(actual: np.ndarray, predicted: np.ndarray, history: np.ndarray, season: int) -> float:
    """Mean absolute error scaled by the history's seasonal-naive error; NaN if that is zero."""
    scale = seasonal_scale(history, season)
    mae = float(np.mean(np.abs(np.asarray(actual) - np.asarray(predicted))))
    if not scale > 0:
        return float("nan")
    return mae / scale


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Symmetric MAPE in percent (0..200); points where both are zero count as exact."""
    a, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    denom = np.abs(a) + np.abs(p)
    terms = np.divide(2 * np.abs(a - p), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(100.0 * np.mean(terms))


def coverage(actual: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of actual values inside ``[lo, hi]``."""
    a = np.asarray(actual, dtype=float)
    return float(np.mean((a >= lo) & (a <= hi)))
