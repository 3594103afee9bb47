r"""Independent oracles of the negative log-likelihood: JAX twin, mpmath, operand sizes.

Written from PyTorch's definition (``torch/_refs/nn/functional``,
``_nll_loss_nd``): :math:`\ell_n = -w_{y_n} x_{n,y_n}` on kept rows,
``mean`` = the sum over the sum of the kept rows' :math:`w_{y_n}`; never
importing :mod:`ce_reference.losses.nll_loss`.  The loss is one product per
row, so the mpmath oracle is exact at any precision (``0 · (±inf) = 0`` for
a zero weight or an ignored row), its gradient :math:`-w_{y_n}` at the target
and its Hessian 0.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import class_last, reduce_operand, scale, tight

#: Inputs beyond this magnitude (or infinite) are re-evaluated at the extreme precision.
EXTREME = 1e3


def nll_loss(log_probs, targets, *, axis=-1, weight=None, ignore_index=None, reduction="mean"):
    """PyTorch's ``F.nll_loss`` written from its definition: ``-w[y] x[y]`` on kept rows."""
    x, result = J.as_float(log_probs)
    axis = axis % x.ndim
    t = jnp.asarray(targets)
    keep = jnp.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    idx = jnp.expand_dims(jnp.where(keep, t, 0), axis)
    xy = jnp.squeeze(jnp.take_along_axis(x, idx, axis=axis), axis)
    w = J.class_weight(weight, x.dtype, x.ndim, axis)
    wy = (jnp.ones(t.shape, x.dtype) if w is None else
          jnp.squeeze(jnp.take_along_axis(jnp.broadcast_to(w, x.shape), idx, axis=axis), axis))
    c = jnp.where(keep, wy, 0.0)
    rows = -J.mul0(c, xy)
    return J.as_result(J.reduce(rows, reduction, jnp.sum(c)), result)


def _coefficients(mp, case, C):
    """``(class ids, c_n as mpf)``: ``w_{y_n}`` on kept rows, 0 on ignored ones."""
    X, ax, batch = M.rows(case)
    idx, _ = M.target_rows(case, ax, C)
    wc = M.class_weights(mp, case, C)
    ignore = case.kwargs.get("ignore_index")
    c = [mp.mpf(0) if ignore is not None and idx[r] == ignore else wc[idx[r]]
         for r in range(len(idx))]
    return idx, c


def exact(mp, case):
    """Per-row losses ``-c_n x_{n,y_n}``, the gradient of their sum and ``sum_n c_n``."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    idx, c = _coefficients(mp, case, C)
    losses, grads = [], []
    for r in range(R):
        g = [mp.mpf(0)] * C
        if c[r] == 0:
            losses.append(mp.mpf(0))
        else:
            y = int(idx[r])
            losses.append(-c[r] * mp.mpf(X[r, y]))
            g[y] = -c[r]
        grads.append(g)
    return losses, M.to_input_layout(grads, ax, batch, C), mp.fsum(c)


def exact_hvp(mp, case):
    """``H v = 0`` (the loss is linear) and the ``mean`` denominator."""
    X, ax, batch = M.rows(case)
    R, C = X.shape
    _, c = _coefficients(mp, case, C)
    return M.to_input_layout([[mp.mpf(0)] * C for _ in range(R)], ax, batch, C), mp.fsum(c)


def operands(case, v=None):
    """Value ``|c_n x_{n,y_n}|`` per row, gradient ``c_n`` at the target; ``H v``: 0."""
    ax, x = class_last(case)
    C = x.shape[-1]
    t = np.asarray(case.targets).astype(np.int64)
    w = case.kwargs.get("weight")
    w = np.ones(C) if w is None else np.asarray(w, np.float64)
    ignore = case.kwargs.get("ignore_index")
    keep = np.ones(t.shape, bool) if ignore is None else t != ignore
    idx = np.where(keep, t, 0)
    c = np.where(keep, w[idx], 0.0)
    xy = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):
        per = np.where(c == 0, 0.0, np.abs(c * xy))
    denom = float(np.sum(c))
    g = np.zeros(x.shape)
    np.put_along_axis(g, idx[..., None], c[..., None], axis=-1)
    g = np.moveaxis(g * scale(case, denom), -1, ax)
    h = None if v is None else np.zeros(case.x.shape)
    return tight(reduce_operand(case, per, denom), g, h)


def extreme(case) -> bool:
    """Infinite entries or entries beyond :data:`EXTREME` in magnitude."""
    x = case.x.astype(np.float64)
    return bool(x.size and not (np.isfinite(x).all() and np.max(np.abs(x)) <= EXTREME))


ORACLE = Oracle(twin=nll_loss, exact=exact, exact_hvp=exact_hvp, operands=operands,
                extreme=extreme)
