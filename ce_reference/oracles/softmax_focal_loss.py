r"""Independent oracles of the softmax focal loss: JAX twin, mpmath, operand sizes.

Written from the definition :math:`\ell_n = \sum_c w_c q_{n,c} (1 - p_{n,c})^\gamma (-\log p_{n,c})`
(index targets: one-hot :math:`q`, ignored rows 0; ``mean`` by softmax cross-entropy's
denominator), never importing :mod:`ce_reference.losses.softmax_focal_loss`.  The mpmath
gradient and ``H v`` are closed forms of that definition (derived in the loss module's
docstring) evaluated with leave-one-out sums; ``tests/test_softmax_focal_loss.py`` checks them
against ``mpmath.diff`` of this module's own loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special as sp

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import Operands, class_last, reduce_operand, scale

#: |logit| > 36 makes sigma(x) round to 1 in float64: re-evaluated at the extreme precision.
EXTREME_LOGIT = 36.0


def _coefficients(x, targets, axis, weight, ignore_index):
    """``(A, denominator)``: ``A_c = w_c q_c`` along ``axis`` and softmax CE's ``mean``
    denominator (sum of ``w_y`` over kept rows, or the number of rows)."""
    C = x.shape[axis]
    t = jnp.asarray(targets)
    w = J.class_weight(weight, x.dtype, x.ndim, axis)
    shape = [1] * x.ndim
    shape[axis] = C
    if jnp.issubdtype(t.dtype, jnp.integer):
        keep = jnp.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        onehot = jnp.expand_dims(jnp.where(keep, t, 0), axis) == jnp.arange(C).reshape(shape)
        A = jnp.where(onehot & jnp.expand_dims(keep, axis), 1.0, 0.0).astype(x.dtype)
        A = A if w is None else A * w
        return A, jnp.sum(A)
    q = t.astype(x.dtype)
    return (q if w is None else q * w), x.size // C


def log_one_minus_softmax(x, axis):
    """``log(1 - softmax(x)_c) = logsumexp_{j != c} x_j - logsumexp_j x_j`` (the definition of
    ``1 - p_c`` as the mass of the other classes; O(C^2) per row)."""
    xm = jnp.moveaxis(x, axis, -1)
    C = xm.shape[-1]
    others = jnp.where(jnp.eye(C, dtype=bool), -jnp.inf, xm[..., None, :])      # [..., c, j]
    out = jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(xm, axis=-1, keepdims=True)
    return jnp.moveaxis(out, -1, axis)


def softmax_focal_loss(logits, targets, *, gamma=2.0, axis=-1, weight=None, ignore_index=None,
                       reduction="mean"):
    """``sum_c w_c q_c (1 - p_c)^gamma (-log_softmax(x)_c)``; ``(1 - p_c)^gamma`` as
    ``exp(gamma (logsumexp of the other classes - logsumexp))``; ``gamma = 0``: factor 1."""
    x, result = J.as_float(logits)
    axis = axis % x.ndim
    A, denom = _coefficients(x, targets, axis, weight, ignore_index)
    nlp = jnp.where(A == 0, 0.0, -jax.nn.log_softmax(x, axis=axis))   # 0 * inf = 0, no NaN grad
    if gamma != 0 and x.shape[axis] == 1:
        coef = A * 0.0                      # one class: p = 1, (1 - p)^gamma = 0 for every x
    elif gamma != 0:
        coef = A * jnp.exp(gamma * log_one_minus_softmax(x, axis))
    else:
        coef = A
    rows = jnp.sum(coef * nlp, axis=axis)
    return J.as_result(J.reduce(rows, reduction, denom), result)


# --------------------------------------------------------------------------- mpmath

def _row_coefficients(mp, case, r, idx, Q, wc, C):
    """``(A, denominator contribution)`` of row ``r``; ``None`` for an ignored row."""
    ignore = case.kwargs.get("ignore_index")
    if idx is not None:
        if ignore is not None and idx[r] == ignore:
            return None, 0
        A = [mp.mpf(0)] * C
        A[idx[r]] = wc[idx[r]]
        return A, wc[idx[r]]
    return [wc[c] * mp.mpf(Q[r, c]) for c in range(C)], 1


def _row(mp, xrow, A, gamma):
    """Exact pieces of one row: ``e_j = exp(x_j - m)``, ``e_out_k = sum_{j != k} e_j`` (so
    ``1 - p_k = e_out_k / E`` without a subtraction), ``E``, ``-log p``, the focal factor
    ``m_c = (1 - p_c)^gamma``, ``kappa_c = p_c (-log p_c) / (1 - p_c) = e_c (-log p_c) / e_out_c``
    and ``B_c = A_c m_c (1 + gamma kappa_c)``."""
    C = len(xrow)
    G = mp.mpf(gamma)
    xr = [mp.mpf(v) for v in xrow]
    mx = max(xr)
    a = xr.index(mx)
    e = [mp.exp(v - mx) for v in xr]
    e_out = M.leave_one_out(mp, e)
    E = 1 + e_out[a]
    logE = mp.log1p(e_out[a])
    nlp = [(mx - v) + logE for v in xr]
    mf, kappa = [], []
    for c in range(C):
        if gamma == 0:
            mf.append(mp.mpf(1))
        elif e_out[c] == 0:                                     # one class: p_c = 1
            mf.append(mp.mpf(0))
        else:
            mf.append(mp.exp(G * (mp.log(e_out[c]) - mp.log(E))))
        kappa.append(mp.mpf(1) if e_out[c] == 0 else e[c] * nlp[c] / e_out[c])
    B = [A[c] * mf[c] * (1 + G * kappa[c]) for c in range(C)]
    return e, e_out, E, nlp, mf, kappa, B


def exact(mp, case):
    """Per-row losses ``sum_c A_c m_c (-log p_c)``, the gradient
    ``p_k sum_c B_c - B_k = (e_k B_out_k - B_k e_out_k) / E`` (leave-one-out sums of
    non-negative terms: no ``p - 1``) and the ``mean`` denominator."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    wc = M.class_weights(mp, case, C)
    gamma = case.kwargs.get("gamma", 2.0)
    losses, grads, denom = [], [], mp.mpf(0)
    for r in range(R):
        A, dn = _row_coefficients(mp, case, r, idx, Q, wc, C)
        if A is None:
            losses.append(mp.mpf(0))
            grads.append([mp.mpf(0)] * C)
            continue
        denom += dn
        e, e_out, E, nlp, mf, _, B = _row(mp, X[r], A, gamma)
        losses.append(mp.fsum(A[c] * mf[c] * nlp[c] for c in range(C) if A[c] != 0))
        B_out = M.leave_one_out(mp, B)
        grads.append([(e[k] * B_out[k] - B[k] * e_out[k]) / E for k in range(C)])
    return losses, M.to_input_layout(grads, ax, batch, C), denom


