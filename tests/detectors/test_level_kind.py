"""The ``level`` feature kind: a deviation from the training expectation that does not adapt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.features import KINDS, FeatureBuilder, FeatureConfig, trailing_median
from dcwatch.detectors.models import persist
from dcwatch.detectors.models.node import STATE_FORMAT, ModelConfig, NodeModel
from dcwatch.detectors.models.residual import RobustResidualDetector

STEP = 300.0
DAY = 86400.0
LEVEL = FeatureConfig(kinds=("short", "season", "level"))
SHIFT = slice(60, 260)  # 200 test rows, about 17 hours at 5 minutes


def make_frame(days: float, seed: int, start: float = 1.7e9) -> pd.DataFrame:
    """A daily sine with noise on one series, plain noise on another."""
    n = int(days * DAY / STEP)
    rng = np.random.default_rng(seed)
    ts = start + STEP * np.arange(n)
    phase = 2 * np.pi * (ts % DAY) / DAY
    return pd.DataFrame(
        {"daily": 10 + 5 * np.sin(phase) + rng.normal(0, 1, n), "noise": rng.normal(0, 1, n)},
        index=ts.astype(np.int64),
    )


def shifted(train: pd.DataFrame, seed: int = 9) -> pd.DataFrame:
    """A day after ``train`` whose ``daily`` series sits 8 noise units higher for 200 rows."""
    test = make_frame(1.0, seed, start=float(train.index[-1]) + STEP)
    test.iloc[SHIFT, 0] += 8.0
    return test


def surprises(fb: FeatureBuilder, train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """Per-feature tail surprise of ``test`` by the residual detector fitted on ``train``."""
    z = fb.fit_transform(train).z[fb.warmup_rows(len(train)) :]
    detector = RobustResidualDetector().fit(z)
    return detector.feature_surprises(fb.transform(test, fb.history_from(train)).z)


def test_a_sustained_shift_stays_surprising_on_the_level_feature_only() -> None:
    train = make_frame(4.0, 0)
    fb = FeatureBuilder(LEVEL)
    s = surprises(fb, train, shifted(train))
    col = {name: j for j, name in enumerate(fb.feature_names_)}
    during = s[SHIFT]
    # The level feature holds the shift against the training profile for its whole duration.
    assert during[:, col["daily:level"]].min() > 3.0  # rarer than 1 in 1000 training rows
    # The adaptive ones take the new level as their baseline: short within its 10 points, season
    # within its 60.
    assert np.median(during[20:, col["daily:short"]]) < 1.5
    assert np.median(during[100:, col["daily:season"]]) < 1.5
    # Before the shift and on the other series, nothing stands out.
    assert np.median(s[:50, col["daily:level"]]) < 1.5
    assert np.median(s[:, col["noise:level"]]) < 1.5


def test_the_level_expectation_is_the_training_profile_or_median() -> None:
    train = make_frame(4.0, 0)
    fb = FeatureBuilder(LEVEL).fit(train)
    block = fb.transform(shifted(train), fb.history_from(train))
    d = len(fb.columns_)
    assert fb.seasonal_
    np.testing.assert_array_equal(block.expected[:, 2 * d :], fb.profile_[fb._phase(block.ts)])
    # Without two daily cycles: the training median, not the zero profile.
    short = FeatureBuilder(LEVEL).fit(train.iloc[:300])
    block = short.transform(train.iloc[300:400], short.history_from(train.iloc[:300]))
    assert not short.seasonal_ and not short.profile_.any()
    np.testing.assert_array_equal(block.expected[:, 2 * d :], np.tile(short.fill_, (100, 1)))
    assert np.allclose(short.fill_, [10.0, 0.0], atol=1.0)


@pytest.mark.parametrize("days", [4.0, 1.0], ids=["seasonal", "short-training"])
def test_streaming_row_by_row_equals_training_features(days: float) -> None:
    frame = make_frame(days, 3)
    frame.iloc[150:153, 0] = np.nan
    fb = FeatureBuilder(LEVEL)
    whole = fb.fit_transform(frame)
    m = len(frame) - 40
    h = fb.history_from(frame.iloc[:m])
    rows = []
    for i in range(m, len(frame)):
        ts, raw = fb.select(frame.iloc[i : i + 1])
        b = fb.transform_values(ts, raw, h)
        h = b.history
        rows.append((b.z, b.observed, b.expected))
    for k, name in enumerate(("z", "observed", "expected")):
        got = np.vstack([r[k] for r in rows])
        np.testing.assert_allclose(got, getattr(whole, name)[m:], rtol=1e-12, atol=1e-12)


def test_default_kinds_and_their_features_are_unchanged() -> None:
    assert FeatureConfig().kinds == KINDS == ("short", "season")
    train = make_frame(4.0, 0)
    test = shifted(train)
    base = FeatureBuilder().fit(train)
    with_level = FeatureBuilder(LEVEL).fit(train)
    assert base.feature_names_ == ["daily:short", "noise:short", "daily:season", "noise:season"]
    assert with_level.feature_names_ == [*base.feature_names_, "daily:level", "noise:level"]
    a = base.transform(test, base.history_from(train))
    b = with_level.transform(test, with_level.history_from(train))
    d = 2 * len(base.columns_)
    for name in ("z", "observed", "expected"):
        assert np.array_equal(getattr(a, name), getattr(b, name)[:, :d]), name
    # The residuals as they were defined before the kinds could be chosen.
    ts, raw = base.select(pd.concat([train.iloc[-60:], test]))
    prof = base.profile_[base._phase(ts)]
    short = trailing_median(raw, 10, 60)
    season = prof[60:] + trailing_median(raw - prof, 60, 60)
    want = (raw[60:, None, :] - np.stack([short, season], axis=1)).reshape(len(test), -1)
    assert np.array_equal(a.z, (want - base.center_) / base.scale_)


def test_unknown_or_repeated_kinds_are_refused() -> None:
    for kinds in [(), ("short", "short"), ("short", "trend")]:
        with pytest.raises(ValueError, match="kinds"):
            FeatureBuilder(FeatureConfig(kinds=kinds)).fit(make_frame(1.0, 0))


@pytest.fixture(scope="module")
def level_model() -> tuple[NodeModel, pd.DataFrame]:
    train = make_frame(4.0, 0)
    config = ModelConfig(features=LEVEL, n_estimators=30)
    return NodeModel(config).fit(train), shifted(train)


def test_state_round_trips_bit_identically_with_the_level_kind(
    level_model: tuple[NodeModel, pd.DataFrame],
) -> None:
    fitted, test = level_model
    model = NodeModel.loads(fitted.dumps())  # the fixture is shared: not advanced here
    restored = NodeModel.loads(model.dumps())
    assert restored.config == model.config and restored.config.features.kinds == LEVEL.kinds
    fb, rb = model.features_, restored.features_
    assert rb.feature_names_ == fb.feature_names_ and rb.seasonal_ is fb.seasonal_ is True
    for name in ("fill_", "profile_", "center_", "scale_", "series_index_"):
        assert np.array_equal(getattr(rb, name), getattr(fb, name)), name
    a, b = model.score(test.iloc[:150]), restored.score(test.iloc[:150])
    for name in ("ts", "score", "raw", "is_anomaly"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.contributors == b.contributors
    assert NodeModel.loads(model.dumps()).dumps() == model.dumps()


def test_a_long_alert_is_explained_by_the_level_against_the_profile(
    level_model: tuple[NodeModel, pd.DataFrame],
) -> None:
    fitted, test = level_model
    model = NodeModel.loads(fitted.dumps())
    result = model.score(test)
    late = SHIFT.start + 150  # long after the adaptive features took the shift as normal
    assert result.is_anomaly[late]
    top = result.contributors[late][0]
    fb = model.features_
    usual = fb.profile_[fb._phase(result.ts[late : late + 1])[0], 0]
    assert (top.series, top.feature, top.expected) == ("daily", "level", usual)
    assert top.observed == pytest.approx(usual + 8.0, abs=4.0)


def test_a_version_5_state_loads_with_the_default_kinds() -> None:
    train = make_frame(4.0, 0)
    model = NodeModel(ModelConfig(n_estimators=20)).fit(train)
    state = model.state()
    del state["config"]["features"]["kinds"]
    del state["features"]["config"]["kinds"]
    del state["features"]["seasonal"]
    legacy = NodeModel.loads(persist.pack(STATE_FORMAT, 5, state))
    assert legacy.config == model.config and legacy.features_.seasonal_
    assert legacy.features_.feature_names_ == model.features_.feature_names_
    test = shifted(train)
    a, b = legacy.score(test), model.score(test)
    assert np.array_equal(a.score, b.score) and a.contributors == b.contributors
    # Short training: an all-zero profile reads as not seasonal.
    short = NodeModel(ModelConfig(n_estimators=20)).fit(train.iloc[:300]).state()
    del short["config"]["features"]["kinds"]
    del short["features"]["config"]["kinds"]
    del short["features"]["seasonal"]
    assert not NodeModel.loads(persist.pack(STATE_FORMAT, 5, short)).features_.seasonal_
