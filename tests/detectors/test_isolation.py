"""Detectors: one scikit-learn outlier contract test over every detector, plus their specifics."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import IsolationForest

from dcwatch.detectors.models.ensemble import EnsembleDetector
from dcwatch.detectors.models.isolation import IsolationForestDetector, PackedForest
from dcwatch.detectors.models.onset import OnsetDetector, cusum
from dcwatch.detectors.models.residual import RobustResidualDetector


def detectors() -> list:
    return [
        IsolationForestDetector(n_estimators=50, random_state=0),
        RobustResidualDetector(tail_fraction=0.02),
        EnsembleDetector(n_estimators=30, random_state=0),
        EnsembleDetector(channels=("residual", "pca"), random_state=1),
        EnsembleDetector(channels=("residual", "iforest", "onset"), n_estimators=20),
        OnsetDetector(drift=1.0),
        OnsetDetector(drift=2.0, forget=0.9),
    ]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 6))
    outlier = np.full((1, 6), 9.0)
    return X, outlier


@pytest.mark.parametrize("det", detectors(), ids=lambda d: type(d).__name__)
def test_outlier_contract(det, data) -> None:
    X, outlier = data
    # __init__ stores parameters verbatim; clone works.
    sig = inspect.signature(type(det).__init__)
    params = det.get_params()
    assert set(params) == {p for p in sig.parameters if p != "self"}
    cloned = clone(det)
    assert cloned.get_params() == params and cloned is not det
    # fit returns self, fitted attributes end with "_".
    assert det.fit(X) is det
    fitted = [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]
    assert "offset_" in fitted and isinstance(det.offset_, float)
    assert not any(k.endswith("_") for k in vars(cloned) if not k.startswith("_"))
    # score_samples: lower is more abnormal.
    s = det.score_samples(X)
    s_out = det.score_samples(outlier)
    assert s.shape == (len(X),)
    assert s_out[0] < np.quantile(s, 0.01)
    # decision_function < 0 exactly where predict == -1.
    both = np.vstack([X[:300], outlier])
    dec = det.decision_function(both)
    pred = det.predict(both)
    assert set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_array_equal(dec < 0, pred == -1)
    np.testing.assert_allclose(dec, det.score_samples(both) - det.offset_)
    assert pred[-1] == -1
    # Roughly the contamination share of training rows is flagged.
    assert (det.predict(X) == -1).mean() < 0.02
    # Pickle round trip keeps the scores.
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_allclose(again.score_samples(both), det.score_samples(both))


def test_unfitted_detectors_refuse_to_score(data) -> None:
    X, _ = data
    for det in detectors():
        with pytest.raises(Exception):  # noqa: B017 - sklearn's NotFittedError or AttributeError
            det.score_samples(X)


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_packed_forest_equals_sklearn(max_features: float) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 8)) * rng.uniform(0.01, 100, 8)
    forest = IsolationForest(n_estimators=40, max_features=max_features, random_state=0).fit(X)
    packed = PackedForest(forest)
    Y = np.vstack([X[:500], rng.normal(size=(200, 8)) * 200])
    np.testing.assert_allclose(packed.score_samples(Y), forest.score_samples(Y), atol=1e-7)


@pytest.mark.parametrize(("trees", "index"), [(200, np.uint16), (400, np.int32)])
def test_packed_forest_keeps_narrow_indices_and_still_equals_sklearn(
    trees: int, index: type[np.integer]
) -> None:
    # Beyond 32,768 tree nodes twice a 16-bit index overflows 16 bits; beyond 65,536 the
    # indices themselves need 32 bits.
    rng = np.random.default_rng(4)
    X = rng.normal(size=(4000, 300)) * rng.uniform(0.01, 100, 300)
    forest = IsolationForest(n_estimators=trees, max_samples=512, random_state=1).fit(X)
    packed = PackedForest(forest)
    assert packed.children.dtype == index and packed.feature.dtype == np.uint16
    assert len(packed.feature) > (32768 if index == np.uint16 else 65536)
    Y = np.vstack([X[:300], rng.normal(size=(100, 300)) * 200])
    np.testing.assert_allclose(packed.score_samples(Y), forest.score_samples(Y), atol=1e-7)
    assert PackedForest(IsolationForest(n_estimators=5).fit(X[:, :8])).feature.dtype == np.uint8


def test_isolation_detector_pickle_drops_sklearn_trees(data) -> None:
    X, _ = data
    det = IsolationForestDetector(n_estimators=20, random_state=0).fit(X)
    state = pickle.loads(pickle.dumps(det))
    assert not hasattr(state, "forest_")
    np.testing.assert_allclose(state.score_samples(X[:50]), det.forest_.score_samples(X[:50]))


def test_residual_surprise_is_calibrated_per_feature() -> None:
    rng = np.random.default_rng(1)
    flat = rng.normal(0, 1, 20000)
    spiky = rng.standard_t(2, 20000)  # heavy tails: big deviations are common
    det = RobustResidualDetector().fit(np.column_stack([flat, spiky]))
    S = det.feature_surprises(np.array([[6.0, 6.0], [np.quantile(flat, 0.99), 0.0]]))
    assert S[0, 0] > S[0, 1] + 2  # the same deviation is much rarer on the well-behaved series
    # At the training 99th percentile of the upper side the surprise is -log10(0.01) = 2.
    assert S[1, 0] == pytest.approx(2.0, abs=0.05)
    # Monotone in the deviation, beyond the largest training value too.
    grid = np.linspace(0, 40, 200)[:, None] * np.ones((1, 2))
    Sg = det.feature_surprises(grid)
    assert np.all(np.diff(Sg, axis=0) >= -1e-12)


def test_residual_detector_zero_inflated_feature() -> None:
    x = np.zeros((5000, 1))
    x[::500] = 3.0  # rare positive spikes, zeros otherwise
    det = RobustResidualDetector().fit(x)
    s = det.feature_surprises(np.array([[0.0], [3.0], [30.0]]))[:, 0]
    assert s[0] == 0.0
    assert 1.5 < s[1] < s[2]


def test_ensemble_channels_and_bad_channels(data) -> None:
    X, outlier = data
    det = EnsembleDetector(n_estimators=20, random_state=0).fit(X)
    assert det.channel_names_ == ["residual", "iforest"]
    C, S = det.analyse(np.vstack([X[:5], outlier]))
    assert C.shape == (6, 2) and S.shape == (6, 12)
    assert C[-1].max() > 1.0  # above the training 99th percentile on the common scale
    with pytest.raises(ValueError):
        EnsembleDetector(channels=("iforest",)).fit(X)


def test_isolation_detector_validates_input(data) -> None:
    X, _ = data
    det = IsolationForestDetector(n_estimators=10, random_state=0).fit(X)
    with pytest.raises(ValueError):
        det.score_samples(X[:, :3])
    with pytest.raises(ValueError):
        IsolationForestDetector(contamination=0.7).fit(X)


def test_onset_cusum_closed_form_equals_the_recursion() -> None:
    rng = np.random.default_rng(3)
    E = rng.exponential(0.6, size=(300, 4))
    E[100:150, 1] += 1.5  # a sustained moderate shift in one column
    carry = np.array([0.0, 2.0, 0.5, 7.0])
    c, want = carry.copy(), np.empty_like(E)
    for i in range(len(E)):
        c = np.maximum(0.0, c + E[i] - 1.0)
        want[i] = c
    np.testing.assert_allclose(cusum(E, 1.0, carry), want, atol=1e-9)
    leaky, c = cusum(E, 1.0, carry, forget=0.8), carry.copy()
    for i in range(len(E)):
        c = np.maximum(0.0, 0.8 * c + E[i] - 1.0)
        np.testing.assert_allclose(leaky[i], c, atol=1e-12)
    # Split anywhere, the carry continues the sum exactly.
    first = cusum(E[:120], 1.0, carry, forget=0.8)
    rest = cusum(E[120:], 1.0, first[-1], forget=0.8)
    np.testing.assert_allclose(np.vstack([first, rest]), leaky)


def test_onset_finds_a_sustained_moderate_shift_the_residual_misses() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6000, 3))
    res = RobustResidualDetector().fit(X)
    S = res.surprises(X)
    onset = OnsetDetector(drift=1.0).fit(S)
    test = rng.normal(size=(400, 3))
    test[200:260, 0] += 2.2  # about the training 98th percentile: never extreme on its own
    St = res.surprises(test)
    peak_before = St[:200].max()
    assert St[200:260].max(axis=1).mean() < peak_before  # the residual channel sees nothing odd
    onset_s, carry = onset.stream(St)
    assert onset_s[230:260].max() > 2 * onset_s[:200].max()
    assert carry.shape == (6,)
    # Streamed row by row, the same scores.
    c = None
    for i in range(len(St)):
        row, c = onset.stream(St[i : i + 1], c)
        np.testing.assert_allclose(row[0], onset_s[i])


def test_ensemble_onset_channel_streams_and_round_trips(data) -> None:
    X, _ = data
    det = EnsembleDetector(
        channels=("residual", "iforest", "onset"), n_estimators=20, onset_forget=0.9
    ).fit(X)
    assert det.channel_names_ == ["residual", "iforest", "onset"]
    rows = np.vstack([X[:50], X[50:60] + 2.5])
    C, S, carry = det.stream(rows)
    C1, _, c1 = det.stream(rows[:30])
    C2, _, c2 = det.stream(rows[30:], c1)
    np.testing.assert_allclose(np.vstack([C1, C2]), C)
    np.testing.assert_allclose(c2, carry)
    assert C[-1, 2] > C[:50, 2].max()  # the onset channel rises over the shifted rows
    # Contributors see each feature's stronger evidence: never less than its residual surprise.
    assert S.shape == (60, 12) and (det.residual_.surprises(rows) <= S).all()
    assert (det.residual_.surprises(rows)[-5:] < S[-5:]).any()
    again = EnsembleDetector.from_state(det.state())
    np.testing.assert_allclose(again.stream(rows[30:], c1)[0], C2)
    # A state written before the channel existed still loads, without it.
    plain = EnsembleDetector(n_estimators=20).fit(X).state()
    del plain["onset"]
    assert EnsembleDetector.from_state(plain).initial_carry().shape == (0,)
