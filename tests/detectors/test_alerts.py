"""The alert model, its config and the Alertmanager API v2 payload builder (pure functions)."""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

import pytest

from dcwatch import settings as st
from dcwatch.detectors.alerting.alerts import (
    ALERTING_SETTINGS,
    Alert,
    AlertingConfig,
    AlertRecord,
    Contributor,
    alert_payload,
    alerting_config_from,
    build_alert,
    fmt_number,
    rfc3339,
)
from dcwatch.detectors.alerting.log import AlertLog, log_entry, read_alert_log

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z
CFG = AlertingConfig(
    external_url="http://analyzer.example:9479/",
    runbook_url="https://runbooks.example/dcwatch/{alertname}",
    dashboard_url="https://grafana.example/d/dcwatch-node?var-instance={instance}&var-gpu={gpu}",
    resend_interval=60.0,
    ends_at_factor=4.0,
)


def gpu_alert(**kw: object) -> Alert:
    args: dict = {
        "alertname": "DcwatchAnomaly",
        "severity": "critical",
        "instance": "node-17:9478",
        "gpu": "3",
        "summary": "node-17 GPU 3 behaves unlike its history",
        "contributors": [
            Contributor("gpu_temp_celsius", 91.2, 64.0, 3.1),
            Contributor("gpu_power_watts", 412.0, 250.0, 20.0),
        ],
        "score": 0.8734,
    }
    args.update(kw)
    return build_alert(CFG, **args)


def test_payload_has_the_exact_api_v2_shape() -> None:
    rec = AlertRecord(gpu_alert(), starts_at=T0)
    assert alert_payload(rec, T0 + 30, CFG) == {
        "labels": {
            "alertname": "DcwatchAnomaly",
            "severity": "critical",
            "instance": "node-17:9478",
            "gpu": "3",
        },
        "annotations": {
            "summary": "node-17 GPU 3 behaves unlike its history",
            "description": "top contributors: gpu_temp_celsius=91.2 (expected 64.0±3.1), "
            "gpu_power_watts=412.0 (expected 250.0±20.0)",
            "score": "0.873",
            "runbook_url": "https://runbooks.example/dcwatch/DcwatchAnomaly",
            "dashboard": "https://grafana.example/d/dcwatch-node?var-instance=node-17%3A9478&var-gpu=3",
        },
        "startsAt": "2024-05-01T12:00:00.000Z",
        "endsAt": "2024-05-01T12:04:30.000Z",  # now + 4 x 60 s
        "generatorURL": "http://analyzer.example:9479/node/node-17%3A9478",
    }


def test_timestamps_are_rfc3339_with_timezone() -> None:
    s = rfc3339(T0 + 0.25)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s)
    assert datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() == T0 + 0.25


def test_starts_at_is_stable_and_ends_at_moves_forward_on_resend() -> None:
    rec = AlertRecord(gpu_alert(), starts_at=T0)
    first, later = alert_payload(rec, T0 + 10, CFG), alert_payload(rec, T0 + 70, CFG)
    assert first["startsAt"] == later["startsAt"] == rfc3339(T0)
    assert first["endsAt"] == rfc3339(T0 + 10 + 240)
    assert later["endsAt"] == rfc3339(T0 + 70 + 240)


def test_resolved_ends_at_is_the_resolve_time_on_every_resend() -> None:
    rec = AlertRecord(gpu_alert(), starts_at=T0, resolved_at=T0 + 500)
    assert alert_payload(rec, T0 + 501, CFG)["endsAt"] == rfc3339(T0 + 500)
    assert alert_payload(rec, T0 + 900, CFG)["endsAt"] == rfc3339(T0 + 500)
    # A clock that stepped back never yields endsAt < startsAt (Alertmanager would reject it).
    back = AlertRecord(gpu_alert(), starts_at=T0, resolved_at=T0 - 5)
    assert alert_payload(back, T0, CFG)["endsAt"] == rfc3339(T0)


