"""``dcwatch analyzer``: parse config, serve the app until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from agent import sdnotify
from agent.settings import ConfigError
from detectors.app import make_app
from detectors.config import AnalyzerConfig, build_parser, config_from_args

log = logging.getLogger("dcwatch.analyzer")


class ListenError(OSError):
    """The analyzer's port cannot be bound."""


async def serve(cfg: AnalyzerConfig) -> None:
    runner = web.AppRunner(make_app(cfg), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = cfg.listen
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {host}:{port}: {e}") from None
    log.info("dcwatch analyzer listening on http://%s:%d (config: %s)", host, port, cfg.source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sdnotify.notify("READY=1")
    wd = sdnotify.watchdog_interval()
    wd_task = asyncio.create_task(sdnotify.watchdog_loop(wd)) if wd else None
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    if wd_task:
        wd_task.cancel()
    await runner.cleanup()


def main(argv: Sequence[str]) -> int:
    import os

    args = build_parser().parse_args(list(argv))
    try:
        cfg = config_from_args(args, os.environ)
    except ConfigError as e:
        print(f"dcwatch analyzer: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(cfg))
    except ListenError as e:
        log.error("%s", e)
        return 1
    return 0
