"""Render time of the analyzer's overview and node pages for a large fleet.

Builds an analyzer state of N nodes (default 1,000), each with a full day of scores in its
timeline (1,500 buckets), some alerting with contributor tracks, and an alert history of the last
day; then renders ``/`` (first page and a later one) and ``/node/<instance>`` many times and
reports the median and 95th percentile. The issue's target: the overview in <= 100 ms for 1,000
nodes. No HTTP: the render functions the handlers call, on one core.

Run by hand:  .venv/bin/python bench/page_render.py [--nodes 1000] [--repeat 30]
Writes bench/reports/page_render.md.
"""

from __future__ import annotations

import argparse
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
from dcwatch.detectors.service import Health, NodeState  # noqa: E402
from dcwatch.detectors.timeline import Incident, NodeTimeline, Timeline, Track  # noqa: E402
from dcwatch.detectors.web.node_page import render_node  # noqa: E402
from dcwatch.detectors.web.page import render_overview  # noqa: E402

DAY = 86400.0


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
            inc = Incident(start=float(ts[-40]))
            for c in node.contributors:
                tr = Track(c.series, c.feature)
                k = 400
                tt = np.linspace(ts[-40] - 1800, now, k)
                v = 60 + rng.normal(0, 1, k)
                tr.add(tt, v, np.full(k, 60.0), 3.0, 0.0)
                inc.tracks[c.series] = tr
            t.incident = inc
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
    return SimpleNamespace(
        nodes=nodes,
        timeline=tl,
        sender=sender,
        source=source,
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
    out.sort()
    return statistics.median(out), out[int(0.95 * (len(out) - 1))], size


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
        rows = [
            ("overview, page 1", lambda: render_overview(an, None, recent, now=now)),
            ("overview, page 5", lambda: render_overview(an, None, recent, page=4, now=now)),
            (
                "node page with an alert",
                lambda: render_node(an, None, alert_node, node_hist, now=now),
            ),
            ("node page, no alert", lambda: render_node(an, None, quiet_node, [], now=now)),
            ("alert history query (1 day)", lambda: str(history.since(now - DAY, None, 60))),
        ]
        results = [(name, *timed(fn, args.repeat)) for name, fn in rows]  # type: ignore[arg-type]
        history.close()
    lines = [
        "# Page render time",
        "",
        f"`bench/page_render.py --nodes {args.nodes} --repeat {args.repeat}`, one core of this "
        "project's 2-core machine, shared with other work (numbers are indicative). Each node: a "
        "full day of scores (1,500 buckets); 1 node in 97 alerting with 3 contributor tracks; 60 "
        "resolved alerts. Rendering only (no HTTP). Target: overview <= 100 ms at 1,000 nodes.",
        "",
        "| page | median ms | p95 ms | HTML KiB |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {m:.1f} | {p:.1f} | {s / 1024:.0f} |" for n, m, p, s in results),
        "",
        "The overview renders one page of 100 nodes (worst score first) with a sparkline each, so "
        "its cost hardly grows with the fleet beyond the sort of all nodes.",
    ]
    out = REPO / "bench/reports/page_render.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
