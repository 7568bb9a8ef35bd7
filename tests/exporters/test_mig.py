"""MIG over the fake NVML: per MIG device identity, memory and processes; what NVML cannot give
per instance is absent, never 0; devices created and destroyed at run time; golden output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import exposition

from dcwatch.agent.config import AgentConfig
from dcwatch.exporters.base import CollectorDeps
from dcwatch.exporters.gpu.collector import GpuCollector, GpuOptions
from dcwatch.exporters.gpu.mig import profile_of
from tests.conftest import FIXTURES
from tests.fakes import fake_nvml
from tests.fakes.fake_nvml import FakeMig, FakeNvml, mig_gpu, t4
from tests.helpers import sample, samples

GOLDEN = FIXTURES / "fake-nvml" / "mig.golden.txt"
U0 = mig_gpu(0).uuid


class _Fams:
    def __init__(self, c: GpuCollector) -> None:
        self.c = c

    def collect(self) -> list:  # type: ignore[type-arg]
        return list(self.c.collect())


def render(c: GpuCollector) -> str:
    return exposition.generate_latest(_Fams(c)).decode()  # type: ignore[arg-type]


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    for pid, comm in ((6001, "trainer"), (6002, "serve"), (5151, "jupyter")):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
    return root


@pytest.fixture
def fake() -> FakeNvml:
    return FakeNvml(gpus=[mig_gpu(0), t4(1)])


@pytest.fixture
def collector(fake: FakeNvml, proc: Path) -> Iterator[GpuCollector]:
    cfg = AgentConfig(
        procfs=proc,
        collectors=("gpu",),
        options={"gpu": GpuOptions(processes=True, xid_events=False)},
    )
    c = GpuCollector(cfg, CollectorDeps(nvml=fake))
    yield c
    c.close()


def test_profile_from_the_mig_device_name() -> None:
    assert profile_of("NVIDIA H100 80GB HBM3 MIG 1g.10gb") == "1g.10gb"
    assert profile_of("NVIDIA A100-SXM4-40GB MIG 3g.20gb ") == "3g.20gb"
    assert profile_of("NVIDIA H100 80GB HBM3") == ""
    assert profile_of(" MIG 1g.10gb") == ""


def test_each_mig_device_identity_and_memory(collector: GpuCollector) -> None:
    t = render(collector)
    migs = {
        dict(ls)["gpu_instance"]: dict(ls)
        for (n, ls), v in samples(t).items()
        if n == "dcwatch_gpu_mig_info" and v == 1
    }
    assert {gi: (m["compute_instance"], m["profile"]) for gi, m in migs.items()} == {
        "1": ("0", "3g.40gb"),
        "5": ("0", "2g.20gb"),
        "13": ("0", "1g.10gb"),
    }
    assert migs["5"]["mig_uuid"].startswith("MIG-") and migs["5"]["uuid"] == U0
    assert migs["5"]["gpu"] == "0"
    used = "dcwatch_gpu_mig_memory_used_bytes"
    total = "dcwatch_gpu_mig_memory_total_bytes"
    assert sample(t, used, gpu="0", gpu_instance="1", compute_instance="0") == 30 * 2**30
    assert sample(t, total, gpu="0", gpu_instance="1") == 40192 * 2**20
    assert sample(t, used, gpu="0", gpu_instance="13") == 0  # idle instance: a real 0
    assert sample(t, total, gpu="0", gpu_instance="13") == 9856 * 2**20
    assert 'mig_mode="enabled"' in t
    assert {
        gpu for (n, ls) in samples(t) if n == "dcwatch_gpu_mig_info" for k, gpu in ls if k == "gpu"
    } == {"0"}  # the T4 has no MIG


def test_what_nvml_cannot_give_per_instance_is_absent(collector: GpuCollector) -> None:
    t = render(collector)
    # MIG mode: no utilisation for the whole GPU, and none invented per instance
    assert sample(t, "dcwatch_gpu_utilization_ratio", gpu="0") is None
    assert sample(t, "dcwatch_gpu_decoder_utilization_ratio", gpu="0") is None
    assert sample(t, "dcwatch_gpu_utilization_ratio", gpu="1") == 0.12
    mig_names = {n for (n, _) in samples(t) if n.startswith("dcwatch_gpu_mig_")}
    assert mig_names == {
        "dcwatch_gpu_mig_info",
        "dcwatch_gpu_mig_memory_used_bytes",
        "dcwatch_gpu_mig_memory_total_bytes",
        "dcwatch_gpu_mig_process_memory_used_bytes",
    }
    # what the whole GPU still answers
    assert sample(t, "dcwatch_gpu_temperature_celsius", gpu="0") == 54
    assert sample(t, "dcwatch_gpu_power_usage_watts", gpu="0") == 612.345
    assert collector.read_errors() == 0


def test_processes_per_mig_device(collector: GpuCollector) -> None:
    t = render(collector)
    name = "dcwatch_gpu_mig_process_memory_used_bytes"
    assert sample(t, name, gpu="0", gpu_instance="1", pid="6001", process="trainer") == 29 * 2**30
    assert sample(t, name, gpu="0", gpu_instance="5", pid="6002", process="serve") == 5 * 2**30
    assert sample(t, name, pid="6003") is None  # memory not available: left out
    # not counted twice on the whole GPU; the T4 (no MIG) keeps the per-GPU metric
    assert sample(t, "dcwatch_gpu_process_memory_used_bytes", gpu="0") is None
    assert sample(t, "dcwatch_gpu_process_memory_used_bytes", gpu="1", pid="5151") == 512 * 2**20


def test_mig_devices_come_and_go(fake: FakeNvml, collector: GpuCollector) -> None:
    render(collector)
    g = fake.gpus[0]
    g.migs[1] = None  # 2g.20gb destroyed
    g.migs.append(FakeMig(6, 0, "1g.10gb", "MIG-0000-new", 9856 * 2**20, 2**30))
    t = render(collector)
    gis = {
        dict(ls)["gpu_instance"] for (n, ls), _ in samples(t).items() if n == "dcwatch_gpu_mig_info"
    }
    assert gis == {"1", "13", "6"}
    assert sample(t, "dcwatch_gpu_mig_memory_used_bytes", gpu_instance="5") is None
    assert sample(t, "dcwatch_gpu_mig_memory_used_bytes", gpu_instance="6") == 2**30


def test_mig_gpu_lost(fake: FakeNvml, collector: GpuCollector) -> None:
    render(collector)
    fake.lose_gpu(0)
    t = render(collector)
    assert sample(t, "dcwatch_gpu_up", gpu="0") == 0
    assert "dcwatch_gpu_mig_" not in t.replace("# HELP dcwatch_gpu_mig_", "").replace(
        "# TYPE dcwatch_gpu_mig_", ""
    )


def test_fake_mig_handles_follow_the_header(fake: FakeNvml) -> None:
    fake.nvmlInit()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    h = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    assert fake.nvmlDeviceIsMigDeviceHandle(h) == 1
    with pytest.raises(fake_nvml.NVMLError) as e:
        fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 3)  # no device at index 3
    assert e.value.value == fake_nvml.NVML_ERROR_NOT_FOUND
    with pytest.raises(fake_nvml.NVMLError) as e:
        fake.nvmlDeviceGetPowerUsage(h)  # a whole-GPU getter on a MIG handle
    assert e.value.value == fake_nvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(fake_nvml.NVMLError) as e:
        fake.nvmlDeviceGetGpuInstanceId(parent)  # not a MIG handle
    assert e.value.value == fake_nvml.NVML_ERROR_NOT_SUPPORTED
    procs = fake.nvmlDeviceGetComputeRunningProcesses(parent)
    assert {(p.pid, p.gpuInstanceId) for p in procs} == {(6001, 1), (6002, 5), (6003, 5)}


def test_mig_golden_output(collector: GpuCollector, update_golden: bool) -> None:
    got = render(collector)
    if update_golden or not GOLDEN.exists():
        GOLDEN.write_text(got)
        if not update_golden:
            pytest.fail(f"{GOLDEN} did not exist; written now: review and commit it")
    assert got == GOLDEN.read_text(), f"output differs from {GOLDEN}; --update-golden if intended"
    assert "NaN" not in got
