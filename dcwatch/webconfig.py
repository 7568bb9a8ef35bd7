"""TLS, basic auth and response headers from a Prometheus exporter-toolkit ``web-config`` file.

The same file format as node_exporter's ``--web.config.file``, so existing files work:
``tls_server_config`` (cert_file, key_file, client_auth_type, client_ca_file, min_version,
max_version, cipher_suites, prefer_server_cipher_suites, curve_preferences),
``http_server_config`` (headers, http2) and ``basic_auth_users`` (user: bcrypt hash).
Anything dcwatch cannot honour is refused when the file is read, never silently ignored.
"""

from __future__ import annotations

import logging
import re
import ssl
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.typedefs import Middleware

from dcwatch import tlsnative
from dcwatch.settings import ConfigError, read_yaml_file
from dcwatch.webauth import basic_auth_middleware, headers_middleware

log = logging.getLogger("dcwatch.web")

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's client_auth_type -> (verify mode, verified against client_ca_file?)
_CLIENT_AUTH = {
    "NoClientCert": (ssl.CERT_NONE, False),
    "RequestClientCert": (ssl.CERT_OPTIONAL, False),
    "RequireAnyClientCert": (ssl.CERT_REQUIRED, False),
    "RequireClientCert": (ssl.CERT_REQUIRED, False),  # exporter-toolkit's old name for it
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, True),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, True),
}
# Go's TLS 1.0-1.2 cipher suite names (tls.CipherSuites() and tls.InsecureCipherSuites()).
_GO_CIPHERS = {
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# Go accepts these names too but, as OpenSSL does by default, always enables them for TLS 1.3.
_TLS13_CIPHERS = {
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
}
# Go curve name -> (OpenSSL group name, short name for SSLContext.set_ecdh_curve)
_CURVES = {
    "CurveP256": ("P-256", "prime256v1"),
    "CurveP384": ("P-384", "secp384r1"),
    "CurveP521": ("P-521", "secp521r1"),
    "X25519": ("X25519", "X25519"),
}
# The headers exporter-toolkit lets a web config set, and the values it allows (None: any).
_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
}
# exporter-toolkit keys dcwatch does not implement: refused by name rather than as "unknown".
_UNSUPPORTED = {
    "tls_server_config.cert": "inline certificates are not supported, use cert_file",
    "tls_server_config.key": "inline keys are not supported, use key_file",
    "tls_server_config.client_ca": "inline CAs are not supported, use client_ca_file",
    "tls_server_config.client_allowed_sans": "not supported by dcwatch",
    "rate_limit": "not supported by dcwatch",
}
_Err = Callable[[str, str], ConfigError]  # (key below tls_server_config, message)
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()  # Go names; empty: OpenSSL's defaults
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()  # Go names; empty: OpenSSL's defaults


@dataclass(frozen=True)
class WebConfig:
    tls: TlsConfig | None = None
    # user -> bcrypt hash; kept out of repr so a logged config never shows a hash.
    basic_auth_users: dict[str, str] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    # Built (and so checked) once when the file is read; what the server listens with.
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def middlewares(self, open_paths: Iterable[str] = ()) -> list[Middleware]:
        """The aiohttp middlewares this config asks for (headers outermost, then basic auth);
        ``open_paths`` are served without authentication (e.g. a liveness probe)."""
        out: list[Middleware] = []
        if self.headers:
            out.append(headers_middleware(self.headers))
        if self.basic_auth_users:
            out.append(basic_auth_middleware(self.basic_auth_users, frozenset(open_paths)))
        return out


