r"""Compiled softmax cross-entropy ``value_and_grad`` kernels (float32 / float64).

Per row ``n`` (class axis ``c``), with the optional soft-cap
``y = s tanh(x / s)`` (``y = x`` without it; ``-inf`` stays ``-inf``):
``m = max_c y``, ``t = sum_{c != a} e^{y_c - m}`` (``a`` the first arg-max),
``s1 = 1 + t``, ``L = log1p(t)``, ``lse = m + L``, ``p_c = e^{y_c - m} / s1``,
``-log p_c = (m - y_c) + L`` (two non-negative terms).

Index targets ``y_n`` (row kept unless ``y_n == ignore_index``), smoothing
``eps``, class weights ``w`` (1 without), ``W = sum w``::

    c_nll = (1 - eps) w_y,  c_sm = eps / C,  total = c_nll + c_sm W
    ce_n  = c_nll ((m - y_y) + L) + c_sm (L W + sum_{w_c != 0} w_c (m - y_c))
    g_c   = scale (p_c total - c_sm w_c - [c = y] c_nll) + zscale 2 z lse p_c

Probability targets ``q`` (every row kept): ``A_c = w_c ((1 - eps) q_c + eps / C)``::

    ce_n  = sum_{A_c != 0} A_c (m - y_c) + L sum_c A_c
    g_c   = scale (p_c sum A - A_c) + zscale 2 z lse p_c

z-loss: ``z_n = z lse^2`` on kept rows.  Soft-cap: every ``g_c`` times
``sech^2(x_c / s)``.  Zero times infinity is 0 in every product of a weight or
target with ``-log p`` (``0 log 0 = 0``).

Numerics.  The per-row scalars (``t``, ``L``, ``lse``, the losses, the row
factor ``K = (scale total + zscale 2 z lse) / s1``, the target entry) are
computed in float64 whatever the input dtype; sums accumulate in float64.  The
gradient is ``g_c = |e'_c| K - b_c`` (one fma) in the input dtype.  The target
entry uses ``p_y - 1 = ((e_y - 1) - t) / s1``, which does not cancel when
``p_y`` is close to 1 (NumPy forms ``p_y - 1`` by subtraction).  So the loss is
accurate to about one rounding of the float64 result, and each gradient entry to
about 2 ULP of the input dtype plus the ULPs of ``exp`` (and of ``sech^2``).

Layouts (each a separate kernel; the caller picks one from the shape):

``softmax_rows``   x of shape (N, C), class axis last, ``C <= ROW_MAX``: blocks of
                   ``R`` whole rows.
``softmax_cols``   x of shape (pre, C, post), class axis in the middle: blocks of
                   ``B`` columns of one ``pre`` slab; every loop runs over the
                   contiguous last axis (SIMD across rows of the problem).
``softmax_chunk_stats`` / ``softmax_chunk_combine`` / ``softmax_chunk_grad``
                   class axis last, ``C > ROW_MAX``: every row is cut into chunks
                   of ``CHUNK`` classes, which are independent tasks: the chunks'
                   ``(m_k, t_k, ...)`` are merged per row with the online-softmax
                   rule, then a second task per chunk recomputes ``e^{y - M}`` and
                   writes the gradient.  One huge row thus spreads over all threads.

Blocks.  Every kernel processes the blocks ``b0 <= b < b1`` of a partition that
depends only on the shape (never on the thread count), writes only the rows of
its blocks, and sets ``flags[b]`` for a block with invalid input:
``BAD_LOGITS`` (NaN, ``+inf``, or a row with no finite logit), ``BAD_TARGET``
(an index outside ``[0, C)`` that is not ``ignore_index``), ``BAD_PROBS`` (a
target probability outside [0, 1] or NaN).  A flagged block writes nothing
into ``out`` (so an in-place call leaves the evidence in place) and NaN into
its per-row losses.
"""

from __future__ import annotations

import numpy as np

from . import _rowops as ro
from ._jit import helper, kernel
from ._math import as_dtype_of, exp_nonpos, fma, fmaximum, log1p, softcap

BAD_LOGITS = 1
BAD_TARGET = 2
BAD_PROBS = 4

# Rows up to this many classes are processed whole (their 3-4 passes hit L2 / L3);
# longer rows are chunked.  A row of 2^18 float32 is 1 MiB.
ROW_MAX = 1 << 18
# Classes per chunk of a long row (a chunk and its scratch stay in L2).
CHUNK = 1 << 15
# Target number of elements per block of the rows / cols layouts.
BLOCK = 1 << 14


