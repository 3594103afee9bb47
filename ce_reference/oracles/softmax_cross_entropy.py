r"""Independent oracles of softmax cross-entropy: JAX twin, mpmath, operand sizes.

Written from the definition
:math:`\ell_n = \sum_c w_c q'_{n,c} (\operatorname{logsumexp}(x_n) - x_{n,c})`,
:math:`q' = (1-\varepsilon) q + \varepsilon/C` (index targets: PyTorch's
weighting, the true-class term carries :math:`w_{y_n}`, the uniform term each
:math:`w_c`); never importing :mod:`ce_reference.losses.softmax_cross_entropy`.
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

#: Logits beyond this are re-evaluated at the extreme precision: |x| > 36 makes
#: sigma(x) round to 1 in float64 (the sigma(700) - 1 trap).
EXTREME_LOGIT = 36.0


def soft_cap(x, softcap):
    """``softcap * tanh(x / softcap)``, keeping ``-inf`` (a masked class) at ``-inf``."""
    if softcap is None:
        return x
    safe = jnp.where(jnp.isneginf(x), 0.0, x)      # no inf inside tanh's derivative
    return jnp.where(jnp.isneginf(x), -jnp.inf, softcap * jnp.tanh(safe / softcap))


def softmax_cross_entropy(logits, targets, *, axis=-1, weight=None, ignore_index=None,
                          label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean"):
    """PyTorch's ``F.cross_entropy`` written from its definition with ``jax.nn.log_softmax``,
    on the soft-capped logits, plus ``z logsumexp^2`` on kept rows (its own mean over them)."""
    x, result = J.as_float(logits)
    axis = axis % x.ndim
    C = x.shape[axis]
    u = soft_cap(x, softcap)
    logp = jax.nn.log_softmax(u, axis=axis)
    t = jnp.asarray(targets)
    w = J.class_weight(weight, x.dtype, x.ndim, axis)
    eps = label_smoothing
    if jnp.issubdtype(t.dtype, jnp.integer):
        keep = jnp.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        idx = jnp.expand_dims(jnp.where(keep, t, 0), axis)
        nll = -jnp.squeeze(jnp.take_along_axis(logp, idx, axis=axis), axis)
        wy = (jnp.ones(t.shape, x.dtype) if w is None else
              jnp.squeeze(jnp.take_along_axis(jnp.broadcast_to(w, x.shape), idx, axis=axis), axis))
        rows = (1 - eps) * wy * nll
        if eps:
            smooth = -jnp.sum(logp if w is None else w * logp, axis=axis)
            rows = rows + eps / C * smooth
        rows = jnp.where(keep, rows, 0.0)
        denom = jnp.sum(jnp.where(keep, wy, 0.0))
    else:
        keep = jnp.ones(rows_shape(x.shape, axis), bool)
        q = t.astype(x.dtype)
        q = (1 - eps) * q + eps / C
        rows = -jnp.sum(jnp.where(q == 0, 0.0, (q if w is None else q * w) * jnp.where(
            q == 0, 0.0, logp)), axis=axis)
        denom = rows.size
    if not z_loss:
        return J.as_result(J.reduce(rows, reduction, denom), result)
    z_rows = jnp.where(keep, z_loss * jax.nn.logsumexp(u, axis=axis) ** 2, 0.0)
    if reduction == "mean":
        return J.as_result(jnp.sum(rows) / denom + jnp.sum(z_rows) / jnp.sum(keep), result)
    return J.as_result(J.reduce(rows + z_rows, reduction, denom), result)


def rows_shape(shape, axis):
    return shape[:axis] + shape[axis + 1:]


def _coefficients(mp, case, r, idx, Q, wc, C):
    """``(A, denominator contribution)`` of row ``r``: ``A_c = w_c q'_c``; None if ignored."""
    ls = mp.mpf(case.kwargs.get("label_smoothing", 0.0))
    ignore = case.kwargs.get("ignore_index")
    if idx is not None:
        if ignore is not None and idx[r] == ignore:
            return None, 0
        A = [wc[c] * ls / C for c in range(C)]
        A[idx[r]] += (1 - ls) * wc[idx[r]]
        return A, wc[idx[r]]
    return [wc[c] * ((1 - ls) * mp.mpf(Q[r, c]) + ls / C) for c in range(C)], 1


def sech2(mp, y):
    """``sech^2(y) = 4 e^{-2|y|} / (1 + e^{-2|y|})^2``: no cancellation, no overflow."""
    e = mp.exp(-2 * abs(y))
    return 4 * e / (1 + e) ** 2


