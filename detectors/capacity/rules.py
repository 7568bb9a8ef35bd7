"""Capacity rules: which series grow towards which limit, read from ``capacity_rules:`` in YAML.

A rule names a series (PromQL, or one of the simple forms the embedded source evaluates, see
:mod:`dcwatch.detectors.sources.queries`), its capacity (a number, or another series such as the
GPU's memory total or a link's speed, matched to the series by instance and ``per`` label; a
capacity series without the ``per`` label applies to every device of its node), the fraction of the
capacity that counts as full (``threshold``) and how far ahead to look (``horizon``)::

    capacity_rules:
      - name: gpu_memory
        series: dcwatch_gpu_memory_used_bytes
        per: gpu
        capacity: dcwatch_gpu_memory_total_bytes
        threshold: 0.9
        horizon: 7d
        smooth: 1h                          # forecast the hourly trailing mean
      - name: rack_a_power                  # one budget over several nodes
        series: max by (instance) (dcwatch_node_power_watts)
        aggregate: sum                      # sum|max|min|avg over the matched instances
        instance_regex: "rack-a-.*"         # or instances: [a:9478, b:9478]
        group: rack-a                       # the `instance` label of the summed series
        capacity: 30000
      - defaults: {node_power_budget: 2400} # include the built-in rules (below)

Without any rule the built-in ones apply (:func:`default_rules`) for the query presets chosen
with ``queries_preset`` (see :mod:`~dcwatch.detectors.sources.queries`): for ``dcwatch``, GPU
memory, GPU power against its limit, network links against their speed and, given a budget, node
power; for ``dcgm``, GPU memory (``DCGM_FI_DEV_FB_USED`` against used + free: PromQL, so with
Prometheus only); for ``node_exporter``, network links against ``node_network_speed_bytes`` and,
given a budget, the node's hwmon power. The other keys
(defaults in :class:`CapacityRule`): ``title``, ``unit`` (bytes, watts, bytes_per_second, ratio;
guessed from the metric name), ``forecaster`` (arima, linear, naive, seasonal-naive) and
``window`` (linear's fitting window), ``step``, ``history``, ``min_history``, ``refit`` and
``forecast_horizons``; durations are seconds or ``90s``/``5m``/``6h``/``7d``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dcwatch import settings as st
from dcwatch.detectors.models.forecast import (
    ArimaForecaster,
    Forecaster,
    LinearTrendForecaster,
    NaiveForecaster,
    SeasonalNaiveForecaster,
)
from dcwatch.detectors.sources.queries import (
    AGGREGATIONS,
    DEFAULT_PRESETS,
    PRESETS,
    NamedQuery,
    QueryError,
    parse_queries,
)
from dcwatch.settings import ConfigError

HOUR, DAY = 3600.0, 86400.0
FORECASTERS = ("arima", "linear", "naive", "seasonal-naive")
UNITS = ("", "bytes", "watts", "bytes_per_second", "ratio")
DEFAULT_HORIZONS = (3600.0, 6 * 3600.0, DAY, 7 * DAY)
SERIES_QUERY, CAPACITY_QUERY = "series", "capacity"  # frame column names of a rule's queries


@dataclass(frozen=True)
class CapacityRule:
    name: str
    series: str  # the query
    capacity: float | str  # a constant, or a query
    threshold: float = 0.9  # fraction of capacity that counts as full
    horizon: float = 7 * DAY  # alert when full within this many seconds
    per: str | None = None  # label splitting series within a node (gpu, device)
    title: str = ""  # for people: "GPU memory"
    unit: str = ""  # of the series and capacity, for the page
    aggregate: str | None = None  # combine the matched instances into one series
    group: str = ""  # the instance label of the aggregate
    instances: tuple[str, ...] = ()  # only these instances (all when empty)
    instance_regex: str = ""  # only instances matching this
    forecaster: str = "arima"
    window: float | None = None  # linear: seconds of history the line is fitted on
    smooth: float = 0.0  # forecast the trailing mean over this many seconds (0: raw values)
    step: float = 300.0  # grid of the history and the forecast
    history: float = 14 * DAY  # fitted on this much history
    min_history: float = DAY  # no forecast before this much history
    refit: float = 6 * 3600.0  # full refit interval; updated with new points in between
    forecast_horizons: tuple[float, ...] = DEFAULT_HORIZONS
    # Capacity of one unit (one GPU's memory, one PSU...): then the planner also says how many
    # more units keep the upper forecast at the horizon below the threshold ("N more GPUs").
    unit_capacity: float | None = None
    unit_name: str = "units"

    @property
    def label(self) -> str:
        return self.title or self.name.replace("_", " ")

    @property
    def steps(self) -> int:
        """Forecast length: far enough for the exported horizons and the resolve hysteresis."""
        far = max(1.2 * self.horizon, *self.forecast_horizons)
        return max(1, int(-(-far // self.step)))

    def queries(self) -> tuple[NamedQuery, ...]:
        entries: list[dict[str, Any]] = [{"name": SERIES_QUERY, "query": self.series}]
        if isinstance(self.capacity, str):
            entries.append({"name": CAPACITY_QUERY, "query": self.capacity})
        if self.per:
            for e in entries:
                e["per"] = self.per
        return parse_queries(entries, f"capacity rule {self.name}")

    def wants(self, instance: str) -> bool:
        if self.instances and instance not in self.instances:
            return False
        return not self.instance_regex or re.fullmatch(self.instance_regex, instance) is not None

    def make_forecaster(self) -> Forecaster:
        if self.forecaster == "linear":
            window = None if self.window is None else max(2, round(self.window / self.step))
            return LinearTrendForecaster(window=window, step=self.step)
        if self.forecaster == "naive":
            return NaiveForecaster(step=self.step)
        if self.forecaster == "seasonal-naive":
            return SeasonalNaiveForecaster(step=self.step)
        return ArimaForecaster(step=self.step)


def default_rules(
    node_power_budget: float | None = None, presets: Sequence[str] = ()
) -> tuple[CapacityRule, ...]:
    """The built-in rules of the query ``presets`` (default: dcwatch's); node power only when a
    per-node budget (watts) is given.

    They forecast hourly trailing means: a GPU at its power cap for a minute, a job filling
    memory for a moment or a burst on a link is normal; the hour's average reaching 90 % (95 %
    for GPU power, which sits near its limit under load) is what runs out."""
    rules: list[CapacityRule] = []
    for preset in dict.fromkeys(presets or DEFAULT_PRESETS):
        if preset not in PRESETS:
            raise ConfigError(f"unknown query preset {preset!r}; known: {', '.join(PRESETS)}")
        rules += _PRESET_RULES[preset](node_power_budget)
    return tuple(rules)


def _network_rules(prefix: str, metric: str, speed: str, title: str) -> list[CapacityRule]:
    return [
        CapacityRule(
            f"{prefix}network_{way}",
            f"rate({metric.format(way)}[5m])",
            speed,
            per="device",
            title=f"Network {way}{title}",
            unit="bytes_per_second",
            smooth=HOUR,
        )
        for way in ("receive", "transmit")
    ]


def _node_power_rule(name: str, series: str, budget: float | None) -> list[CapacityRule]:
    if budget is None:
        return []
    return [
        CapacityRule(name, series, float(budget), title="Node power", unit="watts", smooth=HOUR)
    ]


def _dcwatch_rules(budget: float | None) -> list[CapacityRule]:
    return [
        CapacityRule(
            "gpu_memory",
            "dcwatch_gpu_memory_used_bytes",
            "dcwatch_gpu_memory_total_bytes",
            per="gpu",
            title="GPU memory",
            unit="bytes",
            smooth=HOUR,
        ),
        CapacityRule(
            "gpu_power",
            "dcwatch_gpu_power_usage_watts",
            "dcwatch_gpu_power_limit_watts",
            threshold=0.95,
            per="gpu",
            title="GPU power",
            unit="watts",
            smooth=HOUR,
        ),
        *_network_rules(
            "", "dcwatch_network_{}_bytes_total", "dcwatch_network_speed_bytes_per_second", ""
        ),
        *_node_power_rule("node_power", "max by (instance) (dcwatch_node_power_watts)", budget),
    ]


def _dcgm_rules(budget: float | None) -> list[CapacityRule]:
    # dcgm-exporter reports framebuffer sizes in MiB and no total: the capacity is used + free,
    # which only Prometheus evaluates (the embedded source skips the rule, with one log line).
    mib = 1 << 20
    return [
        CapacityRule(
            "dcgm_gpu_memory",
            f"sum by (instance, gpu) (DCGM_FI_DEV_FB_USED) * {mib}",
            f"sum by (instance, gpu) (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * {mib}",
            per="gpu",
            title="GPU memory (dcgm)",
            unit="bytes",
            smooth=HOUR,
        )
    ]


def _node_exporter_rules(budget: float | None) -> list[CapacityRule]:
    return [
        *_network_rules(
            "node_exporter_",
            "node_network_{}_bytes_total",
            "node_network_speed_bytes",
            " (node_exporter)",
        ),
        *_node_power_rule(
            "node_exporter_node_power", "max by (instance) (node_hwmon_power_average_watt)", budget
        ),
    ]


_PRESET_RULES = {
    "dcwatch": _dcwatch_rules,
    "dcgm": _dcgm_rules,
    "node_exporter": _node_exporter_rules,
}


# --- parsing -------------------------------------------------------------------------------

_KEYS = {
    "name", "series", "capacity", "threshold", "horizon", "per", "title", "unit", "aggregate",
    "group", "instances", "instance_regex", "forecaster", "window", "smooth", "step", "history",
    "min_history", "refit", "forecast_horizons", "unit_capacity", "unit_name",
}  # fmt: skip
_NAME_RE = re.compile(r"[A-Za-z_]\w*")


def _infer_unit(query: str) -> str:
    if re.search(r"\b(rate|irate)\s*\(.*_bytes_total", query):
        return "bytes_per_second"
    for unit in ("bytes_per_second", "bytes", "watts", "ratio"):
        if re.search(rf"_{unit}\b", query):
            return unit
    return ""


def _convert(raw: Mapping[str, Any], key: str, fn: Any, where: str) -> Any:
    try:
        return fn(raw[key])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: key '{key}': {e}") from None


def _capacity(v: Any) -> float | str:
    if isinstance(v, bool):
        raise ValueError("expected a number or a query")
    if isinstance(v, (int, float)):
        if not v > 0:
            raise ValueError(f"a constant capacity must be positive, got {v}")
        return float(v)
    if isinstance(v, str) and v.strip():
        try:
            return float(v)
        except ValueError:
            return v.strip()
    raise ValueError(f"expected a number or a query, got {v!r}")


def _fraction(v: Any) -> float:
    f = float(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) else None
    if f is None or not 0 < f <= 1:
        raise ValueError(f"expected a fraction in (0, 1], got {v!r}")
    return f


def _durations(v: Any) -> tuple[float, ...]:
    items = v if isinstance(v, (list, tuple)) else st.to_str_list(v)
    if not items:
        raise ValueError("expected a non-empty list of durations")
    return tuple(sorted(st.to_positive_float(x) for x in items))


def _positive_number(v: Any) -> float:
    """A positive number; also from a string such as ``80e9`` (YAML 1.1 reads that as text)."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ValueError(f"expected a positive number, got {v!r}") from None
    return st.to_positive_float(v)


