"""``python -m drivers.alpaca``: the ASCOM Alpaca bridge's command line
(drivers/alpaca/cli.py). Without the ``alpaca`` extra (alpyca) it says so in one line."""

import sys

try:
    from drivers.alpaca.cli import main
except ModuleNotFoundError as exc:  # alpyca (or requests) not installed
    print(f"drivers.alpaca: error: {exc}: the ASCOM Alpaca bridge needs alpyca "
          "(pip install '.[alpaca]')", file=sys.stderr)
    raise SystemExit(2) from None

raise SystemExit(main())
