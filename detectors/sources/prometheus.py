"""The Prometheus source: named PromQL queries through ``/api/v1/query_range``, as frames.

Long ranges are split so no request asks for more than ``max_points`` points per series
(Prometheus refuses more than 11,000). Each request is retried with exponential backoff on 5xx,
429, timeouts, connection errors and answers that are not a well-formed matrix (not JSON,
truncated, ``"data": null``, ``"status": "error"`` with HTTP 200: a proxy or a Prometheus in
trouble); a 4xx (a bad query) and an answer over ``max_response_bytes`` are not retried. A
request that still fails leaves its range ``NaN`` and is recorded in ``errors``; only when every
request of a fetch fails does ``fetch`` raise :class:`~dcwatch.detectors.sources.base.SourceError`.
Values that are not finite (``NaN``, ``±Inf``) become ``NaN``, "no data" in a frame, and are
counted in ``nonfinite_values``. Credentials in the URL are used as basic auth and never shown.

Sharded (``shard``), or asked for some instances (a fit), the source lists the instances
through ``/api/v1/label/instance/values`` (Prometheus' index: no samples read) and adds
``instance=~"a|b|..."`` to each query's selectors (:mod:`~dcwatch.detectors.sources.promql`), at
most ``instance_batch`` instances per request, so Prometheus reads only those nodes' series and
no answer grows with the fleet.

Decoding answers runs off the event loop with the garbage collector paused (it would walk the
fresh lists again and again), columnar (:func:`decode_columns`: all points of an answer in one
pair of arrays, no Python loop per point), with orjson when it happens to be installed (not a
dependency: with this decoder it saves ~15% of the JSON parse, measured).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import math
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import numpy as np

from dcwatch.detectors.frame import Frame, GridColumns, latest_range, make_grid
from dcwatch.detectors.shard import Shard
from dcwatch.detectors.sources.base import SourceError, TargetStatus
from dcwatch.detectors.sources.promql import metric_names, with_instances
from dcwatch.detectors.sources.queries import NamedQuery, load_queries
from dcwatch.urls import redact_text, redact_url, redacted_repr, url_credentials

if TYPE_CHECKING:
    from dcwatch.detectors.sources.base import Source

log = logging.getLogger("dcwatch.analyzer.prometheus")

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

PROMETHEUS_MAX_POINTS = 11_000
MAX_RESPONSE_BYTES = 256 * 2**20
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, repr=False)
class PrometheusConfig:
    url: str  # may carry user:password@ (used as basic auth, never shown)
    bearer_token: str = field(default="", repr=False)
    bearer_token_file: Path | None = None  # re-read on each fetch: tokens rotate
    username: str = ""
    password: str = field(default="", repr=False)
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
    max_response_bytes: int = MAX_RESPONSE_BYTES  # per answer, decompressed
    shard: Shard = field(default_factory=Shard)  # the nodes this analyzer watches
    instance_batch: int = 1000  # instances named in one request
    instances_refresh: float = 60.0  # seconds between two listings of the instances

    __repr__ = redacted_repr  # URLs may carry a password

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"prometheus url must be http(s)://..., got {redact_url(self.url)!r}")
        try:
            _, in_url = url_credentials(self.url)
        except ValueError as e:
            raise ValueError(f"prometheus url {redact_url(self.url)!r}: {e}") from None
        basic = bool(self.username or in_url)
        if (self.bearer_token or self.bearer_token_file) and basic:
            raise ValueError("prometheus: give a bearer token or basic auth, not both")
        if in_url and self.username:
            raise ValueError("prometheus: give the user in url or in username, not both")
        if self.max_response_bytes < 1024:
            raise ValueError("max_response_bytes must be >= 1024")
        if not 2 <= self.max_points <= PROMETHEUS_MAX_POINTS:
            raise ValueError(f"max_points must be in 2..{PROMETHEUS_MAX_POINTS}")
        if self.instance_batch < 1:
            raise ValueError("instance_batch must be >= 1")
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


class BadAnswer(ValueError):
    """An answer that is not a well-formed ``query_range`` matrix (retried: it may be a proxy's
    error page or a Prometheus restarting)."""


@dataclass(frozen=True, eq=False)
class Matrix:
    """A decoded ``query_range`` answer, columnar: series ``i`` (``labels[i]``) holds the points
    ``offsets[i]:offsets[i + 1]`` of ``times`` and ``values``; series without samples are left
    out. One pair of arrays for the whole answer, so placing it on a grid is a few array
    operations rather than a few per series."""

    labels: list[dict[str, str]]
    offsets: np.ndarray  # int64, len(labels) + 1
    times: np.ndarray  # float64
    values: np.ndarray  # float64, non-finite as NaN

    def series(self) -> list[Series]:
        """Per series ``(labels, times, values)``, the arrays views of the matrix's."""
        if not self.labels:
            return []
        cuts = self.offsets[1:-1]
        return list(
            zip(self.labels, np.split(self.times, cuts), np.split(self.values, cuts), strict=True)
        )


