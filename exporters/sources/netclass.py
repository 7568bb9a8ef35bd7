"""Readers of ``/sys/class/net/<dev>/``: link state, speed, MTU, carrier changes, bonds, VLANs.

Cost model: dynamic attributes (operstate, flags, carrier, carrier_changes, mtu, speed, duplex)
are re-read every scrape through one :class:`FileCache` per device, so a device that goes away
takes its descriptors with it (:meth:`NetClassReader.retain`) and one that comes back under the
same name gets fresh ones. Static attributes (address, type, kind, master, bond mode, VLAN id)
are read once per rediscovery interval with short-lived descriptors.

The kernel refuses ``carrier``, ``speed`` and ``duplex`` with EINVAL while a device is
administratively down, and ``speed``/``duplex`` with EOPNOTSUPP on drivers without link
settings (lo, tun, wireguard). Neither is a failure: the first is avoided by reading them only
when ``flags`` has IFF_UP, the second is probed once per device and then not read again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dcwatch.exporters.sources import limits
from dcwatch.exporters.sources.procfs import VlanInfo, parse_vlan_config, vlan_config_path
from dcwatch.exporters.sources.sysfs import FileCache, Rediscovered, parse_int

IFF_UP = 0x1
MBIT = 1_000_000 / 8  # bytes/s in one Mb/s (sysfs ``speed`` unit)
# ARPHRD_* from include/uapi/linux/if_arp.h, for the ones a datacenter node shows.
ARPHRD_NAMES = {
    1: "ether",
    24: "ieee1394",
    32: "infiniband",
    256: "slip",
    512: "ppp",
    768: "ipip",
    769: "tunnel6",
    772: "loopback",
    776: "sit",
    778: "gre",
    801: "ieee80211_radiotap",
    823: "ip6gre",
    65534: "none",
}
# Speeds drivers report when they do not know one (SPEED_UNKNOWN as s32/u32/u16).
_UNKNOWN_SPEEDS = {4294967295, 65535}
_SPEED_MAX_MBIT = 2**32 - 1  # ethtool's speed is a u32
_FLAGS_RE = re.compile(r"\s*(?:0x)?([0-9a-f]{1,16})\s*", re.ASCII | re.IGNORECASE)
_ENOTSUPP = 524  # the kernel-internal "not supported" that some drivers leak to userspace


@dataclass(frozen=True, slots=True)
class NetStatic:
    """What changes only when a device is re-created or reconfigured."""

    device: str
    address: str
    type: str  # ARPHRD name ("ether", "infiniband", "loopback") or the number
    kind: str  # uevent DEVTYPE (bond, vlan, bridge, wlan...), else "physical" or "virtual"
    master: str  # the bond or bridge this device is enslaved to, "" if none
    bond_mode: str  # "802.3ad", "active-backup"... for a bond master, else ""
    vlan: VlanInfo | None


@dataclass(slots=True)
class LinkState:
    """Dynamic attributes of one device; ``None`` = absent (unreadable or not applicable)."""

    operstate: str | None = None
    admin_up: bool | None = None
    carrier: int | None = None
    carrier_changes: int | None = None
    mtu: int | None = None
    speed_bytes: float | None = None
    duplex: str | None = None


@dataclass(frozen=True, slots=True)
class BondState:
    slaves: int
    slaves_up: int  # slaves whose bonding_slave/mii_status is "up"


def parse_speed(text: str | None) -> float | None:
    """sysfs ``speed`` (Mb/s) in bytes/s; empty, negative, zero, "unknown" sentinels and values
    beyond a u32 → None."""
    mbit = parse_int(text) if text else None
    if mbit is None or not 0 < mbit <= _SPEED_MAX_MBIT or mbit in _UNKNOWN_SPEEDS:
        return None
    return mbit * MBIT


def parse_flags(text: str | None) -> int | None:
    """sysfs ``flags`` ("0x1003") as an int; None unless hexadecimal digits (at most 64 bits)."""
    m = _FLAGS_RE.fullmatch(text or "")
    return int(m[1], 16) if m else None


def arphrd_name(text: str | None) -> str:
    if not text:
        return ""
    try:
        return ARPHRD_NAMES.get(int(text), text)
    except ValueError:
        return text


def parse_uevent(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def probe_link_settings(path: str) -> bool | None:
    """Whether ``speed`` can be read: False if the driver has no link settings or the file is
    missing, None if undecidable now (EINVAL: the device went down), True if it read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.pread(fd, 64, 0)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, _ENOTSUPP, errno.ENOENT, errno.ENOTDIR):
            return False
        return None
    return True


class _Device:
    """Per-device descriptors (one FileCache) and precomputed attribute paths."""

    __slots__ = (
        "cache",
        "carrier",
        "carrier_changes",
        "dir",
        "duplex",
        "flags",
        "link_settings",
        "mtu",
        "operstate",
        "slaves",
        "speed",
    )

    def __init__(self, base: str) -> None:
        self.dir = base
        self.cache = FileCache(max_open=64)
        self.operstate = base + "/operstate"
        self.flags = base + "/flags"
        self.carrier = base + "/carrier"
        self.carrier_changes = base + "/carrier_changes"
        self.mtu = base + "/mtu"
        self.speed = base + "/speed"
        self.duplex = base + "/duplex"
        self.slaves = base + "/bonding/slaves"
        self.link_settings: bool | None = None


