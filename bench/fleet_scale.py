"""How far does one analyzer go on 2 cores, reading a real Prometheus with the default queries?

For each fleet size N: N synthetic nodes x 30 series named as the agent names them (4 GPUs x 6
gauges, node power, CPU/hwmon/thermal-zone temperatures, network counters), ``--history`` of
it backfilled with ``promtool tsdb create-blocks-from openmetrics``, then live samples scraped
every 15 s by Debian's Prometheus (started here on a free port) from one exposition process
serving the whole fleet (``honor_labels``). Measured:

* the source's read of the latest rows (what a scoring pass reads) split into waiting for
  Prometheus, decoding and aligning, and Prometheus' own query time (its engine's
  ``inner_eval`` + ``query_preparation`` summaries);
* fit time per node on the default model, and the fleet's refit on a process pool of 2 and on a
  Dask LocalCluster of 2 workers (a sample of nodes, scaled to N);
* ``dcwatch analyzer`` itself (a subprocess, default settings, ``--prometheus-url``): its scoring
  passes (``dcwatch_scoring_pass_phase_seconds``: read / score / send) and peak RSS, once from an
  empty state directory (cold start, probes and fits; ``--cold-seconds``) and once with every
  node's model in place (scoring only).

    .venv/bin/python bench/fleet_scale.py --nodes 1000 --nodes 3000 [--history 70m]

Writes bench/reports/fleet_scale.md. Generation and backfill take minutes and gigabytes of
disk for 10,000 nodes; the machine this was written on is 2 shared cores.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcwatch.detectors.models.fitting import ModelStore, fit_model  # noqa: E402
from dcwatch.detectors.models.node import ModelConfig, NodeModel  # noqa: E402
from dcwatch.detectors.sources.prometheus import PrometheusConfig, PrometheusSource  # noqa: E402
from dcwatch.durations import parse_duration  # noqa: E402

STEP = 15
GPU_GAUGES = (  # (metric, extra labels, base, spread)
    ("dcwatch_gpu_utilization_ratio", "", 0.6, 0.2),
    ("dcwatch_gpu_memory_utilization_ratio", "", 0.4, 0.1),
    ("dcwatch_gpu_memory_used_bytes", "", 40e9, 5e9),
    ("dcwatch_gpu_temperature_celsius", "", 60.0, 5.0),
    ("dcwatch_gpu_power_usage_watts", "", 450.0, 60.0),
    ("dcwatch_gpu_clock_hertz", 'clock="sm",', 1.7e9, 5e7),
)
NODE_GAUGES = (
    ("dcwatch_node_power_watts", 'source="bmc",', 4000.0, 300.0),
    ("dcwatch_cpu_temp_celsius", 'package="0",core="",', 55.0, 4.0),
    ("dcwatch_hwmon_temp_celsius", 'chip="nct6775",sensor="temp1",', 45.0, 3.0),
    ("dcwatch_thermal_zone_temp_celsius", 'zone="0",type="x86_pkg_temp",', 50.0, 3.0),
)
COUNTERS = (
    ("dcwatch_network_receive_bytes_total", 'device="eth0",', 1e8),
    ("dcwatch_network_transmit_bytes_total", 'device="eth0",', 8e7),
)
GPUS = 4  # 4 x 6 + 4 + 2 = 30 series per node


def series_of(n: int) -> list[tuple[str, str, float, float, bool]]:
    """(metric, labels, base, spread, counter) of every series of node ``n``."""
    out = []
    for metric, extra, base, spread in GPU_GAUGES:
        for g in range(GPUS):
            out.append((metric, f'{extra}gpu="{g}",', base, spread, False))
    out += [(m, e, b, s, False) for m, e, b, s in NODE_GAUGES]
    out += [(m, e, r, r * 0.1, True) for m, e, r in COUNTERS]
    return out


def value(base: float, spread: float, t: np.ndarray, series: int, node: int) -> np.ndarray:
    """One series: an hourly cycle whose phase depends on the series only (nodes alike: the
    bench's scoring run gives every node a copy of one node's model) plus the node's noise."""
    phase = np.random.default_rng(series).uniform(0, 6.3)
    rng = np.random.default_rng([node, series])
    return base + spread * (
        0.5 * np.sin(2 * np.pi * t / 3600 + phase) + 0.3 * rng.normal(size=len(t))
    )


COUNTER_END = 1e13  # every counter's value at the end of the history


