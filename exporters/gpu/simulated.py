"""A simulated NVML for ``dcwatch demo``: the part of pynvml's API the gpu collector reads, with
values taken from a JSON state file that the demo's scenario rewrites as simulated time passes.

The agent uses it instead of pynvml when ``DCWATCH_GPU_SIMULATE=<state file>`` is set (see
``dcwatch.agent.__main__``); it is never used otherwise. The state file::

    {"driver": "550.54.15", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "temp": 41.0,
      "util": 35.0, "mem_util": 20.0, "mem_used": 2.1e10, "mem_total": 8.5e10,
      "power": 310.0, "power_limit": 700.0, "energy_j": 12345.0, "sm_clock": 1755}]}

Values are in base units (celsius, percent, bytes, watts, joules, MHz). With ``"at"`` (the unix
time the state describes) the energy counter advances at the state's power between rewrites, as a
real one does, and never goes back; without it the counter reads ``energy_j`` as written.

Functions not here (field values, NVLink, ECC, fans) are absent, as on a GPU that lacks them: the
collector leaves those readings out. The file is re-read when it changes; a half-written file
keeps the last state.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "DCWATCH_GPU_SIMULATE"


class NVMLError(Exception):
    """pynvml's error shape: ``.value`` is the NVML return code."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


ERROR_INVALID_ARGUMENT = 2
ERROR_TIMEOUT = 10
EVENT_TYPE_XID_CRITICAL_ERROR = 0x8


@dataclass(frozen=True)
class Handle:
    index: int


@dataclass(frozen=True)
class Memory:
    total: int
    free: int
    used: int
    reserved: int = 0


@dataclass(frozen=True)
class Utilization:
    gpu: int
    memory: int


class SimulatedNvml:
    """pynvml's API over the state file at ``path``."""

    NVMLError = NVMLError  # pynvml's error class is part of its API

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._mtime: int = -1
        self._state: dict[str, Any] = {"gpus": []}
        self._energy_mj: dict[int, int] = {}  # the last energy read per GPU (counters only grow)

    def _read(self) -> dict[str, Any]:
        """The current state (re-read when the file changed): one snapshot, so that a GPU's
        values and the state's time always come from the same write."""
        with self._lock:
            try:
                mtime = os.stat(self.path).st_mtime_ns
                if mtime != self._mtime:
                    self._state = json.loads(self.path.read_text())
                    self._mtime = mtime
            except (OSError, ValueError):
                pass  # written right now (or not yet): keep the last state
            return self._state

    def _gpus(self) -> list[dict[str, Any]]:
        return list(self._read().get("gpus", []))

    def _gpu(self, h: Handle, state: dict[str, Any] | None = None) -> dict[str, Any]:
        gpus = list((self._read() if state is None else state).get("gpus", []))
        if not isinstance(h, Handle) or not 0 <= h.index < len(gpus):
            raise NVMLError(ERROR_INVALID_ARGUMENT)
        return gpus[h.index]

    # -- the API -----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._gpus()

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._state.get("driver", "550.54.15"))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus())

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        if not 0 <= index < len(self._gpus()):
            raise NVMLError(ERROR_INVALID_ARGUMENT)
        return Handle(index)

    def nvmlDeviceGetUUID(self, h: Handle) -> str:
        self._gpu(h)
        return f"GPU-5e1a0000-0000-4000-8000-{h.index:012d}"

    def nvmlDeviceGetName(self, h: Handle) -> str:
        return str(self._gpu(h).get("name", "Simulated GPU"))

    def nvmlDeviceGetSerial(self, h: Handle) -> str:
        self._gpu(h)
        return f"SIM{h.index:08d}"

    def nvmlDeviceGetMemoryInfo(self, h: Handle, version: Any = None) -> Memory:
        g = self._gpu(h)
        total = int(g.get("mem_total", 85e9))
        used = min(int(g.get("mem_used", 0)), total)
        return Memory(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, h: Handle) -> Utilization:
        g = self._gpu(h)
        return Utilization(gpu=round(g.get("util", 0)), memory=round(g.get("mem_util", 0)))

    def nvmlDeviceGetTemperature(self, h: Handle, sensor: int) -> int:
        return round(self._gpu(h).get("temp", 40))

    def nvmlDeviceGetPowerUsage(self, h: Handle) -> int:
        return round(self._gpu(h).get("power", 100) * 1000)  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Handle) -> int:
        return round(self._gpu(h).get("power_limit", 700) * 1000)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: Handle) -> int:
        return self.nvmlDeviceGetEnforcedPowerLimit(h)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Handle) -> int:
        state = self._read()
        g = self._gpu(h, state)
        joules = float(g.get("energy_j", 0))
        at = state.get("at")
        if isinstance(at, (int, float)):
            joules += float(g.get("power", 0)) * max(0.0, self.clock() - at)
        with self._lock:
            mj = max(round(joules * 1000), self._energy_mj.get(h.index, 0))  # millijoules
            self._energy_mj[h.index] = mj
        return mj

    def nvmlDeviceGetClockInfo(self, h: Handle, clock: int) -> int:
        g = self._gpu(h)
        return round(g.get("sm_clock", 1755) if clock != 2 else g.get("mem_clock", 2619))

    def nvmlDeviceGetMaxClockInfo(self, h: Handle, clock: int) -> int:
        self._gpu(h)
        return 1980 if clock != 2 else 2619

    def nvmlDeviceGetPerformanceState(self, h: Handle) -> int:
        return 0 if self._gpu(h).get("util", 0) > 5 else 8

    # XID events: supported, and none ever happens (the watcher waits quietly)
    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceGetSupportedEventTypes(self, h: Handle) -> int:
        self._gpu(h)
        return EVENT_TYPE_XID_CRITICAL_ERROR

    def nvmlDeviceRegisterEvents(self, h: Handle, types: int, es: object) -> None:
        self._gpu(h)

    def nvmlEventSetWait(self, es: object, timeoutms: int) -> None:
        time.sleep(timeoutms / 1000)
        raise NVMLError(ERROR_TIMEOUT)

    def nvmlEventSetFree(self, es: object) -> None:
        pass


def from_env(env: dict[str, str] | os._Environ[str]) -> SimulatedNvml | None:
    """The simulated NVML when ``DCWATCH_GPU_SIMULATE`` names a state file, else None."""
    path = env.get(ENV)
    return SimulatedNvml(path) if path else None
