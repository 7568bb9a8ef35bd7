"""Properties of every parser and decoder in exporters/sources, on generated input.

For arbitrary text (and bytes, for file reads): nothing is raised but a parser's documented
error, numbers come out finite, counters non-negative and within 64 bits. Where valid input can
be generated, parsing it gives back what was generated.
"""

from __future__ import annotations

import ctypes
import math
import string
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcwatch.exporters.sources import nvml
from dcwatch.exporters.sources.hwmon import (
    PHYSICAL,
    SCALE,
    HwmonSensor,
    ScaledRead,
    fan_min_is_set,
    parse_attr,
    parse_coretemp_label,
    read_scaled,
    temp_threshold_is_set,
)
from dcwatch.exporters.sources.infiniband import is_hw_counter, parse_rate, parse_state
from dcwatch.exporters.sources.ipmi import IpmiError, parse_dcmi_power_reading
from dcwatch.exporters.sources.limits import DCMI_MAX_PERIOD_S, DCMI_MAX_WATTS, UINT64_MAX
from dcwatch.exporters.sources.netclass import (
    MBIT,
    arphrd_name,
    parse_flags,
    parse_speed,
    parse_uevent,
)
from dcwatch.exporters.sources.powercap import RaplZone, WrapCounter, parse_zone_name
from dcwatch.exporters.sources.procfs import (
    NETDEV_FIELDS,
    NetDevStats,
    parse_netdev,
    parse_vlan_config,
)
from dcwatch.exporters.sources.sysfs import FileCache, parse_int
from dcwatch.exporters.sources.thermal_zone import trip_is_set
from tests.fakes.fake_nvml import c_nvmlFieldValue_t

FAST = settings(max_examples=200, deadline=None, database=None)
FILES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Text that looks like what these files hold, salted with what trips naive parsers: signs,
# exponents, hex, underscores, non-ASCII digits (int() takes "١٢", regex \d matches them),
# superscripts ("²".isdigit() is True, int("²") raises), line breaks other than "\n".
NUMERIC = "0123456789-+.eExXabcdefABCDEF_ :|=\t\n\r\x0b\u0661\u00b2\u2028"
texts = st.one_of(
    st.text(),
    st.text(alphabet=NUMERIC, max_size=80),
    st.lists(st.sampled_from(["-5", "1" * 25, "nan", "inf", "1e21", "0x10", "1_0", "\u0662"])).map(
        " ".join
    ),
)
u64 = st.integers(0, UINT64_MAX)
s64 = st.integers(-(2**63), 2**63 - 1)
any_int = st.integers()


# --- sysfs: integers as the kernel prints them -----------------------------------------------


@FAST
@given(texts)
def test_parse_int_is_none_or_a_64_bit_integer(text: str) -> None:
    v = parse_int(text)
    assert v is None or (-(2**63) <= v <= UINT64_MAX)


@FAST
@given(st.one_of(s64, u64), st.sampled_from(["", "\n", " \n", "\t"]))
def test_parse_int_round_trips_kernel_output(value: int, tail: str) -> None:
    assert parse_int(f"{value}{tail}") == value


@FAST
@given(st.integers(min_value=UINT64_MAX + 1) | st.integers(max_value=-(2**63) - 1))
def test_parse_int_refuses_what_no_64_bit_integer_holds(value: int) -> None:
    assert parse_int(str(value)) is None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attrs")


@FILES
@given(data=st.binary(max_size=64), valid=st.sampled_from([None, lambda v: v >= 0]))
def test_file_reads_count_what_they_refuse(scratch: Path, data: bytes, valid: object) -> None:
    path = scratch / "attr"
    path.write_bytes(data)
    cache = FileCache()
    try:
        v = cache.read_int(path, valid)  # type: ignore[arg-type]
        assert v is None or (-(2**63) <= v <= UINT64_MAX and (valid is None or v >= 0))
        assert cache.errors == (v is None)  # the file exists: any None is a refusal
        f = cache.read_float(path)
        assert f is None or math.isfinite(f)
    finally:
        cache.close()


# --- /proc/net/dev and /proc/net/vlan/config -------------------------------------------------

HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed\n"
)
# Linux interface names: up to 15 bytes, no "/", ":" or whitespace.
if_names = st.text(alphabet=string.ascii_letters + string.digits + "._-@", min_size=1, max_size=15)
interfaces = st.lists(
    st.tuples(if_names, st.lists(u64, min_size=16, max_size=16)),
    max_size=8,
    unique_by=lambda t: t[0],
)
BAD_COUNTERS = ["-5", "+5", "1.5", "1e3", "0x10", "1_0", "\u0661", "\u00b2", str(2**64), "x"]


def netdev_line(name: str, counters: list[int]) -> str:
    """A line formatted as net/core/net-procfs.c prints it."""
    widths = (8, 7, 4, 4, 4, 5, 10, 9, 8, 7, 4, 4, 4, 5, 7, 10)
    return f"{name:>6}:" + " ".join(f"{v:>{w}}" for v, w in zip(counters, widths, strict=True))


def stats_of(ifaces: list[tuple[str, list[int]]]) -> list[NetDevStats]:
    return [NetDevStats(name, *counters) for name, counters in ifaces]


token = st.one_of(u64.map(str), st.sampled_from(BAD_COUNTERS), st.text(max_size=4))


@st.composite
def netdev_like_line(draw: st.DrawFn) -> str:
    """A /proc/net/dev line whose counters may be wrong in a few places, or a column short."""
    fields = [str(v) for v in draw(st.lists(u64, min_size=15, max_size=17))]
    for col, bad in draw(st.dictionaries(st.integers(0, 14), token, max_size=2)).items():
        fields[col] = bad
    return f"{draw(if_names)}: " + " ".join(fields)


netdev_like = st.lists(netdev_like_line(), max_size=6).map("\n".join)


@FAST
@given(st.one_of(texts, netdev_like))
def test_parse_netdev_never_raises_and_gives_u64_counters(text: str) -> None:
    bad: list[str] = []
    stats = parse_netdev(text, malformed=bad)
    names = [s.device for s in stats]
    assert len(set(names)) == len(names)
    for s in stats:
        assert s.device and s.device == s.device.strip()
        assert all(0 <= getattr(s, f) <= UINT64_MAX for f in NETDEV_FIELDS)
    assert len(stats) + len(bad) <= len(text.splitlines())


@FAST
@given(interfaces, st.booleans())
def test_parse_netdev_round_trips_kernel_output(
    ifaces: list[tuple[str, list[int]]], header: bool
) -> None:
    text = (HEADER if header else "") + "".join(netdev_line(n, c) + "\n" for n, c in ifaces)
    bad: list[str] = []
    assert parse_netdev(text, malformed=bad) == stats_of(ifaces)
    assert bad == []


@FAST
@given(interfaces, st.data())
def test_a_malformed_line_costs_only_itself(
    ifaces: list[tuple[str, list[int]]], data: st.DataObject
) -> None:
    lines = [netdev_line(n, c) for n, c in ifaces]
    taken = {n for n, _ in ifaces}
    name = data.draw(if_names.filter(lambda n: n not in taken), label="broken device")
    fields = [str(v) for v in data.draw(st.lists(u64, min_size=16, max_size=16))]
    col = data.draw(st.integers(0, 15), label="column")
    fields[col] = data.draw(st.sampled_from(BAD_COUNTERS), label="bad counter")
    bad_line = f"{name:>6}: " + " ".join(fields)
    lines.insert(data.draw(st.integers(0, len(lines)), label="position"), bad_line)
    bad: list[str] = []
    assert parse_netdev("\n".join(lines), malformed=bad) == stats_of(ifaces)
    assert bad == [bad_line]


@FAST
@given(interfaces, st.sets(if_names))
def test_parse_netdev_want_is_a_filter(
    ifaces: list[tuple[str, list[int]]], wanted: set[str]
) -> None:
    text = "".join(netdev_line(n, c) + "\n" for n, c in ifaces)
    got = parse_netdev(text, wanted.__contains__)
    assert got == [s for s in stats_of(ifaces) if s.device in wanted]


vlan_like = st.lists(
    st.tuples(if_names, st.one_of(token, st.integers(0, 9999).map(str)), if_names).map(" | ".join),
    max_size=6,
).map("\n".join)


