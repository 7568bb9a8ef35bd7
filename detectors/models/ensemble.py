"""Ensemble of detection channels over the residual features, one score per row.

Channels (each fitted on the training features, each put on a common scale by its own training
distribution: 0 at the training median, 1 at the training 99th percentile):

- ``residual``: ``RobustResidualDetector``, the largest per-series tail surprise. Carries most of
  the signal in the backtests, and names the contributing series.
- ``iforest``: ``IsolationForestDetector`` on the per-series surprises (clipped), catching unusual
  *combinations* of moderately unusual series. In the backtests it alone is precise but misses most
  events; joined by the maximum it adds a little on every dataset.
- ``pca``: reconstruction error of the surprises (off by default: it did not help in the backtests).
- ``onset``: ``OnsetDetector``, a CUSUM of each feature's surprise calibrated to a tail probability:
  many moderately unusual points in a row (a slowly rising fault) instead of one extreme one. It is
  stateful: ``stream`` takes and returns the CUSUM carried between calls.
- ``evidence``: the evidence of all features together, in the spirit of Fisher's method
  (``-2 sum ln p`` is chi-squared for independent features; a surprise is ``-log10 p``): the sum
  over features of each one's surprise (the larger side, clipped) beyond 1, so only features at
  least 10 times rarer than usual count. A fault that moves several series moderately at once,
  none far enough for ``residual``, adds up here. Features are correlated, so it is calibrated on
  its training distribution like every channel. It sits out with fewer than
  ``evidence_min_features`` features: a node model asks for two series' worth, since one series'
  features (its short and seasonal residual) only repeat the residual channel, and the channel
  then only raised the threshold (on single-series data event recall fell from 0.38 to 0.33).
  It also sits out on fewer than ``evidence_min_rows`` training rows: a node model asks for
  enough rows to put ``MIN_TAIL_POINTS`` above the 99th percentile its scale rests on (a
  minute's training made that scale a guess, and normal rows alerted). On in a node model's
  defaults (``ModelConfig.channels``): the leave-one-family-out choice (``bench/detect_lofo.py``).

The combined score is the maximum over channels; higher = more anomalous in ``channel_scores`` and
``anomaly_score``, lower = more abnormal in the scikit-learn style ``score_samples``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.decomposition import PCA

from dcwatch.detectors.models.isolation import IsolationForestDetector
from dcwatch.detectors.models.numeric import finite, require_fitted
from dcwatch.detectors.models.onset import OnsetDetector
from dcwatch.detectors.models.persist import (
    State,
    array,
    expect,
    integer,
    number,
    optional_section,
    params,
    section,
    strings,
)
from dcwatch.detectors.models.residual import RobustResidualDetector

SURPRISE_CLIP = 10.0
# Each channel's scale: 1 at this quantile of its training scores (0 at their median).
SCALE_QUANTILE = 0.99
CHANNELS = ("residual", "iforest", "pca", "onset", "evidence")
# A fitted PCA's arrays (transform and inverse_transform read the first three).
_PCA_ARRAYS = (
    "components_",
    "mean_",
    "explained_variance_",
    "explained_variance_ratio_",
    "singular_values_",
)


class EnsembleDetector(OutlierMixin, BaseEstimator):
    """Residual tail surprise + isolation forest (+ optional PCA error, onset CUSUM, combined
    evidence), combined by the maximum."""

    def __init__(
        self,
        channels: tuple[str, ...] = ("residual", "iforest"),
        tail_fraction: float = 0.01,
        n_estimators: int = 100,
        max_samples: int | str = "auto",
        max_train_rows: int = 20000,
        pca_variance: float = 0.95,
        contamination: float = 0.001,
        random_state: int | None = 0,
        onset_drift: float = 1.0,
        onset_forget: float = 1.0,
        evidence_min_features: int = 1,
        evidence_min_rows: int = 1,
    ) -> None:
        self.channels = channels
        self.tail_fraction = tail_fraction
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_train_rows = max_train_rows
        self.pca_variance = pca_variance
        self.contamination = contamination
        self.random_state = random_state
        self.onset_drift = onset_drift
        self.onset_forget = onset_forget
        self.evidence_min_features = evidence_min_features
        self.evidence_min_rows = evidence_min_rows

    def fit(self, X: np.ndarray, y: object = None) -> EnsembleDetector:
        X = finite(X)
        unknown = set(self.channels) - set(CHANNELS)
        if unknown or "residual" not in self.channels:
            raise ValueError(
                f"channels must include 'residual' and be among {'/'.join(CHANNELS)}: "
                f"{self.channels}"
            )
        self.n_features_in_ = X.shape[1]
        self.evidence_ = (
            "evidence" in self.channels
            and X.shape[1] >= self.evidence_min_features
            and X.shape[0] >= self.evidence_min_rows
        )
        self.residual_ = RobustResidualDetector(tail_fraction=self.tail_fraction).fit(X)
        S = np.clip(self.residual_.surprises(X), 0.0, SURPRISE_CLIP)
        rng = np.random.default_rng(self.random_state)
        sub = S
        if len(S) > self.max_train_rows:
            sub = S[np.sort(rng.choice(len(S), self.max_train_rows, replace=False))]
        self.iforest_ = None
        self.pca_ = None
        self.onset_ = None
        if "onset" in self.channels and S.shape[1] > 0:
            self.onset_ = OnsetDetector(
                drift=self.onset_drift, forget=self.onset_forget, clip=SURPRISE_CLIP
            ).fit(S)
        if "iforest" in self.channels and S.shape[1] > 0:
            self.iforest_ = IsolationForestDetector(
                n_estimators=self.n_estimators,
                max_samples=self.max_samples,
                random_state=self.random_state,
            ).fit(sub)
        if "pca" in self.channels and S.shape[1] > 1:
            k = min(S.shape[1] - 1, len(sub) - 1)
            pca = PCA(n_components=self.pca_variance).fit(sub)
            if pca.n_components_ > k:
                pca = PCA(n_components=k).fit(sub)
            self.pca_ = pca
        raw, _, _ = self._raw_channels(self.residual_.surprises(X), None)
        self.channel_names_ = list(raw)
        R = np.stack([raw[c] for c in self.channel_names_], axis=1)
        self.center_ = np.median(R, axis=0)
        spread = np.quantile(R, SCALE_QUANTILE, axis=0) - self.center_
        self.spread_ = np.where(spread > 0, spread, 1.0)
        train = self.score_samples(X)
        self.offset_ = float(np.quantile(train, self.contamination))
        return self

    def _raw_channels(
        self, surprises: np.ndarray, carry: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Raw channel scores, the per-feature surprise (the larger of residual and onset) and
        the onset carry after the rows."""
        n = surprises.shape[0]
        out = {"residual": surprises.max(axis=1) if surprises.shape[1] else np.zeros(n)}
        S = np.clip(surprises, 0.0, SURPRISE_CLIP)
        if self.iforest_ is not None:
            out["iforest"] = -self.iforest_.score_samples(S)
        if self.pca_ is not None:
            rec = self.pca_.inverse_transform(self.pca_.transform(S))
            out["pca"] = np.sqrt(((S - rec) ** 2).sum(axis=1))
        per_feature = surprises
        after = np.zeros(0)
        if self.onset_ is not None:
            onset, after = self.onset_.stream(S, carry)
            out["onset"] = onset.max(axis=1)
            per_feature = np.maximum(surprises, onset)
        if self.evidence_:
            d = S.shape[1] // 2
            out["evidence"] = combined_evidence(np.maximum(S[:, :d], S[:, d:]))
        return out, per_feature, after

    def residual_scale(self, value: float) -> float:
        """A row's score on the common scale when its largest residual surprise is ``value``
        and every other channel is at its training median."""
        require_fitted(self, "residual_")
        return float((value - self.center_[0]) / self.spread_[0])

    def initial_carry(self) -> np.ndarray:
        """The streaming state before any row (empty without the onset channel)."""
        require_fitted(self, "residual_")
        return np.zeros(0) if self.onset_ is None else self.onset_.initial_carry()

    def stream(
        self, X: np.ndarray, carry: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``analyse`` for rows that follow ``carry`` (the state a previous call returned; None =
        none): channel scores, per-feature surprises and the state after these rows."""
        require_fitted(self, "residual_")
        S = self.residual_.surprises(X)  # which replaces NaN and infinities
        if carry is not None and self.onset_ is not None and len(carry) != S.shape[1]:
            carry = None  # a state from another model (e.g. before a refit): start afresh
        raw, per_feature, after = self._raw_channels(S, carry)
        R = np.stack([raw[c] for c in self.channel_names_], axis=1)
        return (R - self.center_) / self.spread_, per_feature, after

    def analyse(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Channel scores (n, n_channels; common scale, higher = more anomalous) and the
        per-feature surprises (n, 2 * n_features: above, then below; with the onset channel the
        larger of the two channels' surprises) from one pass over consecutive rows."""
        C, S, _ = self.stream(X)
        return C, S

    def channel_scores(self, X: np.ndarray) -> np.ndarray:
        """(n, n_channels) scores on the common scale, higher = more anomalous."""
        return self.analyse(X)[0]

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """Combined score, higher = more anomalous (the maximum over channels)."""
        C = self.channel_scores(X)
        return C.max(axis=1) if C.shape[1] else np.zeros(len(C))

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return -self.anomaly_score(X)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    def state(self) -> State:
        """The fitted ensemble as data (``dcwatch.detectors.models.persist``)."""
        require_fitted(self, "residual_")
        return {
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "residual": self.residual_.state(),
            "iforest": None if self.iforest_ is None else self.iforest_.state(),
            "pca": None if self.pca_ is None else _pca_state(self.pca_),
            "onset": None if self.onset_ is None else self.onset_.state(),
            "channel_names": list(self.channel_names_),
            "center": self.center_,
            "spread": self.spread_,
            "offset": self.offset_,
        }

    @classmethod
    def from_state(cls, state: State) -> EnsembleDetector:
        det = cls(**params(state))
        det.n_features_in_ = integer(state, "n_features_in")
        det.residual_ = RobustResidualDetector.from_state(section(state, "residual"))
        forest = optional_section(state, "iforest")
        det.iforest_ = None if forest is None else IsolationForestDetector.from_state(forest)
        pca = optional_section(state, "pca")
        det.pca_ = None if pca is None else _pca_from_state(pca)
        # States written before the onset channel existed have no "onset" entry.
        onset = optional_section(state, "onset") if "onset" in state else None
        det.onset_ = None if onset is None else OnsetDetector.from_state(onset)
        det.channel_names_ = strings(state, "channel_names")
        det.center_ = array(state, "center", np.float64, 1)
        det.spread_ = array(state, "spread", np.float64, 1)
        det.offset_ = number(state, "offset")
        d = det.n_features_in_
        det.evidence_ = "evidence" in det.channel_names_
        expect(
            not det.evidence_ or "evidence" in det.channels, "evidence only when channels name it"
        )
        expect(det.residual_.n_features_in_ == d, "the residual detector sees every feature")
        for part in (det.iforest_, det.pca_, det.onset_):
            expect(part is None or part.n_features_in_ == 2 * d, "channels see both sides")
        parts = (forest, pca, onset)
        expected = ["residual"] + [
            c for c, part in zip(CHANNELS[1:4], parts, strict=True) if part is not None
        ]
        if det.evidence_:  # nothing fitted: the channel is its scale alone
            expected.append("evidence")
        expect(det.channel_names_ == expected, f"channels {expected}")
        expect(det.center_.shape == det.spread_.shape == (len(expected),), "scale per channel")
        return det


def combined_evidence(F: np.ndarray) -> np.ndarray:
    """Per row, the evidence of the (n, d) per-feature surprises ``F`` together: the sum of their
    excess over 1 (the features at least 10 times rarer than usual)."""
    return np.maximum(F - 1.0, 0.0).sum(axis=1)


def _pca_state(pca: PCA) -> State:
    return {
        "params": pca.get_params(),
        "n_features_in": pca.n_features_in_,
        "n_components": int(pca.n_components_),
        "n_samples": int(pca.n_samples_),
        "noise_variance": float(pca.noise_variance_),
        **{name.rstrip("_"): getattr(pca, name) for name in _PCA_ARRAYS},
    }


def _pca_from_state(state: State) -> PCA:
    pca = PCA(**params(state))
    pca.n_features_in_ = integer(state, "n_features_in")
    pca.n_components_ = integer(state, "n_components")
    pca.n_samples_ = integer(state, "n_samples")
    pca.noise_variance_ = number(state, "noise_variance")
    for name in _PCA_ARRAYS:
        ndim = 2 if name == "components_" else 1
        setattr(pca, name, array(state, name.rstrip("_"), np.float64, ndim))
    k, d = pca.n_components_, pca.n_features_in_
    expect(pca.components_.shape == (k, d) and pca.mean_.shape == (d,), "components are (k, d)")
    return pca
