"""Capacity planning: time-to-exhaustion maths on series whose crossing is known exactly, rule
parsing and its errors, and the planner driven through the app with a fake source (forecast
metrics, the alert in the JSON-lines log, its resolve with hysteresis)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from dcwatch.detectors.alerting.alerts import Alert
from dcwatch.detectors.alerting.sender import AlertSender, Applied
from dcwatch.detectors.capacity.rules import CapacityRule, default_rules, parse_rules
from dcwatch.detectors.capacity.series import (
    PlotHistory,
    SeriesData,
    assess,
    extract_series,
    fit_forecasters,
    horizon_label,
    human_duration,
    time_to_exhaustion,
    trailing_mean,
)
from dcwatch.detectors.capacity.state import SeriesState
from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.frame import Frame, column_name, make_grid
from dcwatch.detectors.models.forecast import LinearTrendForecaster
from dcwatch.detectors.sources.base import TargetStatus
from dcwatch.detectors.sources.queries import NamedQuery
from dcwatch.detectors.sources.scraper import EmbeddedSource, instance_of
from dcwatch.detectors.web.app import ANALYZER, PLANNER, make_app, make_source
from dcwatch.detectors.web.capacity_page import nice_ticks, render_capacity, time_ticks, unit_scale
from dcwatch.settings import ConfigError
from tests.helpers import sample

STEP = 60.0
T0 = 1_700_000_000.0 // 3600 * 3600
Value = Callable[[str, str | None, np.ndarray], np.ndarray]


class CapacitySource:
    """Answers any query set: column ``q.name`` per (instance, device) from ``values[q.name]``,
    a function of (instance, device, times)."""

    def __init__(self, layout: dict[str, list[str | None]], values: dict[str, Value]) -> None:
        self.layout, self.values = layout, values
        self.queries: tuple[NamedQuery, ...] = ()
        self.down = False
        self.fetches = 0

    def with_queries(self, queries: tuple[NamedQuery, ...]) -> CapacitySource:
        view = CapacitySource(self.layout, self.values)
        view.queries, view.parent = queries, self  # type: ignore[attr-defined]
        return view

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def target_status(self) -> list[TargetStatus]:
        return []

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        parent = getattr(self, "parent", self)
        parent.fetches += 1
        if parent.down:
            raise OSError("connection refused")
        grid = make_grid(start, end, step)
        out = {}
        for instance, devices in self.layout.items():
            cols, names = [], []
            for q in self.queries:
                fn = self.values.get(q.name)
                if fn is None:
                    continue
                for dev in devices:
                    names.append(column_name(q.name, q.per, dev))
                    cols.append(fn(instance, dev, grid))
            out[instance] = Frame(grid, tuple(names), np.column_stack(cols))
        return out

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        return {}


# --- the maths -------------------------------------------------------------------------------


def test_crossing_of_a_linear_ramp_is_exact() -> None:
    # y = 10 + i at one step a minute; the last value is 109 at t_end. Threshold 150 = 0.5 of a
    # capacity of 300: the line reaches it 41 steps after t_end, exactly.
    t = T0 + STEP * np.arange(100)
    f = LinearTrendForecaster(window=30, step=STEP).fit(pd.Series(10.0 + np.arange(100), index=t))
    rule = CapacityRule(
        "r", "s", 300.0, threshold=0.5, horizon=3600, step=STEP, forecast_horizons=(600,)
    )
    data = SeriesData(np.zeros(0), np.zeros(0), 300.0)
    [res] = assess(rule, [(f, data, 300.0, 109.0)], now=t[-1])
    assert res.exhaustion is not None
    assert res.exhaustion.estimate == 41 * STEP
    assert res.exhaustion.earliest == res.exhaustion.latest == 41 * STEP  # an exact line: no spread
    assert res.forecasts[600] == (119.0, 119.0, 119.0)
    # New points continue the ramp: the crossing comes nearer by as many steps.
    more = SeriesData(t[-1] + STEP * np.arange(1, 11), 110.0 + np.arange(10), 300.0)
    [res] = assess(rule, [(f, more, 300.0, None)], now=t[-1] + 10 * STEP)
    assert res.exhaustion.estimate == 31 * STEP and res.current == 119.0


def test_default_arima_forecaster_on_a_growing_daily_series() -> None:
    """Ten days at 5 minutes growing 3 a day with a daily cycle: 80 now, 90 in about 3 days."""
    rng = np.random.default_rng(0)
    step, n = 300.0, 10 * 288
    t = T0 + step * np.arange(n)
    days = np.arange(n) / 288 - 10
    y = 80 + 3 * days + 3 * np.sin(2 * np.pi * days) + rng.normal(0, 0.5, n)
    rule = CapacityRule("r", "s", 100.0, threshold=0.9, step=step)  # ArimaForecaster, 7 days
    [f] = fit_forecasters(rule, [(t, y)])
    assert not isinstance(f, str)
    [res] = assess(rule, [(f, None, 100.0, float(y[-1]))], now=float(t[-1]))
    ex = res.exhaustion
    assert ex is not None and ex.estimate is not None and ex.earliest is not None
    assert 1.5 * 86400 < ex.estimate < 4.5 * 86400, (f.model_, ex)
    assert ex.earliest <= ex.estimate and (ex.latest is None or ex.latest >= ex.estimate)
    mean, lo, hi = res.forecasts[86400]
    assert lo < mean < hi and 80 < mean < 88


def test_bands_give_earliest_and_latest() -> None:
    now = 1000.0
    times = now + 10.0 * np.arange(1, 11)
    mean = np.arange(1.0, 11.0)
    bands = {"mean": mean, "hi-95": mean + 2, "lo-95": mean - 3}
    ex = time_to_exhaustion(times, bands, threshold=6.0, now=now)
    assert (ex.estimate, ex.earliest, ex.latest) == (60.0, 40.0, 90.0)
    # The lower band never gets there within the forecast: no latest.
    ex = time_to_exhaustion(times, bands, threshold=8.5, now=now)
    assert (ex.estimate, ex.earliest, ex.latest) == (90.0, 70.0, None)
    # Never crossing: all absent; already above: full now.
    assert time_to_exhaustion(times, bands, 100.0, now) == type(ex)(None, None, None)
    assert time_to_exhaustion(times, bands, 6.0, now, current=7.0) == type(ex)(0.0, 0.0, 0.0)
    # Forecast times start before `now` (a lagging source): never negative.
    assert time_to_exhaustion(times, bands, 1.0, now=now + 25).estimate == 0.0


def test_human_and_label_formats() -> None:
    assert human_duration(3 * 86400 + 5000) == "3 days"
    assert human_duration(5 * 3600) == "5 hours"
    assert human_duration(40 * 60) == "40 minutes"
    assert human_duration(1) == "1 second"
    assert [horizon_label(h) for h in (3600, 21600, 86400, 604800, 90)] == [
        "1h",
        "6h",
        "1d",
        "7d",
        "90s",
    ]
    assert unit_scale("bytes", 80 * 2**30) == (2**30, "GiB")
    assert unit_scale("watts", 2500) == (1000, "kW")
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    ticks, fmt = time_ticks(T0, T0 + 3 * 86400)
    assert np.all(np.diff(ticks) == 43200) and fmt == "%a %H:%M"
    ticks, fmt = time_ticks(T0, T0 + 10 * 86400)
    assert np.all(np.diff(ticks) == 2 * 86400) and fmt == "%b %d"


def test_plot_history_buckets() -> None:
    h = PlotHistory(bucket=10 * STEP, span=3600)
    t = T0 + STEP * np.arange(95)
    h.add(t[:33], np.ones(33))
    h.add(t[33:], np.full(62, 3.0))  # the bucket split across the two calls is merged
    ts, vs = h.points()
    # The last hour: buckets from minute 30 (3 ones and 7 threes) to minute 90 (5 threes).
    assert np.allclose(ts, T0 + STEP * np.array([34.5, 44.5, 54.5, 64.5, 74.5, 84.5, 92]))
    assert np.allclose(vs, [2.4, 3, 3, 3, 3, 3, 3])
    h.add(t[:10], np.full(10, 99.0))  # old points are ignored
    assert np.allclose(h.points()[1], vs)


def test_extract_series_matches_capacity_per_device_and_aggregates() -> None:
    grid = T0 + STEP * np.arange(3)
    frames = {
        "a:1": Frame(
            grid,
            ('series{gpu="0"}', 'series{gpu="1"}', 'capacity{gpu="0"}', 'capacity{gpu="1"}'),
            np.array([[1, 2, 10, 20], [1, 2, 10, 20], [1, 2, 10, np.nan]], float),
        ),
        "b:1": Frame(grid, ('series{gpu="0"}',), np.ones((3, 1))),  # no capacity: left out
    }
    rule = CapacityRule("m", "x", "y", per="gpu")
    got = extract_series(rule, frames)
    assert sorted(got) == [("a:1", "0"), ("a:1", "1")]
    assert got[("a:1", "1")].capacity == 20.0 and got[("a:1", "0")].last == 1.0
    # A node-wide capacity (no gpu label) applies to every GPU of the node.
    frames["b:1"] = Frame(grid, ('series{gpu="0"}', "capacity"), np.full((3, 2), 5.0))
    assert extract_series(rule, frames)[("b:1", "0")].capacity == 5.0
    # A rack budget: the sum over the chosen instances.
    node = {
        i: Frame(grid, ("series",), np.full((3, 1), 100.0 * (k + 1))) for k, i in enumerate("xyz")
    }
    rack = CapacityRule("rack", "x", 1000.0, aggregate="sum", instances=("x", "y"), group="rack-a")
    [(key, data)] = extract_series(rack, node).items()
    assert key == ("rack-a", None) and list(data.values) == [300.0] * 3 and data.capacity == 1000.0


def test_smoothing_forecasts_the_trailing_mean() -> None:
    v = np.array([1.0, 3, np.nan, 5, 7, 9])
    assert np.allclose(trailing_mean(v, 2), [1, 2, np.nan, 5, 6, 8], equal_nan=True)
    # A GPU flipping between half and full power is not "full now" once smoothed over 10 steps.
    grid = T0 + STEP * np.arange(30)
    flips = np.where(np.arange(30) % 2, 100.0, 50.0)
    frames = {"n:1": Frame(grid, ("series",), flips[:, None])}
    raw = CapacityRule("p", "x", 100.0, step=STEP)
    smooth = CapacityRule("p", "x", 100.0, step=STEP, smooth=10 * STEP)
    assert extract_series(raw, frames)[("n:1", None)].last == 100.0
    assert extract_series(smooth, frames)[("n:1", None)].last == 75.0


def test_fit_forecasters_reports_failures_per_series() -> None:
    rule = CapacityRule("r", "s", 1.0, step=STEP, forecaster="linear")
    t = T0 + STEP * np.arange(50)
    out = fit_forecasters(rule, [(t, np.arange(50.0)), (t, np.full(50, np.nan))])
    assert isinstance(out[0], LinearTrendForecaster) and isinstance(out[1], str)


# --- rules -----------------------------------------------------------------------------------


def test_rules_parse_with_defaults_and_units() -> None:
    names = [r.name for r in parse_rules([])]
    assert names == ["gpu_memory", "gpu_power", "network_receive", "network_transmit"]
    rules = parse_rules(
        [
            {
                "name": "rack_power",
                "series": "max by (instance) (dcwatch_node_power_watts)",
                "capacity": "30000",
                "aggregate": "avg",
                "instance_regex": "rack-a-.*",
                "horizon": "3d",
                "forecast_horizons": ["1h", "1d"],
            },
            {"defaults": {"node_power_budget": 2400}},
        ]
    )
    rack = rules[0]
    assert rack.capacity == 30000.0 and rack.aggregate == "mean" and rack.unit == "watts"
    assert rack.horizon == 3 * 86400 and rack.forecast_horizons == (3600, 86400)
    assert rack.wants("rack-a-7:9478") and not rack.wants("rack-b-1:9478")
    assert rules[-1].name == "node_power" and rules[-1].capacity == 2400.0
    assert parse_rules([{"defaults": False}]) == ()
    for r in default_rules(1.0):  # every default query is one the embedded source evaluates
        assert all(q.selector is not None for q in r.queries())


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"series": "x", "capacity": 1}, r"capacity_rules\[0\]: key 'name'"),
        ({"name": "m", "capacity": 1}, r"capacity_rules\[0\] \(m\): key 'series': missing"),
        ({"name": "m", "series": "x", "capacity": 1, "threshold": 1.5}, "key 'threshold'"),
        ({"name": "m", "series": "x", "capacity": -3}, "key 'capacity'"),
        ({"name": "m", "series": "x", "capacity": 1, "horizon": "soon"}, "key 'horizon'"),
        ({"name": "m", "series": "x", "capacity": 1, "forecaster": "prophet"}, "key 'forecaster'"),
        ({"name": "m", "series": "x", "capacity": 1, "colour": 1}, "unknown key.*colour"),
        ({"name": "m", "series": "x", "capacity": 1, "per": "gpu", "aggregate": "sum"}, "aggr"),
        ({"name": "m", "series": "x", "capacity": 1, "per": "bad label"}, "key 'series'"),
        ({"name": "m", "series": "x", "capacity": 1, "min_history": "1s"}, "min_history"),
        ({"defaults": {"node_power_budget": "lots"}}, "node_power_budget"),
        ("gpu_memory", "expected a mapping"),
    ],
)
def test_rule_errors_name_the_rule_and_key(entry: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rules([entry])


def test_duplicate_rule_names() -> None:
    r = {"name": "m", "series": "x", "capacity": 1}
    with pytest.raises(ConfigError, match="'m' appears twice"):
        parse_rules([r, r])


AGENT_EXPOSITION = """\
dcwatch_gpu_memory_used_bytes{gpu="0"} 30
dcwatch_gpu_memory_total_bytes{gpu="0"} 100
dcwatch_gpu_temperature_celsius{gpu="0"} 55
dcwatch_unrelated_total 7
"""


async def test_embedded_source_keeps_the_rules_metrics_for_its_views(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=AGENT_EXPOSITION)

    agent = web.Application()
    agent.router.add_get("/metrics", metrics)
    url = str((await aiohttp_server(agent)).make_url("/metrics"))
    f = tmp_path / "analyzer.yaml"
    f.write_text(f"targets: [{url}]\n" + RULES)
    cfg = load_analyzer_config(["--config", str(f), "--state-dir", str(tmp_path)], env={})
    [rule] = parse_rules(cfg.capacity_rules)
    src = make_source(cfg, rule.queries())
    embedded = cast(EmbeddedSource, src)  # to drive one scrape round by hand
    view = src.with_queries(rule.queries())
    await embedded.start(scrape=False)
    try:
        await embedded.scraper.scrape_round(T0)
        inst = instance_of(url)
        stored = await embedded.store.read(T0 - 1, T0 + 1)
        # Total bytes is in no default query, only the rule's: kept; the unrelated metric is not.
        assert {name for name, _ in stored[inst]} == {
            "dcwatch_gpu_memory_used_bytes",
            "dcwatch_gpu_memory_total_bytes",
            "dcwatch_gpu_temperature_celsius",
        }
        frames = await view.fetch(T0, T0, STEP)
        assert frames[inst].columns == ('series{gpu="0"}', 'capacity{gpu="0"}')
        np.testing.assert_array_equal(frames[inst].values, [[30.0, 100.0]])
        own = (await src.fetch(T0, T0, STEP))[inst].columns  # the source's own are untouched
        assert 'gpu_temperature{gpu="0"}' in own and 'capacity{gpu="0"}' not in own
    finally:
        await src.close()


def test_analyzer_refuses_a_malformed_rule(tmp_path: Path) -> None:
    f = tmp_path / "analyzer.yaml"
    f.write_text(
        "targets: [http://x:1/metrics]\n"
        "capacity_rules:\n  - name: gpu_memory\n    series: dcwatch_gpu_memory_used_bytes\n"
        "    capacity: dcwatch_gpu_memory_total_bytes\n    threshold: 90\n"
    )
    # Refused while the configuration is read, before anything starts; the file is named.
    with pytest.raises(ConfigError, match=r"\(gpu_memory\): key 'threshold'") as e:
        load_analyzer_config(["--config", str(f), "--state-dir", str(tmp_path)], env={})
    assert str(f) in str(e.value)


# --- the planner in the app --------------------------------------------------------------------

RULES = """
capacity_rules:
  - name: gpu_memory
    title: GPU memory
    series: dcwatch_gpu_memory_used_bytes
    per: gpu
    capacity: dcwatch_gpu_memory_total_bytes
    threshold: 0.9
    horizon: 2h
    step: 1m
    history: 6h
    min_history: 1h
    refit: 1h
    forecaster: linear
    window: 30m
    forecast_horizons: [1h, 2h]
