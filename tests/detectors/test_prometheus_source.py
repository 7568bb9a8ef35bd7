"""PrometheusSource against a fake Prometheus: chunking, retries, auth, frames, errors."""

from __future__ import annotations

import base64
import gc
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dcwatch.detectors.shard import Shard
from dcwatch.detectors.sources.base import SourceError
from dcwatch.detectors.sources.prometheus import (
    BadAnswer,
    PrometheusConfig,
    PrometheusSource,
    chunks,
    decode_columns,
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
    assert vals[0] == 1.5 and np.isnan(vals[1]) and np.isnan(vals[2])  # ±Inf: no data
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def _matrix_body(result: list[Any]) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}}
    ).encode()


def test_decode_columns_puts_every_series_in_one_pair_of_arrays() -> None:
    body = _matrix_body(
        [
            {"metric": {"instance": "a", "gpu": "0"}, "values": [[10, "1"], [25.5, "-Inf"]]},
            {"metric": {"instance": "b"}, "values": []},  # no samples: left out
            {"metric": {"instance": "c"}, "values": [[40, "2.5e3"]]},
        ]
    )
    m = decode_columns(body)
    assert m.labels == [{"instance": "a", "gpu": "0"}, {"instance": "c"}]
    np.testing.assert_array_equal(m.offsets, [0, 2, 3])
    np.testing.assert_array_equal(m.times, [10, 25.5, 40])
    assert m.values[0] == 1 and np.isnan(m.values[1]) and m.values[2] == 2500
    series = decode_matrix(body)
    assert [lab for lab, _, _ in series] == m.labels
    np.testing.assert_array_equal(series[1][1], [40])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([[1, 2]], 'series 1: values are not [timestamp, "number"] pairs'),  # a number, not text
        ([[1, "x"]], 'series 1: values are not [timestamp, "number"] pairs'),
        ([["1", "2"]], 'series 1: values are not [timestamp, "number"] pairs'),
        ([[1, "2", 3]], 'series 1: values are not [timestamp, "number"] pairs'),
        ({"a": 1}, "series 1: values is a dict, not a list"),
    ],
)
def test_decode_names_the_bad_series_as_before(bad: Any, message: str) -> None:
    good = {"metric": {"instance": "a"}, "values": [[1, "1"]]}
    body = _matrix_body([good, {"metric": {"instance": "b"}, "values": bad}])
    with pytest.raises(BadAnswer, match=re.escape(message)):
        decode_columns(body)
    with pytest.raises(BadAnswer, match=re.escape(message)):
        decode_matrix(body)


def test_decode_keeps_a_series_without_values_out() -> None:
    body = _matrix_body([{"metric": {"instance": "a"}}, {"metric": {}, "values": [[1, "1"]]}])
    ((labels, ts, vals),) = decode_matrix(body)  # the slow path, same answer
    assert labels == {} and list(ts) == [1.0] and list(vals) == [1.0]


# --- malformed answers, non-finite values, oversized answers, credentials -------------------


def matrix(result: Any) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}}
    ).encode()


