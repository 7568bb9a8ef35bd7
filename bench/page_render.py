"""Render time of the analyzer's overview and node pages for a large fleet, and the cost of the
score history kept across restarts.

Builds an analyzer state of N nodes (default 1,000), each with a full day of scores in its
timeline (1,500 buckets), some alerting, and an alert history of the last day; then renders ``/``
(first page and a later one) and ``/node/<instance>`` many times and reports the median and 95th
percentile. The alerting node page's contributor plots are computed as its handler does: a day
of the node (30 series at 15 s) read from a stub source, expected values and band from a model
fitted on the day before; that step is timed on its own. Then ``scores.sqlite3``: the snapshot
and the save after one pass of every node, and the load of N full days. The issue's target: the
overview in <= 100 ms for 1,000 nodes. No HTTP: the functions the handlers call, on one core.

Run by hand:  .venv/bin/python bench/page_render.py [--nodes 1000] [--repeat 30]
Writes bench/reports/page_render.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dcwatch.detectors.alerting.alerts import Alert, AlertRecord  # noqa: E402
from dcwatch.detectors.alerting.history import AlertHistory  # noqa: E402
from dcwatch.detectors.decisions import Contributor  # noqa: E402
from dcwatch.detectors.frame import Frame  # noqa: E402
from dcwatch.detectors.models.node import NodeModel, ScoreResult  # noqa: E402
from dcwatch.detectors.service import Health, NodeState  # noqa: E402
from dcwatch.detectors.timeline import Incident, NodeTimeline, ScoreFile, Timeline  # noqa: E402
from dcwatch.detectors.web.contributors import contributor_plots, latest_alert  # noqa: E402
from dcwatch.detectors.web.node_page import WINDOW, render_node  # noqa: E402
from dcwatch.detectors.web.page import render_overview  # noqa: E402

DAY = 86400.0
STEP = 15.0
SERIES = 30


class DaySource:
    """One node's ``SERIES`` series (daily cycle and noise; three GPUs overheat for the last
    ``hot`` seconds), any range on the grid: the stub the node page reads."""

    def __init__(self, instance: str, now: float, hot: float) -> None:
        self.instance, self.now, self.hot = instance, now, hot
        self.columns = tuple(f'gpu_temperature_celsius{{gpu="{g}"}}' for g in range(SERIES))

    def frame(self, start: float, end: float) -> Frame:
        ts = np.arange(np.ceil(start / STEP) * STEP, end + 1e-9, STEP)
        rng = np.random.default_rng(int(start) % 2**32)
        v = 60 + 5 * np.sin(ts / DAY * 2 * np.pi)[:, None] + rng.normal(0, 1, (len(ts), SERIES))
        v[ts > self.now - self.hot, :3] += 25.0
        return Frame(ts, self.columns, v)

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        return {self.instance: self.frame(start, end)}


def fleet(n: int, now: float, history: AlertHistory) -> SimpleNamespace:
    """An analyzer-shaped object: nodes, timeline, sender, source, health, as the pages read."""
    rng = np.random.default_rng(0)
    tl = Timeline()
    nodes: dict[str, NodeState] = {}
    firing = []
    for i in range(n):
        inst = f"gpu-node-{i:04d}:9478"
        alerting = i % 97 == 0
        node = NodeState(inst, status="fitted", score=float(rng.gamma(2, 0.2)), anomaly=alerting)
        t = NodeTimeline(tl.max_points, tl.window / tl.max_points)
        ts = now - DAY + np.arange(tl.max_points) * t.bucket
        t.ts[:] = ts
        t.score[:] = rng.gamma(2, 0.2, tl.max_points)
        t.head, t.last_bucket = tl.max_points - 1, int(ts[-1] // t.bucket)
        if alerting:
            t.alert[-40:] = True
            node.contributors = [
                Contributor(f'gpu_temperature_celsius{{gpu="{g}"}}', "season", 90, 60, 12)
                for g in range(3)
            ]
            t.incident = Incident(
                start=float(ts[-40]), series={c.series: c.feature for c in node.contributors}
            )
            labels = {"alertname": "DcwatchNodeAnomaly", "instance": inst, "severity": "warning"}
            rec = AlertRecord(Alert(labels, {"summary": f"{inst} odd"}), now - 600)
            firing.append(rec)
            history.record(rec, now)
        tl.nodes[inst] = t
        nodes[inst] = node
    for j in range(60):  # resolved alerts of the last day
        labels = {"alertname": "DcwatchNodeAnomaly", "instance": f"gpu-node-{j:04d}:9478"}
        history.record(
            AlertRecord(Alert(labels, {"summary": "x"}), now - 3600 * (j % 20), now), now
        )
    sender = SimpleNamespace(firing=lambda: firing, history=history)
    source = SimpleNamespace(target_status=lambda: [])
    first = next(i for i, n in nodes.items() if n.anomaly)
    day = DaySource(first, now, hot=40 * tl.window / tl.max_points)
    nodes[first].model = NodeModel().fit(day.frame(now - 2 * DAY, now - DAY))
    return SimpleNamespace(
        nodes=nodes,
        timeline=tl,
        sender=sender,
        source=source,
        day_source=day,
        cfg=SimpleNamespace(mode="embedded"),
        pass_duration=0.1,
        last_source_error="",
        last_source_success=now,
        health=lambda: Health((), (), True),
    )


def timed(fn: Callable[[], str], repeat: int) -> tuple[float, float, int]:
    fn()
    out = []
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = len(fn())
        out.append((time.perf_counter() - t0) * 1000)
    return (*stats(out), size)


def stats(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]


def score_history(an: SimpleNamespace, now: float, repeat: int, d: Path) -> list[str]:
    """``scores.sqlite3`` with every node's full day: per pass (one new row per node) the
    snapshot and the save; the load at start."""
    tl = Timeline(d)
    assert tl.file is not None
    rows = tuple(
        (inst, int(t // tl.bucket), t, s, a)
        for inst, node in an.timeline.nodes.items()
        for t, s, a in zip(*(x.tolist() for x in node.points(0)), strict=True)
    )
    tl.file.write(rows, tl.max_points)
    loads = []
    for _ in range(3):
        fresh = Timeline(d)
        t0 = time.perf_counter()
        fresh.load()
        loads.append(time.perf_counter() - t0)
        fresh.close()
    tl.load()
    n = len(tl.nodes)
    snap, save = [], []
    for k in range(1, repeat + 1):
        t = now + k * STEP
        for inst in tl.nodes:
            res = ScoreResult(
                np.array([t]), np.array([0.3]), np.array([0.3]), np.zeros(1, bool), [[]]
            )
            tl.record(inst, res)
        t0 = time.perf_counter()
        batch = tl.unsaved()
        t1 = time.perf_counter()
        tl.save(batch)
        t2 = time.perf_counter()
        snap.append((t1 - t0) * 1000)
        save.append((t2 - t1) * 1000)
        assert len(batch.rows) == n
    tl.close()
    size = sum(f.stat().st_size for f in d.glob(ScoreFile.FILENAME + "*"))
    return [
        "| step | median ms | p95 ms |",
        "|---|---:|---:|",
        "| snapshot after a pass, `unsaved()` (event loop) | {:.1f} | {:.1f} |".format(
            *stats(snap)
        ),
        "| save of that batch, `save()` (worker thread, 1 transaction) | {:.1f} | {:.1f} |".format(
            *stats(save)
        ),
        f"| load of {n:,} full days at start, `load()` | {statistics.median(loads) * 1000:.0f} "
        f"| {max(loads) * 1000:.0f} |",
        "",
        f"{len(rows):,} rows ({n:,} nodes x {tl.max_points:,} buckets): "
        f"{size / 2**20:.0f} MiB on disk with its WAL.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as d:
        history = AlertHistory(Path(d))
        an = fleet(args.nodes, now, history)
        recent = history.since(now - DAY, None, 60)
        alert_node = next(i for i, n in an.nodes.items() if n.anomaly)
        quiet_node = next(i for i, n in an.nodes.items() if not n.anomaly)
        node_hist = history.since(now - 30 * DAY, alert_node, 50)
        alert = latest_alert(an.timeline.get(alert_node), node_hist, now - WINDOW)
        model = an.nodes[alert_node].model

        loop = asyncio.new_event_loop()  # one, as in the server

        def plots():  # what the node page's handler does before rendering
            return loop.run_until_complete(
                contributor_plots(an.day_source, alert_node, model, alert, now - WINDOW, now)
            )

        contrib = plots()
        assert len(contrib.tracks) == 3, contrib.note
        rows = [
            ("overview, page 1", lambda: render_overview(an, None, recent, now=now)),
            ("overview, page 5", lambda: render_overview(an, None, recent, page=4, now=now)),
            (
                "node page with an alert (3 contributor plots over the day)",
                lambda: render_node(an, None, alert_node, node_hist, now=now, contributors=contrib),
            ),
            ("node page, no alert", lambda: render_node(an, None, quiet_node, [], now=now)),
            (
                f"its contributor plots' data: a day of {SERIES} series read, 3 computed",
                lambda: plots() and "",
            ),
            ("alert history query (1 day)", lambda: str(history.since(now - DAY, None, 60))),
        ]
        results = [(name, *timed(fn, args.repeat)) for name, fn in rows]  # type: ignore[arg-type]
        history.close()
        loop.close()
        persisted = score_history(an, now, args.repeat, Path(d) / "scores")
    lines = [
        "# Page render time",
        "",
        f"`bench/page_render.py --nodes {args.nodes} --repeat {args.repeat}`, one core of this "
        "project's 2-core machine, shared with other work (numbers are indicative). Each node: a "
        "full day of scores (1,500 buckets); 1 node in 97 alerting with 3 contributors; 60 "
        "resolved alerts. Rendering only (no HTTP). Target: overview <= 100 ms at 1,000 nodes.",
        "",
        "| page | median ms | p95 ms | HTML KiB |",
        "|---|---:|---:|---:|",
        *(
            f"| {n} | {m:.1f} | {p:.1f} | {f'{s / 1024:.0f}' if s else '-'} |"
            for n, m, p, s in results
        ),
        "",
        "The overview renders one page of 100 nodes (worst score first) with a sparkline each, so "
        "its cost hardly grows with the fleet beyond the sort of all nodes. The node page's "
        "contributor plots cover the score plot's day: its handler reads the node's day from the "
        f"source (a stub here: {SERIES} series at 15 s, the features' warm-up included) and "
        "computes the three contributors' expected values and bands with the node's model, at "
        "most 600 points a plot.",
        "",
        "## Score history across restarts (`scores.sqlite3`)",
        "",
        *persisted,
    ]
    out = REPO / "bench/reports/page_render.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
