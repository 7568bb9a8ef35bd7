"""Helpers shared by tests: free ports, finding real binaries, waiting for HTTP, parsing."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

SBIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(*names: str) -> str | None:
    """The first of ``names`` on PATH or in the usual Debian locations."""
    for n in names:
        p = shutil.which(n)
        if p:
            return p
        for d in SBIN_DIRS:
            if (Path(d) / n).exists():
                return str(Path(d) / n)
    return None


def wait_until(
    pred: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> object:
    """Poll ``pred`` until it returns a truthy value; raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc}")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse exposition text into {(name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    """Value of the one sample ``name{labels}`` (labels may be a subset), or None."""
    hits = [
        v
        for (n, ls), v in samples(text).items()
        if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
    ]
    if len(hits) > 1:
        raise AssertionError(f"{name}{labels} matches {len(hits)} samples")
    return hits[0] if hits else None
