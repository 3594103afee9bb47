"""Alias of :mod:`ce_reference.cases.sweep` (the verifier's rows moved there with the case type).

Kept so that code written against ``ce_reference.verify.inputs`` keeps working;
new code imports :mod:`ce_reference.cases`.
"""

from ..cases.case import Case, Layout  # noqa: F401
from ..cases.sweep import (CLASS_LAYOUTS, DTYPES, ELEMENTWISE_LAYOUTS,  # noqa: F401
                           LOGIT_SCALES, batch_shape, layouts, make_case, rows)
