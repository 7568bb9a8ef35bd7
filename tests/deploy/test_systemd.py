"""The systemd units, checked by systemd itself: ``systemd-analyze verify`` in a scratch root (so
ExecStart's binary can exist and no host state leaks in), ``systemd-analyze security --offline``
for the hardening, ``systemd-sysusers`` for the user; the default configs and the env-file
examples are parsed by the real config loaders."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dcwatch.agent.config import load_agent_config
from dcwatch.detectors.config import load_analyzer_config
from tests.helpers import find_binary

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
CONFIG = REPO / "deploy" / "config"
UNITS = ("dcwatch-agent.service", "dcwatch-analyzer.service", "dcwatch-analyzer@.service")
SHARD = "dcwatch-analyzer@2.service"  # the template, as systemd runs it for shard 2
DROPIN = SYSTEMD / "dcwatch-agent.service.d" / "rapl-ipmi.conf"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # sysinit.target & co., which verify resolves


def _tool(name: str) -> str:
    exe = find_binary(name)
    if exe is None or not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{name} missing: install Debian's systemd package (scripts/setup.sh)")
    return exe


def _root(tmp_path: Path, *, extra: dict[str, str] | None = None) -> Path:
    """A scratch root holding the units as installed: /etc/systemd/system, the drop-in, the
    binary ExecStart names, and a copy of the distribution's units for the dependencies."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, etc / unit)
    (etc / "dcwatch-agent.service.d").mkdir()
    shutil.copy(DROPIN, etc / "dcwatch-agent.service.d" / DROPIN.name)
    for rel, text in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for unit in UNITS:
        exe = Path(directives(SYSTEMD / unit)["ExecStart"][0].split()[0])
        target = root / exe.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return root


