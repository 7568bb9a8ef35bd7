"""Forecast quality with a rolling origin over ../shared/datasets/forecast and synthetic sets.

For every dataset: cuts at 1..N horizons before each series' end (4 cuts, then 8; a one-day
horizon); each model is fitted on the history before a cut and forecasts the next day. Reported per
model: median and mean MASE (scaled by the history's seasonal-naive error), median sMAPE, pooled 80
and 95 % interval coverage, what the ARIMA forecaster chose, and the targets of issue 5:

- median MASE at least 10 % below seasonal naive;
- median MASE within 5 % of the better of seasonal naive and naive, on every dataset;
- 95 % coverage between 0.85 and 0.99.

Besides the shared data, two generated sets (fixed seeds, nothing committed): ``synthetic-daily``,
business-like series whose daily cycle dominates (where seasonal naive must beat naive and the
forecaster must pick seasonal structure), and ``synthetic-mixed``, linear growth and weak daily
cycles on a random walk. Ablations show what choosing per series buys: the same ARIMA without the
seasonal candidates, and with only the seasonal ARIMA. Run by hand:

    .venv/bin/python bench/forecast_quality.py [--cuts 4,8] [--datasets helios-dev,synthetic-daily]

Writes bench/reports/forecast_quality.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dcwatch.detectors.backtest.forecast import (  # noqa: E402
    MODELS,
    OnGrid,
    backtest_series,
    on_grid,
    read_series,
    series_files,
    series_name,
)
from dcwatch.detectors.models.forecast import ArimaForecaster, Forecaster  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets" / "forecast"
REPORT = REPO / "bench" / "reports" / "forecast_quality.md"
STEP = 300.0
DAY = 288

ABLATIONS: dict[str, Callable[[int], Forecaster]] = {
    "arima, no seasonal candidates": lambda s: ArimaForecaster(
        season_length=s, candidates=("naive", "arima")
    ),
    "seasonal arima only": lambda s: ArimaForecaster(
        season_length=s, candidates=("seasonal-arima",)
    ),
}


def synthetic_daily(n_series: int = 8, days: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    """Business-like series at 5-minute steps whose daily cycle dominates the noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    tod = (t % DAY) / DAY
    dow = (t // DAY) % 7
    out = {}
    for i in range(n_series):
        kind = i % 4
        level = rng.uniform(20, 200)
        if kind == 0:  # office hours, quieter weekends
            bump = np.exp(-0.5 * ((tod - 0.55) / 0.12) ** 2)
            base = level * (0.3 + 0.7 * bump * np.where(dow >= 5, 0.4, 1.0))
        elif kind == 1:  # smooth cycle with a second harmonic
            base = level * (1 + 0.4 * np.sin(2 * np.pi * tod) + 0.15 * np.sin(4 * np.pi * tod + 1))
        elif kind == 2:  # a nightly batch window
            base = level * (0.5 + 0.5 * ((tod > 0.05) & (tod < 0.3)))
        else:  # daily cycle on slow growth
            base = level * (1 + 0.3 * np.sin(2 * np.pi * tod - 0.5)) * (1 + 0.2 * t / t.size)
        phi = rng.uniform(0.5, 0.95)
        ar = np.zeros(t.size)
        shocks = rng.normal(0, 1, t.size)
        for j in range(1, t.size):
            ar[j] = phi * ar[j - 1] + shocks[j]
        noise = ar * level * rng.uniform(0.01, 0.04) + rng.normal(0, level * 0.02, t.size)
        out[f"daily{i}"] = np.maximum(base + noise, 0.0)
    return out


def synthetic_mixed(days: int = 28, seed: int = 1) -> dict[str, np.ndarray]:
    """Linear growth with noise (capacity creeping up) and weak daily cycles on a random walk."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    out = {}
    for i in range(4):
        slope = rng.uniform(0.5, 3.0) / DAY
        walk = np.cumsum(rng.normal(0, 0.05, t.size))
        out[f"growth{i}"] = 50 + slope * t + walk + rng.normal(0, 1, t.size)
    for i in range(4):
        amp = rng.uniform(1, 3)
        walk = np.cumsum(rng.normal(0, 0.15, t.size))
        cycle = amp * np.sin(2 * np.pi * t / DAY)
        out[f"weakdaily{i}"] = 100 + walk + cycle + rng.normal(0, 1, t.size)
    return out


def generated(values: np.ndarray) -> OnGrid:
    times = 1_704_067_200 + STEP * np.arange(values.size)
    return OnGrid(times, values, np.ones(values.size, dtype=bool), STEP, DAY)


def load_datasets(names: list[str] | None) -> dict[str, dict[str, OnGrid]]:
    sets: dict[str, dict[str, OnGrid]] = {}
    if SHARED.is_dir():
        for d in sorted(p for p in SHARED.iterdir() if p.is_dir()):
            sets[d.name] = {series_name(f): on_grid(read_series(f)) for f in series_files(d)}
    sets["synthetic-daily"] = {k: generated(v) for k, v in synthetic_daily().items()}
    sets["synthetic-mixed"] = {k: generated(v) for k, v in synthetic_mixed().items()}
    return {k: v for k, v in sets.items() if names is None or k in names}


def run(sets: dict[str, dict[str, OnGrid]], cuts: int) -> pd.DataFrame:
    models = {**MODELS, **ABLATIONS}
    rows = []
    for dataset, series in sets.items():
        t0 = time.perf_counter()
        for name, s in series.items():
            scores, _ = backtest_series(name, s, s.season, cuts, models)
            rows += [{"dataset": dataset, **asdict(sc)} for sc in scores]
        print(f"{dataset}: {len(series)} series in {time.perf_counter() - t0:.1f}s", flush=True)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(
        covered=df["coverage_95"] * df["points"], covered80=df["coverage_80"] * df["points"]
    )
    g = df.groupby(["dataset", "model"], sort=False)
    return pd.DataFrame(
        {
            "median MASE": g["mase"].median(),
            "mean MASE": g["mase"].mean(),
            "median sMAPE %": g["smape"].median(),
            "coverage 95": g["covered"].sum() / g["points"].sum(),
            "coverage 80": g["covered80"].sum() / g["points"].sum(),
            "fit ms": 1e3 * g["seconds"].mean(),
            "forecasts": g.size(),
        }
    )


def targets(table: pd.DataFrame) -> list[str]:
    lines = []
    for dataset in table.index.get_level_values(0).unique():
        t = table.loc[dataset]
        arima, snaive, naive = (
            t.loc[m, "median MASE"] for m in ("arima", "seasonal_naive", "naive")
        )
        cov = t.loc["arima", "coverage 95"]
        best = min(snaive, naive)
        checks = [
            ("10 % below seasonal naive", arima <= 0.9 * snaive, f"{arima:.3f} vs {snaive:.3f}"),
            (
                "within 5 % of the better baseline",
                arima <= 1.05 * best,
                f"{arima:.3f} vs {best:.3f}",
            ),
            ("95 % coverage in [0.85, 0.99]", 0.85 <= cov <= 0.99, f"{cov:.3f}"),
        ]
        for what, ok, detail in checks:
            lines.append(f"| {dataset} | {what} | {detail} | {'pass' if ok else 'FAIL'} |")
    return lines


def choices(df: pd.DataFrame) -> list[str]:
    lines = []
    for dataset, g in df[df["model"] == "arima"].groupby("dataset", sort=False):
        counts = g["chosen"].str.replace(r"\(.*\)", "", regex=True).value_counts()
        lines.append(f"- {dataset}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return lines


def markdown(df: pd.DataFrame) -> str:
    """A pipe table (no tabulate dependency); floats to three decimals."""

    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def section(df: pd.DataFrame, cuts: int) -> list[str]:
    table = summary(df)
    return [
        f"## {cuts} cuts",
        "",
        markdown(table.reset_index()),
        "",
        "Targets (issue 5):",
        "",
        "| dataset | target | measured | |",
        "|---|---|---|---|",
        *targets(table),
        "",
        "What the ARIMA forecaster chose:",
        "",
        *choices(df),
        "",
    ]


def write_report(results: dict[int, pd.DataFrame], seconds: float) -> None:
    lines = [
        "# Forecast quality (rolling origin)",
        "",
        "N cuts per series at 1..N days before the end, one-day horizon (288 steps at 5"
        " minutes); every model fitted on the history before the cut. MASE is scaled by the"
        " history's in-sample seasonal-naive (one-day lag) error; a history that is all one value"
        " has no scale and its forecast is left out of MASE. Coverage is pooled over all forecast"
        " points. `arima` is `ArimaForecaster()` with its defaults, the same for every series;"
        " the two ablations show what choosing per series buys. `synthetic-*` sets are generated"
        " by this script (fixed seeds). Generated by `bench/forecast_quality.py`.",
        "",
    ]
    for cuts, df in results.items():
        lines += section(df, cuts)
    lines += [f"Run time {seconds:.0f} s (one core, BLAS limited to one thread).", ""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cuts", default="4,8", help="comma-separated cut counts, one section each")
    p.add_argument("--datasets", default=None, help="comma-separated subset")
    args = p.parse_args(argv)
    names = args.datasets.split(",") if args.datasets else None
    t0 = time.perf_counter()
    sets = load_datasets(names)
    with threadpool_limits(1):
        results = {int(c): run(sets, int(c)) for c in args.cuts.split(",")}
    write_report(results, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
