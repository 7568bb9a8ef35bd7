"""One GPU as the ``gpu`` collector keeps it: handle, static attributes, plan, lost or not.

The static attributes (name, UUID, serial, PCI bus id, maximum clocks, memory size, default
power limit, PCIe maximum link, NVLink count, fan count, supported clock-event reasons) are read
when the GPU is opened, and again only if it comes back with another UUID.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from dcwatch.exporters.gpu.metrics import CLOCK_REASONS, EXTRA_CLOCK_REASONS, Labels, Sample
from dcwatch.exporters.gpu.mig import mig_count
from dcwatch.exporters.gpu.plan import Plan, read
from dcwatch.exporters.gpu.readings import STATIC
from dcwatch.exporters.sources import nvml as nv
from dcwatch.exporters.sources.nvml import ANY, GpuLostError, Nvml, NvmlCallError, text

log = logging.getLogger("dcwatch.collector.gpu")


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
    migs: int = 0  # MIG device indices to look at (MIG mode on), else 0
    plan: Plan | None = None
    probed_at: float = -float("inf")
    lost: bool = False
    retry_at: float = 0.0
    xid_watching: bool | None = None

    @property
    def labels(self) -> Labels:
        return (str(self.index), self.uuid)

    def open(self, nvml: Nvml, system: tuple[str, str]) -> bool:
        """Get the handle and read the static attributes. False if the GPU does not answer.

        ``system``: the driver and CUDA versions, for the info labels.
        """
        try:
            h = nvml.call("nvmlDeviceGetHandleByIndex", self.index)
            if h is None:
                return False
            uuid = text(nvml.call("nvmlDeviceGetUUID", h))
            if self.info is None or uuid != self.uuid:
                self._read_static(nvml, h, system)  # all or nothing: GpuLostError changes nothing
            self.handle = h
            self.uuid = uuid
            self.plan = None
            return True
        except GpuLostError:
            return False

    def mark_lost(self, now: float, retry_in: float, fn: str) -> None:
        """``fn`` answered GPU_IS_LOST: export the GPU as down and try it again later."""
        if not self.lost:
            log.warning(
                "GPU %d (%s) is lost (%s); exported as dcwatch_gpu_up 0, retried every %gs",
                self.index,
                self.uuid or "uuid unknown",
                fn,
                retry_in,
            )
        self.lost = True
        self.retry_at = now + retry_in
        self.xid_watching = False if self.xid_watching is not None else None

    def _read_static(self, nvml: Nvml, h: Any, system: tuple[str, str]) -> None:
        c = nvml.call
        pci = c("nvmlDeviceGetPciInfo", h)
        mig = c("nvmlDeviceGetMigMode", h)
        info = (
            text(c("nvmlDeviceGetName", h)),
            text(c("nvmlDeviceGetSerial", h)),
            text(getattr(pci, "busId", None)),
            text(c("nvmlDeviceGetVbiosVersion", h)),
            *system,
            "" if not mig else ("enabled" if mig[0] == nv.DEVICE_MIG_ENABLE else "disabled"),
        )
        static = read(nvml, h, Plan.first_getters(STATIC), {})
        supported = c("nvmlDeviceGetSupportedClocksEventReasons", h)
        if supported is None:
            supported = c("nvmlDeviceGetSupportedClocksThrottleReasons", h)
        reasons = CLOCK_REASONS
        if supported is not None:
            reasons = tuple(
                (bit, name)
                for bit, name in (*CLOCK_REASONS, *EXTRA_CLOCK_REASONS)
                if supported & bit
            )
        fans = c("nvmlDeviceGetNumFans", h)
        links = _count_links(nvml, h)
        migs = mig_count(nvml, h, mig)
        self.info, self.static, self.reasons, self.links = info, static, reasons, links
        self.migs = migs
        self.fans = fans if isinstance(fans, int) and fans > 0 else -1


def _count_links(nvml: Nvml, h: Any) -> int:
    fv = nvml.field_values(h, [(nv.FI_DEV_NVLINK_LINK_COUNT, 0)])
    if fv and fv[0].code == nv.SUCCESS and isinstance(fv[0].value, int):
        return max(0, min(fv[0].value, nv.NVLINK_MAX_LINKS))
    n = 0  # older driver: count the links nvmlDeviceGetNvLinkState answers for
    while n < nv.NVLINK_MAX_LINKS:
        try:
            nvml.call("nvmlDeviceGetNvLinkState", h, n, expect=ANY)
        except NvmlCallError:
            break
        n += 1
    return n
