"""Speed of the analyzer's data-in path: embedded store, exposition parsing, Prometheus decoding.

Measures, at the issue's scale (1,000 nodes x 30 series, 1 h at 15 s):
- SQLite insert rate of the embedded store (samples/s) and a range read of the whole hour, raw and
  aligned into frames; the same for a row-per-sample schema, the usual alternative;
- parsing of the Prometheus text exposition (samples/s), hand parser vs prometheus_client;
- decoding a ``query_range`` answer of 100 series x 10k points (GC on/paused, json/orjson).

Run by hand:  .venv/bin/python bench/store_speed.py [--nodes 1000] [--series 30] [--hours 1]
Writes bench/reports/store_speed.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dcwatch.detectors.frame import frames_from_samples, make_grid  # noqa: E402
from dcwatch.detectors.sources import prometheus as prometheus_source  # noqa: E402
from dcwatch.detectors.sources.queries import parse_queries  # noqa: E402
from dcwatch.detectors.sources.scraper import parse_exposition  # noqa: E402
from dcwatch.detectors.sources.store import Scrape, Store  # noqa: E402

STEP = 15.0


def keys_for(n_series: int) -> list[tuple[str, str]]:
    """30 series of an 8-GPU node: 3 metrics per GPU plus node-level ones."""
    keys = [
        (f"dcwatch_gpu_m{m}", f'gpu="{g}",uuid="GPU-{g:04d}"') for m in range(3) for g in range(8)
    ]
    keys += [(f"dcwatch_node_m{j}", "") for j in range(n_series - len(keys))]
    return keys[:n_series]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_store(nodes: int, n_series: int, hours: float, rows: list[str]) -> None:
    keys = keys_for(n_series)
    rounds = int(hours * 3600 / STEP)
    total = nodes * n_series * rounds
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        s = Store(Path(d) / "bench.db")
        t_ins = 0.0
        for k in range(rounds):
            vals = rng.random((nodes, n_series)).tolist()
            batch = [Scrape(f"node{i:04d}:9478", k * STEP, keys, vals[i]) for i in range(nodes)]
            dt, _ = timed(lambda b=batch: s.write(b))  # type: ignore[misc]
            t_ins += dt
        size = sum(f.stat().st_size for f in Path(d).iterdir()) / 2**20
        t_read, samples = timed(lambda: s.read(0, rounds * STEP))
        queries = parse_queries(
            [
                {"name": f"q{j}", "query": name}
                for j, name in enumerate(sorted({k for k, _ in keys}))
            ]
        )
        grid = make_grid(0, rounds * STEP, STEP)
        t_frames, frames = timed(lambda: frames_from_samples(samples, queries, grid, STEP))  # type: ignore[arg-type]
        assert len(frames) == nodes  # type: ignore[arg-type]
        s.close()
    rows += [
        f"| embedded store (row per scrape) | {total / t_ins / 1e6:.2f} M samples/s "
        f"({t_ins:.1f} s for {total / 1e6:.1f} M) | {t_read:.2f} s raw, +{t_frames:.2f} s "
        f"to frames | {size:.0f} MiB |",
    ]
    # The usual alternative, for comparison: one row per sample.
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(Path(d) / "rows.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE samples (series_id INTEGER, ts INTEGER, value REAL,"
            " PRIMARY KEY (series_id, ts)) WITHOUT ROWID"
        )
        n_ids = nodes * n_series
        t_ins = 0.0
        for k in range(rounds):
            vals = rng.random(n_ids).tolist()
            sample_rows = list(zip(range(n_ids), [k * 15000] * n_ids, vals, strict=True))

            def write(b: list[tuple[int, int, float]] = sample_rows) -> None:
                with db:
                    db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?)", b)

            t_ins += timed(write)[0]
        size = sum(f.stat().st_size for f in Path(d).iterdir()) / 2**20

        def read() -> int:
            n = 0
            for sid in range(n_ids):
                r = db.execute(
                    "SELECT ts, value FROM samples WHERE series_id = ? AND ts BETWEEN ? AND ?",
                    (sid, 0, rounds * 15000),
                ).fetchall()
                a = np.array(r, dtype=np.float64)
                n += len(a)
            return n

        t_read, n = timed(read)
        assert n == total
        db.close()
    rows.append(
        f"| row per sample (WITHOUT ROWID) | {total / t_ins / 1e6:.2f} M samples/s "
        f"({t_ins:.1f} s) | {t_read:.2f} s raw | {size:.0f} MiB |"
    )


def exposition() -> str:
    """An 8-GPU node's /metrics, dcwatch-like: ~300 samples with HELP/TYPE lines."""
    out = []
    for m in range(25):
        name = f"dcwatch_gpu_metric{m}"
        out += [f"# HELP {name} help text for {name}", f"# TYPE {name} gauge"]
        out += [f'{name}{{gpu="{g}",uuid="GPU-5a3c{g:04d}-0000"}} {41.5 + g}' for g in range(8)]
    for m in range(8):
        name = f"dcwatch_network_m{m}_bytes_total"
        out += [f"# TYPE {name} counter"]
        out += [f'{name}{{device="{d}"}} 1.234567e+12' for d in ("eth0", "eth1", "ib0", "bond0")]
    out += [f'dcwatch_hwmon_temp_celsius{{chip="c",sensor="temp{i}"}} 45.0' for i in range(60)]
    return "\n".join(out) + "\n"