def test_labels_device_and_extras_and_empty_values_left_out() -> None:
    a = build_alert(
        CFG,
        alertname="DcwatchCapacity",
        severity="warning",
        instance="node-2",
        device="eth0",
        summary="link full in ~3 days",
        labels={"rule": "link_utilisation", "unused": ""},
    )
    assert dict(a.labels) == {
        "alertname": "DcwatchCapacity",
        "severity": "warning",
        "instance": "node-2",
        "device": "eth0",
        "rule": "link_utilisation",
    }
    assert "score" not in a.annotations and "description" not in a.annotations


def test_description_combines_text_and_contributors() -> None:
    a = gpu_alert(description="GPU 3 running hot", contributors=[Contributor("x", 2.0)])
    assert a.annotations["description"] == "GPU 3 running hot; top contributors: x=2.0"


def test_key_is_the_label_set() -> None:
    a = gpu_alert()
    same_labels = Alert(dict(reversed(list(a.labels.items()))), {"summary": "other text"})
    assert a.key == same_labels.key
    assert gpu_alert(gpu="4").key != a.key
    assert len(a.key) == 20


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"severity": "x"}, "alertname"),
        ({"alertname": "A", "bad-name": "x"}, "invalid label"),
        ({"alertname": "A", "x": ""}, "non-empty"),
    ],
)
def test_invalid_alerts_are_refused(labels: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Alert(labels)
    with pytest.raises(ValueError, match="annotation score must be a string"):
        Alert({"alertname": "A"}, {"score": 0.9})  # type: ignore[dict-item]


def test_no_links_without_config() -> None:
    a = build_alert(AlertingConfig(), alertname="A", severity="warning", instance="n", summary="s")
    assert set(a.annotations) == {"summary"}
    assert a.generator_url == ""
    assert "generatorURL" not in alert_payload(AlertRecord(a, T0), T0, AlertingConfig())


@pytest.mark.parametrize(
    ("value", "text"),
    [(91.2, "91.2"), (64.0, "64.0"), (0.5, "0.5"), (0.0042, "0.0042"), (0.0, "0.0"),
     (1.25e9, "1.25e+09"), (float("nan"), "nan")],
)  # fmt: skip
def test_number_format(value: float, text: str) -> None:
    assert fmt_number(value) == text


def test_contributor_text() -> None:
    assert str(Contributor("gpu_temp_celsius", 91.2, 64.0, 3.1)) == (
        "gpu_temp_celsius=91.2 (expected 64.0±3.1)"
    )
    assert (
        str(Contributor("gpu_temp_celsius", 91.2, 64.0)) == "gpu_temp_celsius=91.2 (expected 64.0)"
    )
    assert str(Contributor("gpu_temp_celsius", 91.2)) == "gpu_temp_celsius=91.2"


@pytest.mark.parametrize(
    ("kw", "problem"),
    [
        ({"alertmanagers": ("ftp://x",)}, "http"),
        ({"alertmanagers": ("http://a:1", "http://a:1")}, "twice"),
        ({"ends_at_factor": 1.0}, "ends_at_factor"),
        ({"resend_interval": 0}, "resend_interval"),
        ({"queue_max": 0}, "queue_max"),
        ({"bearer_token": "t", "basic_auth_username": "u"}, "not both"),
        ({"tls_cert_file": Path("c.pem")}, "together"),
        ({"runbook_url": "https://x/{alertname"}, "runbook_url"),
    ],
)
def test_config_is_validated(kw: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AlertingConfig(**kw)


def test_config_error_does_not_show_password() -> None:
    with pytest.raises(ValueError) as e:
        AlertingConfig(alertmanagers=("ftp://u:s3cret@host",))
    assert "s3cret" not in str(e.value) and "u:" not in str(e.value)
    assert "ftp://host" in str(e.value)


def test_secrets_stay_out_of_the_config_repr() -> None:
    cfg = AlertingConfig(bearer_token="t0ken-value")
    assert "t0ken-value" not in repr(cfg)
    cfg = AlertingConfig(basic_auth_username="u", basic_auth_password="pa55word")
    assert "pa55word" not in repr(cfg) and "basic_auth_username='u'" in repr(cfg)


@pytest.mark.parametrize(
    ("key", "flag"),
    [
        ("alerting.bearer_token", "--alerting-bearer-token"),
        ("alerting.basic_auth.password", "--alerting-basic-auth-password"),
    ],
)
def test_secret_flags_are_refused_but_env_and_file_work(key: str, flag: str) -> None:
    parser = argparse.ArgumentParser()
    st.add_arguments(parser, ALERTING_SETTINGS)
    env_name = "DCWATCH_" + key.replace(".", "_").upper()
    assert env_name in " ".join(parser.format_help().split())  # help says where it may come from
    with pytest.raises(st.ConfigError) as e:
        st.resolve(ALERTING_SETTINGS, parser.parse_args([flag, "s3cret"]), env={})
    msg = str(e.value)
    assert "\n" not in msg and "s3cret" not in msg
    assert msg.startswith(f"flag {flag}: refused")
    assert f"{flag}-file PATH" in msg and env_name in msg
    # the same value from the environment, or its _file variant as a flag, is accepted
    values, _ = st.resolve(ALERTING_SETTINGS, parser.parse_args([]), env={env_name: "from-env"})
    assert values[key] == "from-env"
    values, _ = st.resolve(ALERTING_SETTINGS, parser.parse_args([f"{flag}-file", "/s"]), env={})
    assert values[key + "_file"] == Path("/s")


def test_alert_log_path_defaults_only_without_alertmanager(tmp_path: Path) -> None:
    assert AlertingConfig(state_dir=tmp_path).alert_log_path == tmp_path / "alerts.jsonl"
    assert (
        AlertingConfig(state_dir=tmp_path, alertmanagers=("http://a:9093",)).alert_log_path is None
    )
    explicit = AlertingConfig(alertmanagers=("http://a:9093",), alert_log=tmp_path / "x.jsonl")
    assert explicit.alert_log_path == tmp_path / "x.jsonl"


def test_yaml_section_through_the_settings_table(tmp_path: Path) -> None:
    f = tmp_path / "analyzer.yml"
    f.write_text(
        """
alerting:
  alertmanagers: [http://am1:9093, http://am2:9093/prefix]
  resend_interval: 30s
  timeout: 5
  basic_auth:
    username: dcwatch
    password_file: /etc/dcwatch/am-password
  tls:
    ca_file: /etc/ssl/am-ca.pem
  external_url: http://analyzer:9479
  runbook_url: https://wiki/runbooks/{alertname}
"""
    )
    values, _ = st.resolve(
        ALERTING_SETTINGS, None, env={"DCWATCH_ALERTING_QUEUE_MAX": "50"}, file=f
    )
    cfg = alerting_config_from(values, tmp_path)
    assert cfg.alertmanagers == ("http://am1:9093", "http://am2:9093/prefix")
    assert (cfg.resend_interval, cfg.timeout, cfg.queue_max) == (30.0, 5.0, 50)
    assert cfg.basic_auth_username == "dcwatch"
    assert cfg.basic_auth_password_file == Path("/etc/dcwatch/am-password")
    assert cfg.tls_ca_file == Path("/etc/ssl/am-ca.pem")
    assert cfg.state_dir == tmp_path and cfg.ends_at_factor == 4.0
    assert alerting_config_from({}, tmp_path) == AlertingConfig(state_dir=tmp_path)


def test_alert_log_appends_one_object_per_line_and_skips_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "alerts.jsonl"
    log = AlertLog(path)
    rec = AlertRecord(gpu_alert(), starts_at=T0)
    log.write(log_entry(rec, T0, CFG))
    rec.resolved_at = T0 + 60
    log.write(log_entry(rec, T0 + 60, CFG))
    with path.open("a") as f:
        f.write('{"torn": ')
    entries = list(read_alert_log(path))
    assert [e["status"] for e in entries] == ["firing", "resolved"]
    assert entries[1]["startsAt"] == rfc3339(T0) and entries[1]["endsAt"] == rfc3339(T0 + 60)
    assert entries[0]["labels"]["gpu"] == "3" and entries[0]["key"] == rec.key
    assert "description" in entries[0]["annotations"]
    assert list(read_alert_log(tmp_path / "missing.jsonl")) == []
