"""Declarative settings: one table gives YAML keys, ``DCWATCH_*`` variables and CLI flags.

Precedence is flag > environment > file > default. Every value is converted and validated once;
a bad value raises :class:`ConfigError` naming the key and where it came from (file, variable
or flag), so nothing starts half-configured. Both ``dcwatch agent`` and ``dcwatch analyzer``
build their frozen config dataclasses from these tables.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcwatch import __version__
from dcwatch.durations import format_duration, parse_duration

ENV_PREFIX = "DCWATCH_"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or malformed."""


@dataclass(frozen=True)
class Setting:
    """One configuration key.

    ``key`` is dotted (``network.device_exclude``); the flag is ``--network-device-exclude``
    and the variable ``DCWATCH_NETWORK_DEVICE_EXCLUDE`` unless given explicitly.
    """

    key: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    flag: str | None = None
    is_bool: bool = False
    is_list: bool = False
    # How help writes the default; None: inferred from ``convert`` and the default's type.
    show: Callable[[Any], str] | None = None
    # A password or token: accepted from the environment and the file, refused as a flag (a
    # command line is readable by every user through ps and /proc/PID/cmdline).
    secret: bool = False

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.key.replace(".", "-").replace("_", "-")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def dest(self) -> str:
        return self.key.replace(".", "__")


# --- converters: each takes the raw value (str from env/flags, any YAML scalar) -------------


def to_str(v: Any) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return str(v)


def to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()):
        return int(v)
    raise ValueError(f"expected an integer, got {v!r}")


def to_positive_float(v: Any) -> float:
    """A duration > 0 in seconds: ``90``, ``1.5``, ``90s``, ``1h30m`` (:mod:`dcwatch.durations`)."""
    f = parse_duration(v)
    if f == 0:
        raise ValueError(f"expected a duration > 0, got {v!r}")
    return f


def to_nonneg_float(v: Any) -> float:
    """A duration >= 0 in seconds, in the same grammar as :func:`to_positive_float`."""
    return parse_duration(v)


