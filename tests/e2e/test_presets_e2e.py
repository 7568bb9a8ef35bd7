"""End to end, the analyzer on the exporters a fleet already runs, with nothing of dcwatch's on
the node: (a) Debian's real node_exporter on a fixture tree whose sensors are driven, scraped by a
real Prometheus at 1 s, read by the analyzer with ``--queries-preset node_exporter``; (b) a
recorded dcgm-exporter exposition served with values varying on each scrape, scraped by the
analyzer itself (embedded mode) with ``--queries-preset dcgm``. Each analyzer fits on a minute of
normal behaviour, then an injected fault raises DcwatchNodeAnomaly in a real Alertmanager, naming
the preset's series.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.detectors.test_presets import (
    DCGM_METRICS,
    add_host_proc,
    node_exporter_binary,
    start_node_exporter,
)
from tests.e2e import test_analyzer_e2e
from tests.e2e.dcwatch_procs import FAST_ALERTING, am_alerts, copy_tree, metric, start_analyzer
from tests.e2e.test_analyzer_e2e import ALERT, TRAINING, Driver, fitted
from tests.helpers import wait_until
from tests.procs import (
    Proc,
    alertmanager_binary,
    prometheus_binary,
    start_alertmanager,
    start_prometheus,
)

pytestmark = pytest.mark.e2e


def _need(*binaries: tuple[str, str | None]) -> None:
    missing = [name for name, path in binaries if path is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/setup.sh)")


def _fit_then_alert(analyzer: Proc, am: Proc, start_fault: object) -> dict:
    """Cold start, fit, a few normal scores without an alert, then the fault's alert."""
    wait_until(
        lambda: metric(analyzer, "dcwatch_model_state", state="cold_start") == 1,
        timeout=60,
        what="the analyzer to see the node and report cold start",
    )
    wait_until(lambda: fitted(analyzer), timeout=120, what="the analyzer to fit")
    # some normal scoring after the fit: it settles with no alert (60 training rows may flag a
    # normal row right after the fit; the tail is an extrapolation)
    wait_until(lambda: am_alerts(am, ALERT) == [], timeout=60, what="no alert before the fault")
    assert callable(start_fault)
    start_fault()
    alerts = wait_until(lambda: am_alerts(am, ALERT), timeout=60, what="the anomaly alert")
    assert isinstance(alerts, list)
    return alerts[0]


# --- (a) node_exporter -> Prometheus -> analyzer ------------------------------------------------


def write_unpadded(fd: int, value: int) -> None:
    """Like the kernel: the value and a line feed. node_exporter, unlike the agent, skips a
    sensor whose file has trailing blanks (the Driver's padding); the driven values keep their
    number of digits, so one write at offset 0 leaves nothing of an old value behind."""
    os.pwrite(fd, f"{value}\n".encode(), 0)


@pytest.fixture
def node_exporter_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    _need(
        ("prometheus-node-exporter", node_exporter_binary()),
        ("prometheus", prometheus_binary()),
        ("prometheus-alertmanager", alertmanager_binary()),
    )
    root = copy_tree("gpu-node-a", tmp_path)
    # The driven CPU sensor (hwmon3) becomes the hottest, so the preset's max follows it.
    for f in (root / "sys/class/hwmon/hwmon4").glob("temp*_input"):
        f.write_text("40000\n")
    # node_exporter reads a still copy of proc/: the Driver's network counter grows by thread
    # ticks, whose rate is heavy-tailed on a loaded machine (see test_analyzer_e2e); the fault
    # is in the sensors, under sys/.
    still = add_host_proc(copy_tree("gpu-node-a", tmp_path / "still")) / "proc"
    monkeypatch.setattr(test_analyzer_e2e, "write_in_place", write_unpadded)
    driver = Driver(root)
    driver.thread.start()
    procs: list[Proc] = []
    try:
        ne = start_node_exporter(tmp_path / "node_exporter", root, procfs=still)
        procs.append(ne)
        prom = start_prometheus(tmp_path, [f"127.0.0.1:{ne.port}"], scrape_interval="1s")
        procs.append(prom)
        am = start_alertmanager(tmp_path / "am")
        procs.append(am)
        analyzer = start_analyzer(
            tmp_path,
            "analyzer",
            [
                f"--prometheus-url={prom.url}",
                "--queries-preset=node_exporter",
                f"--alerting-alertmanagers={am.url}",
                "--model-workers=0",
                *FAST_ALERTING,
                *TRAINING,
            ],
        )
        procs.append(analyzer)
        yield {"driver": driver, "ne": ne, "am": am, "analyzer": analyzer}
    finally:
        driver.stop.set()
        for p in reversed(procs):
            p.stop()


