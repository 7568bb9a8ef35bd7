"""One model per group of like nodes: shared detector and threshold, per-node scaling and state."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.frame import Frame
from dcwatch.detectors.models.ensemble import EnsembleDetector
from dcwatch.detectors.models.node import ModelConfig, NodeModel
from dcwatch.detectors.sources.base import TargetStatus
from dcwatch.detectors.sources.queries import NamedQuery
from dcwatch.detectors.web.app import ANALYZER, make_app

STEP = 15.0
T0 = 1_700_000_000.0 // STEP * STEP
COLS = ("temp", "power", "util", "fan")


def node_values(seed: int, rows: int, level: float) -> np.ndarray:
    """Like nodes: the same behaviour around different levels and spreads."""
    rng = np.random.default_rng(seed)
    base = np.array([60.0, 1800.0, 0.5, 1200.0]) * level
    return base + rng.normal(0, 1, (rows, 4)) * base * 0.01


def frame(seed: int, start_row: int, rows: int, level: float = 1.0, fault: bool = False) -> Frame:
    t = T0 + STEP * np.arange(start_row, start_row + rows)
    v = node_values(seed * 1000 + start_row, rows, level)
    if fault:
        v[:, 0] += 25.0  # overheating
    return Frame(t, COLS, v)


def test_fit_group_shares_detector_and_threshold_keeps_per_node_state() -> None:
    frames = {f"n{i}": frame(i, 0, 960, level=1 + 0.2 * i) for i in range(3)}
    # n2's fan is stuck (constant): no signal there, so the group leaves the fan out.
    frames["n2"].values[:, 3] = 900.0
    models = NodeModel.fit_group(frames, ModelConfig())
    assert set(models) == {"n0", "n1", "n2"}
    m0, m1, m2 = models.values()
    assert m0.detector_ is m1.detector_ is m2.detector_
    assert m0.threshold_ == m1.threshold_ == m2.threshold_
    assert m0.series == m1.series == m2.series == ["temp", "power", "util"]
    # Each member keeps its own normalisation (levels differ by 20 % per node).
    assert not np.allclose(m0.features_.center_, m1.features_.center_) or not np.allclose(
        m0.features_.scale_, m1.features_.scale_
    )
    # Normal rows are quiet on every member; a fault is flagged on its node only.
    for i, (name, m) in enumerate(models.items()):
        r = m.score(frame(i, 960, 40, level=1 + 0.2 * i, fault=(name == "n1")))
        assert r.is_anomaly.any() == (name == "n1"), name
    # Threshold calibrated over the pooled training days (three nodes' worth).
    assert m0.train_days_ > 0 and sum(m.train_days_ for m in models.values()) > 3 * 0.9 * 0.1
    # Members persist and restore on their own.
    restored = NodeModel.loads(m1.dumps())
    assert restored.series == m1.series


class FleetSource:
    """Three nodes: two of a kind (gpu-a-*) and one other."""

    names = ("gpu-a-1:9478", "gpu-a-2:9478", "cpu-1:9478")

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def with_queries(self, queries: Sequence[NamedQuery]) -> FleetSource:
        return self  # no capacity series: the planner finds nothing to forecast

    def target_status(self) -> list[TargetStatus]:
        return []

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        first = max(0, int(np.ceil((start - T0) / STEP)))
        last = int((end - T0) // STEP)
        return {n: frame(i, first, last - first + 1, 1 + 0.1 * i) for i, n in enumerate(self.names)}

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        assert now is not None
        return await self.fetch(now - (points - 1) * step, now, step)


async def test_service_fits_like_nodes_together(aiohttp_client, tmp_path: Path) -> None:
    cfg = load_analyzer_config(
        [
            "--target",
            "http://x:1/metrics",
            "--state-dir",
            str(tmp_path),
            "--model-workers",
            "0",
            "--model-min-train",
            "2h",
            "--model-group-by",
            "^(gpu-a)-",
        ],
        env={},
    )
    app = make_app(cfg, source=FleetSource(), run_loop=False)
    await aiohttp_client(app)
    an = app[ANALYZER]
    assert an.group_of("gpu-a-2:9478") == "gpu-a" and an.group_of("cpu-1:9478") == "cpu-1:9478"
    t = T0 + 4 * 3600
    await an.score_pass(t)
    await an.wait_fits()
    a1, a2, c1 = (an.nodes[n].model for n in FleetSource.names)
    assert a1 is not None and a2 is not None and c1 is not None
    # One fit for the group (each member comes back from the worker as its own copy, byte for
    # byte the same detector and threshold); the other node has its own.
    assert pickle.dumps(a1.detector_) == pickle.dumps(a2.detector_)
    assert a1.threshold_ == a2.threshold_
    assert pickle.dumps(c1.detector_) != pickle.dumps(a1.detector_)
    await an.score_pass(t + STEP)
    assert all(n.status == "fitted" and not n.anomaly for n in an.nodes.values())


def test_group_bounds_pooled_rows_and_shared_series(monkeypatch: pytest.MonkeyPatch) -> None:
    pooled: list[int] = []
    fit = EnsembleDetector.fit

    def spy(self: EnsembleDetector, X: np.ndarray, y: object = None) -> EnsembleDetector:
        pooled.append(len(X))
        return fit(self, X, y)

    monkeypatch.setattr(EnsembleDetector, "fit", spy)
    frames = {f"n{i}": frame(i, 0, 960, level=1 + 0.2 * i) for i in range(3)}
    frames["n2"].values[:, 3] = 900.0  # fan stuck on one member: no signal for the group
    rng = np.random.default_rng(9)
    for f in frames.values():  # utilisation swings on every member: the most informative
        f.values[:, 2] = np.clip(0.5 + rng.normal(0, 0.3, len(f)), 0, 1)
    unbounded = NodeModel.fit_group(frames, ModelConfig(n_estimators=20))
    assert pooled == [sum(m.train_rows_ for m in unbounded.values())]
    pooled.clear()
    cfg = ModelConfig(n_estimators=20, max_train_rows=600, max_series=1)
    models = NodeModel.fit_group(frames, cfg)
    # Each member learns from its last 600 rows at most; the shared detector from 600 of all.
    assert pooled == [600]
    assert all(m.train_rows_ <= 600 for m in models.values())
    assert sum(m.train_rows_ for m in models.values()) > 600
    for name, m in models.items():
        assert m.series == ["util"], name
        assert (m.selection_.seen, m.selection_.over_limit, m.selection_.no_signal) == (4, 2, 1)
    restored = NodeModel.loads(models["n1"].dumps())
    assert restored.selection_ == models["n1"].selection_
