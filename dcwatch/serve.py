"""Serving an aiohttp app as a daemon: bind, tell systemd, ping its watchdog, stop on SIGTERM.

Shared by ``dcwatch agent`` and ``dcwatch analyzer``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Callable

from aiohttp import web

from dcwatch import sdnotify

log = logging.getLogger("dcwatch")


def setup_logging(level: str) -> None:
    """Plain, greppable lines on stderr (journald and kubectl logs add the timestamps' context)."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
    await runner.setup()
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
