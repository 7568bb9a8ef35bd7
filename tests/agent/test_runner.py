"""The collector wrapper: timeouts, failures and 'no hardware' are isolated per collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import pytest
from prometheus_client.core import Metric

from dcwatch.agent.config import AgentConfig
from dcwatch.agent.registry import CollectorRunner
from dcwatch.exporters.base import Collector, NoDataError
from dcwatch.exposition import Families, MetricSpec

GOOD = MetricSpec("dcwatch_test_value", "test", ("k",))


class Good(Collector):
    name = "good"

    def __init__(self) -> None:
        super().__init__(AgentConfig())
        self.calls = 0

    def collect(self) -> Iterable[Metric]:
        self.calls += 1
        f = Families()
        f.add(GOOD, 1.5, "a")
        f.add(GOOD, None, "absent")  # omitted, not exported as 0/NaN
        return f


class Broken(Collector):
    name = "broken"

    def collect(self) -> Iterable[Metric]:
        raise OSError("sensor exploded")


class Absent(Collector):
    name = "absent"

    def collect(self) -> Iterable[Metric]:
        raise NoDataError("no such hardware")


class Hung(Collector):
    name = "hung"

    def __init__(self) -> None:
        super().__init__(AgentConfig())
        self.release = threading.Event()
        self.started = 0

    def collect(self) -> Iterable[Metric]:
        self.started += 1
        self.release.wait(10)
        return []


def by_name(metrics: list[Metric]) -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for m in metrics:
        for s in m.samples:
            out.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return out


async def test_failures_are_isolated_and_reported() -> None:
    hung = Hung()
    runner = CollectorRunner(
        [Good(), Broken(AgentConfig()), Absent(AgentConfig()), hung], timeout=0.3
    )
    t0 = time.monotonic()
    got = by_name(await runner.scrape())
    assert time.monotonic() - t0 < 2, "a hung collector must not hold the scrape"
    assert got["dcwatch_test_value"] == {("a",): 1.5}
    assert got["dcwatch_scrape_collector_success"] == {
        ("good",): 1,
        ("broken",): 0,
        ("absent",): 1,
        ("hung",): 0,
    }
    assert got["dcwatch_scrape_collector_failures_total"][("broken",)] == 1
    assert "sensor exploded" in runner.state["broken"].last_error
    assert runner.state["absent"].no_data
    # A second scrape while the hung read is still stuck waits on the same run: no new thread.
    await runner.scrape()
    assert hung.started == 1
    hung.release.set()
    runner.close()


async def test_concurrent_scrapes_share_one_collection() -> None:
    import asyncio

    class Slow(Good):
        def collect(self) -> Iterable[Metric]:
            time.sleep(0.2)
            return super().collect()

    slow = Slow()
    runner = CollectorRunner([slow], timeout=5)
    results = await asyncio.gather(*(runner.scrape() for _ in range(8)))
    assert slow.calls == 1
    assert all(by_name(r)["dcwatch_test_value"] == {("a",): 1.5} for r in results)
    runner.close()


def test_metric_spec_rules() -> None:
    with pytest.raises(ValueError):
        MetricSpec("node_temp_celsius", "no prefix")
    with pytest.raises(ValueError):
        MetricSpec("dcwatch_energy_joules", "counter without _total", kind="counter")
    assert MetricSpec("dcwatch_gpu_energy_joules_total", "x", kind="counter").unit == "joules"
