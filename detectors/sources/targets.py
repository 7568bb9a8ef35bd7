"""Scrape targets of the embedded source: URLs, their ``instance``, credentials and TLS.

A target is a URL (``host:port`` means ``http://host:port/metrics``) or, in the targets file, an
entry in the shape of a Prometheus scrape config::

    - n1:9478                                   # plain
    - url: https://n2:9478/metrics
      basic_auth: {username: dcwatch, password_file: /etc/dcwatch/n2.pw}
      tls_config: {ca_file: ca.pem, server_name: n2.example}
    - url: https://n3:9478/metrics
      bearer_token_file: /run/secrets/token

or ``{defaults: {...}, targets: [...]}`` where ``defaults`` applies to entries that set nothing
of their own. Secrets come from files, read when they change (tokens rotate); an inline
``password`` or ``bearer_token`` is refused. Userinfo in a URL (``http://u:p@host/``) is used as
basic auth and stripped from the target's name, its ``instance`` and every log line.
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

from dcwatch.urls import redact_url

AUTH_KEYS = ("basic_auth", "bearer_token_file", "tls_config")
_TLS_KEYS = ("ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify")


@dataclass(frozen=True)
class TLSConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class Target:
    """One target. ``url`` carries no credentials: it names the target in labels and logs."""

    url: str
    username: str = ""
    password: str = field(default="", repr=False)  # only from a URL's userinfo
    password_file: Path | None = None
    bearer_token_file: Path | None = None
    tls: TLSConfig | None = None

    @property
    def instance(self) -> str:
        return instance_of(self.url)

    @property
    def has_url_credentials(self) -> bool:
        return bool(self.username and not self.password_file)


def target_url(target: str) -> str:
    """``host:port`` -> ``http://host:port/metrics``; a URL without a path gets ``/metrics``
    (before its query, if it has one)."""
    t = target.strip()
    if "://" not in t:
        t = "http://" + t
    parts = urlsplit(t)
    if not parts.hostname:
        raise ValueError(f"bad target {redact_url(target)!r}")
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"target {redact_url(t)!r}: scheme must be http or https")
    return t if parts.path not in ("", "/") else urlunsplit(parts._replace(path="/metrics"))


def instance_of(url: str) -> str:
    """Prometheus' ``instance`` for a target URL: its ``host:port``, followed by the path (and
    query) when that is not the plain ``/metrics``, so two targets on one port stay distinct."""
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    host = p.hostname or ""
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if p.path in ("", "/", "/metrics") and not p.query:
        return hp
    return hp + p.path + (f"?{p.query}" if p.query else "")


def parse_target(spec: str | Mapping[str, Any], base: Path | None = None) -> Target:
    """A target from a URL or a targets-file entry; relative files are taken from ``base``."""
    if isinstance(spec, str):
        return _from_url(target_url(spec))
    if not isinstance(spec, Mapping):
        raise ValueError(f"a target must be a URL or a mapping, got {type(spec).__name__}")
    ba = spec.get("basic_auth")
    if "bearer_token" in spec or (isinstance(ba, Mapping) and "password" in ba):
        raise ValueError(
            "inline secrets are refused (they would sit in a world-readable file and in "
            "backups): put the secret in a file of its own and give bearer_token_file / "
            "basic_auth.password_file"
        )
    unknown = set(spec) - {"url", *AUTH_KEYS}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in a target entry")
    url = spec.get("url")
    if not isinstance(url, str):
        raise ValueError("a target entry needs 'url: <URL>'")
    t = _from_url(target_url(url))
    name = redact_url(url)
    token = spec.get("bearer_token_file")
    if ba is not None and token is not None:
        raise ValueError(f"target {name}: basic_auth and bearer_token_file are exclusive")
    if ba is not None:
        if t.username:
            raise ValueError(f"target {name}: credentials both in the URL and in basic_auth")
        if not isinstance(ba, Mapping) or set(ba) - {"username", "password_file"}:
            raise ValueError(f"target {name}: basic_auth takes username and password_file")
        user = ba.get("username")
        if not isinstance(user, str) or not user:
            raise ValueError(f"target {name}: basic_auth needs a username")
        t = replace(t, username=user, password_file=_path(ba.get("password_file"), base))
    if token is not None:
        t = replace(t, bearer_token_file=_path(token, base))
    tls = spec.get("tls_config")
    if tls is not None:
        t = replace(t, tls=_tls(tls, base, name))
    return t


def _from_url(url: str) -> Target:
    p = urlsplit(url)
    if p.username is None and p.password is None:
        return Target(url)
    return Target(redact_url(url), unquote(p.username or ""), unquote(p.password or ""))


def _path(v: Any, base: Path | None) -> Path:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a file path, got {v!r}")
    p = Path(v).expanduser()
    return p if p.is_absolute() or base is None else base / p


def _tls(v: Any, base: Path | None, name: str) -> TLSConfig:
    if not isinstance(v, Mapping) or set(v) - set(_TLS_KEYS):
        raise ValueError(f"target {name}: tls_config takes {', '.join(_TLS_KEYS)}")
    files = {k: _path(v[k], base) for k in ("ca_file", "cert_file", "key_file") if v.get(k)}
    if ("cert_file" in files) != ("key_file" in files):
        raise ValueError(f"target {name}: tls_config needs both cert_file and key_file")
    skip = v.get("insecure_skip_verify", False)
    server = v.get("server_name", "")
    if not isinstance(skip, bool) or not isinstance(server, str):
        raise ValueError(f"target {name}: bad tls_config value")
    return TLSConfig(**files, server_name=server, insecure_skip_verify=skip)


def parse_targets(text: str, base: Path | None = None) -> list[Target]:
    """A targets file: one URL per line (``#`` comments), a YAML list of URLs and entries, or
    ``{defaults: {...}, targets: [...]}``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    defaults: Mapping[str, Any] = {}
    if isinstance(data, Mapping) and "targets" in data:
        if set(data) - {"targets", "defaults"}:
            raise ValueError("a targets mapping takes 'targets' and 'defaults' only")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, Mapping) or set(defaults) - set(AUTH_KEYS):
            raise ValueError(f"'defaults' takes {', '.join(AUTH_KEYS)}")
        data = data["targets"]
        if not isinstance(data, list):
            raise ValueError("'targets' must be a list")
    if isinstance(data, list):
        out = []
        for i, entry in enumerate(data, 1):
            if defaults and isinstance(entry, str):
                entry = {"url": entry}
            if defaults and isinstance(entry, Mapping) and not set(entry) & set(AUTH_KEYS):
                entry = {**defaults, **entry}
            try:
                out.append(parse_target(entry, base))
            except ValueError as e:
                raise ValueError(f"entry {i}: {e}") from None
        return out
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [parse_target(t) for t in lines if t]


