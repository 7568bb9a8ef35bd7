"""Where fits run (anomaly models and capacity forecasters alike): a process pool (default), a
thread (``workers: 0``), or Dask.

Fits take seconds and must never block scoring: the scoring loop only awaits a future. The
function shipped to workers is a plain top-level function of (frame, config) returning the
model's bytes, so it pickles to a process pool and to Dask alike; the bytes are ``NodeModel.dumps``
(data, the format kept on disk), so what comes back from a worker is never unpickled into a model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from dcwatch.detectors.frame import Frame
from dcwatch.detectors.models.bounds import fit_memory_bytes
from dcwatch.detectors.models.node import ModelConfig, NodeModel

log = logging.getLogger("dcwatch.analyzer.fit")
T = TypeVar("T")


def fit_model(frame: Frame, config: ModelConfig, exclude: np.ndarray | None = None) -> bytes:
    """Fit one node's model, not learning from the ``exclude`` rows; runs in a worker."""
    return NodeModel(config).fit(frame, exclude).dumps()


def fit_group(
    frames: dict[str, Frame], config: ModelConfig, excludes: dict[str, np.ndarray | None]
) -> dict[str, bytes]:
    """Fit a group of like nodes sharing one detector (``NodeModel.fit_group``); in a worker."""
    models = NodeModel.fit_group(frames, config, excludes)
    return {name: model.dumps() for name, model in models.items()}


def report_selection(instance: str, model: NodeModel) -> None:
    """Log, once per fit, a node whose series were cut to ``model.max_series`` (fits run in
    workers whose logs go nowhere, so the service calls this where it installs the model)."""
    sel, cfg = model.selection_, model.config
    peak = fit_memory_bytes(model.train_rows_, len(sel.columns), cfg.forest_rows, cfg.n_estimators)
    if sel.truncated:
        log.warning(
            "node %s: %d series, model keeps the %d most informative (%d more vary, %d carry no "
            "signal; fit peak about %.0f MB); raise model.max_series to keep more",
            instance,
            sel.seen,
            len(sel.columns),
            sel.over_limit,
            sel.no_signal,
            peak / 2**20,
        )
    else:
        log.debug(
            "node %s: model keeps %d of %d series (fit peak about %.0f MB)",
            instance,
            len(sel.columns),
            sel.seen,
            peak / 2**20,
        )


class FitBackend:
    """Runs :func:`fit_model` off the scoring loop."""

    def __init__(self, workers: int = 1, dask_scheduler: str = "") -> None:
        self.workers = workers
        self.dask_scheduler = dask_scheduler
        self._executor: Executor | None = None
        self._dask: Any = None

    async def start(self) -> None:
        if self.dask_scheduler:
            from distributed import Client  # optional extra: dcwatch[dask]

            self._dask = await Client(self.dask_scheduler, asynchronous=True)
            log.info("fits run on Dask scheduler %s", self.dask_scheduler)
        elif self.workers > 0:
            # spawn, not fork: the service has threads (SQLite, aiohttp) a fork would copy.
            import multiprocessing

            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="fit")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a picklable top-level ``fn(*args)`` on a worker (pool, thread or Dask)."""
        if self._dask is not None:
            return cast(T, await self._dask.submit(fn, *args, pure=False))
        assert self._executor is not None, "FitBackend.start() was not awaited"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def fit(
        self, frame: Frame, config: ModelConfig, exclude: np.ndarray | None = None
    ) -> NodeModel:
        """Fit one node's anomaly model on a worker."""
        return NodeModel.loads(await self.run(fit_model, frame, config, exclude))

    async def close(self) -> None:
        if self._dask is not None:
            await self._dask.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class ModelStore:
    """Fitted models on disk, one file per node, replaced atomically (write, fsync, rename).

    A file is the instance name, a newline, then ``NodeModel.dumps`` (data, read without running
    code). One that cannot be read (damaged, another format version, a pickle from before version
    2) is moved aside to ``*.corrupt`` and counted in ``set_aside``; its node is fitted afresh.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.set_aside = 0

    def _path(self, instance: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in instance)
        return self.dir / f"{safe}.model"

    def save(self, instance: str, model: NodeModel) -> None:
        path = self._path(instance)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(instance.encode() + b"\n")
                f.write(model.dumps())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_all(self) -> dict[str, NodeModel]:
        """Every readable model; an unreadable file is moved aside and logged, not fatal."""
        models: dict[str, NodeModel] = {}
        for path in sorted(self.dir.glob("*.model")):
            try:
                name, _, blob = path.read_bytes().partition(b"\n")
                models[name.decode()] = NodeModel.loads(blob)
            except Exception as e:  # any damage: set the file aside and refit
                self._set_aside(path, e)
        return models

    def _set_aside(self, path: Path, error: Exception) -> None:
        aside = path.with_suffix(".corrupt")
        try:
            path.rename(aside)
            where = f"moved aside to {aside.name}"
        except OSError as e:
            where = f"could not be moved aside ({e})"
        self.set_aside += 1
        log.error("model file %s unreadable (%s); %s, node will be refitted", path, error, where)
