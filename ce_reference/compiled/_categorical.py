r"""Compiled categorical cross-entropy on probabilities (index or probability targets).

With ``pc = clip(p, lo, hi)`` (no clip: ``pc = p``) and ``A_c = w_c q_c`` (probability
targets) or ``A = w_y`` at the target class only (index targets)::

    loss_n = -sum_c A_c log pc_c              (0 log 0 = 0; 0 where A_c = 0)
    grad   = (-(A_c scale)) / pc_c            (0 where the numerator is 0)
             times [lo <= p <= hi] when clipping

the formulas of ``categorical._cce`` in the same order of operations.  Index
targets write the zero rows and one entry per row.

Layouts: (N, C) with the class axis last (``cce_rows``: blocks of whole rows), or
(pre, C, post) (``cce_cols``: blocks of columns of one slab, every loop over the
contiguous last axis).  Error bits per block: ``BAD_P`` (a probability outside
[0, 1] or NaN), ``BAD_TARGET`` (an index outside [0, C)), ``BAD_Q`` (a target
probability outside [0, 1] or NaN).  A flagged block writes nothing into ``out``.
"""

from __future__ import annotations

import numpy as np

from ._binary import _check_unit, _sum64
from ._jit import helper, kernel
from ._math import as_dtype_of, log_pos

BAD_P = 1
BAD_TARGET = 2
BAD_Q = 4


@helper
def _fill0(a):
    z = as_dtype_of(a, 0.0)
    for i in range(a.size):
        a[i] = z


@helper
def _index_entry(py, wy, lo_c, hi_c, clip, scale):
    """(row loss, gradient entry) of an index target with probability ``py``."""
    zero = as_dtype_of(lo_c, 0.0)
    pc = min(max(py, lo_c), hi_c) if clip else py
    loss = -(wy * log_pos(pc)) if wy != zero else zero
    num = -wy * scale
    g = num / pc if num != zero else zero
    if clip and not ((py >= lo_c) & (py <= hi_c)):
        g = zero
    return np.float64(loss), g


@helper
def _prob_row(p, q, w, g, terms, lo_c, hi_c, clip, scale, has_w):
    """One row, probability targets, distinct arrays; returns the number of bad ``q``."""
    zero = as_dtype_of(p, 0.0)
    one = as_dtype_of(p, 1.0)
    nq = 0
    for i in range(p.size):
        pv = p[i]
        qv = q[i]
        nq += not ((qv >= zero) & (qv <= one))
        A = qv * w[i] if has_w else qv
        pc = min(max(pv, lo_c), hi_c) if clip else pv
        terms[i] = A * log_pos(pc) if A != zero else zero
        num = -A * scale
        gi = num / pc if num != zero else zero
        if clip:
            gi = gi if ((pv >= lo_c) & (pv <= hi_c)) else zero
        g[i] = gi
    return nq


@helper
def _prob_row_1(g, q, w, terms, lo_c, hi_c, clip, scale, has_w):
    """As :func:`_prob_row`, in place (``g`` holds the probabilities)."""
    zero = as_dtype_of(g, 0.0)
    one = as_dtype_of(g, 1.0)
    nq = 0
    for i in range(g.size):
        pv = g[i]
        qv = q[i]
        nq += not ((qv >= zero) & (qv <= one))
        A = qv * w[i] if has_w else qv
        pc = min(max(pv, lo_c), hi_c) if clip else pv
        terms[i] = A * log_pos(pc) if A != zero else zero
        num = -A * scale
        gi = num / pc if num != zero else zero
        if clip:
            gi = gi if ((pv >= lo_c) & (pv <= hi_c)) else zero
        g[i] = gi
    return nq


