"""The sender against the real Alertmanager binary: fire, resend, resolve, outage and recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dcwatch.detectors.alerting.alerts import Alert, AlertingConfig, Contributor, build_alert
from dcwatch.detectors.alerting.sender import AlertSender
from tests.helpers import sample
from tests.procs import Proc, alertmanager_binary, start_alertmanager

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        alertmanager_binary() is None,
        reason="Alertmanager binary not installed (Debian package prometheus-alertmanager; "
        "scripts/setup.sh installs it when run as root)",
    ),
]


@pytest.fixture
def am(tmp_path: Path) -> Iterator[Proc]:
    proc = start_alertmanager(tmp_path)
    yield proc
    proc.stop()


def config(tmp_path: Path, *urls: str) -> AlertingConfig:
    return AlertingConfig(
        alertmanagers=urls,
        state_dir=tmp_path / "analyzer",
        resend_interval=1.0,
        retry_initial=0.1,
        retry_max=0.5,
        timeout=2.0,
        external_url="http://127.0.0.1:9479",
        runbook_url="https://runbooks.example/{alertname}",
        dashboard_url="https://grafana.example/d/node?var-instance={instance}",
    )


def gpu_alert(cfg: AlertingConfig, instance: str) -> Alert:
    return build_alert(
        cfg,
        alertname="DcwatchAnomaly",
        severity="critical",
        instance=instance,
        gpu="0",
        summary=f"{instance} GPU 0 is running hot",
        contributors=[
            Contributor("gpu_temp_celsius", 91.2, 64.0, 3.1),
            Contributor("gpu_power_watts", 412.0, 250.0, 20.0),
        ],
        score=0.91,
    )


async def active_alerts(url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url + "/api/v2/alerts", timeout=aiohttp.ClientTimeout(total=3)) as r,
    ):
        r.raise_for_status()
        return await r.json()  # type: ignore[no-any-return]


async def find(url: str, instance: str) -> dict[str, Any] | None:
    hits = [a for a in await active_alerts(url) if a["labels"].get("instance") == instance]
    return hits[0] if hits else None


async def eventually(
    probe: Callable[[], Any], timeout: float = 10.0, what: str = "it", gone: bool = False
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = await probe()
        if (v is None) if gone else v:
            return v
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


async def test_fire_resend_resolve_outage_and_recovery(tmp_path: Path, am: Proc) -> None:
    cfg = config(tmp_path, am.url)
    async with AlertSender(cfg) as sender:
        rec = await sender.fire(gpu_alert(cfg, "node-1"))
        got = await eventually(lambda: find(am.url, "node-1"), what="the alert in Alertmanager")
        assert got["labels"] == {
            "alertname": "DcwatchAnomaly",
            "severity": "critical",
            "instance": "node-1",
            "gpu": "0",
        }
        ann = got["annotations"]
        assert ann["summary"] == "node-1 GPU 0 is running hot"
        assert "gpu_temp_celsius=91.2 (expected 64.0±3.1)" in ann["description"]
        assert "gpu_power_watts=412.0 (expected 250.0±20.0)" in ann["description"]
        assert ann["score"] == "0.910"
        assert ann["runbook_url"] == "https://runbooks.example/DcwatchAnomaly"
        assert ann["dashboard"] == "https://grafana.example/d/node?var-instance=node-1"
        assert got["generatorURL"] == "http://127.0.0.1:9479/node/node-1"
        assert got["status"]["state"] == "active"
        assert ts(got["startsAt"]) == pytest.approx(rec.starts_at, abs=0.002)

        # resends push endsAt forward and keep startsAt
        first_end = ts(got["endsAt"])
        later = await eventually(
            lambda: _with_later_end(am.url, "node-1", first_end), what="a resend"
        )
        assert later["startsAt"] == got["startsAt"]

        # resolve: gone from the active alerts
        await sender.resolve(rec.key)
        await eventually(lambda: find(am.url, "node-1"), gone=True, what="the alert resolved")

        # Alertmanager crashes; an alert fired meanwhile is queued ...
        am.kill()
        down = await sender.fire(gpu_alert(cfg, "node-2"))
        await eventually(
            lambda: _queued(sender), what="queued >= 1 and a failed delivery in the metrics"
        )
        # ... and arrives once Alertmanager is back on the same port.
        am.restart()
        got2 = await eventually(lambda: find(am.url, "node-2"), what="the queued alert")
        assert ts(got2["startsAt"]) == pytest.approx(down.starts_at, abs=0.002)
        assert await find(am.url, "node-1") is None
        await eventually(lambda: _drained(sender), what="the queue to drain")
        assert sender.stats()[0].up and sender.stats()[0].failed >= 1


async def test_queued_alerts_survive_an_analyzer_restart(tmp_path: Path, am: Proc) -> None:
    cfg = config(tmp_path, am.url)
    am.kill()
    sender = AlertSender(cfg)
    await sender.start(background=False)
    rec = await sender.fire(gpu_alert(cfg, "node-3"))
    assert not await sender.flush()
    await sender.stop()

    am.restart()
    async with AlertSender(cfg):
        got = await eventually(lambda: find(am.url, "node-3"), what="the alert after restart")
    assert ts(got["startsAt"]) == pytest.approx(rec.starts_at, abs=0.002)


async def test_ha_pair_both_get_alerts_while_one_is_down(tmp_path: Path, am: Proc) -> None:
    other = start_alertmanager(tmp_path)
    try:
        cfg = config(tmp_path, am.url, other.url)
        other.kill()
        async with AlertSender(cfg) as sender:
            await sender.fire(gpu_alert(cfg, "node-4"))
            await eventually(lambda: find(am.url, "node-4"), what="the live one to get it")
            other.restart()
            await eventually(lambda: find(other.url, "node-4"), what="the other after restart")
            await eventually(lambda: _drained(sender), what="both queues to drain")
    finally:
        other.stop()


async def _with_later_end(url: str, instance: str, than: float) -> dict[str, Any] | None:
    a = await find(url, instance)
    return a if a is not None and ts(a["endsAt"]) > than else None


async def _drained(sender: AlertSender) -> bool:
    return all(s.queued == 0 for s in sender.stats())


async def _queued(sender: AlertSender) -> bool:
    reg = CollectorRegistry()
    reg.register(sender)  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    name = sender.targets[0].name
    queued = sample(text, "dcwatch_alerts_queued", alertmanager=name) or 0
    failed = sample(text, "dcwatch_alerts_failed_total", alertmanager=name) or 0
    return queued >= 1 and failed >= 1
