"""The test process manager itself: real Prometheus and Alertmanager start, answer, restart."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.procs import alertmanager_binary, prometheus_binary, start_alertmanager, start_prometheus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        alertmanager_binary() is None or prometheus_binary() is None,
        reason="Prometheus/Alertmanager binaries not installed (Debian packages prometheus, "
        "prometheus-alertmanager; scripts/setup.sh installs them when run as root)",
    ),
]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def test_prometheus_scrapes_and_knows_its_alertmanager(tmp_path: Path) -> None:
    with start_alertmanager(tmp_path) as am:
        target = am.url.removeprefix("http://")
        with start_prometheus(tmp_path, [target], alertmanagers=[am.url]) as prom:
            # Prometheus applies discovered targets in batches every 5 s.
            wait_until(
                lambda: get_json(prom.url + "/api/v1/query?query=up")["data"]["result"],
                timeout=20,
                what="Prometheus to scrape Alertmanager",
            )
            ams = get_json(prom.url + "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
            assert ams == [{"url": am.url + "/api/v2/alerts"}]
            prom.reload()


def test_restart_keeps_the_port_and_failures_show_the_log(tmp_path: Path) -> None:
    am = start_alertmanager(tmp_path)
    try:
        port, pid = am.port, am.popen.pid  # type: ignore[union-attr]
        am.kill()
        assert not am.running
        am.restart()
        assert am.port == port and am.popen.pid != pid  # type: ignore[union-attr]
        get_json(am.url + "/api/v2/status")
    finally:
        am.stop()
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="exited with") as e:
        start_alertmanager(tmp_path, extra_args=["--no-such-flag"])
    assert "no-such-flag" in str(e.value) and time.monotonic() - t0 < 10
