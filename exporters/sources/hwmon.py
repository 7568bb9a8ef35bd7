"""Discovery of hwmon chips under ``/sys/class/hwmon`` and parsing of their attribute names.

Layout (Documentation/hwmon/sysfs-interface.rst): each ``hwmonN`` is usually a symlink into
``/sys/devices``; it holds ``name`` (the driver's chip name) and attributes
``<kind><index>_<attr>``, e.g. ``temp1_input`` (millidegrees C), ``temp1_label``, ``temp1_crit``,
``fan2_input`` (rpm), ``in0_input`` (mV), ``curr1_input`` (mA), ``power1_input`` or
``power1_average`` (µW), ``energy1_input`` (µJ). Some old drivers keep the attributes in
``hwmonN/device/`` instead; both are handled.

``hwmonN`` numbers depend on module load order, so a chip is identified by its parent device
(``coretemp.0``, ``nvme0``, ``ACPI000D:00``), which is stable across reboots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dcwatch.exporters.sources import limits
from dcwatch.exporters.sources.sysfs import FileCache, list_dir

# Divisor from the sysfs unit to the base unit, per sensor kind.
SCALE = {
    "temp": 1000.0,  # millidegree Celsius -> Celsius
    "in": 1000.0,  # millivolt -> volt
    "curr": 1000.0,  # milliampere -> ampere
    "power": 1e6,  # microwatt -> watt
    "energy": 1e6,  # microjoule -> joule
    "fan": 1.0,  # rpm
}
# The attribute holding a kind's current value, in order of preference. ACPI power_meter and
# amdgpu only have ``power1_average``.
VALUE_ATTRS = {"power": ("input", "average")}
# Thresholds worth exporting, per kind.
THRESHOLD_ATTRS = {"temp": ("crit", "max"), "fan": ("min",)}
# Raw values no sensor of a kind can read: a read error, not a value. Temperatures at or below
# absolute zero or above any sensor's range; negative fan speeds; negative power or energy,
# which the ABI defines as use ("power use", "cumulative energy use"). Voltages (-12 V rails)
# and currents (bidirectional shunts such as the INA226) can be negative and are not checked.
PHYSICAL: dict[str, Callable[[int], bool]] = {
    "temp": limits.millicelsius,
    "fan": limits.non_negative,
    "power": limits.microwatts,
    "energy": limits.non_negative,
}

_ATTR_RE = re.compile(r"^(temp|fan|in|curr|power|energy)(\d+)_([a-z_]+)$", re.ASCII)
_HWMON_RE = re.compile(r"^hwmon\d+$", re.ASCII)
_CORETEMP_RE = re.compile(r"^(Package id|Physical id|Core)\s+(\d+)$", re.ASCII)
CPU_CHIPS_CORETEMP = ("coretemp",)
CPU_CHIPS_AMD = ("k10temp", "zenpower")


@dataclass(frozen=True)
class HwmonSensor:
    kind: str  # temp, fan, in, curr, power, energy
    sensor: str  # "temp1"
    label: str  # contents of temp1_label, "" when the driver gives none
    value_path: str  # temp1_input (or power1_average)
    thresholds: tuple[tuple[str, str], ...] = ()  # (("crit", path), ("max", path))

    def is_physical(self, raw: int) -> bool:
        """Whether a raw reading (sysfs units) is one this kind of sensor can give."""
        check = PHYSICAL.get(self.kind)
        return check is None or check(raw)


@dataclass(frozen=True)
class HwmonChip:
    chip: str  # stable id: the parent device's name, e.g. "coretemp.0"
    name: str  # the driver's chip name from the ``name`` file, e.g. "coretemp"
    hwmon: str  # "hwmon3": unstable across reboots, for messages only
    path: str  # /sys/class/hwmon/hwmonN (or its device/ for old drivers)
    device: str  # resolved parent device path ("" when unknown)
    sensors: tuple[HwmonSensor, ...]


def parse_attr(filename: str) -> tuple[str, int, str] | None:
    """``"temp1_input"`` -> ``("temp", 1, "input")``; None for anything else."""
    m = _ATTR_RE.match(filename)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def temp_threshold_is_set(raw_millidegrees: int) -> bool:
    """False for the sentinels drivers use for "no threshold": at or below absolute zero
    (nvme's min), and above any real temperature, e.g. 0xFFFF kelvin (65261.85 °C), which NVMe
    uses for "no over-temperature threshold" on its secondary sensors."""
    return limits.millicelsius(raw_millidegrees)


def fan_min_is_set(raw_rpm: int) -> bool:
    """A minimum of 0 rpm means the low-speed alarm is off."""
    return raw_rpm > 0


THRESHOLD_IS_SET: dict[str, Callable[[int], bool]] = {
    "temp": temp_threshold_is_set,
    "fan": fan_min_is_set,
}


def parse_coretemp_label(label: str) -> tuple[str, str] | None:
    """``"Package id 0"`` -> ``("package", "0")``; ``"Core 3"`` -> ``("core", "3")``."""
    m = _CORETEMP_RE.match(label.strip())
    if not m:
        return None
    return ("core" if m.group(1) == "Core" else "package", m.group(2))


def cpu_temps(chips: Iterable[HwmonChip]) -> list[tuple[HwmonChip, HwmonSensor, str, str]]:
    """CPU temperatures among the chips' sensors as ``(chip, sensor, package, core)``.

    coretemp: "Package id N" and "Core M" labels; core "" is the whole package, and a core's
    package is its chip's "Package id" (else the N of ``coretemp.N``). k10temp/zenpower: one
    package temperature, Tdie where the driver gives it (Tctl carries a fan-control offset on
    some Zen parts), else Tctl; the package number is the chip's position among AMD CPU chips
    sorted by device, since they sit on per-socket PCI functions 00:18.3, 00:19.3, ... Chips of
    multi-die packages repeat a package's labels: the first occurrence wins.
    """
    chips = list(chips)
    amd = sorted((c for c in chips if c.name in CPU_CHIPS_AMD), key=lambda c: c.device or c.chip)
    out = []
    seen: set[tuple[str, str]] = set()
    for chip in chips:
        for sensor, package, core in _chip_cpu_temps(chip, amd.index(chip) if chip in amd else -1):
            if (package, core) not in seen:
                seen.add((package, core))
                out.append((chip, sensor, package, core))
    return out


def _chip_cpu_temps(chip: HwmonChip, amd_ordinal: int) -> list[tuple[HwmonSensor, str, str]]:
    temps = [s for s in chip.sensors if s.kind == "temp"]
    if chip.name in CPU_CHIPS_CORETEMP:
        parsed = [(s, p) for s in temps if (p := parse_coretemp_label(s.label))]
        package = next((num for _, (role, num) in parsed if role == "package"), None)
        if package is None:
            m = re.search(r"\.(\d+)$", chip.chip)
            package = m.group(1) if m else ""
        return [
            (s, num, "") if role == "package" else (s, package, num) for s, (role, num) in parsed
        ]
    if chip.name in CPU_CHIPS_AMD:
        by_label = {s.label: s for s in temps}
        s = by_label.get("Tdie") or by_label.get("Tctl")
        return [(s, str(amd_ordinal), "")] if s else []
    return []


def _chip_device(hwmon_dir: str) -> str:
    """The parent device's real path, or "" (plain directories, virtual chips)."""
    dev = os.path.join(hwmon_dir, "device")
    if os.path.exists(dev):
        return os.path.realpath(dev)
    if not os.path.islink(hwmon_dir):
        return ""
    parent = os.path.dirname(os.path.realpath(hwmon_dir))
    # /sys/devices/platform/coretemp.0/hwmon/hwmon3, but a class device holds its hwmonN
    # directly: .../nvme/nvme0/hwmon1, /sys/devices/virtual/thermal/thermal_zone0/hwmon0
    if os.path.basename(parent) == "hwmon":
        parent = os.path.dirname(parent)
    return parent


def _sensors(attr_dir: str, names: Iterable[str], fc: FileCache) -> tuple[HwmonSensor, ...]:
    attrs: dict[tuple[str, int], set[str]] = {}
    for fn in names:
        parsed = parse_attr(fn)
        if parsed:
            attrs.setdefault(parsed[:2], set()).add(parsed[2])
    kind_order = list(SCALE)
    out = []
    for kind, idx in sorted(attrs, key=lambda k: (kind_order.index(k[0]), k[1])):
        have = attrs[(kind, idx)]
        value = next((a for a in VALUE_ATTRS.get(kind, ("input",)) if a in have), None)
        if value is None:
            continue
        sensor = f"{kind}{idx}"
        label = fc.read_str(os.path.join(attr_dir, f"{sensor}_label")) if "label" in have else ""
        out.append(
            HwmonSensor(
                kind=kind,
                sensor=sensor,
                label=label or "",
                value_path=os.path.join(attr_dir, f"{sensor}_{value}"),
                thresholds=tuple(
                    (t, os.path.join(attr_dir, f"{sensor}_{t}"))
                    for t in THRESHOLD_ATTRS.get(kind, ())
                    if t in have
                ),
            )
        )
    return tuple(out)


def discover_hwmon(sysfs: Path) -> list[HwmonChip]:
    """All hwmon chips with at least one sensor, ordered by hwmon number; ids made unique."""
    root = Path(sysfs) / "class" / "hwmon"
    entries = sorted((e for e in list_dir(root) if _HWMON_RE.match(e)), key=lambda e: int(e[5:]))
    fc = FileCache()  # discovery-time reads only; closed below so no descriptor outlives it
    try:
        chips: list[HwmonChip] = []
        for entry in entries:
            d = str(root / entry)
            names = list_dir(Path(d))
            attr_dir = d
            if "name" not in names and "name" in list_dir(Path(d) / "device"):  # old layout
                attr_dir = os.path.join(d, "device")
                names = list_dir(Path(attr_dir))
            sensors = _sensors(attr_dir, names, fc)
            if not sensors:
                continue
            name = fc.read_str(os.path.join(attr_dir, "name")) or entry
            device = _chip_device(d)
            chip = os.path.basename(device) or name
            chips.append(HwmonChip(chip, name, entry, attr_dir, device, sensors))
    finally:
        fc.close()
    return _unique_ids(chips)


def _unique_ids(chips: list[HwmonChip]) -> list[HwmonChip]:
    """Some drivers register several hwmon devices under one parent: suffix ``/hwmonN`` then."""
    count: dict[str, int] = {}
    for c in chips:
        count[c.chip] = count.get(c.chip, 0) + 1
    return [replace(c, chip=f"{c.chip}/{c.hwmon}") if count[c.chip] > 1 else c for c in chips]


@dataclass(frozen=True, slots=True)
class ScaledRead:
    """One integer attribute to read each scrape, planned once at discovery.

    ``outputs`` is the caller's (e.g. metric families and label values); ``keep`` drops raw
    values that mean "not set"; ``tag`` marks reads the caller also aggregates; ``valid``
    refuses raw values that cannot be physical, as read errors.
    """

    path: str
    divisor: float
    outputs: tuple[Any, ...]
    keep: Callable[[int], bool] | None = None
    tag: str = ""
    valid: Callable[[int], bool] | None = None


def read_scaled(
    files: FileCache, reads: Sequence[ScaledRead]
) -> Iterator[tuple[ScaledRead, float]]:
    """``(read, value in base units)`` for each read that succeeded, is physical and is set."""
    for r in reads:
        raw = files.read_int(r.path, r.valid)
        if raw is not None and (r.keep is None or r.keep(raw)):
            yield r, raw / r.divisor