@helper
def _row_scalars(mode, m, t, yy, ey, ls, C, W, wy, sw, sA, sAd, z, scale, zscale):
    """Per-row float64 results: ``(ce, zl, K, gy)`` (see the module docstring).

    ``mode`` 0/1: index targets (``yy`` = y at the target, ``ey`` = e' at it,
    ``wy`` its weight, ``sw`` the smoothing gap sum); 2: probabilities.
    """
    s1 = 1.0 + t
    L = log1p(t)
    lse = m + L
    zg = zscale * (2.0 * z * lse)
    if mode == 2:
        ce = sAd + (L * sA if sA != 0.0 else 0.0)
        K = (scale * sA + zg) / s1
        gy = 0.0
    else:
        c_nll = (1.0 - ls) * wy
        c_sm = ls / C
        nll = (m - yy) + L
        ce = c_nll * nll if c_nll != 0.0 else 0.0
        if c_sm != 0.0:
            ce += c_sm * (L * W + sw)
        total = c_nll + c_sm * W
        K = (scale * total + zg) / s1
        py = ey / s1
        pym1 = ((ey - 1.0) - t) / s1           # p_y - 1 without cancellation
        gy = scale * (c_nll * pym1 + c_sm * (W * py - wy)) + zg * py
    zl = z * lse * lse
    return ce, zl, K, gy


# =============================================================================== rows layout

