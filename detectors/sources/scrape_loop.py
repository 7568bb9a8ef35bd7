"""The embedded scrape loop: one loop per target, each at the multiples of the interval under
its own timeout, so a hanging target delays nobody.

Bodies are read in chunks up to ``body_size_limit`` (after gzip), parsed strictly
(:mod:`~dcwatch.detectors.sources.parse`) within ``sample_limit`` on the store's writer thread,
and written in batches: scrapes finishing together share a transaction. A target over a limit,
or serving garbage, is down for that scrape with a ``reason``, logged once per change of reason
(and every ``LOG_EVERY`` while it lasts), and nothing of that scrape is stored. At most
``concurrency`` bodies are held at once; a target that never sends its headers holds no slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import sqlite3
import ssl
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from dcwatch.detectors.shard import Shard
from dcwatch.detectors.sources.parse import Parsed, ParseError, parse_body
from dcwatch.detectors.sources.store import AsyncStore, Scrape, Store
from dcwatch.detectors.sources.targets import (
    Secrets,
    Target,
    parse_target,
    parse_targets,
)
from dcwatch.urls import redact_text

log = logging.getLogger("dcwatch.analyzer.scraper")

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
EXPIRE_EVERY = 600.0  # seconds between retention passes
LOG_EVERY = 600.0  # a target still failing for the same reason is logged again after this
MiB = 1 << 20


@dataclass(frozen=True)
class EmbeddedConfig:
    targets: tuple[str, ...] = ()
    targets_file: Path | None = None
    scrape_interval: float = 15.0
    scrape_timeout: float = 10.0
    db_path: Path = Path("/var/lib/dcwatch/embedded.db")
    retention: float = 14 * 86400.0
    concurrency: int = 64  # bodies read and parsed at once (each up to body_size_limit)
    metrics: tuple[str, ...] = ()  # regexes of metric names to store; () = what the queries need
    body_size_limit: int = 16 * MiB  # bytes of one scrape, after decompression
    sample_limit: int = 20_000  # samples of one scrape, kept or not
    max_db_bytes: int = 16 << 30  # store size; past it the oldest scrapes go first
    shard: Shard = field(default_factory=Shard)  # targets of other shards are not scraped

    def __post_init__(self) -> None:
        if not 0 < self.scrape_timeout <= self.scrape_interval:
            raise ValueError("scrape_timeout must be positive and not above scrape_interval")
        if self.retention < self.scrape_interval or self.concurrency < 1:
            raise ValueError("retention must cover a scrape interval; concurrency must be >= 1")
        if min(self.body_size_limit, self.sample_limit) < 1 or self.max_db_bytes < MiB:
            raise ValueError("body_size_limit and sample_limit must be >= 1, max_db_bytes >= 1 MiB")


@dataclass
class TargetState:
    """What the service exports about each target (up, last error, last scrape)."""

    target: Target
    instance: str
    up: bool | None = None  # None: not scraped yet
    last_error: str = ""
    reason: str = ""  # why the last scrape failed: timeout, http, body_size_limit, ...
    last_duration: float = 0.0
    last_scrape: float = 0.0
    samples: int = 0
    failures: int = 0  # total failed scrapes
    errors: dict[str, int] = field(default_factory=dict)  # failed scrapes by reason
    nonfinite: int = 0  # NaN / Inf samples dropped, total
    logged: tuple[str, float] = ("", 0.0)  # (reason, monotonic time) of the last log line

    @property
    def url(self) -> str:
        return self.target.url


class ScrapeFailure(Exception):
    """A scrape that failed: ``reason`` is the label, the message says what happened."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreFailure(Exception):
    """The store could not take a batch of scrapes."""


