"""A fake of the part of pynvml's API that the gpu collector uses.

Names, constants, error classes (``NVMLError`` with ``.value`` and one subclass per code, made
the way pynvml makes them) and the ctypes layouts of the structs it returns
(``c_nvmlFieldValue_t``, ``c_nvmlMemory_t``, ...) match nvidia-ml-py 13.x. The collector takes
NVML as an object with these attribute names, so tests pass a :class:`FakeNvml` instance; the
real pynvml is never touched.

Where the collector and NVML could disagree, the fake follows nvml.h (CUDA 12.9+), not the
collector: the old per-link NVLink error fields (ids 32..119) count a *lane* and take the link
in scopeId; ``nvmlDeviceGetMemoryInfo`` without a version is v1, whose ``used`` includes the
reserved memory (v2 reports it apart); an event set keeps its queued events across a failed
wait, loses them when freed, and answers GPU_IS_LOST (once its queue is empty) while a GPU
registered on it is lost; most getters answer NOT_SUPPORTED on a MIG device handle, and
utilisation is NOT_SUPPORTED on a GPU in MIG mode.

Two GPUs by default (:func:`default_gpus`):

* GPU 0, H100-like, with everything: memory temperature, 18 NVLinks, row remapping, two fans.
* GPU 1, T4-like and older: no memory temperature, no NVLink, no row remapping (it retires
  pages instead), no fan, no MIG, no supported-clock-reasons mask, and the energy *field* is
  unsupported while ``nvmlDeviceGetTotalEnergyConsumption`` works (the collector's fallback).

:func:`mig_gpu` is an H100 in MIG mode with three MIG devices, for the MIG tests.

Knobs: ``FakeGpu.failing`` (a function raises a given error code),
:meth:`FakeNvml.lose_gpu` (every call on that GPU raises ``NVMLError_GpuIsLost``, or another
code such as RESET_REQUIRED), ``FakeNvml.wait_errors`` (codes the next event waits raise),
:meth:`FakeNvml.inject_xid` (queued for ``nvmlEventSetWait``), ``library_missing`` /
``driver_not_loaded`` (``nvmlInit`` fails), ``missing`` (functions absent from the module, as
with an old pynvml). ``calls`` counts calls by function name.
"""

from __future__ import annotations

import ctypes
import string
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# ---- constants (values as in pynvml) ----------------------------------------------------------

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

NVML_TEMPERATURE_GPU = 0
nvmlTemperature_v1 = 0x100000C
nvmlMemory_v2 = 0x02000028
NVML_PERF_POLICY_POWER = 0
NVML_PERF_POLICY_THERMAL = 1
NVML_PERF_POLICY_SYNC_BOOST = 2
NVML_PERF_POLICY_BOARD_LIMIT = 3
NVML_PERF_POLICY_LOW_UTILIZATION = 4
NVML_PERF_POLICY_RELIABILITY = 5
NVML_PERF_POLICY_TOTAL_APP_CLOCKS = 10
NVML_PERF_POLICY_TOTAL_BASE_CLOCKS = 11
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVML_PSTATE_UNKNOWN = 32

NVML_NVLINK_MAX_LINKS = 36
NVML_NVLINK_ERROR_DL_REPLAY = 0
NVML_NVLINK_ERROR_DL_RECOVERY = 1
NVML_NVLINK_ERROR_DL_CRC_FLIT = 2
NVML_NVLINK_ERROR_DL_CRC_DATA = 3

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

NVML_FI_DEV_ECC_SBE_VOL_TOTAL = 3
NVML_FI_DEV_ECC_DBE_VOL_TOTAL = 4
NVML_FI_DEV_ECC_SBE_AGG_TOTAL = 5
NVML_FI_DEV_ECC_DBE_AGG_TOTAL = 6
NVML_FI_DEV_RETIRED_SBE = 29
NVML_FI_DEV_RETIRED_DBE = 30
NVML_FI_DEV_RETIRED_PENDING = 31
# nvml.h: "..._L<n>" is lane n; the link goes in scopeId
NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L0 = 32  # L0..L5 = 32..37, L6..L11 = 96..101
NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L0 = 39  # L0..L5 = 39..44, L6..L11 = 102..107
NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L0 = 46  # L0..L5 = 46..51, L6..L11 = 108..113
NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L0 = 53  # L0..L5 = 53..58, L6..L11 = 114..119
NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L6 = 96
NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L6 = 102
NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L6 = 108
NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L6 = 114
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION = 83
NVML_FI_DEV_NVLINK_LINK_COUNT = 91
NVML_FI_DEV_PCIE_REPLAY_COUNTER = 94
NVML_FI_DEV_REMAPPED_COR = 142
NVML_FI_DEV_REMAPPED_UNC = 143
NVML_FI_DEV_REMAPPED_PENDING = 144
NVML_FI_DEV_REMAPPED_FAILURE = 145
NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY = 161
NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY = 162
NVML_FI_DEV_NVLINK_ERROR_DL_CRC = 163
NVML_FI_DEV_NVLINK_GET_STATE = 165

