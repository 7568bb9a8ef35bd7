"""``Families.render`` writes what prometheus_client's encoders write for the same families."""

from __future__ import annotations

import math

import pytest
from prometheus_client.core import GaugeMetricFamily

from dcwatch.exposition import Families, MetricSpec, encode

GAUGE = MetricSpec(
    "dcwatch_test_temperature_celsius", 'Help with "quotes", \\ and\nlines', ("b", "a")
)
COUNTER = MetricSpec("dcwatch_test_errors_total", "Errors", ("reason",), kind="counter")
PLAIN = MetricSpec("dcwatch_test_passes", "No labels")


def families() -> Families:
    f = Families()
    f.add(GAUGE, 1, "x", "y")
    f.add(GAUGE, 0.1 + 0.2, 'we"ird\\val\nue', "ünï")
    f.add(GAUGE, math.nan, "n", "n")
    f.add(GAUGE, -math.inf, "i", "i")
    f.add(GAUGE, 1e-7, "tiny", "z")
    f.add(GAUGE, 12345678901234.0, "big", "z")
    f.add(GAUGE, None, "skipped", "z")
    f.add(GAUGE, 2.5, "only-b")  # fewer values than labels, as the client's zip allows
    f.add(COUNTER, 3, "timeout")
    f.add(PLAIN, True)
    return f


@pytest.mark.parametrize(
    "accept", ["", "application/openmetrics-text; version=1.0.0; charset=utf-8,*/*;q=0.1"]
)
def test_render_is_byte_for_byte_the_clients(accept: str) -> None:
    other = GaugeMetricFamily("dcwatch_other", "Another family, from the client")
    other.add_metric([], 7.0)
    ours = encode([families(), other], accept)
    theirs = encode([*families(), other], accept)  # the same families as client objects
    assert ours == theirs
    body = ours[0].decode()
    assert 'a="ünï",b="we\\"ird\\\\val\\nue"' in body  # labels sorted, values escaped
    assert 'dcwatch_test_errors_total{reason="timeout"} 3.0' in body
    assert "skipped" not in body
    assert body.count("# EOF") == (1 if accept else 0)


def test_families_without_samples_write_nothing() -> None:
    assert encode([Families()], "") == encode([], "")
    assert encode([Families()], "application/openmetrics-text")[0] == b"# EOF\n"
