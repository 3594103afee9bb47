"""Helpers of the mpmath oracles: inputs as mpf numbers, rows, leave-one-out sums.

Every oracle evaluates at the *exact* values of the (float32 or float64)
inputs: a float converts to an ``mpf`` without rounding.  ``case`` is a
verifier case (``x``, ``targets``, ``kwargs``, ``v``, ``clip_bounds``).
"""

from __future__ import annotations

import numpy as np


def values(a):
    """Float64 copy of an array, or the array itself when it already holds mpf objects."""
    a = np.asarray(a)
    return a if a.dtype == object else a.astype(np.float64)


def broadcast_option(case, name):
    """Option ``name`` broadcast to the input's shape and flattened (float64), or None."""
    v = case.kwargs.get(name)
    if v is None:
        return None
    return np.broadcast_to(np.asarray(v, dtype=np.float64), case.x.shape).reshape(-1)


def broadcast_targets(case):
    return np.broadcast_to(case.targets.astype(np.float64), case.x.shape).reshape(-1)


def class_axis(case) -> int:
    return case.kwargs.get("axis", -1) % case.x.ndim


def rows(case, a=None):
    """``(rows (R, C) of a or x, class axis, batch shape)``, class axis moved last."""
    ax = class_axis(case)
    xm = np.moveaxis(values(case.x if a is None else a), ax, -1)
    return xm.reshape(-1, xm.shape[-1]), ax, xm.shape[:-1]


def target_rows(case, ax, C):
    """``(class ids (R,), None)`` for index targets, ``(None, rows (R, C))`` otherwise."""
    t = np.asarray(case.targets)
    if t.dtype.kind in "iu":
        return t.reshape(-1).astype(np.int64), None
    return None, np.moveaxis(t.astype(np.float64), ax, -1).reshape(-1, C)


def class_weights(mp, case, C):
    """Per-class weights as mpf (1 without ``weight``)."""
    w = case.kwargs.get("weight")
    return [mp.mpf(1) if w is None else mp.mpf(float(w[c])) for c in range(C)]


def to_input_layout(row_lists, ax, batch, C):
    """Per-row lists (class-last order) -> object array of the input's shape."""
    arr = np.empty(batch + (C,), dtype=object)
    flat = arr.reshape(-1, C)
    for r, row in enumerate(row_lists):
        for c in range(C):
            flat[r, c] = row[c]
    return np.moveaxis(arr, -1, ax)


def elementwise(items, shape):
    """A flat list of mpf -> object array of ``shape``."""
    arr = np.empty(len(items), dtype=object)
    for i, v in enumerate(items):
        arr[i] = v
    return arr.reshape(shape)


def leave_one_out(mp, terms):
    """``[sum_{j != k} terms_j for k]`` from prefix and suffix sums (no cancellation)."""
    n = len(terms)
    prefix = [mp.mpf(0)] * (n + 1)
    for k in range(n):
        prefix[k + 1] = prefix[k] + terms[k]
    suffix = [mp.mpf(0)] * (n + 1)
    for k in range(n - 1, -1, -1):
        suffix[k] = suffix[k + 1] + terms[k]
    return [prefix[k] + suffix[k + 1] for k in range(n)]


def clipped(p, bounds):
    """``(clip(p), inside)`` for a clip ``[lo, hi]`` (ends included), or ``(p, True)``."""
    if bounds is None:
        return p, True
    inside = bounds[0] <= p <= bounds[1]
    return min(max(p, bounds[0]), bounds[1]), inside


def probability_extreme(case, threshold) -> bool:
    x = case.x.astype(np.float64)
    return bool(x.size and np.min(np.minimum(x, 1 - x)) < threshold)


def logit_extreme(case, threshold) -> bool:
    x = case.x.astype(np.float64)
    return bool(x.size and np.max(np.abs(x)) > threshold)
