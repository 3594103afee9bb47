r"""Loops over one contiguous row (or chunk of a row) shared by the softmax kernels.

Each function is a small numba function on 1-D C-contiguous arrays; LLVM
inlines them into the kernels and vectorises each loop.  Conventions:

* Sums accumulate in float64.  They are the only functions compiled with
  ``fastmath={"reassoc"}`` (so the loop vectoriser may split the sum into
  vector lanes); no other fast-math flag is set anywhere, and no other function
  may be reassociated.  The lane split is fixed by the compiled code and the
  length of the row, so a row's sum never depends on the thread that computes
  it, nor on where the row sits in memory.
* ``e'`` ("exp with the maxima marked") is ``exp(y - m)`` where ``y < m`` and
  ``-1`` where ``y == m``: ``t = sum_{c != a} exp(y_c - m)`` (``a`` the first
  arg-max) is then ``sum max(e', 0) + (#maxima - 1)`` with no subtraction of 1
  from a sum (a confident row keeps ``t`` far below machine epsilon), and
  ``exp(y - m) = |e'|`` everywhere.
* Loops that read and write the same row take one array (``*_1`` variants):
  given two arguments that are the same memory, LLVM's run-time alias check
  would send the loop to its scalar version.
"""

from __future__ import annotations

import numpy as np

from ._jit import helper
from ._math import as_dtype_of, exp_nonpos, fma, fmaximum, softcap


@helper
def row_max(y):
    """``max(y)``, NaN if any element is NaN (``-inf`` for an empty row)."""
    m = as_dtype_of(y, -np.inf)
    for i in range(y.size):
        m = fmaximum(m, y[i])
    return m


@helper
def cap_row(x, s, Y, S):
    """``Y = s tanh(x / s)`` (``-inf`` stays ``-inf``: a masked class), ``S = sech^2(x / s)``.

    Returns ``(max Y, max x)`` (the second catches NaN and ``+inf``, which the cap
    would map to ``s``).
    """
    ninf = as_dtype_of(x, -np.inf)
    inv_s = as_dtype_of(x, 1.0) / s
    my = ninf
    mx = ninf
    for i in range(x.size):
        v = x[i]
        yv, s2 = softcap(v, s, inv_s)
        Y[i] = yv
        S[i] = s2
        my = fmaximum(my, yv)
        mx = fmaximum(mx, v)
    return my, mx


@helper
def cap_row_y(x, s, Y):
    """``Y = s tanh(x / s)`` only; returns ``(max Y, max x)``."""
    ninf = as_dtype_of(x, -np.inf)
    inv_s = as_dtype_of(x, 1.0) / s
    my = ninf
    mx = ninf
    for i in range(x.size):
        v = x[i]
        yv, s2 = softcap(v, s, inv_s)
        Y[i] = yv
        my = fmaximum(my, yv)
        mx = fmaximum(mx, v)
    return my, mx


@helper
def exp_marked_2(y, m, out):
    """``out = e'`` of ``y`` (distinct arrays)."""
    mone = as_dtype_of(y, -1.0)
    zero = as_dtype_of(y, 0.0)
    for i in range(y.size):
        d = y[i] - m
        e = exp_nonpos(d)
        out[i] = e if d < zero else mone


@helper
def exp_marked_1(buf, m):
    """``buf = e'`` of ``buf`` (in place)."""
    mone = as_dtype_of(buf, -1.0)
    zero = as_dtype_of(buf, 0.0)
    for i in range(buf.size):
        d = buf[i] - m
        e = exp_nonpos(d)
        buf[i] = e if d < zero else mone


@helper
def exp_plain_2(y, m, out):
    """``out = exp(y - m)`` (distinct arrays; ``y <= m``)."""
    for i in range(y.size):
        out[i] = exp_nonpos(y[i] - m)


@helper
def exp_plain_1(buf, m):
    for i in range(buf.size):
        buf[i] = exp_nonpos(buf[i] - m)


@helper
def weight_sum(w, C):
    """``sum_c w_c`` in float64 to about one rounding (``C`` without weights).

    Neumaier's compensated sum (not reassociated: the compensation is exact only in
    program order).  A plain running sum of ``C`` weights drifts by about
    ``sqrt(C)`` roundings, and ``W`` scales every entry of a smoothed row's
    gradient: at ``C = 1000`` that was a 10-eps bias of the whole row in float64.
    """
    if w.shape[0] == 0:
        return float(C)
    s = 0.0
    comp = 0.0
    for c in range(w.shape[0]):
        v = np.float64(w[c])
        t = s + v
        if abs(s) >= abs(v):
            comp += (s - t) + v
        else:
            comp += (v - t) + s
        s = t
    return s + comp


