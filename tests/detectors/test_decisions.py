"""Decisions (smoothing, calibration, alert rule, contributors) and the NodeModel around them."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.backtest.evaluation import runs
from dcwatch.detectors.decisions import (
    AlertState,
    DecisionConfig,
    alert_rows,
    apply_rule,
    calibrate_threshold,
    smooth,
    top_contributors,
)
from dcwatch.detectors.frame import Frame
from dcwatch.detectors.models.node import ModelConfig, NodeModel, NotFittedError, score_batch

STEP = 60.0


def test_smooth_streaming_equals_batch() -> None:
    x = np.random.default_rng(0).random(50)
    whole, _ = smooth(np.zeros(0), x, 4)
    parts, tail = [], np.zeros(0)
    for i in range(0, 50, 7):
        out, tail = smooth(tail, x[i : i + 7], 4)
        parts.append(out)
    np.testing.assert_allclose(np.concatenate(parts), whole)
    assert whole[0] == x[0] and whole[5] == pytest.approx(x[2:6].mean())
    assert np.array_equal(smooth(np.zeros(0), x, 1)[0], x)


def test_calibration_hits_the_target_rate_on_training_data() -> None:
    rng = np.random.default_rng(1)
    days = 60.0
    s = rng.exponential(1.0, int(days * 1440))
    cfg = DecisionConfig(alerts_per_week=7.0, hold_points=5)  # one a day
    t = calibrate_threshold(s, days, cfg).value
    n = len(runs(apply_rule(s / t, AlertState(), cfg)[0]))
    assert 0.4 * days <= n <= 2.0 * days
    rarer = calibrate_threshold(s, days, DecisionConfig(alerts_per_week=0.1)).value
    assert rarer > t
    # Extrapolates beyond the training maximum when asked for rarer alerts than seen.
    assert (
        calibrate_threshold(s[:1440], 1.0, DecisionConfig(alerts_per_week=0.1)).value
        > s[:1440].max()
    )


def test_calibration_of_flat_scores_is_finite_and_above_them() -> None:
    t = calibrate_threshold(np.zeros(1000), 1.0, DecisionConfig())
    assert np.isfinite(t.value) and t.value > 0
    assert calibrate_threshold(np.zeros(0), 1.0, DecisionConfig()).value == 1.0


@pytest.mark.parametrize("rows", [30, 45, 60])
def test_a_short_windows_threshold_is_near_the_rate_it_asks_for(rows: int) -> None:
    """A first fit's 30 to 60 rows of smoothed noise: the 20-row hold joins their excursions into
    one or two alerts. A tail fitted to those peaks put the threshold at about twice the score
    that 0.35 alerts a week ask for; fitted to every score above its base, the median over many
    windows is within a quarter above it (and not below: the extrapolation stays cautious).

    The score asked for: 0.35 alerts a week at a row every 2 s is p ~ 1.2e-6 a row, which the
    mean of three |N(0, 1)| (noise smoothed over 3 rows) passes at 2.96 (simulated, 1e8 rows)."""
    rng = np.random.default_rng(3)
    days = rows * 2.0 / 86400
    values = []
    for _ in range(200):
        s, _ = smooth(np.zeros(0), np.abs(rng.normal(size=rows)), 3)
        values.append(calibrate_threshold(s, days, DecisionConfig()).value)
    assert 2.96 <= np.median(values) <= 1.25 * 2.96


def test_rule_persistence_and_hold() -> None:
    cfg = DecisionConfig(for_points=2, hold_points=3)
    s = np.array([0, 2, 0, 2, 2, 2, 0, 0, 2, 0, 0, 0, 0], dtype=float)
    flags, state = apply_rule(s, AlertState(), cfg)
    # One noisy point does not fire; the gap of 2 below does not resolve; 3 below do.
    assert flags.astype(int).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert not state.active
    # Streaming in pieces gives the same flags.
    st, parts = AlertState(), []
    for i in range(0, len(s), 4):
        f, st = apply_rule(s[i : i + 4], st, cfg)
        parts.append(f)
    np.testing.assert_array_equal(np.concatenate(parts), flags)


def test_alert_rows_end_at_the_last_row_above_release() -> None:
    cfg = DecisionConfig(for_points=1, hold_points=3, release=0.5)
    s = np.array([0, 2, 0.6, 0.2, 2, 0.4, 0.1, 0.3, 0, 2, 0.1], dtype=float)
    firing, state = apply_rule(s, AlertState(), cfg)
    assert firing.astype(int).tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1]
    rows, resolved = alert_rows(s, firing, False, cfg)
    # The gap of one row below release stays inside the alert, the row at 0.6 (above release,
    # below the threshold) too; the two hold rows after the last row above release do not.
    assert rows.astype(int).tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    assert resolved == 7 and resolved - cfg.hold_points == 4  # row 4: the alert's last row
    assert state.active  # the second alert still fires: its rows stay flagged
    # An alert resolving in a later call: that call's rows of the hold are dropped, not the
    # earlier call's (already reported while the alert fired).
    rows, resolved = alert_rows(s[6:], firing[6:], bool(firing[5]), cfg)
    assert rows.astype(int).tolist() == [0, 0, 0, 1, 1] and resolved == 1
    rows, resolved = alert_rows(np.zeros(0), np.zeros(0, dtype=bool), True, cfg)
    assert rows.size == 0 and resolved is None


def test_top_contributors_one_per_series() -> None:
    names = ["gpu_temp:short", "power:short", "gpu_temp:season", "power:season"]
    surprises = np.array([5.0, 1.0, 7.0, 0.0])
    obs = np.array([90.0, 300.0, 90.0, 300.0])
    exp = np.array([60.0, 290.0, 58.0, 295.0])
    top = top_contributors(surprises, obs, exp, names, k=3)
    assert [(c.series, c.feature) for c in top] == [("gpu_temp", "season"), ("power", "short")]
    assert top[0].observed == 90.0 and top[0].expected == 58.0
    assert "gpu_temp 90 (expected 58" in top[0].describe()


# -- NodeModel ---------------------------------------------------------------------------------


def node_frame(n: int, seed: int, start: float = 1.7e9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = start + STEP * np.arange(n)
    phase = 2 * np.pi * (ts % 86400) / 86400
    load = 0.5 + 0.3 * np.sin(phase) + rng.normal(0, 0.02, n)
    return pd.DataFrame(
        {
            "gpu_temperature": 50 + 20 * load + rng.normal(0, 0.5, n),
            "gpu_power": 100 + 200 * load + rng.normal(0, 3, n),
            "net_rx": rng.gamma(4, 100, n),
            "fan": np.full(n, 1200.0),
        },
        index=ts.astype(np.int64),
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[NodeModel, pd.DataFrame, pd.DataFrame]:
    train = node_frame(3 * 1440, 0)
    test = node_frame(1440, 1, start=float(train.index[-1]) + STEP)
    # Inject a fault: GPU temperature and power climbing for 40 minutes.
    ramp = np.linspace(0, 1, 40)
    test.iloc[600:640, 0] += 35 * ramp
    test.iloc[600:640, 1] += 250 * ramp
    cfg = ModelConfig(n_estimators=30)
    return NodeModel(cfg).fit(train), train, test


def test_node_model_alerts_on_fault_with_contributors(fitted) -> None:
    model, _, test = fitted
    m = copy.deepcopy(model)
    assert m.series == ["gpu_temperature", "gpu_power", "net_rx"]  # constant fan dropped
    res = m.score(test)
    assert res.score.shape == res.is_anomaly.shape == (len(test),)
    flagged = np.flatnonzero(res.is_anomaly)
    assert flagged.size > 0
    assert 600 <= flagged[0] < 640  # fires during the ramp
    assert len(runs(res.is_anomaly)) <= 2  # one incident, not a flapping alert
    named = {c.series for i in flagged for c in res.contributors[i]}
    assert named & {"gpu_temperature", "gpu_power"}
    first = res.contributors[flagged[0]][0]
    assert first.observed > first.expected
    assert all(res.contributors[i] == [] for i in np.flatnonzero(~res.is_anomaly))


def test_node_model_quiet_on_normal_data(fitted) -> None:
    model, train, _ = fitted
    m = copy.deepcopy(model)
    clean = node_frame(1440, 7, start=float(train.index[-1]) + STEP)
    res = m.score(clean)
    assert len(runs(res.is_anomaly)) <= 1


def test_node_model_streaming_equals_batch_and_survives_restart(fitted) -> None:
    model, _, test = fitted
    whole = copy.deepcopy(model).score(test.iloc[:700])
    live = copy.deepcopy(model)
    scores, flags, ends = [], [], []
    for i in range(700):
        if i == 350:  # restart: persist and reload the state
            live = NodeModel.loads(live.dumps())
        r = live.score(test.iloc[i : i + 1])
        scores.append(r.score[0])
        flags.append(r.is_anomaly[0])
        if r.alert_end is not None:
            ends.append((i, r.alert_end))
    np.testing.assert_allclose(scores, whole.score, rtol=1e-9)
    # One row at a time, a row is flagged while the alert fires (its hold rows too: whether the
    # incident goes on is not known yet); the alert's end, once it resolves, says where it ended,
    # and the whole block's rows are the same alerts without those hold rows.
    assert ends, "the test data resolves an alert"
    trimmed = np.array(flags)
    ts = np.asarray(test.index[:700], dtype=float)
    release = model.config.decisions.release
    for i, end in ends:
        assert trimmed[ts <= end][-1] and whole.score[ts == end][0] >= release
        trimmed[(ts > end) & (np.arange(700) < i)] = False
    assert trimmed.sum() < np.sum(flags)
    np.testing.assert_array_equal(trimmed, whole.is_anomaly)


def test_score_batch_and_frame_input(fitted) -> None:
    model, _, test = fitted
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    rows = test.iloc[600:610]
    frame = Frame(
        times=rows.index.to_numpy(dtype=float),
        columns=tuple(rows.columns),
        values=rows.to_numpy(dtype=float),
    )
    out = score_batch([(a, rows), (b, frame)])
    np.testing.assert_allclose(out[0].score, out[1].score)


def test_node_model_errors() -> None:
    with pytest.raises(NotFittedError):
        NodeModel().score(node_frame(3, 0))
    with pytest.raises(ValueError):
        NodeModel().fit(node_frame(1, 0))
    with pytest.raises(ValueError):
        NodeModel.loads(b"\x80\x05N.")  # pickled None


def test_node_model_with_only_constant_series_never_alerts() -> None:
    train = node_frame(600, 0)[["fan"]]
    m = NodeModel(ModelConfig(n_estimators=10)).fit(train)
    assert m.series == []
    test = node_frame(100, 1, start=float(train.index[-1]) + STEP)[["fan"]]
    test.iloc[50:, 0] = 5000.0  # the dropped series moves: nothing to score it with
    res = m.score(test)
    assert not res.is_anomaly.any() and np.isfinite(res.score).all()


def test_rows_already_seen_are_skipped(fitted) -> None:
    model, train, test = fitted
    m = copy.deepcopy(model)
    first = m.score(test.iloc[:20])
    again = m.score(test.iloc[10:30])  # overlaps: only the 10 new rows are scored
    assert len(again.ts) == 10 and again.ts[0] == float(test.index[20])
    ref = copy.deepcopy(model).score(test.iloc[:30])
    np.testing.assert_allclose(np.concatenate([first.score, again.score]), ref.score)
    assert len(copy.deepcopy(model).score(train.iloc[-5:]).ts) == 0
