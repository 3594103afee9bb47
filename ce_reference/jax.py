"""JAX twins of the four losses: the independent oracle for the NumPy gradients.

Each twin is written straight from the *definition* of its loss (log-softmax,
log-sigmoid, ``xlogy``), never from the hand-derived gradient formulas of the
NumPy implementation, so ``jax.grad`` of a twin checks those formulas
independently.  Signatures and conventions are the NumPy ones (see
:mod:`ce_reference`); results are ``jax.Array``.  The twins are
jit-compatible: ``axis``, ``ignore_index``, ``label_smoothing``, ``eps`` and
``reduction`` are Python values (static under ``jax.jit``), arrays may be
traced.  They do **not** validate values (that cannot be done under ``jit``):
feed them inputs that the NumPy functions accept.

Call ``jax.config.update("jax_enable_x64", True)`` before using them in
float64, as the verifier does.  Known differences from the NumPy functions,
all at points where the NumPy result is a documented convention: a ``mean``
with a zero denominator has a NaN gradient here (zero in NumPy), and at a clip
boundary ``jnp.clip`` splits the derivative (NumPy passes it through).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlog1py, xlogy

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "categorical_cross_entropy",
    "softmax_cross_entropy",
]


def _float(x):
    """The package's dtype policy: ints/bools -> default float, float16 -> float32."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.result_type(float)), x.dtype
    if x.dtype == jnp.float16 or x.dtype == jnp.bfloat16:
        return x.astype(jnp.float32), x.dtype
    return x, x.dtype


def _result(value, in_dtype):
    if jnp.issubdtype(in_dtype, jnp.floating):
        return value.astype(in_dtype)
    return value


def _reduce(per_example, reduction, denominator):
    if reduction == "none":
        return per_example
    total = jnp.sum(per_example)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / denominator
    raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")


def binary_cross_entropy(probs, targets, *, weight=None, eps=None, reduction="mean"):
    """``-w [y log p + (1 - y) log(1 - p)]`` with ``0 log 0 = 0``; mean over all elements."""
    p, in_dtype = _float(probs)
    y = jnp.asarray(targets, p.dtype)
    if eps is not None:
        p = jnp.clip(p, eps, 1 - eps)
    loss = -(xlogy(y, p) + xlog1py(1 - y, -p))
    if weight is not None:
        loss = jnp.asarray(weight, p.dtype) * loss
    loss = jnp.broadcast_to(loss, p.shape)
    return _result(_reduce(loss, reduction, p.size), in_dtype)


def binary_cross_entropy_with_logits(logits, targets, *, weight=None, pos_weight=None,
                                     reduction="mean"):
    """``-w [pw y log sigmoid(x) + (1 - y) log sigmoid(-x)]``; mean over all elements."""
    x, in_dtype = _float(logits)
    y = jnp.asarray(targets, x.dtype)
    pos = y if pos_weight is None else jnp.asarray(pos_weight, x.dtype) * y
    loss = -(pos * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))
    if weight is not None:
        loss = jnp.asarray(weight, x.dtype) * loss
    loss = jnp.broadcast_to(loss, x.shape)
    return _result(_reduce(loss, reduction, x.size), in_dtype)


def _class_w(weight, dtype, ndim, axis):
    if weight is None:
        return None
    w = jnp.asarray(weight, dtype)
    shape = [1] * ndim
    shape[axis] = -1
    return w.reshape(shape)


def categorical_cross_entropy(probs, targets, *, axis=-1, weight=None, eps=None,
                              reduction="mean"):
    """``-sum_c w_c q_c log p_c`` (probability targets) or ``-w_y log p_y`` (indices)."""
    p, in_dtype = _float(probs)
    axis = axis % p.ndim
    if eps is not None:
        p = jnp.clip(p, eps, 1 - eps)
    t = jnp.asarray(targets)
    w = _class_w(weight, p.dtype, p.ndim, axis)
    if jnp.issubdtype(t.dtype, jnp.integer):
        idx = jnp.expand_dims(t, axis)
        py = jnp.take_along_axis(p, idx, axis=axis)
        wy = jnp.ones_like(py) if w is None else jnp.take_along_axis(
            jnp.broadcast_to(w, p.shape), idx, axis=axis)
        rows = jnp.squeeze(-wy * jnp.log(py), axis)
        denom = jnp.sum(wy)
    else:
        q = t.astype(p.dtype)
        wq = q if w is None else q * w
        rows = -jnp.sum(xlogy(wq, p), axis=axis)
        denom = rows.size
    return _result(_reduce(rows, reduction, denom), in_dtype)


def softmax_cross_entropy(logits, targets, *, axis=-1, weight=None, ignore_index=None,
                          label_smoothing=0.0, reduction="mean"):
    """PyTorch's ``F.cross_entropy`` written from its definition with ``jax.nn.log_softmax``."""
    x, in_dtype = _float(logits)
    axis = axis % x.ndim
    C = x.shape[axis]
    logp = jax.nn.log_softmax(x, axis=axis)
    t = jnp.asarray(targets)
    w = _class_w(weight, x.dtype, x.ndim, axis)
    eps = label_smoothing
    if jnp.issubdtype(t.dtype, jnp.integer):
        keep = jnp.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        idx = jnp.expand_dims(jnp.where(keep, t, 0), axis)
        nll = -jnp.squeeze(jnp.take_along_axis(logp, idx, axis=axis), axis)
        wy = (jnp.ones(t.shape, x.dtype) if w is None else
              jnp.squeeze(jnp.take_along_axis(jnp.broadcast_to(w, x.shape), idx, axis=axis), axis))
        rows = (1 - eps) * wy * nll
        if eps:
            smooth = -jnp.sum(logp if w is None else w * logp, axis=axis)
            rows = rows + eps / C * smooth
        rows = jnp.where(keep, rows, 0.0)
        denom = jnp.sum(jnp.where(keep, wy, 0.0))
    else:
        q = t.astype(x.dtype)
        q = (1 - eps) * q + eps / C
        rows = -jnp.sum(jnp.where(q == 0, 0.0, (q if w is None else q * w) * jnp.where(
            q == 0, 0.0, logp)), axis=axis)
        denom = rows.size
    return _result(_reduce(rows, reduction, denom), in_dtype)
