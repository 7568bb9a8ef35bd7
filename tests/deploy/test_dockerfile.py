"""The Dockerfile, parsed by Docker's own parser (the PyPI package ``dockerfile`` wraps moby's
Go parser) and checked against the project: base image, what is copied, the console script,
the non-root user the Kubernetes manifests run as, the ports. The image is built nowhere here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dcwatch.agent.config import load_agent_config
from dcwatch.detectors.config import DEFAULT_PORT

dockerfile = pytest.importorskip("dockerfile", reason="pip install dockerfile (dev extra)")
tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11")

REPO = Path(__file__).resolve().parents[2]


def commands() -> list:  # list[dockerfile.Command]
    return list(dockerfile.parse_file(str(REPO / "Dockerfile")))


def first(cmd: str):  # -> dockerfile.Command
    return next(c for c in commands() if c.cmd == cmd)


def test_base_entrypoint_and_install() -> None:
    assert first("FROM").value == ("python:3.11-slim",)
    entry = first("ENTRYPOINT")
    assert entry.json and entry.value == ("dcwatch",)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dcwatch" in pyproject["project"]["scripts"]
    run = " ".join(c.value[0] for c in commands() if c.cmd == "RUN")
    # one image for both commands: the analyzer's extra is installed; pynvml is a base dependency
    assert "pip install '.[analyzer,kubernetes]'" in run  # kubernetes: pod attribution
    assert "analyzer" in pyproject["project"]["optional-dependencies"]
    assert any(d.startswith("nvidia-ml-py") for d in pyproject["project"]["dependencies"])


def test_copies_exactly_the_packages_and_dockerignore_lets_them_through() -> None:
    sources = [s for c in commands() if c.cmd == "COPY" for s in c.value[:-1]]
    for s in sources:
        assert (REPO / s).exists(), s
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(include["package-dir"].values())  # the folders mapped into dcwatch.*
    assert packages <= set(sources)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][0] == "*"  # deny everything, then allow what is copied
    allowed = {line.lstrip("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert set(sources) <= allowed


def test_runs_as_the_non_root_user_of_the_manifests() -> None:
    user = first("USER").value[0]
    uid = int(user.split(":")[0])
    assert uid != 0
    for name in ("agent-daemonset.yaml", "analyzer-deployment.yaml"):
        for doc in yaml.safe_load_all((REPO / "deploy/kubernetes" / name).read_text()):
            if doc and doc["kind"] in ("DaemonSet", "Deployment"):
                assert doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_exposes_the_default_ports() -> None:
    exposed = {int(p) for c in commands() if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {load_agent_config([], {}).listen[1], DEFAULT_PORT}