@kernel
def softmax_rows(x, out, inplace, tgt, probs, prob, w, has_ign, ign, keep, ls, z, cap, scale,
                 zscale,
                 rows, zrows, R, b0, b1):
    """Blocks ``[b0, b1)`` of ``R`` rows of ``x`` (N, C), class axis last; returns the OR of
    the error bits of these blocks.

    Arguments (validated by the caller; shapes exact, arrays C-contiguous):

    x        (N, C) float32/float64 logits.
    out      (N, C) same dtype: receives the gradient; may be ``x`` itself.
    inplace  bool: ``out`` is ``x``.
    tgt      (N,) int64 class indices (index targets), else any int64 array.
    probs    (N, C) target probabilities of ``x``'s dtype (``prob``), else any (0, 0).
    prob     bool: probability targets.
    w        (C,) class weights of ``x``'s dtype, or (0,) for none.
    has_ign, ign   bool, int64: rows with ``tgt == ign`` are ignored.
    keep     (N,) bool, or (0,): rows with ``keep == False`` are ignored too (their
             ``tgt`` is not looked at).
    ls, z, cap     float64: label smoothing, z-loss coefficient, soft-cap (0 = none).
    scale, zscale  float64: gradient factor of the CE part / of the z-loss part.
    rows     (N,) float64: per-row CE loss (0 for ignored rows).
    zrows    (N,) float64: per-row z-loss (written only when ``z != 0``).
    R, b0, b1      int64: rows per block, block range.
    """
    N, C = x.shape
    has_w = w.shape[0] > 0
    has_keep = keep.shape[0] > 0
    capped = cap != 0.0
    mode = 2 if prob else (1 if ls != 0.0 else 0)
    capT = as_dtype_of(x, cap)
    scT = as_dtype_of(x, scale)
    a1 = as_dtype_of(x, 1.0 - ls)
    a0 = as_dtype_of(x, ls / C)
    cwT = as_dtype_of(x, scale * (ls / C))
    W = ro.weight_sum(w, C)
    ninf = as_dtype_of(x, -np.inf)
    pinf = as_dtype_of(x, np.inf)
    zero = as_dtype_of(x, 0.0)
    nrs = min(R, N)
    Y = np.empty((nrs if capped else 0, C), x.dtype)
    S = np.empty((nrs if capped else 0, C), x.dtype)
    M = np.empty(nrs, x.dtype)
    st = np.empty(nrs, np.int8)          # 0 kept, 1 ignored
    yi_ = np.empty(nrs, np.int64)
    yy_ = np.empty(nrs)
    sw_ = np.empty(nrs)
    sA_ = np.empty(nrs)
    empty1 = np.empty(0, x.dtype)
    allbad = 0
    for b in range(b0, b1):
        r0 = b * R
        r1 = min(N, r0 + R)
        nr = r1 - r0
        bad = 0
        # ---- pass 1: row maxima (soft-cap into scratch), targets
        for i in range(nr):
            r = r0 + i
            if capped:
                my, mx = ro.cap_row(x[r], capT, Y[i], S[i])
                ok = (mx < pinf) & (my > ninf)               # False for NaN
            else:
                my = ro.row_max(x[r])
                ok = (my < pinf) & (my > ninf)
            M[i] = my
            if not ok:
                bad |= BAD_LOGITS
            st[i] = 0
            if not prob:
                yi = tgt[r]
                yi_[i] = yi
                if (has_ign and yi == ign) or (has_keep and not keep[r]):
                    st[i] = 1
                elif yi < 0 or yi >= C:
                    bad |= BAD_TARGET
        if bad == 0:
            # ---- pass 2 (smoothing / probability targets only): gap sums
            for i in range(nr):
                if st[i]:
                    continue
                r = r0 + i
                ysrc = Y[i] if capped else x[r]
                if mode == 2:
                    if has_w:
                        sA, sAd, nb = ro.sum_prob_w(ysrc, M[i], probs[r], w, a1, a0)
                    else:
                        sA, sAd, nb = ro.sum_prob(ysrc, M[i], probs[r], a1, a0)
                    if nb:
                        bad |= BAD_PROBS
                    sA_[i] = sA
                    sw_[i] = sAd
                elif mode == 1:
                    if has_w:
                        sw_[i] = ro.sum_w_gap(ysrc, M[i], w)[0]
                    else:
                        sw_[i] = ro.sum_gap(ysrc, M[i])
                if mode != 2:
                    yy_[i] = np.float64(ysrc[yi_[i]])
        if bad:
            allbad |= bad
            for r in range(r0, r1):
                rows[r] = np.nan
            continue
        # ---- pass 3: e' into out;  pass 4: t
        for i in range(nr):
            r = r0 + i
            orow = out[r]
            if st[i]:
                ro.fill(orow, zero)
                rows[r] = 0.0
                if z != 0.0:
                    zrows[r] = 0.0
                continue
            if capped:
                ro.exp_marked_2(Y[i], M[i], orow)
            elif inplace:
                ro.exp_marked_1(orow, M[i])
            else:
                ro.exp_marked_2(x[r], M[i], orow)
            ts, cnt = ro.sum_marked(orow)
            t = ts + np.float64(cnt - 1)
            m = np.float64(M[i])
            if mode == 2:
                ce, zl, K, gy = _row_scalars(2, m, t, 0.0, 0.0, ls, C, W, 1.0, 0.0,
                                             sA_[i], sw_[i], z, scale, zscale)
            else:
                yi = yi_[i]
                ey = np.float64(abs(orow[yi]))
                wy = np.float64(w[yi]) if has_w else 1.0
                ce, zl, K, gy = _row_scalars(mode, m, t, yy_[i], ey, ls, C, W, wy, sw_[i],
                                             0.0, 0.0, z, scale, zscale)
            rows[r] = ce
            if z != 0.0:
                zrows[r] = zl
            # ---- pass 5: gradient
            Si = S[i] if capped else empty1
            qr = probs[r] if mode == 2 else empty1
            ro.grad_row(orow, as_dtype_of(x, K), cwT, scT, w, qr, a1, a0, Si, mode, has_w,
                        capped)
            if mode != 2:
                g = as_dtype_of(x, gy)
                if capped:
                    g = g * S[i, yi_[i]]
                orow[yi_[i]] = g
    return allbad


# =============================================================================== cols layout