def decode_matrix(body: bytes) -> list[Series]:
    """A ``query_range`` answer as ``(labels, times, values)`` per series; non-finite values
    (``NaN``, ``±Inf``) come out as NaN. Raises :class:`BadAnswer` for anything but a matrix."""
    return decode_columns(body).series()


def decode_columns(body: bytes) -> Matrix:
    """:func:`decode_matrix` as one :class:`Matrix`.

    The points of all series are converted at once (one ``np.array`` for the timestamps, one for
    the values' strings) after a type check done with ``map`` (no Python loop per point); an
    answer that fails the fast path is decoded series by series, which names the bad series."""
    with gc_paused():
        try:
            doc = _loads(body)
        except ValueError as e:  # not JSON, truncated, not UTF-8
            raise BadAnswer(f"not JSON ({_short(e)})") from None
        if not isinstance(doc, dict):
            raise BadAnswer(f"a JSON {type(doc).__name__}, not an object")
        if doc.get("status") != "success":
            raise BadAnswer(f"status {doc.get('status')!r}: {_error_of(doc) or 'no error given'}")
        data = doc.get("data")
        if not isinstance(data, dict):
            raise BadAnswer(f"data is {_kind(data)}, not an object")
        if data.get("resultType") != "matrix":
            raise BadAnswer(f"resultType is {_kind(data.get('resultType'))}, not 'matrix'")
        result = data.get("result")
        if not isinstance(result, list):
            raise BadAnswer(f"result is {_kind(result)}, not a list")
        return _fast_columns(result) or _slow_columns(result)


def _fast_columns(result: list[Any]) -> Matrix | None:
    """The whole answer's points in two conversions; None when anything is not as Prometheus
    writes it (then :func:`_slow_columns` decides, and names the culprit)."""
    labels: list[dict[str, str]] = []
    points: list[list[Any]] = []
    for r in result:
        if type(r) is not dict:
            return None
        metric, values = r.get("metric"), r.get("values")
        if type(metric) is not dict or type(values) is not list:
            return None  # also a series without "values" (native histograms): rare, slow path
        if values:
            labels.append(metric)
            points.append(values)
    # JSON object keys are strings: only the label values need a look.
    if not set(map(type, chain.from_iterable(map(dict.values, labels)))) <= {str}:
        return None
    pairs = list(chain.from_iterable(points))
    if set(map(type, pairs)) - {list} or set(map(len, pairs)) - {2}:
        return None
    flat = list(chain.from_iterable(pairs))
    ts_raw, vals_raw = flat[0::2], flat[1::2]
    if set(map(type, ts_raw)) - {int, float} or set(map(type, vals_raw)) - {str}:
        return None
    try:
        ts = np.array(ts_raw, dtype=np.float64)
        vals = np.array(vals_raw, dtype=np.float64)  # "1.5", "NaN", "+Inf"
    except (ValueError, OverflowError):
        return None
    if not np.isfinite(ts).all():
        return None
    vals[~np.isfinite(vals)] = np.nan
    offsets = np.zeros(len(points) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, points), np.int64, len(points)), out=offsets[1:])
    return Matrix(labels, offsets, ts, vals)


