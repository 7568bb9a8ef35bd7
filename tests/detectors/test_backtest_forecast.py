"""``dcwatch backtest forecast`` on small synthetic CSVs and one real series (shared datasets)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcwatch.cli import main as dcwatch
from tests.conftest import SHARED_DATASETS

STEP = 1800  # 30-minute steps: 48 a day
START = 1_704_067_200


def write_series(
    path: Path, days: int = 6, seed: int = 0, drop: slice | None = None
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = START + STEP * np.arange(days * 48)
    value = 20 + 5 * np.sin(2 * np.pi * (ts % 86400) / 86400) + rng.normal(0, 0.5, ts.size)
    df = pd.DataFrame({"timestamp": ts, "value": np.round(value, 4)})
    if drop is not None:
        df = df.drop(index=df.index[drop])
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            df.to_csv(fh, index=False)
    else:
        df.to_csv(path, index=False)
    return df


@pytest.mark.parametrize("name", ["series.csv", "series.csv.gz"])
def test_input_writes_the_next_steps(tmp_path: Path, name: str) -> None:
    src = write_series(tmp_path / name, drop=slice(100, 110))  # a five-hour gap
    out = tmp_path / "out.csv"
    rc = dcwatch(
        [
            "backtest",
            "forecast",
            "--input",
            str(tmp_path / name),
            "--horizon",
            "24",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    res = pd.read_csv(out)
    assert list(res.columns) == ["timestamp", "mean", "lo_95", "hi_95"]
    assert len(res) == 24
    last = int(src["timestamp"].iloc[-1])
    np.testing.assert_array_equal(res["timestamp"], last + STEP * np.arange(1, 25))
    assert res["timestamp"].dtype.kind == "i"
    assert (res["lo_95"] <= res["mean"]).all() and (res["mean"] <= res["hi_95"]).all()
    assert res["mean"].between(10, 30).all()


def test_input_with_season_and_short_history(tmp_path: Path) -> None:
    write_series(tmp_path / "s.csv", days=1)
    out = tmp_path / "o.csv"
    rc = dcwatch(
        [
            "backtest",
            "forecast",
            "--input",
            str(tmp_path / "s.csv"),
            "--horizon",
            "5",
            "--output",
            str(out),
            "--season",
            "24",
        ]
    )
    assert rc == 0
    assert len(pd.read_csv(out)) == 5


def test_dataset_prints_the_table_and_writes_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        write_series(data / f"s{i}.csv.gz", days=8, seed=i)
    out = tmp_path / "out"
    rc = dcwatch(
        [
            "backtest",
            "forecast",
            "--dataset",
            str(data),
            "--horizon",
            "48",
            "--output",
            str(out),
            "--cuts",
            "2",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for model in ("arima", "seasonal_naive", "naive", "predict_linear"):
        assert model in text
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 2 * 2 * 4
    assert {"mase", "smape", "coverage_95", "chosen"} <= set(metrics.columns)
    forecasts = pd.read_csv(out / "s0.forecasts.csv.gz")
    assert len(forecasts) == 2 * 4 * 48
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    # A clean daily sine: the seasonal structure beats carrying the last value forward.
    assert summary.loc["arima", "median_mase"] < summary.loc["naive", "median_mase"]


def test_bad_arguments(tmp_path: Path) -> None:
    assert (
        dcwatch(
            [
                "backtest",
                "forecast",
                "--input",
                str(tmp_path / "missing.csv"),
                "--horizon",
                "3",
                "--output",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    (tmp_path / "bad.csv").write_text("time,v\n1,2\n")
    assert (
        dcwatch(
            [
                "backtest",
                "forecast",
                "--input",
                str(tmp_path / "bad.csv"),
                "--horizon",
                "3",
                "--output",
                str(tmp_path / "o.csv"),
            ]
        )
        == 1
    )
    assert (
        dcwatch(
            [
                "backtest",
                "forecast",
                "--dataset",
                str(tmp_path / "none"),
                "--horizon",
                "3",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    with pytest.raises(SystemExit):
        dcwatch(["backtest", "forecast", "--output", "o.csv", "--horizon", "3"])


REAL = SHARED_DATASETS / "forecast" / "helios-dev"


@pytest.mark.skipif(not (REAL / "vc3sl.csv.gz").exists(), reason="shared datasets not present")
def test_real_series(tmp_path: Path) -> None:
    out = tmp_path / "vc3sl.csv"
    rc = dcwatch(
        [
            "backtest",
            "forecast",
            "--input",
            str(REAL / "vc3sl.csv.gz"),
            "--horizon",
            "288",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    res = pd.read_csv(out)
    src = pd.read_csv(REAL / "vc3sl.csv.gz")
    assert len(res) == 288 and np.isfinite(res[["mean", "lo_95", "hi_95"]].to_numpy()).all()
    assert res["timestamp"].iloc[0] == src["timestamp"].iloc[-1] + 300
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(REAL / "vc3sl.csv.gz", data)
    assert (
        dcwatch(
            [
                "backtest",
                "forecast",
                "--dataset",
                str(data),
                "--horizon",
                "288",
                "--output",
                str(tmp_path / "bt"),
                "--cuts",
                "2",
            ]
        )
        == 0
    )
    metrics = pd.read_csv(tmp_path / "bt" / "metrics.csv")
    assert metrics["coverage_95"].notna().all() and len(metrics) == 2 * 4
