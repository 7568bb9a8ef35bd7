"""The overview page: source and target health, alerts firing and recently resolved, the nodes
worst score first (a page of them at a time, each with a sparkline of its last day and a link to
its node page) and the capacity forecasts with their plots (server-rendered, no script).

It stays small whatever the fleet: one page of ``PAGE_SIZE`` nodes, failing targets only, the
last ``RECENT_ALERTS`` alerts; 1,000 nodes render in a few milliseconds (bench/page_render.py).
"""

from __future__ import annotations

import asyncio
import html
import time
from typing import TYPE_CHECKING

from aiohttp import web

from dcwatch.detectors.web.capacity_page import render_capacity
from dcwatch.detectors.web.history import history_table, node_link
from dcwatch.detectors.web.keys import ANALYZER, DEMO, PLANNER
from dcwatch.detectors.web.markup import (
    CAPACITY_STYLE,
    NODE_STYLE,
    PAGE_STYLE,
    demo_banner,
    plural,
)
from dcwatch.detectors.web.svg import sparkline
from dcwatch.urls import redact_text

if TYPE_CHECKING:
    from dcwatch.detectors.alerting.history import PastAlert
    from dcwatch.detectors.capacity.planner import CapacityPlanner
    from dcwatch.detectors.service import Analyzer, NodeState

PAGE_SIZE = 100
RECENT_ALERTS = 30
RECENT_SECONDS = 86400.0
FAILING_TARGETS = 20


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _order(n: NodeState) -> tuple[bool, float, str]:
    return (not n.anomaly, -(n.score or 0), n.instance)


def _node_row(an: Analyzer, n: NodeState, now: float) -> str:
    e = html.escape
    cls = "anomaly" if n.anomaly else n.status
    age = f"{(now - n.model.fitted_at_) / 3600:.1f} h ago" if n.model is not None else "not yet"
    status = {
        "cold_start": "cold start (collecting history)",
        "fitted": "fitted",
        "stale": f"stale {e(redact_text(n.fit_error))}",
    }[n.status]
    tl = an.timeline.get(n.instance)
    spark = ""
    if tl is not None:
        end = tl.last_ts if tl.last_ts is not None else now
        _, sc, _ = tl.points(min(now, end) - RECENT_SECONDS)
        top = max(2.0, float(sc.max())) if sc.size else 2.0
        spark = sparkline(sc, vmax=top, mark=1.0)
    top_c = e(n.contributors[0].series) if n.anomaly and n.contributors else ""
    return (
        f"<tr class='{cls}'><td>{node_link(n.instance)}</td><td>{status}</td>"
        f"<td>{_fmt(n.score)}</td><td>{spark}</td><td>{'ALERT' if n.anomaly else 'ok'}"
        f"{f' <span class=small>{top_c}</span>' if top_c else ''}</td><td>{age}</td></tr>"
    )


def _health(an: Analyzer) -> str:
    """The source's state and the targets it scrapes (failing ones named, the rest counted)."""
    e = html.escape
    h = an.health()
    parts = []
    if h.reasons:
        parts.append("<ul class='down'>" + "".join(f"<li>{e(r)}</li>" for r in h.reasons) + "</ul>")
    src = "source: " + (
        f"<span class='down'>failing: {e(an.last_source_error)}</span>"
        if an.last_source_error
        else "answering"
        if an.last_source_success is not None
        else "not read yet"
    )
    targets = an.source.target_status()
    if targets:
        down = [t for t in targets if t.up is False]
        waiting = sum(t.up is None for t in targets)
        src += (
            f" · targets: {len(targets) - len(down) - waiting} up, "
            f"<span class='{'down' if down else ''}'>{len(down)} down</span>"
            + (f", {waiting} not scraped yet" if waiting else "")
        )
        if down:
            rows = "".join(
                f"<tr class='anomaly'><td>{e(t.instance)}</td><td>{e(redact_text(t.url))}</td>"
                f"<td>{e(t.reason or '-')}</td><td>{e(redact_text(t.last_error))}</td>"
                f"<td>{t.failures}</td></tr>"
                for t in down[:FAILING_TARGETS]
            )
            more = len(down) - FAILING_TARGETS
            parts.append(
                "<table><tr><th>target down</th><th>url</th><th>reason</th><th>last error</th>"
                f"<th>failed scrapes</th></tr>{rows}</table>"
                + (f"<p class='small'>… and {more} more</p>" if more > 0 else "")
            )
    info = "".join(f" · {e(i)}" for i in h.info)
    return f"<h2>Health</h2><p>{src}{info}</p>" + "".join(parts)


