r"""Independent oracles of linear cross-entropy: JAX twin, mpmath, operand sizes.

Written from the definition -- softmax cross-entropy of the logits
:math:`z = h W^{\mathsf T} + b` -- never importing
:mod:`ce_reference.losses.linear_cross_entropy`.  The mpmath oracle forms the
logits exactly (``fsum`` of exact products), hands them to the softmax
cross-entropy oracle, and applies the chain rule exactly:
:math:`\partial L/\partial h = G W`, :math:`\partial L/\partial W = G^{\mathsf T} h`,
:math:`\partial L/\partial b = \sum_n G_n`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import lax

from ..spec import Oracle
from . import softmax_cross_entropy as softmax
from ._operands import Operands

#: Logits beyond this are re-evaluated at the extreme precision (as softmax's).
EXTREME_LOGIT = softmax.EXTREME_LOGIT


def _compute_dtype(*arrays):
    """float32 when every floating argument is float32, float64 otherwise (bfloat16 and
    float16 are judged against float64, their exact values)."""
    return jnp.float32 if all(a.dtype == jnp.float32 for a in arrays if a is not None) \
        else jnp.float64


def linear_cross_entropy(input, linear_weight, targets, *, linear_bias=None, weight=None,
                         ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
                         reduction="mean", chunk_size=None):
    """``softmax_cross_entropy(input @ linear_weight.T + linear_bias, targets, ...)`` in JAX
    (``chunk_size`` is accepted and ignored: the twin forms the logits at once)."""
    h, W = jnp.asarray(input), jnp.asarray(linear_weight)
    b = None if linear_bias is None else jnp.asarray(linear_bias)
    dtype = _compute_dtype(h, W, b)
    h, W = h.astype(dtype), W.astype(dtype)
    z = jnp.matmul(h, W.T, precision=lax.Precision.HIGHEST)
    if b is not None:
        z = z + b.astype(dtype)
    return softmax.softmax_cross_entropy(z, targets, axis=-1, weight=weight,
                                         ignore_index=ignore_index,
                                         label_smoothing=label_smoothing, z_loss=z_loss,
                                         softcap=softcap, reduction=reduction)


def _softmax_case(case, z):
    """The softmax cross-entropy case at logits ``z`` (class axis last)."""
    kwargs = {k: v for k, v in case.kwargs.items()
              if k in ("weight", "ignore_index", "label_smoothing", "z_loss", "softcap",
                       "reduction")}
    kwargs["axis"] = -1
    return dataclasses.replace(case, x=z, kwargs=kwargs)


def _exact_logits(mp, h, W, b):
    N, H = h.shape
    V = W.shape[0]
    z = np.empty((N, V), dtype=object)
    hm = [[mp.mpf(float(h[n, k])) for k in range(H)] for n in range(N)]
    Wm = [[mp.mpf(float(W[v, k])) for k in range(H)] for v in range(V)]
    for n in range(N):
        for v in range(V):
            z[n, v] = mp.fsum(hm[n][k] * Wm[v][k] for k in range(H)) + (
                0 if b is None else mp.mpf(float(b[v])))
    return z, hm, Wm


def exact(mp, case):
    """Per-row losses, the gradients of their sum with respect to ``(input, linear_weight,
    linear_bias)`` (object arrays of mpf; None without a bias) and the denominator."""
    h = np.asarray(case.x, np.float64)
    h2 = h.reshape(-1, h.shape[-1])
    W = np.asarray(case.kwargs["linear_weight"], np.float64)
    b = case.kwargs.get("linear_bias")
    b = None if b is None else np.asarray(b, np.float64)
    z, hm, Wm = _exact_logits(mp, h2, W, b)
    targets = np.asarray(case.targets)
    targets = targets.reshape(-1) if targets.dtype.kind in "iu" else \
        targets.reshape(-1, W.shape[0])
    sub = dataclasses.replace(_softmax_case(case, z), targets=targets)
    losses, G, denom = softmax.exact(mp, sub)
    N, V, H = z.shape[0], z.shape[1], h2.shape[1]
    d_input = np.empty((N, H), dtype=object)
    for n in range(N):
        for k in range(H):
            d_input[n, k] = mp.fsum(G[n, v] * Wm[v][k] for v in range(V))
    d_weight = np.empty((V, H), dtype=object)
    for v in range(V):
        for k in range(H):
            d_weight[v, k] = mp.fsum(G[n, v] * hm[n][k] for n in range(N))
    d_bias = None
    if b is not None:
        d_bias = np.empty(V, dtype=object)
        for v in range(V):
            d_bias[v] = mp.fsum(G[n, v] for n in range(N))
    return losses, (d_input.reshape(h.shape), d_weight, d_bias), denom


def operands(case, v=None) -> Operands:
    """The softmax operands at the float64 logits, plus the logits' own rounding
    (``|h| |W|^T + |b|`` times the sensitivity ``S p``), chained through the GEMMs:
    ``|G| |W|``, ``|G|^T |h|``, ``sum |G|``."""
    h = np.asarray(case.x, np.float64)
    h2 = h.reshape(-1, h.shape[-1])
    W = np.asarray(case.kwargs["linear_weight"], np.float64)
    b = case.kwargs.get("linear_bias")
    b = None if b is None else np.asarray(b, np.float64)
    z = h2 @ W.T + (0 if b is None else b)
    z_operand = np.abs(h2) @ np.abs(W).T + (0 if b is None else np.abs(b))
    targets = np.asarray(case.targets)
    targets = targets.reshape(-1) if targets.dtype.kind in "iu" else \
        targets.reshape(-1, W.shape[0])
    ops = softmax.operands(dataclasses.replace(_softmax_case(case, z), targets=targets))
    S = ops.grad                                   # |G|'s operand at the logits
    G = S + np.abs(S) * z_operand                  # plus the logits' rounding through exp
    value = ops.value + np.sum(np.abs(S) * z_operand, axis=-1).reshape(np.shape(ops.value)) \
        if np.ndim(ops.value) else ops.value + np.sum(np.abs(S) * z_operand)
    value_jax = value + (ops.value_jax - ops.value)
    grads = ((G @ np.abs(W)).reshape(h.shape), G.T @ np.abs(h2),
             None if b is None else np.sum(G, axis=0))
    return Operands(value, grads, None, value_jax, grads, None)


def extreme(case) -> bool:
    h = np.asarray(case.x, np.float64)
    W = np.asarray(case.kwargs["linear_weight"], np.float64)
    z_max = float(np.max(np.abs(h.reshape(-1, h.shape[-1])) @ np.abs(W).T)) if h.size else 0.0
    return z_max > EXTREME_LOGIT


ORACLE = Oracle(twin=linear_cross_entropy, exact=exact, operands=operands, extreme=extreme)
