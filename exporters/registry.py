"""The one table of collectors: name → module, default on/off. ``@register`` binds the class.

Names and defaults are known without importing anything, so flags can be validated and a
disabled collector's module (and what it imports, e.g. ctypes/NVML) is never loaded: the agent
stays small.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from dcwatch.exporters.base import Collector

# name: (module, enabled by default), in scrape/output order.
COLLECTORS: dict[str, tuple[str, bool]] = {
    "gpu": ("dcwatch.exporters.gpu.collector", True),
    "power": ("dcwatch.exporters.power", True),
    "thermal": ("dcwatch.exporters.thermal", True),
    "network": ("dcwatch.exporters.network", True),
    "self": ("dcwatch.exporters.selfmon", True),
}


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[Collector]
    default: bool
    description: str


_TABLE: dict[str, Entry] = {}
C = TypeVar("C", bound="type[Collector]")


def register(name: str, *, default: bool = True, description: str = "") -> Callable[[C], C]:
    """Class decorator: bind ``name`` (declared in ``COLLECTORS``) to its collector class."""
    if name not in COLLECTORS:
        raise ValueError(
            f"collector {name!r} is not declared in dcwatch.exporters.registry.COLLECTORS"
        )
    if COLLECTORS[name][1] != default:
        raise ValueError(f"collector {name!r}: default={default} disagrees with COLLECTORS")

    def deco(cls: C) -> C:
        cls.name = name
        _TABLE[name] = Entry(name, cls, default, description or (cls.__doc__ or "").split("\n")[0])
        return cls

    return deco


def names() -> list[str]:
    return list(COLLECTORS)


def default_names() -> list[str]:
    return [n for n, (_, default) in COLLECTORS.items() if default]


def get(name: str) -> Entry:
    """The entry of one collector, importing only its module."""
    if name not in _TABLE:
        importlib.import_module(COLLECTORS[name][0])
    return _TABLE[name]


def entries() -> list[Entry]:
    """Every collector's entry (imports every collector module: for tests and docs)."""
    return [get(n) for n in COLLECTORS]