def to_positive_number(v: Any) -> float:
    """A finite number > 0 without a unit (a factor, a rate, watts); also from ``"80e9"``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"expected a positive number, got {v!r}")
    try:
        f = float(v)
    except (ValueError, OverflowError):
        raise ValueError(f"expected a positive number, got {v!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"expected a finite number > 0, got {v!r}")
    return f


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {v!r}")


def to_regex(v: Any) -> str:
    s = to_str(v)
    try:
        re.compile(s)
    except re.error as e:
        raise ValueError(f"invalid regular expression {s!r}: {e}") from None
    return s


def to_optional_regex(v: Any) -> str | None:
    return None if v in (None, "") else to_regex(v)


def to_host_port(v: Any) -> tuple[str, int]:
    s = to_str(v).strip()
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d{1,5})", s)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 0.0.0.0:9478 or :9478), got {s!r}")
    return (m.group(1) or "0.0.0.0", int(m.group(2)))


def to_optional_path(v: Any) -> Path | None:
    return None if v in (None, "") else Path(to_str(v))


def to_path(v: Any) -> Path:
    return Path(to_str(v))


def to_str_list(v: Any) -> tuple[str, ...]:
    """A list from YAML, or a comma-separated string from env/flags."""
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(p.strip() for p in v.split(",") if p.strip())
    if isinstance(v, (list, tuple)):
        return tuple(p.strip() for x in v for p in to_str(x).split(",") if p.strip())
    raise ValueError(f"expected a list or a comma-separated string, got {type(v).__name__}")


def one_of(*choices: str) -> Callable[[Any], str]:
    def convert(v: Any) -> str:
        s = to_str(v).lower()
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return s

    return convert


# --- loading ------------------------------------------------------------------------------


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (also ``DCWATCH_CONFIG``) and ``--version``, common to every service."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"YAML config file (env {ENV_PREFIX}CONFIG)",
    )
    parser.add_argument(
        "--version", action="version", version=version_line(), help="print the version and exit"
    )


def version_line() -> str:
    """What every ``--version`` prints."""
    return f"dcwatch {__version__}"


def config_file(args: argparse.Namespace, env: Mapping[str, str]) -> Path | None:
    """The config file named by ``--config`` or, failing that, ``DCWATCH_CONFIG``."""
    named = args.config or env.get(ENV_PREFIX + "CONFIG")
    return Path(named) if named else None


def add_arguments(parser: argparse.ArgumentParser, table: Sequence[Setting]) -> None:
    """Add one flag per setting; unset flags stay ``None`` so lower layers show through.

    A secret's flag exists only to be refused with a pointer to the safe ways (see
    :func:`resolve`): without it, argparse would take ``--prometheus-password X`` as an
    abbreviation of ``--prometheus-password-file`` and read a file named after the password.
    """
    for s in table:
        if s.secret:
            parser.add_argument(
                s.flag_name,
                dest=s.dest,
                default=None,
                metavar="REFUSED",
                help=f"{s.help}: not accepted as a flag (visible in ps); {_secret_ways(s, table)}",
            )
        elif s.is_list:
            parser.add_argument(
                s.flag_name,
                dest=s.dest,
                action="append",
                default=None,
                metavar="NAME[,NAME]",
                help=f"{s.help} (repeatable; default {show_default(s)}; env {s.env_name})",
            )
        elif s.is_bool:
            parser.add_argument(
                s.flag_name,
                dest=s.dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{s.help} (default {show_default(s)}; env {s.env_name})",
            )
        else:
            parser.add_argument(
                s.flag_name,
                dest=s.dest,
                default=None,
                metavar=_metavar(s),
                help=f"{s.help} (default {show_default(s)}; env {s.env_name})",
            )


def _secret_ways(s: Setting, table: Sequence[Setting]) -> str:
    """Where a secret may come from instead of a flag."""
    ways = [f"env {s.env_name}", "the config file"]
    variant = next((t for t in table if t.key == s.key + "_file"), None)
    if variant is not None:
        ways.insert(0, f"{variant.flag_name} PATH")
    return "use " + ", ".join(ways[:-1]) + " or " + ways[-1]


def _is_duration(s: Setting) -> bool:
    return s.convert in (to_positive_float, to_nonneg_float)


def _metavar(s: Setting) -> str:
    if s.convert is to_host_port:
        return "HOST:PORT"
    if _is_duration(s):
        return "DURATION"
    if s.convert in (to_path, to_optional_path):
        return "PATH"
    return "VALUE"


def show_default(s: Setting) -> str:
    """The default as a user would type it: ``0.0.0.0:9478``, ``5s``, ``a,b``, ``none``."""
    return _show(s).replace("%", "%%")  # argparse %-formats help texts


def _show(s: Setting) -> str:
    v = s.default
    if s.show is not None:
        return s.show(v)
    if v is None or v == "" or v == ():
        return "none"
    if s.convert is to_host_port:
        host, port = v
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if _is_duration(s):
        return format_duration(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v))
    return str(v)


def read_yaml_file(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, raising :class:`ConfigError` that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    import yaml  # only when a file is given: an agent run from flags never loads it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())  # one line: the error quotes the file's own lines
        raise ConfigError(f"config file {path}: not valid YAML: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of keys")
    return data


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"network": {"device_exclude": x}}`` -> ``{"network.device_exclude": x}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}".replace("-", "_")
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve(
    table: Sequence[Setting],
    args: argparse.Namespace | None,
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
    extra_file_keys: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge default < file < env < flags; return (values by key, unconverted file sections).

    ``extra_file_keys`` are top-level YAML sections with their own structure (lists of rules or
    queries): they are returned raw in the second dict for the caller to parse.
    """
    env = os.environ if env is None else env
    if args is not None:
        for s in table:
            if s.secret and getattr(args, s.dest, None) is not None:
                raise ConfigError(
                    f"flag {s.flag_name}: refused, a secret on the command line is visible to "
                    f"every user (ps); {_secret_ways(s, table)}"
                )
    by_key = {s.key: s for s in table}
    values = {s.key: s.default for s in table}
    raw_sections: dict[str, Any] = {}
    if file is not None:
        data = read_yaml_file(file)
        for section in extra_file_keys:
            if section in data:
                raw_sections[section] = data.pop(section)
        for key, raw in flatten(data).items():
            if key not in by_key:
                known = ", ".join(sorted(by_key))
                raise ConfigError(f"config file {file}: unknown key {key!r} (known keys: {known})")
            values[key] = _convert(by_key[key], raw, f"config file {file}: key {key!r}")
    for s in table:
        if s.env_name in env:
            values[s.key] = _convert(s, env[s.env_name], f"environment variable {s.env_name}")
    if args is not None:
        for s in table:
            raw = getattr(args, s.dest, None)
            if raw is not None:
                values[s.key] = _convert(s, raw, f"flag {s.flag_name}")
    return values, raw_sections


def _convert(s: Setting, raw: Any, where: str) -> Any:
    try:
        return s.convert(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
