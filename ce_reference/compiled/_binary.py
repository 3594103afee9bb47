r"""Compiled binary cross-entropy kernels (on logits and on probabilities).

Elementwise losses on ``x`` viewed as (R, K) (C-contiguous).  Every other operand
is a C-contiguous 2-D array of shape (R, K) (full), (1, K) (a row broadcast
along the rows, e.g. PyTorch's ``pos_weight``), (R, 1) (one value per row) or
(1, 1) (a scalar); absent operands are (0, 0).  Blocks are either several whole
rows (``K <= BLK``) or one row's column range of ``BLK`` elements; a block's
loss sum (float64) goes to ``partial[b]``, the per-element losses to
``loss_out`` when it is (R, K) (reduction ``"none"``).

BCE on logits, per element, with ``e = e^{-|x|}``, ``w1 = 1 + e``,
``L = log1p(e)`` (``log`` of ``w1`` plus the rounding error of ``1 + e`` divided
by ``w1``), ``h = [x >= 0]``, ``a = pw y``, ``b = 1 - y``::

    loss = w (L + x (h - y))                        without pos_weight (a + b = 1)
    loss = w (a (max(-x, 0) + L) + b (max(x, 0) + L))   with pos_weight
    grad = scale w (b max(e, h) - a max(e, 1 - h)) / w1

all terms non-negative (no cancellation), ``sigma(x) - 1`` never formed; every
product of a coefficient with a possibly infinite term is 0 when the
coefficient is 0 (``x = +-inf`` gives the limits).  These are the formulas of
the NumPy fused kernel (``ce_reference.kernels.bce_logits``).

BCE on probabilities: ``pc = clip(p, lo, hi)``, ``loss = -w [y log pc + (1 - y)
log1p(-pc)]`` (``0 log 0 = 0``), ``grad = scale w [(1 - y) / (1 - pc) - y / pc]``
(each fraction 0 where its numerator is 0) times ``[lo <= p <= hi]``.

Error bits per block: ``BAD_X`` (NaN logits; probabilities outside [0, 1] or
NaN), ``BAD_Y`` (targets outside [0, 1] or NaN), ``BAD_W`` (weight negative or
not finite), ``BAD_PW`` (pos_weight negative or not finite).  Unlike the softmax
kernels, a flagged block may have been written.
"""

from __future__ import annotations

import numpy as np

from ._jit import helper, kernel
from ._math import as_dtype_of, exp_nonpos, log1p, log_plus, log_pos

BAD_X = 1
BAD_Y = 2
BAD_W = 8
BAD_PW = 16


@helper(fastmath={"reassoc"})
def _sum64(a):
    s = 0.0
    for i in range(a.size):
        s += np.float64(a[i])
    return s


@helper
def _seg(op, r, c0, c1, buf, state):
    """Segment ``[c0, c1)`` of row ``r`` of a broadcast operand, as a contiguous array.

    A one-value row is expanded into ``buf``; ``state`` (float64[2]: value, length)
    remembers the last expansion so that a scalar operand is expanded once per call.
    """
    Ro, Ko = op.shape
    row = op[r if Ro > 1 else 0]
    if Ko > 1:
        return row[c0:c1]
    n = c1 - c0
    v = row[0]
    seg = buf[:n]
    if not (state[0] == np.float64(v) and state[1] == n):
        for i in range(n):
            seg[i] = v
        state[0] = np.float64(v)
        state[1] = n
    return seg


@helper
def _check_unit(a):
    nb = 0
    zero = as_dtype_of(a, 0.0)
    one = as_dtype_of(a, 1.0)
    for i in range(a.size):
        v = a[i]
        nb += not ((v >= zero) & (v <= one))
    return nb


@helper
def _check_weight(a):
    nb = 0
    zero = as_dtype_of(a, 0.0)
    big = as_dtype_of(a, np.inf)
    for i in range(a.size):
        v = a[i]
        nb += not ((v >= zero) & (v < big))
    return nb


# ------------------------------------------------------------------------- BCE with logits

