"""Entry point of the compiled softmax cross-entropy (see :func:`softmax_cross_entropy`)."""

from __future__ import annotations

import math

import numpy as np

from . import _softmax as K
from ._driver import run
from ._jit import kernel

# Class counts below this use the transposed small-C kernel when the class axis is
# last (a row shorter than a few SIMD vectors leaves the per-row loops scalar).
SMALL_C = 48

_EMPTY_I = np.zeros(0, np.int64)
_EMPTY_F64 = np.zeros(0, np.float64)
_EMPTY_B = np.zeros(0, bool)
_EMPTY_1 = {np.dtype(np.float32): np.zeros(0, np.float32),
            np.dtype(np.float64): np.zeros(0, np.float64)}
_EMPTY_2 = {np.dtype(np.float32): np.zeros((0, 0), np.float32),
            np.dtype(np.float64): np.zeros((0, 0), np.float64)}
_EMPTY_3 = {np.dtype(np.float32): np.zeros((0, 0, 0), np.float32),
            np.dtype(np.float64): np.zeros((0, 0, 0), np.float64)}


@kernel
def _index_stats(tgt, C, w, has_ign, ign, keep):
    n_kept = 0
    wsum = 0.0
    bad = 0
    has_w = w.shape[0] > 0
    has_keep = keep.shape[0] > 0
    for i in range(tgt.shape[0]):
        y = tgt[i]
        if (has_ign and y == ign) or (has_keep and not keep[i]):
            continue
        if y < 0 or y >= C:
            bad = 1
            continue
        n_kept += 1
        wsum += np.float64(w[y]) if has_w else 1.0
    return wsum, n_kept, bad


def index_target_stats(targets, num_classes, weight=None, ignore_index=None, keep=None):
    """``(sum of w_y over kept rows, number of kept rows, any index out of range)``.

    The two ``mean`` denominators of index targets (CE part and z-loss part), from
    one compiled pass over the targets.  ``targets``: int64 array (any shape);
    ``weight``: None or a (C,) float array.  Rows with ``targets == ignore_index``
    are not kept, nor those where ``keep`` (a bool array of the targets' shape) is
    False; an index outside ``[0, C)`` of a kept row sets the third result (and is
    left out of the sums).
    """
    t = np.ascontiguousarray(targets, np.int64).reshape(-1)
    w = _EMPTY_1[np.dtype(np.float64)] if weight is None else weight
    kp = _EMPTY_B if keep is None else np.ascontiguousarray(keep, bool).reshape(-1)
    wsum, n, bad = _index_stats(t, int(num_classes), w, ignore_index is not None,
                                int(ignore_index or 0), kp)
    return wsum, n, bool(bad)


def softmax_cross_entropy(logits, out, targets, *, axis=-1, weight=None, ignore_index=None,
                          keep=None, label_smoothing=0.0, z_loss=0.0, softcap=None, scale=1.0,
                          z_scale=1.0, rows=None, z_rows=None, workers=None):
    """Compiled ``value_and_grad`` of softmax cross-entropy; see ``compiled.__doc__``."""
    x = logits if logits.flags.c_contiguous else np.ascontiguousarray(logits)
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    dt = x.dtype
    shape = x.shape
    nd = len(shape)
    ax = axis % nd
    if ax == nd - 1:
        C = shape[ax]
        pre = shape[0] if nd == 2 else math.prod(shape[:ax])
        post = 1
    else:
        C = shape[ax]
        pre = math.prod(shape[:ax])
        post = math.prod(shape[ax + 1:])
    N = pre * post
    prob = targets.dtype.kind == "f"
    if prob and not targets.flags.c_contiguous:
        targets = np.ascontiguousarray(targets)
    if rows is None:
        rows = np.empty(N)
    z = float(z_loss)
    if z_rows is None:
        z_rows = np.empty(N) if z != 0.0 else _EMPTY_F64
    if N == 0:
        return 0, rows, z_rows
    w = _EMPTY_1[dt] if weight is None else weight
    tgt = _EMPTY_I if prob else (targets if targets.ndim == 1 else targets.reshape(-1))
    has_ign = ignore_index is not None and not prob
    ign = int(ignore_index) if has_ign else 0
    kp = _EMPTY_B if (keep is None or prob) else (
        keep if keep.ndim == 1 and keep.dtype == bool else
        np.ascontiguousarray(keep, bool).reshape(-1))
    ls = float(label_smoothing)
    cap = 0.0 if softcap is None else float(softcap)
    scale = float(scale)
    zscale = float(z_scale)
    inplace = out is x or np.may_share_memory(out, x)    # contract: out is x itself or disjoint
    nel = N * C
    if post == 1:
        if nd == 2:
            x2, o2 = x, out
            q2 = targets if prob else _EMPTY_2[dt]
        else:
            x2 = x.reshape(pre, C)
            o2 = out.reshape(pre, C)
            q2 = targets.reshape(pre, C) if prob else _EMPTY_2[dt]
        if C > K.ROW_MAX:
            return _chunked(x2, o2, inplace, tgt, q2, prob, w, has_ign, ign, kp, ls, z, cap,
                            scale, zscale, rows, z_rows, workers)
        R = max(1, K.BLOCK // C)
        nb = -(-pre // R)
        if C < SMALL_C:
            bad = run(K.softmax_rows_small, (x2, o2, tgt, q2, prob, w, has_ign, ign, kp, ls, z,
                                             cap, scale, zscale, rows, z_rows, R), nb, workers,
                      nel)
        else:
            bad = run(K.softmax_rows, (x2, o2, inplace, tgt, q2, prob, w, has_ign, ign, kp, ls, z,
                                       cap, scale, zscale, rows, z_rows, R), nb, workers, nel)
    else:
        x3 = x.reshape(pre, C, post)
        o3 = out.reshape(pre, C, post)
        q3 = targets.reshape(pre, C, post) if prob else _EMPTY_3[dt]
        Bc = max(16, K.BLOCK // C)
        nq = -(-post // Bc)
        nb = pre * nq
        bad = run(K.softmax_cols, (x3, o3, inplace, tgt, q3, prob, w, has_ign, ign, kp, ls, z, cap,
                                   scale, zscale, rows, z_rows, Bc), nb, workers, nel)
    return bad, rows, z_rows


def _chunked(x2, o2, inplace, tgt, q2, prob, w, has_ign, ign, kp, ls, z, cap, scale, zscale, rows,
             z_rows, workers):
    N, C = x2.shape
    CH = K.CHUNK
    nck = -(-C // CH)
    ntask = N * nck
    stats = np.empty((ntask, K.NSTAT))
    flags = np.zeros(ntask, np.uint8)
    run(K.softmax_chunk_stats, (x2, tgt, q2, prob, w, ls, cap, stats, flags, CH), ntask, workers,
        N * C, combine=False)
    MK = np.empty((N, 5))
    bad = K.softmax_chunk_combine(tgt, prob, w, has_ign, ign, kp, ls, z, scale, zscale, C, stats,
                                  flags, nck, rows, z_rows, MK, 0, N, x2[:1, :1])
    if bad:
        return int(bad), rows, z_rows
    run(K.softmax_chunk_grad, (x2, o2, inplace, tgt, q2, prob, w, ls, cap, scale, MK, CH), ntask,
        workers, N * C, combine=False)
    return 0, rows, z_rows
