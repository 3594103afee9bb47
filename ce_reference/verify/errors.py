r"""Error measures: ULP and "relative to the largest operand", and the operand scales.

For a result ``got`` and an oracle ``o`` (both float64 arrays; ``got`` holds
values of the case's dtype) the elementwise errors are

* ``ulp  = |got - o| / spacing_dtype(|o|)``,
* ``opnd = |got - o| / (eps_dtype * operand)``,

and an element passes when ``min(ulp, opnd) <= tolerance``.  ``operand`` is
the magnitude of the terms that the exact result is a combination of, times
the first-order condition of the only inexact step that every
implementation has to take on exact inputs (rounding ``x - max(x)`` before
``exp``: relative error ``|x - m| eps`` in ``exp(x - m)``).  It is computed
here in float64 straight from the definitions (SciPy's ``softmax`` and
``expit``), independently of the code under test:

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

from collections import namedtuple

import numpy as np
from scipy import special as sp

from . import tolerances as T

Operands = namedtuple("Operands", "value grad hvp value_jax grad_jax hvp_jax")


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
        ulp = np.where(diff == 0, 0.0, diff / spacing)
        scale = np.finfo(dtype).eps * operand
        opnd = np.where(diff == 0, 0.0, np.where(scale > 0, diff / scale, np.inf))
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

def operands(case, v=None) -> "Operands":
    """The :data:`Operands` of a case (float64 arrays); ``hvp`` is None when ``v`` is."""
    out = _OPERANDS[case.loss](case, v)
    return out if isinstance(out, Operands) else Operands(*out, out[0], out[1], out[2])


def _scale_binary(case):
    return 1.0 / case.x.size if case.kwargs["reduction"] == "mean" and case.x.size else 1.0


def _reduce_operand(case, per, denom):
    red = case.kwargs["reduction"]
    if red == "none":
        return per
    total = np.sum(per)
    return np.asarray(total / denom if red == "mean" and denom else total)


def _bce_logits(case, v):
    x = case.x.astype(np.float64)
    y = np.broadcast_to(case.targets.astype(np.float64), x.shape)
    w = np.broadcast_to(np.asarray(case.kwargs.get("weight", 1.0), np.float64), x.shape)
    pw = np.broadcast_to(np.asarray(case.kwargs.get("pos_weight", 1.0), np.float64), x.shape)
    a, b = pw * y, 1 - y
    s = _scale_binary(case)
    loss = w * (a * np.logaddexp(0, -x) + b * np.logaddexp(0, x))
    val = _reduce_operand(case, loss, x.size)
    sig, sign = sp.expit(x), sp.expit(-x)
    g = s * w * (b * sig + a * sign)
    h = h_jax = None
    if v is not None:
        h = s * w * (a + b) * sig * sign * np.abs(v.astype(np.float64))
        # JAX differentiates sigma(x) - 1 style expressions: ~eps absolute of the
        # largest curvature 1/4, not of sigma(x) sigma(-x) (0 at x = 40, exact 4e-18).
        h_jax = h + s * w * (a + b) * 0.25 * np.abs(v.astype(np.float64))
    # Implementations of the form w [(pw y + 1 - y) sigma(x) - pw y] (JAX, PyTorch,
    # textbook sigma(x) - y) cancel when confident: operands max(sigma, y), as p - y.
    g_loose = g + s * w * ((a + b) * sig + a)
    return Operands(val, g, h, val, g_loose, h_jax)


def _bce_probs(case, v):
    p = case.x.astype(np.float64)
    y = np.broadcast_to(case.targets.astype(np.float64), p.shape)
    w = np.broadcast_to(np.asarray(case.kwargs.get("weight", 1.0), np.float64), p.shape)
    inside = np.ones(p.shape, bool)
    if case.clip_bounds is not None:
        lo, hi = case.clip_bounds
        inside = (p >= lo) & (p <= hi)
        p = np.clip(p, lo, hi)
    with np.errstate(all="ignore"):   # infinite operands only where the result overflows
        t1 = np.where(y == 0, 0.0, y / p)
        t0 = np.where(y == 1, 0.0, (1 - y) / (1 - p))
        loss = -w * (sp.xlogy(y, p) + sp.xlog1py(1 - y, -p))
        s = _scale_binary(case)
        g = np.where(inside, s * w * (t0 + t1), 0.0)
        h = None
        if v is not None:
            h = np.where(inside, s * w * (t0 / (1 - p) + t1 / p) * np.abs(v.astype(np.float64)), 0)
    return _reduce_operand(case, loss, p.size), g, h


def _class_last(case):
    ax = case.kwargs.get("axis", -1) % case.x.ndim
    return ax, np.moveaxis(case.x.astype(np.float64), ax, -1)


def _coefficients(case, ax, C):
    """``A = w q'`` (class axis last) and the ``mean`` denominator, from the definitions."""
    t = np.asarray(case.targets)
    w = case.kwargs.get("weight")
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    ls = float(case.kwargs.get("label_smoothing", 0.0))
    if t.dtype.kind in "iu":
        ignore = case.kwargs.get("ignore_index")
        keep = np.ones(t.shape, bool) if ignore is None else t != ignore
        idx = np.where(keep, t, 0)
        q = (np.arange(C) == idx[..., None]).astype(np.float64)
        A = keep[..., None] * ((1 - ls) * q * w + ls / C * w)
        denom = float(np.sum(np.where(keep, w[idx], 0.0)))
    else:
        q = np.moveaxis(t.astype(np.float64), ax, -1)
        A = ((1 - ls) * q + ls / C) * w
        denom = float(q[..., 0].size)
    return A, denom