@helper
def _cols_core(X, O, inplace, Q, p, j0, j1, rbase, tgt, prob, w, has_ign, ign, keep, ls, z, cap,
               scale, zscale, W, rows, zrows, Y, S, V, VT, TI):
    """One block of the (pre, C, post) layout: columns ``j0 <= j < j1`` of slab ``p``.

    ``X``, ``O``, ``Q`` are (pre', C, post') C-contiguous arrays: logits, gradient,
    target probabilities (any shape when unused).  Problem row ``rbase + (j - j0)``
    owns column ``j`` (targets, per-row losses).  ``Y``, ``S``: (C, B) scratch for the
    soft-cap; ``V``: (12, B) float64, ``VT``: (4, B) input-dtype and ``TI``: (B,) int64
    scratch of per-column vectors.  Every loop runs
    over ``j`` (contiguous); sums over classes run in class order per column.
    Returns the block's error bits (nothing is written into ``O`` when non-zero).
    """
    C = X.shape[1]
    B = j1 - j0
    has_w = w.shape[0] > 0
    capped = cap != 0.0
    mode = 2 if prob else (1 if ls != 0.0 else 0)
    capT = as_dtype_of(X, cap)
    invT = as_dtype_of(X, 1.0) / capT if capped else as_dtype_of(X, 0.0)
    a1 = as_dtype_of(X, 1.0 - ls)
    a0 = as_dtype_of(X, ls / C)
    scT = as_dtype_of(X, scale)
    ninf = as_dtype_of(X, -np.inf)
    pinf = as_dtype_of(X, np.inf)
    zero = as_dtype_of(X, 0.0)
    one = as_dtype_of(X, 1.0)
    mone = as_dtype_of(X, -1.0)
    M = V[0]
    T = V[2]
    CNT = V[3]
    SW = V[4]
    SA = V[5]
    KK = V[6]
    GY = V[7]
    CW = V[8]
    YY = V[9]
    EY = V[10]
    KEEP = V[11]
    MT = VT[0]
    KT = VT[1]
    CWT = VT[2]
    MXT = VT[3]
    # ---- pass 1: maxima (NaN-propagating), soft-cap into scratch
    for jj in range(B):
        MT[jj] = ninf
        MXT[jj] = ninf
    for c in range(C):
        if capped:
            for jj in range(B):
                v = X[p, c, j0 + jj]
                yv, s2 = softcap(v, capT, invT)
                Y[c, jj] = yv
                S[c, jj] = s2
                MT[jj] = fmaximum(MT[jj], yv)
                MXT[jj] = fmaximum(MXT[jj], v)
        else:
            for jj in range(B):
                MT[jj] = fmaximum(MT[jj], X[p, c, j0 + jj])
    bad = 0
    nbad = 0
    for jj in range(B):
        mm = MT[jj]
        M[jj] = np.float64(mm)
        nbad += not ((mm < pinf) & (mm > ninf))
    if capped:
        for jj in range(B):
            nbad += not (MXT[jj] < pinf)
    if nbad:
        bad |= BAD_LOGITS
    if not prob:
        # KEEP: 1.0 / 0.0 (ignored); TI: the target, or 0 for an ignored row (a safe
        # index: every later gather and the target write run unconditionally)
        if keep.shape[0] > 0:
            for jj in range(B):
                yi = tgt[rbase + jj]
                ig = (has_ign & (yi == ign)) | (not keep[rbase + jj])
                oor = (yi < 0) | (yi >= C)
                nbad += (not ig) & oor
                KEEP[jj] = 0.0 if ig else 1.0
                TI[jj] = 0 if (ig | oor) else yi
        else:
            for jj in range(B):
                yi = tgt[rbase + jj]
                ig = has_ign & (yi == ign)
                oor = (yi < 0) | (yi >= C)
                nbad += (not ig) & oor
                KEEP[jj] = 0.0 if ig else 1.0
                TI[jj] = 0 if (ig | oor) else yi
        if nbad:
            bad |= BAD_TARGET
    if bad:
        return bad
    # ---- pass 2: gap sums (smoothing / probability targets), target logits
    if mode == 0:
        for jj in range(B):
            SW[jj] = 0.0
    else:
        for jj in range(B):
            SW[jj] = 0.0
            SA[jj] = 0.0
            CNT[jj] = 0.0
        for c in range(C):
            wc = np.float64(w[c]) if has_w else 1.0
            for jj in range(B):
                yv = Y[c, jj] if capped else X[p, c, j0 + jj]
                gap = M[jj] - np.float64(yv)
                if mode == 1:
                    g = wc * gap
                    SW[jj] += g if wc != 0.0 else 0.0
                else:
                    qi = Q[p, c, j0 + jj]
                    A = qi * a1 + a0
                    if has_w:
                        A = A * w[c]
                    Ad = np.float64(A)
                    g = Ad * gap
                    SW[jj] += g if Ad != 0.0 else 0.0
                    SA[jj] += Ad
                    CNT[jj] += not ((qi >= zero) & (qi <= one))
        if mode == 2:
            for jj in range(B):
                if CNT[jj] != 0.0:
                    bad |= BAD_PROBS
            if bad:
                return bad
    if mode != 2:
        if capped:
            for jj in range(B):
                YY[jj] = np.float64(Y[TI[jj], jj])
        else:
            for jj in range(B):
                YY[jj] = np.float64(X[p, TI[jj], j0 + jj])
    # ---- pass 3: e' into O;  then t and the number of maxima per column (float64)
    for c in range(C):
        if capped:
            for jj in range(B):
                d = Y[c, jj] - MT[jj]
                e = exp_nonpos(d)
                O[p, c, j0 + jj] = e if d < zero else mone
        elif inplace:
            for jj in range(B):
                d = O[p, c, j0 + jj] - MT[jj]
                e = exp_nonpos(d)
                O[p, c, j0 + jj] = e if d < zero else mone
        else:
            for jj in range(B):
                d = X[p, c, j0 + jj] - MT[jj]
                e = exp_nonpos(d)
                O[p, c, j0 + jj] = e if d < zero else mone
    for jj in range(B):
        T[jj] = 0.0
        CNT[jj] = 0.0
    for c in range(C):
        for jj in range(B):
            v = np.float64(O[p, c, j0 + jj])
            T[jj] += v if v > 0.0 else 0.0
            CNT[jj] += v < 0.0
    # ---- per-column scalars (gathers first, then loops that vectorise over columns)
    if mode != 2:
        # e_y = exp(y_y - m), the very value pass 3 computed at the target
        for jj in range(B):
            EY[jj] = np.float64(exp_nonpos(as_dtype_of(X, YY[jj]) - MT[jj]))
        if has_w:
            for jj in range(B):
                SA[jj] = np.float64(w[TI[jj]]) * KEEP[jj]           # w_y (0 if ignored)
        else:
            for jj in range(B):
                SA[jj] = KEEP[jj]
    _col_scalars(mode, B, C, ls, z, scale, zscale, W, M, T, CNT, YY, EY, SW, SA, KEEP, KK, GY,
                 CW, V[1], rows[rbase:rbase + B])
    if z != 0.0:
        zr = zrows[rbase:rbase + B]
        for jj in range(B):
            zr[jj] = V[1, jj]
    for jj in range(B):
        KT[jj] = as_dtype_of(X, KK[jj])
        CWT[jj] = as_dtype_of(X, CW[jj])
    # ---- pass 4: gradient
    for c in range(C):
        if mode == 0:
            for jj in range(B):
                g = abs(O[p, c, j0 + jj]) * KT[jj]
                O[p, c, j0 + jj] = g * S[c, jj] if capped else g
        elif mode == 1:
            wc = w[c] if has_w else one
            for jj in range(B):
                g = fma(abs(O[p, c, j0 + jj]), KT[jj], -(CWT[jj] * wc))
                O[p, c, j0 + jj] = g * S[c, jj] if capped else g
        else:
            wc = w[c] if has_w else one
            for jj in range(B):
                A = Q[p, c, j0 + jj] * a1 + a0
                if has_w:
                    A = A * wc
                g = fma(abs(O[p, c, j0 + jj]), KT[jj], -(scT * A))
                O[p, c, j0 + jj] = g * S[c, jj] if capped else g
    if mode != 2:
        # ignored columns: GY = 0 and TI = 0, and their gradient is 0 anyway
        if capped:
            for jj in range(B):
                O[p, TI[jj], j0 + jj] = as_dtype_of(X, GY[jj]) * S[TI[jj], jj]
        else:
            for jj in range(B):
                O[p, TI[jj], j0 + jj] = as_dtype_of(X, GY[jj])
    return 0


