"""The embedded scraper and store against hostile or broken targets: limits, garbage, NaN, hung
targets, instance identity, credentials and TLS, a damaged store."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import random
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.exposition import generate_latest

from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.sources.base import SourceError
from dcwatch.detectors.sources.parse import ParseError, parse_body, parse_exposition
from dcwatch.detectors.sources.scraper import EmbeddedConfig, EmbeddedSource, Scraper
from dcwatch.detectors.sources.store import AsyncStore, Scrape, Store
from dcwatch.detectors.sources.targets import (
    instance_of,
    parse_targets,
    parse_targets_file,
)
from dcwatch.detectors.web.metrics import analyzer_families
from dcwatch.urls import redact_url as redact
from tests.agent.test_webconfig import self_signed, signed_by
from tests.detectors.test_scraper import EXPOSITION, QUERIES, cfg

ServerFactory = Callable[..., Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GOOD = EXPOSITION.format(t0=41, t1=61, rx=1000)
TEMP = "dcwatch_gpu_temperature_celsius"
SECRET = "s3cr3t-Pa55"


async def serve(aiohttp_server: ServerFactory, handler: Handler, path: str = "/metrics") -> str:
    app = web.Application()
    app.router.add_get(path, handler)
    return str((await aiohttp_server(app)).make_url(path))


def text(body: str | bytes, **kw: Any) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        data = body.encode() if isinstance(body, str) else body
        return web.Response(body=data, content_type="text/plain", **kw)

    return handler


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(tmp_path / "db", retention=3600)
    await s.open()
    yield s
    await s.close()


def exposition(src: Any) -> str:
    """The analyzer's /metrics for a source (the rest of the analyzer empty)."""
    an = SimpleNamespace(
        nodes={},
        pass_duration=0.0,
        passes=0,
        pass_phases={},
        cfg=SimpleNamespace(shard=SimpleNamespace(index=0, count=1)),
        source_errors=0,
        source=src,
        sender=SimpleNamespace(collect=lambda: []),
    )

    class Registry:
        def collect(self) -> Any:
            return analyzer_families(cast(Any, an))

    return generate_latest(cast(Any, Registry())).decode()


# --- limits -------------------------------------------------------------------------------


async def test_body_size_limit_counted_while_streaming(
    aiohttp_server: ServerFactory, tmp_path: Path, store: AsyncStore
) -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        await resp.prepare(request)
        line = f'{TEMP}{{gpu="0"}} 1\n'.encode() * 1000
        while True:  # no Content-Length, never ends: only a streaming bound stops it
            await resp.write(line)
            sent += len(line)

    url = await serve(aiohttp_server, endless)
    small = await serve(aiohttp_server, text(GOOD))
    scraper = Scraper(
        cfg(tmp_path, targets=(url, small), body_size_limit=100_000, scrape_timeout=5.0), store
    )
    t0 = time.monotonic()
    assert await scraper.scrape_round(1000.0) == 4  # the small target is stored
    assert time.monotonic() - t0 < 3  # stopped at the limit, not at the timeout
    st = scraper.targets[url]
    assert st.up is False and st.reason == "body_size_limit" and st.errors == {"body_size_limit": 1}
    assert "100000" in st.last_error
    assert list(await store.read(0, 2000)) == [instance_of(small)]


async def test_declared_length_and_gzip_bomb_over_the_limit(
    aiohttp_server: ServerFactory, tmp_path: Path, store: AsyncStore
) -> None:
    big = GOOD * 100  # ~37 kB
    bomb = gzip.compress(f'{TEMP}{{gpu="0"}} 1\n'.encode() * 20_000)  # ~1 kB -> 600 kB
    assert len(bomb) < 10_000
    declared = await serve(aiohttp_server, text(big))
    zipped = await serve(aiohttp_server, text(bomb, headers={"Content-Encoding": "gzip"}))
    ok = await serve(
        aiohttp_server, text(gzip.compress(GOOD.encode()), headers={"Content-Encoding": "gzip"})
    )
    scraper = Scraper(cfg(tmp_path, targets=(declared, zipped, ok), body_size_limit=10_000), store)
    assert await scraper.scrape_round(1000.0) == 4
    for url in (declared, zipped):
        assert scraper.targets[url].reason == "body_size_limit"
    assert scraper.targets[ok].up is True  # gzip within the limit is fine


