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
    return dataclasses.replace(case, x=z, kwargs=kwargs, linear=None, domain="logits", axis=None,
                               arrays={k: "classes" for k in ("weight",) if k in kwargs})


def _mpf_matrix(mp, a):
    """A 2-D array as rows of mpf (exact values of floats; mpf entries kept, so that
    ``mpmath.diff`` can perturb one)."""
    a = np.asarray(a)
    a = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    return [[v if isinstance(v, mp.mpf) else mp.mpf(float(v)) for v in row] for row in a]


def _exact_logits(mp, hm, Wm, bm):
    """``z = h W^T + b`` exactly (``fsum`` of exact products); ``-inf`` bias entries mask."""
    z = np.empty((len(hm), len(Wm)), dtype=object)
    for n, h_row in enumerate(hm):
        for v, w_row in enumerate(Wm):
            z[n, v] = mp.fsum(a * w for a, w in zip(h_row, w_row)) + (0 if bm is None else bm[v])
    return z


def exact(mp, case):
    """Per-row losses, the gradients of their sum with respect to ``(input, linear_weight,
    linear_bias)`` (object arrays of mpf; None without a bias) and the denominator."""
    h_shape = np.shape(case.x)
    hm = _mpf_matrix(mp, case.x)
    Wm = _mpf_matrix(mp, case.kwargs["linear_weight"])
    b = case.kwargs.get("linear_bias")
    bm = None if b is None else _mpf_matrix(mp, np.reshape(b, (1, -1)))[0]
    z = _exact_logits(mp, hm, Wm, bm)
    W = np.asarray(case.kwargs["linear_weight"])
    targets = np.asarray(case.targets)
    targets = targets.reshape(-1) if targets.dtype.kind in "iu" else \
        targets.reshape(-1, W.shape[0])
    sub = dataclasses.replace(_softmax_case(case, z), targets=targets)
    losses, G, denom = softmax.exact(mp, sub)
    N, V, H = z.shape[0], z.shape[1], len(hm[0])
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
    return losses, (d_input.reshape(h_shape), d_weight, d_bias), denom


def operands(case, v=None) -> Operands:
    """Operands of linear cross-entropy, from softmax cross-entropy's at the logits.

    The logits ``z = h W^T + b`` are rounded (by any implementation) by up to a
    few eps of ``zeta = |h| |W|^T + |b|``; to first order that moves the
    gradient ``G`` at the logits by ``H dz`` (``H`` the Hessian of softmax
    cross-entropy, with every option's curvature), bounded by softmax's HVP
    operand at ``v = zeta``, and the value by ``sum |G| zeta``.  The gradients
    chain through the GEMMs: ``|G| |W|``, ``|G|^T |h|``, ``sum_n |G_n|``.  A
    masked class (bias ``-inf``) has probability 0, the exact gradient 0 and no
    rounding of its own.
    """
    h = np.asarray(case.x, np.float64)
    h2 = h.reshape(-1, h.shape[-1])
    W = np.asarray(case.kwargs["linear_weight"], np.float64)
    b = case.kwargs.get("linear_bias")
    b = None if b is None else np.asarray(b, np.float64)
    z = h2 @ W.T + (0 if b is None else b)
    b_size = 0 if b is None else np.where(np.isfinite(b), np.abs(b), 0.0)
    zeta = np.abs(h2) @ np.abs(W).T + b_size
    targets = np.asarray(case.targets)
    targets = targets.reshape(-1) if targets.dtype.kind in "iu" else \
        targets.reshape(-1, W.shape[0])
    ops = softmax.operands(dataclasses.replace(_softmax_case(case, z), targets=targets), zeta)
    G, G_jax = ops.grad + ops.hvp, ops.grad_jax + ops.hvp_jax
    # ops.grad carries the reduction's scale: the value moves by sum_v |G_v| zeta_v
    moved = np.sum(ops.grad * zeta, axis=-1)
    if np.ndim(ops.value):                         # "none": one per row, the batch's shape
        value = (ops.value + moved).reshape(h.shape[:-1])
        value_jax = (ops.value_jax + moved).reshape(h.shape[:-1])
    else:
        value, value_jax = ops.value + np.sum(moved), ops.value_jax + np.sum(moved)
    return Operands(value, _chained(G, h, h2, W, b), None,
                    value_jax, _chained(G_jax, h, h2, W, b), None)


def _chained(G, h, h2, W, b):
    """Operands of ``(d_input, d_linear_weight, d_linear_bias)`` from those of ``G``."""
    return ((G @ np.abs(W)).reshape(h.shape), G.T @ np.abs(h2),
            None if b is None else np.sum(G, axis=0))


def extreme(case) -> bool:
    h = np.asarray(case.x, np.float64)
    W = np.asarray(case.kwargs["linear_weight"], np.float64)
    z_max = float(np.max(np.abs(h.reshape(-1, h.shape[-1])) @ np.abs(W).T)) if h.size else 0.0
    return z_max > EXTREME_LOGIT


ORACLE = Oracle(twin=linear_cross_entropy, exact=exact, operands=operands, extreme=extreme)