def _capped(mp, case, xv):
    """``(u, du/dx, d2u/dx2)`` of one logit under the case's soft cap (masked: -inf, 0, 0)."""
    X = xv if isinstance(xv, mp.mpf) else mp.mpf(float(xv))   # mpf inputs kept exact
    cap = case.kwargs.get("softcap")
    if X == mp.ninf:
        return mp.ninf, mp.mpf(0), mp.mpf(0)
    if cap is None:
        return X, mp.mpf(1), mp.mpf(0)
    s = mp.mpf(cap)
    c = sech2(mp, X / s)
    return s * mp.tanh(X / s), c, -2 / s * c * mp.tanh(X / s)


def _row(mp, xr):
    """``(e, e_out, E, m, log1p(t), a)`` of a row of (capped) logits: ``e_k = exp(u_k - m)``,
    ``e_out`` the leave-one-out sums, ``E = sum e``, ``t`` the sum of the others."""
    m = max(xr)
    a = xr.index(m)
    e = [mp.exp(v - m) if v != mp.ninf else mp.mpf(0) for v in xr]   # each in [0, 1], e_a = 1
    e_out = M.leave_one_out(mp, e)                                   # sum_{j != k} e_j
    return e, e_out, 1 + e_out[a], m, mp.log1p(e_out[a]), a


def _parts(mp, case):
    """Per-row cross-entropy and z-loss values and their gradients with respect to ``x``
    (lists per row), and the two ``mean`` denominators.

    ``lse(u) - u_c = (m - u_c) + log1p(sum_{j != a} exp(u_j - m))`` (``a`` the arg-max):
    two non-negative terms, and the log of ``1 + e^-745`` is not rounded to 0.  The
    gradient ``p_k S - A_k`` is ``p_k sum_{j != k} A_j - A_k sum_{j != k} p_j``, both
    leave-one-out sums of non-negative terms, so ``p_k - 1 = -sum_{j != k} p_j`` even when
    ``p_k`` rounds to 1; the cap's derivative multiplies it.
    """
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    wc = M.class_weights(mp, case, C)
    z = mp.mpf(case.kwargs.get("z_loss", 0.0))
    ce_l, z_l, ce_g, z_g, d_ce, d_z = [], [], [], [], mp.mpf(0), 0
    for r in range(R):
        A, d = _coefficients(mp, case, r, idx, Q, wc, C)
        if A is None:
            ce_l.append(mp.mpf(0))
            z_l.append(mp.mpf(0))
            ce_g.append([mp.mpf(0)] * C)
            z_g.append([mp.mpf(0)] * C)
            continue
        d_ce += d
        d_z += 1
        capped = [_capped(mp, case, v) for v in X[r]]
        u = [q[0] for q in capped]
        e, e_out, E, m, log1p_t, a = _row(mp, u)
        ce_l.append(mp.fsum(A[c] * ((m - u[c]) + log1p_t) for c in range(C) if A[c] != 0))
        A_out = M.leave_one_out(mp, A)
        ce_g.append([capped[k][1] * (e[k] * A_out[k] - A[k] * e_out[k]) / E for k in range(C)])
        lse = m + log1p_t
        z_l.append(z * lse ** 2)
        z_g.append([capped[k][1] * 2 * z * lse * e[k] / E for k in range(C)])
    return (ce_l, z_l, ce_g, z_g, d_ce, d_z), ax, batch, C


def _combine(mp, case, ce, zl, d_ce, d_z):
    """Per-example values (or gradients) of a two-part loss and the denominator to reduce them
    with: the parts' own for ``mean`` (pre-scaled, denominator 1), else added."""
    if case.kwargs["reduction"] in ("none", "sum") or not case.kwargs.get("z_loss"):
        return [a + b for a, b in zip(ce, zl)], d_ce
    if d_ce == 0:
        return [a + b for a, b in zip(ce, zl)], 0            # NaN mean, zero gradient
    return [a / d_ce + b / d_z for a, b in zip(ce, zl)], 1


def exact(mp, case):
    """Per-row losses, gradient of their sum (input layout) and the ``mean`` denominator."""
    (ce_l, z_l, ce_g, z_g, d_ce, d_z), ax, batch, C = _parts(mp, case)
    losses, denom = _combine(mp, case, ce_l, z_l, d_ce, d_z)
    flat, _ = _combine(mp, case, [g for row in ce_g for g in row],
                       [g for row in z_g for g in row], d_ce, d_z)
    rows = [flat[r * C:(r + 1) * C] for r in range(len(ce_g))]
    return losses, M.to_input_layout(rows, ax, batch, C), denom


