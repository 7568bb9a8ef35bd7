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

_NS_PER_S = 10**9
# Largest first: the order a compound's units must follow. Integer nanoseconds keep 500ms and
# 1.5h exact without the decimal module (whose import would cost the agent 0.4 MiB of RSS).
UNITS: dict[str, int] = {
    "y": 365 * 86400 * _NS_PER_S,
    "w": 7 * 86400 * _NS_PER_S,
    "d": 86400 * _NS_PER_S,
    "h": 3600 * _NS_PER_S,
    "m": 60 * _NS_PER_S,
    "s": _NS_PER_S,
    "ms": _NS_PER_S // 1000,
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
    total, den = 0, _NS_PER_S  # seconds = total / den, exactly
    pos, last_rank, fraction_seen = 0, -1, False
    while True:
        m = _PART.match(text, pos)
        if m is None or _RANK[m[2]] <= last_rank or fraction_seen:
            raise ValueError(f"expected {_HINT}, got {original!r}")
        whole, _, frac = m[1].partition(".")
        if frac:  # only the last part may have one: scale what came before to its digits
            scale = 10 ** len(frac)
            total, den = total * scale + int(whole + frac) * UNITS[m[2]], den * scale
        else:
            total += int(whole) * UNITS[m[2]]
        last_rank, fraction_seen, pos = _RANK[m[2]], "." in m[1], m.end()
        if pos == len(text):
            try:
                return total / den  # int / int: the correctly rounded float
            except OverflowError:
                raise ValueError("duration too large to count in seconds") from None


# Units format_duration writes, largest first: years are left out (365d is not a calendar year).
_FORMAT_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60))


def format_duration(seconds: float) -> str:
    """The shortest exact form a user would type: ``5s``, ``1m30s``, ``1d``, ``500ms``, ``1.5s``."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    n, scale = _exact(float(seconds))  # seconds = n / 10**scale, exactly as repr shows them
    one = 10**scale
    if n == 0:
        return "0s"
    if n < one and (n * 1000) % one == 0:
        return f"{n * 1000 // one}ms"
    whole, rest = divmod(n, one)
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS:
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    if whole or rest:
        frac = f".{rest:0{scale}d}".rstrip("0") if rest else ""
        parts.append(f"{whole}{frac}s")
    return "".join(parts)


def _exact(x: float) -> tuple[int, int]:
    """``(n, scale)`` with ``x == n / 10**scale`` for the shortest decimal that reads back as
    ``x`` (its repr): no binary noise in what is shown."""
    mantissa, _, exponent = repr(x).partition("e")
    whole, _, frac = mantissa.partition(".")
    n, scale = int(whole + frac), len(frac) - int(exponent or 0)
    return (n * 10**-scale, 0) if scale < 0 else (n, scale)
