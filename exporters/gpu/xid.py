"""The ``gpu`` collector's XID watcher: a daemon thread counting XID critical-error events.

NVML delivers XIDs as events on an event set. The watcher registers every GPU that answers and
keeps that one set for as long as it works, because events that arrive while no set exists are
lost:

* a failed wait (other than a timeout) is retried on the same set, whose queued events stay;
  only after :data:`MAX_WAIT_ERRORS` failures in a row is the set re-created (backing off up to
  :data:`MAX_BACKOFF` if creating it fails too);
* a wait answering GPU_IS_LOST means a registered GPU is gone and the set would keep saying so:
  the watcher finds which GPU, drains the set, and registers the others on a new set at once,
  so the healthy GPUs stay watched (``dcwatch_gpu_xid_watching`` is 0 only for the lost one);
* a GPU that answers again (:meth:`XidWatcher.rewatch`), or one not registered yet, is added to
  the running set; GPUs not watched are retried every ``interval``.

NVML never reports XIDs 79, 119 or 120 as events; :mod:`dcwatch.exporters.sources.kmsg` reads
those from the kernel log and counts them here through :meth:`XidWatcher.add`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from dcwatch.exporters.gpu.device import Gpu
from dcwatch.exporters.sources import nvml as nv
from dcwatch.exporters.sources.nvml import ANY, GpuLostError, Nvml, NvmlCallError, handle_key, text

XID_WAIT_MS = 500
MAX_WAIT_ERRORS = 5
MAX_BACKOFF = 30.0

log = logging.getLogger("dcwatch.collector.gpu")

XidKey = tuple[str, str, str]  # gpu, uuid, xid


class XidWatcher(threading.Thread):
    """Counts XID events per (gpu, uuid, xid). ``gpus`` initialises NVML and lists the GPUs."""

    def __init__(self, nvml: Nvml, gpus: Callable[[], list[Gpu]], interval: float) -> None:
        super().__init__(name="dcwatch-gpu-xid", daemon=True)
        self._nv = nvml
        self._gpus = gpus
        self._interval = interval  # how often GPUs not watched are tried again
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._counts: Counter[XidKey] = Counter()
        self._counts_lock = threading.Lock()
        self._logged: set[tuple[str, int]] = set()
        self.sets_created = 0

    def counts(self) -> list[tuple[XidKey, int]]:
        """The counts so far, by GPU index, then XID."""
        with self._counts_lock:
            return sorted(self._counts.items(), key=lambda kv: _xid_order(kv[0]))

    def add(self, gpu: str, uuid: str, xid: int, n: int = 1) -> None:
        """Count ``n`` occurrences of ``xid`` on a GPU (from an event or the kernel log)."""
        with self._counts_lock:
            self._counts[(gpu, uuid, str(xid))] += n
            first = (gpu, xid) not in self._logged
            self._logged.add((gpu, xid))
        log.log(logging.WARNING if first else logging.DEBUG, "GPU %s (%s): XID %d", gpu, uuid, xid)

    def rewatch(self) -> None:
        """A GPU answers again: register it."""
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
            es = self._nv.call("nvmlEventSetCreate")
            if es is None:
                _unwatch(gpus)
                log.warning("XID watcher: no event set; retried in %gs", backoff)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self.sets_created += 1
            keys: dict[Any, Gpu] = {}
            try:
                rebuild = self._serve(es, gpus, keys)
            finally:
                self._nv.call("nvmlEventSetFree", es)
                _unwatch(keys.values())
            if rebuild:
                backoff = 1.0
            elif not self._closing.is_set():
                log.warning("XID watcher: event set re-created in %gs", backoff)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _serve(self, es: Any, gpus: list[Gpu], keys: dict[Any, Gpu]) -> bool:
        """Wait on ``es`` until stop() (False), a lost GPU (True: rebuild now) or errors (False)."""
        self._register(es, gpus, keys)
        scanned = time.monotonic()
        errors = 0
        while not self._closing.is_set():
            if self._wake.is_set() or time.monotonic() - scanned >= self._interval:
                self._wake.clear()
                self._register(es, self._gpus(), keys)
                scanned = time.monotonic()
            if not keys:  # nothing to watch: wait for a recovery or the next scan
                self._wake.wait(self._interval)
                continue
            try:
                data = self._nv.call("nvmlEventSetWait", es, XID_WAIT_MS, expect=ANY)
            except NvmlCallError as e:
                if e.code == nv.ERROR_TIMEOUT:
                    errors = 0
                    continue
                errors += 1
                if errors >= MAX_WAIT_ERRORS:
                    log.warning("XID watcher: %s, %d times in a row", e, errors)
                    return False
                log.info("XID watcher: %s; waiting on the same event set again", e)
                self._closing.wait(0.05 * 2**errors)
                continue
            except GpuLostError:
                return self._drop_lost(es, keys)
            if data is None:
                return False
            errors = 0
            self._on_event(data, keys)
        return False

    def _drop_lost(self, es: Any, keys: dict[Any, Gpu]) -> bool:
        """Forget the registered GPUs that are lost; drain ``es``. True if one was found."""
        dropped = []
        for k, g in list(keys.items()):
            try:
                self._nv.call("nvmlDeviceGetUUID", g.handle)
            except GpuLostError:
                dropped.append(g)
                del keys[k]
                g.xid_watching = False
        while True:  # what the set holds for the other GPUs
            try:
                data = self._nv.call("nvmlEventSetWait", es, 0, expect=ANY)
            except (NvmlCallError, GpuLostError):
                break
            if data is None:
                break
            self._on_event(data, keys)
        for g in dropped:
            log.warning("XID watcher: GPU %d is lost; the other GPUs are watched anew", g.index)
        return bool(dropped)

    def _register(self, es: Any, gpus: list[Gpu], keys: dict[Any, Gpu]) -> None:
        """Register the GPUs not registered on ``es`` yet (a recovered GPU has a new handle)."""
        for k in [k for k, g in keys.items() if g.handle is None or handle_key(g.handle) != k]:
            del keys[k]
        watched = set(map(id, keys.values()))
        for g in gpus:
            if id(g) in watched:
                continue
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
        self.add(gpu, uuid, xid)


def _unwatch(gpus: Any) -> None:
    for g in gpus:
        if g.xid_watching:
            g.xid_watching = False


def _xid_order(key: XidKey) -> tuple[int, int]:
    gpu, _, xid = key
    return (int(gpu) if gpu.isdigit() else -1, int(xid) if xid.isdigit() else -1)
