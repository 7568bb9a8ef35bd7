"""Runs the enabled collectors for each scrape: off the event loop, each bounded by a timeout,
each timed, failures isolated and reported as ``dcwatch_scrape_collector_success``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    no_data: bool = False
    duration: float = 0.0
    last_success: float | None = None  # unix time
    last_error: str = ""
    failures: int = 0


def build_collectors(config: AgentConfig, deps: CollectorDeps | None = None) -> list[Collector]:
    """Instantiate the enabled collectors in table order."""
    return [registry.get(name).cls(config, deps) for name in config.collectors]


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
        self._pool = ThreadPoolExecutor(
            max_workers=max(2, len(self.collectors) + 1), thread_name_prefix="collector"
        )
        self._logged_nodata: set[str] = set()

    async def scrape(self) -> list[Metric]:
        results = await asyncio.gather(*(self._run(c) for c in self.collectors))
        out: list[Metric] = [m for metrics in results for m in metrics]
        out.extend(self._self_families())
        return out

    async def _run(self, c: Collector) -> list[Metric]:
        loop = asyncio.get_running_loop()
        fut = self._inflight.get(c.name)
        if fut is None or fut.done():
            fut = loop.run_in_executor(self._pool, self._collect, c)
            self._inflight[c.name] = fut
        st = self.state[c.name]
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            st.ok = False
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
        st.last_success = time.time()
        st.last_error = ""
        return metrics

    def _failed(self, c: Collector, e: BaseException) -> list[Metric]:
        st = self.state[c.name]
        st.ok = False
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

    def close(self) -> None:
        for c in self.collectors:
            try:
                c.close()
            except Exception:
                log.exception("closing collector %s", c.name)
        self._pool.shutdown(wait=False, cancel_futures=True)
