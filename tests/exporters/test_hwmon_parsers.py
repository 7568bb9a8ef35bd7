"""Parsers and discovery of hwmon chips, thermal zones and RAPL zones: strings, small trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dcwatch.exporters.sources.hwmon import (
    HwmonChip,
    HwmonSensor,
    ScaledRead,
    cpu_temps,
    discover_hwmon,
    fan_min_is_set,
    parse_attr,
    parse_coretemp_label,
    read_scaled,
    temp_threshold_is_set,
)
from dcwatch.exporters.sources.powercap import WrapCounter, discover_rapl, parse_zone_name
from dcwatch.exporters.sources.sysfs import FileCache
from dcwatch.exporters.sources.thermal_zone import discover_thermal, trip_is_set
from tests.exporters.sysfs_trees import GPU_NODE, MINIMAL_VM


def write(d: Path, **attrs: object) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for k, v in attrs.items():
        (d / k).write_text(f"{v}\n")
    return d


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("temp1_input", ("temp", 1, "input")),
        ("temp12_crit_alarm", ("temp", 12, "crit_alarm")),
        ("fan2_min", ("fan", 2, "min")),
        ("in0_input", ("in", 0, "input")),
        ("curr1_input", ("curr", 1, "input")),
        ("power1_average_interval", ("power", 1, "average_interval")),
        ("energy3_input", ("energy", 3, "input")),
        ("name", None),
        ("pwm1", None),
        ("power", None),  # the device's runtime-PM directory
        ("uevent", None),
        ("temp_input", None),
    ],
)
def test_parse_attr(name: str, want: tuple[str, int, str] | None) -> None:
    assert parse_attr(name) == want


@pytest.mark.parametrize(
    ("label", "want"),
    [
        ("Package id 0", ("package", "0")),
        ("Package id 1\n", ("package", "1")),
        ("Physical id 1", ("package", "1")),  # coretemp before Linux 3.9
        ("Core 13", ("core", "13")),
        ("Tctl", None),
        ("Composite", None),
        ("", None),
    ],
)
def test_parse_coretemp_label(label: str, want: tuple[str, str] | None) -> None:
    assert parse_coretemp_label(label) == want


def test_threshold_sentinels() -> None:
    assert temp_threshold_is_set(100000)
    assert temp_threshold_is_set(-40000)  # a real low limit
    assert not temp_threshold_is_set(-273150)  # nvme temp1_min: "none"
    assert not temp_threshold_is_set(65261850)  # nvme 0xFFFF K: "none"
    assert fan_min_is_set(300) and not fan_min_is_set(0)
    assert trip_is_set(105000) and trip_is_set(-10000)
    assert not trip_is_set(0)  # x86_pkg_temp's unset passive trips
    assert not trip_is_set(-274000)  # THERMAL_TEMP_INVALID
    assert not temp_threshold_is_set(2_000_001) and not trip_is_set(10**35)  # beyond any sensor


@pytest.mark.parametrize(
    ("kind", "raw", "physical"),
    [
        ("temp", 45000, True),
        ("temp", -40000, True),
        ("temp", -273150, False),  # absolute zero: no sensor gets there
        ("temp", -273150000, False),
        ("temp", 2_000_000, True),  # a thermocouple converter's top end
        ("temp", 10**35, False),
        ("fan", 0, True),  # stopped
        ("fan", -1, False),
        ("power", 0, True),
        ("power", -1, False),
        ("power", 10**12 + 1, False),  # over 1 MW through one sensor
        ("energy", -5, False),
        ("in", -12000, True),  # a -12 V rail
        ("curr", -1812, True),  # a bidirectional shunt, discharging
    ],
)
def test_sensor_physical_ranges(kind: str, raw: int, physical: bool) -> None:
    assert HwmonSensor(kind, f"{kind}1", "", "/x").is_physical(raw) is physical


def test_read_scaled_refuses_impossible_values_as_read_errors(tmp_path: Path) -> None:
    write(tmp_path, temp1_input=-273150000, temp2_input=45500, temp3_crit=0, fan1_input=-1)
    temp = HwmonSensor("temp", "temp1", "", "").is_physical
    fan = HwmonSensor("fan", "fan1", "", "").is_physical
    reads = [
        ScaledRead(str(tmp_path / "temp1_input"), 1000.0, ("t1",), valid=temp),
        ScaledRead(str(tmp_path / "temp2_input"), 1000.0, ("t2",), valid=temp),
        ScaledRead(str(tmp_path / "temp3_crit"), 1000.0, ("c3",), keep=temp_threshold_is_set),
        ScaledRead(str(tmp_path / "fan1_input"), 1.0, ("f1",), valid=fan),
    ]
    files = FileCache()
    got = [(r.outputs[0], v) for r, v in read_scaled(files, reads)]
    assert got == [("t2", 45.5), ("c3", 0.0)]  # crit 0 °C is a (strange) set threshold
    assert files.errors == 2  # temp1 and fan1; an unset threshold is not an error
    files.close()


def _chip(chip: str, name: str, device: str, *labels: str) -> HwmonChip:
    sensors = tuple(
        HwmonSensor("temp", f"temp{i}", lab, f"/x/{chip}/temp{i}_input")
        for i, lab in enumerate(labels, 1)
    )
    return HwmonChip(chip, name, "hwmonX", f"/x/{chip}", device, sensors)


def test_cpu_temps_coretemp() -> None:
    chips = [
        _chip("coretemp.0", "coretemp", "/d/platform/coretemp.0", "Package id 0", "Core 0"),
        _chip("coretemp.1", "coretemp", "/d/platform/coretemp.1", "Core 0", "Core 4"),  # no pkg
        _chip("nvme0", "nvme", "/d/nvme/nvme0", "Composite"),
    ]
    got = {(c.chip, s.label): (pkg, core) for c, s, pkg, core in cpu_temps(chips)}
    assert got == {
        ("coretemp.0", "Package id 0"): ("0", ""),
        ("coretemp.0", "Core 0"): ("0", "0"),
        ("coretemp.1", "Core 0"): ("1", "0"),  # package from coretemp.N
        ("coretemp.1", "Core 4"): ("1", "4"),
    }


def test_cpu_temps_amd() -> None:
    # Two EPYC sockets listed out of order; Tdie wins over Tctl, CCDs are not package temps.
    chips = [
        _chip("0000:00:19.3", "k10temp", "/d/pci0000:00/0000:00:19.3", "Tctl", "Tccd1"),
        _chip("0000:00:18.3", "k10temp", "/d/pci0000:00/0000:00:18.3", "Tctl", "Tdie", "Tccd1"),
    ]
    got = {(c.chip, s.label): (pkg, core) for c, s, pkg, core in cpu_temps(chips)}
    assert got == {("0000:00:18.3", "Tdie"): ("0", ""), ("0000:00:19.3", "Tctl"): ("1", "")}


def test_cpu_temps_duplicate_package_labels_first_wins() -> None:
    # Multi-die packages (Cascade Lake-AP) give two coretemp chips the same "Package id 0".
    a = _chip("coretemp.0", "coretemp", "", "Package id 0", "Core 0")
    b = _chip("coretemp.1", "coretemp", "", "Package id 0", "Core 0")
    assert [(c.chip, p, core) for c, _, p, core in cpu_temps([a, b])] == [
        ("coretemp.0", "0", ""),
        ("coretemp.0", "0", "0"),
    ]


def test_discover_hwmon_fixture() -> None:
    chips = {c.chip: c for c in discover_hwmon(GPU_NODE / "sys")}
    assert list(chips) == [
        "thermal_zone0",
        "nvme0",
        "nvme1",
        "coretemp.0",
        "coretemp.1",
        "ACPI000D:00",
        "nct6775.656",
    ]
    # hwmon0 is a symlink into /sys/devices (a virtual chip: its parent is the thermal zone);
    # the others are directories whose ``device`` symlink names the parent.
    assert os.path.islink(GPU_NODE / "sys/class/hwmon/hwmon0")
    assert os.path.islink(GPU_NODE / "sys/class/hwmon/hwmon3/device")
    core = chips["coretemp.0"]
    assert (core.name, core.hwmon) == ("coretemp", "hwmon3")
    assert core.device.endswith("sys/devices/platform/coretemp.0")
    assert [s.label for s in core.sensors] == [
        "Package id 0",
        "Core 0",
        "Core 1",
        "Core 2",
        "Core 3",
    ]
    assert dict(core.sensors[0].thresholds).keys() == {"crit", "max"}
    meter = chips["ACPI000D:00"]
    assert [(s.kind, Path(s.value_path).name) for s in meter.sensors] == [
        ("power", "power1_average")  # ACPI power_meter has no power1_input
    ]
    fans = [s.sensor for s in chips["nct6775.656"].sensors if s.kind == "fan"]
    assert fans == ["fan1", "fan2", "fan3"]


def test_discover_hwmon_plain_dirs_old_layout_and_duplicates(tmp_path: Path) -> None:
    hw = tmp_path / "class" / "hwmon"
    # hwmon0: plain directory with a device symlink (how real sysfs looks through /class)
    dev = write(tmp_path / "devices/pci0000:00/0000:00:18.3")
    write(hw / "hwmon0", name="k10temp", temp1_input=61250, temp1_label="Tctl")
    (hw / "hwmon0/device").symlink_to(dev)
    # hwmon1: old layout, attributes in the device's directory behind hwmon1/device
    old = write(tmp_path / "devices/platform/w83627ehf.656", name="w83627ehf", fan1_input=900)
    write(hw / "hwmon1")
    (hw / "hwmon1/device").symlink_to(old)
    # hwmon2/3: two hwmon devices under one parent, no device link: ids come from the name
    write(hw / "hwmon2", name="mlx5", temp1_input=55000)
    write(hw / "hwmon3", name="mlx5", temp1_input=56000)
    # hwmon4: a chip with no sensors at all is skipped; junk entries are ignored
    write(hw / "hwmon4", name="acpi_fan")
    write(hw / "notahwmon", name="x", temp1_input=1)
    chips = discover_hwmon(tmp_path)
    assert [(c.chip, c.name) for c in chips] == [
        ("0000:00:18.3", "k10temp"),
        ("w83627ehf.656", "w83627ehf"),
        ("mlx5/hwmon2", "mlx5"),
        ("mlx5/hwmon3", "mlx5"),
    ]
    assert chips[1].path.endswith("hwmon1/device")
    assert chips[1].sensors[0].value_path.endswith("hwmon1/device/fan1_input")


def test_discover_hwmon_real_symlink_layout(tmp_path: Path) -> None:
    """As on a live system: class entries link into /sys/devices and ``device`` links back."""
    hw = tmp_path / "class/hwmon"
    hw.mkdir(parents=True)
    core = write(tmp_path / "devices/platform/coretemp.0/hwmon/hwmon2", name="coretemp",
                 temp1_input=40000, temp1_label="Package id 0")  # fmt: skip
    (core / "device").symlink_to("../../../coretemp.0")  # a loop, as in sysfs
    (hw / "hwmon2").symlink_to("../../devices/platform/coretemp.0/hwmon/hwmon2")
    # A class device's hwmon sits right under it; without a device link the parent is used.
    nvme = write(tmp_path / "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/hwmon1",
                 name="nvme", temp1_input=31850, temp1_label="Composite")  # fmt: skip
    (hw / "hwmon1").symlink_to(os.path.relpath(nvme, hw))
    chips = discover_hwmon(tmp_path)
    assert [(c.chip, c.name, c.hwmon) for c in chips] == [
        ("nvme0", "nvme", "hwmon1"),
        ("coretemp.0", "coretemp", "hwmon2"),
    ]
    assert chips[1].device == str((tmp_path / "devices/platform/coretemp.0").resolve())


def test_discover_hwmon_absent_or_empty(tmp_path: Path) -> None:
    assert discover_hwmon(tmp_path) == []
    (tmp_path / "class/hwmon").mkdir(parents=True)
    assert discover_hwmon(tmp_path) == []
    assert discover_hwmon(MINIMAL_VM / "sys") == []


def test_discover_thermal_fixture() -> None:
    zones, cooling = discover_thermal(GPU_NODE / "sys")
    assert [(z.zone, z.type) for z in zones] == [
        ("thermal_zone0", "acpitz"),
        ("thermal_zone1", "x86_pkg_temp"),
        ("thermal_zone2", "x86_pkg_temp"),
    ]
    assert [(t.index, t.type) for t in zones[0].trips] == [("0", "critical"), ("1", "passive")]
    assert [(c.device, c.type) for c in cooling][-1] == ("cooling_device4", "intel_powerclamp")
    zones, cooling = discover_thermal(MINIMAL_VM / "sys")
    assert zones == [] and [c.type for c in cooling] == ["Processor", "Processor"]


def test_discover_thermal_numeric_order_and_zone_without_temp(tmp_path: Path) -> None:
    th = tmp_path / "class/thermal"
    for i in (10, 2):
        write(th / f"thermal_zone{i}", type=f"z{i}", temp=40000)
    write(th / "thermal_zone3", type="broken")  # no temp: skipped
    zones, cooling = discover_thermal(tmp_path)
    assert [z.zone for z in zones] == ["thermal_zone2", "thermal_zone10"]
    assert cooling == []


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("package-0", ("package", "0")),
        ("package-12", ("package", "12")),
        ("dram", ("dram", None)),
        ("psys", ("psys", None)),
        ("core", ("core", None)),
    ],
)
def test_parse_zone_name(name: str, want: tuple[str, str | None]) -> None:
    assert parse_zone_name(name) == want


def test_discover_rapl_fixture() -> None:
    zones = discover_rapl(GPU_NODE / "sys")
    assert [(z.zone, z.domain, z.package, z.is_package) for z in zones] == [
        ("intel-rapl:0", "package", "0", True),
        ("intel-rapl:0:0", "dram", "0", False),
        ("intel-rapl:1", "package", "1", True),
        ("intel-rapl:1:0", "dram", "1", False),
    ]
    assert zones[0].max_range_uj == 262143328850 and zones[0].readable
    assert discover_rapl(MINIMAL_VM / "sys") == []


def test_discover_rapl_psys_and_mmio(tmp_path: Path) -> None:
    pc = tmp_path / "class/powercap"
    write(pc / "intel-rapl", enabled=1)  # the control type, not a zone
    write(pc / "intel-rapl:0", name="package-0", energy_uj=5, max_energy_range_uj=100)
    write(pc / "intel-rapl:0:1", name="uncore", energy_uj=1, max_energy_range_uj=100)
    write(pc / "intel-rapl:1", name="psys", energy_uj=9, max_energy_range_uj=100)
    write(pc / "intel-rapl-mmio:0", name="package-0", energy_uj=5, max_energy_range_uj=100)
    write(pc / "dtpm", name="dtpm")
    zones = discover_rapl(tmp_path)
    assert [(z.zone, z.domain, z.package, z.is_package) for z in zones] == [
        ("intel-rapl:0", "package", "0", True),
        ("intel-rapl:0:1", "uncore", "0", False),
        ("intel-rapl:1", "psys", "", False),
        ("intel-rapl-mmio:0", "package", "0", False),  # mirrors intel-rapl:0: not summed twice
    ]


def test_wrap_counter() -> None:
    c = WrapCounter(1000)
    assert [c.update(v) for v in (990, 995, 5, 10, 400, 3)] == [990, 995, 1005, 1010, 1400, 2003]
    unknown = WrapCounter(None)  # no max_energy_range_uj: treated as a restart from 0
    assert [unknown.update(v) for v in (50, 70, 10)] == [50, 70, 80]


def test_discover_rapl_garbage_range_is_unknown(tmp_path: Path) -> None:
    pc = tmp_path / "class/powercap"
    write(pc / "intel-rapl:0", name="package-0", energy_uj=5, max_energy_range_uj=-100)
    write(pc / "intel-rapl:1", name="package-1", energy_uj=5, max_energy_range_uj="1e21")
    write(pc / "intel-rapl:2", name="package-2", energy_uj=5, max_energy_range_uj=100)
    zones = discover_rapl(tmp_path)
    assert [z.max_range_uj for z in zones] == [None, None, 100]
    # Unknown range: only negative energy is impossible; known range: above it too.
    assert zones[0].energy_is_physical(10**15) and not zones[0].energy_is_physical(-1)
    assert zones[2].energy_is_physical(100) and not zones[2].energy_is_physical(101)
