"""Parsers and readers of procfs network files: ``/proc/net/dev`` and ``/proc/net/vlan/config``.

Parsers are pure functions of the file's text; readers take the procfs root from config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcwatch.exporters.sources.sysfs import FileCache

# The 16 columns the kernel prints after "name:" (net/core/net-procfs.c), in order.
NETDEV_FIELDS = (
    "receive_bytes",
    "receive_packets",
    "receive_errors",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errors",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
)


@dataclass(frozen=True, slots=True)
class NetDevStats:
    """One interface's line of ``/proc/net/dev``: 64-bit counters since the device appeared."""

    device: str
    receive_bytes: int
    receive_packets: int
    receive_errors: int
    receive_drop: int
    receive_fifo: int
    receive_frame: int
    receive_compressed: int
    receive_multicast: int
    transmit_bytes: int
    transmit_packets: int
    transmit_errors: int
    transmit_drop: int
    transmit_fifo: int
    transmit_colls: int
    transmit_carrier: int
    transmit_compressed: int


def parse_netdev(text: str, want: Callable[[str], bool] | None = None) -> list[NetDevStats]:
    """Parse ``/proc/net/dev``; ``want(name)`` False skips a device before its numbers are read.

    The kernel right-aligns names to 6 columns and lets long names and big counters run into
    the colon (``bond0.100:98765``), so the line is split at its last colon, never on columns.
    Header lines and malformed lines (too few numbers) are skipped.
    """
    out: list[NetDevStats] = []
    for line in text.splitlines():
        name, sep, rest = line.rpartition(":")
        if not sep:
            continue  # the two header lines have no colon
        name = name.strip()
        if not name or (want is not None and not want(name)):
            continue
        fields = rest.split()
        if len(fields) < len(NETDEV_FIELDS):
            continue
        try:
            values = [int(f) for f in fields[: len(NETDEV_FIELDS)]]
        except ValueError:
            continue
        out.append(NetDevStats(name, *values))
    return out


def read_netdev(
    cache: FileCache, path: str | Path, want: Callable[[str], bool] | None = None
) -> list[NetDevStats] | None:
    """``/proc/net/dev`` read through ``cache`` (one pread per scrape); ``None`` if unreadable."""
    text = cache.read(path)
    return None if text is None else parse_netdev(text, want)


@dataclass(frozen=True, slots=True)
class VlanInfo:
    device: str
    vlan_id: int
    parent: str


def parse_vlan_config(text: str) -> dict[str, VlanInfo]:
    """Parse ``/proc/net/vlan/config`` (``bond0.100      | 100  | bond0``) into {device: info}."""
    out: dict[str, VlanInfo] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not parts[1].isdigit():
            continue  # the header lines ("VLAN Dev name | VLAN ID", "Name-Type: ...")
        out[parts[0]] = VlanInfo(parts[0], int(parts[1]), parts[2])
    return out


def netdev_path(procfs: Path) -> Path:
    return procfs / "net" / "dev"


def vlan_config_path(procfs: Path) -> Path:
    return procfs / "net" / "vlan" / "config"