@helper
def _logits_seg(x, y, g, lo, scale):
    """No weight, no pos_weight.  Returns the number of NaN logits."""
    zero = as_dtype_of(x, 0.0)
    one = as_dtype_of(x, 1.0)
    nnan = 0
    for i in range(x.size):
        v = x[i]
        yi = y[i]
        e = exp_nonpos(-abs(v))
        w1 = one + e
        L = log_plus(w1, (e - (w1 - one)) / w1)
        h = one if v >= zero else zero
        hy = h - yi
        xr = v * hy
        lo[i] = L + (xr if hy != zero else zero)
        P = max(e, h)
        Q = max(e, one - h)
        g[i] = (((one - yi) * P - yi * Q) / w1) * scale
        nnan += v != v
    return nnan


@helper
def _logits_seg_w(x, y, w, g, lo, scale):
    zero = as_dtype_of(x, 0.0)
    one = as_dtype_of(x, 1.0)
    nnan = 0
    for i in range(x.size):
        v = x[i]
        yi = y[i]
        wi = w[i]
        e = exp_nonpos(-abs(v))
        w1 = one + e
        L = log_plus(w1, (e - (w1 - one)) / w1)
        h = one if v >= zero else zero
        hy = h - yi
        xr = v * hy
        r = L + (xr if hy != zero else zero)
        lo[i] = wi * r if wi != zero else zero
        P = max(e, h)
        Q = max(e, one - h)
        g[i] = (wi * (((one - yi) * P - yi * Q) / w1)) * scale
        nnan += v != v
    return nnan


@helper
def _logits_seg_pw(x, y, w, pw, g, lo, scale, has_w):
    zero = as_dtype_of(x, 0.0)
    one = as_dtype_of(x, 1.0)
    nnan = 0
    for i in range(x.size):
        v = x[i]
        yi = y[i]
        e = exp_nonpos(-abs(v))
        w1 = one + e
        L = log_plus(w1, (e - (w1 - one)) / w1)
        h = one if v >= zero else zero
        a = pw[i] * yi
        b = one - yi
        spp = max(v, zero) + L                         # softplus(x)
        spn = max(-v, zero) + L                        # softplus(-x)
        r = (a * spn if a != zero else zero) + (b * spp if b != zero else zero)
        P = max(e, h)
        Q = max(e, one - h)
        gi = (b * P - a * Q) / w1
        if has_w:
            wi = w[i]
            r = wi * r if wi != zero else zero
            gi = wi * gi
        lo[i] = r
        g[i] = gi * scale
        nnan += v != v
    return nnan


@kernel
def bce_logits(x, y, w, pw, out, loss_out, scale, partial, BLK, b0, b1):
    """Blocks ``[b0, b1)`` of BCE with logits; see the module docstring.

    x, out: (R, K); y: target operand (required); w, pw: operands or (0, 0);
    loss_out: (R, K) for per-element losses, else (0, 0); scale: float64 gradient
    factor; partial: (nblocks,) float64 block loss sums.  Returns the OR of the error bits.
    """
    R, Kc = x.shape
    has_w = w.shape[0] > 0
    has_pw = pw.shape[0] > 0
    write_loss = loss_out.shape[0] > 0
    scT = as_dtype_of(x, scale)
    n = min(BLK, Kc)
    if Kc >= BLK:
        nck = (Kc + BLK - 1) // BLK
        rpb = 1
    else:
        nck = 1
        rpb = BLK // Kc
    bufy = np.empty(n, x.dtype)
    bufw = np.empty(n if has_w else 0, x.dtype)
    bufp = np.empty(n if has_pw else 0, x.dtype)
    lbuf = np.empty(n, x.dtype)
    allbad = 0
    sty = np.full(2, np.nan)
    stw = np.full(2, np.nan)
    stp = np.full(2, np.nan)
    for b in range(b0, b1):
        if nck > 1:
            r0 = b // nck
            r1 = r0 + 1
            c0 = (b % nck) * BLK
            c1 = min(Kc, c0 + BLK)
        else:
            r0 = b * rpb
            r1 = min(R, r0 + rpb)
            c0 = 0
            c1 = Kc
        tot = 0.0
        bad = 0
        for r in range(r0, r1):
            xs = x[r, c0:c1]
            gs = out[r, c0:c1]
            ls = loss_out[r, c0:c1] if write_loss else lbuf[:c1 - c0]
            ys = _seg(y, r, c0, c1, bufy, sty)
            if _check_unit(ys):
                bad |= BAD_Y
            if has_pw:
                ps = _seg(pw, r, c0, c1, bufp, stp)
                if _check_weight(ps):
                    bad |= BAD_PW
                ws = _seg(w, r, c0, c1, bufw, stw) if has_w else ps
                if has_w and _check_weight(ws):
                    bad |= BAD_W
                nn = _logits_seg_pw(xs, ys, ws, ps, gs, ls, scT, has_w)
            elif has_w:
                ws = _seg(w, r, c0, c1, bufw, stw)
                if _check_weight(ws):
                    bad |= BAD_W
                nn = _logits_seg_w(xs, ys, ws, gs, ls, scT)
            else:
                nn = _logits_seg(xs, ys, gs, ls, scT)
            if nn:
                bad |= BAD_X
            tot += _sum64(ls)
        partial[b] = tot
        allbad |= bad
    return allbad


