"""``/node/<instance>``: why the analyzer thinks what it thinks of one node.

The anomaly score against its threshold over the last day with the alert intervals shaded; for
the current or latest alert one plot per top contributing series over the same day (observed, the
model's expected value and its normal band, :mod:`.contributors`); the model's state; the node's
alert history; its capacity forecasts. Every alert's generatorURL points here. Server-rendered
SVG, no script.
"""

from __future__ import annotations

import asyncio
import html
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
from aiohttp import web

from dcwatch.detectors.alerting.history import KEEP_SECONDS, PastAlert
from dcwatch.detectors.capacity.series import human_duration
from dcwatch.detectors.frame import split_column
from dcwatch.detectors.timeline import NodeTimeline
from dcwatch.detectors.web.capacity_page import plot_svg
from dcwatch.detectors.web.contributors import (
    BAND_SCALES,
    Contributors,
    LatestAlert,
    Track,
    contributor_plots,
    latest_alert,
)
from dcwatch.detectors.web.history import fmt_time, history_table
from dcwatch.detectors.web.keys import ANALYZER, DEMO, PLANNER
from dcwatch.detectors.web.markup import CAPACITY_STYLE, NODE_STYLE, PAGE_STYLE, demo_banner
from dcwatch.detectors.web.svg import TimePlot, unit_scale
from dcwatch.urls import redact_text

if TYPE_CHECKING:
    from dcwatch.detectors.capacity.planner import CapacityPlanner
    from dcwatch.detectors.service import Analyzer, NodeState

WINDOW = 86400.0
W, H = 620, 230
HISTORY_ROWS = 50


def series_title(series: str) -> str:
    """``gpu_temperature_celsius{gpu="1"}`` -> ``GPU 1 · gpu_temperature_celsius``."""
    name, label, value = split_column(series)
    if label is None or value is None:
        return name
    return f"{'GPU' if label == 'gpu' else label} {value} · {name}"


def _unit_of(name: str) -> str:
    for unit in ("bytes_per_second", "bytes", "watts", "celsius", "ratio", "seconds"):
        if name.endswith(unit) or name.endswith(unit + "_total"):
            return unit
    return ""


def page_now(tl: NodeTimeline | None, now: float) -> float:
    """The page's "now": the wall clock, unless the node's newest score is ahead of it or a
    day behind (a replay, a node gone quiet): then that score's time."""
    last = tl.last_ts if tl is not None else None
    if last is None:
        return now
    return max(now, last) if now - last < WINDOW else last


def _window_attrs(t0: float, t1: float) -> str:
    return f'data-from="{t0:.0f}" data-to="{t1:.0f}"'


def score_plot(tl: NodeTimeline | None, now: float) -> str:
    """The score (1 = threshold) over the last day, alert intervals shaded."""
    t0 = now - WINDOW
    if tl is None:
        ts = sc = np.zeros(0)
        spans: list[tuple[float, float | None]] = []
    else:
        ts, sc, _ = tl.points(t0)
        spans = tl.alert_spans(t0)
    # up to 10x the threshold: an incident's peak must not flatten the threshold line
    peak = float(np.nanmax(sc)) if sc.size and np.isfinite(sc).any() else 0.0
    top = min(10.0, max(2.0, peak * 1.1))
    p = TimePlot(t0, now, 0.0, top, W, H)
    p.spans("alert", spans)
    p.line("score", ts, sc, gap=4 * (tl.bucket if tl is not None else 60.0))
    p.hline("threshold", 1.0, "threshold", 'data-threshold="1"')
    p.vline("now", now)
    latest = f"now {sc[-1]:.2f}" if sc.size else "no scores yet"
    if peak > top:
        latest += f" (peak {peak:.0f}, drawn clipped)"
    return p.render(
        "anomaly score (1 = threshold)",
        latest,
        "score",
        f'data-plot="score" data-alerts="{len(spans)}" {_window_attrs(t0, now)}',
        tooltip=f"anomaly score over the last day, {len(spans)} alert interval(s)",
    )


def track_plot(tr: Track, alert: LatestAlert, now: float) -> str:
    """One contributing series over the score plot's window: observed, expected, the band, the
    alert interval shaded."""
    t0 = now - WINDOW
    name, _, _ = split_column(tr.series)
    unit = _unit_of(name)
    seen = np.concatenate([tr.observed, tr.lo, tr.hi])
    seen = seen[np.isfinite(seen)]
    vmin, vmax = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 1.0)
    pad = 0.05 * (vmax - vmin) or 1.0
    div, shown = unit_scale(unit, max(abs(vmin), abs(vmax)))
    p = TimePlot(t0, now, (vmin - pad) / div, (vmax + pad) / div, W, H)
    p.spans("alert", [(alert.start, alert.end)])
    p.band("normal", tr.ts, tr.lo / div, tr.hi / div)
    p.line("expected", tr.ts, tr.expected / div)
    p.line("observed", tr.ts, tr.observed / div)
    e = html.escape
    return p.render(
        series_title(tr.series),
        f"vs {'recent median' if tr.feature == 'short' else 'daily profile'}",
        shown or unit or "value",
        f'data-plot="contributor" data-series="{e(tr.series)}" {_window_attrs(t0, now)}',
        tooltip=f"{tr.series}: observed, expected and ±{BAND_SCALES:g} robust scales",
    )