@FAST
@given(st.one_of(texts, vlan_like))
def test_parse_vlan_config_never_raises(text: str) -> None:
    for dev, info in parse_vlan_config(text).items():
        assert info.device == dev and 0 <= info.vlan_id <= 4095


@FAST
@given(st.dictionaries(if_names, st.tuples(st.integers(0, 4095), if_names), max_size=6))
def test_parse_vlan_config_round_trips(vlans: dict[str, tuple[int, str]]) -> None:
    text = "VLAN Dev name\t | VLAN ID\nName-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\n" + "".join(
        f"{dev:<15}| {vid}  | {parent}\n" for dev, (vid, parent) in vlans.items()
    )
    got = parse_vlan_config(text)
    assert {d: (v.vlan_id, v.parent) for d, v in got.items()} == vlans


# --- /sys/class/net ---------------------------------------------------------------------------


@FAST
@given(st.one_of(st.none(), texts))
def test_netclass_value_parsers_never_raise(text: str | None) -> None:
    speed = parse_speed(text)
    assert speed is None or (math.isfinite(speed) and 0 < speed <= (2**32 - 1) * MBIT)
    flags = parse_flags(text)
    assert flags is None or 0 <= flags <= UINT64_MAX
    assert isinstance(arphrd_name(text), str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parse_uevent(text).items())


@FAST
@given(st.integers(1, 2**32 - 1).filter(lambda v: v != 65535 and v != 2**32 - 1))
def test_parse_speed_round_trips(mbit: int) -> None:
    assert parse_speed(f"{mbit}\n") == mbit * MBIT


@FAST
@given(st.integers(0, 2**64 - 1))
def test_parse_flags_round_trips(flags: int) -> None:
    assert parse_flags(f"{flags:#x}\n") == flags


@FAST
@given(
    st.dictionaries(
        st.text(alphabet=string.ascii_uppercase + "_", min_size=1, max_size=12),
        st.text(alphabet=string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "")
                .replace("\x0c", ""), max_size=20),
        max_size=6,
    )
)  # fmt: skip
def test_parse_uevent_round_trips(env: dict[str, str]) -> None:
    assert parse_uevent("".join(f"{k}={v}\n" for k, v in env.items())) == env


# --- hwmon ------------------------------------------------------------------------------------

KINDS = list(SCALE)


attr_like = st.tuples(
    st.sampled_from([*KINDS, "pwm", "Core ", "Package id "]),
    st.text(alphabet="0123456789\u0661\u00b2 ", min_size=1, max_size=3),
    st.sampled_from(["_input", "_crit", "", "_x1"]),
).map("".join)


@FAST
@given(st.one_of(texts, attr_like))
def test_hwmon_name_parsers_never_raise(text: str) -> None:
    parsed = parse_attr(text)
    if parsed is not None:
        kind, index, attr = parsed
        assert kind in SCALE and index >= 0
        assert text.startswith(kind) and text.endswith(f"_{attr}") and text.isascii()
    label = parse_coretemp_label(text)
    assert label is None or (label[0] in ("package", "core") and label[1].isdigit())


@FAST
@given(
    st.sampled_from(KINDS),
    st.integers(0, 10**6),
    st.from_regex(r"[a-z]+(_[a-z]+)?", fullmatch=True),
)
def test_parse_attr_round_trips(kind: str, index: int, attr: str) -> None:
    assert parse_attr(f"{kind}{index}_{attr}") == (kind, index, attr)


@FAST
@given(st.sampled_from(["Package id", "Physical id", "Core"]), st.integers(0, 10**4))
def test_parse_coretemp_label_round_trips(role: str, n: int) -> None:
    assert parse_coretemp_label(f"{role} {n}") == ("core" if role == "Core" else "package", str(n))


@FAST
@given(st.sampled_from(KINDS), any_int)
def test_hwmon_physical_checks_are_total(kind: str, raw: int) -> None:
    ok = HwmonSensor(kind, f"{kind}1", "", "/x").is_physical(raw)
    if kind == "temp":
        assert ok == (-273150 < raw <= 2_000_000)
    elif kind == "power":
        assert ok == (0 <= raw <= 10**12)
    elif kind in ("fan", "energy"):
        assert ok == (raw >= 0)  # speeds and energy use cannot be negative
    else:
        assert ok  # negative rails and reverse currents are physical
    assert isinstance(temp_threshold_is_set(raw), bool) and isinstance(fan_min_is_set(raw), bool)
    assert isinstance(trip_is_set(raw), bool)


