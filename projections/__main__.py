"""``python -m projections <name|all>``: run projection consumers until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from projections.run import main

sys.exit(main())
