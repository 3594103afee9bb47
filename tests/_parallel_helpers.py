"""Helpers of the vocab-parallel tests: single-device oracles written here, inputs, error units.

The oracles are written from the definition of the loss, independently of
``ce_reference.parallel``:

* :func:`mp_loss_grad` -- mpmath at 50 digits (extreme rows at 400 would not
  change them: every term is a sum of non-negative quantities), with
  ``lse - x_c = (m - x_c) + log1p(sum_{j != a} e^{x_j - m})`` and the gradient
  ``p_k S - q_k + 2 z lse p_k`` formed from leave-one-out sums (no
  cancellation), for both smoothing conventions and the z-loss;
* :func:`f64_loss_grad` -- the same formulas in float64 with
  ``scipy.special.logsumexp`` (for inputs too large for mpmath).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def target_dist(V, y, eps, smoothing):
    """The smoothed target distribution of one row (a list of floats)."""
    if eps == 0:
        q = [0.0] * V
        q[y] = 1.0
        return q
    if smoothing == "uniform":
        q = [eps / V] * V
        q[y] = 1 - eps + eps / V
        return q
    q = [eps / (V - 1)] * V
    q[y] = 1 - eps
    return q


def mp_loss_grad(x, y, *, label_smoothing=0.0, smoothing="uniform", z_loss=0.0,
                 ignore_index=None, reduction="mean", dps=50):
    """Exact (mpmath) loss and gradient, rounded to float64.  ``x``: (..., V)."""
    import mpmath
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    V = x.shape[-1]
    X, Y = x.reshape(-1, V), y.reshape(-1)
    with mpmath.workdps(dps):
        mp = mpmath.mp
        eps = mp.mpf(label_smoothing)
        z = mp.mpf(z_loss)
        rows, grads, kept = [], [], 0
        for r in range(X.shape[0]):
            if ignore_index is not None and Y[r] == ignore_index:
                rows.append(mp.mpf(0))
                grads.append([mp.mpf(0)] * V)
                continue
            kept += 1
            yr = int(Y[r])
            if label_smoothing == 0:
                q = [mp.mpf(0)] * V
                q[yr] = mp.mpf(1)
            elif smoothing == "uniform":
                q = [eps / V] * V
                q[yr] = 1 - eps + eps / V
            else:
                q = [eps / (V - 1)] * V
                q[yr] = 1 - eps
            xr = [mp.mpf(float(v)) for v in X[r]]
            m = max(xr)
            a = xr.index(m)
            e = [mp.exp(v - m) if v != -mp.inf else mp.mpf(0) for v in xr]
            e_out = _loo(mp, e)
            E = 1 + e_out[a]
            L = mp.log1p(e_out[a])
            lse = m + L
            loss = mp.mpf(0)
            for c in range(V):
                if q[c] != 0:
                    loss += q[c] * ((m - xr[c]) + L)
            loss += z * lse * lse
            q_out = _loo(mp, q)
            g = [(e[k] * q_out[k] - q[k] * e_out[k]) / E + 2 * z * lse * e[k] / E
                 for k in range(V)]
            rows.append(loss)
            grads.append(g)
        rows_f = np.array([float(v) for v in rows]).reshape(y.shape)
        if reduction == "none":
            value = rows_f
            scale = 1
        elif reduction == "sum":
            value = float(mp.fsum(rows))
            scale = 1
        else:
            value = float(mp.fsum(rows) / kept) if kept else float("nan")
            scale = mp.mpf(1) / kept if kept else 0
        grad = np.array([[float(gk * scale) for gk in g] for g in grads]).reshape(x.shape)
    return value, grad


def _loo(mp, terms):
    n = len(terms)
    pre = [mp.mpf(0)] * (n + 1)
    for k in range(n):
        pre[k + 1] = pre[k] + terms[k]
    suf = [mp.mpf(0)] * (n + 1)
    for k in range(n - 1, -1, -1):
        suf[k] = suf[k + 1] + terms[k]
    return [pre[k] + suf[k + 1] for k in range(n)]


def f64_loss_grad(x, y, *, label_smoothing=0.0, smoothing="uniform", z_loss=0.0,
                  ignore_index=None, reduction="mean"):
    """The definition in float64 (scipy ``logsumexp``): for inputs too large for mpmath."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    V = x.shape[-1]
    X, Y = x.reshape(-1, V), y.reshape(-1)
    keep = np.ones(Y.shape, bool) if ignore_index is None else Y != ignore_index
    Yc = np.where(keep, Y, 0)
    eps = label_smoothing
    Q = np.zeros_like(X)
    if eps == 0:
        Q[np.arange(len(Yc)), Yc] = 1
    elif smoothing == "uniform":
        Q[:] = eps / V
        Q[np.arange(len(Yc)), Yc] = 1 - eps + eps / V
    else:
        Q[:] = eps / (V - 1)
        Q[np.arange(len(Yc)), Yc] = 1 - eps
    lse = logsumexp(X, axis=-1)
    with np.errstate(invalid="ignore"):
        nlp = lse[:, None] - X
        rows = np.sum(np.where(Q == 0, 0, Q * nlp), axis=-1) + z_loss * lse ** 2
    P = np.exp(X - lse[:, None])
    G = P * (1 + 2 * z_loss * lse)[:, None] - Q
    rows = np.where(keep, rows, 0)
    G = np.where(keep[:, None], G, 0)
    n = int(keep.sum())
    if reduction == "none":
        return rows.reshape(y.shape), G.reshape(x.shape)
    if reduction == "sum":
        return rows.sum(), G.reshape(x.shape)
    return (rows.sum() / n if n else np.nan), (G / n if n else 0 * G).reshape(x.shape)


