"""Named queries: the default set names real agent metrics; the embedded reading of PromQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcwatch.detectors.sources.queries import (
    METRIC_NAME_RE,
    QueryError,
    Selector,
    load_queries,
    needed_metrics,
    parse_duration,
    parse_labels,
    parse_queries,
    parse_selector,
)
from dcwatch.exporters import registry


def exported_metric_names() -> set[str]:
    """Every metric name the agent can export: the METRICS tables of all registered collectors."""
    names = {spec.name for e in registry.entries() for spec in e.cls.METRICS}
    assert names, "no collector declares any metric"
    return names


def test_every_default_query_names_an_exported_metric() -> None:
    exported = exported_metric_names()
    queries = load_queries()
    for q in queries:
        assert q.metrics, f"{q.name}: names no dcwatch metric"
        for m in q.metrics:
            assert m in exported, (
                f"default query {q.name} names {m}, which the agent does not export"
            )


def test_default_queries_are_all_embedded_and_per_labels_exist() -> None:
    labels_of = {spec.name: spec.labels for e in registry.entries() for spec in e.cls.METRICS}
    for q in load_queries():
        assert q.selector is not None, f"{q.name}: the embedded source cannot evaluate it"
        assert q.selector.metric in labels_of
        if q.per:
            assert q.per in labels_of[q.selector.metric], f"{q.name}: no label {q.per}"
        for label, _, _ in q.selector.matchers:
            assert label in labels_of[q.selector.metric], f"{q.name}: no label {label}"
        if q.selector.func:
            assert q.selector.metric.endswith("_total"), f"{q.name}: rate of a gauge"
        elif q.selector.metric.endswith("_total"):
            pytest.fail(f"{q.name}: a counter read without rate()")
    assert len(needed_metrics(load_queries())) >= 20


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("dcwatch_x", Selector("dcwatch_x")),
        (
            'dcwatch_x{a="1", b!="2",c=~"e.*",d!~"f"}',
            Selector(
                "dcwatch_x",
                (("a", "=", "1"), ("b", "!=", "2"), ("c", "=~", "e.*"), ("d", "!~", "f")),
            ),
        ),
        ("rate(dcwatch_y_total[2m])", Selector("dcwatch_y_total", (), "rate", 120.0)),
        (
            'irate( dcwatch_y_total{a="x"} [30s] )',
            Selector("dcwatch_y_total", (("a", "=", "x"),), "irate", 30.0),
        ),
        (
            "sum by (instance, gpu) (rate(dcwatch_y_total[1m30s]))",
            Selector("dcwatch_y_total", (), "rate", 90.0, "sum"),
        ),
        ("avg(dcwatch_x) by (instance)", Selector("dcwatch_x", agg="mean")),
        ('dcwatch_x{a="q\\"uote"}', Selector("dcwatch_x", (("a", "=", 'q"uote'),))),
        ("histogram_quantile(0.9, rate(x_bucket[5m]))", None),
        ("dcwatch_x / dcwatch_y", None),
        ("rate(dcwatch_x[5q])", None),
    ],
)
def test_parse_selector(query: str, expected: Selector | None) -> None:
    assert parse_selector(query) == expected


def test_selector_matches_labels() -> None:
    s = parse_selector('dcwatch_x{a="1",b=~"eth[0-9]+",c!="z"}')
    assert s is not None
    assert s.matches({"a": "1", "b": "eth12"})
    assert not s.matches({"a": "1", "b": "eth12x"})
    assert not s.matches({"a": "1", "b": "eth1", "c": "z"})


def test_parse_labels_and_duration() -> None:
    assert parse_labels('gpu="0",uuid="GPU-1"') == {"gpu": "0", "uuid": "GPU-1"}
    assert parse_labels(r'a="x\"y",b="1,2}",c="l\\n"') == {"a": 'x"y', "b": "1,2}", "c": "l\\n"}
    assert parse_labels("") == {}
    assert parse_duration("1h30m") == 5400 and parse_duration("500ms") == 0.5
    with pytest.raises(QueryError):
        parse_duration("2 m")


def test_parse_queries_validates() -> None:
    q = parse_queries([{"name": "a", "query": "max by (instance) (dcwatch_x)", "per": "gpu"}])
    assert q[0].agg == "max" and q[0].per == "gpu"
    assert parse_queries([{"name": "a", "query": "dcwatch_x", "agg": "avg"}])[0].agg == "mean"
    bad = [
        [],
        [{"name": "a"}],
        [{"name": "a b", "query": "x"}],
        [{"name": "a", "query": "x", "per": 3}],
        [{"name": "a", "query": "x", "agg": "median"}],
        [{"name": "a", "query": "x", "bogus": 1}],
        [{"name": "a", "query": "x"}, {"name": "a", "query": "y"}],
        ["just a string"],
    ]
    for data in bad:
        with pytest.raises(QueryError):
            parse_queries(data)


def test_load_queries_from_file(tmp_path: Path) -> None:
    p = tmp_path / "q.yaml"
    p.write_text("- name: t\n  query: dcwatch_gpu_temperature_celsius\n  per: gpu\n")
    (q,) = load_queries(p)
    assert q.name == "t" and q.metrics == ("dcwatch_gpu_temperature_celsius",)
    with pytest.raises(QueryError, match="cannot read"):
        load_queries(tmp_path / "missing.yaml")
    p.write_text("- [unclosed")
    with pytest.raises(QueryError, match="not valid YAML"):
        load_queries(p)
    assert METRIC_NAME_RE.findall("rate(dcwatch_a_total[2m]) / dcwatch_b") == [
        "dcwatch_a_total",
        "dcwatch_b",
    ]
