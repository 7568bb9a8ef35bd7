"""Forecaster cost: one series' fit, update and forecast; a fleet's refit; the vectorised updater.

A week at 5-minute steps (2,016 points) per series. Measured on one core with BLAS limited to one
thread (what the analyzer's workers should do too: on 2 shared cores a multi-threaded BLAS made the
same fits ~10x slower):

- ``ArimaForecaster().fit`` with its defaults (seasonal strength, candidates validated on the last
  days, the winner refitted), ``update`` by one point, ``predict(288)`` with 80/95 % bands; next to
  them plain statsmodels ARIMA(1,1,1) on the raw 2,016 points (fit, ``extend``, ``append``,
  forecast), the issue's reference;
- refitting N distinct series (windows of the shared data plus synthetic ones), extrapolated to
  30,000 series on 2 cores (target: under an hour);
- :class:`ForecastBatch` holding 30,000 fitted series: CPU per 5-minute step of ``update`` (target
  under 10 % of one core, i.e. 30 s per 300 s step), a batched one-day forecast, and the per-series
  statsmodels ``extend`` it replaces.

    .venv/bin/python bench/forecast_speed.py [--series 200] [--fleet 30000]

Writes bench/reports/forecast_speed.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.forecast_quality import SHARED, synthetic_daily, synthetic_mixed  # noqa: E402
from dcwatch.detectors.backtest.forecast import read_series, series_files  # noqa: E402
from dcwatch.detectors.models.forecast import ArimaForecaster  # noqa: E402
from dcwatch.detectors.models.forecast_batch import ForecastBatch  # noqa: E402

REPORT = REPO / "bench" / "reports" / "forecast_speed.md"
WEEK = 2016
DAY = 288


def cpu(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``fn`` over ``repeat`` calls (after one warm-up call)."""
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' start-parameter warnings on raw data
        fn()
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
    return statistics.median(times)


