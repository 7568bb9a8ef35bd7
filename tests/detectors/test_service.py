"""The analyzer service with a synthetic source: cold start, fit, anomaly alert, resolve,
persistence across a restart, on-demand refit, source outage, /metrics and the page; the app's
resources started in order and closed in reverse, also when one of them fails to start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from aiohttp import web

from dcwatch.detectors.alerting.alerts import build_alert
from dcwatch.detectors.alerting.sender import AlertSender
from dcwatch.detectors.capacity.planner import CapacityPlanner
from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.frame import Frame
from dcwatch.detectors.main import main as analyzer_main
from dcwatch.detectors.models.fitting import FitBackend
from dcwatch.detectors.models.node import ModelConfig, NodeModel
from dcwatch.detectors.service import BACKFILL_POINTS, Analyzer, NodeState
from dcwatch.detectors.sources.base import SourceError, TargetStatus
from dcwatch.detectors.sources.queries import NamedQuery
from dcwatch.detectors.web.app import ANALYZER, SENDER, make_app
from dcwatch.detectors.web.metrics import analyzer_families
from dcwatch.settings import ConfigError

STEP = 15.0
COLUMNS = ('gpu_temp{gpu="0"}', 'gpu_temp{gpu="1"}', "node_power", "rx_rate")


class FakeSource:
    """A node whose series are noisy but steady; ``fault`` makes GPU 1 overheat."""

    def __init__(self, start: float) -> None:
        self.t0 = start
        self.rng = np.random.default_rng(7)
        self.fault = False
        self.down = False
        self.cache: dict[float, np.ndarray] = {}

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def with_queries(self, queries: Sequence[NamedQuery]) -> FakeSource:
        return self  # no capacity series: the planner finds nothing to forecast

    def target_status(self) -> list[TargetStatus]:
        return []

    def _row(self, t: float) -> np.ndarray:
        if t not in self.cache:
            base = np.array([60.0, 61.0, 1800.0, 2e6])
            noise = self.rng.normal(0, [0.5, 0.5, 15.0, 5e4])
            self.cache[t] = base + noise
        row = self.cache[t].copy()
        if self.fault and t >= self.fault_from:
            row[1] += 30.0  # GPU 1 climbs far above anything seen
            row[2] += 400.0
        return row

    def _frame(self, start: float, end: float) -> Frame:
        times = np.arange(np.ceil(start / STEP) * STEP, end + 1e-9, STEP)
        times = times[times >= self.t0]
        return Frame(times, COLUMNS, np.array([self._row(t) for t in times]).reshape(-1, 4))

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        if self.down:
            raise OSError("connection refused")
        return {"node-1:9478": self._frame(start, end)}

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        assert now is not None
        return await self.fetch(now - (points - 1) * step, now, step)


def config(tmp_path: Path, *extra: str):
    return load_analyzer_config(
        [
            "--target",
            "http://node-1:9478/metrics",
            "--state-dir",
            str(tmp_path / "state"),
            "--model-min-train",
            "3h",
            "--model-workers",
            "0",
            *extra,
        ],
        env={},
    )


async def drive(app, src: FakeSource, start: float, end: float) -> None:
    an = app[ANALYZER]
    t = start
    while t <= end:
        await an.score_pass(t)
        await an.wait_fits()
        t += STEP


@pytest.fixture
def clock_start() -> float:
    return 1_700_000_000.0 // STEP * STEP


async def test_cold_start_fit_alert_resolve_restart(
    aiohttp_client, tmp_path: Path, clock_start: float
) -> None:
    t0 = clock_start
    src = FakeSource(t0)
    app = make_app(config(tmp_path), source=src, run_loop=False)
    client = await aiohttp_client(app)
    an = app[ANALYZER]

    # Cold start: one hour of history is not enough (min_train 3 h); the node says so.
    await drive(app, src, t0, t0 + 3600)
    assert an.nodes["node-1:9478"].status == "cold_start"
    body = await (await client.get("/metrics")).text()
    assert 'dcwatch_model_state{instance="node-1:9478",state="cold_start"} 1.0' in body

    # After 3 h it fits and scores quietly.
    await drive(app, src, t0 + 3600 + STEP, t0 + 4 * 3600)
    node = an.nodes["node-1:9478"]
    assert node.status == "fitted" and not node.anomaly
    assert node.model is not None and len(node.model.series) == 4
    assert list((tmp_path / "state/models").glob("*.model"))

    # A fault: GPU 1 overheats. The alert names the GPU and the contributors.
    src.fault, src.fault_from = True, t0 + 4 * 3600 + STEP
    await drive(app, src, src.fault_from, src.fault_from + 10 * STEP)
    assert node.anomaly
    assert node.contributors and node.contributors[0].series.startswith("gpu_temp")
    log_lines = [json.loads(x) for x in (tmp_path / "state/alerts.jsonl").read_text().splitlines()]
    fired = log_lines[-1]
    assert fired["labels"]["alertname"] == "DcwatchNodeAnomaly"
    assert fired["labels"]["instance"] == "node-1:9478"
    assert fired["labels"]["gpu"] == "1"
    assert 'gpu_temp{gpu="1"}' in fired["annotations"]["description"]
    body = await (await client.get("/metrics")).text()
    assert 'dcwatch_anomaly{instance="node-1:9478"} 1.0' in body
    assert "dcwatch_anomaly_contributor_surprise{" in body
    page = await (await client.get("/")).text()
    assert "DcwatchNodeAnomaly" in page and "node-1:9478" in page

    # A refit during the incident keeps it open, and does not learn the fault as normal: the
    # alerted rows are left out of its training.
    end = src.fault_from + 10 * STEP
    frame = (await src.fetch(end - 3600, end, STEP))["node-1:9478"]
    excluded = an._alerted_rows(node, frame.times)
    assert excluded is not None and excluded[frame.times >= src.fault_from + 2 * STEP].all()
    assert not excluded[frame.times < src.fault_from].any()
    old_model = node.model
    assert an.request_fit("node-1:9478", end)
    await an.wait_fits()
    assert node.model is not old_model
    assert node.model.alert_.active  # the incident's state carried over, not reset
    await drive(app, src, src.fault_from + 11 * STEP, src.fault_from + 12 * STEP)
    assert node.anomaly

    # Back to normal: the alert resolves (endsAt set), within a few minutes.
    src.fault = False
    await drive(app, src, src.fault_from + 13 * STEP, src.fault_from + 40 * STEP)
    assert not node.anomaly
    last = json.loads((tmp_path / "state/alerts.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "resolved"
    # The alert interval (which the next refit leaves out) ends at its last anomalous row, not
    # at the row that resolved it after the hold.
    start, stop = node.alert_spans[-1]
    hold = ModelConfig().decisions.hold_points
    assert start is not None and stop is not None
    assert src.fault_from <= start and src.fault_from + 12 * STEP <= stop  # the whole fault
    assert stop <= src.fault_from + (40 - hold) * STEP  # resolved by row 40, after the hold

    # On-demand refit.
    r = await client.post("/api/refit?instance=node-1:9478")
    assert r.status == 202 and (await r.json())["refitting"] == ["node-1:9478"]
    assert (await client.post("/api/refit?instance=nope")).status == 404

    # A source outage is reported and the node keeps its model.
    src.down = True
    await an.score_pass(src.fault_from + 41 * STEP)
    assert an.source_errors == 1 and node.model is not None
    await client.close()

    # Restart: the model is loaded from disk, no cold start window.
    src.down = False
    app2 = make_app(config(tmp_path), source=src, run_loop=False)
    client2 = await aiohttp_client(app2)
    node2 = app2[ANALYZER].nodes["node-1:9478"]
    assert node2.status == "fitted" and node2.model is not None
    await client2.close()


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    f = tmp_path / "analyzer.yaml"
    f.write_text("model:\n  workers: many\n")
    with pytest.raises(ConfigError, match=f"config file {f}: key 'model.workers'"):
        load_analyzer_config(["--config", str(f), "--target", "http://x:1/metrics"], env={})
    with pytest.raises(ConfigError, match="no data source"):
        load_analyzer_config([], env={})
    f.write_text("capacity_rules: {a: 1}\ntargets: [http://x:1/metrics]\n")
    with pytest.raises(ConfigError, match="capacity_rules"):
        load_analyzer_config(["--config", str(f)], env={})


class LifecycleSource(FakeSource):
    """FakeSource that records its start and close, and fails where told to."""

    def __init__(self, start: float, events: list[str], fail: str = "") -> None:
        super().__init__(start)
        self.events, self.fail = events, fail

    async def start(self) -> None:
        self.events.append("source.start")
        if self.fail == "start":
            raise OSError("prometheus unreachable")

    async def close(self) -> None:
        self.events.append("source.close")

    def with_queries(self, queries: Sequence[NamedQuery]) -> FakeSource:
        if self.fail == "views":
            raise RuntimeError("cannot read capacity queries")
        return self


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Starts and closes of the app's resources, in the order they happen."""
    seen: list[str] = []

    def record(cls: type, method: str, label: str) -> None:
        real = getattr(cls, method)

        async def wrapper(self: object, *args: Any, **kw: Any) -> Any:
            seen.append(label)
            return await real(self, *args, **kw)

        monkeypatch.setattr(cls, method, wrapper)

    for cls, start, close, name in (
        (AlertSender, "start", "stop", "sender"),
        (FitBackend, "start", "close", "backend"),
        (Analyzer, "start", "close", "analyzer"),
        (CapacityPlanner, "start", "close", "planner"),
    ):
        record(cls, start, f"{name}.start")
        record(cls, close, f"{name}.close")
    return seen


