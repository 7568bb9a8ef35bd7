"""What the ``gpu`` collector reads from each GPU, from which NVML sources, in which units.

:data:`STATIC` is read once per GPU; :func:`readings` lists what a scrape reads, each with its
sources in order of preference (a batched field first where NVML has one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from dcwatch.exporters.gpu.metrics import (
    CLOCK,
    CLOCK_EVENT_TIME,
    CLOCK_MAX,
    CLOCK_REASON,
    DEC_UTIL,
    ECC,
    ENC_UTIL,
    ENERGY,
    FAN,
    MEM_FREE,
    MEM_RESERVED,
    MEM_TEMP,
    MEM_TOTAL,
    MEM_USED,
    MEM_UTIL,
    NVLINK_ERRORS,
    NVLINK_UP,
    PCIE_GEN,
    PCIE_GEN_MAX,
    PCIE_REPLAY,
    PCIE_THROUGHPUT,
    PCIE_WIDTH,
    PCIE_WIDTH_MAX,
    POWER,
    POWER_DEFAULT_LIMIT,
    POWER_LIMIT,
    PROC_MEM,
    PSTATE,
    REMAPPED,
    REMAPPED_FAILURE,
    REMAPPED_PENDING,
    RETIRED,
    RETIRED_PENDING,
    TEMP,
    UTIL,
    VIOLATION_POLICIES,
    Labels,
)
from dcwatch.exporters.gpu.plan import NOT_AVAILABLE, Call, Field, Reading, Source
from dcwatch.exporters.sources import nvml as nv

Expand = Callable[[Any], list[tuple[Labels, float]]]


def _percent(v: Any) -> float:
    return float(v) / 100


def _milli(v: Any) -> float:
    return float(v) / 1000


def _mega(v: Any) -> int:
    return int(v) * 1_000_000


def _kib(v: Any) -> int:
    # nvml.h says "KB/s" and no more; nvidia-smi prints the same number as "KB/s". Taken as
    # KiB, which this code has not verified on hardware (the difference is 2.4 %).
    return int(v) * 1024


def _nano(v: Any) -> float:
    return int(v) / 1e9


def _pstate(v: Any) -> int | None:
    return int(v) if 0 <= int(v) <= 15 else None  # 32 = unknown


def _link_up(v: Any) -> int:
    # FIELD NVLINK_GET_STATE and nvmlDeviceGetNvLinkState both say 1 for active; 2 would be
    # nvmlNvLinkState_t's SLEEP (low-power but trained), which is up too.
    return 1 if int(v) in (1, 2) else 0


def _reasons(reasons: tuple[tuple[int, str], ...]) -> Expand:
    """A clocks-event-reasons bitmask -> one 0/1 sample per reason the GPU supports."""

    def expand(mask: Any) -> list[tuple[Labels, float]]:
        return [((name,), 1 if int(mask) & bit else 0) for bit, name in reasons]

    return expand


def process_memory(procfs: Path) -> Expand:
    """Compute processes -> memory used per pid, named by ``<procfs>/<pid>/comm``."""

    def expand(procs: Sequence[Any]) -> list[tuple[Labels, float]]:
        used: dict[int, int] = {}
        for p in procs:
            mem = getattr(p, "usedGpuMemory", None)
            if mem is None or mem in NOT_AVAILABLE:
                continue
            pid = int(p.pid)
            used[pid] = used.get(pid, 0) + int(mem)
        return [((str(pid), _comm(procfs, pid)), float(b)) for pid, b in sorted(used.items())]

    return expand


def _comm(procfs: Path, pid: int) -> str:
    try:
        return (procfs / str(pid) / "comm").read_text(errors="replace").strip()
    except OSError:
        return ""


_MEM = "nvmlDeviceGetMemoryInfo"
# nvmlMemory_v2 first: v1's ``used`` counts the memory the driver reserves (hundreds of MiB on
# an H100), which nvidia-smi and dcgm-exporter report apart. v1 only where v2 is missing.
_MEM_V2 = (nv.MEMORY_V2,)
_VIOLATION = "nvmlDeviceGetViolationStatus"
_TEMP = (nv.TEMPERATURE_GPU,)
_MAX_CLOCK = "nvmlDeviceGetMaxClockInfo"

STATIC = (
    Reading(MEM_TOTAL, (), (Call(_MEM, pick=attrgetter("total")),)),
    Reading(CLOCK_MAX, ("sm",), (Call(_MAX_CLOCK, (nv.CLOCK_SM,)),), _mega),
    Reading(CLOCK_MAX, ("memory",), (Call(_MAX_CLOCK, (nv.CLOCK_MEM,)),), _mega),
    Reading(POWER_DEFAULT_LIMIT, (), (Call("nvmlDeviceGetPowerManagementDefaultLimit"),), _milli),
    Reading(PCIE_GEN_MAX, (), (Call("nvmlDeviceGetMaxPcieLinkGeneration"),)),
    Reading(PCIE_WIDTH_MAX, (), (Call("nvmlDeviceGetMaxPcieLinkWidth"),)),
)

_UTIL = "nvmlDeviceGetUtilizationRates"
_CLOCK = "nvmlDeviceGetClockInfo"
_PCIE_TP = "nvmlDeviceGetPcieThroughput"
_ECC_ERRORS = "nvmlDeviceGetTotalEccErrors"
_RETIRED = "nvmlDeviceGetRetiredPages"
_ROWS = "nvmlDeviceGetRemappedRows"
_COR, _UNC = nv.MEMORY_ERROR_TYPE_CORRECTED, nv.MEMORY_ERROR_TYPE_UNCORRECTED
_VOL, _AGG = nv.VOLATILE_ECC, nv.AGGREGATE_ECC

# The same for every GPU, in the order they are exported; readings() adds what depends on the GPU.
_USAGE = (
    Reading(UTIL, (), (Call(_UTIL, pick=attrgetter("gpu")),), _percent),
    Reading(MEM_UTIL, (), (Call(_UTIL, pick=attrgetter("memory")),), _percent),
    Reading(ENC_UTIL, (), (Call("nvmlDeviceGetEncoderUtilization", pick=itemgetter(0)),),
            _percent),
    Reading(DEC_UTIL, (), (Call("nvmlDeviceGetDecoderUtilization", pick=itemgetter(0)),),
            _percent),
    Reading(MEM_USED, (), (Call(_MEM, _MEM_V2, pick=attrgetter("used")),
                           Call(_MEM, pick=attrgetter("used")))),
    Reading(MEM_FREE, (), (Call(_MEM, _MEM_V2, pick=attrgetter("free")),
                           Call(_MEM, pick=attrgetter("free")))),
    Reading(MEM_RESERVED, (), (Call(_MEM, _MEM_V2, pick=attrgetter("reserved")),)),
    # nvmlDeviceGetTemperature is to go in CUDA 14 (pynvml says); the V getter first
    Reading(TEMP, (), (Call("nvmlDeviceGetTemperatureV", _TEMP),
                       Call("nvmlDeviceGetTemperature", _TEMP))),
    Reading(MEM_TEMP, (), (Field(nv.FI_DEV_MEMORY_TEMP),)),
    Reading(POWER, (), (Call("nvmlDeviceGetPowerUsage"),), _milli),
    Reading(POWER_LIMIT, (), (Call("nvmlDeviceGetEnforcedPowerLimit"),), _milli),
    Reading(ENERGY, (), (Field(nv.FI_DEV_TOTAL_ENERGY_CONSUMPTION),
                         Call("nvmlDeviceGetTotalEnergyConsumption")), _milli),
    Reading(CLOCK, ("sm",), (Call(_CLOCK, (nv.CLOCK_SM,)),), _mega),
    Reading(CLOCK, ("memory",), (Call(_CLOCK, (nv.CLOCK_MEM,)),), _mega),
)  # fmt: skip
_CLOCK_EVENT_TIME = tuple(
    Reading(CLOCK_EVENT_TIME, (reason,),
            (Call(_VIOLATION, (policy,), pick=attrgetter("violationTime")),), _nano)
    for policy, reason in VIOLATION_POLICIES
)  # fmt: skip
_PSTATE_AND_PCIE = (
    Reading(PSTATE, (), (Call("nvmlDeviceGetPerformanceState"),), _pstate),
    Reading(PCIE_GEN, (), (Call("nvmlDeviceGetCurrPcieLinkGeneration"),)),
    Reading(PCIE_WIDTH, (), (Call("nvmlDeviceGetCurrPcieLinkWidth"),)),
    Reading(PCIE_THROUGHPUT, ("tx",), (Call(_PCIE_TP, (nv.PCIE_UTIL_TX_BYTES,)),), _kib),
    Reading(PCIE_THROUGHPUT, ("rx",), (Call(_PCIE_TP, (nv.PCIE_UTIL_RX_BYTES,)),), _kib),
    Reading(PCIE_REPLAY, (), (Field(nv.FI_DEV_PCIE_REPLAY_COUNTER),
                              Call("nvmlDeviceGetPcieReplayCounter"))),
)  # fmt: skip
_MEMORY_ERRORS = (
    Reading(ECC, ("corrected", "volatile"),
            (Field(nv.FI_DEV_ECC_SBE_VOL_TOTAL), Call(_ECC_ERRORS, (_COR, _VOL)))),
    Reading(ECC, ("uncorrected", "volatile"),
            (Field(nv.FI_DEV_ECC_DBE_VOL_TOTAL), Call(_ECC_ERRORS, (_UNC, _VOL)))),
    Reading(ECC, ("corrected", "aggregate"),
            (Field(nv.FI_DEV_ECC_SBE_AGG_TOTAL), Call(_ECC_ERRORS, (_COR, _AGG)))),
    Reading(ECC, ("uncorrected", "aggregate"),
            (Field(nv.FI_DEV_ECC_DBE_AGG_TOTAL), Call(_ECC_ERRORS, (_UNC, _AGG)))),
    Reading(RETIRED, ("single_bit",),
            (Field(nv.FI_DEV_RETIRED_SBE),
             Call(_RETIRED, (nv.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,),
                  pick=len))),
    Reading(RETIRED, ("double_bit",),
            (Field(nv.FI_DEV_RETIRED_DBE),
             Call(_RETIRED, (nv.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,), pick=len))),
    Reading(RETIRED_PENDING, (),
            (Field(nv.FI_DEV_RETIRED_PENDING), Call("nvmlDeviceGetRetiredPagesPendingStatus"))),
    Reading(REMAPPED, ("correctable",),
            (Field(nv.FI_DEV_REMAPPED_COR), Call(_ROWS, pick=itemgetter(0)))),
    Reading(REMAPPED, ("uncorrectable",),
            (Field(nv.FI_DEV_REMAPPED_UNC), Call(_ROWS, pick=itemgetter(1)))),
    Reading(REMAPPED_PENDING, (),
            (Field(nv.FI_DEV_REMAPPED_PENDING), Call(_ROWS, pick=itemgetter(2)))),
    Reading(REMAPPED_FAILURE, (),
            (Field(nv.FI_DEV_REMAPPED_FAILURE), Call(_ROWS, pick=itemgetter(3)))),
)  # fmt: skip
_NVLINK_ERRORS = (  # type label, the DL field (scopeId = link) if any, the getter's counter
    ("replay", nv.FI_DEV_NVLINK_ERROR_DL_REPLAY, nv.NVLINK_ERROR_DL_REPLAY),
    ("recovery", nv.FI_DEV_NVLINK_ERROR_DL_RECOVERY, nv.NVLINK_ERROR_DL_RECOVERY),
    ("crc_flit", nv.FI_DEV_NVLINK_ERROR_DL_CRC, nv.NVLINK_ERROR_DL_CRC_FLIT),
    ("crc_data", None, nv.NVLINK_ERROR_DL_CRC_DATA),
)


def readings(
    reasons: tuple[tuple[int, str], ...], links: int, fans: int, procfs: Path | None = None
) -> list[Reading]:
    """What a scrape reads from a GPU with these clocks-event reasons, NVLinks and fans.

    ``fans`` > 0 is read per fan, -1 as one fan by the legacy getter. With ``procfs``, the
    compute processes' memory too, named from there.
    """
    r = [
        *_USAGE,
        Reading(
            CLOCK_REASON,
            (),
            (
                Call("nvmlDeviceGetCurrentClocksEventReasons"),
                Call("nvmlDeviceGetCurrentClocksThrottleReasons"),
            ),
            expand=_reasons(reasons),
        ),
        *_CLOCK_EVENT_TIME,
        *_PSTATE_AND_PCIE,
        *_MEMORY_ERRORS,
    ]
    if fans > 0:
        for fan in range(fans):
            srcs: tuple[Source, ...] = (Call("nvmlDeviceGetFanSpeed_v2", (fan,)),)
            if fan == 0:
                srcs += (Call("nvmlDeviceGetFanSpeed"),)
            r.append(Reading(FAN, (str(fan),), srcs, _percent))
    else:
        r.append(Reading(FAN, ("0",), (Call("nvmlDeviceGetFanSpeed"),), _percent))
    for link in range(links):
        ln = str(link)
        up = (Field(nv.FI_DEV_NVLINK_GET_STATE, link), Call("nvmlDeviceGetNvLinkState", (link,)))
        r.append(Reading(NVLINK_UP, (ln,), up, _link_up))
        for kind, dl_field, counter in _NVLINK_ERRORS:
            srcs = () if dl_field is None else (Field(dl_field, link),)
            srcs += (Call("nvmlDeviceGetNvLinkErrorCounter", (link, counter)),)
            r.append(Reading(NVLINK_ERRORS, (ln, kind), srcs))
    if procfs is not None:
        running = (
            Call("nvmlDeviceGetComputeRunningProcesses"),
            Call("nvmlDeviceGetComputeRunningProcesses_v2"),
        )
        r.append(Reading(PROC_MEM, (), running, expand=process_memory(procfs)))
    return r
