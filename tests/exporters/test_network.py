"""The network collector against the captured gpu-node-a and minimal-vm trees."""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dcwatch.agent.config import AgentConfig
from dcwatch.exporters import registry
from dcwatch.exporters.base import Collector, NoDataError
from dcwatch.exporters.network import (
    DEFAULT_NET_EXCLUDE,
    NetworkCollector,
    NetworkOptions,
    device_filter,
)
from dcwatch.exporters.sources import netclass
from dcwatch.exporters.sources.netclass import NetClassReader, arphrd_name, parse_flags, parse_speed

FIXTURES = Path(__file__).parents[1] / "fixtures"
GPU = FIXTURES / "gpu-node-a"
VM = FIXTURES / "minimal-vm"


@dataclass
class Scrape:
    """One scrape's samples, looked up by name and a subset of labels."""

    samples: list[tuple[str, dict[str, str], float]]

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (ls, v)
            for n, ls, v in self.samples
            if n == name and all(ls.get(k) == want for k, want in labels.items())
        ]

    def get(self, name: str, **labels: str) -> float | None:
        hits = self.find(name, **labels)
        assert len(hits) <= 1, f"{name}{labels} matches {len(hits)} samples"
        return hits[0][1] if hits else None

    def labels(self, name: str, **labels: str) -> dict[str, str]:
        (hit,) = self.find(name, **labels)
        return hit[0]

    def devices(self, name: str = "dcwatch_network_receive_bytes_total") -> list[str]:
        return [ls["device"] for ls, _ in self.find(name)]

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


def scrape(c: Collector) -> Scrape:
    return Scrape([(s.name, dict(s.labels), s.value) for m in c.collect() for s in m.samples])


def collector(root: Path, **net: str | None) -> NetworkCollector:
    cfg = AgentConfig(sysfs=root / "sys", procfs=root / "proc")
    if net:
        cfg = replace(cfg, options={"network": replace(NetworkOptions(), **net)})
    return NetworkCollector(cfg)


@pytest.fixture
def gpu() -> NetworkCollector:
    c = collector(GPU)
    yield c  # type: ignore[misc]
    c.close()


def copy_tree(tmp_path: Path, src: Path = GPU) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_registered_by_name_and_on_by_default() -> None:
    assert registry.get("network").cls is NetworkCollector
    assert "network" in registry.default_names()


def test_default_exclude_drops_lo_containers_and_bridges(gpu: NetworkCollector) -> None:
    m = scrape(gpu)
    assert m.devices() == ["eno1", "eno2", "eno3", "ib0", "ib1", "ib2", "bond0", "bond0.100"]
    for metric in m.names():
        if metric.startswith("dcwatch_network_"):
            for ls, _ in m.find(metric):
                assert not re.match(r"lo$|veth|cali|docker", ls["device"]), (metric, ls)


def test_netdev_counters(gpu: NetworkCollector) -> None:
    m = scrape(gpu)
    assert m.get("dcwatch_network_receive_bytes_total", device="eno1") == 48213967315024
    assert m.get("dcwatch_network_receive_packets_total", device="eno1") == 35987412563
    assert m.get("dcwatch_network_receive_drop_total", device="eno1") == 1287
    assert m.get("dcwatch_network_receive_errors_total", device="eno2") == 3
    assert m.get("dcwatch_network_transmit_bytes_total", device="eno1") == 21907352281648
    assert m.get("dcwatch_network_transmit_packets_total", device="eno1") == 19876543210
    assert m.get("dcwatch_network_transmit_drop_total", device="ib0") == 12
    assert m.get("dcwatch_network_transmit_errors_total", device="bond0") == 0
    assert m.get("dcwatch_network_receive_bytes_total", device="bond0.100") == 61203948571234


