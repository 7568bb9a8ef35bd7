"""``dcwatch backtest forecast``: forecast recorded series, or score forecasters on a dataset.

    dcwatch backtest forecast --input SERIES.csv --horizon H --output OUT.csv [--season S]
    dcwatch backtest forecast --dataset DIR --horizon H --output OUTDIR [--season S] [--cuts N]

``--input`` reads ``timestamp,value`` (unix seconds; gzip or plain CSV; gaps are missing rows),
puts it on its regular grid (gaps interpolated, long ones given the previous day's shape), fits
the default :class:`ArimaForecaster` on all of it and writes the next ``H`` steps as
``timestamp,mean,lo_95,hi_95``. ``--dataset`` does every series in ``DIR`` with a rolling origin:
cuts at ``H``, ``2H``, ... ``N*H`` before the end; each model is fitted on the history before a cut
and forecasts ``H`` steps; MASE (scaled by the history's seasonal-naive error), sMAPE and 95 %
coverage are printed for ARIMA next to seasonal naive, naive and ``predict_linear``, and the
forecasts and metrics are written under ``OUTDIR``. The season defaults to a day of steps.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcwatch.detectors.models.forecast import (
    ArimaForecaster,
    Forecaster,
    LinearTrendForecaster,
    NaiveForecaster,
    SeasonalNaiveForecaster,
    regularize,
    season_from_step,
)
from dcwatch.detectors.models.forecast_metrics import coverage, mase, smape

MODELS: dict[str, Callable[[int], Forecaster]] = {
    "arima": lambda season: ArimaForecaster(season_length=season),
    "seasonal_naive": lambda season: SeasonalNaiveForecaster(season_length=season),
    "naive": lambda season: NaiveForecaster(),
    "predict_linear": lambda season: LinearTrendForecaster(window=season),
}


def read_series(path: Path) -> pd.Series:
    """A ``timestamp,value`` CSV (gzip or plain, by content) as values indexed by unix seconds."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    df = pd.read_csv(path, compression="gzip" if gz else None)
    missing = {"timestamp", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    ts = pd.to_numeric(df["timestamp"], errors="coerce").to_numpy(dtype=float)
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(ts) & np.isfinite(values)
    if not keep.any():
        raise ValueError(f"{path}: no rows with a timestamp and a value")
    return pd.Series(values[keep], index=ts[keep], name=path.name)


@dataclass(frozen=True)
class OnGrid:
    """A series on its regular grid, with which points were observed (not filled)."""

    times: np.ndarray
    values: np.ndarray
    observed: np.ndarray
    step: float
    season: int


def on_grid(series: pd.Series, season: int | None = None) -> OnGrid:
    grid = regularize(series, season=season)
    step = float(grid.step or 0.0)
    assert grid.end is not None  # a Series indexed by timestamps always has an end
    times = grid.end - step * np.arange(grid.values.size)[::-1]
    observed = np.zeros(times.size, dtype=bool)
    pos = np.rint((series.index.to_numpy(dtype=float) - times[0]) / step).astype(np.int64)
    observed[pos[(pos >= 0) & (pos < times.size)]] = True
    return OnGrid(times, grid.values, observed, step, season or season_from_step(step))


def _timestamps(times: np.ndarray) -> np.ndarray:
    return times.astype(np.int64) if np.all(times == np.round(times)) else times


def forecast_series(
    series: pd.Series, horizon: int, season: int | None = None
) -> tuple[pd.DataFrame, ArimaForecaster]:
    """Fit the default forecaster on all of ``series``; the next ``horizon`` steps as a frame."""
    model = ArimaForecaster(season_length=season).fit(series)
    bands = model.predict(horizon, level=[95])
    out = pd.DataFrame(
        {
            "timestamp": _timestamps(model.forecast_times(horizon)),
            "mean": bands["mean"],
            "lo_95": bands["lo-95"],
            "hi_95": bands["hi-95"],
        }
    )
    return out, model


@dataclass
class Score:
    series: str
    cut: int  # unix seconds of the first forecast step
    model: str
    chosen: str  # what the ARIMA forecaster chose (model, order, fallback); the name otherwise
    mase: float
    smape: float
    coverage_95: float
    coverage_80: float
    points: int
    seconds: float


def backtest_series(
    name: str,
    s: OnGrid,
    horizon: int,
    cuts: int,
    models: dict[str, Callable[[int], Forecaster]] = MODELS,
) -> tuple[list[Score], pd.DataFrame]:
    """Rolling origin: each model fitted before each cut, scored on the next ``horizon`` points."""
    scores: list[Score] = []
    frames = []
    n = s.values.size
    for i in range(cuts, 0, -1):
        cut = n - i * horizon
        if cut < max(s.season + 1, 3):
            continue
        history, actual = s.values[:cut], s.values[cut : cut + horizon]
        seen = s.observed[cut : cut + horizon]
        times = s.times[cut : cut + horizon]
        for label, make in models.items():
            model = make(s.season)
            t0 = time.process_time()
            bands = model.fit(history).predict(horizon, level=[80, 95])
            seconds = time.process_time() - t0
            mean, lo, hi = bands["mean"], bands["lo-95"], bands["hi-95"]
            scores.append(
                Score(
                    series=name,
                    cut=int(times[0]),
                    model=label,
                    chosen=describe(model),
                    mase=mase(actual[seen], mean[seen], history, s.season),
                    smape=smape(actual[seen], mean[seen]),
                    coverage_95=coverage(actual[seen], lo[seen], hi[seen]),
                    coverage_80=coverage(actual[seen], bands["lo-80"][seen], bands["hi-80"][seen]),
                    points=int(seen.sum()),
                    seconds=seconds,
                )
            )
            frames.append(
                pd.DataFrame(
                    {
                        "cut": int(times[0]),
                        "model": label,
                        "timestamp": _timestamps(times),
                        "actual": np.where(seen, actual, np.nan),
                        "mean": mean,
                        "lo_95": lo,
                        "hi_95": hi,
                    }
                )
            )
    return scores, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def describe(model: Forecaster) -> str:
    """What a fitted model ended up being, e.g. ``arima(1, 1, 1)`` or ``seasonal-naive*``."""
    chosen = getattr(model, "model_", None)
    if chosen is None:
        return type(model).__name__
    order = getattr(model, "order_", None)
    text = f"{chosen}{order}" if order else chosen
    return text + ("*" if getattr(model, "fallback_reason_", None) else "")


def summarize(scores: Sequence[Score]) -> pd.DataFrame:
    """Per model: median and mean MASE, median sMAPE, pooled 95 % coverage, forecasts scored."""
    df = pd.DataFrame([asdict(s) for s in scores])
    if df.empty:
        return df
    df["covered"] = df["coverage_95"] * df["points"]
    g = df.groupby("model", sort=False)
    return pd.DataFrame(
        {
            "median_mase": g["mase"].median(),
            "mean_mase": g["mase"].mean(),
            "median_smape": g["smape"].median(),
            "coverage_95": g["covered"].sum() / g["points"].sum(),
            "forecasts": g.size(),
            "fit_seconds": g["seconds"].mean(),
        }
    )


def series_files(directory: Path) -> list[Path]:
    files = [p for p in directory.iterdir() if p.name.endswith((".csv", ".csv.gz"))]
    return sorted(files)


def series_name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".csv")


