"""Alerts: the alert model, its configuration and the Alertmanager API v2 payload builder.

An alert's identity is its label set (as in Alertmanager): the same labels are the same alert, so
re-firing updates it and ``resolve(key)`` ends it. Everything here is pure; delivery, queueing and
persistence live in :mod:`dcwatch.detectors.alerting.sender`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from dcwatch import settings as st
from dcwatch.settings import Setting
from dcwatch.urls import redact_url, redacted_repr

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True, repr=False)
class AlertingConfig:
    """Where and how alerts go. Without an Alertmanager: to the log and the ``alert_log`` file."""

    alertmanagers: tuple[str, ...] = ()  # base URLs, path prefix included; each gets every alert
    timeout: float = 10.0  # seconds per POST
    resend_interval: float = 60.0  # keep well below Alertmanager's resolve_timeout (default 5m)
    ends_at_factor: float = 4.0  # endsAt = now + factor * resend_interval on every (re)send
    resolved_resends: int = 3  # deliveries of a resolved alert to each Alertmanager, then forgotten
    state_dir: Path = Path("var")  # holds alerts.sqlite3: active alerts and undelivered updates
    queue_max: int = 10_000  # alerts held (firing + undelivered resolved); beyond: drop, loudly
    retry_initial: float = 1.0  # first retry delay after a failed POST (seconds)
    retry_max: float = 60.0  # cap of the exponential backoff
    bearer_token: str | None = field(default=None, repr=False)
    bearer_token_file: Path | None = None
    basic_auth_username: str | None = None
    basic_auth_password: str | None = field(default=None, repr=False)
    basic_auth_password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure_skip_verify: bool = False
    external_url: str = ""  # the analyzer's URL as people reach it: alerts' generatorURL
    runbook_url: str | None = None  # template over labels, e.g. https://wiki/runbooks/{alertname}
    dashboard_url: str | None = None  # template, e.g. https://grafana/d/x?var-node={instance}
    alert_log: Path | None = None  # JSON-lines file; see alert_log_path

    __repr__ = redacted_repr  # URLs may carry a password

    def __post_init__(self) -> None:
        for url in self.alertmanagers:
            u = urllib.parse.urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(
                    f"alertmanager URL must be http(s)://host[:port][/path]: {redact_url(url)}"
                )
        if len(set(self.alertmanagers)) != len(self.alertmanagers):
            raise ValueError("alertmanager URLs are listed twice")
        for name in ("timeout", "resend_interval", "retry_initial", "retry_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"alerting {name} must be > 0")
        if not self.ends_at_factor > 1:
            raise ValueError("alerting ends_at_factor must be > 1 (alerts would expire early)")
        if self.queue_max < 1 or self.resolved_resends < 1:
            raise ValueError("alerting queue_max and resolved_resends must be >= 1")
        if self.bearer_token and self.basic_auth_username:
            raise ValueError("alerting: choose bearer token or basic auth, not both")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("alerting: tls_cert_file and tls_key_file go together")
        for name in ("runbook_url", "dashboard_url"):
            tmpl = getattr(self, name)
            if tmpl:
                try:
                    list(string.Formatter().parse(tmpl))
                except ValueError as e:
                    raise ValueError(f"alerting {name} template {tmpl!r}: {e}") from None

    @property
    def alert_log_path(self) -> Path | None:
        """The JSON-lines log: the configured one, else ``state_dir/alerts.jsonl`` without AM."""
        if self.alert_log is not None:
            return self.alert_log
        return None if self.alertmanagers else self.state_dir / "alerts.jsonl"


# The ``alerting:`` section of the analyzer's YAML (keys flatten to ``alerting.<name>``).
ALERTING_SETTINGS: tuple[Setting, ...] = (
    Setting("alerting.alertmanagers", st.to_str_list, (), "Alertmanager base URL", is_list=True),
    Setting("alerting.timeout", st.to_positive_float, 10.0, "seconds per POST to Alertmanager"),
    Setting("alerting.resend_interval", st.to_positive_float, 60.0, "seconds between resends"),
    Setting("alerting.ends_at_factor", st.to_positive_number, 4.0, "endsAt = now + this x resend"),
    Setting("alerting.resolved_resends", st.to_int, 3, "deliveries of a resolved alert"),
    Setting("alerting.queue_max", st.to_int, 10_000, "alerts held while undelivered, at most"),
    Setting("alerting.retry_initial", st.to_positive_float, 1.0, "first retry delay (seconds)"),
    Setting("alerting.retry_max", st.to_positive_float, 60.0, "longest retry delay (seconds)"),
    Setting("alerting.bearer_token", st.to_str, None, "bearer token for Alertmanager", secret=True),
    Setting("alerting.bearer_token_file", st.to_optional_path, None, "file with the bearer token"),
    Setting("alerting.basic_auth.username", st.to_str, None, "basic auth user for Alertmanager"),
    Setting("alerting.basic_auth.password", st.to_str, None, "basic auth password", secret=True),
    Setting("alerting.basic_auth.password_file", st.to_optional_path, None, "password file"),
    Setting("alerting.tls.ca_file", st.to_optional_path, None, "CA bundle for Alertmanager TLS"),
    Setting("alerting.tls.cert_file", st.to_optional_path, None, "client certificate"),
    Setting("alerting.tls.key_file", st.to_optional_path, None, "client certificate key"),
    Setting(
        "alerting.tls.insecure_skip_verify",
        st.to_bool,
        False,
        "do not verify Alertmanager's certificate",
        is_bool=True,
    ),
    Setting("alerting.external_url", st.to_str, "", "the analyzer's URL (alerts' generatorURL)"),
    Setting("alerting.runbook_url", st.to_str, None, "runbook URL template, e.g. .../{alertname}"),
    Setting("alerting.dashboard_url", st.to_str, None, "dashboard URL template ({instance})"),
    Setting("alerting.alert_log", st.to_optional_path, None, "JSON-lines alert log file"),
)


def alerting_config_from(values: Mapping[str, Any], state_dir: Path) -> AlertingConfig:
    """Build the config from :func:`dcwatch.settings.resolve` values of
    :data:`ALERTING_SETTINGS`."""

    def v(name: str) -> Any:
        return values.get("alerting." + name, _DEFAULTS["alerting." + name])

    return AlertingConfig(
        alertmanagers=tuple(v("alertmanagers")),
        timeout=v("timeout"),
        resend_interval=v("resend_interval"),
        ends_at_factor=v("ends_at_factor"),
        resolved_resends=v("resolved_resends"),
        state_dir=state_dir,
        queue_max=v("queue_max"),
        retry_initial=v("retry_initial"),
        retry_max=v("retry_max"),
        bearer_token=v("bearer_token"),
        bearer_token_file=v("bearer_token_file"),
        basic_auth_username=v("basic_auth.username"),
        basic_auth_password=v("basic_auth.password"),
        basic_auth_password_file=v("basic_auth.password_file"),
        tls_ca_file=v("tls.ca_file"),
        tls_cert_file=v("tls.cert_file"),
        tls_key_file=v("tls.key_file"),
        tls_insecure_skip_verify=v("tls.insecure_skip_verify"),
        external_url=v("external_url"),
        runbook_url=v("runbook_url"),
        dashboard_url=v("dashboard_url"),
        alert_log=v("alert_log"),
    )


_DEFAULTS = {s.key: s.default for s in ALERTING_SETTINGS}


@dataclass(frozen=True)
class Contributor:
    """One metric that drove an alert: what was observed and what the model expected."""

    metric: str
    value: float
    expected: float | None = None
    spread: float | None = None  # the scale of "normal" around expected (e.g. a robust std)

    def __str__(self) -> str:
        text = f"{self.metric}={fmt_number(self.value)}"
        if self.expected is not None:
            text += f" (expected {fmt_number(self.expected)}"
            if self.spread is not None:
                text += f"±{fmt_number(self.spread)}"
            text += ")"
        return text


def fmt_number(v: float) -> str:
    """Short human form: 91.2, 0.0042, 1.25e+09."""
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a == 0 or 0.1 <= a < 1e6:
        return f"{v:.1f}"
    return f"{v:.3g}"


@dataclass(frozen=True)
class Alert:
    """What the analyzer asserts: labels (the identity) and annotations (the explanation)."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    generator_url: str = ""

    def __post_init__(self) -> None:
        if not self.labels.get("alertname"):
            raise ValueError("an alert needs an alertname label")
        for name in (*self.labels, *self.annotations):
            if not LABEL_NAME.match(name):
                raise ValueError(f"invalid label/annotation name {name!r}")
        for name, value in self.labels.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"label {name} must be a non-empty string, got {value!r}")
        for name, value in self.annotations.items():
            if not isinstance(value, str):
                raise ValueError(f"annotation {name} must be a string, got {value!r}")

    @cached_property  # asked for per held alert on every delivery round: hash once
    def key(self) -> str:
        """Stable identity: a hash of the sorted label set (same labels, same alert)."""
        return alert_key(self.labels)

    @property
    def name(self) -> str:
        return self.labels["alertname"]


