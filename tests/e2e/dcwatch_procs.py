"""The real ``dcwatch agent`` and ``dcwatch analyzer`` as processes for e2e tests, and the helpers
the e2e tests share (fixture trees written in place, Alertmanager and Prometheus queries)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import FIXTURES
from tests.procs import Proc


def copy_tree(name: str, dst: Path) -> Path:
    """A writable copy of a fixture tree (symlinks kept) whose values a test may change.

    Change values with a truncating write (``Path.write_text``), never by renaming a new file
    into place: the agent keeps sysfs files open and re-reads them, like real sysfs.
    """
    root = dst / name
    shutil.copytree(FIXTURES / name, root, symlinks=True)
    return root


def start_agent(tmp_path: Path, root: Path, args: Sequence[str] = ()) -> Proc:
    """The agent on a free 127.0.0.1 port reading ``root``'s sys/ and proc/; ready on /healthz."""
    workdir = tmp_path / "agent"
    workdir.mkdir(exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dcwatch.cli",
            "agent",
            f"--listen=127.0.0.1:{port}",
            f"--sysfs={root / 'sys'}",
            f"--procfs={root / 'proc'}",
            *args,
        ]

    return Proc("dcwatch-agent", argv, workdir, ready_path="/healthz").start()


def prom_query(prom_url: str, expr: str) -> list[dict]:
    """Instant query through Prometheus' HTTP API; the result vector."""
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def prom_value(prom_url: str, expr: str) -> float | None:
    """The single value of an instant query, or None when the result is empty."""
    res = prom_query(prom_url, expr)
    if not res:
        return None
    assert len(res) == 1, f"{expr} returned {len(res)} series"
    return float(res[0]["value"][1])


def write_in_place(fd: int, value: int) -> None:
    """Rewrite a sysfs attribute the way the kernel does: one write at offset 0, never an empty
    file in between. Fixed width and padded, so no digits of a longer old value are left."""
    os.pwrite(fd, f"{value:<14d}\n".encode(), 0)


# Quick resends and retries, so alert delivery and recovery fit in a test's time.
FAST_ALERTING = (
    "--alerting-resend-interval=2s",
    "--alerting-retry-initial=0.5",
    "--alerting-retry-max=2",
)


def start_analyzer(
    tmp_path: Path,
    name: str,
    args: Sequence[str] = (),
    *,
    config_text: str | None = None,
    queries_text: str | None = None,
    port: int | None = None,
) -> Proc:
    """``dcwatch analyzer`` on 127.0.0.1 with its state (and optional config/queries files) in
    ``tmp_path / name``; ready on /healthz."""
    workdir = tmp_path / name
    workdir.mkdir()
    extra: list[str] = []
    if config_text is not None:
        (workdir / "analyzer.yaml").write_text(config_text)
        extra.append(f"--config={workdir / 'analyzer.yaml'}")
    if queries_text is not None:
        (workdir / "queries.yaml").write_text(queries_text)
        extra.append(f"--queries-file={workdir / 'queries.yaml'}")

    def argv(p: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dcwatch.cli",
            "analyzer",
            *extra,
            f"--listen=127.0.0.1:{p}",
            f"--state-dir={workdir / 'state'}",
            "--log-level=debug",
            *args,
        ]

    return Proc(name, argv, workdir, port=port, ready_path="/healthz").start()


def start_analyzer_pair(
    tmp_path: Path,
    agent: Proc,
    prom: Proc,
    am_prom: Proc,
    am_embedded: Proc,
    args: Sequence[str] = (),
    **files: str | None,
) -> tuple[Proc, Proc]:
    """The same analyzer twice: reading Prometheus (alerting ``am_prom``) and in the embedded
    default scraping the agent itself at 1 s (alerting ``am_embedded``)."""
    common = ["--model-workers=0", *FAST_ALERTING, *args]
    via_prom = start_analyzer(
        tmp_path,
        "analyzer-prom",
        [f"--prometheus-url={prom.url}", f"--alerting-alertmanagers={am_prom.url}", *common],
        **files,
    )  # type: ignore[arg-type]
    embedded = start_analyzer(
        tmp_path,
        "analyzer-embedded",
        [
            f"--target=http://127.0.0.1:{agent.port}/metrics",
            "--embedded-scrape-interval=1",
            "--embedded-scrape-timeout=1",
            f"--alerting-alertmanagers={am_embedded.url}",
            *common,
        ],
        **files,
    )  # type: ignore[arg-type]
    return via_prom, embedded


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def am_alerts(am: Proc, alertname: str, active: bool = True) -> list[dict]:
    """The alerts named ``alertname`` that Alertmanager holds (active, or not active)."""
    flag = "true" if active else "false"
    alerts = get_json(f"{am.url}/api/v2/alerts?active={flag}&silenced=false&inhibited=false")
    assert isinstance(alerts, list)
    return [a for a in alerts if a["labels"].get("alertname") == alertname]


def metric(proc: Proc, name: str, **labels: str) -> float | None:
    """One sample of a dcwatch process's /metrics (labels may be a subset), or None."""
    from tests.helpers import sample

    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=5) as r:
        return sample(r.read().decode(), name, **labels)
