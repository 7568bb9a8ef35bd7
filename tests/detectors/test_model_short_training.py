"""A model fitted on very short training (a minute at 1 s, as the e2e tests and a fresh node do)
stays quiet on normal rows right after the fit, and still alerts on a fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.decisions import DecisionConfig, calibrate_threshold, surprise_floor
from dcwatch.detectors.models.node import ModelConfig, NodeModel
from dcwatch.detectors.models.residual import RobustResidualDetector

TRAIN_ROWS = 60
# What the e2e tests ask for with ``--model-min-train 60s --model-alerts-per-week=0.05``.
CONFIG = ModelConfig(decisions=DecisionConfig(alerts_per_week=0.05))


def noisy_node(n: int, seed: int, repeats: bool) -> pd.DataFrame:
    """Stationary sensor noise at 1 s; with ``repeats`` one row in five repeats the previous one
    (a range query whose step equals the scrape interval returns some samples twice)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "cpu_temp": 52 + rng.normal(0, 0.3, n),
            "node_power": 1843 + rng.normal(0, 8, n),
            "fan": np.round(1180 + rng.normal(0, 15, n)),
            "net_rx": 2e6 * (1 + rng.normal(0, 0.05, n)),
        },
        index=(1.7e9 + np.arange(n)).astype(np.int64),
    )
    if repeats:
        again = np.flatnonzero(rng.random(n) < 0.2)
        again = again[again > 0]
        frame.iloc[again] = frame.iloc[again - 1].to_numpy()
    return frame


@pytest.mark.parametrize("repeats", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_no_alert_on_normal_rows_after_a_fit_on_a_minute(seed: int, repeats: bool) -> None:
    frame = noisy_node(TRAIN_ROWS + 120, seed, repeats)
    model = NodeModel(CONFIG).fit(frame.iloc[:TRAIN_ROWS])
    scores = []
    for lo in range(TRAIN_ROWS, len(frame), 1 + seed % 2):  # one or two rows a pass
        res = model.score(frame.iloc[lo : lo + 1 + seed % 2])
        assert not res.is_anomaly.any(), f"normal row {res.ts[res.is_anomaly]} alerted"
        scores.append(res.score)
    assert len(np.concatenate(scores)) == 120


@pytest.mark.parametrize("seed", range(3))
def test_a_fault_still_alerts_after_a_fit_on_a_minute(seed: int) -> None:
    frame = noisy_node(TRAIN_ROWS + 60, seed, repeats=True)
    frame.iloc[TRAIN_ROWS + 30 :, 0] += 35.0  # the CPU 35 degrees hotter
    model = NodeModel(CONFIG).fit(frame.iloc[:TRAIN_ROWS])
    res = model.score(frame.iloc[TRAIN_ROWS:])
    flagged = np.flatnonzero(res.is_anomaly)
    assert flagged.size and 30 <= flagged[0] <= 33
    assert res.contributors[flagged[0]][0].series == "cpu_temp"


def test_a_short_window_claims_no_rarer_tail_than_it_saw() -> None:
    x = np.random.default_rng(0).normal(size=(30, 1))
    det = RobustResidualDetector().fit(x)
    s = det.surprises(x)[:, 0]
    # The second largest value is rarer than 1 in 30 at most; only the largest is beyond the
    # grid, scored by the exponential tail fitted to the top ten values (not to one).
    assert np.sort(s)[-2] <= np.log10(30) + 1e-9
    assert det.knots_[-1] == pytest.approx(np.log10(30))
    assert det.tail_scale_[0] > 0.2
    # A long window keeps the full grid up to 1 in 1000.
    long = RobustResidualDetector().fit(np.random.default_rng(0).normal(size=(5000, 1)))
    assert long.knots_[-1] == pytest.approx(3.0)


def test_threshold_floor_binds_only_when_asked_above_the_fitted_tail() -> None:
    cfg = DecisionConfig(alerts_per_week=0.05)
    # A row a second, 8 surprises a row: 0.05 chance alerts a week need p < 1 / (604800 * 8 / 0.05).
    assert surprise_floor(1.0, 8, cfg) == pytest.approx(np.log10(604800 * 8 / 0.05))
    scores = np.random.default_rng(2).exponential(1.0, 30)
    fitted = calibrate_threshold(scores, 30 / 86400, cfg)
    assert calibrate_threshold(scores, 30 / 86400, cfg, floor=0.5 * fitted.value) == fitted
    assert calibrate_threshold(scores, 30 / 86400, cfg, floor=2 * fitted.value).value == (
        2 * fitted.value
    )


def test_rows_before_the_first_value_are_not_learnt() -> None:
    """A training read may start before the node's history does (the service's probe finds where
    it starts to within a probe step): those empty rows are not quiet training rows. The model is
    the one the history alone gives."""
    data = noisy_node(TRAIN_ROWS, seed=4, repeats=False)
    before = pd.DataFrame(
        np.nan, columns=data.columns, index=data.index[0] - np.arange(50, 0, -1, dtype=np.int64)
    )
    alone = NodeModel(CONFIG).fit(data)
    padded = NodeModel(CONFIG).fit(pd.concat([before, data]))
    assert padded.train_rows_ == alone.train_rows_
    assert padded.threshold_ == alone.threshold_
    later = noisy_node(TRAIN_ROWS + 30, seed=4, repeats=False).iloc[TRAIN_ROWS:]
    later.index = data.index[-1] + 1 + np.arange(30, dtype=np.int64)
    np.testing.assert_allclose(padded.score(later).score, alone.score(later).score)