class _Checker:
    """Typed access to the parsed YAML; every error names the file and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"web config file {self.path}: key {key!r}: {msg}")

    def mapping(self, value: Any, key: str, known: Iterable[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(key, "must be a mapping")
        for k in value:
            name = f"{key}.{k}" if key else str(k)
            if name in _UNSUPPORTED:
                raise self.err(name, _UNSUPPORTED[name])
            if known is not None and k not in known:
                raise self.err(name, f"unknown key (known: {', '.join(sorted(known))})")
        return value

    def string(self, value: Any, key: str, choices: Iterable[str] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(key, "must be a non-empty string")
        if choices is not None and value not in choices:
            raise self.err(key, f"must be one of {', '.join(choices)}")
        return value

    def strings(self, value: Any, key: str, choices: Iterable[str]) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.err(key, "must be a list of strings")
        return tuple(self.string(v, key, choices) for v in value)

    def boolean(self, value: Any, key: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.err(key, "must be true or false")
        return value


def load_web_config(path: Path) -> WebConfig:
    """Parse and check a web-config file, building its TLS context; errors name file and key."""
    try:
        data = read_yaml_file(path)
    except UnicodeDecodeError as e:  # a binary file: read_yaml_file only maps OSError/YAMLError
        raise ConfigError(f"web config file {path}: not UTF-8 text (byte {e.start})") from None
    except ConfigError as e:  # YAML's messages span lines; a start-up error is one line
        raise ConfigError(" ".join(str(e).split())) from None
    c = _Checker(path)
    c.mapping(data, "", {"tls_server_config", "http_server_config", "basic_auth_users"})
    tls = _tls_config(c, data.get("tls_server_config"), path.parent)
    headers = _http_config(c, data.get("http_server_config"))
    users = _users(c, data.get("basic_auth_users"))
    # The TLS context is built here so a bad certificate fails start-up, not a connection.
    ctx = make_ssl_context(tls, path) if tls is not None else None
    return WebConfig(tls, users, headers, ctx)


def _tls_config(c: _Checker, value: Any, base: Path) -> TlsConfig | None:
    if value is None:
        return None
    t = c.mapping(value, "tls_server_config", _TLS_KEYS)
    k = "tls_server_config."
    for name in ("cert_file", "key_file"):
        if t.get(name) is None:
            raise c.err(k + name, "required when TLS is configured")
    cert = c.string(t["cert_file"], k + "cert_file")
    key = c.string(t["key_file"], k + "key_file")
    auth = c.string(t.get("client_auth_type", "NoClientCert"), k + "client_auth_type", _CLIENT_AUTH)
    ca = t.get("client_ca_file")
    ca = c.string(ca, k + "client_ca_file") if ca is not None else None
    if ca is None and _CLIENT_AUTH[auth][1]:
        raise c.err(k + "client_ca_file", f"required by client_auth_type {auth}")
    if ca is not None and auth == "NoClientCert":  # as exporter-toolkit: a CA with no use
        raise c.err(k + "client_ca_file", "set but client_auth_type is NoClientCert")
    lo = c.string(t.get("min_version", "TLS12"), k + "min_version", _TLS_VERSIONS)
    hi = c.string(t.get("max_version", "TLS13"), k + "max_version", _TLS_VERSIONS)
    if _TLS_VERSIONS[lo] > _TLS_VERSIONS[hi]:
        raise c.err(k + "max_version", f"{hi} is below min_version {lo}")
    ciphers = c.strings(
        t.get("cipher_suites"), k + "cipher_suites", {*_GO_CIPHERS, *_TLS13_CIPHERS}
    )
    curves = c.strings(t.get("curve_preferences"), k + "curve_preferences", _CURVES)
    prefer = c.boolean(
        t.get("prefer_server_cipher_suites"), k + "prefer_server_cipher_suites", True
    )
    return TlsConfig(
        base / cert,
        base / key,
        auth,
        base / ca if ca is not None else None,
        lo,
        hi,
        ciphers,
        prefer,
        curves,
    )


def _http_config(c: _Checker, value: Any) -> dict[str, str]:
    h = c.mapping(value, "http_server_config", {"headers", "http2"})
    if c.boolean(h.get("http2"), "http_server_config.http2", True):
        log.debug("web config: http2 is accepted and ignored, dcwatch serves HTTP/1.1")
    headers: dict[str, str] = {}
    canonical = {name.lower(): name for name in _HEADERS}
    for name, v in c.mapping(h.get("headers"), "http_server_config.headers").items():
        key = f"http_server_config.headers.{name}"
        known = canonical.get(str(name).lower())
        if known is None:
            raise c.err(key, f"header not allowed (allowed: {', '.join(_HEADERS)})")
        v = c.string(v, key)
        allowed = _HEADERS[known]
        if allowed is not None and v.lower() not in allowed:
            raise c.err(key, f"must be one of {', '.join(allowed)}")
        if "\r" in v or "\n" in v:
            raise c.err(key, "must be one line")
        headers[known] = v
    return headers


def _users(c: _Checker, value: Any) -> dict[str, str]:
    if value is not None and not isinstance(value, dict):
        raise c.err("basic_auth_users", "must be a mapping of user: bcrypt-hash")
    users: dict[str, str] = {}
    for user, h in (value or {}).items():
        if not isinstance(user, (str, int)) or isinstance(user, bool) or str(user) == "":
            raise c.err("basic_auth_users", f"user name {user!r} must be a non-empty string")
        # The message never includes the value: it may be a password pasted by mistake.
        if not isinstance(h, str) or not _BCRYPT.fullmatch(h):
            raise c.err(
                f"basic_auth_users.{user}",
                "not a bcrypt hash ($2a$, $2b$ or $2y$, a cost 04-31, then 53 characters)",
            )
        users[str(user)] = h
    return users


def make_ssl_context(tls: TlsConfig, source: Path | str = "web config") -> ssl.SSLContext:
    """The server-side TLS context for ``tls``; errors name ``source`` and the key at fault."""

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"web config file {source}: key 'tls_server_config.{key}': {msg}")

    for key, p in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        _check_readable(p, key, err)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated, but the file asked for them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise err("key_file", f"{tls.key_file} is not the key of {tls.cert_file}") from None
        raise err(
            "cert_file", f"cannot load {tls.cert_file} / {tls.key_file}: {e.reason}"
        ) from None
    if tls.client_ca_file is not None:
        _check_readable(tls.client_ca_file, "client_ca_file", err)
        try:
            ctx.load_verify_locations(tls.client_ca_file)
        except ssl.SSLError as e:
            raise err("client_ca_file", f"cannot load {tls.client_ca_file}: {e.reason}") from None
    mode, verified = _CLIENT_AUTH[tls.client_auth_type]
    ctx.verify_mode = mode
    # Go accepts any client certificate here; Python's ssl always verifies what it asks for.
    unverified = mode != ssl.CERT_NONE and not verified
    if unverified and not tlsnative.accept_any_peer_certificate(ctx):
        raise err(
            "client_auth_type",
            f"{tls.client_auth_type} cannot be provided by this Python's ssl module; "
            "use RequireAndVerifyClientCert with client_ca_file",
        )
    _set_ciphers(tls, ctx, err)
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _set_curves(tls, ctx, err)
    return ctx


def _check_readable(p: Path, key: str, err: _Err) -> None:
    try:
        with p.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise err(key, f"cannot read {p}: {e.strerror or e}") from None


def _set_ciphers(tls: TlsConfig, ctx: ssl.SSLContext, err: _Err) -> None:
    wanted = [_GO_CIPHERS[n] for n in tls.cipher_suites if n in _GO_CIPHERS]
    if len(wanted) < len(tls.cipher_suites):
        log.debug("web config: TLS 1.3 cipher suites are always enabled, as in Go")
    if not wanted:
        return
    try:
        ctx.set_ciphers(":".join(wanted))
    except ssl.SSLError:
        raise err("cipher_suites", f"none is available in {ssl.OPENSSL_VERSION}") from None
    have = {c["name"] for c in ctx.get_ciphers()}
    missing = [n for n in tls.cipher_suites if n in _GO_CIPHERS and _GO_CIPHERS[n] not in have]
    if missing:
        raise err("cipher_suites", f"not available in {ssl.OPENSSL_VERSION}: {', '.join(missing)}")


def _set_curves(tls: TlsConfig, ctx: ssl.SSLContext, err: _Err) -> None:
    if len(tls.curve_preferences) == 1:
        ctx.set_ecdh_curve(_CURVES[tls.curve_preferences[0]][1])
    elif tls.curve_preferences:
        groups = ":".join(_CURVES[n][0] for n in tls.curve_preferences)
        if not tlsnative.set_groups(ctx, groups):
            raise err("curve_preferences", "this Python's ssl module can set only one curve")
