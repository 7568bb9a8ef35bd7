"""Thermal zones and cooling devices under ``/sys/class/thermal``.

``thermal_zoneN`` has ``type`` ("acpitz", "x86_pkg_temp"), ``temp`` (millidegrees C) and trip
points ``trip_point_K_temp`` / ``trip_point_K_type`` ("critical", "hot", "passive", "active").
``cooling_deviceN`` has ``type`` ("Processor", "intel_powerclamp", "Fan"), ``cur_state`` and
``max_state``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dcwatch.exporters.sources import limits
from dcwatch.exporters.sources.sysfs import FileCache, list_dir

_ZONE_RE = re.compile(r"^thermal_zone(\d+)$", re.ASCII)
_COOLING_RE = re.compile(r"^cooling_device(\d+)$", re.ASCII)
_TRIP_RE = re.compile(r"^trip_point_(\d+)_type$", re.ASCII)


@dataclass(frozen=True)
class TripPoint:
    index: str  # "0"
    type: str  # "critical", "hot", "passive", "active"
    temp_path: str


@dataclass(frozen=True)
class ThermalZone:
    zone: str  # "thermal_zone0"
    type: str  # "acpitz"
    temp_path: str
    trips: tuple[TripPoint, ...]

    def is_physical(self, raw_millidegrees: int) -> bool:
        """Whether ``temp`` holds a temperature (the kernel's THERMAL_TEMP_INVALID does not)."""
        return limits.millicelsius(raw_millidegrees)


@dataclass(frozen=True)
class CoolingDevice:
    device: str  # "cooling_device0"
    type: str  # "Processor"
    cur_path: str
    max_path: str

    def is_physical(self, raw_state: int) -> bool:
        """Cooling states are unsigned in the kernel."""
        return limits.non_negative(raw_state)


def trip_is_set(raw_millidegrees: int) -> bool:
    """False for the values meaning "no trip here": 0, which x86_pkg_temp and other writable
    trips read until someone sets them, the kernel's THERMAL_TEMP_INVALID (-274 °C), and
    anything else no temperature can be."""
    return raw_millidegrees != 0 and limits.millicelsius(raw_millidegrees)


def _numbered(names: list[str], pattern: re.Pattern[str]) -> list[str]:
    found = [(int(m[1]), n) for n in names if (m := pattern.match(n))]
    return [n for _, n in sorted(found)]


def discover_thermal(sysfs: Path) -> tuple[list[ThermalZone], list[CoolingDevice]]:
    """Zones that have a ``temp`` file and cooling devices that have a ``cur_state``."""
    root = Path(sysfs) / "class" / "thermal"
    names = list_dir(root)
    fc = FileCache()
    zones: list[ThermalZone] = []
    cooling: list[CoolingDevice] = []
    try:
        for zone in _numbered(names, _ZONE_RE):
            d = root / zone
            files = list_dir(d)
            if "temp" not in files:
                continue
            trips = []
            for fn in files:
                m = _TRIP_RE.match(fn)
                if m and f"trip_point_{m[1]}_temp" in files:
                    ttype = fc.read_str(d / fn) or "unknown"
                    trips.append(TripPoint(m[1], ttype, str(d / f"trip_point_{m[1]}_temp")))
            trips.sort(key=lambda t: int(t.index))
            ztype = fc.read_str(d / "type") or "unknown"
            zones.append(ThermalZone(zone, ztype, str(d / "temp"), tuple(trips)))
        for dev in _numbered(names, _COOLING_RE):
            d = root / dev
            files = list_dir(d)
            if "cur_state" not in files:
                continue
            ctype = fc.read_str(d / "type") or "unknown"
            cooling.append(
                CoolingDevice(dev, ctype, str(d / "cur_state"), os.path.join(d, "max_state"))
            )
    finally:
        fc.close()
    return zones, cooling
