r"""Compiled (numba) fused ``value_and_grad`` kernels of the four classic losses.

A self-contained backend: it imports nothing from the rest of ``ce_reference``.
Its entry points take plain, **already validated** NumPy arrays and scalars, write
the gradient into a caller-supplied buffer and the per-row (or per-element)
losses into caller-supplied float64 buffers, and *detect* invalid data (NaN,
``+inf``, rows with no finite logit, indices or probabilities out of range)
during their single pass, returning error bits instead of raising, so that the
caller can raise its own error without a validation pass over the data.

Common conventions
------------------
dtypes
    float32 or float64.  ``out`` (and ``probs`` targets, ``weight``,
    ``pos_weight``) have the input's dtype; index targets are int64; per-row
    losses are float64.  float16 / integer inputs are the caller's business
    (compute in float32 / float64, cast the results).
layout
    Every array C-contiguous.  ``out`` has the input's shape; it may be the input
    array itself (in place: each element's gradient is written after its input
    is read), and must not otherwise overlap any argument.
scale, z_scale
    The factors of the gradient: ``1`` for ``sum``/``none``, ``1 / denominator``
    for ``mean`` (``0`` when the denominator is 0).  The caller reduces the
    per-row losses with the same denominators; :func:`index_target_stats` gives
    the index-target denominators in one compiled pass over the targets.
workers
    Threads (``None``: the cores available to the process).  Work is a fixed,
    shape-only partition into blocks run by a persistent thread pool (kernels
    release the GIL); calls of fewer than ``PARALLEL_MIN`` elements run in the
    calling thread.  Results are bitwise identical for every ``workers`` value and
    in place.
error bits (returned ``flags``, the OR over blocks; 0 = no problem)
    softmax: ``SOFTMAX_BAD_LOGITS`` (NaN, ``+inf``, a row with no finite logit),
    ``SOFTMAX_BAD_TARGET`` (an index outside ``[0, C)`` that is not
    ``ignore_index``), ``SOFTMAX_BAD_PROBS`` (a target probability outside
    [0, 1] or NaN); a flagged block writes nothing into ``out`` and NaN into its
    per-row losses.  BCE: ``BCE_BAD_INPUT`` (NaN logits / probabilities outside
    [0, 1]), ``BCE_BAD_TARGET``, ``BCE_BAD_WEIGHT``, ``BCE_BAD_POS_WEIGHT``
    (negative or non-finite).  Categorical: ``CCE_BAD_PROBS``, ``CCE_BAD_TARGET``,
    ``CCE_BAD_TARGET_PROBS``.

Entry points
------------
``softmax_cross_entropy(logits, out, targets, *, axis=-1, weight=None,
ignore_index=None, keep=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
scale=1.0, z_scale=1.0, rows=None, z_rows=None, workers=None) -> (flags, rows, z_rows)``
    ``targets``: int64 class indices of the batch shape (logits' shape without
    ``axis``), or probabilities of the logits' shape and dtype.  ``weight``: (C,)
    class weights of the logits' dtype.  Index targets only: rows with
    ``targets == ignore_index``, or with ``keep == False`` (a bool array of the
    batch shape, e.g. a validated problem's mask; those rows' indices are not
    looked at), are ignored.  ``softcap = s``:
    logits ``s tanh(x / s)`` first (``-inf`` stays masked); ``z_loss = z``:
    ``z lse^2`` per kept row.  ``rows`` (N,) float64 receives the per-row CE part
    (0 for ignored rows), ``z_rows`` (N,) float64 the z-loss part (only when
    ``z_loss != 0``); N = the batch size, rows in C order of the batch shape.
    The gradient is ``scale * d(sum CE rows) + z_scale * d(sum z rows)``.
    PyTorch's ``mean``: ``scale = 1 / sum_{kept} w_y`` (index targets) or ``1 / N``
    (probabilities); ``z_scale = 1 / (number of kept rows)``.
``binary_cross_entropy_with_logits(logits, out, targets, *, weight=None,
pos_weight=None, scale=1.0, loss_out=None, workers=None) -> (flags, loss_sum)``
    ``targets``, ``weight``, ``pos_weight`` broadcastable to the logits
    (``pos_weight`` of shape (C,) broadcasts along the last axis); ``loss_out``
    (logits' shape and dtype) receives the per-element losses for ``none``;
    ``loss_sum`` is their float64 sum (blocks summed in a fixed order).
``binary_cross_entropy(probs, out, targets, *, weight=None, eps=None, scale=1.0,
loss_out=None, workers=None) -> (flags, loss_sum)``
    ``eps``: clip ``p`` to ``[eps, 1 - eps]`` (computed in the input dtype) with
    the clip's exact derivative.
``categorical_cross_entropy(probs, out, targets, *, axis=-1, weight=None, eps=None,
scale=1.0, rows=None, workers=None) -> (flags, rows)``
    Index or probability targets as for softmax; ``mean`` denominators are the
    caller's (``sum w_y`` / ``N``).
``index_target_stats(targets, num_classes, weight=None, ignore_index=None, keep=None)``
    ``-> (sum of w_y over kept rows, number of kept rows, any index out of range)``.
``warmup()``
    Compile (or load from the cache) every kernel for float32 and float64;
    returns a dict of timings.  Also ``python -m ce_reference.compiled warmup``.
``AVAILABLE``
    False when numba is not installed: the module still imports, and every other
    name raises ``ImportError``.

Numerics (each measured in ``tests/test_compiled*.py``): ``exp``, ``log``,
``log1p`` are the branch-free vectorised functions of :mod:`._math` (float32:
exhaustively <= 0.90 ULP); softmax per-row scalars in float64 (``t`` and the
log-sum-exp without cancellation, ``p_y - 1`` without subtraction), sums in
float64; BCE and categorical kernels follow the NumPy kernels' formulas.
"""

