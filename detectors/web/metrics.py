"""The analyzer's own metrics: per-node scores and model state, sources, alert delivery, and the
capacity planner's forecasts."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from dcwatch.detectors.capacity.series import horizon_label
from dcwatch.exposition import Families, MetricSpec, Part

if TYPE_CHECKING:
    from dcwatch.detectors.capacity.planner import CapacityPlanner
    from dcwatch.detectors.service import Analyzer

SCORE = MetricSpec(
    "dcwatch_anomaly_score",
    "Anomaly score of the node's latest step, relative to its calibrated "
    "threshold (>= 1 is above it)",
    ("instance",),
)
ANOMALY = MetricSpec(
    "dcwatch_anomaly", "1 while the node is in an anomaly (alerting)", ("instance",)
)
CONTRIBUTION = MetricSpec(
    "dcwatch_anomaly_contributor_surprise",
    "Top series driving a current anomaly: -log10 of the training "
    "probability of a deviation this large",
    ("instance", "series", "rank"),
)
OBSERVED = MetricSpec(
    "dcwatch_anomaly_contributor_observed",
    "Observed value of a top contributing series",
    ("instance", "series"),
)
EXPECTED = MetricSpec(
    "dcwatch_anomaly_contributor_expected",
    "Expected value of a top contributing series",
    ("instance", "series"),
)
STATE = MetricSpec("dcwatch_model_state", "1 for the node's model state", ("instance", "state"))
FIT_TIME = MetricSpec(
    "dcwatch_model_fit_timestamp_seconds", "When the node's model was fitted", ("instance",)
)
FIT_AGE = MetricSpec("dcwatch_model_age_seconds", "Age of the node's model", ("instance",))
FIT_DURATION = MetricSpec(
    "dcwatch_model_fit_duration_seconds", "Duration of the node's last fit", ("instance",)
)
SERIES = MetricSpec("dcwatch_model_series", "Series the node's model uses", ("instance",))
SERIES_DROPPED = MetricSpec(
    "dcwatch_model_series_dropped",
    "Series of the node the model leaves out: no_signal (constant or empty in training), "
    "over_limit (the least informative beyond model.max_series)",
    ("instance", "reason"),
)
SCORED = MetricSpec(
    "dcwatch_scored_rows_total", "Rows scored for the node", ("instance",), kind="counter"
)
PASS = MetricSpec("dcwatch_scoring_pass_duration_seconds", "Duration of the last scoring pass")
PASSES = MetricSpec("dcwatch_scoring_passes_total", "Scoring passes", kind="counter")
PASS_PHASE = MetricSpec(
    "dcwatch_scoring_pass_phase_seconds",
    "Duration of the last scoring pass by phase: read (the source), score (models), "
    "send (alerts handed to the sender)",
    ("phase",),
)
SHARD_NODES = MetricSpec(
    "dcwatch_shard_nodes",
    "Nodes this analyzer watches: its shard (index of count, Prometheus' hashmod of the "
    "instance) of the fleet",
    ("shard", "shard_count"),
)
NODES = MetricSpec("dcwatch_nodes", "Nodes known to the analyzer, by model state", ("state",))
SOURCE_ERRORS = MetricSpec(
    "dcwatch_source_errors_total", "Scoring passes that could not read their source", kind="counter"
)
TARGET_UP = MetricSpec(
    "dcwatch_target_up", "1 if the embedded scrape of the agent succeeded", ("target", "instance")
)
TARGET_FAILURES = MetricSpec(
    "dcwatch_target_scrape_failures_total",
    "Failed embedded scrapes of the agent",
    ("target", "instance"),
    kind="counter",
)
TARGET_DURATION = MetricSpec(
    "dcwatch_target_scrape_duration_seconds",
    "Duration of the last embedded scrape",
    ("target", "instance"),
)
TARGET_ERRORS = MetricSpec(
    "dcwatch_target_scrape_errors_total",
    "Failed embedded scrapes of the agent by reason (timeout, http, parse, body_size_limit, "
    "sample_limit, credentials)",
    ("target", "instance", "reason"),
    kind="counter",
)
TARGET_NONFINITE = MetricSpec(
    "dcwatch_target_nonfinite_samples_total",
    "NaN or infinite samples of the agent dropped (never stored)",
    ("target", "instance"),
    kind="counter",
)
STATES = ("cold_start", "fitted", "stale")

# Capacity: one sample per (rule, instance[, per-label]); the per label (gpu, device) is the rule's.
EXHAUSTION = MetricSpec(
    "dcwatch_capacity_exhaustion_seconds",
    "Forecast seconds until the series reaches its rule's threshold (absent when not within "
    "the rule's horizon)",
    ("rule", "instance"),
)
UNITS_NEEDED = MetricSpec(
    "dcwatch_capacity_units_needed",
    "Units of the rule's unit_capacity (e.g. GPUs) to add so the upper 95 % forecast at the "
    "rule's horizon stays below its threshold (0: enough); only rules with unit_capacity",
    ("rule", "instance"),
)
EXHAUSTION_EARLIEST = MetricSpec(
    "dcwatch_capacity_exhaustion_earliest_seconds",
    "Seconds until the upper 95 % forecast band reaches the threshold (absent beyond the horizon)",
    ("rule", "instance"),
)
EXHAUSTION_LATEST = MetricSpec(
    "dcwatch_capacity_exhaustion_latest_seconds",
    "Seconds until the lower 95 % forecast band reaches the threshold (absent beyond the horizon)",
    ("rule", "instance"),
)
UTILIZATION = MetricSpec(
    "dcwatch_capacity_utilization_ratio",
    "Latest value of the series divided by its capacity",
    ("rule", "instance"),
)
THRESHOLD = MetricSpec(
    "dcwatch_capacity_threshold_ratio", "Fraction of capacity a rule counts as full", ("rule",)
)
FORECAST = MetricSpec(
    "dcwatch_forecast", "Forecast mean of the series at a horizon", ("rule", "instance", "horizon")
)
FORECAST_LOWER = MetricSpec(
    "dcwatch_forecast_lower",
    "Lower edge of the 95 % forecast interval at a horizon",
    ("rule", "instance", "horizon"),
)
FORECAST_UPPER = MetricSpec(
    "dcwatch_forecast_upper",
    "Upper edge of the 95 % forecast interval at a horizon",
    ("rule", "instance", "horizon"),
)
MODEL_INFO = MetricSpec(
    "dcwatch_forecast_model_info",
    "The forecaster chosen for the series (1)",
    ("rule", "instance", "model"),
)
CAPACITY_SERIES = MetricSpec(
    "dcwatch_capacity_series", "Series with a forecast, per capacity rule", ("rule",)
)
CAPACITY_FIT = MetricSpec(
    "dcwatch_capacity_fit_duration_seconds", "Duration of the rule's last fit round", ("rule",)
)
CAPACITY_EVAL = MetricSpec(
    "dcwatch_capacity_evaluation_duration_seconds",
    "Duration of the rule's last update and forecast of all its series",
    ("rule",),
)
CAPACITY_ERRORS = MetricSpec(
    "dcwatch_capacity_errors_total",
    "Failed reads or fit rounds of the rule",
    ("rule",),
    kind="counter",
)


def analyzer_families(an: Analyzer, planner: CapacityPlanner | None = None) -> Iterable[Metric]:
    """The analyzer's families as prometheus_client objects."""
    for part in analyzer_exposition(an, planner):
        yield from part if isinstance(part, Families) else (part,)


