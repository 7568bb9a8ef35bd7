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

if TYPE_CHECKING:
    from dcwatch.detectors.capacity.planner import CapacityPlanner
    from dcwatch.detectors.capacity.state import SeriesState

PLOTS = 12  # plots on the page; the rest are table rows
TABLE_ROWS = 50
W, H = 460, 210
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 26, 36

_PREFIXES = {
    "bytes": (1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB")),
    "watts": (1000.0, ("W", "kW", "MW")),
    "bytes_per_second": (1000.0, ("B/s", "kB/s", "MB/s", "GB/s", "TB/s")),
    "": (1000.0, ("", "k", "M", "G", "T")),
}
_X_STEPS = (
    *(1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800),
    *(3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400),
)


def unit_scale(unit: str, vmax: float) -> tuple[float, str]:
    """(divisor, unit text) making ``vmax`` readable: 8.6e10 bytes -> (2**30, "GiB")."""
    if unit == "ratio":
        return 0.01, "%"
    base, names = _PREFIXES.get(unit, _PREFIXES[""])
    i = 0
    while i + 1 < len(names) and abs(vmax) >= base ** (i + 1):
        i += 1
    return base**i, names[i]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) covering ``[lo, hi]``."""
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def time_ticks(t0: float, t1: float) -> tuple[list[float], str]:
    """Tick times at a round interval (about 6 over the span) and their strftime format."""
    span = t1 - t0
    step = next((s for s in _X_STEPS if span / s <= 6), _X_STEPS[-1])
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%b %d"
    if step < 86400 <= span:
        fmt = "%a %H:%M"
    first = math.ceil(t0 / step) * step
    return [first + i * step for i in range(int((t1 - first) // step) + 1)], fmt


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


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
    yticks = nice_ticks(vmin / div, vmax / div)
    vmax = max(vmax, yticks[-1] * div)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t: np.ndarray | float) -> np.ndarray | float:
        return LEFT + (np.asarray(t) - t0) / max(t1 - t0, 1e-9) * pw

    def y(v: np.ndarray | float) -> np.ndarray | float:
        return TOP + ph - (np.clip(v, vmin, vmax) - vmin) / (vmax - vmin) * ph

    def pts(ts: np.ndarray, vs: np.ndarray) -> str:
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x(ts), y(vs), strict=True))  # type: ignore[arg-type]

    ex = st.exhaustion
    est = ex.estimate if ex else None
    verdict, full = _verdict(st)
    device = f' data-device="{e(st.device)}"' if st.device is not None else ""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" data-rule="{e(rule.name)}" '
        f'data-instance="{e(st.instance)}"{device}>',
        f"<title>{e(rule.label)} on {e(st.where)}: {verdict}</title>",
        f'<text class="title" x="{LEFT}" y="16">{e(rule.label)} · {e(st.where)}</text>',
        f'<text class="{"full" if full else "verdict"}" '
        f'x="{W - RIGHT}" y="16" text-anchor="end">{verdict}</text>',
    ]
    for v in yticks:
        yy = y(v * div)
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
            f'<text x="{LEFT - 4}" y="{yy + 3:.1f}" text-anchor="end">{_fmt(v)}</text>'
        )
    xt, fmt = time_ticks(t0, t1)
    for t in xt:
        xx = x(t)
        label = time.strftime(fmt, time.gmtime(t))
        out.append(
            f'<line class="axis" x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}"/>'
            f'<text x="{xx:.1f}" y="{TOP + ph + 15}" text-anchor="middle">{label}</text>'
        )
    out.append(
        f'<text x="{LEFT + pw / 2:.0f}" y="{H - 4}" text-anchor="middle">time (UTC)</text>'
        f'<text x="12" y="{TOP + ph / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + ph / 2:.0f})">{e(unit or rule.unit or "value")}</text>'
        f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + ph}"/>'
        f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + ph}" y2="{TOP + ph}"/>'
    )
    band = pts(ft, fhi) + " " + pts(ft[::-1], flo[::-1])
    out.append(f'<polygon class="band" points="{band}"/>')
    for seg in _segments(ht, hv, st.plot.bucket * 3 if st.plot is not None else math.inf):
        out.append(f'<polyline class="history" points="{pts(*seg)}"/>')
    out.append(f'<polyline class="forecast" points="{pts(ft, fm)}"/>')
    if cap is not None and thr is not None:
        yc, yt = y(cap), y(thr)
        out.append(
            f'<line class="capacity" x1="{LEFT}" x2="{W - RIGHT}" y1="{yc:.1f}" y2="{yc:.1f}"/>'
            f'<line class="threshold" data-threshold="{thr:g}" x1="{LEFT}" x2="{W - RIGHT}" '
            f'y1="{yt:.1f}" y2="{yt:.1f}"/>'
            f'<text x="{W - RIGHT - 2}" y="{yt - 3:.1f}" text-anchor="end">'
            f"{rule.threshold:.0%} of capacity</text>"
        )
    if t0 <= now <= t1:
        out.append(
            f'<line class="now" x1="{x(now):.1f}" x2="{x(now):.1f}" y1="{TOP}" y2="{TOP + ph}"/>'
        )
    if est is not None and thr is not None and now + est <= t1:
        out.append(f'<circle class="exhaustion" cx="{x(now + est):.1f}" cy="{y(thr):.1f}" r="4"/>')
    out.append("</svg>")
    return "".join(out)


def _verdict(st: SeriesState) -> tuple[str, bool]:
    """("full in ~3 days", True) / ("not full within 7 days", False) / no recent data."""
    if st.stale:
        return "no recent data", False
    est = st.exhaustion.estimate if st.exhaustion else None
    if est is not None and est <= st.rule.horizon:
        return ("full now" if est <= 0 else f"full in ~{human_duration(est)}"), True
    return f"not full within {human_duration(st.rule.horizon)}", False


def _segments(t: np.ndarray, v: np.ndarray, gap: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a line where points are more than ``gap`` apart (missing data is not drawn)."""
    if t.size < 2:
        return [(t, v)] if t.size else []
    cuts = np.flatnonzero(np.diff(t) > gap) + 1
    return list(zip(np.split(t, cuts), np.split(v, cuts), strict=True))


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
