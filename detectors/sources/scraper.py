"""The embedded source: the analyzer scrapes agents itself and keeps history in SQLite.

No Prometheus needed. A :class:`Scraper` fetches every target's ``/metrics`` at fixed ticks
(multiples of the interval, so timestamps line up across nodes and with the frame grid), parses the
text exposition with a small hand parser (several times faster than prometheus_client's; see
bench/store_speed.py), keeps only the metric families the queries need, and writes each round in one
transaction on the store's writer thread. :class:`EmbeddedSource` answers ``fetch`` from the store
with the same frames :class:`~dcwatch.detectors.sources.prometheus.PrometheusSource` gives.

Targets: a static list and/or a file (one URL per line, or a YAML list), re-read when its mtime
changes. ``host:port`` means ``http://host:port/metrics``; a target's ``instance`` is its
``host:port``, as Prometheus names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import re
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import yaml

from dcwatch.detectors.frame import Frame, frames_from_samples, latest_range, make_grid
from dcwatch.detectors.sources.base import TargetStatus
from dcwatch.detectors.sources.queries import (
    NamedQuery,
    embedded_only,
    load_queries,
    needed_metrics,
)
from dcwatch.detectors.sources.store import AsyncStore, Scrape, SeriesKey, Store

if TYPE_CHECKING:
    from dcwatch.detectors.sources.base import Source

log = logging.getLogger("dcwatch.analyzer.scraper")

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
EXPIRE_EVERY = 600.0  # seconds between retention passes


@dataclass(frozen=True)
class EmbeddedConfig:
    targets: tuple[str, ...] = ()
    targets_file: Path | None = None
    scrape_interval: float = 15.0
    scrape_timeout: float = 10.0
    db_path: Path = Path("/var/lib/dcwatch/embedded.db")
    retention: float = 14 * 86400.0
    concurrency: int = 64  # targets scraped at once
    metrics: tuple[str, ...] = ()  # regexes of metric names to store; () = what the queries need

    def __post_init__(self) -> None:
        if not 0 < self.scrape_timeout <= self.scrape_interval:
            raise ValueError("scrape_timeout must be positive and not above scrape_interval")
        if self.retention < self.scrape_interval or self.concurrency < 1:
            raise ValueError("retention must cover a scrape interval; concurrency must be >= 1")


# --- exposition parsing ----------------------------------------------------------------------


class ParseError(ValueError):
    pass


def parse_exposition(
    text: str, keep: Container[str] | None = None
) -> tuple[list[SeriesKey], list[float]]:
    """Samples of a Prometheus text exposition (or OpenMetrics) as ``(name, labels)`` keys and
    values; ``labels`` is the text between the braces as exposed. ``keep`` filters by name."""
    keys: list[SeriesKey] = []
    values: list[float] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line[0] == "#":
            continue
        b = line.find("{")
        if b >= 0:
            name = line[:b].rstrip()
            if keep is not None and name not in keep:
                continue
            e = line.rfind("}")
            labels, rest = line[b + 1 : e].rstrip(","), line[e + 1 :]
        else:
            name, _, rest = line.strip().partition(" ")
            if keep is not None and name not in keep:
                continue
            labels = ""
        try:
            values.append(float(rest.split(None, 1)[0]))
        except (ValueError, IndexError) as err:
            raise ParseError(f"line {n}: cannot parse {line[:120]!r}") from err
        keys.append((name, labels))
    return keys, values


class NameFilter:
    """``name in filter`` for metric-name regexes, with the answer cached per name."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._re = re.compile("|".join(f"(?:{p})" for p in patterns))
        self._seen: dict[str, bool] = {}

    def __contains__(self, name: object) -> bool:
        hit = self._seen.get(name)  # type: ignore[call-overload]
        if hit is None:
            hit = self._seen[name] = bool(self._re.fullmatch(str(name)))  # type: ignore[index]
        return hit


# --- targets ---------------------------------------------------------------------------------