def analyzer_exposition(an: Analyzer, planner: CapacityPlanner | None = None) -> list[Part]:
    """What ``/metrics`` writes: the per-node families stay a :class:`Families` (rendered
    directly: a dozen series per node), the rest prometheus_client families."""
    return [
        _analyzer_own(an),
        *an.sender.collect(),
        *(capacity_families(planner) if planner else ()),
    ]


def _analyzer_own(an: Analyzer) -> Families:
    f = Families()
    now = time.time()
    counts = dict.fromkeys(STATES, 0)
    for node in an.nodes.values():
        inst = node.instance
        counts[node.status] += 1
        for st in STATES:
            f.add(STATE, 1 if node.status == st else 0, inst, st)
        f.add(SCORE, node.score, inst)
        f.add(ANOMALY, int(node.anomaly) if node.model is not None else None, inst)
        f.add(SCORED, node.scored_rows, inst)
        if node.model is not None:
            f.add(FIT_TIME, node.model.fitted_at_, inst)
            f.add(FIT_AGE, now - node.model.fitted_at_, inst)
            f.add(SERIES, len(node.model.series), inst)
            sel = node.model.selection_
            f.add(SERIES_DROPPED, sel.no_signal, inst, "no_signal")
            f.add(SERIES_DROPPED, sel.over_limit, inst, "over_limit")
        if node.fit_duration:
            f.add(FIT_DURATION, node.fit_duration, inst)
        if node.anomaly:
            for rank, c in enumerate(node.contributors, 1):
                f.add(CONTRIBUTION, c.surprise, inst, c.series, str(rank))
                f.add(OBSERVED, c.observed, inst, c.series)
                f.add(EXPECTED, c.expected, inst, c.series)
    for st, n in counts.items():
        f.add(NODES, n, st)
    f.add(PASS, an.pass_duration if an.passes else None)
    f.add(PASSES, an.passes)
    for phase, seconds in an.pass_phases.items():
        f.add(PASS_PHASE, seconds if an.passes else None, phase)
    f.add(SHARD_NODES, len(an.nodes), str(an.cfg.shard.index), str(an.cfg.shard.count))
    f.add(SOURCE_ERRORS, an.source_errors)
    for t in an.source.target_status():
        f.add(TARGET_UP, None if t.up is None else int(t.up), t.url, t.instance)
        f.add(TARGET_FAILURES, t.failures, t.url, t.instance)
        f.add(TARGET_DURATION, t.last_duration, t.url, t.instance)
        for reason, n in t.errors:
            f.add(TARGET_ERRORS, n, t.url, t.instance, reason)
        f.add(TARGET_NONFINITE, t.nonfinite, t.url, t.instance)
    return f


