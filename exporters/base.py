"""What every collector shares: the collector base class, its dependencies, errors.

``MetricSpec`` and ``Families`` (the metric table type and the per-scrape builder) come from the
core, :mod:`dcwatch.exposition`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from prometheus_client.core import Metric

from dcwatch.exposition import MetricSpec
from dcwatch.settings import Setting


class NoDataError(Exception):
    """The hardware this collector reads is not present. Not an error: logged once at debug."""


@dataclass(frozen=True)
class CollectorDeps:
    """Things a collector may need that tests replace: the NVML module, a command runner."""

    nvml: Any = None  # a module with pynvml's API; None = import pynvml
    run_command: Any = None  # callable(argv, timeout) -> str; None = subprocess


class CollectorConfig(Protocol):
    """What a collector reads of the agent's configuration (the agent's config satisfies it)."""

    @property
    def sysfs(self) -> Path: ...
    @property
    def procfs(self) -> Path: ...
    @property
    def rediscover_interval(self) -> float: ...
    @property
    def collector_timeout(self) -> float: ...
    @property
    def options(self) -> Mapping[str, Any]: ...


class Collector:
    """Base class. Subclasses set no state in ``__init__`` beyond config and cheap setup;
    ``collect()`` builds fresh families every scrape; ``close()`` releases resources.

    A collector's own options are declared beside it: ``SETTINGS`` (keys ``<name>.<option>``,
    which give the YAML key, the ``--<name>-<option>`` flag and the ``DCWATCH_*`` variable) and
    ``Options``, a frozen dataclass with one field per option. The agent resolves them with its
    own settings and hands each collector its ``Options`` as ``self.options``.
    """

    name: ClassVar[str] = ""
    METRICS: ClassVar[Sequence[MetricSpec]] = ()
    SETTINGS: ClassVar[Sequence[Setting]] = ()
    Options: ClassVar[type | None] = None
    options: Any

    def __init__(self, config: CollectorConfig, deps: CollectorDeps | None = None) -> None:
        self.config = config
        self.deps = deps or CollectorDeps()
        self.log = logging.getLogger(f"dcwatch.collector.{self.name}")
        given = config.options.get(self.name)
        self.options = given if given is not None else self.default_options()

    @classmethod
    def options_from(cls, values: Mapping[str, Any]) -> Any:
        """Build ``Options`` from resolved setting values (keyed ``<name>.<option>``)."""
        if cls.Options is None:
            return None
        return cls.Options(**{s.key.split(".", 1)[1]: values[s.key] for s in cls.SETTINGS})

    @classmethod
    def default_options(cls) -> Any:
        return cls.options_from({s.key: s.default for s in cls.SETTINGS})

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError

    def read_errors(self) -> int:
        """Count of failed reads of individual files/fields so far (a counter)."""
        return 0

    def close(self) -> None:
        """Release files, handles and threads."""
