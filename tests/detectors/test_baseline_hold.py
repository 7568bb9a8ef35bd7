"""Holding the seasonal baseline while an alert lasts (``ModelConfig.freeze_points``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.models.node import ModelConfig, NodeModel, ScoreResult

STEP = 60.0


def frame(n: int, seed: int, start: float = 1.7e9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = start + STEP * np.arange(n)
    load = 0.5 + 0.3 * np.sin(2 * np.pi * (ts % 86400) / 86400) + rng.normal(0, 0.02, n)
    return pd.DataFrame(
        {
            "gpu_temperature": 50 + 20 * load + rng.normal(0, 0.5, n),
            "gpu_power": 100 + 200 * load + rng.normal(0, 3, n),
            "net_rx": rng.gamma(4, 100, n),
        },
        index=ts.astype(np.int64),
    )


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return frame(3 * 1440, 0)


def shifted(train: pd.DataFrame, until: int, n: int = 900) -> pd.DataFrame:
    """The GPU runs 25 degrees hot from row 200 to ``until``, a lasting fault."""
    test = frame(n, 1, start=float(train.index[-1]) + STEP)
    test.iloc[200:until, 0] += 25.0
    return test


def alerted(model: NodeModel, test: pd.DataFrame) -> np.ndarray:
    return model.score(test).is_anomaly


def test_a_held_baseline_keeps_a_lasting_fault_in_alert(train: pd.DataFrame) -> None:
    test = shifted(train, until=700)
    plain = alerted(NodeModel(ModelConfig(n_estimators=20)).fit(train), test)
    held_model = NodeModel(ModelConfig(n_estimators=20, freeze_points=1000)).fit(train)
    held = alerted(held_model, test)
    assert plain[200:210].any() and held[200:210].any()  # the same start: the hold comes after
    # The trailing median learns the fault within a window: the plain alert ends long before it.
    assert plain[200:700].mean() < 0.5
    assert held[215:700].all()
    # The fault over, the node is back at the held level and the alert ends; the plain model,
    # having learnt the fault, reads its end as a second fault.
    assert not held[715:830].any() and plain[700:710].all()
    assert len(held_model.held_level_) == 0


def test_the_hold_is_bounded_so_a_new_normal_ends_its_alert(train: pd.DataFrame) -> None:
    test = shifted(train, until=900)
    model = NodeModel(ModelConfig(n_estimators=20, freeze_points=150)).fit(train)
    flags = alerted(model, test)
    assert flags[215:340].all()
    assert not flags[500:820].any()  # the hold spent, the windows learn the new level


def assert_same(a: ScoreResult, b: ScoreResult) -> None:
    for name in ("ts", "score", "raw", "is_anomaly"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-12)
    assert [[c.series for c in row] for row in a.contributors] == [
        [c.series for c in row] for row in b.contributors
    ]


def concat(parts: list[ScoreResult]) -> ScoreResult:
    return ScoreResult(
        ts=np.concatenate([p.ts for p in parts]),
        score=np.concatenate([p.score for p in parts]),
        raw=np.concatenate([p.raw for p in parts]),
        is_anomaly=np.concatenate([p.is_anomaly for p in parts]),
        contributors=[c for p in parts for c in p.contributors],
    )


def test_one_row_at_a_time_a_restart_and_the_whole_block_agree(train: pd.DataFrame) -> None:
    test = shifted(train, until=700)
    cfg = ModelConfig(n_estimators=20, freeze_points=1000)
    model = NodeModel(cfg).fit(train)
    whole = model.score(test)
    stream = NodeModel(cfg).fit(train)
    parts = [stream.score(test.iloc[i : i + 1]) for i in range(400)]
    assert stream.alert_.active and len(stream.held_level_) == 3  # saved while holding
    restored = NodeModel.loads(stream.dumps())
    np.testing.assert_array_equal(restored.held_level_, stream.held_level_)
    assert restored.alert_rows_ == stream.alert_rows_
    parts.append(restored.score(test.iloc[400:]))
    assert_same(concat(parts), whole)
    # Each alerted row names its contributors; the hot GPU leads.
    assert all(c and c[0].series == "gpu_temperature" for c in whole.contributors[215:700])
