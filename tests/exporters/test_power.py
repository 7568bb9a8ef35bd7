"""The power collector: RAPL (wrap-around, permissions, package power), hwmon, IPMI DCMI."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from dcwatch.agent.config import AgentConfig
from dcwatch.exporters import registry
from dcwatch.exporters.base import CollectorDeps, NoDataError
from dcwatch.exporters.power import PowerCollector, PowerOptions
from dcwatch.exporters.sources.ipmi import DcmiPowerReading, IpmiError, parse_dcmi_power_reading
from tests.exporters.sysfs_trees import GPU_NODE, MINIMAL_VM, copy_sys, families, scrape
from tests.helpers import sample

# ipmitool 1.8.18 (Debian/Ubuntu, RHEL 7/8)
DCMI_1_8_18 = """
    Instantaneous power reading:                   312 Watts
    Minimum during sampling period:                 48 Watts
    Maximum during sampling period:                540 Watts
    Average power reading over sample period:      298 Watts
    IPMI timestamp:                           Tue Nov 19 14:02:11 2024
    Sampling period:                          00000005 Seconds.
    Power reading state is:                   activated


"""
# ipmitool 1.8.19+
DCMI_1_8_19 = """Instantaneous power reading              : 214      Watts
Minimum during sampling period           : 2        Watts
Maximum during sampling period           : 468      Watts
Average power reading over sample period : 184      Watts
IPMI timestamp                           : 2024-05-05 13:06:44 UTC
Sampling period                          : 1000 Milliseconds
Power reading state is                   : activated
"""
DCMI_DEACTIVATED = DCMI_1_8_18.replace("312 Watts", "0 Watts").replace(
    "activated\n", "deactivated\n"
)
DCMI_ZERO = DCMI_1_8_18.replace("312 Watts", "0 Watts")
DCMI_UNSUPPORTED = "    DCMI request failed because: Invalid command (c1)\n"
DCMI_NO_DEVICE = (
    "Could not open device at /dev/ipmi0 or /dev/ipmi/0 or /dev/ipmidev/0: "
    "No such file or directory\n"
)

RAPL0 = "class/powercap/intel-rapl:0/energy_uj"
RAPL1 = "class/powercap/intel-rapl:1/energy_uj"
RAPL1_MAX = 262143328850  # max_energy_range_uj of intel-rapl:1


# --- IPMI parsing -----------------------------------------------------------------------------


def test_parse_dcmi_1_8_18() -> None:
    assert parse_dcmi_power_reading(DCMI_1_8_18) == DcmiPowerReading(312, 48, 540, 298, 5.0)


def test_parse_dcmi_1_8_19() -> None:
    assert parse_dcmi_power_reading(DCMI_1_8_19) == DcmiPowerReading(214, 2, 468, 184, 1.0)


def test_parse_dcmi_only_instantaneous() -> None:
    r = parse_dcmi_power_reading("Instantaneous power reading: 1290 Watts\n")
    assert r == DcmiPowerReading(1290.0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (DCMI_DEACTIVATED, "deactivated"),
        (DCMI_ZERO, "0 W"),
        (DCMI_UNSUPPORTED, "Invalid command"),
        (DCMI_NO_DEVICE, "Could not open device"),
        ("", "empty output"),
        ("    Instantaneous power reading:   Not available\n", "no power reading"),
    ],
)
def test_parse_dcmi_not_available(text: str, why: str) -> None:
    with pytest.raises(IpmiError, match=why):
        parse_dcmi_power_reading(text)


def test_parse_dcmi_refuses_what_dcmi_cannot_carry() -> None:
    """DCMI's power fields are 2 bytes of watts, its period 4 bytes of milliseconds."""
    with pytest.raises(IpmiError, match="impossible instantaneous power 70000 W"):
        parse_dcmi_power_reading("Instantaneous power reading: 70000 Watts\n")
    with pytest.raises(IpmiError, match="impossible"):
        parse_dcmi_power_reading("Instantaneous power reading: " + "9" * 400 + " Watts\n")
    r = parse_dcmi_power_reading(
        DCMI_1_8_19.replace("2        Watts", "99999 Watts").replace(
            "1000 Milliseconds", "99999999999 Milliseconds"
        )
    )
    assert r == DcmiPowerReading(214, None, 468, 184, None)


