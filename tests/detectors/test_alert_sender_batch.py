"""The sender's batch call (``apply``): the same outcome as one call per alert (records, versions,
startsAt, store rows, history, the alert log, what Alertmanager gets), one transaction of each
kind per call however many alerts, eviction under a batch, capped logging and restarts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest

from dcwatch.detectors.alerting import log as alert_log_module
from dcwatch.detectors.alerting.alerts import Alert, AlertRecord, rfc3339
from dcwatch.detectors.alerting.history import AlertHistory
from dcwatch.detectors.alerting.log import AlertLog, read_alert_log
from dcwatch.detectors.alerting.queue import AlertStore
from dcwatch.detectors.alerting.sender import LOG_LINES_MAX, AlertSender
from tests.detectors.test_alert_sender import FakeAlertmanager, alert, config, dead_url

T0 = 1_700_000_000.0


class Clock:
    """A wall clock the test moves: both paths see the same times."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def state(sender: AlertSender) -> list[list[Any]]:
    """Every held record, and what the store and the history hold, in a comparable form."""
    held = sorted((k, *astuple(r)) for k, r in sender._records.items())
    stored = AlertStore(sender.config.state_dir)
    rows = sorted((r.key, *astuple(r)) for r in stored.open())
    stored.close()
    hist = sorted(
        (p.key, p.starts_at, p.resolved_at, p.summary) for p in sender.history.since(0, None, 10**6)
    )
    return [held, rows, hist]


def log_lines(sender: AlertSender) -> list[dict[str, Any]]:
    assert sender.alert_log is not None
    return list(read_alert_log(sender.alert_log.path))


def delivered(am: FakeAlertmanager) -> list[tuple[Any, ...]]:
    return sorted(
        (sorted(a["labels"].items()), sorted(a["annotations"].items()), a["startsAt"], a["endsAt"])
        for a in am.alerts
    )


def count_calls(obj: Any, name: str) -> list[int]:
    """Wrap ``obj.name`` to count its calls (the one-item methods go through it too)."""
    calls = [0]
    fn: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        return fn(*args, **kw)

    setattr(obj, name, wrapper)
    return calls


async def one_by_one(sender: AlertSender, fire: Sequence[Alert], resolve: Sequence[str]) -> Any:
    resolved = [await sender.resolve(k) for k in resolve]
    fired = [await sender.fire(a) for a in fire]
    return fired, resolved


async def batched(sender: AlertSender, fire: Sequence[Alert], resolve: Sequence[str]) -> Any:
    res = await sender.apply(fire=fire, resolve=resolve)
    return list(res.fired), list(res.resolved)


def key(instance: str) -> str:
    return alert(instance=instance).key


# --- the same outcome as one call per alert -------------------------------------------------


@pytest.mark.parametrize("with_am", [True, False], ids=["alertmanager", "log-only"])
async def test_batch_equals_one_call_per_alert(tmp_path: Path, with_am: bool) -> None:
    outcomes = []
    for name, step in (("single", one_by_one), ("batch", batched)):
        am = await FakeAlertmanager().start() if with_am else None
        urls = (am.url,) if am else ()
        log_file = tmp_path / name / "alerts.jsonl"
        cfg = config(tmp_path / name, *urls, alert_log=log_file, resend_interval=60)
        clock = Clock()
        sender = AlertSender(cfg, clock=clock)
        await sender.start(background=False)
        try:
            for n in ("a", "b", "c", "r"):  # the state before the pass, built one by one
                await sender.fire(alert(instance=n, score=0.5))
            await sender.resolve(key("r"))
            await sender.flush()
            clock.now += 15
            returned = await step(
                sender,
                [
                    alert(instance="a", score=0.9),  # resolved below first: a new incident
                    alert(instance="b", score=0.7),  # firing, annotations changed: kept startsAt
                    alert(instance="c", score=0.5),  # firing, unchanged
                    alert(instance="d", score=0.6),  # new
                    alert(instance="d", score=0.8),  # twice in one pass: the last one wins
                    alert(instance="r", score=0.6),  # resolved before: a new incident
                ],
                [key("a"), key("r"), key("x")],  # firing, already resolved, unknown
            )
            clock.now += 15
            await sender.flush()
            fired, resolved = returned
            outcomes.append(
                (
                    [(r.key, r.starts_at, r.version, r.alert) for r in fired],
                    resolved,
                    state(sender),
                    log_lines(sender),
                    delivered(am) if am else None,
                    [(s.sent, s.dropped) for s in sender.stats()],
                )
            )
        finally:
            await sender.stop()
            if am:
                await am.stop()
    single, batch = outcomes
    assert batch == single
    fired, resolved, (_, _, hist), entries, _, _ = batch
    assert resolved == [True, False, False]
    by_instance = {r[3].labels["instance"]: r for r in fired}
    assert by_instance["a"][1] == T0 + 15 and by_instance["b"][1] == T0  # new vs kept startsAt
    assert by_instance["d"][3].annotations["score"] == "0.800"
    assert [e["status"] for e in entries[-4:]] == ["resolved", "firing", "firing", "firing"]
    assert len(hist) == 7  # a and r twice (two incidents each), b, c and d once
    if with_am:
        assert by_instance["a"][2] == 3  # fired, resolved, fired: every change reaches AM


