"""Where fits run (process pool, thread, Dask) and how fitted models are kept on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcwatch.detectors.frame import Frame
from dcwatch.detectors.models.fitting import FitBackend, ModelStore
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
    # The model returned from the worker scores like one fitted here.
    local = NodeModel(ModelConfig()).fit(frame())
    nxt = frame(420, seed=1)
    rows = Frame(nxt.times[400:], nxt.columns, nxt.values[400:])
    assert np.allclose(model.score(rows).raw, local.score(rows).raw)


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
    assert loaded["gpu-node-7:9478"].series == model.series
    # A damaged file is set aside (not fatal); the node simply refits.
    victim = next((tmp_path / "models").glob("gpu-node-7*.model"))
    victim.write_bytes(b"gpu-node-7:9478\nnot a pickle")
    loaded = store.load_all()
    assert set(loaded) == {"[::1]:9478"}
    assert victim.with_suffix(".corrupt").exists()
    assert "unreadable" in caplog.text
    # No temporary files are left behind by atomic writes.
    assert not list((tmp_path / "models").glob(".tmp-*"))
