"""The evidence channel: the surprise of all features together (a Fisher-style sum)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.models import persist
from dcwatch.detectors.models.ensemble import EnsembleDetector, combined_evidence
from dcwatch.detectors.models.node import ModelConfig, NodeModel

STEP = 60.0
WITH_EVIDENCE = ("residual", "iforest", "evidence")
WITHOUT = ("residual", "iforest")


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4000, 8))


def node_frame(n: int, seed: int, start: float = 1.7e9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = start + STEP * np.arange(n)
    load = 0.5 + 0.3 * np.sin(2 * np.pi * (ts % 86400) / 86400)
    cols = {f"s{j}": 10 * (j + 1) * load + rng.normal(0, 1, n) for j in range(6)}
    return pd.DataFrame(cols, index=ts.astype(np.int64))


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    train = node_frame(3 * 1440, 0)
    test = node_frame(300, 1, start=float(train.index[-1]) + STEP)
    test.iloc[150:200, :5] += 6.0  # five series move together, none far
    return train, test


def test_only_surprises_beyond_1_count() -> None:
    F = np.array([[0.5, 3.0, 1.5, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(combined_evidence(F), [2.0 + 0.5 + 1.0, 0.0])
    assert combined_evidence(np.zeros((3, 0))).shape == (3,)  # no features: no evidence


def test_several_moderate_shifts_rise_above_evidence_not_residual(X) -> None:
    det = EnsembleDetector(channels=("residual", "evidence")).fit(X)
    assert det.channel_names_ == ["residual", "evidence"]
    fault = np.zeros((1, 8))
    fault[0, :5] = 2.4  # each about 1 in 100 on its side: no feature alone is remarkable
    residual, evidence = det.channel_scores(fault)[0]
    # Each surprise stays below the residual channel's training 99th percentile (1 on the scale).
    assert residual < 0.5
    # Together they are beyond the evidence channel's own training 99th percentile.
    assert evidence > 1.0 and evidence > residual + 0.5
    # One feature far out is the residual channel's case, and is still seen there.
    spike = np.zeros((1, 8))
    spike[0, 0] = 6.0
    assert det.channel_scores(spike)[0, 0] > 1.0


def test_evidence_streams_row_by_row_like_a_batch(X) -> None:
    det = EnsembleDetector(channels=WITH_EVIDENCE, n_estimators=20).fit(X)
    rows = np.vstack([X[:40], X[40:50] + 2.0])
    C, S, _ = det.stream(rows)
    one = np.vstack([det.stream(rows[i : i + 1])[0] for i in range(len(rows))])
    np.testing.assert_allclose(one, C)
    assert S.shape == (50, 16)


def test_ensemble_state_round_trip_scores_identically(X) -> None:
    det = EnsembleDetector(channels=WITH_EVIDENCE, n_estimators=20).fit(X)
    again = EnsembleDetector.from_state(det.state())
    assert again.channel_names_ == det.channel_names_ == list(WITH_EVIDENCE)
    rows = X[:200] * 1.5
    assert np.array_equal(again.channel_scores(rows), det.channel_scores(rows))
    # A state whose channel list disagrees with its scales is refused.
    state = det.state()
    state["params"]["channels"] = ["residual", "iforest"]
    with pytest.raises(persist.StateError, match="channels"):
        EnsembleDetector.from_state(state)


def test_the_other_channels_are_unchanged_by_it(X) -> None:
    rows = X[:300] * 1.5
    plain = EnsembleDetector(n_estimators=20).fit(X)
    both = EnsembleDetector(channels=WITH_EVIDENCE, n_estimators=20).fit(X)
    assert plain.channel_names_ == ["residual", "iforest"]
    assert np.array_equal(both.channel_scores(rows)[:, :2], plain.channel_scores(rows))


def test_node_model_with_evidence_round_trips_bit_identically(frames) -> None:
    train, test = frames
    cfg = ModelConfig(n_estimators=30, channels=WITH_EVIDENCE)
    model = NodeModel(cfg).fit(train)
    first = model.score(test.iloc[:160])
    restored = NodeModel.loads(model.dumps())
    assert restored.config == cfg
    a, b = model.score(test.iloc[160:]), restored.score(test.iloc[160:])
    for name in ("ts", "score", "raw", "is_anomaly"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.contributors == b.contributors
    assert first.is_anomaly.any() or a.is_anomaly.any()  # the joint shift is seen


def test_node_model_without_the_channel_is_unchanged(frames) -> None:
    train, test = frames
    plain = NodeModel(ModelConfig(n_estimators=30, channels=WITHOUT)).fit(train)
    both = NodeModel(ModelConfig(n_estimators=30, channels=WITH_EVIDENCE)).fit(train)
    assert plain.detector_.channel_names_ == ["residual", "iforest"]
    z = plain.features_.transform_values(
        test.index.to_numpy(float), test.to_numpy(float), plain.history_
    ).z
    C_plain, S_plain, _ = plain.detector_.stream(z)
    C_both, S_both, _ = both.detector_.stream(z)
    assert np.array_equal(C_both[:, :2], C_plain) and np.array_equal(S_both, S_plain)


def test_the_channel_is_on_by_default_and_sits_out_on_a_single_series_node(frames) -> None:
    train, test = frames
    assert ModelConfig().channels == WITH_EVIDENCE
    two = NodeModel(ModelConfig(n_estimators=30)).fit(train[["s0", "s1"]])
    assert two.detector_.channel_names_ == list(WITH_EVIDENCE)
    # One series: its two features (short and seasonal residual) would only repeat the
    # residual channel, so the node scores as without the channel, after a restart too.
    one = NodeModel(ModelConfig(n_estimators=30)).fit(train[["s0"]])
    plain = NodeModel(ModelConfig(n_estimators=30, channels=WITHOUT)).fit(train[["s0"]])
    assert one.detector_.channel_names_ == list(WITHOUT)
    restored = NodeModel.loads(one.dumps())
    assert restored.detector_.channel_names_ == list(WITHOUT)
    a, b = restored.score(test[["s0"]]), plain.score(test[["s0"]])
    assert np.array_equal(a.score, b.score) and np.array_equal(a.is_anomaly, b.is_anomaly)