async def test_eviction_under_a_batch_matches_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes, down = [], dead_url()
    for name, step in (("single", one_by_one), ("batch", batched)):
        cfg = config(tmp_path / name, down, queue_max=4)
        clock = Clock()
        sender = AlertSender(cfg, clock=clock)
        await sender.start(background=False)
        try:
            for n in ("n1", "n2", "n3", "n4"):
                clock.now += 1
                await sender.fire(alert(instance=n))
            clock.now += 1
            await sender.resolve(key("n2"))
            clock.now += 1
            await sender.resolve(key("n3"))
            caplog.clear()
            clock.now += 15
            # n5 evicts n2 (resolved, the older); n3 re-fires (a new version, ranked again);
            # n6 and n7 evict the oldest firing ones: n1, then n4.
            await step(sender, [alert(instance=n) for n in ("n5", "n3", "n6", "n7")], [])
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            held = sorted(r.alert.labels["instance"] for r in sender._records.values())
            outcomes.append((held, state(sender), errors, sender.stats()[0].dropped))
        finally:
            await sender.stop()
    single, batch = outcomes
    assert batch == single
    held, (_, rows, _), errors, dropped = batch
    assert held == ["n3", "n5", "n6", "n7"]
    assert len(rows) == 4 and dropped == 3
    assert len(errors) == 3 and all("alert queue full (queue_max=4)" in e for e in errors)
    assert ["dropping resolved" in e for e in errors] == [True, False, False]


async def test_a_batch_larger_than_the_queue_keeps_the_newest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sender = AlertSender(config(tmp_path, dead_url(), queue_max=3))
    await sender.start(background=False)
    try:
        res = await sender.apply(fire=[alert(instance=f"n{i}") for i in range(5)])
        assert [r.labels["instance"] for r in (x.alert for x in sender.firing())] == [
            "n2",
            "n3",
            "n4",
        ]
        assert sender.get(res.fired[0].key) is None and sender.store.count() == 3
        assert sender.stats()[0].dropped == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2 and all("dropping firing alert" in e for e in errors)
        assert len(sender.history.since(0)) == 5  # they did fire: history keeps them
    finally:
        await sender.stop()


