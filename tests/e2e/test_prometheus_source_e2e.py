"""End to end: a real Prometheus scrapes a dcwatch-like exposition; PrometheusSource reads it back
with the default queries, and the embedded source, scraping the same exposition, agrees."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dcwatch.detectors.frame import Frame
from dcwatch.detectors.sources.prometheus import PrometheusConfig, PrometheusSource
from dcwatch.detectors.sources.queries import load_queries
from dcwatch.detectors.sources.scraper import EmbeddedConfig, EmbeddedSource
from tests.procs import prometheus_binary, start_prometheus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="the prometheus binary is not installed (scripts/setup.sh installs it as root)",
    ),
]

RX_RATE = 1000.0  # bytes/s of the fake interface


def exposition(t0: float) -> str:
    rx = RX_RATE * (time.time() - t0)
    return f"""\
# TYPE dcwatch_gpu_up gauge
dcwatch_gpu_up{{gpu="0",uuid="GPU-a"}} 1
dcwatch_gpu_up{{gpu="1",uuid="GPU-b"}} 1
# TYPE dcwatch_gpu_temperature_celsius gauge
dcwatch_gpu_temperature_celsius{{gpu="0",uuid="GPU-a"}} 41
dcwatch_gpu_temperature_celsius{{gpu="1",uuid="GPU-b"}} 55.5
# TYPE dcwatch_gpu_power_usage_watts gauge
dcwatch_gpu_power_usage_watts{{gpu="0",uuid="GPU-a"}} 250
dcwatch_gpu_power_usage_watts{{gpu="1",uuid="GPU-b"}} 300
# TYPE dcwatch_node_power_watts gauge
dcwatch_node_power_watts{{source="ipmi"}} 1200
dcwatch_node_power_watts{{source="rapl"}} 300
# TYPE dcwatch_hwmon_temp_celsius gauge
dcwatch_hwmon_temp_celsius{{chip="coretemp.0",chip_name="coretemp",sensor="temp1",label="P0"}} 45
dcwatch_hwmon_temp_celsius{{chip="coretemp.0",chip_name="coretemp",sensor="temp2",label="C0"}} 38
# TYPE dcwatch_network_receive_bytes_total counter
dcwatch_network_receive_bytes_total{{device="eth0"}} {rx:.3f}
# TYPE dcwatch_process_threads gauge
dcwatch_process_threads 9
"""


EXPECTED_LEVELS = {
    'gpu_up{gpu="0"}': 1,
    'gpu_up{gpu="1"}': 1,
    'gpu_temperature{gpu="0"}': 41,
    'gpu_temperature{gpu="1"}': 55.5,
    'gpu_power{gpu="0"}': 250,
    'gpu_power{gpu="1"}': 300,
    "node_power": 1200,  # max over sources
    "hwmon_temperature_max": 45,
}
RATE_COLUMN = 'net_receive_bytes{device="eth0"}'


def check_frame(f: Frame, what: str) -> None:
    assert set(f.columns) == {*EXPECTED_LEVELS, RATE_COLUMN}, what
    assert not np.isnan(f.values).any(), f"{what}: gaps in {f.to_pandas()}"
    for col, v in EXPECTED_LEVELS.items():
        np.testing.assert_array_equal(f.column(col), v, err_msg=f"{what}: {col}")
    np.testing.assert_allclose(f.column(RATE_COLUMN), RX_RATE, rtol=0.05, err_msg=what)


async def test_prometheus_source_reads_real_prometheus(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    t0 = time.time()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=exposition(t0), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    server = await aiohttp_server(app, host="127.0.0.1")
    target = f"127.0.0.1:{server.port}"

    prom = await asyncio.to_thread(start_prometheus, tmp_path, [target], scrape_interval="1s")
    # The real default set (so its PromQL is checked by a real Prometheus), with the byte rate
    # over 4 s instead of 2 min: Prometheus divides by the whole window, which this young series
    # does not fill yet.
    queries = tuple(
        replace(q, query=q.query.replace("[2m]", "[4s]"), selector=replace(q.selector, window=4.0))
        if q.name == "net_receive_bytes" and q.selector
        else q
        for q in load_queries()
    )
    src = PrometheusSource(PrometheusConfig(url=prom.url, timeout=10), queries)
    embedded = EmbeddedSource(
        EmbeddedConfig(
            targets=(f"http://{target}/metrics",),
            scrape_interval=1.0,
            scrape_timeout=1.0,
            db_path=tmp_path / "embedded.db",
        ),
        queries,
    )
    await embedded.start()
    try:
        # Prometheus' discovery hands targets to the scraper after ~5 s: wait for the first
        # sample, then for a few seconds of them
        deadline = time.time() + 20
        while not await src.fetch(time.time() - 2, time.time(), 1.0):
            assert time.time() < deadline, f"no samples in Prometheus:\n{prom.log_tail()}"
            await asyncio.sleep(0.5)
        start = float(np.ceil(time.time())) + 4  # the 4 s rate window is full by then
        end = start + 3
        await asyncio.sleep(end + 1.5 - time.time())
        frames = await src.fetch(start, end, 1.0)
        assert list(frames) == [target], frames
        f = frames[target]
        np.testing.assert_array_equal(f.times, np.arange(start, end + 1))
        check_frame(f, "prometheus")
        assert src.errors == {} and src.failures == 0  # every default query is valid PromQL

        # the embedded source scraped the same agent: same instance, columns and values
        mine = await embedded.fetch(start, end, 1.0)
        assert list(mine) == [target]
        assert mine[target].columns == f.columns
        np.testing.assert_array_equal(mine[target].times, f.times)
        check_frame(mine[target], "embedded")
        assert embedded.targets[f"http://{target}/metrics"].up
    finally:
        await embedded.close()
        await src.close()
        await asyncio.to_thread(prom.stop)
