"""The alert sender under a fleet-wide alert storm: one pass's state changes, per alert vs batched.

For each N (default 1,000 and 10,000): N new alerts fire, then all N fire again with changed
annotations (the observed values move every pass), then all N resolve. Each phase is timed
two ways, each in a fresh process on a fresh state directory (log-only mode: the store, the
history and the JSON-lines alert log, as the analyzer runs without an Alertmanager):

* ``per-alert``: one ``await sender.fire(alert)`` / ``resolve(key)`` per node, as the analyzer's
  pass did before issue #11;
* ``batch``: one ``await sender.apply(fire=..., resolve=...)`` per phase.

``--old-sender FILE`` adds the per-alert loop on another revision's sender module, e.g.
``git show <rev>:detectors/alerting/sender.py > /tmp/sender_old.py`` (it runs on this tree's
store, history and log, whose one-item calls are unchanged). Reported: wall time per phase,
store and history transactions and alert-log appends (calls counted), peak RSS of the process.

    nice .venv/bin/python bench/alert_send.py [--nodes 1000 --nodes 10000] [--old-sender F]

Writes bench/reports/alert_send.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcwatch.detectors.alerting.alerts import Alert, AlertingConfig, Contributor, build_alert  # noqa: E402
from dcwatch.detectors.alerting.sender import AlertSender  # noqa: E402

PHASES = ("fire", "re-fire", "resolve")


def make_alert(cfg: AlertingConfig, i: int, tick: int) -> Alert:
    """An alert shaped like the analyzer's: three contributors, a score; ``tick`` moves them."""
    inst = f"gpu-node-{i:05d}:9478"
    contributors = [
        Contributor(f'dcwatch_gpu_temperature_celsius{{gpu="{g}"}}', 90.0 + g + tick, 64.0, 3.0)
        for g in range(3)
    ]
    return build_alert(
        cfg,
        alertname="DcwatchNodeAnomaly",
        severity="warning",
        instance=inst,
        summary=f"{inst} behaves unlike its history (gpu_temperature_celsius)",
        contributors=contributors,
        score=-1.5 - 0.01 * tick,
        gpu="0",
    )


def sender_class(path: str | None) -> type[AlertSender]:
    if path is None:
        return AlertSender
    spec = importlib.util.spec_from_file_location("sender_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.AlertSender


def counted(obj: Any, name: str, counts: dict[str, int]) -> None:
    """Count calls of ``obj.name`` (the one-item methods call it too)."""
    fn: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        counts[name] += 1
        return fn(*args, **kw)

    counts[name] = 0
    setattr(obj, name, wrapper)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def child(mode: str, n: int, old_sender: str | None) -> dict[str, Any]:
    log = logging.getLogger("dcwatch.alerts")  # the analyzer logs to stderr; here: formatted, lost
    log.addHandler(logging.StreamHandler(open(os.devnull, "w")))  # noqa: SIM115
    log.propagate = False
    with tempfile.TemporaryDirectory() as d:
        cfg = AlertingConfig(state_dir=Path(d))
        first = [make_alert(cfg, i, 0) for i in range(n)]
        again = [make_alert(cfg, i, 1) for i in range(n)]
        keys = [a.key for a in first]
        sender = sender_class(old_sender if mode == "old" else None)(cfg)
        await sender.start(background=False)
        counts: dict[str, int] = {}
        counted(sender.store, "write", counts)
        counted(sender.history, "record_many", counts)
        assert sender.alert_log is not None
        counted(sender.alert_log, "write_many", counts)
        rss_before = peak_rss_mib()
        out: dict[str, Any] = {"mode": mode, "n": n, "rss_before": rss_before}
        for phase, fire, resolve in (
            ("fire", first, []),
            ("re-fire", again, []),
            ("resolve", [], keys),
        ):
            for k in counts:
                counts[k] = 0
            t0 = time.perf_counter()
            if mode == "batch":
                await sender.apply(fire=fire, resolve=resolve)
            else:
                for a in fire:
                    await sender.fire(a)
                for k in resolve:
                    await sender.resolve(k)
            out[phase] = {"s": time.perf_counter() - t0, **counts}
        out["held_after"] = len(sender._records)
        await sender.stop()
    out["rss_peak"] = peak_rss_mib()
    return out


def run(mode: str, n: int, old_sender: str | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--nodes", str(n)]
    if old_sender:
        cmd += ["--old-sender", old_sender]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, action="append")
    ap.add_argument("--old-sender", help="another revision's sender.py, run per alert")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = args.nodes or [1000, 10_000]
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, sizes[0], args.old_sender))))
        return
    modes = (["old"] if args.old_sender else []) + ["per-alert", "batch"]
    names = {"old": "per alert, old sender", "per-alert": "per alert", "batch": "batch (apply)"}
    rows = []
    for n in sizes:
        for mode in modes:
            r = run(mode, n, args.old_sender)
            print(json.dumps(r), flush=True)
            rows.append(r)

    def cell(p: dict[str, Any]) -> str:
        return f"{p['s']:.2f} s ({p['write']} / {p['record_many']} / {p['write_many']})"

    lines = [
        "# Alert sender: one pass's state changes, per alert vs batched",
        "",
        f"`bench/alert_send.py {' '.join(f'--nodes {n}' for n in sizes)}"
        f"{' --old-sender ...' if args.old_sender else ''}`, on this project's 2-core machine "
        "shared with other work (indicative). Log-only mode (alert store, history, JSON-lines "
        "log; no Alertmanager), default queue_max (10,000); each row a fresh process and state "
        "directory. A phase is N alerts: *fire* (new), *re-fire* (already firing, annotations "
        "changed), *resolve*. Each cell: wall time (store transactions / history transactions / "
        "alert-log appends).",
        "",
        "| N | path | fire | re-fire | resolve | peak RSS MiB (before) |",
        "|---:|---|---|---|---|---:|",
        *(
            f"| {r['n']:,} | {names[r['mode']]} | {cell(r['fire'])} | {cell(r['re-fire'])} | "
            f"{cell(r['resolve'])} | {r['rss_peak']:.0f} ({r['rss_before']:.0f}) |"
            for r in rows
        ),
        "",
        "*per alert* on this tree runs each call as a batch of one (same transactions per alert as "
        "before, without the scans of every held alert per call); *old sender* is the module given "
        "with `--old-sender`. Per-alert rows are bound by one fsync'd SQLite transaction per alert "
        "and vary several-fold between runs on a shared disk; the batch costs one transaction of "
        "each kind per call whatever N, and its time is mostly JSON for N records (store row, "
        "history row, log line). Its extra peak RSS is the pass's rows and log lines held at once.",
    ]
    out = REPO / "bench/reports/alert_send.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
