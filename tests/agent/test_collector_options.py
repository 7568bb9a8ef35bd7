"""A collector brings its own options: adding one is one module, nothing central is edited."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from dcwatch import settings as st
from dcwatch.agent.config import build_parser, load_agent_config
from dcwatch.agent.registry import build_collectors
from dcwatch.exporters import registry
from dcwatch.exporters.base import Collector
from dcwatch.exposition import Families, MetricSpec
from dcwatch.settings import ConfigError

READING = MetricSpec("dcwatch_demo_reading_celsius", "A demo reading")


@dataclass(frozen=True)
class DemoOptions:
    threshold: float = 1.0
    label: str = "x"


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> type[Collector]:
    """A collector registered the way a new module would register itself."""
    registry.entries()  # the real collectors first, so the copy holds them
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))

    @registry.register("demo", default=False, order=50)
    class DemoCollector(Collector):
        METRICS = (READING,)
        SETTINGS = (
            st.Setting("demo.threshold", st.to_positive_float, 1.0, "a threshold"),
            st.Setting("demo.label", st.to_str, "x", "a label"),
        )
        Options = DemoOptions
        options: DemoOptions

        def collect(self) -> Iterable[Metric]:
            f = Families()
            f.add(READING, self.options.threshold)
            return f

    return DemoCollector


def test_a_new_collector_s_options_get_flags_env_and_file(
    demo: type[Collector], tmp_path: Path
) -> None:
    help_text = build_parser().format_help()
    assert "--demo-threshold" in help_text and "DCWATCH_DEMO_LABEL" in help_text
    f = tmp_path / "agent.yaml"
    f.write_text("demo:\n  threshold: 3\n  label: from-file\n")
    c = load_agent_config(
        ["--config", str(f), "--collectors", "demo", "--demo-threshold", "2m"],
        env={"DCWATCH_DEMO_LABEL": "from-env"},
    )
    assert c.options["demo"] == DemoOptions(threshold=120.0, label="from-env")
    (collector,) = build_collectors(c)
    assert isinstance(collector, demo)
    samples = [s for m in collector.collect() for s in m.samples]
    assert [(s.name, s.value) for s in samples] == [("dcwatch_demo_reading_celsius", 120.0)]


def test_default_off_collector_is_not_enabled_but_its_options_exist(demo: type[Collector]) -> None:
    c = load_agent_config([], env={})
    assert "demo" not in c.collectors
    assert c.options["demo"] == DemoOptions()


def test_a_bad_option_value_names_the_key(demo: type[Collector], tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("demo:\n  threshold: -1\n")
    with pytest.raises(ConfigError, match=r"agent.yaml: key 'demo.threshold'"):
        load_agent_config(["--config", str(f)], env={})


def test_collectors_come_out_in_their_declared_order() -> None:
    assert registry.names() == ["gpu", "workload", "power", "thermal", "network", "self"]
    c = load_agent_config(["--collectors", "self,network,gpu"], env={})
    assert c.collectors == ("gpu", "network", "self")