def parse_targets_file(text: str) -> list[str]:
    """The targets' URLs (without credentials) of a targets file; raises on a bad entry."""
    return [t.url for t in parse_targets(text)]


class Secrets:
    """Reads credential files when they change (a rotated token is picked up at the next
    scrape) and builds each TLS config's SSL context once per change of its files."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[tuple[int, int], str]] = {}
        self._ssl: dict[TLSConfig, tuple[tuple[tuple[int, int], ...], ssl.SSLContext]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size

    def read(self, path: Path) -> str:
        """The file's content without its trailing newline; OSError when it is unreadable."""
        stamp = self._stamp(path)
        hit = self._files.get(path)
        if hit is None or hit[0] != stamp:
            text = path.read_text(encoding="utf-8").rstrip("\r\n")
            hit = self._files[path] = (stamp, text)
        return hit[1]

    def headers(self, t: Target) -> dict[str, str]:
        """The Authorization header of ``t`` ({} without credentials)."""
        if t.bearer_token_file is not None:
            return {"Authorization": "Bearer " + self.read(t.bearer_token_file)}
        if t.username:
            pw = self.read(t.password_file) if t.password_file is not None else t.password
            cred = base64.b64encode(f"{t.username}:{pw}".encode()).decode("ascii")
            return {"Authorization": "Basic " + cred}
        return {}

    def ssl_context(self, tls: TLSConfig) -> ssl.SSLContext:
        files = [f for f in (tls.ca_file, tls.cert_file, tls.key_file) if f is not None]
        stamps = tuple(self._stamp(f) for f in files)
        hit = self._ssl.get(tls)
        if hit is not None and hit[0] == stamps:
            return hit[1]
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self._ssl[tls] = (stamps, ctx)
        return ctx