nvmlEventTypeSingleBitEccError = 0x0000000000000001
nvmlEventTypeDoubleBitEccError = 0x0000000000000002
nvmlEventTypePState = 0x0000000000000004
nvmlEventTypeXidCriticalError = 0x0000000000000008
nvmlEventTypeClock = 0x0000000000000010
nvmlEventTypeNone = 0x0000000000000000

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonApplicationsClocksSetting = 0x0000000000000002
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSyncBoost = 0x0000000000000010
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
nvmlClocksEventReasonDisplayClockSetting = 0x0000000000000100
nvmlClocksEventReasonNone = 0x0000000000000000
nvmlClocksThrottleReasonSwPowerCap = nvmlClocksEventReasonSwPowerCap

# the old NVLink error fields, per lane (scopeId = link): lanes 0..5 and 6..11 in two id ranges
_LEGACY_NVLINK_BASES = {
    "crc_flit": (
        NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L0,
        NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L6,
    ),
    "crc_data": (
        NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L0,
        NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L6,
    ),
    "replay": (NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L0, NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L6),
    "recovery": (
        NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L0,
        NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L6,
    ),
}
_DL_FIELDS = {
    NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY: "replay",
    NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY: "recovery",
    NVML_FI_DEV_NVLINK_ERROR_DL_CRC: "crc_flit",
}
_DL_COUNTERS = {
    NVML_NVLINK_ERROR_DL_REPLAY: "replay",
    NVML_NVLINK_ERROR_DL_RECOVERY: "recovery",
    NVML_NVLINK_ERROR_DL_CRC_FLIT: "crc_flit",
    NVML_NVLINK_ERROR_DL_CRC_DATA: "crc_data",
}


LANES = 4  # lanes per link in the fake (an NVLink 4 link has 2; the id range allows 12)


def legacy_nvlink_field(kind: str, lane: int) -> int:
    lo, hi = _LEGACY_NVLINK_BASES[kind]
    return lo + lane if lane < 6 else hi + lane - 6


def lane_count(total: int, lane: int) -> int:
    """Lane ``lane``'s share of a link's ``total`` errors (lane 0 takes the remainder)."""
    share = total // LANES
    return share + (total - share * LANES if lane == 0 else 0)


# ---- errors (made like pynvml's: NVMLError(code) returns the subclass for that code) ----------


class NVMLLibraryMismatchError(Exception):
    pass


class NVMLError(Exception):
    _valClassMapping: dict[int, type[NVMLError]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:  # type: ignore[misc]
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, *args: object) -> None:
        super().__init__(*args)

    def __str__(self) -> str:
        return f"NVML error {self.value}"


def _make_error_classes() -> None:
    g = globals()
    for name in [n for n in g if n.startswith("NVML_ERROR_")]:
        cls_name = "NVMLError_" + string.capwords(name[len("NVML_ERROR_") :], "_").replace("_", "")
        val = g[name]

        def gen_new(v: int) -> Callable[..., NVMLError]:
            def new(typ: type[NVMLError], *args: object) -> NVMLError:
                return NVMLError.__new__(typ, v)

            return new

        cls = type(cls_name, (NVMLError,), {"__new__": gen_new(val)})
        g[cls_name] = cls
        NVMLError._valClassMapping[val] = cls


_make_error_classes()
NVMLError_NotSupported: type[NVMLError] = globals()["NVMLError_NotSupported"]
NVMLError_GpuIsLost: type[NVMLError] = globals()["NVMLError_GpuIsLost"]
NVMLError_Timeout: type[NVMLError] = globals()["NVMLError_Timeout"]
NVMLError_Uninitialized: type[NVMLError] = globals()["NVMLError_Uninitialized"]


# ---- structs (ctypes layouts as in pynvml) ----------------------------------------------------


class c_nvmlValue_t(ctypes.Union):
    _fields_ = [
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulonglong),
        ("sllVal", ctypes.c_longlong),
        ("siVal", ctypes.c_int),
        ("usVal", ctypes.c_ushort),
    ]


class c_nvmlFieldValue_t(ctypes.Structure):
    _fields_ = [
        ("fieldId", ctypes.c_uint32),
        ("scopeId", ctypes.c_uint32),
        ("timestamp", ctypes.c_int64),
        ("latencyUsec", ctypes.c_int64),
        ("valueType", ctypes.c_uint),
        ("nvmlReturn", ctypes.c_uint),
        ("value", c_nvmlValue_t),
    ]