def instance(n: int) -> str:
    return f"gpu-{n:05d}.dc.example:9478"


def write_openmetrics(
    path: Path, nodes: int, start: int, end: int, longer: dict[int, int] | None = None
) -> int:
    """History of the fleet, family by family (promtool wants each family's samples together);
    the nodes in ``longer`` start at their own, earlier time (the fit sample: a model trained
    on whole cycles, so that a normal node does not alert)."""
    longer = longer or {}
    count = 0
    with path.open("w") as f:
        families: dict[str, list[tuple[int, str, float, float, bool]]] = {}
        for n in range(nodes):
            for metric, labels, base, spread, counter in series_of(n):
                families.setdefault(metric, []).append((n, labels, base, spread, counter))
        for metric, members in families.items():
            kind = "counter" if metric.endswith("_total") else "gauge"
            name = metric.removesuffix("_total") if kind == "counter" else metric
            f.write(f"# TYPE {name} {kind}\n")
            for n, labels, base, spread, counter in members:
                t = np.arange(longer.get(n, start), end, STEP, dtype=np.int64)
                v = value(base, spread, t, zlib.crc32(f"{metric}{labels}".encode()), n)
                fmt = ".6g"
                if counter:  # ends at COUNTER_END, where the live exposition goes on from
                    v = np.cumsum(np.abs(v) * STEP)
                    v, fmt = COUNTER_END - (v[-1] - v), ".15g"
                prefix = f'{metric}{{{labels}instance="{instance(n)}",job="fleet"}} '
                f.writelines(
                    f"{prefix}{x:{fmt}} {ts}\n"
                    for x, ts in zip(v.tolist(), t.tolist(), strict=True)
                )
                count += len(t)
        f.write("# EOF\n")
    return count


def faulty(n: int, share: float) -> bool:
    """Whether node ``n`` runs hot in the live samples: every ``1/share``-th node."""
    return share > 0 and n % max(1, round(1 / share)) == 0


FAULT = ("dcwatch_gpu_temperature_celsius", 'gpu="0",', 8.0)  # +8 spreads (~+40 C) live


