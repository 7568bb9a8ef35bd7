"""End to end, the whole product on 127.0.0.1: the real agent serves a fixture tree whose values
the test drives (noisy but normal, then a fault, then normal again); a real Prometheus scrapes it;
two analyzers run side by side, one reading Prometheus, one in the embedded default (scraping
the agent itself into SQLite), each alerting a real Alertmanager of its own.

Asserted: both fit after their cold start, the fault raises DcwatchNodeAnomaly in Alertmanager
with the contributing series, an Alertmanager killed mid-incident receives the queued alert when
it is back, and the alerts resolve after the fault ends.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dcwatch_procs import (
    am_alerts,
    copy_tree,
    get_json,
    metric,
    start_agent,
    start_analyzer_pair,
    write_in_place,
)
from tests.helpers import wait_until
from tests.procs import (
    Proc,
    alertmanager_binary,
    prometheus_binary,
    start_alertmanager,
    start_prometheus,
)

pytestmark = pytest.mark.e2e

QUERIES = """
- name: cpu_temp
  query: dcwatch_cpu_temp_celsius{package="0",core=""}
- name: node_power
  query: dcwatch_node_power_watts{source="hwmon"}
- name: fan
  query: dcwatch_hwmon_fan_rpm{sensor="fan1"}
"""
ALERT = "DcwatchNodeAnomaly"
# Fit on a minute of history at a 1 s step (production: 1 h at 15 s). With 60 training rows the
# threshold's tail is an extrapolation: calibrate it to a rarer rate than production's 0.35 a
# week, so the quiet minutes stay quiet; the injected faults score far above either.
TRAINING = (
    "--model-step=1",
    "--model-min-train=60s",
    "--model-train-window=10m",
    "--model-alerts-per-week=0.05",
)


class Driver:
    """Writes the node's sensors in place ten times a second: noise around the fixture's values,
    or, during a fault, the CPU package 35 °C hotter and the node drawing 600 W more."""

    def __init__(self, root: Path) -> None:
        self.root = root
        hw = root / "sys/class/hwmon"
        self.files = {
            "temp": (os.open(hw / "hwmon3/temp1_input", os.O_WRONLY), 52000, 300),
            "power": (os.open(hw / "hwmon5/power1_average", os.O_WRONLY), 1843000000, 8000000),
            "fan": (os.open(hw / "hwmon6/fan1_input", os.O_WRONLY), 1180, 15),
        }
        self.netdev = root / "proc/net/dev"
        self.net_text = self.netdev.read_text()
        self.net_fd = os.open(self.netdev, os.O_WRONLY)
        line = next(ln for ln in self.net_text.splitlines() if ln.strip().startswith("eno1:"))
        self.rx0 = int(line.split(":")[1].split()[0])
        self.rx = self.rx0
        self.fault = 0.0  # 0 normal .. 1 full fault (ramps)
        self.target = 0.0
        self.stop = threading.Event()
        self.rng = random.Random(1)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.fault += max(-0.1, min(0.1, self.target - self.fault))  # ~1 s ramps
            for name, (fd, base, sd) in self.files.items():
                v = base + self.rng.gauss(0, sd)
                if name == "temp":
                    v += 35000 * self.fault
                elif name == "power":
                    v += 600e6 * self.fault
                write_in_place(fd, int(v))
            self.rx += int(2e5 * (1 + self.rng.gauss(0, 0.05)))  # ~2 MB/s
            text = self.net_text.replace(f"eno1:{self.rx0} ", f"eno1:{self.rx} ")
            os.pwrite(self.net_fd, text.encode(), 0)


def fitted(an: Proc) -> bool:
    nodes = get_json(f"{an.url}/api/nodes")
    return bool(nodes) and all(n["state"] == "fitted" for n in nodes)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict]:
    if prometheus_binary() is None or alertmanager_binary() is None:
        pytest.skip("prometheus / prometheus-alertmanager not installed (scripts/setup.sh)")
    procs: list[Proc] = []
    driver = Driver(copy_tree("gpu-node-a", tmp_path))
    driver.thread.start()
    try:
        agent = start_agent(tmp_path, driver.root, ["--collectors=power,thermal,network"])
        procs.append(agent)
        prom = start_prometheus(tmp_path, [f"127.0.0.1:{agent.port}"], scrape_interval="1s")
        procs.append(prom)
        am1 = start_alertmanager(tmp_path / "am1")
        am2 = start_alertmanager(tmp_path / "am2")
        procs += [am1, am2]
        via_prom, embedded = start_analyzer_pair(
            tmp_path, agent, prom, am1, am2, TRAINING, queries_text=QUERIES
        )
        procs += [via_prom, embedded]
        yield {
            "driver": driver,
            "agent": agent,
            "prom": prom,
            "am1": am1,
            "am2": am2,
            "via_prom": via_prom,
            "embedded": embedded,
        }
    finally:
        driver.stop.set()
        for p in reversed(procs):
            p.stop()


def test_fault_alerts_and_resolves_through_both_sources(stack: dict) -> None:
    driver, am1, am2 = stack["driver"], stack["am1"], stack["am2"]
    via_prom, embedded = stack["via_prom"], stack["embedded"]
    instance = f"127.0.0.1:{stack['agent'].port}"

    # Cold start, then both analyzers fit on ~60 s of normal behaviour. (Counter rates are left
    # out of this test's queries: on a loaded CI machine the driver thread's timing jitter
    # makes a synthetic rate heavy-tailed. Rates are covered by the other e2e tests.)
    wait_until(
        lambda: metric(embedded, "dcwatch_model_state", state="cold_start") == 1,
        timeout=30,
        what="the embedded analyzer to report cold start",
    )
    wait_until(
        lambda: fitted(via_prom) and fitted(embedded), timeout=120, what="both analyzers to fit"
    )
    # Some normal scoring after the fit: both settle with no alert (a fit on 60 training rows may
    # flag a normal row right after it; the tail is an extrapolation).
    wait_until(
        lambda: am_alerts(am1, ALERT) == [] and am_alerts(am2, ALERT) == [],
        timeout=60,
        what="no alert before the fault",
    )

    # Alertmanager 2 goes down; then the fault starts.
    am2.kill()
    driver.target = 1.0
    alerts = wait_until(
        lambda: am_alerts(am1, ALERT), timeout=60, what="the anomaly alert in Alertmanager 1"
    )
    a = alerts[0]
    assert a["labels"]["instance"] == instance
    assert a["labels"]["severity"] == "warning"
    assert (
        "cpu_temp" in a["annotations"]["description"]
        or "node_power" in a["annotations"]["description"]
    )
    assert float(a["annotations"]["score"]) >= 1
    assert a["generatorURL"].startswith(via_prom.url)

    # The embedded analyzer detected it too, but its Alertmanager is down: queued, not lost.
    wait_until(
        lambda: (metric(embedded, "dcwatch_alerts_queued", alertmanager=am2.url) or 0) >= 1,
        timeout=60,
        what="the embedded analyzer to queue its alert",
    )
    am2.restart()
    wait_until(
        lambda: am_alerts(am2, ALERT),
        timeout=30,
        what="the queued alert to reach Alertmanager 2 after its restart",
    )

    # The fault ends: both alerts resolve.
    driver.target = 0.0
    wait_until(
        lambda: not am_alerts(am1, ALERT) and not am_alerts(am2, ALERT),
        timeout=120,
        what="the alerts to resolve",
    )
    resolved = am_alerts(am1, ALERT, active=False)
    assert resolved == [] or all(x["status"]["state"] != "active" for x in resolved)
