"""The analyzer's configuration: flags > ``DCWATCH_*`` > YAML file > defaults, parsed once.

Sections (YAML keys; each is also a flag ``--section-key`` and a variable
``DCWATCH_SECTION_KEY``): top-level service keys, ``embedded.*`` (the default source),
``prometheus.*`` (read from Prometheus instead), ``model.*`` (detection), ``alerting.*``
(Alertmanager, see detectors/alerts.py) and ``capacity_rules`` (a list, see
detectors/capacity_rules.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcwatch import settings as st
from dcwatch.detectors.alerting.alerts import (
    ALERTING_SETTINGS,
    AlertingConfig,
    alerting_config_from,
)
from dcwatch.detectors.shard import Shard
from dcwatch.detectors.sources.prometheus import PrometheusConfig
from dcwatch.detectors.sources.queries import to_presets
from dcwatch.detectors.sources.scraper import EmbeddedConfig
from dcwatch.settings import ConfigError, Setting

DEFAULT_PORT = 9479

SERVICE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen",
        st.to_host_port,
        ("0.0.0.0", DEFAULT_PORT),
        f"HOST:PORT for the overview page, /metrics and /healthz (default port {DEFAULT_PORT})",
    ),
    Setting(
        "state_dir",
        st.to_path,
        Path("/var/lib/dcwatch"),
        "directory for the embedded store, fitted models and the alert queue",
    ),
    Setting("log_level", st.one_of("debug", "info", "warning", "error"), "info", "log level"),
    Setting(
        "web_config",
        st.to_optional_path,
        None,
        "web config file (TLS, basic auth for every endpoint) in the Prometheus "
        "exporter-toolkit format",
    ),
    Setting(
        "queries_file",
        st.to_optional_path,
        None,
        "YAML list of named PromQL queries (default: the built-in set)",
    ),
    Setting(
        "queries_preset",
        to_presets,
        (),
        "built-in query sets, combinable: dcwatch, dcgm (dcgm-exporter's DCGM_FI_*), "
        "node_exporter (node_*); they also choose the default capacity rules. With queries_file "
        "the file's queries add to them (default: dcwatch; none when queries_file is given)",
        is_list=True,
    ),
    Setting(
        "targets",
        st.to_str_list,
        (),
        "agent /metrics URL to scrape (embedded mode)",
        flag="--target",
        is_list=True,
    ),
    Setting(
        "targets_file",
        st.to_optional_path,
        None,
        "file of agent URLs (one per line or a YAML list, entries may carry basic_auth, "
        "bearer_token_file, tls_config), reloaded when it changes",
    ),
    Setting("embedded.scrape_interval", st.to_positive_float, 15.0, "embedded scrape interval"),
    Setting("embedded.scrape_timeout", st.to_positive_float, 10.0, "embedded scrape timeout"),
    Setting(
        "embedded.retention",
        st.to_positive_float,
        14 * 86400.0,
        "history kept in the embedded store",
    ),
    Setting(
        "embedded.concurrency",
        st.to_int,
        64,
        "scrape bodies read and parsed at once (a target that does not answer holds none)",
    ),
    Setting(
        "embedded.body_size_limit",
        st.to_int,
        16 << 20,
        "bytes of one scrape after decompression; a larger body fails the scrape",
    ),
    Setting(
        "embedded.sample_limit",
        st.to_int,
        20_000,
        "samples of one scrape (an 8-GPU node serves ~1-3k); more fails the scrape",
    ),
    Setting(
        "embedded.max_db_bytes",
        st.to_int,
        16 << 30,
        "bytes the embedded store may use; past it the oldest scrapes are deleted first",
    ),
    Setting(
        "shard.index",
        st.to_int,
        0,
        "this analyzer's shard (0..shard.count-1): it watches the nodes whose instance hashes to "
        "it; two analyzers with the same shard settings are an HA pair",
    ),
    Setting(
        "shard.count",
        st.to_int,
        1,
        "analyzers splitting the fleet by Prometheus' hashmod of the instance (1: no sharding)",
    ),
    Setting("prometheus.url", st.to_str, "", "read from this Prometheus instead of scraping"),
    Setting("prometheus.bearer_token", st.to_str, "", "bearer token", secret=True),
    Setting("prometheus.bearer_token_file", st.to_optional_path, None, "bearer token file"),
    Setting("prometheus.username", st.to_str, "", "basic auth user"),
    Setting("prometheus.password", st.to_str, "", "basic auth password", secret=True),
    Setting("prometheus.password_file", st.to_optional_path, None, "basic auth password file"),
    Setting("prometheus.ca_file", st.to_optional_path, None, "CA bundle for https"),
    Setting("prometheus.cert_file", st.to_optional_path, None, "client certificate"),
    Setting("prometheus.key_file", st.to_optional_path, None, "client certificate key"),
    Setting(
        "prometheus.insecure_skip_verify", st.to_bool, False, "skip TLS verification", is_bool=True
    ),
    Setting("prometheus.timeout", st.to_positive_float, 30.0, "seconds per query"),
    Setting("prometheus.retries", st.to_int, 3, "retries of a failed query"),
    Setting(
        "prometheus.max_response_bytes",
        st.to_int,
        256 * 2**20,
        "largest answer read from Prometheus (bytes, decompressed); a larger one is refused",
    ),
    Setting("model.step", st.to_positive_float, 15.0, "evaluation step: one score per node"),
    Setting(
        "model.train_window", st.to_positive_float, 7 * 86400.0, "history a model is fitted on"
    ),
    Setting(
        "model.min_train",
        st.to_positive_float,
        3600.0,
        "history a node needs before it leaves cold start",
    ),
    Setting("model.refit_interval", st.to_positive_float, 86400.0, "refit each node this often"),
    Setting(
        "model.alerts_per_week",
        st.to_positive_number,
        0.35,
        "target false-alert rate per node; calibrates the threshold on training scores",
    ),
    Setting(
        "model.group_by",
        st.to_regex,
        "",
        "fit one shared model per group of like nodes: a regex on the instance whose first "
        "capture group (or whole match) names the group, e.g. '^(dgx-h100)-'; default per node",
    ),
    Setting(
        "model.max_series",
        st.to_int,
        512,
        "series one node's model keeps; beyond it the most informative are kept and "
        "dcwatch_model_series_dropped with reason over_limit counts the rest (an 8-GPU node has "
        "about 210 series with the default queries, a large one about 300)",
    ),
    Setting(
        "model.max_train_rows",
        st.to_int,
        40320,
        "training rows a model learns from (default: a week at 15 s); beyond it the most recent "
        "rows, and an even sample of a group's pooled rows",
    ),
    Setting(
        "model.workers",
        st.to_int,
        1,
        "processes for model fits (0: fit in a thread of the service process)",
    ),
    Setting(
        "model.dask_scheduler",
        st.to_str,
        "",
        "address of a Dask distributed scheduler to run fits on (tcp://host:8786)",
    ),
)
ANALYZER_SETTINGS: tuple[Setting, ...] = SERVICE_SETTINGS + ALERTING_SETTINGS


@dataclass(frozen=True)
class ModelSettings:
    step: float = 15.0
    train_window: float = 7 * 86400.0
    min_train: float = 3600.0
    refit_interval: float = 86400.0
    alerts_per_week: float | None = None  # None: the detector's default
    group_by: str = ""  # regex; empty: one model per node
    max_series: int = 512  # per node model (ModelConfig.max_series)
    max_train_rows: int = 40320  # per node model and per group detector
    workers: int = 1
    dask_scheduler: str = ""


@dataclass(frozen=True)
class AnalyzerConfig:
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    state_dir: Path = Path("/var/lib/dcwatch")
    log_level: str = "info"
    web_config: Path | None = None  # TLS and basic auth (dcwatch.webconfig), read by make_app
    queries_file: Path | None = None
    queries_preset: tuple[str, ...] = ()  # empty: dcwatch's, or none beside a queries_file
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    prometheus: PrometheusConfig | None = None
    model: ModelSettings = field(default_factory=ModelSettings)
    alerting: AlertingConfig = field(default_factory=lambda: alerting_config_from({}, Path(".")))
    capacity_rules: tuple[Any, ...] = ()  # raw rule mappings, parsed by detectors/capacity.py
    shard: Shard = field(default_factory=Shard)  # also in embedded and prometheus: they filter
    source: str = "flags/env"

    @property
    def mode(self) -> str:
        return "prometheus" if self.prometheus is not None else "embedded"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="dcwatch analyzer")
    st.add_config_argument(parser)
    st.add_arguments(parser, ANALYZER_SETTINGS)
    return parser


def load_analyzer_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AnalyzerConfig:
    env = os.environ if env is None else env
    return config_from_args(build_parser().parse_args(argv), env)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> AnalyzerConfig:
    file = st.config_file(args, env)
    where = f"config file {file}" if file else "configuration"
    v, raw = st.resolve(ANALYZER_SETTINGS, args, env, file, extra_file_keys=("capacity_rules",))
    rules = raw.get("capacity_rules", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{where}: key 'capacity_rules': must be a list of rules")
    from dcwatch.detectors.capacity.rules import parse_rules

    parse_rules(rules, f"{where}: capacity_rules")  # refuse a bad rule before anything starts
    state_dir: Path = v["state_dir"]
    _check_state_dir(state_dir, where)
    _check_targets(v["targets"], v["targets_file"], where)
    _check_queries_file(v["queries_file"], where, v["queries_preset"])

    def section(prefix: str) -> dict[str, Any]:
        return {k[len(prefix) + 1 :]: val for k, val in v.items() if k.startswith(prefix + ".")}

    try:
        shard = Shard(v["shard.index"], v["shard.count"])
    except ValueError as e:
        raise ConfigError(f"{where}: section 'shard': {e}") from None
    across = [r.get("name", "?") for r in rules if isinstance(r, dict) and r.get("aggregate")]
    if across and not shard.whole:
        raise ConfigError(
            f"{where}: capacity rule {across[0]!r}: 'aggregate' sums nodes, and a shard sees only "
            "its own; with shard.count > 1 record the sum in Prometheus (a recording rule whose "
            "`instance` label names the group: it lands on exactly one shard) and forecast that"
        )
    try:
        embedded = EmbeddedConfig(
            targets=v["targets"],
            targets_file=v["targets_file"],
            db_path=state_dir / "embedded.db",
            shard=shard,
            **section("embedded"),
        )
    except ValueError as e:
        raise ConfigError(f"{where}: section 'embedded': {e}") from None
    prom = section("prometheus")
    prometheus = None
    if prom.pop("url"):
        try:
            prometheus = PrometheusConfig(url=v["prometheus.url"], shard=shard, **prom)
        except ValueError as e:
            raise ConfigError(f"{where}: section 'prometheus': {e}") from None
    model = ModelSettings(**section("model"))
    if model.workers < 0:
        raise ConfigError(f"{where}: key 'model.workers': must be >= 0")
    for key, least in (("max_series", 1), ("max_train_rows", 2)):
        if getattr(model, key) < least:
            raise ConfigError(f"{where}: key 'model.{key}': must be >= {least}")
    if model.min_train > model.train_window:
        raise ConfigError(f"{where}: key 'model.min_train': must not exceed model.train_window")
    if model.step < embedded.scrape_interval and prometheus is None:
        raise ConfigError(f"{where}: key 'model.step': must be >= embedded.scrape_interval")
    try:
        alerting = alerting_config_from(v, state_dir)
        if not alerting.external_url:  # generatorURL: where people reach this analyzer
            host, port = v["listen"]
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            alerting = dataclasses.replace(alerting, external_url=f"http://{local}:{port}")
    except ValueError as e:
        raise ConfigError(f"{where}: section 'alerting': {e}") from None
    if prometheus is None and not embedded.targets and embedded.targets_file is None:
        raise ConfigError(
            f"{where}: no data source: give targets / targets_file (embedded) or prometheus.url"
        )
    return AnalyzerConfig(
        listen=v["listen"],
        state_dir=state_dir,
        log_level=v["log_level"],
        web_config=v["web_config"],
        queries_file=v["queries_file"],
        queries_preset=v["queries_preset"],
        embedded=embedded,
        prometheus=prometheus,
        model=model,
        alerting=alerting,
        capacity_rules=tuple(rules),
        shard=shard,
        source=str(file) if file else "flags/env",
    )


# --- checks of what the values point at: each a ConfigError naming the key, never a traceback --


def _check_state_dir(path: Path, where: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where}: key 'state_dir': {path} exists and is not a directory")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: key 'state_dir': {probe} is not writable")


def _check_targets(targets: Sequence[str], targets_file: Path | None, where: str) -> None:
    from dcwatch.detectors.sources.scraper import parse_targets_file, target_url

    for t in targets:
        try:
            _http_url(target_url(t))
        except ValueError as e:
            raise ConfigError(f"{where}: key 'targets': {_clean(e)}") from None
    if targets_file is None or not targets_file.exists():
        return  # may be written later (config management): the scraper reloads it when it appears
    try:
        text = targets_file.read_text(encoding="utf-8")
        for url in parse_targets_file(text):
            _http_url(url)
    except OSError as e:
        raise ConfigError(
            f"{where}: key 'targets_file': cannot read {targets_file}: {e.strerror or e}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{where}: key 'targets_file': {targets_file} is not UTF-8 text"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{where}: key 'targets_file': {targets_file}: {_clean(e)}") from None


def _http_url(url: str) -> None:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"target {url!r}: scheme must be http or https")


def _clean(e: Exception) -> str:
    """An error message on one line (it may quote a value from a file)."""
    return " ".join(str(e).split())


def _check_queries_file(path: Path | None, where: str, presets: Sequence[str] = ()) -> None:
    if path is None:
        return
    from dcwatch.detectors.sources.queries import QueryError, load_queries

    try:
        load_queries(path, presets)  # also refuses a name both in the file and a preset
    except QueryError as e:
        raise ConfigError(f"{where}: key 'queries_file': {_clean(e)}") from None
