"""End to end: a real Prometheus scrapes the real agent serving a fixture tree.

The test changes counters in the tree while Prometheus scrapes, so rates are known exactly:
eno1 receives 2 MB/s and RAPL package 0 draws 150 W.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dcwatch_procs import copy_tree, prom_query, prom_value, start_agent
from tests.helpers import wait_until
from tests.procs import Proc, prometheus_binary, start_prometheus

pytestmark = pytest.mark.e2e

NET_RATE = 2e6  # bytes/s written into eno1's receive counter
RAPL_WATTS = 150.0  # joules/s written into intel-rapl:0's energy counter


class CounterWriter:
    """Advances eno1's rx bytes and RAPL package 0's energy linearly with wall time."""

    def __init__(self, root: Path) -> None:
        self.netdev = root / "proc/net/dev"
        self.rapl = root / "sys/class/powercap/intel-rapl:0/energy_uj"
        self.net_text = self.netdev.read_text()
        self.net_base = int(
            next(ln for ln in self.net_text.splitlines() if ln.strip().startswith("eno1:"))
            .split(":")[1]
            .split()[0]
        )
        self.rapl_base = int(self.rapl.read_text())
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # One in-place pwrite per update, never truncate-then-write: a scrape must not see an
        # empty file (real procfs/sysfs never shows one). The numbers only grow, so the new
        # text is never shorter than the old.
        net_fd = os.open(self.netdev, os.O_WRONLY)
        rapl_fd = os.open(self.rapl, os.O_WRONLY)
        try:
            while not self.stop.wait(0.1):
                dt = time.monotonic() - self.t0
                rx = self.net_base + int(NET_RATE * dt)
                text = self.net_text.replace(f"eno1:{self.net_base} ", f"eno1:{rx} ")
                os.pwrite(net_fd, text.encode(), 0)
                energy = self.rapl_base + int(RAPL_WATTS * 1e6 * dt)
                os.pwrite(rapl_fd, f"{energy}\n".encode(), 0)
        finally:
            os.close(net_fd)
            os.close(rapl_fd)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Proc, Proc, CounterWriter]]:
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed (scripts/setup.sh installs it as root)")
    root = copy_tree("gpu-node-a", tmp_path)
    writer = CounterWriter(root)
    writer.thread.start()
    agent = start_agent(tmp_path, root)
    prom = None
    try:
        prom = start_prometheus(tmp_path, [f"127.0.0.1:{agent.port}"], scrape_interval="1s")
        yield agent, prom, writer
    finally:
        writer.stop.set()
        if prom is not None:
            prom.stop()
        agent.stop()


def test_prometheus_scrapes_agent(stack: tuple[Proc, Proc, CounterWriter]) -> None:
    _agent, prom, _ = stack
    job = 'job="target0"'
    wait_until(
        lambda: prom_value(prom.url, f"up{{{job}}}") == 1,
        timeout=30,
        what="Prometheus to scrape the agent (up == 1)",
    )

    # Fixed values of the tree, read back through Prometheus.
    assert prom_value(prom.url, 'dcwatch_cpu_temp_celsius{package="0",core=""}') == 52.0
    assert prom_value(prom.url, 'dcwatch_hwmon_fan_rpm{chip_name="nct6775",sensor="fan1"}') == 1180
    assert prom_value(prom.url, 'dcwatch_network_speed_bytes_per_second{device="eno1"}') == 3.125e9
    assert prom_value(prom.url, 'dcwatch_infiniband_port_up{device="mlx5_0",port="2"}') == 0
    # Absent hardware is absent, not zero: no GPU (no NVML here), and eno3's unknown speed.
    assert prom_query(prom.url, "dcwatch_gpu_up") == []
    assert prom_query(prom.url, 'dcwatch_network_speed_bytes_per_second{device="eno3"}') == []
    # Every collector succeeded (gpu: "no data" is success); excluded devices never appear.
    success = prom_query(prom.url, "dcwatch_scrape_collector_success")
    assert {r["metric"]["collector"]: r["value"][1] for r in success} == {
        "gpu": "1",
        "power": "1",
        "thermal": "1",
        "network": "1",
        "workload": "1",
        "self": "1",
    }
    assert prom_query(prom.url, 'dcwatch_network_receive_bytes_total{device=~"lo|veth.*"}') == []

    # Rates of counters the test is advancing.
    def rate(expr: str) -> float | None:
        # irate: the last two samples; rate() over a window this short under-extrapolates.
        return prom_value(prom.url, f"irate({expr}[5s])")

    net = 'dcwatch_network_receive_bytes_total{device="eno1"}'
    rapl = 'dcwatch_rapl_energy_joules_total{zone="intel-rapl:0"}'
    wait_until(
        lambda: (rate(net) or 0) > 0 and (rate(rapl) or 0) > 0, timeout=20, what="rates to appear"
    )
    time.sleep(2)
    assert rate(net) == pytest.approx(NET_RATE, rel=0.15)
    assert rate(rapl) == pytest.approx(RAPL_WATTS, rel=0.15)
    # The agent's own cost is visible too.
    assert (prom_value(prom.url, "dcwatch_process_resident_memory_bytes") or 0) > 1e6
