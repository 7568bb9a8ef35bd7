"""Both sources implement the whole Source protocol; start/close are idempotent; views answer
other queries over their parent's session or store, and open and close nothing themselves."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from dcwatch.detectors.sources.base import Source, TargetStatus
from dcwatch.detectors.sources.prometheus import PrometheusConfig, PrometheusSource
from dcwatch.detectors.sources.queries import parse_queries
from dcwatch.detectors.sources.scraper import EmbeddedConfig, EmbeddedSource, instance_of
from tests.detectors.test_prometheus_source import QUERIES as PROM_QUERIES
from tests.detectors.test_prometheus_source import ServerFactory, source, start_fake
from tests.detectors.test_scraper import QUERIES as EMBEDDED_QUERIES
from tests.detectors.test_scraper import cfg, start_agent

SOURCES = (PrometheusSource, EmbeddedSource)


def protocol_methods() -> dict[str, Callable[..., Any]]:
    return {
        name: fn
        for name, fn in vars(Source).items()
        if inspect.isfunction(fn) and not name.startswith("_")
    }


def test_protocol_is_complete() -> None:
    assert set(protocol_methods()) == {
        "start",
        "close",
        "fetch",
        "latest",
        "with_queries",
        "target_status",
    }


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.__name__)
def test_source_implements_every_protocol_method(cls: type) -> None:
    for name, proto in protocol_methods().items():
        impl = getattr(cls, name, None)
        assert callable(impl), f"{cls.__name__} lacks {name}"
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(proto), name
        want = list(inspect.signature(proto).parameters.values())
        got = list(inspect.signature(impl).parameters.values())
        # The protocol's parameters, in order and kind; anything more must be optional.
        assert [(p.name, p.kind) for p in got[: len(want)]] == [(p.name, p.kind) for p in want]
        assert all(p.default is not p.empty for p in got[len(want) :]), name


def counting_sessions(monkeypatch: pytest.MonkeyPatch) -> list[aiohttp.ClientSession]:
    """Record every aiohttp session opened while the test runs."""
    made: list[aiohttp.ClientSession] = []
    real = aiohttp.ClientSession

    def make(*args: Any, **kw: Any) -> aiohttp.ClientSession:
        s = real(*args, **kw)
        made.append(s)
        return s

    monkeypatch.setattr(aiohttp, "ClientSession", make)
    return made


async def test_prometheus_start_close_idempotent_and_views_share_the_session(
    aiohttp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = await start_fake(aiohttp_server)
    sessions = counting_sessions(monkeypatch)
    src: Source = source(url)
    view_queries = PROM_QUERIES[1:]
    view = src.with_queries(view_queries)
    await src.start()
    await src.start()
    await view.start()
    assert len(sessions) == 1

    frames = await view.fetch(0, 60, 15)
    assert fake.requests[-1]["query"] == view_queries[0].query
    assert frames["n1:9478"].columns == ("node_power",)
    await view.close()
    assert not sessions[0].closed  # the view's close leaves its parent's session alone
    frames = await src.fetch(0, 60, 15)
    assert frames["n1:9478"].columns[0] == 'gpu_temperature{gpu="0"}'
    assert src.target_status() == []

    await src.close()
    await src.close()
    assert len(sessions) == 1 and sessions[0].closed


async def test_prometheus_view_of_an_unstarted_source_opens_the_parents_session(
    aiohttp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = await start_fake(aiohttp_server)
    sessions = counting_sessions(monkeypatch)
    src = source(url)
    view = src.with_queries(PROM_QUERIES[1:])
    await view.fetch(0, 15, 15)
    await src.fetch(0, 15, 15)
    assert len(sessions) == 1
    await view.close()
    assert not sessions[0].closed
    await src.close()
    assert sessions[0].closed


async def test_prometheus_caller_session_is_left_open() -> None:
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(PrometheusConfig(url="http://127.0.0.1:1"), session=session)
        await src.start()
        await src.close()
        assert not session.closed


def scraper_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "dcwatch-scraper" and not t.done()]


async def test_embedded_start_close_idempotent_and_views_share_the_store(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    _, server = await start_agent(aiohttp_server)
    url = str(server.make_url("/metrics"))
    embedded = EmbeddedSource(
        cfg(tmp_path, targets=(url,), scrape_interval=3600.0), EMBEDDED_QUERIES
    )
    src: Source = embedded
    await src.start()
    await src.start()
    assert len(scraper_tasks()) == 1  # one scrape loop, not two
    [before] = src.target_status()
    assert before == TargetStatus(url, instance_of(url), None, 0, None)

    t0 = 1_700_000_000.0
    for k in range(3):
        await embedded.scraper.scrape_round(t0 + 10 * k)
    [after] = src.target_status()
    assert after.up is True and after.failures == 0 and after.last_duration is not None

    only_temperature = parse_queries(
        [{"name": "t", "query": "dcwatch_gpu_temperature_celsius", "per": "gpu"}]
    )
    view = src.with_queries(only_temperature)
    await view.start()
    assert len(scraper_tasks()) == 1  # a view starts nothing
    inst = instance_of(url)
    frames = await view.fetch(t0, t0 + 20, 10)
    assert frames[inst].columns == ('t{gpu="0"}', 't{gpu="1"}')
    np.testing.assert_array_equal(frames[inst].column('t{gpu="1"}'), [61, 62, 63])
    assert view.target_status() == src.target_status()
    await view.close()
    assert len(scraper_tasks()) == 1  # nor stops anything
    own = await src.fetch(t0, t0 + 20, 10)  # the store is still open
    assert own[inst].columns[0] == 'gpu_temperature{gpu="0"}'

    await src.close()
    await src.close()
    assert scraper_tasks() == []


async def test_embedded_close_after_a_failed_start(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = EmbeddedConfig(db_path=blocker / "embedded.db", scrape_interval=10.0)
    src = EmbeddedSource(config, EMBEDDED_QUERIES)
    with pytest.raises(FileExistsError):
        await src.start()
    await src.close()
    await src.close()
    assert scraper_tasks() == []