def target_url(target: str) -> str:
    """``host:port`` -> ``http://host:port/metrics``; a URL without a path gets ``/metrics``."""
    t = target.strip()
    if "://" not in t:
        t = "http://" + t
    parts = urlsplit(t)
    if not parts.hostname:
        raise ValueError(f"bad target {target!r}")
    return t if parts.path not in ("", "/") else t.rstrip("/") + "/metrics"


def instance_of(url: str) -> str:
    """Prometheus' ``instance`` for a target URL: its ``host:port``."""
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    host = p.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_targets_file(text: str) -> list[str]:
    """One target per line (``#`` comments) or a YAML list of strings."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, list):
        if not all(isinstance(t, str) for t in data):
            raise ValueError("a YAML targets list must hold strings")
        return [target_url(t) for t in data]
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [target_url(t) for t in lines if t]


@dataclass
class TargetState:
    """What the service exports about each target (up, last error, last scrape)."""

    url: str
    instance: str
    up: bool | None = None  # None: not scraped yet
    last_error: str = ""
    last_duration: float = 0.0
    last_scrape: float = 0.0
    samples: int = 0
    failures: int = 0  # total failed scrapes


@dataclass
class _Result:
    state: TargetState
    body: str | None = None
    error: str = ""
    duration: float = 0.0


class Scraper:
    """Scrapes the targets at fixed ticks into the store; targets' state in ``targets``.

    ``keep`` selects the metric names stored (None: all); without ``session`` each round opens
    its own.
    """

    def __init__(
        self,
        config: EmbeddedConfig,
        store: AsyncStore,
        keep: Container[str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config, self.store, self.keep, self.session = config, store, keep, session
        self.targets: dict[str, TargetState] = {}
        self._file_mtime: int | None = None
        self._file_error = ""
        self._set_targets([target_url(t) for t in self.config.targets])
        self.reload_targets()

    def _set_targets(self, urls: Sequence[str]) -> None:
        old = self.targets
        self.targets = {
            u: old.get(u) or TargetState(u, instance_of(u)) for u in dict.fromkeys(urls)
        }
        added, removed = self.targets.keys() - old.keys(), old.keys() - self.targets.keys()
        if added or removed:
            log.info("targets: %d (+%d, -%d)", len(self.targets), len(added), len(removed))

    def reload_targets(self) -> bool:
        """Re-read the targets file if its mtime changed; a broken file keeps the old list."""
        path = self.config.targets_file
        if path is None:
            return False
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == self._file_mtime:
                return False
            urls = parse_targets_file(path.read_text())
        except (OSError, ValueError) as e:
            msg = f"targets file {path}: {e}; keeping {len(self.targets)} targets"
            if msg != self._file_error:
                log.error("%s", msg)
                self._file_error = msg
            return False
        self._file_mtime, self._file_error = mtime, ""
        self._set_targets([target_url(t) for t in self.config.targets] + urls)
        return True

    async def _get(
        self, session: aiohttp.ClientSession, sem: asyncio.Semaphore, st: TargetState
    ) -> _Result:
        async with sem:
            t0 = time.monotonic()
            try:
                async with session.get(st.url, headers={"Accept": ACCEPT}) as r:
                    if r.status != 200:
                        return _Result(st, error=f"HTTP {r.status}", duration=time.monotonic() - t0)
                    body = await r.text(errors="replace")
                return _Result(st, body=body, duration=time.monotonic() - t0)
            except asyncio.TimeoutError:
                err = f"timeout after {self.config.scrape_timeout:g}s"
            except aiohttp.ClientError as e:
                err = f"{type(e).__name__}: {e}"
            return _Result(st, error=err, duration=time.monotonic() - t0)

    async def scrape_round(self, ts: float | None = None) -> int:
        """Scrape every target once, stamping samples with ``ts``; returns samples written."""
        ts = time.time() if ts is None else ts
        self.reload_targets()
        if not self.targets:
            return 0
        sem = asyncio.Semaphore(self.config.concurrency)
        own = self.session is None
        session = self.session or _new_session(self.config)
        try:
            results = await asyncio.gather(
                *(self._get(session, sem, st) for st in self.targets.values())
            )
        finally:
            if own:
                await session.close()
        errors = await self.store.run_writer(lambda s: _parse_and_write(s, results, ts, self.keep))
        written = 0
        for res, perr in zip(results, errors, strict=True):
            res.error = res.error or perr
            written += self._record(res, ts)
        return written

    def _record(self, res: _Result, ts: float) -> int:
        st = res.state
        was = st.up
        st.up, st.last_duration, st.last_scrape = not res.error, res.duration, ts
        if res.error:
            st.failures += 1
            st.samples = 0
            if was is not False:  # log state changes only, not every failed retry
                log.warning(
                    "target %s down: %s; retrying every %gs",
                    st.url,
                    res.error,
                    self.config.scrape_interval,
                )
        elif was is False:
            log.info("target %s up again", st.url)
        st.last_error = res.error
        return st.samples

    async def run(self) -> None:
        """Scrape at each multiple of the interval until cancelled; expire old data meanwhile."""
        interval = self.config.scrape_interval
        next_expire = 0.0
        while True:
            now = time.time()
            tick = math.floor(now / interval) * interval + interval
            await asyncio.sleep(tick - now)
            try:
                await self.scrape_round(tick)
                if time.monotonic() >= next_expire:
                    await self.store.expire()
                    next_expire = time.monotonic() + EXPIRE_EVERY
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrape round failed; next round in %gs", interval)
            late = time.time() - tick
            if late > interval:
                log.warning("scrape round took %.1fs, longer than the %gs interval", late, interval)


def _new_session(config: EmbeddedConfig) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=config.scrape_timeout),
        connector=aiohttp.TCPConnector(limit=config.concurrency),
    )


def _parse_and_write(
    store: Store, results: Sequence[_Result], ts: float, keep: Container[str] | None
) -> list[str]:
    """On the writer thread: parse the bodies, write the round in one transaction.

    Returns each target's parse error ("" when fine)."""
    scrapes, errors = [], []
    for res in results:
        err = ""
        if res.body is not None:
            try:
                keys, values = parse_exposition(res.body, keep)
                scrapes.append(Scrape(res.state.instance, ts, keys, values))
                res.state.samples = len(values)
            except ParseError as e:
                err = f"bad exposition: {e}"
        errors.append(err)
    store.write(scrapes)
    return errors


