"""``dcwatch agent``: parse config, build the app, serve until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dcwatch.agent.app import make_app
from dcwatch.agent.config import AgentConfig, build_parser, config_from_args
from dcwatch.exporters.base import CollectorDeps
from dcwatch.exporters.gpu import simulated
from dcwatch.serve import ListenError, serve_app, setup_logging
from dcwatch.settings import ConfigError

if TYPE_CHECKING:
    from dcwatch.webconfig import WebConfig

log = logging.getLogger("dcwatch.agent")


async def serve(config: AgentConfig, web: WebConfig | None) -> None:
    ssl_ctx = web.ssl_context if web is not None else None
    host, port = config.listen
    log.info("config: %s", config.source)
    sim = simulated.from_env(os.environ)  # ``dcwatch demo``: simulated GPUs, never otherwise
    await serve_app(
        make_app(config, web_config=web, deps=CollectorDeps(nvml=sim) if sim else None),
        host,
        port,
        name="dcwatch agent",
        ssl_context=ssl_ctx,
        on_ready=_release_startup_memory,
    )


def _release_startup_memory() -> None:
    """Return the heap that imports and set-up left free to the OS (glibc only).

    Start-up allocates and frees a few MiB of temporaries; without a trim they stay in the
    agent's resident set for its whole life.
    """
    import ctypes
    import gc

    gc.collect()
    gc.freeze()  # long-lived objects: later collections skip them
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = build_parser(parser).parse_args(argv)
    try:
        config = config_from_args(args, os.environ)
        web = None
        if config.web_config is not None:
            # imported only when used: TLS and bcrypt cost the agent ~2 MiB of RSS
            from dcwatch.webconfig import load_web_config

            web = load_web_config(config.web_config)
    except ConfigError as e:
        print(f"dcwatch agent: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config, web))
    except ListenError as e:
        log.error("%s", e)
        return 1
    _exit_if_reads_hang()
    return 0


def _exit_if_reads_hang(grace: float = 2.0) -> None:
    """Stop now even if a hardware read (an NVML call, a driver ioctl) never returns.

    Python joins non-daemon threads at exit, so one thread stuck in the kernel would keep a
    stopped agent alive for ever. Give them ``grace`` seconds, then leave without joining.
    """
    deadline = time.monotonic() + grace
    stuck = []
    for t in threading.enumerate():
        if t is threading.main_thread() or t.daemon:
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            stuck.append(t.name)
    if stuck:
        log.warning("exiting with %d read(s) still blocked: %s", len(stuck), ", ".join(stuck))
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
