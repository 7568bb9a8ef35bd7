"""The thermal collector over the captured trees: values, thresholds, broken sensors, absence."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from pathlib import Path

import pytest

from dcwatch.agent.config import AgentConfig
from dcwatch.agent.registry import CollectorRunner
from dcwatch.exporters import registry
from dcwatch.exporters.base import NoDataError
from dcwatch.exporters.thermal import ThermalCollector
from tests.exporters.sysfs_trees import GPU_NODE, MINIMAL_VM, copy_sys, families, scrape
from tests.helpers import sample


@pytest.fixture
def node_text() -> str:
    c = ThermalCollector(AgentConfig(sysfs=GPU_NODE / "sys", procfs=GPU_NODE / "proc"))
    try:
        return scrape(c)
    finally:
        c.close()


def test_registered_default_on() -> None:
    entry = registry.get("thermal")
    assert entry.cls is ThermalCollector and entry.default


def test_hwmon_temperatures_and_thresholds(node_text: str) -> None:
    t = node_text
    core3 = dict(chip="coretemp.0", chip_name="coretemp", sensor="temp5", label="Core 3")
    assert sample(t, "dcwatch_hwmon_temp_celsius", **core3) == 51.0
    assert sample(t, "dcwatch_hwmon_temp_crit_celsius", **core3) == 100.0
    assert sample(t, "dcwatch_hwmon_temp_max_celsius", **core3) == 90.0
    pkg1 = dict(chip="coretemp.1", label="Package id 1")
    assert sample(t, "dcwatch_hwmon_temp_celsius", **pkg1) == 55.0
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="thermal_zone0", chip_name="acpitz") == 27.8
    assert sample(t, "dcwatch_hwmon_temp_crit_celsius", chip="thermal_zone0") == 105.0
    # NVMe: millidegrees with fractions; the "no threshold" sentinels are omitted.
    composite = dict(chip="nvme0", label="Composite")
    assert sample(t, "dcwatch_hwmon_temp_celsius", **composite) == 38.85
    assert sample(t, "dcwatch_hwmon_temp_max_celsius", **composite) == 81.85
    assert sample(t, "dcwatch_hwmon_temp_crit_celsius", **composite) == 84.85
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="nvme0", label="Sensor 2") == 44.85
    assert sample(t, "dcwatch_hwmon_temp_max_celsius", chip="nvme0", label="Sensor 1") is None
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="nvme1", label="Composite") == 36.85
    # Labels absent in sysfs stay empty rather than invented.
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="nct6775.656", sensor="temp2") == 41.5
    assert "NaN" not in t


def test_cpu_temperatures(node_text: str) -> None:
    t = node_text
    assert sample(t, "dcwatch_cpu_temp_celsius", package="0", core="") == 52.0
    assert sample(t, "dcwatch_cpu_temp_celsius", package="0", core="3") == 51.0
    assert sample(t, "dcwatch_cpu_temp_celsius", package="1", core="") == 55.0
    assert sample(t, "dcwatch_cpu_temp_celsius", package="1", core="2") == 56.0
    # coretemp.1's "Core 3" input is empty (a broken sensor): omitted, not 0.
    assert sample(t, "dcwatch_cpu_temp_celsius", package="1", core="3") is None
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="coretemp.1", label="Core 3") is None
    # ... while its thresholds, which read fine, are still there.
    assert sample(t, "dcwatch_hwmon_temp_crit_celsius", chip="coretemp.1", label="Core 3") == 100


def test_fans(node_text: str) -> None:
    t = node_text
    nct = dict(chip="nct6775.656", chip_name="nct6775")
    assert sample(t, "dcwatch_hwmon_fan_rpm", sensor="fan1", **nct) == 1180
    assert sample(t, "dcwatch_hwmon_fan_rpm", sensor="fan2", **nct) == 2350
    assert sample(t, "dcwatch_hwmon_fan_rpm", sensor="fan3", **nct) == 0  # stopped: a reading
    assert sample(t, "dcwatch_hwmon_fan_min_rpm", sensor="fan1", **nct) == 300
    assert sample(t, "dcwatch_hwmon_fan_min_rpm", sensor="fan3", **nct) is None  # alarm off


def test_thermal_zones_and_cooling_devices(node_text: str) -> None:
    t = node_text
    assert (
        sample(t, "dcwatch_thermal_zone_temp_celsius", zone="thermal_zone0", type="acpitz") == 27.8
    )
    assert sample(t, "dcwatch_thermal_zone_temp_celsius", zone="thermal_zone2") == 55.0
    trip = "dcwatch_thermal_zone_trip_point_celsius"
    assert sample(t, trip, zone="thermal_zone0", trip="0", trip_type="critical") == 105.0
    assert sample(t, trip, zone="thermal_zone0", trip="1", trip_type="passive") == 95.0
    assert sample(t, trip, zone="thermal_zone1") is None  # x86_pkg_temp trips at 0 = unset
    dev = dict(device="cooling_device4", type="intel_powerclamp")
    assert sample(t, "dcwatch_cooling_device_cur_state", **dev) == 0
    assert sample(t, "dcwatch_cooling_device_max_state", **dev) == 50


def test_broken_sensor_counted_not_fatal() -> None:
    c = ThermalCollector(AgentConfig(sysfs=GPU_NODE / "sys"))
    scrape(c)
    assert c.read_errors() == 1  # the empty coretemp.1 temp5_input
    scrape(c)
    assert c.read_errors() == 2  # counted each scrape it fails
    c.close()


def test_flaky_read_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = ThermalCollector(AgentConfig(sysfs=sysfs))
    bad = str(sysfs / "class/hwmon/hwmon6/fan2_input")
    real_pread = os.pread
    fds: dict[int, str] = {}
    real_open = os.open

    def tracking_open(path: str, flags: int, *a: object) -> int:
        fd = real_open(path, flags, *a)  # type: ignore[arg-type]
        fds[fd] = os.fspath(path)
        return fd

    def eio_pread(fd: int, n: int, off: int) -> bytes:
        if fds.get(fd) == bad:
            raise OSError(errno.EIO, "Input/output error")
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "pread", eio_pread)
    text = scrape(c)
    assert sample(text, "dcwatch_hwmon_fan_rpm", sensor="fan2") is None
    assert sample(text, "dcwatch_hwmon_fan_rpm", sensor="fan1") == 1180
    errors = c.read_errors()
    monkeypatch.setattr(os, "pread", real_pread)
    text = scrape(c)
    assert sample(text, "dcwatch_hwmon_fan_rpm", sensor="fan2") == 2350  # reopened and read
    assert c.read_errors() == errors + 1  # only the empty coretemp file this time
    c.close()


def test_values_change_between_scrapes(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = ThermalCollector(AgentConfig(sysfs=sysfs))
    assert sample(scrape(c), "dcwatch_cpu_temp_celsius", package="0", core="") == 52.0
    (sysfs / "class/hwmon/hwmon3/temp1_input").write_text("71000\n")  # same inode, kept fd
    assert sample(scrape(c), "dcwatch_cpu_temp_celsius", package="0", core="") == 71.0
    c.close()


def _add_zone(sysfs: Path, zone: str, ztype: str, millidegrees: int) -> None:
    d = sysfs / "devices/virtual/thermal" / zone
    d.mkdir()
    (d / "type").write_text(f"{ztype}\n")
    (d / "temp").write_text(f"{millidegrees}\n")
    (sysfs / "class/thermal" / zone).symlink_to(f"../../devices/virtual/thermal/{zone}")


def test_rediscovery_picks_up_and_drops_devices(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = ThermalCollector(AgentConfig(sysfs=sysfs, rediscover_interval=1e-9))
    assert sample(scrape(c), "dcwatch_hwmon_temp_celsius", chip="nvme1") == 36.85
    shutil.rmtree(sysfs / "class/hwmon/hwmon2")  # nvme1 hot-removed
    _add_zone(sysfs, "thermal_zone3", "iwlwifi_1", 33000)
    text = scrape(c)
    assert sample(text, "dcwatch_hwmon_temp_celsius", chip="nvme1") is None
    assert sample(text, "dcwatch_thermal_zone_temp_celsius", zone="thermal_zone3") == 33.0
    c.close()


def test_discovery_is_cached(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    c = ThermalCollector(AgentConfig(sysfs=sysfs))  # rediscover_interval 60 s
    scrape(c)
    _add_zone(sysfs, "thermal_zone3", "iwlwifi_1", 33000)
    assert sample(scrape(c), "dcwatch_thermal_zone_temp_celsius", zone="thermal_zone3") is None
    c.close()


def test_minimal_vm_only_what_exists() -> None:
    c = ThermalCollector(AgentConfig(sysfs=MINIMAL_VM / "sys", procfs=MINIMAL_VM / "proc"))
    text = scrape(c)
    assert families(text) == {
        "dcwatch_cooling_device_cur_state",
        "dcwatch_cooling_device_max_state",
    }
    assert sample(text, "dcwatch_cooling_device_max_state", device="cooling_device1") == 0
    assert c.read_errors() == 0


def test_no_hardware_is_no_data_not_failure(tmp_path: Path) -> None:
    cfg = AgentConfig(sysfs=tmp_path / "sys", procfs=tmp_path / "proc")
    c = ThermalCollector(cfg)
    with pytest.raises(NoDataError):
        list(c.collect())
    runner = CollectorRunner([c], timeout=5)
    try:
        metrics = asyncio.run(runner.scrape())
    finally:
        runner.close()
    names = {m.name for m in metrics}
    assert not any(n.startswith(("dcwatch_hwmon", "dcwatch_thermal", "dcwatch_cpu")) for n in names)
    state = runner.state["thermal"]
    assert state.ok and state.no_data


# --- readings that cannot be physical ---------------------------------------------------------

CORE_PKG0 = "class/hwmon/hwmon3/temp1_input"  # coretemp.0 "Package id 0", also a CPU temperature
ZONE0 = "class/thermal/thermal_zone0/temp"
BASE_ERRORS = 1  # the fixture's empty coretemp.1 temp5_input, every scrape


@pytest.mark.parametrize(
    "raw",
    ["1" + "0" * 35, "-273150000", "-273150", "-274000", "2000001", "45e3", "nan", "+inf"],
    ids=[
        "1e35",
        "-273150C",
        "absolute-zero",
        "THERMAL_TEMP_INVALID",
        "2000C",
        "float",
        "nan",
        "inf",
    ],
)
def test_impossible_temperature_is_a_read_error(tmp_path: Path, raw: str) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    (sysfs / CORE_PKG0).write_text(f"{raw}\n")
    (sysfs / ZONE0).write_text(f"{raw}\n")
    c = ThermalCollector(AgentConfig(sysfs=sysfs))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="coretemp.0", sensor="temp1") is None
    assert sample(t, "dcwatch_cpu_temp_celsius", package="0", core="") is None
    assert sample(t, "dcwatch_thermal_zone_temp_celsius", zone="thermal_zone0") is None
    # Only those two: the sensor's thresholds and every other sensor are still there.
    assert sample(t, "dcwatch_hwmon_temp_crit_celsius", chip="coretemp.0", sensor="temp1") == 100
    assert sample(t, "dcwatch_cpu_temp_celsius", package="0", core="3") == 51.0
    assert sample(t, "dcwatch_thermal_zone_trip_point_celsius", zone="thermal_zone0", trip="0")
    assert c.read_errors() == BASE_ERRORS + 2
    assert "e+" not in t and "NaN" not in t and "Inf" not in t
    c.close()


@pytest.mark.parametrize(
    ("raw", "celsius"),
    [("-273149", -273.149), ("2000000", 2000.0), ("-40000", -40.0), ("131000", 131.0)],
)
def test_extreme_but_physical_temperature_is_a_value(
    tmp_path: Path, raw: str, celsius: float
) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    (sysfs / CORE_PKG0).write_text(f"{raw}\n")
    (sysfs / ZONE0).write_text(f"{raw}\n")
    c = ThermalCollector(AgentConfig(sysfs=sysfs))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="coretemp.0", sensor="temp1") == celsius
    assert sample(t, "dcwatch_thermal_zone_temp_celsius", zone="thermal_zone0") == celsius
    assert c.read_errors() == BASE_ERRORS
    c.close()


def test_negative_fan_and_cooling_state_are_read_errors(tmp_path: Path) -> None:
    sysfs = copy_sys(GPU_NODE, tmp_path)
    (sysfs / "class/hwmon/hwmon6/fan1_input").write_text("-1\n")
    (sysfs / "class/thermal/cooling_device4/cur_state").write_text("-3\n")
    c = ThermalCollector(AgentConfig(sysfs=sysfs))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_fan_rpm", chip="nct6775.656", sensor="fan1") is None
    assert sample(t, "dcwatch_hwmon_fan_rpm", chip="nct6775.656", sensor="fan2") == 2350
    dev = dict(device="cooling_device4")
    assert sample(t, "dcwatch_cooling_device_cur_state", **dev) is None
    assert sample(t, "dcwatch_cooling_device_max_state", **dev) == 50
    assert c.read_errors() == BASE_ERRORS + 2
    c.close()


def test_impossible_thresholds_mean_not_set(tmp_path: Path) -> None:
    """Drivers use out-of-range thresholds as "none": omitted, not counted."""
    sysfs = copy_sys(GPU_NODE, tmp_path)
    (sysfs / "class/hwmon/hwmon3/temp1_crit").write_text("5000000\n")  # 5000 °C
    (sysfs / "class/thermal/thermal_zone0/trip_point_0_temp").write_text("-300000\n")
    c = ThermalCollector(AgentConfig(sysfs=sysfs))
    t = scrape(c)
    assert sample(t, "dcwatch_hwmon_temp_crit_celsius", chip="coretemp.0", sensor="temp1") is None
    assert sample(t, "dcwatch_hwmon_temp_celsius", chip="coretemp.0", sensor="temp1") == 52.0
    trip = "dcwatch_thermal_zone_trip_point_celsius"
    assert sample(t, trip, zone="thermal_zone0", trip="0") is None
    assert sample(t, trip, zone="thermal_zone0", trip="1") == 95.0
    assert c.read_errors() == BASE_ERRORS
    c.close()