async def test_a_batch_reaches_alertmanager_then_is_forgotten_after_its_resolves(
    tmp_path: Path,
) -> None:
    am = await FakeAlertmanager().start()
    clock = Clock()
    sender = AlertSender(config(tmp_path, am.url, resolved_resends=2), clock=clock)
    await sender.start(background=False)
    try:
        n = 1200  # more than one POST's worth
        res = await sender.apply(fire=[alert(instance=f"n{i}") for i in range(n)])
        assert await sender.flush()
        assert [len(p["alerts"]) for p in am.posts] == [500, 500, 200]
        assert {a["startsAt"] for a in am.alerts} == {rfc3339(T0)}
        clock.now += 15
        await sender.apply(resolve=[r.key for r in res.fired])
        for _ in range(2):  # resolved_resends deliveries of the resolved state, then forgotten
            assert sender.store.count() == n
            sender.targets[0].resync = True  # resend now (no timing in tests)
            assert await sender.flush()
        resolved = am.alerts[n:]
        assert len(resolved) == 2 * n and {a["endsAt"] for a in resolved} == {rfc3339(T0 + 15)}
        assert sender._records == {} and sender.store.count() == 0
    finally:
        await sender.stop()
        await am.stop()


# --- a storm: one transaction per call, bounded logging, restarts -------------------------


async def test_storm_costs_one_transaction_per_call_and_survives_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 5000
    caplog.set_level(logging.INFO, "dcwatch.alerts")
    cfg = config(tmp_path, dead_url(), alert_log=tmp_path / "alerts.jsonl")
    nodes = [f"node-{i:04d}" for i in range(n)]
    sender = AlertSender(cfg)
    await sender.start(background=False)
    store_writes = count_calls(sender.store, "write")
    history_writes = count_calls(sender.history, "record_many")
    assert sender.alert_log is not None
    log_writes = count_calls(sender.alert_log, "write_many")
    hops = count_calls(sender, "_io")
    try:
        caplog.clear()
        first = await sender.apply(fire=[alert(instance=i, score=0.5) for i in nodes])
        assert [store_writes[0], history_writes[0], log_writes[0], hops[0]] == [1, 1, 1, 1]
        lines = [r.getMessage() for r in caplog.records if r.name == "dcwatch.alerts"]
        assert len(lines) == LOG_LINES_MAX + 1
        assert lines[0].startswith("alert firing: alertname=DcwatchAnomaly severity=critical")
        assert lines[-1].startswith(
            f"... and {n - LOG_LINES_MAX} more alert state changes ({n - LOG_LINES_MAX} firing, "
            f"0 resolved); see the alert log {cfg.alert_log} and the alert history"
        )
        # the next pass: every alert still firing, its values moved: one store write, no more
        await sender.apply(fire=[alert(instance=i, score=0.9) for i in nodes])
        assert [store_writes[0], history_writes[0], log_writes[0], hops[0]] == [2, 1, 1, 2]
        assert {r.alert.annotations["score"] for r in sender.firing()} == {"0.900"}
    finally:
        await sender.stop()

    again = AlertSender(cfg)
    await again.start(background=False)
    try:
        held = {r.key: r for r in again.firing()}
        assert len(held) == n
        assert all(held[r.key].starts_at == r.starts_at for r in first.fired)
        assert {r.alert.annotations["score"] for r in held.values()} == {"0.900"}
        store_writes = count_calls(again.store, "write")
        res = await again.apply(resolve=[r.key for r in first.fired])
        assert all(res.resolved) and store_writes == [1]
    finally:
        await again.stop()

    third = AlertSender(cfg)
    await third.start(background=False)
    try:  # resolved, not yet delivered: every one still held, to be sent
        assert len(third._records) == n and third.firing() == []
        assert third.stats()[0].queued == n
        past = third.history.since(0, None, 2 * n)
        assert len(past) == n and all(p.resolved_at is not None for p in past)
        entries = list(read_alert_log(tmp_path / "alerts.jsonl"))
        assert [e["status"] for e in entries] == ["firing"] * n + ["resolved"] * n
    finally:
        await third.stop()


async def test_log_only_storm_is_logged_in_capped_lines_and_forgotten_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    async with AlertSender(cfg) as sender:
        fired = (await sender.apply(fire=[alert(instance=f"n{i}") for i in range(50)])).fired
        caplog.clear()
        small = await sender.apply(resolve=[r.key for r in fired[:LOG_LINES_MAX]])
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(lines) == LOG_LINES_MAX and all(small.resolved)  # no summary: nothing more
        caplog.clear()
        await sender.apply(resolve=[r.key for r in fired[LOG_LINES_MAX:]])
        assert sender._records == {} and sender.store.count() == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == LOG_LINES_MAX + 1
    assert all(line.startswith("alert resolved: ") for line in lines[:-1])
    assert lines[-1].startswith("... and 10 more alert state changes (0 firing, 10 resolved)")
    assert len(list(read_alert_log(cfg.state_dir / "alerts.jsonl"))) == 100  # every entry kept
    assert sender.log_stats.sent == 100


