"""Small server-side SVG plots for the analyzer's pages: axes, ticks, lines, bands and shaded
intervals. :class:`TimePlot` maps time and value to pixels and draws the frame; the capacity
plots (:mod:`.capacity_page`) and the node page's plots (:mod:`.node_page`) add their series.

No script, no external resource: the output is inline ``<svg>`` any browser shows offline.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable

import numpy as np

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


def tick_text(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def segments(t: np.ndarray, v: np.ndarray, gap: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a line where points are more than ``gap`` apart or missing (gaps are not drawn)."""
    ok = np.isfinite(v)
    if not ok.all():
        t, v = t[ok], v[ok]
    if t.size < 2:
        return [(t, v)] if t.size else []
    cuts = np.flatnonzero(np.diff(t) > gap) + 1
    return list(zip(np.split(t, cuts), np.split(v, cuts), strict=True))


class TimePlot:
    """A plot of values over ``[t0, t1]`` (unix seconds) and ``[vmin, vmax]``, ``w`` x ``h`` px.

    Build the pieces with the methods, then :meth:`render` wraps them in the ``<svg>`` with its
    axes; every text is escaped here.
    """

    LEFT, RIGHT, TOP, BOTTOM = 64, 14, 26, 36

    def __init__(
        self, t0: float, t1: float, vmin: float, vmax: float, w: int = 460, h: int = 210
    ) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + 1e-9)
        if not vmax > vmin:
            vmax = vmin + 1.0
        self.vmin, self.vmax, self.w, self.h = vmin, vmax, w, h
        self.pw = w - self.LEFT - self.RIGHT
        self.ph = h - self.TOP - self.BOTTOM
        self.parts: list[str] = []

    def x(self, t: np.ndarray | float) -> np.ndarray:
        return self.LEFT + (np.asarray(t, dtype=float) - self.t0) / (self.t1 - self.t0) * self.pw

    def y(self, v: np.ndarray | float) -> np.ndarray:
        lo, hi = self.vmin, self.vmax
        return (
            self.TOP
            + self.ph
            - (np.clip(np.asarray(v, dtype=float), lo, hi) - lo) / (hi - lo) * self.ph
        )

    def points(self, ts: np.ndarray, vs: np.ndarray) -> str:
        xs, ys = self.x(ts).tolist(), self.y(vs).tolist()
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys, strict=True))

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def line(self, cls: str, ts: np.ndarray, vs: np.ndarray, gap: float = math.inf) -> None:
        """A polyline of class ``cls``, broken where points are ``gap`` apart or NaN."""
        for seg in segments(np.asarray(ts, float), np.asarray(vs, float), gap):
            self.parts.append(f'<polyline class="{cls}" points="{self.points(*seg)}"/>')

    def band(self, cls: str, ts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """A filled band between ``lo`` and ``hi`` (one polygon per stretch without gaps)."""
        ts, lo, hi = (np.asarray(a, float) for a in (ts, lo, hi))
        ok = np.isfinite(lo) & np.isfinite(hi)
        for st, lo_seg in segments(ts[ok], lo[ok], math.inf):
            hi_seg = hi[ok][np.isin(ts[ok], st)]
            pts = self.points(st, hi_seg) + " " + self.points(st[::-1], lo_seg[::-1])
            self.parts.append(f'<polygon class="{cls}" points="{pts}"/>')

    def hline(self, cls: str, v: float, label: str = "", attrs: str = "") -> None:
        yy = float(self.y(v))
        self.parts.append(
            f'<line class="{cls}" {attrs} x1="{self.LEFT}" x2="{self.w - self.RIGHT}" '
            f'y1="{yy:.1f}" y2="{yy:.1f}"/>'
        )
        if label:
            self.parts.append(
                f'<text x="{self.w - self.RIGHT - 2}" y="{yy - 3:.1f}" text-anchor="end">'
                f"{html.escape(label)}</text>"
            )

    def vline(self, cls: str, t: float) -> None:
        if self.t0 <= t <= self.t1:
            xx = float(self.x(t))
            self.parts.append(
                f'<line class="{cls}" x1="{xx:.1f}" x2="{xx:.1f}" y1="{self.TOP}" '
                f'y2="{self.TOP + self.ph}"/>'
            )

    def spans(self, cls: str, intervals: Iterable[tuple[float, float | None]]) -> None:
        """Shade ``[start, end]`` intervals (end None: still open, up to the right edge), with
        ``data-start``/``data-end`` so a test can check the plot holds them."""
        for start, end in intervals:
            a = max(start, self.t0)
            b = min(self.t1 if end is None else end, self.t1)
            if b < a:
                continue
            xa, xb = float(self.x(a)), float(self.x(b))
            self.parts.append(
                f'<rect class="{cls}" data-start="{start:.0f}" '
                f'data-end="{"" if end is None else f"{end:.0f}"}" x="{xa:.1f}" y="{self.TOP}" '
                f'width="{max(xb - xa, 1.5):.1f}" height="{self.ph}"/>'
            )

    def render(
        self,
        title: str,
        right: str = "",
        unit: str = "",
        attrs: str = "",
        *,
        right_cls: str = "verdict",
        tooltip: str = "",
    ) -> str:
        """The whole ``<svg>``: title (``right`` at its right, ``tooltip`` as its ``<title>``),
        grid, time axis (UTC), then the pieces added, in that order; ``attrs`` are already
        escaped attributes of the ``<svg>``."""
        e = html.escape
        L, T, pw, ph = self.LEFT, self.TOP, self.pw, self.ph
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{self.w}" '
            f'height="{self.h}" viewBox="0 0 {self.w} {self.h}" role="img" {attrs}>',
            f"<title>{e(tooltip or title)}</title>",
            f'<text class="title" x="{L}" y="16">{e(title)}</text>',
        ]
        if right:
            out.append(
                f'<text class="{right_cls}" x="{self.w - self.RIGHT}" y="16" text-anchor="end">'
                f"{e(right)}</text>"
            )
        for v in nice_ticks(self.vmin, self.vmax):
            yy = float(self.y(v))
            out.append(
                f'<line class="grid" x1="{L}" x2="{self.w - self.RIGHT}" y1="{yy:.1f}" '
                f'y2="{yy:.1f}"/><text x="{L - 4}" y="{yy + 3:.1f}" text-anchor="end">'
                f"{tick_text(v)}</text>"
            )
        xt, fmt = time_ticks(self.t0, self.t1)
        for t in xt:
            xx = float(self.x(t))
            out.append(
                f'<line class="axis" x1="{xx:.1f}" x2="{xx:.1f}" y1="{T + ph}" y2="{T + ph + 4}"/>'
                f'<text x="{xx:.1f}" y="{T + ph + 15}" text-anchor="middle">'
                f"{time.strftime(fmt, time.gmtime(t))}</text>"
            )
        out.append(
            f'<text x="{L + pw / 2:.0f}" y="{self.h - 4}" text-anchor="middle">time (UTC)</text>'
            f'<text x="12" y="{T + ph / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {T + ph / 2:.0f})">{e(unit or "value")}</text>'
            f'<line class="axis" x1="{L}" x2="{L}" y1="{T}" y2="{T + ph}"/>'
            f'<line class="axis" x1="{L}" x2="{self.w - self.RIGHT}" y1="{T + ph}" '
            f'y2="{T + ph}"/>'
        )
        return "".join(out + self.parts) + "</svg>"