"""


def write_config(tmp_path: Path, rules: str = RULES, *extra: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "analyzer.yaml"
    f.write_text("targets: [http://node-1:9478/metrics]\n" + rules)
    args = ["--config", str(f), "--state-dir", str(tmp_path / "state"), "--model-workers", "0"]
    return load_analyzer_config([*args, *extra], env={})


class Growth:
    """GPU 0's memory: 50 until ``start``, then +0.5 a minute until ``stop``; GPU 1 stays at 20."""

    def __init__(self, start: float) -> None:
        self.start, self.stop = start, np.inf

    def used(self, instance: str, dev: str | None, t: np.ndarray) -> np.ndarray:
        if dev == "1":
            return np.full(t.size, 20.0)
        ramp = (np.minimum(t, self.stop) - self.start) / STEP * 0.5
        return 50.0 + np.maximum(ramp, 0.0)


def alert_log(tmp_path: Path) -> list[dict]:
    path = tmp_path / "state/alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_planner_forecasts_alerts_and_resolves(aiohttp_client, tmp_path: Path) -> None:
    growth = Growth(T0 + 600)
    src = CapacitySource(
        {"node-1:9478": ["0", "1"]},
        {"series": growth.used, "capacity": lambda i, d, t: np.full(t.size, 100.0)},
    )
    app = make_app(write_config(tmp_path), source=src, run_loop=False)
    client = await aiohttp_client(app)
    planner = app[PLANNER]

    async def drive(start: float, end: float) -> None:
        for t in np.arange(start, end + 1, STEP):
            await planner.evaluate(float(t))
            await planner.wait_fits()

    # Flat history: fitted on the first evaluation, nothing forecast full.
    await drive(T0, T0 + 600)
    rs = planner.rules["gpu_memory"]
    assert len(rs.series) == 2 and all(s.forecaster is not None for s in rs.series.values())
    body = await (await client.get("/metrics")).text()
    lab = {"rule": "gpu_memory", "instance": "node-1:9478", "gpu": "0"}
    assert sample(body, "dcwatch_capacity_utilization_ratio", **lab) == 0.5
    assert sample(body, "dcwatch_capacity_exhaustion_seconds", **lab) is None
    assert sample(body, "dcwatch_forecast_model_info", **lab, model="linear") == 1
    assert alert_log(tmp_path) == []

    # 40 minutes of growth at 0.5 a minute: at 70 of 100 the line reaches 90 in exactly 40 min.
    await drive(T0 + 660, T0 + 600 + 40 * STEP)
    body = await (await client.get("/metrics")).text()
    assert sample(body, "dcwatch_capacity_exhaustion_seconds", **lab) == 2400.0
    assert sample(body, "dcwatch_capacity_utilization_ratio", **lab) == pytest.approx(0.7)
    assert sample(body, "dcwatch_forecast", **lab, horizon="1h") == pytest.approx(100.0)
    lo = sample(body, "dcwatch_forecast_lower", **lab, horizon="1h")
    hi = sample(body, "dcwatch_forecast_upper", **lab, horizon="1h")
    assert lo is not None and hi is not None and lo <= 100.0 <= hi
    early = sample(body, "dcwatch_capacity_exhaustion_earliest_seconds", **lab)
    assert early is not None and early <= 2400
    assert sample(body, "dcwatch_capacity_threshold_ratio", rule="gpu_memory") == 0.9
    # OpenMetrics (what Prometheus asks for) carries the same samples.
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(await om.text())}
    [ex] = [x for x in fams["dcwatch_capacity_exhaustion_seconds"].samples if x.labels == lab]
    assert ex.value == 2400.0
    gpu1 = {**lab, "gpu": "1"}
    assert sample(body, "dcwatch_capacity_utilization_ratio", **gpu1) == 0.2
    assert sample(body, "dcwatch_capacity_exhaustion_seconds", **gpu1) is None

    fired = [a for a in alert_log(tmp_path) if a["status"] == "firing"]
    assert fired, "no capacity alert in the log"
    labels = fired[-1]["labels"]
    assert labels == {
        "alertname": "DcwatchCapacityExhaustion",
        "severity": "warning",
        "instance": "node-1:9478",
        "gpu": "0",
        "rule": "gpu_memory",
    }
    assert fired[0]["annotations"]["summary"].startswith("GPU memory on node-1:9478 gpu 0 full in")
    page = await (await client.get("/")).text()
    assert "DcwatchCapacityExhaustion" in page and page.count("<svg") == 2
    assert 'class="threshold"' in page and "full in ~40 minutes" in page

    # The growth stops at 70: once the line is flat the alert resolves, after two evaluations.
    growth.stop = T0 + 600 + 40 * STEP
    await drive(T0 + 600 + 41 * STEP, T0 + 600 + 80 * STEP)
    body = await (await client.get("/metrics")).text()
    assert sample(body, "dcwatch_capacity_exhaustion_seconds", **lab) is None
    last = alert_log(tmp_path)[-1]
    assert last["status"] == "resolved" and last["labels"]["gpu"] == "0"
    assert not app[ANALYZER].sender.firing()


