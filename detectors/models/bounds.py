"""Bounds on one fit: the series a node model keeps and the rows it learns from.

A node can expose any number of series (a per-device query over a node with thousands of devices,
or a hostile target), and a fit's memory grows with rows x series. Like Prometheus'
``sample_limit``, the bound is applied to the input, before anything expensive is built from it:

- ``select_series``: the varying series of the training window (constant or empty ones carry no
  signal, as always); beyond ``max_series`` of them, the most informative are kept, ranked by
  ``varying_scores`` and, on ties, by name, so the same window always keeps the same series.
- ``recent_rows`` / ``even_rows``: the rows a detector learns from (see ``NodeModel``).
- ``fit_memory_bytes``: what a fit of a given size holds at its peak, for the log and the docs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Columns whose statistics are computed at once: the temporaries stay a few tens of MB whatever
# the number of series (a copy of a 20,000-series day at 15 s alone is 0.9 GB).
_COLUMN_CHUNK = 512
# Live float64 (rows x series) arrays at a fit's peak per kept series, measured with
# ``tracemalloc`` on a day at 15 s (features: values, residuals, observed and expected on two
# kinds; the detector: one-sided deviations and surprises of both sides).
FIT_ARRAYS_PER_SERIES = 24


@dataclass(frozen=True)
class SeriesSelection:
    """The series a fit keeps (in frame order) and how many it leaves out."""

    columns: list[str]
    seen: int  # series in the node's training frame
    over_limit: int  # varying, but beyond ``max_series``: the least informative ones

    @property
    def no_signal(self) -> int:
        """Series left out as constant or empty in training (for a group: on some member)."""
        return self.seen - len(self.columns) - self.over_limit

    @property
    def truncated(self) -> bool:
        return self.over_limit > 0


def varying_scores(names: Sequence[str], values: np.ndarray) -> dict[str, float]:
    """The informativeness of each series (column of ``values``, rows x series) that carries a
    signal: two distinct finite values or more, as ``features.varying_columns``.

    Informativeness is the share of rows with a value times the relative variability
    ``std / (std + |mean|)`` of those values, in [0, 1). It is scale-free (bytes and ratios
    compare), so a series that barely moves around a large level (a static memory size, a
    counter's jitter) ranks low, one that swings through its range (utilisation, power, an error
    rate that is mostly zero) ranks high, and a mostly-missing one ranks low. One pass of sums per
    column, in chunks of columns, so the temporaries stay small however many series there are.
    """
    n, d = values.shape
    if d != len(names):
        raise ValueError(f"{len(names)} names for {d} columns")
    out = np.full(d, np.nan)
    for lo in range(0, d, _COLUMN_CHUNK):
        v = values[:, lo : lo + _COLUMN_CHUNK]
        finite = np.isfinite(v)
        count = finite.sum(axis=0)
        with np.errstate(all="ignore"):
            mean = np.where(finite, v, 0.0).sum(axis=0) / np.maximum(count, 1)
            var = (np.where(finite, v - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1)
            hi = np.where(finite, v, -np.inf).max(axis=0, initial=-np.inf)
            low = np.where(finite, v, np.inf).min(axis=0, initial=np.inf)
            std = np.sqrt(var)
            rel = np.nan_to_num(std / (std + np.abs(mean)))
        varying = (count > 0) & (hi > low)
        out[lo : lo + v.shape[1]] = np.where(varying, count / max(n, 1) * rel, np.nan)
    return {str(c): float(x) for c, x in zip(names, out, strict=True) if not np.isnan(x)}


def select_series(
    names: Sequence[str], members: Sequence[Mapping[str, float]], max_series: int
) -> tuple[list[str], int]:
    """The series to fit on, in ``names``' order: those varying on every member (one member for
    a node; several for a group sharing one detector), at most ``max_series`` of them; and how
    many varying ones the bound left out.

    ``members`` map each member's varying series to its informativeness (``varying_scores``).
    Over the bound the highest mean informativeness wins and ties go to the name sorting first,
    so the same training window always keeps the same series.
    """
    if max_series < 1:
        raise ValueError(f"max_series must be >= 1, got {max_series}")
    candidates = [str(c) for c in names if all(c in m for m in members)]
    if len(candidates) <= max_series:
        return candidates, 0
    score = {c: sum(m[c] for m in members) / len(members) for c in candidates}
    kept = set(sorted(candidates, key=lambda c: (-score[c], c))[:max_series])
    return [c for c in candidates if c in kept], len(candidates) - max_series


def recent_rows(n: int, max_rows: int) -> slice:
    """The last ``max_rows`` of ``n`` rows: a node's features are windows on its time grid (and a
    daily profile), which an evenly thinned window would change, so the oldest rows go first."""
    return slice(max(0, n - max(1, max_rows)), n)


def first_data_row(values: np.ndarray) -> int:
    """The first row of ``values`` (rows x series) with any finite value; the row count when
    none has one (0 without series: no row is before the data then)."""
    if not values.size:
        return 0
    has = np.isfinite(values).any(axis=1)
    return int(np.argmax(has)) if has.any() else len(values)


def even_rows(n: int, max_rows: int) -> np.ndarray:
    """Indices of ``min(n, max_rows)`` rows spread evenly over ``n`` (all of them if they fit)."""
    k = min(n, max(1, max_rows))
    return (np.arange(k, dtype=np.int64) * n) // k


def fit_memory_bytes(rows: int, series: int, forest_rows: int, n_estimators: int) -> int:
    """Rough peak memory of one node's fit on ``rows`` x ``series`` (kept) training values.

    ``FIT_ARRAYS_PER_SERIES`` float64 arrays of the window, the isolation forest's sample of the
    one-sided surprises (float32, 4 per series) and its trees (at most 2 x 256 nodes each, about
    40 bytes a node while scikit-learn builds them). The input frame itself is not counted.
    """
    features = rows * series * FIT_ARRAYS_PER_SERIES * 8
    forest = min(rows, forest_rows) * series * 4 * 4 + n_estimators * 512 * 40
    return features + forest
