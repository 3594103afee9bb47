"""pytest-friendly checks against the reference.

>>> import numpy as np
>>> from ce_reference.testing import assert_matches_reference
>>> def my_ce(logits, targets, *, reduction="mean"):
...     z = logits - logits.max(axis=-1, keepdims=True)
...     nll = np.log(np.exp(z).sum(axis=-1)) - np.take_along_axis(z, targets[..., None], -1)[..., 0]
...     return {"mean": nll.mean(), "sum": nll.sum(), "none": nll}[reduction]
>>> result = assert_matches_reference(my_ce, loss="softmax_cross_entropy", cases=30,
...                                   targets=("index",))
"""

from __future__ import annotations

from .auditing import AuditResult, audit

__all__ = ["assert_matches_reference"]


def assert_matches_reference(fn, loss: str, grad=None, **kwargs) -> AuditResult:
    """Raise ``AssertionError`` unless ``fn`` (and ``grad``) match ``ce_reference.<loss>``.

    Runs :func:`ce_reference.audit` with the same arguments (``cases``,
    ``seed``, ``dtypes``, ``rtol``, ``shrink``, ``targets``) and, on a mismatch, raises
    with its report as the message: each group of mismatches with the
    smallest input that shows it, what was returned and what was expected.
    Returns the :class:`~ce_reference.auditing.AuditResult` when it matches.
    """
    result = audit(fn, loss=loss, grad=grad, **kwargs)
    if not result.ok:
        raise AssertionError(str(result))
    return result
