"""End to end, capacity: the real agent reads a fixture tree whose hwmon power meter the test
drives; a real Prometheus scrapes it; two analyzers (one reading Prometheus, one scraping the
agent itself in the embedded default) each run a capacity rule "node power against a 3 kW
budget" and alert a real Alertmanager of their own.

The node's power climbs towards the budget: both analyzers forecast it full within the rule's
horizon and DcwatchCapacityExhaustion appears in Alertmanager with its labels and summary; the
power falls back and the alerts resolve. One-second steps, a one-minute horizon.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dcwatch_procs import (
    am_alerts,
    copy_tree,
    metric,
    start_agent,
    start_analyzer_pair,
    write_in_place,
)
from tests.helpers import free_port, wait_until
from tests.procs import (
    Proc,
    alertmanager_binary,
    prometheus_binary,
    start_alertmanager,
    start_prometheus,
)

pytestmark = pytest.mark.e2e

BASE_W, BUDGET_W = 1843.0, 3000.0
CONFIG = """
capacity_rules:
  - name: node_power
    title: Node power
    series: dcwatch_node_power_watts{source="hwmon"}
    capacity: 3000
    threshold: 0.9
    horizon: 60s
    step: 1s
    history: 2m
    min_history: 8s
    refit: 15s
    forecaster: linear
    window: 10s
    forecast_horizons: [10s, 30s]
"""


class PowerDriver:
    """Writes the ACPI power meter ten times a second: ``BASE_W`` plus noise, rising at ``rate``
    watts a second while ``rising``, falling back to the base otherwise."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = os.open(root / "sys/class/hwmon/hwmon5/power1_average", os.O_WRONLY)
        self.level = BASE_W
        self.rate = 15.0
        self.rising = False
        self.stop = threading.Event()
        self.rng = random.Random(3)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            if self.rising:  # capped well below the threshold: never "full now"
                self.level = min(self.level + self.rate * 0.1, 2500.0)
            else:
                self.level = max(self.level - 4 * self.rate * 0.1, BASE_W)
            write_in_place(self.fd, int((self.level + self.rng.gauss(0, 3)) * 1e6))


def capacity_alerts(am: Proc) -> list[dict]:
    return am_alerts(am, "DcwatchCapacityExhaustion")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict]:
    if prometheus_binary() is None or alertmanager_binary() is None:
        pytest.skip("prometheus / prometheus-alertmanager not installed (scripts/setup.sh)")
    procs: list[Proc] = []
    driver = PowerDriver(copy_tree("gpu-node-a", tmp_path))
    driver.thread.start()
    try:
        agent = start_agent(tmp_path, driver.root, ["--collectors=power"])
        procs.append(agent)
        prom = start_prometheus(tmp_path, [f"127.0.0.1:{agent.port}"], scrape_interval="1s")
        am1, am2 = start_alertmanager(tmp_path / "am1"), start_alertmanager(tmp_path / "am2")
        procs += [prom, am1, am2]
        via_prom, embedded = start_analyzer_pair(
            tmp_path, agent, prom, am1, am2, config_text=CONFIG
        )
        procs += [via_prom, embedded]
        yield {"driver": driver, "agent": agent, "am": (am1, am2), "an": (via_prom, embedded)}
    finally:
        driver.stop.set()
        for p in reversed(procs):
            p.stop()


def test_power_growing_to_its_budget_alerts_and_resolves(stack: dict) -> None:
    driver, (am1, am2), analyzers = stack["driver"], stack["am"], stack["an"]
    instance = f"127.0.0.1:{stack['agent'].port}"
    lab = {"rule": "node_power", "instance": instance}

    # Flat power: both fit, forecast the level, see nothing full.
    for an in analyzers:
        wait_until(
            lambda an=an: metric(an, "dcwatch_forecast", **lab, horizon="30s"),
            timeout=40,
            what=f"{an.name} to forecast node power",
        )
        util = metric(an, "dcwatch_capacity_utilization_ratio", **lab)
        assert util is not None and abs(util - BASE_W / BUDGET_W) < 0.02
        assert metric(an, "dcwatch_capacity_exhaustion_seconds", **lab) is None
        assert metric(an, "dcwatch_forecast_model_info", **lab, model="linear") == 1
    assert capacity_alerts(am1) == [] and capacity_alerts(am2) == []

    # Power climbs 15 W/s from 1843 W: 2700 W (90 % of 3 kW) is under a minute away.
    driver.rising = True
    for am in (am1, am2):
        alerts = wait_until(
            lambda am=am: capacity_alerts(am), timeout=40, what="the capacity alert"
        )
        [a] = alerts  # type: ignore[misc]
        assert a["labels"] == {
            "alertname": "DcwatchCapacityExhaustion",
            "severity": "warning",
            "instance": instance,
            "rule": "node_power",
        }
        assert a["annotations"]["summary"].startswith(f"Node power on {instance} full in ~")
        assert "95% interval" in a["annotations"]["description"]
        assert 0 < float(a["annotations"]["exhaustion_seconds"]) <= 60
    for an in analyzers:
        est = metric(an, "dcwatch_capacity_exhaustion_seconds", **lab)
        assert est is not None and 0 < est <= 60

    # The power falls back: the forecast leaves the horizon and both alerts resolve.
    driver.rising = False
    wait_until(
        lambda: not capacity_alerts(am1) and not capacity_alerts(am2),
        timeout=40,
        what="the capacity alerts to resolve",
    )
    for an in analyzers:
        assert metric(an, "dcwatch_capacity_exhaustion_seconds", **lab) is None


def test_analyzer_refuses_to_start_on_a_malformed_rule(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "targets: [http://127.0.0.1:1/metrics]\n"
        "capacity_rules:\n  - name: gpu_memory\n    series: dcwatch_gpu_memory_used_bytes\n"
        "    capacity: dcwatch_gpu_memory_total_bytes\n    horizon: soon\n"
    )
    argv = [sys.executable, "-m", "dcwatch.cli", "analyzer", f"--config={config}"]
    argv += [f"--state-dir={tmp_path / 'state'}", f"--listen=127.0.0.1:{free_port()}"]
    t0 = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "capacity_rules[0] (gpu_memory): key 'horizon'" in res.stderr
    assert time.monotonic() - t0 < 30