def week_windows(count: int) -> list[np.ndarray]:
    """``count`` distinct week-long series: shared data windows, then synthetic ones."""
    pool: list[np.ndarray] = []
    for d in sorted(p for p in SHARED.iterdir() if p.is_dir()) if SHARED.is_dir() else []:
        pool += [read_series(f).to_numpy() for f in series_files(d)]
    pool += list(synthetic_daily().values()) + list(synthetic_mixed().values())
    windows = []
    for offset in range(0, 40 * DAY, DAY // 2):
        for v in pool:
            if offset + WEEK <= v.size:
                windows.append(v[v.size - WEEK - offset : v.size - offset])
    if not windows:
        raise SystemExit("no series long enough")
    return [windows[i % len(windows)] for i in range(count)]


def single_series(y: np.ndarray, daily: np.ndarray, lines: list[str]) -> None:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    new = y[-1:] + 0.5
    fitted = ArimaForecaster(season_length=DAY).fit(y)
    fit = cpu(lambda: ArimaForecaster(season_length=DAY).fit(y), 20)
    on_daily = ArimaForecaster(season_length=DAY).fit(daily)
    fit_daily = cpu(lambda: ArimaForecaster(season_length=DAY).fit(daily), 20)
    arima_only = ArimaForecaster(season_length=DAY, candidates=("arima",))
    only = cpu(lambda: arima_only.fit(y), 20)
    seasonal = ArimaForecaster(season_length=DAY, candidates=("seasonal-arima",)).fit(y)
    # A bin is 6 points: 5 updates only buffer, the 6th extends the statsmodels state.
    upd_naive = cpu(lambda: fitted.update(new), 300)
    upd = statistics.mean(cpu(lambda: seasonal.update(new), 1) for _ in range(300))
    pred = cpu(lambda: seasonal.predict(DAY), 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = SARIMAX(y, order=(1, 1, 1)).fit(disp=0)
    sm_fit = cpu(lambda: SARIMAX(y, order=(1, 1, 1)).fit(disp=0), 5)
    sm_extend = cpu(lambda: res.extend(new), 50)
    sm_append = cpu(lambda: res.append(new, refit=False), 20)
    sm_fc = cpu(lambda: res.get_forecast(DAY).summary_frame(alpha=0.05), 20)
    lines += [
        "## One series (a week at 5-minute steps, 2,016 points)",
        "",
        "| operation | CPU ms |",
        "|---|---:|",
        f"| `ArimaForecaster().fit`, GPU job counts (defaults; chose {fitted.model_}) |"
        f" {1e3 * fit:.1f} |",
        f"| `ArimaForecaster().fit`, a strongly daily series (chose {on_daily.model_}) |"
        f" {1e3 * fit_daily:.1f} |",
        f"| `ArimaForecaster(candidates=('arima',)).fit` (order search only) | {1e3 * only:.1f} |",
        f"| `update` by one point, seasonal ARIMA{seasonal.order_} (mean over bins) |"
        f" {1e3 * upd:.2f} |",
        f"| `update` by one point, when naive was chosen | {1e3 * upd_naive:.3f} |",
        f"| `predict(288)` with 80/95 % bands, seasonal ARIMA | {1e3 * pred:.1f} |",
        f"| statsmodels SARIMAX(1,1,1) `fit` on the raw points | {1e3 * sm_fit:.1f} |",
        f"| statsmodels `extend` by one point | {1e3 * sm_extend:.2f} |",
        f"| statsmodels `append(refit=False)` by one point | {1e3 * sm_append:.2f} |",
        f"| statsmodels 288-step forecast with intervals | {1e3 * sm_fc:.1f} |",
        "",
    ]


def fleet_refit(series: list[np.ndarray], lines: list[str]) -> list[ArimaForecaster]:
    fitted = []
    chosen: dict[str, int] = {}
    t0 = time.process_time()
    for y in series:
        f = ArimaForecaster(season_length=DAY).fit(y)
        fitted.append(f)
        chosen[f.model_] = chosen.get(f.model_, 0) + 1
    per = (time.process_time() - t0) / len(series)
    fleet_hours = per * 30000 / 2 / 3600
    lines += [
        f"## Refitting a fleet ({len(series)} distinct week-long series, one process)",
        "",
        f"- CPU per fit: {1e3 * per:.1f} ms (chosen: "
        + ", ".join(f"{k} {v}" for k, v in sorted(chosen.items()))
        + ")",
        f"- 30,000 series on 2 cores: {per * 30000 / 2 / 60:.1f} min"
        f" ({'pass' if fleet_hours < 1 else 'FAIL'}: target under 60 min)",
        "",
    ]
    return fitted


def vectorised(fitted: list[ArimaForecaster], fleet: int, lines: list[str]) -> None:
    t0 = time.process_time()
    one_each = ForecastBatch(fitted, max_horizon=DAY)
    build = (time.process_time() - t0) / len(fitted)
    # The fleet: copies of the distinct fits (concat is how workers' batches are merged too).
    reps = -(-fleet // len(fitted))
    batch = ForecastBatch.concat([one_each] * reps)
    fleet = batch.n
    rng = np.random.default_rng(0)
    # Series start at different times: spread where each one is inside its current bin.
    arima = batch.kind == 0
    batch.tail_count[arima] = rng.integers(0, batch.k[arima])
    batch.tail_sum[arima] = batch.tail_count[arima] * batch.last[arima]
    steps = DAY
    values = batch.last[None, :] + rng.normal(0, 1, (steps, fleet))
    t0 = time.process_time()
    for row in values:
        batch.update(row)
    per_step = (time.process_time() - t0) / steps
    t0 = time.process_time()
    out = batch.predict(DAY)
    predict = time.process_time() - t0
    one = next(f for f in fitted if f.res_ is not None)
    extend = cpu(lambda: one.res_.extend(np.array([one.y_last_])), 50)
    nbytes = sum(
        getattr(batch, name).nbytes
        for name in vars(batch)
        if isinstance(getattr(batch, name), np.ndarray)
    ) + sum(a.nbytes for a in batch.offsets.values())
    kinds = np.bincount(batch.kind, minlength=3)
    lines += [
        f"## Vectorised updater ({fleet:,} series in one `ForecastBatch`)",
        "",
        f"Members: {kinds[0]:,} ARIMA state-space filters, {kinds[1]:,} naive,"
        f" {kinds[2]:,} seasonal naive (tiled from the fits above). Updated for {steps} steps"
        " (a day), so each ARIMA member completes its bins and runs its Kalman step.",
        "",
        "| operation | CPU |",
        "|---|---:|",
        f"| build from fitted forecasters | {1e6 * build:.0f} us per series |",
        f"| `update` (one value per series) per 5-minute step | {1e3 * per_step:.1f} ms"
        f" = {100 * per_step / 300:.4f} % of one core"
        f" ({'pass' if per_step < 30 else 'FAIL'}: target under 30 s) |",
        f"| `predict(288)` for all series, 80/95 % bands | {predict:.2f} s |",
        f"| what it replaces: statsmodels `extend` per series, {1e3 * extend:.2f} ms x {fleet:,}"
        f" | {extend * fleet:.1f} s per step (1 step in 6 with 30-minute bins) |",
        f"| memory of the stacked state | {nbytes / 2**20:.0f} MiB |",
        "",
        f"Output shape: {out['mean'].shape}.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=200, help="distinct series to refit")
    p.add_argument("--fleet", type=int, default=30000, help="series in the vectorised batch")
    args = p.parse_args(argv)
    series = week_windows(args.series)
    lines = [
        "# Forecast speed",
        "",
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()},"
        " one process, BLAS limited to one thread; CPU time (`time.process_time`), medians."
        " Generated by `bench/forecast_speed.py`.",
        "",
    ]
    with threadpool_limits(1):
        daily = synthetic_daily()["daily1"][-WEEK:]
        single_series(series[0], daily, lines)
        fitted = fleet_refit(series, lines)
        vectorised(fitted, args.fleet, lines)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
