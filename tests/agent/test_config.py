"""Configuration: precedence (flag > env > file > default) and errors that name key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dcwatch.agent.config import DEFAULT_PORT, load_agent_config
from dcwatch.settings import ConfigError
from dcwatch.webconfig import load_web_config


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults() -> None:
    c = load_agent_config([], env={})
    assert c.listen == ("0.0.0.0", DEFAULT_PORT)
    assert DEFAULT_PORT not in (9100, 9400, 9835)
    assert c.sysfs == Path("/sys") and c.procfs == Path("/proc")
    assert "network" in c.collectors and "self" in c.collectors
    assert not c.options["gpu"].processes and not c.options["power"].ipmi


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "listen: 127.0.0.1:1111\nsysfs: /file/sys\nprocfs: /file/proc\n"
        "log_level: debug\nnetwork:\n  device_exclude: '^lo$'\n",
    )
    env = {"DCWATCH_SYSFS": "/env/sys", "DCWATCH_LISTEN": "127.0.0.1:2222"}
    c = load_agent_config(["--config", str(f), "--listen", ":3333"], env=env)
    assert c.listen == ("0.0.0.0", 3333)  # flag
    assert c.sysfs == Path("/env/sys")  # env beats file
    assert c.procfs == Path("/file/proc")  # file beats default
    assert c.log_level == "debug"
    assert c.options["network"].device_exclude == "^lo$"


def test_config_file_from_env(tmp_path: Path) -> None:
    f = write(tmp_path, "gpu:\n  processes: true\n")
    c = load_agent_config([], env={"DCWATCH_CONFIG": str(f)})
    assert c.options["gpu"].processes is True


def test_collector_selection() -> None:
    c = load_agent_config(["--collectors", "network,self", "--no-collector", "self"], env={})
    assert c.collectors == ("network",)
    c = load_agent_config([], env={"DCWATCH_NO_COLLECTORS": "network"})
    assert "network" not in c.collectors


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("listen: nonsense\n", "key 'listen'"),
        ("network:\n  device_exclude: '(['\n", "key 'network.device_exclude'"),
        ("gpu:\n  processes: maybe\n", "key 'gpu.processes'"),
        ("collector_timeout: -1\n", "key 'collector_timeout'"),
        ("no_such_key: 1\n", "unknown key 'no_such_key'"),
        ("collectors: [network, warp_drive]\n", "unknown collector 'warp_drive'"),
        ("listen: [\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_malformed_file_names_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_agent_config(["--config", str(f)], env={})
    assert needle in str(e.value)
    assert str(f) in str(e.value)


def test_bad_env_and_flag_are_named() -> None:
    with pytest.raises(ConfigError, match="environment variable DCWATCH_COLLECTOR_TIMEOUT"):
        load_agent_config([], env={"DCWATCH_COLLECTOR_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="flag --log-level"):
        load_agent_config(["--log-level", "loud"], env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_agent_config(["--config", str(tmp_path / "nope.yaml")], env={})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("basic_auth_users:\n  bob: plaintext\n", "basic_auth_users.bob"),
        ("tls_server_config:\n  key_file: k.pem\n", "tls_server_config.cert_file"),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS99\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.pem\n",
            "tls_server_config",
        ),
        ("basic_auth: {}\n", "unknown key"),
    ],
)
def test_web_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    f = write(tmp_path, text, "web.yml")
    with pytest.raises(ConfigError) as e:
        load_web_config(f)
    assert needle in str(e.value) and str(f) in str(e.value)


def test_cli_exits_2_with_message_and_starts_nothing(tmp_path: Path) -> None:
    f = write(tmp_path, "network:\n  device_include: '*bad'\n")
    r = subprocess.run(
        [sys.executable, "-m", "dcwatch.cli", "agent", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "network.device_include" in r.stderr and str(f) in r.stderr
    assert "listening" not in r.stderr
