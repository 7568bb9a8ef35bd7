"""The one place that calls NVML (nvidia-ml-py's ``pynvml``, or any object with its API).

Every call goes through :meth:`Nvml.call`, which turns NVML's errors into what a collector needs:

* **absent**: ``NOT_SUPPORTED``, ``NO_PERMISSION``, ``FUNCTION_NOT_FOUND``, a function this
  pynvml does not have, or pynvml's ``NVMLLibraryMismatchError`` (an unversioned function the
  driver lacks) → ``None``. Not an error; logged once per function at debug.
* **lost**: ``GPU_IS_LOST`` or ``RESET_REQUIRED`` → :class:`GpuLostError`. The GPU fell off the
  bus or needs a reset before it answers again; the caller marks it down and keeps going with
  the other GPUs.
* anything else → ``None`` too, but counted in :attr:`Nvml.errors` and logged once per
  (function, code) at warning.

Codes a caller handles itself (``TIMEOUT`` from ``nvmlEventSetWait``) are named in ``expect=``
and raised as :class:`NvmlCallError`. :meth:`Nvml.field_values` wraps the batched
``nvmlDeviceGetFieldValues``: per-field return codes and the union member picked by
``valueType``.

This module knows nothing of Prometheus.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Container, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("dcwatch.nvml")

# ---- NVML's numbers (nvml.h; the same in every pynvml, tests compare them with pynvml's) -------

SUCCESS: Final = 0
ERROR_UNINITIALIZED: Final = 1
ERROR_INVALID_ARGUMENT: Final = 2
ERROR_NOT_SUPPORTED: Final = 3
ERROR_NO_PERMISSION: Final = 4
ERROR_NOT_FOUND: Final = 6
ERROR_DRIVER_NOT_LOADED: Final = 9
ERROR_TIMEOUT: Final = 10
ERROR_LIBRARY_NOT_FOUND: Final = 12
ERROR_FUNCTION_NOT_FOUND: Final = 13
ERROR_GPU_IS_LOST: Final = 15
ERROR_RESET_REQUIRED: Final = 16

TEMPERATURE_GPU: Final = 0
CLOCK_SM: Final = 1
CLOCK_MEM: Final = 2
PCIE_UTIL_TX_BYTES: Final = 0
PCIE_UTIL_RX_BYTES: Final = 1
MEMORY_V2: Final = 0x02000028  # nvmlMemory_v2: nvmlDeviceGetMemoryInfo_v2's struct version
MEMORY_ERROR_TYPE_CORRECTED: Final = 0
MEMORY_ERROR_TYPE_UNCORRECTED: Final = 1
VOLATILE_ECC: Final = 0
AGGREGATE_ECC: Final = 1
PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: Final = 0
PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: Final = 1
NVLINK_MAX_LINKS: Final = 36
NVLINK_ERROR_DL_REPLAY: Final = 0
NVLINK_ERROR_DL_RECOVERY: Final = 1
NVLINK_ERROR_DL_CRC_FLIT: Final = 2
NVLINK_ERROR_DL_CRC_DATA: Final = 3
DEVICE_MIG_ENABLE: Final = 1
# nvmlPerfPolicyType_t: nvmlDeviceGetViolationStatus's clocks-event (throttle) time counters
PERF_POLICY_POWER: Final = 0
PERF_POLICY_THERMAL: Final = 1
PERF_POLICY_SYNC_BOOST: Final = 2
PERF_POLICY_BOARD_LIMIT: Final = 3
PERF_POLICY_LOW_UTILIZATION: Final = 4
PERF_POLICY_RELIABILITY: Final = 5
PERF_POLICY_TOTAL_APP_CLOCKS: Final = 10
PERF_POLICY_TOTAL_BASE_CLOCKS: Final = 11
EVENT_TYPE_XID_CRITICAL_ERROR: Final = 0x8

FI_DEV_ECC_SBE_VOL_TOTAL: Final = 3
FI_DEV_ECC_DBE_VOL_TOTAL: Final = 4
FI_DEV_ECC_SBE_AGG_TOTAL: Final = 5
FI_DEV_ECC_DBE_AGG_TOTAL: Final = 6
FI_DEV_RETIRED_SBE: Final = 29
FI_DEV_RETIRED_DBE: Final = 30
FI_DEV_RETIRED_PENDING: Final = 31
FI_DEV_MEMORY_TEMP: Final = 82
FI_DEV_TOTAL_ENERGY_CONSUMPTION: Final = 83
FI_DEV_NVLINK_LINK_COUNT: Final = 91
FI_DEV_PCIE_REPLAY_COUNTER: Final = 94
FI_DEV_REMAPPED_COR: Final = 142
FI_DEV_REMAPPED_UNC: Final = 143
FI_DEV_REMAPPED_PENDING: Final = 144
FI_DEV_REMAPPED_FAILURE: Final = 145
FI_DEV_NVLINK_ERROR_DL_REPLAY: Final = 161  # scopeId = link
FI_DEV_NVLINK_ERROR_DL_RECOVERY: Final = 162  # scopeId = link
FI_DEV_NVLINK_ERROR_DL_CRC: Final = 163  # scopeId = link (flit CRC)
FI_DEV_NVLINK_GET_STATE: Final = 165  # scopeId = link
# Not read: the older NVML_FI_DEV_NVLINK_<KIND>_ERROR_COUNT_L<n> fields (ids 32-58, 96-119).
# nvml.h (CUDA 12.9+) documents <n> as a *lane* and wants the link in scopeId, so reading the
# id for "link n" with scope 0 gives link 0's lane n (or nothing). The DL fields above and
# nvmlDeviceGetNvLinkErrorCounter(link, counter), as DCGM uses, are per link.


# valueType of nvmlFieldValue_t -> member of the nvmlValue_t union
VALUE_MEMBERS: Final = {
    0: "dVal",  # NVML_VALUE_TYPE_DOUBLE
    1: "uiVal",  # UNSIGNED_INT
    2: "ulVal",  # UNSIGNED_LONG
    3: "ullVal",  # UNSIGNED_LONG_LONG
    4: "sllVal",  # SIGNED_LONG_LONG
    5: "siVal",  # SIGNED_INT
    6: "usVal",  # UNSIGNED_SHORT
}

ABSENT: Final = frozenset({ERROR_NOT_SUPPORTED, ERROR_NO_PERMISSION, ERROR_FUNCTION_NOT_FOUND})
# per-field codes that mean "this device has no such field (or no such scope, e.g. link)"
FIELD_ABSENT: Final = ABSENT | {ERROR_INVALID_ARGUMENT, ERROR_NOT_FOUND}
UNAVAILABLE: Final = frozenset({ERROR_LIBRARY_NOT_FOUND, ERROR_DRIVER_NOT_LOADED})
# the GPU does not answer until it is back on the bus or reset: treated alike
LOST: Final = frozenset({ERROR_GPU_IS_LOST, ERROR_RESET_REQUIRED})

_CODE_NAMES: Final = {
    ERROR_UNINITIALIZED: "Uninitialized",
    ERROR_INVALID_ARGUMENT: "Invalid Argument",
    ERROR_NOT_SUPPORTED: "Not Supported",
    ERROR_NO_PERMISSION: "Insufficient Permissions",
    ERROR_NOT_FOUND: "Not Found",
    ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    ERROR_TIMEOUT: "Timeout",
    ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    ERROR_GPU_IS_LOST: "GPU is lost",
    ERROR_RESET_REQUIRED: "GPU requires reset",
    18: "NVML/RM version mismatch",
    999: "Unknown Error",
}


class _Any:
    """``expect=ANY``: hand every error code (except the LOST ones) back to the caller."""

    def __contains__(self, code: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()


def describe(code: int | None) -> str:
    if code is None:
        return "unknown"
    return f"{_CODE_NAMES.get(code, 'NVML error')} ({code})"


class NvmlUnavailableError(Exception):
    """No pynvml, no libnvidia-ml, or no NVIDIA driver loaded: there is nothing to read."""


class NvmlInitError(Exception):
    """``nvmlInit`` failed for another reason (e.g. NVML/driver version mismatch)."""


class GpuLostError(Exception):
    """NVML_ERROR_GPU_IS_LOST or RESET_REQUIRED: the GPU fell off the bus, or needs a reset."""

    def __init__(self, fn: str, code: int = ERROR_GPU_IS_LOST) -> None:
        super().__init__(f"{fn}: {describe(code)}")
        self.fn = fn
        self.code = code


class NvmlCallError(Exception):
    """An error code the caller asked to handle itself (``expect=``)."""

    def __init__(self, fn: str, code: int) -> None:
        super().__init__(f"{fn}: {describe(code)}")
        self.fn = fn
        self.code = code


@dataclass(frozen=True)
class FieldValue:
    """One entry of a batched field-values call: NVML's return code and, on success, the value."""

    code: int
    value: float | int | None


