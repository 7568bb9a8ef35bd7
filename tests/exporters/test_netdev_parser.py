"""Pure parsers of /proc/net/dev and /proc/net/vlan/config, tested with strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcwatch.exporters.sources.procfs import (
    NETDEV_FIELDS,
    NetDevStats,
    parse_netdev,
    parse_vlan_config,
    read_netdev,
)
from dcwatch.exporters.sources.sysfs import FileCache

HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed\n"
)
GOOD = "  eth1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"


def test_header_lines_are_skipped_and_columns_map_in_order() -> None:
    text = HEADER + "  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
    (s,) = parse_netdev(text)
    assert s.device == "eth0"
    assert [getattr(s, f) for f in NETDEV_FIELDS] == list(range(1, 17))
    assert (s.receive_bytes, s.receive_drop, s.transmit_bytes, s.transmit_drop) == (1, 4, 9, 12)


def test_kernel_spacing_names_with_dots_and_glued_colons() -> None:
    # As the kernel prints them: "%6s:%8llu ...", so long names and big numbers touch the colon.
    text = HEADER + (
        "    lo:8290163412 21534876    0    0    0     0          0         0 8290163412 "
        "21534876    0    0    0     0       0          0\n"
        "bond0.100:61203948571234 45102938471    0    0    0     0          0      1203 "
        "28731904556018 25109384712    0    0    0     0       0          0\n"
        "cali8d1e5f2a0b3: 2830174   19283    0    0    0     0          0         0 11928374"
        "   20817    0    0    0     0       0          0\n"
    )
    got = {s.device: s for s in parse_netdev(text)}
    assert list(got) == ["lo", "bond0.100", "cali8d1e5f2a0b3"]
    assert got["bond0.100"].receive_bytes == 61203948571234
    assert got["bond0.100"].receive_multicast == 1203
    assert got["bond0.100"].transmit_packets == 25109384712
    assert got["lo"].receive_bytes == got["lo"].transmit_bytes == 8290163412
    assert got["cali8d1e5f2a0b3"].transmit_bytes == 11928374


def test_tabs_extra_spaces_and_no_trailing_newline() -> None:
    text = "\t  eno1 :\t 5  6 0 0 0 0 0 0   7 8 0 0 0 0 0 0"
    (s,) = parse_netdev(text)
    assert (s.device, s.receive_bytes, s.receive_packets, s.transmit_bytes) == ("eno1", 5, 6, 7)


def test_64bit_counters_are_kept_exact() -> None:
    big = 2**64 - 1
    (s,) = parse_netdev(f"eth0: {big} 1 0 0 0 0 0 0 {big - 5} 1 0 0 0 0 0 0\n")
    assert s.receive_bytes == big
    assert s.transmit_bytes == big - 5


def test_malformed_lines_are_skipped() -> None:
    text = HEADER + (
        "broken: 1 2 3\n"  # too few columns
        "weird: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16\n"  # not a number
        ": 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"  # no name
        "\n"
        "ok: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
    )
    assert [s.device for s in parse_netdev(text)] == ["ok"]


def test_malformed_lines_are_reported_to_the_caller() -> None:
    text = HEADER + (
        "broken: 1 2 3\n"
        "no colon at all\n"
        ": 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
        "\n"
        "ok: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
    )
    bad: list[str] = []
    assert [s.device for s in parse_netdev(text, malformed=bad)] == ["ok"]
    assert bad == ["broken: 1 2 3", "no colon at all", ": 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16"]


@pytest.mark.parametrize(
    "field",
    ["-5", "+5", "1.5", "1e3", "0x10", "1_000", "\u0661", str(2**64), "NaN"],
    ids=["negative", "plus", "fraction", "exponent", "hex", "underscore", "arabic-digit",
         "beyond-u64", "nan"],
)  # fmt: skip
def test_counters_are_non_negative_u64_integers(field: str) -> None:
    text = HEADER + (
        f"  eth0: 1 2 3 4 5 6 7 8 {field} 10 11 12 13 14 15 16\n"
        "  eth1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
    )
    bad: list[str] = []
    assert [s.device for s in parse_netdev(text, malformed=bad)] == ["eth1"]
    assert len(bad) == 1 and bad[0].startswith("  eth0:")


def test_a_repeated_name_keeps_the_first_line() -> None:
    text = "eth0: " + " ".join(["1"] * 16) + "\neth0: " + " ".join(["2"] * 16) + "\n"
    bad: list[str] = []
    (s,) = parse_netdev(text, malformed=bad)
    assert s.receive_bytes == 1 and len(bad) == 1


def test_read_netdev_counts_malformed_lines_as_read_errors(tmp_path: Path) -> None:
    path = tmp_path / "dev"
    path.write_text(HEADER + "eth0: -1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n" + GOOD)
    cache = FileCache()
    stats = read_netdev(cache, path)
    assert stats is not None and [s.device for s in stats] == ["eth1"]
    assert cache.errors == 1
    assert read_netdev(cache, tmp_path / "missing") is None and cache.errors == 1
    cache.close()


def test_extra_columns_from_a_future_kernel_are_ignored() -> None:
    (s,) = parse_netdev("eth0: " + " ".join(str(i) for i in range(1, 20)) + "\n")
    assert s.transmit_compressed == 16


def test_want_skips_devices_before_parsing_their_numbers() -> None:
    text = HEADER + (
        "    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
        "veth1: junk that would not parse\n"
        "  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
    )
    seen: list[str] = []

    def want(name: str) -> bool:
        seen.append(name)
        return name == "eth0"

    assert [s.device for s in parse_netdev(text, want)] == ["eth0"]
    assert seen == ["lo", "veth1", "eth0"]


def test_empty_text() -> None:
    assert parse_netdev("") == []
    assert parse_netdev(HEADER) == []


def test_stats_are_plain_values() -> None:
    a = parse_netdev("eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16")[0]
    assert a == NetDevStats("eth0", *range(1, 17))


def test_vlan_config() -> None:
    text = (
        "VLAN Dev name\t | VLAN ID\n"
        "Name-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\n"
        "bond0.100      | 100  | bond0\n"
        "vlan2001       | 2001  | eno1\n"
    )
    got = parse_vlan_config(text)
    assert set(got) == {"bond0.100", "vlan2001"}
    assert (got["bond0.100"].vlan_id, got["bond0.100"].parent) == (100, "bond0")
    assert (got["vlan2001"].vlan_id, got["vlan2001"].parent) == (2001, "eno1")
    assert parse_vlan_config("") == {}


def test_vlan_config_refuses_ids_no_tag_can_carry() -> None:
    text = "ok | 4095 | eno1\nbig | 4096 | eno1\nneg | -1 | eno1\nodd | \u00b2 | eno1\n"
    assert set(parse_vlan_config(text)) == {"ok"}
