"""Where fits run (process pool, thread, Dask) and how fitted models are kept on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcwatch.detectors.frame import Frame
from dcwatch.detectors.models.fitting import FitBackend, ModelStore, fit_group, fit_model
from dcwatch.detectors.models.node import ModelConfig, NodeModel


def frame(rows: int = 400, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    t = 1_700_000_000.0 + 15.0 * np.arange(rows)
    return Frame(t, ("a", "b", "c"), rng.normal(10, 1, (rows, 3)))


async def check_backend(backend: FitBackend) -> None:
    await backend.start()
    try:
        model = await backend.fit(frame(), ModelConfig())
        # Any picklable function runs the same way: capacity forecasters share the backend.
        assert await backend.run(divmod, 7, 2) == (3, 1)
    finally:
        await backend.close()
    assert model.fitted and model.series == ["a", "b", "c"]
    # The model returned from the worker scores exactly like one fitted here.
    local = NodeModel(ModelConfig()).fit(frame())
    nxt = frame(420, seed=1)
    rows = Frame(nxt.times[400:], nxt.columns, nxt.values[400:])
    got, want = model.score(rows), local.score(rows)
    assert np.array_equal(got.raw, want.raw) and np.array_equal(got.score, want.score)


def test_workers_return_models_as_data_not_pickles() -> None:
    blob = fit_model(frame(), ModelConfig())
    assert blob.startswith(b"PK\x03\x04")  # the saved-state container (a zip), not b"\x80"
    assert NodeModel.loads(blob).series == ["a", "b", "c"]
    blobs = fit_group({"x": frame(), "y": frame(seed=2)}, ModelConfig(), {"x": None, "y": None})
    assert all(b.startswith(b"PK\x03\x04") for b in blobs.values())
    x, y = (NodeModel.loads(b) for b in blobs.values())
    assert x.threshold_ == y.threshold_


async def test_thread_backend() -> None:
    await check_backend(FitBackend(workers=0))


async def test_process_pool_backend() -> None:
    await check_backend(FitBackend(workers=1))


async def test_dask_backend_on_a_local_cluster() -> None:
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    async with distributed.LocalCluster(
        n_workers=1, processes=False, asynchronous=True, dashboard_address=None, protocol="tcp"
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        await check_backend(FitBackend(dask_scheduler=cluster.scheduler_address))


def test_model_store_round_trip_and_corruption(tmp_path: Path, caplog) -> None:
    store = ModelStore(tmp_path / "models")
    model = NodeModel(ModelConfig()).fit(frame())
    store.save("gpu-node-7:9478", model)
    store.save("[::1]:9478", model)
    loaded = store.load_all()
    assert set(loaded) == {"gpu-node-7:9478", "[::1]:9478"}
    nxt = frame(420, seed=1)
    rows = Frame(nxt.times[400:], nxt.columns, nxt.values[400:])
    assert np.array_equal(loaded["gpu-node-7:9478"].score(rows).score, model.score(rows).score)
    assert store.set_aside == 0
    # A damaged file is set aside (not fatal, counted); the node simply refits.
    victim = next((tmp_path / "models").glob("gpu-node-7*.model"))
    victim.write_bytes(b"gpu-node-7:9478\nnot a model")
    loaded = store.load_all()
    assert set(loaded) == {"[::1]:9478"}
    assert victim.with_suffix(".corrupt").exists() and not victim.exists()
    assert store.set_aside == 1
    assert "unreadable" in caplog.text and "refitted" in caplog.text
    # No temporary files are left behind by atomic writes.
    assert not list((tmp_path / "models").glob(".tmp-*"))
