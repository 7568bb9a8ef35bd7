"""``dcwatch agent``: parse config, build the app, serve until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from agent.app import make_app
from agent.config import AgentConfig, build_parser, config_from_args
from agent.lifecycle import ListenError, serve_app
from agent.settings import ConfigError
from agent.webconfig import load_web_config, make_ssl_context

log = logging.getLogger("dcwatch.agent")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(config: AgentConfig) -> None:
    ssl_ctx = None
    if config.web_config is not None:
        wc = load_web_config(config.web_config)
        if wc.tls is not None:
            ssl_ctx = make_ssl_context(wc.tls, config.web_config)
    host, port = config.listen
    log.info("config: %s", config.source)
    await serve_app(
        make_app(config),
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
        if config.web_config is not None:
            load_web_config(config.web_config)
    except ConfigError as e:
        print(f"dcwatch agent: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except ListenError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
