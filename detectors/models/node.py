"""``NodeModel``: features -> ensemble -> decisions for one node, the unit the service and the
backtest both use.

    model = NodeModel().fit(train_frame)          # frame: index unix seconds, one column per series
    result = model.score(new_rows)                # any number of new rows, in time order
    result.score, result.is_anomaly, result.contributors
    blob = model.dumps(); model = NodeModel.loads(blob)   # the state, history included

``score`` is stateful: the model keeps the last rows (feature windows), the last raw scores
(smoothing) and the alert state, so scoring a month at once (backtest) or one row every 15 s (live)
gives the same result. ``score_batch`` scores many nodes in one call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from dcwatch.detectors.decisions import (
    SECONDS_PER_DAY,
    AlertState,
    Contributor,
    DecisionConfig,
    Threshold,
    apply_rule,
    calibrate_threshold,
    smooth,
    top_contributors,
)
from dcwatch.detectors.features import (
    AnyFrame,
    FeatureBlock,
    FeatureBuilder,
    FeatureConfig,
    History,
    frame_arrays,
    varying_columns,
)
from dcwatch.detectors.models import persist
from dcwatch.detectors.models.ensemble import EnsembleDetector
from dcwatch.detectors.models.persist import State, array, expect, integer, number, section

STATE_FORMAT = "dcwatch.node-model"
# 1 was a pickle; 2 is the ``persist`` container (JSON header + arrays, nothing executed on load).
STATE_VERSION = 2


@dataclass(frozen=True)
class ModelConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    decisions: DecisionConfig = field(default_factory=DecisionConfig)
    channels: tuple[str, ...] = ("residual", "iforest")
    n_estimators: int = 100
    max_train_rows: int = 20000
    random_state: int | None = 0


@dataclass
class ScoreResult:
    """Per scored row: ``score`` (smoothed, divided by the threshold: >= 1 is above it, higher is
    more anomalous), ``raw`` (unsmoothed ensemble score), ``is_anomaly`` (the alert state after the
    row) and ``contributors`` (top series for rows in alert, else an empty list)."""

    ts: np.ndarray
    score: np.ndarray
    raw: np.ndarray
    is_anomaly: np.ndarray
    contributors: list[list[Contributor]]


class NotFittedError(RuntimeError):
    pass


class NodeModel:
    """One node's fitted detector with its streaming state; ``dumps`` saves both as data."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.fitted = False

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, frame: AnyFrame, exclude: np.ndarray | None = None) -> NodeModel:
        """Fit on a training frame (regular grid, named series; a DataFrame indexed by unix seconds
        or a ``dcwatch.detectors.frame.Frame``); resets the streaming state.

        ``exclude`` (one bool per row) marks rows not to learn from, e.g. the rows that alerted
        since the last fit (see ``refit``): features still use them as context.
        """
        t0 = time.perf_counter()
        block, use = self._fit_features(frame, exclude)
        detector = self._new_detector().fit(block.z[use])
        raw = detector.anomaly_score(block.z)
        smoothed, _ = smooth(np.zeros(0), raw, self.config.decisions.smooth_points)
        days = int(use.sum()) * self.features_.step_ / SECONDS_PER_DAY
        threshold = calibrate_threshold(smoothed[use], days, self.config.decisions)
        return self._finish(block, use, detector, raw, threshold, time.perf_counter() - t0)

    @classmethod
    def fit_group(
        cls,
        frames: Mapping[str, AnyFrame],
        config: ModelConfig | None = None,
        excludes: Mapping[str, np.ndarray | None] | None = None,
    ) -> dict[str, NodeModel]:
        """Fit a group of like nodes: one detector and one threshold learnt from all members'
        training rows, while each member keeps its own scaling, daily profile and streaming
        state. The series used are those that vary on every member.

        The threshold is calibrated on the pooled scores over the pooled training days, so the
        target rate stays per node; a group sees more rare-but-normal behaviour than one node.
        """
        t0 = time.perf_counter()
        cfg = config or ModelConfig()
        varying = [varying_columns(*frame_arrays(f)[1:]) for f in frames.values()]
        common = [c for c in varying[0] if all(c in v for v in varying[1:])] if varying else []
        members: dict[str, tuple[NodeModel, FeatureBlock, np.ndarray]] = {}
        for name, frame in frames.items():
            model = cls(cfg)
            exclude = (excludes or {}).get(name)
            members[name] = (model, *model._fit_features(frame, exclude, common))
        detector = (
            cls(cfg)
            ._new_detector()
            .fit(np.vstack([block.z[use] for _, block, use in members.values()]))
        )
        raws, pooled, days = {}, [], 0.0
        for name, (model, block, use) in members.items():
            raws[name] = detector.anomaly_score(block.z)
            smoothed, _ = smooth(np.zeros(0), raws[name], cfg.decisions.smooth_points)
            pooled.append(smoothed[use])
            days += int(use.sum()) * model.features_.step_ / SECONDS_PER_DAY
        threshold = calibrate_threshold(np.concatenate(pooled), days, cfg.decisions)
        seconds = time.perf_counter() - t0
        return {
            name: model._finish(block, use, detector, raws[name], threshold, seconds)
            for name, (model, block, use) in members.items()
        }

    def _fit_features(
        self, frame: AnyFrame, exclude: np.ndarray | None, columns: Sequence[str] | None = None
    ) -> tuple[FeatureBlock, np.ndarray]:
        """Fit the feature builder; the training features and the rows to learn from."""
        if len(frame) < 2:
            raise ValueError(f"need at least 2 training rows, got {len(frame)}")
        self.features_ = FeatureBuilder(self.config.features)
        block = self.features_.fit_transform(frame, exclude, columns)
        use = np.ones(len(block.z), dtype=bool)
        use[: min(self.features_.history_len_, len(block.z) // 2)] = False
        if exclude is not None:
            use &= ~np.asarray(exclude, dtype=bool)
        if use.sum() < 2:
            use[:] = True
        return block, use

    def _new_detector(self) -> EnsembleDetector:
        cfg = self.config
        return EnsembleDetector(
            channels=cfg.channels,
            n_estimators=cfg.n_estimators,
            max_train_rows=cfg.max_train_rows,
            random_state=cfg.random_state,
        )

    def _finish(
        self,
        block: FeatureBlock,
        use: np.ndarray,
        detector: EnsembleDetector,
        raw: np.ndarray,
        threshold: Threshold,
        seconds: float,
    ) -> NodeModel:
        """Install the fitted parts; the streaming state continues right after training."""
        dcfg = self.config.decisions
        self.detector_ = detector
        self.threshold_: Threshold = threshold
        self.train_rows_ = int(use.sum())
        self.train_days_ = self.train_rows_ * self.features_.step_ / SECONDS_PER_DAY
        self.fit_seconds_ = seconds
        self.fitted_at_ = time.time()
        self.last_ts_ = float(block.ts[-1]) if len(block.ts) else float("nan")
        self.history_: History = block.history
        self.score_tail_ = raw[-(dcfg.smooth_points - 1) :] if dcfg.smooth_points > 1 else raw[:0]
        self.alert_ = AlertState()
        self.fitted = True
        return self

    def refit(self, frame: AnyFrame, exclude: np.ndarray | None = None) -> NodeModel:
        """A new model fitted on ``frame`` (which should end with the last row scored) that carries
        this one's alert state over, so an alert in progress is not resolved by the refit."""
        return NodeModel(self.config).fit(frame, exclude).carry_alert(self)

    def carry_alert(self, old: NodeModel) -> NodeModel:
        """Take over ``old``'s alert state (an alert in progress stays open across a refit)."""
        if old.fitted:
            self.alert_ = AlertState(**vars(old.alert_))
        return self

    @property
    def series(self) -> list[str]:
        """Series the model uses (constant or empty ones in training are dropped)."""
        self._check()
        return list(self.features_.columns_)

    def _check(self) -> None:
        if not self.fitted:
            raise NotFittedError("NodeModel is not fitted: call fit(frame) first")

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, rows: AnyFrame, explain: bool = True) -> ScoreResult:
        """Score new rows (after everything scored or trained on before), advancing the state."""
        self._check()
        ts, values = self.features_.select(rows)
        return self.score_values(ts, values, explain)

    def score_values(self, ts: np.ndarray, values: np.ndarray, explain: bool = True) -> ScoreResult:
        """``score`` on arrays: ``values`` has the columns of ``series`` (NaN where missing).

        Rows not newer than the last row seen (already scored, or inside the training window)
        are skipped, so re-sending a window is harmless; ``ScoreResult.ts`` lists the rows scored.
        """
        self._check()
        ts = np.asarray(ts, dtype=float)
        values = np.asarray(values, dtype=float).reshape(len(ts), len(self.features_.columns_))
        if len(ts) and np.isfinite(self.last_ts_) and ts[0] <= self.last_ts_:
            new = ts > self.last_ts_
            ts, values = ts[new], values[new]
        block = self.features_.transform_values(ts, values, self.history_)
        channels, surprises = self.detector_.analyse(block.z)
        raw = channels.max(axis=1) if channels.shape[1] else np.zeros(len(ts))
        dcfg = self.config.decisions
        smoothed, self.score_tail_ = smooth(self.score_tail_, raw, dcfg.smooth_points)
        score = smoothed / self.threshold_.value
        flags, self.alert_ = apply_rule(score, self.alert_, dcfg)
        self.history_ = block.history
        if len(ts):
            self.last_ts_ = float(ts[-1])
        contributors: list[list[Contributor]] = [[] for _ in range(len(ts))]
        if explain and flags.any():
            d = block.z.shape[1]
            per_feature = np.maximum(surprises[:, :d], surprises[:, d:])
            names = self.features_.feature_names_
            for i in np.flatnonzero(flags):
                contributors[i] = top_contributors(
                    per_feature[i], block.observed[i], block.expected[i], names, dcfg.top_k
                )
        return ScoreResult(ts=ts, score=score, raw=raw, is_anomaly=flags, contributors=contributors)

    # -- persistence -----------------------------------------------------------------------------
    def dumps(self) -> bytes:
        """The whole model and its streaming state as bytes (write them atomically); data only,
        read back by ``loads`` without executing anything (``dcwatch.detectors.models.persist``)."""
        return persist.pack(STATE_FORMAT, STATE_VERSION, self.state())

    @classmethod
    def loads(cls, blob: bytes) -> NodeModel:
        """The model ``dumps`` wrote; ``persist.StateError`` (a ``ValueError``) for anything else:
        another version, a pickle from before version 2, a damaged or foreign file."""
        state = persist.unpack(blob, STATE_FORMAT, STATE_VERSION)
        try:
            return cls.from_state(state)
        except persist.StateError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            # e.g. a hyper-parameter the estimator does not take
            raise persist.StateError(f"unusable state: {e}") from e

    def state(self) -> State:
        """Configuration, fitted parts and streaming state (history, score tail, alert)."""
        out: State = {
            "config": persist.config_state(self.config),
            "fitted": self.fitted,
        }
        if not self.fitted:
            return out
        return out | {
            "features": persist.features_state(self.features_),
            "detector": self.detector_.state(),
            "threshold": persist.config_state(self.threshold_),
            "train_rows": self.train_rows_,
            "train_days": self.train_days_,
            "fit_seconds": self.fit_seconds_,
            "fitted_at": self.fitted_at_,
            "last_ts": self.last_ts_,
            "history": {"ts": self.history_.ts, "values": self.history_.values},
            "score_tail": self.score_tail_,
            "alert": persist.config_state(self.alert_),
        }

    @classmethod
    def from_state(cls, state: State) -> NodeModel:
        model = cls(persist.config_from(ModelConfig, section(state, "config")))
        if not persist.flag(state, "fitted"):
            return model
        model.features_ = persist.features_from_state(section(state, "features"))
        model.detector_ = EnsembleDetector.from_state(section(state, "detector"))
        thr = section(state, "threshold")
        model.threshold_ = Threshold(*(number(thr, f.name) for f in fields(Threshold)))
        model.train_rows_ = integer(state, "train_rows")
        model.train_days_ = number(state, "train_days")
        model.fit_seconds_ = number(state, "fit_seconds")
        model.fitted_at_ = number(state, "fitted_at")
        model.last_ts_ = number(state, "last_ts")
        hist = section(state, "history")
        model.history_ = History(
            ts=array(hist, "ts", np.float64, 1), values=array(hist, "values", np.float64, 2)
        )
        model.score_tail_ = array(state, "score_tail", np.float64, 1)
        model.alert_ = persist.config_from(AlertState, section(state, "alert"))
        n = len(model.features_.columns_)
        h = model.history_
        expect(h.values.shape == (len(h.ts), n), "history is (rows, columns)")
        expect(model.detector_.n_features_in_ == model.features_.n_features, "detector fits")
        expect(model.threshold_.value > 0, "a positive threshold")
        model.fitted = True
        return model


def score_batch(
    items: Sequence[tuple[NodeModel, AnyFrame]], explain: bool = True
) -> list[ScoreResult]:
    """Score new rows for many nodes; each model's state advances as with ``NodeModel.score``.

    Every step is NumPy on small arrays (the isolation forest through ``PackedForest``, never
    scikit-learn's per-call path), so a per-node loop is cheap. Measured on this project's 2-core
    machine, one core: 1,000 nodes x 30 series, one new row each
    (``dcwatch.detectors.frame.Frame``), about 0.33 s per pass (330 us per node), against the 3.75 s
    target; 1,000 fitted models hold about 490 MB RSS (about 325 KiB of state each). Fitting one
    node on 1 day at 15 s takes about 0.9 s, on 7 days about 5.5 s.
    """
    return [model.score(rows, explain) for model, rows in items]
