"""The agent's configuration, parsed once into frozen dataclasses (file < env < flags)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcwatch import settings as st
from dcwatch.exporters import registry
from dcwatch.settings import Setting

DEFAULT_PORT = 9478

# The agent's own settings; each collector adds its options (``Collector.SETTINGS``) to these.
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
)


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
    # each collector's own options (its ``Options`` dataclass), by collector name; a collector
    # missing here gets its defaults
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = "defaults"  # where the config came from, for messages


def settings_table() -> tuple[Setting, ...]:
    """The agent's settings followed by every collector's options."""
    return AGENT_SETTINGS + tuple(s for e in registry.entries() for s in e.cls.SETTINGS)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="dcwatch agent")
    st.add_config_argument(parser)
    st.add_arguments(parser, settings_table())
    return parser


def _known_collectors(names: tuple[str, ...]) -> tuple[str, ...]:
    known = registry.names()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown collector {name!r} (known: {', '.join(known)})")
    return names


def resolve_collectors(enabled: Sequence[str], disabled: Sequence[str]) -> tuple[str, ...]:
    """Turn ``--collectors`` / ``--no-collector`` into the enabled collectors, in output order."""
    chosen = set(enabled) if enabled else set(registry.default_names())
    return tuple(n for n in registry.names() if n in chosen and n not in disabled)


def load_agent_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Parse flags, ``DCWATCH_*`` and the YAML file into an :class:`AgentConfig`."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    return config_from_args(args, env)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> AgentConfig:
    file = st.config_file(args, env)
    v, _ = st.resolve(settings_table(), args, env, file)
    return AgentConfig(
        listen=v["listen"],
        sysfs=v["sysfs"],
        procfs=v["procfs"],
        collectors=resolve_collectors(v["collectors"], v["no_collectors"]),
        log_level=v["log_level"],
        web_config=v["web_config"],
        collector_timeout=v["collector_timeout"],
        rediscover_interval=v["rediscover_interval"],
        options={e.name: e.cls.options_from(v) for e in registry.entries()},
        source=str(file) if file else "flags/env",
    )