def capacity_families(planner: CapacityPlanner) -> Iterable[Metric]:
    """Per-series forecasts and times to exhaustion; series labels vary by rule (``gpu``...)."""
    fams: dict[str, Metric] = {}

    def add(spec: MetricSpec, value: float | None, labels: dict[str, str]) -> None:
        if value is None:
            return
        fam = fams.get(spec.name)
        if fam is None:
            fam = fams[spec.name] = spec.family()
        fam.add_sample(spec.name, labels, value)

    for rs in planner.rules.values():
        rule = rs.rule
        add(THRESHOLD, rule.threshold, {"rule": rule.name})
        fitted = [s for s in rs.series.values() if s.forecast_plot]
        add(CAPACITY_SERIES, len(fitted), {"rule": rule.name})
        add(CAPACITY_FIT, rs.fit_duration or None, {"rule": rule.name})
        add(CAPACITY_EVAL, rs.eval_duration or None, {"rule": rule.name})
        add(CAPACITY_ERRORS, rs.errors, {"rule": rule.name})
        for st in fitted:
            lab = st.labels
            ex = st.exhaustion
            if ex is not None:
                for spec, v in (
                    (EXHAUSTION, ex.estimate),
                    (EXHAUSTION_EARLIEST, ex.earliest),
                    (EXHAUSTION_LATEST, ex.latest),
                ):
                    add(spec, v if v is not None and v <= rule.horizon else None, lab)
            add(UTILIZATION, st.utilization, lab)
            add(UNITS_NEEDED, st.units_needed, lab)
            add(MODEL_INFO, 1, {**lab, "model": st.model})
            for h, (mean, lo, hi) in st.forecasts.items():
                hl = {**lab, "horizon": horizon_label(h)}
                add(FORECAST, mean, hl)
                add(FORECAST_LOWER, lo, hl)
                add(FORECAST_UPPER, hi, hl)
    return list(fams.values())