class _Statics:
    """One rediscovery period's static facts, filled lazily per device."""

    def __init__(self, vlans: dict[str, VlanInfo]) -> None:
        self.vlans = vlans
        self.by_dev: dict[str, NetStatic] = {}


class NetClassReader:
    """Reads ``<sysfs>/class/net/<dev>/`` for the devices the caller names each scrape."""

    def __init__(
        self,
        sysfs: Path,
        procfs: Path,
        rediscover_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._net = os.fspath(sysfs / "class" / "net")
        self._vlan_config = vlan_config_path(procfs)
        self._devs: dict[str, _Device] = {}
        self._statics = Rediscovered(self._new_statics, rediscover_interval, clock)
        self._closed_errors = 0

    # -- static -------------------------------------------------------------------------------

    def _new_statics(self) -> _Statics:
        once = FileCache()
        try:
            text = once.read(self._vlan_config)  # absent without the 8021q module: no VLANs
            return _Statics(parse_vlan_config(text) if text else {})
        finally:
            self._closed_errors += once.errors
            once.close()

    def static(self, name: str) -> NetStatic | None:
        """Static facts of ``name``, read at most once per rediscovery interval; None if gone."""
        st = self._statics.get()
        s = st.by_dev.get(name)
        if s is None:
            s = self._read_static(name, st.vlans)
            if s is not None:
                st.by_dev[name] = s
        return s

    def _read_static(self, name: str, vlans: Mapping[str, VlanInfo]) -> NetStatic | None:
        base = f"{self._net}/{name}"
        if not os.path.isdir(base):
            return None  # the device went away between /proc/net/dev and here
        once = FileCache()
        try:
            # Each attribute that is missing costs only itself: without uevent (some drivers,
            # node_exporter's fixture) the kind comes from the other clues below.
            devtype = parse_uevent(once.read(base + "/uevent")).get("DEVTYPE", "")
            physical = os.path.lexists(base + "/device")
            master = ""
            with contextlib.suppress(OSError):
                master = os.path.basename(os.readlink(base + "/master"))
            bond_mode = ""
            if devtype == "bond" or os.path.isdir(base + "/bonding"):
                devtype = "bond"
                bond_mode = (once.read_str(base + "/bonding/mode") or "").split(" ")[0]
            vlan = vlans.get(name)
            if vlan is not None and not devtype:
                devtype = "vlan"
            return NetStatic(
                device=name,
                address=once.read_str(base + "/address") or "",
                type=arphrd_name(once.read_str(base + "/type")),
                kind=devtype or ("physical" if physical else "virtual"),
                master=master,
                bond_mode=bond_mode,
                vlan=vlan,
            )
        finally:
            self._closed_errors += once.errors
            once.close()

    # -- dynamic ------------------------------------------------------------------------------

    def _dev(self, name: str) -> _Device:
        d = self._devs.get(name)
        if d is None:
            d = self._devs[name] = _Device(f"{self._net}/{name}")
        return d

    def link(self, name: str) -> LinkState:
        """Operstate, admin state, carrier, carrier changes, MTU, speed and duplex of ``name``."""
        d = self._dev(name)
        c = d.cache
        st = LinkState(
            operstate=c.read_str(d.operstate),
            carrier_changes=c.read_int(d.carrier_changes, limits.non_negative),
            mtu=c.read_int(d.mtu, limits.non_negative),
        )
        flags = parse_flags(c.read_str(d.flags))
        if flags is not None:
            st.admin_up = bool(flags & IFF_UP)
        if st.admin_up is False:
            return st  # carrier/speed/duplex answer EINVAL while down
        st.carrier = c.read_int(d.carrier, limits.boolean)
        if d.link_settings is None:
            d.link_settings = probe_link_settings(d.speed)
        if d.link_settings:
            st.speed_bytes = parse_speed(c.read_str(d.speed))
            st.duplex = c.read_str(d.duplex) or None
        return st

    def bond(self, name: str) -> BondState | None:
        """Slave count and slaves with MII up, for a bond master; None for anything else."""
        d = self._dev(name)
        slaves = d.cache.read_str(d.slaves)
        if slaves is None:
            return None
        names = slaves.split()
        up = sum(
            1
            for s in names
            if d.cache.read_str(f"{self._net}/{s}/bonding_slave/mii_status") == "up"
        )
        return BondState(len(names), up)

    # -- lifecycle ----------------------------------------------------------------------------

    def retain(self, names: Iterable[str]) -> None:
        """Forget every device not in ``names`` (it left /proc/net/dev): close its descriptors
        and drop its static facts, so one that comes back under that name is read afresh."""
        keep = names if isinstance(names, (set, frozenset, dict)) else set(names)
        for gone in [n for n in self._devs if n not in keep]:
            d = self._devs.pop(gone)
            self._closed_errors += d.cache.errors
            d.cache.close()
        by_dev = self._statics.get().by_dev
        for gone in [n for n in by_dev if n not in keep]:
            del by_dev[gone]

    @property
    def errors(self) -> int:
        return self._closed_errors + sum(d.cache.errors for d in self._devs.values())

    def close(self) -> None:
        self.retain(())
