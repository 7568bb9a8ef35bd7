"""Query presets for the exporters fleets already run: every name they use is one the real
exporter serves (Debian's node_exporter on a fixture tree; a recorded dcgm-exporter exposition),
counters are read as rates and levels are not, and presets combine with each other, with a
query file and with the capacity rules' defaults."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dcwatch.detectors.capacity.rules import default_rules, parse_rules
from dcwatch.detectors.config import load_analyzer_config
from dcwatch.detectors.sources.parse import parse_body, parse_exposition
from dcwatch.detectors.sources.promql import metric_names
from dcwatch.detectors.sources.queries import (
    PRESETS,
    NamedQuery,
    QueryError,
    load_queries,
    needed_metrics,
    parse_labels,
    preset_queries,
    to_presets,
)
from dcwatch.settings import ConfigError
from tests.conftest import FIXTURES
from tests.helpers import find_binary
from tests.procs import Proc

DCGM_METRICS = FIXTURES / "dcgm-exporter/metrics.txt"
PREFIX = {"dcgm": "dcgm_", "node_exporter": "node_"}
# node_exporter's collectors the preset reads (all that it names must come from these).
NODE_EXPORTER_COLLECTORS = (
    "hwmon", "thermal_zone", "rapl", "cpu", "meminfo", "loadavg", "pressure", "netdev",
    "netclass", "infiniband",
)  # fmt: skip

# What a captured sysfs tree lacks and node_exporter's cpu, meminfo, loadavg and pressure
# collectors read (the agent gets these from NVML/sysfs; node_exporter from /proc).
HOST_PROC = {
    "stat": (
        "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0\n"
        "cpu0 2536053 72674 771180 11707120 4170 0 6298 0 0 0\n"
        "cpu1 2532035 72674 771179 11707121 4171 0 6299 0 0 0\n"
        "cpu2 2532032 72674 771180 11707121 4171 0 6299 0 0 0\n"
        "cpu3 2532033 72674 771180 11707121 4171 0 6299 0 0 0\n"
        "intr 1462898 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        "ctxt 38014093\nbtime 1700000000\nprocesses 26442\nprocs_running 3\nprocs_blocked 0\n"
        "softirq 5057579 250191 1481983 1647 211099 186066 0 1783454 622196 12499 508444\n"
    ),
    "meminfo": (
        "MemTotal:       2113357568 kB\nMemFree:        1640128512 kB\n"
        "MemAvailable:   1986401280 kB\nBuffers:          1203840 kB\n"
        "Cached:         312054784 kB\nSwapCached:            0 kB\n"
        "Active:         201326592 kB\nInactive:       180355072 kB\n"
        "SwapTotal:              0 kB\nSwapFree:               0 kB\n"
        "Dirty:               1024 kB\nWriteback:             0 kB\n"
    ),
    "loadavg": "12.52 11.61 10.66 14/3412 2568911\n",
    "pressure/cpu": (
        "some avg10=1.20 avg60=1.02 avg300=0.94 total=93412371\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    ),
    "pressure/memory": (
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1290221\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=1090117\n"
    ),
    "pressure/io": (
        "some avg10=0.31 avg60=0.22 avg300=0.19 total=40112389\n"
        "full avg10=0.29 avg60=0.20 avg300=0.17 total=37741120\n"
    ),
}


def add_host_proc(root: Path) -> Path:
    """Write :data:`HOST_PROC` into the fixture tree ``root`` (a copy); returns ``root``."""
    for rel, text in HOST_PROC.items():
        p = root / "proc" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def node_exporter_binary() -> str | None:
    return find_binary("prometheus-node-exporter", "node_exporter")


def start_node_exporter(workdir: Path, root: Path, procfs: Path | None = None) -> Proc:
    """Debian's node_exporter on a free 127.0.0.1 port, reading ``root``'s sys/ and proc/ (or
    ``procfs``) with the collectors the preset needs; ready when /metrics answers."""
    binary = node_exporter_binary()
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            f"--path.sysfs={root / 'sys'}",
            f"--path.procfs={procfs or root / 'proc'}",
            "--log.level=warn",
            "--no-collector.netdev.netlink",  # read proc/net/dev, not this host's interfaces
            *[f"--collector.{c}" for c in NODE_EXPORTER_COLLECTORS],
        ]

    return Proc("node_exporter", argv, workdir, ready_path="/metrics").start()


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """Exposition text -> {sample name: (its family's TYPE, label names)}, read with the
    embedded source's parser (what the analyzer itself would store)."""
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    out: dict[str, tuple[str, set[str]]] = {}
    keys, _ = parse_exposition(text)
    for name, labels in keys:
        kind = types.get(name) or types.get(name.removesuffix("_total"), "untyped")
        out.setdefault(name, (kind, set()))[1].update(parse_labels(labels))
    return out


def check_against(queries: tuple[NamedQuery, ...], served: dict[str, tuple[str, set[str]]]) -> None:
    """Each query names served metrics only, splits by a label they carry, and reads counters
    as rates and levels as they are."""
    for q in queries:
        names = metric_names(q.query)
        assert names and "" not in names, f"{q.name}: no metric name in {q.query}"
        for m in names:
            assert m in served, f"{q.name}: {m} is not served"
            kind, labels = served[m]
            if q.per:
                assert q.per in labels, f"{q.name}: {m} has no label {q.per}"
            assert q.selector is not None
            for label, _, _ in q.selector.matchers:
                assert label in labels, f"{q.name}: {m} has no label {label}"
            if kind == "counter":
                assert q.selector.func == "rate", f"{q.name}: counter {m} read without rate()"
            else:
                assert q.selector.func is None, f"{q.name}: rate() of {kind} {m}"


# --- the presets themselves ------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_parses_and_the_embedded_source_evaluates_all_of_it(preset: str) -> None:
    queries = preset_queries(preset)
    assert len(queries) >= 10
    # None is Prometheus-only: an analyzer may scrape these exporters itself.
    assert [q.name for q in queries if q.selector is None] == []
    if preset in PREFIX:
        assert all(q.name.startswith(PREFIX[preset]) for q in queries)


def test_dcgm_preset_names_only_what_dcgm_exporter_serves() -> None:
    served = families(DCGM_METRICS.read_text())
    queries = preset_queries("dcgm")
    check_against(queries, served)
    named = {m for q in queries for m in metric_names(q.query)}
    # the profiling fields and the usual device fields are all read
    for m in (
        "DCGM_FI_PROF_SM_ACTIVE",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_MEMORY_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_MEM_CLOCK",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_XID_ERRORS",
    ):
        assert m in named


def test_recorded_dcgm_exposition_is_an_8_gpu_node_the_embedded_source_reads() -> None:
    body = DCGM_METRICS.read_bytes()
    parsed = parse_body(body, needed_metrics(preset_queries("dcgm")), 20_000)
    assert parsed.nonfinite == 0
    served = families(body.decode())
    for _, labels in served.values():
        assert {"gpu", "UUID", "device", "modelName", "Hostname"} <= labels
        assert "DCGM_FI_DRIVER_VERSION" in labels
    keys, _ = parse_exposition(body.decode())
    gpus = {parse_labels(lab)["gpu"] for name, lab in keys if name == "DCGM_FI_DEV_GPU_TEMP"}
    assert gpus == {str(i) for i in range(8)}
    kept = {name for name, _ in parsed.keys}
    assert kept == {m for q in preset_queries("dcgm") for m in metric_names(q.query)}


@pytest.fixture(scope="module")
def node_exporter_scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if node_exporter_binary() is None:
        pytest.skip("prometheus-node-exporter not installed (scripts/setup.sh)")
    from tests.e2e.dcwatch_procs import copy_tree

    tmp = tmp_path_factory.mktemp("node_exporter")
    root = add_host_proc(copy_tree("gpu-node-a", tmp))
    ne = start_node_exporter(tmp / "ne", root)
    try:
        with urllib.request.urlopen(f"{ne.url}/metrics", timeout=10) as r:
            yield r.read().decode()
    finally:
        ne.stop()


def test_node_exporter_preset_names_only_what_node_exporter_emits(
    node_exporter_scrape: str,
) -> None:
    served = families(node_exporter_scrape)
    check_against(preset_queries("node_exporter"), served)
    # it read the fixture tree, not this machine
    keys, values = parse_exposition(node_exporter_scrape)
    rx = {
        parse_labels(lab)["device"]: v
        for (name, lab), v in zip(keys, values, strict=True)
        if name == "node_network_receive_bytes_total"
    }
    assert rx["eno1"] == 48213967315024 and "bond0.100" in rx
    # the collectors all worked on the tree (a failing one would hide its metrics)
    failed = [
        s.labels["collector"]
        for fam in text_string_to_metric_families(node_exporter_scrape)
        for s in fam.samples
        if s.name == "node_scrape_collector_success" and s.value != 1
    ]
    assert failed == []


def test_node_exporter_capacity_rules_name_what_node_exporter_emits(
    node_exporter_scrape: str,
) -> None:
    served = families(node_exporter_scrape)
    rules = default_rules(2400.0, ("node_exporter",))
    assert {r.name for r in rules} == {
        "node_exporter_network_receive",
        "node_exporter_network_transmit",
        "node_exporter_node_power",
    }
    for r in rules:
        for q in r.queries():
            assert q.selector is not None, f"{r.name}: the embedded source cannot read it"
            for m in metric_names(q.query):
                assert m in served, f"{r.name}: {m} is not served"
                if r.per:
                    assert r.per in served[m][1]


def test_dcgm_capacity_rule_reads_framebuffer_sizes_through_prometheus() -> None:
    served = families(DCGM_METRICS.read_text())
    (rule,) = default_rules(presets=("dcgm",))
    assert rule.name == "dcgm_gpu_memory" and rule.per == "gpu" and rule.unit == "bytes"
    names = {m for q in rule.queries() for m in metric_names(q.query)}
    assert names == {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
    assert names <= set(served)
    # used + free has no simple form: Prometheus-only, skipped by the embedded source
    assert all(q.selector is None for q in rule.queries())


# --- choosing and combining ------------------------------------------------------------------


def test_presets_combine_without_clashes_in_the_order_given() -> None:
    both = load_queries(presets=("node_exporter", "dcgm"))
    assert both == preset_queries("node_exporter") + preset_queries("dcgm")
    every = load_queries(presets=PRESETS)
    assert (
        len({q.name for q in every}) == len(every) == sum(len(preset_queries(p)) for p in PRESETS)
    )
    assert load_queries(presets=("dcgm", "dcgm")) == preset_queries("dcgm")


def test_default_is_dcwatch_and_a_file_alone_replaces_it(tmp_path: Path) -> None:
    assert load_queries() == preset_queries("dcwatch")
    f = tmp_path / "q.yaml"
    f.write_text("- name: mine\n  query: up\n")
    assert [q.name for q in load_queries(f)] == ["mine"]
    # with presets named, the file adds to them
    got = load_queries(f, ("dcgm",))
    assert got[:-1] == preset_queries("dcgm") and got[-1].name == "mine"


def test_a_name_in_both_a_preset_and_the_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "q.yaml"
    f.write_text("- name: dcgm_power\n  query: my_power_watts\n")
    with pytest.raises(QueryError, match=r"'dcgm_power' is in both preset dcgm and queries file"):
        load_queries(f, ("dcwatch", "dcgm"))
    assert [q.name for q in load_queries(f, ("dcwatch",))][-1] == "dcgm_power"


def test_preset_setting_values() -> None:
    assert to_presets("dcwatch, DCGM") == ("dcwatch", "dcgm")
    assert to_presets(["node_exporter", "dcgm,node_exporter"]) == ("node_exporter", "dcgm")
    assert to_presets(None) == ()
    with pytest.raises(ValueError, match=r"unknown preset.*nvidia"):
        to_presets("dcwatch,nvidia")
    with pytest.raises(QueryError, match="unknown query preset"):
        preset_queries("nvidia")


def test_analyzer_config_reads_the_preset_from_flag_env_and_file(tmp_path: Path) -> None:
    base = [f"--state-dir={tmp_path / 'state'}", "--target=http://127.0.0.1:9400/metrics"]
    cfg = load_analyzer_config([*base, "--queries-preset", "dcwatch,dcgm"], env={})
    assert cfg.queries_preset == ("dcwatch", "dcgm")
    cfg = load_analyzer_config(base, env={"DCWATCH_QUERIES_PRESET": "node_exporter"})
    assert cfg.queries_preset == ("node_exporter",)
    conf = tmp_path / "analyzer.yaml"
    conf.write_text("queries_preset: [dcgm, node_exporter]\n")
    cfg = load_analyzer_config([*base, f"--config={conf}"], env={})
    assert cfg.queries_preset == ("dcgm", "node_exporter")
    assert load_analyzer_config(base, env={}).queries_preset == ()
    with pytest.raises(ConfigError, match=r"queries-preset.*unknown preset"):
        load_analyzer_config([*base, "--queries-preset=dcgm,nvml"], env={})


def test_analyzer_config_refuses_a_file_clashing_with_a_preset(tmp_path: Path) -> None:
    f = tmp_path / "q.yaml"
    f.write_text("- name: node_load1\n  query: node_load1\n")
    base = [f"--state-dir={tmp_path / 'state'}", "--target=http://127.0.0.1:9100/metrics"]
    assert load_analyzer_config([*base, f"--queries-file={f}"], env={}).queries_file == f
    with pytest.raises(ConfigError, match=r"queries_file.*'node_load1' is in both"):
        load_analyzer_config(
            [*base, f"--queries-file={f}", "--queries-preset=node_exporter"], env={}
        )


def test_capacity_defaults_follow_the_presets() -> None:
    names = lambda rules: [r.name for r in rules]  # noqa: E731
    dcwatch = ["gpu_memory", "gpu_power", "network_receive", "network_transmit"]
    assert names(parse_rules([])) == dcwatch
    assert names(parse_rules([], presets=("dcgm",))) == ["dcgm_gpu_memory"]
    both = parse_rules([], presets=("dcwatch", "node_exporter"))
    assert names(both) == [
        *dcwatch,
        "node_exporter_network_receive",
        "node_exporter_network_transmit",
    ]
    budget = parse_rules([{"defaults": {"node_power_budget": 2400}}], presets=("node_exporter",))
    assert names(budget)[-1] == "node_exporter_node_power" and budget[-1].capacity == 2400.0
    assert names(parse_rules([{"defaults": True}], presets=("dcgm",))) == ["dcgm_gpu_memory"]
    assert parse_rules([{"defaults": False}], presets=("dcgm",)) == ()
    with pytest.raises(ConfigError, match="unknown query preset"):
        default_rules(presets=("nvidia",))


def test_make_source_reads_the_chosen_presets(tmp_path: Path) -> None:
    from dcwatch.detectors.web.app import make_source

    base = [f"--state-dir={tmp_path / 'state'}", "--target=http://127.0.0.1:9400/metrics"]
    cfg = load_analyzer_config([*base, "--queries-preset=dcgm"], env={})
    src = make_source(cfg)
    assert [q.name for q in src.queries] == [q.name for q in preset_queries("dcgm")]  # type: ignore[attr-defined]
    cfg = load_analyzer_config(
        [*base, "--queries-preset=dcgm", "--prometheus-url=http://127.0.0.1:9090"], env={}
    )
    src = make_source(cfg)
    assert [q.name for q in src.queries] == [q.name for q in preset_queries("dcgm")]  # type: ignore[attr-defined]