@helper
def _col_scalars(mode, B, C, ls, z, scale, zscale, W, M, T, CNT, YY, EY, SW, SA, KEEP, KK, GY,
                 CW, ZL, rows):
    """:func:`_row_scalars` for a block of columns, branch-free loops over the columns.

    Index targets (mode 0/1): ``SA`` holds ``w_y``, ``KEEP`` 1.0 / 0.0 (ignored rows get
    zero loss and zero coefficients).  Probability targets: ``SA`` holds ``sum A``.
    Writes ``rows``, ``KK``, ``GY``, ``CW``, ``ZL`` (the z-loss per column).
    """
    c_sm = ls / C
    if mode == 2:
        for jj in range(B):
            t = T[jj] + (CNT[jj] - 1.0)
            s1 = 1.0 + t
            L = log1p(t)
            lse = M[jj] + L
            zg = zscale * (2.0 * z * lse)
            sA = SA[jj]
            rows[jj] = SW[jj] + (L * sA if sA != 0.0 else 0.0)
            KK[jj] = (scale * sA + zg) / s1
            ZL[jj] = z * lse * lse
    else:
        sm1 = 1.0 if mode == 1 else 0.0
        for jj in range(B):
            keep = KEEP[jj]
            t = T[jj] + (CNT[jj] - 1.0)
            s1 = 1.0 + t
            L = log1p(t)
            lse = M[jj] + L
            zg = zscale * (2.0 * z * lse) * keep
            wy = SA[jj]
            c_nll = (1.0 - ls) * wy
            nll = (M[jj] - YY[jj]) + L
            ce = c_nll * nll if c_nll != 0.0 else 0.0
            sm = c_sm * (L * W + SW[jj] * sm1)
            ce += sm if keep != 0.0 else 0.0
            rows[jj] = ce
            ck = c_sm * keep
            total = c_nll + ck * W
            KK[jj] = (scale * total + zg) / s1
            ey = EY[jj] * keep
            py = ey / s1
            pym1 = ((ey - 1.0) - t) / s1
            GY[jj] = scale * (c_nll * pym1 + ck * (W * py - wy)) + zg * py
            CW[jj] = scale * ck
            ZL[jj] = z * lse * lse * keep


