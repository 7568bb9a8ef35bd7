"""Hostile input end to end: one embedded analyzer scrapes two real agents and three hostile
targets (a 200 MB /metrics, one that never answers, one serving random bytes), alerting a real
Alertmanager. It is killed with SIGKILL mid-incident and restarted.

Asserted: the hostile targets are down with a reason and store nothing; the healthy nodes are
scraped on time and scored throughout; the analyzer's peak RSS stays under the 1 GiB bound
(printed to the test's log); an injected fault still alerts; after the kill -9 and restart the
alert is still firing in Alertmanager and resolves when the fault ends: no alert is lost.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.dcwatch_procs import (
    FAST_ALERTING,
    am_alerts,
    copy_tree,
    get_json,
    metric,
    start_agent,
    start_analyzer,
)
from tests.e2e.test_analyzer_e2e import ALERT, QUERIES, TRAINING, Driver
from tests.helpers import samples, wait_until
from tests.procs import Proc, alertmanager_binary, start_alertmanager

pytestmark = pytest.mark.e2e

HUGE_BYTES = 200 * 1024 * 1024
RSS_BOUND = 1024 * 1024 * 1024


class Hostile(BaseHTTPRequestHandler):
    """/huge: 200 MB of well-formed exposition; /hang: never answers; /garbage: random bytes."""

    release = threading.Event()

    def do_GET(self) -> None:
        try:
            if self.path.startswith("/huge"):
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                line = b'dcwatch_gpu_temperature_celsius{gpu="%d",uuid="GPU-x"} 42\n'
                chunk = b"".join(line % i for i in range(20000))
                sent = 0
                while sent < HUGE_BYTES:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            elif self.path.startswith("/hang"):
                self.release.wait(600)
            else:
                body = random.Random(7).randbytes(64 * 1024)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the scraper gave up on us: what a bound looks like from here

    def log_message(self, *args: object) -> None:
        pass


def peak_rss(proc: Proc) -> int:
    assert proc.popen is not None
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def target_up(an: Proc, url: str) -> float | None:
    return metric(an, "dcwatch_target_up", target=url)


def scored_rows(an: Proc, instance: str) -> float:
    return metric(an, "dcwatch_scored_rows_total", instance=instance) or 0.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict]:
    if alertmanager_binary() is None:
        pytest.skip("prometheus-alertmanager not installed (scripts/setup.sh)")
    procs: list[Proc] = []
    driver = Driver(copy_tree("gpu-node-a", tmp_path))
    (tmp_path / "quiet").mkdir()
    calm = Driver(copy_tree("gpu-node-a", tmp_path / "quiet"))  # noise, never a fault
    driver.thread.start()
    calm.thread.start()
    hostile = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    hostile.daemon_threads = True
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{hostile.server_address[1]}"
    try:
        faulty = start_agent(tmp_path, driver.root, ["--collectors=power,thermal,network"])
        quiet = start_agent(tmp_path / "quiet", calm.root, ["--collectors=power,thermal,network"])
        procs += [faulty, quiet]
        am = start_alertmanager(tmp_path / "am")
        procs.append(am)
        hostile_urls = {k: f"{base}/{k}/metrics" for k in ("huge", "hang", "garbage")}
        targets = [f"{faulty.url}/metrics", f"{quiet.url}/metrics", *hostile_urls.values()]
        an = start_analyzer(
            tmp_path,
            "analyzer",
            [
                *(f"--target={t}" for t in targets),
                "--embedded-scrape-interval=1",
                "--embedded-scrape-timeout=1",
                f"--alerting-alertmanagers={am.url}",
                "--model-workers=0",
                *FAST_ALERTING,
                *TRAINING,
            ],
            queries_text=QUERIES,
        )
        procs.append(an)
        yield {
            "driver": driver,
            "faulty": faulty,
            "quiet": quiet,
            "am": am,
            "an": an,
            "hostile": hostile_urls,
        }
    finally:
        driver.stop.set()
        calm.stop.set()
        Hostile.release.set()
        hostile.shutdown()
        for p in reversed(procs):
            p.stop()


def test_hostile_targets_do_not_take_alerting_down(stack: dict) -> None:
    an, am, driver = stack["an"], stack["am"], stack["driver"]
    faulty = f"127.0.0.1:{stack['faulty'].port}"
    quiet = f"127.0.0.1:{stack['quiet'].port}"

    # The hostile targets are down, each for its reason; the agents are up.
    for url in stack["hostile"].values():
        wait_until(lambda u=url: target_up(an, u) == 0, timeout=30, what=f"{url} to be down")
    wait_until(
        lambda: (
            target_up(an, f"{stack['faulty'].url}/metrics") == 1
            and target_up(an, f"{stack['quiet'].url}/metrics") == 1
        ),
        timeout=30,
        what="both agents to be up",
    )
    # Nothing of the hostile targets became a node.
    nodes = {n["instance"] for n in get_json(f"{an.url}/api/nodes")}  # type: ignore[union-attr]
    assert nodes <= {faulty, quiet}, nodes

    # Both healthy nodes fit after the 60 s cold start and are scored every step (1 s).
    wait_until(
        lambda: (
            metric(an, "dcwatch_model_state", instance=faulty, state="fitted") == 1
            and metric(an, "dcwatch_model_state", instance=quiet, state="fitted") == 1
        ),
        timeout=150,
        what="both healthy nodes to fit",
    )
    before = {i: scored_rows(an, i) for i in (faulty, quiet)}
    time.sleep(10)
    for inst, n0 in before.items():
        rows = scored_rows(an, inst) - n0
        assert rows >= 6, f"{inst}: {rows} rows scored in 10 s at a 1 s step"

    # The fault still alerts.
    driver.target = 1.0
    wait_until(lambda: am_alerts(am, ALERT), timeout=60, what="the anomaly alert")
    rss = peak_rss(an)
    print(f"analyzer peak RSS with a 200 MB target: {rss / 2**20:.0f} MiB")
    assert rss < RSS_BOUND

    # kill -9 mid-incident, restart: the incident is still firing in Alertmanager, then resolves.
    assert an.popen is not None
    os.kill(an.popen.pid, signal.SIGKILL)
    an.popen.wait(10)
    an.start(other_port_on_clash=False)
    time.sleep(8)  # longer than the alert's resend interval and its endsAt margin
    assert am_alerts(am, ALERT), "the alert was lost across a kill -9"
    driver.target = 0.0
    wait_until(lambda: not am_alerts(am, ALERT), timeout=150, what="the alert to resolve")
    body = samples(open_metrics(an))
    assert any(n == "dcwatch_target_up" and v == 0 for (n, _), v in body.items())
    rss = peak_rss(an)
    print(f"analyzer peak RSS after restart: {rss / 2**20:.0f} MiB")
    assert rss < RSS_BOUND


def open_metrics(proc: Proc) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=5) as r:
        return r.read().decode()
