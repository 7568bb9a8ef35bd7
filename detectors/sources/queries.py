"""Named queries: which series the analyzer reads, for both sources.

A query file is a YAML list of entries::

    - name: gpu_temperature              # the frame column (plus {gpu="N"} when split, below)
      query: dcwatch_gpu_temperature_celsius
      per: gpu                           # label that splits series within a node (gpu, device)
    - name: net_receive_bytes
      query: rate(dcwatch_network_receive_bytes_total[2m])
      per: device
    - name: hwmon_temperature_max
      query: max by (instance) (dcwatch_hwmon_temperature_celsius)

:class:`~dcwatch.detectors.sources.prometheus.PrometheusSource` sends ``query`` as PromQL. The
embedded source cannot run PromQL, so it understands the simple forms above: an optional outer
``sum|max|min|avg [by (...)]``, an optional ``rate|irate|increase(...[window])``, and a selector
with label matchers. A query beyond that is Prometheus-only (the embedded source skips it, with one
log line). Series of one node that land in one column are combined with ``agg`` (default: the
query's outer aggregation, else ``sum``) by both sources.

Presets are built-in query sets for the exporters a fleet may already run (:data:`PRESETS`):
``dcwatch`` (the agent's names, ``default_queries.yaml``), ``dcgm`` (NVIDIA dcgm-exporter's
``DCGM_FI_*``) and ``node_exporter`` (``node_*``), in ``presets/``. :func:`load_queries` reads the
union of the chosen presets and a query file; each preset's names carry its own prefix, and a
name given twice is refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dcwatch import durations
from dcwatch import settings as st

log = logging.getLogger("dcwatch.analyzer.queries")

AGGREGATIONS = {"sum": "sum", "max": "max", "min": "min", "avg": "mean", "mean": "mean"}
RATE_FUNCS = ("rate", "irate", "increase")
METRIC_NAME_RE = re.compile(r"\bdcwatch_[A-Za-z0-9_:]*")

_AGG_RE = re.compile(
    r"^(?P<agg>sum|max|min|avg)\s*(?:by\s*\([^)]*\))?\s*\((?P<inner>.*?)\)"
    r"\s*(?:by\s*\([^)]*\))?$",
    re.S,
)
_FUNC_RE = re.compile(
    r"^(?P<func>rate|irate|increase)\s*\((?P<sel>.*)\[\s*(?P<win>\w+)\s*\]\s*\)$", re.S
)
_SEL_RE = re.compile(r"^(?P<metric>[A-Za-z_:][\w:]*)\s*(?:\{(?P<matchers>.*)\})?$", re.S)
_MATCHER_RE = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_LABEL_RE = re.compile(r'([A-Za-z_]\w*)\s*=\s*"((?:[^"\\]|\\.)*)"')

DEFAULT_QUERIES_FILE = "default_queries.yaml"
# Built-in query sets by name, files next to this module (package data).
PRESET_FILES = {
    "dcwatch": DEFAULT_QUERIES_FILE,
    "dcgm": "presets/dcgm.yaml",
    "node_exporter": "presets/node_exporter.yaml",
}
PRESETS = tuple(PRESET_FILES)
DEFAULT_PRESETS = ("dcwatch",)


class QueryError(ValueError):
    """A query file or entry is malformed."""


def _unescape(v: str) -> str:
    if "\\" not in v:
        return v
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], v)


def parse_labels(text: str) -> dict[str, str]:
    """``'gpu="0",uuid="GPU-1"'`` (the text between an exposition line's braces) -> a dict."""
    return {k: _unescape(v) for k, v in _LABEL_RE.findall(text)}


def parse_duration(text: str) -> float:
    """A range window (``2m``, ``1h30m``, ``90s``) in seconds, in dcwatch's one duration grammar."""
    try:
        return durations.parse_duration(text)
    except ValueError as e:
        raise QueryError(f"bad duration: {e}") from None


@dataclass(frozen=True)
class Selector:
    """The embedded source's reading of a simple query."""

    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()  # (label, op, value), op in = != =~ !~
    func: str | None = None  # rate / irate / increase, or None for the level
    window: float = 0.0  # seconds, for func
    agg: str | None = None  # outer aggregation, normalised (sum/max/min/mean)

    def matches(self, labels: Mapping[str, str]) -> bool:
        for name, op, value in self.matchers:
            v = labels.get(name, "")
            if op == "=":
                ok = v == value
            elif op == "!=":
                ok = v != value
            elif op == "=~":
                ok = re.fullmatch(value, v) is not None
            else:
                ok = re.fullmatch(value, v) is None
            if not ok:
                return False
        return True


def parse_selector(query: str) -> Selector | None:
    """The simple forms the embedded source evaluates; None for anything else."""
    q = query.strip()
    agg = None
    m = _AGG_RE.match(q)
    if m:
        agg, q = AGGREGATIONS[m["agg"]], m["inner"].strip()
    func, window = None, 0.0
    m = _FUNC_RE.match(q)
    if m:
        func, q = m["func"], m["sel"].strip()
        try:
            window = parse_duration(m["win"])
        except QueryError:
            return None
    m = _SEL_RE.match(q)
    if m is None:
        return None
    matchers: list[tuple[str, str, str]] = []
    text = (m["matchers"] or "").strip()
    pos = 0
    while pos < len(text):
        mm = _MATCHER_RE.match(text, pos)
        if mm is None:
            return None
        matchers.append((mm[1], mm[2], _unescape(mm[3])))
        pos = mm.end()
    metric = m["metric"]
    if metric in ("sum", "max", "min", "avg", *RATE_FUNCS):
        return None
    return Selector(metric, tuple(matchers), func, window, agg)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    query: str
    per: str | None = None
    agg: str = "sum"
    selector: Selector | None = None  # None: Prometheus-only

    @property
    def metrics(self) -> tuple[str, ...]:
        """dcwatch metric names the query refers to."""
        return tuple(dict.fromkeys(METRIC_NAME_RE.findall(self.query)))


def _entry(raw: Any, where: str) -> NamedQuery:
    if not isinstance(raw, Mapping):
        raise QueryError(f"{where}: expected a mapping with name and query, got {raw!r}")
    unknown = set(raw) - {"name", "query", "per", "agg"}
    if unknown:
        raise QueryError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name, query = raw.get("name"), raw.get("query")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w:]*", name):
        raise QueryError(f"{where}: 'name' must be an identifier, got {name!r}")
    if not isinstance(query, str) or not query.strip():
        raise QueryError(f"{where} ({name}): 'query' must be a non-empty string")
    per = raw.get("per")
    if per is not None and (not isinstance(per, str) or not re.fullmatch(r"[A-Za-z_]\w*", per)):
        raise QueryError(f"{where} ({name}): 'per' must be a label name, got {per!r}")
    sel = parse_selector(query)
    agg = raw.get("agg", sel.agg if sel and sel.agg else "sum")
    if agg not in AGGREGATIONS:
        raise QueryError(f"{where} ({name}): 'agg' must be one of {', '.join(AGGREGATIONS)}")
    return NamedQuery(name, query.strip(), per, AGGREGATIONS[agg], sel)


