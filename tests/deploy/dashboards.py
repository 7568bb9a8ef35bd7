"""Reading the Grafana dashboards: their panels (rows flattened), their queries, and a query
with the template variables replaced the way Grafana's Prometheus data source does."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
DS_REF = {"type": "prometheus", "uid": "${datasource}"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves are skipped."""
    for p in dash["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def queries(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every PromQL target of the dashboard."""
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p, t


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's interpolation: ``=~"$var"`` gets the regex-escaped value (multi-value variables
    are joined as alternatives), everything else the raw value; built-ins included
    (``$__rate_interval`` ...), given in ``values`` without the ``$``."""

    def regex_value(name: str) -> str:
        v = values[name]
        parts = v if isinstance(v, list | tuple) else [v]
        # Escaped for the regex, then for PromQL's double-quoted string (as Grafana does).
        escaped = [x if x in (".*", ".+") else re.escape(x).replace("\\", "\\\\") for x in parts]
        return "(" + "|".join(escaped) + ")"

    out = re.sub(r'=~\s*"\$\{?(\w+)\}?"', lambda m: f'=~"{regex_value(m.group(1))}"', expr)

    def plain(m: re.Match[str]) -> str:
        v = values[m.group(1)]
        return v[0] if isinstance(v, list | tuple) else v

    return re.sub(r"\$\{?(\w+)\}?", plain, out)