async def test_a_failing_alert_log_counts_every_entry_of_the_batch(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    async with AlertSender(config(tmp_path, alert_log=blocker / "alerts.jsonl")) as sender:
        res = await sender.apply(fire=[alert(instance=f"n{i}") for i in range(7)])
        assert len(res.fired) == 7 and sender.store.count() == 7  # alerting goes on
        assert sender.log_stats.dropped == 7 and sender.log_stats.up is False


async def test_an_empty_pass_touches_nothing(tmp_path: Path) -> None:
    async with AlertSender(config(tmp_path)) as sender:
        hops = count_calls(sender, "_io")
        res = await sender.apply()
        assert (res.fired, res.resolved, hops[0]) == ((), (), 0)


# --- the pieces: one history transaction, one log write -------------------------------------


def test_history_record_many_is_one_transaction_and_equals_record(tmp_path: Path) -> None:
    recs = [
        AlertRecord(Alert({"alertname": "X", "instance": f"n{i}"}, {"summary": "s"}), T0 + i)
        for i in range(250)
    ]
    ended = [AlertRecord(r.alert, r.starts_at, T0 + 600) for r in recs[:100]]
    one = AlertHistory(tmp_path / "one")
    for r in recs + ended:
        one.record(r, T0)
    many = AlertHistory(tmp_path / "many")
    statements: list[str] = []
    many._conn().set_trace_callback(statements.append)
    many.record_many(recs + ended, T0)
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN"]
    assert many.since(0, None, 1000) == one.since(0, None, 1000)
    assert len(many.since(0, None, 1000)) == 250
    one.close()
    many.close()


def test_history_record_many_prunes_when_it_passes_a_hundredth_row(tmp_path: Path) -> None:
    h = AlertHistory(tmp_path, keep_seconds=60)
    old = AlertRecord(Alert({"alertname": "X", "instance": "old"}), T0, T0 + 1)
    h.record(old, T0 + 1)  # row 1: a prune, but it is too new to go
    late = T0 + 999
    new = [AlertRecord(Alert({"alertname": "X", "instance": f"n{i}"}), late) for i in range(100)]

    def instances() -> set[str]:
        return {p.instance for p in h.since(0, None, 1000)}

    h.record_many(new[:98], late)  # rows 2-99: no prune
    assert "old" in instances()
    h.record_many(new[98:], late)  # rows 100-101: passes row 101, prunes
    assert "old" not in instances() and len(instances()) == 100
    h.close()


def test_alert_log_write_many_is_one_write_of_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real = alert_log_module.os.write

    def write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(alert_log_module.os, "write", write)
    log = AlertLog(tmp_path / "sub" / "alerts.jsonl")
    log.write_many({"n": i, "text": "é"} for i in range(1000))
    log.write_many([])  # nothing: no write, no empty line
    log.write({"n": 1000})
    assert len(writes) == 2
    assert [e["n"] for e in read_alert_log(log.path)] == list(range(1001))
    assert log.path.read_text(encoding="utf-8").count("\n") == 1001


def test_store_write_deletes_and_puts_in_one_transaction(tmp_path: Path) -> None:
    store = AlertStore(tmp_path)
    store.open()
    recs = [
        AlertRecord(Alert({"alertname": "X", "instance": f"n{i}"}), T0, None, T0) for i in range(3)
    ]
    store.put(recs[:2])
    assert store._db is not None
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.write(put=recs[2:], delete=[recs[0].key])
    store.write()  # nothing to do: no transaction
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN"]
    assert sorted(r.alert.labels["instance"] for r in store._load()) == ["n1", "n2"]
    store.close()
