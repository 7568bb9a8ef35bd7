"""The ``thermal`` collector: hwmon temperatures and fans, CPU temperatures, thermal zones,
cooling devices.

Thresholds that drivers report as "not set" are omitted: hwmon temperatures at or below
absolute zero or at NVMe's 0xFFFF K, fan minimums of 0 rpm, and trip points at 0 or
THERMAL_TEMP_INVALID. A fan reading 0 rpm is exported: it is stopped or unplugged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import Metric

from dcwatch.exporters.base import Collector, CollectorConfig, CollectorDeps, NoDataError
from dcwatch.exporters.registry import register
from dcwatch.exporters.sources.hwmon import (
    SCALE,
    THRESHOLD_IS_SET,
    HwmonChip,
    ScaledRead,
    cpu_temps,
    discover_hwmon,
    read_scaled,
)
from dcwatch.exporters.sources.sysfs import FileCache, Rediscovered
from dcwatch.exporters.sources.thermal_zone import (
    CoolingDevice,
    ThermalZone,
    discover_thermal,
    trip_is_set,
)
from dcwatch.exposition import Families, MetricSpec

HWMON_LABELS = ("chip", "chip_name", "sensor", "label")
TEMP = MetricSpec("dcwatch_hwmon_temp_celsius", "hwmon temperature sensor", HWMON_LABELS)
TEMP_CRIT = MetricSpec(
    "dcwatch_hwmon_temp_crit_celsius", "Critical threshold of an hwmon temperature", HWMON_LABELS
)
TEMP_MAX = MetricSpec(
    "dcwatch_hwmon_temp_max_celsius",
    "Maximum (high) threshold of an hwmon temperature",
    HWMON_LABELS,
)
FAN = MetricSpec("dcwatch_hwmon_fan_rpm", "hwmon fan speed", HWMON_LABELS)
FAN_MIN = MetricSpec(
    "dcwatch_hwmon_fan_min_rpm", "Minimum speed alarm threshold of a fan", HWMON_LABELS
)
CPU_TEMP = MetricSpec(
    "dcwatch_cpu_temp_celsius",
    'CPU temperature from coretemp/k10temp; core="" is the whole package',
    ("package", "core"),
)
ZONE_TEMP = MetricSpec(
    "dcwatch_thermal_zone_temp_celsius", "Temperature of a thermal zone", ("zone", "type")
)
TRIP = MetricSpec(
    "dcwatch_thermal_zone_trip_point_celsius",
    "Trip point of a thermal zone (critical, hot, passive, active)",
    ("zone", "type", "trip", "trip_type"),
)
COOLING_CUR = MetricSpec(
    "dcwatch_cooling_device_cur_state", "Current state of a cooling device", ("device", "type")
)
COOLING_MAX = MetricSpec(
    "dcwatch_cooling_device_max_state", "Maximum state of a cooling device", ("device", "type")
)
_HWMON_SPECS = {"temp": TEMP, "fan": FAN}
_THRESHOLD_SPECS = {("temp", "crit"): TEMP_CRIT, ("temp", "max"): TEMP_MAX, ("fan", "min"): FAN_MIN}
_CELSIUS = SCALE["temp"]


@dataclass(frozen=True)
class _Plan:
    reads: tuple[ScaledRead, ...]

    def paths(self) -> set[str]:
        return {r.path for r in self.reads}


@register(
    "thermal", default=True, order=30, description="hwmon temperatures and fans, thermal zones"
)
class ThermalCollector(Collector):
    """Temperatures, thresholds, fan speeds and cooling device states."""

    METRICS = (
        TEMP,
        TEMP_CRIT,
        TEMP_MAX,
        FAN,
        FAN_MIN,
        CPU_TEMP,
        ZONE_TEMP,
        TRIP,
        COOLING_CUR,
        COOLING_MAX,
    )

    def __init__(self, config: CollectorConfig, deps: CollectorDeps | None = None) -> None:
        super().__init__(config, deps)
        self._files = FileCache()
        self._paths: set[str] = set()
        self._plan = Rediscovered(self._discover, config.rediscover_interval, time.monotonic)

    def _discover(self) -> _Plan:
        zones, cooling = discover_thermal(self.config.sysfs)
        reads = _hwmon_reads(discover_hwmon(self.config.sysfs)) + _thermal_reads(zones, cooling)
        plan = _Plan(tuple(reads))
        if plan.paths() != self._paths:
            self._files.close()  # reopened lazily; stale fds of unplugged devices go away
            self._paths = plan.paths()
        return plan

    def collect(self) -> Iterable[Metric]:
        plan = self._plan.get()
        if not plan.reads:
            raise NoDataError("no hwmon temperatures or fans, thermal zones or cooling devices")
        f = Families()
        for r, value in read_scaled(self._files, plan.reads):
            for spec, labels in r.outputs:
                f.add(spec, value, *labels)
        return f

    def read_errors(self) -> int:
        return self._files.errors

    def close(self) -> None:
        self._files.close()


def _hwmon_reads(chips: list[HwmonChip]) -> list[ScaledRead]:
    cpu = {(c.chip, s.sensor): (pkg, core) for c, s, pkg, core in cpu_temps(chips)}
    reads = []
    for chip in chips:
        for s in chip.sensors:
            spec = _HWMON_SPECS.get(s.kind)
            if spec is None:
                continue
            labels = (chip.chip, chip.name, s.sensor, s.label)
            outputs: tuple[tuple[MetricSpec, tuple[str, ...]], ...] = ((spec, labels),)
            if (chip.chip, s.sensor) in cpu:
                outputs += ((CPU_TEMP, cpu[(chip.chip, s.sensor)]),)
            reads.append(ScaledRead(s.value_path, SCALE[s.kind], outputs, valid=s.is_physical))
            keep = THRESHOLD_IS_SET.get(s.kind)
            for attr, path in s.thresholds:
                t_spec = _THRESHOLD_SPECS[(s.kind, attr)]
                reads.append(ScaledRead(path, SCALE[s.kind], ((t_spec, labels),), keep))
    return reads


def _thermal_reads(zones: list[ThermalZone], cooling: list[CoolingDevice]) -> list[ScaledRead]:
    reads = []
    for z in zones:
        zone_temp = ((ZONE_TEMP, (z.zone, z.type)),)
        reads.append(ScaledRead(z.temp_path, _CELSIUS, zone_temp, valid=z.is_physical))
        for t in z.trips:
            trip_labels = (z.zone, z.type, t.index, t.type)
            reads.append(ScaledRead(t.temp_path, _CELSIUS, ((TRIP, trip_labels),), trip_is_set))
    for d in cooling:
        labels = (d.device, d.type)
        reads.append(ScaledRead(d.cur_path, 1.0, ((COOLING_CUR, labels),), valid=d.is_physical))
        reads.append(ScaledRead(d.max_path, 1.0, ((COOLING_MAX, labels),), valid=d.is_physical))
    return reads
