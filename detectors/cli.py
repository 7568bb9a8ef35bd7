"""Entry points for ``dcwatch analyzer`` and ``dcwatch backtest {detect,forecast}``.

Each command's module is imported only when that command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

BACKTEST_USAGE = """usage: dcwatch backtest {detect,forecast} [options]

  detect     score recorded metrics with the anomaly detector; writes timestamp,score,is_anomaly
  forecast   forecast recorded series; writes timestamp,mean,lo_95,hi_95
"""


def analyzer_main(argv: Sequence[str]) -> int:
    from dcwatch.detectors.main import main

    return main(list(argv))


def backtest_main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(BACKTEST_USAGE)
        return 0 if argv else 2
    if argv[0] == "detect":
        from dcwatch.detectors.backtest.detect import main as detect_main

        return detect_main(argv[1:])
    if argv[0] == "forecast":
        from dcwatch.detectors.backtest.forecast import main as forecast_main

        return forecast_main(argv[1:])
    print(f"dcwatch backtest: unknown kind {argv[0]!r}\n\n{BACKTEST_USAGE}", file=sys.stderr)
    return 2
