r"""Independent oracles of the KL divergence: JAX twin, mpmath, operand sizes.

Written from PyTorch's definition (``F.kl_div``): elements
``xlogy(t, t) - t x`` (``exp(τ) (τ - x)`` with ``log_target``), ``0 log 0 = 0``,
summed over the class axis; ``batchmean`` divides the sum by ``x.shape[0]``,
``mean`` by ``x.size``.  Never imports :mod:`ce_reference.losses.kl_divergence`.

The mpmath oracle evaluates each element at the exact input values (``log t``
to the working precision, ``τ - x`` exact) and sums a row with ``mp.fsum``:
the only cancellation is the one of the mathematics (a small KL of nearly
equal rows), far below the working digits.  Gradient :math:`-t`, Hessian 0.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import Operands, class_last, reduce_operand, scale

#: Inputs beyond this magnitude (or infinite) are re-evaluated at the extreme precision.
EXTREME = 1e3


def kl_divergence(log_probs, targets, *, axis=-1, log_target=False, reduction="batchmean"):
    """PyTorch's ``F.kl_div`` written from its definition, summed over ``axis`` per row."""
    x, result = J.as_float(log_probs)
    axis = axis % x.ndim
    tt = jnp.asarray(targets, x.dtype)
    if log_target:
        el = J.mul0(jnp.exp(tt), tt - x)
    else:
        el = xlogy(tt, tt) - J.mul0(tt, x)      # PyTorch's form, with 0 * (-inf) = 0
    rows = jnp.sum(el, axis=axis)
    if reduction == "batchmean":
        value = jnp.sum(rows) / x.shape[0]
    elif reduction == "mean":
        value = jnp.sum(rows) / x.size
    else:
        value = J.reduce(rows, reduction, 1)
    return J.as_result(value, result)


def _denominator(case):
    red = case.kwargs["reduction"]
    if red == "batchmean":
        return case.x.shape[0]
    if red == "mean":
        return case.x.size
    return 1


def _t_and_diff(mp, xv, tv, log_target):
    """``(t, log t - x)`` at the working precision; ``diff`` None where ``t = 0``."""
    if log_target:
        if tv == -np.inf:
            return mp.mpf(0), None
        tau = mp.mpf(tv)
        return mp.exp(tau), tau - mp.mpf(xv)
    t = mp.mpf(tv)
    if t == 0:
        return t, None
    return t, mp.log(t) - mp.mpf(xv)


def exact(mp, case):
    """Per-row KL (``fsum`` of the exact elements), the gradient ``-t`` and the denominator."""
    X, ax, batch = M.rows(case)
    T, _, _ = M.rows(case, case.targets)
    R, C = X.shape
    log_target = case.kwargs.get("log_target", False)
    losses, grads = [], []
    for r in range(R):
        terms, g = [], []
        for c in range(C):
            t, diff = _t_and_diff(mp, X[r, c], T[r, c], log_target)
            if diff is not None:
                terms.append(t * diff)
            g.append(-t)
        losses.append(mp.fsum(terms) if terms else mp.mpf(0))
        grads.append(g)
    return losses, M.to_input_layout(grads, ax, batch, C), _denominator(case)


def exact_hvp(mp, case):
    """``H v = 0`` (the loss is linear in the input) and the denominator."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    return M.to_input_layout([[mp.mpf(0)] * C for _ in range(R)], ax, batch, C), \
        _denominator(case)


def operands(case, v=None) -> Operands:
    r"""Value: :math:`\sum_c t\,(|\log t| + |\log t - x|)` per row (``log t`` is rounded
    before the subtraction; log-targets: :math:`\sum_c t\,|τ - x|`); gradient :math:`t`;
    :math:`H v`: 0.  The JAX twin's value, ``xlogy(t, t) - t x``, adds
    :math:`\sum_c t\,(|\log t| + |x|)`."""
    ax, x = class_last(case)
    tt = np.moveaxis(np.asarray(case.targets, np.float64), ax, -1)
    with np.errstate(all="ignore"):
        if case.kwargs.get("log_target", False):
            t = np.exp(tt)
            el = np.where(t == 0, 0.0, t * np.abs(tt - x))
            el_jax = el
        else:
            t = tt
            lg = np.log(t)
            el = np.where(t == 0, 0.0, t * (np.abs(lg) + np.abs(lg - x)))
            el_jax = el + np.where(t == 0, 0.0, t * (np.abs(lg) + np.abs(x)))
    denom = _denominator(case)
    value = reduce_operand(case, np.sum(el, axis=-1), denom)
    value_jax = reduce_operand(case, np.sum(el_jax, axis=-1), denom)
    g = np.moveaxis(t * scale(case, denom), -1, ax)
    h = None if v is None else np.zeros(case.x.shape)
    return Operands(value, g, h, value_jax, g, h)


def extreme(case) -> bool:
    """Infinite entries, or entries beyond :data:`EXTREME`, in the input or the targets."""
    for a in (case.x, case.targets):
        a = np.asarray(a, np.float64)
        if a.size and not (np.isfinite(a).all() and np.max(np.abs(a)) <= EXTREME):
            return True
    return False


ORACLE = Oracle(twin=kl_divergence, exact=exact, exact_hvp=exact_hvp, operands=operands,
                extreme=extreme)
