"""deploy/kubernetes/, validated offline: core objects against the Kubernetes JSON schemas of the
PyPI package kubernetes-validate (strict: unknown fields fail), the Prometheus Operator's
ServiceMonitor and PrometheusRule against their CRD schemas (tests/deploy/schemas/, strict), the
kustomization rendered by ``kubectl kustomize`` where kubectl is installed, and the policies the
issue asks for (no GPU request, non-root, read-only host mounts, persistent analyzer state)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dcwatch.detectors.config import load_analyzer_config
from dcwatch.exporters.workload import WorkloadOptions
from tests.deploy.metric_names import RULES_DIR

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
KUBE_VERSION = "1.30.0"
CRD_SCHEMAS = Path(__file__).parent / "schemas" / "monitoring.coreos.com-v1.json"
PROMETHEUS_RULE = K8S / "prometheusrule.yaml"
NOT_RESOURCES = {"kustomization.yaml", "analyzer-config.yaml"}

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (dev extra)"
)


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def documents(paths: list[str] | None = None) -> list[dict[str, Any]]:
    """Every object of the kustomization's resources, in order."""
    files = paths if paths is not None else kustomization()["resources"]
    return [d for f in files for d in yaml.safe_load_all((K8S / f).read_text()) if d]


def by_kind(kind: str, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [d for d in (documents() if docs is None else docs) if d["kind"] == kind]


def strict(schema: Any) -> Any:
    """``additionalProperties: false`` on every object schema that declares its properties."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("properties") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_errors(doc: dict[str, Any]) -> list[str]:
    schema = strict(json.loads(CRD_SCHEMAS.read_text())[doc["kind"]])
    v = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def expected_prometheus_rule() -> dict[str, Any]:
    groups = [
        g for p in sorted(RULES_DIR.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "dcwatch",
            "namespace": "dcwatch",
            "labels": {"app.kubernetes.io/name": "dcwatch", "app.kubernetes.io/part-of": "dcwatch"},
        },
        "spec": {"groups": groups},
    }


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - NOT_RESOURCES
    assert listed == present
    gen = kustomization()["configMapGenerator"][0]["files"]
    assert all((K8S / f.split("=", 1)[1]).is_file() for f in gen)


def test_core_objects_validate_against_kubernetes_schemas() -> None:
    core = [d for d in documents() if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in core} >= {
        "DaemonSet",
        "Deployment",
        "Service",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "Namespace",
    }
    for doc in core:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_schema_validation_bites() -> None:
    """A misspelt field or a wrong type is rejected, for core objects and for the CRDs."""
    ds = copy.deepcopy(by_kind("DaemonSet")[0])
    ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBE_VERSION, strict=True)
    sm = copy.deepcopy(by_kind("ServiceMonitor")[0])
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    assert crd_errors(sm)
    rule = copy.deepcopy(by_kind("PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["for"] = "three minutes"
    assert crd_errors(rule)


def test_operator_objects_validate_against_their_crd_schemas() -> None:
    docs = [d for d in documents() if d["apiVersion"] == "monitoring.coreos.com/v1"]
    assert {d["kind"] for d in docs} == {"ServiceMonitor", "PrometheusRule"}
    for doc in docs:
        assert crd_errors(doc) == [], doc["metadata"]["name"]


def test_prometheus_rule_carries_the_rule_files(update_golden: bool) -> None:
    """prometheusrule.yaml is deploy/prometheus/rules/*.yml wrapped for the Operator;
    ``pytest --update-golden`` rewrites it after a rule changes."""
    expected = expected_prometheus_rule()
    if update_golden:
        header = (
            "# Generated from deploy/prometheus/rules/*.yml by\n"
            "#   pytest tests/deploy/test_kubernetes.py --update-golden\n"
            "# Edit the rule files, not this file.\n"
        )
        text = yaml.safe_dump(expected, sort_keys=False, width=100, allow_unicode=True)
        PROMETHEUS_RULE.write_text(header + text)
    assert yaml.safe_load(PROMETHEUS_RULE.read_text()) == expected, "run with --update-golden"


def test_agent_daemonset_policy() -> None:
    ds = by_kind("DaemonSet")[0]
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # NVML through the NVIDIA runtime, never by taking a GPU from the workloads.
    assert pod["runtimeClassName"] == "nvidia"
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in c["env"]
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    pod_resources = "/var/lib/kubelet/pod-resources"
    assert host == {"sys": "/sys", "proc": "/proc", "pod-resources": pod_resources}
    assert all(m["readOnly"] for m in c["volumeMounts"])
    # The kubelet's socket where the workload collector looks by default.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["pod-resources"] == pod_resources
    assert str(WorkloadOptions().pod_resources_socket).startswith(pod_resources + "/")
    # GPU nodes only, by GPU feature discovery's label.
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}
    ]
    assert any(
        t.get("effect") == "NoSchedule" and t["operator"] == "Exists" for t in pod["tolerations"]
    )
    assert pod["priorityClassName"]
    # From the benchmark (~40 MiB RSS, a few ms CPU per scrape): small requests, bounded limits.
    res = c["resources"]
    assert res["requests"]["memory"] == "64Mi" and res["limits"]["memory"] == "160Mi"
    assert "--sysfs=/host/sys" in c["args"] and "--procfs=/host/proc" in c["args"]


def test_analyzer_keeps_its_state_on_a_volume_and_its_config_loads(tmp_path: Path) -> None:
    dep = by_kind("Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    pvc = by_kind("PersistentVolumeClaim")[0]["metadata"]["name"]
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc
    # The mounted config file is the generated ConfigMap's, and the real loader accepts it.
    config_path = Path(mounts["config"]) / volumes["config"]["configMap"]["items"][0]["path"]
    assert c["args"] == ["analyzer", f"--config={config_path}"]
    cfg = load_analyzer_config(["--config", str(K8S / "analyzer-config.yaml")], {})
    assert str(cfg.state_dir) == mounts["state"]
    assert cfg.mode == "prometheus" and cfg.alerting.alertmanagers
    assert cfg.listen[1] == c["ports"][0]["containerPort"]


def test_servicemonitors_select_the_services() -> None:
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for sm in by_kind("ServiceMonitor"):
        want = sm["spec"]["selector"]["matchLabels"]
        hits = [s for s in services.values() if want.items() <= s["metadata"]["labels"].items()]
        assert len(hits) == 1, sm["metadata"]["name"]
        ports = {p["name"] for p in hits[0]["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= ports
        # job label = the Service's app.kubernetes.io/name, the job names the rules use.
        assert hits[0]["metadata"]["labels"][sm["spec"]["jobLabel"]] in (
            "dcwatch-agent",
            "dcwatch-analyzer",
        )
    analyzer = next(
        s for s in by_kind("ServiceMonitor") if s["metadata"]["name"] == "dcwatch-analyzer"
    )
    assert analyzer["spec"]["endpoints"][0]["honorLabels"] is True


def test_kubectl_kustomize_renders(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl missing (Debian kubernetes-client): rendering not checked")
    p = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    assert all(
        d["metadata"].get("namespace") == "dcwatch" for d in docs if d["kind"] != "Namespace"
    )
    (cm,) = by_kind("ConfigMap", docs)
    assert cm["metadata"]["name"].startswith("dcwatch-analyzer-config-")  # content hash
    dep = by_kind("Deployment", docs)[0]["spec"]["template"]["spec"]
    assert (
        next(v for v in dep["volumes"] if v["name"] == "config")["configMap"]["name"]
        == (cm["metadata"]["name"])
    )
    (tmp_path / "analyzer.yaml").write_text(cm["data"]["analyzer.yaml"])
    load_analyzer_config(["--config", str(tmp_path / "analyzer.yaml")], {})
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            assert crd_errors(d) == []
        else:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)


def render(tmp_path: Path, kustomization: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay in ``tmp_path``; ``$BASE`` is deploy/kubernetes."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl missing (Debian kubernetes-client): rendering not checked")
    base = os.path.relpath(K8S, tmp_path)  # kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(kustomization.replace("$BASE", base))
    p = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            assert crd_errors(d) == []
        else:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
    return docs


def agent_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = by_kind("DaemonSet", docs)
    return ds["spec"]["template"]["spec"]


def test_components_render_and_do_what_they_say(tmp_path: Path) -> None:
    components = sorted(p.name for p in (K8S / "components").iterdir())
    assert components == [
        "analyzer-shards",
        "kernel-log-xids",
        "kube-prometheus-stack",
        "non-gpu-nodes",
        "pod-attribution-as-root",
    ]
    docs = render(
        tmp_path,
        "resources: [$BASE]\ncomponents:\n"
        + "".join(f"  - $BASE/components/{c}\n" for c in components),
    )
    pod = agent_pod(docs)
    # non-gpu-nodes: every node, no NVIDIA runtime class
    assert "runtimeClassName" not in pod and "affinity" not in pod
    # kube-prometheus-stack: its Prometheus selects by `release`
    for d in by_kind("ServiceMonitor", docs) + by_kind("PrometheusRule", docs):
        assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # pod-attribution-as-root: uid 0 for the root-only socket, nothing else loosened
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is False
    (c,) = pod["containers"]
    # ... but for kernel-log-xids' one capability
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYSLOG"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # the base is untouched by the components' existence
    base = agent_pod(documents())
    assert base["runtimeClassName"] == "nvidia" and base["securityContext"]["runAsUser"] == 10001
    assert "release" not in by_kind("ServiceMonitor")[0]["metadata"]["labels"]


def test_analyzer_shards_component_runs_ha_pairs_of_every_shard(tmp_path: Path) -> None:
    docs = render(tmp_path, "resources: [$BASE]\ncomponents: [$BASE/components/analyzer-shards]\n")
    assert by_kind("Deployment", docs) == [] and by_kind("PersistentVolumeClaim", docs) == []
    sets = by_kind("StatefulSet", docs)
    assert sorted(s["metadata"]["name"] for s in sets) == [
        "dcwatch-analyzer-a",
        "dcwatch-analyzer-b",
    ]
    (service,) = [
        s for s in by_kind("Service", docs) if s["metadata"]["name"] == "dcwatch-analyzer"
    ]
    (cm,) = by_kind("ConfigMap", docs)
    for sts in sets:
        pod = sts["spec"]["template"]
        # the base's Service (and so its ServiceMonitor) selects every analyzer pod
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        (c,) = pod["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        # as many pods as shards; pod k is shard k, from its pod-index label
        assert env["DCWATCH_SHARD_COUNT"]["value"] == str(sts["spec"]["replicas"])
        field = env["DCWATCH_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
        # each pod its own state volume; the generated config, whose name carries its hash
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert {"name": "state", "mountPath": "/var/lib/dcwatch"} in c["volumeMounts"]
        assert claim["metadata"]["name"] == "state"
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert vols["config"]["configMap"]["name"] == cm["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # what the pods run: the base's config, shard by shard, loads
    (tmp_path / "analyzer.yaml").write_text(cm["data"]["analyzer.yaml"])
    for k in range(sets[0]["spec"]["replicas"]):
        env_k = {
            "DCWATCH_SHARD_INDEX": str(k),
            "DCWATCH_SHARD_COUNT": str(sets[0]["spec"]["replicas"]),
        }
        cfg = load_analyzer_config(
            ["--config", str(tmp_path / "analyzer.yaml"), "--state-dir", str(tmp_path)], env_k
        )
        assert cfg.prometheus is not None and cfg.prometheus.shard.index == k


REQUIRED = (
    "/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"
)


def test_overlay_can_choose_the_gpu_node_label_and_release(tmp_path: Path) -> None:
    """What README documents: another node label, another kube-prometheus-stack release."""
    docs = render(
        tmp_path,
        """resources: [$BASE]
patches:
  - target: {kind: DaemonSet, name: dcwatch-agent}
    patch: |-
      - op: replace
        path: $REQUIRED/nodeSelectorTerms/0/matchExpressions/0
        value: {key: accelerator, operator: In, values: [nvidia]}
  - target: {group: monitoring.coreos.com, kind: ServiceMonitor}
    patch: |-
      - op: add
        path: /metadata/labels/release
        value: monitoring
""".replace("$REQUIRED", REQUIRED),
    )
    terms = agent_pod(docs)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "accelerator"
    assert {d["metadata"]["labels"]["release"] for d in by_kind("ServiceMonitor", docs)} == {
        "monitoring"
    }


def test_kernel_log_xids_component_mounts_kmsg_read_only_with_syslog_alone(tmp_path: Path) -> None:
    docs = render(tmp_path, "resources: [$BASE]\ncomponents: [$BASE/components/kernel-log-xids]\n")
    pod = agent_pod(docs)
    (c,) = pod["containers"]
    # CAP_SYSLOG (dmesg_restrict=1) and nothing else; the rest of the hardening as in the base
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYSLOG"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "privileged" not in c["securityContext"]
    assert pod["securityContext"] == agent_pod(documents())["securityContext"]
    # the host's kernel log, a character device, read-only where the agent reads by default
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kmsg"]["hostPath"] == {"path": "/dev/kmsg", "type": "CharDevice"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["kmsg"] == {"name": "kmsg", "mountPath": "/dev/kmsg", "readOnly": True}
    assert all(m["readOnly"] for m in c["volumeMounts"])
    from dcwatch.exporters.gpu.collector import GpuOptions

    assert GpuOptions().kmsg_path == mounts["kmsg"]["mountPath"]
    # the base's other mounts are kept
    assert {"sys", "proc", "pod-resources"} <= set(mounts)
