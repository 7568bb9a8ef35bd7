"""Restricting a PromQL query to some instances, so Prometheus reads only their series.

PromQL has no way to pass extra matchers to ``query_range``, and filtering an answer afterwards
(``... and on (instance) ...``) still makes Prometheus evaluate the whole fleet once per batch:
the cost would grow with nodes x batches. :func:`with_instances` instead adds
``instance=~"a|b|c"`` to every vector selector of the query (Prometheus turns such an
alternation of literals into a set lookup in its index). It scans the query once, skipping
strings, label lists of ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``,
range and subquery brackets, function names and keywords.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_IDENT = re.compile(r"[A-Za-z_:][\w:]*")
_NUMBER = re.compile(r"(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)[\w]*")
# Words that are never metric names where they stand (aggregations are followed by `(` or `by`).
_LABEL_LISTS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
_KEYWORDS = _LABEL_LISTS | {"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"}
_KEYWORDS |= {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
_KEYWORDS |= {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}


def instances_matcher(instances: Iterable[str], label: str = "instance") -> str:
    """``instance=~"a|b"``: the values regex-escaped (RE2 syntax), then escaped for PromQL."""
    alternation = "|".join(_re2_escape(i) for i in sorted(set(instances)))
    return f'{label}=~"{_string_escape(alternation)}"'


def _re2_escape(value: str) -> str:
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def _string_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def with_instances(query: str, instances: Iterable[str], label: str = "instance") -> str | None:
    """``query`` with ``label=~"..."`` added to each of its vector selectors; None when it has
    none that the scan recognises (the caller then reads the whole answer and filters it)."""
    matcher = instances_matcher(instances, label)
    return _rewrite(query, lambda braces: _add_matcher(braces, matcher), [])


def metric_names(query: str) -> list[str]:
    """The metric names of ``query``'s vector selectors (``""`` for one without a name)."""
    names: list[str] = []
    _rewrite(query, lambda braces: braces, names)
    return names


def _rewrite(query: str, edit: Callable[[str], str], names: list[str]) -> str | None:
    """``query`` with ``edit`` applied to each selector's ``{...}`` (``{}`` where it has none),
    the selectors' metric names appended to ``names``; None when it has no selector."""
    out: list[str] = []
    i, n, found = 0, len(query), False
    after_label_kw = False
    while i < n:
        c = query[i]
        if c in "\"'`":  # a string literal: copied as is
            j = i + 1
            while j < n and query[j] != c:
                j += 2 if query[j] == "\\" and c != "`" else 1
            out.append(query[i : j + 1])
            i = j + 1
            continue
        if c == "#":  # a comment runs to the end of the line
            j = query.find("\n", i)
            j = n if j < 0 else j
            out.append(query[i:j])
            i = j
            continue
        if c == "[":  # a range or subquery: durations, no selectors
            j = query.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(query[i : j + 1])
            i = j + 1
            continue
        if c == "(" and after_label_kw:  # by (instance, gpu): label names, not metrics
            j = query.find(")", i)
            j = n - 1 if j < 0 else j
            out.append(query[i : j + 1])
            i, after_label_kw = j + 1, False
            continue
        if c == "{":  # a selector without a metric name: {__name__="x"}
            j = _close_brace(query, i)
            out.append(edit(query[i : j + 1]))
            names.append("")
            i, found = j + 1, True
            continue
        if c.isdigit() or (c == "." and i + 1 < n and query[i + 1].isdigit()):
            m = _NUMBER.match(query, i)
            assert m is not None
            out.append(m.group(0))
            i = m.end()
            continue
        m = _IDENT.match(query, i)
        if m is None:
            out.append(c)
            if not c.isspace():
                after_label_kw = False
            i += 1
            continue
        word, i = m.group(0), m.end()
        k = i
        while k < n and query[k].isspace():
            k += 1
        nxt = query[k] if k < n else ""
        if word in _LABEL_LISTS:
            after_label_kw = True
            out.append(word)
            continue
        after_label_kw = False
        if nxt == "(" or word in _KEYWORDS:
            out.append(word)  # a function or keyword
            continue
        found = True
        names.append(word)
        if nxt == "{":
            j = _close_brace(query, k)
            out.append(word + query[i:k] + edit(query[k : j + 1]))
            i = j + 1
        else:
            out.append(word + edit("{}"))
    return "".join(out) if found else None


def _close_brace(query: str, i: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``i`` (strings inside skipped)."""
    j, n = i + 1, len(query)
    while j < n and query[j] != "}":
        if query[j] in "\"'`":
            q = query[j]
            j += 1
            while j < n and query[j] != q:
                j += 2 if query[j] == "\\" and q != "`" else 1
        j += 1
    return min(j, n - 1)


def _add_matcher(braces: str, matcher: str) -> str:
    inner = braces[1:-1].strip().rstrip(",").strip()
    return "{" + (f"{inner}, {matcher}" if inner else matcher) + "}"
