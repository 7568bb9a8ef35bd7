"""The node page's contributor plots, computed when the page is asked for: for the node's current
or latest alert, each top contributing series over the page's whole window (the last day), what
it observed against the expected value and normal band of the node's current model.

The alert comes from the scoring's memory (:class:`~dcwatch.detectors.timeline.Incident`) or,
after a restart, from the score ring's alert intervals and the persistent alert history (which
names the contributors). The values come from one bounded read of the source (the node, the
window and the features' warm-up, one timeout); only the contributors' features are computed
(a copy of the model's feature builder cut to those series), and each plot keeps at most
``PLOT_POINTS`` rows: per slice of the window the row furthest from its expected value, so a
short spike stays visible.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dcwatch.detectors.features import KINDS, FeatureBuilder
from dcwatch.detectors.models.persist import features_from_state, features_state
from dcwatch.detectors.service import ANOMALY_ALERT, describe_error
from dcwatch.detectors.sources.base import fetch_some

if TYPE_CHECKING:
    from dcwatch.detectors.alerting.history import PastAlert
    from dcwatch.detectors.frame import Frame
    from dcwatch.detectors.models.node import NodeModel
    from dcwatch.detectors.sources.base import Source
    from dcwatch.detectors.timeline import NodeTimeline

# The band: expected + the residual's centre ± (3 robust scales (MAD) + the feature's deadband).
BAND_SCALES = 3.0
PLOT_POINTS = 600  # rows per plot: about one per pixel of its width
READ_TIMEOUT = 10.0  # seconds the page waits for the source
MAX_SERIES = 3
# How far before a ring's alert interval the alert history's alert may have ended and still be
# taken as the same incident (the history's clock is the sender's, the ring's the data's).
SLACK = 300.0
# A series named in an alert's description: ``name`` or ``name{label="value"}``, then ``=``.
_SERIES = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*(?:\{[^{}]*\})?)=")


@dataclass(frozen=True)
class LatestAlert:
    """The alert whose contributors the page plots: its interval and top series, each with the
    feature the model held it against (None: not known, the one that deviated most is shown)."""

    start: float
    end: float | None
    series: tuple[tuple[str, str | None], ...]
    origin: str  # "scoring" (this process saw it) or "alert history" (from before a restart)


@dataclass(frozen=True, eq=False)
class Track:
    """One contributing series over the window: observed, expected and the normal band."""

    series: str
    feature: str  # short | season: which expectation the model held it against
    ts: np.ndarray
    observed: np.ndarray  # NaN where the source had no value
    expected: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True)
class Contributors:
    """What the page shows of the latest alert: ``note`` says why plots are missing."""

    alert: LatestAlert | None = None
    tracks: tuple[Track, ...] = field(default=())
    note: str = ""


def series_named(text: str) -> list[str]:
    """The series an alert's description names, in order (``top contributors: a=1 (...), ...``)."""
    _, _, tail = text.rpartition("top contributors:")
    out: list[str] = []
    for name in _SERIES.findall(tail):
        if name not in out:
            out.append(name)
    return out


def latest_alert(
    tl: NodeTimeline | None, history: list[PastAlert], since: float
) -> LatestAlert | None:
    """The node's current or latest anomaly alert active after ``since``; None if none.

    ``history`` is the node's alert history, newest first."""
    inc = tl.incident if tl is not None else None
    if inc is not None and inc.series and (inc.end is None or inc.end >= since):
        return LatestAlert(inc.start, inc.end, tuple(inc.series.items()), "scoring")
    spans = tl.alert_spans(since) if tl is not None else []
    past = [a for a in history if a.alertname == ANOMALY_ALERT]
    if spans:
        start, end = spans[-1]
        match = next(
            (a for a in past if a.resolved_at is None or a.resolved_at >= start - SLACK), None
        )
    else:
        match = next((a for a in past if a.resolved_at is None or a.resolved_at >= since), None)
        if match is None:
            return None
        start, end = match.starts_at, match.resolved_at
    named = series_named(match.description) if match is not None else []
    return LatestAlert(start, end, tuple((s, None) for s in named[:MAX_SERIES]), "alert history")