class Scraper:
    """Scrapes each target in its own loop into the store; targets' state in ``targets``.

    ``keep`` selects the metric names stored (None: all); without ``session`` each
    ``scrape_round`` opens its own.
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
        self.secrets = Secrets()
        self.store_error = ""  # the last write or expiry failure; "" once one succeeds
        self._sem = asyncio.Semaphore(config.concurrency)
        self._pending: list[tuple[str, float, bytearray, asyncio.Future[Parsed]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._file_mtime: int | None = None
        self._file_error = ""
        self._static = [parse_target(t) for t in config.targets]
        # Set when ``run`` stops: its target loops end at their next tick even if a cancellation
        # was lost (``asyncio.wait_for`` before Python 3.12 swallows one that arrives as the
        # scrape completes, and the loop then ran on: the demo hung on SIGTERM for an hour).
        self._stopping = False
        for t in self._static:
            if t.has_url_credentials:
                log.warning(
                    "target %s: credentials given in its URL on the command line or in the "
                    "environment are visible to other users (ps, /proc); put the target in the "
                    "targets file with basic_auth.password_file instead",
                    t.url,
                )
        self._set_targets(self._static)
        self.reload_targets()

    def _set_targets(self, targets: Sequence[Target]) -> None:
        old = self.targets
        new: dict[str, TargetState] = {}
        for t in targets:
            if t.url in new or not self.config.shard.owns(t.instance):
                continue
            st = old.get(t.url) or TargetState(t, t.instance)
            st.target = t  # its credentials or TLS may have changed
            new[t.url] = st
        self.targets = new
        added, removed = new.keys() - old.keys(), old.keys() - new.keys()
        if added or removed:
            log.info("targets: %d (+%d, -%d)", len(new), len(added), len(removed))

    def reload_targets(self) -> bool:
        """Re-read the targets file if its mtime changed; a broken file keeps the old list."""
        path = self.config.targets_file
        if path is None:
            return False
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == self._file_mtime:
                return False
            targets = parse_targets(path.read_text(encoding="utf-8"), path.parent)
        except (OSError, ValueError) as e:
            msg = f"targets file {path}: {e}; keeping {len(self.targets)} targets"
            if msg != self._file_error:
                log.error("%s", msg)
                self._file_error = msg
            return False
        self._file_mtime, self._file_error = mtime, ""
        self._set_targets(self._static + targets)
        return True

    # --- one scrape -------------------------------------------------------------------------

    async def scrape_round(self, ts: float | None = None) -> int:
        """Scrape every target once, stamping samples with ``ts``; returns samples written."""
        ts = time.time() if ts is None else ts
        self.reload_targets()
        if not self.targets:
            return 0
        own = self.session is None
        session = self.session or new_session(self.config)
        try:
            counts = await asyncio.gather(
                *(self.scrape(session, st, ts) for st in list(self.targets.values()))
            )
        finally:
            if own:
                await session.close()
        return sum(counts)

    async def scrape(self, session: aiohttp.ClientSession, st: TargetState, ts: float) -> int:
        """Scrape one target, store what it served, record its state; returns samples stored."""
        t0 = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as stack:  # holds the concurrency slot
                try:
                    body = await asyncio.wait_for(
                        self._fetch(session, st.target, stack), self.config.scrape_timeout
                    )
                except asyncio.TimeoutError:
                    raise ScrapeFailure(
                        "timeout", f"timeout after {self.config.scrape_timeout:g}s"
                    ) from None
                duration = time.monotonic() - t0
                parsed = await self._submit(st.instance, ts, body)
        except ScrapeFailure as e:
            return self._record(st, ts, time.monotonic() - t0, e.reason, str(e))
        except ParseError as e:
            return self._record(st, ts, time.monotonic() - t0, e.reason, f"bad exposition: {e}")
        except StoreFailure:
            return self._record(st, ts, duration)  # the target is fine; the source reports it
        return self._record(st, ts, duration, parsed=parsed)

    async def _fetch(
        self, session: aiohttp.ClientSession, t: Target, stack: contextlib.AsyncExitStack
    ) -> bytearray:
        """The body of ``t``'s answer, read up to the size limit; enters a concurrency slot on
        ``stack`` once the headers are in (a target that never answers holds none)."""
        limit = self.config.body_size_limit
        try:
            headers = {"Accept": ACCEPT, **self.secrets.headers(t)}
            ssl_ctx: ssl.SSLContext | bool = True
            if t.tls is not None:
                ssl_ctx = self.secrets.ssl_context(t.tls)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ScrapeFailure("credentials", f"cannot read credentials: {e}") from None
        server_name = t.tls.server_name if t.tls is not None and t.tls.server_name else None
        try:
            r = await stack.enter_async_context(
                session.get(t.url, headers=headers, ssl=ssl_ctx, server_hostname=server_name)
            )
            if r.status != 200:
                raise ScrapeFailure("http", f"HTTP {r.status}")
            if r.content_length is not None and r.content_length > limit:
                raise ScrapeFailure(
                    "body_size_limit", f"body of {r.content_length} bytes, limit {limit}"
                )
            await stack.enter_async_context(self._sem)
            body = bytearray()
            async for chunk in r.content.iter_chunked(256 * 1024):
                body += chunk
                if len(body) > limit:
                    raise ScrapeFailure("body_size_limit", f"body over the limit of {limit} bytes")
            return body
        except aiohttp.ClientError as e:
            if isinstance(e, asyncio.TimeoutError):
                raise
            raise ScrapeFailure("http", redact_text(f"{type(e).__name__}: {e}")) from None

    async def _submit(self, instance: str, ts: float, body: bytearray) -> Parsed:
        """Parse and store ``body`` on the writer thread, in a batch with the scrapes that
        finish meanwhile; raises ParseError, or the store's error."""
        fut: asyncio.Future[Parsed] = asyncio.get_running_loop().create_future()
        self._pending.append((instance, ts, body, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="dcwatch-store-flush")
        return await fut

    async def _flush(self) -> None:
        keep, limit = self.keep, self.config.sample_limit
        while self._pending:
            batch, self._pending = self._pending, []
            items = [(inst, ts, body) for inst, ts, body, _ in batch]
            results: list[Parsed | Exception]
            try:
                results = await self.store.run_writer(
                    functools.partial(
                        _parse_and_write,
                        items=items,
                        keep=keep,
                        sample_limit=limit,
                        bounds=self.store,
                    )
                )
            except (sqlite3.Error, OSError, ValueError) as e:  # the store, not the targets
                self._store_failed(e)
                results = [StoreFailure(self.store_error)] * len(batch)
            else:
                self.store_error = ""
            for (*_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _store_failed(self, e: BaseException) -> None:
        msg = f"embedded store {self.store.path}: {type(e).__name__}: {e}"
        if msg != self.store_error:
            log.error("%s; scrapes are not stored until it works again", msg)
        self.store_error = msg

    def _record(
        self,
        st: TargetState,
        ts: float,
        duration: float,
        reason: str = "",
        error: str = "",
        parsed: Parsed | None = None,
    ) -> int:
        was = st.up
        st.up, st.last_duration, st.last_scrape = not reason, duration, ts
        st.last_error, st.reason = error, reason
        st.samples = len(parsed.values) if parsed is not None else 0
        if parsed is not None:
            st.nonfinite += parsed.nonfinite
        if reason:
            st.failures += 1
            st.errors[reason] = st.errors.get(reason, 0) + 1
            now = time.monotonic()
            if was is not False or st.logged[0] != reason or now - st.logged[1] >= LOG_EVERY:
                st.logged = (reason, now)
                log.warning(
                    "target %s down (%s): %s; %d failed scrapes, retrying every %gs",
                    st.url,
                    reason,
                    error,
                    st.failures,
                    self.config.scrape_interval,
                )
        elif was is False:
            st.logged = ("", 0.0)
            log.info("target %s up again", st.url)
        return st.samples

    # --- the loops --------------------------------------------------------------------------

    async def run(self) -> None:
        """One loop per target (started and stopped as the targets change), retention passes
        meanwhile, until cancelled."""
        interval = self.config.scrape_interval
        loops: dict[str, asyncio.Task[None]] = {}
        next_expire = 0.0
        self._stopping = False
        try:
            while True:
                self.reload_targets()
                for url in loops.keys() - self.targets.keys():
                    loops.pop(url).cancel()
                for url in self.targets.keys() - loops.keys():
                    loops[url] = asyncio.create_task(self._loop(url), name=f"dcwatch-scrape {url}")
                if time.monotonic() >= next_expire:
                    next_expire = time.monotonic() + EXPIRE_EVERY
                    try:
                        await self.store.expire()
                    except (sqlite3.Error, ValueError, OSError) as e:
                        self._store_failed(e)
                await asyncio.sleep(min(interval, 15.0))
        finally:
            self._stopping = True
            for task in loops.values():
                task.cancel()
            await asyncio.gather(*loops.values(), return_exceptions=True)
            if self._flusher is not None:
                self._flusher.cancel()
                await asyncio.gather(self._flusher, return_exceptions=True)

    async def _loop(self, url: str) -> None:
        interval = self.config.scrape_interval
        while not self._stopping:
            now = time.time()
            tick = math.floor(now / interval) * interval + interval
            await asyncio.sleep(tick - now)
            st, session = self.targets.get(url), self.session
            if st is None or session is None or self._stopping:
                return
            try:
                await self.scrape(session, st, tick)
            except Exception:
                log.exception("scrape of %s failed; next in %gs", url, interval)


def new_session(config: EmbeddedConfig) -> aiohttp.ClientSession:
    """The scrapers' session: no pool limit (each target has one request in flight at most,
    and a hung one must not hold a slot others wait for); timeouts are per scrape."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=config.scrape_timeout + 5.0),  # a backstop only
        connector=aiohttp.TCPConnector(limit=0),
    )


def _parse_and_write(
    store: Store,
    items: Sequence[tuple[str, float, bytearray]],
    keep: Container[str] | None,
    sample_limit: int,
    bounds: AsyncStore,
) -> list[Parsed | Exception]:
    """On the writer thread: parse the bodies, write the good ones in one transaction, apply
    the store's size bound. Returns each body's samples or why it was refused."""
    out: list[Parsed | Exception] = []
    scrapes = []
    for instance, ts, body in items:
        try:
            parsed = parse_body(body, keep, sample_limit)
        except ParseError as e:  # SampleLimitError included
            out.append(e)
            continue
        out.append(parsed)
        scrapes.append(Scrape(instance, ts, parsed.keys, parsed.values))
    store.write(scrapes)
    bounds.bound(store)
    return out
