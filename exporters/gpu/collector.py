"""The ``gpu`` collector: NVIDIA GPUs through NVML (nvidia-ml-py's ``pynvml``).

NVML is initialised once (at the first scrape, or by the XID watcher at start) and shut down in
:meth:`GpuCollector.close`. Per GPU, the static attributes are read once
(:mod:`dcwatch.exporters.gpu.device`). What the GPU supports is probed once too, and again every
``rediscover_interval``: for each reading (:mod:`dcwatch.exporters.gpu.readings`) the first source
that works is kept, preferring one entry of a batched ``nvmlDeviceGetFieldValues`` call over a
getter of its own (:mod:`dcwatch.exporters.gpu.plan`). A scrape then costs one field-values call per
GPU plus the getters NVML has no field for; a reading the GPU does not support is left out, never
exported as 0. GPUs are read in parallel (the two PCIe throughput getters each sample for 20 ms).

A GPU that answers NVML_ERROR_GPU_IS_LOST is exported as ``dcwatch_gpu_up 0`` (its info and XID
counters stay) and re-tried every ``rediscover_interval``; the other GPUs are unaffected. No
pynvml, no libnvidia-ml or no driver: :class:`~dcwatch.exporters.base.NoDataError` (init retried
every 60 s). XID errors arrive as NVML events, watched by a daemon thread started with the collector
(:mod:`dcwatch.exporters.gpu.xid`). The metric table is :mod:`dcwatch.exporters.gpu.metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import Metric

from dcwatch import settings as st
from dcwatch.exporters.base import Collector, CollectorConfig, CollectorDeps, NoDataError
from dcwatch.exporters.gpu.device import Gpu
from dcwatch.exporters.gpu.metrics import (
    CLOCK_REASONS,
    EXTRA_CLOCK_REASONS,
    INFO,
    METRICS,
    UP,
    XID,
    XID_WATCHING,
    Sample,
)
from dcwatch.exporters.gpu.mig import read_migs
from dcwatch.exporters.gpu.plan import Memo, probe, read
from dcwatch.exporters.gpu.readings import readings
from dcwatch.exporters.gpu.xid import XidWatcher
from dcwatch.exporters.registry import register
from dcwatch.exporters.sources.kmsg import KMSG_ONLY_XIDS, KmsgReader, pci_key
from dcwatch.exporters.sources.nvml import GpuLostError, Nvml, NvmlUnavailableError, text
from dcwatch.exposition import Families

__all__ = ["CLOCK_REASONS", "EXTRA_CLOCK_REASONS", "METRICS", "GpuCollector"]

MAX_WORKERS = 8

log = logging.getLogger("dcwatch.collector.gpu")


@dataclass(frozen=True)
class GpuOptions:
    processes: bool = False
    xid_events: bool = True
    kmsg_path: str = "/dev/kmsg"


@register("gpu", default=True, order=10, description="NVIDIA GPUs through NVML, with XID events")
class GpuCollector(Collector):
    """NVIDIA GPUs through NVML: utilisation, memory, power, clocks, PCIe, NVLink, ECC, XID, MIG."""

    METRICS = METRICS
    SETTINGS = (
        st.Setting(
            "gpu.processes",
            st.to_bool,
            False,
            "export per-process GPU memory (pid, name)",
            is_bool=True,
        ),
        st.Setting(
            "gpu.xid_events",
            st.to_bool,
            True,
            "watch NVML XID events in a background thread",
            is_bool=True,
        ),
        st.Setting(
            "gpu.kmsg_path",
            st.to_str,
            "/dev/kmsg",
            "kernel log read for XIDs 79/119/120, which NVML events never report (needs "
            "CAP_SYSLOG or root, and gpu.xid_events); empty: not read",
        ),
    )
    Options = GpuOptions
    options: GpuOptions

    def __init__(self, config: CollectorConfig, deps: CollectorDeps | None = None) -> None:
        super().__init__(config, deps)
        self._clock: Callable[[], float] = time.monotonic
        self._nv = Nvml(self.deps.nvml, retry_interval=60.0, clock=lambda: self._clock())
        self._interval = float(config.rediscover_interval)
        self._procfs = Path(config.procfs) if self.options.processes else None
        self._lock = threading.RLock()  # the GPU table
        self._gpus: list[Gpu] | None = None
        self._system: tuple[str, str] = ("", "")  # driver version, CUDA version
        self._pool: ThreadPoolExecutor | None = None
        self._thread: XidWatcher | None = None
        self._kmsg: KmsgReader | None = None
        if self.options.xid_events:
            self._thread = XidWatcher(self._nv, self._ensure_ready, self._interval)
            self._thread.start()
            if self.options.kmsg_path:
                self._kmsg = KmsgReader(self.options.kmsg_path)

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
        if self._thread is not None:
            self._count_kmsg_xids(gpus)
            for (gpu, uuid, xid), n in self._thread.counts():
                f.add(XID, n, gpu, uuid, xid)
        return f

    def _count_kmsg_xids(self, gpus: list[Gpu]) -> None:
        """The kernel log's XIDs that NVML events cannot report, by the GPU's PCI address."""
        if self._kmsg is None or self._thread is None:
            return
        by_pci = {pci_key(g.info[2]): g for g in gpus if g.info is not None}
        for pci, xid in self._kmsg.poll():
            if xid not in KMSG_ONLY_XIDS:
                continue  # NVML's event counted it
            g = by_pci.get(pci)
            gpu, uuid = g.labels if g is not None else ("", "")
            self._thread.add(gpu, uuid, xid)

    def read_errors(self) -> int:
        return self._nv.errors

    def close(self) -> None:
        if self._thread is not None:
            self._thread.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._kmsg is not None:
            self._kmsg.close()
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
                if not g.open(self._nv, self._system):
                    g.mark_lost(now, self._interval, "nvmlDeviceGetHandleByIndex")
            self._gpus = gpus
            return gpus

    # ---- per scrape ----

    def _collect_gpu(self, g: Gpu, now: float) -> list[Sample] | None:
        """This GPU's samples, or None if it is lost."""
        if g.lost:
            if now < g.retry_at:
                return None
            if not g.open(self._nv, self._system):
                g.retry_at = now + self._interval
                return None
            g.lost = False
            log.warning("GPU %d (%s) answers NVML again", g.index, g.uuid)
            if self._thread is not None:
                self._thread.rewatch()
        try:
            memo: Memo = {}
            if g.plan is None or now - g.probed_at >= self._interval:
                # in MIG mode, processes are read per MIG device (the parent's need privileges)
                procfs = None if g.migs else self._procfs
                g.plan, memo = probe(
                    self._nv, g.handle, readings(g.reasons, g.links, g.fans, procfs)
                )
                g.probed_at = now
            out = read(self._nv, g.handle, g.plan, memo)
            if g.migs:
                out += read_migs(self._nv, g.handle, g.migs, self._procfs)
            return out
        except GpuLostError as e:
            g.mark_lost(now, self._interval, e.fn)
            return None
