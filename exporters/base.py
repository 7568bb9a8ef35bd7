"""What every collector shares: the collector base class, its dependencies, errors.

``MetricSpec`` and ``Families`` (the metric table type and the per-scrape builder) come from the
core, :mod:`dcwatch.exposition`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client.core import Metric

from dcwatch.exposition import MetricSpec

if TYPE_CHECKING:
    from dcwatch.agent.config import AgentConfig


class NoDataError(Exception):
    """The hardware this collector reads is not present. Not an error: logged once at debug."""


@dataclass(frozen=True)
class CollectorDeps:
    """Things a collector may need that tests replace: the NVML module, a command runner."""

    nvml: Any = None  # a module with pynvml's API; None = import pynvml
    run_command: Any = None  # callable(argv, timeout) -> str; None = subprocess


class Collector:
    """Base class. Subclasses set no state in ``__init__`` beyond config and cheap setup;
    ``collect()`` builds fresh families every scrape; ``close()`` releases resources."""

    name: ClassVar[str] = ""
    METRICS: ClassVar[Sequence[MetricSpec]] = ()

    def __init__(self, config: AgentConfig, deps: CollectorDeps | None = None) -> None:
        self.config = config
        self.deps = deps or CollectorDeps()
        self.log = logging.getLogger(f"dcwatch.collector.{self.name}")

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError

    def read_errors(self) -> int:
        """Count of failed reads of individual files/fields so far (a counter)."""
        return 0

    def close(self) -> None:
        """Release files, handles and threads."""
