"""Forecasters: one contract test over all of them, known answers, fallbacks, updates, the batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.models import forecast_arima
from dcwatch.detectors.models.forecast import (
    ArimaForecaster,
    Forecaster,
    LinearTrendForecaster,
    NaiveForecaster,
    SeasonalNaiveForecaster,
    regularize,
)
from dcwatch.detectors.models.forecast_arma import fit_arma, seasonal_strength
from dcwatch.detectors.models.forecast_base import fill_gaps
from dcwatch.detectors.models.forecast_batch import ForecastBatch
from dcwatch.detectors.models.forecast_metrics import coverage, mase, smape

SEASON = 48  # 30-minute steps keep the fits small; the 5-minute path is covered below


def daily(days: int, season: int = SEASON, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days * season)
    return 10 + 3 * np.sin(2 * np.pi * t / season) + rng.normal(0, noise, t.size)


def random_walk(n: int, seed: int = 1) -> np.ndarray:
    return 50 + np.cumsum(np.random.default_rng(seed).normal(0, 1, n))


FORECASTERS = [
    pytest.param(lambda: ArimaForecaster(season_length=SEASON), id="arima-auto"),
    pytest.param(
        lambda: ArimaForecaster(season_length=SEASON, candidates=("arima",)), id="arima-only"
    ),
    pytest.param(
        lambda: ArimaForecaster(season_length=SEASON, candidates=("seasonal-arima",)),
        id="seasonal-arima",
    ),
    pytest.param(lambda: SeasonalNaiveForecaster(season_length=SEASON), id="seasonal-naive"),
    pytest.param(lambda: NaiveForecaster(), id="naive"),
    pytest.param(lambda: LinearTrendForecaster(window=SEASON), id="predict-linear"),
]


@pytest.mark.parametrize("make", FORECASTERS)
def test_contract(make) -> None:
    y = daily(6) + np.linspace(0, 2, 6 * SEASON)
    model: Forecaster = make()
    params = model.get_params()
    assert model.fit(y) is model
    assert model.get_params() == params  # fit stores state in attributes ending with _
    h = 30
    out = model.predict(h)
    assert set(out) == {"mean", "lo-80", "hi-80", "lo-95", "hi-95"}
    for v in out.values():
        assert isinstance(v, np.ndarray) and v.shape == (h,) and np.isfinite(v).all()
    assert np.all(out["lo-95"] <= out["lo-80"])
    assert np.all(out["lo-80"] <= out["mean"])
    assert np.all(out["mean"] <= out["hi-80"])
    assert np.all(out["hi-80"] <= out["hi-95"])
    again = make().forecast(y, h)
    for key in out:
        np.testing.assert_allclose(again[key], out[key])
    assert set(model.predict(5, level=[90])) == {"mean", "lo-90", "hi-90"}
    assert set(model.predict(5, level=None)) == {"mean"}
    with pytest.raises(ValueError):
        model.predict(0)


def test_params_stored_verbatim() -> None:
    orders = ((1, 1),)
    cands = ("arima", "naive")
    m = ArimaForecaster(season_length=7, candidates=cands, orders=orders, max_days=3)
    assert m.get_params()["orders"] is orders and m.get_params()["candidates"] is cands
    assert "season_length=7" in repr(m)
    assert m.set_params(max_days=5).max_days == 5
    with pytest.raises(ValueError):
        m.set_params(bogus=1)
    with pytest.raises(ValueError):
        ArimaForecaster(candidates=("prophet",)).fit(np.arange(10.0))
    assert LinearTrendForecaster(window=12).get_params() == {"window": 12, "step": None}


def test_daily_sine_chooses_seasonal_structure() -> None:
    y = daily(15)
    model = ArimaForecaster(season_length=SEASON).fit(y[:-SEASON])
    assert model.model_ in ("seasonal-arima", "seasonal-naive")
    assert model.seasonal_strength_ > 0.9
    pred = model.predict(SEASON)
    assert mase(y[-SEASON:], pred["mean"], y[:-SEASON], SEASON) < 0.9
    assert coverage(y[-SEASON:], pred["lo-95"], pred["hi-95"]) >= 0.85


def test_random_walk_stays_non_seasonal() -> None:
    y = random_walk(20 * SEASON)
    model = ArimaForecaster(season_length=SEASON).fit(y)
    assert model.model_ in ("naive", "arima")
    assert model.seasonal_strength_ < 0.3


def test_linear_ramp_is_exact_for_predict_linear() -> None:
    y = 3.0 + 0.5 * np.arange(200)
    out = LinearTrendForecaster(window=50).fit(y).predict(10)
    np.testing.assert_allclose(out["mean"], 3.0 + 0.5 * np.arange(200, 210))
    np.testing.assert_allclose(out["hi-95"], out["mean"], atol=1e-9)


def test_naive_rules() -> None:
    y = daily(3)
    np.testing.assert_array_equal(NaiveForecaster().fit(y).predict(4)["mean"], np.full(4, y[-1]))
    snaive = SeasonalNaiveForecaster(season_length=SEASON).fit(y).predict(SEASON + 2)["mean"]
    np.testing.assert_array_equal(snaive, np.r_[y[-SEASON:], y[-SEASON:][:2]])


def test_short_history_falls_back_and_says_so() -> None:
    short = ArimaForecaster(season_length=SEASON).fit(daily(1)[:30])
    assert short.model_ == "naive" and "under 3" in short.fallback_reason_
    one_day = ArimaForecaster(season_length=SEASON).fit(daily(2)[: int(1.5 * SEASON)])
    assert one_day.model_ == "seasonal-naive" and one_day.fallback_reason_
    assert ArimaForecaster(season_length=SEASON).fit(daily(6)).fallback_reason_ is None


def test_failed_fit_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(forecast_arima, "select_arma", broken)
    model = ArimaForecaster(season_length=SEASON, candidates=("arima",)).fit(daily(6))
    assert model.model_ == "seasonal-naive"
    assert "SVD did not converge" in model.fallback_reason_
    assert model.predict(5)["mean"].shape == (5,)


def test_update_extends_the_fitted_state() -> None:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y = daily(8, season=288, noise=0.5, seed=3)  # 5-minute steps: 6-point bins
    n0 = 7 * 288 + 5
    model = ArimaForecaster(season_length=288, candidates=("seasonal-arima",)).fit(y[:n0])
    k, start = model.k_, n0 % model.k_
    model.update(y[n0:])
    assert model.tail_.size == (y.size - start) % k
    # Same parameters filtered over the whole series in one go: the same state.
    bins = y[start : start + (y.size - start) // k * k].reshape(-1, k).mean(axis=1)
    r = bins - model._seasonal(np.arange(bins.size))
    whole = SARIMAX(r, order=model.order_, trend="c" if model.arma_.drift else "n")
    res = whole.filter(model.arma_.sarimax_params())
    np.testing.assert_allclose(model.res_.predicted_state[:, -1], res.predicted_state[:, -1])
    # ...and close to a full refit on all of it.
    refit = ArimaForecaster(season_length=288, candidates=("seasonal-arima",)).fit(y)
    a, b = model.predict(288)["mean"], refit.predict(288)["mean"]
    assert np.mean(np.abs(a - b)) < 0.1 * np.mean(np.abs(y[288:] - y[:-288]))


def test_update_of_naive_choice_and_timestamps() -> None:
    times = pd.date_range("2024-01-01", periods=4 * SEASON, freq="30min", tz="UTC")
    y = pd.Series(random_walk(times.size), index=times)
    model = ArimaForecaster(candidates=("naive",)).fit(y)
    assert model.season_length_ == SEASON and model.step_ == 1800.0
    nxt = pd.Series([1.0, 2.0], index=times[-1] + pd.to_timedelta([30, 90], unit="min"))
    model.update(nxt)  # the missing point in between is interpolated
    assert model.predict(1)["mean"][0] == 2.0
    end = times[-1].timestamp() + 3 * 1800
    np.testing.assert_array_equal(model.forecast_times(2), [end + 1800, end + 3600])


def test_regularize_fills_gaps_on_the_grid() -> None:
    ts = np.array([0, 300, 600, 1500, 1800], dtype=float)
    grid = regularize(pd.Series([1.0, 2.0, 3.0, 6.0, 7.0], index=ts))
    np.testing.assert_allclose(grid.values, [1, 2, 3, 4, 5, 6, 7])
    assert grid.step == 300 and grid.end == 1800 and grid.filled == 2
    # A long gap copies the previous season's shape instead of drawing a straight line.
    y = daily(3, noise=0.0)
    gappy = y.copy()
    gappy[2 * SEASON + 5 : 2 * SEASON + 25] = np.nan
    filled = fill_gaps(gappy, season=SEASON, long_gap=12)
    assert np.max(np.abs(filled - y)) < 0.5


def test_css_matches_statsmodels_mle() -> None:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    rng = np.random.default_rng(7)
    e = rng.normal(size=600)
    x = np.zeros(600)
    for t in range(1, 600):
        x[t] = 0.6 * x[t - 1] + e[t] - 0.3 * e[t - 1]
    fit = fit_arma(x, 1, 1)
    mle = SARIMAX(np.cumsum(x), order=(1, 1, 1)).fit(disp=0)
    np.testing.assert_allclose(np.r_[fit.ar, fit.ma], mle.params[:2], atol=0.03)


def test_seasonal_strength_separates_cycles_from_noise() -> None:
    assert seasonal_strength(daily(10, noise=0.3), SEASON) > 0.9
    assert seasonal_strength(random_walk(10 * SEASON), SEASON) < 0.2


def test_metrics() -> None:
    hist = np.r_[np.zeros(SEASON), np.ones(SEASON)]
    assert mase(np.ones(3), np.zeros(3), hist, SEASON) == 1.0
    assert smape(np.zeros(2), np.zeros(2)) == 0.0
    assert smape(np.ones(2), -np.ones(2)) == 200.0
    assert coverage(np.arange(4), np.full(4, 1), np.full(4, 2)) == 0.5


def test_batch_matches_per_series_filtering() -> None:
    season = 288
    series = [
        daily(8, season, 0.5, seed=11),
        random_walk(8 * season, seed=12),
        np.cumsum(np.random.default_rng(13).normal(0.5, 1, 8 * season)),  # drifts upwards
        random_walk(8 * season, seed=14),
    ]
    configs = [("seasonal-arima",), ("arima",), ("arima",), ("naive",)]
    n0 = 7 * season
    fitted = [
        ArimaForecaster(season_length=season, candidates=c).fit(y[:n0])
        for y, c in zip(series, configs, strict=True)
    ]
    assert fitted[2].arma_.drift
    batch = ForecastBatch.concat(
        [ForecastBatch(fitted[:2], max_horizon=season), ForecastBatch(fitted[2:], season)]
    )
    for t in range(n0, n0 + 40):
        batch.update(np.array([y[t] for y in series]))
        for f, y in zip(fitted, series, strict=True):
            f.update(y[t : t + 1])
    out = batch.predict(season)
    for i, f in enumerate(fitted):
        single = f.predict(season)
        np.testing.assert_allclose(out["mean"][i], single["mean"], rtol=1e-9, atol=1e-9)
        if f.baseline_ is None:  # naive members keep the bands frozen at build time
            np.testing.assert_allclose(out["hi-95"][i], single["hi-95"], rtol=1e-9, atol=1e-9)
    assert out["mean"].shape == (4, season)
    batch.update(np.array([np.nan, np.nan, np.nan, np.nan]))  # no sample: last value repeats
    assert batch.predict(1)["mean"][3, 0] == series[3][n0 + 39]
