"""What the analyzer reads from: the :class:`Source` protocol both sources implement.

:class:`~dcwatch.detectors.sources.prometheus.PrometheusSource` (PromQL over HTTP) and
:class:`~dcwatch.detectors.sources.scraper.EmbeddedSource` (its own scrapes, in SQLite) answer the
same calls with the same frames. A source owns a resource (an HTTP session; a store and a scrape
loop): ``start()`` opens it and ``close()`` releases it, both safe to call twice, and ``close()``
safe after a ``start()`` that failed half way. ``with_queries`` gives a view answering other
queries (a capacity rule's) over the same resource: the view opens and closes nothing, its
parent does.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from dcwatch.detectors.frame import Frame
    from dcwatch.detectors.sources.queries import NamedQuery


class SourceError(Exception):
    """The source could not answer at all (Prometheus unreachable, store unreadable)."""


@dataclass(frozen=True)
class TargetStatus:
    """One scrape target of a source that scrapes itself, as the analyzer's metrics show it."""

    url: str
    instance: str
    up: bool | None  # None: not scraped yet
    failures: int  # failed scrapes since start
    last_duration: float | None  # None: not scraped yet
    last_error: str = ""
    reason: str = ""  # why the last scrape failed: timeout, http, parse, body_size_limit, ...
    errors: tuple[tuple[str, int], ...] = ()  # failed scrapes since start, by reason
    nonfinite: int = 0  # NaN / Inf samples dropped since start


class Source(Protocol):
    """What the analyzer reads: per instance, a frame (:mod:`dcwatch.detectors.frame`)."""

    async def start(self) -> None:
        """Open what the source reads through; a second call does nothing."""
        ...

    async def close(self) -> None:
        """Release what ``start`` opened; a second call, or one after a failed start, is safe."""
        ...

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        """Every instance's frame (of the source's shard) on the grid of ``[start, end]``;
        raises SourceError when the source cannot answer at all."""
        ...

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        """The last ``points`` grid steps up to ``now``: what a scoring pass needs."""
        ...

    def with_queries(self, queries: Sequence[NamedQuery]) -> Source:
        """A view answering ``queries`` instead of this source's own, over the same session or
        store; it needs no start or close of its own."""
        ...

    def target_status(self) -> list[TargetStatus]:
        """The targets this source scrapes itself (none when Prometheus does the scraping)."""
        ...


class SelectingSource(Source, Protocol):
    """A source that can read some instances only (both of dcwatch's sources): what keeps a
    fit's read, and a shard's, from growing with the fleet."""

    async def fetch(
        self, start: float, end: float, step: float, instances: Collection[str] | None = None
    ) -> dict[str, Frame]:
        """As :meth:`Source.fetch`; with ``instances``, only those."""
        ...


async def fetch_some(
    source: Source, start: float, end: float, step: float, instances: Collection[str]
) -> dict[str, Frame]:
    """``instances``' frames: read alone from a :class:`SelectingSource` (its ``fetch`` takes
    ``instances``), else picked out of a whole read (a test double)."""
    if "instances" in inspect.signature(source.fetch).parameters:
        return await cast(SelectingSource, source).fetch(start, end, step, instances)
    frames = await source.fetch(start, end, step)
    return {i: f for i, f in frames.items() if i in instances}
