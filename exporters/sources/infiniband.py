"""Readers of ``/sys/class/infiniband/<hca>/``: HCA identity, port state, rate and counters.

The layout (HCAs, ports, which counter files exist, firmware, board id, GUID, link layer) is
scanned once per rediscovery interval; each scrape reads only the per-port state, rate and the
counter files the caller asked for, through one :class:`FileCache` per HCA. Each counter read
makes the driver query the port (a MAD), so asking for fewer files is what makes it cheap.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from dcwatch.exporters.sources import limits
from dcwatch.exporters.sources.sysfs import FileCache, Rediscovered, list_dir, parse_int

# PortXmitData/PortRcvData count 32-bit words ("4 octets" in the IBA spec), not bytes.
FOUR_OCTET_COUNTERS = frozenset({"port_xmit_data", "port_rcv_data"})
STATE_ACTIVE = 4
# hw_counters entries that are settings or levels, not monotonic counters.
_HW_NOT_COUNTERS = frozenset({"lifespan"})
_HW_GAUGE_PREFIXES = ("active_", "watermark_")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*Gb/sec", re.ASCII)


@dataclass(frozen=True, slots=True)
class PortLayout:
    hca: str
    port: str
    path: str
    link_layer: str  # "InfiniBand" or "Ethernet" (RoCE)
    counters: tuple[tuple[str, str], ...]  # (name, path) under counters/ to read each scrape
    hw_counters: tuple[tuple[str, str], ...]  # (name, path) under hw_counters/


@dataclass(frozen=True, slots=True)
class HcaInfo:
    name: str
    fw_ver: str
    board_id: str
    node_guid: str
    hca_type: str
    ports: tuple[PortLayout, ...]


@dataclass(slots=True)
class PortReading:
    """One port's scrape; counters are in base units (bytes for the ``*_data`` counters)."""

    state: int | None = None
    state_name: str = ""
    phys_state: int | None = None
    phys_state_name: str = ""
    rate_bytes: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    hw_counters: dict[str, int] = field(default_factory=dict)


def parse_state(text: str | None) -> tuple[int, str] | None:
    """``"4: ACTIVE"`` → ``(4, "ACTIVE")``; ``"5: LinkUp"`` → ``(5, "LinkUp")``; None unless
    the number is a non-negative integer (states are small enums)."""
    if not text:
        return None
    num, _, name = text.partition(":")
    value = parse_int(num)
    return (value, name.strip()) if value is not None and value >= 0 else None


def parse_rate(text: str | None) -> float | None:
    """``"200 Gb/sec (4X HDR)"`` → 25e9 bytes/s; anything else → None."""
    m = _RATE.match(text or "")
    if m is None:
        return None
    gbit = float(m.group(1))
    return gbit * 1e9 / 8 if gbit > 0 and math.isfinite(gbit * 1e9) else None


def is_hw_counter(name: str) -> bool:
    return name not in _HW_NOT_COUNTERS and not name.startswith(_HW_GAUGE_PREFIXES)


def _files(d: Path, keep: Callable[[str], bool]) -> tuple[tuple[str, str], ...]:
    return tuple((n, os.fspath(d / n)) for n in list_dir(d) if keep(n))


def discover(
    sysfs: Path, counters: Collection[str] | None = None, cache: FileCache | None = None
) -> list[HcaInfo]:
    """Scan ``<sysfs>/class/infiniband``; ``counters`` limits which counter files get read."""
    root = sysfs / "class" / "infiniband"
    once = cache or FileCache()
    wanted: Callable[[str], bool] = (lambda n: True) if counters is None else counters.__contains__
    out = []
    for hca in list_dir(root):
        base = root / hca
        ports = []
        for port in list_dir(base / "ports"):
            p = base / "ports" / port
            ports.append(
                PortLayout(
                    hca=hca,
                    port=port,
                    path=os.fspath(p),
                    link_layer=once.read_str(p / "link_layer") or "",
                    counters=_files(p / "counters", wanted),
                    hw_counters=_files(p / "hw_counters", is_hw_counter),
                )
            )
        out.append(
            HcaInfo(
                name=hca,
                fw_ver=once.read_str(base / "fw_ver") or "",
                board_id=once.read_str(base / "board_id") or "",
                node_guid=once.read_str(base / "node_guid") or "",
                hca_type=once.read_str(base / "hca_type") or "",
                ports=tuple(ports),
            )
        )
    if cache is None:
        once.close()
    return out


class InfinibandReader:
    """The HCA layout (rediscovered) and per-scrape port readings."""

    def __init__(
        self,
        sysfs: Path,
        rediscover_interval: float,
        counters: Collection[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sysfs = sysfs
        self._counters = counters
        self._layout = Rediscovered(self._discover, rediscover_interval, clock)
        self._caches: dict[str, FileCache] = {}
        self._closed_errors = 0

    def _discover(self) -> list[HcaInfo]:
        once = FileCache()
        try:
            return discover(self._sysfs, self._counters, once)
        finally:
            self._closed_errors += once.errors
            once.close()

    def hcas(self) -> list[HcaInfo]:
        """The HCAs found at the last discovery; descriptors of vanished ones are closed."""
        hcas = self._layout.get()
        if len(self._caches) > len(hcas) or any(h.name not in self._caches for h in hcas):
            names = {h.name for h in hcas}
            for gone in [n for n in self._caches if n not in names]:
                self._drop(gone)
        return hcas

    def read_port(self, port: PortLayout) -> PortReading | None:
        """State, rate and counters of ``port``; None if it went away since discovery."""
        if not os.path.isdir(port.path):
            # Hot-unplug or driver reload: kept-open descriptors would answer ENODEV, so stop
            # here and rescan at the next scrape instead of counting a read error per file.
            self._layout.invalidate()
            return None
        c = self._caches.get(port.hca)
        if c is None:
            c = self._caches[port.hca] = FileCache()
        r = PortReading()
        st = parse_state(c.read_str(port.path + "/state"))
        if st is not None:
            r.state, r.state_name = st
        ph = parse_state(c.read_str(port.path + "/phys_state"))
        if ph is not None:
            r.phys_state, r.phys_state_name = ph
        r.rate_bytes = parse_rate(c.read_str(port.path + "/rate"))
        # Port and hw counters are unsigned: a negative one is a read error, not a value.
        for name, path in port.counters:
            v = c.read_int(path, limits.non_negative)
            if v is not None:
                r.counters[name] = v * 4 if name in FOUR_OCTET_COUNTERS else v
        for name, path in port.hw_counters:
            v = c.read_int(path, limits.non_negative)
            if v is not None:
                r.hw_counters[name] = v
        return r

    def _drop(self, hca: str) -> None:
        c = self._caches.pop(hca)
        self._closed_errors += c.errors
        c.close()

    @property
    def errors(self) -> int:
        return self._closed_errors + sum(c.errors for c in self._caches.values())

    def close(self) -> None:
        for n in list(self._caches):
            self._drop(n)
