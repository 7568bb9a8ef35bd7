"""What each node's page plots: the last day of anomaly scores, and for the current or latest
alert, what its top contributing series observed against what the model expected.

Fed by one call per node per scoring pass (:meth:`Timeline.record`); memory only (a restart
starts an empty day, the alert history itself is kept by :mod:`.alerting.history`).

Bounded: per node one ring of at most ``max_points`` buckets (``window / max_points`` seconds
each, keeping the bucket's highest score and whether any of it alerted), about 20 KB a node,
so 1,000 nodes cost about 20 MB. Contributor tracks exist only for nodes with a recent alert:
at most ``max_series`` series, ``max_points`` points each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dcwatch.detectors.features import History

if TYPE_CHECKING:
    from dcwatch.detectors.models.node import NodeModel, ScoreResult

BAND_SCALES = 3.0  # the band: expected + the residual's centre ± 3 robust scales (MAD)
POST_ROWS = 240  # rows still recorded after an alert resolves (the return to normal)


@dataclass
class Track:
    """One contributing series over an incident: observed, expected and the normal band."""

    series: str
    feature: str  # short | season: which expectation the model held it against
    ts: list[float] = field(default_factory=list)
    observed: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)

    def add(
        self, ts: np.ndarray, obs: np.ndarray, exp: np.ndarray, half: float, off: float
    ) -> None:
        self.ts += ts.tolist()
        self.observed += obs.tolist()
        self.expected += exp.tolist()
        self.lo += (exp + off - half).tolist()
        self.hi += (exp + off + half).tolist()

    def thin(self, limit: int) -> None:
        """Keep every other point once over ``limit`` (the plot is a few hundred pixels wide)."""
        if len(self.ts) > limit:
            for name in ("ts", "observed", "expected", "lo", "hi"):
                setattr(self, name, getattr(self, name)[::2])

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(
            np.asarray(a, dtype=float)
            for a in (self.ts, self.observed, self.expected, self.lo, self.hi)
        )


@dataclass
class Incident:
    """The current or latest alert of a node, as the scored rows saw it (data time)."""

    start: float
    end: float | None = None
    tracks: dict[str, Track] = field(default_factory=dict)
    rows_after: int = 0


class NodeTimeline:
    """One node's score ring and latest incident."""

    def __init__(self, max_points: int, bucket: float) -> None:
        self.bucket = bucket
        self.ts = np.full(max_points, np.nan)
        self.score = np.full(max_points, np.nan, dtype=np.float32)
        self.alert = np.zeros(max_points, dtype=bool)
        self.head = -1  # index of the newest bucket
        self.last_bucket = -1
        self.incident: Incident | None = None

    def add(self, t: float, score: float, alerting: bool) -> None:
        b = int(t // self.bucket)
        if b == self.last_bucket and self.head >= 0:
            i = self.head
            self.score[i] = np.nanmax([self.score[i], score])
            self.alert[i] |= alerting
            self.ts[i] = t
            return
        if b < self.last_bucket:  # older than what is held: a replay, ignored
            return
        self.head = (self.head + 1) % len(self.ts)
        self.last_bucket = b
        self.ts[self.head], self.score[self.head], self.alert[self.head] = t, score, alerting

    @property
    def last_ts(self) -> float | None:
        """Time of the newest scored row (the data's clock: the page's "now")."""
        return float(self.ts[self.head]) if self.head >= 0 else None

    def points(self, since: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, scores, alerting) since ``since``, oldest first."""
        order = np.roll(np.arange(len(self.ts)), -(self.head + 1))
        ts, sc, al = self.ts[order], self.score[order].astype(float), self.alert[order]
        keep = np.isfinite(ts) & (ts >= since)
        return ts[keep], sc[keep], al[keep]

    def alert_spans(self, since: float) -> list[tuple[float, float | None]]:
        """The alert intervals in the ring: (start, end), end None while still alerting."""
        ts, _, al = self.points(since)
        out: list[tuple[float, float | None]] = []
        start = None
        for t, a in zip(ts.tolist(), al.tolist(), strict=True):
            if a and start is None:
                start = t
            elif not a and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, None))
        return out


class Timeline:
    """Every node's :class:`NodeTimeline`; :meth:`record` is the service's hook."""

    def __init__(self, window: float = 86400.0, max_points: int = 1500, max_series: int = 3):
        self.window, self.max_points, self.max_series = window, max_points, max_series
        self.nodes: dict[str, NodeTimeline] = {}

    def get(self, instance: str) -> NodeTimeline | None:
        return self.nodes.get(instance)

    def record(self, instance: str, result: ScoreResult, model: NodeModel) -> None:
        """Add one scoring call's rows (``model`` has just scored them)."""
        node = self.nodes.get(instance)
        if node is None:
            node = self.nodes[instance] = NodeTimeline(
                self.max_points, self.window / self.max_points
            )
        flags = result.is_anomaly
        for t, s, a in zip(result.ts.tolist(), result.score.tolist(), flags.tolist(), strict=True):
            node.add(t, s, a)
        inc = node.incident
        if flags.any() and (inc is None or inc.end is not None):
            first = int(np.argmax(flags))
            inc = node.incident = Incident(start=float(result.ts[first]))
            self._add_series(inc, result)
            self._track(inc, model, len(result.ts), pre_roll=True)
            inc.rows_after = 0
        elif inc is not None and (inc.end is None or inc.rows_after < POST_ROWS):
            self._add_series(inc, result)
            self._track(inc, model, len(result.ts), pre_roll=False)
            if inc.end is not None:
                inc.rows_after += len(result.ts)
        if inc is not None and inc.end is None and not flags[-1]:
            inc.end = float(result.ts[-1])

    def _add_series(self, inc: Incident, result: ScoreResult) -> None:
        for row in result.contributors:
            for c in row:
                if c.series not in inc.tracks and len(inc.tracks) < self.max_series:
                    inc.tracks[c.series] = Track(c.series, c.feature)

    def _track(self, inc: Incident, model: NodeModel, n: int, pre_roll: bool) -> None:
        """Observed/expected of the tracked series for the newest ``n`` rows (all the history
        the model holds but its first half, when the incident starts: a pre-roll)."""
        if not inc.tracks or not model.fitted:
            return
        feats = model.features_
        h = model.history_
        split = len(h.ts) // 2 if pre_roll else len(h.ts) - n
        if split <= 0 or split >= len(h.ts):
            return
        block = feats.transform_values(
            h.ts[split:], h.values[split:], History(h.ts[:split], h.values[:split])
        )
        index = {name: j for j, name in enumerate(feats.feature_names_)}
        for tr in inc.tracks.values():
            j = index.get(f"{tr.series}:{tr.feature}")
            if j is None:
                continue
            half = BAND_SCALES * float(feats.scale_[j])
            tr.add(
                block.ts, block.observed[:, j], block.expected[:, j], half, float(feats.center_[j])
            )
            tr.thin(self.max_points)
