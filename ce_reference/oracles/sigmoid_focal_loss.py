r"""Independent oracles of the sigmoid focal loss: JAX twin, mpmath, operand sizes.

Written from the definition (torchvision ``ops.sigmoid_focal_loss``)
:math:`\ell = w\,\alpha_t\,(1 - p_t)^\gamma\,\mathrm{ce}` with
:math:`1 - p_t = y\,\sigma(-x) + (1 - y)\,\sigma(x)`, never importing
:mod:`ce_reference.losses.sigmoid_focal_loss`.  The mpmath gradient and second derivative are
closed forms of that definition (derived in the loss module's docstring); ``tests/
test_sigmoid_focal_loss.py`` checks them against ``mpmath.diff`` of this module's own loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special as sp

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import Operands, reduce_operand, scale

#: |logit| > 36 makes sigma(x) round to 1 in float64: re-evaluated at the extreme precision.
EXTREME_LOGIT = 36.0


def sigmoid_focal_loss(logits, targets, *, alpha=0.25, gamma=2.0, weight=None, reduction="mean"):
    r"""``alpha_t (1 - p_t)^gamma ce`` (torchvision) with ``jax.nn.log_sigmoid``.

    ``(1 - p_t)^gamma`` is ``exp(gamma log(y sigma(-x) + (1 - y) sigma(x)))`` with the log of
    that sum by ``logaddexp`` of ``log_sigmoid`` values -- the definition, in log space so that
    ``jax.grad`` is finite at saturated logits (optax >= 0.2.5 does the same); ``gamma = 0``
    uses the factor 1.  Mean over all elements.
    """
    x, result = J.as_float(logits)
    y = jnp.broadcast_to(jnp.asarray(targets, x.dtype), x.shape)
    log_p, log_q = jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)     # log p, log(1 - p)
    loss = -(y * log_p + (1 - y) * log_q)
    if gamma != 0:
        log_1m_pt = jnp.logaddexp(jnp.log(y) + log_q, jnp.log1p(-y) + log_p)
        loss = jnp.exp(gamma * log_1m_pt) * loss
    if alpha is not None:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    if weight is not None:
        loss = jnp.asarray(weight, x.dtype) * loss
    return J.as_result(J.reduce(loss, reduction, x.size), result)


# --------------------------------------------------------------------------- mpmath

def _pieces(mp, case):
    """Per element: ``(X, Y, c, gamma, ce, ce', r, e^-x, e^x, sigma(x), sigma(-x))`` with
    ``c = w alpha_t (1 - p_t)^gamma``."""
    x = M.values(case.x).reshape(-1)
    y = M.broadcast_targets(case)
    w = M.broadcast_option(case, "weight")
    alpha, gamma = case.kwargs.get("alpha", 0.25), case.kwargs.get("gamma", 2.0)
    for i in range(x.size):
        X, Y = mp.mpf(x[i]), mp.mpf(y[i])
        em, ep = mp.exp(-X), mp.exp(X)
        sig, sigm = 1 / (1 + em), 1 / (1 + ep)                    # sigma(x), sigma(-x)
        ce = Y * mp.log1p(em) + (1 - Y) * mp.log1p(ep)            # y sp(-x) + (1 - y) sp(x)
        omp = Y * sigm + (1 - Y) * sig                            # 1 - p_t, positive
        m = mp.mpf(1) if gamma == 0 else mp.exp(mp.mpf(gamma) * mp.log(omp))
        at = mp.mpf(1) if alpha is None else mp.mpf(alpha) * Y + (1 - mp.mpf(alpha)) * (1 - Y)
        wi = mp.mpf(1) if w is None else mp.mpf(w[i])
        ce1 = (1 - Y) * sig - Y * sigm                            # sigma(x) - 1 as -sigma(-x)
        r = 1 / (1 + Y * em + (1 - Y) * ep)
        yield X, Y, wi * at * m, mp.mpf(gamma), ce, ce1, r, em, ep, sig, sigm


def exact(mp, case):
    """Per-element losses ``w alpha_t m ce``, the gradient
    ``w alpha_t m [ce' + gamma (1 - 2y) r ce]`` and the denominator ``x.size``."""
    losses, grads = [], []
    for X, Y, c, G, ce, ce1, r, *_ in _pieces(mp, case):
        losses.append(c * ce)
        grads.append(c * (ce1 + G * (1 - 2 * Y) * r * ce))
    return losses, M.elementwise(grads, case.x.shape), case.x.size


def exact_hvp(mp, case):
    """``w alpha_t m [s + 2 gamma L' ce' + gamma^2 L'^2 ce + gamma L'' ce] v`` with
    ``s = sigma(x) sigma(-x)``, ``L' = (1 - 2y) r`` and
    ``L'' = (1 - 2y) r^2 (y e^-x - (1 - y) e^x)``."""
    v = case.v.astype(np.float64).reshape(-1)
    out = []
    for i, (X, Y, c, G, ce, ce1, r, em, ep, sig, sigm) in enumerate(_pieces(mp, case)):
        L1 = (1 - 2 * Y) * r
        L2 = (1 - 2 * Y) * r * r * (Y * em - (1 - Y) * ep)
        h = sig * sigm + 2 * G * L1 * ce1 + G * G * L1 * L1 * ce + G * L2 * ce
        out.append(c * h * mp.mpf(v[i]))
    return M.elementwise(out, case.x.shape), case.x.size


# --------------------------------------------------------------------------- operands

def operands(case, v=None) -> Operands:
    r"""Operands: the terms of each result in absolute value, times ``1 + gamma |L|``.

    ``1 + gamma |L|`` is the condition of ``exp(gamma L)`` at a rounded ``L = log(1 - p_t)``
    (the log-space form the definition is evaluated in); the terms are

    * value ``w alpha_t m ce``;
    * gradient ``w alpha_t m [(1 - y) sigma(x) + y sigma(-x) + gamma |1 - 2y| r ce]``;
    * HVP ``w alpha_t m [s + 2 gamma r |1 - 2y| ((1 - y) sigma + y sigma(-x))
      + gamma^2 (1 - 2y)^2 r^2 ce + gamma |1 - 2y| r (1 - r) ce] |v|`` (``a + b = 1 - r``).

    ``r = exp(-logsumexp(0, log y - x, log(1 - y) + x))``.  The JAX twin differentiates
    ``logaddexp`` of log-sigmoids (the two terms of ``L'`` cancel to ``(1 - 2y) r``) and
    ``sigma(x) - y``-style expressions: its operands add ``gamma r ce (1 + |L|)``, the
    operands of ``sigma(x) - y`` and, for the HVP, ``(1 + gamma)^2 / 4``.
    """
    x = case.x.astype(np.float64)
    y = np.broadcast_to(case.targets.astype(np.float64), x.shape)
    w = np.broadcast_to(np.asarray(case.kwargs.get("weight", 1.0), np.float64), x.shape)
    alpha, gamma = case.kwargs.get("alpha", 0.25), case.kwargs.get("gamma", 2.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sig, sigm = sp.expit(x), sp.expit(-x)
        spx, spmx = np.logaddexp(0, x), np.logaddexp(0, -x)
        ce = np.where(y == 0, 0, y * spmx) + np.where(y == 1, 0, (1 - y) * spx)
        L = np.logaddexp(np.log(y) - spx, np.log1p(-y) - spmx)
        m = np.ones_like(x) if gamma == 0 else np.exp(gamma * L)
        at = np.ones_like(x) if alpha is None else alpha * y + (1 - alpha) * (1 - y)
        r = np.exp(-sp.logsumexp(np.stack([np.zeros_like(x), np.log(y) - x,
                                           np.log1p(-y) + x]), axis=0))
    Lf = np.where(np.isfinite(L), np.abs(L), 0.0)
    c = w * at * m * (1 + gamma * Lf)
    s = scale(case, x.size)
    a2y = np.abs(1 - 2 * y)
    ce1 = (1 - y) * sig + y * sigm
    val = reduce_operand(case, c * ce, x.size)
    g = s * c * (ce1 + gamma * a2y * r * ce)
    g_jax = g + s * c * (gamma * r * ce * (1 + Lf) + sig + y)
    h = h_jax = None
    if v is not None:
        av = np.abs(v.astype(np.float64))
        h = s * c * (sig * sigm + 2 * gamma * a2y * r * ce1 + (gamma * a2y * r) ** 2 * ce
                     + gamma * a2y * r * (1 - r) * ce) * av
        h_jax = h + s * c * ((1 + gamma) ** 2 * 0.25 + gamma * r * ce * (1 + Lf)) * av
    return Operands(val, g, h, val, g_jax, h_jax)


def extreme(case) -> bool:
    return M.logit_extreme(case, EXTREME_LOGIT)


# --------------------------------------------------------------------------- benchmark peers

def _optax(x, t, workers):
    try:
        import optax
    except ImportError:
        return None
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)

    @jax.jit
    def vg(z, t):
        return jax.value_and_grad(
            lambda z: optax.losses.sigmoid_focal_loss(z, t, alpha=0.25, gamma=2.0).mean())(z)

    xj, tj = jnp.asarray(x), jnp.asarray(t)
    return lambda: jax.block_until_ready(vg(xj, tj))


def peers():
    """optax's ``sigmoid_focal_loss`` (log space since 0.2.5) at our defaults (alpha 0.25,
    gamma 2), ``mean`` over the elements, for the benchmarks."""
    return {"jax.jit + optax": _optax}


ORACLE = Oracle(twin=sigmoid_focal_loss, exact=exact, exact_hvp=exact_hvp,
                operands=operands, extreme=extreme, peers=peers)