@kernel
def cce_rows(p, out, inplace, tgt, q, prob, w, clip, lo_c, hi_c, scale, rows, R, b0, b1):
    """Blocks ``[b0, b1)`` of ``R`` rows of ``p`` (N, C), class axis last.

    p, out: (N, C) float32/float64 (``out`` may be ``p``: ``inplace``); tgt: (N,) int64
    (index targets) or any; q: (N, C) target probabilities (``prob``) or (0, 0); w: (C,)
    class weights or (0,); clip, lo_c, hi_c: the ``eps`` clip (bool, float64 bounds in
    the input dtype); scale: float64 gradient factor; rows: (N,) float64 per-row
    losses.  Returns the OR of the error bits.
    """
    N, C = p.shape
    has_w = w.shape[0] > 0
    loT = as_dtype_of(p, lo_c)
    hiT = as_dtype_of(p, hi_c)
    scT = as_dtype_of(p, scale)
    terms = np.empty(C if prob else 0, p.dtype)
    allbad = 0
    for b in range(b0, b1):
        r0 = b * R
        r1 = min(N, r0 + R)
        bad = 0
        for r in range(r0, r1):
            if _check_unit(p[r]):
                bad |= BAD_P
            if not prob:
                y = tgt[r]
                if y < 0 or y >= C:
                    bad |= BAD_TARGET
        if prob and bad == 0:
            for r in range(r0, r1):
                if _check_unit(q[r]):
                    bad |= BAD_Q
        if bad:
            allbad |= bad
            for r in range(r0, r1):
                rows[r] = np.nan
            continue
        for r in range(r0, r1):
            if prob:
                if inplace:
                    _prob_row_1(out[r], q[r], w, terms, loT, hiT, clip, scT, has_w)
                else:
                    _prob_row(p[r], q[r], w, out[r], terms, loT, hiT, clip, scT, has_w)
                rows[r] = -_sum64(terms)
            else:
                y = tgt[r]
                py = p[r, y]
                wy = w[y] if has_w else as_dtype_of(p, 1.0)
                loss, g = _index_entry(py, wy, loT, hiT, clip, scT)
                _fill0(out[r])
                out[r, y] = g
                rows[r] = loss
    return allbad


@kernel
def cce_cols(p3, out3, inplace, tgt, q3, prob, w, clip, lo_c, hi_c, scale, rows, Bc, b0, b1):
    """Blocks ``[b0, b1)`` of the (pre, C, post) layout (``Bc`` columns of one slab).

    Arguments as :func:`cce_rows` with (pre, C, post) arrays; problem row of
    (p, j) is ``p post + j``.
    """
    pre, C, post = p3.shape
    nq = (post + Bc - 1) // Bc
    has_w = w.shape[0] > 0
    loT = as_dtype_of(p3, lo_c)
    hiT = as_dtype_of(p3, hi_c)
    scT = as_dtype_of(p3, scale)
    zero = as_dtype_of(p3, 0.0)
    one = as_dtype_of(p3, 1.0)
    Bs = min(Bc, post)
    acc = np.empty(Bs)
    allbad = 0
    for b in range(b0, b1):
        pp = b // nq
        j0 = (b % nq) * Bc
        j1 = min(post, j0 + Bc)
        B = j1 - j0
        rb = pp * post + j0
        nbp = 0
        nbq = 0
        for c in range(C):
            for jj in range(B):
                v = p3[pp, c, j0 + jj]
                nbp += not ((v >= zero) & (v <= one))
            if prob:
                for jj in range(B):
                    v = q3[pp, c, j0 + jj]
                    nbq += not ((v >= zero) & (v <= one))
        bad = (BAD_P if nbp else 0) | (BAD_Q if nbq else 0)
        if not prob:
            for jj in range(B):
                y = tgt[rb + jj]
                if y < 0 or y >= C:
                    bad |= BAD_TARGET
        if bad:
            allbad |= bad
            for r in range(rb, rb + B):
                rows[r] = np.nan
            continue
        if prob:
            for jj in range(B):
                acc[jj] = 0.0
            for c in range(C):
                wc = w[c] if has_w else one
                for jj in range(B):
                    pv = out3[pp, c, j0 + jj] if inplace else p3[pp, c, j0 + jj]
                    qv = q3[pp, c, j0 + jj]
                    A = qv * wc if has_w else qv
                    pc = min(max(pv, loT), hiT) if clip else pv
                    acc[jj] += np.float64(A * log_pos(pc) if A != zero else zero)
                    num = -A * scT
                    gi = num / pc if num != zero else zero
                    if clip:
                        gi = gi if ((pv >= loT) & (pv <= hiT)) else zero
                    out3[pp, c, j0 + jj] = gi
            for jj in range(B):
                rows[rb + jj] = -acc[jj]
        else:
            for jj in range(B):
                y = tgt[rb + jj]
                py = p3[pp, y, j0 + jj]
                wy = w[y] if has_w else one
                loss, g = _index_entry(py, wy, loT, hiT, clip, scT)
                rows[rb + jj] = loss
                acc[jj] = np.float64(g)
            for c in range(C):
                for jj in range(B):
                    out3[pp, c, j0 + jj] = zero
            for jj in range(B):
                out3[pp, tgt[rb + jj], j0 + jj] = as_dtype_of(p3, acc[jj])
    return allbad
