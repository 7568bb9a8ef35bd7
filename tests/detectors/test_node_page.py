"""The node page, the overview's new parts and ``/api/alerts`` through the real app: test_service's
node (steady, then GPU 1 overheats, then recovers) driven pass by pass."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import numpy as np

from dcwatch.detectors.timeline import NodeTimeline
from dcwatch.detectors.web.app import ANALYZER, SENDER, make_app
from dcwatch.detectors.web.keys import DEMO
from dcwatch.detectors.web.page import PAGE_SIZE
from dcwatch.detectors.web.svg import sparkline
from tests.detectors.test_service import STEP, FakeSource, clock_start, config, drive

__all__ = ["clock_start"]  # the fixture, shared

NODE = "node-1:9478"


async def test_node_page_explains_the_alert_and_keeps_history(
    aiohttp_client, tmp_path: Path, clock_start: float
) -> None:
    t0 = clock_start
    src = FakeSource(t0)
    app = make_app(config(tmp_path), source=src, run_loop=False)
    app[DEMO] = "DEMO: simulated fleet"
    client = await aiohttp_client(app)
    an = app[ANALYZER]
    await drive(app, src, t0, t0 + 3 * 3600 + 1800)
    src.fault, src.fault_from = True, t0 + 4 * 3600
    await drive(app, src, t0 + 3 * 3600 + 1800 + STEP, t0 + 4 * 3600 + 10 * STEP)
    assert an.nodes[NODE].anomaly

    # the alert's generatorURL is the node page, and it resolves
    (rec,) = app[SENDER].firing()
    assert rec.alert.generator_url.endswith("/node/" + quote(NODE, safe=""))
    path = "/node/" + quote(NODE, safe="")
    resp = await client.get(path)
    assert resp.status == 200
    page = await resp.text()
    assert "DEMO: simulated fleet" in page and "ALERT" in page
    score = re.search(r'<svg[^>]*data-plot="score".*?</svg>', page, re.S)
    assert score is not None and 'class="threshold"' in score[0]
    spans = re.findall(r'class="alert" data-start="(\d+)" data-end="(\d*)"', score[0])
    assert spans and spans[-1][1] == "" and float(spans[-1][0]) >= t0 + 4 * 3600
    plots = re.findall(r'<svg[^>]*data-plot="contributor"[^>]*data-series="([^"]+)"', page)
    assert "gpu_temp{gpu=&quot;1&quot;}" in plots  # the overheating GPU, named
    assert "GPU 1 · gpu_temp" in page
    contributor = page[page.index('data-series="gpu_temp{gpu=&quot;1&quot;}"') :]
    contributor = contributor[: contributor.index("</svg>")]
    for cls in ("observed", "expected", "normal", "alert"):
        assert f'class="{cls}"' in contributor
    assert "training window" in page and "series" in page

    # the overview links the node page, sparkline included; /api/nodes names the page too
    overview = await (await client.get("/")).text()
    assert f"href='{path}'" in overview and 'class="spark"' in overview
    nodes = await (await client.get("/api/nodes")).json()
    assert nodes[0]["page"] == path
    assert "DEMO: simulated fleet" in overview and "Health" in overview

    # the node recovers: the alert resolves and stays in the history, also after a restart
    src.fault = False
    await drive(app, src, t0 + 4 * 3600 + 11 * STEP, t0 + 5 * 3600)
    assert not an.nodes[NODE].anomaly
    body = await (await client.get("/api/alerts", params={"since": "1d"})).json()
    mine = [a for a in body["alerts"] if a["instance"] == NODE]
    assert mine and all(a["state"] == "resolved" and a["duration_seconds"] >= 0 for a in mine)
    (gpu1,) = [a for a in mine if a["labels"].get("gpu") == "1"]  # the GPU, named
    assert 'gpu_temp{gpu="1"}' in gpu1["description"]
    page = await (await client.get(path)).text()
    assert "latest alert (ended" in page and "resolved" in page
    bad = await client.get("/api/alerts", params={"since": "yesterday"})
    assert bad.status == 400
    assert (await client.get("/node/nope:1")).status == 404

    # history survives a restart of the app (new sender, same state dir)
    await client.close()
    app2 = make_app(config(tmp_path), source=FakeSource(t0), run_loop=False)
    client2 = await aiohttp_client(app2)
    body = await (await client2.get("/api/alerts", params={"since": "0"})).json()
    assert [a["state"] for a in body["alerts"] if a["instance"] == NODE] == ["resolved"] * len(mine)


async def test_overview_pages_worst_first_and_escapes(
    aiohttp_client, tmp_path: Path, clock_start: float
) -> None:
    from dcwatch.detectors.service import NodeState

    app = make_app(config(tmp_path), source=FakeSource(clock_start), run_loop=False)
    client = await aiohttp_client(app)
    an = app[ANALYZER]
    for i in range(PAGE_SIZE + 20):
        an.nodes[f"n{i:04d}"] = NodeState(f"n{i:04d}", score=i / 100)
    evil = "<script>alert(1)</script>"
    an.nodes[evil] = NodeState(evil, score=99.0)
    first = await (await client.get("/")).text()
    assert "<script>" not in first and "&lt;script&gt;" in first
    assert first.index("&lt;script&gt;") < first.index("n0119") < first.index("n0118")
    assert "n0000" not in first and "href='/?page=2'" in first
    second = await (await client.get("/?page=2")).text()
    assert "n0000" in second and "n0119" not in second
    page = await (await client.get("/node/" + quote(evil, safe=""))).text()
    assert "<script>" not in page


def test_timeline_ring_is_bounded_and_keeps_the_worst() -> None:
    tl = NodeTimeline(max_points=10, bucket=60.0)
    for i in range(100):  # 15 s rows: 4 per bucket, 25 buckets into a ring of 10
        tl.add(1000 * 60 + i * 15.0, 5.0 if i == 97 else 0.5, i >= 96)
    ts, sc, al = tl.points(0)
    assert len(ts) == 10 and np.all(np.diff(ts) > 0)
    assert sc.max() == 5.0 and al[-1] and not al[0]
    assert tl.alert_spans(0) == [(ts[-1], None)]


def test_sparkline_thins_to_its_width_and_keeps_spikes() -> None:
    v = np.zeros(1500)
    v[700] = 3.0
    svg = sparkline(v, w=100, vmax=4.0, mark=1.0)
    pts = re.search(r'points="([^"]+)"', svg)
    assert pts is not None and len(pts[1].split()) == 100
    ys = [float(p.split(",")[1]) for p in pts[1].split()]
    assert min(ys) < 10  # the spike is still drawn
    assert 'class="thr"' in svg
