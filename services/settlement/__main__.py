"""``python -m services.settlement``: the settlement worker (the stack supervises it as a child)."""

from __future__ import annotations

import sys

from services.settlement.run import main

if __name__ == "__main__":
    sys.exit(main())
