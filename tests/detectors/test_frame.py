"""Frame alignment: grid, gauges, counters (resets), gaps, fill policy, missing/constant columns."""

from __future__ import annotations

import numpy as np
import pytest

from dcwatch.detectors.frame import (
    Frame,
    GridColumns,
    align,
    build_frames,
    column_name,
    combine,
    constant_columns,
    counter_rate,
    fill_gaps,
    frames_from_samples,
    latest_range,
    make_grid,
    prepare,
    reset_corrected,
    select_columns,
    split_column,
)
from dcwatch.detectors.sources.queries import parse_queries

NAN = np.nan


def arr(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


def test_grid_is_aligned_to_multiples_of_step() -> None:
    np.testing.assert_array_equal(make_grid(101, 160, 15), arr(105, 120, 135, 150))
    np.testing.assert_array_equal(make_grid(105, 150, 15), arr(105, 120, 135, 150))
    assert len(make_grid(106, 119, 15)) == 0
    assert latest_range(15, 4, 1000.0) == (945.0, 990.0)
    with pytest.raises(ValueError):
        make_grid(0, 10, 0)


def test_align_takes_last_sample_within_lookback() -> None:
    grid = arr(10, 20, 30, 40, 50)
    # irregular: two samples in (10,20], none in (30,40], one exactly on 50
    ts = arr(9.5, 12, 19, 27, 50)
    v = arr(1, 2, 3, 4, 5)
    np.testing.assert_array_equal(align(ts, v, grid, lookback=10), arr(1, 3, 4, NAN, 5))
    # a longer lookback bridges the gap with the older sample
    np.testing.assert_array_equal(align(ts, v, grid, lookback=15), arr(1, 3, 4, 4, 5))
    assert np.isnan(align(arr(), arr(), grid, 10)).all()


def test_counter_rate_steady_and_reset() -> None:
    ts = np.arange(0, 100, 10, dtype=float)  # samples every 10 s
    v = 5.0 * ts  # 5/s
    grid = arr(30, 60, 90)
    np.testing.assert_allclose(counter_rate(ts, v, grid, window=30, lookback=10), [5, 5, 5])
    # reset between t=40 and t=50: value drops to 20 (20 counted since the restart)
    v2 = v.copy()
    v2[5:] = 20 + 5.0 * (ts[5:] - 50)
    np.testing.assert_array_equal(reset_corrected(arr(10, 20, 5, 15, 3)), arr(10, 20, 25, 35, 38))
    # (40, 60]: samples 50 and 60; (30, 50]: 40 and 50 across the reset, counted as +20 in 10 s
    r = counter_rate(ts, v2, arr(50, 60), window=20, lookback=10)
    np.testing.assert_allclose(r, [2.0, 5.0])
    # a wider window: 5/s from 30 to 40, then +20 at the reset, over 20 s
    np.testing.assert_allclose(counter_rate(ts, v2, arr(50), 30, 10), [(50 + 20) / 20])
    # a window holding one sample gives no rate (as Prometheus' rate)
    assert np.isnan(counter_rate(ts, v2, arr(50), 10, 10)).all()


def test_counter_rate_needs_two_samples_and_irate() -> None:
    ts = arr(0, 10, 20, 60)
    v = arr(0, 10, 30, 70)
    grid = arr(20, 40, 60)
    r = counter_rate(ts, v, grid, window=30, lookback=15)
    # t=20: samples 0,10,20 -> 30/20; t=40: last sample 20 is older than lookback -> NaN;
    # t=60: only one sample in (30,60] -> NaN
    np.testing.assert_allclose(r, [1.5, NAN, NAN])
    np.testing.assert_allclose(counter_rate(ts, v, grid, 60, 15, last_two=True), [2.0, NAN, 1.0])
    assert np.isnan(counter_rate(arr(5), arr(1), grid, 30, 15)).all()


def test_combine_is_nan_aware() -> None:
    a, b = arr(1, NAN, NAN), arr(3, 4, NAN)
    np.testing.assert_array_equal(combine([a, b], "sum"), arr(4, 4, NAN))
    np.testing.assert_array_equal(combine([a, b], "max"), arr(3, 4, NAN))
    np.testing.assert_array_equal(combine([a, b], "min"), arr(1, 4, NAN))
    np.testing.assert_array_equal(combine([a, b], "mean"), arr(2, 4, NAN))
    with pytest.raises(ValueError):
        combine([a, b], "median")


def test_column_names_round_trip() -> None:
    assert column_name("t") == "t"
    c = column_name("gpu_temperature", "gpu", "3")
    assert c == 'gpu_temperature{gpu="3"}'
    assert split_column(c) == ("gpu_temperature", "gpu", "3")
    assert split_column("node_power") == ("node_power", None, None)


def test_build_frames_orders_columns_by_query_then_label_naturally() -> None:
    grid = arr(0, 15)
    parts = {
        "n1:9478": {
            (1, "b", None, None): arr(1, 2),
            (0, "a", "gpu", "10"): arr(3, 4),
            (0, "a", "gpu", "2"): arr(5, 6),
        }
    }
    f = build_frames(grid, parts)["n1:9478"]
    assert f.columns == ('a{gpu="2"}', 'a{gpu="10"}', "b")
    np.testing.assert_array_equal(f.column("b"), arr(1, 2))
    df = f.to_pandas()
    assert list(df.columns) == list(f.columns)
    assert str(df.index.tz) == "UTC" and df.index[1].timestamp() == 15


def test_build_frames_gives_each_node_its_own_columns() -> None:
    grid = arr(0, 15)
    parts = {
        "n1:9478": {(1, "b", None, None): arr(1, 2), (0, "a", "gpu", "1"): arr(3, 4)},
        "n2:9478": {(1, "b", None, None): arr(5, 6), (0, "a", "gpu", "1"): arr(7, 8)},
        "n3:9478": {(1, "b", None, None): arr(9, 10)},  # a node without GPUs
        "n4:9478": {},
    }
    frames = build_frames(grid, parts)
    assert frames["n1:9478"].columns == frames["n2:9478"].columns == ('a{gpu="1"}', "b")
    np.testing.assert_array_equal(frames["n2:9478"].values, [[7, 5], [8, 6]])
    assert frames["n3:9478"].columns == ("b",)
    np.testing.assert_array_equal(frames["n3:9478"].column("b"), arr(9, 10))
    assert frames["n4:9478"].values.shape == (2, 0)


def test_grid_columns_give_the_frames_build_frames_gives() -> None:
    """Answers added in chunks of the grid, nodes with different columns, series that share a
    column (combined by the query's agg): the same frames as the dict of dicts."""
    rng = np.random.default_rng(3)
    grid = np.arange(6) * 15.0
    cols = GridColumns(grid)
    parts: dict[str, dict[tuple[int, str, str | None, str | None], np.ndarray]] = {}
    for lo, hi in ((0, 4), (4, 6)):  # two chunks of the grid
        # query 1, per gpu: n2 has GPUs 10 and 2, n1 only GPU 2, and n1's GPU 2 comes twice
        insts, gpus = ["n2", "n1", "n2", "n1"], ["10", "2", "2", "2"]
        block = rng.normal(size=(4, hi - lo))
        block[1, 0] = np.nan
        cols.add((1, "a", "gpu"), "max", lo, insts, gpus, block)
        for node, gpu, rows in (("n2", "10", [0]), ("n1", "2", [1, 3]), ("n2", "2", [2])):
            col = combine([block[r] for r in rows], "max")
            parts.setdefault(node, {}).setdefault((1, "a", "gpu", gpu), np.full(6, np.nan))
            parts[node][(1, "a", "gpu", gpu)][lo:hi] = col
        # query 0, one column a node; n3 only here
        block = rng.normal(size=(3, hi - lo))
        cols.add((0, "b", None), "sum", lo, ["n3", "n1", "n2"], None, block)
        for node, r in (("n3", 0), ("n1", 1), ("n2", 2)):
            parts.setdefault(node, {}).setdefault((0, "b", None, None), np.full(6, np.nan))
            parts[node][(0, "b", None, None)][lo:hi] = block[r]
    got, want = cols.frames(), build_frames(grid, parts)
    assert list(got) == ["n2", "n1", "n3"]  # the order nodes first came in
    assert set(got) == set(want)
    for node, frame in want.items():
        assert got[node].columns == frame.columns
        np.testing.assert_array_equal(got[node].values, frame.values)
        np.testing.assert_array_equal(got[node].times, grid)
    assert got["n2"].columns == ("b", 'a{gpu="2"}', 'a{gpu="10"}')
    assert cols.frames() == {}  # released


def test_fill_gaps_forward_fills_short_gaps_and_drops_the_rest() -> None:
    v = np.array(
        [
            [NAN, 1],  # leading NaN: nothing to fill from -> dropped
            [1, 2],
            [NAN, 3],  # filled from row 1 (1 step)
            [NAN, 4],  # 2 steps: filled
            [NAN, 5],  # 3 steps: beyond max_steps=2 -> dropped
            [6, NAN],
        ]
    )
    f = Frame(np.arange(6.0), ("a", "b"), v)
    out = fill_gaps(f, max_steps=2)
    np.testing.assert_array_equal(out.times, [1, 2, 3, 5])
    np.testing.assert_array_equal(out.values, [[1, 2], [1, 3], [1, 4], [6, 5]])
    assert not np.isnan(out.values).any()
    assert fill_gaps(out, 2) is out  # nothing to do


def test_select_columns_fills_and_flags_missing() -> None:
    f = Frame(arr(0, 15), ("a", "b"), np.array([[1.0, 2], [3, 4]]))
    g, missing = select_columns(f, ["b", "c", "a"], fill={"c": 7.0})
    assert g.columns == ("b", "c", "a") and missing == ("c",)
    np.testing.assert_array_equal(g.values, [[2, 7, 1], [4, 7, 3]])
    same, none = select_columns(f, ["a", "b"])
    assert same is f and none == ()


def test_prepare_never_returns_nan_and_flags_constant_columns() -> None:
    v = np.array([[1.0, 5, NAN], [2, 5, NAN], [NAN, 5, NAN], [4, 5, NAN]])
    f = Frame(np.arange(4.0) * 15, ("x", "flat", "gone"), v)
    p = prepare(f, ["x", "flat", "gone", "absent"], max_gap_steps=1, fill=0.0)
    assert p.missing == ("absent",)
    assert not np.isnan(p.frame.values).any()
    # "gone" is all NaN in the frame: nothing to fill from, so every row would be dropped
    assert len(p.frame) == 0
    p = prepare(f, ["x", "flat", "absent"], max_gap_steps=1)
    np.testing.assert_array_equal(p.frame.column("x"), [1, 2, 2, 4])
    assert set(p.constant) == {"flat", "absent"}
    assert constant_columns(f) == ("flat", "gone")


def test_frames_from_samples_evaluates_simple_queries() -> None:
    queries = parse_queries(
        [
            {"name": "temp", "query": "dcwatch_gpu_temperature_celsius", "per": "gpu"},
            {"name": "rx", "query": 'rate(dcwatch_net_rx_bytes_total{device=~"eth.*"}[30s])'},
            {"name": "hot", "query": "max by (instance) (dcwatch_hwmon_temp_celsius)"},
            {"name": "promql_only", "query": "histogram_quantile(0.9, x)"},
        ]
    )
    ts = np.arange(0, 60, 10, dtype=float)
    samples = {
        "n1:1": {
            ("dcwatch_gpu_temperature_celsius", 'gpu="0",uuid="G0"'): (ts, 40 + ts),
            ("dcwatch_gpu_temperature_celsius", 'gpu="1",uuid="G1"'): (ts, 50 + ts),
            ("dcwatch_net_rx_bytes_total", 'device="eth0"'): (ts, 100 * ts),
            ("dcwatch_net_rx_bytes_total", 'device="eth1"'): (ts, 10 * ts),
            ("dcwatch_net_rx_bytes_total", 'device="lo"'): (ts, 1e6 * ts),
            ("dcwatch_hwmon_temp_celsius", 'sensor="a"'): (ts, np.full(6, 30.0)),
            ("dcwatch_hwmon_temp_celsius", 'sensor="b"'): (ts, np.full(6, 35.0)),
        },
        "n2:1": {("dcwatch_gpu_temperature_celsius", 'gpu="0"'): (ts - 1000, ts)},  # too old
    }
    grid = arr(30, 40, 50)
    frames = frames_from_samples(samples, queries, grid, lookback=10)
    assert list(frames) == ["n1:1"]
    f = frames["n1:1"]
    assert f.columns == ('temp{gpu="0"}', 'temp{gpu="1"}', "rx", "hot")
    np.testing.assert_array_equal(f.column('temp{gpu="1"}'), [80, 90, 100])
    np.testing.assert_allclose(f.column("rx"), [110, 110, 110])  # eth0 + eth1, not lo
    np.testing.assert_array_equal(f.column("hot"), [35, 35, 35])
