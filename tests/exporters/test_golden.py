"""One golden /metrics per captured tree: the whole agent's output over that tree.

A change in any collector's output shows up here as a diff. After an intended change run
``pytest tests/exporters/test_golden.py --update-golden`` and review the golden files' diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dcwatch.agent.config import AgentConfig
from dcwatch.agent.registry import CollectorRunner, build_collectors
from dcwatch.exposition import encode
from tests.conftest import FIXTURES

# Values that change every run (timings, the test process's own CPU/memory) are not golden.
VOLATILE = ("dcwatch_scrape_collector_duration_seconds", "dcwatch_process_", "dcwatch_build_info")

TREES = sorted(p.name for p in FIXTURES.iterdir() if (p / "sys").is_dir())


def render(tree: Path) -> str:
    cfg = AgentConfig(
        sysfs=tree / "sys", procfs=tree / "proc", collectors=("power", "thermal", "network")
    )
    return render_with(cfg)


def render_with(cfg: AgentConfig) -> str:
    import asyncio

    runner = CollectorRunner(build_collectors(cfg), timeout=30)
    try:
        metrics = asyncio.run(runner.scrape())
    finally:
        runner.close()
    text = encode(metrics, accept="")[0].decode()
    lines = [ln for ln in text.splitlines() if not any(v in ln for v in VOLATILE)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("tree", TREES)
def test_golden_metrics(tree: str, update_golden: bool) -> None:
    root = FIXTURES / tree
    got = render(root)
    golden = root / "metrics.golden.txt"
    if update_golden or not golden.exists():
        golden.write_text(got)
        if not update_golden:
            pytest.fail(f"{golden} did not exist; written now: review and commit it")
    assert got == golden.read_text(), f"output differs from {golden}; --update-golden if intended"
    assert "NaN" not in got


def test_fixture_trees_exist() -> None:
    assert {"gpu-node-a", "minimal-vm"} <= set(TREES)