# ------------------------------------------------------------------------- BCE on probabilities

@helper
def _probs_seg(p, y, w, g, lo, lo_c, hi_c, clip, scale, has_w):
    zero = as_dtype_of(p, 0.0)
    one = as_dtype_of(p, 1.0)
    nb = 0
    for i in range(p.size):
        pv = p[i]
        yi = y[i]
        nb += not ((pv >= zero) & (pv <= one))
        pc = min(max(pv, lo_c), hi_c) if clip else pv
        b = one - yi
        t1 = yi * log_pos(pc) if yi != zero else zero
        t2 = b * log1p(-pc) if b != zero else zero
        r = -(t1 + t2)
        A = yi * scale
        Bc = b * scale
        if has_w:
            wi = w[i]
            r = wi * r if wi != zero else zero
            A = wi * A
            Bc = wi * Bc
        gi = (Bc / (one - pc) if Bc != zero else zero) - (A / pc if A != zero else zero)
        if clip:
            gi = gi if ((pv >= lo_c) & (pv <= hi_c)) else zero
        lo[i] = r
        g[i] = gi
    return nb


@kernel
def bce_probs(p, y, w, out, loss_out, clip, lo_c, hi_c, scale, partial, BLK, b0, b1):
    """Blocks ``[b0, b1)`` of BCE on probabilities; operands as :func:`bce_logits`.

    clip: bool, lo_c / hi_c: float64 clip bounds (``eps`` and ``1 - eps`` as the
    input dtype computes them).
    """
    R, Kc = p.shape
    has_w = w.shape[0] > 0
    write_loss = loss_out.shape[0] > 0
    scT = as_dtype_of(p, scale)
    loT = as_dtype_of(p, lo_c)
    hiT = as_dtype_of(p, hi_c)
    n = min(BLK, Kc)
    if Kc >= BLK:
        nck = (Kc + BLK - 1) // BLK
        rpb = 1
    else:
        nck = 1
        rpb = BLK // Kc
    bufy = np.empty(n, p.dtype)
    bufw = np.empty(n if has_w else 0, p.dtype)
    lbuf = np.empty(n, p.dtype)
    allbad = 0
    sty = np.full(2, np.nan)
    stw = np.full(2, np.nan)
    for b in range(b0, b1):
        if nck > 1:
            r0 = b // nck
            r1 = r0 + 1
            c0 = (b % nck) * BLK
            c1 = min(Kc, c0 + BLK)
        else:
            r0 = b * rpb
            r1 = min(R, r0 + rpb)
            c0 = 0
            c1 = Kc
        tot = 0.0
        bad = 0
        for r in range(r0, r1):
            ps = p[r, c0:c1]
            gs = out[r, c0:c1]
            ls = loss_out[r, c0:c1] if write_loss else lbuf[:c1 - c0]
            ys = _seg(y, r, c0, c1, bufy, sty)
            if _check_unit(ys):
                bad |= BAD_Y
            ws = ys
            if has_w:
                ws = _seg(w, r, c0, c1, bufw, stw)
                if _check_weight(ws):
                    bad |= BAD_W
            if _probs_seg(ps, ys, ws, gs, ls, loT, hiT, clip, scT, has_w):
                bad |= BAD_X
            tot += _sum64(ls)
        partial[b] = tot
        allbad |= bad
    return allbad
