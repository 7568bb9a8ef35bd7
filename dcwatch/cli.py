"""The one ``dcwatch`` command: ``agent``, ``analyzer``, ``backtest``, ``version``.

Only the command that runs is imported: the node daemon must not pay for numpy/pandas/sklearn,
and a light install (``pip install dcwatch``, without the ``analyzer`` extra) must say what to
install instead of failing with a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from dcwatch.settings import version_line

USAGE = """usage: dcwatch {agent,analyzer,backtest,demo,version} [options]

  agent      serve this node's GPU/power/thermal/network metrics (Prometheus /metrics)
  analyzer   anomaly detection, forecasts and alerts over the fleet's metrics
  backtest   evaluate detectors (backtest detect) or forecasters (backtest forecast) on files
  demo       a simulated GPU fleet (real agents, the analyzer) to see dcwatch work without GPUs
  version    print the version (also --version, here and after each command)

'dcwatch COMMAND --help' for the options of each.
"""

# Import names of the ``analyzer`` extra in pyproject.toml; the analyzer needs all of them.
ANALYZER_MODULES = (
    "numpy",
    "pandas",
    "scipy",
    "sklearn",
    "statsmodels",
    "tqdm",
    "threadpoolctl",
)
INSTALL_HINT = "pip install 'dcwatch[analyzer]'"


def missing_analyzer_modules() -> list[str]:
    """The analyzer's modules this environment lacks (empty when the extra is installed)."""
    return [m for m in ANALYZER_MODULES if importlib.util.find_spec(m) is None]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("--version", "version"):
        print(version_line())
        return 0
    if cmd == "agent":
        import argparse

        from dcwatch.agent.__main__ import main as agent_main

        return agent_main(rest, argparse.ArgumentParser(prog="dcwatch agent"))
    if cmd in ("analyzer", "backtest", "demo"):
        if "--version" in rest:  # no need to load the numerical stack (or to have it) for this
            print(version_line())
            return 0
        missing = missing_analyzer_modules()
        if missing:
            print(
                f"dcwatch {cmd}: needs the analyzer extra ({', '.join(missing)} not installed):"
                f" {INSTALL_HINT}",
                file=sys.stderr,
            )
            return 2
        from dcwatch.detectors.cli import analyzer_main, backtest_main

        if cmd == "demo":  # a simulated fleet, for a first look on a machine without GPUs
            from dcwatch.detectors.demo.runner import main as demo_main

            return demo_main(rest)
        return analyzer_main(rest) if cmd == "analyzer" else backtest_main(rest)
    print(f"dcwatch: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