def directives(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (every occurrence, in order; sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify(root: Path, *units: str) -> str:
    exe = _tool("systemd-analyze")
    p = subprocess.run(
        [exe, "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return (p.stdout + p.stderr).strip()


def test_units_and_dropin_verify_without_a_single_warning(tmp_path: Path) -> None:
    # verify reports unknown keys and bad values as warnings with exit 0: any output fails.
    assert verify(_root(tmp_path), *UNITS[:2], SHARD) == ""


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        (
            "etc/systemd/system/dcwatch-agent.service.d/typo.conf",
            "[Service]\nProtectSytem=strict\n",
            "Unknown key",
        ),
        (
            "etc/systemd/system/dcwatch-analyzer.service.d/bad.conf",
            "[Service]\nWatchdogSec=soon\n",
            "Failed to parse",
        ),
    ],
)
def test_verify_catches_a_real_mistake(tmp_path: Path, rel: str, text: str, expected: str) -> None:
    """The check above is meaningful: the same run reports a misspelt directive or a bad value."""
    assert expected in verify(_root(tmp_path, extra={rel: text}), *UNITS[:2], SHARD)


@pytest.mark.parametrize(("unit", "threshold"), [(UNITS[0], 2.5), (UNITS[1], 2.5), (SHARD, 2.5)])
def test_exposure_level_is_low(tmp_path: Path, unit: str, threshold: float) -> None:
    root = _root(tmp_path)
    shutil.rmtree(root / "etc/systemd/system/dcwatch-agent.service.d")  # the base unit alone
    p = subprocess.run(
        [
            _tool("systemd-analyze"),
            "security",
            "--offline=yes",
            f"--root={root}",
            "--no-pager",
            unit,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= threshold, p.stdout


def test_hardening_and_notify_settings() -> None:
    for unit in UNITS[:2]:
        d = directives(SYSTEMD / unit)
        one = {k: v[-1] for k, v in d.items()}
        assert one["Type"] == "notify" and one["NotifyAccess"] == "main", unit
        assert one["WatchdogSec"].endswith("s") and one["Restart"] == "on-failure", unit
        assert one["User"] == one["Group"] == "dcwatch", unit
        assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict", unit
        assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == "", unit
        assert one["EnvironmentFile"] == f"-/etc/default/{unit.removesuffix('.service')}"
        cmd = one["ExecStart"].split()
        assert cmd[1] == unit.removesuffix(".service").removeprefix("dcwatch-")
        assert cmd[2:] == ["--config", f"/etc/dcwatch/{cmd[1]}.yaml"]
        assert (CONFIG / f"{cmd[1]}.yaml").is_file()
        assert (SYSTEMD / f"{unit.removesuffix('.service')}.env").is_file()
    agent = directives(SYSTEMD / UNITS[0])
    assert agent["DevicePolicy"] == ["closed"]
    assert "/dev/nvidiactl rw" in agent["DeviceAllow"]
    assert any(a.startswith("char-nvidia") for a in agent["DeviceAllow"])
    assert directives(SYSTEMD / UNITS[1])["StateDirectory"] == ["dcwatch"]
    # The drop-in adds exactly the two capabilities its comment justifies, and nothing else.
    drop = directives(DROPIN)
    assert drop["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE"]
    assert drop["AmbientCapabilities"] == drop["CapabilityBoundingSet"]


def test_the_shard_template_is_the_analyzer_unit_plus_its_shard(tmp_path: Path) -> None:
    plain, shard = directives(SYSTEMD / UNITS[1]), directives(SYSTEMD / UNITS[2])
    added = {"Environment", "EnvironmentFile", "ExecStart", "StateDirectory", "Description"}
    assert {k: v for k, v in shard.items() if k not in added} == {
        k: v for k, v in plain.items() if k not in added
    }  # the same hardening, watchdog and limits
    assert shard["Environment"] == ["DCWATCH_SHARD_INDEX=%i"]
    assert shard["EnvironmentFile"] == [
        "-/etc/default/dcwatch-analyzer",
        "-/etc/default/dcwatch-analyzer@%i",
    ]
    assert shard["StateDirectory"] == ["dcwatch/analyzer-%i"]
    cmd = shard["ExecStart"][0].split()
    # what systemd runs for shard 2 of 3 (the count from /etc/default/dcwatch-analyzer)
    argv = [a.replace("%i", "2") for a in cmd[2:]]
    assert argv[-2:] == ["--state-dir", "/var/lib/dcwatch/analyzer-2"]
    argv[argv.index("--config") + 1] = str(CONFIG / "analyzer.yaml")
    argv[-1] = str(tmp_path / "analyzer-2")
    env = {"DCWATCH_SHARD_INDEX": "2", "DCWATCH_SHARD_COUNT": "3"}
    cfg = load_analyzer_config(argv, env)
    assert (cfg.shard.index, cfg.shard.count) == (2, 3) and cfg.embedded.shard == cfg.shard


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    p = subprocess.run(
        [_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSTEMD / "dcwatch.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    user = (tmp_path / "etc/passwd").read_text().split(":")
    assert user[0] == "dcwatch" and user[-1].strip().endswith("nologin")


def test_default_configs_load_with_the_real_parsers() -> None:
    agent = load_agent_config(["--config", str(CONFIG / "agent.yaml")], {})
    assert agent.listen == ("0.0.0.0", 9478)
    analyzer = load_analyzer_config(["--config", str(CONFIG / "analyzer.yaml")], {})
    assert analyzer.listen == ("0.0.0.0", 9479) and analyzer.mode == "embedded"
    assert analyzer.embedded.targets_file == Path("/etc/dcwatch/targets.yaml")
    assert (CONFIG / "targets.yaml").is_file()


@pytest.mark.parametrize("name", ["agent", "analyzer"])
def test_env_file_examples_are_valid_settings(name: str) -> None:
    """Every commented example in the env file is accepted by the real loader."""
    text = (SYSTEMD / f"dcwatch-{name}.env").read_text()
    examples = re.findall(r"^#\s*(DCWATCH_[A-Z_]+)=(\S+)$", text, re.M)
    assert examples
    for var, value in examples:
        env = {var: value}
        if name == "agent":
            load_agent_config([], env)
        else:
            load_analyzer_config(["--config", str(CONFIG / "analyzer.yaml")], env)