def parse_rule(raw: Any, where: str) -> CapacityRule:
    """One rule mapping; errors name ``where`` (index and name) and the key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name, series and capacity")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: key 'name': must be an identifier, got {name!r}")
    where = f"{where} ({name})"
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    for key in ("series", "capacity"):
        if key not in raw:
            raise ConfigError(f"{where}: key '{key}': missing")
    kw: dict[str, Any] = {"name": name}
    kw["series"] = _convert(raw, "series", st.to_str, where).strip()
    kw["capacity"] = _convert(raw, "capacity", _capacity, where)
    converters: dict[str, Any] = {
        "threshold": _fraction,
        "horizon": st.to_positive_float,
        "per": st.to_str,
        "title": st.to_str,
        "unit": st.one_of(*UNITS),
        "aggregate": st.one_of(*AGGREGATIONS),
        "group": st.to_str,
        "instances": st.to_str_list,
        "instance_regex": st.to_regex,
        "forecaster": st.one_of(*FORECASTERS),
        "window": st.to_positive_float,
        "smooth": st.to_nonneg_float,
        "step": st.to_positive_float,
        "history": st.to_positive_float,
        "min_history": st.to_positive_float,
        "refit": st.to_positive_float,
        "forecast_horizons": _durations,
        "unit_capacity": _positive_number,
        "unit_name": st.to_str,
    }
    for key, fn in converters.items():
        if key in raw and raw[key] is not None:
            kw[key] = _convert(raw, key, fn, where)
    kw.setdefault("unit", _infer_unit(kw["series"]))
    if "aggregate" in kw:
        kw["aggregate"] = AGGREGATIONS[kw["aggregate"]]
    rule = CapacityRule(**kw)
    if rule.aggregate and rule.per:
        raise ConfigError(f"{where}: key 'aggregate': cannot be combined with 'per'")
    if rule.history < rule.min_history or rule.min_history < 2 * rule.step:
        raise ConfigError(f"{where}: key 'min_history': must be 2 steps to 'history' long")
    try:
        rule.queries()
    except QueryError as e:
        raise ConfigError(f"{where}: key 'series'/'capacity': {e}") from None
    return rule


def parse_rules(
    raw: Sequence[Any], where: str = "capacity_rules", presets: Sequence[str] = ()
) -> tuple[CapacityRule, ...]:
    """The rules of a config file's ``capacity_rules`` list; when it is empty, the defaults of
    the query ``presets`` (default: dcwatch's)."""
    if not raw:
        return default_rules(presets=presets)
    rules: list[CapacityRule] = []
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(entry, Mapping) and "defaults" in entry:
            rules += _defaults_entry(entry, at, presets)
        else:
            rules.append(parse_rule(entry, at))
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise ConfigError(f"{where}: rule name {r.name!r} appears twice")
        seen.add(r.name)
    return tuple(rules)


def _defaults_entry(
    entry: Mapping[str, Any], where: str, presets: Sequence[str]
) -> tuple[CapacityRule, ...]:
    """``defaults: true`` / ``false`` / ``{node_power_budget: W}``: the built-in rules (of the
    query presets) or none."""
    if set(entry) != {"defaults"}:
        raise ConfigError(f"{where}: key 'defaults': must stand alone in its entry")
    v = entry["defaults"]
    if v is False:
        return ()
    if v is True:
        return default_rules(presets=presets)
    if isinstance(v, Mapping) and set(v) <= {"node_power_budget"}:
        budget = v.get("node_power_budget")
        if budget is None:
            return default_rules(presets=presets)
        watts = _convert(v, "node_power_budget", st.to_positive_float, where)
        return default_rules(watts, presets)
    raise ConfigError(f"{where}: key 'defaults': expected true, false or {{node_power_budget: W}}")
