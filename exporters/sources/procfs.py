"""Parsers and readers of procfs network files: ``/proc/net/dev`` and ``/proc/net/vlan/config``.

Parsers are pure functions of the file's text; readers take the procfs root from config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcwatch.exporters.sources.limits import UINT64_MAX
from dcwatch.exporters.sources.sysfs import FileCache

_VLAN_ID_MAX = 4095  # 12 bits in the 802.1Q tag
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


def parse_counters(text: str, n: int) -> list[int] | None:
    """The first ``n`` whitespace-separated kernel u64 counters of ``text``: ASCII digits, at
    most 2**64 - 1. None if there are fewer or one is anything else (a sign, garbage)."""
    fields = text.split()[:n]
    if len(fields) < n or not all(f.isascii() and f.isdigit() and len(f) <= 20 for f in fields):
        return None
    values = [int(f) for f in fields]
    return values if all(v <= UINT64_MAX for v in values) else None


def parse_netdev(
    text: str,
    want: Callable[[str], bool] | None = None,
    malformed: list[str] | None = None,
) -> list[NetDevStats]:
    """Parse ``/proc/net/dev``; ``want(name)`` False skips a device before its numbers are read.

    The kernel right-aligns names to 6 columns and lets long names and big counters run into
    the colon (``bond0.100:98765``), so the line is split at its last colon, never on columns.
    Header lines (``|`` and no colon) and blank lines are skipped. Any other line that is not a
    name and 16 counters (non-negative integers below 2**64), or repeats a name, is skipped
    and appended to ``malformed``: the other interfaces still parse.
    """
    out: list[NetDevStats] = []
    seen: set[str] = set()
    for line in text.splitlines():
        name, sep, rest = line.rpartition(":")
        name = name.strip()
        if not sep:
            if line.strip() and "|" not in line and malformed is not None:
                malformed.append(line)
            continue
        if name and want is not None and not want(name):
            continue
        values = parse_counters(rest, len(NETDEV_FIELDS))
        if not name or name in seen or values is None:
            if malformed is not None:
                malformed.append(line)
            continue
        seen.add(name)
        out.append(NetDevStats(name, *values))
    return out


def read_netdev(
    cache: FileCache, path: str | Path, want: Callable[[str], bool] | None = None
) -> list[NetDevStats] | None:
    """``/proc/net/dev`` read through ``cache`` (one pread per scrape); ``None`` if unreadable.

    Each malformed line is a read error of ``cache``.
    """
    text = cache.read(path)
    if text is None:
        return None
    malformed: list[str] = []
    stats = parse_netdev(text, want, malformed)
    for line in malformed:
        cache.reject(path, line, "malformed line")
    return stats


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
        if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
            continue  # the header lines ("VLAN Dev name | VLAN ID", "Name-Type: ...")
        vid = int(parts[1])
        if vid <= _VLAN_ID_MAX:
            out[parts[0]] = VlanInfo(parts[0], vid, parts[2])
    return out


def netdev_path(procfs: Path) -> Path:
    return procfs / "net" / "dev"


def vlan_config_path(procfs: Path) -> Path:
    return procfs / "net" / "vlan" / "config"
