"""Detection quality metrics over 0/1 labels and 0/1 predictions (or scores).

All functions take 1-D arrays of equal length for one entity. Definitions:

- point-wise: precision/recall/F1 over individual points.
- point-adjusted: a labelled event counts as fully detected when any of its points is flagged
  (Xu et al., WWW'18). Known to flatter random scores; reported for comparison only.
- event-wise: recall = labelled events hit by at least one flagged point; precision = flagged runs
  (maximal runs of consecutive flagged points) that overlap a labelled event.
- composite F1: harmonic mean of event recall and point-wise precision (Garg et al., 2021).
- false alerts: flagged runs that overlap no labelled event, per day of test data.
- detection delay: for each labelled event hit, the first flagged point inside it minus its start
  (in steps, and in seconds at the entity's step); missed events are left out of the mean and
  counted as missed (``events - events_hit``).
- early event recall: labelled events hit within ``EARLY_STEPS`` of their start, over all events.
  The mean delay is set by the few long events caught late (one caught in its last row moves it
  by hundreds of steps) and says nothing of the events missed; this says how many incidents an
  on-call engineer hears of in time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

SECONDS_PER_DAY = 86400.0
# An event is caught early when its first alert comes at most this many steps after its start:
# the project's detection-delay target, in steps, on every dataset family.
EARLY_STEPS = 20


def runs(flags: np.ndarray) -> np.ndarray:
    """Maximal runs of true values as an (n, 2) array of ``[start, stop)`` indices."""
    f = np.asarray(flags, dtype=bool).astype(np.int8)
    if f.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    edges = np.diff(np.concatenate(([0], f, [0])))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    return np.stack([starts, stops], axis=1).astype(np.int64)


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / (tp + fn) if tp + fn > 0 else 0.0
    return p, r, _f1(p, r)


def point_adjust(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Predictions with every labelled event that has any flagged point flagged entirely."""
    y = np.asarray(labels, dtype=bool)
    out = np.asarray(pred, dtype=bool).copy()
    for a, b in runs(y):
        if out[a:b].any():
            out[a:b] = True
    return out


@dataclass
class Counts:
    """Additive counts for one entity; summing them pools entities."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    pa_tp: int = 0
    pa_fp: int = 0
    pa_fn: int = 0
    events: int = 0
    events_hit: int = 0
    flagged_runs: int = 0
    true_runs: int = 0
    false_runs: int = 0
    days: float = 0.0
    delay_steps: int = 0  # summed over the events hit
    delay_seconds: float = 0.0
    events_early: int = 0  # hit within EARLY_STEPS of their start

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


def event_delays(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per labelled event, steps from its start to its first flagged point; -1 where missed."""
    found = events(labels, pred)
    return np.array([-1 if e.delay_steps is None else e.delay_steps for e in found], dtype=np.int64)


@dataclass(frozen=True)
class Event:
    """One labelled event and how the predictions met it (indices into the entity's rows)."""

    start: int  # first labelled point
    stop: int  # one past the last
    first_flag: int | None  # first flagged point inside the event (None: missed)

    @property
    def delay_steps(self) -> int | None:
        return None if self.first_flag is None else self.first_flag - self.start


def events(labels: np.ndarray, pred: np.ndarray) -> list[Event]:
    """The labelled events in order, each with its first flagged point."""
    p = np.asarray(pred, dtype=bool)
    out = []
    for a, b in runs(np.asarray(labels, dtype=bool)).tolist():
        hit = np.flatnonzero(p[a:b])
        out.append(Event(a, b, a + int(hit[0]) if hit.size else None))
    return out


def counts(
    labels: np.ndarray,
    pred: np.ndarray,
    days: float | None = None,
    step_seconds: float | None = None,
) -> Counts:
    """Count what the metrics need for one entity (``days`` defaults to one point a minute;
    ``step_seconds``, the grid step for delays in seconds, to ``days`` over the points)."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    pa = point_adjust(y, p)
    events = runs(y)
    flagged = runs(p)
    delays = event_delays(y, p)
    caught = delays[delays >= 0]
    true_runs = sum(bool(y[a:b].any()) for a, b in flagged)
    days = float(days) if days is not None else y.size / 1440.0
    if step_seconds is None:
        step_seconds = days * SECONDS_PER_DAY / y.size if y.size else 60.0
    return Counts(
        tp=int(np.sum(y & p)),
        fp=int(np.sum(~y & p)),
        fn=int(np.sum(y & ~p)),
        pa_tp=int(np.sum(y & pa)),
        pa_fp=int(np.sum(~y & pa)),
        pa_fn=int(np.sum(y & ~pa)),
        events=len(events),
        events_hit=int(caught.size),
        flagged_runs=len(flagged),
        true_runs=true_runs,
        false_runs=len(flagged) - true_runs,
        days=days,
        delay_steps=int(caught.sum()),
        delay_seconds=float(caught.sum()) * float(step_seconds),
        events_early=int(np.sum(caught <= EARLY_STEPS)),
    )


@dataclass
class Metrics:
    point_precision: float
    point_recall: float
    point_f1: float
    pa_precision: float
    pa_recall: float
    pa_f1: float
    event_precision: float
    event_recall: float
    event_f1: float
    composite_f1: float
    false_alerts_per_day: float
    mean_delay_steps: float  # over the events hit (NaN when none is)
    mean_delay_seconds: float
    events_missed: int
    early_event_recall: float  # events hit within EARLY_STEPS of their start / events

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def metrics_from_counts(c: Counts) -> Metrics:
    """Metrics from (possibly pooled) counts."""
    pp, pr, pf = _prf(c.tp, c.fp, c.fn)
    ap, ar, af = _prf(c.pa_tp, c.pa_fp, c.pa_fn)
    er = c.events_hit / c.events if c.events else 0.0
    ep = c.true_runs / c.flagged_runs if c.flagged_runs else 0.0
    return Metrics(
        point_precision=pp,
        point_recall=pr,
        point_f1=pf,
        pa_precision=ap,
        pa_recall=ar,
        pa_f1=af,
        event_precision=ep,
        event_recall=er,
        event_f1=_f1(ep, er),
        composite_f1=_f1(pp, er),
        false_alerts_per_day=c.false_runs / c.days if c.days > 0 else 0.0,
        mean_delay_steps=c.delay_steps / c.events_hit if c.events_hit else float("nan"),
        mean_delay_seconds=c.delay_seconds / c.events_hit if c.events_hit else float("nan"),
        events_missed=c.events - c.events_hit,
        early_event_recall=c.events_early / c.events if c.events else 0.0,
    )


def evaluate(labels: np.ndarray, pred: np.ndarray, days: float | None = None) -> Metrics:
    """All metrics for one entity."""
    return metrics_from_counts(counts(labels, pred, days))


def best_point_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best point-wise F1 over all thresholds on ``scores`` (higher = more anomalous).

    Returns ``(f1, threshold)``; flags are ``scores >= threshold``. An oracle number: it uses the
    labels to choose the threshold, so it says how good the ranking is, not what would have alerted.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    pos = int(y.sum())
    if pos == 0 or s.size == 0:
        return 0.0, float("inf")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    tp = np.cumsum(y[order])
    k = np.arange(1, s.size + 1)
    # Only the last index of each tied score is a valid cut.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp, k, cut = tp[last], k[last], s_sorted[last]
    f1 = 2 * tp / (k + pos)
    i = int(np.argmax(f1))
    return float(f1[i]), float(cut[i])
