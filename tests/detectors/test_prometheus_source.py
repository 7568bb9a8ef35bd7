"""PrometheusSource against a fake Prometheus: chunking, retries, auth, frames, errors."""

from __future__ import annotations

import base64
import gc
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dcwatch.detectors.sources.base import SourceError
from dcwatch.detectors.sources.prometheus import (
    PrometheusConfig,
    PrometheusSource,
    chunks,
    decode_matrix,
    gc_paused,
)
from dcwatch.detectors.sources.queries import parse_queries

ServerFactory = Callable[..., Awaitable[TestServer]]

QUERIES = parse_queries(
    [
        {"name": "gpu_temperature", "query": "dcwatch_gpu_temperature_celsius", "per": "gpu"},
        {"name": "node_power", "query": "max by (instance) (dcwatch_node_power_watts)"},
    ]
)


class FakePrometheus:
    """Answers query_range from functions of time; records every request; can fail on demand."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer with before succeeding
        self.bad_queries: set[str] = set()

    def series(self, query: str, times: np.ndarray) -> list[dict[str, Any]]:
        def s(labels: dict[str, str], values: np.ndarray) -> dict[str, Any]:
            pts = [[t, str(v)] for t, v in zip(times.tolist(), values.tolist(), strict=True)]
            return {"metric": labels, "values": pts}

        if query.startswith("dcwatch_gpu_temperature"):
            return [
                s(
                    {"instance": f"n{n}:9478", "gpu": str(g), "uuid": f"G{n}{g}"},
                    40 + g + n * 10 + 0 * times,
                )
                for n in (1, 2)
                for g in (0, 1, 10)
            ] + [s({"gpu": "0"}, 0 * times)]  # no instance: ignored
        # two series for one node and column: combined with the query's agg (max)
        return [
            s({"instance": "n1:9478", "source": "ipmi"}, 500 + 0 * times),
            s({"instance": "n1:9478", "source": "rapl"}, 200 + 0 * times),
        ]

    async def handler(self, request: web.Request) -> web.Response:
        q = request.query
        self.requests.append(
            {
                "query": q["query"],
                "start": float(q["start"]),
                "end": float(q["end"]),
                "step": float(q["step"]),
                "auth": request.headers.get("Authorization"),
            }
        )
        if self.fail_next:
            return web.json_response(
                {"status": "error", "errorType": "unavailable", "error": "busy"},
                status=self.fail_next.pop(0),
            )
        if q["query"] in self.bad_queries:
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
            )
        start, end, step = float(q["start"]), float(q["end"]), float(q["step"])
        if (end - start) / step > 11000:
            return web.json_response(
                {
                    "status": "error",
                    "errorType": "bad_data",
                    "error": "exceeded maximum resolution",
                },
                status=400,
            )
        times = np.arange(start, end + step / 2, step)
        data = {"resultType": "matrix", "result": self.series(q["query"], times)}
        return web.json_response({"status": "success", "data": data})


async def start_fake(aiohttp_server: ServerFactory) -> tuple[FakePrometheus, str]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/prom/api/v1/query_range", fake.handler)
    server = await aiohttp_server(app)
    return fake, str(server.make_url("/prom"))


def source(url: str, queries: Any = QUERIES, **kw: Any) -> PrometheusSource:
    kw.setdefault("backoff", 0.01)
    return PrometheusSource(PrometheusConfig(url=url, **kw), queries)


async def test_fetch_builds_frames_per_instance(aiohttp_server: ServerFactory) -> None:
    fake, url = await start_fake(aiohttp_server)
    src = source(url)
    try:
        frames = await src.fetch(1_000_003, 1_000_060, 15)
    finally:
        await src.close()
    assert sorted(frames) == ["n1:9478", "n2:9478"]
    f1 = frames["n1:9478"]
    np.testing.assert_array_equal(f1.times, [1_000_005, 1_000_020, 1_000_035, 1_000_050])
    assert f1.columns == (
        'gpu_temperature{gpu="0"}',
        'gpu_temperature{gpu="1"}',
        'gpu_temperature{gpu="10"}',
        "node_power",
    )
    np.testing.assert_array_equal(f1.column('gpu_temperature{gpu="10"}'), [60] * 4)
    np.testing.assert_array_equal(f1.column("node_power"), [500] * 4)  # max of ipmi, rapl
    assert frames["n2:9478"].columns == f1.columns[:3]
    assert {r["start"] for r in fake.requests} == {1_000_005}  # aligned grid requested
    assert src.errors == {}


async def test_long_range_is_chunked_within_the_point_limit(aiohttp_server: ServerFactory) -> None:
    fake, url = await start_fake(aiohttp_server)
    src = source(url, QUERIES[:1], max_points=1000)
    try:
        frames = await src.fetch(0, 2500 * 15, 15)  # 2,501 points
    finally:
        await src.close()
    ranges = sorted((r["start"], r["end"]) for r in fake.requests)
    assert ranges == [(0, 999 * 15), (1000 * 15, 1999 * 15), (2000 * 15, 2500 * 15)]
    assert all(r["step"] == 15 for r in fake.requests)
    f = frames["n1:9478"]
    assert len(f) == 2501 and not np.isnan(f.values).any()
    # the default respects Prometheus' own limit of 11,000 points
    assert PrometheusConfig(url="http://x").max_points <= 11000
    assert list(chunks(5, 2)) == [(0, 2), (2, 4), (4, 5)]


async def test_retries_on_503_then_succeeds(aiohttp_server: ServerFactory) -> None:
    fake, url = await start_fake(aiohttp_server)
    fake.fail_next = [503, 502]
    src = source(url, QUERIES[:1], retries=3)
    try:
        frames = await src.fetch(0, 30, 15)
    finally:
        await src.close()
    assert len(fake.requests) == 3 and src.retries == 2
    assert "n1:9478" in frames


async def test_gives_up_after_retries(aiohttp_server: ServerFactory) -> None:
    fake, url = await start_fake(aiohttp_server)
    fake.fail_next = [503] * 10
    src = source(url, QUERIES[:1], retries=2)
    try:
        with pytest.raises(SourceError, match="HTTP 503"):
            await src.fetch(0, 30, 15)
    finally:
        await src.close()
    assert len(fake.requests) == 3


async def test_connection_refused_is_retried_then_raises() -> None:
    src = source("http://127.0.0.1:9", QUERIES[:1], retries=1, timeout=2)
    try:
        with pytest.raises(SourceError, match="every query failed"):
            await src.fetch(0, 30, 15)
    finally:
        await src.close()
    assert src.requests == 2 and src.failures == 1


async def test_bad_query_is_not_retried_and_others_still_answer(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = await start_fake(aiohttp_server)
    fake.bad_queries = {QUERIES[1].query}
    src = source(url)
    caplog.set_level(logging.WARNING, "dcwatch.analyzer.prometheus")
    try:
        frames = await src.fetch(0, 30, 15)
        await src.fetch(0, 30, 15)
        assert len(fake.requests) == 4  # no retries of the 400
        assert "node_power" not in frames["n1:9478"].columns
        assert "bad_data" in src.errors["node_power"]
        assert sum("node_power failed" in r.message for r in caplog.records) == 1
        fake.bad_queries = set()
        await src.fetch(0, 30, 15)
        assert src.errors == {}
    finally:
        await src.close()


async def test_bearer_and_basic_auth_headers(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    fake, url = await start_fake(aiohttp_server)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    src = source(url, QUERIES[:1], bearer_token_file=token)
    try:
        await src.fetch(0, 15, 15)
        token.write_text("rotated")  # re-read on each fetch
        await src.fetch(0, 15, 15)
    finally:
        await src.close()
    assert [r["auth"] for r in fake.requests] == ["Bearer s3cret", "Bearer rotated"]
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    src = source(url, QUERIES[:1], username="dcwatch", password_file=pw)
    try:
        await src.fetch(0, 15, 15)
    finally:
        await src.close()
    expected = "Basic " + base64.b64encode(b"dcwatch:hunter2").decode()
    assert fake.requests[-1]["auth"] == expected


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PrometheusConfig(url="localhost:9090")
    with pytest.raises(ValueError):
        PrometheusConfig(url="http://x", bearer_token="t", username="u")
    with pytest.raises(ValueError):
        PrometheusConfig(url="http://x", max_points=20000)
    ctx = PrometheusSource(
        PrometheusConfig(url="https://x", insecure_skip_verify=True)
    )._ssl_context()
    assert not isinstance(ctx, bool) and ctx.check_hostname is False


def test_decode_matrix_handles_special_values_and_restores_gc() -> None:
    body = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "matrix",
                "result": [
                    {"metric": {"instance": "a"}, "values": [[1, "1.5"], [2, "NaN"], [3, "+Inf"]]},
                    {"metric": {"instance": "b"}, "values": []},
                ],
            },
        }
    ).encode()
    assert gc.isenabled()
    ((labels, ts, vals),) = decode_matrix(body)
    assert gc.isenabled()
    assert labels == {"instance": "a"}
    np.testing.assert_array_equal(ts, [1, 2, 3])
    assert vals[0] == 1.5 and np.isnan(vals[1]) and vals[2] == np.inf
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
