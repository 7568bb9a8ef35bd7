"""The node page, the overview's new parts and ``/api/alerts`` through the real app: test_service's
node (steady, then GPU 1 overheats, then recovers) driven pass by pass."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import numpy as np

from dcwatch.detectors.features import FeatureBuilder, FeatureConfig
from dcwatch.detectors.frame import Frame
from dcwatch.detectors.timeline import NodeTimeline
from dcwatch.detectors.web.app import ANALYZER, SENDER, make_app
from dcwatch.detectors.web.contributors import (
    LatestAlert,
    contributor_plots,
    feature_subset,
    series_named,
    thin,
)
from dcwatch.detectors.web.keys import DEMO
from dcwatch.detectors.web.page import PAGE_SIZE
from dcwatch.detectors.web.svg import TimePlot, sparkline
from tests.detectors.test_service import STEP, FakeSource, clock_start, config, drive

__all__ = ["clock_start"]  # the fixture, shared

NODE = "node-1:9478"
DAY = 86400.0


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


async def drive_to_alert(app, src: FakeSource, t0: float) -> float:
    """3.5 h of steady rows (a fit at 3 h), then GPU 1 overheats until the node alerts; the
    time of the newest row scored (the page's "now")."""
    await drive(app, src, t0, t0 + 3 * 3600 + 1800)
    src.fault, src.fault_from = True, t0 + 4 * 3600
    await drive(app, src, t0 + 3 * 3600 + 1800 + STEP, t0 + 4 * 3600 + 10 * STEP)
    an = app[ANALYZER]
    assert an.nodes[NODE].anomaly
    return an.timeline.get(NODE).last_ts


def svg_of(page: str, attr: str) -> list[str]:
    return re.findall(rf"<svg[^>]*{attr}.*?</svg>", page, re.S)


def window_of(svg: str) -> tuple[float, float]:
    m = re.search(r'data-from="(\d+)" data-to="(\d+)"', svg)
    assert m is not None
    return float(m[1]), float(m[2])


async def test_contributor_plots_cover_the_day_and_survive_a_restart(
    aiohttp_client, tmp_path: Path, clock_start: float
) -> None:
    t0 = clock_start
    cfg = config(tmp_path)
    src = FakeSource(t0)
    app = make_app(cfg, source=src, run_loop=False)
    client = await aiohttp_client(app)
    an = app[ANALYZER]
    end = await drive_to_alert(app, src, t0)
    src.t0 = t0 - DAY  # the source holds a whole day before the alert
    path = "/node/" + quote(NODE, safe="")
    page = await (await client.get(path)).text()

    (score,) = svg_of(page, 'data-plot="score"')
    plots = svg_of(page, 'data-plot="contributor"')
    assert plots and window_of(score) == (end - DAY, end)
    for svg in plots:  # the score plot's window, observed from its left edge, the alert shaded
        assert window_of(svg) == window_of(score)
        first = re.search(r'class="observed" points="([\d.]+),', svg)
        assert first is not None and float(first[1]) < TimePlot.LEFT + 2
        (span,) = re.findall(r'class="alert" data-start="(\d+)" data-end="(\d*)"', svg)
        assert src.fault_from <= float(span[0]) < end and span[1] == ""
    assert 'data-series="gpu_temp{gpu=&quot;1&quot;}"' in page

    # resolved, then a restart: scores and the alert interval come from the state directory,
    # the contributors from the alert history
    src.fault = False
    await drive(app, src, end + STEP, end + 3600)
    end = an.timeline.get(NODE).last_ts
    await client.close()
    src2 = FakeSource(t0 - DAY)
    app2 = make_app(cfg, source=src2, run_loop=False)
    client2 = await aiohttp_client(app2)
    an2 = app2[ANALYZER]
    page = await (await client2.get(path)).text()
    (score,) = svg_of(page, 'data-plot="score"')
    assert window_of(score) == (end - DAY, end)
    (span,) = re.findall(r'class="alert" data-start="(\d+)" data-end="(\d+)"', score)
    assert src.fault_from <= float(span[0]) < float(span[1]) < end
    assert "latest alert (ended" in page and "from the alert history" in page
    plots = svg_of(page, 'data-plot="contributor"')
    assert any('data-series="gpu_temp{gpu=&quot;1&quot;}"' in svg for svg in plots)
    for svg in plots:
        assert window_of(svg) == window_of(score)
        assert re.search(rf'class="alert" data-start="{span[0]}" data-end="{span[1]}"', svg)

    # the source fails: the page still renders, and says why there are no plots
    src2.down = True
    resp = await client2.get(path)
    page = await resp.text()
    assert resp.status == 200 and svg_of(page, 'data-plot="score"')
    assert not svg_of(page, 'data-plot="contributor"')
    assert "the source could not be read (OSError: connection refused)" in page
    an2.timeline.close()


def test_contributors_named_in_an_alert_description() -> None:
    text = (
        'disk slow; top contributors: gpu_temp{gpu="1"}=91.2 (expected 64.0±3.1), '
        'node_power=2200.0 (expected 1800.0), rx{device="eth0, 1"}=3.0, node_power=1.0'
    )
    assert series_named(text) == ['gpu_temp{gpu="1"}', "node_power", 'rx{device="eth0, 1"}']
    assert series_named("no contributors here") == []


def test_feature_subset_gives_the_whole_builders_values() -> None:
    rng = np.random.default_rng(3)
    ts = np.arange(3 * 288) * 300.0  # three days at 5 min: the daily profile is learnt
    cols = [f"s{i}" for i in range(5)]
    vals = rng.normal(0, 1, (len(ts), 5)) + 10 * np.sin(ts / 86400 * 2 * np.pi)[:, None]
    full = FeatureBuilder(FeatureConfig(season_bin_seconds=3600))
    full.fit(Frame(ts, tuple(cols), vals))
    sub = feature_subset(full, ["s3", "s1"])
    assert sub.columns_ == ["s1", "s3"]
    new_ts = ts[-1] + 300.0 * np.arange(1, 200)
    new = rng.normal(0, 1, (len(new_ts), 5))
    a = full.transform_values(new_ts, new, None)
    b = sub.transform_values(new_ts, new[:, [1, 3]], None)
    for name in sub.feature_names_:
        i, j = full.feature_names_.index(name), sub.feature_names_.index(name)
        np.testing.assert_allclose(b.expected[:, j], a.expected[:, i])
        np.testing.assert_allclose(b.z[:, j], a.z[:, i])


def test_thinning_keeps_the_spike() -> None:
    ts = np.arange(5760) * 15.0
    dev = np.zeros(5760)
    dev[4321] = 50.0
    keep = thin(ts, dev, 0.0, ts[-1], 600)
    assert len(keep) <= 600 and 4321 in keep and np.all(np.diff(keep) > 0)
    assert list(thin(ts[:10], dev[:10], 0.0, 150.0, 600)) == list(range(10))


async def test_contributor_plots_say_why_they_are_missing() -> None:
    ts = np.arange(720) * STEP
    feats = FeatureBuilder().fit(
        Frame(ts, ("a", "b"), np.random.default_rng(0).normal(0, 1, (720, 2)))
    )
    model = SimpleNamespace(fitted=True, features_=feats)
    alert = LatestAlert(ts[-10], None, (("a", None),), "alert history")

    class Slow:
        async def fetch(self, start: float, end: float, step: float) -> dict[str, Frame]:
            await asyncio.sleep(10)
            return {}

    got = await contributor_plots(Slow(), "n", model, alert, ts[-1] - DAY, ts[-1], timeout=0.05)
    assert got.alert == alert and got.tracks == ()
    assert got.note == "No plots: the source did not answer within 0.05 s."
    unknown = LatestAlert(ts[-10], None, (), "alert history")
    got = await contributor_plots(Slow(), "n", model, unknown, ts[-1] - DAY, ts[-1])
    assert "not known" in got.note
    gone = LatestAlert(ts[-10], None, (("c", None),), "alert history")
    got = await contributor_plots(Slow(), "n", model, gone, ts[-1] - DAY, ts[-1])
    assert "no longer uses" in got.note
    assert (await contributor_plots(Slow(), "n", None, alert, 0, 1)).note.startswith("No fitted")
