r"""Independent oracles of categorical cross-entropy on probabilities: JAX twin, mpmath, operands.

Written from the definition :math:`\ell_n = -\sum_c w_c q_{n,c}\log p_{n,c}`
(index targets: :math:`-w_{y_n}\log p_{n,y_n}`; rows not renormalised;
``eps`` clips first), never importing
:mod:`ce_reference.losses.categorical_cross_entropy`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from scipy import special as sp

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import class_last, clip, reduce_operand, scale, tight

#: Probabilities within this of 0 or 1 are re-evaluated at the extreme precision.
EXTREME_PROB = 1e-12


def categorical_cross_entropy(probs, targets, *, axis=-1, weight=None, eps=None,
                              reduction="mean"):
    """``-sum_c w_c q_c log p_c`` (probability targets) or ``-w_y log p_y`` (indices)."""
    p, result = J.as_float(probs)
    axis = axis % p.ndim
    if eps is not None:
        p = jnp.clip(p, eps, 1 - eps)
    t = jnp.asarray(targets)
    w = J.class_weight(weight, p.dtype, p.ndim, axis)
    if jnp.issubdtype(t.dtype, jnp.integer):
        idx = jnp.expand_dims(t, axis)
        py = jnp.take_along_axis(p, idx, axis=axis)
        wy = jnp.ones_like(py) if w is None else jnp.take_along_axis(
            jnp.broadcast_to(w, p.shape), idx, axis=axis)
        rows = jnp.squeeze(-wy * jnp.log(py), axis)
        denom = jnp.sum(wy)
    else:
        q = t.astype(p.dtype)
        wq = q if w is None else q * w
        rows = -jnp.sum(xlogy(wq, p), axis=axis)
        denom = rows.size
    return J.as_result(J.reduce(rows, reduction, denom), result)


def _row_coefficients(mp, idx, Q, wc, r, C):
    """``w_c q_c`` of row ``r`` as mpf (index targets: ``w_y`` at ``y``)."""
    if idx is not None:
        coeff = [mp.mpf(0)] * C
        coeff[idx[r]] = wc[idx[r]]
        return coeff
    return [mp.mpf(Q[r, c]) * wc[c] for c in range(C)]


def exact(mp, case):
    """Per-row ``-sum_c w_c q_c log p_c`` and ``-w_c q_c / p_c`` (one term each: no cancellation)."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    wc = M.class_weights(mp, case, C)
    losses, grads = [], []
    denom = mp.mpf(0) if idx is not None else R
    for r in range(R):
        coeff = _row_coefficients(mp, idx, Q, wc, r, C)
        if idx is not None:
            denom += coeff[idx[r]]
        loss, grow = mp.mpf(0), []
        for c in range(C):
            pc, inside = M.clipped(X[r, c], case.clip_bounds)
            if coeff[c] != 0:
                loss -= coeff[c] * mp.log(mp.mpf(pc))
                grow.append(-coeff[c] / mp.mpf(pc) if inside else mp.mpf(0))
            else:
                grow.append(mp.mpf(0))
        losses.append(loss)
        grads.append(grow)
    return losses, M.to_input_layout(grads, ax, batch, C), denom


def exact_hvp(mp, case):
    """Diagonal ``w_c q_c / p_c^2 v_c`` inside the clip, 0 outside."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    Vr, _, _ = M.rows(case, case.v)
    wc = M.class_weights(mp, case, C)
    bounds = case.clip_bounds
    out, denom = [], (mp.mpf(0) if idx is not None else R)
    for r in range(R):
        coeff = _row_coefficients(mp, idx, Q, wc, r, C)
        if idx is not None:
            denom += coeff[idx[r]]
        row = []
        for c in range(C):
            pc = X[r, c]
            if coeff[c] == 0 or (bounds is not None and not bounds[0] <= pc <= bounds[1]):
                row.append(mp.mpf(0))
            else:
                row.append(coeff[c] / mp.mpf(pc) ** 2 * mp.mpf(Vr[r, c]))
        out.append(row)
    return M.to_input_layout(out, ax, batch, C), denom


def _coefficients_np(case, ax, C):
    """``A = w q`` (class axis last) and the ``mean`` denominator, in float64."""
    t = np.asarray(case.targets)
    w = case.kwargs.get("weight")
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    if t.dtype.kind in "iu":
        q = (np.arange(C) == t[..., None]).astype(np.float64)
        return q * w, float(np.sum(w[t]))
    q = np.moveaxis(t.astype(np.float64), ax, -1)
    return q * w, float(q[..., 0].size)


def operands(case, v=None):
    """Gradient operand ``w_c q_c / p_c`` (one term: no cancellation); value: the value."""
    ax, p = class_last(case)
    C = p.shape[-1]
    A, denom = _coefficients_np(case, ax, C)
    p, inside = clip(case, p)
    s = scale(case, denom)
    with np.errstate(all="ignore"):   # infinite operands only where the result overflows
        rows = -np.sum(sp.xlogy(A, p), axis=-1)
        g = np.where(inside & (A != 0), s * A / p, 0.0)
        h = None
        if v is not None:
            vm = np.abs(np.moveaxis(v.astype(np.float64), ax, -1))
            h = np.moveaxis(np.where(inside & (A != 0), s * A / p ** 2 * vm, 0.0), -1, ax)
    return tight(reduce_operand(case, rows, denom), np.moveaxis(g, -1, ax), h)


def extreme(case) -> bool:
    return M.probability_extreme(case, EXTREME_PROB)


ORACLE = Oracle(twin=categorical_cross_entropy, exact=exact, exact_hvp=exact_hvp,
                operands=operands, extreme=extreme)