def _alert_section(view: Contributors, now: float) -> str:
    alert = view.alert
    if alert is None:
        return ""
    e = html.escape
    when = "current alert" if alert.end is None else f"latest alert (ended {fmt_time(alert.end)})"
    out = f"<h2>Top contributors of the {when}, since {fmt_time(alert.start)} UTC</h2>"
    if view.tracks:
        plots = "".join(track_plot(tr, alert, now) for tr in view.tracks)
        origin = " (contributors from the alert history)" if alert.origin != "scoring" else ""
        out += (
            "<p class='small'>last 24 h: observed (blue), the model's expected value (dashed) "
            f"and its normal band (expected ± {BAND_SCALES:g} robust scales of training "
            f"residuals); the alert interval is shaded{origin}.</p>"
            f"<div class='plots'>{plots}</div>"
        )
    if view.note:
        out += f"<p class='small note'>{e(view.note)}</p>"
    return out


def _model_table(node: NodeState, now: float) -> str:
    e = html.escape
    m = node.model
    state = {"cold_start": "cold start (collecting history)", "fitted": "fitted", "stale": "stale"}
    rows = [("state", state.get(node.status, node.status))]
    if node.fit_error:
        rows.append(("last fit error", redact_text(node.fit_error)))
    if m is not None and m.fitted:
        rows += [
            ("training window", f"{m.train_days_ * 24:.1f} h ({m.train_rows_} rows)"),
            ("fitted", f"{fmt_time(m.fitted_at_)} UTC ({human_duration(now - m.fitted_at_)} ago)"),
            ("fit took", f"{m.fit_seconds_:.2f} s"),
            ("series", f"{len(m.series)} used of {m.selection_.seen} seen"),
            ("threshold (raw score)", f"{m.threshold_.value:.4g}"),
        ]
    rows.append(("rows scored", str(node.scored_rows)))
    return (
        "<table class='model'>"
        + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _contributors(node: NodeState) -> str:
    if not node.contributors:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(series_title(c.series))}</td><td>{c.observed:.4g}</td>"
        f"<td>{c.expected:.4g}</td><td>{e(c.feature)}</td><td>1e-{c.surprise:.1f}</td></tr>"
        for c in node.contributors
    )
    return (
        "<table class='contributors'><tr><th>series</th><th>observed</th><th>expected</th>"
        f"<th>against</th><th>p (training)</th></tr>{rows}</table>"
    )


def render_node(
    an: Analyzer,
    planner: CapacityPlanner | None,
    instance: str,
    history: list[PastAlert],
    demo: str = "",
    now: float | None = None,
    contributors: Contributors | None = None,
) -> str:
    """The node page (the node must be known to ``an``); ``contributors``: the latest alert's
    plots (:func:`node_handler` reads them from the source first)."""
    t_start = time.perf_counter()
    e = html.escape
    node = an.nodes[instance]
    tl = an.timeline.get(instance)
    now = page_now(tl, time.time() if now is None else now)
    view = contributors or Contributors()
    parts = [f"<h2>Anomaly score, last 24 h</h2><div class='plots'>{score_plot(tl, now)}</div>"]
    if node.anomaly:
        parts.append("<p class='anomaly'><b>ALERT</b>: this node behaves unlike its history.</p>")
    parts.append(_contributors(node))
    parts.append(_alert_section(view, now))
    if view.alert is None and not node.anomaly:
        parts.append("<p>No alert in the last day.</p>")
    parts.append(f"<h2>Model</h2>{_model_table(node, now)}")
    parts.append(
        f"<h2>Alert history (last {KEEP_SECONDS / 86400:.0f} days)</h2>"
        + history_table(history[:HISTORY_ROWS], now, with_instance=False)
    )
    if planner is not None:
        mine = [s for s in planner.ranked() if s.instance == instance]
        if mine:
            parts.append(
                "<h2>Capacity forecasts</h2><div class='plots'>"
                + "".join(plot_svg(s, now) for s in mine[:12])
                + "</div>"
            )
        else:
            parts.append("<h2>Capacity forecasts</h2><p>No forecasts for this node yet.</p>")
    took = (time.perf_counter() - t_start) * 1000
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(instance)} · dcwatch analyzer</title><link rel='icon' href='data:,'>"
        f"<meta http-equiv='refresh' content='30'><style>{PAGE_STYLE}{CAPACITY_STYLE}"
        f"{NODE_STYLE}</style>"
        f"</head><body>{demo_banner(demo)}<p class='small'><a href='/'>← all nodes</a></p>"
        f"<h1>{e(instance)}</h1><p class='small'>score "
        f"{'-' if node.score is None else f'{node.score:.2f}'} · "
        f"<a href='/api/alerts?instance={e(_q(instance))}&amp;since=30d'>alerts as JSON</a></p>"
        + "".join(parts)
        + f"<p class='small'>rendered in {took:.1f} ms</p></body></html>"
    )


def _q(s: str) -> str:
    return quote(s, safe="")


async def node_handler(request: web.Request) -> web.Response:
    an = request.app[ANALYZER]
    instance = request.match_info["instance"]
    if instance not in an.nodes:
        raise web.HTTPNotFound(text=f"unknown instance {instance[:200]!r}\n")
    hist = await asyncio.to_thread(
        an.sender.history.since, time.time() - KEEP_SECONDS, instance, HISTORY_ROWS
    )
    tl = an.timeline.get(instance)
    now = page_now(tl, time.time())
    alert = latest_alert(tl, hist, now - WINDOW)
    plots = await contributor_plots(
        an.source, instance, an.nodes[instance].model, alert, now - WINDOW, now
    )
    page = render_node(
        an, request.app.get(PLANNER), instance, hist, request.app.get(DEMO, ""), now, plots
    )
    return web.Response(text=page, content_type="text/html")
