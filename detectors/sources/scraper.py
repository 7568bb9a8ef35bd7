"""The embedded source: the analyzer scrapes agents itself and keeps history in SQLite.

No Prometheus needed. :class:`~dcwatch.detectors.sources.scrape_loop.Scraper` scrapes every
target on its own schedule into the store (bounded: body size, samples, store size; see there);
:class:`EmbeddedSource` answers ``fetch`` from the store with the same frames
:class:`~dcwatch.detectors.sources.prometheus.PrometheusSource` gives, and raises
:class:`~dcwatch.detectors.sources.base.SourceError` when the store cannot be read or written.

Targets (URLs, credentials, TLS) are described in :mod:`~dcwatch.detectors.sources.targets`: a
static list and/or a file, re-read when its mtime changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sqlite3
import time
from collections.abc import Collection, Container, Sequence
from typing import TYPE_CHECKING

from dcwatch.detectors.frame import Frame, frames_from_samples, latest_range, make_grid
from dcwatch.detectors.sources.base import SourceError, TargetStatus
from dcwatch.detectors.sources.parse import NameFilter, ParseError, parse_exposition
from dcwatch.detectors.sources.queries import (
    NamedQuery,
    embedded_only,
    load_queries,
    needed_metrics,
)
from dcwatch.detectors.sources.scrape_loop import (
    EmbeddedConfig,
    Scraper,
    TargetState,
    new_session,
)
from dcwatch.detectors.sources.store import AsyncStore, Store
from dcwatch.detectors.sources.targets import instance_of, parse_targets_file, target_url

if TYPE_CHECKING:
    from dcwatch.detectors.sources.base import Source

__all__ = [  # re-exported: config.py, bench/ and tests import them from here
    "EmbeddedConfig",
    "EmbeddedSource",
    "NameFilter",
    "ParseError",
    "Scraper",
    "TargetState",
    "instance_of",
    "parse_exposition",
    "parse_targets_file",
    "target_url",
]


class EmbeddedSource:
    """Scrapes agents into SQLite and serves frames from it; ``start()``, then ``close()``.

    ``scrape=False`` (tests, benchmarks) opens the store without the scrape loop; rounds are
    then driven through ``scraper.scrape_round``."""

    def __init__(self, config: EmbeddedConfig, queries: Sequence[NamedQuery] | None = None) -> None:
        self.config = config
        self.queries = embedded_only(load_queries() if queries is None else queries)
        self._names = needed_metrics(self.queries)
        keep: Container[str] = NameFilter(config.metrics) if config.metrics else self._names
        self.store = AsyncStore(config.db_path, config.retention, config.max_db_bytes)
        self.scraper = Scraper(config, self.store, keep)
        self._task: asyncio.Task[None] | None = None
        self._state = "new"  # -> started -> closed; a view never leaves "new"
        self._root = self  # a view's root is the source whose store and scraper it shares

    @property
    def targets(self) -> dict[str, TargetState]:
        """The scraper's live state per target URL."""
        return self.scraper.targets

    def target_status(self) -> list[TargetStatus]:
        return [
            TargetStatus(
                t.url,
                t.instance,
                t.up,
                t.failures,
                None if t.up is None else t.last_duration,
                t.last_error,
                t.reason,
                tuple(sorted(t.errors.items())),
                t.nonfinite,
            )
            for t in self.scraper.targets.values()
        ]

    def with_queries(self, queries: Sequence[NamedQuery]) -> EmbeddedSource:
        """A view reading ``queries`` from this source's store. The store keeps only the
        metrics this source was built to keep (``config.metrics``, else its own queries')."""
        view = copy.copy(self)  # the same store and scraper, its own queries
        view.queries = embedded_only(queries)
        view._names = needed_metrics(view.queries)
        view._root = self._root
        return view

    async def start(self, *, scrape: bool = True) -> None:
        if self._root is not self or self._state != "new":
            return
        self._state = "started"
        await self.store.open()
        self.scraper.session = new_session(self.config)
        if scrape:
            self._task = asyncio.create_task(self.scraper.run(), name="dcwatch-scraper")

    async def close(self) -> None:
        if self._root is not self or self._state == "closed":
            return
        self._state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.scraper.session is not None:
            session, self.scraper.session = self.scraper.session, None
            await session.close()
        await self.store.close()

    async def fetch(
        self, start: float, end: float, step: float, instances: Collection[str] | None = None
    ) -> dict[str, Frame]:
        grid = make_grid(start, end, step)
        if not len(grid):
            return {}
        lookback = max(step, self.config.scrape_interval)
        window = max((q.selector.window for q in self.queries if q.selector), default=0.0)
        lo = grid[0] - max(lookback, window)
        names, queries = self._names, self.queries

        def build(store: Store) -> dict[str, Frame]:
            samples = store.read(lo, grid[-1], instances, names=names)
            return frames_from_samples(samples, queries, grid, lookback)

        ok, why = self.health()
        if not ok:
            raise SourceError(why)
        try:
            return await self.store.run_reader(build)
        except (sqlite3.Error, KeyError, ValueError) as e:  # KeyError, ValueError: bad rows
            raise SourceError(
                f"embedded store {self.config.db_path} unreadable: {type(e).__name__}: {e}"
            ) from e

    def health(self) -> tuple[bool, str]:
        """(False, why) while the store cannot be written (new scrapes are lost)."""
        err = self._root.scraper.store_error
        return (False, err) if err else (True, "")

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        return await self.fetch(
            *latest_range(step, points, time.time() if now is None else now), step
        )


if TYPE_CHECKING:

    def _is_a_source(s: EmbeddedSource) -> Source:  # mypy checks the protocol here
        return s
