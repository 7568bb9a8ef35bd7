"""The analyzer's configuration: flags > ``DCWATCH_*`` > YAML file > defaults, parsed once."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import settings as st
from agent.settings import ConfigError, Setting

DEFAULT_PORT = 9479

ANALYZER_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen",
        st.to_host_port,
        ("0.0.0.0", DEFAULT_PORT),
        f"HOST:PORT to serve the overview page and /metrics on (default port {DEFAULT_PORT})",
    ),
    Setting(
        "state_dir",
        st.to_path,
        Path("/var/lib/dcwatch"),
        "directory for the embedded store, fitted models and the alert queue",
    ),
    Setting("log_level", st.one_of("debug", "info", "warning", "error"), "info", "log level"),
    Setting(
        "external_url",
        st.to_str,
        "",
        "URL under which people reach this analyzer "
        "(alerts' generatorURL); default http://<listen>",
    ),
    # data in: embedded (default) or Prometheus
    Setting(
        "targets",
        st.to_str_list,
        (),
        "agent /metrics URLs to scrape (embedded mode)",
        flag="--target",
        is_list=True,
    ),
    Setting(
        "targets_file",
        st.to_optional_path,
        None,
        "file of agent URLs (one per line or a YAML list), reloaded on change",
    ),
    Setting("scrape_interval", st.to_positive_float, 15.0, "embedded scrape interval"),
    Setting("scrape_timeout", st.to_positive_float, 10.0, "embedded scrape timeout per target"),
    Setting("retention", st.to_positive_float, 14 * 86400.0, "history kept in the embedded store"),
    Setting("prometheus.url", st.to_str, "", "read from this Prometheus instead of scraping"),
    Setting("prometheus.bearer_token_file", st.to_optional_path, None, "bearer token file"),
    Setting("prometheus.username", st.to_str, "", "basic auth user"),
    Setting("prometheus.password_file", st.to_optional_path, None, "basic auth password file"),
    Setting("prometheus.ca_file", st.to_optional_path, None, "CA bundle for https"),
    Setting(
        "prometheus.insecure_skip_verify", st.to_bool, False, "skip TLS verification", is_bool=True
    ),
    Setting("prometheus.timeout", st.to_positive_float, 30.0, "query timeout"),
    Setting(
        "queries_file",
        st.to_optional_path,
        None,
        "YAML list of named PromQL queries (default: the built-in set)",
    ),
    # detection
    Setting("step", st.to_positive_float, 15.0, "evaluation step: one score per node per step"),
    Setting("train_window", st.to_positive_float, 7 * 86400.0, "history a model is fitted on"),
    Setting(
        "min_train", st.to_positive_float, 3600.0, "history needed before a node leaves cold start"
    ),
    Setting("refit_interval", st.to_positive_float, 86400.0, "refit every node this often"),
    Setting(
        "false_alerts_per_week",
        st.to_positive_float,
        1.0,
        "target false-alert rate per node used to calibrate the threshold",
    ),
    Setting("workers", st.to_int, 1, "processes for model fits (0 = in the scoring process)"),
    Setting("dask_scheduler", st.to_str, "", "run fits on this Dask distributed scheduler"),
    # alerts out
    Setting(
        "alertmanagers",
        st.to_str_list,
        (),
        "Alertmanager base URLs (every one gets every alert)",
        flag="--alertmanager",
        is_list=True,
    ),
    Setting(
        "resend_interval",
        st.to_positive_float,
        60.0,
        "re-send active alerts this often (below Alertmanager's resolve_timeout)",
    ),
    Setting(
        "alert_log",
        st.to_optional_path,
        None,
        "append-only JSON-lines file of alert state changes (default <state_dir>/alerts.jsonl)",
    ),
    Setting("runbook_url", st.to_str, "", "runbook URL template ({alertname} is replaced)"),
    Setting("dashboard_url", st.to_str, "", "dashboard URL template ({instance} is replaced)"),
)


@dataclass(frozen=True)
class PrometheusSettings:
    url: str = ""
    bearer_token_file: Path | None = None
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    timeout: float = 30.0


@dataclass(frozen=True)
class AnalyzerConfig:
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    state_dir: Path = Path("/var/lib/dcwatch")
    log_level: str = "info"
    external_url: str = ""
    targets: tuple[str, ...] = ()
    targets_file: Path | None = None
    scrape_interval: float = 15.0
    scrape_timeout: float = 10.0
    retention: float = 14 * 86400.0
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    queries_file: Path | None = None
    step: float = 15.0
    train_window: float = 7 * 86400.0
    min_train: float = 3600.0
    refit_interval: float = 86400.0
    false_alerts_per_week: float = 1.0
    workers: int = 1
    dask_scheduler: str = ""
    alertmanagers: tuple[str, ...] = ()
    resend_interval: float = 60.0
    alert_log: Path | None = None
    runbook_url: str = ""
    dashboard_url: str = ""
    capacity_rules: tuple[Any, ...] = ()  # raw rule mappings; parsed by the capacity module
    source: str = "flags/env"

    @property
    def mode(self) -> str:
        return "prometheus" if self.prometheus.url else "embedded"

    @property
    def generator_url(self) -> str:
        host, port = self.listen
        return self.external_url or f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="dcwatch analyzer")
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML config file (env DCWATCH_CONFIG)"
    )
    st.add_arguments(parser, ANALYZER_SETTINGS)
    return parser


def load_analyzer_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AnalyzerConfig:
    env = os.environ if env is None else env
    return config_from_args(build_parser().parse_args(argv), env)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> AnalyzerConfig:
    file = args.config or (Path(env["DCWATCH_CONFIG"]) if env.get("DCWATCH_CONFIG") else None)
    v, raw = st.resolve(ANALYZER_SETTINGS, args, env, file, extra_file_keys=("capacity_rules",))
    rules = raw.get("capacity_rules", ())
    if not isinstance(rules, list):
        raise ConfigError(f"config file {file}: key 'capacity_rules': must be a list of rules")
    if v["workers"] < 0:
        raise ConfigError("key 'workers': must be >= 0")
    if v["min_train"] > v["train_window"]:
        raise ConfigError("key 'min_train': must not exceed train_window")
    plain = {k: val for k, val in v.items() if "." not in k}
    prom = {k.split(".", 1)[1]: val for k, val in v.items() if k.startswith("prometheus.")}
    return AnalyzerConfig(
        **plain,
        prometheus=PrometheusSettings(**prom),
        capacity_rules=tuple(rules),
        source=str(file) if file else "flags/env",
    )
