"""XIDs from the kernel log (``/dev/kmsg``): the ones NVML events never report (79, 119, 120).

The NVIDIA driver logs every XID as ``NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen
off the bus.``. :class:`KmsgReader` opens the log non-blocking, skips what was logged before it
opened (re-counting old XIDs after a restart would look like new ones), and hands back the XID
lines logged since the last :meth:`KmsgReader.poll`. Reading ``/dev/kmsg`` needs CAP_SYSLOG
where ``kernel.dmesg_restrict`` is 1 (the default on most distributions), or root.

This module knows nothing of NVML or Prometheus.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from typing import Final

log = logging.getLogger("dcwatch.kmsg")

# XIDs NVML's event API cannot deliver (the GPU or its GSP is gone before the event would be)
KMSG_ONLY_XIDS: Final = frozenset({79, 119, 120})
_HEX = "[0-9a-fA-F]"
_XID = re.compile(
    rf"NVRM: Xid \(PCI:(?:({_HEX}{{4,8}}):)?({_HEX}{{2}}):({_HEX}{{2}})(?:\.[0-7])?\): (\d+)"
)
MAX_RECORDS = 4096  # per poll: a flood of kernel messages cannot stall a scrape

PciKey = tuple[int, int, int]  # domain, bus, device


def pci_key(bus_id: str) -> PciKey | None:
    """``00000000:3B:00.0`` (NVML) or ``0000:3b:00`` (the log) -> (domain, bus, device)."""
    parts = bus_id.strip().split(".")[0].split(":")
    if len(parts) == 2:
        parts = ["0", *parts]
    if len(parts) != 3:
        return None
    try:
        return (int(parts[0], 16), int(parts[1], 16), int(parts[2], 16))
    except ValueError:
        return None


def parse_xid(record: str) -> tuple[PciKey, int] | None:
    """The GPU's PCI address and the XID of one kernel log record, if it is an XID line."""
    m = _XID.search(record)
    if m is None:
        return None
    domain, bus, dev, xid = m.groups()
    return (int(domain or "0", 16), int(bus, 16), int(dev, 16)), int(xid)


class KmsgReader:
    """New XID records from ``path`` (``/dev/kmsg``, or a plain file in tests), non-blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._failed = False
        self._partial = b""

    def open(self) -> bool:
        """Open and skip to the end. False (logged once) if it cannot be read."""
        if self._fd is not None:
            return True
        if self._failed:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            self._failed = True
            log.info(
                "%s not readable (%s): XIDs %s are not counted; it needs CAP_SYSLOG or root",
                self.path,
                e.strerror or e,
                "/".join(map(str, sorted(KMSG_ONLY_XIDS))),
            )
            return False
        self._fd = fd
        return True

    def poll(self) -> list[tuple[PciKey, int]]:
        """The XIDs logged since the last poll."""
        if not self.open() or self._fd is None:
            return []
        out: list[tuple[PciKey, int]] = []
        for _ in range(MAX_RECORDS):
            try:
                chunk = os.read(self._fd, 8192)  # /dev/kmsg: one record per read
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them
                    log.debug("%s: records lost to the ring buffer", self.path)
                    continue
                log.warning("%s: %s; not read any more", self.path, e)
                self.close()
                self._failed = True
                break
            if not chunk:  # a plain file at its end
                break
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                hit = parse_xid(line.decode("utf-8", "replace"))
                if hit is not None:
                    out.append(hit)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
