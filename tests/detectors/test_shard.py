"""Shards: Prometheus' hashmod of the instance, settings, and the PromQL instance filter."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.shard import Shard, hashmod
from dcwatch.detectors.sources.promql import instances_matcher, metric_names, with_instances
from dcwatch.detectors.sources.queries import load_queries
from dcwatch.detectors.sources.scrape_loop import EmbeddedConfig, Scraper
from dcwatch.settings import ConfigError


def test_hashmod_is_prometheus_hashmod() -> None:
    # Prometheus (relabel.go): binary.BigEndian.Uint64(md5(value)[8:]) % modulus. Pinned values:
    # changing the hash would move every node to another shard.
    digest = hashlib.md5(b"node-1:9478").digest()
    assert hashmod("node-1:9478", 1000) == int.from_bytes(digest[8:], "big") % 1000
    assert [hashmod(f"node-{i}:9478", 1000) for i in range(3)] == [129, 625, 950]
    assert hashmod("node-1:9478", 1) == 0


def test_shards_cover_every_node_exactly_once_and_evenly() -> None:
    nodes = [f"gpu-{i:04d}:9478" for i in range(3000)]
    shards = [Shard(i, 3) for i in range(3)]
    parts = [s.select(nodes) for s in shards]
    assert sorted(n for p in parts for n in p) == sorted(nodes)
    assert all(800 < len(p) < 1200 for p in parts), [len(p) for p in parts]
    assert Shard().select(nodes) == sorted(nodes) and Shard().whole


@pytest.mark.parametrize(("index", "count"), [(3, 3), (-1, 2), (0, 0)])
def test_bad_shards_are_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard(index, count)


def test_shard_settings_from_flags_env_and_refusal(tmp_path: Path) -> None:
    base = ["--prometheus-url", "http://p:9090", "--state-dir", str(tmp_path)]
    cfg = load_analyzer_config([*base, "--shard-index", "1", "--shard-count", "3"], env={})
    assert cfg.shard == Shard(1, 3) and cfg.prometheus is not None
    assert cfg.prometheus.shard == cfg.shard and cfg.embedded.shard == cfg.shard
    env = {"DCWATCH_SHARD_INDEX": "2", "DCWATCH_SHARD_COUNT": "4"}
    assert load_analyzer_config(base, env=env).shard == Shard(2, 4)
    with pytest.raises(ConfigError, match="shard"):
        load_analyzer_config([*base, "--shard-index", "3", "--shard-count", "3"], env={})


def test_embedded_mode_scrapes_only_the_shards_targets(tmp_path: Path) -> None:
    urls = tuple(f"http://node-{i}:9478/metrics" for i in range(12))
    seen: list[str] = []
    for i in range(3):
        cfg = EmbeddedConfig(targets=urls, db_path=tmp_path / "x.db", shard=Shard(i, 3))
        mine = [t.instance for t in Scraper(cfg, None).targets.values()]  # type: ignore[arg-type]
        assert mine and all(hashmod(n, 3) == i for n in mine)
        seen += mine
    assert sorted(seen) == sorted(f"node-{i}:9478" for i in range(12))


def test_every_default_query_is_restricted_to_the_instances() -> None:
    nodes = ["a.b:9478", 'we"ird|x']
    matcher = instances_matcher(nodes)
    assert matcher == 'instance=~"a\\\\.b:9478|we\\"ird\\\\|x"'
    for q in load_queries():
        out = with_instances(q.query, nodes)
        assert out is not None and out.count(matcher) == len(metric_names(q.query)) >= 1, out
        # every selector carries the matcher; the rest of the query is untouched
        assert out.replace(", " + matcher, "").replace("{" + matcher + "}", "") == q.query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("up", 'up{instance=~"n"}'),
        ('x{job="a",}', 'x{job="a", instance=~"n"}'),
        (
            "sum by (instance, gpu) (rate(x[5m] offset 1h)) / on (instance) group_left y",
            'sum by (instance, gpu) (rate(x{instance=~"n"}[5m] offset 1h)) '
            '/ on (instance) group_left y{instance=~"n"}',
        ),
        ('{__name__=~"x|y"}', '{__name__=~"x|y", instance=~"n"}'),
        ("max_over_time(x[1h:1m]) > 2e3", 'max_over_time(x{instance=~"n"}[1h:1m]) > 2e3'),
        ('x{a="}"} and bool 1', 'x{a="}", instance=~"n"} and bool 1'),
        ("vector(1)", None),
    ],
)
def test_with_instances(query: str, expected: str | None) -> None:
    assert with_instances(query, ["n"]) == expected


def test_instance_matcher_matches_exactly_the_instances() -> None:
    nodes = ["gpu-1:9478", "gpu-1:94789", "10.0.0.1:9478"]
    m = re.fullmatch(r'instance=~"(.*)"', instances_matcher(nodes[:1] + nodes[2:]))
    assert m is not None
    regex = m[1].replace("\\\\", "\\")
    assert [bool(re.fullmatch(regex, n)) for n in nodes] == [True, False, True]
    assert not re.fullmatch(regex, "10x0.0.1:9478")  # the dots are literal


def test_capacity_rules_summing_nodes_are_refused_on_a_shard(tmp_path: Path) -> None:
    rule = (
        "capacity_rules:\n  - {name: rack_a_power, series: node_power, capacity: 1000, "
        'aggregate: sum, instance_regex: "rack-a-.*", group: rack-a}\n'
    )
    (tmp_path / "a.yaml").write_text(f"prometheus: {{url: 'http://p:9090'}}\n{rule}")
    base = ["--config", str(tmp_path / "a.yaml"), "--state-dir", str(tmp_path)]
    assert load_analyzer_config(base, env={}).capacity_rules  # whole fleet: fine
    with pytest.raises(ConfigError, match=r"rack_a_power.*recording rule"):
        load_analyzer_config([*base, "--shard-count", "2"], env={})