GOOD = matrix([{"metric": {"instance": "n1:9478"}, "values": [[0, "1"], [15, "2"]]}])
BAD_ANSWERS = {
    "data null": (b'{"status": "success", "data": null}', "data is null"),
    "result null": (
        b'{"status":"success","data":{"resultType":"matrix","result":null}}',
        "result is null",
    ),
    "result not a list": (matrix({"a": 1}), "result is a dict"),
    "vector not matrix": (
        b'{"status":"success","data":{"resultType":"vector","result":[]}}',
        "resultType is 'vector'",
    ),
    "series not an object": (matrix([1]), "series 0 is a int"),
    "metric null": (matrix([{"metric": None, "values": [[0, "1"]]}]), "series 0: metric"),
    "values not a list": (matrix([{"metric": {}, "values": "1,2"}]), "values is '1,2'"),
    "number not string": (matrix([{"metric": {}, "values": [[0, 1.5]]}]), "not [timestamp"),
    "pair too short": (matrix([{"metric": {}, "values": [[0]]}]), "not [timestamp"),
    "timestamp a string": (matrix([{"metric": {}, "values": [["0", "1"]]}]), "not [timestamp"),
    "value garbage": (matrix([{"metric": {}, "values": [[0, "lots"]]}]), "not [timestamp"),
    "not json": (b"<html>502 Bad Gateway</html>", "not JSON"),
    "truncated": (GOOD[: len(GOOD) // 2], "not JSON"),
    "top level a list": (b"[]", "a JSON list"),
    "200 with status error": (
        b'{"status":"error","errorType":"internal","error":"storage busy"}',
        "status 'error': internal: storage busy",
    ),
}


async def serve_bodies(aiohttp_server: ServerFactory, bodies: list[bytes]) -> tuple[list[int], str]:
    """A Prometheus answering 200 with each of ``bodies`` in turn (the last one for ever)."""
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(1)
        body = bodies[min(len(seen), len(bodies)) - 1]
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/query_range", handler)
    server = await aiohttp_server(app)
    return seen, str(server.make_url(""))


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
async def test_malformed_answer_is_a_counted_retried_source_error(
    aiohttp_server: ServerFactory, case: str
) -> None:
    body, reason = BAD_ANSWERS[case]
    seen, url = await serve_bodies(aiohttp_server, [body])
    src = source(url, QUERIES[:1], retries=2)
    try:
        with pytest.raises(SourceError) as e:
            await src.fetch(0, 15, 15)
    finally:
        await src.close()
    msg = str(e.value)
    assert "bad answer" in msg and reason in msg and "(after 3 attempts)" in msg
    assert "\n" not in msg and len(msg) < 400
    assert len(seen) == 3 and src.bad_answers == 3 and src.failures == 1


async def test_a_malformed_answer_then_a_good_one_succeeds(aiohttp_server: ServerFactory) -> None:
    seen, url = await serve_bodies(aiohttp_server, [b'{"status":"success","data":null}', GOOD])
    src = source(url, QUERIES[:1], retries=2)
    try:
        frames = await src.fetch(0, 15, 15)
    finally:
        await src.close()
    np.testing.assert_array_equal(frames["n1:9478"].values[:, 0], [1, 2])
    assert len(seen) == 2 and src.bad_answers == 1 and src.errors == {}


async def test_non_finite_values_become_no_data_and_are_counted(
    aiohttp_server: ServerFactory,
) -> None:
    pts = [[0, "1"], [15, "NaN"], [30, "+Inf"], [45, "-Inf"], [60, "5"]]
    _, url = await serve_bodies(
        aiohttp_server, [matrix([{"metric": {"instance": "a"}, "values": pts}])]
    )
    src = source(url, QUERIES[:1])
    try:
        frames = await src.fetch(0, 60, 15)
    finally:
        await src.close()
    col = frames["a"].values[:, 0]
    assert col[0] == 1 and col[4] == 5 and np.isnan(col[1:4]).all()
    assert src.nonfinite_values == 3


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_answer_over_the_size_bound_is_refused_not_retried(
    aiohttp_server: ServerFactory, chunked: bool
) -> None:
    seen: list[int] = []
    big = matrix([{"metric": {"instance": f"n{i}"}, "values": [[0, "1"]]} for i in range(2000)])

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(1)
        if not chunked:
            return web.Response(body=big, content_type="application/json")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(big), 4096):
            await resp.write(big[i : i + 4096])
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/query_range", handler)
    server = await aiohttp_server(app)
    src = source(str(server.make_url("")), QUERIES[:1], max_response_bytes=16384, retries=3)
    try:
        with pytest.raises(SourceError, match="max_response_bytes=16384"):
            await src.fetch(0, 15, 15)
    finally:
        await src.close()
    assert len(seen) == 1 and src.failures == 1
    # under the bound the same answer is read
    src = source(str(server.make_url("")), QUERIES[:1], max_response_bytes=len(big))
    try:
        assert len(await src.fetch(0, 15, 15)) == 2000
    finally:
        await src.close()


async def test_credentials_in_the_url_are_used_and_never_shown(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = await start_fake(aiohttp_server)
    with_password = url.replace("http://", "http://dcwatch:hunter2@")
    src = source(with_password, QUERIES[:1])
    try:
        await src.fetch(0, 15, 15)
    finally:
        await src.close()
    assert fake.requests[-1]["auth"] == "Basic " + base64.b64encode(b"dcwatch:hunter2").decode()
    assert src.name == f"prometheus {url}"
    assert "hunter2" not in repr(src.config) and "hunter2" not in repr(
        PrometheusConfig(url="http://x:9090", password="hunter2")
    )

    caplog.set_level(logging.DEBUG, "dcwatch.analyzer.prometheus")
    down = source("http://dcwatch:hunter2@127.0.0.1:9", QUERIES[:1], retries=1, timeout=2)
    try:
        with pytest.raises(SourceError) as e:
            await down.fetch(0, 15, 15)
    finally:
        await down.close()
    assert "http://127.0.0.1:9" in str(e.value)
    assert "hunter2" not in str(e.value) and "hunter2" not in caplog.text
    with pytest.raises(ValueError) as bad:
        PrometheusConfig(url="prom://dcwatch:hunter2@x:9090")
    assert "hunter2" not in str(bad.value)
    with pytest.raises(ValueError, match="bearer token or basic auth"):
        PrometheusConfig(url="http://u:p@x:9090", bearer_token="t")


async def test_unreadable_secret_file_is_a_source_error(tmp_path: Path) -> None:
    src = source("http://127.0.0.1:9", QUERIES[:1], bearer_token_file=tmp_path / "missing")
    try:
        with pytest.raises(SourceError, match=r"bearer_token_file .*missing: cannot read"):
            await src.fetch(0, 15, 15)
    finally:
        await src.close()
    assert src.requests == 0


# --- shards and instance batches ----------------------------------------------------------------


class ShardedPrometheus:
    """Knows twelve instances; answers ``instance=~"..."`` selectors like Prometheus would (the
    regex of the first matcher), by GET or form POST; records method, query and label lookups."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.calls: list[tuple[str, str]] = []  # (method, query or match[])

    async def values(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.query["match[]"]))
        return web.json_response({"status": "success", "data": self.nodes})

    async def query_range(self, request: web.Request) -> web.Response:
        q = dict(request.query) if request.method == "GET" else dict(await request.post())
        self.calls.append((request.method, q["query"]))
        m = re.search(r'instance=~"((?:[^"\\]|\\.)*)"', q["query"])
        regex = None if m is None else m[1].replace("\\\\", "\\")
        t = float(q["end"])
        result = [
            {"metric": {"instance": n}, "values": [[t, "1"]]}
            for n in self.nodes
            if regex is None or re.fullmatch(regex, n)
        ]
        return web.json_response(
            {"status": "success", "data": {"resultType": "matrix", "result": result}}
        )


async def test_a_shard_reads_only_its_instances_in_batches(aiohttp_server: ServerFactory) -> None:
    nodes = [f"gpu-{i}.rack-{i % 3}.example.org:9478" for i in range(12)]
    fake = ShardedPrometheus(nodes)
    app = web.Application()
    app.router.add_get("/api/v1/label/instance/values", fake.values)
    app.router.add_route("*", "/api/v1/query_range", fake.query_range)
    server = await aiohttp_server(app)
    seen: list[str] = []
    for i in range(3):
        src = source(str(server.make_url("")), shard=Shard(i, 3), instance_batch=2)
        try:
            frames = await src.fetch(999_990, 999_990, 15)
            again = await src.latest(15, 1, 999_990)
        finally:
            await src.close()
        mine = Shard(i, 3).select(nodes)
        assert sorted(frames) == mine == sorted(again) and mine
        seen += mine
    assert sorted(seen) == sorted(nodes)  # every node on exactly one shard
    lookups = [c for c in fake.calls if "__name__" in c[1]]
    assert len(lookups) == 3  # listed once per shard: the second fetch used the cached list
    assert lookups[0][1] == '{__name__=~"dcwatch_gpu_temperature_celsius|dcwatch_node_power_watts"}'
    queries = [c for c in fake.calls if c not in lookups]
    assert all("instance=~" in q for _, q in queries)
    # each request names at most 2 instances: len(shard) / 2 requests per query and fetch
    assert len(queries) == sum(2 * 2 * -(-len(Shard(i, 3).select(nodes)) // 2) for i in range(3))


async def test_many_instances_go_by_post(aiohttp_server: ServerFactory) -> None:
    nodes = [f"a-very-long-host-name-{i:04d}.datacenter.example.org:9478" for i in range(300)]
    fake = ShardedPrometheus(nodes)
    app = web.Application()
    app.router.add_route("*", "/api/v1/query_range", fake.query_range)
    server = await aiohttp_server(app)
    src = source(str(server.make_url("")))
    try:
        frames = await src.fetch(999_990, 999_990, 15, instances=nodes[:250])
        few = await src.fetch(999_990, 999_990, 15, instances=nodes[:2])
    finally:
        await src.close()
    assert sorted(frames) == nodes[:250] and sorted(few) == nodes[:2]
    assert [m for m, _ in fake.calls] == ["POST", "POST", "GET", "GET"]