async def test_planner_survives_outage_and_resolves_after_restart(
    aiohttp_client, tmp_path: Path
) -> None:
    growth = Growth(T0 - 3600)  # growing all along: fires on the first forecast
    src = CapacitySource(
        {"node-1:9478": ["0"]},
        {"series": growth.used, "capacity": lambda i, d, t: np.full(t.size, 100.0)},
    )
    cfg = write_config(tmp_path)
    client = await aiohttp_client(make_app(cfg, source=src, run_loop=False))
    planner = client.server.app[PLANNER]
    await planner.evaluate(T0)
    await planner.wait_fits()
    assert [a["status"] for a in alert_log(tmp_path)] == ["firing"]
    src.down = True  # the source fails: forecasts kept, errors counted, nothing resolved
    await planner.evaluate(T0 + STEP)
    assert planner.rules["gpu_memory"].errors == 1
    await client.close()

    # After a restart the firing alert is re-attached to its series; the series is flat by now,
    # so two evaluations resolve it.
    src.down, growth.stop = False, T0 - 3600
    client = await aiohttp_client(make_app(cfg, source=src, run_loop=False))
    planner = client.server.app[PLANNER]
    for k in range(3):
        await planner.evaluate(T0 + (10 + k) * STEP)
        await planner.wait_fits()
    assert [a["status"] for a in alert_log(tmp_path)] == ["firing", "resolved"]
    await client.close()