def _scale(case, denom):
    return 1.0 / denom if case.kwargs["reduction"] == "mean" and denom else 1.0


def _cce(case, v):
    ax, p = _class_last(case)
    C = p.shape[-1]
    A, denom = _coefficients(case, ax, C)
    inside = np.ones(p.shape, bool)
    if case.clip_bounds is not None:
        lo, hi = case.clip_bounds
        inside = (p >= lo) & (p <= hi)
        p = np.clip(p, lo, hi)
    s = _scale(case, denom)
    with np.errstate(all="ignore"):   # infinite operands only where the result overflows
        rows = -np.sum(sp.xlogy(A, p), axis=-1)
        g = np.where(inside & (A != 0), s * A / p, 0.0)
        h = None
        if v is not None:
            vm = np.abs(np.moveaxis(v.astype(np.float64), ax, -1))
            h = np.moveaxis(np.where(inside & (A != 0), s * A / p ** 2 * vm, 0.0), -1, ax)
    return _reduce_operand(case, rows, denom), np.moveaxis(g, -1, ax), h


def _softmax(case, v):
    ax, x = _class_last(case)
    C = x.shape[-1]
    A, denom = _coefficients(case, ax, C)
    S = np.sum(A, axis=-1, keepdims=True)
    m = np.max(x, axis=-1, keepdims=True)
    d = np.abs(x - m)
    p = sp.softmax(x, axis=-1)
    lse = sp.logsumexp(x - m, axis=-1, keepdims=True)
    base = np.sum(A * ((m - x) + lse), axis=-1)
    loose = np.abs(x) + np.abs(m)                      # JAX: x - (m + log sum), see module doc
    s = _scale(case, denom)
    value = _reduce_operand(case, base + S[..., 0] * np.sum(p * d, axis=-1), denom)
    value_jax = _reduce_operand(case, base + S[..., 0] * (1 + np.sum(p * loose, axis=-1)), denom)
    g = np.moveaxis(s * (p * S * (1 + d) + A), -1, ax)
    g_jax = np.moveaxis(s * (p * S * (1 + loose) + A), -1, ax)
    h = h_jax = None
    if v is not None:
        vm = np.abs(np.moveaxis(v.astype(np.float64), ax, -1))
        pv = np.sum(p * vm * (1 + d), axis=-1, keepdims=True)
        h = np.moveaxis(s * S * (1 + d) * p * (vm + pv), -1, ax)
        pv = np.sum(p * vm * (1 + loose), axis=-1, keepdims=True)
        h_jax = np.moveaxis(s * S * (1 + loose) * p * (vm + pv), -1, ax)
    return Operands(value, g, h, value_jax, g_jax, h_jax)


_OPERANDS = {
    "binary_cross_entropy": _bce_probs,
    "binary_cross_entropy_with_logits": _bce_logits,
    "categorical_cross_entropy": _cce,
    "softmax_cross_entropy": _softmax,
}
