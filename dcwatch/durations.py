"""The one duration grammar of dcwatch: config values, flags, variables and PromQL windows.

Accepted: a plain number of seconds (``90``, ``1.5``, or an int/float from YAML), a number with
one unit (``90s``, ``1.5h``, ``500ms``, ``7d``) or Prometheus-style compounds (``1h30m``,
``1d12h``, ``2m30s``) whose units run from largest to smallest, each at most once. Units are
``ms s m h d w y`` (``y`` is 365 days, as in PromQL). Only the last part of a compound may have
a fraction (``1m30.5s``). Everything else, including negative and non-finite values, is a
:class:`ValueError`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

# Largest first: the order a compound's units must follow. Decimal keeps 500ms exactly 0.5.
UNITS: dict[str, Decimal] = {
    "y": Decimal(365 * 86400),
    "w": Decimal(7 * 86400),
    "d": Decimal(86400),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_RANK = {u: i for i, u in enumerate(UNITS)}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# "ms" before "m" and "s", so 500ms is one part and not 500m followed by a stray s.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")
_HINT = "a duration such as 90, 90s, 1.5h, 1h30m or 500ms (units ms s m h d w y)"


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (a number of seconds or a duration string); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_HINT}, got a boolean")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("duration too large to count in seconds") from None
    elif isinstance(value, str):
        seconds = _parse_text(value.strip(), value)
    else:
        raise ValueError(f"expected {_HINT}, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    if seconds < 0:
        raise ValueError(f"expected a duration >= 0, got {value!r}")
    return seconds


def _parse_text(text: str, original: str) -> float:
    if _NUMBER.fullmatch(text):
        return float(text)
    total = Decimal(0)
    pos, last_rank, fraction_seen = 0, -1, False
    while True:
        m = _PART.match(text, pos)
        if m is None or _RANK[m[2]] <= last_rank or fraction_seen:
            raise ValueError(f"expected {_HINT}, got {original!r}")
        total += Decimal(m[1]) * UNITS[m[2]]
        last_rank, fraction_seen, pos = _RANK[m[2]], "." in m[1], m.end()
        if pos == len(text):
            return float(total)


# Units format_duration writes, largest first: years are left out (365d is not a calendar year).
_FORMAT_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60))


def format_duration(seconds: float) -> str:
    """The shortest exact form a user would type: ``5s``, ``1m30s``, ``1d``, ``500ms``, ``1.5s``."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    # repr is the shortest decimal that reads back as the same float: no binary noise in output.
    exact = Decimal(repr(float(seconds)))
    if exact == 0:
        return "0s"
    if exact < 1 and (exact * 1000) == (exact * 1000).to_integral_value():
        return f"{int(exact * 1000)}ms"
    whole = int(exact)
    rest = exact - whole
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS:
        n, whole = divmod(whole, size)
        if n:
            parts.append(f"{n}{unit}")
    secs = whole + rest
    if secs:
        parts.append(f"{_plain(secs)}s")
    return "".join(parts)


def _plain(d: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: ``Decimal('1.50')`` -> ``1.5``."""
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
