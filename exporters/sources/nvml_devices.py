"""The GPUs NVML sees, by index and UUID (MIG devices included), and their compute processes.

What attribution needs to turn a device id from the kubelet or a file name from a Slurm prolog
into a GPU: ``GPU-...`` and ``MIG-...`` UUIDs map to ``(index, GPU UUID)``; a MIG device maps
to its parent GPU. Enumerated once per ``ttl`` through :class:`~.nvml.Nvml` (its own
initialisation, shut down at :meth:`GpuTable.close`; NVML counts initialisations, so the ``gpu``
collector's is unaffected). Knows nothing of Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dcwatch.exporters.sources import nvml as nv
from dcwatch.exporters.sources.nvml import (
    GpuLostError,
    Nvml,
    NvmlCallError,
    NvmlInitError,
    NvmlUnavailableError,
    text,
)
from dcwatch.exporters.sources.sysfs import Rediscovered

GpuKey = tuple[str, str]  # (index, GPU UUID): the labels every GPU series has
_PROCESS_GETTERS = (
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v2",
)
_NO_MIG_DEVICE = (nv.ERROR_NOT_FOUND, nv.ERROR_INVALID_ARGUMENT)
MAX_MIG_DEVICES = 64


@dataclass(frozen=True)
class Gpus:
    """One enumeration: device UUID (GPU or MIG) → GPU, and the handles to read processes of."""

    nvml: Nvml | None = None
    devices: dict[str, GpuKey] = field(default_factory=dict)
    keys: tuple[GpuKey, ...] = ()
    # (GPU, device UUID, handle): each GPU, or each MIG device of a GPU in MIG mode, so that a
    # process is placed on the MIG device it runs on.
    process_handles: tuple[tuple[GpuKey, str, Any], ...] = ()

    def by_name(self, name: str) -> GpuKey | None:
        """The GPU a job-mapping file name means: an index or a GPU / MIG UUID."""
        if name.isdigit():
            return next((k for k in self.keys if k[0] == str(int(name))), None)
        return self.devices.get(name)

    def processes(self) -> list[tuple[GpuKey, str, int]]:
        """``(GPU, device UUID, pid)`` of every compute process, each once per device."""
        out: list[tuple[GpuKey, str, int]] = []
        if self.nvml is None:
            return out
        for key, device, h in self.process_handles:
            try:
                procs = None
                for fn in _PROCESS_GETTERS:
                    procs = self.nvml.call(fn, h)
                    if procs is not None:
                        break
            except GpuLostError:
                continue
            pids = sorted({int(p.pid) for p in procs or () if getattr(p, "pid", None) is not None})
            out.extend((key, device, pid) for pid in pids)
        return out


class GpuTable:
    """:class:`Gpus`, re-enumerated every ``ttl`` seconds; empty where NVML is not."""

    def __init__(self, module: Any, ttl: float, clock: Callable[[], float]) -> None:
        self._nv = Nvml(module, retry_interval=60.0, clock=clock)
        self._table = Rediscovered(self._enumerate, ttl, clock)

    @property
    def errors(self) -> int:
        return self._nv.errors

    def get(self) -> Gpus:
        return self._table.get()

    def close(self) -> None:
        self._nv.shutdown()

    def _enumerate(self) -> Gpus:
        try:
            self._nv.init()
        except (NvmlUnavailableError, NvmlInitError):
            return Gpus()
        c = self._nv.call
        devices: dict[str, GpuKey] = {}
        keys: list[GpuKey] = []
        handles: list[tuple[GpuKey, str, Any]] = []
        for i in range(c("nvmlDeviceGetCount") or 0):
            try:
                h = c("nvmlDeviceGetHandleByIndex", i)
                uuid = text(c("nvmlDeviceGetUUID", h)) if h is not None else ""
                if not uuid:
                    continue
                key = (str(i), uuid)
                devices[uuid] = key
                keys.append(key)
                migs = self._mig_devices(h)
                for mig, mh in migs:
                    devices[mig] = key
                    handles.append((key, mig, mh))
                if not migs:
                    handles.append((key, uuid, h))
            except GpuLostError:
                continue  # re-tried at the next enumeration
        return Gpus(self._nv, devices, tuple(keys), tuple(handles))

    def _mig_devices(self, h: Any) -> list[tuple[str, Any]]:
        """``(MIG UUID, handle)`` of each MIG device of a GPU in MIG mode."""
        c = self._nv.call
        n = c("nvmlDeviceGetMaxMigDeviceCount", h)
        out = []
        for j in range(min(n or 0, MAX_MIG_DEVICES)):
            try:
                mh = c("nvmlDeviceGetMigDeviceHandleByIndex", h, j, expect=_NO_MIG_DEVICE)
            except NvmlCallError:
                continue  # an empty MIG slot
            uuid = text(c("nvmlDeviceGetUUID", mh)) if mh is not None else ""
            if uuid:
                out.append((uuid, mh))
        return out
