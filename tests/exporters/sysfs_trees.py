"""Helpers for collector tests over the captured sysfs trees: writable copies and rendering."""

from __future__ import annotations

import shutil
from pathlib import Path

from dcwatch.exporters.base import Collector
from dcwatch.exposition import encode
from tests.conftest import FIXTURES

GPU_NODE = FIXTURES / "gpu-node-a"
MINIMAL_VM = FIXTURES / "minimal-vm"


def copy_sys(tree: Path, dst: Path) -> Path:
    """A writable copy of ``tree``'s ``sys/`` under ``dst``, symlinks kept as symlinks."""
    out = dst / "sys"
    shutil.copytree(tree / "sys", out, symlinks=True)
    return out


def scrape(collector: Collector) -> str:
    """One ``collect()`` rendered as exposition text, as /metrics would serve it."""
    return encode(list(collector.collect()), accept="")[0].decode()


def families(text: str) -> set[str]:
    """Names of the metric families present in exposition text."""
    return {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