def alert_key(labels: Mapping[str, str]) -> str:
    blob = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def render_template(template: str, labels: Mapping[str, str]) -> str:
    """``{label}`` placeholders filled with URL-quoted label values; missing labels are empty."""
    quoted = {k: urllib.parse.quote(v, safe="") for k, v in labels.items()}
    return template.format_map(_Blank(quoted))


def build_alert(
    config: AlertingConfig,
    *,
    alertname: str,
    severity: str,
    instance: str,
    summary: str,
    contributors: Iterable[Contributor] = (),
    score: float | None = None,
    description: str | None = None,
    gpu: str | None = None,
    device: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Alert:
    """An alert with dcwatch's labels and annotations (runbook/dashboard links from the config).

    ``description`` defaults to the contributors, most important first, e.g.
    ``gpu_temp_celsius=91.2 (expected 64.0±3.1), gpu_power_watts=412.0 (expected 250.0±20.0)``.
    Labels whose value is None or empty are left out (Alertmanager treats empty as absent).
    """
    lab = {"alertname": alertname, "severity": severity, "instance": instance}
    lab |= {"gpu": gpu or "", "device": device or ""}
    lab |= dict(labels or {})
    lab = {k: str(v) for k, v in lab.items() if v not in (None, "")}
    contrib = ", ".join(str(c) for c in contributors)
    ann = {"summary": summary}
    if description or contrib:
        ann["description"] = description or f"top contributors: {contrib}"
        if description and contrib:
            ann["description"] += f"; top contributors: {contrib}"
    if score is not None:
        ann["score"] = f"{score:.3f}"
    if config.runbook_url:
        ann["runbook_url"] = render_template(config.runbook_url, lab)
    if config.dashboard_url:
        ann["dashboard"] = render_template(config.dashboard_url, lab)
    ann |= dict(annotations or {})
    gen = config.external_url.rstrip("/")
    if gen:
        gen += "/node/" + urllib.parse.quote(instance, safe="")  # the node page explains it
    return Alert(lab, ann, gen)


@dataclass
class AlertRecord:
    """An alert as the sender holds it: fixed ``starts_at``, ``resolved_at`` once resolved."""

    alert: Alert
    starts_at: float  # unix seconds, set when it first fired, kept across resends and restarts
    resolved_at: float | None = None
    changed_at: float = 0.0  # last state change (fire, resolve): orders eviction when full
    version: int = 1  # bumped on every change that must reach Alertmanager

    @property
    def key(self) -> str:
        return self.alert.key

    @property
    def firing(self) -> bool:
        return self.resolved_at is None


def rfc3339(ts: float) -> str:
    """``2024-05-01T12:00:00.250Z``: RFC 3339 in UTC with milliseconds."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ends_at(record: AlertRecord, now: float, config: AlertingConfig) -> float:
    """Resolved: the resolve time. Firing: far enough ahead to survive a few missed resends."""
    if record.resolved_at is not None:
        return max(record.resolved_at, record.starts_at)
    return max(now, record.starts_at) + config.ends_at_factor * config.resend_interval


def alert_payload(record: AlertRecord, now: float, config: AlertingConfig) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body."""
    out: dict[str, Any] = {
        "labels": dict(record.alert.labels),
        "annotations": dict(record.alert.annotations),
        "startsAt": rfc3339(record.starts_at),
        "endsAt": rfc3339(ends_at(record, now, config)),
    }
    if record.alert.generator_url:
        out["generatorURL"] = record.alert.generator_url
    return out
