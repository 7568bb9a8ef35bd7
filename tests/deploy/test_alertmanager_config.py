"""deploy/alertmanager/alertmanager.yml, checked by Alertmanager's own tools: ``amtool
check-config``, ``amtool config routes test`` for the routing by severity, and a real
Alertmanager for the inhibition rules (receivers swapped for a silent one: nothing leaves)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import find_binary, wait_until
from tests.procs import alertmanager_binary, start_alertmanager

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = REPO / "deploy" / "prometheus" / "rules" / "dcwatch-alerts.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = find_binary("amtool")
    if exe is None:
        pytest.skip("amtool missing: install Debian's prometheus-alertmanager (scripts/setup.sh)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config() -> None:
    p = amtool("check-config", str(CONFIG))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=DcwatchGpuLost", "severity=critical", "instance=n1"], "pager"),
        (["alertname=DcwatchNodeAnomaly", "severity=warning", "instance=n1"], "team-chat"),
        (["alertname=DcwatchCapacityExhaustion", "severity=warning", "rule=r"], "team-chat"),
        (["alertname=DcwatchGpuXidError", "severity=info", "instance=n1"], "digest"),
        (["alertname=SomethingElse"], "team-chat"),
    ],
)
def test_routing_by_severity(labels: list[str], receiver: str) -> None:
    p = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == [receiver]


def test_every_severity_the_rules_use_has_a_route() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    routed = {m.split("=")[1].strip('"') for r in cfg["route"]["routes"] for m in r["matchers"]}
    rules = yaml.safe_load(RULES.read_text())["groups"]
    used = {r["labels"]["severity"] for g in rules for r in g["rules"]}
    assert used <= routed


def _post(url: str, alerts: list[dict]) -> None:
    req = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def _inhibited(url: str) -> dict[str, bool]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as r:
        alerts = json.load(r)
    return {
        a["labels"]["alertname"] + "/" + a["labels"]["instance"]: bool(a["status"]["inhibitedBy"])
        for a in alerts
    }


def test_inhibition_in_a_real_alertmanager(tmp_path: Path) -> None:
    if alertmanager_binary() is None:
        pytest.skip("prometheus-alertmanager not installed (scripts/setup.sh)")
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["receivers"] = [{"name": r["name"]} for r in cfg["receivers"]]  # deliver nowhere
    with start_alertmanager(tmp_path, config=cfg) as am:
        node = {"instance": "n1:9478", "job": "dcwatch-agent"}
        other = {"instance": "n2:9478", "job": "dcwatch-agent"}
        alerts = [
            {"alertname": "DcwatchAgentDown", "severity": "warning"} | node,
            {"alertname": "DcwatchNodeAnomaly", "severity": "warning"} | node,
            {"alertname": "DcwatchInfinibandPortDown", "severity": "warning", "device": "mlx5_0"}
            | node,
            # n2: its agent answers; a lost GPU hides that GPU's XID and temperature alerts,
            # not another GPU's, and not the lost-GPU alert itself.
            {"alertname": "DcwatchGpuLost", "severity": "critical", "gpu": "1"} | other,
            {"alertname": "DcwatchGpuXidCritical", "severity": "critical", "gpu": "1"} | other,
            {"alertname": "DcwatchGpuTemperatureHigh", "severity": "warning", "gpu": "0"} | other,
        ]
        _post(am.url, [{"labels": a} for a in alerts])
        expected = {
            "DcwatchAgentDown/n1:9478": False,
            "DcwatchNodeAnomaly/n1:9478": True,
            "DcwatchInfinibandPortDown/n1:9478": True,
            "DcwatchGpuLost/n2:9478": False,
            "DcwatchGpuXidCritical/n2:9478": True,
            "DcwatchGpuTemperatureHigh/n2:9478": False,
        }
        wait_until(lambda: _inhibited(am.url) == expected, timeout=15, what="inhibition")
