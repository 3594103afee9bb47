"""Helpers of the JAX twins: the package's dtype policy and reductions, in JAX.

The twins take Python values for the static options (``axis``,
``ignore_index``, ``label_smoothing``, ``eps``, ``reduction``: static under
``jax.jit``) and arrays that may be traced.  They do **not** validate values
(that cannot be done under ``jit``): feed them inputs the NumPy functions
accept.  Call ``jax.config.update("jax_enable_x64", True)`` for float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import compute_dtypes


def as_float(x):
    """``(x in its compute dtype, result dtype)`` by the package's one dtype policy
    (:func:`ce_reference._validation.compute_dtypes`; bfloat16 computes in float32).
    Without ``jax_enable_x64`` JAX has no float64: its float32 stands in."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bfloat16:
        compute, result = np.dtype(np.float32), x.dtype
    else:
        compute, result = compute_dtypes(np.dtype(x.dtype))
    if not jax.config.jax_enable_x64:
        compute = np.dtype(np.float32) if compute == np.float64 else compute
        result = np.dtype(np.float32) if result == np.float64 else result
    return x.astype(compute), result


def as_result(value, result_dtype):
    return value.astype(result_dtype)


def reduce(per_example, reduction, denominator):
    if reduction == "none":
        return per_example
    total = jnp.sum(per_example)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / denominator
    raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")


def class_weight(weight, dtype, ndim, axis):
    """Per-class weights reshaped to broadcast along ``axis`` (None stays None)."""
    if weight is None:
        return None
    w = jnp.asarray(weight, dtype)
    shape = [1] * ndim
    shape[axis] = -1
    return w.reshape(shape)


def mul0(a, b):
    """``a * b`` with ``0 * anything = 0``, in the value *and* in its derivatives.

    The double ``where``: the branch that is not taken never sees ``inf`` or
    NaN, so ``jax.grad`` sends no NaN cotangent through it (a zero probability
    times ``log 0`` is 0, and so is its derivative).
    """
    zero = a == 0
    return jnp.where(zero, 0.0, a * jnp.where(zero, 0.0, b))
