"""Runs the enabled collectors for each scrape: off the event loop, each bounded by a timeout,
each timed, failures isolated and reported as ``dcwatch_scrape_collector_success``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import Metric

from dcwatch.agent.config import AgentConfig
from dcwatch.exporters import registry
from dcwatch.exporters.base import Collector, CollectorDeps, NoDataError
from dcwatch.exposition import Families, MetricSpec

log = logging.getLogger("dcwatch.agent")

SUCCESS = MetricSpec(
    "dcwatch_scrape_collector_success",
    "1 if the collector's last run succeeded (no hardware also counts as success)",
    ("collector",),
)
DURATION = MetricSpec(
    "dcwatch_scrape_collector_duration_seconds",
    "Seconds the collector's last run took",
    ("collector",),
)
READ_ERRORS = MetricSpec(
    "dcwatch_scrape_collector_read_errors_total",
    "Individual files or fields that failed to read (reported as absent)",
    ("collector",),
    kind="counter",
)
FAILURES = MetricSpec(
    "dcwatch_scrape_collector_failures_total",
    "Collector runs that raised or timed out",
    ("collector",),
    kind="counter",
)


@dataclass
class CollectorState:
    """What the last run of one collector left, for /metrics, / and /healthz."""

    ok: bool = False
    runs: int = 0  # runs finished, failed or timed out: 0 = not run yet
    no_data: bool = False
    duration: float = 0.0
    last_success: float | None = None  # unix time
    last_error: str = ""
    failures: int = 0


def build_collectors(config: AgentConfig, deps: CollectorDeps | None = None) -> list[Collector]:
    """Instantiate the enabled collectors in table order."""
    return [registry.get(name).cls(config, deps) for name in config.collectors]


class _Lane:
    """One daemon thread that runs one collector's reads, one at a time.

    Daemon, so a read stuck in the kernel (a hung sysfs file, a wedged driver) never keeps the
    agent from exiting on SIGTERM; one per collector, so a stuck collector holds only its own.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"collector-{name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def submit(self, fn: Callable[[], list[Metric]]) -> asyncio.Future[list[Metric]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Metric]] = loop.create_future()

        def settle(result: list[Metric] | None, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result or [])

        def job() -> None:
            try:
                result, error = fn(), None
            except BaseException as e:  # handed to the awaiting scrape
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is stopping
                loop.call_soon_threadsafe(settle, result, error)

        self._jobs.put(job)
        return fut

    def stop(self) -> None:
        self._jobs.put(None)


class CollectorRunner:
    """Runs collectors concurrently in threads.

    Concurrent scrapes share one in-flight run per collector, so 32 scrapers cost one read of
    the hardware and a hung read never piles up threads: later scrapes wait on the same run,
    bounded by the timeout, until it returns.
    """

    def __init__(self, collectors: Sequence[Collector], timeout: float) -> None:
        self.collectors = list(collectors)
        self.timeout = timeout
        self.state = {c.name: CollectorState() for c in self.collectors}
        self._inflight: dict[str, asyncio.Future[list[Metric]]] = {}
        self._lanes = {c.name: _Lane(c.name) for c in self.collectors}
        self._logged_nodata: set[str] = set()

    async def scrape(self) -> list[Metric]:
        results = await asyncio.gather(*(self._run(c) for c in self.collectors))
        out: list[Metric] = [m for metrics in results for m in metrics]
        out.extend(self._self_families())
        return out

    async def _run(self, c: Collector) -> list[Metric]:
        fut = self._inflight.get(c.name)
        if fut is None or fut.done():
            fut = self._lanes[c.name].submit(lambda: self._collect(c))
            self._inflight[c.name] = fut
        st = self.state[c.name]
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            st.ok = False
            st.runs += 1
            st.failures += 1
            st.last_error = f"timed out after {self.timeout:g}s"
            log.warning(
                "collector %s timed out after %gs; scrape goes on without it", c.name, self.timeout
            )
            return []
        except Exception as e:  # one collector never fails the scrape
            return self._failed(c, e)

    def _collect(self, c: Collector) -> list[Metric]:
        st = self.state[c.name]
        t0 = time.perf_counter()
        try:
            metrics = [m for m in c.collect() if m.samples]
            st.no_data = False
        except NoDataError as e:
            metrics = []
            st.no_data = True
            if c.name not in self._logged_nodata:
                self._logged_nodata.add(c.name)
                log.debug("collector %s: no data (%s)", c.name, e)
        except Exception:
            st.duration = time.perf_counter() - t0
            raise
        st.duration = time.perf_counter() - t0
        st.ok = True
        st.runs += 1
        st.last_success = time.time()
        st.last_error = ""
        return metrics

    def _failed(self, c: Collector, e: BaseException) -> list[Metric]:
        st = self.state[c.name]
        st.ok = False
        st.runs += 1
        st.failures += 1
        st.last_error = f"{type(e).__name__}: {e}"
        log.error(
            "collector %s failed: %s; other collectors unaffected, retried next scrape",
            c.name,
            st.last_error,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        return []

    def _self_families(self) -> Iterable[Metric]:
        f = Families()
        for c in self.collectors:
            st = self.state[c.name]
            f.add(SUCCESS, 1 if st.ok else 0, c.name)
            f.add(DURATION, st.duration, c.name)
            f.add(READ_ERRORS, c.read_errors(), c.name)
            f.add(FAILURES, st.failures, c.name)
        return f

    def failing(self) -> list[str]:
        """Collectors whose last run failed or timed out (never-run ones are not judged yet)."""
        return sorted(n for n, s in self.state.items() if s.runs and not s.ok)

    def stuck(self) -> list[str]:
        """Collectors whose read is still running (e.g. blocked in a hung sysfs file)."""
        return sorted(n for n, f in self._inflight.items() if not f.done())

    def close(self) -> None:
        stuck = set(self.stuck())
        for c in self.collectors:
            if c.name in stuck:
                # close() could block on the same hung resource; its daemon thread dies with us
                log.warning("collector %s is still blocked in a read; not waiting for it", c.name)
                continue
            try:
                c.close()
            except Exception:
                log.exception("closing collector %s", c.name)
        for lane in self._lanes.values():
            lane.stop()
