r"""Independent oracles of Poly-1 cross-entropy: JAX twin, mpmath, operand sizes.

Written from the definition :math:`\ell_n = \sum_c w_c q_{n,c}[-\log p_{n,c} + \varepsilon(1 - p_{n,c})]`
(optax's ``poly_loss_cross_entropy`` with per-class weights; ``mean`` by softmax
cross-entropy's denominator), never importing :mod:`ce_reference.losses.poly1_cross_entropy`.
The mpmath gradient and ``H v`` are closed forms of the definition evaluated with
leave-one-out sums; ``tests/test_poly1_cross_entropy.py`` checks them against ``mpmath.diff``.
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


def poly1_cross_entropy(logits, targets, *, epsilon=2.0, axis=-1, weight=None, reduction="mean"):
    """``sum_c w_c q_c [-log_softmax(x)_c + epsilon (1 - softmax(x)_c)]`` (optax's form)."""
    x, result = J.as_float(logits)
    axis = axis % x.ndim
    C = x.shape[axis]
    t = jnp.asarray(targets)
    w = J.class_weight(weight, x.dtype, x.ndim, axis)
    if jnp.issubdtype(t.dtype, jnp.integer):
        shape = [1] * x.ndim
        shape[axis] = C
        A = (jnp.expand_dims(t, axis) == jnp.arange(C).reshape(shape)).astype(x.dtype)
    else:
        A = t.astype(x.dtype)
    A = A if w is None else A * w
    denom = jnp.sum(A) if jnp.issubdtype(t.dtype, jnp.integer) else x.size // C
    nlp = jnp.where(A == 0, 0.0, -jax.nn.log_softmax(x, axis=axis))
    rows = jnp.sum(A * nlp, axis=axis) + epsilon * jnp.sum(A * (1 - jax.nn.softmax(x, axis=axis)),
                                                          axis=axis)
    return J.as_result(J.reduce(rows, reduction, denom), result)


# --------------------------------------------------------------------------- mpmath

def _rows_exact(mp, case):
    """Yield ``(r, A, e, e_out, E, -log p)`` per row and collect the denominator."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    wc = M.class_weights(mp, case, C)
    for r in range(R):
        if idx is not None:
            A = [mp.mpf(0)] * C
            A[idx[r]] = wc[idx[r]]
        else:
            A = [wc[c] * mp.mpf(Q[r, c]) for c in range(C)]
        xr = [mp.mpf(v) for v in X[r]]
        mx = max(xr)
        a = xr.index(mx)
        e = [mp.exp(v - mx) for v in xr]
        e_out = M.leave_one_out(mp, e)                  # 1 - p_k = e_out_k / E, no subtraction
        E = 1 + e_out[a]
        logE = mp.log1p(e_out[a])
        yield r, A, e, e_out, E, [(mx - v) + logE for v in xr]


def _l_minus_s(mp, l, s, rho, argmax):
    """``-log p - (1 - p)``; at the arg-max ``log1p(rho) - rho / (1 + rho)`` (``rho`` the others'
    mass) as ``sum_{n >= 2} (-1)^n (n - 1)/n rho^n`` for ``rho < 1/2`` (no cancellation)."""
    if not argmax or rho >= 0.5:
        return l - s
    total, term, n = mp.mpf(0), rho * rho, 2
    while abs(term) > mp.eps * abs(total) or n == 2:
        total += term * (n - 1) / n
        term *= -rho
        n += 1
    return total


def _denominator(mp, case, C):
    t = np.asarray(case.targets)
    if t.dtype.kind in "iu":
        wc = M.class_weights(mp, case, C)
        return mp.fsum(wc[int(i)] for i in t.reshape(-1))
    return t.size // C


def exact(mp, case):
    """Per-row losses ``sum A (-log p) + epsilon sum A e_out / E``, the gradient
    ``p_k S_A - A_k + epsilon p_k (abar - A_k)`` collected as
    ``p_k sum_{j != k} A_j c_j - A_k (1 - p_k) c_k``, ``c = 1 + epsilon p`` (leave-one-out sums,
    ``1 - p_k = e_out_k / E``), and the denominator."""
    X, ax, batch = M.rows(case)
    C = X.shape[1]
    eps = mp.mpf(case.kwargs.get("epsilon", 2.0))
    losses, grads = [], []
    for r, A, e, e_out, E, nlp in _rows_exact(mp, case):
        # sum_c A_c [(l_c - s_c) + (1 + eps) s_c], s_c = 1 - p_c = e_out_c / E: for a confident
        # row at eps = -1, l_a - s_a ~ s_a^2 / 2 is far below 50 digits of l_a
        a = e.index(max(e))                               # e_a = 1: e_out_a is rho
        gap = [_l_minus_s(mp, nlp[c], e_out[c] / E, e_out[c], c == a) for c in range(C)]
        losses.append(mp.fsum(A[c] * (gap[c] + (1 + eps) * e_out[c] / E)
                              for c in range(C) if A[c] != 0))
        # 1 + eps p_j = ((1 + eps) e_j + e_out_j) / E: for eps >= -1 non-negative terms (at
        # eps = -1 the target's entry is -A (1 - p)^2, which p S_A - A + eps p (abar - A)
        # would form by cancelling beyond 50 digits for a confident row)
        c = [((1 + eps) * e[j] + e_out[j]) / E for j in range(C)]
        Ac_out = M.leave_one_out(mp, [A[j] * c[j] for j in range(C)])
        grads.append([(e[k] * Ac_out[k] - A[k] * e_out[k] * c[k]) / E for k in range(C)])
    return losses, M.to_input_layout(grads, ax, batch, C), _denominator(mp, case, C)


def exact_hvp(mp, case):
    """``S_A p_k d_k - epsilon p_k [(A_k - abar) d_k - sum_j p_j (A_j - abar) d_j]`` with
    ``d_k = (v_k e_out_k - sum_{j != k} e_j v_j) / E``."""
    X, ax, batch = M.rows(case)
    C = X.shape[1]
    Vr, _, _ = M.rows(case, case.v)
    eps = mp.mpf(case.kwargs.get("epsilon", 2.0))
    out = []
    for r, A, e, e_out, E, nlp in _rows_exact(mp, case):
        vr = [mp.mpf(v) for v in Vr[r]]
        ev_out = M.leave_one_out(mp, [e[j] * vr[j] for j in range(C)])
        d = [(vr[k] * e_out[k] - ev_out[k]) / E for k in range(C)]
        eA_out = M.leave_one_out(mp, [e[j] * A[j] for j in range(C)])
        cen = [(A[k] * e_out[k] - eA_out[k]) / E for k in range(C)]          # A_k - abar
        p = [ek / E for ek in e]
        inner = mp.fsum(p[j] * cen[j] * d[j] for j in range(C))
        SA = mp.fsum(A)
        out.append([SA * p[k] * d[k] - eps * p[k] * (cen[k] * d[k] - inner) for k in range(C)])
    return M.to_input_layout(out, ax, batch, C), _denominator(mp, case, C)


# --------------------------------------------------------------------------- operands

def operands(case, v=None) -> Operands:
    r"""Softmax cross-entropy's operands plus the poly term's, from SciPy (float64).

    With ``k_c = 1 + |x_c - m| + D`` (``D = sum_j p_j |x_j - m|``: the rounding of ``x - m``
    before ``exp``): value ``sum_c A_c (l_c + |x_c - m| + D) + |epsilon| sum_c A_c (1 - p_c) k_c``;
    gradient ``(p_k S_A + A_k + |epsilon| p_k (abar + A_k)) k_k``; HVP
    ``(S_A p_k |d|_k + |epsilon| p_k ((A_k + abar) |d|_k + sum_j p_j (A_j + abar) |d|_j)) k_k``
    with ``|d|_k = |v_k| + <p, |v|>``.  For the JAX twin ``|x| + |m|`` replaces ``|x - m|``.
    """
    ax, x = class_last(case)
    C = x.shape[-1]
    t = np.asarray(case.targets)
    w = case.kwargs.get("weight")
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    if t.dtype.kind in "iu":
        A = (np.arange(C) == t[..., None]) * w
        denom = float(np.sum(A))
    else:
        A = np.moveaxis(t.astype(np.float64), ax, -1) * w
        denom = float(A[..., 0].size)
    ae = abs(case.kwargs.get("epsilon", 2.0))
    m = np.max(x, axis=-1, keepdims=True)
    p = sp.softmax(x, axis=-1)
    # -log p and 1 - p of a confident row are far below eps: (m - x) + log1p(rest) and
    # rest / E at the arg-max, rest the sum of the other classes' e^{x - m}
    e = np.exp(x - m)
    a = np.argmax(x, axis=-1)[..., None]
    np.put_along_axis(e, a, 0.0, axis=-1)
    rest = np.sum(e, axis=-1, keepdims=True)
    nlp = (m - x) + np.log1p(rest)
    omp = 1 - p
    np.put_along_axis(omp, a, rest / (1 + rest), axis=-1)
    S = np.sum(A, axis=-1, keepdims=True)
    abar = np.sum(A * p, axis=-1, keepdims=True)
    s = scale(case, denom)
    out = {}
    for key, dx in (("tight", np.abs(x - m)), ("jax", 1 + np.abs(x) + np.abs(m))):
        D = np.sum(p * dx, axis=-1, keepdims=True)
        k = 1 + dx + D
        val_rows = (np.sum(np.where(A == 0, 0, A * (nlp + dx + D)), axis=-1)
                    + ae * np.sum(A * omp * k, axis=-1))
        out["value", key] = reduce_operand(case, val_rows, denom)
        out["grad", key] = np.moveaxis(s * (p * S + A + ae * p * (abar + A)) * k, -1, ax)
        out["hvp", key] = None
        if v is not None:
            vv = np.abs(np.moveaxis(v.astype(np.float64), ax, -1))
            dd = vv + np.sum(p * vv, axis=-1, keepdims=True)
            inner = np.sum(p * (A + abar) * dd, axis=-1, keepdims=True)
            h = (S * p * dd + ae * p * ((A + abar) * dd + inner)) * k
            out["hvp", key] = np.moveaxis(s * h, -1, ax)
    return Operands(out["value", "tight"], out["grad", "tight"], out["hvp", "tight"],
                    out["value", "jax"], out["grad", "jax"], out["hvp", "jax"])


def extreme(case) -> bool:
    return M.logit_extreme(case, EXTREME_LOGIT)


# --------------------------------------------------------------------------- benchmark peers

def _optax(x, y, workers):
    try:
        import optax
    except ImportError:
        return None
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    labels = jnp.asarray(np.eye(x.shape[-1], dtype=x.dtype)[y])

    @jax.jit
    def vg(z):
        return jax.value_and_grad(
            lambda z: optax.losses.poly_loss_cross_entropy(z, labels).mean())(z)

    xj = jnp.asarray(x)
    return lambda: jax.block_until_ready(vg(xj))


def peers():
    """optax's ``poly_loss_cross_entropy`` (one-hot labels, ``mean`` over rows) for the
    benchmarks' default case (class-index targets, (N, C))."""
    return {"jax.jit + optax": _optax}


ORACLE = Oracle(twin=poly1_cross_entropy, exact=exact, exact_hvp=exact_hvp,
                operands=operands, extreme=extreme, peers=peers)
