"""MIG devices of a GPU in MIG mode: identity, memory and processes per instance.

A MIG device is a compute instance of a GPU instance, with a handle of its own
(``nvmlDeviceGetMigDeviceHandleByIndex``). NVML answers few getters on such a handle: its
UUID, name (the parent's name + ``" MIG "`` + the profile, e.g. ``1g.10gb``), instance ids,
memory and processes. Everything else (utilisation, clocks, power, ...) exists for the whole
GPU only and is not made up per instance. MIG devices come and go without a reset, so they are
listed at every scrape (a few cheap calls each; at most ``nvmlDeviceGetMaxMigDeviceCount``).
"""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import Any

from dcwatch.exporters.gpu.metrics import (
    MIG_INFO,
    MIG_MEM_TOTAL,
    MIG_MEM_USED,
    MIG_PROC_MEM,
    Sample,
)
from dcwatch.exporters.gpu.plan import NOT_AVAILABLE
from dcwatch.exporters.gpu.readings import process_memory
from dcwatch.exporters.sources import nvml as nv
from dcwatch.exporters.sources.nvml import Nvml, NvmlCallError, text

_MEM = "nvmlDeviceGetMemoryInfo"
# an index with no MIG device behind it (instances need not be contiguous)
_NO_DEVICE = (nv.ERROR_NOT_FOUND, nv.ERROR_INVALID_ARGUMENT)
_PROCS = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2")


def mig_count(nvml: Nvml, handle: Any, mig_mode: Any) -> int:
    """How many MIG device indices to look at: 0 unless MIG mode is on."""
    if not mig_mode or mig_mode[0] != nv.DEVICE_MIG_ENABLE:
        return 0
    n = nvml.call("nvmlDeviceGetMaxMigDeviceCount", handle)
    return n if isinstance(n, int) and 0 < n < 64 else 0


def profile_of(name: str) -> str:
    """``NVIDIA H100 80GB HBM3 MIG 1g.10gb`` -> ``1g.10gb`` (empty if the name has no MIG part)."""
    head, sep, profile = name.rpartition(" MIG ")
    return profile.strip() if sep and head else ""


def read_migs(nvml: Nvml, parent: Any, count: int, procfs: Path | None) -> list[Sample]:
    """Samples of every MIG device of ``parent``. Raises GpuLostError."""
    out: list[Sample] = []
    for i in range(count):
        try:
            h = nvml.call("nvmlDeviceGetMigDeviceHandleByIndex", parent, i, expect=_NO_DEVICE)
        except NvmlCallError:
            continue
        if h is None:
            continue
        gi = nvml.call("nvmlDeviceGetGpuInstanceId", h)
        ci = nvml.call("nvmlDeviceGetComputeInstanceId", h)
        if not isinstance(gi, int) or not isinstance(ci, int):
            continue
        ids = (str(gi), str(ci))
        name = text(nvml.call("nvmlDeviceGetName", h))
        uuid = text(nvml.call("nvmlDeviceGetUUID", h))
        out.append((MIG_INFO, 1, (*ids, profile_of(name), uuid)))
        mem = nvml.call(_MEM, h, nv.MEMORY_V2) or nvml.call(_MEM, h)
        if mem is not None:
            for spec, get in (
                (MIG_MEM_USED, attrgetter("used")),
                (MIG_MEM_TOTAL, attrgetter("total")),
            ):
                v = int(get(mem))
                if v not in NOT_AVAILABLE:
                    out.append((spec, float(v), ids))
        if procfs is not None:
            procs = next((p for fn in _PROCS if (p := nvml.call(fn, h)) is not None), None)
            if procs is not None:
                out.extend(
                    (MIG_PROC_MEM, used, (*ids, *labels))
                    for labels, used in process_memory(procfs)(procs)
                )
    return out