def feature_subset(feats: FeatureBuilder, columns: list[str]) -> FeatureBuilder:
    """A copy of the fitted ``feats`` that builds the features of ``columns`` only (in the model's
    order): the same values as the whole builder gives for them, at the cost of a few series.
    Goes through the persisted state, whose reader checks the copy is consistent."""
    keep = set(columns)
    col = [i for i, c in enumerate(feats.columns_) if c in keep]
    new_pos = {old: new for new, old in enumerate(col)}
    feat = [j for j, name in enumerate(feats.feature_names_) if name.rpartition(":")[0] in keep]
    state = features_state(feats) | {
        "columns": [feats.columns_[i] for i in col],
        "fill": feats.fill_[col],
        "profile": feats.profile_[:, col],
        "center": feats.center_[feat],
        "scale": feats.scale_[feat],
        "feature_names": [feats.feature_names_[j] for j in feat],
        "series_index": np.array([new_pos[int(feats.series_index_[j])] for j in feat]),
    }
    return features_from_state(state)


def thin(ts: np.ndarray, deviation: np.ndarray, t0: float, t1: float, n: int) -> np.ndarray:
    """Indices of at most ``n`` rows: per ``(t1 - t0) / n`` slice the row with the largest
    ``deviation`` (NaN counts least), in time order."""
    if len(ts) <= n:
        return np.arange(len(ts))
    slot = np.clip(((ts - t0) / max(t1 - t0, 1e-9) * n).astype(np.int64), 0, n - 1)
    dev = np.nan_to_num(deviation, nan=-1.0)
    order = np.lexsort((-dev, slot))
    first = np.r_[True, np.diff(slot[order]) != 0]
    return np.sort(order[first])


def compute_tracks(
    feats: FeatureBuilder, frame: Frame, alert: LatestAlert, t0: float, t1: float
) -> tuple[Track, ...]:
    """The tracks of ``alert``'s series the model knows, over ``[t0, t1]``; ``frame`` starts
    the features' warm-up earlier (``history_len_`` rows)."""
    known = set(feats.columns_)
    wanted = [(s, k) for s, k in alert.series if s in known]
    if not wanted:
        return ()
    sub = feature_subset(feats, [s for s, _ in wanted])
    ts, raw = sub.select(frame)
    block = sub.transform_values(ts, raw, None)
    shown = (ts >= t0) & (ts <= t1)
    during = shown & (ts >= alert.start) & (ts <= (np.inf if alert.end is None else alert.end))
    z = np.abs(block.z)
    index = {name: j for j, name in enumerate(sub.feature_names_)}
    out = []
    for series, kind in wanted:
        if kind not in KINDS:  # not known: the feature that deviated most during the alert
            rows = during if during.any() else shown
            kind = max(
                KINDS, key=lambda k: float(np.max(z[rows, index[f"{series}:{k}"]], initial=0))
            )
        j = index[f"{series}:{kind}"]
        col = sub.columns_.index(series)
        obs = np.where(np.isfinite(raw[:, col]), block.observed[:, j], np.nan)[shown]
        exp = block.expected[shown, j]
        pick = thin(ts[shown], np.abs(obs - exp), t0, t1, PLOT_POINTS)
        half = BAND_SCALES * float(sub.scale_[j]) + float(sub.deadband_[j])
        off = float(sub.center_[j])
        e = exp[pick]
        out.append(
            Track(series, kind, ts[shown][pick], obs[pick], e, e + off - half, e + off + half)
        )
    return tuple(out)


async def contributor_plots(
    source: Source,
    instance: str,
    model: NodeModel | None,
    alert: LatestAlert | None,
    t0: float,
    t1: float,
    timeout: float = READ_TIMEOUT,
) -> Contributors:
    """The plots of ``alert``'s contributors over ``[t0, t1]``, or why there are none."""
    if alert is None:
        return Contributors()
    if not alert.series:
        return Contributors(
            alert, note="Its contributors are not known (not in the alert history)."
        )
    if model is None or not model.fitted:
        return Contributors(alert, note="No fitted model: no expected values to plot.")
    feats = model.features_  # a refit replaces the model, never changes these in place
    if not any(s in feats.columns_ for s, _ in alert.series):
        return Contributors(alert, note="The current model no longer uses its contributors.")
    step = feats.step_
    try:
        frames = await asyncio.wait_for(
            fetch_some(source, t0 - feats.history_len_ * step, t1, step, [instance]), timeout
        )
    except TimeoutError:
        return Contributors(
            alert, note=f"No plots: the source did not answer within {timeout:g} s."
        )
    except Exception as e:
        return Contributors(
            alert, note=f"No plots: the source could not be read ({describe_error(e)})."
        )
    frame = frames.get(instance)
    if frame is None or not len(frame):
        return Contributors(
            alert, note="No plots: the source has no data of this node for the day."
        )
    tracks = await asyncio.to_thread(compute_tracks, feats, frame, alert, t0, t1)
    return Contributors(alert, tracks)