# --- RAPL and hwmon over the captured tree ----------------------------------------------------


def test_registered_default_on() -> None:
    entry = registry.get("power")
    assert entry.cls is PowerCollector and entry.default


def test_fixture_values() -> None:
    c = PowerCollector(AgentConfig(sysfs=GPU_NODE / "sys", procfs=GPU_NODE / "proc"))
    t = scrape(c)
    rapl = "dcwatch_rapl_energy_joules_total"
    assert sample(t, rapl, zone="intel-rapl:0", domain="package", package="0") == 143872.091342
    assert sample(t, rapl, zone="intel-rapl:0:0", domain="dram", package="0") == 23318.552113
    assert sample(t, rapl, zone="intel-rapl:1", domain="package", package="1") == 262138.88412
    assert sample(t, rapl, zone="intel-rapl:1:0", domain="dram", package="1") == 22871.064405
    meter = dict(chip="ACPI000D:00", chip_name="power_meter", sensor="power1")
    assert sample(t, "dcwatch_hwmon_power_watts", **meter) == 1843.0
    assert sample(t, "dcwatch_node_power_watts", source="hwmon") == 1843.0
    assert sample(t, "dcwatch_node_power_watts", source="rapl") is None  # needs two scrapes
    assert sample(t, "dcwatch_node_power_watts", source="ipmi") is None  # IPMI off by default
    assert sample(t, "dcwatch_hwmon_voltage_volts", chip="nct6775.656", sensor="in2") == 3.344
    assert "dcwatch_ipmi_dcmi_power_watts" not in families(t)
    assert "NaN" not in t
    assert c.read_errors() == 0
    c.close()


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("rediscover", [60.0, 1e-9], ids=["cached", "rediscovered"])
def test_rapl_wrap_is_monotonic_and_package_power(tmp_path: Path, rediscover: float) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = PowerCollector(AgentConfig(sysfs=sysfs, rediscover_interval=rediscover))
    c.clock = clock = Clock()
    first = scrape(c)
    pkg1 = dict(zone="intel-rapl:1")
    assert sample(first, "dcwatch_rapl_energy_joules_total", **pkg1) == 262138.88412

    # 10 s later: package 0 used 2980 J; package 1 used 20 J and its counter wrapped past
    # max_energy_range_uj (4.44473 J before the wrap, 15.55527 J after it).
    clock.t += 10
    (sysfs / RAPL0).write_text(f"{143872091342 + 2980_000000}\n")
    (sysfs / RAPL1).write_text("15555270\n")
    second = scrape(c)
    wrapped = sample(second, "dcwatch_rapl_energy_joules_total", **pkg1)
    assert wrapped == pytest.approx((RAPL1_MAX + 15555270) / 1e6)
    assert wrapped - 262138.88412 == pytest.approx(20.0)
    assert sample(second, "dcwatch_node_power_watts", source="rapl") == pytest.approx(300.0)

    # Scrapes closer than 1 s apart reuse the last rate instead of a jittery one.
    clock.t += 0.2
    (sysfs / RAPL1).write_text("25555270\n")
    third = scrape(c)
    assert sample(third, "dcwatch_node_power_watts", source="rapl") == pytest.approx(300.0)
    assert sample(third, "dcwatch_rapl_energy_joules_total", **pkg1) == pytest.approx(
        (RAPL1_MAX + 25555270) / 1e6
    )
    # The next window spans from the second scrape: package 1 used 10 J more in 10 s.
    clock.t += 9.8
    fourth = scrape(c)
    assert sample(fourth, "dcwatch_node_power_watts", source="rapl") == pytest.approx(1.0)
    assert c.read_errors() == 0
    c.close()


