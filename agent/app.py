"""The agent's HTTP application: ``/metrics``, ``/healthz`` and ``/``."""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from dcwatch.agent.config import AgentConfig
from dcwatch.agent.registry import CollectorRunner, build_collectors
from dcwatch.exporters.base import Collector, CollectorDeps
from dcwatch.exposition import metrics_response

if TYPE_CHECKING:
    from dcwatch.webconfig import WebConfig

log = logging.getLogger("dcwatch.agent")

RUNNER = web.AppKey("runner", CollectorRunner)
CONFIG = web.AppKey("config", AgentConfig)
STARTED = web.AppKey("started", float)


async def metrics_handler(request: web.Request) -> web.Response:
    return metrics_response(request, await request.app[RUNNER].scrape())


def _status(app: web.Application) -> dict[str, object]:
    runner = app[RUNNER]
    failing = runner.failing()
    return {
        "status": "degraded" if failing else "ok",
        "collectors": len(runner.collectors),
        "failing": failing,
        "uptime_seconds": round(time.time() - app[STARTED], 1),
    }


async def healthz_handler(request: web.Request) -> web.Response:
    # 200 even when degraded: the process serves; which collectors fail is in the body/metrics.
    return web.Response(
        text=json.dumps(_status(request.app)) + "\n", content_type="application/json"
    )


async def index_handler(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    rows = []
    for c in runner.collectors:
        st = runner.state[c.name]
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.last_success))
            if st.last_success
            else "never"
        )
        state = "no hardware" if st.no_data else ("ok" if st.ok else (st.last_error or "not run"))
        rows.append(
            f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(state)}</td>"
            f"<td>{when}</td><td>{st.duration * 1000:.1f} ms</td></tr>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>dcwatch agent</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em 1em;text-align:left}"
        "</style></head><body><h1>dcwatch agent</h1><p><a href='/metrics'>/metrics</a> · "
        "<a href='/healthz'>/healthz</a></p><table><tr><th>collector</th><th>state</th>"
        f"<th>last success</th><th>last duration</th></tr>{''.join(rows)}</table></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


def make_app(
    config: AgentConfig,
    *,
    collectors: Sequence[Collector] | None = None,
    deps: CollectorDeps | None = None,
    web_config: WebConfig | None = None,
) -> web.Application:
    """Build the agent app. ``collectors``/``deps`` let tests inject fakes (e.g. a fake NVML);
    ``web_config`` is the already-read web config (else read from ``config.web_config``)."""
    if web_config is None and config.web_config is not None:
        from dcwatch.webconfig import load_web_config  # only when used (~2 MiB)

        web_config = load_web_config(config.web_config)
    middlewares = web_config.middlewares() if web_config is not None else []
    app = web.Application(middlewares=middlewares)
    app[CONFIG] = config
    app[STARTED] = time.time()

    async def runner_ctx(app: web.Application) -> AsyncIterator[None]:
        cs = list(collectors) if collectors is not None else build_collectors(config, deps)
        app[RUNNER] = CollectorRunner(cs, config.collector_timeout)
        log.info("collectors enabled: %s", ", ".join(c.name for c in cs) or "none")
        yield
        app[RUNNER].close()

    app.cleanup_ctx.append(runner_ctx)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/", index_handler)
    return app
