"""The gpu collector over the fake NVML (tests/fakes/fake_nvml.py): values and units, absent
fields, a GPU lost mid-run, XID events, per-process memory, no NVML, close(), golden output."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import exposition

from dcwatch.agent.config import AgentConfig
from dcwatch.agent.registry import CollectorRunner
from dcwatch.exporters.base import CollectorDeps, NoDataError
from dcwatch.exporters.gpu.collector import CLOCK_REASONS, GpuCollector, GpuOptions
from tests.conftest import FIXTURES
from tests.fakes import fake_nvml
from tests.fakes.fake_nvml import FakeNvml
from tests.helpers import sample, samples, wait_until

U0 = "GPU-0b1e4a6c-52f3-4c1e-9d3a-7f0e3c2a1b00"  # H100-like, everything supported
U1 = "GPU-7c2d9e10-3a4b-4c5d-8e6f-a1b2c3d4e5f1"  # T4-like, older
GOLDEN = FIXTURES / "fake-nvml" / "metrics.golden.txt"


class _Fams:
    def __init__(self, fams: list) -> None:  # type: ignore[type-arg]
        self.fams = fams

    def collect(self) -> list:  # type: ignore[type-arg]
        return self.fams


def render(c: GpuCollector) -> str:
    return exposition.generate_latest(_Fams(list(c.collect()))).decode()  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake() -> FakeNvml:
    return FakeNvml()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., GpuCollector]]:
    made: list[GpuCollector] = []

    def _make(
        nvml: object,
        *,
        processes: bool = False,
        xid_events: bool = True,
        procfs: Path | None = None,
    ) -> GpuCollector:
        cfg = AgentConfig(
            procfs=procfs or tmp_path / "proc",
            collectors=("gpu",),
            options={"gpu": GpuOptions(processes=processes, xid_events=xid_events, kmsg_path="")},
        )
        c = GpuCollector(cfg, CollectorDeps(nvml=nvml))
        c._clock = Clock()
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("dcwatch-gpu")]


def info(text: str, gpu: str) -> dict[str, str]:
    """The labels of dcwatch_gpu_info for one GPU (its value must be 1)."""
    hits = [
        dict(ls)
        for (n, ls), v in samples(text).items()
        if n == "dcwatch_gpu_info" and dict(ls)["gpu"] == gpu and v == 1
    ]
    assert len(hits) == 1, hits
    return hits[0]


def gpu_samples(text: str, uuid: str) -> dict:  # type: ignore[type-arg]
    return {k: v for k, v in samples(text).items() if ("uuid", uuid) in k[1]}


# ---- values --------------------------------------------------------------------------------


def test_values_and_units_gpu0(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    c = make(fake)
    t = render(c)
    parsed = samples(t)

    def s(name: str, **labels: str) -> float | None:
        want = {"gpu": "0", "uuid": U0, **labels}
        hits = [
            v
            for (n, ls), v in parsed.items()
            if n == name and all(dict(ls).get(k) == x for k, x in want.items())
        ]
        assert len(hits) <= 1, (name, labels)
        return hits[0] if hits else None

    assert s("dcwatch_gpu_up") == 1
    assert info(t, "0") == {
        "gpu": "0",
        "uuid": U0,
        "name": "NVIDIA H100 80GB HBM3",
        "serial": "1650923012340",
        "pci_bus_id": "00000000:18:00.0",
        "vbios_version": "96.00.74.00.0D",
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "mig_mode": "disabled",
    }
    assert s("dcwatch_gpu_utilization_ratio") == 0.87  # % -> ratio
    assert s("dcwatch_gpu_memory_utilization_ratio") == 0.45
    assert s("dcwatch_gpu_memory_total_bytes") == 81559 * 2**20
    # nvmlMemory_v2: used without the reserved memory, which is exported apart
    assert s("dcwatch_gpu_memory_used_bytes") == 40960 * 2**20
    assert s("dcwatch_gpu_memory_reserved_bytes") == 543 * 2**20
    assert s("dcwatch_gpu_memory_free_bytes") == (81559 - 40960 - 543) * 2**20
    assert s("dcwatch_gpu_decoder_utilization_ratio") == 0.04
    assert s("dcwatch_gpu_encoder_utilization_ratio") is None  # no encoder: absent, not 0
    assert s("dcwatch_gpu_temperature_celsius") == 54
    assert s("dcwatch_gpu_memory_temperature_celsius") == 63  # field, uiVal
    assert s("dcwatch_gpu_power_usage_watts") == 612.345  # mW -> W
    assert s("dcwatch_gpu_power_limit_watts") == 700.0
    assert s("dcwatch_gpu_power_default_limit_watts") == 700.0
    assert s("dcwatch_gpu_energy_joules_total") == 123456789.012  # mJ -> J, field ullVal
    assert s("dcwatch_gpu_clock_hertz", clock="sm") == 1980e6  # MHz -> Hz
    assert s("dcwatch_gpu_clock_hertz", clock="memory") == 2619e6
    assert s("dcwatch_gpu_clock_max_hertz", clock="sm") == 1980e6
    assert s("dcwatch_gpu_clock_max_hertz", clock="memory") == 2619e6
    assert s("dcwatch_gpu_clocks_event_reason_active", reason="sw_power_cap") == 1
    assert s("dcwatch_gpu_clocks_event_reason_active", reason="gpu_idle") == 0
    assert s("dcwatch_gpu_clocks_event_reason_active", reason="hw_thermal_slowdown") == 0
    # violation counters, ns -> s
    event = "dcwatch_gpu_clocks_event_seconds_total"
    assert s(event, reason="power") == 12.5
    assert s(event, reason="thermal") == 0.25
    assert s(event, reason="low_utilization") == 3600.0
    assert s(event, reason="sync_boost") == 0
    assert s(event, reason="total_app_clocks") == 12.75
    assert s("dcwatch_gpu_performance_state") == 0
    assert s("dcwatch_gpu_fan_speed_ratio", fan="0") == 0.30
    assert s("dcwatch_gpu_fan_speed_ratio", fan="1") == 0.32
    assert s("dcwatch_gpu_pcie_link_generation") == 5
    assert s("dcwatch_gpu_pcie_link_max_generation") == 5
    assert s("dcwatch_gpu_pcie_link_width") == 16
    assert s("dcwatch_gpu_pcie_link_max_width") == 16
    assert s("dcwatch_gpu_pcie_throughput_bytes_per_second", direction="tx") == 1250000 * 1024
    assert s("dcwatch_gpu_pcie_throughput_bytes_per_second", direction="rx") == 2500000 * 1024
    assert s("dcwatch_gpu_pcie_replays_total") == 3
    for typ, scope, want in (
        ("corrected", "volatile", 5),
        ("uncorrected", "volatile", 0),
        ("corrected", "aggregate", 17),
        ("uncorrected", "aggregate", 1),
    ):
        assert s("dcwatch_gpu_ecc_errors_total", type=typ, scope=scope) == want
    assert s("dcwatch_gpu_remapped_rows", type="correctable") == 2
    assert s("dcwatch_gpu_remapped_rows", type="uncorrectable") == 1
    assert s("dcwatch_gpu_remapped_rows_pending") == 0
    assert s("dcwatch_gpu_remapped_rows_failure") == 0
    # NVLink: 18 links; 17 is down. Per link from the link-scoped DL fields (the old ids
    # 32..119 are lanes, and the fake answers them as nvml.h documents); crc_data has no
    # field and comes from nvmlDeviceGetNvLinkErrorCounter.
    for link in range(18):
        assert s("dcwatch_gpu_nvlink_up", link=str(link)) == (0 if link == 17 else 1)
        assert s("dcwatch_gpu_nvlink_errors_total", link=str(link), type="replay") == link
        assert s("dcwatch_gpu_nvlink_errors_total", link=str(link), type="crc_flit") == 2 * link
        assert s("dcwatch_gpu_nvlink_errors_total", link=str(link), type="crc_data") == link % 3
        assert s("dcwatch_gpu_nvlink_errors_total", link=str(link), type="recovery") == (
            2 if link == 3 else 0
        )
    assert c.read_errors() == 0


def test_values_and_units_gpu1(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    c = make(fake)
    t = render(c)

    def s(name: str, **labels: str) -> float | None:
        return sample(t, name, gpu="1", uuid=U1, **labels)

    assert s("dcwatch_gpu_up") == 1
    assert info(t, "1")["name"] == "Tesla T4"
    assert info(t, "1")["mig_mode"] == ""  # MIG not supported
    assert s("dcwatch_gpu_utilization_ratio") == 0.12
    assert s("dcwatch_gpu_power_usage_watts") == 27.5
    assert s("dcwatch_gpu_power_limit_watts") == 70.0
    # the energy field is unsupported on this GPU: the getter is the fallback
    assert s("dcwatch_gpu_energy_joules_total") == 98765.432
    assert s("dcwatch_gpu_clock_hertz", clock="sm") == 585e6
    assert s("dcwatch_gpu_clock_max_hertz", clock="memory") == 5001e6
    assert s("dcwatch_gpu_performance_state") == 8
    assert s("dcwatch_gpu_pcie_link_width") == 8
    assert s("dcwatch_gpu_pcie_link_max_width") == 16
    assert s("dcwatch_gpu_pcie_throughput_bytes_per_second", direction="rx") == 2000 * 1024
    assert s("dcwatch_gpu_pcie_replays_total") == 0
    assert s("dcwatch_gpu_retired_pages", cause="single_bit") == 2
    assert s("dcwatch_gpu_retired_pages", cause="double_bit") == 1
    assert s("dcwatch_gpu_retired_pages_pending") == 0
    assert s("dcwatch_gpu_ecc_errors_total", type="corrected", scope="aggregate") == 3
    assert s("dcwatch_gpu_encoder_utilization_ratio") == 0.25
    assert s("dcwatch_gpu_decoder_utilization_ratio") == 0.10
    assert s("dcwatch_gpu_clocks_event_seconds_total", reason="thermal") == 1.5
    assert s("dcwatch_gpu_clocks_event_seconds_total", reason="board_limit") is None
    # no supported-reasons mask: every standard reason is exported
    for bit, reason in CLOCK_REASONS:
        want = 1 if bit == fake_nvml.nvmlClocksEventReasonGpuIdle else 0
        assert s("dcwatch_gpu_clocks_event_reason_active", reason=reason) == want
    assert c.read_errors() == 0


def test_unsupported_readings_are_omitted_not_zero(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    t = render(make(fake))
    g1 = {name for name, _ in gpu_samples(t, U1)}
    for absent in (
        "dcwatch_gpu_memory_temperature_celsius",
        "dcwatch_gpu_nvlink_up",
        "dcwatch_gpu_nvlink_errors_total",
        "dcwatch_gpu_remapped_rows",
        "dcwatch_gpu_remapped_rows_pending",
        "dcwatch_gpu_remapped_rows_failure",
        "dcwatch_gpu_fan_speed_ratio",
    ):
        assert absent not in g1, absent
    g0 = {name for name, _ in gpu_samples(t, U0)}
    assert "dcwatch_gpu_retired_pages" not in g0
    assert "dcwatch_gpu_retired_pages_pending" not in g0
    assert "dcwatch_gpu_process_memory_used_bytes" not in g0  # off by default
    assert "NaN" not in t


def test_scrape_is_cheap_static_once_one_field_call_per_gpu(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    c = make(fake, xid_events=False)
    first = render(c)
    # the first scrape probes support; what the getters answered then is used, not re-read
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 4  # 2 GPUs x tx, rx (20 ms each)
    fake.calls.clear()
    assert render(c) == first
    assert fake.calls["nvmlDeviceGetFieldValues"] == 2  # one batched call per GPU
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 2  # used, free, reserved from one call
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 2
    for static in (
        "nvmlInit",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetName",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetSerial",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetMaxClockInfo",
        "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceGetNumFans",
        "nvmlDeviceGetMaxPcieLinkGeneration",
        "nvmlSystemGetDriverVersion",
        # unsupported on every GPU: found out once, not asked again
        "nvmlDeviceGetRetiredPages",
        "nvmlDeviceGetNvLinkState",
    ):
        assert fake.calls[static] == 0, static
    # GPU 0's NVLink crc_data per link (no field) and GPU 1's energy (field unsupported)
    assert fake.calls["nvmlDeviceGetNvLinkErrorCounter"] == 18
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1
    assert fake.init_calls == 1


def test_support_is_probed_again_after_rediscover_interval(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    c = make(fake, xid_events=False)
    t = render(c)
    assert sample(t, "dcwatch_gpu_memory_temperature_celsius", gpu="1") is None
    fake.gpus[1].memory_temperature = 50  # e.g. a driver update made the field answer
    assert sample(render(c), "dcwatch_gpu_memory_temperature_celsius", gpu="1") is None
    c._clock.t += 61  # type: ignore[attr-defined]
    assert sample(render(c), "dcwatch_gpu_memory_temperature_celsius", gpu="1") == 50


def test_unexpected_error_omits_one_reading_and_counts(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    c = make(fake, xid_events=False)
    render(c)
    fake.gpus[0].failing["nvmlDeviceGetPowerUsage"] = fake_nvml.NVML_ERROR_UNKNOWN
    t = render(c)
    assert sample(t, "dcwatch_gpu_power_usage_watts", gpu="0") is None
    assert sample(t, "dcwatch_gpu_power_usage_watts", gpu="1") == 27.5
    assert sample(t, "dcwatch_gpu_up", gpu="0") == 1
    assert sample(t, "dcwatch_gpu_temperature_celsius", gpu="0") == 54
    assert c.read_errors() == 1


def test_memory_v1_where_v2_is_missing(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    """An older driver: v1's used includes reserved, and reserved itself is absent."""
    fake.gpus[0].memory_v2 = False
    t = render(make(fake, xid_events=False))
    assert sample(t, "dcwatch_gpu_memory_used_bytes", gpu="0") == (40960 + 543) * 2**20
    assert sample(t, "dcwatch_gpu_memory_reserved_bytes", gpu="0") is None
    assert sample(t, "dcwatch_gpu_memory_reserved_bytes", gpu="1") == 227 * 2**20