def _pager(page: int, pages: int) -> str:
    if pages <= 1:
        return ""
    links = [
        f"<b>{i + 1}</b>" if i == page else f"<a href='/?page={i + 1}'>{i + 1}</a>"
        for i in range(pages)
    ]
    return f"<p class='pager small'>page {' '.join(links)}</p>"


def render_overview(
    an: Analyzer,
    planner: CapacityPlanner | None = None,
    recent: list[PastAlert] | None = None,
    *,
    page: int = 0,
    demo: str = "",
    now: float | None = None,
) -> str:
    """The overview; ``page`` is 0-based (``PAGE_SIZE`` nodes each), ``recent`` the alerts of
    the last day from the alert history."""
    t0 = time.perf_counter()
    now = time.time() if now is None else now
    e = html.escape
    ranked = sorted(an.nodes.values(), key=_order)
    pages = max(1, -(-len(ranked) // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    shown = ranked[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    rows = "".join(_node_row(an, n, now) for n in shown)
    alerting = sum(n.anomaly for n in ranked)
    firing = []
    for rec in an.sender.firing():
        lab = rec.alert.labels
        ann = rec.alert.annotations
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.starts_at))
        inst = lab.get("instance", "")
        firing.append(
            f"<tr class='anomaly'><td>{e(lab.get('alertname', ''))}</td>"
            f"<td>{node_link(inst) if inst in an.nodes else e(inst)}</td>"
            f"<td>{e(lab.get('severity', ''))}</td><td>{since}</td>"
            f"<td>{e(ann.get('summary', ''))}<div class='small'>"
            f"{e(ann.get('description', ''))}</div></td></tr>"
        )
    extra = style = ""
    if planner is not None:
        extra, style = render_capacity(planner), CAPACITY_STYLE
    resolved = [a for a in (recent or []) if a.resolved_at is not None][:RECENT_ALERTS]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dcwatch analyzer</title>"
        "<link rel='icon' href='data:,'>"  # no favicon request: nothing leaves the page
        f"<meta http-equiv='refresh' content='30'><style>{PAGE_STYLE}{style}{NODE_STYLE}</style>"
        f"</head><body>{demo_banner(demo)}"
        f"<h1>dcwatch analyzer</h1><p class='small'>{e(an.cfg.mode)} source · "
        f"{plural(len(an.nodes), 'node')} ({alerting} alerting) · last scoring pass "
        f"{an.pass_duration * 1000:.0f} ms · <a href='/metrics'>/metrics</a> · "
        "<a href='/api/nodes'>/api/nodes</a> · <a href='/api/alerts?since=1d'>/api/alerts</a> · "
        "<a href='/healthz'>/healthz</a></p>"
        + _health(an)
        + "<h2>Active alerts</h2>"
        + (
            "<table><tr><th>alert</th><th>instance</th><th>severity</th><th>since</th>"
            f"<th>summary and contributors</th></tr>{''.join(firing)}</table>"
            if firing
            else "<p>None.</p>"
        )
        + "<h2>Resolved in the last 24 h</h2>"
        + history_table(resolved, now)
        + f"<h2>Nodes</h2><p class='small'>worst score first · {PAGE_SIZE} per page</p>"
        + _pager(page, pages)
        + "<table class='nodes'><tr><th>instance</th><th>model</th><th>score "
        "(1 = threshold)</th><th>last 24 h</th><th>state</th><th>fitted</th></tr>"
        f"{rows}</table>{_pager(page, pages)}{extra}<p class='small'>rendered in "
        f"{(time.perf_counter() - t0) * 1000:.1f} ms</p></body></html>"
    )


async def overview_handler(request: web.Request) -> web.Response:
    an = request.app[ANALYZER]
    try:
        page = int(request.query.get("page", "1")) - 1
    except ValueError:
        page = 0
    recent = await asyncio.to_thread(
        an.sender.history.since, time.time() - RECENT_SECONDS, None, 2 * RECENT_ALERTS
    )
    html_text = render_overview(
        an,
        request.app.get(PLANNER),
        recent,
        page=page,
        demo=request.app.get(DEMO, ""),
    )
    return web.Response(text=html_text, content_type="text/html")
