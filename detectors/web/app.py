"""The analyzer's HTTP application: ``/`` overview, ``/metrics``, ``/healthz``, ``/api/...``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from dcwatch.detectors.alerting.sender import AlertSender
from dcwatch.detectors.capacity.planner import CapacityPlanner
from dcwatch.detectors.capacity.rules import CapacityRule, parse_rules
from dcwatch.detectors.config import AnalyzerConfig
from dcwatch.detectors.models.fitting import FitBackend
from dcwatch.detectors.service import Analyzer
from dcwatch.detectors.sources.base import Source
from dcwatch.detectors.sources.queries import NamedQuery, load_queries, needed_metrics
from dcwatch.detectors.web.metrics import analyzer_families
from dcwatch.detectors.web.page import render_overview
from dcwatch.exposition import metrics_response

log = logging.getLogger("dcwatch.analyzer")

SOURCE: web.AppKey[Source] = web.AppKey("source")
SENDER = web.AppKey("sender", AlertSender)
BACKEND = web.AppKey("backend", FitBackend)
ANALYZER = web.AppKey("analyzer", Analyzer)
STARTED = web.AppKey("started", float)
PLANNER = web.AppKey("planner", CapacityPlanner)


def make_source(cfg: AnalyzerConfig, extra: Sequence[NamedQuery] = ()) -> Source:
    """The configured source; ``extra`` queries (capacity rules') are evaluated on their own
    but the embedded store must keep their metrics too."""
    queries = load_queries(cfg.queries_file)
    if cfg.prometheus is not None:
        from dcwatch.detectors.sources.prometheus import PrometheusSource

        return PrometheusSource(cfg.prometheus, queries)
    from dcwatch.detectors.sources.scraper import EmbeddedSource

    embedded = cfg.embedded
    if not embedded.metrics and extra:
        names = sorted(needed_metrics(queries) | needed_metrics(extra))
        embedded = dataclasses.replace(embedded, metrics=tuple(re.escape(n) for n in names))
    return EmbeddedSource(embedded, queries)


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait until it has stopped (a loop that died of an error
    is logged here, so what it leaves open still gets closed)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("background task %s had failed", task.get_name())


def make_app(
    cfg: AnalyzerConfig, *, source: Source | None = None, run_loop: bool = True
) -> web.Application:
    """Build the analyzer app; tests may pass their own ``source`` or drive passes by hand.

    Each resource is its own cleanup context, started in order (source, alert sender, fit
    backend, analyzer and its scoring loop, capacity planner and its loop) and closed in reverse:
    when one fails to start, those already started are closed by ``runner.cleanup()``.

    Raises ConfigError for a malformed capacity rule, before anything starts."""
    app = web.Application()
    app[STARTED] = time.time()
    rules: tuple[CapacityRule, ...] = parse_rules(cfg.capacity_rules)

    # Each context closes its resource in ``finally``: also when its own start fails half way
    # (every close is safe after a partial start), before the error reaches the runner.
    async def source_ctx(app: web.Application) -> AsyncIterator[None]:
        src = source or make_source(cfg, [q for r in rules for q in r.queries()])
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            await src.start()
            app[SOURCE] = src
            yield
        finally:
            await src.close()

    async def sender_ctx(app: web.Application) -> AsyncIterator[None]:
        sender = AlertSender(cfg.alerting)
        try:
            await sender.start()
            app[SENDER] = sender
            yield
        finally:
            await sender.stop()

    async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
        backend = FitBackend(cfg.model.workers, cfg.model.dask_scheduler)
        try:
            await backend.start()
            app[BACKEND] = backend
            yield
        finally:
            await backend.close()

    async def analyzer_ctx(app: web.Application) -> AsyncIterator[None]:
        analyzer = Analyzer(cfg, app[SOURCE], app[SENDER], backend=app[BACKEND])
        loop_task = None
        try:
            await analyzer.start()
            app[ANALYZER] = analyzer
            log.info(
                "analyzer up: %s source, %d alertmanager(s), state in %s",
                cfg.mode,
                len(cfg.alerting.alertmanagers),
                cfg.state_dir,
            )
            loop_task = (
                asyncio.create_task(analyzer.run(), name="dcwatch-scoring") if run_loop else None
            )
            yield
        finally:
            await cancel(loop_task)
            await analyzer.close()

    async def capacity_ctx(app: web.Application) -> AsyncIterator[None]:
        planner = CapacityPlanner(
            rules, app[SOURCE], app[SENDER], cfg.alerting, backend=app[BACKEND]
        )
        task = None
        try:
            await planner.start()
            app[PLANNER] = planner
            task = (
                asyncio.create_task(planner.run(), name="dcwatch-capacity")
                if run_loop and rules
                else None
            )
            yield
        finally:
            await cancel(task)
            await planner.close()

    for ctx in (source_ctx, sender_ctx, backend_ctx, analyzer_ctx, capacity_ctx):
        app.cleanup_ctx.append(ctx)
    app.router.add_get("/", overview_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/api/nodes", nodes_handler)
    app.router.add_post("/api/refit", refit_handler)
    return app


async def metrics_handler(request: web.Request) -> web.Response:
    families = analyzer_families(request.app[ANALYZER], request.app[PLANNER])
    return metrics_response(request, list(families))


async def healthz_handler(request: web.Request) -> web.Response:
    an = request.app[ANALYZER]
    states: dict[str, int] = {}
    for n in an.nodes.values():
        states[n.status] = states.get(n.status, 0) + 1
    status = {
        "status": "ok" if not an.last_source_error or an.passes else "degraded",
        "mode": an.cfg.mode,
        "nodes": states,
        "passes": an.passes,
        "uptime_seconds": round(time.time() - request.app[STARTED], 1),
    }
    return web.json_response(status, dumps=lambda o: json.dumps(o) + "\n")


async def nodes_handler(request: web.Request) -> web.Response:
    an = request.app[ANALYZER]
    out = []
    for n in sorted(an.nodes.values(), key=lambda n: n.instance):
        out.append(
            {
                "instance": n.instance,
                "state": n.status,
                "score": n.score,
                "anomaly": n.anomaly,
                "contributors": [c.describe() for c in n.contributors],
                "fitted_at": n.model.fitted_at_ if n.model is not None else None,
                "fit_error": n.fit_error,
            }
        )
    return web.json_response(out)


async def refit_handler(request: web.Request) -> web.Response:
    """On-demand refit: ``POST /api/refit?instance=X`` (every node without ``instance``)."""
    an = request.app[ANALYZER]
    wanted = request.query.get("instance")
    if wanted is not None and wanted not in an.nodes:
        raise web.HTTPNotFound(text=f"unknown instance {wanted!r}\n")
    started = [i for i in ([wanted] if wanted else list(an.nodes)) if an.request_fit(i)]
    return web.json_response({"refitting": started}, status=202)


async def overview_handler(request: web.Request) -> web.Response:
    html = render_overview(request.app[ANALYZER], request.app[PLANNER])
    return web.Response(text=html, content_type="text/html")