async def test_sample_limit_refuses_the_whole_scrape(
    aiohttp_server: ServerFactory, tmp_path: Path, store: AsyncStore
) -> None:
    many = "".join(f'{TEMP}{{gpu="{i}"}} {i}\n' for i in range(30))
    url = await serve(aiohttp_server, text(many))
    scraper = Scraper(cfg(tmp_path, targets=(url,), sample_limit=29), store)
    assert await scraper.scrape_round(1000.0) == 0
    assert scraper.targets[url].reason == "sample_limit"
    assert await store.read(0, 2000) == {}
    scraper = Scraper(cfg(tmp_path, targets=(url,), sample_limit=30), store)
    assert await scraper.scrape_round(1010.0) == 30


def test_limit_settings_reach_the_embedded_config(tmp_path: Path) -> None:
    c = load_analyzer_config(
        [
            "--target=n1:9478",
            f"--state-dir={tmp_path}",
            "--embedded-body-size-limit=1000000",
            "--embedded-sample-limit=500",
        ],
        env={"DCWATCH_EMBEDDED_MAX_DB_BYTES": str(1 << 30)},
    ).embedded
    assert (c.body_size_limit, c.sample_limit, c.max_db_bytes) == (1_000_000, 500, 1 << 30)
    defaults = EmbeddedConfig()
    assert defaults.body_size_limit == 16 << 20 and defaults.sample_limit == 20_000
    for bad in ({"sample_limit": 0}, {"body_size_limit": -1}, {"max_db_bytes": 1000}):
        with pytest.raises(ValueError):
            EmbeddedConfig(**bad)  # type: ignore[arg-type]


