"""Which source each GPU reading uses: the sources, the probe that picks one, the read.

A :class:`Reading` names its sources in order of preference: an entry of the batched
``nvmlDeviceGetFieldValues`` call (:class:`Field`) or a getter of its own (:class:`Call`).
:func:`probe` keeps, per reading, the first source the GPU answers; :func:`read` then costs one
field-values call plus the chosen getters, each called once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dcwatch.exporters.gpu.metrics import Labels, Sample
from dcwatch.exporters.sources import nvml as nv
from dcwatch.exporters.sources.nvml import ANY, Nvml, NvmlCallError
from dcwatch.exposition import MetricSpec

# getters report "not available" as all-ones
NOT_AVAILABLE = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})

CallKey = tuple[str, tuple[Any, ...]]
Memo = dict[CallKey, Any]  # what getters answered, reused within one scrape


@dataclass(frozen=True)
class Field:
    """A source: one entry of the batched field-values call."""

    id: int
    scope: int = 0

    def __str__(self) -> str:
        return f"field {self.id}" + (f"/{self.scope}" if self.scope else "")


@dataclass(frozen=True, eq=False)
class Call:
    """A source: one NVML getter, called with the device handle first."""

    fn: str
    args: tuple[Any, ...] = ()
    pick: Callable[[Any], Any] | None = None  # from a struct/tuple result to the number

    def __str__(self) -> str:
        return f"{self.fn}{self.args if self.args else '()'}"

    @property
    def key(self) -> CallKey:
        return (self.fn, self.args)


Source = Field | Call


def _ident(v: Any) -> Any:
    return v


@dataclass(frozen=True, eq=False)
class Reading:
    """One metric sample (or a few, with ``expand``) and the sources it may come from, in order."""

    spec: MetricSpec
    labels: Labels
    sources: tuple[Source, ...]
    conv: Callable[[Any], Any] = _ident
    expand: Callable[[Any], list[tuple[Labels, float]]] | None = None

    def samples(self, raw: Any) -> list[tuple[Labels, float]]:
        if self.expand is not None:
            return self.expand(raw)
        if isinstance(raw, int) and raw in NOT_AVAILABLE:
            return []
        v = self.conv(raw)
        return [] if v is None else [(self.labels, v)]


@dataclass
class Plan:
    """What one GPU supports: the batched field ids and, per reading, the source chosen."""

    fields: list[tuple[int, int]] = field(default_factory=list)
    entries: list[tuple[Reading, Source, int]] = field(default_factory=list)  # int: field pos

    @classmethod
    def first_getters(cls, readings: Iterable[Reading]) -> Plan:
        """Each reading from its first source, a getter, unprobed (for attributes read once)."""
        return cls(entries=[(rd, rd.sources[0], -1) for rd in readings])

    def describe(self) -> list[str]:
        return [f"{r.spec.name}{{{','.join(r.labels)}}} <- {src}" for r, src, _ in self.entries]


def probe(nvml: Nvml, handle: Any, readings: Sequence[Reading]) -> tuple[Plan, Memo]:
    """Choose, per reading, the first source this GPU answers. Raises GpuLostError.

    Also returns what the getters it tried answered, for this scrape's read to reuse.
    """
    candidates = sorted(
        {(s.id, s.scope) for rd in readings for s in rd.sources if isinstance(s, Field)}
    )
    values = nvml.field_values(handle, candidates) or []
    field_ok = {
        ids for ids, fv in zip(candidates, values, strict=False) if fv.code not in nv.FIELD_ABSENT
    }
    call_ok: dict[CallKey, bool] = {}
    answered: Memo = {}
    plan = Plan()
    pos: dict[tuple[int, int], int] = {}
    for rd in readings:
        for src in rd.sources:
            if isinstance(src, Field):
                key = (src.id, src.scope)
                if key not in field_ok:
                    continue
                if key not in pos:
                    pos[key] = len(plan.fields)
                    plan.fields.append(key)
                plan.entries.append((rd, src, pos[key]))
                break
            if src.key not in call_ok:
                call_ok[src.key], answered[src.key] = _answers(nvml, src, handle)
            if call_ok[src.key]:
                plan.entries.append((rd, src, -1))
                break
    return plan, {ck: v for ck, v in answered.items() if v is not None}


def _answers(nvml: Nvml, src: Call, handle: Any) -> tuple[bool, Any]:
    """(whether the getter is supported, what it answered)."""
    try:
        return True, nvml.call(src.fn, handle, *src.args, expect=ANY)
    except NvmlCallError as e:
        return e.code not in nv.ABSENT, None  # a transient error: keep the source


def read(nvml: Nvml, handle: Any, plan: Plan, memo: Memo) -> list[Sample]:
    """One batched field-values call plus the chosen getters (each called once)."""
    values = nvml.field_values(handle, plan.fields)
    out: list[Sample] = []
    for rd, src, pos in plan.entries:
        if isinstance(src, Field):
            fv = values[pos] if values is not None and pos < len(values) else None
            raw = fv.value if fv is not None and fv.code == nv.SUCCESS else None
        else:
            if src.key not in memo:
                memo[src.key] = nvml.call(src.fn, handle, *src.args)
            raw = memo[src.key]
            if raw is not None and src.pick is not None:
                raw = src.pick(raw)
        if raw is None:
            continue
        out.extend((rd.spec, value, labels) for labels, value in rd.samples(raw))
    return out
