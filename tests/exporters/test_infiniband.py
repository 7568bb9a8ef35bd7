"""InfiniBand: parsers, the sysfs reader on the fixture tree, and the collector's IB metrics."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from dcwatch.agent.config import AgentConfig
from dcwatch.exporters.network import IB_COUNTERS, NetworkCollector
from dcwatch.exporters.sources.infiniband import (
    InfinibandReader,
    discover,
    is_hw_counter,
    parse_rate,
    parse_state,
)

from .test_network import scrape

GPU = Path(__file__).parents[1] / "fixtures" / "gpu-node-a"
VM = Path(__file__).parents[1] / "fixtures" / "minimal-vm"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("4: ACTIVE\n", (4, "ACTIVE")),
        ("1: DOWN", (1, "DOWN")),
        ("5: LinkUp", (5, "LinkUp")),
        ("2: Polling", (2, "Polling")),
        ("", None),
        (None, None),
        ("ACTIVE", None),
    ],
)
def test_parse_state(text: str | None, want: tuple[int, str] | None) -> None:
    assert parse_state(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("200 Gb/sec (4X HDR)\n", 25e9),
        ("400 Gb/sec (4X NDR)", 50e9),
        ("100 Gb/sec (4X EDR)", 12.5e9),
        ("56 Gb/sec (4X FDR)", 7e9),
        ("2.5 Gb/sec (1X SDR)", 312.5e6),
        ("10 Gb/sec (4X)", 1.25e9),
        ("0 Gb/sec", None),
        ("", None),
        (None, None),
        ("fast", None),
    ],
)
def test_parse_rate(text: str | None, want: float | None) -> None:
    assert parse_rate(text) == want


def test_hw_counters_that_are_not_counters_are_left_out() -> None:
    assert is_hw_counter("out_of_buffer")
    assert not is_hw_counter("lifespan")  # a caching period in ms
    assert not is_hw_counter("active_qps")  # bnxt_re levels
    assert not is_hw_counter("watermark_qps")


def test_discover_fixture_layout() -> None:
    hcas = {h.name: h for h in discover(GPU / "sys")}
    assert set(hcas) == {"mlx5_0", "mlx5_1"}
    m0 = hcas["mlx5_0"]
    assert (m0.fw_ver, m0.board_id, m0.node_guid, m0.hca_type) == (
        "20.39.1002",
        "MT_0000000223",
        "b8ce:f603:009a:5ce2",
        "MT4123",
    )
    assert [p.port for p in m0.ports] == ["1", "2"]
    p1 = m0.ports[0]
    assert p1.link_layer == "InfiniBand"
    names = [n for n, _ in p1.counters]
    assert "port_xmit_data" in names and "unicast_xmit_packets" in names
    assert "lifespan" not in [n for n, _ in p1.hw_counters]


def test_discover_limits_counters_and_handles_no_infiniband() -> None:
    (m0, _) = discover(GPU / "sys", counters={"port_xmit_data", "symbol_error"})
    assert [n for n, _ in m0.ports[0].counters] == ["port_xmit_data", "symbol_error"]
    assert discover(VM / "sys") == []
    assert discover(Path("/nonexistent")) == []


def test_read_port_converts_4_octet_data_counters_to_bytes() -> None:
    r = InfinibandReader(GPU / "sys", 60.0)
    try:
        m0 = next(h for h in r.hcas() if h.name == "mlx5_0")
        p1 = r.read_port(m0.ports[0])
        # counters/port_xmit_data holds 1829384756102 (units of 4 octets)
        assert p1.counters["port_xmit_data"] == 1829384756102 * 4 == 7317539024408
        assert p1.counters["port_rcv_data"] == 1765029384711 * 4
        assert p1.counters["port_xmit_packets"] == 4291827364  # packets are not scaled
        assert (p1.state, p1.state_name, p1.phys_state, p1.phys_state_name) == (
            4,
            "ACTIVE",
            5,
            "LinkUp",
        )
        assert p1.rate_bytes == 25e9
        assert p1.hw_counters["out_of_buffer"] == 2231
        p2 = r.read_port(m0.ports[1])
        assert (p2.state, p2.state_name, p2.phys_state, p2.phys_state_name) == (
            1,
            "DOWN",
            2,
            "Polling",
        )
        assert r.errors == 0
    finally:
        r.close()


def test_collector_infiniband_metrics() -> None:
    c = NetworkCollector(AgentConfig(sysfs=GPU / "sys", procfs=GPU / "proc"))
    try:
        m = scrape(c)
        p1 = {"device": "mlx5_0", "port": "1"}
        p2 = {"device": "mlx5_0", "port": "2"}
        assert m.get("dcwatch_infiniband_port_transmit_bytes_total", **p1) == 7317539024408
        assert m.get("dcwatch_infiniband_port_receive_bytes_total", **p1) == 7060117538844
        assert m.get("dcwatch_infiniband_port_rate_bytes_per_second", **p1) == 25e9
        assert (
            m.get("dcwatch_infiniband_port_rate_bytes_per_second", device="mlx5_1", port="1")
            == 50e9
        )
        assert m.get("dcwatch_infiniband_port_up", **p1) == 1
        assert m.get("dcwatch_infiniband_port_state", **p1) == 4
        # port 2: DOWN / Polling, and no rate (a down port's rate is a default, not a fact)
        assert m.get("dcwatch_infiniband_port_up", **p2) == 0
        assert m.get("dcwatch_infiniband_port_state", **p2) == 1
        assert m.get("dcwatch_infiniband_port_physical_state", **p2) == 2
        assert m.get("dcwatch_infiniband_port_rate_bytes_per_second", **p2) is None
        assert m.get("dcwatch_infiniband_port_link_downed_total", **p1) == 1
        assert m.get("dcwatch_infiniband_port_transmit_discards_total", **p1) == 17
        assert m.get("dcwatch_infiniband_port_symbol_errors_total", device="mlx5_1", port="1") == 5
        assert (
            m.get("dcwatch_infiniband_port_hw_counter_total", counter="out_of_buffer", **p1) == 2231
        )
        assert m.get("dcwatch_infiniband_port_hw_counter_total", counter="lifespan", **p1) is None
        assert m.labels("dcwatch_infiniband_info", device="mlx5_1") == {
            "device": "mlx5_1",
            "board_id": "MT_0000000838",
            "firmware_version": "28.39.1002",
            "node_guid": "946d:ae03:0041:7b30",
            "hca_type": "MT4129",
        }
        assert m.get("dcwatch_infiniband_port_info", link_layer="InfiniBand", **p1) == 1
        # Every counters/ file the table names is exported for an ACTIVE port.
        for spec in IB_COUNTERS.values():
            assert m.get(spec.name, **p1) is not None, spec.name
        assert c.read_errors() == 0
    finally:
        c.close()


def test_minimal_vm_has_no_infiniband_metrics() -> None:
    c = NetworkCollector(AgentConfig(sysfs=VM / "sys", procfs=VM / "proc"))
    try:
        assert not [n for n in scrape(c).names() if n.startswith("dcwatch_infiniband_")]
    finally:
        c.close()


def test_hca_that_disappears_vanishes_without_errors_and_comes_back(tmp_path: Path) -> None:
    shutil.copytree(GPU, tmp_path / "node", symlinks=True)
    root = tmp_path / "node"
    hca1 = root / "sys" / "class" / "infiniband" / "mlx5_1"
    cfg = AgentConfig(sysfs=root / "sys", procfs=root / "proc", rediscover_interval=0.2)
    c = NetworkCollector(cfg)
    try:
        assert scrape(c).get("dcwatch_infiniband_port_up", device="mlx5_1", port="1") == 1
        shutil.rmtree(hca1)  # driver reload, between two rediscoveries
        m = scrape(c)
        assert not m.find("dcwatch_infiniband_info", device="mlx5_1")
        assert not m.find("dcwatch_infiniband_port_up", device="mlx5_1")
        assert m.get("dcwatch_infiniband_port_up", device="mlx5_0", port="1") == 1
        shutil.copytree(GPU / "sys" / "class" / "infiniband" / "mlx5_1", hca1)
        time.sleep(0.25)  # rediscover_interval passes
        assert scrape(c).get("dcwatch_infiniband_port_up", device="mlx5_1", port="1") == 1
        assert c.read_errors() == 0
    finally:
        c.close()


def test_reader_rescans_at_once_when_a_port_vanishes(tmp_path: Path) -> None:
    shutil.copytree(GPU / "sys", tmp_path / "sys", symlinks=True)
    r = InfinibandReader(tmp_path / "sys", 3600.0, clock=lambda: 0.0)
    try:
        gone = r.hcas()[1]
        shutil.rmtree(tmp_path / "sys" / "class" / "infiniband" / gone.name)
        assert r.read_port(gone.ports[0]) is None
        assert [h.name for h in r.hcas()] == ["mlx5_0"]  # without waiting for the interval
        assert r.errors == 0
    finally:
        r.close()


def test_reader_rediscovers_on_its_interval(tmp_path: Path) -> None:
    shutil.copytree(GPU / "sys", tmp_path / "sys", symlinks=True)
    now = [0.0]
    r = InfinibandReader(tmp_path / "sys", 60.0, clock=lambda: now[0])
    try:
        assert [h.name for h in r.hcas()] == ["mlx5_0", "mlx5_1"]
        (tmp_path / "sys/class/infiniband/mlx5_0/fw_ver").write_text("20.40.1000\n")
        now[0] = 59.0
        assert r.hcas()[0].fw_ver == "20.39.1002"  # static: not re-read every scrape
        now[0] = 61.0
        assert r.hcas()[0].fw_ver == "20.40.1000"
    finally:
        r.close()


@pytest.mark.parametrize(
    "text", ["-4: ACTIVE", "\u0664: ACTIVE", "4.0: ACTIVE", "1" * 30 + ": ACTIVE"]
)
def test_parse_state_needs_a_small_non_negative_integer(text: str) -> None:
    assert parse_state(text) is None


@pytest.mark.parametrize("text", ["9" * 400 + " Gb/sec", "\u0662\u0660\u0660 Gb/sec (4X HDR)"])
def test_parse_rate_refuses_infinite_and_non_ascii_rates(text: str) -> None:
    assert parse_rate(text) is None


def test_negative_or_garbage_counters_are_read_errors(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    shutil.copytree(GPU / "sys", sysfs, symlinks=True)
    port = sysfs / "class/infiniband/mlx5_0/ports/1"
    (port / "counters/symbol_error").write_text("-3\n")
    (port / "counters/port_rcv_data").write_text("1" * 30 + "\n")  # beyond 64 bits
    (port / "hw_counters/out_of_buffer").write_text("-2231\n")
    r = InfinibandReader(sysfs, 60.0)
    try:
        m0 = next(h for h in r.hcas() if h.name == "mlx5_0")
        p1 = r.read_port(m0.ports[0])
        assert p1 is not None
        assert "symbol_error" not in p1.counters and "port_rcv_data" not in p1.counters
        assert "out_of_buffer" not in p1.hw_counters
        assert p1.counters["port_xmit_data"] == 1829384756102 * 4  # the rest still read
        assert r.errors == 3
    finally:
        r.close()
