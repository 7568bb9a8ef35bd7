"""TLS and basic auth from a Prometheus exporter-toolkit ``web-config`` file.

The same file format as node_exporter's ``--web.config.file``, so existing files work:
``tls_server_config`` (cert_file, key_file, client_auth_type, client_ca_file, min_version) and
``basic_auth_users`` (user: bcrypt hash).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from dcwatch.settings import ConfigError, read_yaml_file

log = logging.getLogger("dcwatch.web")

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"


@dataclass(frozen=True)
class WebConfig:
    tls: TlsConfig | None = None
    basic_auth_users: dict[str, str] = field(default_factory=dict)
    # Built (and so checked) once when the file is read; what the server listens with.
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


def load_web_config(path: Path) -> WebConfig:
    """Parse and check a web-config file; errors name the key and the file."""
    data = read_yaml_file(path)

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"web config file {path}: key {key!r}: {msg}")

    known = {"tls_server_config", "basic_auth_users", "http_server_config"}
    for k in data:
        if k not in known:
            raise err(k, f"unknown key (known: {', '.join(sorted(known))})")
    tls = None
    t = data.get("tls_server_config")
    if t is not None:
        if not isinstance(t, dict):
            raise err("tls_server_config", "must be a mapping")
        for k in ("cert_file", "key_file"):
            if not t.get(k):
                raise err(f"tls_server_config.{k}", "required when TLS is configured")
        cat = t.get("client_auth_type", "NoClientCert")
        if cat not in _CLIENT_AUTH:
            raise err("tls_server_config.client_auth_type", f"one of {', '.join(_CLIENT_AUTH)}")
        mv = t.get("min_version", "TLS12")
        if mv not in _TLS_VERSIONS:
            raise err("tls_server_config.min_version", f"one of {', '.join(_TLS_VERSIONS)}")
        ca = t.get("client_ca_file")
        if cat in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not ca:
            raise err("tls_server_config.client_ca_file", f"required by {cat}")
        base = path.parent
        tls = TlsConfig(
            base / t["cert_file"], base / t["key_file"], cat, base / ca if ca else None, mv
        )
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise err("basic_auth_users", "must be a mapping of user: bcrypt-hash")
    for user, h in users.items():
        if not isinstance(h, str) or not h.startswith(("$2a$", "$2b$", "$2y$")):
            raise err(f"basic_auth_users.{user}", "must be a bcrypt hash ($2a$/$2b$/$2y$...)")
    # The TLS context is built here so a bad certificate fails start-up, not a connection.
    ctx = make_ssl_context(tls, path) if tls is not None else None
    return WebConfig(tls, {str(u): h for u, h in users.items()}, ctx)


def make_ssl_context(tls: TlsConfig | None, source: Path | str = "web config") -> ssl.SSLContext:
    assert tls is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file:
            ctx.load_verify_locations(tls.client_ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"web config file {source}: key 'tls_server_config': {e}") from None
    ctx.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    return ctx


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth_middleware(users: dict[str, str], open_paths: frozenset[str] = frozenset()):
    """401 unless the request carries a user/password matching one of the bcrypt hashes.

    bcrypt is slow on purpose (~50-250 ms); a verified (user, password) pair is remembered as a
    keyed digest so Prometheus' scrape every 15 s does not pay it each time. Passwords are never
    logged.
    """
    key = hashlib.sha256(repr(sorted(users.items())).encode()).digest()
    verified: set[bytes] = set()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        user, password = _credentials(request)
        if user is not None and user in users:
            token = hmac.new(key, f"{user}\0{password}".encode(), "sha256").digest()
            if token in verified:
                return await handler(request)
            ok = await asyncio.get_running_loop().run_in_executor(
                None, _checkpw, password or "", users[user]
            )
            if ok:
                if len(verified) > 1024:
                    verified.clear()
                verified.add(token)
                return await handler(request)
        log.info(
            "unauthorised request for %s from %s (user %r)", request.path, request.remote, user
        )
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="dcwatch"'})

    return middleware


def _checkpw(password: str, hashed: str) -> bool:
    import bcrypt  # only agents with basic auth pay for it

    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:
        return False


def _credentials(request: web.Request) -> tuple[str | None, str | None]:
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("basic "):
        return None, None
    try:
        raw = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else (None, None)
