"""The metric names dcwatch declares (agent collectors, the collector wrapper, the analyzer) and
the names a PromQL text refers to: rules and dashboards may only name declared metrics."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from dcwatch.exporters import registry
from dcwatch.exposition import MetricSpec

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
# Modules whose module-level MetricSpec constants are exported (besides collectors' METRICS).
# dcwatch.detectors.capacity.planner is optional while it is being written.
SPEC_MODULES = (
    "dcwatch.agent.registry",
    "dcwatch.detectors.web.metrics",
    "dcwatch.detectors.alerting.sender",
)
OPTIONAL_SPEC_MODULES = ("dcwatch.detectors.capacity.planner",)
# Series Prometheus itself adds for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')


def _specs(module: object) -> Iterable[MetricSpec]:
    for value in vars(module).values():
        if isinstance(value, MetricSpec):
            yield value
        elif isinstance(value, tuple | list) and value and isinstance(value[0], MetricSpec):
            yield from value


def declared_metrics() -> set[str]:
    """Every metric family name the agent or the analyzer can export."""
    names = {m.name for e in registry.entries() for m in e.cls.METRICS}
    for mod in SPEC_MODULES:
        names |= {s.name for s in _specs(importlib.import_module(mod))}
    for mod in OPTIONAL_SPEC_MODULES:
        try:
            names |= {s.name for s in _specs(importlib.import_module(mod))}
        except ModuleNotFoundError as e:
            if e.name != mod:  # the module exists but something it imports does not
                raise
    return names


def rule_groups() -> list[dict]:
    return [
        g for p in sorted(RULES_DIR.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]
    ]


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def referenced_metrics(expr: str) -> set[str]:
    """dcwatch metric and recording-rule names in a PromQL expression (strings ignored)."""
    text = _STRINGS.sub('""', expr)
    return {t for t in _IDENT.findall(text) if "dcwatch_" in t}


def unknown_metrics(expr: str) -> set[str]:
    """Names ``expr`` refers to that nothing declares or records."""
    known = declared_metrics() | recorded_names()
    return {n for n in referenced_metrics(expr) if n not in known}
