"""``python -m benchmarks``: see :mod:`benchmarks.cli`."""

import os

# XLA logs a "slow_operation_alarm" line (constant folding taking > 1 s) at ERROR level
# while it compiles the JAX peers; it is not a result.  Unless the caller chose a level,
# keep XLA's C++ log quiet below FATAL (set before JAX is imported).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from .cli import main  # noqa: E402

raise SystemExit(main())