@kernel
def softmax_cols(x3, out3, inplace, tgt, probs3, prob, w, has_ign, ign, keep, ls, z, cap, scale,
                 zscale, rows, zrows, Bc, b0, b1):
    """Blocks ``[b0, b1)`` of the (pre, C, post) layout, ``Bc`` columns per block.

    Block ``b`` is slab ``p = b // nq`` and columns ``[q Bc, min(post, (q+1) Bc))`` with
    ``q = b % nq``, ``nq = ceil(post / Bc)``.  Problem row of (p, j): ``p post + j``.
    Arguments as :func:`softmax_rows`, with ``x3``, ``out3`` (and ``probs3``) of shape
    (pre, C, post) and ``tgt``, ``rows``, ``zrows`` of length ``pre * post``.
    """
    pre, C, post = x3.shape
    nq = (post + Bc - 1) // Bc
    capped = cap != 0.0
    W = ro.weight_sum(w, C)
    Bs = min(Bc, post)
    Y = np.empty((C if capped else 0, Bs), x3.dtype)
    S = np.empty((C if capped else 0, Bs), x3.dtype)
    V = np.empty((12, Bs))
    VT = np.empty((4, Bs), x3.dtype)
    TI = np.empty(Bs, np.int64)
    allbad = 0
    for b in range(b0, b1):
        p = b // nq
        j0 = (b % nq) * Bc
        j1 = min(post, j0 + Bc)
        rb = p * post + j0
        bad = _cols_core(x3, out3, inplace, probs3, p, j0, j1, rb, tgt, prob, w, has_ign, ign,
                         keep, ls, z, cap, scale, zscale, W, rows, zrows, Y, S, V, VT, TI)
        if bad:
            allbad |= bad
            for r in range(rb, rb + (j1 - j0)):
                rows[r] = np.nan
    return allbad


@kernel
def softmax_rows_small(x, out, tgt, probs, prob, w, has_ign, ign, keep, ls, z, cap, scale,
                       zscale,
                       rows, zrows, R, b0, b1):
    """Small ``C``, class axis last: blocks of ``R`` rows transposed into (C, R) scratch.

    The block is copied into scratch as (1, C, R), computed by the cols code (SIMD
    across the rows), and the gradient copied back transposed.  In place is free:
    the block is read completely before any of it is written.  Arguments as
    :func:`softmax_rows`.
    """
    N, C = x.shape
    capped = cap != 0.0
    W = ro.weight_sum(w, C)
    Rs = min(R, N)
    XT = np.empty((1, C, Rs), x.dtype)
    GT = np.empty((1, C, Rs), x.dtype)
    QT = np.empty((1, C if prob else 0, Rs), x.dtype)
    Y = np.empty((C if capped else 0, Rs), x.dtype)
    S = np.empty((C if capped else 0, Rs), x.dtype)
    V = np.empty((12, Rs))
    VT = np.empty((4, Rs), x.dtype)
    TI = np.empty(Rs, np.int64)
    allbad = 0
    for b in range(b0, b1):
        r0 = b * R
        r1 = min(N, r0 + R)
        nr = r1 - r0
        for i in range(nr):
            for c in range(C):
                XT[0, c, i] = x[r0 + i, c]
        if prob:
            for i in range(nr):
                for c in range(C):
                    QT[0, c, i] = probs[r0 + i, c]
        bad = _cols_core(XT, GT, False, QT, 0, 0, nr, r0, tgt, prob, w, has_ign, ign, keep,
                         ls, z, cap, scale, zscale, W, rows, zrows, Y, S, V, VT, TI)
        if bad:
            allbad |= bad
            for r in range(r0, r1):
                rows[r] = np.nan
            continue
        for i in range(nr):
            for c in range(C):
                out[r0 + i, c] = GT[0, c, i]
    return allbad


# =============================================================================== chunked rows