def live_loops() -> list[str]:
    names = ("dcwatch-scoring", "dcwatch-capacity")
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name() in names and not t.done()]


async def test_first_resource_failing_to_start_stops_the_app(
    tmp_path: Path, clock_start: float, events: list[str]
) -> None:
    src = LifecycleSource(clock_start, events, fail="start")
    runner = web.AppRunner(make_app(config(tmp_path), source=src))
    with pytest.raises(OSError, match="prometheus unreachable"):
        await runner.setup()
    await runner.cleanup()
    # The source is closed after its own failed start; nothing after it was started.
    assert events == ["source.start", "source.close"]


async def test_last_resource_failing_to_start_closes_the_others(
    tmp_path: Path, clock_start: float, events: list[str]
) -> None:
    src = LifecycleSource(clock_start, events, fail="views")  # the capacity planner's step
    runner = web.AppRunner(make_app(config(tmp_path), source=src))  # scoring loop running
    with pytest.raises(RuntimeError, match="cannot read capacity queries"):
        await runner.setup()
    started = ["source.start", "sender.start", "backend.start", "analyzer.start"]
    assert events == started and live_loops() == ["dcwatch-scoring"]
    await runner.cleanup()
    assert events[len(started) :] == [
        "analyzer.close",
        "backend.close",
        "sender.close",
        "source.close",
    ]
    assert live_loops() == []


