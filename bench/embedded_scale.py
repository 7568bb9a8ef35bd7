"""How many agents can one analyzer scrape into its embedded store and score every 15 s?

For each N: one exposition process (started here) serves N agents' ``/metrics`` on N free ports
of 127.0.0.1 (one aiohttp process, one listening socket per agent). Each page holds the 30
series ``bench/fleet_scale.py`` gives a node (4 GPUs x 6 gauges, node power, CPU / hwmon /
thermal-zone temperatures, two network counters), values that move, padded with gauges named
as the agent names them up to ``--page-series`` samples, of which ``--stored-share`` are metrics
the default queries need (stored) and the rest parsed and dropped (self-metrics, limits,
voltages). ``dcwatch analyzer --targets-file`` (a subprocess, default settings: 15 s scrape
interval and model step) scrapes them into SQLite and scores from there; every node's model is
in place before it starts (one model fitted on 6 h of these pages, built through the embedded
source's own parser and query evaluation, copied to every node), so it scores from its first
pass. Measured over ``--seconds`` after ``--warmup``:

* scrape cycles, from the store itself: for each 15 s tick, how many of the N scrapes were
  stored and how late the last one landed (the bench polls the new rows of ``scrapes`` every
  0.25 s); the exposition's view (when the tick's last page was served); the analyzer's own
  ``dcwatch_target_scrape_duration_seconds`` (fetch time per target) and failures;
* samples stored per second and the store file's size;
* scoring passes (``dcwatch_scoring_pass_duration_seconds`` and ``_phase_seconds``);
* the analyzer's peak RSS (with children, every 0.5 s in its own thread) and CPU seconds per
  15 s (psutil), with the exposition process's and the whole machine's CPU beside it.

    .venv/bin/python bench/embedded_scale.py --targets 250 --targets 500 --targets 1000

Writes bench/reports/embedded_scale.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from dcwatch.detectors.frame import Frame, frames_from_samples, make_grid
from dcwatch.detectors.models.fitting import ModelStore, fit_model
from dcwatch.detectors.models.node import ModelConfig, NodeModel
from dcwatch.detectors.sources.parse import parse_body
from dcwatch.detectors.sources.queries import embedded_only, load_queries, needed_metrics
from dcwatch.detectors.sources.scraper import EmbeddedConfig, EmbeddedSource

# dcwatch is the environment's (the venv's install; PYTHONPATH can point the bench and the
# analyzer it starts at another tree), so it is imported before fleet_scale, which puts the
# checkout first on sys.path.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from fleet_scale import free_port, get, metric_value, series_of, value  # noqa: E402

STEP = 15.0
Row = tuple[str, str, float, float, bool]  # metric, labels (trailing comma), base, spread, counter

# Padding, named as the agent names them. Stored: more series of metrics the default queries
# aggregate (max by instance), so the frame keeps its columns; per-core temperatures are the
# per-CPU series of a real page. Parsed only: what a real page carries beside (limits,
# voltages, the agent's self-metrics, NVLink state).
STORED_PAD = (
    ("dcwatch_cpu_temp_celsius", 'package="{p}",core="{k}",', 50.0, 4.0),
    ("dcwatch_hwmon_temp_celsius", 'chip="coretemp",sensor="temp{k}",', 42.0, 3.0),
)
PARSED_PAD = (
    ("dcwatch_hwmon_temp_max_celsius", 'chip="coretemp",sensor="temp{k}",', 90.0, 0.0),
    ("dcwatch_hwmon_voltage_volts", 'chip="nct6775",sensor="in{k}",', 1.2, 0.01),
    ("dcwatch_scrape_collector_duration_seconds", 'collector="c{k}",', 0.002, 0.0005),
    ("dcwatch_gpu_nvlink_up", 'gpu="{p}",link="{k}",', 1.0, 0.0),
)


def page_rows(page_series: int, stored_share: float) -> list[Row]:
    """The series of every page: fleet_scale's 30, then padding up to ``page_series``."""
    rows: list[Row] = series_of(0)
    stored = max(0, round(page_series * stored_share) - len(rows))
    parsed = max(0, page_series - len(rows) - stored)
    for count, table in ((stored, STORED_PAD), (parsed, PARSED_PAD)):
        for i in range(count):
            metric, labels, base, spread = table[i % len(table)]
            k = i // len(table)
            rows.append((metric, labels.format(p=1 + k // 64, k=k % 64 + 2), base, spread, False))
    return rows


def render(rows: list[Row], v: np.ndarray) -> bytes:
    return "".join(
        f"{m}{{{lab.rstrip(',')}}} {x:.15g}\n" if c else f"{m}{{{lab.rstrip(',')}}} {x:.6g}\n"
        for (m, lab, _, _, c), x in zip(rows, v.tolist(), strict=True)
    ).encode()


def crcs(rows: list[Row]) -> list[int]:
    return [zlib.crc32(f"{m}{lab}".encode()) for m, lab, *_ in rows]


# --- the exposition process ----------------------------------------------------------------------


def serve(nodes: int, page_series: int, stored_share: float, ports_file: Path) -> None:
    """N agents' pages, fresh values each scrape; ``/stats`` on the first port listed says,
    per tick, how many pages were served and when the last one went out."""
    from aiohttp import web

    rows = page_rows(page_series, stored_share)
    base = np.array([r[2] for r in rows])
    spread = np.array([r[3] for r in rows])
    counter = np.array([r[4] for r in rows])
    phase = np.array([np.random.default_rng(c).uniform(0, 6.3) for c in crcs(rows)])
    rngs = [np.random.default_rng(n) for n in range(nodes)]
    totals = np.full((nodes, len(rows)), 1e12)
    last = np.full(nodes, time.time())
    stats: dict[int, list[float]] = {}  # tick -> [pages, last served, seconds spent]

    socks = []
    for _ in range(nodes + 1):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1024)
        socks.append(s)
    node_of = {s.getsockname()[1]: i - 1 for i, s in enumerate(socks)}

    async def metrics(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        n = node_of.get(port, -1)
        if n < 0:
            raise web.HTTPNotFound()
        now = time.time()
        cycle = 0.5 * np.sin(2 * np.pi * now / 3600 + phase)
        v = base + spread * (cycle + 0.3 * rngs[n].normal(size=len(rows)))
        totals[n] += np.abs(v) * (now - last[n]) * counter
        last[n] = now
        body = render(rows, np.where(counter, totals[n], v))
        tick = int(now // STEP * STEP)
        st = stats.setdefault(tick, [0, 0.0, 0.0])
        st[0] += 1
        st[1] = max(st[1], now - tick)
        st[2] += time.perf_counter() - t0
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def stats_handler(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/stats", stats_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for s in socks:
            await web.SockSite(runner, s).start()
        tmp = ports_file.with_suffix(".tmp")
        tmp.write_text("\n".join(str(s.getsockname()[1]) for s in socks))
        tmp.rename(ports_file)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the model every node starts with ----------------------------------------------------------


def training_frame(rows: list[Row], hours: float) -> Frame:
    """``hours`` of node 0's pages as the embedded source makes them a frame: the page parsed
    by the scraper's parser (keeping what the default queries need), each kept series' history
    generated like the live one, evaluated by the embedded source's query code."""
    queries = embedded_only(load_queries())
    parsed = parse_body(render(rows, np.zeros(len(rows))), needed_metrics(queries), 100_000)
    end = time.time() // STEP * STEP
    t = np.arange(end - hours * 3600, end + 1, STEP)
    by_key = {
        (m, lab.rstrip(",")): (b, s, c, crc)
        for (m, lab, b, s, c), crc in zip(rows, crcs(rows), strict=True)
    }
    series = {}
    for key in parsed.keys:
        b, s, c, crc = by_key[key]
        v = value(b, s, t, crc, 0)
        series[key] = (t, np.cumsum(np.abs(v) * STEP) + 1e12 if c else v)
    grid = make_grid(t[0], t[-1], STEP)
    return frames_from_samples({"node": series}, queries, grid, STEP)["node"]


def seed_models(state: Path, blob: bytes, instances: list[str], last_ts: float) -> None:
    """Every node gets a copy of one fitted model, as if it had scored up to ``last_ts``."""
    store = ModelStore(state / "models")
    model = NodeModel.loads(blob)
    model.last_ts_ = last_ts
    for inst in instances:
        store.save(inst, model)


# --- watching the analyzer ---------------------------------------------------------------------


class Watch:
    """Threads sampling the analyzer: RSS and CPU every 0.5 s, the store's new rows every
    0.25 s (which tick each scrape belongs to, when it landed, its samples)."""

    def __init__(self, proc: subprocess.Popen[bytes], db: Path) -> None:
        self.ps = psutil.Process(proc.pid)
        self.db = db
        self.done = threading.Event()
        self.peak_rss = 0
        self.window_peak_rss = 0
        self.in_window = False
        self.ticks: dict[int, list[float]] = {}  # tick ms -> [scrapes, samples, last landed]
        self.store_error = ""
        self.threads = [
            threading.Thread(target=self._usage, daemon=True),
            threading.Thread(target=self._store, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu(self) -> float:
        """CPU seconds of the analyzer and its children so far."""
        total = 0.0
        for p in self.procs():
            try:
                c = p.cpu_times()
            except psutil.Error:
                continue
            total += c.user + c.system + (c.children_user + c.children_system) * (p is self.ps)
        return total

    def _usage(self) -> None:
        while not self.done.is_set():
            rss = 0
            for p in self.procs():
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)
            if self.in_window:
                self.window_peak_rss = max(self.window_peak_rss, rss)
            self.done.wait(0.5)

    def _store(self) -> None:
        con, rowid = None, 0
        while not self.done.wait(0.25):
            try:
                if con is None:
                    if not self.db.exists():
                        continue
                    con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
                rows = con.execute(
                    "SELECT rowid, ts, length(vals) FROM scrapes WHERE rowid > ? ORDER BY rowid",
                    (rowid,),
                ).fetchall()
            except sqlite3.Error as e:
                self.store_error = str(e)
                continue
            now = time.time()
            for rid, ts, size in rows:
                st = self.ticks.setdefault(ts, [0, 0, 0.0])
                st[0] += 1
                st[1] += size // 8
                st[2] = now
                rowid = rid
        if con is not None:
            con.close()

    def close(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(5)


def scrape_durations(text: str) -> list[float]:
    name = "dcwatch_target_scrape_duration_seconds{"
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]


def failures(text: str) -> float:
    name = "dcwatch_target_scrape_failures_total{"
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name))


def machine_busy() -> float:
    c = psutil.cpu_times()
    return c.user + c.nice + c.system + c.irq + c.softirq + getattr(c, "steal", 0.0)


def run_n(n: int, args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"embedded-{n}-"))
    try:
        return measure(n, args, work)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


def measure(n: int, args: argparse.Namespace, work: Path) -> dict:
    """One N: start the exposition and the analyzer, watch them, stop them."""
    ports_file, state = work / "ports", work / "state"
    serve_args = [str(n), str(args.page_series), str(args.stored_share), str(ports_file)]
    expo = subprocess.Popen([sys.executable, __file__, "--serve", *serve_args])
    proc: subprocess.Popen[bytes] | None = None
    watch: Watch | None = None
    res: dict[str, Any] = {"targets": n}
    try:
        deadline = time.time() + 120
        while not ports_file.exists():
            if time.time() > deadline or expo.poll() is not None:
                raise RuntimeError("the exposition process did not start")
            time.sleep(0.2)
        ports = [int(p) for p in ports_file.read_text().split()]
        stats_url = f"http://127.0.0.1:{ports[0]}/stats"
        instances = [f"127.0.0.1:{p}" for p in ports[1:]]
        targets = work / "targets.txt"
        targets.write_text("".join(f"http://{i}/metrics\n" for i in instances))
        # Fitted now, on history up to now: the live samples go on where it ends (a gap
        # between the two shows as a level shift to the models' trailing windows).
        t0 = time.perf_counter()
        frame = training_frame(page_rows(args.page_series, args.stored_share), args.fit_hours)
        seed_models(state, fit_model(frame, ModelConfig()), instances, frame.times[-1])
        res["seed_s"] = time.perf_counter() - t0
        port = free_port()
        proc = subprocess.Popen(
            [
                str(REPO / ".venv/bin/dcwatch"),
                "analyzer",
                f"--targets-file={targets}",
                f"--state-dir={state}",
                f"--listen=127.0.0.1:{port}",
                "--log-level=warning",
            ]
        )
        started = time.time()
        watch = Watch(proc, state / "embedded.db")
        url = f"http://127.0.0.1:{port}/metrics"
        expo_ps = psutil.Process(expo.pid)

        # Warm-up: at least --warmup, and until two passes are done (loading N models and the
        # first cycles take longer with N).
        while True:
            time.sleep(1.0)
            if proc.poll() is not None:
                raise RuntimeError(f"the analyzer exited with {proc.returncode}")
            if time.time() < started + args.warmup:
                continue
            try:
                text = get(url)
            except OSError:
                continue
            if (metric_value(text, "dcwatch_scoring_passes_total") or 0) >= 2:
                break
            if time.time() > started + args.warmup + 300:
                raise RuntimeError("the analyzer did not finish two passes in the warm-up")
        res["warmup_s"] = time.time() - started
        w0 = time.time()
        watch.in_window = True
        cpu0, expo0, busy0 = watch.cpu(), sum(expo_ps.cpu_times()[:2]), machine_busy()
        fail0, passes0 = failures(text), metric_value(text, "dcwatch_scoring_passes_total") or 0
        seen, passes, fetch, polls = passes0, [], [], []
        while time.time() < w0 + args.seconds:
            time.sleep(args.poll)
            p0 = time.perf_counter()
            text = get(url)
            polls.append(time.perf_counter() - p0)
            fetch += scrape_durations(text)
            now_passes = metric_value(text, "dcwatch_scoring_passes_total") or 0
            if now_passes > seen:
                passes.append(
                    {
                        p: metric_value(text, "dcwatch_scoring_pass_phase_seconds", phase=p) or 0
                        for p in ("read", "score", "send")
                    }
                    | {"pass": metric_value(text, "dcwatch_scoring_pass_duration_seconds") or 0}
                    | {"missed": now_passes - seen - 1}
                )
                seen = now_passes
        w1 = time.time()
        span = w1 - w0
        res["cpu_per_step"] = (watch.cpu() - cpu0) / span * STEP
        res["expo_cpu_per_step"] = (sum(expo_ps.cpu_times()[:2]) - expo0) / span * STEP
        res["machine_busy"] = (machine_busy() - busy0) / span / psutil.cpu_count()
        res["failures"] = failures(text) - fail0
        res["passes"] = passes
        res["passes_total"] = seen - passes0
        res["window"] = span
        res["fetch"] = fetch
        res["poll_s"] = statistics.median(polls) if polls else math.nan
        res["firing"] = metric_value(text, "dcwatch_alerts_held", state="firing") or 0
        res["fitted"] = metric_value(text, "dcwatch_nodes", state="fitted") or 0
        res["peak_rss"], res["window_rss"] = watch.peak_rss, watch.window_peak_rss
        # Ticks wholly inside the window, each given one interval to land.
        ticks = {
            ts / 1000: st
            for ts, st in watch.ticks.items()
            if w0 <= ts / 1000 and ts / 1000 + STEP <= w1
        }
        res["ticks"] = {t: (st[0], st[1], st[2] - t) for t, st in sorted(ticks.items())}
        stats = json.loads(get(stats_url))
        res["served"] = {int(t): s for t, s in stats.items() if int(t) in ticks}
        res["store_error"] = watch.store_error
        res["samples_total"] = sum(st[1] for st in watch.ticks.values())
    finally:
        if watch is not None:
            watch.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        expo.terminate()
        expo.wait(30)
    db = state / "embedded.db"
    res["db_bytes"] = sum(
        p.stat().st_size for p in (db, db.with_name("embedded.db-wal")) if p.exists()
    )
    res["columns_match"] = asyncio.run(check_columns(db, instances[0], frame.columns))
    return res


async def check_columns(db: Path, instance: str, columns: tuple[str, ...]) -> bool:
    """Whether the analyzer's store gives the node the columns its model was fitted on."""
    src = EmbeddedSource(EmbeddedConfig(db_path=db))
    await src.start(scrape=False)
    try:
        frames = await src.fetch(time.time() - 120, time.time(), STEP, [instance])
    finally:
        await src.close()
    return instance in frames and frames[instance].columns == columns


# --- the report --------------------------------------------------------------------------------


def summary(r: dict) -> dict[str, Any]:
    ticks = list(r["ticks"].values())
    n = r["targets"]
    late = [t[2] for t in ticks]
    complete = sum(t[0] == n for t in ticks)
    stored = sum(t[1] for t in ticks) / (len(ticks) * STEP) if ticks else math.nan
    served = [s[1] for s in r["served"].values()]
    passes = r["passes"]
    med = {
        k: statistics.median(p[k] for p in passes) if passes else math.nan
        for k in ("read", "score", "send", "pass")
    }
    worst = max((p["pass"] for p in passes), default=math.nan)
    fetch = sorted(r["fetch"])
    keeps_up = (
        ticks
        and complete == len(ticks)
        and max(late) < STEP
        and worst < STEP
        and r["failures"] == 0
        and r["passes_total"] >= r["window"] / STEP - 1
    )
    return {
        "ticks": len(ticks),
        "complete": complete,
        "late_med": statistics.median(late) if late else math.nan,
        "late_max": max(late, default=math.nan),
        "served_max": max(served, default=math.nan),
        "fetch_med": fetch[len(fetch) // 2] if fetch else math.nan,
        "fetch_p99": fetch[int(len(fetch) * 0.99)] if fetch else math.nan,
        "stored": stored,
        "med": med,
        "worst": worst,
        "keeps_up": bool(keeps_up),
        "cpu_share": r["cpu_per_step"] / (STEP * psutil.cpu_count()),
        "spare": r["cpu_per_step"] / (STEP * psutil.cpu_count()) <= SPARE,
    }


SPARE = 0.5  # "with CPU to spare": the analyzer uses at most this share of the machine's cores


def report(
    results: list[dict], args: argparse.Namespace, stored_per_page: int, page_bytes: int
) -> str:
    mib = 2**20
    cores = psutil.cpu_count()
    sums = [summary(r) for r in results]
    good = [
        r["targets"] for r, s in zip(results, sums, strict=True) if s["keeps_up"] and s["spare"]
    ]
    largest = max(r["targets"] for r in results)
    verdict = (
        f"**One analyzer in embedded mode keeps up with "
        f"{'at least ' if max(good) == largest else '~'}{max(good):,} targets on {cores} cores** "
        f"(the largest N measured here where every scrape cycle and every pass fit in the 15 s "
        f"step with no failed scrape and the analyzer used at most {SPARE:.0%} of the cores"
        f"{'; no larger N was measured' if max(good) == largest else ''})"
        if good
        else "**No N measured here kept up** (see the table)"
    )
    rows: list[tuple[str, list[str]]] = [
        ("ticks with all N scrapes stored", [f"{s['complete']}/{s['ticks']}" for s in sums]),
        (
            "last scrape of a tick stored, after the tick: median / max",
            [f"{s['late_med']:.1f} / {s['late_max']:.1f} s" for s in sums],
        ),
        (
            "last page of a tick served, after the tick: max",
            [f"{s['served_max']:.1f} s" for s in sums],
        ),
        (
            "fetch per target (analyzer's `dcwatch_target_scrape_duration_seconds`): median / p99",
            [f"{s['fetch_med'] * 1e3:.0f} / {s['fetch_p99'] * 1e3:.0f} ms" for s in sums],
        ),
        ("failed scrapes in the window", [f"{r['failures']:.0f}" for r in results]),
        ("samples stored per second", [f"{s['stored']:,.0f}" for s in sums]),
        (
            "pass phases, median: read / score / send",
            [
                f"{s['med']['read']:.2f} / {s['med']['score']:.2f} / {s['med']['send']:.2f} s"
                for s in sums
            ],
        ),
        ("pass: median / max", [f"{s['med']['pass']:.2f} / {s['worst']:.2f} s" for s in sums]),
        (
            "passes in the window",
            [f"{r['passes_total']:.0f} in {r['window']:.0f} s" for r in results],
        ),
        (
            "analyzer CPU per 15 s (share of the cores)",
            [
                f"{r['cpu_per_step']:.1f} s ({s['cpu_share']:.0%})"
                for r, s in zip(results, sums, strict=True)
            ],
        ),
        ("exposition process CPU per 15 s", [f"{r['expo_cpu_per_step']:.1f} s" for r in results]),
        (
            "machine busy, all processes (others' too)",
            [f"{r['machine_busy']:.0%}" for r in results],
        ),
        (
            "analyzer peak RSS: whole run / window",
            [f"{r['peak_rss'] / mib:.0f} / {r['window_rss'] / mib:.0f} MiB" for r in results],
        ),
        (
            "store at the end; bytes per stored sample",
            [
                f"{r['db_bytes'] / mib:.0f} MiB; {r['db_bytes'] / max(1, r['samples_total']):.1f}"
                for r in results
            ],
        ),
        (
            "warm-up; fit and seed the models",
            [f"{r['warmup_s']:.0f} s; {r['seed_s']:.0f} s" for r in results],
        ),
        (
            "nodes fitted; alerts firing at the end",
            [f"{r['fitted']:.0f}; {r['firing']:.0f}" for r in results],
        ),
        ("bench's /metrics read (wall, median)", [f"{r['poll_s'] * 1e3:.0f} ms" for r in results]),
        (
            "store columns = model columns",
            ["yes" if r["columns_match"] else "**no**" for r in results],
        ),
        ("keeps up", ["yes" if s["keeps_up"] else "**no**" for s in sums]),
        (f"with CPU to spare (<= {SPARE:.0%})", ["yes" if s["spare"] else "**no**" for s in sums]),
    ]
    lines = [
        "# Embedded store: targets per analyzer at a 15 s interval",
        "",
        f"`bench/embedded_scale.py` on {platform.machine()} Linux, {cores} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, **cores shared**: the exposition "
        "process serving every agent, the analyzer and the bench run on the same cores, beside "
        "other engineers' work (timings are upper bounds). `dcwatch analyzer --targets-file` "
        "with default settings (15 s scrape interval and model step, 10 s scrape timeout, "
        "concurrency 64), every node's model in place (scores from its first pass). Page: "
        f"{args.page_series} samples ({page_bytes / 1024:.1f} KiB), {stored_per_page} of them "
        "stored (metrics the default queries need; 30 frame columns), the rest parsed and "
        f"dropped. Each N: at least {args.warmup:.0f} s warm-up (models load, first cycles, two "
        f"passes), then {args.seconds:.0f} s measured. The bench reads the analyzer's /metrics "
        f"every {args.poll:g} s (its cost is in the analyzer's CPU). {args.note}".rstrip(),
        "",
        verdict + ".",
        "",
        "| targets | " + " | ".join(f"{r['targets']:,}" for r in results) + " |",
        "|---|" + "---:|" * len(results),
        *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows),
        "",
        "A tick is a multiple of 15 s, when every target's scrape starts; *stored after the "
        "tick* is when the bench (polling the store's new rows every 0.25 s) saw the tick's last "
        "scrape committed, so it covers fetch, parse and the write. *Keeps up*: every tick's N "
        "scrapes stored within the interval, no failed scrape, every pass seen under 15 s and "
        "no pass missing. CPU is user + system of the analyzer and its children.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=int, action="append", help="N agents (repeat)")
    ap.add_argument(
        "--page-series",
        type=int,
        default=300,
        help="samples per page (default 300: a real agent page with self-metrics and per-CPU "
        "series; 30 is the bare fleet_scale page)",
    )
    ap.add_argument(
        "--stored-share",
        type=float,
        default=0.5,
        help="share of a page the default queries need, hence stored (default 0.5)",
    )
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before measuring")
    ap.add_argument("--seconds", type=float, default=180.0, help="seconds measured per N")
    ap.add_argument(
        "--poll",
        type=float,
        default=7.5,
        help="seconds between the bench's reads of the analyzer's /metrics (default 7.5)",
    )
    ap.add_argument("--fit-hours", type=float, default=6.0)
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)  # nodes page share ports-file
    ap.add_argument("--note", default="", help="a sentence for the report's header")
    ap.add_argument("--out", type=Path, default=REPO / "bench/reports/embedded_scale.md")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    if args.serve:
        n, page, share, path = args.serve
        serve(int(n), int(page), float(share), Path(path))
        return
    rows = page_rows(args.page_series, args.stored_share)
    stored = sum(1 for m, *_ in rows if m in needed_metrics(embedded_only(load_queries())))
    print(f"page: {len(rows)} samples, {stored} stored", flush=True)
    results = []
    for n in sorted(args.targets or [250]):
        results.append(run_n(n, args))
        r = results[-1]
        brief = {k: v for k, v in r.items() if k not in ("fetch", "ticks", "served", "passes")}
        print(brief, summary(r), flush=True)
        if not summary(r)["keeps_up"]:
            break  # a larger N does not keep up either
    text = report(results, args, stored, len(render(rows, np.zeros(len(rows)))))
    print(text)
    args.out.write_text(text)
    os.sync()


if __name__ == "__main__":
    main()
