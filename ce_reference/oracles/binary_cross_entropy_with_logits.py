r"""Independent oracles of binary cross-entropy on logits: JAX twin, mpmath, operand sizes.

Written from the definition
:math:`\ell = -w\,[\mathrm{pw}\,y \log\sigma(x) + (1-y)\log\sigma(-x)]`, never
importing :mod:`ce_reference.losses.binary_cross_entropy_with_logits`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special as sp

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import Operands, reduce_operand

#: |logit| > 36 makes sigma(x) round to 1 in float64: re-evaluated at the extreme precision.
EXTREME_LOGIT = 36.0


def binary_cross_entropy_with_logits(logits, targets, *, weight=None, pos_weight=None,
                                     reduction="mean"):
    """``-w [pw y log sigmoid(x) + (1 - y) log sigmoid(-x)]``; mean over all elements."""
    x, result = J.as_float(logits)
    y = jnp.asarray(targets, x.dtype)
    pos = y if pos_weight is None else jnp.asarray(pos_weight, x.dtype) * y
    loss = -(pos * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))
    if weight is not None:
        loss = jnp.asarray(weight, x.dtype) * loss
    loss = jnp.broadcast_to(loss, x.shape)
    return J.as_result(J.reduce(loss, reduction, x.size), result)


def exact(mp, case):
    """``softplus(x) = log1p(exp(x))``, ``sigma(-x) = 1 / (1 + exp(x))``; the gradient
    ``b sigma(x) - a sigma(-x)`` never forms ``sigma(x) - 1`` (at 50 digits
    ``1/(1 + e^-700) - 1`` is 0, not -9.86e-305)."""
    x = M.values(case.x).reshape(-1)
    y = M.broadcast_targets(case)
    w = M.broadcast_option(case, "weight")
    pw = M.broadcast_option(case, "pos_weight")
    losses, grads = [], []
    for i in range(x.size):
        xi, yi = mp.mpf(x[i]), mp.mpf(y[i])
        a = yi if pw is None else mp.mpf(pw[i]) * yi       # coefficient of softplus(-x)
        b = 1 - yi                                          # coefficient of softplus(x)
        ex, emx = mp.exp(xi), mp.exp(-xi)
        loss = a * mp.log1p(emx) + b * mp.log1p(ex)
        grad = b / (1 + emx) - a / (1 + ex)                 # b sigma(x) - a sigma(-x)
        if w is not None:
            loss, grad = loss * mp.mpf(w[i]), grad * mp.mpf(w[i])
        losses.append(loss)
        grads.append(grad)
    return losses, M.elementwise(grads, case.x.shape), x.size


def exact_hvp(mp, case):
    """``w (pw y + 1 - y) sigma(x) sigma(-x) v``, a product of positive terms."""
    x = M.values(case.x).reshape(-1)
    y = M.broadcast_targets(case)
    v = case.v.astype(np.float64).reshape(-1)
    w, pw = M.broadcast_option(case, "weight"), M.broadcast_option(case, "pos_weight")
    out = []
    for i in range(x.size):
        xi, yi = mp.mpf(x[i]), mp.mpf(y[i])
        a = yi if pw is None else mp.mpf(pw[i]) * yi
        curv = 1 / ((1 + mp.exp(xi)) * (1 + mp.exp(-xi)))        # sigma(x) sigma(-x)
        h = (a + 1 - yi) * curv * mp.mpf(v[i])
        out.append(h if w is None else h * mp.mpf(w[i]))
    return M.elementwise(out, case.x.shape), x.size


def operands(case, v=None) -> Operands:
    """Gradient operand ``w [(1-y) sigma(x) + pw y sigma(-x)]``; value: the value."""
    x = case.x.astype(np.float64)
    y = np.broadcast_to(case.targets.astype(np.float64), x.shape)
    w = np.broadcast_to(np.asarray(case.kwargs.get("weight", 1.0), np.float64), x.shape)
    pw = np.broadcast_to(np.asarray(case.kwargs.get("pos_weight", 1.0), np.float64), x.shape)
    a, b = pw * y, 1 - y
    s = 1.0 / x.size if case.kwargs["reduction"] == "mean" and x.size else 1.0
    loss = w * (a * np.logaddexp(0, -x) + b * np.logaddexp(0, x))
    val = reduce_operand(case, loss, x.size)
    sig, sign = sp.expit(x), sp.expit(-x)
    g = s * w * (b * sig + a * sign)
    h = h_jax = None
    if v is not None:
        h = s * w * (a + b) * sig * sign * np.abs(v.astype(np.float64))
        # JAX differentiates sigma(x) - 1 style expressions: ~eps absolute of the
        # largest curvature 1/4, not of sigma(x) sigma(-x) (0 at x = 40, exact 4e-18).
        h_jax = h + s * w * (a + b) * 0.25 * np.abs(v.astype(np.float64))
    # Implementations of the form w [(pw y + 1 - y) sigma(x) - pw y] (JAX, PyTorch,
    # textbook sigma(x) - y) cancel when confident: operands max(sigma, y), as p - y.
    g_loose = g + s * w * ((a + b) * sig + a)
    return Operands(val, g, h, val, g_loose, h_jax)


def extreme(case) -> bool:
    return M.logit_extreme(case, EXTREME_LOGIT)


# --------------------------------------------------------------------------- benchmark peers

def _textbook(z, t, workers):
    def f():
        loss = np.mean(np.logaddexp(0, z) - t * z)
        g = (1 / (1 + np.exp(-z)) - t) / z.size
        return loss, g
    return f


def _scipy(z, t, workers):
    def f():
        loss = -np.mean(t * sp.log_expit(z) + (1 - t) * sp.log_expit(-z))
        g = (sp.expit(z) - t) / z.size
        return loss, g
    return f


def _optax(z, t, workers):
    try:
        import optax
    except ImportError:
        return None
    if z.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)

    @jax.jit
    def vg(z, t):
        return jax.value_and_grad(lambda z: optax.sigmoid_binary_cross_entropy(z, t).mean())(z)

    zj, tj = jnp.asarray(z), jnp.asarray(t)
    return lambda: jax.block_until_ready(vg(zj, tj))


def _torch(z, t, workers):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(workers)
    zt = torch.from_numpy(z).requires_grad_(True)
    tt = torch.from_numpy(t)

    def f():
        zt.grad = None
        loss = F.binary_cross_entropy_with_logits(zt, tt)
        loss.backward()
        return loss, zt.grad
    return f


def peers():
    """Other implementations for the benchmarks: targets of the logits' shape, ``mean``."""
    return {"textbook NumPy": _textbook, "scipy.special": _scipy, "jax.jit + optax": _optax,
            "torch eager": _torch}


ORACLE = Oracle(twin=binary_cross_entropy_with_logits, exact=exact, exact_hvp=exact_hvp,
                operands=operands, extreme=extreme, peers=peers)
