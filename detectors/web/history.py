"""Alert history on the web: ``GET /api/alerts?since=`` (JSON) and the history table the overview
and the node pages share. The history itself is :mod:`dcwatch.detectors.alerting.history`."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import quote

from aiohttp import web

from dcwatch.detectors.alerting.history import PastAlert
from dcwatch.detectors.capacity.series import human_duration
from dcwatch.detectors.web.keys import SENDER

DEFAULT_SINCE = 86400.0  # /api/alerts without since: the last day
MAX_LIMIT = 5000


def parse_since(text: str, now: float) -> float:
    """``since=``: unix seconds (``1700000000``), RFC 3339 (``2024-05-01T10:00:00Z``) or a
    duration back from now (``2h``, ``30d``). ValueError for anything else."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError("RFC 3339 needs a time zone (Z or +hh:mm)")
    return t.timestamp()


async def alerts_handler(request: web.Request) -> web.Response:
    """Alerts active at or after ``since`` (firing and resolved), newest first; ``instance=``
    narrows to one node, ``limit=`` (default 1000, at most 5000)."""
    now = time.time()
    try:
        since = (
            parse_since(request.query.get("since", ""), now)
            if "since" in request.query
            else (now - DEFAULT_SINCE)
        )
        limit = min(int(request.query.get("limit", "1000")), MAX_LIMIT)
    except ValueError as e:
        raise web.HTTPBadRequest(
            text=f"bad since/limit ({e}): since=unix seconds, RFC 3339 or a duration like 2h\n"
        ) from e
    history = request.app[SENDER].history
    rows = await asyncio.to_thread(history.since, since, request.query.get("instance"), limit)
    return web.json_response(
        {"since": since, "alerts": [r.as_json() for r in rows]},
    )


def fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def node_link(instance: str) -> str:
    """``<a href="/node/...">instance</a>``, quoted and escaped (instances come from targets)."""
    return f"<a href='/node/{html.escape(quote(instance, safe=''))}'>{html.escape(instance)}</a>"


def history_table(alerts: Sequence[PastAlert], now: float, *, with_instance: bool = True) -> str:
    """Firing and resolved alerts with their durations and top contributors."""
    if not alerts:
        return "<p>None in this period.</p>"
    e = html.escape
    rows = []
    for a in alerts:
        state = "firing" if a.resolved_at is None else "resolved"
        ended = "-" if a.resolved_at is None else fmt_time(a.resolved_at)
        inst = f"<td>{node_link(a.instance) if a.instance else '-'}</td>" if with_instance else ""
        rows.append(
            f"<tr class='{'anomaly' if state == 'firing' else 'resolved'}'>"
            f"<td>{e(a.alertname)}</td>{inst}<td>{state}</td><td>{fmt_time(a.starts_at)}</td>"
            f"<td>{ended}</td><td>{human_duration(max(0.0, a.duration(now)))}</td>"
            f"<td>{e(a.summary)}<div class='small'>{e(a.description)}</div></td></tr>"
        )
    head = "<th>instance</th>" if with_instance else ""
    return (
        f"<table class='history'><tr><th>alert</th>{head}<th>state</th><th>fired (UTC)</th>"
        "<th>resolved</th><th>duration</th><th>summary and top contributors</th></tr>"
        + "".join(rows)
        + "</table>"
    )