class c_nvmlMemory_t(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class c_nvmlMemory_v2_t(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint),
        ("total", ctypes.c_ulonglong),
        ("reserved", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class c_nvmlViolationTime_t(ctypes.Structure):
    _fields_ = [("referenceTime", ctypes.c_ulonglong), ("violationTime", ctypes.c_ulonglong)]


class c_nvmlUtilization_t(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class nvmlPciInfo_t(ctypes.Structure):
    _fields_ = [
        ("busIdLegacy", ctypes.c_char * 16),
        ("domain", ctypes.c_uint),
        ("bus", ctypes.c_uint),
        ("device", ctypes.c_uint),
        ("pciDeviceId", ctypes.c_uint),
        ("pciSubSystemId", ctypes.c_uint),
        ("busId", ctypes.c_char * 32),
    ]


class nvmlFriendlyObject:
    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


@dataclass(frozen=True)
class FakeHandle:
    """A device handle. Hashable, like the pointer address the collector keys real handles by."""

    index: int


@dataclass(frozen=True)
class FakeMigHandle:
    """A MIG device handle: the parent GPU's index and the MIG device's index under it."""

    parent: int
    index: int


@dataclass
class FakeMig:
    """One MIG device (a compute instance of a GPU instance), memory in bytes."""

    gpu_instance: int
    compute_instance: int
    profile: str  # e.g. "1g.10gb"; the device's name is the parent's + " MIG " + profile
    uuid: str
    memory_total: int
    memory_used: int
    processes: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class FakeEventData:
    device: FakeHandle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass
class FakeEventSet:
    devices: dict[int, int] = field(default_factory=dict)  # gpu index -> event type mask
    queue: deque[FakeEventData] = field(default_factory=deque)
    freed: bool = False


# ---- devices ----------------------------------------------------------------------------------

# (valueType, value) per field; a field not in a GPU's table is NOT_SUPPORTED on it.
FieldTable = dict[tuple[int, int], tuple[int, float | int]]


@dataclass
class FakeGpu:
    """One GPU, in NVML's own units (mW, mJ, MHz, KB/s, percent)."""

    name: str
    uuid: str
    serial: str
    bus_id: str
    vbios: str
    mig_mode: int | None  # None: MIG not supported
    memory_total: int
    memory_used: int  # as nvmlMemory_v2 counts it: without the reserved memory
    util_gpu: int
    util_memory: int
    temperature: int
    power_mw: int
    power_limit_mw: int
    power_default_limit_mw: int
    energy_mj: int
    clock_sm: int
    clock_mem: int
    clock_sm_max: int
    clock_mem_max: int
    clocks_event_reasons: int
    supported_clocks_event_reasons: int | None
    pstate: int
    fans: list[int] | None  # percent per fan; None: no fan
    pcie_gen: int
    pcie_gen_max: int
    pcie_width: int
    pcie_width_max: int
    pcie_tx_kbs: int
    pcie_rx_kbs: int
    pcie_replay: int
    ecc: dict[tuple[int, int], int]  # (error type, counter type) -> count
    memory_temperature: int | None = None
    memory_reserved: int = 0
    memory_v2: bool = True  # False: an older driver without nvmlDeviceGetMemoryInfo_v2
    encoder_util: int | None = None  # percent; None: no video encoder
    decoder_util: int | None = None
    violation_ns: dict[int, int] = field(default_factory=dict)  # perf policy -> ns; else N/S
    migs: list[FakeMig | None] = field(default_factory=list)  # MIG devices by index, None = gap
    max_mig_devices: int = 7
    nvlinks: list[dict[str, int]] | None = None  # per link: state, replay, recovery, ...
    remapped_rows: tuple[int, int, int, int] | None = None  # cor, unc, pending, failure
    retired_pages: dict[int, list[int]] | None = None  # cause -> page addresses
    retired_pending: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)
    unsupported: set[str] = field(default_factory=set)  # function names -> NOT_SUPPORTED
    unsupported_fields: set[int] = field(default_factory=set)
    failing: dict[str, int] = field(default_factory=dict)  # function name -> error code raised
    lost: int = 0  # the error code every call raises (GPU_IS_LOST, RESET_REQUIRED), 0 if none

    def fields(self) -> FieldTable:
        ull = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        ui = NVML_VALUE_TYPE_UNSIGNED_INT
        t: FieldTable = {
            (NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 0): (ull, self.energy_mj),
            (NVML_FI_DEV_PCIE_REPLAY_COUNTER, 0): (ui, self.pcie_replay),
        }
        if self.memory_temperature is not None:
            t[(NVML_FI_DEV_MEMORY_TEMP, 0)] = (ui, self.memory_temperature)
        cor, unc = NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        for fid, key in (
            (NVML_FI_DEV_ECC_SBE_VOL_TOTAL, (cor, NVML_VOLATILE_ECC)),
            (NVML_FI_DEV_ECC_DBE_VOL_TOTAL, (unc, NVML_VOLATILE_ECC)),
            (NVML_FI_DEV_ECC_SBE_AGG_TOTAL, (cor, NVML_AGGREGATE_ECC)),
            (NVML_FI_DEV_ECC_DBE_AGG_TOTAL, (unc, NVML_AGGREGATE_ECC)),
        ):
            if key in self.ecc:
                t[(fid, 0)] = (ull, self.ecc[key])
        if self.retired_pages is not None:
            t[(NVML_FI_DEV_RETIRED_SBE, 0)] = (ull, len(self.retired_pages[0]))
            t[(NVML_FI_DEV_RETIRED_DBE, 0)] = (ull, len(self.retired_pages[1]))
            t[(NVML_FI_DEV_RETIRED_PENDING, 0)] = (ui, self.retired_pending)
        if self.remapped_rows is not None:
            for fid, v in zip(
                (
                    NVML_FI_DEV_REMAPPED_COR,
                    NVML_FI_DEV_REMAPPED_UNC,
                    NVML_FI_DEV_REMAPPED_PENDING,
                    NVML_FI_DEV_REMAPPED_FAILURE,
                ),
                self.remapped_rows,
                strict=True,
            ):
                t[(fid, 0)] = (ui, v)
        if self.nvlinks is not None:
            t[(NVML_FI_DEV_NVLINK_LINK_COUNT, 0)] = (ui, len(self.nvlinks))
            for link, c in enumerate(self.nvlinks):
                t[(NVML_FI_DEV_NVLINK_GET_STATE, link)] = (ui, c["state"])
                for fid, kind in _DL_FIELDS.items():
                    t[(fid, link)] = (ull, c[kind])
                for kind in _LEGACY_NVLINK_BASES:
                    for lane in range(LANES):
                        t[(legacy_nvlink_field(kind, lane), link)] = (
                            ull,
                            lane_count(c[kind], lane),
                        )
        return {k: v for k, v in t.items() if k[0] not in self.unsupported_fields}


def h100(index: int = 0) -> FakeGpu:
    links = [
        {
            "state": 0 if link == 17 else 1,
            "replay": link,
            "recovery": 2 if link == 3 else 0,
            "crc_flit": 2 * link,
            "crc_data": link % 3,
        }
        for link in range(18)
    ]
    total = 81559 * 2**20
    return FakeGpu(
        name="NVIDIA H100 80GB HBM3",
        uuid=f"GPU-0b1e4a6c-52f3-4c1e-9d3a-7f0e3c2a1b0{index}",
        serial=f"165092301234{index}",
        bus_id=f"00000000:{0x18 + index:02X}:00.0",
        vbios="96.00.74.00.0D",
        mig_mode=NVML_DEVICE_MIG_DISABLE,
        memory_total=total,
        memory_used=40960 * 2**20,
        util_gpu=87,
        util_memory=45,
        temperature=54,
        memory_temperature=63,
        power_mw=612345,
        power_limit_mw=700000,
        power_default_limit_mw=700000,
        energy_mj=123456789012,
        clock_sm=1980,
        clock_mem=2619,
        clock_sm_max=1980,
        clock_mem_max=2619,
        clocks_event_reasons=nvmlClocksEventReasonSwPowerCap,
        supported_clocks_event_reasons=0x1FF,
        pstate=0,
        fans=[30, 32],
        pcie_gen=5,
        pcie_gen_max=5,
        pcie_width=16,
        pcie_width_max=16,
        pcie_tx_kbs=1250000,
        pcie_rx_kbs=2500000,
        pcie_replay=3,
        ecc={(0, 0): 5, (1, 0): 0, (0, 1): 17, (1, 1): 1},
        nvlinks=links,
        remapped_rows=(2, 1, 0, 0),
        retired_pages=None,
        processes=[(4242, 8 * 2**30), (4343, 2 * 2**30)],
        unsupported={"nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPagesPendingStatus"},
        memory_reserved=543 * 2**20,
        decoder_util=4,  # an H100 has video decoders and no encoder
        violation_ns={
            NVML_PERF_POLICY_POWER: 12_500_000_000,
            NVML_PERF_POLICY_THERMAL: 250_000_000,
            NVML_PERF_POLICY_SYNC_BOOST: 0,
            NVML_PERF_POLICY_BOARD_LIMIT: 0,
            NVML_PERF_POLICY_LOW_UTILIZATION: 3_600_000_000_000,
            NVML_PERF_POLICY_RELIABILITY: 0,
            NVML_PERF_POLICY_TOTAL_APP_CLOCKS: 12_750_000_000,
            NVML_PERF_POLICY_TOTAL_BASE_CLOCKS: 0,
        },
    )


def t4(index: int = 1) -> FakeGpu:
    return FakeGpu(
        name="Tesla T4",
        uuid=f"GPU-7c2d9e10-3a4b-4c5d-8e6f-a1b2c3d4e5f{index}",
        serial=f"132082001234{index}",
        bus_id=f"00000000:{0x3B + index:02X}:00.0",
        vbios="90.04.96.00.02",
        mig_mode=None,
        memory_total=15360 * 2**20,
        memory_used=1024 * 2**20,
        util_gpu=12,
        util_memory=3,
        temperature=41,
        memory_temperature=None,
        power_mw=27500,
        power_limit_mw=70000,
        power_default_limit_mw=70000,
        energy_mj=98765432,
        clock_sm=585,
        clock_mem=5000,
        clock_sm_max=1590,
        clock_mem_max=5001,
        clocks_event_reasons=nvmlClocksEventReasonGpuIdle,
        supported_clocks_event_reasons=None,
        pstate=8,
        fans=None,
        pcie_gen=3,
        pcie_gen_max=3,
        pcie_width=8,
        pcie_width_max=16,
        pcie_tx_kbs=1000,
        pcie_rx_kbs=2000,
        pcie_replay=0,
        ecc={(0, 0): 1, (1, 0): 0, (0, 1): 3, (1, 1): 0},
        nvlinks=None,
        remapped_rows=None,
        retired_pages={0: [0x1000, 0x2000], 1: [0x3000]},
        retired_pending=0,
        processes=[(5151, 512 * 2**20)],
        memory_reserved=227 * 2**20,
        encoder_util=25,
        decoder_util=10,
        violation_ns={NVML_PERF_POLICY_POWER: 0, NVML_PERF_POLICY_THERMAL: 1_500_000_000},
        unsupported={
            "nvmlDeviceGetSupportedClocksEventReasons",
            "nvmlDeviceGetSupportedClocksThrottleReasons",
        },
        unsupported_fields={NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION},
    )


def default_gpus() -> list[FakeGpu]:
    return [h100(0), t4(1)]


def mig_gpu(index: int = 0) -> FakeGpu:
    """An H100 in MIG mode: a 3g.40gb, a 2g.20gb and a 1g.10gb device, MIG index 3 empty."""
    g = h100(index)
    g.mig_mode = NVML_DEVICE_MIG_ENABLE
    g.processes = []
    g.migs = [
        FakeMig(1, 0, "3g.40gb", f"MIG-3f0c9a52-8b1d-5e6f-9a0b-1c2d3e4f5a6{index}",
                40192 * 2**20, 30 * 2**30, [(6001, 29 * 2**30)]),
        FakeMig(5, 0, "2g.20gb", f"MIG-5a6b7c8d-9e0f-5a1b-8c2d-3e4f5a6b7c8{index}",
                19968 * 2**20, 6 * 2**30, [(6002, 5 * 2**30), (6003, None)]),
        FakeMig(13, 0, "1g.10gb", f"MIG-d1e2f3a4-b5c6-5d7e-8f9a-0b1c2d3e4f5{index}",
                9856 * 2**20, 0),
    ]  # fmt: skip
    return g


# ---- the module ------------------------------------------------------------------------------


class FakeNvml:
    """An object with pynvml's attribute names.

    Thread-safe: the XID watcher thread calls it while scrapes do.
    """

    _missing: frozenset[str] = frozenset()

    def __init__(
        self,
        gpus: Iterable[FakeGpu] | None = None,
        *,
        library_missing: bool = False,
        driver_not_loaded: bool = False,
        missing: Iterable[str] = (),
        driver_version: str = "550.54.15",
        cuda_version: int = 12040,
    ) -> None:
        self.gpus = list(default_gpus() if gpus is None else gpus)
        self.library_missing = library_missing
        self.driver_not_loaded = driver_not_loaded
        self._missing = frozenset(missing)
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.initialized = 0  # pynvml keeps a reference count
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: Counter[str] = Counter()
        self.event_sets: list[FakeEventSet] = []
        self.wait_errors: deque[int] = deque()  # codes the next nvmlEventSetWait calls raise
        self._cond = threading.Condition()

    def __getattribute__(self, name: str) -> Any:
        if name in object.__getattribute__(self, "_missing"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    # -- test knobs --

    def lose_gpu(self, index: int, code: int = NVML_ERROR_GPU_IS_LOST) -> None:
        """From now on every call on this GPU raises ``code`` (fell off the bus, needs reset)."""
        with self._cond:
            self.gpus[index].lost = code
            self._cond.notify_all()

    def recover_gpu(self, index: int) -> None:
        self.gpus[index].lost = 0

    def fail_waits(self, *codes: int) -> None:
        """The next ``len(codes)`` event waits raise these codes; queued events stay queued."""
        with self._cond:
            self.wait_errors.extend(codes)
            self._cond.notify_all()

    def inject_xid(self, index: int, xid: int) -> None:
        """Queue an XID critical error event on GPU ``index`` for every set watching it."""
        with self._cond:
            if self.gpus[index].lost:
                return
            for es in self.event_sets:
                if not es.freed and es.devices.get(index, 0) & nvmlEventTypeXidCriticalError:
                    es.queue.append(
                        FakeEventData(FakeHandle(index), nvmlEventTypeXidCriticalError, xid)
                    )
            self._cond.notify_all()

    def open_event_sets(self) -> int:
        return sum(1 for es in self.event_sets if not es.freed)

    # -- plumbing --

    def _enter(self, fn: str) -> None:
        self.calls[fn] += 1
        if self.initialized <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _dev(self, fn: str, handle: FakeHandle | FakeMigHandle) -> FakeGpu:
        """The GPU of a full-GPU handle; a MIG handle answers NOT_SUPPORTED (see _any)."""
        g, mig = self._any(fn, handle)
        if mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g

    def _any(self, fn: str, handle: Any) -> tuple[FakeGpu, FakeMig | None]:
        """The GPU and, for a MIG device handle, the MIG device (for getters that take both)."""
        self._enter(fn)
        index = handle.parent if isinstance(handle, FakeMigHandle) else getattr(handle, "index", -1)
        if not isinstance(handle, FakeHandle | FakeMigHandle) or not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        g = self.gpus[index]
        if g.lost:
            raise NVMLError(g.lost)
        if fn in g.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if fn in g.failing:
            raise NVMLError(g.failing[fn])
        if not isinstance(handle, FakeMigHandle):
            return g, None
        mig = g.migs[handle.index] if handle.index < len(g.migs) else None
        if mig is None or g.mig_mode != NVML_DEVICE_MIG_ENABLE:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)  # a stale MIG handle
        return g, mig

    def _mig_mode(self, g: FakeGpu) -> bool:
        return g.mig_mode == NVML_DEVICE_MIG_ENABLE

    # -- init --

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        self.init_calls += 1
        if self.library_missing:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.driver_not_loaded:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.shutdown_calls += 1
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:
            raise NVMLError(self.gpus[index].lost)
        return FakeHandle(index)

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._dev("nvmlDeviceGetIndex", handle)
        return handle.index

    # -- static --

    def nvmlDeviceGetName(self, h: FakeHandle) -> str:
        g, mig = self._any("nvmlDeviceGetName", h)
        return g.name if mig is None else f"{g.name} MIG {mig.profile}"

    def nvmlDeviceGetUUID(self, h: FakeHandle) -> str:
        g, mig = self._any("nvmlDeviceGetUUID", h)
        return g.uuid if mig is None else mig.uuid

    def nvmlDeviceGetSerial(self, h: FakeHandle) -> str:
        return self._dev("nvmlDeviceGetSerial", h).serial

    def nvmlDeviceGetVbiosVersion(self, h: FakeHandle) -> str:
        return self._dev("nvmlDeviceGetVbiosVersion", h).vbios

    def nvmlDeviceGetPciInfo(self, h: FakeHandle) -> nvmlPciInfo_t:
        g = self._dev("nvmlDeviceGetPciInfo", h)
        info = nvmlPciInfo_t()
        info.busId = g.bus_id.encode()
        info.busIdLegacy = g.bus_id[4:].encode()
        return info

    def nvmlDeviceGetMigMode(self, h: FakeHandle) -> list[int]:
        g = self._dev("nvmlDeviceGetMigMode", h)
        if g.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [g.mig_mode, g.mig_mode]

    def nvmlDeviceGetMaxClockInfo(self, h: FakeHandle, clock: int) -> int:
        g = self._dev("nvmlDeviceGetMaxClockInfo", h)
        return {NVML_CLOCK_SM: g.clock_sm_max, NVML_CLOCK_MEM: g.clock_mem_max}[clock]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetPowerManagementDefaultLimit", h).power_default_limit_mw

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetMaxPcieLinkGeneration", h).pcie_gen_max

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetMaxPcieLinkWidth", h).pcie_width_max

    def nvmlDeviceGetSupportedClocksEventReasons(self, h: FakeHandle) -> int:
        g = self._dev("nvmlDeviceGetSupportedClocksEventReasons", h)
        if g.supported_clocks_event_reasons is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.supported_clocks_event_reasons

    def nvmlDeviceGetSupportedClocksThrottleReasons(self, h: FakeHandle) -> int:
        g = self._dev("nvmlDeviceGetSupportedClocksThrottleReasons", h)
        if g.supported_clocks_event_reasons is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.supported_clocks_event_reasons

    def nvmlDeviceGetNumFans(self, h: FakeHandle) -> int:
        g = self._dev("nvmlDeviceGetNumFans", h)
        if g.fans is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return len(g.fans)

    def nvmlDeviceGetSupportedEventTypes(self, h: FakeHandle) -> int:
        self._dev("nvmlDeviceGetSupportedEventTypes", h)
        return nvmlEventTypeXidCriticalError | nvmlEventTypeSingleBitEccError

    # -- dynamic --

    def nvmlDeviceGetMemoryInfo(
        self, h: FakeHandle, version: int | None = None
    ) -> c_nvmlMemory_t | c_nvmlMemory_v2_t:
        """v1 without a version (``used`` includes reserved), v2 with nvmlMemory_v2."""
        g, mig = self._any("nvmlDeviceGetMemoryInfo", h)
        total, used, reserved = (
            (g.memory_total, g.memory_used, g.memory_reserved)
            if mig is None
            else (mig.memory_total, mig.memory_used, 0)
        )
        free = total - used - reserved
        if not version:
            return c_nvmlMemory_t(total, free, total - free)
        if not g.memory_v2:  # pynvml: the _v2 symbol is missing from libnvidia-ml
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        if version != nvmlMemory_v2:
            raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return c_nvmlMemory_v2_t(version, total, reserved, free, used)

    def nvmlDeviceGetUtilizationRates(self, h: FakeHandle) -> c_nvmlUtilization_t:
        g = self._dev("nvmlDeviceGetUtilizationRates", h)
        if self._mig_mode(g):  # per instance only through DCGM's profiling metrics
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return c_nvmlUtilization_t(g.util_gpu, g.util_memory)

    def _codec(self, fn: str, h: FakeHandle, util: Callable[[FakeGpu], int | None]) -> list[int]:
        g = self._dev(fn, h)
        value = util(g)
        if value is None or self._mig_mode(g):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [value, 167000]  # utilisation, sampling period in us

    def nvmlDeviceGetEncoderUtilization(self, h: FakeHandle) -> list[int]:
        return self._codec("nvmlDeviceGetEncoderUtilization", h, lambda g: g.encoder_util)

    def nvmlDeviceGetDecoderUtilization(self, h: FakeHandle) -> list[int]:
        return self._codec("nvmlDeviceGetDecoderUtilization", h, lambda g: g.decoder_util)

    def nvmlDeviceGetViolationStatus(
        self, device: FakeHandle, perfPolicyType: int
    ) -> c_nvmlViolationTime_t:
        g = self._dev("nvmlDeviceGetViolationStatus", device)
        if perfPolicyType not in g.violation_ns:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return c_nvmlViolationTime_t(1_700_000_000_000_000, g.violation_ns[perfPolicyType])

    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:
        g = self._dev("nvmlDeviceGetTemperature", h)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return g.temperature

    def nvmlDeviceGetTemperatureV(
        self, handle: FakeHandle, sensor: int, version: int = nvmlTemperature_v1
    ) -> int:
        if version != nvmlTemperature_v1:
            raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        g = self._dev("nvmlDeviceGetTemperatureV", handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return g.temperature

    def nvmlDeviceGetPowerUsage(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetPowerUsage", h).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetEnforcedPowerLimit", h).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj

    def nvmlDeviceGetClockInfo(self, h: FakeHandle, clock: int) -> int:
        g = self._dev("nvmlDeviceGetClockInfo", h)
        return {NVML_CLOCK_SM: g.clock_sm, NVML_CLOCK_MEM: g.clock_mem}[clock]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetCurrentClocksEventReasons", h).clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetCurrentClocksThrottleReasons", h).clocks_event_reasons

    def nvmlDeviceGetPerformanceState(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetPerformanceState", h).pstate

    def nvmlDeviceGetFanSpeed(self, h: FakeHandle) -> int:
        g = self._dev("nvmlDeviceGetFanSpeed", h)
        if not g.fans:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.fans[0]

    def nvmlDeviceGetFanSpeed_v2(self, h: FakeHandle, fan: int) -> int:
        g = self._dev("nvmlDeviceGetFanSpeed_v2", h)
        if not g.fans:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= fan < len(g.fans):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return g.fans[fan]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetCurrPcieLinkGeneration", h).pcie_gen

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetCurrPcieLinkWidth", h).pcie_width

    def nvmlDeviceGetPcieThroughput(self, h: FakeHandle, counter: int) -> int:
        g = self._dev("nvmlDeviceGetPcieThroughput", h)
        return {NVML_PCIE_UTIL_TX_BYTES: g.pcie_tx_kbs, NVML_PCIE_UTIL_RX_BYTES: g.pcie_rx_kbs}[
            counter
        ]

    def nvmlDeviceGetPcieReplayCounter(self, h: FakeHandle) -> int:
        return self._dev("nvmlDeviceGetPcieReplayCounter", h).pcie_replay

    def nvmlDeviceGetTotalEccErrors(self, h: FakeHandle, error_type: int, counter: int) -> int:
        g = self._dev("nvmlDeviceGetTotalEccErrors", h)
        if (error_type, counter) not in g.ecc:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.ecc[(error_type, counter)]

    def nvmlDeviceGetRetiredPages(self, h: FakeHandle, cause: int) -> list[int]:
        g = self._dev("nvmlDeviceGetRetiredPages", h)
        if g.retired_pages is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return list(g.retired_pages[cause])

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeHandle) -> int:
        g = self._dev("nvmlDeviceGetRetiredPagesPendingStatus", h)
        if g.retired_pages is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.retired_pending

    def nvmlDeviceGetRemappedRows(self, h: FakeHandle) -> tuple[int, int, int, int]:
        g = self._dev("nvmlDeviceGetRemappedRows", h)
        if g.remapped_rows is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.remapped_rows

    def nvmlDeviceGetNvLinkState(self, h: FakeHandle, link: int) -> int:
        g = self._dev("nvmlDeviceGetNvLinkState", h)
        if g.nvlinks is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < len(g.nvlinks):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return g.nvlinks[link]["state"]

    def nvmlDeviceGetNvLinkErrorCounter(self, h: FakeHandle, link: int, counter: int) -> int:
        g = self._dev("nvmlDeviceGetNvLinkErrorCounter", h)
        if g.nvlinks is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < len(g.nvlinks) or counter not in _DL_COUNTERS:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return g.nvlinks[link][_DL_COUNTERS[counter]]

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeHandle) -> list[nvmlFriendlyObject]:
        return self._processes(*self._any("nvmlDeviceGetComputeRunningProcesses", h))

    def _processes(self, g: FakeGpu, mig: FakeMig | None) -> list[nvmlFriendlyObject]:
        """A MIG handle's processes; on the parent in MIG mode, every instance's, with ids."""
        none = 0xFFFFFFFF
        if mig is not None:
            rows = [(p, u, mig.gpu_instance, mig.compute_instance) for p, u in mig.processes]
        else:
            rows = [(p, u, none, none) for p, u in g.processes]
            for m in g.migs if self._mig_mode(g) else []:
                if m is not None:
                    rows += [(p, u, m.gpu_instance, m.compute_instance) for p, u in m.processes]
        return [
            nvmlFriendlyObject(
                {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": gi, "computeInstanceId": ci}
            )
            for pid, used, gi, ci in rows
        ]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: FakeHandle) -> list[nvmlFriendlyObject]:
        return self._processes(*self._any("nvmlDeviceGetComputeRunningProcesses_v2", h))

    # -- MIG --

    def nvmlDeviceGetMaxMigDeviceCount(self, device: FakeHandle) -> int:
        g = self._dev("nvmlDeviceGetMaxMigDeviceCount", device)
        if g.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.max_mig_devices if self._mig_mode(g) else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: FakeHandle, index: int) -> FakeMigHandle:
        g = self._dev("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if g.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not self._mig_mode(g) or not 0 <= index < g.max_mig_devices:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(g.migs) or g.migs[index] is None:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return FakeMigHandle(device.index, index)

    def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> int:
        return int(self._any("nvmlDeviceIsMigDeviceHandle", device)[1] is not None)

    def _mig_ids(self, fn: str, device: Any) -> FakeMig:
        mig = self._any(fn, device)[1]
        if mig is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return mig

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        return self._mig_ids("nvmlDeviceGetGpuInstanceId", device).gpu_instance

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        return self._mig_ids("nvmlDeviceGetComputeInstanceId", device).compute_instance

    def nvmlDeviceGetFieldValues(self, h: FakeHandle, fieldIds: list[Any]) -> Any:
        g = self._dev("nvmlDeviceGetFieldValues", h)
        table = g.fields()
        values = (c_nvmlFieldValue_t * len(fieldIds))()
        for i, fid in enumerate(fieldIds):
            fid, scope = fid if isinstance(fid, tuple) else (fid, 0)
            v = values[i]
            v.fieldId, v.scopeId = fid, scope
            hit = table.get((fid, scope))
            if hit is None:
                v.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
                continue
            vtype, val = hit
            v.nvmlReturn = NVML_SUCCESS
            v.valueType = vtype
            member = {
                NVML_VALUE_TYPE_DOUBLE: "dVal",
                NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
                NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
                NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
                NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
                NVML_VALUE_TYPE_SIGNED_INT: "siVal",
                NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
            }[vtype]
            setattr(v.value, member, val)
        return values

    # -- events --

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._enter("nvmlEventSetCreate")
        es = FakeEventSet()
        with self._cond:
            self.event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, h: FakeHandle, event_types: int, es: FakeEventSet) -> None:
        self._dev("nvmlDeviceRegisterEvents", h)
        with self._cond:
            es.devices[h.index] = es.devices.get(h.index, 0) | event_types

    def nvmlEventSetWait(self, es: FakeEventSet, timeoutms: int) -> FakeEventData:
        """The next queued event; a lost registered GPU's code once the queue is empty."""
        self._enter("nvmlEventSetWait")
        with self._cond:
            if es.freed:
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
            if self.wait_errors:
                raise NVMLError(self.wait_errors.popleft())

            def lost() -> int:
                return next((self.gpus[i].lost for i in es.devices if self.gpus[i].lost), 0)

            ready = self._cond.wait_for(
                lambda: bool(es.queue) or bool(self.wait_errors) or bool(lost()),
                timeout=timeoutms / 1000,
            )
            if es.queue:
                return es.queue.popleft()
            if self.wait_errors:
                raise NVMLError(self.wait_errors.popleft())
            raise NVMLError(lost() if ready else NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, es: FakeEventSet) -> None:
        self._enter("nvmlEventSetFree")
        with self._cond:
            es.freed = True
            self._cond.notify_all()


# pynvml exposes its constants and error classes as module attributes; so does the fake.
for _name, _value in list(globals().items()):
    if _name.startswith(
        ("NVML_", "NVMLError", "nvmlEventType", "nvmlClocks", "NVMLLibrary", "nvmlMemory_v")
    ) or _name in ("nvmlTemperature_v1",):
        setattr(FakeNvml, _name, _value)
for _name in (
    "c_nvmlFieldValue_t",
    "c_nvmlValue_t",
    "c_nvmlMemory_t",
    "c_nvmlMemory_v2_t",
    "c_nvmlViolationTime_t",
    "c_nvmlUtilization_t",
):
    setattr(FakeNvml, _name, globals()[_name])