@FILES
@given(kind=st.sampled_from(KINDS), data=st.one_of(st.binary(max_size=40), texts.map(str.encode)))
def test_read_scaled_yields_only_finite_physical_values(
    scratch: Path, kind: str, data: bytes
) -> None:
    path = scratch / f"{kind}1_input"
    path.write_bytes(data)
    sensor = HwmonSensor(kind, f"{kind}1", "", str(path))
    read = ScaledRead(str(path), SCALE[kind], (), valid=sensor.is_physical)
    cache = FileCache()
    try:
        got = list(read_scaled(cache, [read]))
        assert len(got) + cache.errors == 1  # a value, or one counted read error
        for _, value in got:
            assert math.isfinite(value)
            check = PHYSICAL.get(kind)
            assert check is None or check(round(value * SCALE[kind]))
    finally:
        cache.close()


# --- thermal zones ----------------------------------------------------------------------------


@FAST
@given(st.integers(-273149, 2_000_000).filter(bool))
def test_trip_points_in_range_are_set(raw: int) -> None:
    assert trip_is_set(raw)


# --- powercap / RAPL --------------------------------------------------------------------------


@FAST
@given(texts)
def test_parse_zone_name_never_raises(name: str) -> None:
    domain, package = parse_zone_name(name)
    assert isinstance(domain, str) and (package is None or package.isdigit())


@FAST
@given(st.integers(0, 10**6))
def test_parse_zone_name_round_trips(n: int) -> None:
    assert parse_zone_name(f"package-{n}") == ("package", str(n))


