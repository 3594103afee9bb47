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


def softmax_cross_entropy(logits, targets, *, axis=-1, weight=None, ignore_index=None,
                          label_smoothing=0.0, reduction="mean"):
    """PyTorch's ``F.cross_entropy`` written from its definition with ``jax.nn.log_softmax``."""
    x, result = J.as_float(logits)
    axis = axis % x.ndim
    C = x.shape[axis]
    logp = jax.nn.log_softmax(x, axis=axis)
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
        q = t.astype(x.dtype)
        q = (1 - eps) * q + eps / C
        rows = -jnp.sum(jnp.where(q == 0, 0.0, (q if w is None else q * w) * jnp.where(
            q == 0, 0.0, logp)), axis=axis)
        denom = rows.size
    return J.as_result(J.reduce(rows, reduction, denom), result)


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


def exact(mp, case):
    """Per-row losses, gradient of their sum (input layout) and the ``mean`` denominator.

    ``logsumexp(x) - x_c = (m - x_c) + log1p(sum_{j != a} exp(x_j - m))`` (``a`` the
    arg-max): two non-negative terms, and the log of ``1 + e^-745`` is not rounded
    to 0.  The gradient ``p_k S - A_k`` is computed as
    ``p_k sum_{j != k} A_j - A_k sum_{j != k} p_j`` with both leave-one-out sums
    formed from prefix and suffix sums of non-negative terms, so that
    ``p_k - 1 = -sum_{j != k} p_j`` even when ``p_k`` rounds to 1.
    """
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    wc = M.class_weights(mp, case, C)
    losses, grads, denom = [], [], mp.mpf(0)
    for r in range(R):
        A, d = _coefficients(mp, case, r, idx, Q, wc, C)
        if A is None:
            losses.append(mp.mpf(0))
            grads.append([mp.mpf(0)] * C)
            continue
        denom += d
        xr = [mp.mpf(v) for v in X[r]]
        m = max(xr)
        a = xr.index(m)
        e = [mp.exp(v - m) for v in xr]                      # each in (0, 1], e_a = 1
        e_out = M.leave_one_out(mp, e)                       # sum_{j != k} e_j
        E = 1 + e_out[a]
        logE = mp.log1p(e_out[a])                            # log(1 + tiny) keeps the tiny
        losses.append(mp.fsum(A[c] * ((m - xr[c]) + logE) for c in range(C) if A[c] != 0))
        A_out = M.leave_one_out(mp, A)
        grads.append([(e[k] * A_out[k] - A[k] * e_out[k]) / E for k in range(C)])
    return losses, M.to_input_layout(grads, ax, batch, C), denom


def exact_hvp(mp, case):
    """``H v`` of the sum of the row losses and the ``mean`` denominator.

    The block ``S (diag p - p p^T)`` is applied as ``S p_k sum_j p_j (v_k - v_j)``
    (``sum_j p_j = 1``); both leave-one-out sums scale with ``1 - p_k``, so a
    confident row does not cancel (O(C) per row).
    """
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, Q = M.target_rows(case, ax, C)
    Vr, _, _ = M.rows(case, case.v)
    wc = M.class_weights(mp, case, C)
    out, denom = [], mp.mpf(0)
    for r in range(R):
        A, d = _coefficients(mp, case, r, idx, Q, wc, C)
        if A is None:
            out.append([mp.mpf(0)] * C)
            continue
        denom += d
        S = mp.fsum(A)
        xr = [mp.mpf(v) for v in X[r]]
        m = max(xr)
        e = [mp.exp(v - m) for v in xr]
        E = mp.fsum(e)
        vr = [mp.mpf(v) for v in Vr[r]]
        e_out = M.leave_one_out(mp, e)
        ev_out = M.leave_one_out(mp, [e[j] * vr[j] for j in range(C)])
        out.append([S * e[k] * (vr[k] * e_out[k] - ev_out[k]) / E ** 2 for k in range(C)])
    return M.to_input_layout(out, ax, batch, C), denom


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


def operands(case, v=None) -> Operands:
    """Gradient operand ``p_k S (1 + |x_k - m|) + A_k`` (``A = w q'``, ``S = sum A``);
    value operand the value plus ``S sum_j p_j |x_j - m|`` (the rounding of ``x - m``)."""
    ax, x = class_last(case)
    C = x.shape[-1]
    A, denom = _coefficients_np(case, ax, C)
    S = np.sum(A, axis=-1, keepdims=True)
    m = np.max(x, axis=-1, keepdims=True)
    d = np.abs(x - m)
    p = sp.softmax(x, axis=-1)
    lse = sp.logsumexp(x - m, axis=-1, keepdims=True)
    base = np.sum(A * ((m - x) + lse), axis=-1)
    loose = np.abs(x) + np.abs(m)                      # JAX: x - (m + log sum), see module doc
    s = scale(case, denom)
    value = reduce_operand(case, base + S[..., 0] * np.sum(p * d, axis=-1), denom)
    value_jax = reduce_operand(case, base + S[..., 0] * (1 + np.sum(p * loose, axis=-1)), denom)
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