def parse_queries(data: Any, source: str = "queries") -> tuple[NamedQuery, ...]:
    """Validate a loaded YAML document (a list of entries) into queries; names must be unique."""
    if not isinstance(data, list) or not data:
        raise QueryError(f"{source}: expected a non-empty YAML list of queries")
    out = tuple(_entry(raw, f"{source}: entry {i + 1}") for i, raw in enumerate(data))
    seen: set[str] = set()
    for q in out:
        if q.name in seen:
            raise QueryError(f"{source}: query name {q.name!r} appears twice")
        seen.add(q.name)
    return out


def to_presets(v: Any) -> tuple[str, ...]:
    """The ``queries_preset`` setting: a list or comma-separated string of preset names."""
    names = tuple(dict.fromkeys(n.lower() for n in st.to_str_list(v)))
    unknown = [n for n in names if n not in PRESET_FILES]
    if unknown:
        raise ValueError(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    return names


def preset_queries(name: str) -> tuple[NamedQuery, ...]:
    """The queries of one built-in preset."""
    if name not in PRESET_FILES:
        raise QueryError(f"unknown query preset {name!r}; known: {', '.join(PRESETS)}")
    # Next to this module (package data): works for wheels and editable installs alike.
    rel = PRESET_FILES[name]
    return _parse_text((Path(__file__).parent / rel).read_text(), f"detectors/sources/{rel}")


def load_queries(
    path: Path | str | None = None, presets: Sequence[str] = ()
) -> tuple[NamedQuery, ...]:
    """The union of the ``presets``' queries and those of the file at ``path``.

    Without presets: the file's queries alone (a file replaces the built-in set, as it always
    has), or the ``dcwatch`` preset when there is no file either. A query name found twice
    (in two presets, or in a preset and the file) is a QueryError naming both places."""
    chosen = tuple(presets) or (() if path is not None else DEFAULT_PRESETS)
    parts = [(f"preset {p}", preset_queries(p)) for p in dict.fromkeys(chosen)]
    if path is not None:
        parts.append((f"queries file {path}", _load_file(path)))
    if len(parts) == 1:
        return parts[0][1]
    where: dict[str, str] = {}
    out: list[NamedQuery] = []
    for source, queries in parts:
        for q in queries:
            if q.name in where:
                raise QueryError(
                    f"query name {q.name!r} is in both {where[q.name]} and {source}; "
                    "rename the one in the file"
                )
            where[q.name] = source
            out.append(q)
    return tuple(out)


def _load_file(path: Path | str) -> tuple[NamedQuery, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise QueryError(f"cannot read queries file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError:
        raise QueryError(f"queries file {path}: not UTF-8 text") from None
    return _parse_text(text, str(path))


def _parse_text(text: str, source: str) -> tuple[NamedQuery, ...]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise QueryError(f"{source}: not valid YAML: {e}") from e
    return parse_queries(data, source)


def needed_metrics(queries: Iterable[NamedQuery]) -> frozenset[str]:
    """Metric names the embedded source must keep to answer ``queries``."""
    return frozenset(q.selector.metric for q in queries if q.selector is not None)


def embedded_only(queries: Sequence[NamedQuery]) -> tuple[NamedQuery, ...]:
    """The queries the embedded source can evaluate; logs the others once."""
    skipped = [q.name for q in queries if q.selector is None]
    if skipped:
        log.warning(
            "embedded source cannot evaluate %d PromQL quer%s (%s); they need Prometheus",
            len(skipped),
            "y" if len(skipped) == 1 else "ies",
            ", ".join(skipped),
        )
    return tuple(q for q in queries if q.selector is not None)
