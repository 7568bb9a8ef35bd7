"""HTTP middlewares for a web config: extra response headers, and basic auth against bcrypt.

Usable by any aiohttp app; :meth:`dcwatch.webconfig.WebConfig.middlewares` builds them from a file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger("dcwatch.web")


def headers_middleware(headers: Mapping[str, str]) -> Middleware:
    """Add ``headers`` to every response (errors included) unless the handler set them."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            for k, v in headers.items():
                e.headers.setdefault(k, v)
            raise
        if not response.prepared:
            for k, v in headers.items():
                response.headers.setdefault(k, v)
        return response

    return middleware


def basic_auth_middleware(
    users: Mapping[str, str],
    open_paths: frozenset[str] = frozenset(),
    *,
    workers: int = 2,
    queue: int = 8,
    cache_size: int = 256,
) -> Middleware:
    """401 unless the request carries a user/password matching one of the bcrypt hashes.

    bcrypt is slow on purpose (~50-250 ms): it runs on ``workers`` threads of its own, and over
    ``workers + queue`` checks in flight a request is answered 429 at once, so a flood of wrong
    passwords neither stalls the event loop nor starves the collectors' threads. An unknown user
    is checked against a dummy hash of the highest configured cost, so timing does not tell
    which users exist. A verified pair is remembered as a keyed digest (never the password; at
    most ``cache_size``, least recently used dropped) so each scrape does not pay bcrypt.
    """
    key = os.urandom(32)
    accounts = [(_digest(u), h) for u, h in users.items()]
    # Hashes are checked when the file is read; here only their cost is needed ("$2b$10$...").
    cost = max((int(h[4:6]) for h in users.values() if h[4:6].isdigit()), default=10)
    dummy = _dummy_hash(cost)
    verified: OrderedDict[bytes, None] = OrderedDict()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dcwatch-bcrypt")
    slots = threading.BoundedSemaphore(workers + queue)  # released from the worker thread

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        user, password = _credentials(request)
        if user is not None and password is not None:
            u, p = user.encode(), password.encode()
            token = hmac.new(key, len(u).to_bytes(4, "big") + u + p, "sha256").digest()
            if token in verified:
                verified.move_to_end(token)
                return await handler(request)
            hashed = _find(accounts, user)
            if not slots.acquire(blocking=False):
                log.info("basic auth busy, %s answered 429", request.remote)
                raise web.HTTPTooManyRequests(headers={"Retry-After": "1"})
            job: Future[bool] = pool.submit(_checkpw, p, hashed or dummy)
            job.add_done_callback(lambda _: slots.release())
            if await asyncio.wrap_future(job) and hashed is not None:
                verified[token] = None
                if len(verified) > cache_size:
                    verified.popitem(last=False)
                return await handler(request)
        log.info(
            "unauthorised request for %s from %s (user %r)", request.path, request.remote, user
        )
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="dcwatch"'})

    return middleware


def _digest(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()


def _find(accounts: list[tuple[bytes, str]], user: str) -> str | None:
    """The user's hash, comparing against every name in constant time."""
    d = _digest(user)
    found = None
    for name, hashed in accounts:
        if hmac.compare_digest(name, d):
            found = hashed
    return found


def _dummy_hash(cost: int) -> str:
    """A well-formed hash no password matches in practice, costing ``cost`` to check."""
    import bcrypt

    return bcrypt.gensalt(cost).decode() + "." * 31


def _checkpw(password: bytes, hashed: str) -> bool:
    import bcrypt  # only agents with basic auth pay for it

    try:
        return bcrypt.checkpw(password, hashed.encode())
    except ValueError:  # e.g. bcrypt 5 refuses passwords over 72 bytes
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