from __future__ import annotations

import time

import numpy as np

try:
    import numba  # noqa: F401
except ImportError:          # the backend is optional (extra "fast")
    AVAILABLE = False
else:
    AVAILABLE = True

if AVAILABLE:
    from . import _binary, _categorical, _softmax
    from ._api_other import (binary_cross_entropy, binary_cross_entropy_with_logits,
                             categorical_cross_entropy)
    from ._api_softmax import index_target_stats, softmax_cross_entropy
    from ._driver import PARALLEL_MIN, available_cores
    from ._jit import CACHE_DIR, KERNELS

    SOFTMAX_BAD_LOGITS = _softmax.BAD_LOGITS
    SOFTMAX_BAD_TARGET = _softmax.BAD_TARGET
    SOFTMAX_BAD_PROBS = _softmax.BAD_PROBS
    BCE_BAD_INPUT = _binary.BAD_X
    BCE_BAD_TARGET = _binary.BAD_Y
    BCE_BAD_WEIGHT = _binary.BAD_W
    BCE_BAD_POS_WEIGHT = _binary.BAD_PW
    CCE_BAD_PROBS = _categorical.BAD_P
    CCE_BAD_TARGET = _categorical.BAD_TARGET
    CCE_BAD_TARGET_PROBS = _categorical.BAD_Q
else:
    def __getattr__(name):
        raise ImportError(f"ce_reference.compiled.{name} needs numba, which is not installed "
                          "(pip install 'ce_reference[fast]')")

__all__ = [
    "AVAILABLE", "softmax_cross_entropy", "binary_cross_entropy_with_logits", "binary_cross_entropy",
    "categorical_cross_entropy", "index_target_stats", "warmup", "CACHE_DIR",
    "PARALLEL_MIN", "available_cores",
]


def _warm_calls(dt):
    """One call per compiled signature, on tiny inputs (every layout and mode)."""
    from . import _api_softmax as S
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40)).astype(dt)
    t = np.array([0, 1, 2], np.int64)
    q = np.full((3, 40), 1 / 40, dt)
    w = np.ones(40, dt)
    out = np.empty_like(x)
    yield lambda: softmax_cross_entropy(x, out, t, weight=w)                    # rows
    yield lambda: softmax_cross_entropy(x, x.copy(), q)                          # rows, probs
    xs = x[:, :8].copy()
    yield lambda: softmax_cross_entropy(xs, np.empty_like(xs), t)                # small C
    x3 = x.reshape(3, 5, 8)
    t3 = np.zeros((3, 8), np.int64)
    yield lambda: softmax_cross_entropy(x3, np.empty_like(x3), t3, axis=1)     # cols
    row_max, chunk = S.K.ROW_MAX, S.K.CHUNK

    def chunked():
        S.K.ROW_MAX, S.K.CHUNK = 16, 16
        try:
            softmax_cross_entropy(x, out, t)
        finally:
            S.K.ROW_MAX, S.K.CHUNK = row_max, chunk
    yield chunked
    yield lambda: index_target_stats(t, 40, w)
    yield lambda: index_target_stats(t, 40)
    y = rng.random((3, 40)).astype(dt)
    yield lambda: binary_cross_entropy_with_logits(x, out, y)
    yield lambda: binary_cross_entropy(y, out, y, eps=1e-3)
    p = np.full((3, 40), 1 / 40, dt)
    yield lambda: categorical_cross_entropy(p, out, t)
    yield lambda: categorical_cross_entropy(p.reshape(3, 5, 8), out.reshape(3, 5, 8),
                                            q.reshape(3, 5, 8), axis=1)


def warmup(dtypes=(np.float32, np.float64)):
    """Compile (or load from the disk cache) every kernel signature used by the entry points.

    Returns ``{"seconds": total, "cache_dir": CACHE_DIR, "compiled": n, "loaded": n}``
    (kernels compiled in this process / loaded from the cache).
    """
    if not AVAILABLE:
        raise ImportError("ce_reference.compiled.warmup needs numba, which is not installed "
                          "(pip install 'ce_reference[fast]')")
    t0 = time.perf_counter()
    for dt in dtypes:
        for call in _warm_calls(np.dtype(dt)):
            call()
    hits = sum(sum(k.stats.cache_hits.values()) for k in KERNELS)
    misses = sum(sum(k.stats.cache_misses.values()) for k in KERNELS)
    return {"seconds": time.perf_counter() - t0, "cache_dir": CACHE_DIR,
            "loaded": hits, "compiled": misses}
