"""``python -m dcwatch``: the same command as ``dcwatch``."""

import sys

from dcwatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
