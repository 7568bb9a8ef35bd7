"""Every Grafana panel's PromQL runs against a real Prometheus and returns data.

The stack: the real agent on a copy of the gpu-node-a fixture; NVML is not in a subprocess's
reach, so a small proxy serves the agent's /metrics with the fake-NVML golden output appended
(one target per node, as a real GPU node exposes it); the real analyzer reading Prometheus, with
a capacity rule on GPU memory (one GPU is over its threshold, so a time to exhaustion exists)
and a real Alertmanager; a real Prometheus scraping the proxy and the analyzer with the shipped
scrape config (file_sd, honor_labels) and the shipped recording and alerting rules (group
intervals dropped so the daily-energy group evaluates within the test).

Template variables are replaced as Grafana does; each query must succeed and, except for the
panels listed in NO_DATA with their reason, return at least one series.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import FIXTURES
from tests.deploy.dashboards import DASHBOARDS, load, queries, substitute
from tests.e2e.dcwatch_procs import copy_tree, start_agent, start_analyzer
from tests.helpers import free_port
from tests.procs import (
    Proc,
    alertmanager_binary,
    prometheus_binary,
    start_alertmanager,
    start_prometheus,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
GPU_METRICS = (FIXTURES / "fake-nvml" / "metrics.golden.txt").read_text()
# Attribution of the same fake GPUs (a pod, a Slurm job): the "by namespace / pod / job" panels.
GPU_METRICS += (FIXTURES / "fake-nvml" / "workload.golden.txt").read_text()

# (dashboard uid, panel title): why it is empty in this setup.
NO_DATA = {
    ("dcwatch-anomalies", "Top contributors"): "contributors exist only during an anomaly",
    ("dcwatch-anomalies", "Contributors: observed and expected"): "only during an anomaly",
}

ANALYZER_CONFIG = """
listen: 127.0.0.1:{port}
state_dir: {state}
log_level: debug
prometheus: {{url: "{prom}"}}
model: {{step: 1, min_train: 8, train_window: 600, workers: 0}}
alerting: {{alertmanagers: ["{am}"], resend_interval: 2, retry_initial: 0.5, retry_max: 2}}
capacity_rules:
  - name: gpu_memory
    series: dcwatch_gpu_memory_used_bytes
    per: gpu
    capacity: dcwatch_gpu_memory_total_bytes
    threshold: 0.5        # GPU 0 of the fixture uses 50.2 %: full now
    horizon: 60s
    step: 1s
    history: 2m
    min_history: 5s
    refit: 10s
    forecaster: linear
    window: 10s
    forecast_horizons: [10s, 30s]
"""


class GpuNodeProxy:
    """Serves the agent's /metrics followed by the fake-NVML families, on 127.0.0.1."""

    def __init__(self, agent_url: str) -> None:
        agent = f"{agent_url}/metrics"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with urllib.request.urlopen(agent, timeout=5) as r:
                    body = r.read() + b"\n" + GPU_METRICS.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def shipped_scrape_configs(tmp_path: Path, agents: list[str], analyzers: list[str]) -> list[dict]:
    """deploy/prometheus/prometheus.yml's scrape configs, its file_sd files pointing here."""
    cfg = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        "dcwatch-agent": [{"targets": agents, "labels": {"rack": "r01"}}],
        "dcwatch-analyzer": [{"targets": analyzers}],
    }
    jobs = cfg["scrape_configs"]
    for job in jobs:
        f = tmp_path / f"{job['job_name']}.yml"
        f.write_text(yaml.safe_dump(targets[job["job_name"]]))
        job["file_sd_configs"] = [{"files": [str(f)], "refresh_interval": "1s"}]
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
    return jobs


def shipped_rules(tmp_path: Path) -> list[Path]:
    out = []
    for p in sorted((REPO / "deploy/prometheus/rules").glob("*.yml")):
        doc = yaml.safe_load(p.read_text())
        for g in doc["groups"]:
            g.pop("interval", None)  # evaluate every second, like the rest
        out.append(tmp_path / p.name)
        out[-1].write_text(yaml.safe_dump(doc))
    return out


