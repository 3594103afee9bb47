"""The verification layer: every loss and gradient checked by independent oracles.

:func:`verify` runs the whole protocol (seeded inputs from
:mod:`ce_reference.cases`, oracles from :mod:`.oracles` and :mod:`.mp`,
tolerances from :mod:`.tolerances`) and returns a :class:`~.runner.Report`
that :mod:`.report` prints as a table, JSON or Markdown.  Auditing another
implementation on the same inputs is :func:`ce_reference.audit`
(:mod:`ce_reference.auditing`).

Importing this package is cheap: JAX and mpmath are imported on first use.
"""

from .runner import Report, verify

__all__ = ["Report", "verify"]
