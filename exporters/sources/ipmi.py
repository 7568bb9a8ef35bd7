"""System power from the BMC via ``ipmitool dcmi power reading`` (DCMI Get Power Reading).

BMCs answer in 0.1-2 s and some hang, so the command runs with a timeout and its result (or
its failure) is cached for ``interval`` seconds. Output of ipmitool 1.8.18 and 1.8.19+::

        Instantaneous power reading:                   312 Watts
    Instantaneous power reading              : 214      Watts
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dcwatch.exporters.sources.limits import DCMI_MAX_PERIOD_S, DCMI_MAX_WATTS

log = logging.getLogger("dcwatch.ipmi")

RunCommand = Callable[[Sequence[str], float], str]
DCMI_POWER_READING = ("dcmi", "power", "reading")

_FIELDS = {
    "instantaneous power reading": "instantaneous",
    "minimum during sampling period": "minimum",
    "maximum during sampling period": "maximum",
    "average power reading over sample period": "average",
}
_LINE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z /]*?)\s*:\s*(.*?)\s*$", re.ASCII)
_WATTS_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*Watts?\b", re.IGNORECASE | re.ASCII)
_PERIOD_RE = re.compile(
    r"^(\d+(?:\.\d+)?)\s*(milliseconds|ms|seconds|s)\b", re.IGNORECASE | re.ASCII
)


class IpmiError(Exception):
    """The BMC gave no usable power reading."""


@dataclass(frozen=True)
class DcmiPowerReading:
    instantaneous: float  # watts
    minimum: float | None = None  # watts, over the sampling period
    maximum: float | None = None
    average: float | None = None
    sampling_period: float | None = None  # seconds


def parse_dcmi_power_reading(text: str) -> DcmiPowerReading:
    """Parse ipmitool's output; raise :class:`IpmiError` when it holds no valid reading.

    A "deactivated" reading state means the BMC is not measuring, and an instantaneous 0 W
    is what BMCs without a power sensor return: neither is a measurement. Values DCMI cannot
    carry (above 65535 W, periods above 2**32 ms) are dropped as misreads.
    """
    watts: dict[str, float] = {}
    impossible: dict[str, str] = {}
    period: float | None = None
    state = ""
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        key, rest = m[1].lower(), m[2]
        if key in _FIELDS:
            w = _WATTS_RE.match(rest)
            if w and float(w[1]) <= DCMI_MAX_WATTS:
                watts[_FIELDS[key]] = float(w[1])
            elif w:
                impossible[_FIELDS[key]] = w[1]
        elif key == "sampling period":
            p = _PERIOD_RE.match(rest)
            if p:
                seconds = float(p[1]) / (1000.0 if p[2].lower().startswith("m") else 1.0)
                period = seconds if seconds <= DCMI_MAX_PERIOD_S else None
        elif key == "power reading state is":
            state = rest.lower()
    if "instantaneous" in impossible:
        raise IpmiError(
            f"impossible instantaneous power {impossible['instantaneous'][:20]} W "
            f"(DCMI carries at most {DCMI_MAX_WATTS:g} W)"
        )
    if "instantaneous" not in watts:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "empty output")
        raise IpmiError(f"no power reading in ipmitool output: {first[:120]}")
    if state.startswith("deactivated"):
        raise IpmiError("BMC power reading state is deactivated (the BMC is not measuring)")
    if watts["instantaneous"] <= 0:
        raise IpmiError("BMC reports 0 W (no power sensor behind DCMI)")
    return DcmiPowerReading(
        watts["instantaneous"],
        watts.get("minimum"),
        watts.get("maximum"),
        watts.get("average"),
        period,
    )


def run_command(argv: Sequence[str], timeout: float) -> str:
    """Stdout of ``argv``; raises on a timeout, a missing binary or a non-zero exit."""
    p = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        raise IpmiError(f"exit status {p.returncode}: {lines[0] if lines else 'no output'}")
    return p.stdout


class DcmiPowerReader:
    """Runs the command at most once per ``interval`` seconds; failures are cached too, so a
    dead BMC costs one timeout per interval, not one per scrape."""

    def __init__(
        self,
        argv: Sequence[str],
        timeout: float,
        interval: float,
        run: RunCommand | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.interval = interval
        self.clock = clock
        self.errors = 0
        self._run = run or run_command
        self._reading: DcmiPowerReading | None = None
        self._at: float | None = None
        self._logged: set[str] = set()

    def read(self) -> DcmiPowerReading | None:
        """The cached reading, refreshed when older than ``interval``; None when unavailable."""
        now = self.clock()
        if self._at is not None and now - self._at < self.interval:
            return self._reading
        self._at = now
        try:
            self._reading = parse_dcmi_power_reading(self._run(self.argv, self.timeout))
            self._logged.clear()  # a later failure is news again
        except Exception as e:  # anything the runner raises means "no reading this interval"
            self._reading = None
            self.errors += 1
            self._log_once(_describe(e, self.argv[0], self.timeout))
        return self._reading

    def _log_once(self, why: str) -> None:
        if why not in self._logged:
            self._logged.add(why)
            log.warning(
                "IPMI power reading failed: %s; system power omitted, next try in %gs",
                why,
                self.interval,
            )


def _describe(e: Exception, binary: str, timeout: float) -> str:
    if isinstance(e, subprocess.TimeoutExpired):
        return f"no answer from the BMC within {timeout:g}s"
    if isinstance(e, FileNotFoundError):
        return f"{binary} not found (install ipmitool or set power.ipmitool)"
    if isinstance(e, PermissionError):
        return f"permission denied running {binary}"
    return str(e) or type(e).__name__
