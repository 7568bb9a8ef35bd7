"""Minimal systemd notify protocol: READY=1, STOPPING=1 and watchdog pings (no dependency)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("dcwatch.sdnotify")


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` to ``$NOTIFY_SOCKET``; False when not run by systemd with Type=notify."""
    addr = (env or os.environ).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as e:
        log.warning("sd_notify(%s) failed: %s", state, e)
        return False


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if systemd asked for watchdog pings."""
    env = env or dict(os.environ)
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


async def watchdog_loop(interval: float) -> None:
    """Ping from the event loop itself: if the loop hangs, pings stop and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
