"""Saved model state is data: exact round trips, and nothing in a state file is ever executed."""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.features import FeatureConfig
from dcwatch.detectors.frame import Frame
from dcwatch.detectors.models import persist
from dcwatch.detectors.models.fitting import ModelStore
from dcwatch.detectors.models.node import (
    STATE_FORMAT,
    STATE_VERSION,
    ModelConfig,
    NodeModel,
    ScoreResult,
)
from dcwatch.detectors.web.app import ANALYZER, make_app

STEP = 60.0
LOGGER = "dcwatch.analyzer.fit"


class Planted:
    """Unpickling this creates the directory ``marker``: what a planted state file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def node_frame(n: int, seed: int, start: float = 1.7e9) -> pd.DataFrame:
    """A day/night cycle on GPU series, a noisy network rate, a constant fan and a gap."""
    rng = np.random.default_rng(seed)
    ts = start + STEP * np.arange(n)
    load = 0.5 + 0.3 * np.sin(2 * np.pi * (ts % 86400) / 86400) + rng.normal(0, 0.02, n)
    frame = pd.DataFrame(
        {
            "gpu_temperature": 50 + 20 * load + rng.normal(0, 0.5, n),
            "gpu_power": 100 + 200 * load + rng.normal(0, 3, n),
            "net_rx": rng.gamma(4, 100, n),
            "fan": np.full(n, 1200.0),
        },
        index=ts.astype(np.int64),
    )
    frame.iloc[n // 3 : n // 3 + 5, 2] = np.nan
    return frame


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    train = node_frame(3 * 1440, 0)
    test = node_frame(400, 1, start=float(train.index[-1]) + STEP)
    ramp = np.linspace(0, 1, 40)  # the GPU heats up from row 200: an alert opens
    test.iloc[200:240, 0] += 35 * ramp
    test.iloc[200:240, 1] += 250 * ramp
    return train, test


@pytest.fixture(scope="module")
def fitted(data: tuple[pd.DataFrame, pd.DataFrame]) -> NodeModel:
    return NodeModel(ModelConfig(n_estimators=30)).fit(data[0])


# What models saved before version 6 were: features without a deadband.
NO_DEADBAND = ModelConfig(n_estimators=30, features=FeatureConfig(min_relative_deviation=0.0))


@pytest.fixture(scope="module")
def plain(data: tuple[pd.DataFrame, pd.DataFrame]) -> NodeModel:
    return NodeModel(NO_DEADBAND).fit(data[0])


def before_v6(state: dict) -> dict:
    """``state`` without what version 6 added (the features' deadband setting)."""
    state["config"]["features"].pop("min_relative_deviation")
    state["features"]["config"].pop("min_relative_deviation")
    return state


def assert_same_results(a: ScoreResult, b: ScoreResult) -> None:
    for name in ("ts", "score", "raw", "is_anomaly"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.contributors == b.contributors


def assert_same_state(a: NodeModel, b: NodeModel) -> None:
    assert a.alert_ == b.alert_ and a.last_ts_ == b.last_ts_ and a.threshold_ == b.threshold_
    assert np.array_equal(a.score_tail_, b.score_tail_)
    assert np.array_equal(a.onset_carry_, b.onset_carry_)
    assert np.array_equal(a.history_.ts, b.history_.ts)
    assert np.array_equal(a.history_.values, b.history_.values)


@pytest.mark.parametrize(
    "channels",
    [("residual", "iforest"), ("residual", "iforest", "pca"), ("residual", "iforest", "onset")],
    ids=["default", "pca", "onset"],
)
def test_round_trip_scores_bit_identically_mid_incident(
    data: tuple[pd.DataFrame, pd.DataFrame], channels: tuple[str, ...]
) -> None:
    train, test = data
    # A leaky onset sum, so that the alert ends within the test rows.
    model = NodeModel(ModelConfig(n_estimators=30, channels=channels, onset_forget=0.9)).fit(train)
    # Right after fitting: the training rows' context is the streaming state.
    fresh = NodeModel.loads(model.dumps())
    assert fresh.series == model.series == ["gpu_temperature", "gpu_power", "net_rx"]
    assert_same_results(model.score(test.iloc[:210]), fresh.score(test.iloc[:210]))
    # Saved while an alert is open: history, score tail and alert state carry over, as after a
    # restart, so the loaded copy continues exactly where the original is.
    assert model.alert_.active
    restored = NodeModel.loads(model.dumps())
    assert_same_state(model, restored)
    expected = model.score(test.iloc[210:])
    assert expected.is_anomaly.any() and not expected.is_anomaly.all()
    assert_same_results(expected, restored.score(test.iloc[210:]))
    assert_same_state(model, restored)
    assert restored.fitted_at_ == model.fitted_at_ and restored.train_days_ == model.train_days_


def test_version_3_files_still_load_and_score_the_same(
    data: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, test = data
    model = NodeModel(NO_DEADBAND).fit(train)
    # A file from before the onset channel: no carried sum, no onset settings, no onset part.
    state = before_v6(model.state())
    del state["onset_carry"]
    del state["detector"]["onset"]
    state["config"] = {
        k: v for k, v in state["config"].items() if k not in ("onset_drift", "onset_forget")
    }
    legacy = NodeModel.loads(persist.pack(STATE_FORMAT, 3, state))
    assert legacy.config == model.config and legacy.onset_carry_.shape == (0,)
    assert_same_results(legacy.score(test.iloc[:250]), model.score(test.iloc[:250]))
    assert STATE_VERSION == 6


def test_version_5_files_load_without_a_deadband_and_score_the_same(
    data: tuple[pd.DataFrame, pd.DataFrame], plain: NodeModel, fitted: NodeModel
) -> None:
    legacy = NodeModel.loads(persist.pack(STATE_FORMAT, 5, before_v6(plain.state())))
    assert legacy.config == plain.config
    assert not legacy.features_.deadband_.any() and fitted.features_.deadband_.any()
    test = data[1]
    current = NodeModel.loads(plain.dumps())  # the fixture is shared: not advanced here
    assert_same_results(legacy.score(test.iloc[:250]), current.score(test.iloc[:250]))


def test_version_4_files_with_wide_trees_still_load_and_score_the_same(
    data: tuple[pd.DataFrame, pd.DataFrame], plain: NodeModel
) -> None:
    # Version 4 kept the trees' indices in 32 bits, thresholds (infinite at leaves) and leaf
    # values apart.
    state = before_v6(plain.state())
    packed = state["detector"]["iforest"]["packed"]
    children, split = packed.pop("children"), packed.pop("split")
    leaf = children[0::2] == np.arange(len(split))
    packed["children"] = children.astype(np.int32)
    packed["feature"] = packed["feature"].astype(np.int32)
    packed["threshold"] = np.where(leaf, np.inf, split).astype(np.float32)
    packed["value"] = np.where(leaf, split, 0.0).astype(np.float32)
    legacy = NodeModel.loads(persist.pack(STATE_FORMAT, 4, state))
    test = data[1]
    current = NodeModel.loads(plain.dumps())  # the fixture is shared: not advanced here
    assert_same_results(legacy.score(test.iloc[:250]), current.score(test.iloc[:250]))
    assert legacy.detector_.iforest_.packed_.children.dtype == np.uint16


def test_the_format_is_a_zip_of_arrays_naming_no_module(fitted: NodeModel) -> None:
    blob = fitted.dumps()
    assert blob.startswith(b"PK\x03\x04")
    assert b"sklearn" not in blob and b"dcwatch.detectors" not in blob and b"__main__" not in blob
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        names = z.namelist()
    assert "header.npy" in names and all(n.endswith(".npy") for n in names)
    assert "detector/iforest/packed/children.npy" in names  # the forest is stored as arrays


def test_unfitted_model_round_trips() -> None:
    cfg = ModelConfig(n_estimators=7, random_state=None, channels=("residual",))
    model = NodeModel.loads(NodeModel(cfg).dumps())
    assert not model.fitted and model.config == cfg


def test_group_members_round_trip_with_their_own_scaling() -> None:
    rng = np.random.default_rng(5)
    t = 1.7e9 + 15.0 * np.arange(1000)
    frames = {}
    for i in range(3):
        base = np.array([60.0, 1800.0, 0.5]) * (1 + 0.2 * i)
        frames[f"n{i}"] = Frame(
            t, ("temp", "power", "util"), base * (1 + rng.normal(0, 0.01, (1000, 3)))
        )
    train = {k: Frame(f.times[:960], f.columns, f.values[:960]) for k, f in frames.items()}
    models = NodeModel.fit_group(train, ModelConfig(n_estimators=20))
    restored = {k: NodeModel.loads(m.dumps()) for k, m in models.items()}
    assert not np.array_equal(restored["n0"].features_.center_, restored["n1"].features_.center_)
    for name, m in models.items():
        rows = Frame(t[960:], frames[name].columns, frames[name].values[960:])
        assert_same_results(m.score(rows), restored[name].score(rows))


# -- what is refused -------------------------------------------------------------------------------
def pickled_payload(marker: Path) -> bytes:
    """A model file as an older dcwatch wrote it, except the 'model' runs code when unpickled."""
    return pickle.dumps({"version": 1, "model": Planted(marker)}, protocol=5)


def test_pickle_payloads_would_run_code(tmp_path: Path) -> None:
    """Control for the tests below: unpickling the planted payload does create its marker."""
    pickle.loads(pickled_payload(tmp_path / "control"))
    assert (tmp_path / "control").is_dir()


def replace_member(blob: bytes, member: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, content if name == member else src.read(name))
    return out.getvalue()


def object_array_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Planted(marker), 1.0], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_reading_uses_np_load_without_pickle(
    fitted: NodeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real_load = np.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(np, "load", spy)
    NodeModel.loads(fitted.dumps())
    assert calls == [False]
    # An object array (it would need pickle) is refused, and what it holds never runs.
    marker = tmp_path / "ran"
    tampered = replace_member(fitted.dumps(), "score_tail.npy", object_array_npy(marker))
    with pytest.raises(persist.StateError, match="damaged container"):
        NodeModel.loads(tampered)
    assert not marker.exists()
    # Writing one is refused too.
    with pytest.raises(TypeError, match="cannot be stored"):
        persist.pack("x", 1, {"a": np.array([None])})


def tampered_states(model: NodeModel, marker: Path) -> dict[str, bytes]:
    """Files that must not load, by what is wrong with them."""
    good = model.dumps()
    state = persist.unpack(good, STATE_FORMAT, STATE_VERSION)
    state["detector"]["params"]["unknown_hyper_parameter"] = 1
    swapped = persist.unpack(good, STATE_FORMAT, STATE_VERSION)
    swapped["history"]["values"] = swapped["history"]["values"][:, :1]
    return {
        "pickle": pickled_payload(marker),
        "newer": persist.pack(STATE_FORMAT, STATE_VERSION + 1, model.state()),
        "v1-container": persist.pack(STATE_FORMAT, 1, model.state()),
        "other-format": persist.pack("something.else", STATE_VERSION, model.state()),
        "truncated": good[: len(good) // 2],
        "bit-flip": good[:5000] + bytes([good[5000] ^ 0x04]) + good[5001:],
        "object-array": replace_member(good, "score_tail.npy", object_array_npy(marker)),
        "unknown-param": persist.pack(STATE_FORMAT, STATE_VERSION, state),
        "inconsistent": persist.pack(STATE_FORMAT, STATE_VERSION, swapped),
        "empty": b"",
        "text": b"not a model",
    }


def test_bad_states_are_refused_with_a_reason(fitted: NodeModel, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    reasons = {}
    for what, blob in tampered_states(fitted, marker).items():
        with pytest.raises(ValueError) as err:
            NodeModel.loads(blob)
        reasons[what] = str(err.value)
    assert not marker.exists()
    assert "pickle" in reasons["pickle"]
    assert (
        f"version {STATE_VERSION + 1}" in reasons["newer"]
        and "version 1" in reasons["v1-container"]
    )
    assert "something.else" in reasons["other-format"]
    assert "unknown_hyper_parameter" in reasons["unknown-param"]
    assert "history" in reasons["inconsistent"]


def test_store_sets_bad_files_aside_logs_each_once_and_keeps_good_ones(
    fitted: NodeModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ModelStore(tmp_path / "models")
    store.save("good:9478", fitted)
    marker = tmp_path / "ran"
    bad = tampered_states(fitted, marker)
    for what, blob in bad.items():
        (store.dir / f"{what}.model").write_bytes(f"{what}:9478\n".encode() + blob)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = store.load_all()
    assert not marker.exists()
    assert set(loaded) == {"good:9478"}
    assert store.set_aside == len(bad)
    assert sorted(p.stem for p in store.dir.glob("*.corrupt")) == sorted(bad)
    for what in bad:
        lines = [r.getMessage() for r in caplog.records if f"/{what}.model" in r.getMessage()]
        assert len(lines) == 1 and "refitted" in lines[0], (what, lines)
    # A second start finds only the good file.
    caplog.clear()
    assert set(store.load_all()) == {"good:9478"} and not caplog.records


class SteadySource:
    """One node with steady noisy series."""

    instance = "node-1:9478"

    def __init__(self, start: float) -> None:
        self.t0 = start

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        times = np.arange(max(np.ceil(start / step) * step, self.t0), end + 1e-9, step)
        rng = np.random.default_rng(int(times[0]) if len(times) else 0)
        values = np.array([60.0, 1800.0]) + rng.normal(0, [0.5, 15.0], (len(times), 2))
        return {self.instance: Frame(times, ("temp", "power"), values)}

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        assert now is not None
        return await self.fetch(now - (points - 1) * step, now, step)

    def with_queries(self, queries: object) -> SteadySource:
        return self  # capacity rules are not evaluated here (no loop runs)

    def target_status(self) -> list[object]:
        return []


async def test_planted_pickle_is_not_run_and_the_node_refits(
    aiohttp_client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    planted = state / "models" / "node-1_9478.model"
    marker = tmp_path / "ran"
    planted.write_bytes(b"node-1:9478\n" + pickled_payload(marker))
    cfg = load_analyzer_config(
        [
            "--target",
            "http://node-1:9478/metrics",
            "--state-dir",
            str(state),
            "--model-workers",
            "0",
            "--model-min-train",
            "2h",
        ],
        env={},
    )
    t0 = 1_700_000_000.0 // 15 * 15
    app = make_app(cfg, source=SteadySource(t0), run_loop=False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await aiohttp_client(app)  # start-up loads the state directory
    an = app[ANALYZER]
    assert not marker.exists()
    assert SteadySource.instance not in an.nodes
    assert planted.with_suffix(".corrupt").exists()
    lines = [r for r in caplog.records if r.name == LOGGER and str(planted) in r.getMessage()]
    assert len(lines) == 1 and "will be refitted" in lines[0].getMessage()
    # The node is fitted afresh and saved in the new format.
    await an.score_pass(t0 + 3 * 3600)
    await an.wait_fits()
    node = an.nodes[SteadySource.instance]
    assert node.status == "fitted" and node.model is not None
    assert set(ModelStore(state / "models").load_all()) == {SteadySource.instance}
    assert not marker.exists()
