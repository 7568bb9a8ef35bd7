"""The Prometheus source: named PromQL queries through ``/api/v1/query_range``, as frames.

Long ranges are split so no request asks for more than ``max_points`` points per series
(Prometheus refuses more than 11,000). Each request is retried with exponential backoff on 5xx,
429, timeouts and connection errors; a 4xx (a bad query) is not retried. A request that still
fails leaves its range ``NaN`` and is recorded in ``errors``; only when every request of a fetch
fails does ``fetch`` raise :class:`~dcwatch.detectors.sources.base.SourceError`.

Decoding answers is the expensive part (about 1 s per million points, half of it the garbage
collector walking fresh lists), so it runs off the event loop with the collector paused, and uses
orjson when it happens to be installed (not a dependency: it saves another ~25%).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from dcwatch.detectors.frame import (
    ColumnKey,
    Frame,
    build_frames,
    combine,
    latest_range,
    make_grid,
)
from dcwatch.detectors.sources.base import SourceError, TargetStatus
from dcwatch.detectors.sources.queries import NamedQuery, load_queries

if TYPE_CHECKING:
    from dcwatch.detectors.sources.base import Source

log = logging.getLogger("dcwatch.analyzer.prometheus")

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

PROMETHEUS_MAX_POINTS = 11_000
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    bearer_token: str = ""
    bearer_token_file: Path | None = None  # re-read on each fetch: tokens rotate
    username: str = ""
    password: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None
    insecure_skip_verify: bool = False
    timeout: float = 30.0  # per request
    max_points: int = PROMETHEUS_MAX_POINTS  # per series per request
    retries: int = 3
    backoff: float = 0.5  # first retry delay; doubles, capped at 10 s
    concurrency: int = 4  # requests in flight

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"prometheus url must be http(s)://..., got {self.url!r}")
        if (self.bearer_token or self.bearer_token_file) and self.username:
            raise ValueError("prometheus: give a bearer token or basic auth, not both")
        if not 2 <= self.max_points <= PROMETHEUS_MAX_POINTS:
            raise ValueError(f"max_points must be in 2..{PROMETHEUS_MAX_POINTS}")
        if self.retries < 0 or self.concurrency < 1 or not self.timeout > 0:
            raise ValueError("retries >= 0, concurrency >= 1 and timeout > 0 are required")


def chunks(n: int, max_points: int) -> Iterator[tuple[int, int]]:
    """``[lo, hi)`` index ranges of a grid of ``n`` points, at most ``max_points`` each."""
    for lo in range(0, n, max_points):
        yield lo, min(lo + max_points, n)


_gc_lock = threading.Lock()
_gc_pause = {"depth": 0, "was_enabled": False}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (nested and across threads): decoding a big JSON
    answer creates millions of objects, and the collector would walk them again and again."""
    with _gc_lock:
        if _gc_pause["depth"] == 0:
            _gc_pause["was_enabled"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause["depth"] -= 1
            if _gc_pause["depth"] == 0 and _gc_pause["was_enabled"]:
                gc.enable()


Series = tuple[dict[str, str], np.ndarray, np.ndarray]  # labels, times, values


def decode_matrix(body: bytes) -> list[Series]:
    """A ``query_range`` answer as ``(labels, times, values)`` per series."""
    with gc_paused():
        doc = _loads(body)
        if doc.get("status") != "success":
            raise QueryError(f"{doc.get('errorType', 'error')}: {doc.get('error', '?')}")
        out = []
        for r in doc["data"]["result"]:
            values = r.get("values") or ()
            if not values:
                continue
            ts, vals = zip(*values, strict=True)
            out.append((r["metric"], np.array(ts, np.float64), np.array(vals, np.float64)))
        return out


class QueryError(Exception):
    """Prometheus answered, and said no (bad query, 4xx): retrying will not help."""


class PrometheusSource:
    """Frames from Prometheus' HTTP API. ``start()`` opens the HTTP session, ``close()`` ends it
    (a ``session`` given by the caller stays the caller's to close)."""

    def __init__(
        self,
        config: PrometheusConfig,
        queries: Sequence[NamedQuery] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.queries = tuple(load_queries() if queries is None else queries)
        self._session = session
        self._own_session = session is None
        self.errors: dict[str, str] = {}  # query name -> last error, cleared on success
        self.requests = 0
        self.failures = 0  # requests that failed after their retries
        self.retries = 0
        self._warned: set[tuple[str, str]] = set()
        self._root = self  # a view's root is the source whose session it shares

    async def start(self) -> None:
        if self._root is not self:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._ssl_context(), limit=self.config.concurrency
                )
            )

    async def close(self) -> None:
        if self._root is self and self._own_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def with_queries(self, queries: Sequence[NamedQuery]) -> PrometheusSource:
        """A view sending ``queries`` through this source's session (opened on first use if
        this source was not started); its errors and counters are its own."""
        view = PrometheusSource(self.config, queries)
        view._root = self._root
        return view

    def target_status(self) -> list[TargetStatus]:
        return []  # Prometheus scrapes; its own ``up`` series say how that goes

    def _ssl_context(self) -> ssl.SSLContext | bool:
        c = self.config
        if not c.url.startswith("https://"):
            return True
        if not (c.ca_file or c.cert_file or c.insecure_skip_verify):
            return True  # the system's default verification
        ctx = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        if c.cert_file:
            ctx.load_cert_chain(str(c.cert_file), str(c.key_file) if c.key_file else None)
        if c.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _auth(self) -> dict[str, str]:
        """The Authorization header; files are re-read each fetch so rotated secrets apply."""
        c = self.config
        token = c.bearer_token
        if c.bearer_token_file:
            token = c.bearer_token_file.read_text().strip()
        if token:
            return {"Authorization": f"Bearer {token}"}
        if c.username:
            pw = c.password_file.read_text().rstrip("\n") if c.password_file else c.password
            cred = base64.b64encode(f"{c.username}:{pw}".encode()).decode()
            return {"Authorization": f"Basic {cred}"}
        return {}

    async def query_range(
        self,
        query: str,
        start: float,
        end: float,
        step: float,
        *,
        headers: dict[str, str] | None = None,
    ) -> list[Series]:
        """One ``query_range`` request, retried on transient failures."""
        root = self._root
        if root._session is None:
            await root.start()
        session = root._session
        assert session is not None
        headers = self._auth() if headers is None else headers
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        url = self.config.url.rstrip("/") + "/api/v1/query_range"
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        attempt = 0
        while True:
            self.requests += 1
            try:
                async with session.get(url, params=params, headers=headers, timeout=timeout) as r:
                    status, body = r.status, await r.read()
                if status == 200:  # decoded with the connection back in the pool
                    return await asyncio.to_thread(decode_matrix, body)
                err = f"HTTP {status}: {_error_text(body)}"
                if status not in RETRY_STATUSES:
                    raise QueryError(err)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                err = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except ValueError as e:  # a truncated or garbled answer
                err = f"bad answer: {e}"
            if attempt >= self.config.retries:
                raise SourceError(f"{err} (after {attempt + 1} attempts)")
            delay = min(self.config.backoff * 2**attempt, 10.0) * (0.5 + random.random() / 2)
            attempt += 1
            self.retries += 1
            log.debug("query_range: %s; retry %d in %.2fs", err, attempt, delay)
            await asyncio.sleep(delay)

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        grid = make_grid(start, end, step)
        if not len(grid):
            return {}
        headers = self._auth()
        sem = asyncio.Semaphore(self.config.concurrency)
        cols: dict[str, dict[ColumnKey, np.ndarray]] = {}

        async def one(qi: int, q: NamedQuery, lo: int, hi: int) -> str:
            async with sem:
                try:
                    series = await self.query_range(
                        q.query, grid[lo], grid[hi - 1], step, headers=headers
                    )
                except (QueryError, SourceError) as e:
                    return str(e)
            self._place(cols, grid, lo, hi, step, qi, q, series)
            return ""

        jobs = [
            (q, one(qi, q, lo, hi))
            for qi, q in enumerate(self.queries)
            for lo, hi in chunks(len(grid), self.config.max_points)
        ]
        results = await asyncio.gather(*(j for _, j in jobs))
        failed: dict[str, str] = {}
        for (q, _), err in zip(jobs, results, strict=True):
            if err:
                self.failures += 1
                failed.setdefault(q.name, err)
        self._note_errors(failed)
        if failed and len(failed) == len(self.queries):
            raise SourceError(
                f"prometheus {self.config.url}: every query failed: {next(iter(failed.values()))}"
            )
        return build_frames(grid, cols)

    def _place(
        self,
        cols: dict[str, dict[ColumnKey, np.ndarray]],
        grid: np.ndarray,
        lo: int,
        hi: int,
        step: float,
        qi: int,
        q: NamedQuery,
        series: list[Series],
    ) -> None:
        """Put one chunk's series on the grid, combining series that share a column."""
        groups: dict[tuple[str, str | None], list[np.ndarray]] = {}
        for labels, ts, vals in series:
            instance = labels.get("instance")
            if instance is None:
                self._warn_once(
                    q.name,
                    "answers series without an instance label; keep "
                    "instance in by (...) to use them",
                )
                continue
            idx = np.rint((ts - grid[lo]) / step).astype(np.int64)
            ok = (idx >= 0) & (idx < hi - lo)
            col = np.full(hi - lo, np.nan)
            col[idx[ok]] = vals[ok]
            groups.setdefault((instance, labels.get(q.per) if q.per else None), []).append(col)
        for (instance, value), arrs in groups.items():
            full = cols.setdefault(instance, {}).setdefault(
                (qi, q.name, q.per, value), np.full(len(grid), np.nan)
            )
            full[lo:hi] = combine(arrs, q.agg)

    def _warn_once(self, name: str, msg: str) -> None:
        if (name, msg) not in self._warned:
            log.warning("query %s %s", name, msg)
            self._warned.add((name, msg))

    def _note_errors(self, failed: dict[str, str]) -> None:
        """Log a query's failure when it starts or changes, and its recovery."""
        for q in self.queries:
            err = failed.get(q.name)
            prev = self.errors.get(q.name)
            if err and err != prev:
                log.warning(
                    "query %s failed: %s; its columns are NaN until it answers", q.name, err
                )
                self.errors[q.name] = err
            elif not err and prev is not None:
                log.info("query %s answers again", q.name)
                del self.errors[q.name]

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        return await self.fetch(
            *latest_range(step, points, time.time() if now is None else now), step
        )


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return f"{doc.get('errorType', '')}: {doc.get('error', '')}".strip(": ")
    except ValueError:
        return body[:200].decode(errors="replace").strip()


if TYPE_CHECKING:

    def _is_a_source(s: PrometheusSource) -> Source:  # mypy checks the protocol here
        return s
