"""The one table of collectors. ``@register`` adds a class; flags derive from the table."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from exporters.base import Collector

# Modules imported to fill the table, in scrape/output order.
COLLECTOR_MODULES = (
    "exporters.gpu",
    "exporters.power",
    "exporters.thermal",
    "exporters.network",
    "exporters.selfmon",
)


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[Collector]
    default: bool
    description: str


_TABLE: dict[str, Entry] = {}
C = TypeVar("C", bound="type[Collector]")


def register(name: str, *, default: bool = True, description: str = "") -> Callable[[C], C]:
    """Class decorator: make a collector available as ``name``."""

    def deco(cls: C) -> C:
        cls.name = name
        _TABLE[name] = Entry(name, cls, default, description or (cls.__doc__ or "").split("\n")[0])
        return cls

    return deco


def _load() -> dict[str, Entry]:
    for mod in COLLECTOR_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real import error inside the module, not a missing module
                raise
    return _TABLE


def entries() -> list[Entry]:
    return list(_load().values())


def names() -> list[str]:
    return list(_load())


def default_names() -> list[str]:
    return [e.name for e in _load().values() if e.default]


def get(name: str) -> Entry:
    return _load()[name]
