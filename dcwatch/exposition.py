"""Metric specs and exposition, shared by the agent and the analyzer.

A :class:`MetricSpec` declares a family once (name, help, type, labels); :class:`Families` builds
a scrape's families from specs; :func:`metrics_response` encodes them as the scraper asked (text
or OpenMetrics, gzip or not).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om_exposition

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


# The classic text format (what generate_latest writes for our ASCII names); pinned so the
# header does not change with prometheus_client releases.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OM_CONTENT_TYPE = om_exposition.CONTENT_TYPE_LATEST


class _Families:
    """Adapter: prometheus_client's encoders want an object with ``collect()``."""

    def __init__(self, metrics: Sequence[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Sequence[Metric]:
        return self._metrics


def wants_openmetrics(accept: str) -> bool:
    """True when the scraper prefers OpenMetrics (Prometheus sends it first in Accept)."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media == "application/openmetrics-text":
            q = next((p[2:] for p in params if p.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return True
    return False


def encode(metrics: Sequence[Metric], accept: str) -> tuple[bytes, str]:
    if wants_openmetrics(accept):
        return om_exposition.generate_latest(_Families(metrics)), OM_CONTENT_TYPE
    return exposition.generate_latest(_Families(metrics)), TEXT_CONTENT_TYPE


def accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        enc, *params = (p.strip() for p in part.split(";"))
        if enc in ("gzip", "*") and not any(p.replace(" ", "") == "q=0" for p in params):
            return True
    return False


def metrics_response(request: web.Request, metrics: Sequence[Metric]) -> web.Response:
    """``metrics`` as the scraper asked: text or OpenMetrics, gzip or not (agent and analyzer)."""
    body, ctype = encode(metrics, request.headers.get("Accept", ""))
    headers = {"Content-Type": ctype}
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        body = gzip.compress(body, compresslevel=1)  # level 1: most of the gain, little CPU
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)