def test_link_state_speed_mtu_carrier(gpu: NetworkCollector) -> None:
    m = scrape(gpu)
    assert m.get("dcwatch_network_up", device="eno1") == 1
    assert m.get("dcwatch_network_speed_bytes_per_second", device="eno1") == 25000 * 125000
    assert m.get("dcwatch_network_speed_bytes_per_second", device="ib0") == 25e9
    assert m.get("dcwatch_network_speed_bytes_per_second", device="bond0") == 6.25e9
    assert m.get("dcwatch_network_mtu_bytes", device="eno1") == 9000
    assert m.get("dcwatch_network_mtu_bytes", device="ib0") == 4092
    assert m.get("dcwatch_network_carrier_changes_total", device="eno1") == 4
    assert m.get("dcwatch_network_carrier", device="eno1") == 1
    assert m.get("dcwatch_network_admin_up", device="eno1") == 1


def test_admin_down_interface_has_no_carrier_speed_or_duplex(gpu: NetworkCollector) -> None:
    # eno3's speed/carrier/duplex files are empty: the kernel answers EINVAL while it is down.
    m = scrape(gpu)
    assert m.get("dcwatch_network_up", device="eno3") == 0
    assert m.get("dcwatch_network_admin_up", device="eno3") == 0
    assert m.get("dcwatch_network_carrier", device="eno3") is None
    assert m.get("dcwatch_network_speed_bytes_per_second", device="eno3") is None
    assert m.get("dcwatch_network_mtu_bytes", device="eno3") == 1500
    assert m.get("dcwatch_network_carrier_changes_total", device="eno3") == 1
    assert m.labels("dcwatch_network_info", device="eno3")["duplex"] == ""
    assert gpu.read_errors() == 0


def test_no_carrier_speed_minus_one_is_absent_not_zero(gpu: NetworkCollector) -> None:
    m = scrape(gpu)  # ib1: admin up, port polling, speed -1
    assert m.get("dcwatch_network_up", device="ib1") == 0
    assert m.get("dcwatch_network_admin_up", device="ib1") == 1
    assert m.get("dcwatch_network_carrier", device="ib1") == 0
    assert m.get("dcwatch_network_speed_bytes_per_second", device="ib1") is None
    assert m.labels("dcwatch_network_info", device="ib1")["duplex"] == "unknown"


def test_info_bond_and_vlan(gpu: NetworkCollector) -> None:
    m = scrape(gpu)
    assert m.labels("dcwatch_network_info", device="eno1") == {
        "device": "eno1",
        "operstate": "up",
        "duplex": "full",
        "address": "b4:96:91:a8:3c:10",
        "type": "ether",
        "kind": "physical",
        "master": "bond0",
    }
    assert m.labels("dcwatch_network_info", device="bond0")["kind"] == "bond"
    assert m.labels("dcwatch_network_info", device="bond0.100")["kind"] == "vlan"
    ib0 = m.labels("dcwatch_network_info", device="ib0")
    assert (ib0["type"], ib0["address"][-5:]) == ("infiniband", "5c:e2")
    assert m.get("dcwatch_network_bond_info", device="bond0", mode="802.3ad") == 1
    assert m.get("dcwatch_network_bond_slaves", device="bond0") == 2
    assert m.get("dcwatch_network_bond_slaves_up", device="bond0") == 2
    assert m.get("dcwatch_network_vlan_info", device="bond0.100", vlan_id="100", parent="bond0")
    assert m.find("dcwatch_network_bond_slaves", device="eno1") == []


