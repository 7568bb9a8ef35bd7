"""The overview page's capacity section: a small inline SVG plot per series (history, forecast,
95 % band, threshold and capacity), the soonest-full first, then a table of the next ones.

Server-rendered, no script, no external resources: it works offline and in any browser.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dcwatch.detectors.capacity.series import human_duration
from dcwatch.detectors.web.markup import plural
from dcwatch.detectors.web.svg import TimePlot, nice_ticks, time_ticks, unit_scale

if TYPE_CHECKING:
    from dcwatch.detectors.capacity.planner import CapacityPlanner
    from dcwatch.detectors.capacity.state import SeriesState

PLOTS = 12  # plots on the page; the rest are table rows
TABLE_ROWS = 50
W, H = 460, 210
__all__ = ["nice_ticks", "plot_svg", "render_capacity", "time_ticks", "unit_scale"]


def plot_svg(st: SeriesState, now: float | None = None) -> str:
    """One series' plot as an inline ``<svg>``."""
    e = html.escape
    now = time.time() if now is None else now
    rule = st.rule
    ht, hv = st.plot.points() if st.plot is not None else (np.zeros(0), np.zeros(0))
    ft, fm, flo, fhi = st.forecast_plot
    t0 = float(ht[0]) if ht.size else float(ft[0])
    t1 = float(ft[-1])
    seen = np.concatenate((hv, fm))
    cap, thr = st.capacity, st.threshold_value
    vmax = float(np.nanmax(seen)) if seen.size else 1.0
    vmin = float(np.nanmin(seen)) if seen.size else 0.0
    if cap is not None:
        vmax = max(vmax, cap * 1.05)
    vmin = 0.0 if vmin >= 0 else vmin
    if not vmax > vmin:
        vmax = vmin + 1.0
    div, unit = unit_scale(rule.unit, vmax)
    vmax = max(vmax, nice_ticks(vmin / div, vmax / div)[-1] * div)
    # The plot works in display units (GiB, %): ticks land on round numbers of what people read.
    p = TimePlot(t0, t1, vmin / div, vmax / div, W, H)
    p.band("band", ft, flo / div, fhi / div)
    p.line("history", ht, hv / div, st.plot.bucket * 3 if st.plot is not None else math.inf)
    p.line("forecast", ft, fm / div)
    if cap is not None and thr is not None:
        p.hline("capacity", cap / div)
        p.hline(
            "threshold",
            thr / div,
            f"{rule.threshold:.0%} of capacity",
            f'data-threshold="{thr:g}"',
        )
    p.vline("now", now)
    ex = st.exhaustion
    est = ex.estimate if ex else None
    if est is not None and thr is not None and now + est <= t1:
        p.add(
            f'<circle class="exhaustion" cx="{float(p.x(now + est)):.1f}" '
            f'cy="{float(p.y(thr / div)):.1f}" r="4"/>'
        )
    verdict, full = _verdict(st)
    device = f' data-device="{e(st.device)}"' if st.device is not None else ""
    return p.render(
        f"{rule.label} · {st.where}",
        verdict,
        unit or rule.unit or "value",
        f'data-rule="{e(rule.name)}" data-instance="{e(st.instance)}"{device}',
        right_cls="full" if full else "verdict",
        tooltip=f"{rule.label} on {st.where}: {verdict}",
    )


def _verdict(st: SeriesState) -> tuple[str, bool]:
    """("full in ~3 days", True) / ("not full within 7 days", False) / no recent data."""
    if st.stale:
        return "no recent data", False
    est = st.exhaustion.estimate if st.exhaustion else None
    if est is not None and est <= st.rule.horizon:
        return ("full now" if est <= 0 else f"full in ~{human_duration(est)}"), True
    return f"not full within {human_duration(st.rule.horizon)}", False


def _row(st: SeriesState) -> str:
    e = html.escape
    ex = st.exhaustion
    text, full = _verdict(st)
    if full and ex is not None and ex.estimate is not None:
        lo = human_duration(ex.earliest or 0)
        hi = human_duration(ex.latest) if ex.latest is not None else "later"
        text = f"~{human_duration(ex.estimate)} <span class='small'>({lo} – {hi})</span>"
    util = st.utilization
    return (
        f"<tr><td>{e(st.rule.label)}</td><td>{e(st.where)}</td>"
        f"<td>{'-' if util is None else f'{util:.0%}'}</td><td>{text}</td>"
        f"<td>{e(st.model)}</td></tr>"
    )


def render_capacity(planner: CapacityPlanner, now: float | None = None) -> str:
    """The capacity section of ``/``."""
    ranked = planner.ranked()
    waiting = [s for s in planner.all_series() if not s.forecast_plot]
    full = [
        s
        for s in ranked
        if s.exhaustion and s.exhaustion.estimate is not None
        if s.exhaustion.estimate <= s.rule.horizon
    ]
    head = (
        f"<h2>Capacity</h2><p class='small'>{plural(len(planner.rules), 'rule')} · "
        f"{len(ranked)} series forecast · {len(full)} forecast full within their horizon"
        + (f" · {len(waiting)} collecting history" if waiting else "")
        + "</p>"
    )
    if not ranked:
        return head + "<p>No forecasts yet.</p>"
    plots = "".join(plot_svg(s, now) for s in ranked[:PLOTS])
    rows: Sequence[SeriesState] = ranked[:TABLE_ROWS]
    more = len(ranked) - len(rows)
    return (
        f"{head}<div class='plots'>{plots}</div><table><tr><th>rule</th><th>series</th>"
        "<th>used now</th><th>full in (95% interval)</th><th>forecaster</th></tr>"
        + "".join(_row(s) for s in rows)
        + "</table>"
        + (f"<p class='small'>… and {more} more (see /metrics)</p>" if more > 0 else "")
    )
