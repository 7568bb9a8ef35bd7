"""The light install, for real: build the wheel, install it without extras into a fresh venv, run.

``pip install dcwatch`` must give a working node agent without the analyzer's numerical stack,
and ``dcwatch analyzer`` must then say what to install instead of failing with a traceback. The
dependencies come from the package index (or the local wheel cache); where they cannot be had,
the test skips and says so. Takes about 10 s with a warm pip cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

import dcwatch
from dcwatch.cli import ANALYZER_MODULES, INSTALL_HINT
from tests.helpers import http_get, sample
from tests.procs import Proc

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpu-node-a"
# The folders pyproject.toml's package-dir maps into the one `dcwatch` namespace.
PACKAGE_DIRS = {"dcwatch": "dcwatch", "agent": "dcwatch/agent"}
PACKAGE_DIRS |= {"exporters": "dcwatch/exporters", "detectors": "dcwatch/detectors"}
AGENT_DEPENDENCIES = {"aiohttp", "prometheus-client", "psutil", "pyyaml", "bcrypt", "nvidia-ml-py"}
AGENT_MODULES = ("aiohttp", "prometheus_client", "psutil", "yaml", "bcrypt", "pynvml")
# What pip says when the index cannot be reached: then the test cannot run here, it did not fail.
OFFLINE_SIGNS = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
)


# Run away from the checkout: from its root, `python -m dcwatch` would import the source tree.
OUTSIDE_CHECKOUT: dict[str, Any] = {
    "cwd": Path(tempfile.gettempdir()),
    "env": {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def dcwatch(self) -> Path:
        return self.venv / "bin" / "dcwatch"


def _run(argv: list[str | Path], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a packaging step; skip when it failed for want of the network, fail otherwise."""
    r = subprocess.run(
        list(map(str, argv)), capture_output=True, text=True, timeout=timeout, **OUTSIDE_CHECKOUT
    )
    if r.returncode != 0:
        output = r.stdout + r.stderr
        if any(sign in output for sign in OFFLINE_SIGNS):
            pytest.skip(f"{what}: dependencies not reachable from here ({output.strip()[-300:]})")
        raise AssertionError(f"{what} failed with {r.returncode}:\n{output[-4000:]}")
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("install")
    # Build from a copy: an in-place build would write build/ and *.egg-info into the checkout,
    # and a stale build/lib there could slip old files into the wheel.
    src = tmp / "src"
    for folder in PACKAGE_DIRS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "-q", "-w", dist, src], "building the wheel", 300)
    (wheel,) = dist.glob("dcwatch-*.whl")
    venv = tmp / "venv"
    # No pip inside: the outer pip installs into it (--python), which saves seconds per run.
    _run([sys.executable, "-m", "venv", "--without-pip", venv], "creating the venv", 120)
    inst = Installed(wheel, venv)
    _run([*pip, "--python", inst.python, "install", "-q", wheel], "installing the wheel", 300)
    return inst


def test_wheel_is_one_namespace_with_every_file(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"dcwatch", f"dcwatch-{dcwatch.__version__}.dist-info"}
    for path in (
        "dcwatch/agent/app.py",
        "dcwatch/exporters/gpu/collector.py",
        "dcwatch/detectors/sources/default_queries.yaml",
        "dcwatch/__main__.py",
        "dcwatch/durations.py",
    ):
        assert path in names
    # Every module of the checkout is shipped: a subpackage left out of pyproject's list fails here.
    for folder, package in PACKAGE_DIRS.items():
        for py in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in py.parts:
                assert f"{package}/{py.relative_to(ROOT / folder).as_posix()}" in names


def test_wheel_requires_only_the_agent_dependencies(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    base, analyzer = set(), set()
    for req in meta.get_all("Requires-Dist") or []:
        name = req.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower()
        if ";" not in req:
            base.add(name)
        elif "'analyzer'" in req or '"analyzer"' in req:
            analyzer.add(name)
    assert base == AGENT_DEPENDENCIES
    assert {"numpy", "pandas", "scikit-learn", "scipy", "statsmodels"} <= analyzer


def test_light_install_has_no_numerical_stack(installed: Installed) -> None:
    code = (
        "import importlib.util, sys\n"
        "print(','.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None))"
    )
    r = _run([installed.python, "-c", code, *ANALYZER_MODULES], "probing imports", 60)
    assert r.stdout.strip() == ""
    r = _run([installed.python, "-c", code, *AGENT_MODULES], "probing imports", 60)
    assert r.stdout.strip().split(",") == list(AGENT_MODULES)
    r = _run([installed.python, "-c", "import dcwatch; print(dcwatch.__file__)"], "import", 60)
    assert Path(r.stdout.strip()).is_relative_to(installed.venv)  # not the checkout


def test_version_from_the_installed_command(installed: Installed) -> None:
    for argv in (["--version"], ["agent", "--version"], ["analyzer", "--version"]):
        r = _run([installed.dcwatch, *argv], "dcwatch --version", 60)
        assert r.stdout.strip() == f"dcwatch {dcwatch.__version__}"
    r = _run([installed.python, "-m", "dcwatch", "version"], "python -m dcwatch", 60)
    assert r.stdout.strip() == f"dcwatch {dcwatch.__version__}"


@pytest.mark.parametrize("command", ["analyzer", "backtest"])
def test_analyzer_asks_for_the_extra(installed: Installed, command: str) -> None:
    r = subprocess.run(
        [str(installed.dcwatch), command],
        capture_output=True,
        text=True,
        timeout=60,
        **OUTSIDE_CHECKOUT,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and INSTALL_HINT in lines[0], r.stderr


def test_installed_agent_serves_metrics(installed: Installed, tmp_path: Path) -> None:
    def argv(port: int) -> list[str]:
        return [
            str(installed.dcwatch),
            "agent",
            "--listen",
            f"127.0.0.1:{port}",
            "--sysfs",
            str(FIXTURE / "sys"),
            "--procfs",
            str(FIXTURE / "proc"),
        ]

    with Proc("agent", argv, tmp_path, ready_path="/metrics").start() as agent:
        text = http_get(agent.url + "/metrics").decode()
        assert sample(text, "dcwatch_scrape_collector_success", collector="network") == 1.0
        assert sample(text, "dcwatch_network_receive_bytes_total", device="eno1") is not None
        assert agent.popen is not None
        agent.stop()
        assert agent.popen.returncode == 0, agent.log_tail()
