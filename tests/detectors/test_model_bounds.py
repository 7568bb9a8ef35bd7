"""A node model's size is bounded: at most ``max_series`` series (the most informative), at most
``max_train_rows`` training rows, whatever the node exposes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dcwatch.detectors import features
from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.features import FeatureBuilder, FeatureConfig
from dcwatch.detectors.frame import Frame
from dcwatch.detectors.models import persist, residual
from dcwatch.detectors.models.bounds import (
    even_rows,
    fit_memory_bytes,
    select_series,
    varying_scores,
)
from dcwatch.detectors.models.node import STATE_FORMAT, STATE_VERSION, ModelConfig, NodeModel
from dcwatch.detectors.sources.base import TargetStatus
from dcwatch.detectors.sources.queries import NamedQuery
from dcwatch.detectors.web.app import ANALYZER, make_app
from dcwatch.settings import ConfigError

STEP = 15.0
T0 = 1_700_000_000.0 // STEP * STEP
ROWS = 960
# v00 varies most relative to its level, v19 least: with room for 8, v00..v07 are kept.
RANKED = [f"v{i:02d}" for i in range(20)]
SIGNAL = 'gpu_temperature{gpu="3"}'


def wide_values(rows: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Columns of known informativeness, the useless ones named to sort first."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for k in range(3):
        cols[f"a_constant_{k}"] = np.full(rows, 7.0)
        cols[f"a_empty_{k}"] = np.full(rows, np.nan)
    # Swings a lot, but only 5 % of rows have a value: ranks below every steady series.
    sparse = np.full(rows, np.nan)
    sparse[::20] = 100 + rng.normal(0, 60, len(sparse[::20]))
    cols["a_sparse"] = sparse
    # What floods a hostile node: static levels with a little jitter (a counter's bytes).
    for k in range(30):
        cols[f"b_jitter_{k:02d}"] = 1e9 * (k + 1) + rng.normal(0, 1, rows)
    for i, name in enumerate(RANKED):
        cols[name] = 100 + rng.normal(0, 2.0 * (20 - i), rows)
    # A real signal: a swing around 60 °C (relative variability ~0.23, among v05..v06).
    phase = 2 * np.pi * np.arange(rows) / 240
    cols[SIGNAL] = 60 + 25 * np.sin(phase) + rng.normal(0, 0.5, rows)
    return list(cols), np.column_stack(list(cols.values()))


def wide_frame(rows: int = ROWS, start: int = 0, seed: int = 0) -> Frame:
    names, values = wide_values(rows, seed)
    return Frame(T0 + STEP * np.arange(start, start + rows), tuple(names), values)


def expected_rank(names: Sequence[str], values: np.ndarray) -> list[str]:
    """The rule, computed here in plain loops: varying columns by share x std / (std + |mean|)."""
    scored = []
    for j, name in enumerate(names):
        v = values[:, j]
        ok = v[np.isfinite(v)]
        if len(ok) == 0 or ok.max() == ok.min():
            continue
        rel = ok.std() / (ok.std() + abs(ok.mean()))
        scored.append((-(len(ok) / len(v)) * rel, name))
    return [name for _, name in sorted(scored)]


def test_over_the_bound_the_model_keeps_the_most_informative_series() -> None:
    frame = wide_frame()
    ranked = expected_rank(frame.columns, frame.values)
    model = NodeModel(ModelConfig(n_estimators=20, max_series=9)).fit(frame)
    assert len(model.series) == 9
    assert set(model.series) == set(ranked[:9])
    assert set(model.series) == {SIGNAL, *RANKED[:8]}
    assert model.series == [c for c in frame.columns if c in model.series]  # frame order
    sel = model.selection_
    assert (sel.seen, sel.no_signal, sel.over_limit) == (58, 6, 52 - 9) and sel.truncated
    # The bound is exact at any size.
    for n in (1, 40):
        smaller = NodeModel(ModelConfig(n_estimators=10, max_series=n)).fit(frame)
        assert smaller.series == [c for c in frame.columns if c in ranked[:n]]


def test_within_the_bound_every_varying_series_is_kept_as_before() -> None:
    frame = wide_frame()
    model = NodeModel(ModelConfig(n_estimators=20)).fit(frame)
    assert model.series == features.varying_columns(frame.columns, frame.values)
    assert not model.selection_.truncated and model.selection_.no_signal == 6


def test_ties_go_to_the_name_that_sorts_first_and_members_vote() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10, 3, (500, 1))
    names = ["b", "a", "c", "flat"]
    values = np.hstack([x, x, x * 0.0 + 10 + rng.normal(0, 0.01, (500, 1)), np.ones((500, 1))])
    scores = varying_scores(names, values)
    assert set(scores) == {"a", "b", "c"} and scores["a"] == scores["b"] > scores["c"]
    assert select_series(names, [scores], 1) == (["a"], 2)
    assert select_series(names, [scores], 2) == (["b", "a"], 1)  # frame order
    # A group keeps what varies on every member, ranked by the members' mean.
    other = {"b": 0.9, "c": 0.5}
    assert select_series(names, [scores, other], 1) == (["b"], 1)
    with pytest.raises(ValueError):
        select_series(names, [scores], 0)


def test_the_cut_happens_before_the_features_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    widths: list[int] = []
    fit_transform = FeatureBuilder.fit_transform

    def spy(self: FeatureBuilder, frame, exclude=None, columns=None):  # type: ignore[no-untyped-def]
        widths.append(len(frame.columns))
        return fit_transform(self, frame, exclude, columns)

    monkeypatch.setattr(FeatureBuilder, "fit_transform", spy)
    NodeModel(ModelConfig(n_estimators=10, max_series=5)).fit(wide_frame())
    assert widths == [5]


def test_scoring_a_row_with_every_series_uses_only_the_kept_ones() -> None:
    model = NodeModel(ModelConfig(n_estimators=20, max_series=9)).fit(wide_frame())
    names, values = wide_values(ROWS + 5, seed=2)
    later = values[ROWS:]
    dropped = names.index("v19")  # varying, beyond the bound
    kept = names.index("v00")
    assert "v19" not in model.series and "v00" in model.series
    t = T0 + STEP * np.arange(ROWS, ROWS + 5)

    def score(rows: np.ndarray, extra: bool = False) -> np.ndarray:
        m = NodeModel.loads(model.dumps())
        cols = tuple(names) + (("brand_new_series",) if extra else ())
        v = np.hstack([rows, np.full((len(rows), 1), 1e12)]) if extra else rows
        return m.score(Frame(t, cols, v)).score

    base = score(later)
    wild = later.copy()
    wild[:, dropped] = 1e9
    # Left-out and new series change nothing; a kept series does.
    assert np.array_equal(score(wild), base)
    assert np.array_equal(score(later, extra=True), base)
    wild[:, kept] = 1e9
    assert not np.array_equal(score(wild), base)


def test_the_selection_round_trips_and_version_2_files_still_load() -> None:
    # No deadband: version 2 had none (version 6 added it).
    features = FeatureConfig(min_relative_deviation=0.0)
    model = NodeModel(ModelConfig(n_estimators=20, max_series=9, features=features))
    model.fit(wide_frame())
    restored = NodeModel.loads(model.dumps())
    assert restored.series == model.series and restored.selection_ == model.selection_
    assert restored.config == model.config
    # A file from before the bound: version 2, whose max_train_rows was the forest's sample.
    state = model.state()
    del state["selection"]
    for config in (state["config"]["features"], state["features"]["config"]):
        del config["min_relative_deviation"]
    old = {k: v for k, v in state["config"].items() if k not in ("max_series", "forest_rows")}
    state["config"] = old | {"max_train_rows": 1234}
    state["features"]["dropped"] = ["x", "y"]
    legacy = NodeModel.loads(persist.pack(STATE_FORMAT, 2, state))
    assert legacy.series == model.series
    assert legacy.config.forest_rows == 1234
    assert legacy.config.max_series == ModelConfig().max_series
    assert legacy.config.max_train_rows == ModelConfig().max_train_rows
    assert (legacy.selection_.seen, legacy.selection_.over_limit) == (len(model.series) + 2, 0)
    t = T0 + STEP * (ROWS + np.arange(3))
    names, values = wide_values(3, seed=4)
    rows = Frame(t, tuple(names), values)
    assert np.array_equal(legacy.score(rows).score, restored.score(rows).score)
    unfitted = NodeModel.state(NodeModel(ModelConfig()))
    unfitted["config"] = {
        k: v for k, v in unfitted["config"].items() if k not in ("max_series", "forest_rows")
    }
    assert not NodeModel.loads(persist.pack(STATE_FORMAT, 2, unfitted)).fitted
    with pytest.raises(persist.StateError, match="reads 2 or 3 or 4 or 5"):
        NodeModel.loads(persist.pack(STATE_FORMAT, STATE_VERSION + 1, model.state()))


def test_training_rows_beyond_the_bound_are_the_oldest_left_out() -> None:
    frame = wide_frame(rows=1200)
    cfg = ModelConfig(n_estimators=20, max_series=9, max_train_rows=700)
    bounded = NodeModel(cfg).fit(frame)
    recent = Frame(frame.times[-700:], frame.columns, frame.values[-700:])
    same = NodeModel(dataclasses.replace(cfg, max_train_rows=10**6)).fit(recent)
    assert bounded.train_rows_ <= 700 and bounded.train_rows_ == same.train_rows_
    assert bounded.series == same.series and bounded.threshold_ == same.threshold_
    assert np.array_equal(bounded.history_.values, same.history_.values)
    assert bounded.features_.step_ == STEP


def test_even_rows_and_the_memory_estimate() -> None:
    assert even_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    picked = even_rows(1000, 7)
    assert len(picked) == 7 and picked[0] == 0 and np.all(np.diff(picked) >= 142)
    # A day at 15 s of 512 series: a few hundred MB; 20,000 series would be ~40x that.
    small = fit_memory_bytes(5760, 512, 20000, 100)
    assert 300 * 2**20 < small < 1000 * 2**20
    assert fit_memory_bytes(5760, 20000, 20000, 100) > 30 * small


def test_bounded_chunks_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = wide_frame()
    whole = NodeModel(ModelConfig(n_estimators=10)).fit(frame)
    monkeypatch.setattr(features, "_CHUNK_BYTES", 10_000)
    monkeypatch.setattr(residual, "_BLOCK_VALUES", 1000)
    chunked = NodeModel(ModelConfig(n_estimators=10)).fit(frame)
    assert chunked.threshold_ == whole.threshold_
    assert np.array_equal(chunked.features_.center_, whole.features_.center_)
    rows = wide_frame(rows=50, start=ROWS, seed=3)
    assert np.array_equal(chunked.score(rows).raw, whole.score(rows).raw)


class WideSource:
    """One node exposing 58 series (see ``wide_values``)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def with_queries(self, queries: Sequence[NamedQuery]) -> WideSource:
        return self

    def target_status(self) -> list[TargetStatus]:
        return []

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        first = max(0, int(np.ceil((start - T0) / STEP)))
        last = int((end - T0) // STEP)
        return {"big-1:9478": wide_frame(last - first + 1, first, seed=first)}

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        assert now is not None
        return await self.fetch(now - (points - 1) * step, now, step)


async def test_the_service_says_how_many_series_it_left_out(
    aiohttp_client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flags = ["--target", "http://x:1/metrics", "--state-dir", str(tmp_path)]
    flags += ["--model-workers", "0", "--model-min-train", "2h", "--model-max-series", "9"]
    cfg = load_analyzer_config(flags, env={})
    assert cfg.model.max_series == 9
    app = make_app(cfg, source=WideSource(), run_loop=False)
    client = await aiohttp_client(app)
    an = app[ANALYZER]
    with caplog.at_level(logging.WARNING, logger="dcwatch.analyzer.fit"):
        await an.score_pass(T0 + 4 * 3600)
        await an.wait_fits()
    model = an.nodes["big-1:9478"].model
    assert model is not None and len(model.series) == 9
    lines = [r.getMessage() for r in caplog.records if "most informative" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("node big-1:9478: 58 series, model keeps the 9 most informative")
    assert lines[0].endswith("raise model.max_series to keep more")
    text = await (await client.get("/metrics")).text()
    assert 'dcwatch_model_series{instance="big-1:9478"} 9.0' in text
    assert 'dcwatch_model_series_dropped{instance="big-1:9478",reason="over_limit"} 43.0' in text
    assert 'dcwatch_model_series_dropped{instance="big-1:9478",reason="no_signal"} 6.0' in text
    assert 'dcwatch_model_state{instance="big-1:9478",state="fitted"} 1.0' in text


def test_the_bounds_are_settings(tmp_path: Path) -> None:
    base = ["--target", "http://x:1/metrics", "--state-dir", str(tmp_path)]
    cfg = load_analyzer_config(base, env={})
    assert (cfg.model.max_series, cfg.model.max_train_rows) == (512, 40320)
    assert ModelConfig().max_series == 512 and ModelConfig().max_train_rows == 40320
    env = {"DCWATCH_MODEL_MAX_TRAIN_ROWS": "5000"}
    assert load_analyzer_config(base, env=env).model.max_train_rows == 5000
    with pytest.raises(ConfigError, match=r"model\.max_series"):
        load_analyzer_config([*base, "--model-max-series", "0"], env={})
