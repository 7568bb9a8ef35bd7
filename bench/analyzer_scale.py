"""Can one analyzer on 2 cores keep up with 1,000 nodes × 30 series at a 15 s step?

Synthetic fleet: each node has 30 series (levels with a daily cycle, noise and slow drift).
Measured through the service's own code path (``Analyzer.score_pass`` with an in-memory
source, so the number is the analyzer's cost, not a database's):

* fit time per node (distinct fits; then the fleet's fit time on a process pool of 2),
* one scoring pass over every node (target ≤ 3.75 s = 4× real time at 15 s),
* resident memory with every model loaded (target ≤ 2 GiB).

    .venv/bin/python bench/analyzer_scale.py [--nodes 1000] [--series 30]

Writes bench/reports/analyzer_scale.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcwatch.detectors.config import load_analyzer_config  # noqa: E402
from dcwatch.detectors.frame import Frame  # noqa: E402
from dcwatch.detectors.models.fitting import fit_model  # noqa: E402
from dcwatch.detectors.models.node import ModelConfig, NodeModel  # noqa: E402
from dcwatch.detectors.service import Analyzer, NodeState  # noqa: E402

STEP = 15.0


def node_frame(seed: int, start: float, rows: int, series: int) -> Frame:
    rng = np.random.default_rng(seed)
    t = start + np.arange(rows) * STEP
    phase = 2 * np.pi * (t % 86400) / 86400
    base = rng.uniform(10, 100, series)
    amp = rng.uniform(0, 0.3, series) * base
    values = (
        base
        + amp * np.sin(phase[:, None] + rng.uniform(0, 6, series))
        + rng.normal(0, 1, (rows, series)) * base * 0.02
    )
    return Frame(t, tuple(f"series_{i:02d}" for i in range(series)), values)


class MemorySource:
    """The fleet's latest rows, generated per pass (cheap, no I/O)."""

    def __init__(self, nodes: int, series: int) -> None:
        self.nodes, self.series = nodes, series
        self.rng = np.random.default_rng(1)
        self.cols = tuple(f"series_{i:02d}" for i in range(series))

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
        return {}

    async def latest(self, step: float, points: int, now: float | None = None) -> dict[str, Frame]:
        assert now is not None
        t = np.arange(now - (points - 1) * step, now + 1, step)
        out = {}
        for i in range(self.nodes):
            v = 50 + self.rng.normal(0, 1, (len(t), self.series))
            out[f"node-{i:04d}:9478"] = Frame(t, self.cols, v)
        return out


class NullSender:
    def firing(self) -> list:
        return []

    def get(self, key: str) -> None:
        return None

    async def fire(self, alert: object) -> None: ...

    async def resolve(self, key: object) -> None: ...


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--series", type=int, default=30)
    ap.add_argument("--train-hours", type=float, default=24.0)
    ap.add_argument(
        "--distinct-fits",
        type=int,
        default=20,
        help="nodes fitted for real; the rest reuse copies of these models",
    )
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--report", type=Path, default=REPO / "bench/reports/analyzer_scale.md")
    args = ap.parse_args()

    rows = int(args.train_hours * 3600 / STEP)
    start = 1_700_000_000.0
    frames = [node_frame(i, start, rows, args.series) for i in range(args.distinct_fits)]
    cfg = ModelConfig()
    fit_times = []
    blobs = []
    for f in frames:
        t0 = time.perf_counter()
        blobs.append(fit_model(f, cfg))
        fit_times.append(time.perf_counter() - t0)
    with ProcessPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        list(pool.map(fit_model, frames, [cfg] * len(frames)))
        pool_time = (time.perf_counter() - t0) / len(frames)

    acfg = load_analyzer_config(
        [
            "--target",
            "http://x:1/metrics",
            "--state-dir",
            "/tmp/dcwatch-bench-scale",
            "--model-workers",
            "0",
        ],
        env={},
    )
    an = Analyzer(acfg, MemorySource(args.nodes, args.series), NullSender())  # type: ignore[arg-type]
    end = start + rows * STEP
    for i in range(args.nodes):
        model = NodeModel.loads(blobs[i % len(blobs)])
        an.nodes[f"node-{i:04d}:9478"] = NodeState(f"node-{i:04d}:9478", "fitted", model)
    rss_models = psutil.Process().memory_info().rss

    async def passes() -> list[float]:
        out = []
        for k in range(args.passes):
            t0 = time.perf_counter()
            await an.score_pass(end + (k + 1) * STEP)
            out.append(time.perf_counter() - t0)
        return out

    times = asyncio.run(passes())
    rss = psutil.Process().memory_info().rss
    scored = sum(n.scored_rows for n in an.nodes.values())
    report = "\n".join(
        [
            "# Analyzer scale",
            "",
            f"{args.nodes} nodes × {args.series} series, {STEP:g} s step, models fitted on "
            f"{args.train_hours:g} h ({rows} rows); {args.passes} scoring passes of one new row "
            f"per node through `Analyzer.score_pass`; {scored} rows scored. One process, 2 CPUs.",
            "",
            "| what | value | target |",
            "|---|---|---|",
            f"| fit one node (median of {len(fit_times)}) | "
            f"{statistics.median(fit_times):.2f} s | |",
            f"| fit, process pool of 2, per node | {pool_time:.2f} s | |",
            f"| refit the whole fleet on 2 workers | {pool_time * args.nodes / 60:.1f} min "
            "| daily |",
            f"| scoring pass, median | {statistics.median(times):.2f} s | ≤ 3.75 s |",
            f"| scoring pass, worst | {max(times):.2f} s | < 15 s |",
            f"| RSS with all models loaded | {rss_models / 2**20:.0f} MiB | ≤ 2048 MiB |",
            f"| RSS after scoring | {rss / 2**20:.0f} MiB | ≤ 2048 MiB |",
            "",
        ]
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