async def test_a_series_without_new_data_goes_stale(aiohttp_client, tmp_path: Path) -> None:
    growth = Growth(T0 - 3600)
    gone = T0 + 5 * STEP

    def used(i: str, d: str | None, t: np.ndarray) -> np.ndarray:
        return np.where(t <= gone, growth.used(i, d, t), np.nan)  # the node stops reporting

    src = CapacitySource(
        {"node-1:9478": ["0"]}, {"series": used, "capacity": lambda i, d, t: np.full(t.size, 1e2)}
    )
    client = await aiohttp_client(make_app(write_config(tmp_path), source=src, run_loop=False))
    planner = client.server.app[PLANNER]
    for k in range(18):
        await planner.evaluate(T0 + k * STEP)
        await planner.wait_fits()
        if k == 5:
            assert [a["status"] for a in alert_log(tmp_path)] == ["firing"]
    [st] = planner.rules["gpu_memory"].series.values()
    assert st.stale and st.exhaustion is None
    assert [a["status"] for a in alert_log(tmp_path)] == ["firing", "resolved"]
    assert "no recent data" in render_capacity(planner)
    await client.close()


async def test_a_round_hands_its_alert_changes_to_the_sender_at_once(
    aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``AlertSender.apply`` a round: the first forecasts fire every series' alert together,
    and at a restart the alerts of a rule no longer configured resolve together."""
    calls: list[tuple[list[str], list[str]]] = []
    apply = AlertSender.apply

    async def counted(
        self: AlertSender, fire: Sequence[Alert] = (), resolve: Sequence[str | Alert] = ()
    ) -> Applied:
        keys = [k if isinstance(k, str) else k.key for k in resolve]
        calls.append((sorted(a.labels["gpu"] for a in fire), keys))
        return await apply(self, fire, resolve)

    monkeypatch.setattr(AlertSender, "apply", counted)
    growth = Growth(T0 - 3600)
    src = CapacitySource(
        {"node-1:9478": ["0", "1", "2"]},
        {
            "series": lambda i, d, t: growth.used(i, "0", t),  # every GPU grows
            "capacity": lambda i, d, t: np.full(t.size, 100.0),
        },
    )
    client = await aiohttp_client(make_app(write_config(tmp_path), source=src, run_loop=False))
    planner = client.server.app[PLANNER]
    await planner.evaluate(T0)  # nothing fitted yet: the fit's round fires all three
    await planner.wait_fits()
    assert calls == [(["0", "1", "2"], [])]
    await planner.evaluate(T0 + STEP)  # still forecast full: asserted again, together
    assert calls[1:] == [(["0", "1", "2"], [])]
    firing = [a for a in alert_log(tmp_path) if a["status"] == "firing"]
    assert sorted(a["labels"]["gpu"] for a in firing) == ["0", "1", "2"]
    keys = {st.alert_key for st in planner.rules["gpu_memory"].series.values()}
    await client.close()

    calls.clear()
    renamed = write_config(tmp_path, RULES.replace("name: gpu_memory", "name: gpu_mem"))
    client = await aiohttp_client(make_app(renamed, source=src, run_loop=False))
    [(fired, resolved)] = calls
    assert fired == [] and sorted(resolved) == sorted(keys)
    assert [a["status"] for a in alert_log(tmp_path)] == ["firing"] * 3 + ["resolved"] * 3
    await client.close()


async def test_a_series_gone_at_a_refit_resolves_even_if_the_forecasts_fail(
    aiohttp_client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    growth = Growth(T0 - 3600)
    src = CapacitySource(
        {"node-1:9478": ["0", "1"]},
        {
            "series": lambda i, d, t: growth.used(i, "0", t),
            "capacity": lambda i, d, t: np.full(t.size, 100.0),
        },
    )
    client = await aiohttp_client(make_app(write_config(tmp_path), source=src, run_loop=False))
    planner = client.server.app[PLANNER]
    await planner.evaluate(T0)
    await planner.wait_fits()
    assert [a["status"] for a in alert_log(tmp_path)] == ["firing", "firing"]
    assess = planner._assess

    async def failing(rs, data, now):  # type: ignore[no-untyped-def]
        if not data:  # the refit's forecasts
            raise RuntimeError("forecast bug")
        return await assess(rs, data, now)

    monkeypatch.setattr(planner, "_assess", failing)
    src.layout["node-1:9478"] = ["0"]  # GPU 1 is gone from the whole history at the refit
    await planner.evaluate(T0 + 3600)
    await planner.wait_fits()
    assert "fit failed (forecast bug)" in caplog.text
    last = alert_log(tmp_path)[-1]
    assert last["status"] == "resolved" and last["labels"]["gpu"] == "1"
    await client.close()


async def test_fits_in_a_worker_process(aiohttp_client, tmp_path: Path) -> None:
    """``model.workers`` > 0: fits run in a spawned process and come back pickled."""
    src = CapacitySource(
        {"node-1:9478": ["0"]},
        {"series": Growth(T0 - 3600).used, "capacity": lambda i, d, t: np.full(t.size, 100.0)},
    )
    cfg = write_config(tmp_path, RULES, "--model-workers", "1")
    client = await aiohttp_client(make_app(cfg, source=src, run_loop=False))
    planner = client.server.app[PLANNER]
    await planner.evaluate(T0)
    await planner.wait_fits()
    [st] = planner.rules["gpu_memory"].series.values()
    assert isinstance(st.forecaster, LinearTrendForecaster) and st.exhaustion is not None
    assert st.exhaustion.estimate == 1200.0  # at 80, growing 0.5 a minute: 90 in 20 minutes
    await client.close()


class ListingSource(CapacitySource):
    """A source that lists its instances and reads some of them (as ``PrometheusSource``),
    recording which instances each read named."""

    def __init__(self, layout: dict[str, list[str | None]], values: dict[str, Value]) -> None:
        super().__init__(layout, values)
        self.reads: list[tuple[float, list[str] | None]] = []
        self.listing_fails = False

    def with_queries(self, queries: tuple[NamedQuery, ...]) -> ListingSource:
        view = ListingSource(self.layout, self.values)
        view.queries, view.parent = queries, self  # type: ignore[attr-defined]
        return view

    async def instances(self) -> list[str]:
        if getattr(self, "parent", self).listing_fails:
            raise OSError("connection refused")
        return sorted(self.layout)

    async def fetch(  # type: ignore[override]
        self, start: float, end: float, step: float, instances: list[str] | None = None
    ) -> dict[str, Frame]:
        getattr(self, "parent", self).reads.append((end - start, instances))
        frames = await super().fetch(start, end, step)
        return frames if instances is None else {i: frames[i] for i in instances}


async def test_a_fleet_is_fitted_a_batch_of_nodes_per_history_read(
    aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 6 h at 1 minute is 361 points: two nodes a read.
    monkeypatch.setattr("dcwatch.detectors.capacity.fits.READ_NODE_POINTS", 800)
    nodes = {f"node-{i}:9478": ["0", "1"] for i in range(5)}
    src = ListingSource(
        nodes,
        {"series": Growth(T0 - 3600).used, "capacity": lambda i, d, t: np.full(t.size, 100.0)},
    )
    client = await aiohttp_client(make_app(write_config(tmp_path), source=src, run_loop=False))
    planner = client.server.app[PLANNER]
    await planner.evaluate(T0)
    await planner.wait_fits()
    rs = planner.rules["gpu_memory"]
    assert len(rs.series) == 10 and all(s.forecaster is not None for s in rs.series.values())
    history = [names for span, names in src.reads if span == 6 * 3600]
    assert history == [sorted(nodes)[0:2], sorted(nodes)[2:4], sorted(nodes)[4:5]]
    [st] = [s for s in rs.series.values() if s.instance == "node-4:9478" and s.device == "0"]
    assert st.exhaustion is not None and st.exhaustion.estimate == 1200.0
    fired = {(a["labels"]["instance"], a["labels"]["gpu"]) for a in alert_log(tmp_path)}
    assert fired == {(n, "0") for n in nodes}  # every GPU 0 is 20 minutes from full
    # At the refit a listing that fails forgets nothing and resolves nothing.
    src.listing_fails = True
    await planner.evaluate(T0 + 3600)
    await planner.wait_fits()
    assert len(rs.series) == 10 and rs.next_fit == T0 + 3600 + 300
    assert all(a["status"] == "firing" for a in alert_log(tmp_path))
    await client.close()


async def test_rack_budget_rule_sums_nodes(aiohttp_client, tmp_path: Path) -> None:
    rules = """
capacity_rules:
  - name: rack_power
    series: dcwatch_node_power_watts{source="ipmi"}
    aggregate: sum
    instances: [n1:9478, n2:9478]
    group: rack-a
    capacity: 3000
    horizon: 1h
    step: 1m
    history: 3h
    min_history: 1h
    forecaster: linear
    window: 1h
    unit_capacity: 500   # one more power feed of 500 W
    unit_name: feeds
"""
    # Two nodes each adding 5 W a minute from 1000 W: the sum reaches 2700 W (0.9 x 3000) from
    # 2000 W at 10 W a minute, 70 minutes after T0. A third node is not in the rack.
    src = CapacitySource(
        {"n1:9478": [None], "n2:9478": [None], "n3:9478": [None]},
        {"series": lambda i, d, t: 1000.0 + (t - T0) / STEP * 5},
    )
    client = await aiohttp_client(
        make_app(write_config(tmp_path, rules), source=src, run_loop=False)
    )
    planner = client.server.app[PLANNER]
    await planner.evaluate(T0)
    await planner.wait_fits()
    await planner.evaluate(T0 + 20 * STEP)
    body = await (await client.get("/metrics")).text()
    lab = {"rule": "rack_power", "instance": "rack-a"}
    assert sample(body, "dcwatch_capacity_exhaustion_seconds", **lab) == 50 * STEP
    assert sample(body, "dcwatch_capacity_utilization_ratio", **lab) == pytest.approx(2200 / 3000)
    # In an hour the rack draws 2800 W: 2800 / 0.9 = 3111 W of capacity needed, one more feed.
    assert sample(body, "dcwatch_capacity_units_needed", **lab) == 1
    await client.close()


def test_units_needed_keeps_the_upper_forecast_below_the_threshold() -> None:
    rule = parse_rules(
        [
            {
                "name": "fleet_gpu_memory",
                "series": "x",
                "capacity": 1000,
                "threshold": 0.9,
                "horizon": "7d",
                "unit_capacity": 50,
                "unit_name": "GPUs",
            }
        ],
        "test",
    )[0]
    st = SeriesState(rule, "fleet", None, capacity=1000.0)
    st.forecasts = {rule.horizon: (900.0, 850.0, 1000.0)}
    assert st.units_needed == 3  # 1000 / 0.9 = 1111.1: 111.1 more, in units of 50
    st.forecasts = {rule.horizon: (700.0, 650.0, 800.0)}
    assert st.units_needed == 0
    no_units = parse_rules([{"name": "r", "series": "x", "capacity": 1000}], "test")[0]
    assert SeriesState(no_units, "n", None, capacity=1000.0).units_needed is None


async def test_page_render_time_with_many_series(tmp_path: Path) -> None:
    """The capacity section with 400 forecast series renders 12 plots and 50 rows quickly."""
    layout = {f"node-{i}:9478": [str(g) for g in range(8)] for i in range(50)}
    src = CapacitySource(
        layout,
        {
            "series": lambda i, d, t: 50 + (t - T0) / 3600 * (int(d or 0) + hash(i) % 5),
            "capacity": lambda i, d, t: np.full(t.size, 100.0),
        },
    )
    app = make_app(write_config(tmp_path), source=src, run_loop=False)
    runner_ctx = [ctx(app) for ctx in app.cleanup_ctx]
    for c in runner_ctx:
        await c.__anext__()
    planner = app[PLANNER]
    await planner.evaluate(T0)
    await planner.wait_fits()
    await planner.evaluate(T0 + STEP)
    t0 = time.perf_counter()
    html = render_capacity(planner)
    took = time.perf_counter() - t0
    assert html.count("<svg") == 12 and html.count("<tr>") == 51
    assert took < 0.25, f"capacity section took {took * 1000:.0f} ms"
    for c in reversed(runner_ctx):
        with pytest.raises(StopAsyncIteration):
            await c.__anext__()


def test_the_readme_example_rules_parse() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("capacity_rules:\n  - name: gpu_memory")
    block = yaml.safe_load(readme[start : readme.index("```", start)])
    rules = {r.name: r for r in parse_rules(block["capacity_rules"], "README")}
    assert rules["fleet_gpu_memory"].unit_capacity == 80e9
    assert rules["rack_a_power"].aggregate == "sum"
