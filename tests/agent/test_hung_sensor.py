"""A sensor read that never returns (a FIFO stands in for a wedged sysfs file): the scrape goes
on without that collector, /healthz names it, and SIGTERM still ends the agent in seconds."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.dcwatch_procs import copy_tree, start_agent


def hang(path: Path) -> None:
    """Replace a sysfs file with a FIFO that nobody writes: opening it blocks forever."""
    path.unlink()
    os.mkfifo(path)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=15) as r:
        return r.read()


def test_hung_reads_degrade_health_and_do_not_block_shutdown(tmp_path: Path) -> None:
    root = copy_tree("gpu-node-a", tmp_path)
    hang(root / "sys/devices/virtual/thermal/thermal_zone0/temp")
    hang(next((root / "sys/class/net").iterdir()).resolve() / "carrier")

    agent = start_agent(tmp_path, root, ["--collector-timeout=1s"])
    try:
        t0 = time.monotonic()
        body = get(agent.url + "/metrics").decode()
        assert time.monotonic() - t0 < 10
        assert 'dcwatch_scrape_collector_success{collector="thermal"} 0.0' in body
        assert 'dcwatch_scrape_collector_success{collector="network"} 0.0' in body
        assert 'dcwatch_scrape_collector_success{collector="power"} 1.0' in body
        assert "dcwatch_rapl_energy_joules_total" in body or "dcwatch_hwmon" in body
        health = json.loads(get(agent.url + "/healthz"))
        assert health["status"] == "degraded"
        assert set(health["failing"]) >= {"thermal", "network"}
        assert "power" not in health["failing"]
        assert agent.popen is not None
        agent.popen.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        agent.popen.wait(15)
        assert time.monotonic() - t0 < 8, "SIGTERM took too long"
        assert agent.popen.returncode == 0
    finally:
        agent.kill()


def test_a_thread_stuck_in_a_read_does_not_keep_the_agent_alive(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dcwatch.agent import __main__ as agent_main

    exits: list[int] = []
    monkeypatch.setattr(agent_main.os, "_exit", exits.append)
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, name="nvml-read", daemon=False)
    stuck.start()
    try:
        t0 = time.monotonic()
        agent_main._exit_if_reads_hang(grace=0.2)
        assert exits == [0]
        assert time.monotonic() - t0 < 2
        assert "nvml-read" in caplog.text
    finally:
        release.set()
        stuck.join()
