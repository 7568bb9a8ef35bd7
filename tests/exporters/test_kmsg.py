"""Kernel-log XIDs (exporters/sources/kmsg.py): parsing NVRM Xid lines, reading only what is
new, non-blocking, and the gpu collector counting 79/119/120 by the GPU's PCI address."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import exposition

from dcwatch.agent.config import AgentConfig
from dcwatch.exporters.base import CollectorDeps
from dcwatch.exporters.gpu.collector import GpuCollector, GpuOptions
from dcwatch.exporters.sources.kmsg import KmsgReader, parse_xid, pci_key
from tests.fakes.fake_nvml import FakeNvml
from tests.helpers import sample, wait_until

U1 = "GPU-7c2d9e10-3a4b-4c5d-8e6f-a1b2c3d4e5f1"  # the fake's T4, PCI 00000000:3C:00.0


def record(seq: int, msg: str) -> str:
    """One /dev/kmsg record: prefix, message, and a continuation line as the kernel adds."""
    return f"3,{seq},{1000 + seq},-;{msg}\n SUBSYSTEM=pci\n"


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (
            "NVRM: Xid (PCI:0000:3c:00): 79, pid=1912, name=python3, GPU has fallen off the bus.",
            ((0, 0x3C, 0), 79),
        ),
        ("NVRM: Xid (PCI:0000:18:00): 119, pid=7, name=x, Timeout after 6s", ((0, 0x18, 0), 119)),
        ("NVRM: Xid (PCI:0001:3B:00.0): 120, GSP error", ((1, 0x3B, 0), 120)),
        ("NVRM: Xid (PCI:3b:00): 13, Graphics Exception", ((0, 0x3B, 0), 13)),
        ("NVRM: GPU at PCI:0000:3c:00: GPU-7c2d9e10", None),
        ("nvidia-nvlink: Xid (PCI:0000:3c:00): 74", None),
        ("", None),
    ],
)
def test_parse_xid(line: str, want: object) -> None:
    assert parse_xid(line) == want


def test_pci_key_matches_nvml_and_kernel_spellings() -> None:
    assert pci_key("00000000:3C:00.0") == pci_key("0000:3c:00") == (0, 0x3C, 0)
    assert pci_key("garbage") is None
    assert pci_key("zz:00:00") is None


def test_reader_skips_the_past_and_reads_only_new_records(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_text(record(1, "NVRM: Xid (PCI:0000:3c:00): 79, before the agent started"))
    r = KmsgReader(str(log))
    assert r.poll() == []
    with log.open("a") as f:
        f.write(record(2, "NVRM: Xid (PCI:0000:3c:00): 79, pid=1, GPU has fallen off the bus."))
        f.write(record(3, "usb 1-1: new device"))
        f.write("3,4,1004,-;NVRM: Xid (PCI:0000:18:00): 1")  # half a line so far
    assert r.poll() == [((0, 0x3C, 0), 79)]
    with log.open("a") as f:
        f.write("19, pid=2, Timeout\n")
    assert r.poll() == [((0, 0x18, 0), 119)]
    assert r.poll() == []
    r.close()


def test_unreadable_log_is_skipped_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dcwatch.kmsg")
    r = KmsgReader(str(tmp_path / "missing"))
    assert r.poll() == [] and r.poll() == []
    assert sum("CAP_SYSLOG" in m for m in caplog.messages) == 1


def test_non_blocking_on_a_fifo(tmp_path: Path) -> None:
    """A device that has nothing to say (like /dev/kmsg) must not block the scrape."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer, so reads say EAGAIN
    try:
        r = KmsgReader(str(fifo))
        r._fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO cannot seek
        assert r.poll() == []
        os.write(keep, record(1, "NVRM: Xid (PCI:0000:3c:00): 120, GSP").encode())
        assert r.poll() == [((0, 0x3C, 0), 120)]
        r.close()
    finally:
        os.close(keep)


@pytest.fixture
def kmsg_collector(tmp_path: Path) -> Iterator[tuple[GpuCollector, Path, FakeNvml]]:
    log = tmp_path / "kmsg"
    log.write_text("")
    fake = FakeNvml()
    cfg = AgentConfig(
        procfs=tmp_path,
        collectors=("gpu",),
        options={"gpu": GpuOptions(kmsg_path=str(log))},
    )
    c = GpuCollector(cfg, CollectorDeps(nvml=fake))
    yield c, log, fake
    c.close()


def render(c: GpuCollector) -> str:
    class _F:
        def collect(self) -> list:  # type: ignore[type-arg]
            return list(c.collect())

    return exposition.generate_latest(_F()).decode()  # type: ignore[arg-type]


def test_collector_counts_kernel_only_xids_by_pci_address(
    kmsg_collector: tuple[GpuCollector, Path, FakeNvml],
) -> None:
    c, log, fake = kmsg_collector
    render(c)
    wait_until(lambda: fake.open_event_sets() == 1, timeout=5, what="event set")
    with log.open("a") as f:
        f.write(record(1, "NVRM: Xid (PCI:0000:3c:00): 79, pid=1, GPU has fallen off the bus."))
        f.write(record(2, "NVRM: Xid (PCI:0000:3c:00): 79, pid=1, GPU has fallen off the bus."))
        f.write(record(3, "NVRM: Xid (PCI:0000:18:00): 13, also an NVML event: not twice"))
        f.write(record(4, "NVRM: Xid (PCI:0000:99:00): 119, a GPU NVML does not list"))
    t = render(c)
    assert sample(t, "dcwatch_gpu_xid_errors_total", gpu="1", uuid=U1, xid="79") == 2
    assert sample(t, "dcwatch_gpu_xid_errors_total", xid="13") is None
    assert sample(t, "dcwatch_gpu_xid_errors_total", gpu="", uuid="", xid="119") == 1
    assert sample(render(c), "dcwatch_gpu_xid_errors_total", gpu="1", xid="79") == 2  # once
