"""The analyzer's HTTP application: ``/`` overview, ``/metrics``, ``/healthz``, ``/readyz``,
``/api/...``.

With a web config (``--web-config``) every path needs basic auth and/or TLS, probes included.
Whatever the config, a state-changing request (anything but GET, HEAD, OPTIONS) that a browser
could send from another site is refused with 403 (see :func:`cross_origin_middleware`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from dcwatch.detectors.alerting.sender import AlertSender
from dcwatch.detectors.capacity.planner import CapacityPlanner
from dcwatch.detectors.capacity.rules import CapacityRule, parse_rules
from dcwatch.detectors.config import AnalyzerConfig
from dcwatch.detectors.models.fitting import FitBackend
from dcwatch.detectors.service import Analyzer
from dcwatch.detectors.sources.base import Source
from dcwatch.detectors.sources.queries import NamedQuery, load_queries, needed_metrics
from dcwatch.detectors.web.history import alerts_handler

# The keys live in .keys: the page modules use them without importing this module.
from dcwatch.detectors.web.keys import ANALYZER, BACKEND, PLANNER, SENDER, SOURCE, STARTED
from dcwatch.detectors.web.metrics import analyzer_exposition
from dcwatch.detectors.web.node_page import node_handler
from dcwatch.detectors.web.page import overview_handler
from dcwatch.exposition import metrics_response
from dcwatch.webconfig import WebConfig, load_web_config

log = logging.getLogger("dcwatch.analyzer")


def make_source(cfg: AnalyzerConfig, extra: Sequence[NamedQuery] = ()) -> Source:
    """The configured source; ``extra`` queries (capacity rules') are evaluated on their own
    but the embedded store must keep their metrics too."""
    queries = load_queries(cfg.queries_file, cfg.queries_preset)
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
    cfg: AnalyzerConfig,
    *,
    source: Source | None = None,
    run_loop: bool = True,
    web_config: WebConfig | None = None,
) -> web.Application:
    """Build the analyzer app; tests may pass their own ``source`` or drive passes by hand.

    ``web_config`` is the already-read web config (else read from ``cfg.web_config``); its
    basic auth covers every path.

    Each resource is its own cleanup context, started in order (source, alert sender, fit
    backend, analyzer and its scoring loop, capacity planner and its loop) and closed in reverse:
    when one fails to start, those already started are closed by ``runner.cleanup()``.

    Raises ConfigError for a malformed capacity rule or web config, before anything starts."""
    if web_config is None and cfg.web_config is not None:
        web_config = load_web_config(cfg.web_config)
    middlewares = web_config.middlewares() if web_config is not None else []
    app = web.Application(middlewares=[*middlewares, cross_origin_middleware])
    app[STARTED] = time.time()
    rules: tuple[CapacityRule, ...] = parse_rules(cfg.capacity_rules, presets=cfg.queries_preset)

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
    app.router.add_get("/readyz", readyz_handler)
    app.router.add_get("/api/nodes", nodes_handler)
    app.router.add_get("/node/{instance:.+}", node_handler)
    app.router.add_get("/api/alerts", alerts_handler)
    app.router.add_post("/api/refit", refit_handler)
    return app


async def metrics_handler(request: web.Request) -> web.Response:
    return metrics_response(
        request, analyzer_exposition(request.app[ANALYZER], request.app[PLANNER])
    )


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Content types a cross-site HTML form (or a "simple" fetch) can send without a CORS preflight.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


def cross_origin_refusal(request: web.Request) -> str:
    """Why a state-changing request looks sent by a browser on behalf of another site; "" if not.

    Browsers say where a request comes from (``Sec-Fetch-Site``, ``Origin``); scripts and curl
    send neither and pass. A form can only send the simple content types, which no endpoint
    needs, so those are refused too: that stops old browsers that send neither header.
    """
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin, request):
        return f"Origin {origin[:100]!r} is not this server"
    ctype = request.headers.get("Content-Type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() in FORM_TYPES:
        return f"content type {request.content_type} (send JSON, or no body)"
    return ""


def _same_origin(origin: str, request: web.Request) -> bool:
    try:
        theirs = URL(origin)
        ours = URL.build(scheme=request.scheme, authority=request.host)
    except (ValueError, TypeError):
        return False  # "null" (a sandboxed page), garbage
    if not theirs.is_absolute() or theirs.path not in ("", "/"):
        return False
    return (theirs.scheme, theirs.host, theirs.port) == (ours.scheme, ours.host, ours.port)


@web.middleware
async def cross_origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 for a state-changing request from another site (CSRF), with or without auth: basic
    auth does not help here, the browser attaches remembered credentials itself."""
    if request.method not in SAFE_METHODS:
        why = cross_origin_refusal(request)
        if why:
            log.warning(
                "refused cross-origin %s %s from %s: %s",
                request.method,
                request.path,
                request.remote,
                why,
            )
            raise web.HTTPForbidden(text=f"cross-origin request refused: {why}\n")
    return await handler(request)


def _health_body(request: web.Request) -> tuple[dict[str, object], bool]:
    an = request.app[ANALYZER]
    health = an.health()
    states: dict[str, int] = {}
    for n in an.nodes.values():
        states[n.status] = states.get(n.status, 0) + 1
    body: dict[str, object] = {
        "status": health.status,
        "reasons": list(health.reasons),
        "info": list(health.info),
        "ready": health.ready,
        "mode": an.cfg.mode,
        "nodes": states,
        "passes": an.passes,
        "last_source_success": an.last_source_success,
        "uptime_seconds": round(time.time() - request.app[STARTED], 1),
    }
    return body, health.ready


async def healthz_handler(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves, ``ok`` or ``degraded`` with the reasons."""
    body, _ = _health_body(request)
    return web.json_response(body, dumps=lambda o: json.dumps(o) + "\n")


async def readyz_handler(request: web.Request) -> web.Response:
    """Readiness: 503 until the source has answered once, then as ``/healthz``."""
    body, ready = _health_body(request)
    return web.json_response(
        body, status=200 if ready else 503, dumps=lambda o: json.dumps(o) + "\n"
    )


async def nodes_handler(request: web.Request) -> web.Response:
    an = request.app[ANALYZER]
    out = []
    for n in sorted(an.nodes.values(), key=lambda n: n.instance):
        out.append(
            {
                "instance": n.instance,
                "page": "/node/" + urllib.parse.quote(n.instance, safe=""),  # the node page
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
