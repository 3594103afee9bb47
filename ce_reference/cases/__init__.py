"""Inputs: the one case type, the generators built from shared value helpers, the one shrinker.

* :mod:`.case` -- :class:`Case` (a call ``loss(x, targets, **kwargs)`` and the
  structure a generic tool needs) and :class:`Layout`;
* :mod:`.values` -- the value helpers (logit scales, extreme rows, probability
  pools, weights) every generator draws from;
* :mod:`.sweep` -- the verifier's rows of a loss, drawn from its spec (also
  used by :func:`ce_reference.audit`);
* :mod:`.regions` -- the named input regions of the framework audits;
* :mod:`.shrink` -- the greedy shrinker that reduces any failing case to a
  smallest one.

Nothing here knows a loss by name; this package imports only
:mod:`ce_reference.spec` and :mod:`ce_reference.options` (and NumPy).
"""

from .case import ARRAY_KINDS, Case, Layout
from .shrink import shrink
from .sweep import DTYPES, batch_shape, layouts, make_case, rows

__all__ = ["ARRAY_KINDS", "Case", "DTYPES", "Layout", "batch_shape", "layouts", "make_case",
           "rows", "shrink"]