def _slow_columns(result: list[Any]) -> Matrix:
    """Series by series, each checked on its own (:func:`_series`)."""
    series = [s for i, r in enumerate(result) if (s := _series(i, r)) is not None]
    offsets = np.zeros(len(series) + 1, dtype=np.int64)
    np.cumsum([len(t) for _, t, _ in series], out=offsets[1:])
    if not series:
        return Matrix([], offsets, np.zeros(0), np.zeros(0))
    return Matrix(
        [lab for lab, _, _ in series],
        offsets,
        np.concatenate([t for _, t, _ in series]),
        np.concatenate([v for _, _, v in series]),
    )


def _series(i: int, r: Any) -> Series | None:
    """One element of ``result``; None for a series without float samples."""
    if not isinstance(r, dict):
        raise BadAnswer(f"series {i} is {_kind(r)}, not an object")
    labels = r.get("metric")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise BadAnswer(f"series {i}: metric is not a mapping of label names to strings")
    values = r.get("values")
    if values is None or values == []:  # only native histograms, or nothing in the range
        return None
    if not isinstance(values, list):
        raise BadAnswer(f"series {i}: values is {_kind(values)}, not a list")
    try:
        if not all(type(p) is list and len(p) == 2 and type(p[1]) is str for p in values):
            raise ValueError
        ts_raw, vals_raw = zip(*values, strict=True)
        ts = np.array(ts_raw)
        if ts.ndim != 1 or ts.dtype.kind not in "iuf":
            raise ValueError
        ts = ts.astype(np.float64)
        vals = np.array(vals_raw).astype(np.float64)  # Prometheus' strings: "1.5", "NaN", "+Inf"
    except ValueError:
        raise BadAnswer(f'series {i}: values are not [timestamp, "number"] pairs') from None
    if not np.isfinite(ts).all():
        raise BadAnswer(f"series {i}: a timestamp is not finite")
    vals[~np.isfinite(vals)] = np.nan
    return labels, ts, vals


def _decode_values(body: bytes) -> list[str]:
    """A label values answer (``/api/v1/label/<name>/values``) as a list of strings."""
    try:
        doc = _loads(body)
    except ValueError as e:
        raise BadAnswer(f"not JSON ({_short(e)})") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(data, list):
        raise BadAnswer("not a label values answer")
    return [v for v in data if isinstance(v, str)]


def _decode_counted(body: bytes) -> tuple[Matrix, int]:
    """:func:`decode_columns` and the number of non-finite samples it turned into NaN."""
    m = decode_columns(body)
    return m, int(np.isnan(m.values).sum())


def _kind(v: Any) -> str:
    """How an answer's value is described in an error: ``null``, ``a str``, ``'vector'``."""
    if v is None:
        return "null"
    return repr(v)[:40] if isinstance(v, str) else f"a {type(v).__name__}"


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:120]


def _error_of(doc: dict[str, Any]) -> str:
    """Prometheus' ``errorType: error``, shortened, from an error answer."""
    text = f"{doc.get('errorType', '')}: {doc.get('error', '')}".strip(": ")
    return " ".join(text.split())[:300]


class QueryError(Exception):
    """Prometheus answered, and said no (bad query, 4xx): retrying will not help."""


