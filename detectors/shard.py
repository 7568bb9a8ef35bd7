"""Shards: which nodes one analyzer of ``count`` watches.

A node belongs to shard ``hashmod(instance, count)``, the hash Prometheus' ``hashmod``
relabelling uses (the low 64 bits of the MD5 of the value, modulo ``count``), so ``count``
analyzers with indexes ``0 .. count-1`` cover every node exactly once, a node stays on its shard
as long as ``count`` does, and a Prometheus can split its own scraping the same way. Two
analyzers with the same shard settings (an HA pair) watch the same nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' ``hashmod``: ``sum64(md5(value)) % modulus``."""
    digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; the default (0 of 1) is the whole fleet."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                "shard index must be in 0..count-1 and count >= 1, "
                f"got {self.index} of {self.count}"
            )

    @property
    def whole(self) -> bool:
        """True when this shard is the whole fleet (nothing to filter)."""
        return self.count == 1

    def owns(self, instance: str) -> bool:
        return self.whole or hashmod(instance, self.count) == self.index

    def select(self, instances: Iterable[str]) -> list[str]:
        """The instances of this shard, sorted."""
        return sorted(i for i in instances if self.owns(i))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
