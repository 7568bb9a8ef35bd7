"""RAPL energy counters under ``/sys/class/powercap`` (intel_rapl_msr/_mmio; also AMD Zen).

Each zone ``intel-rapl:P`` (a package) and subzone ``intel-rapl:P:S`` (dram, core, uncore) has
``name`` ("package-0", "dram", "psys"), ``energy_uj`` (a counter in µJ that wraps to 0 after
``max_energy_range_uj``, every ~15 min at 300 W) and ``max_energy_range_uj``. Since Linux 5.10
(CVE-2020-8694, "PLATYPUS") ``energy_uj`` is readable by root only.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dcwatch.exporters.sources import limits
from dcwatch.exporters.sources.sysfs import FileCache, list_dir

_ZONE_RE = re.compile(r"^intel-rapl(?:-mmio)?(:\d+)+$", re.ASCII)
_PACKAGE_RE = re.compile(r"^package-(\d+)$", re.ASCII)


@dataclass(frozen=True)
class RaplZone:
    zone: str  # "intel-rapl:0:0"
    path: str  # /sys/class/powercap/intel-rapl:0:0
    name: str  # "dram"
    domain: str  # "package", "dram", "core", "uncore", "psys", ...
    package: str  # "0"; "" for platform-wide domains (psys)
    max_range_uj: int | None  # None when unknown
    readable: bool  # False when energy_uj exists but permission is denied

    MAX_PACKAGE_WATTS: ClassVar[float] = limits.RAPL_PACKAGE_MAX_WATTS

    def energy_is_physical(self, raw_uj: int) -> bool:
        """Whether ``energy_uj`` can hold ``raw_uj``: 0 to ``max_energy_range_uj`` (it wraps).

        Anything else (negative, beyond the range) is a misread, not a wrap or a jump.
        """
        return raw_uj >= 0 and (self.max_range_uj is None or raw_uj <= self.max_range_uj)

    @property
    def energy_path(self) -> str:
        return os.path.join(self.path, "energy_uj")

    @property
    def is_package(self) -> bool:
        """A top-level package zone of the MSR interface (the mmio one mirrors it)."""
        return self.domain == "package" and self.zone.count(":") == 1 and "mmio" not in self.zone


def parse_zone_name(name: str) -> tuple[str, str | None]:
    """``"package-1"`` -> ``("package", "1")``; ``"dram"`` -> ``("dram", None)``."""
    m = _PACKAGE_RE.match(name)
    if m:
        return "package", m.group(1)
    return name, None


def _zone_sort_key(zone: str) -> tuple[str, tuple[int, ...]]:
    kind, _, nums = zone.partition(":")
    return kind, tuple(int(n) for n in nums.split(":"))


def _readable(path: str) -> bool | None:
    """Whether ``path`` can be opened for reading; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            return False
        return None if e.errno in (errno.ENOENT, errno.ENOTDIR) else True  # other: try reads
    os.close(fd)
    return True


def discover_rapl(sysfs: Path) -> list[RaplZone]:
    """RAPL zones with an ``energy_uj`` file, parents before their subzones.

    A subzone's package is its parent's; a top-level zone's is the number in its "package-N"
    name (not the zone index, which also counts psys).
    """
    root = Path(sysfs) / "class" / "powercap"
    names = sorted((e for e in list_dir(root) if _ZONE_RE.match(e)), key=_zone_sort_key)
    fc = FileCache()
    zones: list[RaplZone] = []
    packages: dict[str, str] = {}
    try:
        for zone in names:
            path = str(root / zone)
            readable = _readable(os.path.join(path, "energy_uj"))
            if readable is None:
                continue
            name = fc.read_str(os.path.join(path, "name")) or ""
            domain, package = parse_zone_name(name)
            parent = zone.rsplit(":", 1)[0]
            if package is None:
                package = packages.get(parent, "")
            packages[zone] = package
            max_range = fc.read_int(os.path.join(path, "max_energy_range_uj"), limits.positive)
            zones.append(
                RaplZone(
                    zone, path, name, domain or "unknown", package, max_range or None, readable
                )
            )
    finally:
        fc.close()
    return zones


class WrapCounter:
    """Turns a wrapping hardware energy counter into a monotonic total (same unit).

    Each time the raw value goes down the counter has wrapped, so one range is added to the
    offset. With the range unknown it is treated as a restart from 0 (the last value is kept).
    A wrap that happens twice between two reads cannot be seen; reads every few minutes are
    enough for any real RAPL counter. Raw values outside ``0..range`` are misreads, not wraps:
    the caller refuses them first (:meth:`RaplZone.energy_is_physical`).
    """

    __slots__ = ("last", "offset", "range")

    def __init__(self, range_: int | None) -> None:
        self.range = range_
        self.last: int | None = None
        self.offset = 0

    def update(self, raw: int) -> int:
        if self.last is not None and raw < self.last:
            self.offset += self.range if self.range else self.last
        self.last = raw
        return raw + self.offset
