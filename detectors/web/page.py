"""The overview page: nodes and their scores, active alerts with contributors and the capacity
forecasts with their plots (server-rendered, no script)."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from dcwatch.detectors.web.capacity_page import render_capacity
from dcwatch.detectors.web.markup import CAPACITY_STYLE, PAGE_STYLE, plural
from dcwatch.urls import redact_text

if TYPE_CHECKING:
    from dcwatch.detectors.capacity.planner import CapacityPlanner
    from dcwatch.detectors.service import Analyzer


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_overview(an: Analyzer, planner: CapacityPlanner | None = None) -> str:
    t0 = time.perf_counter()
    e = html.escape
    rows = []
    for n in sorted(an.nodes.values(), key=lambda n: (not n.anomaly, -(n.score or 0), n.instance)):
        cls = "anomaly" if n.anomaly else n.status
        age = (
            f"{(time.time() - n.model.fitted_at_) / 3600:.1f} h ago"
            if n.model is not None
            else "not yet"
        )
        status = {
            "cold_start": "cold start (collecting history)",
            "fitted": "fitted",
            "stale": f"stale {e(redact_text(n.fit_error))}",
        }[n.status]
        rows.append(
            f"<tr class='{cls}'><td>{e(n.instance)}</td><td>{status}</td>"
            f"<td>{_fmt(n.score)}</td><td>{'ALERT' if n.anomaly else 'ok'}</td>"
            f"<td>{age}</td></tr>"
        )
    alerts = []
    for rec in an.sender.firing():
        lab = rec.alert.labels
        ann = rec.alert.annotations
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.starts_at))
        alerts.append(
            f"<tr class='anomaly'><td>{e(lab.get('alertname', ''))}</td>"
            f"<td>{e(lab.get('instance', ''))}</td><td>{e(lab.get('severity', ''))}</td>"
            f"<td>{since}</td><td>{e(ann.get('summary', ''))}<div class='small'>"
            f"{e(ann.get('description', ''))}</div></td></tr>"
        )
    extra = style = ""
    if planner is not None:
        extra, style = render_capacity(planner), CAPACITY_STYLE
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dcwatch analyzer</title>"
        "<link rel='icon' href='data:,'>"  # no favicon request: nothing leaves the page
        f"<meta http-equiv='refresh' content='30'><style>{PAGE_STYLE}{style}</style></head><body>"
        f"<h1>dcwatch analyzer</h1><p class='small'>{e(an.cfg.mode)} source · "
        f"{plural(len(an.nodes), 'node')} · last scoring pass {an.pass_duration * 1000:.0f} ms · "
        "<a href='/metrics'>/metrics</a> · <a href='/api/nodes'>/api/nodes</a></p>"
        "<h2>Active alerts</h2>"
        + (
            "<table><tr><th>alert</th><th>instance</th><th>severity</th><th>since</th>"
            f"<th>summary and contributors</th></tr>{''.join(alerts)}</table>"
            if alerts
            else "<p>None.</p>"
        )
        + "<h2>Nodes</h2><table><tr><th>instance</th><th>model</th><th>score "
        "(1 = threshold)</th><th>state</th><th>fitted</th></tr>"
        f"{''.join(rows)}</table>{extra}<p class='small'>rendered in "
        f"{(time.perf_counter() - t0) * 1000:.1f} ms</p></body></html>"
    )
