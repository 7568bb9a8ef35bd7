"""Start the real ``dcwatch agent`` (the console script's code path) as a process for e2e tests."""

from __future__ import annotations

import json
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
            "agent.cli",
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