@pytest.mark.parametrize(
    "missing", ["nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV"], ids=["cuda14", "old"]
)
def test_temperature_from_either_getter(missing: str, make: Callable[..., GpuCollector]) -> None:
    """nvmlDeviceGetTemperature is to go in CUDA 14; an older pynvml lacks the V getter."""
    t = render(make(FakeNvml(missing={missing}), xid_events=False))
    assert sample(t, "dcwatch_gpu_temperature_celsius", gpu="0") == 54
    assert sample(t, "dcwatch_gpu_temperature_celsius", gpu="1") == 41


def test_reset_required_is_treated_as_lost(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    c = make(fake, xid_events=False)
    render(c)
    fake.lose_gpu(1, fake_nvml.NVML_ERROR_RESET_REQUIRED)
    t = render(c)
    assert sample(t, "dcwatch_gpu_up", gpu="1", uuid=U1) == 0
    assert sample(t, "dcwatch_gpu_temperature_celsius", gpu="1") is None
    assert sample(t, "dcwatch_gpu_up", gpu="0") == 1
    assert c.read_errors() == 0  # not an error per reading: the GPU is down
    fake.recover_gpu(1)
    c._clock.t += 61  # type: ignore[attr-defined]
    assert sample(render(c), "dcwatch_gpu_up", gpu="1") == 1


def test_older_pynvml_names(make: Callable[..., GpuCollector]) -> None:
    """A pynvml without the 'clocks event' names: the older 'throttle' names are used."""
    fake = FakeNvml(
        missing={
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetSupportedClocksEventReasons",
            "nvmlDeviceGetComputeRunningProcesses",
        }
    )
    t = render(make(fake, processes=True))
    assert sample(t, "dcwatch_gpu_clocks_event_reason_active", gpu="0", reason="sw_power_cap") == 1
    assert sample(t, "dcwatch_gpu_process_memory_used_bytes", gpu="0", pid="4242") == 8 * 2**30


# ---- lost GPU ------------------------------------------------------------------------------


async def test_gpu_lost_mid_run(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    c = make(fake)
    runner = CollectorRunner([c], timeout=10)

    async def scrape() -> str:
        return exposition.generate_latest(_Fams(await runner.scrape())).decode()  # type: ignore[arg-type]

    before = await scrape()
    assert sample(before, "dcwatch_gpu_up", gpu="1") == 1
    fake.lose_gpu(1)
    after = await scrape()
    assert sample(after, "dcwatch_scrape_collector_success", collector="gpu") == 1
    assert sample(after, "dcwatch_gpu_up", gpu="1", uuid=U1) == 0
    assert sample(after, "dcwatch_gpu_info", gpu="1", uuid=U1) == 1  # identity kept
    assert sample(after, "dcwatch_gpu_utilization_ratio", gpu="1") is None  # no stale values
    assert sample(after, "dcwatch_gpu_memory_total_bytes", gpu="1") is None
    assert gpu_samples(after, U0) == gpu_samples(before, U0)  # GPU 0 fully exported
    # still lost at the next scrape, and not hammered: no call on GPU 1 until the retry
    fake.calls.clear()
    again = await scrape()
    assert sample(again, "dcwatch_gpu_up", gpu="1") == 0
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 0
    # back after a reset: found again at the next retry
    fake.recover_gpu(1)
    c._clock.t += 61  # type: ignore[attr-defined]
    back = await scrape()
    assert sample(back, "dcwatch_gpu_up", gpu="1") == 1
    assert sample(back, "dcwatch_gpu_utilization_ratio", gpu="1") == 0.12
    assert runner.state["gpu"].failures == 0
    runner.close()


def test_gpu_lost_before_first_scrape(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    fake.lose_gpu(0)
    t = render(make(fake, xid_events=False))
    assert sample(t, "dcwatch_gpu_up", gpu="0", uuid="") == 0
    assert sample(t, "dcwatch_gpu_up", gpu="1", uuid=U1) == 1
    assert sample(t, "dcwatch_gpu_temperature_celsius", gpu="1") == 41


def test_gpu_lost_while_reading_static_attributes(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    fake.gpus[1].failing["nvmlDeviceGetMaxClockInfo"] = fake_nvml.NVML_ERROR_GPU_IS_LOST
    c = make(fake, xid_events=False)
    t = render(c)
    assert sample(t, "dcwatch_gpu_up", gpu="1", uuid="") == 0
    assert 'gpu="1"' not in t.replace('dcwatch_gpu_up{gpu="1"', "")  # nothing half-read
    del fake.gpus[1].failing["nvmlDeviceGetMaxClockInfo"]
    c._clock.t += 61  # type: ignore[attr-defined]
    t = render(c)
    assert sample(t, "dcwatch_gpu_up", gpu="1", uuid=U1) == 1
    assert info(t, "1")["name"] == "Tesla T4"
    assert sample(t, "dcwatch_gpu_clock_max_hertz", gpu="1", clock="sm") == 1590e6


# ---- XID events ----------------------------------------------------------------------------


def test_xid_events_counted_by_code(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    c = make(fake)
    t = render(c)
    assert "dcwatch_gpu_xid_errors_total" not in t
    wait_until(lambda: fake.open_event_sets() == 1, timeout=5, what="event set")
    wait_until(lambda: len(fake.event_sets[-1].devices) == 2, timeout=5, what="registration")
    fake.inject_xid(0, 79)
    fake.inject_xid(0, 79)
    fake.inject_xid(0, 48)
    fake.inject_xid(1, 13)

    def counted() -> bool:
        t = render(c)
        return sample(t, "dcwatch_gpu_xid_errors_total", gpu="1", xid="13") == 1 and (
            sample(t, "dcwatch_gpu_xid_errors_total", gpu="0", xid="79") == 2
        )

    wait_until(counted, timeout=5, what="XID counts")
    t = render(c)
    assert sample(t, "dcwatch_gpu_xid_errors_total", gpu="0", uuid=U0, xid="48") == 1
    assert sample(t, "dcwatch_gpu_xid_watching", gpu="0") == 1
    assert sample(t, "dcwatch_gpu_xid_watching", gpu="1") == 1


def test_xid_counts_survive_gpu_loss(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    c = make(fake)
    render(c)
    wait_until(
        lambda: fake.open_event_sets() == 1 and len(fake.event_sets[-1].devices) == 2,
        timeout=5,
        what="registration",
    )
    fake.inject_xid(1, 79)  # fell off the bus
    wait_until(
        lambda: sample(render(c), "dcwatch_gpu_xid_errors_total", gpu="1") == 1,
        timeout=5,
        what="XID 79",
    )
    fake.lose_gpu(1)
    t = render(c)
    assert sample(t, "dcwatch_gpu_up", gpu="1") == 0
    assert sample(t, "dcwatch_gpu_xid_errors_total", gpu="1", uuid=U1, xid="79") == 1
    assert sample(t, "dcwatch_gpu_xid_watching", gpu="1") == 0


def test_failed_wait_keeps_the_event_set_and_its_events(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    """A failed wait is retried on the same set: XIDs queued meanwhile are not lost."""
    c = make(fake)
    render(c)
    wait_until(
        lambda: fake.open_event_sets() == 1 and len(fake.event_sets[-1].devices) == 2,
        timeout=5,
        what="registration",
    )
    with fake._cond:  # both at once: the XID is queued when the waits fail
        fake.fail_waits(fake_nvml.NVML_ERROR_UNKNOWN, fake_nvml.NVML_ERROR_UNKNOWN)
        fake.inject_xid(0, 31)
    wait_until(
        lambda: sample(render(c), "dcwatch_gpu_xid_errors_total", gpu="0", xid="31") == 1,
        timeout=5,
        what="XID 31 after two failed waits",
    )
    assert c._thread is not None and c._thread.sets_created == 1
    assert sample(render(c), "dcwatch_gpu_xid_watching", gpu="0") == 1


def test_healthy_gpus_stay_watched_while_one_is_lost(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    c = make(fake)
    render(c)
    wait_until(
        lambda: fake.open_event_sets() == 1 and len(fake.event_sets[-1].devices) == 2,
        timeout=5,
        what="registration",
    )
    with fake._cond:  # GPU 0's XID queued on the set as GPU 1 falls off the bus
        fake.inject_xid(0, 13)
        fake.lose_gpu(1)
    # the set answers GPU_IS_LOST from now on: the watcher moves GPU 0 to a new set at once
    wait_until(
        lambda: fake.open_event_sets() == 1 and list(fake.event_sets[-1].devices) == [0],
        timeout=5,
        what="GPU 0 alone on a new set",
    )
    fake.inject_xid(0, 43)
    wait_until(
        lambda: sample(render(c), "dcwatch_gpu_xid_errors_total", gpu="0", xid="43") == 1,
        timeout=5,
        what="XID 43 while GPU 1 is lost",
    )
    t = render(c)
    assert sample(t, "dcwatch_gpu_xid_errors_total", gpu="0", xid="13") == 1  # drained
    assert sample(t, "dcwatch_gpu_xid_watching", gpu="0") == 1
    assert sample(t, "dcwatch_gpu_xid_watching", gpu="1") == 0
    # GPU 1 back: added to the running set, no new set
    fake.recover_gpu(1)
    c._clock.t += 61  # type: ignore[attr-defined]
    render(c)
    wait_until(
        lambda: sorted(fake.event_sets[-1].devices) == [0, 1],
        timeout=5,
        what="GPU 1 registered again",
    )
    assert c._thread is not None and c._thread.sets_created == 2
    fake.inject_xid(1, 48)
    wait_until(
        lambda: sample(render(c), "dcwatch_gpu_xid_errors_total", gpu="1", xid="48") == 1,
        timeout=5,
        what="XID 48 after recovery",
    )


def test_no_xid_thread_when_disabled(fake: FakeNvml, make: Callable[..., GpuCollector]) -> None:
    t = render(make(fake, xid_events=False))
    assert "dcwatch_gpu_xid_watching" not in t
    assert not [x for x in threading.enumerate() if x.name == "dcwatch-gpu-xid"]
    assert fake.calls["nvmlEventSetCreate"] == 0


# ---- processes -----------------------------------------------------------------------------


def test_process_memory_only_when_enabled(
    fake: FakeNvml, make: Callable[..., GpuCollector], tmp_path: Path
) -> None:
    proc = tmp_path / "hostproc"
    for pid, comm in ((4242, "python3"), (4343, "trainer")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
    off = render(make(fake, xid_events=False, procfs=proc))
    assert "dcwatch_gpu_process_memory_used_bytes" not in off
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 0
    on = render(make(fake, processes=True, xid_events=False, procfs=proc))
    name = "dcwatch_gpu_process_memory_used_bytes"
    assert sample(on, name, gpu="0", uuid=U0, pid="4242", process="python3") == 8 * 2**30
    assert sample(on, name, gpu="0", pid="4343", process="trainer") == 2 * 2**30
    assert sample(on, name, gpu="1", uuid=U1, pid="5151", process="") == 512 * 2**20  # gone


# ---- no NVML -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["library_missing", "driver_not_loaded"])
def test_no_nvml_is_no_data_and_init_retried(flag: str, make: Callable[..., GpuCollector]) -> None:
    fake = FakeNvml(**{flag: True})
    c = make(fake, xid_events=False)
    with pytest.raises(NoDataError):
        c.collect()
    setattr(fake, flag, False)  # the driver loads
    with pytest.raises(NoDataError):
        c.collect()
    assert fake.init_calls == 1  # not retried on every scrape
    c._clock.t += 61  # type: ignore[attr-defined]
    assert sample(render(c), "dcwatch_gpu_up", gpu="0") == 1
    assert fake.init_calls == 2


async def test_no_nvml_counts_as_success_in_the_runner(make: Callable[..., GpuCollector]) -> None:
    c = make(FakeNvml(library_missing=True))
    runner = CollectorRunner([c], timeout=5)
    got = exposition.generate_latest(_Fams(await runner.scrape())).decode()  # type: ignore[arg-type]
    assert sample(got, "dcwatch_scrape_collector_success", collector="gpu") == 1
    assert runner.state["gpu"].no_data
    assert "dcwatch_gpu_up" not in got
    runner.close()


def test_pynvml_not_installed(
    make: Callable[..., GpuCollector], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)
    c = make(None)  # deps.nvml None: import pynvml
    with pytest.raises(NoDataError, match="pynvml"):
        c.collect()


def test_no_gpus_is_no_data(make: Callable[..., GpuCollector]) -> None:
    with pytest.raises(NoDataError):
        make(FakeNvml(gpus=[]), xid_events=False).collect()


# ---- close ---------------------------------------------------------------------------------


def test_close_shuts_nvml_down_and_stops_the_thread(
    fake: FakeNvml, make: Callable[..., GpuCollector]
) -> None:
    c = make(fake)
    render(c)
    wait_until(lambda: fake.open_event_sets() == 1, timeout=5, what="event set")
    thread = c._thread
    assert thread is not None and thread.is_alive() and thread.daemon
    c.close()
    assert not thread.is_alive()
    assert fake.open_event_sets() == 0  # freed before shutdown
    assert fake.shutdown_calls == 1 and fake.initialized == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("dcwatch-gpu")]
    c.close()  # twice is fine
    assert fake.shutdown_calls == 1


def test_close_while_waiting_for_nvml(make: Callable[..., GpuCollector]) -> None:
    fake = FakeNvml(library_missing=True)
    c = make(fake)
    wait_until(lambda: fake.init_calls >= 1, timeout=5, what="watcher's init attempt")
    c.close()
    assert c._thread is not None and not c._thread.is_alive()
    assert fake.shutdown_calls == 0


# ---- golden --------------------------------------------------------------------------------


def test_golden_output(
    fake: FakeNvml, make: Callable[..., GpuCollector], tmp_path: Path, update_golden: bool
) -> None:
    proc = tmp_path / "proc"
    for pid, comm in ((4242, "python3"), (4343, "trainer"), (5151, "jupyter")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
    c = make(fake, processes=True, procfs=proc)
    render(c)
    wait_until(
        lambda: fake.open_event_sets() == 1 and len(fake.event_sets[-1].devices) == 2,
        timeout=5,
        what="registration",
    )
    fake.inject_xid(0, 48)
    fake.inject_xid(1, 79)
    wait_until(
        lambda: sample(render(c), "dcwatch_gpu_xid_errors_total", gpu="1") == 1,
        timeout=5,
        what="XIDs",
    )
    got = render(c)
    if update_golden or not GOLDEN.exists():
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got)
        if not update_golden:
            pytest.fail(f"{GOLDEN} did not exist; written now: review and commit it")
    assert got == GOLDEN.read_text(), f"output differs from {GOLDEN}; --update-golden if intended"
    assert "NaN" not in got
