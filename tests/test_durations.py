"""The one duration grammar: parsing, formatting, and its errors through the settings layer."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest

from dcwatch import settings as st
from dcwatch.detectors.sources.queries import QueryError, parse_duration, parse_selector
from dcwatch.durations import format_duration
from dcwatch.durations import parse_duration as core_parse
from dcwatch.settings import ConfigError, Setting

ACCEPTED: list[tuple[Any, float]] = [
    ("90", 90.0),
    ("1.5", 1.5),
    ("0", 0.0),
    (90, 90.0),
    (1.5, 1.5),
    ("90s", 90.0),
    ("1.5h", 5400.0),
    ("500ms", 0.5),
    ("1500ms", 1.5),
    ("3ms", 0.003),
    ("7d", 7 * 86400.0),
    ("2w", 14 * 86400.0),
    ("1y", 365 * 86400.0),  # PromQL windows may use years
    ("1h30m", 5400.0),
    ("1d12h", 129600.0),
    ("2m30s", 150.0),
    ("1m30.5s", 90.5),
    ("1h0m5s", 3605.0),
    (" 15s\n", 15.0),  # a variable with a trailing newline
]

REJECTED: list[Any] = [
    "",
    "  ",
    "-5",
    "-5s",
    -1,
    -0.5,
    "+5",
    "1h30",  # a bare number after a unit
    "h",
    "s5",
    "1.5.5h",
    ".5s",
    "1.5h30m",  # only the last part may have a fraction
    "30m1h",  # units must run largest first
    "1h1h",
    "1m1m",
    "2 m",
    "5S",
    "1e3",
    "5 seconds",
    "inf",
    "nan",
    float("inf"),
    float("-inf"),
    float("nan"),
    "9" * 400 + "s",  # overflows a float
    10**400,
    True,
    False,
    None,
    [5],
    {"s": 5},
]


@pytest.mark.parametrize(("raw", "seconds"), ACCEPTED)
def test_accepted(raw: Any, seconds: float) -> None:
    assert core_parse(raw) == seconds
    assert st.to_nonneg_float(raw) == seconds


@pytest.mark.parametrize("raw", REJECTED, ids=repr)
def test_rejected(raw: Any) -> None:
    with pytest.raises(ValueError):
        core_parse(raw)


def test_positive_refuses_zero_nonneg_takes_it() -> None:
    with pytest.raises(ValueError, match="> 0"):
        st.to_positive_float("0s")
    assert st.to_nonneg_float("0s") == 0.0


TABLE = (
    Setting("timeout", st.to_positive_float, 5.0, "seconds"),
    Setting("cache.interval", st.to_nonneg_float, 30.0, "seconds"),
)


@pytest.mark.parametrize(("raw", "seconds"), ACCEPTED[:-1])
def test_settings_accept_the_grammar_from_env(raw: Any, seconds: float) -> None:
    v, _ = st.resolve(TABLE, None, env={"DCWATCH_CACHE_INTERVAL": str(raw)})
    assert v["cache.interval"] == seconds


@pytest.mark.parametrize("raw", [r for r in REJECTED if isinstance(r, str)], ids=repr)
def test_bad_duration_from_env_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="environment variable DCWATCH_TIMEOUT"):
        st.resolve(TABLE, None, env={"DCWATCH_TIMEOUT": raw})


@pytest.mark.parametrize(
    "yaml_value",
    [".inf", "-.inf", ".nan", "-5", "true", "1h30", "'1.5.5h'", "[1, 2]", "''", "null"],
)
def test_bad_duration_in_file_names_key_and_file(tmp_path: Path, yaml_value: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"cache:\n  interval: {yaml_value}\ntimeout: 2s\n")
    with pytest.raises(ConfigError) as e:
        st.resolve(TABLE, None, env={}, file=f)
    assert "key 'cache.interval'" in str(e.value) and str(f) in str(e.value)


def test_yaml_numbers_and_units_from_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("timeout: 1.5\ncache:\n  interval: 1h30m\n")
    v, _ = st.resolve(TABLE, None, env={}, file=f)
    assert v == {"timeout": 1.5, "cache.interval": 5400.0}


def test_bad_duration_flag_is_named() -> None:
    parser = argparse.ArgumentParser()
    st.add_arguments(parser, TABLE)
    args = parser.parse_args(["--timeout", "inf"])
    with pytest.raises(ConfigError, match="flag --timeout"):
        st.resolve(TABLE, args, env={})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (5, "5s"),
        (5.0, "5s"),
        (90, "1m30s"),
        (60, "1m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "1d"),
        (129600, "1d12h"),
        (604800, "1w"),
        (14 * 86400, "2w"),
        (0.5, "500ms"),
        (0.001, "1ms"),
        (1.5, "1.5s"),
        (3600.25, "1h0.25s"),
        (0.0005, "0.0005s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert core_parse(text) == seconds


@pytest.mark.parametrize("seconds", [0.1 + 0.2, 1e-7, 1e20, 123456.789, 2.5e-4, 31536000.0])
def test_format_duration_reads_back_exactly(seconds: float) -> None:
    assert core_parse(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_format_duration_refuses_what_cannot_be_a_duration(bad: float) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)


def test_promql_windows_use_the_same_grammar() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("500ms") == 0.5
    assert parse_duration("1y") == 365 * 86400
    assert parse_duration("1.5h") == 5400  # the core grammar, not a copy of it
    for bad in ("2 m", "30m1h", "", "1h30"):
        with pytest.raises(QueryError):
            parse_duration(bad)
    sel = parse_selector('rate(dcwatch_network_receive_bytes_total{device="eth0"}[1m30s])')
    assert sel is not None and sel.window == 90.0
    assert parse_selector("rate(dcwatch_x_total[5q])") is None


@pytest.mark.parametrize(("raw", "value"), [(0.35, 0.35), ("4", 4.0), ("80e9", 80e9), (2, 2.0)])
def test_positive_number(raw: Any, value: float) -> None:
    assert st.to_positive_number(raw) == value


@pytest.mark.parametrize("raw", [0, -1, "5s", "inf", math.nan, math.inf, True, None, "x"])
def test_positive_number_rejects(raw: Any) -> None:
    with pytest.raises(ValueError):
        st.to_positive_number(raw)
