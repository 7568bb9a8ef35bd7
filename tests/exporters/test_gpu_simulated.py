"""The demo's simulated NVML: its energy counter moves between the scenario's rewrites, at the
written power, as a real GPU's does, and never goes back."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dcwatch.exporters.gpu.simulated import SimulatedNvml


def write(path: Path, state: dict[str, object], mtime_ns: int) -> None:
    path.write_text(json.dumps(state))
    os.utime(path, ns=(mtime_ns, mtime_ns))  # a distinct stamp: the file is re-read on change


def test_energy_advances_between_rewrites_and_never_goes_back(tmp_path: Path) -> None:
    state = tmp_path / "gpu.json"
    now = [1010.0]
    nvml = SimulatedNvml(state, clock=lambda: now[0])
    write(state, {"at": 1000.0, "gpus": [{"energy_j": 500.0, "power": 200.0}]}, 1)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 2_500_000  # 500 J + 200 W x 10 s, in mJ
    # The next state's energy is a little below what was read (clocks differ): it holds, then
    # runs at the new power.
    write(state, {"at": 1010.0, "gpus": [{"energy_j": 2499.9, "power": 100.0}]}, 2)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 2_500_000
    now[0] = 1011.0
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 2_599_900


def test_without_a_time_the_energy_is_read_as_written(tmp_path: Path) -> None:
    state = tmp_path / "gpu.json"
    nvml = SimulatedNvml(state, clock=lambda: 5000.0)
    write(state, {"gpus": [{"energy_j": 12.5, "power": 300.0}]}, 1)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 12_500
