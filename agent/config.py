"""The agent's configuration, parsed once into frozen dataclasses (file < env < flags)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dcwatch import settings as st
from dcwatch.settings import Setting

DEFAULT_PORT = 9478
DEFAULT_NET_EXCLUDE = (
    r"^(lo|veth.*|cali.*|flannel.*|cni.*|docker.*|virbr.*|vxlan.*|tunl.*|kube-ipvs.*)$"
)

AGENT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen",
        st.to_host_port,
        ("0.0.0.0", DEFAULT_PORT),
        f"HOST:PORT to serve /metrics on (default port {DEFAULT_PORT})",
    ),
    Setting("sysfs", st.to_path, Path("/sys"), "root of sysfs"),
    Setting("procfs", st.to_path, Path("/proc"), "root of procfs"),
    Setting(
        "collectors",
        lambda v: _known_collectors(st.to_str_list(v)),
        (),
        "enable exactly these collectors (default: the default set)",
        is_list=True,
    ),
    Setting(
        "no_collectors",
        lambda v: _known_collectors(st.to_str_list(v)),
        (),
        "disable this collector",
        flag="--no-collector",
        is_list=True,
    ),
    Setting("log_level", st.one_of("debug", "info", "warning", "error"), "info", "log level"),
    Setting(
        "web_config",
        st.to_optional_path,
        None,
        "web config file (TLS, basic auth) in the Prometheus exporter-toolkit format",
    ),
    Setting(
        "collector_timeout",
        st.to_positive_float,
        5.0,
        "seconds one collector may take before the scrape goes on without it",
    ),
    Setting(
        "rediscover_interval",
        st.to_positive_float,
        60.0,
        "seconds between re-scans of sysfs for new devices",
    ),
    Setting(
        "network.device_include",
        st.to_optional_regex,
        None,
        "regex of network devices to include (default: all)",
    ),
    Setting(
        "network.device_exclude",
        st.to_optional_regex,
        DEFAULT_NET_EXCLUDE,
        "regex of network devices to exclude",
    ),
    Setting(
        "gpu.processes",
        st.to_bool,
        False,
        "export per-process GPU memory (pid, name)",
        is_bool=True,
    ),
    Setting(
        "gpu.xid_events",
        st.to_bool,
        True,
        "watch NVML XID events in a background thread",
        is_bool=True,
    ),
    Setting(
        "power.ipmi",
        st.to_bool,
        False,
        "read system power via 'ipmitool dcmi power reading'",
        is_bool=True,
    ),
    Setting("power.ipmitool", st.to_str, "ipmitool", "ipmitool executable"),
    Setting("power.ipmi_timeout", st.to_positive_float, 3.0, "seconds to wait for the BMC"),
    Setting(
        "power.ipmi_interval",
        st.to_nonneg_float,
        30.0,
        "seconds to cache an IPMI reading (BMCs are slow)",
    ),
)


@dataclass(frozen=True)
class NetworkConfig:
    device_include: str | None = None
    device_exclude: str | None = DEFAULT_NET_EXCLUDE


@dataclass(frozen=True)
class GpuConfig:
    processes: bool = False
    xid_events: bool = True


@dataclass(frozen=True)
class PowerConfig:
    ipmi: bool = False
    ipmitool: str = "ipmitool"
    ipmi_timeout: float = 3.0
    ipmi_interval: float = 30.0


@dataclass(frozen=True)
class AgentConfig:
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")
    collectors: tuple[str, ...] = ()  # resolved: the enabled collector names, in order
    log_level: str = "info"
    web_config: Path | None = None
    collector_timeout: float = 5.0
    rediscover_interval: float = 60.0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    source: str = "defaults"  # where the config came from, for messages


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="dcwatch agent")
    st.add_config_argument(parser)
    st.add_arguments(parser, AGENT_SETTINGS)
    return parser


def _known_collectors(names: tuple[str, ...]) -> tuple[str, ...]:
    from dcwatch.exporters import registry  # the table of collectors lives with the collectors

    known = registry.names()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown collector {name!r} (known: {', '.join(known)})")
    return names


def resolve_collectors(enabled: Sequence[str], disabled: Sequence[str]) -> tuple[str, ...]:
    """Turn ``--collectors`` / ``--no-collector`` into the ordered list of enabled collectors."""
    from dcwatch.exporters import registry

    chosen = list(enabled) if enabled else registry.default_names()
    return tuple(n for n in chosen if n not in disabled)


def load_agent_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Parse flags, ``DCWATCH_*`` and the YAML file into an :class:`AgentConfig`."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    return config_from_args(args, env)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> AgentConfig:
    file = st.config_file(args, env)
    v, _ = st.resolve(AGENT_SETTINGS, args, env, file)
    return AgentConfig(
        listen=v["listen"],
        sysfs=v["sysfs"],
        procfs=v["procfs"],
        collectors=resolve_collectors(v["collectors"], v["no_collectors"]),
        log_level=v["log_level"],
        web_config=v["web_config"],
        collector_timeout=v["collector_timeout"],
        rediscover_interval=v["rediscover_interval"],
        network=NetworkConfig(v["network.device_include"], v["network.device_exclude"]),
        gpu=GpuConfig(v["gpu.processes"], v["gpu.xid_events"]),
        power=PowerConfig(
            v["power.ipmi"], v["power.ipmitool"], v["power.ipmi_timeout"], v["power.ipmi_interval"]
        ),
        source=str(file) if file else "flags/env",
    )
