"""The ``network`` collector: interface counters, link state and InfiniBand ports.

Per scrape: one read of ``/proc/net/dev`` (which also decides the set of devices: one that left
it is gone from the output, one that joined it appears), a few kept-open ``/sys/class/net``
attributes per included device, and the state, rate and counters of each InfiniBand port.
Static facts (addresses, types, bonds, VLANs, HCA firmware) are re-read once per
``rediscover_interval``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.core import Metric

from dcwatch import settings as st
from dcwatch.exporters.base import Collector, CollectorConfig, CollectorDeps, NoDataError
from dcwatch.exporters.registry import register
from dcwatch.exporters.sources.infiniband import STATE_ACTIVE, HcaInfo, InfinibandReader
from dcwatch.exporters.sources.netclass import NetClassReader
from dcwatch.exporters.sources.procfs import netdev_path, read_netdev
from dcwatch.exporters.sources.sysfs import FileCache
from dcwatch.exposition import Families, MetricSpec

DEV = ("device",)
PORT = ("device", "port")


def _counter(name: str, help: str, labels: tuple[str, ...] = DEV) -> MetricSpec:
    return MetricSpec(name, help, labels, kind="counter")


# /proc/net/dev column → metric.
NETDEV_COUNTERS = tuple(
    (
        field,
        _counter(f"dcwatch_network_{field}_total", f"{what} (/proc/net/dev)"),
    )
    for field, what in (
        ("receive_bytes", "Bytes received"),
        ("receive_packets", "Packets received"),
        ("receive_errors", "Receive errors"),
        ("receive_drop", "Received packets dropped"),
        ("transmit_bytes", "Bytes transmitted"),
        ("transmit_packets", "Packets transmitted"),
        ("transmit_errors", "Transmit errors"),
        ("transmit_drop", "Transmitted packets dropped"),
    )
)
UP = MetricSpec("dcwatch_network_up", "1 if the interface's operstate is up, else 0", DEV)
ADMIN_UP = MetricSpec(
    "dcwatch_network_admin_up", "1 if the interface is administratively up (IFF_UP), else 0", DEV
)
CARRIER = MetricSpec(
    "dcwatch_network_carrier", "1 if the link has carrier (absent while admin down)", DEV
)
CARRIER_CHANGES = _counter(
    "dcwatch_network_carrier_changes_total", "Times the link's carrier went up or down"
)
SPEED = MetricSpec(
    "dcwatch_network_speed_bytes_per_second",
    "Negotiated link speed (absent when unknown: link down or virtual device)",
    DEV,
)
MTU = MetricSpec("dcwatch_network_mtu_bytes", "Interface MTU", DEV)
INFO = MetricSpec(
    "dcwatch_network_info",
    "Interface facts (always 1): operstate, duplex, address, ARP type, kind, bond/bridge master",
    ("device", "operstate", "duplex", "address", "type", "kind", "master"),
)
BOND_INFO = MetricSpec("dcwatch_network_bond_info", "Bond mode (always 1)", ("device", "mode"))
BOND_SLAVES = MetricSpec("dcwatch_network_bond_slaves", "Interfaces enslaved to the bond", DEV)
BOND_SLAVES_UP = MetricSpec(
    "dcwatch_network_bond_slaves_up", "Bond slaves whose MII status is up", DEV
)
VLAN_INFO = MetricSpec(
    "dcwatch_network_vlan_info",
    "VLAN id and parent of a VLAN interface (always 1)",
    ("device", "vlan_id", "parent"),
)

IB_INFO = MetricSpec(
    "dcwatch_infiniband_info",
    "InfiniBand HCA identity (always 1)",
    ("device", "board_id", "firmware_version", "node_guid", "hca_type"),
)
IB_PORT_INFO = MetricSpec(
    "dcwatch_infiniband_port_info",
    "InfiniBand port link layer (always 1): InfiniBand or Ethernet (RoCE)",
    ("device", "port", "link_layer"),
)
IB_UP = MetricSpec("dcwatch_infiniband_port_up", "1 if the port state is ACTIVE, else 0", PORT)
IB_STATE = MetricSpec(
    "dcwatch_infiniband_port_state",
    "Port logical state: 1 DOWN, 2 INIT, 3 ARMED, 4 ACTIVE, 5 ACTIVE_DEFER",
    PORT,
)
IB_PHYS_STATE = MetricSpec(
    "dcwatch_infiniband_port_physical_state",
    "Port physical state: 1 Sleep, 2 Polling, 3 Disabled, 4 PortConfigurationTraining, "
    "5 LinkUp, 6 LinkErrorRecovery, 7 PhyTest",
    PORT,
)
IB_RATE = MetricSpec(
    "dcwatch_infiniband_port_rate_bytes_per_second",
    "Port data rate (only while ACTIVE: a down port shows a meaningless default)",
    PORT,
)
IB_HW_COUNTER = _counter(
    "dcwatch_infiniband_port_hw_counter_total",
    "Driver-specific port counter from hw_counters/ (e.g. out_of_buffer, rnr_nak_retry_err)",
    ("device", "port", "counter"),
)
# counters/ file → metric (the *_data files are converted to bytes by the source).
IB_COUNTERS = {
    file: _counter(f"dcwatch_infiniband_port_{name}_total", what, PORT)
    for file, name, what in (
        ("port_xmit_data", "transmit_bytes", "Bytes transmitted (PortXmitData x 4)"),
        ("port_rcv_data", "receive_bytes", "Bytes received (PortRcvData x 4)"),
        ("port_xmit_packets", "transmit_packets", "Packets transmitted"),
        ("port_rcv_packets", "receive_packets", "Packets received"),
        ("multicast_xmit_packets", "transmit_multicast_packets", "Multicast packets sent"),
        ("multicast_rcv_packets", "receive_multicast_packets", "Multicast packets received"),
        ("port_rcv_errors", "receive_errors", "Received packets with errors"),
        ("port_xmit_discards", "transmit_discards", "Outbound packets discarded"),
        ("port_xmit_wait", "transmit_wait", "Ticks with data to send but no flow credits"),
        ("symbol_error", "symbol_errors", "Minor link errors on the physical lanes"),
        ("link_downed", "link_downed", "Times the link failed to recover and went down"),
        ("link_error_recovery", "link_error_recovery", "Successful link error recoveries"),
        ("local_link_integrity_errors", "local_link_integrity_errors", "Local link errors"),
        (
            "excessive_buffer_overrun_errors",
            "excessive_buffer_overrun_errors",
            "Consecutive flow-control update errors",
        ),
        (
            "port_rcv_remote_physical_errors",
            "receive_remote_physical_errors",
            "Received packets marked bad (EBP)",
        ),
        (
            "port_rcv_switch_relay_errors",
            "receive_switch_relay_errors",
            "Received packets the switch could not relay",
        ),
        (
            "port_rcv_constraint_errors",
            "receive_constraint_errors",
            "Received packets dropped by partition/raw constraints",
        ),
        (
            "port_xmit_constraint_errors",
            "transmit_constraint_errors",
            "Packets not sent due to partition/raw constraints",
        ),
        ("VL15_dropped", "vl15_dropped", "Subnet management packets dropped"),
    )
}


def device_filter(include: str | None, exclude: str | None) -> Callable[[str], bool]:
    """``want(name)``: matches ``include`` (if set) and not ``exclude`` (``re.search``).

    Answers are memoised: the same names come back every scrape.
    """
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None
    memo: dict[str, bool] = {}

    def want(name: str) -> bool:
        v = memo.get(name)
        if v is None:
            v = (inc is None or inc.search(name) is not None) and (
                exc is None or exc.search(name) is None
            )
            if len(memo) > 65536:  # container churn: never grow without bound
                memo.clear()
            memo[name] = v
        return v

    return want


DEFAULT_NET_EXCLUDE = (
    r"^(lo|veth.*|cali.*|flannel.*|cni.*|docker.*|virbr.*|vxlan.*|tunl.*|kube-ipvs.*)$"
)


@dataclass(frozen=True)
class NetworkOptions:
    device_include: str | None = None
    device_exclude: str | None = DEFAULT_NET_EXCLUDE


@register(
    "network", default=True, order=40, description="interface counters, link state, InfiniBand"
)
class NetworkCollector(Collector):
    """Interface counters (/proc/net/dev), link state (/sys/class/net), InfiniBand ports."""

    SETTINGS = (
        st.Setting(
            "network.device_include",
            st.to_optional_regex,
            None,
            "regex of network devices to include (default: all)",
        ),
        st.Setting(
            "network.device_exclude",
            st.to_optional_regex,
            DEFAULT_NET_EXCLUDE,
            "regex of network devices to exclude",
        ),
    )
    Options = NetworkOptions
    options: NetworkOptions

    METRICS = (
        *(spec for _, spec in NETDEV_COUNTERS),
        UP,
        ADMIN_UP,
        CARRIER,
        CARRIER_CHANGES,
        SPEED,
        MTU,
        INFO,
        BOND_INFO,
        BOND_SLAVES,
        BOND_SLAVES_UP,
        VLAN_INFO,
        IB_INFO,
        IB_PORT_INFO,
        IB_UP,
        IB_STATE,
        IB_PHYS_STATE,
        IB_RATE,
        *IB_COUNTERS.values(),
        IB_HW_COUNTER,
    )

    def __init__(self, config: CollectorConfig, deps: CollectorDeps | None = None) -> None:
        super().__init__(config, deps)
        net = self.options
        self._want = device_filter(net.device_include, net.device_exclude)
        self._netdev = netdev_path(config.procfs)
        self._proc = FileCache(max_open=4)
        self._net = NetClassReader(config.sysfs, config.procfs, config.rediscover_interval)
        self._ib = InfinibandReader(
            config.sysfs, config.rediscover_interval, counters=frozenset(IB_COUNTERS)
        )

    def collect(self) -> Iterable[Metric]:
        f = Families()
        stats = read_netdev(self._proc, self._netdev, self._want)
        hcas = self._ib.hcas()
        if stats is None and not hcas:
            raise NoDataError(f"{self._netdev} unreadable and no InfiniBand HCA")
        if stats is not None:
            self._net.retain({s.device for s in stats})
            for s in stats:
                for field, spec in NETDEV_COUNTERS:
                    f.add(spec, getattr(s, field), s.device)
                self._device(f, s.device)
        for hca in hcas:
            self._hca(f, hca)
        return f

    def _device(self, f: Families, dev: str) -> None:
        static = self._net.static(dev)
        if static is None:
            return  # no sysfs directory (gone, or sysfs not mounted): counters only
        link = self._net.link(dev)
        if link.operstate is not None:
            f.add(UP, 1 if link.operstate == "up" else 0, dev)
        if link.admin_up is not None:
            f.add(ADMIN_UP, 1 if link.admin_up else 0, dev)
        f.add(CARRIER, link.carrier, dev)
        f.add(CARRIER_CHANGES, link.carrier_changes, dev)
        f.add(SPEED, link.speed_bytes, dev)
        f.add(MTU, link.mtu, dev)
        f.add(
            INFO,
            1,
            dev,
            link.operstate or "",
            link.duplex or "",
            static.address,
            static.type,
            static.kind,
            static.master,
        )
        if static.kind == "bond":
            f.add(BOND_INFO, 1, dev, static.bond_mode)
            bond = self._net.bond(dev)
            if bond is not None:
                f.add(BOND_SLAVES, bond.slaves, dev)
                f.add(BOND_SLAVES_UP, bond.slaves_up, dev)
        if static.vlan is not None:
            f.add(VLAN_INFO, 1, dev, str(static.vlan.vlan_id), static.vlan.parent)

    def _hca(self, f: Families, hca: HcaInfo) -> None:
        readings = [(port, self._ib.read_port(port)) for port in hca.ports]
        if hca.ports and all(r is None for _, r in readings):
            return  # the HCA went away since discovery
        f.add(IB_INFO, 1, hca.name, hca.board_id, hca.fw_ver, hca.node_guid, hca.hca_type)
        for port, r in readings:
            if r is None:
                continue
            labels = (hca.name, port.port)
            f.add(IB_PORT_INFO, 1, *labels, port.link_layer)
            if r.state is not None:
                f.add(IB_UP, 1 if r.state == STATE_ACTIVE else 0, *labels)
            f.add(IB_STATE, r.state, *labels)
            f.add(IB_PHYS_STATE, r.phys_state, *labels)
            if r.state == STATE_ACTIVE:
                f.add(IB_RATE, r.rate_bytes, *labels)
            for name, value in r.counters.items():
                f.add(IB_COUNTERS[name], value, *labels)
            for name, value in r.hw_counters.items():
                f.add(IB_HW_COUNTER, value, *labels, name)

    def read_errors(self) -> int:
        return self._proc.errors + self._net.errors + self._ib.errors

    def close(self) -> None:
        self._proc.close()
        self._net.close()
        self._ib.close()
