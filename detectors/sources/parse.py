"""Parsing a scraped text exposition (Prometheus 0.0.4 or OpenMetrics) for the embedded store.

A small hand parser, several times faster than prometheus_client's (bench/store_speed.py). It is
strict where a hostile or broken target would otherwise slip through: every line is checked
(also those of families not kept), a body whose last line has no line feed is truncated, and a
body over the sample limit is refused before more of it is read. One bad line refuses the whole
body, as Prometheus does: nothing of a partly valid scrape is stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Sequence
from dataclasses import dataclass

SeriesKey = tuple[str, str]  # (metric name, labels as exposed, e.g. 'gpu="0",uuid="GPU-1"')

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# label pairs up to the closing brace (a quoted value may hold braces and commas)
_LABELS = re.compile(r'\s*(?:[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:[^"\\\n]|\\.)*"\s*(?:,\s*|(?=\})))*')


class ParseError(ValueError):
    """The body is not a valid exposition (reason ``parse``)."""

    reason = "parse"


class SampleLimitError(ParseError):
    """The body holds more samples than ``sample_limit`` (reason ``sample_limit``)."""

    reason = "sample_limit"


@dataclass(frozen=True)
class Parsed:
    """A scrape's finite samples (those kept) and the count of non-finite ones dropped."""

    keys: list[SeriesKey]
    values: list[float]
    nonfinite: int = 0


def parse_exposition(
    text: str, keep: Container[str] | None = None, sample_limit: int | None = None
) -> tuple[list[SeriesKey], list[float]]:
    """Samples of a text exposition as ``(name, labels)`` keys and values; ``labels`` is the text
    between the braces as exposed. ``keep`` filters by name; ``sample_limit`` bounds the samples
    of the whole body (kept or not). Raises :class:`ParseError` on any malformed line."""
    keys: list[SeriesKey] = []
    values: list[float] = []
    names: dict[str, bool] = {}  # name -> valid; names repeat on most lines
    count = 0
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line or line[0] == "#":
            continue
        count += 1
        if sample_limit is not None and count > sample_limit:
            raise SampleLimitError(f"more than {sample_limit} samples")
        b = line.find("{")
        if b >= 0:
            name = line[:b].rstrip()
            e = _LABELS.match(line, b + 1).end()  # type: ignore[union-attr]  # matches ""
            if line[e : e + 1] != "}":
                raise ParseError(f"line {n}: bad labels in {line[:120]!r}")
            labels, rest = line[b + 1 : e].rstrip(", "), line[e + 1 :]
        else:
            name, _, rest = line.strip().partition(" ")
            labels = ""
        ok = names.get(name)
        if ok is None:
            ok = names[name] = _NAME.fullmatch(name) is not None
        try:
            if not ok:
                raise ValueError
            fields = rest.split()
            value = float(fields[0])
            # an optional timestamp, then at most an OpenMetrics exemplar after "#"
            if len(fields) > 1 and fields[1] != "#":
                float(fields[1])
                if len(fields) > 2 and fields[2] != "#":
                    raise ValueError
        except (ValueError, IndexError):
            raise ParseError(f"line {n}: cannot parse {line[:120]!r}") from None
        if keep is None or name in keep:
            keys.append((name, labels))
            values.append(value)
    return keys, values


def parse_body(body: bytes | bytearray, keep: Container[str] | None, sample_limit: int) -> Parsed:
    """A scraped body as stored: valid UTF-8 ending in a line feed, within ``sample_limit``,
    non-finite values (NaN, +-Inf) dropped and counted."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"not UTF-8 text at byte {e.start}") from None
    if text and not text.endswith("\n"):
        raise ParseError("truncated: the last line has no line feed")
    keys, values = parse_exposition(text, keep, sample_limit)
    if all(map(math.isfinite, values)):
        return Parsed(keys, values)
    fk, fv = [], []
    for k, v in zip(keys, values, strict=True):
        if math.isfinite(v):
            fk.append(k)
            fv.append(v)
    return Parsed(fk, fv, len(values) - len(fv))


class NameFilter:
    """``name in filter`` for metric-name regexes, with the answer cached per name."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._re = re.compile("|".join(f"(?:{p})" for p in patterns))
        self._seen: dict[str, bool] = {}

    def __contains__(self, name: object) -> bool:
        hit = self._seen.get(name)  # type: ignore[call-overload]
        if hit is None:
            if len(self._seen) > 100_000:  # a target inventing names must not grow this forever
                self._seen.clear()
            hit = self._seen[name] = bool(self._re.fullmatch(str(name)))  # type: ignore[index]
        return hit
