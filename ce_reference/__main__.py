"""``python -m ce_reference verify|audit ...`` (same as the ``ce-reference`` command)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