def bench_parse(rows: list[str]) -> None:
    text = exposition()
    n = len(parse_exposition(text)[1])

    def pc() -> int:
        return sum(len(f.samples) for f in text_string_to_metric_families(text))

    for label, fn, reps in (
        (
            "parse_exposition (dcwatch.detectors.sources.scraper)",
            lambda: parse_exposition(text),
            500,
        ),
        ("prometheus_client.parser", pc, 50),
    ):
        fn()
        dt, _ = timed(lambda f=fn, r=reps: [f() for _ in range(r)])  # type: ignore[misc]
        rows.append(
            f"| {label} | {n * reps / dt / 1e6:.2f} M samples/s | {dt / reps * 1e6:.0f} µs "
            f"per {n}-sample exposition ({len(text) / 1024:.0f} KiB) |"
        )


def bench_decode(rows: list[str]) -> None:
    t0 = 1.7e9
    result = [
        {
            "metric": {"__name__": "x", "instance": f"n{i}:9478", "gpu": str(i % 8)},
            "values": [[t0 + 15 * k, str(round((i * k) % 977 / 7, 6))] for k in range(10_000)],
        }
        for i in range(100)
    ]
    body = json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}},
        separators=(",", ":"),
    ).encode()
    del result
    loads = prometheus_source._loads
    for name, fn in (("json", json.loads), ("orjson", loads if loads is not json.loads else None)):
        if fn is None:
            rows.append("| decode_matrix with orjson | (orjson not installed) | |")
            continue
        prometheus_source._loads = fn
        try:
            gc.collect()
            dt_on, _ = timed(lambda: _decode_gc_on(body))
            dt_off, _ = timed(lambda: prometheus_source.decode_matrix(body))
        finally:
            prometheus_source._loads = loads
        rows.append(
            f"| decode 100 x 10k points with {name} | GC on {dt_on:.2f} s | "
            f"GC paused {dt_off:.2f} s (as shipped) |"
        )


def _decode_gc_on(body: bytes) -> object:
    doc = prometheus_source._loads(body)
    return [
        (np.array(ts, np.float64), np.array(v, np.float64))
        for ts, v in (zip(*r["values"], strict=True) for r in doc["data"]["result"])
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--series", type=int, default=30)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--report", type=Path, default=REPO / "bench/reports/store_speed.md")
    a = ap.parse_args()
    rows = [
        f"## Store: {a.nodes} nodes x {a.series} series x {a.hours:g} h at {STEP:g} s",
        "",
        "| schema | insert | read the whole range | on disk |",
        "| --- | --- | --- | --- |",
    ]
    bench_store(a.nodes, a.series, a.hours, rows)
    rows += ["", "## Exposition parsing", "", "| parser | rate | cost |", "| --- | --- | --- |"]
    bench_parse(rows)
    rows += ["", "## query_range decoding", "", "| what | | |", "| --- | --- | --- |"]
    bench_decode(rows)
    report = "# bench/store_speed.py\n\n" + "\n".join(rows) + "\n"
    print(report)
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
