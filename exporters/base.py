"""What every collector shares: the metric table type, the collector base class, errors."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from agent.config import AgentConfig

PREFIX = "dcwatch_"
_UNITS = (
    "seconds",
    "bytes",
    "joules",
    "watts",
    "celsius",
    "hertz",
    "rpm",
    "ratio",
    "volts",
    "amperes",
    "bytes_per_second",
)


class NoDataError(Exception):
    """The hardware this collector reads is not present. Not an error: logged once at debug."""


@dataclass(frozen=True)
class MetricSpec:
    """Name, help, type and label names of one metric family: declared once, in one table."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    kind: Literal["gauge", "counter"] = "gauge"

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"metric {self.name} must start with {PREFIX}")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name} must end with _total")

    @property
    def unit(self) -> str:
        base = self.name.removesuffix("_total")
        return next((u for u in _UNITS if base.endswith("_" + u)), "")

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """A fresh, empty family for this scrape."""
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels, unit=self.unit)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels, unit=self.unit)


@dataclass
class Families:
    """Per-scrape builder: ``fams.add(SPEC, value, *label_values)``; ``None`` values are omitted.

    Families are created lazily so a metric with no samples is not exposed at all.
    """

    _fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = field(default_factory=dict)

    def add(self, spec: MetricSpec, value: float | int | None, *labels: str) -> None:
        if value is None:
            return
        fam = self._fams.get(spec.name)
        if fam is None:
            fam = self._fams[spec.name] = spec.family()
        fam.add_metric(list(labels), value)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._fams.values())


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