async def test_app_closes_every_resource_in_reverse_order(
    tmp_path: Path, clock_start: float, events: list[str]
) -> None:
    runner = web.AppRunner(make_app(config(tmp_path), source=LifecycleSource(clock_start, events)))
    await runner.setup()
    order = ["source", "sender", "backend", "analyzer", "planner"]
    assert events == [f"{r}.start" for r in order] and "dcwatch-scoring" in live_loops()
    await runner.cleanup()
    assert events[len(order) :] == [f"{r}.close" for r in reversed(order)]
    assert live_loops() == []


# --- honest health ----------------------------------------------------------------------------


class FlakySource(FakeSource):
    """FakeSource whose reads raise SourceError (with a reason) while ``broken`` is set."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.broken = ""

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        if self.broken:
            raise SourceError(self.broken)
        return await super().fetch(start, end, step)


async def health(client: Any, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    r = await client.get(path)
    return r.status, await r.json()


async def test_healthz_is_degraded_with_the_source_error_and_recovers(
    aiohttp_client: Any, tmp_path: Path, clock_start: float
) -> None:
    src = FlakySource(clock_start)
    app = make_app(config(tmp_path), source=src, run_loop=False)
    client = await aiohttp_client(app)
    an = app[ANALYZER]

    # Before the first read: alive, not ready.
    status, body = await health(client, "/readyz")
    assert status == 503 and body["status"] == "ok" and body["ready"] is False

    # A broken source: 200 (liveness) but degraded, with the reason and no credentials.
    src.broken = "embedded store http://u:s3cret@x/ corrupt: database disk image is malformed"
    await an.score_pass(clock_start)
    status, body = await health(client)
    assert status == 200 and body["status"] == "degraded"
    (reason,) = body["reasons"]
    assert reason.startswith("source: embedded store http://x/ corrupt: database disk image")
    assert "1 failed pass in a row" in reason and "s3cret" not in json.dumps(body)
    assert (await health(client, "/readyz"))[0] == 503
    await an.score_pass(clock_start + STEP)
    assert "2 failed passes in a row" in (await health(client))[1]["reasons"][0]

    # A good read: ok again, ready, and the node's cold start is information, not a failure.
    src.broken = ""
    await an.score_pass(clock_start + 2 * STEP)
    await an.wait_fits()
    status, body = await health(client)
    assert (status, body["status"], body["reasons"]) == (200, "ok", [])
    assert body["nodes"] == {"cold_start": 1}
    assert any("1 node(s) in cold start" in i for i in body["info"])
    assert (await health(client, "/readyz"))[0] == 200

    # Failing later reads make it degraded again; readiness stays (it has data to serve).
    src.broken = "prometheus http://p:9090: every query failed: HTTP 503"
    await an.score_pass(clock_start + 3 * STEP)
    status, body = await health(client, "/readyz")
    assert status == 200 and body["status"] == "degraded"


async def test_healthz_is_degraded_while_fits_fail_and_alerts_cannot_be_delivered(
    aiohttp_client: Any, tmp_path: Path, clock_start: float
) -> None:
    dead_am = "http://am-user:s3cret@127.0.0.1:9"  # nothing listens on the discard port
    src = FlakySource(clock_start)
    app = make_app(
        config(tmp_path, "--alerting-alertmanagers", dead_am, "--alerting-timeout", "1"),
        source=src,
        run_loop=False,
    )
    client = await aiohttp_client(app)
    an = app[ANALYZER]
    await drive(app, src, clock_start, clock_start + 3 * 3600)  # enough history to fit
    node = an.nodes["node-1:9478"]
    assert node.status == "fitted" and (await health(client))[1]["status"] == "ok"

    # The refit cannot read its training window: the node keeps its old model; degraded.
    src.broken = "store unreadable"
    assert an.request_fit("node-1:9478", clock_start + 3 * 3600)
    await an.wait_fits()
    body = (await health(client))[1]
    assert body["status"] == "degraded"
    assert body["reasons"] == [
        "fits: 1 node(s) have an old model, fit failed (node-1:9478: store unreadable)"
    ]

    # An alert that cannot reach the Alertmanager is named too, without its password.
    src.broken = ""
    sender = app[SENDER]
    await sender.fire(
        build_alert(an.cfg.alerting, alertname="X", severity="warning", instance="n:1", summary="s")
    )
    assert not await sender.flush()
    reasons = (await health(client))[1]["reasons"]
    assert any(r.startswith("alerts: alertmanager http://127.0.0.1:9 unreachable") for r in reasons)
    assert "s3cret" not in json.dumps(reasons)


# --- secrets and the web config on the command line -------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        "--prometheus-password",
        "--prometheus-bearer-token",
        "--alerting-bearer-token",
        "--alerting-basic-auth-password",
    ],
)
def test_secret_flags_exit_2_with_one_line(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--prometheus-url", "http://prom:9090", "--state-dir", str(tmp_path), flag, "s3cret"]
    assert analyzer_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3cret" not in err
    env = "DCWATCH_" + flag[2:].replace("-", "_").upper()
    assert f"flag {flag}: refused" in err and f"{flag}-file PATH" in err and env in err


def test_prometheus_secrets_from_env_file_and_url(tmp_path: Path) -> None:
    base = ["--prometheus-url", "http://prom:9090", "--state-dir", str(tmp_path)]
    cfg = load_analyzer_config(
        [*base, "--prometheus-username", "u"], env={"DCWATCH_PROMETHEUS_PASSWORD": "pw"}
    )
    assert cfg.prometheus is not None and cfg.prometheus.password == "pw"
    f = tmp_path / "analyzer.yaml"
    f.write_text("prometheus:\n  url: http://prom:9090\n  bearer_token: t0ken-xyz\n")
    cfg = load_analyzer_config(["--config", str(f), "--state-dir", str(tmp_path)], env={})
    assert cfg.prometheus is not None and cfg.prometheus.bearer_token == "t0ken-xyz"
    assert "t0ken-xyz" not in repr(cfg)
    cfg = load_analyzer_config(
        ["--prometheus-url", "http://u:pw@prom:9090", "--state-dir", str(tmp_path)], env={}
    )
    assert cfg.prometheus is not None and ":pw@" not in repr(cfg)


def test_bad_web_config_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  admin: not-a-bcrypt-hash\n")
    argv = ["--target", "http://n:9478/metrics", "--state-dir", str(tmp_path), "--web-config"]
    assert analyzer_main([*argv, str(web)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(web) in err and "basic_auth_users" in err
    assert analyzer_main([*argv, str(tmp_path / "missing.yml")]) == 2
    assert "missing.yml" in capsys.readouterr().err


# --- fits read only what they need ------------------------------------------------------------


class FleetSource(FakeSource):
    """Many nodes (each the FakeSource node, history from its own start) that records reads and
    answers ``instances`` like the real sources."""

    def __init__(self, starts: dict[str, float]) -> None:
        super().__init__(min(starts.values()))
        self.starts = starts
        self.reads: list[tuple[float, float, float, frozenset[str] | None]] = []

    async def fetch(
        self,
        start: float,
        end: float,
        step: float,
        instances: Sequence[str] | None = None,
    ) -> dict[str, Frame]:
        self.reads.append((start, end, step, None if instances is None else frozenset(instances)))
        grid = np.arange(np.ceil(start / step) * step, end + step / 2, step)
        out = {}
        for inst, t0 in self.starts.items():
            if instances is None or inst in instances:
                times = grid[grid >= t0]
                out[inst] = Frame(
                    times, COLUMNS, np.array([self._row(t) for t in times]).reshape(-1, 4)
                )
        return out


async def test_fits_never_read_the_fleet_nor_a_cold_nodes_window(
    tmp_path: Path, clock_start: float
) -> None:
    t0 = clock_start
    # node-a has a day of history; node-b is new (cold start); three more nodes in another group
    starts = {"a-1:9478": t0 - 86400, "a-2:9478": t0, **{f"b-{i}:9478": t0 for i in range(3)}}
    src = FleetSource(starts)
    cfg = config(tmp_path, "--model-train-window", "2d", "--model-group-by", "^(a|b)-")
    an = Analyzer(cfg, src, AlertSender(cfg.alerting))
    await an.start()
    try:
        await an.score_pass(t0)
        await an.wait_fits()
        fine = [r for r in src.reads if r[2] == STEP and r[3] is not None]
        full = [r for r in fine if r[1] - r[0] > 3600]
        # One training read, of the node with history only, starting near where it starts.
        assert [r[3] for r in full] == [frozenset({"a-1:9478"})]
        assert t0 - 86400 - 2 * 86400 / 16 <= full[0][0] <= t0 - 86400
        # Every other read is the scoring pass's (a few points) or one of the pass's two
        # probes, of every node due for a fit at once (not two per node).
        probes = [r for r in src.reads if r[3] is not None and r not in full]
        assert len(probes) == 2 and all(r[3] == set(starts) for r in probes)
        for start, end, step, names in src.reads:
            if names is None:
                assert (end - start) / step < 4  # the scoring pass: the latest rows
            elif (start, end, step, names) not in full:
                assert (end - start) / step <= 20
        assert an.nodes["a-1:9478"].status == "fitted"
        assert an.nodes["a-2:9478"].model is None and an.nodes["b-0:9478"].model is None
        samples = {
            (s.name, tuple(s.labels.values())): s.value
            for fam in analyzer_families(an)
            for s in fam.samples
        }
        assert samples[("dcwatch_shard_nodes", ("0", "1"))] == 5
        assert {lab[0] for n, lab in samples if n == "dcwatch_scoring_pass_phase_seconds"} == {
            "read",
            "score",
            "send",
        }
    finally:
        await an.close()


async def test_a_pass_reads_only_the_rows_it_has_not_scored(tmp_path: Path) -> None:
    t0 = 1_700_000_100.0
    cfg = config(tmp_path)
    an = Analyzer(cfg, FakeSource(t0), AlertSender(cfg.alerting))

    class Model:  # all that ``_points_needed`` looks at
        def __init__(self, last_ts: float) -> None:
            self.last_ts_ = last_ts

    def node(name: str, last_ts: float, seen: int) -> NodeState:
        return NodeState(name, model=cast(NodeModel, Model(last_ts)), seen=seen)

    an.nodes = {"a": node("a", t0 - STEP, 0), "b": node("b", t0 - STEP, 0)}
    assert an._points_needed(t0) == 2  # after a restart (no read yet): the fitted nodes
    an.passes = 1
    assert an._points_needed(t0 + 3) == 2  # one new row, and one already scored as a margin
    an.nodes["b"].model = cast(NodeModel, Model(t0 - 10 * STEP))  # b was missed for a while
    assert an._points_needed(t0) == 10
    assert an._points_needed(t0 + 1e6) == BACKFILL_POINTS
    an.nodes["b"].seen = -1  # b left the fleet: its old row does not make everyone read more
    assert an._points_needed(t0) == 2


async def test_a_long_pause_is_scored_in_node_batches_and_its_alerts_sent(
    tmp_path: Path, clock_start: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a pause the missed rows of a big fleet are read a batch of nodes at a time (memory
    bounded by ``BACKFILL_ROWS`` node-rows, not nodes x pause), every missed row is scored once,
    and an anomaly inside the pause still raises its alert."""
    import dcwatch.detectors.service as service

    t0 = clock_start
    names = [f"n-{i}:9478" for i in range(6)]
    src = FleetSource(dict.fromkeys(names, t0 - 5 * 3600))
    cfg = config(tmp_path)
    sender = AlertSender(cfg.alerting)
    an = Analyzer(cfg, src, sender)
    await sender.start(background=False)
    await an.start()
    try:
        train = (await src.fetch(t0 - 4 * 3600, t0, STEP, [names[0]]))[names[0]]
        blob = NodeModel().fit(train).dumps()
        an.nodes = {n: NodeState(n, status="fitted", model=NodeModel.loads(blob)) for n in names}
        missed = 40
        monkeypatch.setattr(service, "BACKFILL_ROWS", 2 * missed)  # two nodes per read
        src.fault, src.fault_from = True, t0 + 10 * STEP  # GPU 1 of every node runs hot
        src.reads.clear()
        await an.score_pass(t0 + missed * STEP)
        batches = [r for r in src.reads if r[3] is not None]
        assert sorted(len(r[3]) for r in batches) == [2, 2, 2]
        assert set().union(*(r[3] for r in batches)) == set(names)
        assert all((end - start) / step <= missed for start, end, step, _ in batches)
        pass_read = [r for r in src.reads if r[3] is None]
        assert [(end - start) / step for start, end, step, _ in pass_read] == [1.0]  # 2 rows
        for n in names:
            assert an.nodes[n].scored_rows == missed  # each missed row once, none twice
            assert (
                an.nodes[n].model is not None and an.nodes[n].model.last_ts_ == t0 + missed * STEP
            )
        firing = {r.alert.labels["instance"] for r in an.sender.firing()}
        assert firing == set(names)
        assert an.pass_phases["send"] > 0 and an.pass_phases["read"] > 0
    finally:
        await an.close()
        await sender.stop()
