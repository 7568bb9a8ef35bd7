"""The append-only JSON-lines alert log: one object per state change (firing, resolved).

This is where alerts go when no Alertmanager is configured, and an audit trail when one is.
A batch of lines (one per entry) is written with one ``write`` on an ``O_APPEND`` descriptor, so
concurrent writers and crashes leave whole lines; a reader skips a torn last line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dcwatch.detectors.alerting.alerts import AlertingConfig, AlertRecord, alert_payload, rfc3339


def log_entry(record: AlertRecord, now: float, config: AlertingConfig) -> dict[str, Any]:
    """The JSON object logged for a state change: the Alertmanager payload plus status and key."""
    return {
        "time": rfc3339(now),
        "status": "firing" if record.firing else "resolved",
        "key": record.key,
        **alert_payload(record, now, config),
    }


class AlertLog:
    """Appends entries to ``path`` (the directory is created on first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, entry: dict[str, Any]) -> None:
        self.write_many([entry])

    def write_many(self, entries: Iterable[dict[str, Any]]) -> None:
        """Append one line per entry, all with one ``write``."""
        data = b"".join(
            (json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n").encode() for e in entries
        )
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it all at once; a full disk raises
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def read_alert_log(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of an alert log, oldest first; a torn or foreign line is skipped."""
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry
