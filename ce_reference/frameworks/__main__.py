"""``python -m ce_reference.frameworks NAME [options]``: the same command as ``ce-reference audit NAME``.

One entry point and one set of flags for every audit: this runs
:func:`ce_reference.cli.main` with ``audit`` prepended, so ``--strict``,
``--quick``, ``--seed``, ``--json``, ``--markdown`` and ``--no-progress``
mean the same here and there (``--help`` lists them).
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from ..cli import main as cli_main

    return cli_main(["audit", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