NSTAT = 8   # per (row, chunk): m, t, cnt, sw (or sum A (m-y)), W_k, sum A, y_target, has_target


@kernel
def softmax_chunk_stats(x, tgt, probs, prob, w, ls, cap, stats, flags, CH, b0, b1):
    """Phase 1 of the chunked layout: statistics of tasks ``[b0, b1)``.

    Task ``b`` is row ``r = b // nck``, classes ``[k CH, min(C, (k+1) CH))``,
    ``k = b % nck``.  Writes ``stats[b, :]`` (relative to the chunk maximum) and
    ``flags[b]`` (NaN / ``+inf`` logits, bad target probabilities).  Reads only.
    """
    N, C = x.shape
    nck = (C + CH - 1) // CH
    has_w = w.shape[0] > 0
    capped = cap != 0.0
    mode = 2 if prob else (1 if ls != 0.0 else 0)
    capT = as_dtype_of(x, cap)
    a1 = as_dtype_of(x, 1.0 - ls)
    a0 = as_dtype_of(x, ls / C)
    ninf = as_dtype_of(x, -np.inf)
    pinf = as_dtype_of(x, np.inf)
    Y = np.empty(min(CH, C) if capped else 0, x.dtype)
    E = np.empty(min(CH, C), x.dtype)
    for b in range(b0, b1):
        r = b // nck
        c0 = (b % nck) * CH
        c1 = min(C, c0 + CH)
        n = c1 - c0
        xs = x[r, c0:c1]
        if capped:
            ys = Y[:n]
            my, mx = ro.cap_row_y(xs, capT, ys)
            ok = mx < pinf
        else:
            ys = xs
            my = ro.row_max(xs)
            ok = my < pinf
        if not (ok & (my == my)):
            flags[b] = BAD_LOGITS
            continue
        st = stats[b]
        st[0] = np.float64(my)
        finite = my > ninf
        ref = my if finite else as_dtype_of(x, 0.0)
        if finite:
            es = E[:n]
            ro.exp_marked_2(ys, my, es)
            ts, cnt = ro.sum_marked(es)
            st[1] = ts
            st[2] = np.float64(cnt)
        else:
            st[1] = 0.0
            st[2] = 0.0
        st[3] = 0.0
        st[4] = 0.0
        st[5] = 0.0
        if mode == 1:
            if has_w:
                sw, Wk = ro.sum_w_gap(ys, ref, w[c0:c1])
            else:
                sw = ro.sum_gap(ys, ref)
                Wk = np.float64(n)
            st[3] = sw
            st[4] = Wk
        elif mode == 2:
            if has_w:
                sA, sAd, nb = ro.sum_prob_w(ys, ref, probs[r, c0:c1], w[c0:c1], a1, a0)
            else:
                sA, sAd, nb = ro.sum_prob(ys, ref, probs[r, c0:c1], a1, a0)
            if nb:
                flags[b] = BAD_PROBS
            st[3] = sAd
            st[5] = sA
        st[7] = 0.0
        if not prob:
            yi = tgt[r]
            if c0 <= yi < c1:
                st[6] = np.float64(ys[yi - c0])
                st[7] = 1.0


