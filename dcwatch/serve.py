"""Serving an aiohttp app as a daemon: bind, tell systemd, ping its watchdog, stop on SIGTERM.

Shared by ``dcwatch agent`` and ``dcwatch analyzer``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dcwatch import sdnotify

log = logging.getLogger("dcwatch")


class _OneLineFormatter(logging.Formatter):
    """Messages on one line: a newline inside a value (a target's label, a URL, a peer's input)
    is escaped, so no input can forge or split a log line. Tracebacks stay multi-line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line.replace("\r", "\\r").replace("\n", "\\n")


class _BadRequestFilter(logging.Filter):
    """aiohttp logs every malformed request (a port scan, TLS on the HTTP port, a 20 KB URL) as an
    error with a 15-line traceback. Make that one warning line, at most one per ``interval``
    seconds with the count of those held back: the 400 answer already went to the peer."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -float("inf")
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return False
        held, self._held, self._last = self._held, 0, now
        code = getattr(exc, "code", 400)
        record.msg = "malformed HTTP request answered %s (%s)%s"
        record.args = (code, type(exc).__name__, f"; {held} more since the last" if held else "")
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def setup_logging(level: str) -> None:
    """Plain, greppable lines on stderr (journald and kubectl logs add the timestamps' context)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_BadRequestFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


class ListenError(OSError):
    """The port cannot be bound (in use, no permission)."""


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    name: str,
    ssl_context: ssl.SSLContext | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT, then clean up."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()  # closes the app's cleanup contexts that did start
        raise
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {host}:{port}: {e}") from None
    log.info("%s listening on %s://%s:%d", name, "https" if ssl_context else "http", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready()
    sdnotify.notify("READY=1")
    wd = sdnotify.watchdog_interval()
    wd_task = asyncio.create_task(sdnotify.watchdog_loop(wd)) if wd else None
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    if wd_task:
        wd_task.cancel()
    await runner.cleanup()
    log.info("%s stopped", name)
