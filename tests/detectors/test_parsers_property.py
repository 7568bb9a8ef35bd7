"""Property-based tests (hypothesis) of the analyzer's parsers and decoders, and the core's:
the exposition parser, the Prometheus answer decoder, targets files, queries, durations and
URL redaction. Each runs a bounded number of examples."""

from __future__ import annotations

import contextlib
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dcwatch import durations
from dcwatch.detectors.sources.parse import ParseError, SampleLimitError, parse_body
from dcwatch.detectors.sources.prometheus import BadAnswer, decode_matrix
from dcwatch.detectors.sources.queries import QueryError, parse_labels, parse_queries
from dcwatch.detectors.sources.targets import parse_targets
from dcwatch.urls import redact_text, redact_url

FEW = settings(max_examples=150, deadline=None)

names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
label_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters='\\"\n'), max_size=12
)
values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@FEW
@given(st.binary(max_size=2000))
def test_exposition_parser_refuses_or_returns_finite_samples(body: bytes) -> None:
    try:
        parsed = parse_body(body, None, sample_limit=1000)
    except ParseError:
        return
    assert len(parsed.keys) == len(parsed.values) <= 1000
    assert all(math.isfinite(v) for v in parsed.values)


@FEW
@given(
    st.lists(
        st.tuples(names, st.dictionaries(names, label_values, max_size=3), values),
        max_size=40,
    )
)
def test_exposition_round_trip(series: list[tuple[str, dict[str, str], float]]) -> None:
    lines = []
    for name, labels, v in series:
        inner = ",".join(f'{k}="{val}"' for k, val in labels.items())
        lines.append(f"{name}{{{inner}}} {v!r}" if labels else f"{name} {v!r}")
    body = ("\n".join(lines) + "\n").encode() if lines else b""
    parsed = parse_body(body, None, sample_limit=1000)
    finite = [(n, v) for n, _, v in series if math.isfinite(v)]
    assert [(k[0], v) for k, v in zip(parsed.keys, parsed.values, strict=True)] == finite
    assert parsed.nonfinite == len(series) - len(finite)
    kept = [s for s in series if math.isfinite(s[2])]
    for (name, labels, _), key in zip(kept, parsed.keys, strict=True):
        assert key[0] == name and parse_labels(key[1]) == labels


@FEW
@given(st.integers(min_value=0, max_value=50))
def test_sample_limit_counts_every_sample(n: int) -> None:
    body = "".join(f'm{{i="{i}"}} 1\n' for i in range(n)).encode()
    try:
        parsed = parse_body(body, {"other"}, sample_limit=20)
    except SampleLimitError:
        assert n > 20
        return
    assert n <= 20 and parsed.keys == []


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


@FEW
@given(json_values)
def test_prometheus_decoder_refuses_anything_but_a_matrix(doc: object) -> None:
    try:
        series = decode_matrix(json.dumps(doc).encode())
    except BadAnswer:
        return
    for labels, ts, vals in series:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        assert len(ts) == len(vals) and all(math.isfinite(t) for t in ts)
        assert not any(math.isinf(v) for v in vals)


@FEW
@given(st.binary(max_size=300))
def test_prometheus_decoder_on_bytes(body: bytes) -> None:
    with contextlib.suppress(BadAnswer):
        decode_matrix(body)


@FEW
@given(st.lists(st.lists(st.tuples(st.integers(0, 2**31), values), max_size=5), max_size=4))
def test_prometheus_matrix_round_trip(points: list[list[tuple[int, float]]]) -> None:
    result = [
        {
            "metric": {"instance": f"n{i}"},
            "values": [[t, repr(v).replace("inf", "Inf")] for t, v in p],
        }
        for i, p in enumerate(points)
    ]
    doc = {"status": "success", "data": {"resultType": "matrix", "result": result}}
    series = decode_matrix(json.dumps(doc).encode())
    assert len(series) == sum(1 for p in points if p)
    for (_labels, ts, vals), p in zip(series, [p for p in points if p], strict=True):
        assert list(ts) == [float(t) for t, _ in p]
        for got, (_, want) in zip(vals, p, strict=True):
            assert (math.isnan(got) and not math.isfinite(want)) or got == want


@FEW
@given(st.text(max_size=400))
def test_targets_file_refuses_or_gives_http_targets(text: str) -> None:
    try:
        targets = parse_targets(text)
    except ValueError:
        return
    for t in targets:
        assert t.url.split("://", 1)[0] in ("http", "https")
        assert "@" not in t.url.split("://", 1)[1].split("/", 1)[0]


@FEW
@given(json_values)
def test_queries_refused_with_query_error_only(data: object) -> None:
    try:
        queries = parse_queries(data, "test")
    except QueryError:
        return
    assert queries and len({q.name for q in queries}) == len(queries)


@FEW
@given(st.text(max_size=20) | st.floats() | st.integers() | st.booleans() | st.none())
def test_durations_are_finite_and_positive_or_refused(value: object) -> None:
    try:
        seconds = durations.parse_duration(value)
    except ValueError:
        return
    assert math.isfinite(seconds) and seconds >= 0


@FEW
@given(st.floats(min_value=0.001, max_value=1e9, allow_nan=False))
def test_duration_format_parses_back(seconds: float) -> None:
    text = durations.format_duration(seconds)
    assert math.isclose(durations.parse_duration(text), seconds, rel_tol=1e-9, abs_tol=1e-6)


secrets = st.from_regex(r"PW[A-Z0-9]{6,12}", fullmatch=True)  # never part of a host below


@FEW
@given(
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    secrets,
    st.from_regex(r"[a-z0-9.-]{1,12}", fullmatch=True),
    st.text(
        st.characters(whitelist_categories=("L", "N"), whitelist_characters="/-_."), max_size=10
    ),
)
def test_redaction_never_leaves_the_password(
    scheme: str, user: str, password: str, host: str, path: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}:9478/{path}"
    assert password not in redact_url(url)
    assert password not in redact_url(f"{user}:{password}@{host}:9478")
    assert password not in redact_text(f"GET {url} failed: {url}")
