"""The ``dcwatch`` command: version everywhere, help that shows defaults as typed, light install."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dcwatch
from dcwatch import cli
from dcwatch import settings as st
from dcwatch.settings import Setting

VERSION_LINE = f"dcwatch {dcwatch.__version__}"


def run_main(argv: list[str]) -> int:
    """``cli.main`` as the console script sees it: argparse's exits become the exit code."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        assert isinstance(e.code, int) or e.code is None
        return e.code or 0


def test_version_is_one_source() -> None:
    assert VERSION_LINE == "dcwatch 0.1.0"
    assert st.version_line() == VERSION_LINE


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["version"],
        ["agent", "--version"],
        ["analyzer", "--version"],
        ["backtest", "--version"],
    ],
)
def test_version_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(argv) == 0
    out = capsys.readouterr()
    assert out.out.strip() == VERSION_LINE and out.err == ""


def test_every_service_parser_has_version(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="x")
    st.add_config_argument(parser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == VERSION_LINE


def test_python_m_dcwatch() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "dcwatch", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == VERSION_LINE


def test_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main([]) == 2
    assert "usage: dcwatch" in capsys.readouterr().out
    assert run_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def agent_help(capsys: pytest.CaptureFixture[str]) -> str:
    assert run_main(["agent", "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping


def test_agent_help_shows_defaults_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    text = agent_help(capsys)
    assert "default 0.0.0.0:9478;" in text
    assert "0.0.0.0,9478" not in text
    assert "default 5s;" in text  # collector_timeout
    assert "default 5.0" not in text
    assert "default /sys;" in text
    assert "--listen HOST:PORT" in text and "--collector-timeout DURATION" in text


@pytest.fixture
def no_analyzer_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name in ("numpy", "sklearn") else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("argv", [["analyzer"], ["analyzer", "--help"], ["backtest", "detect"]])
def test_analyzer_without_extra_says_what_to_install(
    argv: list[str], no_analyzer_extra: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1
    assert "pip install 'dcwatch[analyzer]'" in lines[0]
    assert "numpy" in lines[0] and "sklearn" in lines[0]


def test_analyzer_modules_match_the_extra() -> None:
    """The modules checked before the analyzer starts are the ``analyzer`` extra's packages."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["analyzer"]
    names = {_import_name(req) for req in extra}
    assert names == set(cli.ANALYZER_MODULES)
    assert cli.missing_analyzer_modules() == []  # the test environment has the extra


def _import_name(requirement: str) -> str:
    dist = requirement.split(">")[0].split("=")[0].split("[")[0].strip().lower()
    return {"scikit-learn": "sklearn"}.get(dist, dist)


# --- how defaults are shown --------------------------------------------------------------


def shown(convert: Any, default: Any, **kw: Any) -> str:
    return st.show_default(Setting("k", convert, default, "help", **kw))


@pytest.mark.parametrize(
    ("convert", "default", "text"),
    [
        (st.to_host_port, ("0.0.0.0", 9478), "0.0.0.0:9478"),
        (st.to_host_port, ("::", 9479), "[::]:9479"),
        (st.to_positive_float, 5.0, "5s"),
        (st.to_positive_float, 14 * 86400.0, "2w"),
        (st.to_nonneg_float, 90.0, "1m30s"),
        (st.to_nonneg_float, 0.5, "500ms"),
        (st.to_positive_number, 0.35, "0.35"),
        (st.to_str_list, ("a", "b"), "a,b"),
        (st.to_str_list, (), "none"),
        (st.to_path, Path("/var/lib/dcwatch"), "/var/lib/dcwatch"),
        (st.to_optional_path, None, "none"),
        (st.to_str, "", "none"),
        (st.to_bool, True, "true"),
        (st.to_bool, False, "false"),
        (st.to_int, 64, "64"),
    ],
)
def test_show_default(convert: Any, default: Any, text: str) -> None:
    assert shown(convert, default) == text


def test_show_default_per_setting_override() -> None:
    assert shown(lambda v: v, 300.0, show=lambda v: f"{v / 60:g} minutes") == "5 minutes"


def test_percent_in_a_default_survives_argparse() -> None:
    parser = argparse.ArgumentParser()
    st.add_arguments(parser, (Setting("threshold", st.to_str, "50%", "h"),))
    assert "default 50%;" in parser.format_help()


def test_shown_defaults_read_back() -> None:
    """What help shows is a value the setting accepts, giving the same default back."""
    table = (
        Setting("listen", st.to_host_port, ("::", 9479), "h"),
        Setting("timeout", st.to_positive_float, 3600.25, "h"),
        Setting("names", st.to_str_list, ("a", "b"), "h", is_list=True),
        Setting("on", st.to_bool, True, "h", is_bool=True),
    )
    for s in table:
        assert s.convert(st.show_default(s)) == s.default