def decode_field(fv: Any) -> float | int | None:
    """The value of one ``nvmlFieldValue_t``, read from the union member its valueType names;
    None for an unknown valueType or a double that is not finite (no field is NaN or inf)."""
    member = VALUE_MEMBERS.get(int(fv.valueType))
    if member is None:
        return None
    v = getattr(fv.value, member)
    if member != "dVal":
        return int(v)
    d = float(v)
    return d if math.isfinite(d) else None


def handle_key(handle: Any) -> Hashable:
    """A key that is equal for two handles of the same device.

    pynvml's handles are ctypes pointers: two of them (the one we hold and the one in an event's
    data) compare unequal even when they point at the same device, so key them by address.
    """
    import ctypes  # loaded by pynvml already; not at import, where it would cost a GPU-less agent

    if isinstance(handle, ctypes._Pointer):
        return ("ptr", ctypes.cast(handle, ctypes.c_void_p).value)
    return handle


def text(v: Any) -> str:
    """A label value from what pynvml returns: ``str``, ``bytes`` or ``None``."""
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace").strip("\x00").strip()
    return str(v).strip()


def _code(e: BaseException) -> int | None:
    v = getattr(e, "value", None)
    return v if isinstance(v, int) else None


class Nvml:
    """NVML, initialised once, shut down once, every call fault-tolerant.

    ``module`` is pynvml or an object with its API; ``None`` imports pynvml at :meth:`init`.
    A failed :meth:`init` is remembered and not retried for ``retry_interval`` seconds (the
    driver may load later). Thread-safe.
    """

    def __init__(
        self,
        module: Any = None,
        *,
        retry_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._module = module
        self.retry_interval = retry_interval
        self.clock = clock
        self._lock = threading.Lock()  # init / shutdown
        self._book = threading.Lock()  # errors and the log-once sets
        self._initialized = False
        self._failure: Exception | None = None
        self._failed_at = 0.0
        self._logged: set[Hashable] = set()
        self.errors = 0

    @property
    def lib(self) -> Any:
        return self._module

    @property
    def initialized(self) -> bool:
        return self._initialized

    # ---- init / shutdown ----

    def init(self) -> None:
        """Initialise NVML unless done. Raises NvmlUnavailableError or NvmlInitError."""
        with self._lock:
            if self._initialized:
                return
            now = self.clock()
            if self._failure is not None and now - self._failed_at < self.retry_interval:
                raise type(self._failure)(*self._failure.args)
            try:
                self._init_locked()
            except (NvmlUnavailableError, NvmlInitError) as e:
                if self._failure is None or type(e) is not type(self._failure):
                    log.log(
                        logging.DEBUG if isinstance(e, NvmlUnavailableError) else logging.WARNING,
                        "NVML: %s; retried every %gs",
                        e,
                        self.retry_interval,
                    )
                self._failure, self._failed_at = e, now
                raise
            if self._failure is not None:
                log.info("NVML: initialised after earlier failure (%s)", self._failure)
            self._failure = None

    def _init_locked(self) -> None:
        if self._module is None:
            try:
                self._module = importlib.import_module("pynvml")
            except ImportError as e:
                raise NvmlUnavailableError(f"pynvml is not installed ({e})") from None
        lib = self._module
        try:
            lib.nvmlInit()
        except Exception as e:
            code = _code(e)
            if isinstance(e, lib.NVMLError) and code in UNAVAILABLE:
                raise NvmlUnavailableError(f"nvmlInit: {describe(code)}") from None
            if isinstance(e, lib.NVMLError):
                raise NvmlInitError(f"nvmlInit: {describe(code)}") from None
            raise NvmlInitError(f"nvmlInit: {type(e).__name__}: {e}") from None
        self._initialized = True

    def shutdown(self) -> None:
        """``nvmlShutdown`` if we initialised NVML. Safe to call twice."""
        with self._lock:
            if not self._initialized:
                return
            self._initialized = False
            try:
                self._module.nvmlShutdown()
            except Exception as e:
                log.debug("nvmlShutdown: %s", describe(_code(e)) if _code(e) else e)

    # ---- calls ----

    def call(self, fn: str, *args: Any, expect: Container[int] = ()) -> Any:
        """``module.<fn>(*args)``; see the module docstring for what errors become."""
        lib = self._module
        f = getattr(lib, fn, None)
        if f is None:
            if ERROR_FUNCTION_NOT_FOUND in expect:
                raise NvmlCallError(fn, ERROR_FUNCTION_NOT_FOUND)
            self._absent(fn, "not in this pynvml")
            return None
        try:
            return f(*args)
        except Exception as e:
            code = _code(e) if isinstance(e, lib.NVMLError) else None
            if code is None and type(e).__name__ == "NVMLLibraryMismatchError":
                code = ERROR_FUNCTION_NOT_FOUND  # unversioned function missing from the driver
            if code in LOST:
                raise GpuLostError(fn, code) from None
            if code is not None and code in expect:
                raise NvmlCallError(fn, code) from None
            if code in ABSENT:
                self._absent(fn, describe(code))
                return None
            self._error(
                (fn, code),
                "NVML %s failed: %s; reported as absent",
                fn,
                describe(code) if code is not None else f"{type(e).__name__}: {e}",
            )
            return None

    def field_values(self, handle: Any, ids: Sequence[tuple[int, int]]) -> list[FieldValue] | None:
        """One batched ``nvmlDeviceGetFieldValues`` for ``(field id, scope id)`` pairs.

        Returns a :class:`FieldValue` per id, in order (``None`` if the whole call failed).
        A field whose return code is GPU_IS_LOST or RESET_REQUIRED raises :class:`GpuLostError`.
        """
        if not ids:
            return []
        raw = self.call("nvmlDeviceGetFieldValues", handle, list(ids))
        if raw is None:
            return None
        out: list[FieldValue] = []
        for (fid, scope), fv in zip(ids, raw, strict=False):
            code = int(fv.nvmlReturn)
            if code == SUCCESS:
                value = decode_field(fv)
                if value is None:
                    self._error(
                        ("field-type", fid, int(fv.valueType)),
                        "NVML field %d: unknown valueType %d or a value that is not finite; "
                        "reported as absent",
                        fid,
                        int(fv.valueType),
                    )
                out.append(FieldValue(code, value))
                continue
            if code in LOST:
                raise GpuLostError(f"nvmlDeviceGetFieldValues[{fid}]", code)
            if code in FIELD_ABSENT:
                self._absent(("field", fid), describe(code), f"field {fid}")
            else:
                self._error(
                    ("field", fid, code),
                    "NVML field %d (scope %d): %s; reported as absent",
                    fid,
                    scope,
                    describe(code),
                )
            out.append(FieldValue(code, None))
        return out

    # ---- bookkeeping ----

    def _absent(self, key: Hashable, why: str, what: str | None = None) -> None:
        with self._book:
            if ("absent", key) in self._logged:
                return
            self._logged.add(("absent", key))
        log.debug("NVML %s: %s; reported as absent", what or key, why)

    def _error(self, key: Hashable, msg: str, *args: Any) -> None:
        with self._book:
            self.errors += 1
            if ("error", key) in self._logged:
                return
            self._logged.add(("error", key))
        log.warning(msg, *args)
