"""Forecasters for capacity planning (statsforecast's contract): the public import path.

``ArimaForecaster`` is the default; ``NaiveForecaster``, ``SeasonalNaiveForecaster`` and
``LinearTrendForecaster`` (PromQL ``predict_linear``) are its baselines and fallbacks.
``ForecastBatch`` keeps many fitted ARIMA forecasters current at once with vectorised numpy.
"""

from dcwatch.detectors.models.forecast_arima import CANDIDATES, ArimaForecaster
from dcwatch.detectors.models.forecast_base import Forecaster, Grid, regularize, season_from_step
from dcwatch.detectors.models.forecast_baselines import (
    LinearTrendForecaster,
    NaiveForecaster,
    SeasonalNaiveForecaster,
)
from dcwatch.detectors.models.forecast_batch import ForecastBatch

__all__ = [
    "CANDIDATES",
    "ArimaForecaster",
    "ForecastBatch",
    "Forecaster",
    "Grid",
    "LinearTrendForecaster",
    "NaiveForecaster",
    "SeasonalNaiveForecaster",
    "regularize",
    "season_from_step",
]
