"""Capacity planner cost per series at fleet scale: fit, update, forecast, page render.

Series: 14-day windows (5-minute steps, 4,032 points, the default rule's history) of the shared
forecast data and synthetic daily / growing series, 1,000 of them by default, each with a
capacity 30 % above its maximum. The default rule (ArimaForecaster, 7-day horizon, forecasts
to 1.2 x 7 days = 2,419 steps for the resolve hysteresis) is run through the planner's own
worker functions on one core with BLAS pinned to one thread:

- ``fit_forecasters`` (what the fit worker runs), per series, and the models it chose;
- one evaluation step: ``update`` with the new point, ``predict`` of 2,419 steps with the 95 %
  band, and the whole ``assess`` (update, forecast, time to full, horizons, plot points);
- the size of a fitted forecaster (pickled) and the render time of the page's capacity section.

    .venv/bin/python bench/capacity_speed.py [--series 1000] [--fits 200]

Writes bench/reports/capacity_speed.md.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.forecast_quality import SHARED, synthetic_daily, synthetic_mixed  # noqa: E402
from dcwatch.detectors.backtest.forecast import read_series, series_files  # noqa: E402
from dcwatch.detectors.capacity.planner import CapacityPlanner  # noqa: E402
from dcwatch.detectors.capacity.rules import default_rules  # noqa: E402
from dcwatch.detectors.capacity.series import PlotHistory, SeriesData, assess, fit_forecasters  # noqa: E402
from dcwatch.detectors.capacity.state import SeriesState  # noqa: E402
from dcwatch.detectors.web.capacity_page import render_capacity  # noqa: E402

REPORT = REPO / "bench" / "reports" / "capacity_speed.md"
STEP, DAY = 300.0, 288
HISTORY = 14 * DAY
T0 = 1_700_000_000.0 // STEP * STEP


def windows(count: int) -> list[np.ndarray]:
    """``count`` series of 14 days plus one hour (the hour feeds the updates)."""
    pool: list[np.ndarray] = []
    for d in sorted(p for p in SHARED.iterdir() if p.is_dir()) if SHARED.is_dir() else []:
        pool += [read_series(f).to_numpy() for f in series_files(d)]
    pool += list(synthetic_daily(days=30).values()) + list(synthetic_mixed(days=30).values())
    n = HISTORY + 12
    out = []
    for offset in range(0, 60 * DAY, DAY // 3):
        out += [v[v.size - n - offset : v.size - offset] for v in pool if offset + n <= v.size]
    return [out[i % len(out)] for i in range(count)]


class _Stub:
    def with_queries(self, queries: object) -> _Stub:
        return self


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--fits", type=int, default=200, help="distinct series fitted (then copied)")
    args = ap.parse_args()
    rule = default_rules()[0]  # gpu_memory: ArimaForecaster, step 5 min, horizon 7 d
    times = T0 + STEP * np.arange(HISTORY + 12)
    data = windows(args.fits)
    warnings.simplefilter("ignore")
    with threadpool_limits(1):
        fit_forecasters(rule, [(times[:HISTORY], data[0][:HISTORY])])  # imports, warm-up
        t0 = time.process_time()
        fitted = fit_forecasters(rule, [(times[:HISTORY], y[:HISTORY]) for y in data])
        fit_cpu = (time.process_time() - t0) / len(data)
        models: dict[str, int] = {}
        for f in fitted:
            assert not isinstance(f, str), f
            name = getattr(f, "model_", "?")
            models[name] = models.get(name, 0) + 1
        fleet = [copy.deepcopy(fitted[i % len(fitted)]) for i in range(args.series)]
        ys = [data[i % len(data)] for i in range(args.series)]
        caps = [float(np.nanmax(y)) * 1.3 + 1 for y in ys]
        pickled = statistics.median(len(pickle.dumps(f)) for f in fitted)

        upd, pred, full = [], [], []
        results = []
        for k in range(12):  # one hour of 5-minute steps
            t = times[HISTORY + k]
            new = [
                SeriesData(np.array([t]), np.array([y[HISTORY + k]]), c)
                for y, c in zip(ys, caps, strict=True)
            ]
            probe = copy.deepcopy(fleet[:50])  # update and predict alone, on copies
            t0 = time.process_time()
            for f, d in zip(probe, new, strict=False):
                f.update(pd.Series(d.values, index=d.times))
            upd.append((time.process_time() - t0) / len(probe))
            t0 = time.process_time()
            for f in probe:
                f.predict(rule.steps, (95,))
            pred.append((time.process_time() - t0) / len(probe))
            items = [(f, d, c, None) for f, d, c in zip(fleet, new, caps, strict=True)]
            t0 = time.process_time()
            results = assess(rule, items, now=t)
            full.append((time.process_time() - t0) / len(items))

    planner = CapacityPlanner([rule], _Stub(), None, None)  # type: ignore[arg-type]
    rs = planner.rules[rule.name]
    for i, (f, y, c, res) in enumerate(zip(fleet, ys, caps, results, strict=True)):
        st = SeriesState(rule, f"node-{i // 8}:9478", str(i % 8), forecaster=f, capacity=c)
        st.current, st.exhaustion, st.forecasts, st.forecast_plot = (
            res.current,
            res.exhaustion,
            res.forecasts,
            res.plot,
        )
        st.plot = PlotHistory.for_rule(rule)
        st.plot.add(times, y)
        rs.series[st.key] = st
    render = []
    for _ in range(20):
        t0 = time.perf_counter()
        html = render_capacity(planner)
        render.append(time.perf_counter() - t0)
    full_step = statistics.median(full) * args.series
    lines = [
        "# Capacity planner speed",
        "",
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"one core, BLAS pinned to one thread. Rule: {rule.name} defaults (ArimaForecaster, "
        f"5-minute step, 14-day history = {HISTORY} points, horizon 7 d, forecast "
        f"{rule.steps} steps with the 95 % band). {args.series} series "
        f"({args.fits} distinct fits, copied).",
        "",
        "| per series | CPU ms |",
        "|---|---:|",
        f"| fit (`fit_forecasters`, validation + refit) | {1e3 * fit_cpu:.1f} |",
        f"| update by one point (mean over a bin of 6 steps) | {1e3 * statistics.mean(upd):.2f} |",
        f"| predict {rule.steps} steps, 95 % band | {1e3 * statistics.median(pred):.1f} |",
        f"| whole evaluation step (`assess`) | {1e3 * statistics.median(full):.1f} |",
        "",
        f"- models chosen: {', '.join(f'{k} {v}' for k, v in sorted(models.items()))}",
        f"- one evaluation of {args.series} series: {full_step:.2f} s CPU, "
        f"{100 * full_step / STEP:.1f} % of a core at a 5-minute step",
        f"- refitting {args.series} series: {fit_cpu * args.series:.0f} s CPU "
        f"({100 * fit_cpu * args.series / rule.refit:.2f} % of a core at the 6-hour refit)",
        f"- fitted forecaster pickled: {pickled / 1024:.1f} KiB (median)",
        f"- capacity section render (12 plots, 50 rows of {args.series} series): "
        f"{1e3 * statistics.median(render):.1f} ms, {len(html) / 1024:.0f} KiB of HTML",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
