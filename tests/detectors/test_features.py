"""Feature building: residuals, seasonal profile, constant/missing columns, streaming = batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.features import (
    FeatureBuilder,
    FeatureConfig,
    ffill,
    frame_arrays,
    robust_center_scale,
    trailing_median,
)
from dcwatch.detectors.frame import Frame

STEP = 300.0
DAY = 86400.0


def make_frame(days: float = 4.0, seed: int = 0, start: float = 1.7e9) -> pd.DataFrame:
    n = int(days * DAY / STEP)
    rng = np.random.default_rng(seed)
    ts = start + STEP * np.arange(n)
    phase = 2 * np.pi * (ts % DAY) / DAY
    df = pd.DataFrame(
        {
            "daily": 10 + 5 * np.sin(phase) + rng.normal(0, 0.2, n),
            "noise": rng.normal(0, 1, n),
            "flat": np.full(n, 3.0),
            "empty": np.full(n, np.nan),
        },
        index=ts.astype(np.int64),
    )
    return df


def test_trailing_median_matches_definition() -> None:
    x = np.random.default_rng(1).normal(size=(50, 2))
    for start in (0, 3, 20):
        got = trailing_median(x, 7, start)
        want = [np.median(x[max(0, i - 7) : i], axis=0) if i else x[0] for i in range(start, 50)]
        np.testing.assert_allclose(got, np.array(want))


def test_ffill_and_leading_fill() -> None:
    v = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan]])
    out = ffill(v, np.array([9.0, 8.0]))
    assert out.tolist() == [[9.0, 1.0], [2.0, 1.0], [2.0, 1.0]]


def test_robust_scale_never_zero() -> None:
    x = np.zeros((100, 3))
    x[0, 1] = 5.0  # one spike: MAD and IQR are 0
    x[:, 2] = 7.0  # constant
    med, scale = robust_center_scale(x)
    assert np.all(scale > 0) and np.all(np.isfinite(scale))
    assert med.tolist() == [0.0, 0.0, 7.0]


def test_constant_and_empty_columns_dropped_and_no_nan() -> None:
    train = make_frame()
    fb = FeatureBuilder().fit(train)
    assert fb.columns_ == ["daily", "noise"]
    assert set(fb.dropped_) == {"flat", "empty"}
    assert fb.feature_names_ == ["daily:short", "noise:short", "daily:season", "noise:season"]
    test = make_frame(days=1, seed=2, start=float(train.index[-1]) + STEP)
    test.iloc[5:9, 0] = np.nan  # a gap
    test = test.drop(columns=["noise"])  # a series that disappeared
    block = fb.transform(test, fb.history_from(train))
    assert block.z.shape == (len(test), 4)
    assert np.isfinite(block.z).all()
    assert np.isfinite(block.expected).all() and np.isfinite(block.observed).all()


def test_short_residual_flags_a_spike_in_its_own_series() -> None:
    train = make_frame()
    fb = FeatureBuilder().fit(train)
    test = make_frame(days=0.5, seed=3, start=float(train.index[-1]) + STEP)
    test.iloc[40, 1] += 12.0  # 12 sigma on "noise"
    block = fb.transform(test, fb.history_from(train))
    z = np.abs(block.z)
    top = fb.feature_names_[int(np.argmax(z[40]))]
    assert top.startswith("noise:")
    assert z[40, fb.feature_names_.index("noise:short")] > 8
    assert z[40, fb.feature_names_.index("daily:short")] < 4
    assert np.median(z) < 1.5


def test_seasonal_profile_explains_the_daily_shape() -> None:
    train = make_frame(days=4)
    fb = FeatureBuilder().fit(train)
    assert np.ptp(fb.profile_[:, 0]) > 8  # learned the +-5 sine
    test = make_frame(days=1, seed=4, start=float(train.index[-1]) + STEP)
    block = fb.transform(test, fb.history_from(train))
    season = block.z[:, fb.feature_names_.index("daily:season")]
    assert np.abs(season).max() < 6
    # Expected value of the seasonal feature tracks the sine.
    exp = block.expected[:, fb.feature_names_.index("daily:season")]
    assert np.corrcoef(exp, test["daily"].to_numpy())[0, 1] > 0.95


def test_short_training_has_no_profile() -> None:
    fb = FeatureBuilder().fit(make_frame(days=1.5))
    assert not fb.profile_.any()


def test_streaming_equals_batch() -> None:
    train = make_frame()
    fb = FeatureBuilder(FeatureConfig(short_window=5, long_window=12)).fit(train)
    test = make_frame(days=0.3, seed=5, start=float(train.index[-1]) + STEP)
    test.iloc[3, 0] = np.nan
    hist = fb.history_from(train)
    whole = fb.transform(test, hist)
    rows = []
    h = hist
    for i in range(len(test)):
        b = fb.transform(test.iloc[i : i + 1], h)
        h = b.history
        rows.append(b.z)
    np.testing.assert_allclose(np.vstack(rows), whole.z, rtol=1e-12, atol=1e-12)


def test_frame_and_datetime_index_inputs_agree() -> None:
    train = make_frame(days=3)
    frame = Frame(
        times=train.index.to_numpy(dtype=float),
        columns=tuple(train.columns),
        values=train.to_numpy(dtype=float),
    )
    a = FeatureBuilder().fit(train)
    b = FeatureBuilder().fit(frame)
    c = FeatureBuilder().fit(frame.to_pandas())
    for other in (b, c):
        np.testing.assert_allclose(other.center_, a.center_)
        np.testing.assert_allclose(other.profile_, a.profile_)
    ts, cols, _ = frame_arrays(frame.to_pandas())
    np.testing.assert_allclose(ts, train.index.to_numpy(dtype=float))
    assert cols == list(train.columns)


@pytest.mark.parametrize("n", [2, 3])
def test_tiny_training_frames(n: int) -> None:
    df = pd.DataFrame({"a": np.arange(n, dtype=float)}, index=np.arange(n) * 60)
    fb = FeatureBuilder().fit(df)
    block = fb.transform(df, None)
    assert np.isfinite(block.z).all()


def test_fit_transform_equals_transform_and_exclude() -> None:
    train = make_frame(days=3)
    fb = FeatureBuilder()
    block = fb.fit_transform(train)
    again = fb.transform(train, None)
    np.testing.assert_allclose(block.z, again.z)
    np.testing.assert_allclose(block.history.values, again.history.values)
    # Excluded rows do not shape the profile: a wild excluded day leaves it as it was.
    wild = train.copy()
    wild.iloc[:288, 0] += 100.0
    mask = np.zeros(len(wild), dtype=bool)
    mask[:288] = True
    fb2 = FeatureBuilder().fit(wild, exclude=mask)
    fb3 = FeatureBuilder().fit(train.iloc[288:])
    np.testing.assert_allclose(fb2.profile_, fb3.profile_, atol=0.5)


def test_deviations_within_the_deadband_are_no_evidence() -> None:
    # A rate that is very smooth in training (a counter's rate over 2 minutes: 0.05 % noise) and
    # an error rate at zero; then a 1 % wobble on the rate and a 10 % drop.
    rng = np.random.default_rng(7)
    n = 600
    ts = 1.7e9 + STEP * np.arange(n + 40)
    rate = 1000.0 + rng.normal(0, 0.5, n + 40)
    errors = np.where(rng.random(n + 40) < 0.05, 1.0, 0.0)
    rate[n + 10 : n + 15] += 10.0
    rate[n + 25 : n + 30] -= 100.0
    errors[n + 25 : n + 30] = 0.5  # within 2 % of nothing is still a change
    frame = pd.DataFrame({"rate": rate, "errors": errors}, index=ts.astype(np.int64))
    train, test = frame.iloc[:n], frame.iloc[n:]

    def short_z(share: float) -> np.ndarray:
        fb = FeatureBuilder(FeatureConfig(min_relative_deviation=share)).fit(train)
        assert fb.deadband_.tolist() == pytest.approx([share * 1000.0, 0.0] * 2, abs=0.5 * share)
        block = fb.transform(test, fb.history_from(train))
        return block.z[:, [fb.feature_names_.index(f"{c}:short") for c in ("rate", "errors")]]

    plain, banded = short_z(0.0), short_z(0.02)
    assert np.abs(plain[10:15, 0]).min() > 10  # 20 training sigmas without the deadband
    assert np.abs(banded[:25, 0]).max() == 0.0  # the wobble and the noise are inside it
    assert banded[25:30, 0].max() < -50  # the drop still stands out (80 units beyond the band)
    np.testing.assert_array_equal(banded[:, 1], plain[:, 1])  # a series at zero has no band
    assert np.abs(banded[25:30, 1]).min() > 0