def value_ulps(got, exact, dtype):
    """Largest error of a value in units of eps(dtype) relative to |exact| (0 for equal non-finites)."""
    got = np.asarray(got, np.float64)
    exact = np.asarray(exact, np.float64)
    same = (np.isnan(got) & np.isnan(exact)) | (np.isinf(exact) & (got == exact))
    if np.any(~same & ~(np.isfinite(got) & np.isfinite(exact))):
        return np.inf
    fin = np.isfinite(exact)
    if not fin.any():
        return 0.0
    eps = np.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    return float(np.max(np.abs(got[fin] - exact[fin]) / (eps * np.maximum(np.abs(exact[fin]),
                                                                           tiny))))


def grad_units(got, exact, x, y, dtype, *, label_smoothing=0.0, smoothing="uniform", z_loss=0.0,
               ignore_index=None, reduction="mean"):
    """Largest gradient error per element, relative to its operands (eps units; :func:`f64_operands`)."""
    got = np.asarray(got, np.float64)
    exact = np.asarray(exact, np.float64)
    if np.any(np.isfinite(exact) != np.isfinite(got)):
        return np.inf
    ops = np.abs(f64_operands(x, y, label_smoothing, smoothing, z_loss, ignore_index, reduction))
    eps = np.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    return float(np.max(np.abs(got - exact) / (eps * np.maximum(ops, tiny)))) if got.size else 0.0


def f64_operands(x, y, eps, smoothing, z, ignore_index, reduction):
    """``|p_k (1 + 2 z lse)| (1 + |x_k - max x|) + q_k``, times the scale: the operands.

    As the verifier's unit for ``p_k S - A_k``: ``exp(x_k - m)`` inherits the
    rounding of ``x_k - m``, a relative error of ``eps |x_k - m|``.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    V = x.shape[-1]
    X, Y = x.reshape(-1, V), y.reshape(-1)
    keep = np.ones(Y.shape, bool) if ignore_index is None else Y != ignore_index
    Yc = np.where(keep, Y, 0)
    lse = logsumexp(X, axis=-1)
    m = np.max(X, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        spread = np.where(np.isfinite(X), 1 + np.abs(X - m), 1)
    P = np.exp(X - lse[:, None]) * np.abs(1 + 2 * z * lse)[:, None] * spread
    Q = np.zeros_like(X)
    for r in range(len(Yc)):
        Q[r] = target_dist(V, int(Yc[r]), eps, smoothing)
    ops = np.where(keep[:, None], P + Q, 0)
    n = int(keep.sum())
    if reduction == "mean" and n:
        ops = ops / n
    return ops.reshape(x.shape)


def extreme_rows(rng, V, dtype, *, n_split=4):
    """Named rows ``(name, x_row)`` with the verifier's extremes, for a vocabulary ``V``.

    ``n_split`` positions the "whole slice -inf" and "maximum in shard k"
    rows for splits into up to that many shards.
    """
    big = 1e4
    under = 110.0 if np.dtype(dtype) == np.float32 else 760.0    # exp(-under) underflows
    rows = []
    rows.append(("normal s=1", rng.normal(size=V)))
    rows.append(("normal s=10", 10 * rng.normal(size=V)))
    r = rng.normal(size=V)
    r[rng.integers(V)] = 40.0 if dtype == np.float32 else 60.0
    rows.append(("confident", r))
    rows.append(("+-1e4", rng.choice([-big, big, 0.0], size=V)))
    rows.append(("all equal", np.full(V, 3.0)))
    r = rng.normal(size=V)
    r[:: max(1, V // 3)] = -np.inf
    r[1] = 0.5
    rows.append(("-inf masked", r))
    w = -(-V // n_split)                         # the first shard's width under array_split
    r = rng.normal(size=V)
    r[w: 2 * w] = -np.inf                        # a whole slice of one shard is -inf
    rows.append(("slice -inf", r))
    r = np.zeros(V)
    r[0] = r[-1] = 5.0                           # tied maxima at both ends (different shards)
    rows.append(("tied max", r))
    for k in range(min(n_split, V)):
        r = rng.normal(size=V)
        r[min(V - 1, k * w + (w - 1 if k % 2 else 0))] = 8.0    # the maximum inside shard k
        rows.append((f"max in shard {k}", r))
    r = rng.normal(size=V)
    r[0] = under                                  # the others' exp underflow
    rows.append(("exp underflow", r))
    return [(n, np.asarray(v, dtype)) for n, v in rows]
