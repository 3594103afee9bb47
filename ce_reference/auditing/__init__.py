"""The audit machinery: one case type, one generator family, one shrinker, one tolerance.

* :mod:`.tolerance` -- the one tolerance scheme (errors in eps of the operands,
  :data:`~.tolerance.TOL_EPS`) and the verdict wording;
* :mod:`.user` -- :func:`audit`, the audit of a function against a reference
  loss on the verifier's rows;
* :mod:`.isolation` -- running an audited function in a spawned worker
  process with a per-call timeout.

The framework audits (:mod:`ce_reference.frameworks`) are adapters on top of
the same pieces.  Cases, their generators and the shrinker live in
:mod:`ce_reference.cases`.
"""

from .tolerance import TOL_EPS
from .user import (DEFAULT_CASES, INCONCLUSIVE, MATCH, MISMATCH, AuditResult, Mismatch, audit,
                   check_arguments)

__all__ = ["AuditResult", "DEFAULT_CASES", "INCONCLUSIVE", "MATCH", "MISMATCH", "Mismatch",
           "TOL_EPS", "audit", "check_arguments"]