class TooLarge(SourceError):
    """An answer over ``max_response_bytes``: not retried (it would be as large again)."""


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
        self.bad_answers = 0  # answers that were not a well-formed matrix (each retry counts)
        self.nonfinite_values = 0  # NaN and ±Inf samples received, kept out as NaN
        # cumulative seconds: "wait" for answers (Prometheus' work and the transfer), "decode"
        # (JSON to arrays, off the loop), "align" (arrays onto the grid, frames built)
        self.seconds = {"wait": 0.0, "decode": 0.0, "align": 0.0}
        self._url, self._url_auth = url_credentials(config.url)
        self.name = f"prometheus {self._url}"  # for messages: no credentials
        self._warned: set[tuple[str, str]] = set()
        self._root = self  # a view's root is the source whose session it shares
        self._listed: tuple[float, list[str]] = (-math.inf, [])  # (monotonic time, instances)

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
        """The Authorization header; files are re-read each fetch so rotated secrets apply.

        Raises SourceError when a secret file cannot be read."""
        c = self.config
        token = c.bearer_token
        if c.bearer_token_file:
            token = _read_secret(c.bearer_token_file, "bearer_token_file").strip()
        if token:
            return {"Authorization": f"Bearer {token}"}
        user, pw = self._url_auth or (c.username, c.password)
        if user:
            if c.password_file:
                pw = _read_secret(c.password_file, "password_file").rstrip("\n")
            cred = base64.b64encode(f"{user}:{pw}".encode()).decode()
            return {"Authorization": f"Basic {cred}"}
        return {}

    async def _read(self, r: aiohttp.ClientResponse) -> bytes:
        """The body, read as it streams in, refused once over ``max_response_bytes``."""
        limit = self.config.max_response_bytes
        if r.content_length is not None and r.content_length > limit:
            raise TooLarge(f"answer of {r.content_length} bytes is over max_response_bytes={limit}")
        parts, size = [], 0
        async for chunk in r.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"answer over max_response_bytes={limit}: refused")
            parts.append(chunk)
        return b"".join(parts)

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
        return (await self._query_matrix(query, start, end, step, headers)).series()

    async def _query_matrix(
        self, query: str, start: float, end: float, step: float, headers: dict[str, str] | None
    ) -> Matrix:
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        matrix, nonfinite = await self._call("query_range", params, _decode_counted, headers)
        if nonfinite:
            self.nonfinite_values += nonfinite
            self._warn_once(query[:120], "answers NaN or ±Inf samples: kept out as no data")
        return matrix

    async def _call(
        self,
        path: str,
        params: dict[str, str],
        decode: Callable[[bytes], Any],
        headers: dict[str, str] | None = None,
    ) -> Any:
        """GET (POST, form-encoded, when the parameters are long: a query naming a thousand
        instances) ``/api/v1/<path>``, the answer decoded off the loop, retried as above."""
        root = self._root
        if root._session is None:
            await root.start()
        session = root._session
        assert session is not None
        headers = self._auth() if headers is None else headers
        url = self._url.rstrip("/") + "/api/v1/" + path
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        post = sum(len(v) for v in params.values()) > 4000
        attempt = 0
        while True:
            self.requests += 1
            try:
                kw: dict[str, Any] = {"data": params} if post else {"params": params}
                t0 = time.perf_counter()
                async with session.request(
                    "POST" if post else "GET", url, headers=headers, timeout=timeout, **kw
                ) as r:
                    status, body = r.status, await self._read(r)
                t1 = time.perf_counter()
                self.seconds["wait"] += t1 - t0
                if status == 200:  # decoded with the connection back in the pool
                    out = await asyncio.to_thread(decode, body)
                    self.seconds["decode"] += time.perf_counter() - t1
                    return out
                err = f"HTTP {status}: {_error_text(body)}"
                if status not in RETRY_STATUSES:
                    raise QueryError(err)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                err = redact_text(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            except BadAnswer as e:
                self.bad_answers += 1
                err = f"bad answer: {e}"
            if attempt >= self.config.retries:
                raise SourceError(f"{err} (after {attempt + 1} attempts)")
            delay = min(self.config.backoff * 2**attempt, 10.0) * (0.5 + random.random() / 2)
            attempt += 1
            self.retries += 1
            log.debug("%s: %s; retry %d in %.2fs", path, err, attempt, delay)
            await asyncio.sleep(delay)

    async def instances(self) -> list[str]:
        """The instances of this source's shard that Prometheus has series of in the last 15
        minutes, from its index (no samples read); listed at most every ``instances_refresh``
        seconds, the last list kept while a listing fails."""
        at, listed = self._listed
        if time.monotonic() - at < self.config.instances_refresh:
            return listed
        names = sorted({n for q in self.queries for n in metric_names(q.query) if n})
        match = '{__name__=~"' + "|".join(re.escape(n) for n in names) + '"}' if names else "up"
        now = time.time()
        params = {"match[]": match, "start": f"{now - 900:.3f}", "end": f"{now:.3f}"}
        try:
            values = await self._call("label/instance/values", params, _decode_values)
        except (QueryError, SourceError) as e:
            if at == -math.inf:
                raise SourceError(f"{self.name}: cannot list instances: {e}") from None
            log.warning("cannot list instances (%s); keeping the last %d", e, len(listed))
            return listed
        self._listed = (time.monotonic(), self.config.shard.select(values))
        return self._listed[1]

    async def fetch(
        self, start: float, end: float, step: float, instances: Collection[str] | None = None
    ) -> dict[str, Frame]:
        grid = make_grid(start, end, step)
        if not len(grid):
            return {}
        if instances is None and not self.config.shard.whole:
            instances = await self.instances()
        headers = self._auth()  # before the listing's await would be as good; once per fetch
        sem = asyncio.Semaphore(self.config.concurrency)
        cols = GridColumns(grid)
        if instances is None:
            batches: list[list[str] | None] = [None]
        else:
            wanted = sorted(instances)
            if not wanted:
                return {}
            size = self.config.instance_batch
            batches = [wanted[i : i + size] for i in range(0, len(wanted), size)]

        async def one(qi: int, q: NamedQuery, batch: list[str] | None, lo: int, hi: int) -> str:
            query = q.query if batch is None else with_instances(q.query, batch) or q.query
            async with sem:
                try:
                    matrix = await self._query_matrix(query, grid[lo], grid[hi - 1], step, headers)
                except (QueryError, SourceError) as e:
                    return str(e)
            t0 = time.perf_counter()
            self._place(cols, lo, hi, step, qi, q, matrix, batch)
            self.seconds["align"] += time.perf_counter() - t0
            return ""

        jobs = [
            (q, one(qi, q, batch, lo, hi))
            for qi, q in enumerate(self.queries)
            for batch in batches
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
            raise SourceError(f"{self.name}: every query failed: {next(iter(failed.values()))}")
        t0 = time.perf_counter()
        frames = cols.frames()
        self.seconds["align"] += time.perf_counter() - t0
        return frames

    def _place(
        self,
        cols: GridColumns,
        lo: int,
        hi: int,
        step: float,
        qi: int,
        q: NamedQuery,
        matrix: Matrix,
        batch: list[str] | None = None,
    ) -> None:
        """Put one chunk's series on the grid (only the ``batch``'s instances, when one is given:
        a query the rewrite could not restrict): all points land in one ``(series, hi - lo)``
        block in one scatter, and ``cols`` combines series that share a column."""
        n = len(matrix.labels)
        if not n:
            return
        width = hi - lo
        block = np.full((n, width), np.nan)
        idx = np.rint((matrix.times - cols.grid[lo]) / step).astype(np.int64)
        row = np.repeat(np.arange(n), np.diff(matrix.offsets))
        ok = (idx >= 0) & (idx < width)
        block[row[ok], idx[ok]] = matrix.values[ok]
        labels = matrix.labels
        instances = [lab.get("instance") for lab in labels]
        if None in instances:
            self._warn_once(
                q.name,
                "answers series without an instance label; keep instance in by (...) to use them",
            )
        if None in instances or batch is not None:
            keep = set(batch) if batch is not None else None
            rows = [
                i
                for i, instance in enumerate(instances)
                if instance is not None and (keep is None or instance in keep)
            ]
            if len(rows) < n:
                block, labels = block[rows], [labels[i] for i in rows]
                instances = [instances[i] for i in rows]
        per = q.per
        per_values = [lab.get(per) for lab in labels] if per else None
        present = cast("list[str]", instances)  # the series without one were left out above
        cols.add((qi, q.name, per), q.agg, lo, present, per_values, block)

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
    """What an error answer says: Prometheus' error, else the start of the body, one line."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and (text := _error_of(doc)):
        return text
    return " ".join(body[:200].decode(errors="replace").split())


def _read_secret(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise SourceError(f"prometheus {key} {path}: cannot read: {detail}") from None


if TYPE_CHECKING:

    def _is_a_source(s: PrometheusSource) -> Source:  # mypy checks the protocol here
        return s