class EmbeddedSource:
    """Scrapes agents into SQLite and serves frames from it; ``start()``, then ``close()``.

    ``scrape=False`` (tests, benchmarks) opens the store without the scrape loop; rounds are
    then driven through ``scraper.scrape_round``."""

    def __init__(self, config: EmbeddedConfig, queries: Sequence[NamedQuery] | None = None) -> None:
        self.config = config
        self.queries = embedded_only(load_queries() if queries is None else queries)
        self._names = needed_metrics(self.queries)
        keep: Container[str] = NameFilter(config.metrics) if config.metrics else self._names
        self.store = AsyncStore(config.db_path, config.retention)
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
        self.scraper.session = _new_session(self.config)
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

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        grid = make_grid(start, end, step)
        if not len(grid):
            return {}
        lookback = max(step, self.config.scrape_interval)
        window = max((q.selector.window for q in self.queries if q.selector), default=0.0)
        lo = grid[0] - max(lookback, window)
        names, queries = self._names, self.queries

        def build(store: Store) -> dict[str, Frame]:
            samples = store.read(lo, grid[-1], names=names)
            return frames_from_samples(samples, queries, grid, lookback)

        return await self.store.run_reader(build)

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        return await self.fetch(
            *latest_range(step, points, time.time() if now is None else now), step
        )


if TYPE_CHECKING:

    def _is_a_source(s: EmbeddedSource) -> Source:  # mypy checks the protocol here
        return s
