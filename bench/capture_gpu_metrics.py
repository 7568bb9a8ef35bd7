"""Capture the agent's /metrics over real NVML (and the real /sys, /proc), to make a fixture.

Run on a GPU machine, from the repository root:

    .venv/bin/python bench/capture_gpu_metrics.py h100.metrics.txt [--processes] [-n 5]

Writes:

* ``OUT``: the exposition text of one scrape of every enabled collector (the default set, or
  ``--collectors gpu,power``), exactly what Prometheus would get.
* ``OUT.plan.txt``: for each GPU, which NVML source every gpu reading came from (a batched
  field id or a getter), the gpu collector's time for the first scrape (NVML init, static
  attributes, support probe) and for ``-n`` later scrapes, and its count of NVML read errors.

Exit status 2 if NVML is not usable here (the gpu collector reported "no data").
Uses only the project's code and pynvml (through the gpu collector).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from dcwatch.agent.config import AgentConfig  # noqa: E402
from dcwatch.agent.registry import CollectorRunner, build_collectors  # noqa: E402
from dcwatch.exporters import registry  # noqa: E402
from dcwatch.exporters.base import NoDataError  # noqa: E402
from dcwatch.exporters.gpu.collector import GpuCollector, GpuOptions  # noqa: E402
from dcwatch.exposition import encode  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="file to write the exposition text to")
    p.add_argument(
        "--collectors",
        default="",
        help="comma-separated collectors (default: the agent's default set)",
    )
    p.add_argument("--sysfs", type=Path, default=Path("/sys"))
    p.add_argument("--procfs", type=Path, default=Path("/proc"))
    p.add_argument("--processes", action="store_true", help="export per-process GPU memory")
    p.add_argument("-n", "--scrapes", type=int, default=5, help="timed scrapes after the first")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per collector")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    names = [n for n in args.collectors.split(",") if n] or registry.default_names()
    if "gpu" not in names:
        names.insert(0, "gpu")
    cfg = AgentConfig(
        sysfs=args.sysfs,
        procfs=args.procfs,
        collectors=tuple(names),
        options={"gpu": GpuOptions(processes=args.processes, xid_events=True)},
    )
    collectors = build_collectors(cfg)
    gpu = next(c for c in collectors if isinstance(c, GpuCollector))
    runner = CollectorRunner(collectors, timeout=args.timeout)
    try:
        t0 = time.perf_counter()
        metrics = await runner.scrape()
        first_wall = time.perf_counter() - t0
        first_gpu = runner.state["gpu"].duration
        text = encode(metrics, accept="")[0].decode()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)

        st = runner.state["gpu"]
        later: list[float] = []
        for _ in range(max(0, args.scrapes)):
            await runner.scrape()
            later.append(runner.state["gpu"].duration)

        lines = [
            f"collectors: {', '.join(names)}",
            f"gpu collector: ok={st.ok} no_data={st.no_data} last_error={st.last_error!r}",
            f"first scrape: {first_wall * 1000:.1f} ms wall, "
            f"gpu collector {first_gpu * 1000:.1f} ms",
        ]
        if later:
            lines.append(
                f"later scrapes ({len(later)}): gpu collector median "
                f"{statistics.median(later) * 1000:.1f} ms, max {max(later) * 1000:.1f} ms"
            )
        lines.append(f"NVML read errors: {gpu.read_errors()}")
        lines.append(f"series: {sum(len(m.samples) for m in metrics)}")
        lines.append("")
        lines.append(gpu.plan_report())
        plan = args.out.with_name(args.out.name + ".plan.txt")
        plan.write_text("\n".join(lines))
        print("\n".join(lines[:6]), file=sys.stderr)
        print(f"wrote {args.out} and {plan}", file=sys.stderr)
        if st.no_data:
            try:
                gpu.collect()
                why = "?"
            except NoDataError as e:
                why = str(e)
            print(f"NVML is not usable here: {why}", file=sys.stderr)
            return 2
        return 0 if st.ok else 1
    finally:
        runner.close()


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