def start_dashboard_analyzer(tmp_path: Path, port: int, prom_url: str, am_url: str) -> Proc:
    """The analyzer configured by a YAML file alone (Prometheus source, one capacity rule)."""
    text = ANALYZER_CONFIG.format(
        port=port, state=tmp_path / "analyzer" / "state", prom=prom_url, am=am_url
    )
    return start_analyzer(tmp_path, "analyzer", config_text=text, port=port)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict]:
    if prometheus_binary() is None or alertmanager_binary() is None:
        pytest.skip("prometheus / prometheus-alertmanager not installed (scripts/setup.sh)")
    procs: list[Proc] = []
    proxy = None
    try:
        agent = start_agent(tmp_path, copy_tree("gpu-node-a", tmp_path))
        procs.append(agent)
        proxy = GpuNodeProxy(agent.url)
        am = start_alertmanager(tmp_path)
        procs.append(am)
        analyzer_port = free_port()
        prom = start_prometheus(
            tmp_path,
            evaluation_interval="1s",
            rule_files=shipped_rules(tmp_path),
            extra_config={
                "scrape_configs": shipped_scrape_configs(
                    tmp_path, [proxy.address], [f"127.0.0.1:{analyzer_port}"]
                )
            },
        )
        procs.append(prom)
        procs.append(start_dashboard_analyzer(tmp_path, analyzer_port, prom.url, am.url))
        yield {"prom": prom, "instance": proxy.address, "analyzer": procs[-1]}
    finally:
        for p in reversed(procs):
            p.stop()
        if proxy is not None:
            proxy.close()


def first_label(prom_url: str, expr: str, label: str) -> str | None:
    for s in instant(prom_url, expr):
        if s["metric"].get(label):
            return s["metric"][label]
    return None


def instant(prom_url: str, expr: str) -> list[dict]:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{expr}: {e.read().decode()}") from None
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return result if body["data"]["resultType"] in ("vector", "matrix") else [result]


def test_every_panel_query_runs_and_returns_data(stack: dict) -> None:
    prom = stack["prom"].url
    values: dict[str, object] = {
        "instance": stack["instance"],
        "gpu": ["0", "1"],
        "rule": "gpu_memory",
        "__rate_interval": "15s",
        "__interval": "5s",
        "__range": "1m",
    }
    dashboards = [load(p) for p in DASHBOARDS]
    all_queries = [(d["uid"], p["title"], t["expr"]) for d in dashboards for p, t in queries(d)]
    assert {k for k in NO_DATA} <= {(u, title) for u, title, _ in all_queries}, "stale NO_DATA"

    empty: dict[tuple[str, str], list[str]] = {}
    deadline = time.monotonic() + 120
    while True:
        values["horizon"] = first_label(prom, "dcwatch_forecast", "horizon") or "10s"
        panels_with_data: set[tuple[str, str]] = set()
        empty = {}
        for uid, title, expr in all_queries:
            q = substitute(f"{title}\n{expr}", values).split("\n", 1)[1]
            if instant(prom, q):  # a query error fails here, at once
                panels_with_data.add((uid, title))
            else:
                empty.setdefault((uid, title), []).append(q)
        missing = {k: v for k, v in empty.items() if k not in panels_with_data and k not in NO_DATA}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, "panels without data:\n" + "\n".join(
        f"{uid} / {title}: {qs}" for (uid, title), qs in missing.items()
    )
    panel_count = len({(uid, title) for uid, title, _ in all_queries})
    assert len(panels_with_data) == panel_count - len(NO_DATA) > 50
    # The listed exceptions are really empty (else the list is stale and hides nothing).
    for key, why in NO_DATA.items():
        assert key not in panels_with_data, f"{key} has data now; drop it from NO_DATA ({why})"
