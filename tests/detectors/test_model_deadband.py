"""A series that is very smooth in training (a counter's rate over 2 minutes) does not alert on a
wobble no one would act on, and still alerts on a real change (``FeatureConfig``'s deadband)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from dcwatch.detectors.models.node import ModelConfig, NodeModel

STEP = 60
TRAIN = 1440
WOBBLE = slice(TRAIN + 100, TRAIN + 110)
DROP = slice(TRAIN + 200, TRAIN + 210)


def smooth_node(seed: int = 0) -> pd.DataFrame:
    """A transmit rate at 374 MB/s moving by about 0.05 % (a 2-minute rate of a busy link) and a
    GPU temperature with sensor noise; then a 0.4 % wobble of the rate and a 30 % drop."""
    rng = np.random.default_rng(seed)
    n = TRAIN + 300
    wander = np.convolve(rng.normal(0, 1, n + 4), np.ones(5) / 5, mode="valid")  # smooth noise
    frame = pd.DataFrame(
        {
            "net_transmit_bytes": 3.74e8 * (1 + 0.0005 * wander),
            "gpu_temperature": 61 + rng.normal(0, 0.4, n),
        },
        index=(1.7e9 + STEP * np.arange(n)).astype(np.int64),
    )
    frame.iloc[WOBBLE, 0] *= 1.004
    frame.iloc[DROP, 0] *= 0.7
    return frame


def alerts(config: ModelConfig) -> tuple[np.ndarray, list[str]]:
    frame = smooth_node()
    model = NodeModel(config).fit(frame.iloc[:TRAIN])
    res = model.score(frame.iloc[TRAIN:])
    rows = np.flatnonzero(res.is_anomaly) + TRAIN
    return rows, [c[0].series for c in res.contributors if c]


def test_a_wobble_inside_the_deadband_does_not_alert_and_a_drop_does() -> None:
    rows, named = alerts(ModelConfig())
    assert rows.size and rows.min() == DROP.start  # nothing before the drop
    assert set(named) == {"net_transmit_bytes"}


def test_without_the_deadband_the_wobble_alerts() -> None:
    config = ModelConfig()
    rows, _ = alerts(replace(config, features=replace(config.features, min_relative_deviation=0.0)))
    assert ((rows >= WOBBLE.start) & (rows < WOBBLE.stop)).any()
