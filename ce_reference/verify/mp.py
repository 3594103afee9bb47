r"""The high-precision oracle: every loss and gradient in mpmath, written without cancellation.

The formulas are the *definitions* (not the NumPy code), evaluated at the
exact values of the (float32 or float64) inputs with ``mpmath`` at
:data:`~.tolerances.MP_DPS` digits, and rearranged so that no result is a
difference of two nearly equal rounded quantities:

* ``softplus(x) = log1p(exp(x))`` and ``sigma(-x) = 1 / (1 + exp(x))``; the
  BCE-with-logits gradient ``b sigma(x) - a sigma(-x)`` never forms
  ``sigma(x) - 1`` (at 50 digits ``1/(1 + e^-700) - 1`` is 0, not -9.86e-305);
* ``logsumexp(x) - x_c = (m - x_c) + log1p(sum_{j != a} exp(x_j - m))``
  (``a`` the arg-max): two non-negative terms, and the log of ``1 + e^-745``
  is not rounded to 0;
* the softmax gradient ``p_k S - A_k`` (``S = sum_j A_j``) is computed as
  ``p_k sum_{j != k} A_j - A_k sum_{j != k} p_j``, with both leave-one-out
  sums formed from prefix and suffix sums of non-negative terms (so
  ``p_k - 1 = -sum_{j != k} p_j`` even when ``p_k`` rounds to 1);
* ``log(1 - p) = log1p(-p)`` and ``(1-y)/(1-p) - y/p = (p - y) / (p (1-p))``
  with ``p - y`` exact.

An oracle can be wrong, so inputs beyond :data:`~.tolerances.MP_EXTREME_LOGIT`
(or probabilities within 1e-12 of 0 or 1) are evaluated a second time at
:data:`~.tolerances.MP_DPS_EXTREME` digits; a result whose two evaluations
round to float64 values more than 1 ULP apart (and more than the smallest
normal number) is reported as an oracle disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import tolerances as T


@dataclass
class MpResult:
    value: np.ndarray        # float64 (scalar array for mean/sum)
    grad: np.ndarray         # float64, shape of x
    disagreement: str | None  # None, or which quantity differed between precisions


def oracle(case) -> MpResult | None:
    """mpmath value and gradient of ``case`` (None when the case is too large)."""
    if case.x.size > T.MP_MAX_ELEMENTS:
        return None
    extreme = _is_extreme(case)
    first = _evaluate(case, T.MP_DPS)
    if not extreme:
        return first
    second = _evaluate(case, T.MP_DPS_EXTREME)
    note = None
    for name in ("value", "grad"):
        a, b = np.asarray(getattr(first, name)), np.asarray(getattr(second, name))
        diff = np.abs(a - b)
        if np.any((diff > np.spacing(np.abs(b))) & (diff >= T.ABS_FLOOR * np.finfo(np.float64).tiny)):
            note = f"{name} changed between {T.MP_DPS} and {T.MP_DPS_EXTREME} digits"
    second.disagreement = note
    return second


def _is_extreme(case) -> bool:
    x = case.x.astype(np.float64)
    if case.loss in ("binary_cross_entropy_with_logits", "softmax_cross_entropy"):
        return bool(x.size and np.max(np.abs(x)) > T.MP_EXTREME_LOGIT)
    return bool(x.size and np.min(np.minimum(x, 1 - x)) < T.MP_EXTREME_PROB)


def _evaluate(case, dps: int) -> MpResult:
    import mpmath

    with mpmath.workdps(dps):
        losses, grads, denom, shape_info = _KERNELS[case.loss](mpmath.mp, case)
        if case.loss.startswith("binary"):
            return _finish_elementwise(mpmath.mp, case, losses, grads)
        return _finish_rows(mpmath.mp, case, *shape_info, losses, grads, denom)


def exact_parts(case, dps: int = T.MP_DPS):
    """``(per-row losses, per-row gradients)`` as mpf lists, unreduced (for tests).

    ``case.x`` may be an object array of mpf numbers (e.g. to differentiate the
    oracle's own loss with ``mpmath.diff``).
    """
    import mpmath

    with mpmath.workdps(dps):
        losses, grads, _, _ = _KERNELS[case.loss](mpmath.mp, case)
    return losses, grads


def _values(a):
    """Float64 copy of an array, or the array itself when it already holds mpf objects."""
    a = np.asarray(a)
    return a if a.dtype == object else a.astype(np.float64)


def _f64(a):
    return np.array([float(v) for v in a], dtype=np.float64)


def _reduce(mp, rows, reduction, denom, batch_shape):
    """Reduce exact per-row losses; returns (float64 value, exact scale s)."""
    if reduction == "none":
        return _f64(rows).reshape(batch_shape), mp.mpf(1)
    total = mp.fsum(rows)
    if reduction == "sum":
        return np.array(float(total)), mp.mpf(1)
    s = 1 / mp.mpf(denom)
    return np.array(float(total * s)), s


def _bcast(case, name, dtype=np.float64):
    v = case.kwargs.get(name)
    if v is None:
        return None
    return np.broadcast_to(np.asarray(v, dtype=dtype), case.x.shape).reshape(-1)


# --------------------------------------------------------------------------- binary

def _bce_logits(mp, case):
    x = _values(case.x).reshape(-1)
    y = np.broadcast_to(case.targets.astype(np.float64), case.x.shape).reshape(-1)
    w = _bcast(case, "weight")
    pw = _bcast(case, "pos_weight")
    losses, grads = [], []
    for i in range(x.size):
        xi, yi = mp.mpf(x[i]), mp.mpf(y[i])
        a = yi if pw is None else mp.mpf(pw[i]) * yi       # coefficient of softplus(-x)
        b = 1 - yi                                          # coefficient of softplus(x)
        ex, emx = mp.exp(xi), mp.exp(-xi)
        loss = a * mp.log1p(emx) + b * mp.log1p(ex)
        grad = b / (1 + emx) - a / (1 + ex)                 # b sigma(x) - a sigma(-x)
        if w is not None:
            loss, grad = loss * mp.mpf(w[i]), grad * mp.mpf(w[i])
        losses.append(loss)
        grads.append(grad)
    return losses, grads, None, None


def _bce_probs(mp, case):
    p = _values(case.x).reshape(-1)
    y = np.broadcast_to(case.targets.astype(np.float64), case.x.shape).reshape(-1)
    w = _bcast(case, "weight")
    bounds = case.clip_bounds
    losses, grads = [], []
    for i in range(p.size):
        pi, yi = p[i], mp.mpf(y[i])
        inside = True
        if bounds is not None:
            inside = bounds[0] <= pi <= bounds[1]            # derivative of the clip (ends included)
            pi = min(max(pi, bounds[0]), bounds[1])
        pm = mp.mpf(pi)
        loss = 0
        if yi != 0:
            loss -= yi * mp.log(pm)
        if yi != 1:
            loss -= (1 - yi) * mp.log1p(-pm)
        # (1-y)/(1-p) - y/p = (p - y) / (p (1 - p)), p - y exact at this precision
        grad = (pm - yi) / (pm * (1 - pm)) if inside else mp.mpf(0)
        if w is not None:
            loss, grad = loss * mp.mpf(w[i]), grad * mp.mpf(w[i])
        losses.append(loss)
        grads.append(grad)
    return losses, grads, None, None


def _finish_elementwise(mp, case, losses, grads):
    value, s = _reduce(mp, losses, case.kwargs["reduction"], len(losses), case.x.shape)
    grad = _f64([g * s for g in grads]).reshape(case.x.shape)
    return MpResult(value, grad, None)


# --------------------------------------------------------------------------- categorical

def _rows(case):
    """(x rows (R, C) float64, class axis, batch shape)."""
    ax = case.kwargs.get("axis", -1) % case.x.ndim
    xm = np.moveaxis(_values(case.x), ax, -1)
    return xm.reshape(-1, xm.shape[-1]), ax, xm.shape[:-1]


def _target_rows(case, ax, C):
    t = np.asarray(case.targets)
    if t.dtype.kind in "iu":
        return t.reshape(-1).astype(np.int64), None
    return None, np.moveaxis(t.astype(np.float64), ax, -1).reshape(-1, C)


def _finish_rows(mp, case, ax, batch, losses, grads, denom):
    value, s = _reduce(mp, losses, case.kwargs["reduction"], denom, batch)
    C = len(grads[0]) if grads else case.x.shape[ax]
    g = _f64([gk * s for row in grads for gk in row]).reshape(batch + (C,))
    return MpResult(value, np.moveaxis(g, -1, ax), None)


def _cce(mp, case):
    X, ax, batch = _rows(case)
    R, C = X.shape
    idx, Q = _target_rows(case, ax, C)
    w = case.kwargs.get("weight")
    w = None if w is None else np.asarray(w, np.float64)
    bounds = case.clip_bounds
    losses, grads = [], []
    denom = mp.mpf(0) if idx is not None else R
    for r in range(R):
        coeff = [mp.mpf(0)] * C                              # w_c q_c
        if idx is not None:
            coeff[idx[r]] = mp.mpf(1 if w is None else w[idx[r]])
            denom += coeff[idx[r]]
        else:
            coeff = [mp.mpf(Q[r, c]) * (1 if w is None else mp.mpf(w[c])) for c in range(C)]
        loss, grow = mp.mpf(0), []
        for c in range(C):
            pc, inside = X[r, c], True
            if bounds is not None:
                inside = bounds[0] <= pc <= bounds[1]
                pc = min(max(pc, bounds[0]), bounds[1])
            if coeff[c] != 0:
                loss -= coeff[c] * mp.log(mp.mpf(pc))
                grow.append(-coeff[c] / mp.mpf(pc) if inside else mp.mpf(0))
            else:
                grow.append(mp.mpf(0))
        losses.append(loss)
        grads.append(grow)
    return losses, grads, denom, (ax, batch)


def _softmax(mp, case):
    X, ax, batch = _rows(case)
    R, C = X.shape
    idx, Q = _target_rows(case, ax, C)
    w = case.kwargs.get("weight")
    w = None if w is None else np.asarray(w, np.float64)
    ls = mp.mpf(case.kwargs.get("label_smoothing", 0.0))
    ignore = case.kwargs.get("ignore_index")
    wc = [mp.mpf(1) if w is None else mp.mpf(w[c]) for c in range(C)]
    losses, grads = [], []
    denom = mp.mpf(0) if idx is not None else R
    for r in range(R):
        # A_c = w_c q'_c with q' = (1 - ls) q + ls / C (index targets: q one-hot, and the
        # true-class term carries w_y, the uniform one each w_c; as PyTorch).
        if idx is not None:
            if ignore is not None and idx[r] == ignore:
                losses.append(mp.mpf(0))
                grads.append([mp.mpf(0)] * C)
                continue
            A = [wc[c] * ls / C for c in range(C)]
            A[idx[r]] += (1 - ls) * wc[idx[r]]
            denom += wc[idx[r]]
        else:
            A = [wc[c] * ((1 - ls) * mp.mpf(Q[r, c]) + ls / C) for c in range(C)]
        xr = [mp.mpf(v) for v in X[r]]
        m = max(xr)
        a = xr.index(m)
        e = [mp.exp(v - m) for v in xr]                   # each in (0, 1], e_a = 1
        e_out = _leave_one_out(mp, e)                        # sum_{j != k} e_j, no subtraction
        E = 1 + e_out[a]
        logE = mp.log1p(e_out[a])                            # log(1 + tiny) keeps the tiny
        loss = mp.fsum(A[c] * ((m - xr[c]) + logE) for c in range(C) if A[c] != 0)
        A_out = _leave_one_out(mp, A)
        grow = [(e[k] * A_out[k] - A[k] * e_out[k]) / E for k in range(C)]
        losses.append(loss)
        grads.append(grow)
    return losses, grads, denom, (ax, batch)


def _leave_one_out(mp, terms):
    """``[sum_{j != k} terms_j for k]`` from prefix and suffix sums (no cancellation)."""
    n = len(terms)
    prefix = [mp.mpf(0)] * (n + 1)
    for k in range(n):
        prefix[k + 1] = prefix[k] + terms[k]
    suffix = [mp.mpf(0)] * (n + 1)
    for k in range(n - 1, -1, -1):
        suffix[k] = suffix[k + 1] + terms[k]
    return [prefix[k] + suffix[k + 1] for k in range(n)]


_KERNELS = {
    "binary_cross_entropy": _bce_probs,
    "binary_cross_entropy_with_logits": _bce_logits,
    "categorical_cross_entropy": _cce,
    "softmax_cross_entropy": _softmax,
}


# --------------------------------------------------------------------------- second order

def hvp_oracle(case):
    """Exact ``H v`` (float64, x's shape) of ``case`` with ``v = case.v``; None if too large.

    Written without cancellation: the binary and categorical Hessians are
    diagonal sums of non-negative terms; the softmax block
    ``S (diag p - p p^T)`` is applied as ``S p_k sum_j p_j (v_k - v_j)``
    (``sum_j p_j = 1``), where ``v_k - v_j`` is exact at this precision.
    """
    if case.x.size > T.MP_MAX_ELEMENTS:
        return None
    import mpmath

    dps = T.MP_DPS_EXTREME if _is_extreme(case) else T.MP_DPS
    with mpmath.workdps(dps):
        return _HVP[case.loss](mpmath.mp, case)


def _scale_exact(mp, case, denom):
    if case.kwargs["reduction"] != "mean":
        return mp.mpf(1)
    return 1 / mp.mpf(denom) if denom else mp.mpf(0)


def _hvp_bce_logits(mp, case):
    x = _values(case.x).reshape(-1)
    y = np.broadcast_to(case.targets.astype(np.float64), case.x.shape).reshape(-1)
    v = case.v.astype(np.float64).reshape(-1)
    w, pw = _bcast(case, "weight"), _bcast(case, "pos_weight")
    s = _scale_exact(mp, case, x.size)
    out = []
    for i in range(x.size):
        xi, yi = mp.mpf(x[i]), mp.mpf(y[i])
        a = yi if pw is None else mp.mpf(pw[i]) * yi
        curv = 1 / ((1 + mp.exp(xi)) * (1 + mp.exp(-xi)))        # sigma(x) sigma(-x)
        h = (a + 1 - yi) * curv * mp.mpf(v[i]) * s
        out.append(h if w is None else h * mp.mpf(w[i]))
    return _f64(out).reshape(case.x.shape)


def _hvp_bce_probs(mp, case):
    p = _values(case.x).reshape(-1)
    y = np.broadcast_to(case.targets.astype(np.float64), case.x.shape).reshape(-1)
    v = case.v.astype(np.float64).reshape(-1)
    w = _bcast(case, "weight")
    bounds = case.clip_bounds
    s = _scale_exact(mp, case, p.size)
    out = []
    for i in range(p.size):
        pi, yi = p[i], mp.mpf(y[i])
        if bounds is not None and not bounds[0] <= pi <= bounds[1]:
            out.append(mp.mpf(0))
            continue
        pm = mp.mpf(pi)
        curv = (0 if yi == 1 else (1 - yi) / (1 - pm) ** 2) + (0 if yi == 0 else yi / pm ** 2)
        h = curv * mp.mpf(v[i]) * s
        out.append(h if w is None else h * mp.mpf(w[i]))
    return _f64(out).reshape(case.x.shape)


def _hvp_cce(mp, case):
    X, ax, batch = _rows(case)
    R, C = X.shape
    idx, Q = _target_rows(case, ax, C)
    V = np.moveaxis(case.v.astype(np.float64), ax, -1).reshape(R, C)
    w = case.kwargs.get("weight")
    w = None if w is None else np.asarray(w, np.float64)
    bounds = case.clip_bounds
    rows, denom = [], (mp.mpf(0) if idx is not None else R)
    for r in range(R):
        if idx is not None:
            coeff = [mp.mpf(0)] * C
            coeff[idx[r]] = mp.mpf(1 if w is None else w[idx[r]])
            denom += coeff[idx[r]]
        else:
            coeff = [mp.mpf(Q[r, c]) * (1 if w is None else mp.mpf(w[c])) for c in range(C)]
        row = []
        for c in range(C):
            pc = X[r, c]
            if coeff[c] == 0 or (bounds is not None and not bounds[0] <= pc <= bounds[1]):
                row.append(mp.mpf(0))
            else:
                row.append(coeff[c] / mp.mpf(pc) ** 2 * mp.mpf(V[r, c]))
        rows.append(row)
    s = _scale_exact(mp, case, denom)
    g = _f64([h * s for row in rows for h in row]).reshape(batch + (C,))
    return np.moveaxis(g, -1, ax)


def _hvp_softmax(mp, case):
    X, ax, batch = _rows(case)
    R, C = X.shape
    idx, Q = _target_rows(case, ax, C)
    V = np.moveaxis(case.v.astype(np.float64), ax, -1).reshape(R, C)
    w = case.kwargs.get("weight")
    w = None if w is None else np.asarray(w, np.float64)
    ls = mp.mpf(case.kwargs.get("label_smoothing", 0.0))
    ignore = case.kwargs.get("ignore_index")
    wc = [mp.mpf(1) if w is None else mp.mpf(w[c]) for c in range(C)]
    rows, denom = [], (mp.mpf(0) if idx is not None else R)
    for r in range(R):
        if idx is not None:
            if ignore is not None and idx[r] == ignore:
                rows.append([mp.mpf(0)] * C)
                continue
            S = (1 - ls) * wc[idx[r]] + ls / C * mp.fsum(wc)
            denom += wc[idx[r]]
        else:
            S = mp.fsum(wc[c] * ((1 - ls) * mp.mpf(Q[r, c]) + ls / C) for c in range(C))
        xr = [mp.mpf(v) for v in X[r]]
        m = max(xr)
        e = [mp.exp(v - m) for v in xr]
        E = mp.fsum(e)
        vr = [mp.mpf(v) for v in V[r]]
        # sum_j p_j (v_k - v_j) = v_k sum_{j!=k} p_j - sum_{j!=k} p_j v_j: both leave-one-out
        # sums scale with 1 - p_k, so a confident row does not cancel (O(C) per row).
        e_out = _leave_one_out(mp, e)
        ev_out = _leave_one_out(mp, [e[j] * vr[j] for j in range(C)])
        rows.append([S * e[k] * (vr[k] * e_out[k] - ev_out[k]) / E ** 2 for k in range(C)])
    s = _scale_exact(mp, case, denom)
    g = _f64([h * s for row in rows for h in row]).reshape(batch + (C,))
    return np.moveaxis(g, -1, ax)


_HVP = {
    "binary_cross_entropy": _hvp_bce_probs,
    "binary_cross_entropy_with_logits": _hvp_bce_logits,
    "categorical_cross_entropy": _hvp_cce,
    "softmax_cross_entropy": _hvp_softmax,
}
