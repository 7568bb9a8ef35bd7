"""The demo's simulated fleet: what each node's GPUs and NIC show at a simulated time.

Time is compressed for the daily cycle (``speed`` simulated seconds per real second; 2: a day in
12 hours); rates and growth are per real second. Every node follows a daily load cycle with
noise, starting in its trough. The first model learns from a minute and a half and the refits
(every two minutes) from what followed, so the cycle must rise slowly against them: at 30x its
rise three minutes in was far beyond what the first 90 s had shown and every node alerted on it;
at 10x, with the refits, a node in three still alerted every few minutes.

Then, ``fault_after`` real seconds after the start:

* ``node-1`` GPU 1 overheats: its temperature climbs ~30 °C above its usual level;
* ``node-2`` GPU 0's memory grows towards full (the capacity forecast sees it coming);
* ``node-3``'s NIC ``eno1`` flaps: it goes down and up, its carrier changes count climbs.

Each node is written as files: ``sys/class/net/...`` and ``proc/net/dev`` for the agent's network
collector, and ``gpu.json`` for the simulated NVML (:mod:`dcwatch.exporters.gpu.simulated`).
Files are rewritten in place (truncating writes), as the agent re-reads sysfs files.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
NIC = "eno1"
NIC_SPEED_MBPS = 100000
MEM_TOTAL = 80 * GIB
IF_FILES = {"mtu": "9000", "type": "1", "addr_len": "6", "ifindex": "2", "flags": "0x1003"}


@dataclass
class NodeSim:
    """One simulated node and its counters (they only grow, like the real ones)."""

    name: str
    root: Path
    gpus: int = 2
    seed: int = 0
    rx_bytes: float = 1e12
    tx_bytes: float = 6e11
    carrier_changes: int = 2
    was_up: bool = True
    mem_used: list[float] = field(default_factory=list)
    energy_j: list[float] = field(default_factory=list)
    power: list[float] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.mem_used = [18 * GIB + 2 * GIB * g for g in range(self.gpus)]
        self.energy_j = [1e7] * self.gpus
        self.power = [90.0] * self.gpus
        net = self.root / "sys/class/net" / NIC
        net.mkdir(parents=True, exist_ok=True)
        (self.root / "proc/net").mkdir(parents=True, exist_ok=True)
        for name, value in IF_FILES.items():
            (net / name).write_text(value + "\n")
        (net / "speed").write_text(f"{NIC_SPEED_MBPS}\n")


class Scenario:
    """The fleet; :meth:`step` advances it to a real time and writes every node's files."""

    def __init__(
        self, root: Path, nodes: int = 3, speed: float = 2.0, fault_after: float = 120.0
    ) -> None:
        self.speed, self.fault_after = speed, fault_after
        self.nodes = [
            NodeSim(f"node-{i + 1}", root / f"node-{i + 1}", seed=i) for i in range(nodes)
        ]
        self.last: float | None = None

    def load(self, sim_t: float, node: NodeSim) -> float:
        """Utilisation 0..1: a daily cycle (busy afternoons) plus noise."""
        day = math.sin(2 * math.pi * (sim_t / 86400.0 - 0.35))
        return min(1.0, max(0.02, 0.55 + 0.3 * day + node.rng.gauss(0, 0.02)))

    def step(self, elapsed: float) -> None:
        """Advance to ``elapsed`` real seconds since the start and write the files."""
        # Counters advance in real seconds (rates are per second, as the analyzer computes them);
        # only the daily cycle runs on the compressed clock.
        dt = 0.0 if self.last is None else max(0.0, elapsed - self.last)
        self.last = elapsed
        at = time.time()  # the simulated NVML advances the energy from here at this power
        # It starts in the night trough (02:24): the load is flat while the model first learns.
        sim_t = 0.1 * 86400 + elapsed * self.speed
        fault = max(0.0, elapsed - self.fault_after)
        for i, node in enumerate(self.nodes):
            load = self.load(sim_t, node)
            gpus = []
            for g in range(node.gpus):
                util = min(100.0, load * 100 + node.rng.gauss(0, 2))
                temp = 34.0 + 0.32 * util + node.rng.gauss(0, 0.4)
                if i == 0 and g == 1 and fault > 0:  # node-1 GPU 1 overheats
                    temp += min(32.0, fault * 0.8)
                if i == 1 and g == 0 and fault > 0:  # node-2 GPU 0 fills its memory
                    node.mem_used[g] = min(0.97 * MEM_TOTAL, node.mem_used[g] + 0.2 * GIB * dt)
                else:
                    node.mem_used[g] = 18 * GIB + 2 * GIB * g + 2 * GIB * load
                # The energy counter advanced at the power of the last state (as the simulated
                # NVML extrapolated it), then runs at the new one.
                node.energy_j[g] += node.power[g] * dt
                power = node.power[g] = 90.0 + 5.2 * util + node.rng.gauss(0, 4)
                gpus.append(
                    {
                        "name": "NVIDIA H100 80GB HBM3 (simulated)",
                        "temp": round(temp, 1),
                        "util": round(util, 1),
                        "mem_util": round(util * 0.6, 1),
                        "mem_used": node.mem_used[g],
                        "mem_total": MEM_TOTAL,
                        "power": round(power, 1),
                        "power_limit": 700.0,
                        "energy_j": node.energy_j[g],
                        "sm_clock": 1980 if util > 5 else 345,
                    }
                )
            up = True
            if i == 2 and fault > 0:  # node-3's NIC flaps: down one second in three
                up = int(fault) % 3 != 0
                node.carrier_changes += up != node.was_up
                node.was_up = up
            rate = load * 2.5e9 if up else 0.0  # bytes a second
            node.rx_bytes += rate * dt
            node.tx_bytes += rate * 0.6 * dt
            self._write(node, gpus, up, at)

    def _write(self, node: NodeSim, gpus: list[dict[str, object]], up: bool, at: float) -> None:
        net = node.root / "sys/class/net" / NIC
        for name, value in (
            ("operstate", "up" if up else "down"),
            ("carrier", "1" if up else "0"),
            ("carrier_changes", str(node.carrier_changes)),
        ):
            _write_in_place(net / name, value + "\n")
        rx, tx = int(node.rx_bytes), int(node.tx_bytes)
        _write_in_place(
            node.root / "proc/net/dev",
            "Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
            "errs drop fifo colls carrier compressed\n"
            f"  {NIC}: {rx} {rx // 1500} 0 0 0 0 0 0 {tx} {tx // 1500} 0 0 0 0 0 0\n",
        )
        state = node.root / "gpu.json"
        tmp = state.with_suffix(".tmp")  # the simulated NVML reads a whole file: rename it in
        tmp.write_text(json.dumps({"driver": "550.54.15", "at": at, "gpus": gpus}))
        tmp.replace(state)


def _write_in_place(path: Path, text: str) -> None:
    """Overwrite without ever truncating (a reader must never see an empty file): a shorter
    text is padded with spaces before its last newline, which every parser strips."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        short = os.fstat(fd).st_size - len(data)
        if short > 0:
            data = data[:-1] + b" " * short + data[-1:]
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