def test_node_exporter_preset_fits_and_alerts_through_prometheus(node_exporter_stack: dict) -> None:
    s = node_exporter_stack
    driver: Driver = s["driver"]

    def fault() -> None:
        driver.target = 1.0  # CPU package +35 °C, node power +600 W

    alert = _fit_then_alert(s["analyzer"], s["am"], fault)
    assert alert["labels"]["instance"] == f"127.0.0.1:{s['ne'].port}"
    description = alert["annotations"]["description"]
    assert "node_hwmon_temperature_max" in description or "node_hwmon_power" in description
    assert float(alert["annotations"]["score"]) >= 1


# --- (b) a recorded dcgm-exporter exposition, scraped by the analyzer itself --------------------


class DcgmExporter:
    """Serves the recorded exposition on 127.0.0.1 with values that change on each scrape: levels
    with noise around the recording, counters growing steadily with time; ``fault`` heats GPU 3
    by 30 °C and adds 300 W to its draw."""

    NOISE = {"TEMP": 0.4, "POWER_USAGE": 6.0}  # absolute; other levels get 1 % noise
    FAULTY_GPU = "3"

    def __init__(self) -> None:
        self.lines = DCGM_METRICS.read_text().splitlines()
        self.counters = {
            ln.split()[2] for ln in self.lines if ln.startswith("# TYPE ") and "counter" in ln
        }
        self.fault = False
        self.t0 = time.time()
        self.rng = random.Random(3)
        self.lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render(time.time()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def render(self, now: float) -> str:
        with self.lock:  # one Random, scrapes in threads
            return self._render(now)

    def _render(self, now: float) -> str:
        rng = self.rng
        out = []
        for line in self.lines:
            if line.startswith("#"):
                out.append(line)
                continue
            head, value = line.rsplit(" ", 1)
            name = head.split("{", 1)[0]
            v = float(value)
            if name in self.counters:
                v += round(v * 1e-6 * (now - self.t0)) if v else 0
            elif v:
                sd = next((sd for k, sd in self.NOISE.items() if k in name), abs(v) * 0.01)
                v += rng.gauss(0, sd)
            if self.fault and f'gpu="{self.FAULTY_GPU}"' in head:
                v += {"DCGM_FI_DEV_GPU_TEMP": 30, "DCGM_FI_DEV_POWER_USAGE": 300}.get(name, 0)
            out.append(f"{head} {v:.6g}" if name not in self.counters else f"{head} {v:.0f}")
        return "\n".join(out) + "\n"


@pytest.fixture
def dcgm_stack(tmp_path: Path) -> Iterator[dict]:
    _need(("prometheus-alertmanager", alertmanager_binary()))
    exporter = DcgmExporter()
    exporter.thread.start()
    procs: list[Proc] = []
    try:
        am = start_alertmanager(tmp_path / "am")
        procs.append(am)
        analyzer = start_analyzer(
            tmp_path,
            "analyzer",
            [
                f"--target={exporter.url}",
                "--embedded-scrape-interval=1",
                "--embedded-scrape-timeout=1",
                "--queries-preset=dcgm",
                f"--alerting-alertmanagers={am.url}",
                "--model-workers=0",
                *FAST_ALERTING,
                *TRAINING,
            ],
        )
        procs.append(analyzer)
        yield {"exporter": exporter, "am": am, "analyzer": analyzer}
    finally:
        for p in reversed(procs):
            p.stop()
        exporter.server.shutdown()
        exporter.server.server_close()


def test_dcgm_preset_fits_and_alerts_scraping_dcgm_exporter(dcgm_stack: dict) -> None:
    exporter: DcgmExporter = dcgm_stack["exporter"]
    # The served exposition varies and keeps every recorded series.
    a, b = exporter.render(time.time()), exporter.render(time.time() + 1)
    assert a != b and len(a.splitlines()) == len(exporter.lines)

    def fault() -> None:
        exporter.fault = True

    alert = _fit_then_alert(dcgm_stack["analyzer"], dcgm_stack["am"], fault)
    port = exporter.server.server_address[1]
    assert alert["labels"]["instance"] == f"127.0.0.1:{port}"
    description = alert["annotations"]["description"]
    assert re.search(r'dcgm_(gpu_temperature|power)\{gpu="3"\}', description), description