def sparkline(
    values: np.ndarray,
    w: int = 120,
    h: int = 22,
    vmax: float | None = None,
    mark: float | None = None,
) -> str:
    """A tiny inline line of ``values`` (NaN gaps left open) scaled to ``[0, vmax]``, at most
    one point per pixel (the highest of those it stands for); ``mark``: a dashed level line."""
    v = np.asarray(values, dtype=float)
    if v.size > w:  # the highest of each chunk: a short spike must stay visible
        cut = v[: v.size // w * w].reshape(w, -1)
        with np.errstate(all="ignore"):
            v = np.where(
                np.isfinite(cut).any(axis=1),
                np.nanmax(np.nan_to_num(cut, nan=-np.inf), axis=1),
                np.nan,
            )
    if v.size < 2 or not np.isfinite(v).any():
        return f'<svg class="spark" width="{w}" height="{h}" aria-hidden="true"></svg>'
    top = vmax if vmax is not None else float(np.nanmax(v))
    top = top if top > 0 else 1.0
    xs = np.linspace(1, w - 1, v.size)
    ys = h - 1 - np.clip(v, 0, top) / top * (h - 2)
    lines = []
    for sx, sy in segments(xs, ys, math.inf):
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(sx.tolist(), sy.tolist(), strict=True))
        lines.append(f'<polyline points="{pts}"/>')
    if mark is not None and 0 < mark <= top:
        ym = h - 1 - mark / top * (h - 2)
        lines.append(f'<line class="thr" x1="0" x2="{w}" y1="{ym:.1f}" y2="{ym:.1f}"/>')
    return (
        f'<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" aria-hidden="true">'
        + "".join(lines)
        + "</svg>"
    )
