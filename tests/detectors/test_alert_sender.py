"""The sender against fake Alertmanagers (aiohttp apps on free ports): resends, retries, HA
fan-out, the durable bounded queue, auth, the log-only mode and the self-metrics."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from dcwatch.detectors.alerting.alertmanager import Backoff
from dcwatch.detectors.alerting.alerts import Alert, AlertingConfig, build_alert, rfc3339
from dcwatch.detectors.alerting.log import read_alert_log
from dcwatch.detectors.alerting.sender import AlertSender
from tests.helpers import free_port, sample


class FakeAlertmanager:
    """Records every POST /api/v2/alerts; answers ``status`` (a 200 by default)."""

    def __init__(
        self, prefix: str = "", port: int | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.port = port or free_port()
        self.prefix = prefix
        self.tls = tls
        self.posts: list[dict[str, Any]] = []  # {"alerts": [...], "headers": {...}}
        self.status: Callable[[list[dict[str, Any]]], int] = lambda alerts: 200
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.prefix}"

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert received, in order (an alert sent twice appears twice)."""
        return [a for p in self.posts for a in p["alerts"]]

    def last(self, alertname: str) -> dict[str, Any] | None:
        hits = [a for a in self.alerts if a["labels"]["alertname"] == alertname]
        return hits[-1] if hits else None

    async def _handle(self, request: web.Request) -> web.Response:
        alerts = await request.json()
        status = self.status(alerts)
        if status == 200:
            self.posts.append({"alerts": alerts, "headers": dict(request.headers)})
        return web.Response(status=status, text="" if status == 200 else "nope")

    async def start(self) -> FakeAlertmanager:
        app = web.Application()
        app.router.add_post(self.prefix + "/api/v2/alerts", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def am() -> AsyncIterator[FakeAlertmanager]:
    fake = await FakeAlertmanager().start()
    yield fake
    await fake.stop()


def config(tmp_path: Path, *urls: str, **kw: Any) -> AlertingConfig:
    defaults: dict[str, Any] = {
        "alertmanagers": urls,
        "state_dir": tmp_path / "state",
        "resend_interval": 0.3,
        "retry_initial": 0.05,
        "retry_max": 0.2,
        "timeout": 2.0,
    }
    return AlertingConfig(**(defaults | kw))


def alert(name: str = "DcwatchAnomaly", instance: str = "node-1", **kw: Any) -> Alert:
    return build_alert(
        AlertingConfig(external_url="http://analyzer:9479"),
        alertname=name,
        severity="critical",
        instance=instance,
        summary=f"{instance} is odd",
        **kw,
    )


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


async def eventually(pred: Callable[[], object], timeout: float = 5.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metrics_text(sender: AlertSender) -> str:
    reg = CollectorRegistry()
    reg.register(sender)  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


# --- backoff --------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_under_the_cap() -> None:
    no_jitter = Backoff(1.0, 60.0, rng=lambda: 0.0)
    assert [no_jitter.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    most_jitter = Backoff(1.0, 60.0, jitter=0.5, rng=lambda: 1.0)
    assert [most_jitter.delay(n) for n in (1, 4, 10)] == [0.5, 4.0, 30.0]
    real = Backoff(2.0, 30.0)
    assert all(1.0 <= real.delay(1) <= 2.0 for _ in range(100))
    assert real.delay(10_000) <= 30.0  # no overflow


# --- delivery -------------------------------------------------------------------------------


async def test_fire_resend_resolve_timestamps(tmp_path: Path, am: FakeAlertmanager) -> None:
    async with AlertSender(config(tmp_path, am.url)) as sender:
        t_fire = time.time()
        rec = await sender.fire(alert())
        first = await eventually(lambda: am.last("DcwatchAnomaly"), what="the first send")
        assert first["labels"] == {
            "alertname": "DcwatchAnomaly",
            "severity": "critical",
            "instance": "node-1",
        }
        assert first["generatorURL"] == "http://analyzer:9479/node/node-1"
        assert abs(ts(first["startsAt"]) - t_fire) < 0.5
        assert abs(ts(first["endsAt"]) - (t_fire + 4 * 0.3)) < 1.0
        # resends: same startsAt, endsAt moves forward
        await eventually(lambda: len(am.alerts) >= 3, what="two resends")
        sends = am.alerts
        assert {a["startsAt"] for a in sends} == {first["startsAt"]}
        assert ts(sends[2]["endsAt"]) > ts(sends[1]["endsAt"]) > ts(sends[0]["endsAt"])
        # resolve: endsAt = now, sent at once, then a few more times, then forgotten
        t_resolve = time.time()
        assert await sender.resolve(rec.key)
        assert not await sender.resolve(rec.key)  # already resolved
        assert rec.resolved_at is not None and abs(rec.resolved_at - t_resolve) < 0.1
        end = rfc3339(rec.resolved_at)
        await eventually(lambda: [a for a in am.alerts if a["endsAt"] == end], what="resolved")
        await eventually(lambda: sender.get(rec.key) is None, what="the alert to be forgotten")
        first_resolved = next(i for i, a in enumerate(am.alerts) if a["endsAt"] == end)
        after = am.alerts[first_resolved:]
        assert len(after) == 3  # resolved_resends, and no firing state after the resolve
        assert {(a["startsAt"], a["endsAt"]) for a in after} == {(first["startsAt"], end)}
        await eventually(lambda: sender.store.count() == 0, what="the row to be deleted")


async def test_refire_keeps_starts_at_and_updates_annotations_on_next_resend(
    tmp_path: Path, am: FakeAlertmanager
) -> None:
    sender = AlertSender(config(tmp_path, am.url, resend_interval=60))
    await sender.start(background=False)
    try:
        rec = await sender.fire(alert(score=0.5))
        await sender.flush()
        rec2 = await sender.fire(alert(score=0.9))
        assert rec2 is rec and rec.alert.annotations["score"] == "0.900"
        await sender.flush()
        assert len(am.alerts) == 1  # an annotation update waits for the resend
        sender.targets[0].deliveries[rec.key].last_sent -= 60  # make the resend due
        await sender.flush()
        assert len(am.alerts) == 2
        assert am.alerts[1]["annotations"]["score"] == "0.900"
        assert am.alerts[1]["startsAt"] == am.alerts[0]["startsAt"]
    finally:
        await sender.stop()


async def test_refire_after_resolve_is_a_new_incident(tmp_path: Path, am: FakeAlertmanager) -> None:
    sender = AlertSender(config(tmp_path, am.url))
    await sender.start(background=False)
    try:
        first = await sender.fire(alert())
        await sender.resolve(first.key)
        await asyncio.sleep(0.01)
        second = await sender.fire(alert())
        assert second.starts_at > first.starts_at and second.firing
        await sender.flush()
        assert len(am.alerts) == 1  # coalesced: only the latest state went out
        assert ts(am.alerts[0]["startsAt"]) == pytest.approx(second.starts_at, abs=0.002)
    finally:
        await sender.stop()


async def test_retry_with_backoff_until_delivered(
    tmp_path: Path, am: FakeAlertmanager, caplog: pytest.LogCaptureFixture
) -> None:
    answers = iter([503, 503])
    am.status = lambda alerts: next(answers, 200)
    caplog.set_level(logging.INFO, "dcwatch.alerts")
    async with AlertSender(config(tmp_path, am.url)) as sender:
        await sender.fire(alert())
        await eventually(lambda: sender.stats()[0].sent, what="delivery after two 503s")
        s = sender.stats()[0]
        assert (s.sent, s.failed, s.queued, s.up) == (1, 2, 0, True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert (
        f"alertmanager {am.url} answered HTTP 503: nope, 1 alerts queued, retry in" in warnings[0]
    )
    assert any("reachable again after 2 failures" in r.getMessage() for r in caplog.records)


async def test_ha_pair_one_down_the_other_gets_everything(
    tmp_path: Path, am: FakeAlertmanager, caplog: pytest.LogCaptureFixture
) -> None:
    second = FakeAlertmanager()  # configured, but not listening yet
    cfg = config(tmp_path, am.url, second.url, timeout=0.5)
    async with AlertSender(cfg) as sender:
        await sender.fire(alert(instance="node-1"))
        await sender.fire(alert(instance="node-2"))
        await eventually(lambda: sender.stats()[0].sent >= 2, what="the healthy one to get both")
        await eventually(lambda: sender.stats()[1].failed >= 2, what="failures on the dead one")
        up, down = sender.stats()
        assert (up.queued, up.up) == (0, True)
        assert (down.queued, down.up, down.sent) == (2, False, 0)
        assert f"alertmanager {second.url} unreachable" in caplog.text
        text = metrics_text(sender)
        assert sample(text, "dcwatch_alerts_queued", alertmanager=second.url) == 2
        assert sample(text, "dcwatch_alertmanager_up", alertmanager=second.url) == 0
        assert sample(text, "dcwatch_alerts_sent_total", alertmanager=am.url) >= 2
        await second.start()
        try:
            await eventually(lambda: sender.stats()[1].sent >= 2, what="the queue to drain")
            assert {a["labels"]["instance"] for a in second.alerts} == {"node-1", "node-2"}
            assert sender.stats()[1].queued == 0
        finally:
            await second.stop()


async def test_slow_alertmanager_does_not_hold_up_the_other(tmp_path: Path) -> None:
    fast = await FakeAlertmanager().start()
    slow_app = web.Application()
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    slow_app.router.add_post("/api/v2/alerts", hang)
    runner = web.AppRunner(slow_app)
    await runner.setup()
    slow_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", slow_port).start()
    try:
        cfg = config(tmp_path, f"http://127.0.0.1:{slow_port}", fast.url, timeout=3)
        async with AlertSender(cfg) as sender:
            t0 = time.monotonic()
            await sender.fire(alert())
            await eventually(lambda: fast.alerts, timeout=2, what="the fast one")
            assert time.monotonic() - t0 < 1
            assert sender.stats()[0].sent == 0
    finally:
        release.set()
        await fast.stop()
        await runner.cleanup()


async def test_rejected_alert_is_dropped_loudly_the_rest_delivered(
    tmp_path: Path, am: FakeAlertmanager, caplog: pytest.LogCaptureFixture
) -> None:
    am.status = lambda alerts: 400 if any(a["labels"]["instance"] == "bad" for a in alerts) else 200
    sender = AlertSender(config(tmp_path, am.url))
    await sender.start(background=False)
    try:
        await sender.fire(alert(instance="good"))
        await sender.fire(alert(instance="bad"))
        assert await sender.flush()
        assert [a["labels"]["instance"] for a in am.alerts] == ["good"]
        s = sender.stats()[0]
        assert (s.dropped, s.sent, s.queued) == (1, 1, 0)
        assert "rejected" in caplog.text and "dropped" in caplog.text
    finally:
        await sender.stop()


async def test_auth_and_path_prefix(tmp_path: Path) -> None:
    fake = await FakeAlertmanager(prefix="/alertmanager").start()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    try:
        sender = AlertSender(config(tmp_path, fake.url + "/", bearer_token_file=token))
        await sender.start(background=False)
        await sender.fire(alert())
        assert await sender.flush()
        await sender.stop()
        assert fake.posts[0]["headers"]["Authorization"] == "Bearer s3cret"
        assert sender.stats()[0].name == fake.url

        basic = AlertSender(
            config(tmp_path, fake.url, basic_auth_username="u", basic_auth_password="p")
        )
        await basic.start(background=False)
        await basic.flush()  # the held alert is re-sent at start
        await basic.stop()
        assert fake.posts[-1]["headers"]["Authorization"] == "Basic dTpw"

        userinfo = fake.url.replace("http://", "http://x:y@")
        in_url = AlertSender(config(tmp_path, userinfo))
        await in_url.start(background=False)
        await in_url.flush()
        await in_url.stop()
        assert fake.posts[-1]["headers"]["Authorization"] == "Basic eDp5"
        assert in_url.stats()[0].name == fake.url  # no credentials in logs and labels
    finally:
        await fake.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_ca_file_and_skip_verify(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    fake = await FakeAlertmanager(tls=server_ctx).start()
    try:
        cases: list[tuple[dict[str, Any], bool]] = [
            ({}, False),  # an unknown CA is refused
            ({"tls_ca_file": cert}, True),
            ({"tls_insecure_skip_verify": True}, True),
        ]
        for i, (kw, ok) in enumerate(cases):
            sender = AlertSender(config(tmp_path / str(i), fake.url, **kw))
            await sender.start(background=False)
            await sender.fire(alert())
            assert await sender.flush() is ok, kw
            await sender.stop()
        assert len(fake.alerts) == 2
    finally:
        await fake.stop()


# --- the durable, bounded queue -------------------------------------------------------------


async def test_queue_survives_a_restart_with_starts_at(tmp_path: Path) -> None:
    down = dead_url()
    port = int(down.rsplit(":", 1)[1])
    sender = AlertSender(config(tmp_path, down))
    await sender.start(background=False)
    firing = await sender.fire(alert(instance="node-1"))
    resolved = await sender.fire(alert(instance="node-2"))
    await sender.resolve(resolved.key)
    assert not await sender.flush()
    assert sender.stats()[0].queued == 2
    await sender.stop()

    fake = await FakeAlertmanager(port=port).start()
    try:
        again = AlertSender(config(tmp_path, fake.url))
        await again.start(background=False)
        assert {r.key for r in again.firing()} == {firing.key}
        assert await again.flush()
        await again.stop()
        got = {a["labels"]["instance"]: a for a in fake.alerts}
        assert ts(got["node-1"]["startsAt"]) == pytest.approx(firing.starts_at, abs=0.002)
        assert ts(got["node-1"]["endsAt"]) > time.time()
        assert ts(got["node-2"]["endsAt"]) == pytest.approx(resolved.resolved_at, abs=0.002)
    finally:
        await fake.stop()


async def test_updates_collapse_per_alert(tmp_path: Path) -> None:
    sender = AlertSender(config(tmp_path, dead_url()))
    await sender.start(background=False)
    try:
        for _ in range(5):
            rec = await sender.fire(alert())
            await sender.resolve(rec.key)
        await sender.fire(alert(instance="node-2"))
        assert sender.stats()[0].queued == 2
        assert sender.store.count() == 2
    finally:
        await sender.stop()


async def test_bound_drops_resolved_first_then_oldest_firing_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sender = AlertSender(config(tmp_path, dead_url(), queue_max=3))
    await sender.start(background=False)
    try:
        a1 = await sender.fire(alert(instance="n1"))
        a2 = await sender.fire(alert(instance="n2"))
        a3 = await sender.fire(alert(instance="n3"))
        await sender.resolve(a2.key)
        a4 = await sender.fire(alert(instance="n4"))  # full: the resolved n2 goes first
        assert sender.get(a2.key) is None and sender.get(a1.key) is not None
        assert sender.stats()[0].dropped == 1
        a5 = await sender.fire(alert(instance="n5"))  # only firing ones left: the oldest goes
        assert sender.get(a1.key) is None
        assert {r.key for r in sender.firing()} == {a3.key, a4.key, a5.key}
        assert sender.stats()[0].dropped == 2 and sender.stats()[0].queued == 3
        assert sender.store.count() == 3
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2 and all("alert queue full (queue_max=3)" in e for e in errors)
        assert "dropping resolved alert" in errors[0] and "dropping firing alert" in errors[1]
        text = metrics_text(sender)
        assert (
            sample(text, "dcwatch_alerts_dropped_total", alertmanager=sender.targets[0].name) == 2
        )
    finally:
        await sender.stop()


async def test_delivered_resolved_alerts_are_evicted_silently(
    tmp_path: Path, am: FakeAlertmanager, caplog: pytest.LogCaptureFixture
) -> None:
    sender = AlertSender(config(tmp_path, am.url, queue_max=2, resolved_resends=5))
    await sender.start(background=False)
    try:
        a1 = await sender.fire(alert(instance="n1"))
        await sender.fire(alert(instance="n2"))
        await sender.resolve(a1.key)
        await sender.flush()  # n1's resolve delivered once; it stays for more resends
        assert sender.get(a1.key) is not None
        await sender.fire(alert(instance="n3"))
        assert sender.get(a1.key) is None
        assert sender.stats()[0].dropped == 0
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await sender.stop()


async def test_corrupt_store_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, dead_url())
    cfg.state_dir.mkdir(parents=True)
    (cfg.state_dir / "alerts.sqlite3").write_bytes(b"this is not a database" * 100)
    sender = AlertSender(cfg)
    await sender.start(background=False)
    try:
        await sender.fire(alert())
        assert sender.store.count() == 1
        assert list(cfg.state_dir.glob("alerts.sqlite3.corrupt-*"))
        assert "unreadable" in caplog.text
    finally:
        await sender.stop()


# --- without Alertmanager -------------------------------------------------------------------


async def test_log_only_mode_writes_json_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    async with AlertSender(cfg) as sender:
        rec = await sender.fire(alert(gpu="3"))
        await sender.fire(alert(gpu="3"))  # no change: no line
        await sender.resolve(rec.key)
        assert sender.get(rec.key) is None  # nothing to deliver: forgotten at once
        assert sender.firing() == []
        text = metrics_text(sender)
    entries = list(read_alert_log(cfg.state_dir / "alerts.jsonl"))
    assert [e["status"] for e in entries] == ["firing", "resolved"]
    for e in entries:
        assert set(e) >= {"time", "key", "labels", "annotations", "startsAt", "endsAt"}
        assert e["labels"]["gpu"] == "3" and e["startsAt"] == entries[0]["startsAt"]
    assert ts(entries[1]["endsAt"]) == pytest.approx(rec.resolved_at, abs=0.002)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("alert firing: alertname=DcwatchAnomaly severity=critical")
    assert sample(text, "dcwatch_alerts_sent_total", alertmanager="log") == 2
    assert sample(text, "dcwatch_alerts_held", state="firing") == 0


async def test_unwritable_alert_log_is_counted(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sender = AlertSender(config(tmp_path, alert_log=blocker / "alerts.jsonl"))
    async with sender:
        await sender.fire(alert())
        assert sender.log_stats.dropped == 1 and sender.log_stats.up is False


# --- health ---------------------------------------------------------------------------------


async def test_problems_name_an_unreachable_alertmanager_until_it_answers(tmp_path: Path) -> None:
    fake = FakeAlertmanager()  # configured, not listening yet
    with_password = fake.url.replace("http://", "http://am-user:s3cret@")
    sender = AlertSender(config(tmp_path, with_password, timeout=0.5))
    await sender.start(background=False)
    try:
        assert sender.problems() == []  # nothing tried yet: nothing wrong
        await sender.fire(alert())
        assert not await sender.flush()
        (problem,) = sender.problems()
        assert problem.startswith(f"alertmanager {fake.url} unreachable")
        assert "1 alerts queued" in problem and "s3cret" not in problem
        await fake.start()
        assert await sender.flush()
        assert sender.problems() == []
    finally:
        await sender.stop()
        await fake.stop()


async def test_problems_name_an_unwritable_alert_log_and_a_full_queue(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sender = AlertSender(config(tmp_path, alert_log=blocker / "alerts.jsonl", queue_max=1))
    async with sender:
        await sender.fire(alert())
        problems = sender.problems()
    assert any("alert log" in p and "cannot be written" in p for p in problems)
    assert any("alert queue full (1 of queue_max=1)" in p for p in problems)


# --- in an aiohttp app ----------------------------------------------------------------------


async def test_cleanup_ctx_in_an_app(
    tmp_path: Path, am: FakeAlertmanager, aiohttp_client: Any
) -> None:
    sender = AlertSender(config(tmp_path, am.url))
    app = web.Application()
    app.cleanup_ctx.append(sender.cleanup_ctx)

    async def fire(request: web.Request) -> web.Response:
        await sender.fire(alert(instance=request.query["instance"]))
        return web.Response(text="ok")

    app.router.add_post("/fire", fire)
    client = await aiohttp_client(app)
    assert (await client.post("/fire?instance=node-9")).status == 200
    await eventually(lambda: am.alerts, what="delivery from the app")
    assert am.alerts[0]["labels"]["instance"] == "node-9"
    await client.close()
    assert sender.delivery._tasks == [] and sender.delivery._session is None
