"""``python -m ce_reference.compiled [warmup]``: compile (or load from the cache) every kernel.

Prints the time, the cache directory and how many signatures were compiled in
this process or loaded from the cache.  Exit status 0.
"""

import sys

from . import warmup


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in ("warmup",):
        print("usage: python -m ce_reference.compiled [warmup]", file=sys.stderr)
        return 2
    info = warmup()
    print(f"compiled kernels ready in {info['seconds']:.2f} s "
          f"({info['compiled']} signatures compiled, {info['loaded']} loaded from the cache "
          f"in {info['cache_dir']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
