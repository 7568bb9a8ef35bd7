"""Where each alert state change is recorded besides the queue: the history, the alert log, the log.

:class:`~dcwatch.detectors.alerting.sender.AlertSender` hands each batch of state changes to its
:class:`AlertJournal`: written on the store thread to the alert history (SQLite, kept 30 days) and
the JSON-lines alert log (if configured; the ``log`` destination of the delivery metrics), then
announced on the event loop in the process log, at most ``LOG_LINES_MAX`` lines and a summary. A
file that cannot be written is logged and counted; alerting goes on without it.
"""

from __future__ import annotations

import logging

from dcwatch.detectors.alerting.alertmanager import DeliveryStats
from dcwatch.detectors.alerting.alerts import AlertingConfig, AlertRecord
from dcwatch.detectors.alerting.delivery import LOG_TARGET
from dcwatch.detectors.alerting.history import AlertHistory
from dcwatch.detectors.alerting.log import AlertLog, log_entry

log = logging.getLogger("dcwatch.alerts")

LOG_LINES_MAX = 20  # state changes logged one per line in a batch; the rest in one summary line


class AlertJournal:
    """The alert history, the JSON-lines alert log (``alert_log``, None if not configured) and
    the alert log's delivery counters (``log_stats``)."""

    def __init__(self, config: AlertingConfig) -> None:
        self.config = config
        self.history = AlertHistory(config.state_dir)  # fired/resolved, kept 30 days
        path = config.alert_log_path
        self.alert_log = AlertLog(path) if path else None
        self.log_stats = DeliveryStats(LOG_TARGET)

    def write(
        self, changes: list[AlertRecord], now: float
    ) -> tuple[Exception | None, OSError | None]:
        """Blocking (the store thread): the history, then the alert log; returns their failures
        for :meth:`written` (alerting goes on without them)."""
        if not changes:
            return None, None
        history_error = log_error = None
        try:
            self.history.record_many(changes, now)
        except Exception as e:
            history_error = e
        if self.alert_log is not None:
            try:
                self.alert_log.write_many(log_entry(r, now, self.config) for r in changes)
            except OSError as e:
                log_error = e
        return history_error, log_error

    def written(
        self,
        changes: list[AlertRecord],
        now: float,
        history_error: Exception | None,
        log_error: OSError | None,
        *,
        delivering: bool,
    ) -> None:
        """After :meth:`write`, on the event loop: count and log its failures; announce the
        changes (as warnings when no Alertmanager is ``delivering`` them)."""
        if history_error is not None:
            log.error("alert history %s: cannot write (%s)", self.history.path, history_error)
        if self.alert_log is not None:
            if log_error is None:
                self.log_stats.sent += len(changes)
                self.log_stats.last_success, self.log_stats.up = now, True
            else:
                self.log_stats.dropped += len(changes)
                self.log_stats.up = False
                log.error(
                    "alert log %s: cannot write (%s): %d entries lost",
                    self.alert_log.path,
                    log_error,
                    len(changes),
                )
        self._announce(changes, logging.INFO if delivering else logging.WARNING)

    def _announce(self, changes: list[AlertRecord], level: int) -> None:
        """A line per state change, the first ``LOG_LINES_MAX`` of a batch; then one summary."""
        for rec in changes[:LOG_LINES_MAX]:
            state = "firing" if rec.firing else "resolved"
            labels = " ".join(f"{k}={v}" for k, v in rec.alert.labels.items())
            summary = rec.alert.annotations.get("summary", "")
            log.log(level, "alert %s: %s: %s", state, labels, summary)
        more = changes[LOG_LINES_MAX:]
        if more:
            firing = sum(r.firing for r in more)
            kept = f"the alert log {self.alert_log.path} and " if self.alert_log else ""
            log.log(
                level,
                "... and %d more alert state changes (%d firing, %d resolved); see %s"
                "the alert history %s",
                len(more),
                firing,
                len(more) - firing,
                kept,
                self.history.path,
            )

    def close(self) -> None:
        self.history.close()
