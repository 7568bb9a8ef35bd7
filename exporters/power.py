"""The ``power`` collector: RAPL energy, hwmon power/energy/voltage/current, IPMI DCMI power.

``dcwatch_node_power_watts{source}`` summarises what the node knows, one series per source,
each only when measured (never estimated):

- ``source="ipmi"``: the BMC's instantaneous system input power (DCMI), when ``power.ipmi`` is
  on and the BMC answers; the whole node, PSU losses included.
- ``source="hwmon"``: the sum of ACPI ``power_meter`` chips (the platform's own system power
  meter); other hwmon power sensors (GPUs, single rails) measure parts and are not summed.
  Omitted when any meter failed to read.
- ``source="rapl"``: CPU package power, the rate of the summed ``package-N`` RAPL energy
  between two scrapes at least 1 s apart (shorter gaps reuse the last rate, as RAPL's own
  update jitter would dominate). DRAM is not included. Omitted on the first scrape and when
  any package counter could not be read.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import Metric

from dcwatch import settings as st
from dcwatch.exporters.base import Collector, CollectorConfig, CollectorDeps, NoDataError
from dcwatch.exporters.registry import register
from dcwatch.exporters.sources.hwmon import SCALE, ScaledRead, discover_hwmon, read_scaled
from dcwatch.exporters.sources.ipmi import DCMI_POWER_READING, DcmiPowerReader
from dcwatch.exporters.sources.powercap import RaplZone, WrapCounter, discover_rapl
from dcwatch.exporters.sources.sysfs import FileCache, Rediscovered
from dcwatch.exposition import Families, MetricSpec

HWMON_LABELS = ("chip", "chip_name", "sensor", "label")
RAPL_ENERGY = MetricSpec(
    "dcwatch_rapl_energy_joules_total",
    "RAPL energy counter of a powercap zone, made monotonic across hardware wrap-around",
    ("zone", "domain", "package"),
    kind="counter",
)
HWMON_POWER = MetricSpec(
    "dcwatch_hwmon_power_watts",
    "hwmon power sensor (powerN_input, else powerN_average)",
    HWMON_LABELS,
)
HWMON_ENERGY = MetricSpec(
    "dcwatch_hwmon_energy_joules_total", "hwmon energy counter", HWMON_LABELS, kind="counter"
)
HWMON_VOLTAGE = MetricSpec("dcwatch_hwmon_voltage_volts", "hwmon voltage sensor", HWMON_LABELS)
HWMON_CURRENT = MetricSpec("dcwatch_hwmon_current_amperes", "hwmon current sensor", HWMON_LABELS)
IPMI_POWER = MetricSpec(
    "dcwatch_ipmi_dcmi_power_watts",
    "System power from the BMC (DCMI): instantaneous, and minimum/maximum/average over the "
    "BMC's sampling period",
    ("stat",),
)
IPMI_PERIOD = MetricSpec(
    "dcwatch_ipmi_dcmi_sampling_period_seconds", "The BMC's DCMI power sampling period"
)
NODE_POWER = MetricSpec(
    "dcwatch_node_power_watts",
    "Node power by source: ipmi = BMC system power, hwmon = ACPI power meters, rapl = CPU packages",
    ("source",),
)
_HWMON_SPECS = {
    "power": HWMON_POWER,
    "energy": HWMON_ENERGY,
    "in": HWMON_VOLTAGE,
    "curr": HWMON_CURRENT,
}
SYSTEM_METER_CHIPS = ("power_meter",)
RAPL_MIN_WINDOW = 1.0  # seconds
_METER = "meter"


@dataclass(frozen=True)
class _Plan:
    reads: tuple[ScaledRead, ...]
    meters: int  # reads tagged _METER: the system power meters to sum
    rapl: tuple[RaplZone, ...]

    def paths(self) -> set[str]:
        return {r.path for r in self.reads} | {z.energy_path for z in self.rapl}


@dataclass(frozen=True)
class PowerOptions:
    ipmi: bool = False
    ipmitool: str = "ipmitool"
    ipmi_timeout: float = 3.0
    ipmi_interval: float = 30.0


@register(
    "power",
    default=True,
    order=20,
    description="RAPL, hwmon power/energy sensors, IPMI DCMI power",
)
class PowerCollector(Collector):
    """Energy and power of the node: RAPL zones, hwmon sensors, optionally the BMC."""

    SETTINGS = (
        st.Setting(
            "power.ipmi",
            st.to_bool,
            False,
            "read system power via 'ipmitool dcmi power reading'",
            is_bool=True,
        ),
        st.Setting("power.ipmitool", st.to_str, "ipmitool", "ipmitool executable"),
        st.Setting("power.ipmi_timeout", st.to_positive_float, 3.0, "seconds to wait for the BMC"),
        st.Setting(
            "power.ipmi_interval",
            st.to_nonneg_float,
            30.0,
            "seconds to cache an IPMI reading (BMCs are slow)",
        ),
    )
    Options = PowerOptions
    options: PowerOptions

    METRICS = (
        RAPL_ENERGY,
        HWMON_POWER,
        HWMON_ENERGY,
        HWMON_VOLTAGE,
        HWMON_CURRENT,
        IPMI_POWER,
        IPMI_PERIOD,
        NODE_POWER,
    )

    def __init__(self, config: CollectorConfig, deps: CollectorDeps | None = None) -> None:
        super().__init__(config, deps)
        self.clock = time.monotonic  # tests replace it to control the RAPL rate window
        self._files = FileCache()
        self._plan = Rediscovered(self._discover, config.rediscover_interval)
        self._paths: set[str] = set()
        self._counters: dict[str, WrapCounter] = {}
        self._denied_reads = 0
        self._logged_denied: tuple[str, ...] = ()
        self._rapl_prev: tuple[float, float] | None = None  # (time, package joules)
        self._rapl_watts: float | None = None
        self._packages: tuple[str, ...] = ()
        self.ipmi: DcmiPowerReader | None = None
        opts = self.options
        if opts.ipmi:
            self.ipmi = DcmiPowerReader(
                [*shlex.split(opts.ipmitool), *DCMI_POWER_READING],
                opts.ipmi_timeout,
                opts.ipmi_interval,
                self.deps.run_command,
            )
            if opts.ipmi_timeout >= config.collector_timeout:
                self.log.warning(
                    "power.ipmi_timeout (%gs) >= collector_timeout (%gs): a hung BMC will make "
                    "the whole power collector time out once per power.ipmi_interval",
                    opts.ipmi_timeout,
                    config.collector_timeout,
                )

    def _discover(self) -> _Plan:
        reads: list[ScaledRead] = []
        meters = 0
        for chip in discover_hwmon(self.config.sysfs):
            for s in chip.sensors:
                spec = _HWMON_SPECS.get(s.kind)
                if spec is None:
                    continue
                tag = _METER if s.kind == "power" and chip.name in SYSTEM_METER_CHIPS else ""
                meters += tag == _METER
                labels = (chip.chip, chip.name, s.sensor, s.label)
                outputs = ((spec, labels),)
                reads.append(
                    ScaledRead(s.value_path, SCALE[s.kind], outputs, tag=tag, valid=s.is_physical)
                )
        zones = discover_rapl(self.config.sysfs)
        plan = _Plan(tuple(reads), meters, tuple(zones))
        self._adopt(plan)
        return plan

    def _adopt(self, plan: _Plan) -> None:
        """Drop descriptors and RAPL state of what disappeared; explain unreadable RAPL once."""
        paths = plan.paths()
        if paths != self._paths:
            self._files.close()  # reopened lazily; stale fds of unplugged devices go away
            self._paths = paths
        zones = {z.zone: z for z in plan.rapl}
        self._counters = {k: c for k, c in self._counters.items() if k in zones}
        for z in plan.rapl:
            self._counters.setdefault(z.zone, WrapCounter(z.max_range_uj)).range = z.max_range_uj
        packages = tuple(z.zone for z in plan.rapl if z.is_package and z.readable)
        if packages != self._packages:  # a sum over other zones is not comparable
            self._packages = packages
            self._rapl_prev = self._rapl_watts = None
        denied = tuple(z.zone for z in plan.rapl if not z.readable)
        if denied and denied != self._logged_denied:
            self.log.warning(
                "RAPL energy_uj of %s is readable by root only (Linux >= 5.10, CVE-2020-8694): "
                'their energy and source="rapl" node power are omitted and each refused read is '
                "counted. Grant the agent CAP_DAC_READ_SEARCH "
                "(deploy/systemd/dcwatch-agent.service.d/rapl-ipmi.conf) or group read access "
                "with a udev rule; checked again every %gs",
                ", ".join(denied),
                self.config.rediscover_interval,
            )
        self._logged_denied = denied

    def collect(self) -> Iterable[Metric]:
        plan = self._plan.get()
        if not plan.reads and not plan.rapl and self.ipmi is None:
            raise NoDataError("no RAPL zones or hwmon power sensors, and IPMI is off")
        f = Families()
        meter_sum, meters_read = 0.0, 0
        for r, value in read_scaled(self._files, plan.reads):
            for spec, labels in r.outputs:
                f.add(spec, value, *labels)
            if r.tag == _METER:
                meter_sum += value
                meters_read += 1
        if plan.meters and meters_read == plan.meters:
            f.add(NODE_POWER, meter_sum, "hwmon")
        self._collect_rapl(f, plan.rapl)
        self._collect_ipmi(f)
        return f

    def _collect_rapl(self, f: Families, zones: Iterable[RaplZone]) -> None:
        package_joules, packages, complete = 0.0, 0, True
        for z in zones:
            packages += z.is_package
            raw = None
            if z.readable:
                raw = self._files.read_int(z.energy_path, z.energy_is_physical)
            else:
                self._denied_reads += 1
            if raw is None:
                complete = complete and not z.is_package
                continue
            joules = self._counters[z.zone].update(raw) / 1e6
            f.add(RAPL_ENERGY, joules, z.zone, z.domain, z.package)
            if z.is_package:
                package_joules += joules
        if packages and complete:
            ceiling = packages * RaplZone.MAX_PACKAGE_WATTS
            f.add(NODE_POWER, self._package_watts(self.clock(), package_joules, ceiling), "rapl")
        else:
            self._rapl_prev = self._rapl_watts = None

    def _package_watts(self, now: float, joules: float, ceiling: float) -> float | None:
        prev = self._rapl_prev
        if prev is None:
            self._rapl_prev = (now, joules)
        elif now - prev[0] >= RAPL_MIN_WINDOW:
            watts = (joules - prev[1]) / (now - prev[0])
            # Negative, or more than the packages can draw (an in-range misread taken for a
            # wrap): not a reading. Omitted until a later window gives a physical one.
            self._rapl_watts = watts if 0 <= watts <= ceiling else None
            self._rapl_prev = (now, joules)
        return self._rapl_watts

    def _collect_ipmi(self, f: Families) -> None:
        reading = self.ipmi.read() if self.ipmi else None
        if reading is None:
            return
        for stat in ("instantaneous", "minimum", "maximum", "average"):
            f.add(IPMI_POWER, getattr(reading, stat), stat)
        f.add(IPMI_PERIOD, reading.sampling_period)
        f.add(NODE_POWER, reading.instantaneous, "ipmi")

    def read_errors(self) -> int:
        return self._files.errors + self._denied_reads + (self.ipmi.errors if self.ipmi else 0)

    def close(self) -> None:
        self._files.close()
