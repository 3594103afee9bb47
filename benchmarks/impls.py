"""The implementations timed side by side.

Each factory takes the NumPy inputs and returns a zero-argument callable that
computes the loss and the gradient of the mean loss with respect to the
logits (the whole forward + backward), or ``None`` when its library is not
installed.  Inputs are converted to the library's arrays once, outside the
timed call; JAX functions are compiled in the warm-up call (compile time is
excluded) and synchronised with ``block_until_ready``.
"""

from __future__ import annotations

import numpy as np
from scipy import special as sp

import ce_reference as ce


# --------------------------------------------------------------------------- softmax CE

def sm_floor(x, y, workers):
    g = np.empty_like(x)
    return lambda: np.copyto(g, x)


def sm_fused(x, y, workers):
    return lambda: ce.softmax_cross_entropy_value_and_grad(x, y, workers=workers)


def sm_fused_out(x, y, workers):
    g = np.empty_like(x)
    return lambda: ce.softmax_cross_entropy_value_and_grad(x, y, out=g, workers=workers)


def sm_textbook(x, y, workers):
    """The classic NumPy recipe: softmax, one-hot, clip, ``p - onehot``."""
    def f():
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        onehot = np.zeros_like(p)
        onehot[np.arange(len(y)), y] = 1
        eps = np.finfo(x.dtype).eps
        loss = -np.mean(np.sum(onehot * np.log(np.clip(p, eps, 1 - eps)), axis=1))
        g = (p - onehot) / len(y)
        return loss, g
    return f


def sm_scipy(x, y, workers):
    def f():
        lp = sp.log_softmax(x, axis=1)
        r = np.arange(len(y))
        loss = -np.mean(lp[r, y])
        g = np.exp(lp)
        g[r, y] -= 1
        g /= len(y)
        return loss, g
    return f


def sm_jax(x, y, workers):
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)

    @jax.jit
    def vg(z, labels):
        return jax.value_and_grad(
            lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean())(z)

    xj, yj = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    return lambda: jax.block_until_ready(vg(xj, yj))


def sm_torch(x, y, workers):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(workers)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.from_numpy(y.astype(np.int64))

    def f():
        xt.grad = None
        loss = F.cross_entropy(xt, yt)
        loss.backward()
        return loss, xt.grad
    return f


# --------------------------------------------------------------------------- BCE with logits

def bce_floor(z, t, workers):
    g = np.empty_like(z)
    return lambda: np.copyto(g, z)


def bce_fused(z, t, workers):
    return lambda: ce.binary_cross_entropy_with_logits_value_and_grad(z, t, workers=workers)


def bce_fused_out(z, t, workers):
    g = np.empty_like(z)
    return lambda: ce.binary_cross_entropy_with_logits_value_and_grad(z, t, out=g,
                                                                      workers=workers)


def bce_textbook(z, t, workers):
    def f():
        loss = np.mean(np.logaddexp(0, z) - t * z)
        g = (1 / (1 + np.exp(-z)) - t) / z.size
        return loss, g
    return f


def bce_scipy(z, t, workers):
    def f():
        loss = -np.mean(t * sp.log_expit(z) + (1 - t) * sp.log_expit(-z))
        g = (sp.expit(z) - t) / z.size
        return loss, g
    return f


def bce_jax(z, t, workers):
    try:
        import jax
        import jax.numpy as jnp
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


def bce_torch(z, t, workers):
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


# name -> (factory, memory measurable with tracemalloc)
SOFTMAX = {
    "np.copyto (floor)": (sm_floor, True),
    "ce_reference fused": (sm_fused, True),
    "ce_reference fused, out=": (sm_fused_out, True),
    "textbook NumPy": (sm_textbook, True),
    "scipy.special": (sm_scipy, True),
    "jax.jit + optax": (sm_jax, False),
    "torch eager": (sm_torch, False),
}
BCE = {
    "np.copyto (floor)": (bce_floor, True),
    "ce_reference fused": (bce_fused, True),
    "ce_reference fused, out=": (bce_fused_out, True),
    "textbook NumPy": (bce_textbook, True),
    "scipy.special": (bce_scipy, True),
    "jax.jit + optax": (bce_jax, False),
    "torch eager": (bce_torch, False),
}
FUSED = "ce_reference fused"
FLOOR = "np.copyto (floor)"
