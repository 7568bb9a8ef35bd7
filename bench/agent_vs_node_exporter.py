"""Side-by-side cost of dcwatch's agent and Prometheus' node_exporter on the same sysfs tree.

Both serve the same hardware areas (hwmon, thermal zones, RAPL, netdev, netclass, InfiniBand).
They are scraped alternately; we report series count, scrape latency p50/p99, CPU seconds per
1,000 scrapes (from the servers' own CPU times), RSS, bytes per scrape, and throughput with 32
concurrent scrapers. Run by hand:

    .venv/bin/python bench/agent_vs_node_exporter.py [--root tests/fixtures/gpu-node-a] [-n 1000]

Writes bench/reports/agent_vs_node_exporter.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import find_binary, free_port, wait_until  # noqa: E402

NODE_EXPORTER_COLLECTORS = ("hwmon", "thermal_zone", "netdev", "netclass", "rapl", "infiniband")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system


def start_dcwatch(root: Path, collectors: str, agent_cmd: str = "") -> Server:
    port = free_port()
    cmd = [
        *(shlex.split(agent_cmd) if agent_cmd else [str(REPO / ".venv/bin/dcwatch")]),
        "agent",
        f"--listen=127.0.0.1:{port}",
        f"--sysfs={root / 'sys'}",
        f"--procfs={root / 'proc'}",
        f"--collectors={collectors}",
        "--log-level=warning",
    ]
    return Server("dcwatch agent", subprocess.Popen(cmd), port)


def start_node_exporter(root: Path) -> Server:
    binary = find_binary("prometheus-node-exporter", "node_exporter")
    if not binary:
        sys.exit("node_exporter not found: apt-get install prometheus-node-exporter")
    port = free_port()
    cmd = [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        f"--path.sysfs={root / 'sys'}",
        f"--path.procfs={root / 'proc'}",
        "--log.level=warn",
        *[f"--collector.{c}" for c in NODE_EXPORTER_COLLECTORS],
    ]
    return Server("node_exporter", subprocess.Popen(cmd), port)


def scrape(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}")
    return body


def series_count(body: bytes) -> tuple[int, int]:
    """(all series, series excluding the exporters' own go_/process_/promhttp_/self metrics)."""
    lines = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
    own = (
        "go_",
        "process_",
        "promhttp_",
        "node_scrape_",
        "node_exporter_",
        "dcwatch_scrape_",
        "dcwatch_process_",
        "dcwatch_build_",
    )
    return len(lines), sum(1 for ln in lines if not ln.startswith(own))


async def concurrent_throughput(port: int, clients: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    await r.read()
                    done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.perf_counter() - t0)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--root",
        type=Path,
        default=REPO / "tests/fixtures/gpu-node-a",
        help="directory holding sys/ and proc/ (use / for this host)",
    )
    ap.add_argument("-n", type=int, default=1000, help="scrapes per server")
    ap.add_argument("--collectors", default="power,thermal,network")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput test")
    ap.add_argument("--report", type=Path, default=REPO / "bench/reports/agent_vs_node_exporter.md")
    ap.add_argument(
        "--agent-cmd",
        default="",
        help="command that runs dcwatch (e.g. another checkout's, for a before/after); "
        "default .venv/bin/dcwatch",
    )
    args = ap.parse_args()

    servers = [
        start_dcwatch(args.root, args.collectors, args.agent_cmd),
        start_node_exporter(args.root),
    ]
    try:
        conns = {}
        for s in servers:
            wait_until(lambda s=s: _ok(s.port), timeout=30, what=f"{s.name} to serve")
            conns[s.name] = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            for _ in range(20):  # warm up: static discovery, caches, JIT-free but page-in
                scrape(conns[s.name])
        lat: dict[str, list[float]] = {s.name: [] for s in servers}
        cpu0 = {s.name: s.cpu() for s in servers}
        sizes: dict[str, int] = {}
        bodies: dict[str, bytes] = {}
        for _ in range(args.n):
            for s in servers:  # alternate so both see the same machine conditions
                t0 = time.perf_counter()
                body = scrape(conns[s.name])
                lat[s.name].append(time.perf_counter() - t0)
                sizes[s.name] = len(body)
                bodies[s.name] = body
        cpu = {s.name: s.cpu() - cpu0[s.name] for s in servers}
        rss = {s.name: s.ps.memory_info().rss for s in servers}
        thr = {
            s.name: asyncio.run(concurrent_throughput(s.port, args.concurrency, args.seconds))
            for s in servers
        }
        rss_after = {s.name: s.ps.memory_info().rss for s in servers}
    finally:
        for s in servers:
            s.proc.terminate()
            s.proc.wait(10)

    rows = []
    for s in servers:
        n_all, n_hw = series_count(bodies[s.name])
        rows.append(
            f"| {s.name} | {n_all} | {n_hw} | {statistics.median(lat[s.name]) * 1e3:.2f} | "
            f"{pct(lat[s.name], 0.99) * 1e3:.2f} | {cpu[s.name] / args.n * 1e3:.2f} | "
            f"{rss[s.name] / 2**20:.1f} / "
            f"{rss_after[s.name] / 2**20:.1f} | {sizes[s.name]} | {thr[s.name]:.0f} |"
        )
    a, b = (s.name for s in servers)
    report = "\n".join(
        [
            "# dcwatch agent vs node_exporter",
            "",
            f"Tree: `{args.root}`; {args.n} alternating scrapes each; dcwatch collectors "
            f"`{args.collectors}`; node_exporter collectors `{','.join(NODE_EXPORTER_COLLECTORS)}`;"
            f" {args.concurrency} concurrent scrapers for {args.seconds:g} s. Machine: "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}.",
            "",
            "| server | series | hardware series | p50 ms | p99 ms | CPU ms/scrape (= s per 1000) "
            "| RSS MiB (after serial / after concurrent) | bytes/scrape | scrapes/s @32 |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"CPU per scrape ratio {a}/{b}: {cpu[a] / cpu[b]:.2f}; "
            f"p99 ratio: {pct(lat[a], 0.99) / pct(lat[b], 0.99):.2f}.",
            "",
        ]
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    print(report)
    return 0


def _ok(port: int) -> bool:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        scrape(c)
        return True
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