def exact_hvp(mp, case):
    r"""``H v`` of the sum of the row losses: ``(sum B) p_k d_k + p_k sum_c beta_c - beta_k``
    with ``beta_c = gamma A_c m_c [kappa_c - p_c (2 + gamma kappa_c)] delta_c``,
    ``d_k = (v_k e_out_k - sum_{j != k} e_j v_j) / E`` and ``delta_k = d_k E / e_out_k``."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    Vr, _, _ = M.rows(case, case.v)
    wc = M.class_weights(mp, case, C)
    gamma = case.kwargs.get("gamma", 2.0)
    G = mp.mpf(gamma)
    out, denom = [], mp.mpf(0)
    for r in range(R):
        A, dn = _row_coefficients(mp, case, r, idx, Q, wc, C)
        if A is None:
            out.append([mp.mpf(0)] * C)
            continue
        denom += dn
        e, e_out, E, nlp, mf, kappa, B = _row(mp, X[r], A, gamma)
        vr = [mp.mpf(v) for v in Vr[r]]
        ev_out = M.leave_one_out(mp, [e[j] * vr[j] for j in range(C)])
        num = [vr[k] * e_out[k] - ev_out[k] for k in range(C)]     # d_k E
        SB = mp.fsum(B)
        beta = []
        for c in range(C):
            if A[c] == 0 or gamma == 0 or e_out[c] == 0:
                beta.append(mp.mpf(0))
                continue
            pc = e[c] / E
            beta.append(G * A[c] * mf[c] * (kappa[c] - pc * (2 + G * kappa[c]))
                        * num[c] / e_out[c])
        beta_out = M.leave_one_out(mp, beta)
        out.append([SB * e[k] * num[k] / E ** 2 + (e[k] * beta_out[k] - beta[k] * e_out[k]) / E
                    for k in range(C)])
    return M.to_input_layout(out, ax, batch, C), denom


# --------------------------------------------------------------------------- operands

def _coefficients_np(case, ax, C):
    t = np.asarray(case.targets)
    w = case.kwargs.get("weight")
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    if t.dtype.kind in "iu":
        ignore = case.kwargs.get("ignore_index")
        keep = np.ones(t.shape, bool) if ignore is None else t != ignore
        idx = np.where(keep, t, 0)
        A = (np.arange(C) == idx[..., None]) * keep[..., None] * w
        return A, float(np.sum(A))
    q = np.moveaxis(t.astype(np.float64), ax, -1)
    return q * w, float(q[..., 0].size)


def operands(case, v=None) -> Operands:
    r"""Operand sizes from SciPy's ``softmax`` / ``log_softmax`` (float64).

    Per class the condition ``k_c = 1 + |x_c - m| + D + gamma (1 + |L_c| + |x_c - m| + D)``,
    ``D = sum_j p_j |x_j - m|``: the rounding of ``x - m`` before ``exp`` (relative error
    ``|x_c - m| eps`` in ``e_c``, ``D eps`` in the normaliser) and of ``L = log(1 - p)`` inside
    ``exp(gamma L)``.  Value ``sum_c A_c m_c (l_c + |x_c - m| + D) k_c``; gradient
    ``p_k (1 + |x_k - m| + D) sum_c B_c k_c + B_k k_k``;
    HVP the terms of ``(sum B) p d + p sum beta + beta`` in absolute value
    (``|d_k| <= |v_k| + <p, |v|>``, ``|delta_c| <= |v_c| + max |v|``) times the same conditions.
    The JAX twin's ``log_softmax`` rounds ``x - (m + log sum)`` (``eps (|x| + |m|)``): its
    operands use ``1 + |x| + |m|`` in place of ``|x - m|``.
    """
    ax, x = class_last(case)
    C = x.shape[-1]
    A, denom = _coefficients_np(case, ax, C)
    gamma = case.kwargs.get("gamma", 2.0)
    m = np.max(x, axis=-1, keepdims=True)
    p = sp.softmax(x, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # -log p = (m - x) + log1p(sum of the others' e^{x - m}): SciPy's log_softmax rounds
        # log(1 + 1e-38) to 0 for a confident row, and the operand must not vanish
        e = np.exp(x - m)
        np.put_along_axis(e, np.argmax(x, axis=-1)[..., None], 0.0, axis=-1)
        nlp = (m - x) + np.log1p(np.sum(e, axis=-1, keepdims=True))
        # 1 - p_c by the other classes' mass (p_c may round to 1): log-sum-exp of the others
        others = np.where(np.eye(C, dtype=bool), -np.inf, x[..., None, :])
        L = sp.logsumexp(others, axis=-1) - sp.logsumexp(x, axis=-1, keepdims=True) \
            if C > 1 else np.full(x.shape, -np.inf)
        mf = np.ones_like(p) if gamma == 0 else np.exp(gamma * L)
        omp = np.where(p < 0.5, 1 - p, -np.expm1(L))          # 1 - p, no cancellation
        kappa = np.where(p == 0, 0.0, np.where(omp > 0, p * nlp / omp, 1.0))
    Lf = np.where(np.isfinite(L), np.abs(L), 0.0)
    s = scale(case, denom)
    out = {}
    for key, dx in (("tight", np.abs(x - m)), ("jax", 1 + np.abs(x) + np.abs(m))):
        D = np.sum(p * dx, axis=-1, keepdims=True)
        k = 1 + dx + D + gamma * (1 + Lf + dx + D)
        B = A * mf * (1 + gamma * kappa)
        val_rows = np.sum(np.where(A == 0, 0, A * mf * (nlp + dx + D) * k), axis=-1)
        SBk = np.sum(B * k, axis=-1, keepdims=True)
        # JAX: -log p_c has an absolute error eps (1 + |x_c| + |m|) (log of 1 + tiny), which
        # d(1 - p_c)^gamma / dx carries into every class of the row.
        loose = 0.0 if key == "tight" else gamma * np.sum(A * mf * k, axis=-1, keepdims=True)
        out["value", key] = reduce_operand(case, val_rows, denom)
        pk = p * (1 + dx + D)                      # p_k with the condition of e_k / E
        out["grad", key] = np.moveaxis(s * (pk * SBk + B * k + loose), -1, ax)
        if v is not None:
            vv = np.abs(np.moveaxis(v.astype(np.float64), ax, -1))
            dd = vv + np.sum(pk * vv, axis=-1, keepdims=True)
            dl = vv + np.max(vv, axis=-1, keepdims=True)
            beta = gamma * A * mf * (kappa + pk * (2 + gamma * kappa)) * dl * k
            h = (SBk * pk * dd + pk * np.sum(beta, axis=-1, keepdims=True) + beta
                 + (1 + gamma) * loose * dl)
            out["hvp", key] = np.moveaxis(s * h, -1, ax)
        else:
            out["hvp", key] = None
    return Operands(out["value", "tight"], out["grad", "tight"], out["hvp", "tight"],
                    out["value", "jax"], out["grad", "jax"], out["hvp", "jax"])


def extreme(case) -> bool:
    return M.logit_extreme(case, EXTREME_LOGIT)


ORACLE = Oracle(twin=softmax_focal_loss, exact=exact, exact_hvp=exact_hvp,
                operands=operands, extreme=extreme)