@helper(fastmath={"reassoc"})
def sum_marked(e):
    """``(sum max(e', 0), number of negative entries)`` (float64, int64)."""
    t = 0.0
    c = 0
    for i in range(e.size):
        v = np.float64(e[i])
        t += v if v > 0.0 else 0.0
        c += v < 0.0
    return t, c


@helper(fastmath={"reassoc"})
def sum_gap(y, m):
    """``sum_c (m - y_c)`` in float64 (``inf`` if some ``y_c = -inf``)."""
    s = 0.0
    md = np.float64(m)
    for i in range(y.size):
        s += md - np.float64(y[i])
    return s


@helper(fastmath={"reassoc"})
def sum_w_gap(y, m, w):
    """``(sum_{w_c != 0} w_c (m - y_c), sum_c w_c)`` in float64 (0 * inf = 0)."""
    s = 0.0
    W = 0.0
    md = np.float64(m)
    for i in range(y.size):
        wi = np.float64(w[i])
        g = wi * (md - np.float64(y[i]))
        s += g if wi != 0.0 else 0.0
        W += wi
    return s, W


@helper(fastmath={"reassoc"})
def sum_prob(y, m, q, a1, a0):
    """Probability targets without weights: ``A_c = q_c a1 + a0`` (smoothing).

    Returns ``(sum A, sum_{A_c != 0} A_c (m - y_c), #(q outside [0, 1] or NaN))``.
    """
    sA = 0.0
    sAd = 0.0
    nbad = 0
    md = np.float64(m)
    zero = as_dtype_of(q, 0.0)
    one = as_dtype_of(q, 1.0)
    for i in range(y.size):
        qi = q[i]
        A = qi * a1 + a0
        Ad = np.float64(A)
        g = Ad * (md - np.float64(y[i]))
        sAd += g if Ad != 0.0 else 0.0
        sA += Ad
        nbad += not ((qi >= zero) & (qi <= one))
    return sA, sAd, nbad


@helper(fastmath={"reassoc"})
def sum_prob_w(y, m, q, w, a1, a0):
    """As :func:`sum_prob` with ``A_c = (q_c a1 + a0) w_c``."""
    sA = 0.0
    sAd = 0.0
    nbad = 0
    md = np.float64(m)
    zero = as_dtype_of(q, 0.0)
    one = as_dtype_of(q, 1.0)
    for i in range(y.size):
        qi = q[i]
        A = (qi * a1 + a0) * w[i]
        Ad = np.float64(A)
        g = Ad * (md - np.float64(y[i]))
        sAd += g if Ad != 0.0 else 0.0
        sA += Ad
        nbad += not ((qi >= zero) & (qi <= one))
    return sA, sAd, nbad


# ----------------------------------------------------------------------------- gradient rows
# g = |e'| K - b_c, then (soft-cap) times S_c in a second in-cache pass.  b_c is 0, a
# constant cw (smoothing without weights), cw w_c (smoothing with weights) or sc A_c
# (probability targets).  One fma: |e'| K - b_c is rounded once.

@helper
def grad_k(buf, K):
    for i in range(buf.size):
        buf[i] = abs(buf[i]) * K


@helper
def grad_kc(buf, K, cw):
    for i in range(buf.size):
        buf[i] = fma(abs(buf[i]), K, -cw)


@helper
def grad_kw(buf, K, cw, w):
    for i in range(buf.size):
        buf[i] = fma(abs(buf[i]), K, -(cw * w[i]))


@helper
def grad_prob(buf, K, sc, q, a1, a0):
    for i in range(buf.size):
        A = q[i] * a1 + a0
        buf[i] = fma(abs(buf[i]), K, -(sc * A))


@helper
def grad_prob_w(buf, K, sc, q, w, a1, a0):
    for i in range(buf.size):
        A = (q[i] * a1 + a0) * w[i]
        buf[i] = fma(abs(buf[i]), K, -(sc * A))


@helper
def mul_rows(buf, S):
    for i in range(buf.size):
        buf[i] = buf[i] * S[i]


@helper
def grad_row(buf, K, cw, sc, w, q, a1, a0, S, mode, has_w, cap):
    """Gradient loop of ``mode`` (0 index, 1 index + smoothing, 2 probs), then ``* S``."""
    if mode == 0:
        grad_k(buf, K)
    elif mode == 1:
        if has_w:
            grad_kw(buf, K, cw, w)
        else:
            grad_kc(buf, K, cw)
    else:
        if has_w:
            grad_prob_w(buf, K, sc, q, w, a1, a0)
        else:
            grad_prob(buf, K, sc, q, a1, a0)
    if cap:
        mul_rows(buf, S)


@helper
def fill(buf, v):
    for i in range(buf.size):
        buf[i] = v
