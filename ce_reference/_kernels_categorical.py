r"""Blockwise, multithreaded categorical cross-entropy of probabilities.

The loss of a probability input needs no class reduction beyond a gather (index
targets) or an ``xlogy`` sum (probability targets), so each block simply runs
the plain function's own formulas (:func:`.categorical._cce` with reduction
``"none"``) on a slab ``(rows, C, columns)`` of the input viewed as
``(pre, C, post)``; the numbers are therefore bitwise those of the plain
functions.  What this adds: one cache-blocked sweep on ``workers`` threads,
values checked block by block (no input-sized boolean masks), per-row losses
reduced once at the end in row order, and ``out=``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _fused
from . import _validation as V
from ._kernels_binary import _empty, _Empty, _Invalid
from ._reduction import grad_scale, reduce_loss


def cce_value_and_grad(probs, targets, axis, weight, eps, reduction, out, workers):
    from . import categorical as _cat

    def reference(want_value=False, want_grad=False):
        return _cat._cce(probs, targets, axis, weight, eps, reduction, want_value, want_grad)

    try:
        p0 = V.as_numeric_array("probs", probs)
        cdt, rdt = V.compute_dtypes(p0.dtype)
        ax = _cat._class_axis("probs", p0, axis)
        if p0.size == 0:
            raise _Empty()
        t = V.as_numeric_array("targets", targets)
        if t.dtype.kind in "iu":
            T = V.class_targets(t, p0.shape, ax, cdt)
        elif t.shape != p0.shape:
            raise _Invalid()
        else:
            T = None
        C = p0.shape[ax]
        w = V.class_weight(weight, C, cdt)
        reduction = V.check_reduction(reduction)
        V.check_eps(eps, rdt, cdt)
    except _Empty:
        return _empty(lambda: reference(True, True), out, workers, p0, rdt)
    except (TypeError, ValueError):
        reference()
        raise
    nworkers = _fused.resolve_workers(workers)
    out, _ = _fused.check_out(out, p0.shape, rdt, p0, (("targets", t), ("weight", weight)))
    shape = p0.shape
    pre, post = math.prod(shape[:ax]), math.prod(shape[ax + 1:])
    p3 = np.ascontiguousarray(p0).reshape(pre, C, post)
    grad = out if out is not None else np.empty(shape, rdt)
    g3 = grad.reshape(pre, C, post)
    if T is not None:
        tgt = t.reshape(pre, post)
        wy = np.ones(T.index.shape, cdt) if w is None else w[T.index]
        denom = float(np.sum(wy, dtype=np.float64))        # as _cce: sum of w_{y_n}
        del wy
    else:
        tgt = np.ascontiguousarray(t).reshape(pre, C, post)
        denom = float(pre * post)
    scale = cdt.type(grad_scale(reduction, denom))
    rows = np.empty((pre, post), cdt)
    B = max(1, _fused.BLOCK_BYTES // (C * cdt.itemsize))
    if post == 1:
        blocks = [(slice(r, min(pre, r + B)), slice(0, 1)) for r in range(0, pre, B)]
    else:
        Bq = min(B, post)
        blocks = [(slice(r, r + 1), slice(q, min(post, q + Bq)))
                  for r in range(pre) for q in range(0, post, Bq)]
    bad = np.zeros(len(blocks), bool)

    def body(i, _):
        sr, sq = blocks[i]
        pb = p3[sr, :, sq].astype(cdt, copy=False)
        tb = tgt[sr, sq] if T is not None else tgt[sr, :, sq]
        try:
            loss, g = _cat._cce(pb, tb, 1, w, eps, "none", True, True, scale=scale)
        except (TypeError, ValueError):
            bad[i] = True
            return
        rows[sr, sq] = loss
        np.copyto(g3[sr, :, sq], g, casting="unsafe")

    _fused.run_blocks(len(blocks), body, lambda: None, nworkers, p3.size)
    if bad.any():
        reference()
        raise _Invalid()
    value = reduce_loss(rows.reshape(shape[:ax] + shape[ax + 1:]), reduction, denom, rdt)
    return value, grad
