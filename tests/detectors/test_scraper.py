"""The embedded source: exposition parsing, targets and their file, scraping into the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from dcwatch.detectors.sources.queries import parse_queries
from dcwatch.detectors.sources.scraper import (
    EmbeddedConfig,
    EmbeddedSource,
    NameFilter,
    ParseError,
    Scraper,
    instance_of,
    parse_exposition,
    parse_targets_file,
    target_url,
)
from dcwatch.detectors.sources.store import AsyncStore

ServerFactory = Callable[..., Awaitable[TestServer]]

EXPOSITION = """\
# HELP dcwatch_gpu_temperature_celsius GPU temperature
# TYPE dcwatch_gpu_temperature_celsius gauge
dcwatch_gpu_temperature_celsius{{gpu="0",uuid="GPU-0"}} {t0}
dcwatch_gpu_temperature_celsius{{gpu="1",uuid="GPU-1"}} {t1}
# TYPE dcwatch_network_receive_bytes_total counter
dcwatch_network_receive_bytes_total{{device="eth0"}} {rx}
# TYPE dcwatch_process_threads gauge
dcwatch_process_threads 7
"""

QUERIES = parse_queries(
    [
        {"name": "gpu_temperature", "query": "dcwatch_gpu_temperature_celsius", "per": "gpu"},
        {"name": "rx", "query": "rate(dcwatch_network_receive_bytes_total[30s])", "per": "device"},
    ]
)


def test_parse_exposition_matches_prometheus_client() -> None:
    text = (
        "# HELP a_total x\n# TYPE a_total counter\n"
        'a_total{path="/x,{y}",q="say \\"hi\\""} 1.5e3 1700000000000\n'
        "b 2\n"
        "c{} NaN\n"
        'd{le="+Inf",} +Inf\r\n'
        "\n# EOF\n"
    )
    keys, values = parse_exposition(text)
    assert keys == [
        ("a_total", 'path="/x,{y}",q="say \\"hi\\""'),
        ("b", ""),
        ("c", ""),
        ("d", 'le="+Inf"'),
    ]
    assert values[:2] == [1500.0, 2.0] and np.isnan(values[2]) and values[3] == float("inf")
    reference = [s.value for f in text_string_to_metric_families(text) for s in f.samples]
    np.testing.assert_array_equal(values, reference)
    assert parse_exposition(text, keep={"b"}) == ([("b", "")], [2.0])
    with pytest.raises(ParseError, match="line 2"):
        parse_exposition('ok 1\nbroken{a="1"} x\n')


def test_name_filter_and_targets() -> None:
    f = NameFilter([r"dcwatch_gpu_.*", "dcwatch_node_power_watts"])
    assert "dcwatch_gpu_up" in f and "dcwatch_node_power_watts" in f
    assert "dcwatch_node_power_watts_x" not in f and "go_goroutines" not in f
    assert target_url("n1:9478") == "http://n1:9478/metrics"
    assert target_url("https://n1:9478/") == "https://n1:9478/metrics"
    assert target_url("http://n1:9478/custom") == "http://n1:9478/custom"
    # The path goes before a query (it went after it: "0?@" gave "http://0?@/metrics").
    assert target_url("n1:9478?module=gpu") == "http://n1:9478/metrics?module=gpu"
    assert target_url("0?@") == "http://0/metrics?@"
    assert instance_of("https://n1/metrics") == "n1:443"
    assert instance_of("http://[::1]:9478/metrics") == "[::1]:9478"
    assert parse_targets_file("# fleet\nn1:9478\n\nhttp://n2:9478/metrics  # rack 2\n") == [
        "http://n1:9478/metrics",
        "http://n2:9478/metrics",
    ]
    assert parse_targets_file("- n1:9478\n- n2:9478\n") == [
        "http://n1:9478/metrics",
        "http://n2:9478/metrics",
    ]
    with pytest.raises(ValueError):
        parse_targets_file("- {a: 1}\n")


class Agent:
    """A fake agent whose exposition changes between scrapes; can be made to fail."""

    def __init__(self) -> None:
        self.n = 0
        self.status = 200

    async def handler(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.Response(status=self.status, text="broken")
        self.n += 1
        body = EXPOSITION.format(t0=40 + self.n, t1=60 + self.n, rx=1000 * self.n)
        return web.Response(text=body, content_type="text/plain")


async def start_agent(aiohttp_server: ServerFactory) -> tuple[Agent, TestServer]:
    agent = Agent()
    app = web.Application()
    app.router.add_get("/metrics", agent.handler)
    return agent, await aiohttp_server(app)


def cfg(tmp_path: Path, **kw: Any) -> EmbeddedConfig:
    kw.setdefault("scrape_interval", 10.0)
    kw.setdefault("scrape_timeout", 2.0)
    return EmbeddedConfig(db_path=tmp_path / "embedded.db", **kw)


async def test_scrapes_changing_exposition_into_frames(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    _, server = await start_agent(aiohttp_server)
    url = str(server.make_url("/metrics"))
    src = EmbeddedSource(cfg(tmp_path, targets=(url,)), QUERIES)
    await src.start(scrape=False)
    try:
        t0 = 1_700_000_000.0
        for k in range(6):
            assert await src.scraper.scrape_round(t0 + 10 * k) == 3  # threads not kept
        st = src.targets[url]
        assert st.up and st.samples == 3 and st.last_error == "" and st.last_scrape == t0 + 50
        frames = await src.fetch(t0 + 20, t0 + 50, 10)
        inst = instance_of(url)
        assert list(frames) == [inst]
        f = frames[inst]
        assert f.columns == (
            'gpu_temperature{gpu="0"}',
            'gpu_temperature{gpu="1"}',
            'rx{device="eth0"}',
        )
        np.testing.assert_array_equal(f.times, t0 + np.array([20, 30, 40, 50]))
        np.testing.assert_array_equal(f.column('gpu_temperature{gpu="1"}'), [63, 64, 65, 66])
        np.testing.assert_allclose(f.column('rx{device="eth0"}'), [100, 100, 100, 100])
        # only the families the queries need were stored
        stored = await src.store.read(t0, t0 + 100)
        assert {name for name, _ in stored[inst]} == {
            "dcwatch_gpu_temperature_celsius",
            "dcwatch_network_receive_bytes_total",
        }
        latest = await src.latest(10, 2, now=t0 + 55)
        np.testing.assert_array_equal(latest[inst].times, [t0 + 40, t0 + 50])
    finally:
        await src.close()


async def test_failing_target_is_retried_and_logged_once_per_change(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent, server = await start_agent(aiohttp_server)
    good = str(server.make_url("/metrics"))
    dead = "http://127.0.0.1:9/metrics"  # discard port: connection refused
    store = AsyncStore(tmp_path / "db", retention=3600)
    await store.open()
    scraper = Scraper(cfg(tmp_path, targets=(good, dead)), store)
    caplog.set_level(logging.INFO, "dcwatch.analyzer.scraper")
    try:
        for k in range(3):
            await scraper.scrape_round(1000.0 + 10 * k)
        assert scraper.targets[good].up is True
        d = scraper.targets[dead]
        assert d.up is False and d.failures == 3 and d.last_error and d.samples == 0
        assert sum("down" in r.message and dead in r.message for r in caplog.records) == 1
        # the good agent breaks, then recovers
        agent.status = 500
        await scraper.scrape_round(1030.0)
        assert scraper.targets[good].up is False
        assert scraper.targets[good].last_error == "HTTP 500"
        agent.status = 200
        await scraper.scrape_round(1040.0)
        assert scraper.targets[good].up is True
        assert any("up again" in r.message for r in caplog.records)
        got = await store.read(0, 2000)
        assert list(got) == [instance_of(good)]  # nothing stored for the failures
        ts = next(iter(got[instance_of(good)].values()))[0]
        np.testing.assert_array_equal(ts, [1000, 1010, 1020, 1040])
    finally:
        await store.close()


async def test_bad_exposition_marks_target_down(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text='dcwatch_x{a="1"} not-a-number\n')

    app = web.Application()
    app.router.add_get("/metrics", garbage)
    server = await aiohttp_server(app)
    url = str(server.make_url("/metrics"))
    store = AsyncStore(tmp_path / "db", retention=3600)
    await store.open()
    try:
        scraper = Scraper(cfg(tmp_path, targets=(url,)), store)
        await scraper.scrape_round(1000.0)
        assert scraper.targets[url].up is False
        assert "bad exposition" in scraper.targets[url].last_error
    finally:
        await store.close()


async def test_targets_file_reloaded_on_change(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, s1 = await start_agent(aiohttp_server)
    _, s2 = await start_agent(aiohttp_server)
    u1, u2 = str(s1.make_url("/metrics")), str(s2.make_url("/metrics"))
    tf = tmp_path / "targets.txt"
    tf.write_text(f"{u1}\n")
    store = AsyncStore(tmp_path / "db", retention=3600)
    await store.open()
    try:
        scraper = Scraper(cfg(tmp_path, targets_file=tf), store)
        await scraper.scrape_round(1000.0)
        assert list(scraper.targets) == [u1]
        tf.write_text(f"- {u1}\n- {u2}\n")  # now a YAML list
        os.utime(tf, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        await scraper.scrape_round(1010.0)
        assert list(scraper.targets) == [u1, u2] and scraper.targets[u2].up
        assert scraper.targets[u1].last_scrape == 1010.0  # state kept across reloads
        # a broken file keeps the last good list, logged once
        tf.write_text("- [not a target\n")
        os.utime(tf, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        caplog.set_level(logging.ERROR, "dcwatch.analyzer.scraper")
        await scraper.scrape_round(1020.0)
        os.utime(tf, ns=(time.time_ns(), time.time_ns() + 3_000_000_000))
        await scraper.scrape_round(1030.0)
        assert list(scraper.targets) == [u1, u2]
        assert sum("targets file" in r.message for r in caplog.records) == 1
        tf.write_text(f"{u2}\n")
        os.utime(tf, ns=(time.time_ns(), time.time_ns() + 4_000_000_000))
        await scraper.scrape_round(1040.0)
        assert list(scraper.targets) == [u2]
    finally:
        await store.close()


async def test_background_loop_scrapes_on_ticks(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    agent, server = await start_agent(aiohttp_server)
    url = str(server.make_url("/metrics"))
    src = EmbeddedSource(
        cfg(tmp_path, targets=(url,), scrape_interval=0.2, scrape_timeout=0.2), QUERIES
    )
    await src.start()
    try:
        deadline = time.monotonic() + 10
        while agent.n < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert agent.n >= 3
        stamp = src.targets[url].last_scrape
        assert abs(stamp / 0.2 - round(stamp / 0.2)) < 1e-6  # ticks at multiples of the interval
    finally:
        await src.close()


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EmbeddedConfig(scrape_interval=5, scrape_timeout=10)
    with pytest.raises(ValueError):
        EmbeddedConfig(retention=1)


async def test_stopping_ends_a_loop_that_lost_its_cancellation(tmp_path: Path) -> None:
    """Before Python 3.12 ``asyncio.wait_for`` returns the result and drops a cancellation that
    arrives as the awaited scrape completes; the target's loop then scraped on, and the source's
    close (the analyzer's shutdown) waited for it forever. Stopping must not rest on the cancel."""
    store = AsyncStore(tmp_path / "s.db", retention=3600)
    await store.open()
    config = cfg(
        tmp_path, targets=("http://127.0.0.1:9/metrics",), scrape_interval=0.05, scrape_timeout=0.05
    )
    scraper = Scraper(config, store)
    scraper.session = object()  # type: ignore[assignment]  # the stand-in scrape never uses it
    inside = asyncio.Event()

    async def swallowing_scrape(*_: object) -> int:
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):  # the lost cancellation
            await asyncio.sleep(0.02)
        return 0

    scraper.scrape = swallowing_scrape  # type: ignore[method-assign]
    task = asyncio.create_task(scraper.run())
    try:
        await asyncio.wait_for(inside.wait(), 5)
        task.cancel()  # lands in the scrape, which drops it
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the scraper did not stop"
    finally:
        if not task.done():
            scraper.targets.clear()  # the lost loop ends when its target is gone
            await asyncio.gather(task, return_exceptions=True)
        await store.close()
