"""Prometheus configuration and rules, checked by promtool: ``check config`` (file_sd variant;
the Kubernetes-SD variant as far as Debian's build allows), ``check rules``, ``test rules`` with a
firing and a silent case for every alert, and the label and naming conventions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_names import (
    PROMETHEUS_SERIES,
    REPO,
    RULES_DIR,
    referenced_metrics,
    rule_groups,
    unknown_metrics,
)
from tests.helpers import find_binary

PROM_DIR = REPO / "deploy" / "prometheus"
RULE_TESTS = sorted((Path(__file__).parent / "rules_tests").glob("*_test.yml"))
SEVERITIES = {"critical", "warning", "info"}
K8S_SD_KEYS = {
    "role",
    "namespaces",
    "selectors",
    "attach_metadata",
    "api_server",
    "kubeconfig_file",
}
K8S_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = find_binary("promtool")
    if exe is None:
        pytest.skip("promtool missing: install Debian's prometheus (scripts/setup.sh)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alerting_rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    p = promtool("check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml"))))
    assert p.returncode == 0, p.stdout + p.stderr


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    p = promtool("test", "rules", *map(str, RULE_TESTS))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for t in yaml.safe_load(path.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in alerting_rules()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - silent == set(), "alerts without a not-firing test"


def test_alert_conventions() -> None:
    names = [r["alert"] for r in alerting_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for r in alerting_rules():
        assert re.fullmatch(r"Dcwatch[A-Z][A-Za-z]+", r["alert"]), r["alert"]
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        assert set(r["annotations"]) >= {"summary", "description"}, r["alert"]
        # Node-level alerts carry the instance (and the device) so Alertmanager can group and
        # inhibit them with the analyzer's: aggregations must not drop `instance`.
        assert not re.search(r"\b(sum|avg|max|min|count)\s*\(", r["expr"]) or re.search(
            r"\bwithout\s*\(", r["expr"]
        ), f"{r['alert']}: aggregate with `without (...)` to keep instance"


def test_recording_rule_names_follow_level_metric_operation() -> None:
    for g in rule_groups():
        for r in g["rules"]:
            if "record" in r:
                assert re.fullmatch(
                    r"(instance|rack|fleet|gpu|pod|hpc_job):dcwatch_[a-z0-9_]+:[a-z0-9_]+",
                    r["record"],
                )


def test_rules_name_only_declared_metrics() -> None:
    for g in rule_groups():
        for r in g["rules"]:
            assert referenced_metrics(r["expr"]) or "up{" in r["expr"], r
            assert unknown_metrics(r["expr"]) == set(), r.get("alert") or r.get("record")


def test_unknown_metric_is_detected() -> None:
    """The naming check bites: a misspelt metric is reported."""
    assert unknown_metrics("rate(dcwatch_gpu_xid_error_total[5m])") == {
        "dcwatch_gpu_xid_error_total"
    }
    assert unknown_metrics("instance:dcwatch_gpus:count + dcwatch_gpu_up") == set()
    assert "up" in PROMETHEUS_SERIES


def test_promtool_check_config_file_sd() -> None:
    p = promtool("check", "config", "prometheus.yml", cwd=PROM_DIR)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 rule files found" in p.stdout
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"dcwatch-agent", "dcwatch-analyzer"}
    # The analyzer's series name the node in `instance`: it must survive the scrape.
    assert jobs["dcwatch-analyzer"]["honor_labels"] is True
    for job in jobs.values():
        for sd in job["file_sd_configs"]:
            for f in sd["files"]:
                assert yaml.safe_load((PROM_DIR / f).read_text()), f


def test_kubernetes_sd_variant(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery: promtool checks everything else
    (relabelling, rules, alerting) with the SD blocks swapped for static ones; the SD blocks are
    checked against the fields Prometheus documents."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus-kubernetes.yml").read_text())
    blocks = [*cfg["alerting"]["alertmanagers"], *cfg["scrape_configs"]]
    for b in blocks:
        for sd in b.pop("kubernetes_sd_configs"):
            assert set(sd) <= K8S_SD_KEYS and sd["role"] in K8S_ROLES, sd
            assert set(sd.get("namespaces", {})) <= {"names", "own_namespace"}
            assert set(sd.get("attach_metadata", {})) <= {"node"}
        b["static_configs"] = [{"targets": []}]
    (tmp_path / "rules").symlink_to(RULES_DIR)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    p = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["dcwatch-analyzer"]["honor_labels"] is True
    relabel = jobs["dcwatch-agent"]["relabel_configs"]
    assert any(r.get("target_label") == "instance" for r in relabel)
    assert any(r.get("target_label") == "rack" for r in relabel)


def test_readme_lists_every_alert() -> None:
    text = (REPO / "README.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
        for line in text.splitlines()
        if line.startswith("| `Dcwatch")
    }
    assert rows == {r["alert"]: r["labels"]["severity"] for r in alerting_rules()}