def backtest_dataset(
    directory: Path, horizon: int, cuts: int, season: int | None = None, out: Path | None = None
) -> tuple[list[Score], pd.DataFrame]:
    """Every series in ``directory``; forecasts and metrics written under ``out`` when given."""
    scores: list[Score] = []
    for path in series_files(directory):
        name = series_name(path)
        s = on_grid(read_series(path), season)
        got, forecasts = backtest_series(name, s, horizon, cuts)
        scores += got
        if out is not None and not forecasts.empty:
            forecasts.to_csv(out / f"{name}.forecasts.csv.gz", index=False)
    summary = summarize(scores)
    if out is not None:
        pd.DataFrame([asdict(s) for s in scores]).to_csv(out / "metrics.csv", index=False)
        summary.to_csv(out / "summary.csv")
    return scores, summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcwatch backtest forecast", description=__doc__.split("\n")[0]
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="one timestamp,value CSV (gzip or plain)")
    src.add_argument("--dataset", type=Path, help="a directory of timestamp,value CSVs")
    p.add_argument("--horizon", type=int, required=True, help="steps to forecast")
    p.add_argument("--output", type=Path, required=True, help="OUT.csv (--input) or OUTDIR")
    p.add_argument("--season", type=int, default=None, help="season in steps (default: one day)")
    p.add_argument("--cuts", type=int, default=4, help="rolling-origin cut points (--dataset)")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    problem = None
    if args.horizon < 1:
        problem = "--horizon must be >= 1"
    elif args.input is not None and not args.input.is_file():
        problem = f"no such file: {args.input}"
    elif args.dataset is not None and not args.dataset.is_dir():
        problem = f"no such directory: {args.dataset}"
    if problem:
        print(f"dcwatch backtest forecast: {problem}", file=sys.stderr)
        return 2
    from threadpoolctl import threadpool_limits

    # Fits are small: a multi-threaded BLAS only contends for the cores (10x slower on 2 cores).
    with threadpool_limits(1):
        try:
            if args.input is not None:
                return _forecast_file(args)
            return _backtest(args)
        except (OSError, ValueError) as exc:
            print(f"dcwatch backtest forecast: {exc}", file=sys.stderr)
            return 1


def _forecast_file(args: argparse.Namespace) -> int:
    frame, model = forecast_series(read_series(args.input), args.horizon, args.season)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if args.output.name.endswith(".gz") else open)(args.output, "wt") as fh:
        frame.to_csv(fh, index=False)
    note = f" (fallback: {model.fallback_reason_})" if model.fallback_reason_ else ""
    print(f"{args.input.name}: {describe(model)}{note}; {args.horizon} steps -> {args.output}")
    return 0


def _backtest(args: argparse.Namespace) -> int:
    args.output.mkdir(parents=True, exist_ok=True)
    scores, summary = backtest_dataset(
        args.dataset, args.horizon, args.cuts, args.season, args.output
    )
    if summary.empty:
        print(
            f"dcwatch backtest forecast: no series long enough in {args.dataset}", file=sys.stderr
        )
        return 1
    series = len({s.series for s in scores})
    print(f"{args.dataset}: {series} series, {args.cuts} cuts, horizon {args.horizon} steps")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"per-series forecasts and metrics in {args.output}")
    return 0
