"""``dcwatch analyzer``: parse config, serve the app until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from dcwatch.detectors.config import AnalyzerConfig, build_parser, config_from_args
from dcwatch.detectors.web.app import make_app
from dcwatch.serve import ListenError, serve_app, setup_logging
from dcwatch.settings import ConfigError
from dcwatch.webconfig import WebConfig, load_web_config

log = logging.getLogger("dcwatch.analyzer")


async def serve(cfg: AnalyzerConfig, web: WebConfig | None = None) -> None:
    log.info("config: %s", cfg.source)
    await serve_app(
        make_app(cfg, web_config=web),
        *cfg.listen,
        name="dcwatch analyzer",
        ssl_context=web.ssl_context if web is not None else None,
    )


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        cfg = config_from_args(args, os.environ)
        web = load_web_config(cfg.web_config) if cfg.web_config is not None else None
    except ConfigError as e:
        print(f"dcwatch analyzer: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    try:
        asyncio.run(serve(cfg, web))
    except ListenError as e:
        log.error("%s", e)
        return 1
    return 0
