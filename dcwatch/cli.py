"""The one ``dcwatch`` command: ``agent``, ``analyzer``, ``backtest``.

Only ``agent`` is imported eagerly: the node daemon must not pay for numpy/pandas/sklearn.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: dcwatch {agent,analyzer,backtest} [options]

  agent      serve this node's GPU/power/thermal/network metrics (Prometheus /metrics)
  analyzer   anomaly detection, forecasts and alerts over the fleet's metrics
  backtest   evaluate detectors (backtest detect) or forecasters (backtest forecast) on files

'dcwatch COMMAND --help' for the options of each.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "agent":
        import argparse

        from dcwatch.agent.__main__ import main as agent_main

        return agent_main(rest, argparse.ArgumentParser(prog="dcwatch agent"))
    if cmd == "analyzer":
        from dcwatch.detectors.cli import analyzer_main

        return analyzer_main(rest)
    if cmd == "backtest":
        from dcwatch.detectors.cli import backtest_main

        return backtest_main(rest)
    if cmd in ("--version", "version"):
        from dcwatch import __version__

        print(f"dcwatch {__version__}")
        return 0
    print(f"dcwatch: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