@kernel
def softmax_chunk_combine(tgt, prob, w, has_ign, ign, keep, ls, z, scale, zscale, C, stats, flags,
                          nck, rows, zrows, MK, r0, r1, dtype_probe):
    """Merge the chunk statistics of rows ``[r0, r1)`` (online-softmax rule, fixed order).

    Writes ``rows``, ``zrows`` and ``MK[r] = (M, K, gy, cw, keep)`` for phase 2; returns
    the OR of the error bits of these rows (chunk flags included).  ``dtype_probe``: a
    0-d or 1-element array of the logits' dtype (the target entry is computed with
    that dtype's ``exp``, as phase 2 computes the other entries).
    """
    has_w = w.shape[0] > 0
    mode = 2 if prob else (1 if ls != 0.0 else 0)
    W = ro.weight_sum(w, C)
    c_sm = ls / C
    allbad = 0
    has_keep = keep.shape[0] > 0
    for r in range(r0, r1):
        bad = 0
        for k in range(nck):
            bad |= flags[r * nck + k]
        kept = True
        yi = 0
        if not prob:
            yi = tgt[r]
            if (has_ign and yi == ign) or (has_keep and not keep[r]):
                kept = False
            elif yi < 0 or yi >= C:
                bad |= BAD_TARGET
        M = -np.inf
        if bad == 0:
            for k in range(nck):
                M = max(M, stats[r * nck + k, 0])
            if not (M > -np.inf):
                bad |= BAD_LOGITS
        if bad:
            allbad |= bad
            rows[r] = np.nan
            continue
        # t = sum over all classes but the first arg-max of exp(y - M), without
        # subtracting 1 from a sum: chunks at the maximum contribute their count
        # of maxima (exact integers, minus the one excluded) and their t_k.
        cnt_top = 0.0
        t = 0.0
        sw = 0.0
        sA = 0.0
        yy = 0.0
        for k in range(nck):
            st = stats[r * nck + k]
            mk = st[0]
            if mk == M:
                cnt_top += st[2]
                t += st[1]
            elif mk > -np.inf:
                t += (st[2] + st[1]) * exp_nonpos(mk - M)
            if mode == 1:
                sw += st[3] + ((M - mk) * st[4] if (mk > -np.inf and st[4] != 0.0) else 0.0)
            elif mode == 2:
                sw += st[3] + ((M - mk) * st[5] if (mk > -np.inf and st[5] != 0.0) else 0.0)
                sA += st[5]
            if st[7] != 0.0:
                yy = st[6]
        t += cnt_top - 1.0
        if mode == 2:
            ce, zl, K, gy = _row_scalars(2, M, t, 0.0, 0.0, ls, C, W, 1.0, 0.0, sA, sw, z,
                                         scale, zscale)
            cw = 0.0
        elif kept:
            ey = np.float64(exp_nonpos(as_dtype_of(dtype_probe, yy)
                                       - as_dtype_of(dtype_probe, M)))
            wy = np.float64(w[yi]) if has_w else 1.0
            ce, zl, K, gy = _row_scalars(mode, M, t, yy, ey, ls, C, W, wy, sw, 0.0, 0.0, z,
                                         scale, zscale)
            cw = scale * c_sm
        else:
            ce = zl = K = gy = cw = 0.0
        rows[r] = ce
        if z != 0.0:
            zrows[r] = zl
        MK[r, 0] = M
        MK[r, 1] = K
        MK[r, 2] = gy
        MK[r, 3] = cw
        MK[r, 4] = 1.0 if kept else 0.0
    return allbad


@kernel
def softmax_chunk_grad(x, out, inplace, tgt, probs, prob, w, ls, cap, scale, MK, CH, b0, b1):
    """Phase 2 of the chunked layout: the gradient of tasks ``[b0, b1)``.

    Recomputes ``exp(y - M)`` from the logits (each entry of ``out`` is written
    after its own logit is read, so ``out`` may be ``x``).
    """
    N, C = x.shape
    nck = (C + CH - 1) // CH
    has_w = w.shape[0] > 0
    capped = cap != 0.0
    mode = 2 if prob else (1 if ls != 0.0 else 0)
    capT = as_dtype_of(x, cap)
    a1 = as_dtype_of(x, 1.0 - ls)
    a0 = as_dtype_of(x, ls / C)
    scT = as_dtype_of(x, scale)
    zero = as_dtype_of(x, 0.0)
    Y = np.empty(min(CH, C) if capped else 0, x.dtype)
    S = np.empty(min(CH, C) if capped else 0, x.dtype)
    empty1 = np.empty(0, x.dtype)
    wempty = w[0:0]
    for b in range(b0, b1):
        r = b // nck
        c0 = (b % nck) * CH
        c1 = min(C, c0 + CH)
        n = c1 - c0
        os_ = out[r, c0:c1]
        if MK[r, 4] == 0.0:
            ro.fill(os_, zero)
            continue
        M = as_dtype_of(x, MK[r, 0])
        if capped:
            ro.cap_row(x[r, c0:c1], capT, Y[:n], S[:n])
            ro.exp_plain_2(Y[:n], M, os_)
            Ss = S[:n]
        elif inplace:
            ro.exp_plain_1(os_, M)
            Ss = empty1
        else:
            ro.exp_plain_2(x[r, c0:c1], M, os_)
            Ss = empty1
        qs = probs[r, c0:c1] if prob else empty1
        ws = w[c0:c1] if has_w else wempty
        ro.grad_row(os_, as_dtype_of(x, MK[r, 1]), as_dtype_of(x, MK[r, 3]), scT, ws, qs, a1,
                    a0, Ss, mode, has_w, capped)
        if not prob:
            yi = tgt[r]
            if c0 <= yi < c1:
                g = as_dtype_of(x, MK[r, 2])
                if capped:
                    g = g * S[yi - c0]
                os_[yi - c0] = g