def exact_hvp(mp, case):
    """``H v`` of the reduced loss's per-row parts and the denominator to reduce with.

    ``H^u = S (diag p - p p^T)`` for the cross-entropy, applied as
    ``S p_k sum_j p_j (v_k - v_j)`` (``sum_j p_j = 1``: both leave-one-out sums scale with
    ``1 - p_k``, so a confident row does not cancel); the z-loss adds
    ``2 z (lse (diag p - p p^T) + p p^T)``; the cap gives ``c H^u (c v) + g_u c' v``.
    """
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    Vr, _, _ = M.rows(case, case.v)
    wc = M.class_weights(mp, case, C)
    z = mp.mpf(case.kwargs.get("z_loss", 0.0))
    ce_h, z_h, d_ce, d_z = [], [], mp.mpf(0), 0
    for r in range(R):
        A, d = _coefficients(mp, case, r, idx, Q, wc, C)
        if A is None:
            ce_h.append([mp.mpf(0)] * C)
            z_h.append([mp.mpf(0)] * C)
            continue
        d_ce += d
        d_z += 1
        capped = [_capped(mp, case, v) for v in X[r]]
        u, cf, c2 = [q[0] for q in capped], [q[1] for q in capped], [q[2] for q in capped]
        e, e_out, E, m, log1p_t, _ = _row(mp, u)
        lse, S = m + log1p_t, mp.fsum(A)
        p = [ek / E for ek in e]
        cv = [cf[k] * mp.mpf(Vr[r, k]) for k in range(C)]                  # c v
        ev_out = M.leave_one_out(mp, [e[j] * cv[j] for j in range(C)])
        centered = [(cv[k] * e_out[k] - ev_out[k]) / E for k in range(C)]   # cv_k - <p, cv>
        pcv = mp.fsum(p[j] * cv[j] for j in range(C))
        A_out = M.leave_one_out(mp, A)
        g_ce = [(e[k] * A_out[k] - A[k] * e_out[k]) / E for k in range(C)]  # p S - A
        ce_h.append([cf[k] * S * p[k] * centered[k] + g_ce[k] * c2[k] * mp.mpf(Vr[r, k])
                     for k in range(C)])
        z_h.append([cf[k] * 2 * z * (lse * p[k] * centered[k] + p[k] * pcv)
                    + 2 * z * lse * p[k] * c2[k] * mp.mpf(Vr[r, k]) for k in range(C)])
    flat, denom = _combine(mp, case, [h for row in ce_h for h in row],
                           [h for row in z_h for h in row], d_ce, d_z)
    rows = [flat[r * C:(r + 1) * C] for r in range(R)]
    return M.to_input_layout(rows, ax, batch, C), denom


def _coefficients_np(case, ax, C):
    """``A = w q'`` (class axis last) and the ``mean`` denominator, in float64."""
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


def _capped_np(case, x):
    """``(u, c, |c'|, condition)`` in float64 for the case's soft cap: the capped logits,
    ``du/dx = sech^2(x/s)``, ``|d2u/dx2|``, and ``1 + 2|x/s|``, the condition number of
    ``sech^2`` at the rounded ``x / s`` (every implementation rounds it: the derivative's
    operand is ``c`` times that).  Without a cap: ``(x, 1, 0, 1)``."""
    cap = case.kwargs.get("softcap")
    if cap is None:
        return x, np.ones_like(x), np.zeros_like(x), np.ones_like(x)
    with np.errstate(invalid="ignore"):
        y = np.where(np.isneginf(x), 0.0, x / cap)
        e = np.exp(-2 * np.abs(y))
        c = np.where(np.isneginf(x), 0.0, 4 * e / (1 + e) ** 2)
        u = np.where(np.isneginf(x), -np.inf, cap * np.tanh(y))
    return u, c, 2 / cap * c * np.abs(np.tanh(y)), 1 + 2 * np.abs(y)


