"""The analyzer's live loop: read the latest rows per node, score them, decide, alert.

Per node the state moves cold start → fitted (→ stale when a refit is overdue or failing).
Scoring happens every ``model.step``; fits run in the background (process pool or Dask) and
swap in when done; fitted models are persisted atomically and loaded at start, so a restart
opens no blind window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

from dcwatch.detectors.alerting.alerts import Alert, build_alert
from dcwatch.detectors.alerting.alerts import Contributor as AlertContributor
from dcwatch.detectors.alerting.sender import AlertSender
from dcwatch.detectors.config import AnalyzerConfig
from dcwatch.detectors.decisions import Contributor
from dcwatch.detectors.frame import Frame, latest_range, split_column
from dcwatch.detectors.models.fitting import FitBackend, ModelStore, fit_group, report_selection
from dcwatch.detectors.models.node import ModelConfig, NodeModel
from dcwatch.detectors.sources.base import Source, SourceError, fetch_some
from dcwatch.detectors.timeline import Timeline
from dcwatch.urls import redact_text

log = logging.getLogger("dcwatch.analyzer")

ANOMALY_ALERT = "DcwatchNodeAnomaly"
BACKFILL_POINTS = 240  # after a pause, score at most this many missed steps per node
BACKFILL_ROWS = 50_000  # node-rows one backfill read holds at most (x 30 series: 1.5 M points)
LOG_LINES = 20  # per pass, one log line per new anomaly up to this many, then one summary
PROBE_POINTS = 16  # grid times of the probe telling whether (and since when) a node has history
FIT_BATCH = 200  # nodes read at once for a group's fit (bounds one read's memory)


@dataclass
class NodeState:
    """What the service knows of one node, for /metrics, the page and alerts."""

    instance: str
    status: str = "cold_start"  # cold_start | fitted | stale
    model: NodeModel | None = None
    score: float | None = None
    anomaly: bool = False
    contributors: list[Contributor] = field(default_factory=list)
    fit_duration: float = 0.0
    fit_error: str = ""
    next_fit_try: float = 0.0
    fitting: bool = False
    scored_rows: int = 0
    seen: int = -1  # the last pass whose read had this node (``Analyzer.passes`` then)
    alert_key: str = ""  # the firing alert's identity, fixed for the whole incident
    device: dict[str, str] = field(default_factory=dict)  # implicated gpu/device, fixed too
    # [start, end] of recent alerts (end None while open): a refit does not learn from them, so
    # an incident that lasts days does not become "normal".
    alert_spans: list[list[float | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Health:
    """What ``/healthz`` says: ``degraded`` while something is failing, with one reason each;
    ``info`` notes normal states worth knowing (cold start); ``ready`` once the source has
    answered at least once."""

    reasons: tuple[str, ...]
    info: tuple[str, ...]
    ready: bool

    @property
    def status(self) -> str:
        return "degraded" if self.reasons else "ok"


class Analyzer:
    """Owns node states and the scoring loop; fits run on ``backend``.

    A ``backend`` passed in is started and closed by whoever passed it (the app shares one with
    the capacity planner); without one the analyzer makes, starts and closes its own.
    """

    def __init__(
        self,
        cfg: AnalyzerConfig,
        source: Source,
        sender: AlertSender,
        model_config: ModelConfig | None = None,
        *,
        backend: FitBackend | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.sender = sender
        base = model_config or ModelConfig(
            max_series=cfg.model.max_series, max_train_rows=cfg.model.max_train_rows
        )
        if cfg.model.alerts_per_week is not None:
            base = dataclasses.replace(
                base,
                decisions=dataclasses.replace(
                    base.decisions, alerts_per_week=cfg.model.alerts_per_week
                ),
            )
        self.model_config = base
        self.nodes: dict[str, NodeState] = {}
        self.timeline = Timeline(cfg.state_dir)  # last day of scores per node, kept on disk
        self.models = ModelStore(cfg.state_dir / "models")
        self._own_backend = backend is None
        self.backend = backend or FitBackend(cfg.model.workers, cfg.model.dask_scheduler)
        self.pass_duration = 0.0
        self.pass_phases = {"read": 0.0, "score": 0.0, "send": 0.0}  # of the last pass
        self.passes = 0
        self.source_errors = 0
        self.last_source_error = ""  # why the last read failed (redacted); "" once one succeeds
        self.failing_passes = 0  # consecutive passes that could not read the source
        self.last_source_success: float | None = None  # unix time of the last good read
        self._fit_slots = asyncio.Semaphore(max(1, cfg.model.workers))
        self._group_re = re.compile(cfg.model.group_by) if cfg.model.group_by else None
        self._tasks: set[asyncio.Task[None]] = set()
        # The pass's alert changes, sent together once scoring is done (one batch, not one
        # awaited call per node: a fleet-wide event makes thousands at once).
        self._fires: list[NodeState] = []
        self._resolves: list[str] = []
        self._read_s = self._send_s = 0.0  # the pass's read and send time so far

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._own_backend:
            await self.backend.start()
        for instance, model in self.models.load_all().items():
            if self.cfg.shard.owns(instance):  # a model left from another shard layout stays out
                self.nodes[instance] = NodeState(instance, status="fitted", model=model)
        if self.nodes:
            log.info("loaded %d fitted models from %s", len(self.nodes), self.models.dir)
        await asyncio.to_thread(self.timeline.load)
        # Alerts still firing from before a restart are kept; the first pass resolves them
        # if their node is back to normal.
        for rec in self.sender.firing():
            inst = rec.alert.labels.get("instance", "")
            if inst in self.nodes and rec.alert.labels.get("alertname") == ANOMALY_ALERT:
                node = self.nodes[inst]
                node.anomaly, node.alert_key = True, rec.key
                node.device = {
                    k: rec.alert.labels[k] for k in ("gpu", "device") if k in rec.alert.labels
                }

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_backend:
            await self.backend.close()
        await asyncio.to_thread(self.timeline.save, self.timeline.unsaved())
        await asyncio.to_thread(self.timeline.close)

    async def run(self) -> None:
        """Score every ``step`` seconds, on the step grid, until cancelled."""
        step = self.cfg.model.step
        while True:
            t0 = time.time()
            try:
                await self.score_pass(t0)
            except Exception:  # one bad pass must not stop the service
                log.exception("scoring pass failed; next pass in %gs", step)
            await asyncio.sleep(max(0.0, step - (time.time() - t0)))

    # -- scoring ---------------------------------------------------------------------------------
    async def score_pass(self, now: float) -> None:
        step = self.cfg.model.step
        t0 = time.perf_counter()
        self._read_s = self._send_s = 0.0
        try:
            points = self._points_needed(now)
            try:
                if self._backlog(points):
                    await self._backfill(now, points)
                    points = 2
                    await self._send()  # before the newest rows: one change per node a batch
                r0 = time.perf_counter()
                frames = await self.source.latest(step, points, now)
                self._read_s += time.perf_counter() - r0
            except Exception as e:  # source down: keep state, report, retry next step
                self.source_errors += 1
                self.failing_passes += 1
                self.last_source_error = describe_error(e)
                log.warning(
                    "source unavailable (%s); nodes keep their state, retry in %gs",
                    self.last_source_error,
                    step,
                )
                return
            if self.last_source_error:
                log.info("source answers again after %d failed passes", self.failing_passes)
            self.last_source_error, self.failing_passes = "", 0
            self.last_source_success = time.time()
            # New nodes first, so a group's first fit sees all the members that showed up
            # together.
            for instance in frames.keys() - self.nodes.keys():
                self.nodes[instance] = NodeState(instance)
                log.info(
                    "new node %s (group %s): cold start until %gs of history",
                    instance,
                    self.group_of(instance),
                    self.cfg.model.min_train,
                )
            due: list[NodeState] = []
            for instance, frame in frames.items():
                node = self.nodes[instance]
                node.seen = self.passes
                if node.model is not None:
                    self._score_node(node, frame)
                if self._fit_due(node, now):
                    due.append(node)
            del frames
            self._start_fits(due, now)
            self._update_staleness(now)
            self.passes += 1
            # Awaited here, so two saves never overlap (an older batch could win otherwise).
            await asyncio.to_thread(self.timeline.save, self.timeline.unsaved())
        finally:
            await self._send()  # what was scored is sent, even when a read then failed
            self.pass_duration = time.perf_counter() - t0
            self.pass_phases["read"] = self._read_s
            self.pass_phases["send"] = self._send_s
            self.pass_phases["score"] = self.pass_duration - self._read_s - self._send_s

    def _recent(self) -> list[NodeState]:
        """Nodes with a model that the last read had (all of them before the first read): those
        whose missed rows a pass reads. A node that left the fleet is not among them."""
        return [
            n
            for n in self.nodes.values()
            if n.model is not None
            and math.isfinite(n.model.last_ts_)
            and (n.seen == self.passes - 1 or self.passes == 0)
        ]

    def _backlog(self, points: int) -> bool:
        """Would one read of the missed rows of the whole fleet hold more than
        ``BACKFILL_ROWS`` node-rows (then ``_backfill`` reads them a batch of nodes at a time)?"""
        return points > 2 and points * len(self._recent()) > BACKFILL_ROWS

    async def _backfill(self, now: float, points: int) -> None:
        """After a pause (a restart, a source outage, a pass longer than the step), score the
        last ``points`` grid times of the nodes ``_recent`` lists a batch of nodes per read, so
        memory does not grow with nodes x pause; the pass's own read then needs 2 rows."""
        recent = self._recent()
        step = self.cfg.model.step
        start, end = latest_range(step, points, now)
        recent.sort(key=lambda n: n.model.last_ts_ if n.model is not None else 0.0)
        per = max(1, BACKFILL_ROWS // points)
        for lo in range(0, len(recent), per):
            batch = recent[lo : lo + per]
            oldest = batch[0].model.last_ts_ if batch[0].model is not None else start
            first = max(start, math.floor(oldest / step + 1e-9) * step)  # like starts batched
            r0 = time.perf_counter()
            frames = await fetch_some(self.source, first, end, step, [n.instance for n in batch])
            self._read_s += time.perf_counter() - r0
            for node in batch:
                if (frame := frames.get(node.instance)) is not None and node.model is not None:
                    self._score_node(node, frame)
            del frames

    def _points_needed(self, now: float) -> int:
        """Grid times the pass reads: back to the oldest newest-scored row of the nodes the last
        read had (at most ``BACKFILL_POINTS``), at least 2 (the new row and one already scored,
        which the model skips: a margin for a pass that runs early or late).

        The models keep their streaming state (feature history, smoothing tail) and Prometheus
        computes counter rates, so no older row is needed. A node that left the fleet is not
        counted: its old ``last_ts_`` would make every pass read the backfill for everyone."""
        last = [n.model.last_ts_ for n in self._recent() if n.model is not None]
        if not last:
            return 2
        behind = math.ceil((now - min(last)) / self.cfg.model.step - 1e-9)
        return max(2, min(BACKFILL_POINTS, behind))

    def _score_node(self, node: NodeState, frame: Frame) -> None:
        """Score the node's new rows; its alert change joins the pass's batch (``_send``)."""
        model = node.model
        assert model is not None
        new = frame.times > model.last_ts_
        if not new.any():
            return
        rows = Frame(frame.times[new], frame.columns, frame.values[new])
        result = model.score(rows)
        node.scored_rows += len(rows)
        if not len(result.ts):
            return
        self.timeline.record(node.instance, result)  # the node page's plots
        node.score = float(result.score[-1])
        was, node.anomaly = node.anomaly, bool(result.is_anomaly[-1])
        if node.anomaly and not was:
            node.alert_spans.append([float(result.ts[0]), None])
        elif was and not node.anomaly and node.alert_spans:
            end = result.ended_at()
            start = node.alert_spans[-1][0]
            node.alert_spans[-1][1] = end if start is None else max(end, start)
        if node.anomaly:
            node.contributors = next(
                (c for c in reversed(result.contributors) if c), node.contributors
            )
            self._fires.append(node)
        elif was:
            node.contributors, node.device = [], {}
            if node.alert_key:
                self._resolves.append(node.alert_key)
            node.alert_key = ""
            log.info("node %s back to normal; alert resolved", node.instance)

    def _alert(self, node: NodeState):
        contributors = [
            AlertContributor(c.series, c.observed, c.expected) for c in node.contributors
        ]
        if not node.alert_key:  # a new incident: the top contributor names the device
            node.device = {}
            for c in node.contributors[:1]:
                _, label, value = split_column(c.series)
                if label in ("gpu", "device") and value is not None:
                    node.device[label] = value
        top = node.contributors[0].series if node.contributors else "several series"
        return build_alert(
            self.cfg.alerting,
            alertname=ANOMALY_ALERT,
            severity="warning",
            instance=node.instance,
            summary=f"{node.instance} behaves unlike its history ({top})",
            contributors=contributors,
            score=node.score,
            gpu=node.device.get("gpu"),
            device=node.device.get("device"),
        )

    async def _send(self) -> None:
        """Send the alert changes collected since the last call: the alerts of the nodes still
        anomalous (new ones, and updated observations of those already firing) and the
        resolutions. One log line per new anomaly up to ``LOG_LINES`` a pass, then a summary."""
        fires, resolves = self._fires, self._resolves
        self._fires, self._resolves = [], []
        if not fires and not resolves:
            return
        alerts: list[Alert] = []
        new = 0
        for node in fires:
            alert = self._alert(node)
            if not node.alert_key:
                new += 1
                if new <= LOG_LINES:
                    log.warning(
                        "anomaly on %s (score %.2f): %s",
                        node.instance,
                        node.score or 0,
                        "; ".join(c.describe() for c in node.contributors) or "no detail",
                    )
            node.alert_key = alert.key
            alerts.append(alert)
        if new > LOG_LINES:
            log.warning(
                "and %d more nodes anomalous in this pass (every one is in the alert history "
                "and /api/alerts)",
                new - LOG_LINES,
            )
        t0 = time.perf_counter()
        await self.sender.apply(fire=alerts, resolve=resolves)
        self._send_s += time.perf_counter() - t0

    # -- fitting ---------------------------------------------------------------------------------
    def _fit_due(self, node: NodeState, now: float) -> bool:
        if node.fitting or now < node.next_fit_try:
            return False
        return node.model is None or now - node.model.fitted_at_ >= self.cfg.model.refit_interval

    def group_of(self, instance: str) -> str:
        """The node's model group: ``model.group_by``'s first capture group (or whole match) on
        the instance name; a node that does not match, or no ``group_by``, is its own group."""
        if self._group_re is None:
            return instance
        m = self._group_re.search(instance)
        if m is None:
            return instance
        return m.group(1) if m.groups() and m.group(1) is not None else m.group(0)

    def request_fit(self, instance: str, now: float | None = None) -> bool:
        """Start a fit of ``instance`` (with the other members of its group) on the history up to
        ``now`` in the background (also the on-demand refit); False if unknown or fitting."""
        node = self.nodes.get(instance)
        if node is None or node.fitting:
            return False
        return self._start_fits([node], time.time() if now is None else now) > 0

    def _start_fits(self, nodes: list[NodeState], now: float) -> int:
        """One background round fitting ``nodes`` with the other members of their groups: one
        history probe for them all (a few requests, not a few per node), then a fit per group
        with enough history. Returns the number of groups."""
        wanted = {self.group_of(n.instance) for n in nodes if not n.fitting}
        if not wanted:
            return 0
        groups: dict[str, list[NodeState]] = {}
        for n in self.nodes.values():
            if not n.fitting and (g := self.group_of(n.instance)) in wanted:
                groups.setdefault(g, []).append(n)
        for n in (n for members in groups.values() for n in members):
            n.fitting = True
        task = asyncio.create_task(self._fit_round(list(groups.values()), now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return len(groups)

    async def _fit_round(self, groups: list[list[NodeState]], now: float) -> None:
        """Probe the groups' members, then fit each group's members that have the history."""
        m = self.cfg.model
        members = [n for g in groups for n in g]
        try:
            since = await self._history_since(members, now)
        except BaseException as e:
            for n in members:
                n.fitting = False
            if isinstance(e, asyncio.CancelledError):
                raise
            self._fit_failed(members, now, e)
            return
        later = now + max(m.step, min(300.0, m.min_train / 4))
        fits = []
        for g in groups:
            for n in g:
                if n.instance not in since:  # cold start: looked at again later, nothing read
                    n.next_fit_try, n.fitting = later, False
            ready = [n for n in g if n.instance in since]
            if ready:
                fits.append(self._fit(ready, since, now))
        await asyncio.gather(*fits)

    def _fit_failed(self, members: list[NodeState], now: float, e: BaseException) -> None:
        error = describe_error(e)
        for n in members:
            n.fit_error = error
            n.next_fit_try = now + 300
        log.error(
            "fit of %s failed: %s; keeps its old model, retry in 300s",
            ", ".join(n.instance for n in members[:10]) + (", ..." if len(members) > 10 else ""),
            error,
        )

    async def wait_fits(self) -> None:
        """Wait for the fits under way (tests, shutdown)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _fit(self, members: list[NodeState], since: dict[str, float], now: float) -> None:
        """Fit a group's members that have ``min_train`` of history: one model per node when
        the group has a single such member, else one shared detector (``fit_group``)."""
        m = self.cfg.model
        try:
            async with self._fit_slots:
                ready = await self._training_frames(members, since, now)
                for n in members:
                    if n.instance not in ready:  # not enough history yet: looked at again later
                        n.next_fit_try = now + max(m.step, min(300.0, m.min_train / 4))
                if not ready:
                    return
                excludes = {i: self._alerted_rows(self.nodes[i], f.times) for i, f in ready.items()}
                t0 = time.perf_counter()
                if len(ready) == 1:
                    ((inst, frame),) = ready.items()
                    models = {
                        inst: await self.backend.fit(frame, self.model_config, excludes[inst])
                    }
                else:
                    blobs = await self.backend.run(fit_group, ready, self.model_config, excludes)
                    models = {i: NodeModel.loads(b) for i, b in blobs.items()}
                took = time.perf_counter() - t0
            for inst, model in models.items():
                member = self.nodes[inst]
                report_selection(inst, model)
                if member.model is not None:
                    model.carry_alert(member.model)  # an open incident stays open
                await asyncio.to_thread(self.models.save, inst, model)
                # Rows scored since the fit's frame was read are re-scored by the new model.
                member.model, member.status, member.fit_error = model, "fitted", ""
                member.fit_duration, member.next_fit_try = took, 0.0
            log.info(
                "fitted %s in %.2fs (%d series)",
                ", ".join(models),
                took,
                len(next(iter(models.values())).series),
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fit_failed(members, now, e)
        finally:
            for n in members:
                n.fitting = False

    async def _history_since(self, members: list[NodeState], now: float) -> dict[str, float]:
        """When the history of each member with data at or before ``now - min_train`` starts
        (within a probe step; cold-start members are left out), from two small probes: a
        coarse one over the training window (``PROBE_POINTS`` grid times per series) and a
        fine one over its last steps. Nothing is read at full resolution here."""
        m = self.cfg.model
        names = [n.instance for n in members]
        span = m.train_window - m.min_train
        pstep = max(m.step, span / PROBE_POINTS)
        end = now - m.min_train
        first = now - m.train_window
        since: dict[str, float] = {}
        # The fine probe looks one step past ``end``: the training read's row count decides.
        fine = (end - 2 * m.step, end + m.step, m.step, end - pstep)
        for lo, hi, step, earliest in (fine, (first, end, pstep, None)):
            probe = await fetch_some(self.source, lo, hi, step, names)
            for inst, f in probe.items():
                has = np.isfinite(f.values).any(axis=1)
                if has.any():
                    t = float(f.times[np.argmax(has)]) - pstep if earliest is None else earliest
                    since[inst] = max(first, min(t, since.get(inst, t)))
            del probe
        return since

    async def _training_frames(
        self, members: list[NodeState], since: dict[str, float], now: float
    ) -> dict[str, Frame]:
        """The members' training frames, each from where its history starts, ``FIT_BATCH``
        nodes per read; only those with ``min_train`` of rows. A fit never reads the fleet, nor
        the training window of a node in cold start."""
        m = self.cfg.model
        order = sorted((n.instance for n in members), key=since.__getitem__)  # like starts
        ready: dict[str, Frame] = {}
        for lo in range(0, len(order), FIT_BATCH):
            batch = order[lo : lo + FIT_BATCH]
            frames = await fetch_some(self.source, since[batch[0]], now, m.step, batch)
            for inst, frame in frames.items():
                if inst in since and _rows(frame) * m.step >= m.min_train:
                    ready[inst] = frame
        return ready

    def _alerted_rows(self, node: NodeState, times: np.ndarray) -> np.ndarray | None:
        """Rows of the training window that fell inside an alert (not to be learnt as normal)."""
        if len(times):
            node.alert_spans = [s for s in node.alert_spans if s[1] is None or s[1] >= times[0]]
        if not node.alert_spans:
            return None
        mask = np.zeros(len(times), dtype=bool)
        for start, end in node.alert_spans:
            mask |= (times >= start) & (times <= (np.inf if end is None else end))
        return mask

    def _update_staleness(self, now: float) -> None:
        limit = 2 * self.cfg.model.refit_interval
        for node in self.nodes.values():
            if node.model is None:
                node.status = "cold_start"
            elif node.fit_error or now - node.model.fitted_at_ > limit:
                node.status = "stale"
            else:
                node.status = "fitted"

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> Health:
        """Why the analyzer is not doing its job now (source, alert delivery, fits), if it is not.

        Cold start is not a failure: a new node needs ``model.min_train`` of history first.
        """
        reasons: list[str] = []
        info: list[str] = []
        if self.last_source_error:
            reasons.append(
                f"source: {self.last_source_error} ({self.failing_passes} failed "
                f"pass{'es' if self.failing_passes != 1 else ''} in a row; nodes keep their state)"
            )
        reasons += [f"alerts: {p}" for p in self.sender.problems()]
        for has_model, what in ((False, "no model"), (True, "an old model")):
            failed = sorted(
                (
                    n
                    for n in self.nodes.values()
                    if n.fit_error and (n.model is not None) == has_model
                ),
                key=lambda n: n.instance,
            )
            if failed:
                reasons.append(
                    f"fits: {len(failed)} node(s) have {what}, fit failed "
                    f"({failed[0].instance}: {failed[0].fit_error})"
                )
        cold = sum(n.status == "cold_start" and not n.fit_error for n in self.nodes.values())
        if cold:
            info.append(
                f"{cold} node(s) in cold start, collecting "
                f"{self.cfg.model.min_train:g}s of history before scoring"
            )
        if self.last_source_success is None and not self.last_source_error:
            info.append("waiting for the first read of the source")
        return Health(tuple(reasons), tuple(info), self.last_source_success is not None)


def _rows(frame: Frame) -> int:
    """Rows with at least one value."""
    return int(np.isfinite(frame.values).any(axis=1).sum())


def describe_error(e: BaseException) -> str:
    """One line for logs, /healthz and the page: a SourceError's own reason, else the exception's
    type and text; URL credentials removed, at most 500 characters."""
    text = str(e) if isinstance(e, SourceError) and str(e) else f"{type(e).__name__}: {e}"
    return redact_text(" ".join(text.split()))[:500]
