"""Decisions: score smoothing, threshold calibrated to an alert rate, alert state, contributors.

The threshold is set from *training* scores only. The training score is smoothed (rolling mean over
``smooth_points``), alert runs are declustered the way the alert rule merges them (gaps shorter
than ``hold_points``), and an exponential tail is fitted to the run peaks above a high quantile
(peaks-over-threshold, as in SPOT, Siffer et al. KDD'17). The threshold is where that tail predicts
``alerts_per_week`` runs per week: it extrapolates beyond the largest training score when the
training window is shorter than the wanted interval between alerts, instead of clamping to the
training maximum. On a short window (a minute at 1 s) that extrapolation rests on a few peaks, so
the tail's base keeps at least ``MIN_TAIL_POINTS`` scores above it, the tail is fitted to all of
them when the hold leaves fewer than ``MIN_TAIL_PEAKS`` alerts, and the threshold never asks less
than ``surprise_floor``: the surprise that independent features would reach by chance
``alerts_per_week`` times a week.

The alert rule then fires after ``for_points`` consecutive smoothed scores above the threshold
(like Prometheus ``for:``) and resolves after ``hold_points`` consecutive scores below ``release``
x threshold (like ``keep_firing_for``), so a single noisy point does not page and one incident is
one alert. The hold only waits to see whether the incident goes on: once the alert resolves, it
ends at its last row at or above the release level (``alert_rows``), so its length follows the
score instead of carrying a fixed tail of normal rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcwatch.detectors.backtest.evaluation import runs

SECONDS_PER_DAY = 86400.0
# Fewest training values an exponential tail is fitted to (here the scores above the tail's base
# ``u``, in ``models.residual`` each feature's top deviations): on short training the base moves
# down to keep that many, so the tail's scale rests on several points, not on the largest alone
# (its relative standard error is about 1 / sqrt of that).
MIN_TAIL_POINTS = 10
# Fewest alert peaks the tail's scale is fitted to; with fewer (a short window, a node's first
# hour, whose excursions the hold joins into one or two alerts) ``calibrate_threshold`` fits it to
# every score above the tail's base instead, at least ``MIN_TAIL_POINTS`` of them.
MIN_TAIL_PEAKS = 5


@dataclass(frozen=True)
class DecisionConfig:
    smooth_points: int = 3
    alerts_per_week: float = 0.35
    for_points: int = 1
    # Chosen by leave-one-family-out validation (``bench/detect_lofo.py``): an alert stays open
    # through 20 rows below ``release`` x threshold, so one incident's bursts are one alert; it
    # then ends at its last row at or above that level (``alert_rows``), not 20 rows later.
    hold_points: int = 20
    release: float = 0.8
    # The base of the tail fitted to the training run peaks (leave-one-family-out choice, like the
    # hold: the peaks above the 98th percentile, about twice as many as above the 99th, make a
    # steadier fit of the tail).
    tail_quantile: float = 0.98
    top_k: int = 3


@dataclass(frozen=True)
class Threshold:
    value: float
    base: float  # the tail quantile u of the smoothed training score
    tail_scale: float  # mean excess of run peaks over u
    runs_per_day: float  # training runs above u per day


def smooth(tail: np.ndarray, new: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean over ``points`` of ``new`` continuing after ``tail`` (the previous raw scores).

    Returns the smoothed new scores and the tail to keep for the next call.
    """
    new = np.asarray(new, dtype=float)
    if points <= 1:
        return new.copy(), np.zeros(0)
    full = np.concatenate([np.asarray(tail, dtype=float), new])
    c = np.concatenate([[0.0], np.cumsum(full)])
    k = len(tail)
    idx = np.arange(k, len(full))
    lo = np.maximum(idx + 1 - points, 0)
    out = (c[idx + 1] - c[lo]) / (idx + 1 - lo)
    return out, full[-(points - 1) :]


def _clusters(flags: np.ndarray, gap: int) -> np.ndarray:
    r = runs(flags)
    if len(r) <= 1 or gap <= 0:
        return r
    keep = np.concatenate([[True], (r[1:, 0] - r[:-1, 1]) >= gap])
    starts = r[keep, 0]
    ends = np.concatenate([r[np.flatnonzero(keep)[1:] - 1, 1], [r[-1, 1]]])
    return np.stack([starts, ends], axis=1)


def surprise_floor(step_seconds: float, tests: int, config: DecisionConfig) -> float:
    """The surprise (``-log10`` probability) that ``tests`` independent calibrated surprises per
    row, a row every ``step_seconds``, exceed ``config.alerts_per_week`` times a week by chance.

    An alert resting on one row's surprise below it would fire more often than wanted even if
    the training tail were known exactly: the least the threshold may ask (see
    ``calibrate_threshold``'s ``floor``). Over a long training window the fitted tail asks more
    and the floor does not bind; over a short one (a minute at 1 s) the tail is a long
    extrapolation from a few peaks, and the floor keeps a normal row from alerting."""
    rows_per_week = 7.0 * SECONDS_PER_DAY / max(step_seconds, 1e-9)
    return float(np.log10(max(rows_per_week * tests / max(config.alerts_per_week, 1e-9), 1.0)))


