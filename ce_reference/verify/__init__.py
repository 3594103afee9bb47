"""The verification layer: every loss and gradient checked by independent oracles.

:func:`verify` runs the whole protocol (seeded inputs from :mod:`.inputs`,
oracles from :mod:`.oracles` and :mod:`.mp`, tolerances from
:mod:`.tolerances`) and returns a :class:`~.runner.Report` that
:mod:`.report` prints as a table, JSON or Markdown.  :func:`audit` (in
:mod:`.audit`) runs the same inputs against somebody else's implementation.

Importing this package is cheap: JAX and mpmath are imported on first use.
"""

from .audit import AuditResult, audit
from .runner import Report, verify

__all__ = ["AuditResult", "Report", "audit", "verify"]
