"""``python -m drivers.indi``: the INDI bridge's command line (drivers/indi/cli.py)."""

from drivers.indi.cli import main

raise SystemExit(main())