def _deny_energy_uj(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a non-root agent meets on Linux >= 5.10: energy_uj is mode 0400 root."""
    real_open = os.open

    def fake_open(path: str, flags: int, *a: object) -> int:
        if os.fspath(path).endswith("energy_uj"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fake_open)


def test_rapl_permission_denied_is_absent_counted_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _deny_energy_uj(monkeypatch)
    c = PowerCollector(AgentConfig(sysfs=GPU_NODE / "sys"))
    with caplog.at_level(logging.WARNING):
        t1 = scrape(c)
        t2 = scrape(c)
    for t in (t1, t2):
        assert "dcwatch_rapl_energy_joules" not in families(t)
        assert sample(t, "dcwatch_node_power_watts", source="rapl") is None
        assert sample(t, "dcwatch_node_power_watts", source="hwmon") == 1843.0  # unaffected
    assert c.read_errors() == 8  # 4 zones x 2 scrapes
    why = [r.getMessage() for r in caplog.records if "CVE-2020-8694" in r.getMessage()]
    assert len(why) == 1
    assert "intel-rapl:0, intel-rapl:0:0, intel-rapl:1, intel-rapl:1:0" in why[0]
    c.close()


def test_rapl_permission_denied_real_mode(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    (sysfs / RAPL1).chmod(0)
    if os.access(sysfs / RAPL1, os.R_OK):
        pytest.skip("this process reads files whatever their mode (root with CAP_DAC_OVERRIDE)")
    c = PowerCollector(AgentConfig(sysfs=sysfs))
    t = scrape(c)
    assert sample(t, "dcwatch_rapl_energy_joules_total", zone="intel-rapl:1") is None
    assert sample(t, "dcwatch_rapl_energy_joules_total", zone="intel-rapl:0") == 143872.091342
    assert c.read_errors() == 1
    c.close()


def test_rapl_permission_granted_later_is_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = PowerCollector(AgentConfig(sysfs=GPU_NODE / "sys", rediscover_interval=1e-9))
    with monkeypatch.context() as m:
        _deny_energy_uj(m)
        assert "dcwatch_rapl_energy_joules" not in families(scrape(c))
    t = scrape(c)  # e.g. a udev rule ran: rediscovery finds the files readable
    assert sample(t, "dcwatch_rapl_energy_joules_total", zone="intel-rapl:0") == 143872.091342
    c.close()


def _rapl_series(text: str) -> dict[str, float]:
    """RAPL energy by zone, as one scrape exported it."""
    return {
        z: v
        for z in ("intel-rapl:0", "intel-rapl:0:0", "intel-rapl:1", "intel-rapl:1:0")
        if (v := sample(text, "dcwatch_rapl_energy_joules_total", zone=z)) is not None
    }


def test_rapl_garbage_is_a_read_error_not_a_jump(tmp_path: Path) -> None:
    """energy_uj reads -5, then 1e21, then 100: the first two are misreads; 100 is a wrap."""
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = PowerCollector(AgentConfig(sysfs=sysfs))
    c.clock = clock = Clock()
    start = 143872091342
    (sysfs / RAPL0).write_text(f"{start}\n")
    seen = [_rapl_series(scrape(c))]
    watts: list[float | None] = []
    for raw in ("-5", "1" + "0" * 21, "100"):
        clock.t += 10
        (sysfs / RAPL0).write_text(f"{raw}\n")
        t = scrape(c)
        seen.append(_rapl_series(t))
        watts.append(sample(t, "dcwatch_node_power_watts", source="rapl"))
    pkg0 = [s.get("intel-rapl:0") for s in seen]
    assert pkg0[1] is None and pkg0[2] is None  # misreads: omitted, not values
    # 100 < the last good value, both in range: one wrap (RAPL1_MAX is also package 0's range).
    assert pkg0[3] == pytest.approx((RAPL1_MAX + 100) / 1e6)
    assert pkg0[0] is not None and pkg0[3] >= pkg0[0]
    # Package power needs every package: none while package 0 misreads, and the window starts
    # afresh after them, so no rate spans the gap.
    assert watts == [None, None, None]
    assert c.read_errors() == 2
    # The next window is a normal one: 3000 J in 10 s on package 0, package 1 idle.
    clock.t += 10
    (sysfs / RAPL0).write_text(f"{100 + 3000_000000}\n")
    t = scrape(c)
    assert sample(t, "dcwatch_node_power_watts", source="rapl") == pytest.approx(300.0)
    assert _rapl_series(t)["intel-rapl:0"] == pytest.approx((RAPL1_MAX + 3000_000100) / 1e6)
    assert c.read_errors() == 2
    c.close()


@pytest.mark.parametrize(
    "raw",
    ["-5", "1" + "0" * 21, str(RAPL1_MAX + 1), "12.5", "0x10", "", "1_000"],
    ids=["negative", "1e21", "beyond-range", "fraction", "hex", "empty", "underscore"],
)
def test_rapl_impossible_energy_is_omitted_and_counted(tmp_path: Path, raw: str) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = PowerCollector(AgentConfig(sysfs=sysfs))
    (sysfs / RAPL1).write_text(f"{raw}\n")
    t = scrape(c)
    assert sample(t, "dcwatch_rapl_energy_joules_total", zone="intel-rapl:1") is None
    assert sample(t, "dcwatch_rapl_energy_joules_total", zone="intel-rapl:0") == 143872.091342
    assert c.read_errors() == 1
    c.close()


def test_rapl_energy_at_its_range_is_a_value(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = PowerCollector(AgentConfig(sysfs=sysfs))
    for raw in (RAPL1_MAX, 0):  # the top of the range, then its wrap to 0
        (sysfs / RAPL1).write_text(f"{raw}\n")
        t = scrape(c)
        assert sample(t, "dcwatch_rapl_energy_joules_total", zone="intel-rapl:1") == RAPL1_MAX / 1e6
    assert c.read_errors() == 0
    c.close()


def test_rapl_power_no_package_can_draw_is_omitted(tmp_path: Path) -> None:
    """An in-range misread looks like a wrap; the rate it implies gives it away."""
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = PowerCollector(AgentConfig(sysfs=sysfs))
    c.clock = clock = Clock()
    scrape(c)
    clock.t += 2
    (sysfs / RAPL0).write_text("100\n")  # a "wrap" adding 118 kJ in 2 s: 59 kW
    t = scrape(c)
    assert sample(t, "dcwatch_node_power_watts", source="rapl") is None
    clock.t += 10
    (sysfs / RAPL0).write_text(f"{100 + 3000_000000}\n")  # then 3000 J in 10 s: 300 W
    t = scrape(c)
    assert sample(t, "dcwatch_node_power_watts", source="rapl") == pytest.approx(300.0)
    c.close()


def test_hwmon_power_energy_current_amd_node(tmp_path: Path) -> None:
    """A tree of another shape: power*_input (PMBus PSU), energy*_input (amd_energy), curr."""
    hw = tmp_path / "sys/class/hwmon"
    psu = {"name": "pmbus", "power1_input": 412500000, "power1_label": "pin",
           "power2_input": 388000000, "power2_label": "pout1", "in1_input": 229750,
           "in1_label": "vin", "curr1_input": 1812, "curr1_label": "iin"}  # fmt: skip
    energy = {"name": "amd_energy", "energy1_input": 1523446875000, "energy1_label": "Esocket0",
              "energy2_input": 8815625000, "energy2_label": "Ecore000"}  # fmt: skip
    for n, attrs in enumerate((psu, energy)):
        d = hw / f"hwmon{n}"
        d.mkdir(parents=True)
        for k, v in attrs.items():
            (d / k).write_text(f"{v}\n")
    c = PowerCollector(AgentConfig(sysfs=tmp_path / "sys"))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_power_watts", chip_name="pmbus", label="pin") == 412.5
    assert sample(t, "dcwatch_hwmon_power_watts", chip_name="pmbus", label="pout1") == 388.0
    assert sample(t, "dcwatch_hwmon_voltage_volts", label="vin") == 229.75
    assert sample(t, "dcwatch_hwmon_current_amperes", label="iin") == 1.812
    energy_total = "dcwatch_hwmon_energy_joules_total"
    assert sample(t, energy_total, chip_name="amd_energy", label="Esocket0") == 1523446.875
    assert sample(t, energy_total, chip_name="amd_energy", label="Ecore000") == 8815.625
    # A PSU's own power is a part, not the ACPI system meter: no node-level sum from it.
    assert sample(t, "dcwatch_node_power_watts", source="hwmon") is None
    c.close()


def test_power_meter_unreadable_no_partial_sum(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    (sysfs / "class/hwmon/hwmon5/power1_average").write_text("n/a\n")
    c = PowerCollector(AgentConfig(sysfs=sysfs))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_power_watts", chip="ACPI000D:00") is None
    assert sample(t, "dcwatch_node_power_watts", source="hwmon") is None
    assert c.read_errors() == 1
    c.close()


def test_hwmon_impossible_power_and_energy_are_read_errors(tmp_path: Path) -> None:
    """Power and energy are use, never negative; voltages and currents can be."""
    hw = tmp_path / "sys/class/hwmon/hwmon0"
    hw.mkdir(parents=True)
    attrs = {"name": "pmbus", "power1_input": -412500000, "power2_input": 10**13,
             "power3_input": 388000000, "energy1_input": -5, "energy2_input": 8815625000,
             "in1_input": -12100, "curr1_input": -1812}  # fmt: skip
    for k, v in attrs.items():
        (hw / k).write_text(f"{v}\n")
    c = PowerCollector(AgentConfig(sysfs=tmp_path / "sys"))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_power_watts", sensor="power1") is None
    assert sample(t, "dcwatch_hwmon_power_watts", sensor="power2") is None  # 10 MW
    assert sample(t, "dcwatch_hwmon_power_watts", sensor="power3") == 388.0
    assert sample(t, "dcwatch_hwmon_energy_joules_total", sensor="energy1") is None
    assert sample(t, "dcwatch_hwmon_energy_joules_total", sensor="energy2") == 8815.625
    assert sample(t, "dcwatch_hwmon_voltage_volts", sensor="in1") == -12.1  # a -12 V rail
    assert sample(t, "dcwatch_hwmon_current_amperes", sensor="curr1") == -1.812  # discharging
    assert c.read_errors() == 3
    c.close()


def test_negative_power_meter_is_a_read_error_and_no_sum(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    (sysfs / "class/hwmon/hwmon5/power1_average").write_text("-1843000000\n")
    c = PowerCollector(AgentConfig(sysfs=sysfs))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_power_watts", chip="ACPI000D:00") is None
    assert sample(t, "dcwatch_node_power_watts", source="hwmon") is None
    assert c.read_errors() == 1
    c.close()


def test_minimal_vm_has_no_power_data() -> None:
    c = PowerCollector(AgentConfig(sysfs=MINIMAL_VM / "sys", procfs=MINIMAL_VM / "proc"))
    with pytest.raises(NoDataError):
        list(c.collect())
    assert c.read_errors() == 0
    c.close()


# --- IPMI through the collector ---------------------------------------------------------------


class FakeIpmitool:
    """Stands in for deps.run_command: records calls, answers or raises."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> str:
        self.calls.append((list(argv), timeout))
        a = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(a, Exception):
            raise a
        return a


def ipmi_config(tree: Path = MINIMAL_VM, **power: object) -> AgentConfig:
    settings = {"ipmi": True, "ipmi_timeout": 2.0, "ipmi_interval": 30.0, **power}
    options = PowerOptions(**settings)  # type: ignore[arg-type]
    return AgentConfig(sysfs=tree / "sys", options={"power": options})


def test_ipmi_reading_exported_and_cached() -> None:
    fake = FakeIpmitool(DCMI_1_8_18, DCMI_1_8_19)
    c = PowerCollector(ipmi_config(), CollectorDeps(run_command=fake))
    assert c.ipmi is not None
    c.ipmi.clock = clock = Clock()
    t = scrape(c)  # minimal-vm: no sysfs power at all, yet IPMI answers
    assert fake.calls == [(["ipmitool", "dcmi", "power", "reading"], 2.0)]
    assert sample(t, "dcwatch_ipmi_dcmi_power_watts", stat="instantaneous") == 312
    assert sample(t, "dcwatch_ipmi_dcmi_power_watts", stat="minimum") == 48
    assert sample(t, "dcwatch_ipmi_dcmi_power_watts", stat="maximum") == 540
    assert sample(t, "dcwatch_ipmi_dcmi_power_watts", stat="average") == 298
    assert sample(t, "dcwatch_ipmi_dcmi_sampling_period_seconds") == 5
    assert sample(t, "dcwatch_node_power_watts", source="ipmi") == 312
    clock.t += 29
    assert sample(scrape(c), "dcwatch_node_power_watts", source="ipmi") == 312  # cached
    assert len(fake.calls) == 1
    clock.t += 1
    assert sample(scrape(c), "dcwatch_node_power_watts", source="ipmi") == 214  # refreshed
    assert len(fake.calls) == 2
    assert c.read_errors() == 0


def test_ipmi_with_sysfs_sources_all_three_node_power() -> None:
    fake = FakeIpmitool(DCMI_1_8_19)
    c = PowerCollector(ipmi_config(GPU_NODE), CollectorDeps(run_command=fake))
    c.clock = clock = Clock()
    scrape(c)
    clock.t += 5
    t = scrape(c)
    assert sample(t, "dcwatch_node_power_watts", source="ipmi") == 214
    assert sample(t, "dcwatch_node_power_watts", source="hwmon") == 1843.0
    assert sample(t, "dcwatch_node_power_watts", source="rapl") == 0.0  # fixture files static
    c.close()


def test_ipmi_timeout_and_failures_omitted_counted_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeout = subprocess.TimeoutExpired(["ipmitool"], 2.0)
    fake = FakeIpmitool(
        timeout, timeout, DCMI_1_8_18, IpmiError("exit status 1: " + DCMI_NO_DEVICE)
    )
    c = PowerCollector(ipmi_config(), CollectorDeps(run_command=fake))
    assert c.ipmi is not None
    c.ipmi.clock = clock = Clock()
    with caplog.at_level(logging.WARNING):
        t = scrape(c)
        assert "dcwatch_node_power" not in families(t) and "dcwatch_ipmi" not in t
        assert c.read_errors() == 1
        scrape(c)  # within the interval: the failure is cached, no second wait on the BMC
        assert len(fake.calls) == 1 and c.read_errors() == 1
        clock.t += 30
        scrape(c)
        assert len(fake.calls) == 2 and c.read_errors() == 2
        clock.t += 30
        assert sample(scrape(c), "dcwatch_node_power_watts", source="ipmi") == 312  # recovers
        clock.t += 30
        assert sample(scrape(c), "dcwatch_node_power_watts", source="ipmi") is None  # not stale
    msgs = [r.getMessage() for r in caplog.records if r.name == "dcwatch.ipmi"]
    assert len(msgs) == 2
    assert "no answer from the BMC within 2s" in msgs[0]
    assert "Could not open device" in msgs[1]


def _script(tmp_path: Path, body: str) -> str:
    p = tmp_path / "ipmitool"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def test_ipmi_default_runner_real_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text(DCMI_1_8_18)
    tool = _script(tmp_path, f'[ "$*" = "-I open dcmi power reading" ] || exit 3\ncat {out}\n')
    c = PowerCollector(ipmi_config(ipmitool=f"{tool} -I open"))
    assert sample(scrape(c), "dcwatch_node_power_watts", source="ipmi") == 312
    assert c.read_errors() == 0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("exec sleep 5\n", "no answer from the BMC within 0.3s"),
        (f"echo '{DCMI_UNSUPPORTED.strip()}' >&2\nexit 1\n", "exit status 1: DCMI request failed"),
        ("echo 'Power reading state is: deactivated'\n", "no power reading"),
    ],
)
def test_ipmi_default_runner_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str, why: str
) -> None:
    c = PowerCollector(ipmi_config(ipmitool=_script(tmp_path, body), ipmi_timeout=0.3))
    with caplog.at_level(logging.WARNING, logger="dcwatch.ipmi"):
        t = scrape(c)
    assert "dcwatch_node_power" not in t
    assert c.read_errors() == 1
    assert why in caplog.text


def test_ipmi_missing_binary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = PowerCollector(ipmi_config(ipmitool=str(tmp_path / "no-such-ipmitool")))
    with caplog.at_level(logging.WARNING, logger="dcwatch.ipmi"):
        scrape(c)
    assert c.read_errors() == 1
    assert "not found" in caplog.text
