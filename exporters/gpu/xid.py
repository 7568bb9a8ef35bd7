"""The ``gpu`` collector's XID watcher: a daemon thread counting XID critical-error events.

NVML delivers XIDs as events on an event set. The watcher registers every GPU that answers,
waits for events until :meth:`XidWatcher.stop`, and re-creates the event set after an error
(backing off up to 60 s) or when a lost GPU comes back (:meth:`XidWatcher.rewatch`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from dcwatch.exporters.gpu.device import Gpu
from dcwatch.exporters.sources import nvml as nv
from dcwatch.exporters.sources.nvml import ANY, GpuLostError, Nvml, NvmlCallError, handle_key, text

XID_WAIT_MS = 500
MAX_BACKOFF = 60.0

log = logging.getLogger("dcwatch.collector.gpu")

XidKey = tuple[str, str, str]  # gpu, uuid, xid


class XidWatcher(threading.Thread):
    """Counts XID events per (gpu, uuid, xid). ``gpus`` initialises NVML and lists the GPUs."""

    def __init__(self, nvml: Nvml, gpus: Callable[[], list[Gpu]], interval: float) -> None:
        super().__init__(name="dcwatch-gpu-xid", daemon=True)
        self._nv = nvml
        self._gpus = gpus
        self._interval = interval  # how long an idle watcher waits before looking again
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._counts: Counter[XidKey] = Counter()
        self._counts_lock = threading.Lock()
        self._logged: set[tuple[str, int]] = set()

    def counts(self) -> list[tuple[XidKey, int]]:
        """The counts so far, by GPU index, then XID."""
        with self._counts_lock:
            return sorted(self._counts.items(), key=lambda kv: _xid_order(kv[0]))

    def rewatch(self) -> None:
        """A GPU answers again: register the GPUs anew."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (the event set is freed on the way out)."""
        self._closing.set()
        self._wake.set()  # wakes an idle watcher
        self.join(timeout=timeout)
        if self.is_alive():
            log.warning("XID watcher did not stop within %gs", timeout)

    def run(self) -> None:
        """Register XID events on every GPU and count them until stop()."""
        backoff = 1.0
        while not self._closing.is_set():
            try:
                gpus = self._gpus()
            except Exception as e:  # no NVML yet: try again later
                log.debug("XID watcher: %s", e)
                self._closing.wait(self._nv.retry_interval)
                continue
            ok = False
            es = self._nv.call("nvmlEventSetCreate")
            if es is not None:
                try:
                    keys = self._register(es, gpus)
                    ok = self._pump(es, keys) if keys else self._idle()
                finally:
                    self._nv.call("nvmlEventSetFree", es)
            if ok:
                backoff = 1.0
            else:
                self._closing.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _idle(self) -> bool:
        """No GPU to watch: wait for a recovery or the next rediscovery."""
        self._wake.wait(self._interval)
        self._wake.clear()
        return True

    def _register(self, es: Any, gpus: list[Gpu]) -> dict[Any, Gpu]:
        keys: dict[Any, Gpu] = {}
        self._wake.clear()
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
                    "nvmlDeviceRegisterEvents",
                    g.handle,
                    nv.EVENT_TYPE_XID_CRITICAL_ERROR,
                    es,
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
        """Wait for events until stop() (True), a GPU recovers (True) or an error (False)."""
        while not self._closing.is_set():
            if self._wake.is_set():
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
        with self._counts_lock:
            self._counts[(gpu, uuid, str(xid))] += 1
            first = (gpu, xid) not in self._logged
            self._logged.add((gpu, xid))
        log.log(logging.WARNING if first else logging.DEBUG, "GPU %s (%s): XID %d", gpu, uuid, xid)


def _xid_order(key: XidKey) -> tuple[int, int]:
    gpu, _, xid = key
    return (int(gpu) if gpu.isdigit() else -1, int(xid) if xid.isdigit() else -1)
