"""``dcwatch demo``: real agents over a simulated fleet, the analyzer in embedded mode, and a local
Alertmanager when one is installed; every page says it is a demo.

Each node is one ``dcwatch agent`` process reading its generated tree (``--sysfs``/``--procfs``)
and the simulated NVML (``DCWATCH_GPU_SIMULATE``). The analyzer runs in this process with short
steps, a 90 s cold start and a refit every two minutes, so that within about three minutes the
overview shows a firing anomaly alert with its contributors and a capacity forecast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.demo.scenario import Scenario
from dcwatch.detectors.web.app import make_app
from dcwatch.detectors.web.keys import DEMO
from dcwatch.serve import ListenError, serve_app, setup_logging

log = logging.getLogger("dcwatch.demo")

BANNER = (
    "DEMO: a simulated fleet ({nodes} nodes, time running {speed:g}x faster). The GPUs, NICs and "
    "faults are generated; nothing here comes from real hardware."
)
CAPACITY = """capacity_rules:
  - name: gpu_memory
    title: GPU memory
    series: dcwatch_gpu_memory_used_bytes
    per: gpu
    capacity: dcwatch_gpu_memory_total_bytes
    threshold: 0.9
    horizon: 1h
    step: 2s
    history: 10m
    min_history: 20s
    refit: 10s
    forecaster: linear
    window: 40s
    forecast_horizons: [5m]
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcwatch demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:9479", help="the analyzer's HOST:PORT")
    p.add_argument("--nodes", type=int, default=3, help="simulated nodes (at least 3)")
    p.add_argument("--dir", type=Path, default=Path("var/demo"), help="trees and state (wiped)")
    p.add_argument("--agent-port", type=int, default=0, help="first agent port (0: free ports)")
    p.add_argument("--speed", type=float, default=2.0, help="simulated seconds per second")
    p.add_argument("--fault-after", type=float, default=120.0, help="seconds before the faults")
    p.add_argument("--alertmanager", default="auto", help="auto | none | URL of one running")
    p.add_argument("--log-level", default="info")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(root: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DCWATCH_GPU_SIMULATE=str(root / "gpu.json"))
    argv = [
        sys.executable,
        "-m",
        "dcwatch.cli",
        "agent",
        f"--listen=127.0.0.1:{port}",
        f"--sysfs={root / 'sys'}",
        f"--procfs={root / 'proc'}",
        "--log-level=warning",
    ]
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)


def start_alertmanager(work: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        return None, ""
    port = free_port()
    (work / "alertmanager").mkdir(parents=True, exist_ok=True)
    cfg = work / "alertmanager/alertmanager.yml"
    cfg.write_text(
        "route: {receiver: log, group_wait: 5s, group_interval: 30s, repeat_interval: 4h}\n"
        "receivers: [{name: log}]\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.path={work / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


async def drive(scenario: Scenario, start: float) -> None:
    """Advance the simulated fleet four times a second (agents are scraped every second)."""
    while True:
        await asyncio.to_thread(scenario.step, time.monotonic() - start)
        await asyncio.sleep(0.25)


async def run(args: argparse.Namespace) -> None:
    work: Path = args.dir.resolve()
    if work.exists():
        shutil.rmtree(work)  # a demo starts from nothing: no model, no alert of a past run
    work.mkdir(parents=True)
    scenario = Scenario(work / "nodes", max(3, args.nodes), args.speed, args.fault_after)
    start = time.monotonic()
    scenario.step(0.0)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        targets = []
        for i, node in enumerate(scenario.nodes):
            port = args.agent_port + i if args.agent_port else free_port()
            procs.append(start_agent(node.root, port))
            targets.append(f"http://127.0.0.1:{port}/metrics")
        am_url = args.alertmanager
        if am_url == "auto":
            am, am_url = start_alertmanager(work)
            if am is not None:
                procs.append(am)
        (work / "analyzer.yml").write_text(CAPACITY)
        flags = [
            f"--config={work / 'analyzer.yml'}",
            f"--listen={args.listen}",
            f"--state-dir={work / 'analyzer'}",
            f"--target={','.join(targets)}",
            "--embedded-scrape-interval=1s",
            "--embedded-scrape-timeout=1s",
            "--model-step=2s",
            "--model-min-train=90s",
            "--model-train-window=30m",
            # refits often: the compressed daily cycle must not outrun what the model has seen
            "--model-refit-interval=2m",
            # a very short training window: ask for rare alerts, the faults are far beyond them
            "--model-alerts-per-week=0.01",
            "--model-workers=1",
            f"--alerting-alert-log={work / 'alerts.jsonl'}",
            f"--log-level={args.log_level}",
        ]
        if am_url and am_url != "none":
            flags.append(f"--alerting-alertmanagers={am_url}")
        cfg = load_analyzer_config(flags, env={})
        app = make_app(cfg)
        names = ", ".join(
            f"{n.name} = {t.removeprefix('http://').removesuffix('/metrics')}"
            for n, t in zip(scenario.nodes, targets, strict=True)
        )
        app[DEMO] = BANNER.format(nodes=len(scenario.nodes), speed=args.speed) + f" ({names})"
        driver = asyncio.create_task(drive(scenario, start), name="dcwatch-demo-scenario")
        host, port = cfg.listen
        log.warning(
            "dcwatch demo: %d simulated nodes; analyzer http://%s:%d/ (alert expected within "
            "about 3 minutes)%s; Ctrl-C to stop",
            len(scenario.nodes),
            host,
            port,
            f", alertmanager {am_url}" if am_url and am_url != "none" else "",
        )
        try:
            await serve_app(app, host, port, name="dcwatch demo analyzer")
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        asyncio.run(run(args))
    except ListenError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