def calibrate_threshold(
    scores: np.ndarray, days: float, config: DecisionConfig, floor: float = 0.0
) -> Threshold:
    """Threshold on smoothed training ``scores`` for ``config.alerts_per_week`` alert runs, and
    at least ``floor``."""
    s = np.asarray(scores, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return Threshold(value=max(1.0, floor), base=0.0, tail_scale=0.0, runs_per_day=0.0)
    u = float(np.quantile(s, min(config.tail_quantile, 1.0 - MIN_TAIL_POINTS / s.size)))
    cl = _clusters(s > u, config.hold_points)
    days = max(days, 1e-9)
    if len(cl) == 0:
        # No excursion above the quantile at all (flat score): demand a clear step above it.
        spread = float(u - np.median(s))
        t = max(u + max(spread, 1.0), floor)
        return Threshold(value=t, base=u, tail_scale=0.0, runs_per_day=0.0)
    # Alerts are counted and the tail fitted to their peaks as the rule would raise them. When
    # the hold joins a short window's excursions into fewer than MIN_TAIL_PEAKS alerts, the tail
    # is fitted to every score above u instead: a scale from two or three peaks, multiplied by
    # the log of the rate ratio (about 14 for a first fit on 90 s), moved the threshold of one
    # demo node fourfold between fits a second apart. The rate still counts alerts.
    if len(cl) >= MIN_TAIL_PEAKS:
        excess = np.array([s[a:b].max() for a, b in cl]) - u
    else:
        excess = s[s > u] - u
    beta = float(np.mean(excess))
    if beta <= 0:
        beta = max(float(u - np.median(s)), 1.0)
    rate = len(cl) / days
    target = max(config.alerts_per_week / 7.0, 1e-9)
    t = u + beta * max(np.log(rate / target), 0.0)
    # Scores are divided by the threshold: keep it positive whatever the training scores were.
    return Threshold(value=max(float(t), floor, 1e-6), base=u, tail_scale=beta, runs_per_day=rate)


@dataclass
class AlertState:
    """Per-node alert state carried between scoring calls."""

    active: bool = False
    above: int = 0
    below: int = 0


def apply_rule(
    scores: np.ndarray, state: AlertState, config: DecisionConfig
) -> tuple[np.ndarray, AlertState]:
    """Alert flags for normalised smoothed ``scores`` (1.0 = threshold), updating ``state``."""
    s = np.asarray(scores, dtype=float)
    out = np.zeros(s.size, dtype=bool)
    active, above, below = state.active, state.above, state.below
    need_on = max(1, config.for_points)
    need_off = max(1, config.hold_points)
    release = config.release
    for i, v in enumerate(s.tolist()):
        if active:
            below = below + 1 if v < release else 0
            if below >= need_off:
                active, above, below = False, 0, 0
        else:
            above = above + 1 if v > 1.0 else 0
            if above >= need_on:
                active, below = True, 0
        out[i] = active
    return out, AlertState(active=active, above=above, below=below)


def alert_rows(
    scores: np.ndarray, firing: np.ndarray, was_firing: bool, config: DecisionConfig
) -> tuple[np.ndarray, int | None]:
    """The rows that belong to an alert, from one ``apply_rule`` call's ``firing`` flags (and
    whether the alert was firing before the call): an alert that resolves in the call ends at
    its last row at or above ``release``, so the hold rows after it (which only waited to see the
    incident go on) are not part of it. Rows of an alert still firing at the end of the call stay
    flagged: it may yet go on.

    Also returns the row at which the last alert resolved in the call (None if none did); the
    alert's last row is ``hold_points`` rows before it (possibly in an earlier call)."""
    flags = np.asarray(firing, dtype=bool)
    if not flags.size or not (was_firing or flags.any()):  # the usual live call: nothing fires
        return flags, None
    before = np.empty_like(flags)
    before[0], before[1:] = was_firing, flags[:-1]
    ends = np.flatnonzero(before & ~flags)
    if not ends.size:
        return flags, None
    s = np.asarray(scores, dtype=float)
    out = flags.copy()
    for i in ends.tolist():
        j = i - 1
        while j >= 0 and out[j] and s[j] < config.release:
            out[j] = False
            j -= 1
    return out, int(ends[-1])


@dataclass(frozen=True)
class Contributor:
    """One series that drove an anomaly, with what was seen and what the model expected."""

    series: str
    feature: str  # "short" (vs recent median) or "season" (vs daily profile + level)
    observed: float
    expected: float
    surprise: float  # -log10 of the training probability of a deviation this large

    def describe(self) -> str:
        return (
            f"{self.series} {self.observed:.4g} (expected {self.expected:.4g}, "
            f"{self.feature}, p~1e-{self.surprise:.1f})"
        )


def top_contributors(
    surprises: np.ndarray,
    observed: np.ndarray,
    expected: np.ndarray,
    names: list[str],
    k: int,
) -> list[Contributor]:
    """The ``k`` features of one row with the largest surprise, one per series."""
    order = np.argsort(-surprises, kind="stable")
    out: list[Contributor] = []
    seen: set[str] = set()
    for j in order:
        series, _, feature = names[j].rpartition(":")
        if series in seen or surprises[j] <= 0:
            continue
        seen.add(series)
        out.append(
            Contributor(
                series=series,
                feature=feature,
                observed=float(observed[j]),
                expected=float(expected[j]),
                surprise=float(surprises[j]),
            )
        )
        if len(out) >= k:
            break
    return out
