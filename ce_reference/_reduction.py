"""Reductions shared by all losses.

``mean`` divides the sum of the per-example losses by a loss-specific
denominator (the number of elements, the number of rows, or the sum of
target weights of the kept rows, as PyTorch does); the gradient of the
reduced loss is the per-example gradient times ``1 / denominator``.  Sums
accumulate in float64 whatever the compute dtype.

A ``mean`` whose denominator is 0 (empty batch, every row ignored, every
target weight 0) is NaN, as in PyTorch; its gradient is defined as zero, so
it is always finite.
"""

from __future__ import annotations

import numpy as np


def to_result(a, result_dtype):
    """Cast to the result dtype.  Only float16 results can overflow here; a value
    beyond 65504 rounds to inf, which is the correctly rounded float16 result."""
    with np.errstate(over="ignore"):
        return np.asarray(a).astype(result_dtype, copy=False)


def scalar_result(value, result_dtype):
    """A real scalar as a NumPy scalar of the result dtype: :func:`to_result` without the
    array round trip and the error-state switch (a few microseconds per call), which only
    a value beyond the result dtype's range needs."""
    result_dtype = np.dtype(result_dtype)
    if result_dtype == np.float64 or not abs(value) > _FLOAT_MAX[result_dtype]:   # NaN too
        return result_dtype.type(value)
    with np.errstate(over="ignore"):
        return result_dtype.type(value)


#: Largest finite value of the narrower result dtypes (above it the cast may overflow).
_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32)}


def reduce_loss(per_example: np.ndarray, reduction: str, denominator: float, result_dtype):
    """Reduce per-example losses; returns an array (``none``) or a NumPy scalar."""
    if reduction == "none":
        return to_result(per_example, result_dtype)
    complex_sum = np.asarray(per_example).dtype.kind == "c"
    # np.add.reduce over every axis is np.sum without its Python layer
    total = np.add.reduce(per_example, axis=None,
                          dtype=np.complex128 if complex_sum else np.float64)
    if reduction == "sum":
        value = total
    elif denominator == 0:
        value = np.nan
    else:
        value = total / denominator
    if complex_sum or np.dtype(result_dtype).kind != "f":
        return to_result(value, result_dtype)[()]
    return scalar_result(value, result_dtype)


def reduce_parts(parts, reduction: str, result_dtype, shape=None):
    """Reduce a loss made of parts, each with its own ``mean`` denominator.

    ``parts`` is a sequence of ``(per_example, denominator)``; ``none`` adds the
    parts per example (reshaped to ``shape``), ``sum`` adds their totals, ``mean``
    is ``sum_i total_i / denominator_i`` -- NaN if any denominator is 0, the
    zero-denominator rule of every loss.
    """
    if reduction == "none":
        total = parts[0][0]
        for rows, _ in parts[1:]:
            total = total + rows
        return to_result(total if shape is None else np.reshape(total, shape), result_dtype)
    totals = [np.sum(rows, dtype=np.float64) for rows, _ in parts]
    if reduction == "sum":
        value = sum(totals)
    elif any(d == 0 for _, d in parts):
        value = np.nan
    else:
        value = sum(t / d for t, (_, d) in zip(totals, parts))
    return to_result(value, result_dtype)[()]


def weighted_count(keep, weights=None) -> float:
    """``sum_n k_n s_n`` in float64: the ``mean`` denominator of every weighted loss.

    ``keep`` is a boolean mask (or None: every example kept) and ``weights``
    the per-example weights ``s_n`` (None: 1, so the result is the count of
    kept examples).  PyTorch's rule for class-index targets is this with
    ``s_n = w_{y_n}``; its rule for probability targets and the elementwise
    losses is the plain count.  Written once; every loss, kernel, HVP and
    convention calls it.
    """
    if weights is None:
        return float(np.count_nonzero(keep))
    w = np.asarray(weights)
    if keep is not None:
        w = w * keep
    return float(np.sum(w, dtype=np.float64))


def grad_scale(reduction: str, denominator: float) -> float:
    """Factor that turns d(sum of losses) into d(reduced loss)."""
    if reduction != "mean":
        return 1.0
    return 0.0 if denominator == 0 else 1.0 / float(denominator)
