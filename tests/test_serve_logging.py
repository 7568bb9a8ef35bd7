"""Log lines cannot be forged or flooded by what peers send."""

from __future__ import annotations

import asyncio
import io
import logging

from aiohttp import web

from dcwatch.serve import _BadRequestFilter, _OneLineFormatter


def capture() -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_BadRequestFilter(interval=60))
    return handler, out


def test_a_newline_in_a_value_cannot_split_a_line() -> None:
    handler, out = capture()
    log = logging.getLogger("dcwatch.test.inject")
    log.addHandler(handler)
    try:
        log.warning("target %s down", 'n1"}\nINFO dcwatch: all good')
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines == ['WARNING dcwatch.test.inject: target n1"}\\nINFO dcwatch: all good down']


async def test_malformed_requests_give_one_line_not_tracebacks() -> None:
    handler, out = capture()
    server_log = logging.getLogger("aiohttp.server")
    server_log.addHandler(handler)

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="x")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for payload in (
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        ):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(payload)
            await w.drain()
            assert (await r.read(12)).startswith(b"HTTP/1.")
            w.close()
    finally:
        server_log.removeHandler(handler)
        await runner.cleanup()
    text = out.getvalue()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, lines  # the next two are held back (one line a minute)
    assert lines[0].startswith("WARNING aiohttp.server: malformed HTTP request answered 400")