def operands(case, v=None) -> Operands:
    """Gradient operand ``c (p_k S' (1 + |u_k - m|) + A_k)`` (``A = w q'``, ``u`` the capped
    logits, ``c`` the cap's derivative times its condition number, ``S' = S`` plus the
    z-loss's ``2 z |lse|``); value operand the value plus ``S sum_j p_j |u_j - m|`` (the
    rounding of ``u - m``).  The JAX twin differentiates the cap as ``1 - tanh^2``, which is
    ~eps absolute, not relative: its operands take ``c + 1``."""
    ax, x = class_last(case)
    C = x.shape[-1]
    u, c, c2, condition = _capped_np(case, x)
    capped = case.kwargs.get("softcap") is not None
    c_jax = c + 1 if capped else c
    c2_jax = c2 + 2 / case.kwargs["softcap"] if capped else c2
    c = c * condition
    A, denom = _coefficients_np(case, ax, C)
    S = np.sum(A, axis=-1, keepdims=True)
    m = np.max(u, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        d = np.where(np.isneginf(u), 0.0, np.abs(u - m))
        if case.kwargs.get("softcap") is not None:          # the rounding of s tanh(x / s)
            d = d + np.where(np.isneginf(u), 0.0, np.abs(u))
    p = sp.softmax(u, axis=-1)
    lse = m + sp.logsumexp(u - m, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        base = np.sum(np.where(A == 0, 0.0, A * ((m - u) + (lse - m))), axis=-1)
    loose = np.where(np.isneginf(u), 0.0, np.abs(u) + np.abs(m))  # JAX: x - (m + log sum)
    s = scale(case, denom)
    z = float(case.kwargs.get("z_loss", 0.0))
    z_val = np.zeros(base.shape)
    zS = zR = np.zeros(S.shape)
    if z:
        keep = _kept_np(case, ax)
        n_kept = float(np.sum(keep))
        s_z = 1.0 / n_kept if case.kwargs["reduction"] == "mean" and n_kept else 1.0
        ratio = s_z / s if s else 0.0                       # the z-loss's scale over s
        z_val = keep * z * lse[..., 0] ** 2 * ratio
        zS = keep[..., None] * 2 * z * np.abs(lse) * ratio  # 2 z lse p: the gradient term
        zR = keep[..., None] * 2 * z * ratio                # 2 z p p^T: the Hessian term
    value = reduce_operand(case, base + z_val + S[..., 0] * np.sum(p * d, axis=-1), denom)
    value_jax = reduce_operand(case, base + z_val + S[..., 0] * (1 + np.sum(p * loose, axis=-1)),
                               denom)
    Sz = S + zS
    g = np.moveaxis(c * s * (p * Sz * (1 + d) + A), -1, ax)
    g_jax = np.moveaxis(c_jax * s * (p * Sz * (1 + loose) + A), -1, ax)
    h = h_jax = None
    if v is not None:
        vm = np.abs(np.moveaxis(v.astype(np.float64), ax, -1))
        g_u = s * (p * Sz + A)

        def hvp_operand(c, c2, spread):
            cv = c * vm
            pv = np.sum(p * cv * (1 + spread), axis=-1, keepdims=True)
            return np.moveaxis(c * s * (Sz * (1 + spread) * p * (cv + pv) + zR * p * pv)
                               + g_u * c2 * condition * vm, -1, ax)

        h = hvp_operand(c, c2, d)
        h_jax = hvp_operand(c_jax, c2_jax, loose)
    return Operands(value, g, h, value_jax, g_jax, h_jax)


def _kept_np(case, ax):
    t = np.asarray(case.targets)
    if t.dtype.kind in "iu":
        ignore = case.kwargs.get("ignore_index")
        return np.ones(t.shape) if ignore is None else (t != ignore).astype(np.float64)
    return np.ones(np.moveaxis(t, ax, -1).shape[:-1])


def extreme(case) -> bool:
    return M.logit_extreme(case, EXTREME_LOGIT)


# --------------------------------------------------------------------------- benchmark peers

def _textbook(x, y, workers):
    """The classic NumPy recipe: softmax, one-hot, clip, ``p - onehot``."""
    def f():
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        onehot = np.zeros_like(p)
        onehot[np.arange(len(y)), y] = 1
        eps = np.finfo(x.dtype).eps
        loss = -np.mean(np.sum(onehot * np.log(np.clip(p, eps, 1 - eps)), axis=1))
        g = (p - onehot) / len(y)
        return loss, g
    return f


def _scipy(x, y, workers):
    def f():
        lp = sp.log_softmax(x, axis=1)
        r = np.arange(len(y))
        loss = -np.mean(lp[r, y])
        g = np.exp(lp)
        g[r, y] -= 1
        g /= len(y)
        return loss, g
    return f


def _optax(x, y, workers):
    try:
        import optax
    except ImportError:
        return None
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)

    @jax.jit
    def vg(z, labels):
        return jax.value_and_grad(
            lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean())(z)

    xj, yj = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    return lambda: jax.block_until_ready(vg(xj, yj))


def _torch(x, y, workers):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(workers)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.from_numpy(y.astype(np.int64))

    def f():
        xt.grad = None
        loss = F.cross_entropy(xt, yt)
        loss.backward()
        return loss, xt.grad
    return f


def peers():
    """Other implementations for the benchmarks: class-index targets, ``mean``, (N, C)."""
    return {"textbook NumPy": _textbook, "scipy.special": _scipy, "jax.jit + optax": _optax,
            "torch eager": _torch}


ORACLE = Oracle(twin=softmax_cross_entropy, exact=exact, exact_hvp=exact_hvp,
                operands=operands, extreme=extreme, peers=peers)