def test_store_size_bound_deletes_the_oldest_first(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    bound = 400_000
    for k in range(300):  # a churning target: new series every scrape
        keys = [(TEMP, f'gpu="{j}",run="{k}"') for j in range(50)]
        s.write([Scrape("a:1", 1000.0 + 15 * k, keys, [float(k)] * 50)])
        s.write([Scrape("b:1", 1000.0 + 15 * k, [(TEMP, 'gpu="0"')], [float(k)])])
        s.bound_size(bound)
    assert s.used_bytes() <= bound
    got = s.read(0, 1e9)
    kept = got["b:1"][(TEMP, 'gpu="0"')][0]
    assert kept[-1] == 1000.0 + 15 * 299  # the newest scrape is there
    assert kept[0] > 1000.0  # the oldest went
    np.testing.assert_array_equal(np.diff(kept), 15.0)  # and only the oldest: no holes
    n_series = s.db.execute("SELECT count(*) FROM series").fetchone()[0]
    assert n_series == 50 * len(kept) + 1  # series of deleted scrapes went with them
    s.close()


# --- garbage, partial bodies, NaN -----------------------------------------------------------


GARBAGE = {
    "random bytes": bytes(random.Random(1).randrange(256) for _ in range(4000)),
    "random ascii": "".join(random.Random(2).choice('ab{}= \n"1') for _ in range(4000)),
    "html": "<html><body><h1>502 Bad Gateway</h1></body></html>\n",
    "truncated line": GOOD + f'{TEMP}{{gpu="2",uu',
    "no final newline": GOOD.rstrip("\n"),
    "valid then garbage": GOOD + "this is not a sample\n",
    "bad name, not kept": GOOD + "9bad_name 1\n",
    "bad labels": GOOD + f"{TEMP}{{gpu=0}} 1\n",
    "trailing junk": GOOD + f'{TEMP}{{gpu="3"}} 1 2 3\n',
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_is_down_with_reason_parse_and_nothing_stored(
    aiohttp_server: ServerFactory, tmp_path: Path, store: AsyncStore, body: str | bytes
) -> None:
    url = await serve(aiohttp_server, text(body))
    scraper = Scraper(cfg(tmp_path, targets=(url,)), store, keep={TEMP})
    assert await scraper.scrape_round(1000.0) == 0
    st = scraper.targets[url]
    assert st.up is False and st.reason == "parse" and st.last_error.startswith("bad exposition")
    assert await store.read(0, 2000) == {}


def test_parser_accepts_what_prometheus_accepts() -> None:
    body = (
        "# HELP x a\n# TYPE x counter\n"
        'x{a="}{,\\"\\\\",b="2",} 1 1700000000000\n'
        "y 2\r\n"
        'z{le="+Inf"} 3 # {trace_id="1"} 1 1.5\n'
        "# EOF\n"
    )
    p = parse_body(body.encode(), None, 10)
    assert p.values == [1.0, 2.0, 3.0] and p.keys[1] == ("y", "")
    with pytest.raises(ParseError):
        parse_exposition("x 1\nbad name 2\n", keep={"x"})  # checked though not kept


async def test_nonfinite_samples_counted_and_never_stored(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    body = GOOD.replace(" 41\n", " NaN\n").replace(" 61\n", " +Inf\n") + f'{TEMP}{{gpu="2"}} -Inf\n'
    url = await serve(aiohttp_server, text(body))
    src = EmbeddedSource(cfg(tmp_path, targets=(url,)), QUERIES)
    await src.start(scrape=False)
    try:
        for k in range(3):
            assert await src.scraper.scrape_round(1000.0 + 10 * k) == 1  # rx only
        [status] = src.target_status()
        assert status.up is True and status.nonfinite == 9
        stored = (await src.store.read(0, 2000))[instance_of(url)]
        assert set(stored) == {("dcwatch_network_receive_bytes_total", 'device="eth0"')}
        assert (
            f'dcwatch_target_nonfinite_samples_total{{instance="{instance_of(url)}",'
            f'target="{url}"}} 9.0' in exposition(src)
        )
    finally:
        await src.close()


# --- instance identity ------------------------------------------------------------------------


async def test_two_paths_on_one_port_are_two_instances(
    aiohttp_server: ServerFactory, tmp_path: Path, store: AsyncStore
) -> None:
    app = web.Application()
    app.router.add_get("/metrics", text(GOOD))
    app.router.add_get("/gpu/metrics", text(GOOD.replace(" 41\n", " 99\n")))
    server = await aiohttp_server(app)
    a, b = str(server.make_url("/metrics")), str(server.make_url("/gpu/metrics"))
    scraper = Scraper(cfg(tmp_path, targets=(a, b)), store)
    assert await scraper.scrape_round(1000.0) == 8
    hp = f"127.0.0.1:{server.port}"
    assert scraper.targets[a].instance == hp and scraper.targets[b].instance == hp + "/gpu/metrics"
    got = await store.read(0, 2000)
    assert got[hp][(TEMP, 'gpu="0",uuid="GPU-0"')][1].tolist() == [41.0]
    assert got[hp + "/gpu/metrics"][(TEMP, 'gpu="0",uuid="GPU-0"')][1].tolist() == [99.0]
    assert instance_of("http://n1:9478/metrics") == "n1:9478"
    assert instance_of("http://n1:9478/metrics?module=gpu") == "n1:9478/metrics?module=gpu"


# --- hung targets -----------------------------------------------------------------------------


async def test_hanging_targets_never_delay_a_healthy_one(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    hang = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hang.sockets[0].getsockname()[1]
    hits: list[float] = []

    async def good(_: web.Request) -> web.Response:
        hits.append(time.monotonic())
        return web.Response(text=GOOD)

    url = await serve(aiohttp_server, good)
    hung = tuple(f"http://127.0.0.1:{port}/h{i}/metrics" for i in range(20))
    src = EmbeddedSource(
        cfg(
            tmp_path,
            targets=(*hung, url),
            scrape_interval=0.5,
            scrape_timeout=0.45,
            concurrency=2,
        ),
        QUERIES,
    )
    await src.start()
    try:
        await asyncio.sleep(3.1)
    finally:
        await src.close()
        hang.close()
        for w in held:
            w.close()
    assert len(hits) >= 5  # every 0.5 s, not once per pass over the hung ones
    assert max(np.diff(hits)) < 0.8
    assert {src.targets[h].reason for h in hung} == {"timeout"}


# --- credentials --------------------------------------------------------------------------


def basic_app(user: str, password: str, token_file: Path | None = None) -> web.Application:
    import base64

    async def handler(request: web.Request) -> web.Response:
        want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        got = request.headers.get("Authorization", "")
        if token_file is not None:
            want = "Bearer " + token_file.read_text().strip()
        if got != want:
            return web.Response(status=401, text="unauthorized")
        return web.Response(text=GOOD)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


async def test_userinfo_used_as_basic_auth_and_never_shown(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await aiohttp_server(basic_app("dc", SECRET))
    good = f"http://dc:{SECRET}@127.0.0.1:{server.port}/metrics"
    wrong = f"http://dc:{SECRET}x@localhost:{server.port}/metrics"
    src = EmbeddedSource(cfg(tmp_path, targets=(good, wrong)), QUERIES)
    await src.start(scrape=False)
    try:
        assert await src.scraper.scrape_round(1000.0) == 3
        clean = f"http://127.0.0.1:{server.port}/metrics"
        assert src.targets[clean].up is True
        assert src.targets[f"http://localhost:{server.port}/metrics"].reason == "http"
        text_out = exposition(src)
        assert f'target="{clean}"' in text_out
    finally:
        await src.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "visible to other users" in logged  # the command-line warning
    assert "HTTP 401" in logged
    for shown in (text_out, logged, repr(src.target_status())):
        assert SECRET not in shown


async def test_targets_file_basic_auth_and_rotating_bearer_token(
    aiohttp_server: ServerFactory, tmp_path: Path, store: AsyncStore
) -> None:
    basic = await aiohttp_server(basic_app("dc", SECRET))
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    bearer = await aiohttp_server(basic_app("", "", token_file=token))
    (tmp_path / "pw").write_text(SECRET + "\n")
    tf = tmp_path / "targets.yaml"
    tf.write_text(
        f"- url: http://127.0.0.1:{basic.port}/metrics\n"
        "  basic_auth: {username: dc, password_file: pw}\n"  # relative to the targets file
        f"- url: http://localhost:{bearer.port}/metrics\n"
        f"  bearer_token_file: {token}\n"
    )
    scraper = Scraper(cfg(tmp_path, targets_file=tf), store)
    assert await scraper.scrape_round(1000.0) == 8  # 4 samples each
    token.write_text("tok-2\n")  # rotated: server and file agree on the new one
    os.utime(token, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert await scraper.scrape_round(1010.0) == 8
    (tmp_path / "pw").unlink()
    await scraper.scrape_round(1020.0)
    st = scraper.targets[f"http://127.0.0.1:{basic.port}/metrics"]
    assert st.reason == "credentials" and "pw" in st.last_error


def test_targets_file_entries_and_refused_inline_secrets(tmp_path: Path) -> None:
    ts = parse_targets(
        "defaults:\n"
        "  tls_config: {ca_file: ca.pem}\n"
        "targets:\n"
        "  - n1:9478\n"
        "  - {url: 'https://n2:9478/', bearer_token_file: /t}\n",
        tmp_path,
    )
    assert [t.url for t in ts] == ["http://n1:9478/metrics", "https://n2:9478/metrics"]
    assert ts[0].tls is not None and ts[0].tls.ca_file == tmp_path / "ca.pem"
    assert ts[1].tls is None and ts[1].bearer_token_file == Path("/t")
    for bad, msg in (
        ("- {url: n1:1, basic_auth: {username: u, password: p}}", "inline secrets"),
        ("- {url: n1:1, bearer_token: p}", "inline secrets"),
        (
            "- {url: n1:1, basic_auth: {username: u, password_file: p}, bearer_token_file: t}",
            "exclusive",
        ),
        ("- {url: n1:1, tls_config: {cert_file: c}}", "key_file"),
        ("- {url: n1:1, colour: red}", "unknown"),
        ("- ftp://n1/metrics", "scheme"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_targets(bad)
    assert parse_targets_file(f"- http://u:{SECRET}@n1:1/x\n") == ["http://n1:1/x"]
    assert redact(f"https://u:{SECRET}@[::1]:9/m") == "https://[::1]:9/m"


async def test_tls_with_a_private_ca_and_client_certificate(
    tmp_path: Path, store: AsyncStore
) -> None:
    server = self_signed(tmp_path, "server", "DNS:node1.test,IP:127.0.0.1")
    ca = self_signed(tmp_path, "ca")
    signed_by(tmp_path, "client", ca)  # client.crt / client.key, named in tls_config
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca[0]))
    ctx.load_cert_chain(*server)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as an agent's web config may ask
    app = web.Application()
    app.router.add_get("/metrics", text(GOOD))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    port = runner.addresses[0][1]
    tls = (
        "{ca_file: server.crt, cert_file: client.crt, key_file: client.key, "
        "server_name: node1.test}"
    )
    tf = tmp_path / "targets.yaml"
    tf.write_text(
        f"- {{url: 'https://127.0.0.1:{port}/metrics', tls_config: {tls}}}\n"
        f"- https://localhost:{port}/metrics\n"  # no private CA: refused
    )
    try:
        scraper = Scraper(cfg(tmp_path, targets_file=tf), store)
        assert await scraper.scrape_round(1000.0) == 4
        ok, bad = scraper.targets.values()
        assert ok.up is True
        assert bad.reason == "http" and "certificate" in bad.last_error.lower()
    finally:
        await runner.cleanup()


# --- the rate-limited log line ------------------------------------------------------------------


async def test_one_log_line_per_reason_change(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    store: AsyncStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = {"body": "garbage\n"}

    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=served["body"])

    url = await serve(aiohttp_server, handler)
    scraper = Scraper(cfg(tmp_path, targets=(url,), sample_limit=3), store)
    caplog.set_level(logging.INFO, "dcwatch.analyzer.scraper")
    for k in range(4):
        await scraper.scrape_round(1000.0 + 10 * k)
    served["body"] = GOOD  # 4 samples, over the limit of 3
    for k in range(4, 8):
        await scraper.scrape_round(1000.0 + 10 * k)
    down = [r.getMessage() for r in caplog.records if "down" in r.getMessage()]
    assert len(down) == 2 and "(parse)" in down[0] and "(sample_limit)" in down[1]
    assert scraper.targets[url].errors == {"parse": 4, "sample_limit": 4}
    out = exposition(SimpleNamespace(target_status=lambda: _status(scraper)))
    assert 'reason="sample_limit"' in out and "dcwatch_target_up{" in out


def _status(scraper: Scraper) -> Any:
    src = object.__new__(EmbeddedSource)
    src.scraper = scraper
    return src.target_status()


# --- a damaged store ----------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    elif how == "truncated":
        s = Store(path)
        keys = [(TEMP, f'gpu="{j}"') for j in range(200)]
        s.write([Scrape("a:1", 15.0 * k, keys, [1.0] * 200) for k in range(200)])
        s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        s.close()
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.truncate(size // 2)
    else:  # the header's magic overwritten
        Store(path).close()
        with path.open("r+b") as f:
            f.write(b"not a sqlite db!")


@pytest.mark.parametrize("how", ["garbage", "truncated", "header"])
async def test_damaged_store_at_start_is_moved_aside_and_rebuilt(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    db = tmp_path / "embedded.db"
    _damage(db, how)
    url = await serve(aiohttp_server, text(GOOD))
    src = EmbeddedSource(cfg(tmp_path, targets=(url,)), QUERIES)
    caplog.set_level(logging.ERROR, "dcwatch.analyzer.store")
    await src.start(scrape=False)
    try:
        assert src.store.set_aside == 1
        [aside] = tmp_path.glob("embedded.db.corrupt-*[0-9]")
        assert aside.stat().st_size > 0
        [line] = [r.getMessage() for r in caplog.records]
        assert "moved to" in line and aside.name in line
        assert await src.scraper.scrape_round(1000.0) == 3
        assert instance_of(url) in await src.fetch(1000.0, 1000.0, 10)
    finally:
        await src.close()


async def test_store_failing_while_running_is_a_source_error(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, text(GOOD))
    src = EmbeddedSource(cfg(tmp_path, targets=(url,)), QUERIES)
    await src.start(scrape=False)
    try:
        assert await src.scraper.scrape_round(1000.0) == 3
        assert src.health() == (True, "")
        reader = src.store._reader
        assert reader is not None
        reader.db.close()  # every read now fails as a damaged file's would
        with pytest.raises(SourceError, match="unreadable"):
            await src.fetch(1000.0, 1000.0, 10)
        writer = src.store._writer
        assert writer is not None
        writer.db.close()
        assert await src.scraper.scrape_round(1010.0) == 0
        assert src.targets[url].up is True  # the target is fine; the store is not
        ok, why = src.health()
        assert not ok and "embedded store" in why
        with pytest.raises(SourceError, match="embedded store"):
            await src.latest(10, 2, now=1015.0)
    finally:
        src.store._reader = src.store._writer = None  # already closed above
        await src.close()


def test_sqlite_error_types_used_for_recovery(tmp_path: Path) -> None:
    """What open_store relies on: damage raises DatabaseError, not OperationalError."""
    p = tmp_path / "x.db"
    p.write_bytes(b"\0" * 100 + os.urandom(5000))
    with pytest.raises(sqlite3.DatabaseError) as e:
        Store(p)
    assert not isinstance(e.value, sqlite3.OperationalError)
