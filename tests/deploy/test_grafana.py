"""grafana/: the dashboards' JSON is structurally valid for Grafana's provisioning (ids, grid,
variables, a data-source variable instead of hard-coded UIDs, a unit on every panel), every
query parses as PromQL (promtool, after Grafana's variable interpolation) and names only metrics
dcwatch declares or records; the provisioning files are well formed. That every query returns
data is tests/e2e/test_dashboards_e2e.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.dashboards import DASHBOARDS, DS_REF, load, panels, queries, substitute
from tests.deploy.metric_names import unknown_metrics
from tests.helpers import find_binary

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "grafana" / "provisioning"
PANEL_TYPES = {"timeseries", "stat", "table", "bargauge", "heatmap", "state-timeline", "gauge"}
# Grafana unit ids the dashboards may use (Grafana's valueFormats registry).
UNITS = {
    "none", "short", "percentunit", "watt", "kwatth", "joule", "celsius", "bytes", "Bps",
    "hertz", "s", "cps", "rotrpm",
}  # fmt: skip
EXAMPLE_VALUES = {
    "instance": "gpu-node-01:9478",
    "gpu": ["0", "1"],
    "rule": "gpu_memory",
    "horizon": "1d",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "6h",
}

DASHES = {p.name: load(p) for p in DASHBOARDS}


def test_the_three_dashboards_exist() -> None:
    assert {d["uid"] for d in DASHES.values()} == {
        "dcwatch-fleet",
        "dcwatch-node",
        "dcwatch-anomalies",
    }


@pytest.mark.parametrize("name", sorted(DASHES))
def test_dashboard_structure(name: str) -> None:
    d = DASHES[name]
    assert d["title"] and d["schemaVersion"] >= 36 and "dcwatch" in d["tags"]
    assert d.get("id") is None, "no instance-specific id in a provisioned dashboard"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert "instance" in variables
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS_REF, v["name"]
            assert v["query"]["query"] == v["definition"]
    ids = [p["id"] for p in d["panels"]] + [p["id"] for p in panels(d) if p not in d["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [p["title"] for p in panels(d)]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and g["x"] + g["w"] <= 24, p["title"]
        cover = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cover & cells, f"{p['title']} overlaps another panel"
        cells |= cover
    for p in panels(d):
        assert p["type"] in PANEL_TYPES, p["title"]
        assert p["datasource"] == DS_REF, p["title"]
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert unit in UNITS, f"{p['title']}: unit {unit!r}"
        for o in p["fieldConfig"]["overrides"]:
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in UNITS
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t.get("datasource", DS_REF) == DS_REF, p["title"]


@pytest.mark.parametrize("name", sorted(DASHES))
def test_no_hard_coded_datasource(name: str) -> None:
    text = (REPO / "grafana" / "dashboards" / name).read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {DASHES[name]["uid"]}
    assert uids <= {"${datasource}", "-- Grafana --"}, uids


def test_node_dashboard_has_gpu_variable() -> None:
    node = next(d for d in DASHES.values() if d["uid"] == "dcwatch-node")
    gpu = next(v for v in node["templating"]["list"] if v["name"] == "gpu")
    assert "$instance" in gpu["query"]["query"] and gpu["multi"] and gpu["includeAll"]
    assert all("$instance" in t["expr"] for _, t in queries(node))


def test_queries_name_only_declared_metrics() -> None:
    for d in DASHES.values():
        for p, t in queries(d):
            assert unknown_metrics(t["expr"]) == set(), f"{d['uid']} / {p['title']}"
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                assert unknown_metrics(v["query"]["query"]) == set(), v["name"]


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables interpolated) as the expression of a rule."""
    exe = find_binary("promtool")
    if exe is None:
        pytest.skip("promtool missing: install Debian's prometheus (scripts/setup.sh)")
    rules = [
        {"record": f"dashboard_query_{i}", "expr": substitute(t["expr"], EXAMPLE_VALUES)}
        for i, (_, t) in enumerate(q for d in DASHES.values() for q in queries(d))
    ]
    f = tmp_path / "queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    p = subprocess.run([exe, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_provisioning_files() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "dcwatch.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dash = yaml.safe_load((PROVISIONING / "dashboards" / "dcwatch.yml").read_text())
    (provider,) = dash["providers"]
    assert dash["apiVersion"] == 1 and provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
