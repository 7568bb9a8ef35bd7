"""The table of collectors, filled by the collectors themselves.

Every module (or package, e.g. ``gpu/``) in this folder other than ``base``, ``registry`` and
``sources`` is a collector: it decorates its class with :func:`register` and declares its options
beside it (``Collector.SETTINGS``). Adding a collector is adding one module, as in node_exporter;
nothing central is edited. Collector modules import only what they need to declare themselves:
hardware libraries (NVML through ctypes) are loaded when a collector is built, not when it is
registered, so a disabled collector costs the agent next to nothing.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from dcwatch.exporters.base import Collector

_NOT_COLLECTORS = frozenset({"base", "registry", "sources"})


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[Collector]
    default: bool
    description: str
    order: int


_TABLE: dict[str, Entry] = {}
C = TypeVar("C", bound="type[Collector]")


def register(
    name: str, *, default: bool = True, description: str = "", order: int = 100
) -> Callable[[C], C]:
    """Class decorator: put the collector in the table under ``name``.

    ``order`` places its families in the scrape output (lower first, then by name), so adding a
    collector never reorders the others' output.
    """

    def deco(cls: C) -> C:
        if name in _TABLE and _TABLE[name].cls is not cls:
            raise ValueError(f"collector {name!r} is registered twice")
        cls.name = name
        doc = description or (cls.__doc__ or "").split("\n")[0]
        _TABLE[name] = Entry(name, cls, default, doc, order)
        return cls

    return deco


_loaded = False


def _load() -> None:
    """Import every collector module of this package once (each registers itself)."""
    global _loaded
    if _loaded:
        return
    package = importlib.import_module(__name__.rpartition(".")[0])
    for mod in pkgutil.iter_modules(package.__path__):
        if mod.name not in _NOT_COLLECTORS and not mod.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{mod.name}")
    _loaded = True


def entries() -> list[Entry]:
    """Every collector's entry, in output order."""
    _load()
    return sorted(_TABLE.values(), key=lambda e: (e.order, e.name))


def names() -> list[str]:
    return [e.name for e in entries()]


def default_names() -> list[str]:
    return [e.name for e in entries() if e.default]


def get(name: str) -> Entry:
    _load()
    try:
        return _TABLE[name]
    except KeyError:
        raise KeyError(f"unknown collector {name!r} (known: {', '.join(names())})") from None
