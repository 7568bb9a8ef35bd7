"""What the capacity planner knows per series and rule, and the alert it raises for a series."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np

from dcwatch.detectors.alerting.alerts import Alert, AlertingConfig, build_alert
from dcwatch.detectors.capacity.rules import CapacityRule
from dcwatch.detectors.capacity.series import Exhaustion, PlotHistory, human_duration
from dcwatch.detectors.models.forecast import Forecaster
from dcwatch.detectors.sources.base import Source

CAPACITY_ALERT = "DcwatchCapacityExhaustion"


@dataclass
class SeriesState:
    """One (rule, instance, device) series: its model, latest forecast and alert state."""

    rule: CapacityRule
    instance: str
    device: str | None = None
    forecaster: Forecaster | None = None
    fitted_at: float = 0.0
    fit_error: str = ""
    capacity: float | None = None
    current: float | None = None
    exhaustion: Exhaustion | None = None
    forecasts: dict[float, tuple[float, float, float]] = field(default_factory=dict)
    plot: PlotHistory | None = None
    forecast_plot: tuple[np.ndarray, ...] = ()  # (times, mean, lo-95, hi-95), thinned
    evaluated_at: float = 0.0
    stale: bool = False
    alert_key: str = ""
    clear_count: int = 0

    @property
    def key(self) -> tuple[str, str | None]:
        return self.instance, self.device

    @property
    def labels(self) -> dict[str, str]:
        out = {"rule": self.rule.name, "instance": self.instance}
        if self.rule.per and self.device is not None:
            out[self.rule.per] = self.device
        return out

    @property
    def where(self) -> str:
        return self.instance + (f" {self.rule.per} {self.device}" if self.device else "")

    @property
    def threshold_value(self) -> float | None:
        return None if self.capacity is None else self.rule.threshold * self.capacity

    @property
    def utilization(self) -> float | None:
        if self.current is None or not self.capacity:
            return None
        return self.current / self.capacity

    @property
    def units_needed(self) -> int | None:
        """Units of ``rule.unit_capacity`` to add so the upper 95 % forecast at the rule's
        horizon stays below the threshold (0: enough as it is); None when not applicable."""
        rule = self.rule
        if not rule.unit_capacity or not self.capacity or rule.horizon not in self.forecasts:
            return None
        upper = self.forecasts[rule.horizon][2]
        missing = upper / rule.threshold - self.capacity
        return max(0, math.ceil(missing / rule.unit_capacity - 1e-9))

    @property
    def model(self) -> str:
        f = self.forecaster
        if f is None:
            return ""
        name = getattr(f, "model_", None) or {
            "LinearTrendForecaster": "linear",
            "NaiveForecaster": "naive",
            "SeasonalNaiveForecaster": "seasonal-naive",
        }.get(type(f).__name__, type(f).__name__)
        order = getattr(f, "order_", None)
        return f"{name}{order}".replace(" ", "") if order else str(name)


@dataclass
class RuleState:
    """A rule, the source view answering its queries, its series and its fit schedule."""

    rule: CapacityRule
    source: Source
    series: dict[tuple[str, str | None], SeriesState] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fitting: bool = False
    next_fit: float = 0.0
    fit_duration: float = 0.0
    eval_duration: float = 0.0
    errors: int = 0
    last_error: str = ""


def capacity_alert(st: SeriesState, alerting: AlertingConfig) -> Alert:
    """The DcwatchCapacityExhaustion alert of a series forecast full within its horizon."""
    rule, ex = st.rule, st.exhaustion
    assert ex is not None and ex.estimate is not None
    util = st.utilization
    if ex.estimate <= 0:
        when = "now"
        desc = f"at or above {rule.threshold:.0%} of capacity now"
    else:
        when = f"in ~{human_duration(ex.estimate)}"
        lo = "now" if not ex.earliest else human_duration(ex.earliest)
        hi = human_duration(ex.latest) if ex.latest is not None else "beyond the forecast"
        desc = f"forecast to reach {rule.threshold:.0%} of capacity {when}"
        desc += f" (95% interval: {lo} to {hi})"
    desc += (f"; {util:.0%} used now" if util is not None else "") + f"; {st.model} forecaster"
    if st.units_needed:
        within = human_duration(rule.horizon)
        desc += f"; {st.units_needed} more {rule.unit_name} needed within {within}"
    per = {rule.per: st.device} if rule.per and st.device is not None else {}
    return build_alert(
        alerting,
        alertname=CAPACITY_ALERT,
        severity="warning",
        instance=st.instance,
        summary=f"{rule.label} on {st.where} full {when}",
        description=desc,
        labels={"rule": rule.name, **per},  # gpu / device as the anomaly alerts name them
        annotations={"exhaustion_seconds": f"{ex.estimate:.0f}"},
    )
