"""``python -m ce_reference.frameworks torch|optax|keras|sklearn|all [--json PATH] [--markdown PATH]``."""

from __future__ import annotations

import argparse
import sys

from . import FRAMEWORKS, run_framework_audit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ce_reference.frameworks",
        description="Audit a framework's cross-entropy losses against ce_reference.  Exit "
                    "status: 0 when every deviation is a catalogued finding (known defects "
                    "are reported, not failed), 1 when a deviation is not in the catalogue "
                    "(or, with --strict, when any defect is found), 2 for usage errors.")
    ap.add_argument("framework", choices=FRAMEWORKS + ("all",))
    ap.add_argument("--json", metavar="PATH", help="write the JSON report here")
    ap.add_argument("--markdown", metavar="PATH", help="write the Markdown document here")
    ap.add_argument("--seed", type=int, default=0, help="sweep seed (default 0)")
    ap.add_argument("--quick", action="store_true",
                    help="sweep a subset of regions and option sets (the probes all run)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when any defect is found")
    a = ap.parse_args(argv)
    return run_framework_audit(a.framework, a.json, a.markdown, a.seed, quick=a.quick,
                               strict=a.strict)


if __name__ == "__main__":
    sys.exit(main())
