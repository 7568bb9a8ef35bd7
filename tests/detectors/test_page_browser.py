"""The overview page in a real headless Chromium: the analyzer app (fake source with an anomaly
and a capacity rule forecast full) served on 127.0.0.1, loaded over the DevTools protocol.

Asserted: it renders one SVG plot per series with its threshold line, the anomaly and the
capacity alert, no console errors or exceptions, no request leaving the analyzer (no CDN), a
full-page screenshot that is a real picture (not blank), and a small server render time.
Set ``DCWATCH_TEST_ARTIFACTS=DIR`` to keep the screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from dcwatch.detectors.web.app import ANALYZER, PLANNER, make_app
from tests.detectors.test_capacity import RULES, CapacitySource, Growth, write_config
from tests.detectors.test_service import STEP as SCORE_STEP
from tests.detectors.test_service import FakeSource
from tests.helpers import find_binary, free_port

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
)
WIDTH, HEIGHT = 1280, 2000


def chromium() -> str:
    path = find_binary("chromium", "chromium-browser", "google-chrome")
    if path is None:
        pytest.skip("chromium not installed (Debian package `chromium`, see scripts/setup.sh)")
    return path


class PageSource(FakeSource):
    """test_service's node (steady, then GPU 1 overheats) plus the capacity rule's series."""

    def __init__(self, start: float, capacity: CapacitySource) -> None:
        super().__init__(start)
        self.capacity = capacity

    def with_queries(self, queries: Any) -> CapacitySource:
        return self.capacity.with_queries(queries)


class DevTools:
    """A minimal Chrome DevTools Protocol client over aiohttp's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            fut = self._waiting.pop(data.get("id", -1), None)
            if fut is not None:
                fut.set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, 30)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply.get("result", {})

    async def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev.get("method") == method:
                    return ev
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {method} within {timeout}s")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def browser(user_dir: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with a DevTools port; yields a client attached to its page."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={user_dir}",
        f"--remote-debugging-port={port}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            targets: list[dict[str, Any]] = []
            for _ in range(150):  # Chromium takes a moment to open its port
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        targets = [t for t in await r.json() if t["type"] == "page"]
                if targets:
                    break
                await asyncio.sleep(0.1)
            assert targets, "chromium did not open its DevTools port"
            url = targets[0]["webSocketDebuggerUrl"]
            async with http.ws_connect(url, max_msg_size=0) as ws:
                dt = DevTools(ws)
                try:
                    yield dt
                finally:
                    await dt.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def png_stats(data: bytes) -> tuple[int, int, float]:
    """(width, height, share of non-zero filtered pixel bytes) of an 8-bit PNG.

    A blank page filters to (almost) all zeros whatever the filter types; a page with text and
    plots does not. Stdlib only: struct and zlib.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = depth = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format {depth}/{colour}"
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8)
    bpp = 3 if colour == 2 else 4
    assert raw.size == height * (1 + width * bpp), "truncated image data"
    pixels = raw.reshape(height, 1 + width * bpp)[:, 1:]
    return width, height, float(np.count_nonzero(pixels)) / pixels.size


async def drive_to_an_alert(an: Any, src: Any, t0: float) -> float:
    """Cold start, a fit after 30 min of history, then GPU 1 overheats until node-1 alerts."""
    t = t0
    while t <= t0 + 2400:
        await an.score_pass(t)
        await an.wait_fits()
        t += SCORE_STEP
    src.fault, src.fault_from = True, t
    for _ in range(8):
        await an.score_pass(t)
        t += SCORE_STEP
    assert an.nodes["node-1:9478"].anomaly
    return t


async def test_overview_page_in_headless_chromium(aiohttp_server, tmp_path: Path) -> None:
    chromium()
    now = time.time() // 60 * 60
    growth = Growth(now - 3 * 3600)  # GPU 0's memory has grown for three hours
    cap = CapacitySource(
        {"node-1:9478": ["0", "1"]},
        {"series": growth.used, "capacity": lambda i, d, t: np.full(t.size, 200.0)},
    )
    t0 = now // SCORE_STEP * SCORE_STEP - 3600
    src = PageSource(t0, cap)
    cfg = write_config(tmp_path, RULES, "--model-min-train", "30m")
    app = make_app(cfg, source=src, run_loop=False)
    server = await aiohttp_server(app, port=free_port())
    an, planner = app[ANALYZER], app[PLANNER]
    # The node: cold start, fit after 30 min, then GPU 1 overheats.
    await drive_to_an_alert(an, src, t0)
    await planner.evaluate(now)
    await planner.wait_fits()
    await planner.evaluate(now)

    url = f"http://127.0.0.1:{server.port}/"
    async with browser(tmp_path / "chromium") as dt:
        for domain in ("Runtime", "Log", "Page", "Network"):
            await dt.call(f"{domain}.enable")
        await dt.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        await dt.call("Page.navigate", url=url)
        await dt.wait_event("Page.loadEventFired")
        dom = await dt.call(
            "Runtime.evaluate",
            returnByValue=True,
            expression="""JSON.stringify({
              plots: [...document.querySelectorAll('svg.plot')].map(s => ({
                rule: s.dataset.rule, gpu: s.dataset.device,
                width: s.getBoundingClientRect().width,
                threshold: s.querySelectorAll('line.threshold').length,
                history: s.querySelectorAll('polyline.history').length,
                band: s.querySelectorAll('polygon.band').length})),
              text: document.body.innerText})""",
        )
        page = json.loads(dom["result"]["value"])
        shot = await dt.call("Page.captureScreenshot", format="png")
        # The listener works: a deliberate error shows up, and it is the only one.
        await dt.call("Runtime.evaluate", expression="console.error('dcwatch self-check')")
        await dt.wait_event("Runtime.consoleAPICalled")

    png = base64.b64decode(shot["data"])
    (tmp_path / "overview.png").write_bytes(png)
    if os.environ.get("DCWATCH_TEST_ARTIFACTS"):
        out = Path(os.environ["DCWATCH_TEST_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "overview.png", out / "overview.png")

    errors = [
        ev
        for ev in dt.events
        if ev["method"] == "Runtime.exceptionThrown"
        or (
            ev["method"] == "Runtime.consoleAPICalled"
            and ev["params"]["type"] in ("error", "assert")
        )
        or (ev["method"] == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error")
    ]
    assert [e["params"]["args"][0]["value"] for e in errors] == ["dcwatch self-check"], errors
    requests = [
        ev["params"]["request"]["url"]
        for ev in dt.events
        if ev["method"] == "Network.requestWillBeSent"
    ]
    assert requests == [url], f"the page fetched more than itself: {requests}"

    plots = page["plots"]
    assert [(p["rule"], p["gpu"]) for p in plots] == [("gpu_memory", "0"), ("gpu_memory", "1")]
    assert all(p["threshold"] == 1 and p["history"] >= 1 and p["band"] == 1 for p in plots)
    assert all(p["width"] > 300 for p in plots)
    text = page["text"]
    assert "DcwatchNodeAnomaly" in text and "DcwatchCapacityExhaustion" in text
    assert "GPU memory · node-1:9478 gpu 0" in text and "full in ~" in text
    took = float(re.search(r"rendered in ([\d.]+) ms", text)[1])  # type: ignore[index]
    assert took < 100, f"server render took {took} ms"

    width, height, ink = png_stats(png)
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(png) > 20_000 and ink > 0.002, f"screenshot looks blank ({len(png)} B, {ink:.4f})"


async def test_node_page_and_links_in_headless_chromium(aiohttp_server, tmp_path: Path) -> None:
    """The overview's links all resolve; the node page of the alerting node shows the score and
    one plot per contributor, each holding the alert interval; no console error on either page."""
    chromium()
    t0 = time.time() // SCORE_STEP * SCORE_STEP - 3600
    src = FakeSource(t0)
    cfg = write_config(tmp_path, RULES, "--model-min-train", "30m")
    app = make_app(cfg, source=src, run_loop=False)
    server = await aiohttp_server(app, port=free_port())
    an = app[ANALYZER]
    await drive_to_an_alert(an, src, t0)
    base = f"http://127.0.0.1:{server.port}"

    async with browser(tmp_path / "chromium") as dt:
        for domain in ("Runtime", "Log", "Page"):
            await dt.call(f"{domain}.enable")
        await dt.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        shots: dict[str, bytes] = {}
        found: dict[str, Any] = {}
        for name, url in (("overview", f"{base}/"), ("node", f"{base}/node/node-1%3A9478")):
            dt.events.clear()
            await dt.call("Page.navigate", url=url)
            await dt.wait_event("Page.loadEventFired")
            dom = await dt.call(
                "Runtime.evaluate",
                returnByValue=True,
                expression="""JSON.stringify({
                  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
                  plots: [...document.querySelectorAll('svg.plot')].map(s => {
                    const r = s.querySelector('rect.alert');
                    const ticks = [...s.querySelectorAll('text')].length;
                    return {kind: s.dataset.plot || 'capacity', series: s.dataset.series || '',
                            alert: r ? {start: +r.dataset.start, end: r.dataset.end,
                                        width: r.getBoundingClientRect().width} : null,
                            observed: s.querySelectorAll('polyline.observed').length,
                            score: s.querySelectorAll('polyline.score').length,
                            ticks};
                  }),
                  text: document.body.innerText})""",
            )
            found[name] = json.loads(dom["result"]["value"])
            shots[name] = base64.b64decode(
                (await dt.call("Page.captureScreenshot", format="png"))["data"]
            )
            errors = [
                ev
                for ev in dt.events
                if ev["method"] == "Runtime.exceptionThrown"
                or (
                    ev["method"] == "Runtime.consoleAPICalled"
                    and ev["params"]["type"] in ("error", "assert")
                )
                or (ev["method"] == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error")
            ]
            assert errors == [], (name, errors)

    out = os.environ.get("DCWATCH_TEST_ARTIFACTS")
    for name, png in shots.items():
        (tmp_path / f"{name}.png").write_bytes(png)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / f"{name}.png", Path(out) / f"{name}-page.png")
        assert png_stats(png)[2] > 0.002, f"{name} screenshot looks blank"

    # every link on both pages resolves (the page's own links: nothing points outside)
    links = {u for page in found.values() for u in page["links"]}
    assert f"{base}/node/node-1%3A9478" in links
    async with aiohttp.ClientSession() as http:
        for u in sorted(links):
            assert u.startswith(base), u
            async with http.get(u) as r:
                assert r.status == 200, (u, r.status)

    node = found["node"]
    score = [p for p in node["plots"] if p["kind"] == "score"]
    contrib = [p for p in node["plots"] if p["kind"] == "contributor"]
    assert len(score) == 1 and score[0]["score"] == 1
    assert contrib and any('gpu="1"' in p["series"] for p in contrib)
    for p in score + contrib:  # every plot shades the alert, from its start, still open
        assert p["alert"] is not None and p["alert"]["width"] > 0, p
        assert p["alert"]["start"] >= src.fault_from - SCORE_STEP and p["alert"]["end"] == ""
    assert all(p["observed"] == 1 for p in contrib)
    assert "GPU 1 · gpu_temp" in node["text"] and "training window" in node["text"]