def test_bond_slave_going_down(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    c = collector(root)
    try:
        (root / "sys/class/net/eno2/bonding_slave/mii_status").write_text("down\n")
        m = scrape(c)
        assert m.get("dcwatch_network_bond_slaves", device="bond0") == 2
        assert m.get("dcwatch_network_bond_slaves_up", device="bond0") == 1
    finally:
        c.close()


@pytest.mark.parametrize(
    ("include", "exclude", "want"),
    [
        (r"^eno", DEFAULT_NET_EXCLUDE, ["eno1", "eno2", "eno3"]),
        (r"^ib\d+$", None, ["ib0", "ib1", "ib2"]),
        (None, None, None),  # everything in /proc/net/dev
        (None, r"^(eno|ib)", ["lo", "bond0", "bond0.100", "docker0", "veth3f9a2c1"]),
        (r"bond", r"\.", ["bond0"]),
    ],
)
def test_include_exclude(include: str | None, exclude: str | None, want: list[str] | None) -> None:
    c = collector(GPU, device_include=include, device_exclude=exclude)
    try:
        got = scrape(c).devices()
        if want is None:
            assert len(got) == 13 and "lo" in got and "cali04c7e9d1f2a" in got
        else:
            assert [d for d in got if not d.startswith("cali")] == want
        assert c.read_errors() == 0
    finally:
        c.close()


def test_included_lo_and_virtual_devices_have_no_errors() -> None:
    c = collector(GPU, device_exclude=None)
    try:
        m = scrape(c)
        lo = m.labels("dcwatch_network_info", device="lo")
        assert (lo["type"], lo["kind"], lo["operstate"]) == ("loopback", "virtual", "unknown")
        assert m.get("dcwatch_network_up", device="lo") == 0  # "unknown" is not "up"
        assert m.get("dcwatch_network_speed_bytes_per_second", device="lo") is None
        assert m.labels("dcwatch_network_info", device="docker0")["kind"] == "bridge"
        assert m.labels("dcwatch_network_info", device="veth3f9a2c1")["master"] == "docker0"
        assert c.read_errors() == 0
    finally:
        c.close()


def test_device_filter_semantics() -> None:
    want = device_filter(None, DEFAULT_NET_EXCLUDE)
    assert want("eth0") and want("bond0.100") and want("lo0")
    assert not want("lo") and not want("veth12ab") and not want("cali0") and not want("docker0")
    assert device_filter("eno", None)("xeno1")  # search, like node_exporter
    assert not device_filter("^eno", None)("xeno1")


def test_minimal_vm() -> None:
    c = collector(VM)
    try:
        m = scrape(c)
        assert m.devices() == ["eth0"]
        assert m.get("dcwatch_network_receive_bytes_total", device="eth0") == 2847561023
        assert m.get("dcwatch_network_transmit_bytes_total", device="eth0") == 193847562
        assert m.get("dcwatch_network_receive_drop_total", device="eth0") == 41
        assert m.get("dcwatch_network_up", device="eth0") == 1
        assert m.get("dcwatch_network_speed_bytes_per_second", device="eth0") is None  # virtio
        assert m.labels("dcwatch_network_info", device="eth0")["kind"] == "physical"
        assert not [n for n in m.names() if "bond" in n or "vlan" in n]
        assert c.read_errors() == 0
    finally:
        c.close()


def test_device_disappears_and_appears(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    c = collector(root)
    netdev = root / "proc/net/dev"
    original = netdev.read_text()
    try:
        assert "eno2" in scrape(c).devices()
        # eno2 hot-unplugged: gone from /proc/net/dev and sysfs.
        netdev.write_text("".join(ln for ln in original.splitlines(True) if "eno2:" not in ln))
        shutil.rmtree(root / "sys/class/net/eno2")
        m = scrape(c)
        assert "eno2" not in m.devices()
        assert not [ls for n, ls, _ in m.samples if ls.get("device") == "eno2"]
        # A new device appears between rediscoveries: it is read at once.
        shutil.copytree(root / "sys/class/net/eno3", root / "sys/class/net/eno4")
        (root / "sys/class/net/eno4/address").write_text("3c:ec:ef:5a:10:c3\n")
        netdev.write_text(
            original + "  eno4:     111     222    0    0    0     0          0 "
            "        0      333     444    0    0    0     0       0          0\n"
        )
        m = scrape(c)
        assert m.get("dcwatch_network_receive_bytes_total", device="eno4") == 111
        assert m.get("dcwatch_network_transmit_packets_total", device="eno4") == 444
        assert m.labels("dcwatch_network_info", device="eno4")["address"] == "3c:ec:ef:5a:10:c3"
        assert "eno2" in m.devices()  # back in /proc/net/dev (sysfs still gone): counters only
        assert m.find("dcwatch_network_info", device="eno2") == []
        assert c.read_errors() == 0
    finally:
        c.close()


def test_device_in_proc_but_not_in_sysfs_keeps_its_counters(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    shutil.rmtree(root / "sys/class/net/eno1")
    c = collector(root)
    try:
        m = scrape(c)
        assert m.get("dcwatch_network_receive_bytes_total", device="eno1") == 48213967315024
        assert m.get("dcwatch_network_up", device="eno1") is None
        assert c.read_errors() == 0
    finally:
        c.close()


def test_counter_values_follow_the_file(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    c = collector(root)
    netdev = root / "proc/net/dev"
    try:
        before = scrape(c).get("dcwatch_network_receive_bytes_total", device="eno1")
        netdev.write_text(netdev.read_text().replace("48213967315024", "48213967316024"))
        after = scrape(c).get("dcwatch_network_receive_bytes_total", device="eno1")
        assert after is not None and before is not None and after - before == 1000
    finally:
        c.close()


def test_static_facts_are_read_once_per_rediscovery(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    now = [0.0]
    r = NetClassReader(root / "sys", root / "proc", 60.0, clock=lambda: now[0])
    try:
        s = r.static("eno3")
        assert s is not None and s.address == "3c:ec:ef:5a:10:c2"
        (root / "sys/class/net/eno3/address").write_text("aa:bb:cc:dd:ee:ff\n")
        (root / "sys/class/net/eno3/mtu").write_text("9000\n")
        now[0] = 30.0
        assert r.static("eno3").address == "3c:ec:ef:5a:10:c2"  # type: ignore[union-attr]
        assert r.link("eno3").mtu == 9000  # dynamic: read every time
        now[0] = 61.0
        assert r.static("eno3").address == "aa:bb:cc:dd:ee:ff"  # type: ignore[union-attr]
        assert r.static("nonexistent") is None
    finally:
        r.close()


def test_descriptors_of_vanished_devices_are_closed(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    r = NetClassReader(root / "sys", root / "proc", 60.0)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    try:
        base = fds()
        for d in ("eno1", "eno2", "ib0"):
            r.link(d)
        assert fds() > base
        r.retain({"eno1"})
        mid = fds()
        r.retain(set())
        assert fds() < mid
        r.close()
        assert fds() == base
    finally:
        r.close()


def test_driver_without_link_settings_is_probed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_tree(tmp_path)
    calls: list[str] = []
    real_open = os.open

    def fake_open(path: str, flags: int, *a: int) -> int:
        if path.endswith("/eno1/speed"):
            calls.append(path)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *a)

    monkeypatch.setattr(netclass.os, "open", fake_open)  # the os module: FileCache's too
    r = NetClassReader(root / "sys", root / "proc", 60.0)
    try:
        for _ in range(3):
            st = r.link("eno1")
            assert st.speed_bytes is None and st.duplex is None
            assert st.carrier == 1
        assert len(calls) == 1  # probed once, then never read again
        assert r.errors == 0
    finally:
        r.close()


def test_no_netdev_and_no_infiniband_is_no_data(tmp_path: Path) -> None:
    c = collector(tmp_path)
    try:
        with pytest.raises(NoDataError):
            list(c.collect())
    finally:
        c.close()


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("25000\n", 3.125e9),
        ("100000", 12.5e9),
        ("10", 1.25e6),
        ("-1\n", None),  # SPEED_UNKNOWN
        ("4294967295", None),  # SPEED_UNKNOWN read as u32 by old kernels
        ("65535", None),
        ("0", None),
        ("", None),  # EINVAL captured as an empty file
        (None, None),
        ("fast", None),
    ],
)
def test_parse_speed(text: str | None, want: float | None) -> None:
    assert parse_speed(text) == want


def test_small_parsers() -> None:
    assert parse_flags("0x1003\n") == 0x1003
    assert parse_flags("") is None and parse_flags("zz") is None
    assert arphrd_name("1") == "ether" and arphrd_name("32\n") == "infiniband"
    assert arphrd_name("772") == "loopback" and arphrd_name("9999") == "9999"
    assert arphrd_name(None) == ""


# --- missing files and values that cannot be physical -----------------------------------------

NETDEV_HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed\n"
)


def _node_exporter_like_tree(root: Path, **overrides: str) -> None:
    """One device laid out like node_exporter's sys.ttar: link attributes, no ``uevent``."""
    (root / "proc/net").mkdir(parents=True)
    (root / "proc/net/dev").write_text(
        NETDEV_HEADER + "  eth0: 68210035552 520993275 0 0 0 0 0 0 "
        "9315587528 43451486 0 0 0 0 0 0\n"
    )
    dev = root / "sys/devices/pci0000:00/0000:00:1f.6/net/eth0"
    dev.mkdir(parents=True)
    attrs = {"address": "01:01:01:01:01:01", "carrier": "1", "carrier_changes": "2",
             "duplex": "full", "flags": "0x1303", "mtu": "1500", "operstate": "up",
             "speed": "1000", "type": "1", **overrides}  # fmt: skip
    for name, value in attrs.items():
        (dev / name).write_text(f"{value}\n")
    (dev / "device").symlink_to("../../../0000:00:1f.6")
    (root / "sys/class/net").mkdir(parents=True)
    (root / "sys/class/net/eth0").symlink_to("../../devices/pci0000:00/0000:00:1f.6/net/eth0")


def test_device_without_uevent_keeps_its_link_attributes(tmp_path: Path) -> None:
    _node_exporter_like_tree(tmp_path)
    c = collector(tmp_path)
    try:
        m = scrape(c)
        assert m.get("dcwatch_network_speed_bytes_per_second", device="eth0") == 125e6
        assert m.get("dcwatch_network_mtu_bytes", device="eth0") == 1500
        assert m.get("dcwatch_network_carrier_changes_total", device="eth0") == 2
        assert m.get("dcwatch_network_carrier", device="eth0") == 1
        assert m.get("dcwatch_network_up", device="eth0") == 1
        info = m.labels("dcwatch_network_info", device="eth0")
        assert (info["address"], info["type"], info["kind"]) == (
            "01:01:01:01:01:01",
            "ether",
            "physical",  # uevent's DEVTYPE is missing; the device link still says so
        )
        assert c.read_errors() == 0
    finally:
        c.close()


def test_link_values_that_cannot_be_physical_are_read_errors(tmp_path: Path) -> None:
    _node_exporter_like_tree(
        tmp_path, carrier="7", carrier_changes="-2", mtu="-1500", speed="9" * 400
    )
    c = collector(tmp_path)
    try:
        m = scrape(c)
        for name in ("carrier", "carrier_changes_total", "mtu_bytes", "speed_bytes_per_second"):
            assert m.get(f"dcwatch_network_{name}", device="eth0") is None, name
        assert m.get("dcwatch_network_up", device="eth0") == 1
        assert m.get("dcwatch_network_receive_bytes_total", device="eth0") == 68210035552
        assert c.read_errors() == 3  # carrier, carrier_changes, mtu; a speed is not counted
    finally:
        c.close()


def test_negative_netdev_counter_costs_that_line_only(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    netdev = root / "proc/net/dev"
    netdev.write_text(netdev.read_text().replace("48213967315024", "-48213967315024"))
    c = collector(root)
    try:
        m = scrape(c)
        assert "eno1" not in m.devices()
        assert m.get("dcwatch_network_receive_bytes_total", device="eno2") == 47120338571906
        assert m.get("dcwatch_network_mtu_bytes", device="eno2") == 9000
        assert c.read_errors() == 1
        scrape(c)
        assert c.read_errors() == 2  # counted each scrape it is there
    finally:
        c.close()


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0x1003\n", 0x1003),
        ("1003", 0x1003),
        ("-0x1", None),
        ("0x1_0", None),
        ("0x" + "f" * 17, None),
    ],
)
def test_parse_flags_only_takes_hex(text: str, want: int | None) -> None:
    assert parse_flags(text) == want
