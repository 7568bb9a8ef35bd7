"""The ``self`` collector: build info and the agent's own CPU and memory (psutil)."""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client.core import Metric

from dcwatch import __version__
from dcwatch.exporters.base import Collector, CollectorConfig, CollectorDeps
from dcwatch.exporters.registry import register
from dcwatch.exposition import Families, MetricSpec

BUILD_INFO = MetricSpec(
    "dcwatch_build_info", "dcwatch version and Python runtime (always 1)", ("version", "python")
)
CPU = MetricSpec(
    "dcwatch_process_cpu_seconds_total", "CPU time used by the agent process", kind="counter"
)
RSS = MetricSpec("dcwatch_process_resident_memory_bytes", "Resident memory of the agent process")
FDS = MetricSpec("dcwatch_process_open_fds", "Open file descriptors of the agent process")
THREADS = MetricSpec("dcwatch_process_threads", "Threads of the agent process")


@register("self", default=True, order=90, description="the agent's own build info, CPU and memory")
class SelfCollector(Collector):
    """The agent's own build info, CPU seconds, resident memory, fds and threads."""

    METRICS = (BUILD_INFO, CPU, RSS, FDS, THREADS)

    def __init__(self, config: CollectorConfig, deps: CollectorDeps | None = None) -> None:
        super().__init__(config, deps)
        import psutil  # here, not at import: a disabled self collector costs no RSS (~0.9 MiB)

        self._proc = psutil.Process()
        self._python = platform.python_version()

    def collect(self) -> Iterable[Metric]:
        f = Families()
        f.add(BUILD_INFO, 1, __version__, self._python)
        with self._proc.oneshot():
            t = self._proc.cpu_times()
            f.add(CPU, t.user + t.system)
            f.add(RSS, self._proc.memory_info().rss)
            f.add(FDS, self._proc.num_fds())
            f.add(THREADS, self._proc.num_threads())
        return f
