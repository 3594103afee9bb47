r"""Error measures: ULP and "relative to the largest operand", and the operand scales.

For a result ``got`` and an oracle ``o`` (both float64 arrays; ``got`` holds
values of the case's dtype) the elementwise errors are

* ``ulp  = |got - o| / spacing_dtype(|o|)``,
* ``opnd = |got - o| / (eps_dtype * operand)``,

and an element passes when ``min(ulp, opnd) <= tolerance``.  ``operand`` is
the magnitude of the terms that the exact result is a combination of, times
the first-order condition of the only inexact step that every
implementation has to take on exact inputs (rounding ``x - max(x)`` before
``exp``: relative error ``|x - m| eps`` in ``exp(x - m)``).  Each loss's
oracle module (``ce_reference.oracles.<loss>``) computes it in float64 straight
from the definitions (SciPy's ``softmax`` and ``expit``), independently of the
code under test; for the classic losses:

=====================  =========================================================
loss                   gradient operand (times the reduction scale ``s``)
=====================  =========================================================
BCE (probs)            ``w [(1-y)/(1-p) + y/p]``
BCE with logits        ``w [(1-y) sigma(x) + pw y sigma(-x)]``
categorical CE         ``w_c q_c / p_c`` (one term: no cancellation)
softmax CE             ``p_k S (1 + |x_k - m|) + A_k`` with ``A = w q'``, ``S = sum A``
=====================  =========================================================

The value operand is the value itself (every per-example loss is a sum of
non-negative terms) plus, for softmax CE, ``S sum_j p_j |x_j - m|`` (the same
rounding of ``x - m``).  The Hessian-vector-product operand is ``|H| |v|``
with the diagonal and rank-one parts of ``H`` taken in absolute value.

Comparisons with the JAX twin (and the audit of other implementations) use
looser operands, those of the usual formulas: ``jax.nn.log_softmax`` computes
``x - (m + log sum exp(x - m))``, whose absolute error is ``eps (|x| + |m| + 1)``
per class, not ``eps |x - m|``; ``sigma(x) - y`` has the operands ``sigma(x)``
and ``y``.  The reference itself is held to the tighter operands by mpmath and
the complex step.
"""

from __future__ import annotations

import numpy as np

from ..oracles._operands import Operands
from . import tolerances as T


def elementwise(got, exact, operand, dtype, floor=None):
    """Return ``(ulp, opnd)`` arrays (float64) for ``got`` against ``exact``.

    Equal infinities count as exact, and so does an infinity where the exact
    result is beyond the dtype's range (that is its correct rounding); a NaN,
    or an infinity against a representable oracle, is an infinite error.  Differences below the dtype's smallest
    normal number (:data:`~.tolerances.ABS_FLOOR`) count as zero.
    """
    dtype = np.dtype(dtype)
    got = np.asarray(got, np.float64)
    exact = np.asarray(exact, np.float64)
    operand = np.asarray(operand, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # correct rounding of a result beyond the dtype's range is +-inf
        big = np.finfo(dtype).max
        overflow = np.isinf(got) & (np.abs(exact) > big) & (np.sign(got) == np.sign(exact))
        same = (got == exact) | (np.isnan(got) & np.isnan(exact)) | overflow
        diff = np.where(same, 0.0, np.abs(got - exact))
        diff = np.where(np.isnan(diff), np.inf, diff)
        if floor is None:
            floor = T.ABS_FLOOR * np.finfo(dtype).tiny
        diff = np.where(diff < floor, 0.0, diff)
        spacing = np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
        spacing = np.where(np.isfinite(spacing) & (spacing > 0), spacing, np.inf)
        # an infinite difference (a finite result against an infinite oracle) is an
        # infinite error, not inf / inf = NaN (which max() and comparisons would drop)
        ulp = np.where(diff == 0, 0.0, np.where(np.isinf(diff), np.inf, diff / spacing))
        scale = np.finfo(dtype).eps * operand
        opnd = np.where(diff == 0, 0.0,
                        np.where((scale > 0) & np.isfinite(diff), diff / scale, np.inf))
    return ulp, opnd


def combined(got, exact, operand, dtype, mask=None, floor=None):
    """Worst ``min(ulp, opnd)`` over the elements (``mask``: elements to skip).

    Returns ``(worst, worst_ulp, flat index of the worst element)``.
    """
    ulp, opnd = elementwise(got, exact, operand, dtype, floor)
    err = np.minimum(ulp, opnd)
    if mask is not None:
        err = np.where(mask, 0.0, err)
        ulp = np.where(mask, 0.0, ulp)
    if err.size == 0:
        return 0.0, 0.0, None
    k = int(np.argmax(err))
    return float(err.reshape(-1)[k]), float(np.max(ulp)), k


# --------------------------------------------------------------------------- operands

def operands(spec, case, v=None) -> Operands:
    """The :class:`Operands` of a case (float64 arrays), from the loss's own oracle module;
    ``hvp`` is None when ``v`` is."""
    return spec.resolve_oracle().operands(case, v)
