"""The ``gpu`` collector: NVIDIA GPUs through NVML (nvidia-ml-py's ``pynvml``).

NVML is initialised once (at the first scrape, or by the XID watcher at start) and shut down in
:meth:`GpuCollector.close`. Per GPU, the static attributes (name, UUID, serial, PCI bus id,
maximum clocks, memory size, default power limit, PCIe maximum link, NVLink count, supported
clock-event reasons) are read once. What the GPU supports is probed once too, and again every
``rediscover_interval``: for each reading the first source that works is kept, preferring one
entry of a batched ``nvmlDeviceGetFieldValues`` call over a getter of its own. A scrape then
costs one field-values call per GPU plus the getters NVML has no field for; a reading the GPU
does not support is left out, never exported as 0. GPUs are read in parallel (the two PCIe
throughput getters each sample for 20 ms).

A GPU that answers NVML_ERROR_GPU_IS_LOST is exported as ``dcwatch_gpu_up 0`` (its info and XID
counters stay) and re-tried every ``rediscover_interval``; the other GPUs are unaffected. No
pynvml, no libnvidia-ml or no driver: :class:`~exporters.base.NoDataError` (init retried every
60 s). XID errors arrive as NVML events, watched by a daemon thread started with the collector.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from exporters.base import Collector, CollectorDeps, Families, MetricSpec, NoDataError
from exporters.registry import register
from exporters.sources import nvml as nv
from exporters.sources.nvml import (
    ANY,
    GpuLostError,
    Nvml,
    NvmlCallError,
    NvmlUnavailableError,
    handle_key,
    text,
)

GPU = ("gpu", "uuid")

UP = MetricSpec(
    "dcwatch_gpu_up", "1 if the GPU answers NVML, 0 if it is lost (fell off the bus)", GPU
)
INFO = MetricSpec(
    "dcwatch_gpu_info",
    "GPU identity (always 1)",
    (*GPU, "name", "serial", "pci_bus_id", "vbios_version", "driver_version", "cuda_version",
     "mig_mode"),
)
UTIL = MetricSpec(
    "dcwatch_gpu_utilization_ratio",
    "Fraction of the last sample period during which a kernel was running on the GPU",
    GPU,
)
MEM_UTIL = MetricSpec(
    "dcwatch_gpu_memory_utilization_ratio",
    "Fraction of the last sample period during which device memory was being read or written",
    GPU,
)
MEM_USED = MetricSpec("dcwatch_gpu_memory_used_bytes", "Framebuffer memory in use", GPU)
MEM_FREE = MetricSpec("dcwatch_gpu_memory_free_bytes", "Framebuffer memory free", GPU)
MEM_TOTAL = MetricSpec("dcwatch_gpu_memory_total_bytes", "Framebuffer memory installed", GPU)
TEMP = MetricSpec("dcwatch_gpu_temperature_celsius", "GPU core temperature", GPU)
MEM_TEMP = MetricSpec(
    "dcwatch_gpu_memory_temperature_celsius", "GPU memory (HBM) temperature", GPU
)
POWER = MetricSpec("dcwatch_gpu_power_usage_watts", "Power drawn by the GPU board", GPU)
POWER_LIMIT = MetricSpec(
    "dcwatch_gpu_power_limit_watts", "Power limit the GPU enforces now", GPU
)
POWER_DEFAULT_LIMIT = MetricSpec(
    "dcwatch_gpu_power_default_limit_watts", "Default power limit of the GPU", GPU
)
ENERGY = MetricSpec(
    "dcwatch_gpu_energy_joules_total",
    "Energy consumed by the GPU since the driver was loaded",
    GPU,
    kind="counter",
)
CLOCK = MetricSpec(
    "dcwatch_gpu_clock_hertz", "Current clock frequency (clock: sm, memory)", (*GPU, "clock")
)
CLOCK_MAX = MetricSpec(
    "dcwatch_gpu_clock_max_hertz", "Maximum clock frequency (clock: sm, memory)", (*GPU, "clock")
)
CLOCK_REASON = MetricSpec(
    "dcwatch_gpu_clocks_event_reason_active",
    "1 if this reason is holding the clocks down now (clocks event / throttle reason)",
    (*GPU, "reason"),
)
PSTATE = MetricSpec(
    "dcwatch_gpu_performance_state", "Performance state (0 = P0, fastest, .. 15 = P15)", GPU
)
FAN = MetricSpec(
    "dcwatch_gpu_fan_speed_ratio", "Fan speed as a fraction of its maximum", (*GPU, "fan")
)
PCIE_GEN = MetricSpec("dcwatch_gpu_pcie_link_generation", "Current PCIe link generation", GPU)
PCIE_GEN_MAX = MetricSpec(
    "dcwatch_gpu_pcie_link_max_generation", "Maximum PCIe link generation of GPU and slot", GPU
)
PCIE_WIDTH = MetricSpec("dcwatch_gpu_pcie_link_width", "Current PCIe link width (lanes)", GPU)
PCIE_WIDTH_MAX = MetricSpec(
    "dcwatch_gpu_pcie_link_max_width", "Maximum PCIe link width (lanes)", GPU
)
PCIE_THROUGHPUT = MetricSpec(
    "dcwatch_gpu_pcie_throughput_bytes_per_second",
    "PCIe throughput over a 20 ms sample (direction: tx from the GPU, rx to the GPU)",
    (*GPU, "direction"),
)
PCIE_REPLAY = MetricSpec(
    "dcwatch_gpu_pcie_replays_total", "PCIe replays (link-level retransmissions)", GPU,
    kind="counter",
)
NVLINK_UP = MetricSpec("dcwatch_gpu_nvlink_up", "1 if the NVLink link is active", (*GPU, "link"))
NVLINK_ERRORS = MetricSpec(
    "dcwatch_gpu_nvlink_errors_total",
    "NVLink data-link errors (type: replay, recovery, crc_flit, crc_data)",
    (*GPU, "link", "type"),
    kind="counter",
)
ECC = MetricSpec(
    "dcwatch_gpu_ecc_errors_total",
    "ECC memory errors (type: corrected, uncorrected; scope: volatile since the driver loaded, "
    "aggregate over the GPU's life)",
    (*GPU, "type", "scope"),
    kind="counter",
)
RETIRED = MetricSpec(
    "dcwatch_gpu_retired_pages",
    "Framebuffer pages retired (cause: single_bit, double_bit ECC errors)",
    (*GPU, "cause"),
)
RETIRED_PENDING = MetricSpec(
    "dcwatch_gpu_retired_pages_pending", "1 if a page awaits retirement at the next reset", GPU
)
REMAPPED = MetricSpec(
    "dcwatch_gpu_remapped_rows",
    "Memory rows remapped (type: correctable, uncorrectable errors)",
    (*GPU, "type"),
)
REMAPPED_PENDING = MetricSpec(
    "dcwatch_gpu_remapped_rows_pending", "1 if a row remap awaits the next GPU reset", GPU
)
REMAPPED_FAILURE = MetricSpec(
    "dcwatch_gpu_remapped_rows_failure", "1 if a row remap has failed (GPU needs service)", GPU
)
XID = MetricSpec(
    "dcwatch_gpu_xid_errors_total",
    "XID critical errors reported by the driver, by XID code",
    (*GPU, "xid"),
    kind="counter",
)
XID_WATCHING = MetricSpec(
    "dcwatch_gpu_xid_watching", "1 if XID events of this GPU are being watched", GPU
)
PROC_MEM = MetricSpec(
    "dcwatch_gpu_process_memory_used_bytes",
    "GPU memory used by a compute process (only with gpu.processes)",
    (*GPU, "pid", "process"),
)

# Clocks event (formerly throttle) reasons: bit -> label. Bits are nvml.h's and never change.
CLOCK_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
EXTRA_CLOCK_REASONS = ((0x200, "board_limit"), (0x400, "reliability"))  # only if supported

# getters report "not available" as all-ones
_NOT_AVAILABLE = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})
XID_WAIT_MS = 500
MAX_WORKERS = 8

log = logging.getLogger("dcwatch.collector.gpu")

Labels = tuple[str, ...]
Sample = tuple[MetricSpec, float, Labels]  # labels after gpu, uuid


# ---- readings and where they come from -------------------------------------------------------


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


Source = Field | Call


def _ident(v: Any) -> Any:
    return v


def _percent(v: Any) -> float:
    return float(v) / 100


def _milli(v: Any) -> float:
    return float(v) / 1000


def _mega(v: Any) -> int:
    return int(v) * 1_000_000


def _kib(v: Any) -> int:
    return int(v) * 1024


def _pstate(v: Any) -> int | None:
    return int(v) if 0 <= int(v) <= 15 else None  # 32 = unknown


def _link_up(v: Any) -> int:
    # FIELD NVLINK_GET_STATE and nvmlDeviceGetNvLinkState both say 1 for active; 2 would be
    # nvmlNvLinkState_t's SLEEP (low-power but trained), which is up too.
    return 1 if int(v) in (1, 2) else 0


def _reasons(reasons: tuple[tuple[int, str], ...]) -> Callable[[Any], list[tuple[Labels, float]]]:
    """A clocks-event-reasons bitmask -> one 0/1 sample per reason the GPU supports."""

    def expand(mask: Any) -> list[tuple[Labels, float]]:
        return [((name,), 1 if int(mask) & bit else 0) for bit, name in reasons]

    return expand


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
        if isinstance(raw, int) and raw in _NOT_AVAILABLE:
            return []
        v = self.conv(raw)
        return [] if v is None else [(self.labels, v)]


@dataclass
class Plan:
    """What one GPU supports: the batched field ids and, per reading, the source chosen."""

    fields: list[tuple[int, int]] = field(default_factory=list)
    entries: list[tuple[Reading, Source, int]] = field(default_factory=list)  # int: field pos

    def describe(self) -> list[str]:
        return [
            f"{r.spec.name}{{{','.join(r.labels)}}} <- {src}" for r, src, _ in self.entries
        ]


@dataclass
class Gpu:
    index: int
    handle: Any = None
    uuid: str = ""
    info: Labels | None = None  # INFO's label values after gpu, uuid
    static: list[Sample] = field(default_factory=list)
    links: int = 0
    fans: int = 0  # >0: fans read with nvmlDeviceGetFanSpeed_v2; -1: one, legacy getter
    reasons: tuple[tuple[int, str], ...] = CLOCK_REASONS
    plan: Plan | None = None
    probed_at: float = -float("inf")
    lost: bool = False
    retry_at: float = 0.0
    xid_watching: bool | None = None

    @property
    def labels(self) -> Labels:
        return (str(self.index), self.uuid)


@register("gpu", default=True, description="NVIDIA GPUs through NVML, with XID events")
class GpuCollector(Collector):
    """NVIDIA GPUs through NVML: utilisation, memory, power, clocks, PCIe, NVLink, ECC, XID."""

    METRICS = (
        UP, INFO, UTIL, MEM_UTIL, MEM_USED, MEM_FREE, MEM_TOTAL, TEMP, MEM_TEMP, POWER,
        POWER_LIMIT, POWER_DEFAULT_LIMIT, ENERGY, CLOCK, CLOCK_MAX, CLOCK_REASON, PSTATE, FAN,
        PCIE_GEN, PCIE_GEN_MAX, PCIE_WIDTH, PCIE_WIDTH_MAX, PCIE_THROUGHPUT, PCIE_REPLAY,
        NVLINK_UP, NVLINK_ERRORS, ECC, RETIRED, RETIRED_PENDING, REMAPPED, REMAPPED_PENDING,
        REMAPPED_FAILURE, XID, XID_WATCHING, PROC_MEM,
    )

    def __init__(self, config, deps: CollectorDeps | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, deps)
        self._clock: Callable[[], float] = time.monotonic
        self._nv = Nvml(self.deps.nvml, retry_interval=60.0, clock=lambda: self._clock())
        self._interval = float(config.rediscover_interval)
        self._procfs = Path(config.procfs)
        self._lock = threading.RLock()  # the GPU table
        self._gpus: list[Gpu] | None = None
        self._system: tuple[str, str] = ("", "")  # driver version, CUDA version
        self._pool: ThreadPoolExecutor | None = None
        self._xid: Counter[tuple[str, str, str]] = Counter()
        self._xid_lock = threading.Lock()
        self._xid_logged: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._rewatch = threading.Event()
        self._thread: threading.Thread | None = None
        if config.gpu.xid_events:
            self._thread = threading.Thread(target=self._watch, name="dcwatch-gpu-xid", daemon=True)
            self._thread.start()

    # ---- collector API ----

    def collect(self) -> Iterable[Metric]:
        gpus = self._ensure_ready()
        now = self._clock()
        if len(gpus) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(len(gpus), MAX_WORKERS), thread_name_prefix="dcwatch-gpu"
                )
            results = list(self._pool.map(lambda g: self._collect_gpu(g, now), gpus))
        else:
            results = [self._collect_gpu(g, now) for g in gpus]

        f = Families()
        for g, samples in zip(gpus, results, strict=True):
            base = g.labels
            f.add(UP, 0 if samples is None else 1, *base)
            if g.info is not None:
                f.add(INFO, 1, *base, *g.info)
            if samples is not None:
                for spec, value, labels in (*g.static, *samples):
                    f.add(spec, value, *base, *labels)
            if self._thread is not None and g.xid_watching is not None:
                f.add(XID_WATCHING, 1 if g.xid_watching else 0, *base)
        with self._xid_lock:
            xids = sorted(self._xid.items(), key=lambda kv: _xid_order(kv[0]))
        for (gpu, uuid, xid), n in xids:
            f.add(XID, n, gpu, uuid, xid)
        return f

    def read_errors(self) -> int:
        return self._nv.errors

    def close(self) -> None:
        self._stop.set()
        self._rewatch.set()  # wakes an idle watcher
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.warning("XID watcher did not stop within 5s")
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._nv.shutdown()

    def plan_report(self) -> str:
        """Which source each reading of each GPU comes from (for bench/capture_gpu_metrics.py)."""
        lines = []
        for g in self._gpus or []:
            lines.append(f"GPU {g.index} {g.uuid} lost={g.lost} links={g.links} fans={g.fans}")
            if g.plan is not None:
                lines.append(f"  batched fields: {len(g.plan.fields)}")
                lines.extend("  " + d for d in g.plan.describe())
        return "\n".join(lines) + "\n"

    # ---- discovery ----

    def _ensure_ready(self) -> list[Gpu]:
        """NVML initialised and the GPUs enumerated (once). Raises NoDataError if no NVML."""
        with self._lock:
            if self._gpus is not None:
                return self._gpus
            try:
                self._nv.init()
            except NvmlUnavailableError as e:
                raise NoDataError(str(e)) from None
            n = self._nv.call("nvmlDeviceGetCount")
            if n is None:
                raise RuntimeError("nvmlDeviceGetCount failed")
            if n == 0:
                raise NoDataError("NVML sees no GPU")
            cuda = self._nv.call("nvmlSystemGetCudaDriverVersion")
            self._system = (
                text(self._nv.call("nvmlSystemGetDriverVersion")),
                f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) and cuda else "",
            )
            now = self._clock()
            gpus = [Gpu(i) for i in range(n)]
            for g in gpus:
                if not self._open(g):
                    self._mark_lost(g, now, "nvmlDeviceGetHandleByIndex")
            self._gpus = gpus
            return gpus

    def _open(self, g: Gpu) -> bool:
        """Get the handle and read the static attributes. False if the GPU does not answer."""
        try:
            h = self._nv.call("nvmlDeviceGetHandleByIndex", g.index)
            if h is None:
                return False
            uuid = text(self._nv.call("nvmlDeviceGetUUID", h))
            if g.info is None or uuid != g.uuid:
                self._read_static(g, h)  # all or nothing: a GpuLostError leaves g as it was
            g.handle = h
            g.uuid = uuid
            g.plan = None
            return True
        except GpuLostError:
            return False

    def _read_static(self, g: Gpu, h: Any) -> None:
        c = self._nv.call
        pci = c("nvmlDeviceGetPciInfo", h)
        mig = c("nvmlDeviceGetMigMode", h)
        info = (
            text(c("nvmlDeviceGetName", h)),
            text(c("nvmlDeviceGetSerial", h)),
            text(getattr(pci, "busId", None)),
            text(c("nvmlDeviceGetVbiosVersion", h)),
            *self._system,
            "" if not mig else ("enabled" if mig[0] == nv.DEVICE_MIG_ENABLE else "disabled"),
        )
        static: list[Sample] = []

        def add(spec: MetricSpec, raw: Any, conv: Callable[[Any], Any] = _ident,
                labels: Labels = ()) -> None:
            if raw is not None and not (isinstance(raw, int) and raw in _NOT_AVAILABLE):
                static.append((spec, conv(raw), labels))

        mem = c("nvmlDeviceGetMemoryInfo", h)
        add(MEM_TOTAL, getattr(mem, "total", None))
        add(CLOCK_MAX, c("nvmlDeviceGetMaxClockInfo", h, nv.CLOCK_SM), _mega, ("sm",))
        add(CLOCK_MAX, c("nvmlDeviceGetMaxClockInfo", h, nv.CLOCK_MEM), _mega, ("memory",))
        add(POWER_DEFAULT_LIMIT, c("nvmlDeviceGetPowerManagementDefaultLimit", h), _milli)
        add(PCIE_GEN_MAX, c("nvmlDeviceGetMaxPcieLinkGeneration", h))
        add(PCIE_WIDTH_MAX, c("nvmlDeviceGetMaxPcieLinkWidth", h))

        supported = c("nvmlDeviceGetSupportedClocksEventReasons", h)
        if supported is None:
            supported = c("nvmlDeviceGetSupportedClocksThrottleReasons", h)
        reasons = CLOCK_REASONS
        if supported is not None:
            reasons = tuple(
                (bit, name) for bit, name in (*CLOCK_REASONS, *EXTRA_CLOCK_REASONS)
                if supported & bit
            )
        fans = c("nvmlDeviceGetNumFans", h)
        links = self._count_links(h)
        g.info, g.static, g.reasons, g.links = info, static, reasons, links
        g.fans = fans if isinstance(fans, int) and fans > 0 else -1

    def _count_links(self, h: Any) -> int:
        fv = self._nv.field_values(h, [(nv.FI_DEV_NVLINK_LINK_COUNT, 0)])
        if fv and fv[0].code == nv.SUCCESS and isinstance(fv[0].value, int):
            return max(0, min(fv[0].value, nv.NVLINK_MAX_LINKS))
        n = 0  # older driver: count the links nvmlDeviceGetNvLinkState answers for
        while n < nv.NVLINK_MAX_LINKS:
            try:
                self._nv.call("nvmlDeviceGetNvLinkState", h, n, expect=ANY)
            except NvmlCallError:
                break
            n += 1
        return n

    def _readings(self, g: Gpu) -> list[Reading]:
        util = "nvmlDeviceGetUtilizationRates"
        mem = "nvmlDeviceGetMemoryInfo"
        rows = "nvmlDeviceGetRemappedRows"
        r = [
            Reading(UTIL, (), (Call(util, pick=attrgetter("gpu")),), _percent),
            Reading(MEM_UTIL, (), (Call(util, pick=attrgetter("memory")),), _percent),
            Reading(MEM_USED, (), (Call(mem, pick=attrgetter("used")),)),
            Reading(MEM_FREE, (), (Call(mem, pick=attrgetter("free")),)),
            Reading(TEMP, (), (Call("nvmlDeviceGetTemperature", (nv.TEMPERATURE_GPU,)),)),
            Reading(MEM_TEMP, (), (Field(nv.FI_DEV_MEMORY_TEMP),)),
            Reading(POWER, (), (Call("nvmlDeviceGetPowerUsage"),), _milli),
            Reading(POWER_LIMIT, (), (Call("nvmlDeviceGetEnforcedPowerLimit"),), _milli),
            Reading(
                ENERGY, (),
                (Field(nv.FI_DEV_TOTAL_ENERGY_CONSUMPTION),
                 Call("nvmlDeviceGetTotalEnergyConsumption")),
                _milli,
            ),
            Reading(CLOCK, ("sm",), (Call("nvmlDeviceGetClockInfo", (nv.CLOCK_SM,)),), _mega),
            Reading(
                CLOCK, ("memory",), (Call("nvmlDeviceGetClockInfo", (nv.CLOCK_MEM,)),), _mega
            ),
            Reading(
                CLOCK_REASON, (),
                (Call("nvmlDeviceGetCurrentClocksEventReasons"),
                 Call("nvmlDeviceGetCurrentClocksThrottleReasons")),
                expand=_reasons(g.reasons),
            ),
            Reading(PSTATE, (), (Call("nvmlDeviceGetPerformanceState"),), _pstate),
            Reading(PCIE_GEN, (), (Call("nvmlDeviceGetCurrPcieLinkGeneration"),)),
            Reading(PCIE_WIDTH, (), (Call("nvmlDeviceGetCurrPcieLinkWidth"),)),
            Reading(
                PCIE_THROUGHPUT, ("tx",),
                (Call("nvmlDeviceGetPcieThroughput", (nv.PCIE_UTIL_TX_BYTES,)),), _kib,
            ),
            Reading(
                PCIE_THROUGHPUT, ("rx",),
                (Call("nvmlDeviceGetPcieThroughput", (nv.PCIE_UTIL_RX_BYTES,)),), _kib,
            ),
            Reading(
                PCIE_REPLAY, (),
                (Field(nv.FI_DEV_PCIE_REPLAY_COUNTER), Call("nvmlDeviceGetPcieReplayCounter")),
            ),
        ]
        for fid, etype, scope, err, counter in (
            (nv.FI_DEV_ECC_SBE_VOL_TOTAL, "corrected", "volatile",
             nv.MEMORY_ERROR_TYPE_CORRECTED, nv.VOLATILE_ECC),
            (nv.FI_DEV_ECC_DBE_VOL_TOTAL, "uncorrected", "volatile",
             nv.MEMORY_ERROR_TYPE_UNCORRECTED, nv.VOLATILE_ECC),
            (nv.FI_DEV_ECC_SBE_AGG_TOTAL, "corrected", "aggregate",
             nv.MEMORY_ERROR_TYPE_CORRECTED, nv.AGGREGATE_ECC),
            (nv.FI_DEV_ECC_DBE_AGG_TOTAL, "uncorrected", "aggregate",
             nv.MEMORY_ERROR_TYPE_UNCORRECTED, nv.AGGREGATE_ECC),
        ):
            r.append(
                Reading(ECC, (etype, scope),
                        (Field(fid), Call("nvmlDeviceGetTotalEccErrors", (err, counter))))
            )
        retired = "nvmlDeviceGetRetiredPages"
        r += [
            Reading(
                RETIRED, ("single_bit",),
                (Field(nv.FI_DEV_RETIRED_SBE),
                 Call(retired, (nv.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,),
                      pick=len)),
            ),
            Reading(
                RETIRED, ("double_bit",),
                (Field(nv.FI_DEV_RETIRED_DBE),
                 Call(retired, (nv.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,), pick=len)),
            ),
            Reading(
                RETIRED_PENDING, (),
                (Field(nv.FI_DEV_RETIRED_PENDING), Call("nvmlDeviceGetRetiredPagesPendingStatus")),
            ),
            Reading(REMAPPED, ("correctable",),
                    (Field(nv.FI_DEV_REMAPPED_COR), Call(rows, pick=itemgetter(0)))),
            Reading(REMAPPED, ("uncorrectable",),
                    (Field(nv.FI_DEV_REMAPPED_UNC), Call(rows, pick=itemgetter(1)))),
            Reading(REMAPPED_PENDING, (),
                    (Field(nv.FI_DEV_REMAPPED_PENDING), Call(rows, pick=itemgetter(2)))),
            Reading(REMAPPED_FAILURE, (),
                    (Field(nv.FI_DEV_REMAPPED_FAILURE), Call(rows, pick=itemgetter(3)))),
        ]
        if g.fans > 0:
            for fan in range(g.fans):
                srcs: tuple[Source, ...] = (Call("nvmlDeviceGetFanSpeed_v2", (fan,)),)
                if fan == 0:
                    srcs += (Call("nvmlDeviceGetFanSpeed"),)
                r.append(Reading(FAN, (str(fan),), srcs, _percent))
        else:
            r.append(Reading(FAN, ("0",), (Call("nvmlDeviceGetFanSpeed"),), _percent))
        for link in range(g.links):
            ln = str(link)
            r.append(
                Reading(NVLINK_UP, (ln,),
                        (Field(nv.FI_DEV_NVLINK_GET_STATE, link),
                         Call("nvmlDeviceGetNvLinkState", (link,))), _link_up)
            )
            for kind, dl_field, counter in (
                ("replay", nv.FI_DEV_NVLINK_ERROR_DL_REPLAY, nv.NVLINK_ERROR_DL_REPLAY),
                ("recovery", nv.FI_DEV_NVLINK_ERROR_DL_RECOVERY, nv.NVLINK_ERROR_DL_RECOVERY),
                ("crc_flit", nv.FI_DEV_NVLINK_ERROR_DL_CRC, nv.NVLINK_ERROR_DL_CRC_FLIT),
                ("crc_data", None, nv.NVLINK_ERROR_DL_CRC_DATA),
            ):
                srcs = ()
                legacy = nv.legacy_nvlink_field(kind, link)
                if legacy is not None:
                    srcs += (Field(legacy),)
                if dl_field is not None:
                    srcs += (Field(dl_field, link),)
                srcs += (Call("nvmlDeviceGetNvLinkErrorCounter", (link, counter)),)
                r.append(Reading(NVLINK_ERRORS, (ln, kind), srcs))
        if self.config.gpu.processes:
            r.append(
                Reading(
                    PROC_MEM, (),
                    (Call("nvmlDeviceGetComputeRunningProcesses"),
                     Call("nvmlDeviceGetComputeRunningProcesses_v2")),
                    expand=self._processes,
                )
            )
        return r

    def _probe(self, g: Gpu, now: float) -> dict[tuple[str, tuple[Any, ...]], Any]:
        """Choose, per reading, the first source this GPU answers. Raises GpuLostError.

        Returns what the getters it tried answered, for this scrape's read to reuse.
        """
        readings = self._readings(g)
        candidates = sorted(
            {(s.id, s.scope) for rd in readings for s in rd.sources if isinstance(s, Field)}
        )
        values = self._nv.field_values(g.handle, candidates) or []
        field_ok = {
            ids for ids, fv in zip(candidates, values, strict=False)
            if fv.code not in nv.FIELD_ABSENT
        }
        call_ok: dict[tuple[str, tuple[Any, ...]], bool] = {}
        answered: dict[tuple[str, tuple[Any, ...]], Any] = {}
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
                ck = (src.fn, src.args)
                if ck not in call_ok:
                    call_ok[ck], answered[ck] = self._answers(src, g.handle)
                if call_ok[ck]:
                    plan.entries.append((rd, src, -1))
                    break
        g.plan = plan
        g.probed_at = now
        return {ck: v for ck, v in answered.items() if v is not None}

    def _answers(self, src: Call, handle: Any) -> tuple[bool, Any]:
        """(whether the getter is supported, what it answered)."""
        try:
            return True, self._nv.call(src.fn, handle, *src.args, expect=ANY)
        except NvmlCallError as e:
            return e.code not in nv.ABSENT, None  # a transient error: keep the source

    # ---- per scrape ----

    def _collect_gpu(self, g: Gpu, now: float) -> list[Sample] | None:
        """This GPU's samples, or None if it is lost."""
        if g.lost:
            if now < g.retry_at:
                return None
            if not self._open(g):
                g.retry_at = now + self._interval
                return None
            g.lost = False
            log.warning("GPU %d (%s) answers NVML again", g.index, g.uuid)
            self._rewatch.set()
        try:
            memo = {}
            if g.plan is None or now - g.probed_at >= self._interval:
                memo = self._probe(g, now)
            return self._read(g, memo)
        except GpuLostError as e:
            self._mark_lost(g, now, e.fn)
            return None

    def _read(self, g: Gpu, memo: dict[tuple[str, tuple[Any, ...]], Any]) -> list[Sample]:
        """One batched field-values call plus the chosen getters (each called once)."""
        plan = g.plan
        assert plan is not None
        values = self._nv.field_values(g.handle, plan.fields)
        out: list[Sample] = []
        for rd, src, pos in plan.entries:
            if isinstance(src, Field):
                fv = values[pos] if values is not None and pos < len(values) else None
                raw = fv.value if fv is not None and fv.code == nv.SUCCESS else None
            else:
                ck = (src.fn, src.args)
                if ck not in memo:
                    memo[ck] = self._nv.call(src.fn, g.handle, *src.args)
                raw = memo[ck]
                if raw is not None and src.pick is not None:
                    raw = src.pick(raw)
            if raw is None:
                continue
            out.extend((rd.spec, value, labels) for labels, value in rd.samples(raw))
        return out

    def _mark_lost(self, g: Gpu, now: float, fn: str) -> None:
        if not g.lost:
            log.warning(
                "GPU %d (%s) is lost (%s); exported as dcwatch_gpu_up 0, retried every %gs",
                g.index, g.uuid or "uuid unknown", fn, self._interval,
            )
        g.lost = True
        g.retry_at = now + self._interval
        g.xid_watching = False if g.xid_watching is not None else None

    def _processes(self, procs: Sequence[Any]) -> list[tuple[Labels, float]]:
        used: dict[int, int] = {}
        for p in procs:
            mem = getattr(p, "usedGpuMemory", None)
            if mem is None or mem in _NOT_AVAILABLE:
                continue
            pid = int(p.pid)
            used[pid] = used.get(pid, 0) + int(mem)
        return [((str(pid), self._comm(pid)), float(b)) for pid, b in sorted(used.items())]

    def _comm(self, pid: int) -> str:
        try:
            return (self._procfs / str(pid) / "comm").read_text(errors="replace").strip()
        except OSError:
            return ""

    # ---- XID events ----

    def _watch(self) -> None:
        """Thread: register XID events on every GPU and count them until close()."""
        backoff = 1.0
        while not self._stop.is_set():
            try:
                gpus = self._ensure_ready()
            except Exception as e:  # no NVML yet: try again later
                log.debug("XID watcher: %s", e)
                self._stop.wait(self._nv.retry_interval)
                continue
            es = self._nv.call("nvmlEventSetCreate")
            if es is None:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            try:
                keys = self._register(es, gpus)
                ok = self._pump(es, keys) if keys else self._idle()
            finally:
                self._nv.call("nvmlEventSetFree", es)
            if ok:
                backoff = 1.0
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def _idle(self) -> bool:
        """No GPU to watch: wait for a recovery or the next rediscovery."""
        self._rewatch.wait(self._interval)
        self._rewatch.clear()
        return True

    def _register(self, es: Any, gpus: list[Gpu]) -> dict[Any, Gpu]:
        keys: dict[Any, Gpu] = {}
        self._rewatch.clear()
        for g in gpus:
            if g.lost or g.handle is None:
                g.xid_watching = False
                continue
            try:
                types = self._nv.call("nvmlDeviceGetSupportedEventTypes", g.handle)
                if types is not None and not int(types) & nv.EVENT_TYPE_XID_CRITICAL_ERROR:
                    g.xid_watching = False
                    continue
                self._nv.call(
                    "nvmlDeviceRegisterEvents", g.handle, nv.EVENT_TYPE_XID_CRITICAL_ERROR, es,
                    expect=ANY,
                )
            except NvmlCallError as e:
                level = logging.DEBUG if e.code in nv.ABSENT else logging.WARNING
                log.log(level, "GPU %d: XID events not watched: %s", g.index, e)
                g.xid_watching = False
                continue
            except GpuLostError:
                g.xid_watching = False
                continue
            keys[handle_key(g.handle)] = g
            g.xid_watching = True
        return keys

    def _pump(self, es: Any, keys: dict[Any, Gpu]) -> bool:
        """Wait for events until close() (True), a GPU recovers (True) or an error (False)."""
        while not self._stop.is_set():
            if self._rewatch.is_set():
                return True
            try:
                data = self._nv.call("nvmlEventSetWait", es, XID_WAIT_MS, expect=ANY)
            except NvmlCallError as e:
                if e.code == nv.ERROR_TIMEOUT:
                    continue
                log.warning("XID watcher: %s; event set re-created", e)
                return False
            except GpuLostError:
                log.info("XID watcher: a watched GPU is lost; event set re-created")
                return False
            if data is None:
                return False
            self._on_event(data, keys)
        return True

    def _on_event(self, data: Any, keys: dict[Any, Gpu]) -> None:
        if not int(data.eventType) & nv.EVENT_TYPE_XID_CRITICAL_ERROR:
            return
        xid = int(data.eventData)
        g = keys.get(handle_key(data.device))
        if g is None:  # not a handle we registered: ask NVML which GPU it is
            try:
                uuid = text(self._nv.call("nvmlDeviceGetUUID", data.device))
            except GpuLostError:
                uuid = ""
            g = next((x for x in keys.values() if uuid and x.uuid == uuid), None)
        gpu, uuid = g.labels if g is not None else ("", "")
        with self._xid_lock:
            self._xid[(gpu, uuid, str(xid))] += 1
            first = (gpu, xid) not in self._xid_logged
            self._xid_logged.add((gpu, xid))
        log.log(logging.WARNING if first else logging.DEBUG, "GPU %s (%s): XID %d", gpu, uuid, xid)


def _xid_order(key: tuple[str, str, str]) -> tuple[int, int]:
    gpu, _, xid = key
    return (int(gpu) if gpu.isdigit() else -1, int(xid) if xid.isdigit() else -1)
