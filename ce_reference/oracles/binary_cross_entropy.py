r"""Independent oracles of binary cross-entropy on probabilities: JAX twin, mpmath, operands.

Written from the definition :math:`\ell = -w\,[y\log p + (1-y)\log(1-p)]`
(:math:`0 \log 0 = 0`, ``eps`` clips ``p`` first), never importing
:mod:`ce_reference.losses.binary_cross_entropy`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlog1py, xlogy
from scipy import special as sp

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import clip, reduce_operand, tight

#: Probabilities within this of 0 or 1 are re-evaluated at the extreme precision.
EXTREME_PROB = 1e-12


def binary_cross_entropy(probs, targets, *, weight=None, eps=None, reduction="mean"):
    """``-w [y log p + (1 - y) log(1 - p)]`` with ``0 log 0 = 0``; mean over all elements."""
    p, result = J.as_float(probs)
    y = jnp.asarray(targets, p.dtype)
    if eps is not None:
        p = jnp.clip(p, eps, 1 - eps)
    loss = -(xlogy(y, p) + xlog1py(1 - y, -p))
    if weight is not None:
        loss = jnp.asarray(weight, p.dtype) * loss
    loss = jnp.broadcast_to(loss, p.shape)
    return J.as_result(J.reduce(loss, reduction, p.size), result)


def exact(mp, case):
    """``log(1 - p) = log1p(-p)`` and ``(1-y)/(1-p) - y/p = (p - y) / (p (1-p))`` with
    ``p - y`` exact; the clip's derivative is 1 on ``[eps, 1 - eps]`` (ends included)."""
    p = M.values(case.x).reshape(-1)
    y = M.broadcast_targets(case)
    w = M.broadcast_option(case, "weight")
    losses, grads = [], []
    for i in range(p.size):
        pi, inside = M.clipped(p[i], case.clip_bounds)
        yi, pm = mp.mpf(y[i]), mp.mpf(pi)
        loss = 0
        if yi != 0:
            loss -= yi * mp.log(pm)
        if yi != 1:
            loss -= (1 - yi) * mp.log1p(-pm)
        grad = (pm - yi) / (pm * (1 - pm)) if inside else mp.mpf(0)
        if w is not None:
            loss, grad = loss * mp.mpf(w[i]), grad * mp.mpf(w[i])
        losses.append(loss)
        grads.append(grad)
    return losses, M.elementwise(grads, case.x.shape), p.size


def exact_hvp(mp, case):
    """``w [y / p^2 + (1 - y) / (1 - p)^2] v`` inside the clip, 0 outside."""
    p = M.values(case.x).reshape(-1)
    y = M.broadcast_targets(case)
    v = case.v.astype(np.float64).reshape(-1)
    w = M.broadcast_option(case, "weight")
    bounds = case.clip_bounds
    out = []
    for i in range(p.size):
        pi, yi = p[i], mp.mpf(y[i])
        if bounds is not None and not bounds[0] <= pi <= bounds[1]:
            out.append(mp.mpf(0))
            continue
        pm = mp.mpf(pi)
        curv = (0 if yi == 1 else (1 - yi) / (1 - pm) ** 2) + (0 if yi == 0 else yi / pm ** 2)
        h = curv * mp.mpf(v[i])
        out.append(h if w is None else h * mp.mpf(w[i]))
    return M.elementwise(out, case.x.shape), p.size


def operands(case, v=None):
    """Gradient operand ``w [(1-y)/(1-p) + y/p]``; value: the value; H v: ``|H| |v|``."""
    p = case.x.astype(np.float64)
    y = np.broadcast_to(case.targets.astype(np.float64), p.shape)
    w = np.broadcast_to(np.asarray(case.kwargs.get("weight", 1.0), np.float64), p.shape)
    p, inside = clip(case, p)
    with np.errstate(all="ignore"):   # infinite operands only where the result overflows
        t1 = np.where(y == 0, 0.0, y / p)
        t0 = np.where(y == 1, 0.0, (1 - y) / (1 - p))
        loss = -w * (sp.xlogy(y, p) + sp.xlog1py(1 - y, -p))
        s = 1.0 / p.size if case.kwargs["reduction"] == "mean" and p.size else 1.0
        g = np.where(inside, s * w * (t0 + t1), 0.0)
        h = None
        if v is not None:
            h = np.where(inside, s * w * (t0 / (1 - p) + t1 / p) * np.abs(v.astype(np.float64)), 0)
    return tight(reduce_operand(case, loss, p.size), g, h)


def extreme(case) -> bool:
    return M.probability_extreme(case, EXTREME_PROB)


ORACLE = Oracle(twin=binary_cross_entropy, exact=exact, exact_hvp=exact_hvp,
                operands=operands, extreme=extreme)
