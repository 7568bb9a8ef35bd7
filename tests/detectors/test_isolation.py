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
from dcwatch.detectors.models.residual import RobustResidualDetector


def detectors() -> list:
    return [
        IsolationForestDetector(n_estimators=50, random_state=0),
        RobustResidualDetector(tail_fraction=0.02),
        EnsembleDetector(n_estimators=30, random_state=0),
        EnsembleDetector(channels=("residual", "pca"), random_state=1),
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
