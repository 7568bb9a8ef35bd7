"""What the server-rendered pages share: their stylesheets and small text helpers.

The overview (:mod:`dcwatch.detectors.web.page`) embeds the capacity section
(:mod:`dcwatch.detectors.web.capacity_page`); the pieces both use live here, so the section never
imports the page that embeds it.
"""

from __future__ import annotations

PAGE_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{padding:.25em .8em;text-align:left;
border-bottom:1px solid #ddd}th{background:#f4f4f4}.anomaly{background:#fde2e1}
.cold_start{color:#777}.stale{color:#a60}.small{font-size:.85em;color:#555}"""

CAPACITY_STYLE = """.plots{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:1.5em}
svg.plot{background:#fff;border:1px solid #ddd;font:11px system-ui,sans-serif}
svg.plot .grid{stroke:#eee}svg.plot .axis{stroke:#999}svg.plot text{fill:#444}
svg.plot .title{font-weight:600;fill:#222}svg.plot .band{fill:#f6c89f;opacity:.55}
svg.plot .history{fill:none;stroke:#1f5fa8;stroke-width:1.5}
svg.plot .forecast{fill:none;stroke:#d9661f;stroke-width:1.5;stroke-dasharray:5 3}
svg.plot .threshold{stroke:#c62828;stroke-width:1.2;stroke-dasharray:6 3}
svg.plot .capacity{stroke:#555;stroke-width:1}svg.plot .now{stroke:#888;stroke-dasharray:2 2}
svg.plot .exhaustion{fill:#c62828}svg.plot .full{fill:#c62828;font-weight:600}"""

# The node page's plots and the overview's sparklines, alert history and demo banner.
NODE_STYLE = """svg.plot .alert{fill:#c62828;opacity:.13}svg.plot .score{fill:none;stroke:#1f5fa8;
stroke-width:1.5}svg.plot .observed{fill:none;stroke:#1f5fa8;stroke-width:1.5}
svg.plot .expected{fill:none;stroke:#555;stroke-width:1.2;stroke-dasharray:5 3}
svg.plot .normal{fill:#9fc3ea;opacity:.45}
svg.spark polyline{fill:none;stroke:#1f5fa8;stroke-width:1.2}
svg.spark .thr{stroke:#c62828;stroke-width:.6;stroke-dasharray:3 2}.resolved{color:#555}
.demo{background:#fff3c4;border:2px solid #e0a800;padding:.6em 1em;margin-bottom:1em;
font-weight:600}.pager a{margin-right:.6em}.down{color:#c62828}"""


def demo_banner(text: str) -> str:
    """The banner every page of ``dcwatch demo`` shows; nothing outside a demo."""
    if not text:
        return ""
    import html

    return f"<div class='demo' role='note'>{html.escape(text)}</div>"


def plural(n: int, word: str) -> str:
    """``1 node``, ``3 nodes``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