@st.composite
def rapl_reads(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A counter range and in-range reads taken less than one wrap apart."""
    rng = draw(st.integers(1, 2**40))
    steps = draw(st.lists(st.integers(0, rng - 1), max_size=30))
    start = draw(st.integers(0, rng - 1))
    reads, v = [start], start
    for step in steps:
        v = (v + step) % rng
        reads.append(v)
    return rng, reads


@FAST
@given(rapl_reads())
def test_wrap_counter_is_monotonic_and_counts_every_step(case: tuple[int, list[int]]) -> None:
    rng, reads = case
    c = WrapCounter(rng)
    totals = [c.update(r) for r in reads]
    assert all(b >= a for a, b in pairwise(totals))
    assert totals[-1] - totals[0] == sum((b - a) % rng for a, b in pairwise(reads))


@FAST
@given(st.one_of(st.none(), st.integers(1, 2**50)), any_int)
def test_rapl_energy_is_physical_within_its_range(max_range: int | None, raw: int) -> None:
    z = RaplZone("intel-rapl:0", "/x", "package-0", "package", "0", max_range, True)
    assert z.energy_is_physical(raw) == (raw >= 0 and (max_range is None or raw <= max_range))


# --- InfiniBand -------------------------------------------------------------------------------


@FAST
@given(st.one_of(st.none(), texts))
def test_infiniband_parsers_never_raise(text: str | None) -> None:
    state = parse_state(text)
    assert state is None or (0 <= state[0] <= UINT64_MAX and isinstance(state[1], str))
    rate = parse_rate(text)
    assert rate is None or (math.isfinite(rate) and rate > 0)
    assert isinstance(is_hw_counter(text or ""), bool)


@FAST
@given(st.integers(0, 2**31), st.text(alphabet=string.ascii_letters + "_", max_size=20))
def test_parse_state_round_trips(n: int, name: str) -> None:
    assert parse_state(f"{n}: {name}\n") == (n, name)


@FAST
@given(st.integers(1, 10**5), st.sampled_from(["", " (4X HDR)", " (1X SDR)"]))
def test_parse_rate_round_trips(gbit: int, tail: str) -> None:
    assert parse_rate(f"{gbit} Gb/sec{tail}\n") == gbit * 1e9 / 8


# --- IPMI DCMI --------------------------------------------------------------------------------


DCMI_KEYS = (
    "Instantaneous power reading",
    "Minimum during sampling period",
    "Maximum during sampling period",
    "Average power reading over sample period",
    "Sampling period",
    "Power reading state is",
    "IPMI timestamp",
)
dcmi_values = st.one_of(
    texts,
    st.tuples(st.sampled_from(["1e400", "9" * 400, "65536", "-5", "0", "\u0663"]),
              st.sampled_from([" Watts", " Milliseconds", " Seconds", "W", ""])).map("".join),
)  # fmt: skip
dcmi_texts = st.one_of(
    texts,
    st.lists(
        st.tuples(st.sampled_from(DCMI_KEYS), st.sampled_from([":", " : "]), dcmi_values),
        max_size=8,
    ).map(lambda rows: "\n".join(f"{k}{sep}{v}" for k, sep, v in rows)),
)


@FAST
@given(dcmi_texts)
def test_parse_dcmi_raises_only_ipmi_error(text: str) -> None:
    try:
        r = parse_dcmi_power_reading(text)
    except IpmiError:
        return
    assert 0 < r.instantaneous <= DCMI_MAX_WATTS
    for w in (r.minimum, r.maximum, r.average):
        assert w is None or 0 <= w <= DCMI_MAX_WATTS
    assert r.sampling_period is None or 0 <= r.sampling_period <= DCMI_MAX_PERIOD_S


watts = st.integers(0, 65535)


@FAST
@given(st.integers(1, 65535), watts, watts, watts, st.integers(1, 2**32 - 1), st.booleans())
def test_parse_dcmi_round_trips_both_ipmitool_layouts(
    now: int, lo: int, hi: int, avg: int, period_ms: int, old: bool
) -> None:
    rows = [
        ("Instantaneous power reading", f"{now} Watts"),
        ("Minimum during sampling period", f"{lo} Watts"),
        ("Maximum during sampling period", f"{hi} Watts"),
        ("Average power reading over sample period", f"{avg} Watts"),
        ("IPMI timestamp", "Tue Nov 19 14:02:11 2024"),
        ("Sampling period", f"{period_ms} Milliseconds"),
        ("Power reading state is", "activated"),
    ]
    if old:  # ipmitool 1.8.18: "Key:   value", indented
        text = "".join(f"    {k + ':':<42}{v}\n" for k, v in rows)
    else:  # 1.8.19+: "Key   : value"
        text = "".join(f"{k:<41}: {v}\n" for k, v in rows)
    r = parse_dcmi_power_reading(text)
    assert (r.instantaneous, r.minimum, r.maximum, r.average) == (now, lo, hi, avg)
    assert r.sampling_period == pytest.approx(period_ms / 1000)


# --- NVML decode helpers ----------------------------------------------------------------------

INT_MEMBERS = {"uiVal": (0, 2**32 - 1), "ulVal": (0, 2**64 - 1), "ullVal": (0, 2**64 - 1),
               "sllVal": (-(2**63), 2**63 - 1), "siVal": (-(2**31), 2**31 - 1),
               "usVal": (0, 2**16 - 1)}  # fmt: skip


@FAST
@given(st.integers(0, 2**32 - 1) | st.integers(0, 8), u64)
def test_decode_field_is_none_or_a_finite_value_of_its_member(vtype: int, bits: int) -> None:
    fv = c_nvmlFieldValue_t()
    fv.valueType = vtype
    fv.value.ullVal = bits  # any 8 bytes in the union: NaN and inf doubles included
    v = nvml.decode_field(fv)
    member = nvml.VALUE_MEMBERS.get(vtype)
    if member is None:
        assert v is None
    elif member == "dVal":
        assert v is None or (isinstance(v, float) and math.isfinite(v))
        assert (v is None) == (not math.isfinite(fv.value.dVal))
    else:
        lo, hi = INT_MEMBERS[member]
        if ctypes.sizeof(ctypes.c_ulong) == 4 and member == "ulVal":
            hi = 2**32 - 1
        assert isinstance(v, int) and lo <= v <= hi and v == getattr(fv.value, member)


@FAST
@given(st.one_of(st.none(), st.text(), st.binary()), st.one_of(st.none(), any_int))
def test_nvml_text_and_describe_never_raise(value: str | bytes | None, code: int | None) -> None:
    t = nvml.text(value)
    assert isinstance(t, str) and t == t.strip()
    assert isinstance(nvml.describe(code), str)