def serve(nodes: int, port: int, share: float, history_end: float, fault_from: float) -> None:
    """The live exposition of the whole fleet (one target, ``honor_labels``), fresh each scrape;
    from ``fault_from`` on, the ``share`` of nodes that are faulty run GPU 0 hot (the alerts a
    pass sends)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    rows = [
        (
            f'{m}{{{lab}instance="{instance(n)}",job="fleet"}} ',
            b,
            sp,
            c,
            zlib.crc32(f"{m}{lab}".encode()),
        )
        for n in range(nodes)
        for m, lab, b, sp, c in series_of(n)
    ]
    base, spread = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    hot = [
        faulty(n, share) and (m, lab) == FAULT[:2]
        for n in range(nodes)
        for m, lab, *_ in series_of(n)
    ]
    fault = np.where(hot, FAULT[2] * spread, 0.0)
    phase = np.array([np.random.default_rng(r[4]).uniform(0, 6.3) for r in rows])
    counter = np.array([r[3] for r in rows])
    rng, last = np.random.default_rng(1), [time.time()]
    total = COUNTER_END + base * (last[0] - history_end)  # the history's counters go on

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            now = time.time()
            cycle = 0.5 * np.sin(2 * np.pi * now / 3600 + phase)  # as in the history
            v = base + spread * (cycle + 0.3 * rng.normal(size=len(rows)))
            if now >= fault_from:
                v += fault
            total[:] += np.abs(v) * (now - last[0]) * counter
            last[0] = now
            v = np.where(counter, total, v)
            # Stamped with the time the values are for: one process serving the whole fleet
            # answers seconds after the scrape starts on a busy machine (an agent answers in
            # milliseconds), which would otherwise show as noise in the counters' rates.
            ms = int(now * 1000)
            body = "".join(
                f"{r[0]}{x:.15g} {ms}\n" if c else f"{r[0]}{x:.6g} {ms}\n"
                for r, x, c in zip(rows, v.tolist(), counter.tolist(), strict=True)
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()


def prom_engine_seconds(prom: str) -> float:
    text = get(f"{prom}/metrics")
    total = 0.0
    for slice_ in ("inner_eval", "prepare_time", "result_sort"):
        m = re.search(
            rf'prometheus_engine_query_duration_seconds_sum{{slice="{slice_}"}} (\S+)', text
        )
        total += float(m[1]) if m else 0.0
    return total


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


class Stack:
    """Prometheus with the backfilled blocks, and the live exposition process."""

    def __init__(
        self,
        work: Path,
        nodes: int,
        history: float,
        sample: list[int],
        fit_history: float,
        share: float,
    ) -> None:
        self.work, self.nodes = work, nodes
        now = int(time.time()) // STEP * STEP
        om = work / "history.om"
        t0 = time.perf_counter()
        longer = {n: now - int(max(history, fit_history)) for n in sample}
        self.end = end = now - 60
        self.samples = write_openmetrics(om, nodes, now - int(history), end, longer)
        self.gen_s = time.perf_counter() - t0
        data = work / "data"
        t0 = time.perf_counter()
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
            check=True,
            capture_output=True,
        )
        self.backfill_s = time.perf_counter() - t0
        om.unlink()
        live = free_port()
        self.live_start = time.time()
        self.fault_from = self.live_start + FAULT_AFTER
        self.live = subprocess.Popen(
            [sys.executable, __file__, "--serve"]
            + [str(x) for x in (nodes, live, share, end, self.fault_from)]
        )
        self.port = free_port()
        cfg = work / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 15s, scrape_timeout: 14s}\n"
            "scrape_configs:\n  - job_name: fleet\n    honor_labels: true\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{live}']}}]\n"
        )
        self.prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={cfg}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=30d",
                "--log.level=warn",
            ]
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                up = get(f"{self.url}/api/v1/query?query=count(dcwatch_node_power_watts)")
                if f'"{nodes}"' in up:
                    return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError("Prometheus did not get the live samples")

    def close(self) -> None:
        for p in (self.prom, self.live):
            p.terminate()
            p.wait(30)


PRIME_ROWS = 12  # live rows each node's model has seen before the scoring run starts
CLEAN_AFTER = 150.0  # seconds of live samples before rates (2 m windows) leave the history gap
FAULT_AFTER = CLEAN_AFTER + (PRIME_ROWS + 4) * STEP  # faulty nodes run hot after the priming
READ_POINTS = 2  # what a steady scoring pass reads (``Analyzer._points_needed``)


async def read_split(url: str, nodes: int, reads: int) -> dict[str, float]:
    """The scoring pass's read (latest ``READ_POINTS`` rows of the fleet) through
    PrometheusSource."""
    src = PrometheusSource(PrometheusConfig(url=url))
    out = {"wall": 0.0, "wait": 0.0, "decode": 0.0, "align": 0.0, "prometheus": 0.0}
    try:
        await src.latest(STEP, READ_POINTS)  # warm
        for _ in range(reads):
            before, eng = dict(src.seconds), prom_engine_seconds(url)
            t0 = time.perf_counter()
            frames = await src.latest(STEP, READ_POINTS)
            out["wall"] += time.perf_counter() - t0
            out["prometheus"] += prom_engine_seconds(url) - eng
            for k in ("wait", "decode", "align"):
                out[k] += src.seconds[k] - before[k]
        assert len(frames) == nodes, len(frames)
        out["columns"] = float(np.mean([len(f.columns) for f in frames.values()]))
    finally:
        await src.close()
    return {k: v / reads if k != "columns" else v for k, v in out.items()}


async def read_frames(
    url: str, start: float, end: float, instances: list[str] | None = None
) -> dict[str, Any]:
    """The fleet's (or ``instances``') frames from ``start`` to ``end`` through PrometheusSource."""
    src = PrometheusSource(PrometheusConfig(url=url))
    try:
        return await src.fetch(start, end, STEP, instances=instances)
    finally:
        await src.close()


def fit_times(frames: list[Any]) -> dict[str, float]:
    cfg = ModelConfig()
    t0 = time.perf_counter()
    for f in frames[:4]:
        fit_model(f, cfg)
    one = (time.perf_counter() - t0) / min(4, len(frames))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(fit_model, frames, [cfg] * len(frames)))
    pool_s = (time.perf_counter() - t0) / len(frames)
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as lc, Client(lc) as c:
        c.gather(c.map(fit_model, frames[:2], [cfg] * 2, pure=False))  # warm the workers
        t0 = time.perf_counter()
        c.gather(c.map(fit_model, frames, [cfg] * len(frames), pure=False))
        dask_s = (time.perf_counter() - t0) / len(frames)
    return {"one": one, "pool": pool_s, "dask": dask_s}


# Seconds between two reads of the analyzer's /metrics (every pass is seen at a 15 s step). At
# 10,000 nodes its exposition takes a fraction of a second of the analyzer's loop: polled every
# 0.5 s, as before, the bench itself took 13 % of the analyzer's time (Prometheus scrapes it
# every 15-60 s).
POLL = 5.0
RSS_LIMIT = 8 * 2**30  # abort the analyzer (and say so) past this; set by --rss-limit-gib


def run_analyzer(
    url: str, state: Path, seconds: float, passes: int, not_before: float = 0.0
) -> dict[str, Any]:
    """``dcwatch analyzer`` with default settings; its peak RSS and its passes' phases, until
    ``passes`` passes (0: ``seconds``) and not before ``not_before``.

    Stopped early, with ``aborted`` set, if it and its workers pass ``RSS_LIMIT``."""
    port = free_port()
    cmd = [
        str(REPO / ".venv/bin/dcwatch"),
        "analyzer",
        f"--prometheus-url={url}",
        f"--state-dir={state}",
        f"--listen=127.0.0.1:{port}",
        "--log-level=warning",
    ]
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    phases, seen, last_done = [], 0, 0.0
    fitted = firing = None
    rss_state = {"peak": 0, "aborted": False}
    trace: list[tuple[float, int, int]] = []  # (seconds since start, RSS, passes seen)
    started = time.time()
    done = threading.Event()

    def sample_rss() -> None:
        # its own thread: the /metrics poll below can block for seconds while the analyzer's
        # loop is busy (loading models, a long pass), and the peak is often then
        while not done.is_set():
            try:
                procs = [ps, *ps.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs)
            except psutil.Error:
                rss = 0
            rss_state["peak"] = max(rss_state["peak"], rss)
            trace.append((time.time() - started, rss, len(phases)))
            if rss > RSS_LIMIT:
                rss_state["aborted"] = True
                print(f"analyzer RSS {rss / 2**30:.1f} GiB > limit: stopped", flush=True)
                proc.terminate()
                return
            done.wait(0.5)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    t_end = max(time.time() + seconds, not_before + 60)
    try:
        while time.time() < t_end and (
            passes == 0 or len(phases) < passes or time.time() < not_before
        ):
            if rss_state["aborted"]:
                break
            try:
                text = get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.5)
                continue
            n = metric_value(text, "dcwatch_scoring_passes_total") or 0
            done_s = metric_value(text, "dcwatch_scoring_pass_duration_seconds") or 0
            # A new pass once its duration is published (a pass counts itself while it saves
            # its scores, and the phases shown are the last finished pass's until it ends).
            if n > seen and done_s > 0 and done_s != last_done:
                seen, last_done = int(n), done_s
                phases.append(
                    {
                        p: metric_value(text, "dcwatch_scoring_pass_phase_seconds", phase=p) or 0
                        for p in ("read", "score", "send")
                    }
                    | {"pass": done_s}
                )
            fitted = metric_value(text, "dcwatch_nodes", state="fitted")
            firing = metric_value(text, "dcwatch_alerts_held", state="firing")
            time.sleep(POLL)
    finally:
        done.set()
        sampler.join(5)
        proc.terminate()
        proc.wait(60)
    return {
        "peak_rss": rss_state["peak"],
        "passes": phases,
        "fitted": fitted,
        "firing": firing,
        "rss_trace": [  # every 10 s: (s, MiB, passes seen), and the peak's
            (round(t), rss // 2**20, n) for t, rss, n in trace[::20]
        ]
        + [max(((round(t), rss // 2**20, n) for t, rss, n in trace), key=lambda x: x[1])],
        "aborted": rss_state["aborted"],
    }


def seed_models(state: Path, frame: Any, nodes: int, recent: dict[str, Any]) -> None:
    """Every node gets a copy of one fitted model (scoring costs the same as distinct ones),
    primed with the node's own ``recent`` live rows, as if the analyzer had been scoring it
    all along: the run then scores the rows after them. (Primed with the trained node's last
    history rows instead, the first live rows came minutes later and up to 4,000 of 10,000
    nodes alerted on network rates, depending on where the series' one-hour cycles were.)"""
    blob = fit_model(frame, ModelConfig())
    store = ModelStore(state / "models")
    for n in range(nodes):
        model = NodeModel.loads(blob)
        rows = recent.get(instance(n))
        if rows is not None and len(rows):
            model.history_ = model.features_.history_from(rows)
            model.last_ts_ = float(rows.times[-1])
        store.save(instance(n), model)


def bench(
    nodes: int,
    history: float,
    sample: int,
    cold_seconds: float,
    passes: int,
    fits: bool = True,
    fit_history: float = 6 * 3600.0,
    share: float = 0.01,
) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"fleet-{nodes}-"))
    picked = list(range(0, nodes, max(1, nodes // sample)))[:sample]
    stack = Stack(work, nodes, history, picked, fit_history, share)
    try:
        res: dict[str, Any] = {"nodes": nodes, "samples": stack.samples, "share": share}
        res |= {"gen_s": stack.gen_s, "backfill_s": stack.backfill_s}
        res["read"] = asyncio.run(read_split(stack.url, nodes, 3))
        names = [instance(n) for n in picked]
        window = max(history, fit_history)
        sampled = names if fits else names[:1]
        # The sample's history up to the backfill's end: the live samples' first minutes are not
        # trained on, their counter rates span the gap between history and live.
        history = asyncio.run(read_frames(stack.url, stack.end - window, stack.end, sampled))
        frames = [history[i] for i in sampled]
        del history
        nan = float("nan")
        res["fit"] = fit_times(frames) if fits else {"one": nan, "pool": nan, "dask": nan}
        res["cold"] = (
            run_analyzer(stack.url, work / "cold", cold_seconds, 0)
            if fits
            else {"peak_rss": nan, "fitted": nan}
        )
        # The models' streaming state: a dozen live rows from where the rate window (2 m) no
        # longer spans the gap between history and live samples (rates there ramp down and up).
        clean = stack.live_start + CLEAN_AFTER
        time.sleep(max(0.0, clean + PRIME_ROWS * STEP - time.time()))
        end = min(time.time(), stack.fault_from) // STEP * STEP - STEP  # before the faults
        recent = asyncio.run(read_frames(stack.url, clean, end))
        seed_models(work / "warm", frames[0], nodes, recent)
        del recent
        res["warm"] = run_analyzer(  # until the faults' first rows are scored
            stack.url, work / "warm", 60 + passes * STEP * 2, passes, stack.fault_from + 3 * STEP
        )
        res["prom_rss"] = psutil.Process(stack.prom.pid).memory_info().rss
        return res
    finally:
        stack.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def prometheus_version() -> str:
    out = subprocess.run(["prometheus", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split()[2]


def report(results: list[dict], args: argparse.Namespace) -> str:
    mib = 2**20
    lines = [
        "# Fleet scale through a real Prometheus",
        "",
        f"`bench/fleet_scale.py --history {args.history}` on {psutil.cpu_count()} cores "
        "**shared with other engineers' work** (timings are upper bounds); Prometheus "
        f"{prometheus_version()}"
        " on the same machine; default queries and default analyzer settings "
        "(7 d training window, 1 h min_train, 15 s step, 1 fit worker).",
        "",
        f"Read columns: the latest {READ_POINTS} rows of the fleet, in the bench process. "
        f"Faulty: the share of nodes whose GPU 0 runs hot in the live samples (the others are "
        "normal; every node is scored by a copy of a model trained on 6 h of node 0's normal "
        "history, primed with the node's own first live rows, and the faulty nodes run hot after "
        "that); firing: alerts held at the end. Pass columns: median of passes 2 on (the first "
        "one catches up from the priming to the analyzer's start); max: the slowest of them.",
        "",
        "| nodes | faulty | firing | read (wall) | Prometheus engine | decode | cols/node "
        "| pass: read | score | send | pass | max | RSS peak scoring | RSS cold start (fits) | "
        "fit/node | refit fleet pool(2) | refit fleet Dask(2) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rd, ft = r["read"], r["fit"]
        ps = r["warm"]["passes"][1:] or r["warm"]["passes"]  # the first pass backfills
        med = {
            k: float(np.median([p[k] for p in ps])) if ps else float("nan")
            for k in ("read", "score", "send", "pass")
        }
        worst = max((p["pass"] for p in ps), default=float("nan"))
        n = r["nodes"]
        lines.append(
            f"| {n:,} | {r['share']:.0%} | {r['warm'].get('firing') or 0:.0f} "
            f"| {rd['wall']:.2f} s | {rd['prometheus']:.2f} s "
            f"| {rd['decode']:.2f} s | {rd['columns']:.0f} "
            f"| {med['read']:.2f} s | {med['score']:.2f} s | {med['send']:.3f} s "
            f"| {med['pass']:.2f} s | {worst:.2f} s "
            f"| {r['warm']['peak_rss'] / mib:.0f} MiB"
            f"{' (stopped: over the RSS limit)' if r['warm'].get('aborted') else ''}"
            + (
                " | not run (`--no-fits`) | – | – | – |"
                if args.no_fits
                else f" | {r['cold']['peak_rss'] / mib:.0f} MiB "
                f"({r['cold']['fitted'] or 0:.0f} fitted in {args.cold_seconds:.0f} s) "
                f"| {ft['one']:.2f} s | {n * ft['pool'] / 60:.1f} min "
                f"| {n * ft['dask'] / 60:.1f} min |"
            )
        )
    lines += [
        "",
        "Per N: "
        + "; ".join(
            f"{r['nodes']:,} nodes: {r['samples'] / 1e6:.1f} M samples generated in "
            f"{r['gen_s']:.0f} s, backfilled in {r['backfill_s']:.0f} s, Prometheus RSS "
            f"{r['prom_rss'] / mib:.0f} MiB"
            for r in results
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, action="append")
    ap.add_argument("--history", default="70m", help="backfilled history (default 70m)")
    ap.add_argument("--fit-sample", type=int, default=16, help="nodes fitted to time fits")
    ap.add_argument(
        "--fit-history",
        default="6h",
        help="history of the fit sample (the scoring run's model is trained on node 0's)",
    )
    ap.add_argument(
        "--fault-share",
        type=float,
        default=0.01,
        help="share of nodes running a GPU hot in the live samples (1 = a fleet-wide event)",
    )
    ap.add_argument("--cold-seconds", type=float, default=120.0)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument(
        "--no-fits", action="store_true", help="skip fit timings and the cold start (scoring only)"
    )
    # nodes port share history_end fault_from
    ap.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench/reports/fleet_scale.md",
        help="report; if it exists, the rows of the N measured here replace theirs and the "
        "other rows and all text around the table are kept",
    )
    ap.add_argument("--rss-limit-gib", type=float, default=8.0, help="stop the analyzer past this")
    args = ap.parse_args()
    global RSS_LIMIT
    RSS_LIMIT = int(args.rss_limit_gib * 2**30)
    if args.serve:
        n, port, share, end, fault_from = args.serve
        serve(int(n), int(port), float(share), float(end), float(fault_from))
        return
    results = []
    for n in args.nodes or [1000]:
        results.append(
            bench(
                n,
                parse_duration(args.history),
                args.fit_sample,
                args.cold_seconds,
                args.passes,
                not args.no_fits,
                parse_duration(args.fit_history),
                args.fault_share,
            )
        )
        print(results[-1], flush=True)
    text = report(results, args)
    print(text)
    args.out.write_text(merge(args.out.read_text(), text) if args.out.exists() else text)


def merge(old: str, new: str) -> str:
    """``old`` with the table rows of ``new`` put in (one row per N, sorted by N; a row of an N
    measured again is replaced) and its ``Per N:`` entries likewise; all other text of ``old``
    (hand-written notes) is kept as it is."""

    def rows(text: str) -> dict[int, str]:
        out = {}
        for line in text.splitlines():
            m = re.match(r"\| ([\d,]+) \|", line)
            if m:
                out.setdefault(int(m[1].replace(",", "")), line)
        return out

    def per_n(text: str) -> dict[int, str]:
        line = next((x for x in text.splitlines() if x.startswith("Per N: ")), "")
        parts = [p.strip() for p in line.removeprefix("Per N: ").split(";") if p.strip()]
        return {int(p.split(" ", 1)[0].replace(",", "")): p for p in parts}

    table = rows(old) | rows(new)
    notes = per_n(old) | per_n(new)
    lines, done = [], False
    for line in old.splitlines():
        if re.match(r"\| ([\d,]+) \|", line) and line in rows(old).values():
            if not done:
                lines += [table[n] for n in sorted(table)]
                done = True
            continue
        if line.startswith("Per N: "):
            line = "Per N: " + "; ".join(notes[n] for n in sorted(notes))
        lines.append(line)
    return "\n".join(lines) + ("\n" if old.endswith("\n") else "")


if __name__ == "__main__":
    main()
