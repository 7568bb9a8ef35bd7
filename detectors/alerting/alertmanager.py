"""One Alertmanager as the sender sees it: endpoint, credentials, TLS, and what it has received.

:class:`~dcwatch.detectors.alerting.sender.AlertSender` keeps one :class:`AlertmanagerClient` per
configured URL, so each member of an HA pair has its own delivery state and backoff.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from dcwatch.detectors.alerting.alerts import AlertingConfig


class Backoff:
    """Exponential backoff with jitter: ``initial * factor**(n-1)``, capped, minus up to jitter."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.rng = rng

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (>= 1)."""
        exp = min(max(failures, 1) - 1, 64)  # the cap is reached long before; no float overflow
        base = min(self.maximum, self.initial * self.factor**exp)
        return base * (1.0 - self.jitter * self.rng())


@dataclass
class Delivery:
    """What one Alertmanager has of one alert."""

    version: int = 0  # the alert version it last accepted
    last_sent: float = -math.inf  # monotonic time of that delivery
    resolved_sent: int = 0  # deliveries of the resolved state


@dataclass
class DeliveryStats:
    """Counters of one destination (an Alertmanager, or ``log`` for the JSON-lines file)."""

    name: str
    sent: int = 0  # alert states delivered
    failed: int = 0  # alert states in failed attempts (each retry counts again)
    dropped: int = 0  # alert states given up on
    queued: int = 0  # alerts whose state this destination still has to get
    last_success: float | None = None  # unix time
    up: bool | None = None  # None: not tried yet
    retry_in: float | None = None  # seconds, while backing off


class AlertmanagerClient:
    """``POST /api/v2/alerts`` to one Alertmanager, and that Alertmanager's delivery state."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        u = URL(base_url)
        self.headers = dict(headers or {})
        if u.user:  # credentials in the URL win over the configured ones
            self.headers["Authorization"] = basic_auth(u.user, u.password or "")
        u = u.with_user(None).with_query(None).with_fragment(None)
        self.name = str(u).rstrip("/")  # no credentials: safe in logs and metric labels
        self.url = str(u.with_path(u.path.rstrip("/") + "/api/v2/alerts"))
        self.ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.deliveries: dict[str, Delivery] = {}
        self.stats = DeliveryStats(self.name)
        self.failures = 0  # consecutive
        self.last_error = ""  # what the last failed POST ran into (no credentials in it)
        self.retry_at = 0.0  # monotonic; no attempt before
        self.resync = True  # send every held alert next time: at start and after a failure
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AlertmanagerClient({self.name})"

    async def post(
        self, session: aiohttp.ClientSession, alerts: list[dict[str, Any]], timeout: float
    ) -> tuple[int | None, str]:
        """POST the alerts; returns (HTTP status or None when no answer came, what went wrong)."""
        try:
            async with session.post(
                self.url,
                json=alerts,
                headers=self.headers,
                ssl=self.ssl,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if 200 <= resp.status < 300:
                    return resp.status, ""
                body = (await resp.text(errors="replace"))[:300].strip()
                return resp.status, f"answered HTTP {resp.status}: {body}"
        except asyncio.TimeoutError:
            return None, f"did not answer within {timeout:g}s"
        except aiohttp.ClientError as e:
            return None, f"unreachable ({type(e).__name__}: {e})"


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def clients_from_config(config: AlertingConfig) -> list[AlertmanagerClient]:
    """One client per configured URL; reads token and password files (errors raise: at start)."""
    headers: dict[str, str] = {}
    token = config.bearer_token
    if config.bearer_token_file:
        token = config.bearer_token_file.read_text().strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if config.basic_auth_username:
        password = config.basic_auth_password or ""
        if config.basic_auth_password_file:
            password = config.basic_auth_password_file.read_text().strip()
        headers["Authorization"] = basic_auth(config.basic_auth_username, password)
    ctx = None
    if config.tls_ca_file or config.tls_cert_file or config.tls_insecure_skip_verify:
        ctx = ssl.create_default_context(cafile=config.tls_ca_file)
        if config.tls_insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if config.tls_cert_file:
            ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return [
        AlertmanagerClient(url, headers=headers, ssl_context=ctx) for url in config.alertmanagers
    ]
