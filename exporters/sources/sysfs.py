"""Cheap, fault-tolerant reads of sysfs/procfs attribute files.

sysfs regenerates an attribute's text on every read at offset 0, so a descriptor kept open and
re-read with ``os.pread`` returns fresh values for about a tenth of the cost of open+read+close
from Python. A file that fails (EIO from a flaky sensor, ENODEV after hot-unplug) is reported as
``None`` (absent), counted, logged once, and re-opened on the next read.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from dcwatch.exporters.sources.limits import INT64_MIN, UINT64_MAX

log = logging.getLogger("dcwatch.sysfs")
T = TypeVar("T")
_CHUNK = 65536


class FileCache:
    """Keeps attribute files open and reads them with ``pread``.

    Not thread-safe on its own; each collector owns one and a collector never runs twice at
    once (the runner coalesces concurrent scrapes).
    """

    def __init__(self, max_open: int = 4096) -> None:
        self._fds: dict[str, int] = {}
        self._max_open = max_open
        self._logged: set[str] = set()
        self.errors = 0

    def read(self, path: str | os.PathLike[str]) -> str | None:
        """The file's text, or ``None`` if it is missing or unreadable."""
        p = os.fspath(path)
        fd = self._fds.get(p)
        if fd is not None:
            try:
                return _pread_all(fd)
            except OSError:
                # A kept descriptor goes stale when its device is removed and re-created
                # (ENODEV): drop it and fall through to one fresh open before calling it failed.
                self._forget(p)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self._failed(p, e)
            return None
        try:
            text = _pread_all(fd)
        except OSError as e:
            os.close(fd)
            self._failed(p, e)
            return None
        if len(self._fds) < self._max_open:
            self._fds[p] = fd
        else:  # keep working when a tree is huge; just do not cache
            os.close(fd)
        return text

    def _failed(self, p: str, e: OSError) -> None:
        """Count and log (once per file) a failed read; a missing file is not a failure."""
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        self.errors += 1
        if p not in self._logged:
            self._logged.add(p)
            log.warning(
                "read failed: %s: %s; reported as absent, retried next scrape", p, e.strerror or e
            )

    def read_str(self, path: str | os.PathLike[str]) -> str | None:
        text = self.read(path)
        return None if text is None else text.strip()

    def read_int(
        self, path: str | os.PathLike[str], valid: Callable[[int], bool] | None = None
    ) -> int | None:
        """The file's integer; ``None`` if absent, and a counted read error if it is not an
        integer (:func:`parse_int`) or ``valid`` says it cannot be physical."""
        text = self.read(path)
        if text is None:
            return None
        value = parse_int(text)
        if value is None:
            self.reject(path, text, "unparsable value")
        elif valid is not None and not valid(value):
            self.reject(path, text, "impossible value")
            return None
        return value

    def read_float(self, path: str | os.PathLike[str]) -> float | None:
        """The file's finite number; ``None`` if absent, a counted read error if not one."""
        text = self.read(path)
        if text is None:
            return None
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.reject(path, text, "unparsable value")
            return None
        return value

    def reject(self, path: str | os.PathLike[str], text: str, why: str) -> None:
        """Count a read that returned something unusable as a read error; log once per file."""
        self.errors += 1
        p = os.fspath(path)
        if p not in self._logged:
            self._logged.add(p)
            log.warning("%s in %s: %r; reported as absent", why, p, text[:40])

    def _forget(self, p: str) -> None:
        fd = self._fds.pop(p, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for p in list(self._fds):
            self._forget(p)


def parse_int(text: str) -> int | None:
    """A kernel-printed integer: optional sign, ASCII digits, at most 64 bits; else ``None``.

    Stricter than ``int()``, which also takes ``1_000`` and non-ASCII digits that no kernel
    prints, and numbers of any size.
    """
    s = text.strip()
    digits = s[1:] if s[:1] in ("+", "-") else s
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        return None
    value = int(s)
    return value if INT64_MIN <= value <= UINT64_MAX else None


def _pread_all(fd: int) -> str:
    data = os.pread(fd, _CHUNK, 0)
    if len(data) == _CHUNK:  # large procfs files (many interfaces): keep reading
        parts = [data]
        off = _CHUNK
        while chunk := os.pread(fd, _CHUNK, off):
            parts.append(chunk)
            off += len(chunk)
        data = b"".join(parts)
    return data.decode("utf-8", "replace")


def list_dir(path: Path) -> list[str]:
    """Sorted entry names, or an empty list if the directory does not exist."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


class Rediscovered(Generic[T]):
    """A value (a device layout found by scanning sysfs) recomputed at most every ``ttl`` s."""

    def __init__(
        self, compute: Callable[[], T], ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self._ttl = ttl
        self._clock = clock
        self._value: T | None = None
        self._at = -float("inf")
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._at >= self._ttl:
                self._value = self._compute()
                self._at = now
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
