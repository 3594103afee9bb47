"""Entry points of the compiled BCE (logits, probabilities) and categorical CE kernels."""

from __future__ import annotations

import math

import numpy as np

from . import _binary as Bn
from . import _categorical as Ct
from ._api_softmax import _EMPTY_1, _EMPTY_2, _EMPTY_3, _EMPTY_I
from ._driver import run

# Elements per block of the elementwise (BCE) kernels.
BCE_BLOCK = 1 << 14
# Target elements per block of the categorical kernels.
CCE_BLOCK = 1 << 14


def _rows_view(shape):
    if len(shape) == 0:
        return 1, 1
    K = shape[-1]
    return math.prod(shape[:-1]), K


def _operand(a, shape, R, K, dt):
    """A broadcast operand as a C-contiguous (R, K), (1, K), (R, 1) or (1, 1) array."""
    if a is None:
        return _EMPTY_2[dt], "none"
    a = np.asarray(a)
    if a.dtype != dt:
        a = a.astype(dt)
    if a.shape == tuple(shape):
        return np.ascontiguousarray(a).reshape(R, K), "full"
    nd = len(shape)
    ash = (1,) * (nd - a.ndim) + a.shape
    lead_ones = all(s == 1 for s in ash[:-1]) if nd else True
    last = ash[-1] if nd else 1
    if lead_ones and last == 1:
        return np.ascontiguousarray(a).reshape(1, 1), "scalar"
    if lead_ones and last == K:
        return np.ascontiguousarray(a).reshape(1, K), "row"
    if last == 1 and tuple(ash[:-1]) == tuple(shape[:-1]):
        return np.ascontiguousarray(a).reshape(R, 1), "col"
    return np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(R, K), "full"


def _elementwise(kernel, x, out, operands, extra, scale, loss_out, workers):
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    if not out.flags.c_contiguous or (loss_out is not None and not loss_out.flags.c_contiguous):
        raise ValueError("out and loss_out must be C-contiguous")
    dt = x.dtype
    shape = x.shape
    R, K = _rows_view(shape)
    ops = [_operand(a, shape, R, K, dt) for a in operands]
    if all(kind in ("full", "scalar", "none") for _, kind in ops) and R > 1:
        # everything elementwise or scalar: one flat row, blocks of BCE_BLOCK elements
        R, K = 1, R * K
        ops = [(a.reshape(1, K) if kind == "full" else a, kind) for a, kind in ops]
    x2 = x.reshape(R, K)
    o2 = out.reshape(R, K)
    lo2 = _EMPTY_2[dt] if loss_out is None else loss_out.reshape(R, K)
    BLK = BCE_BLOCK
    if K >= BLK:
        nb = R * (-(-K // BLK))
    else:
        nb = -(-R // (BLK // K))
    partial = np.zeros(nb)
    bad = run(kernel, (x2, *[a for a, _ in ops], o2, lo2, *extra, float(scale), partial, BLK),
              nb, workers, R * K)
    return bad, float(np.sum(partial)) if nb > 1 else float(partial[0])


def binary_cross_entropy_with_logits(logits, out, targets, *, weight=None, pos_weight=None,
                                     scale=1.0, loss_out=None, workers=None):
    """Compiled ``value_and_grad`` of BCE with logits; see ``compiled.__doc__``."""
    if logits.size == 0:
        return 0, 0.0
    return _elementwise(Bn.bce_logits, logits, out, (targets, weight, pos_weight), (), scale,
                        loss_out, workers)


def binary_cross_entropy(probs, out, targets, *, weight=None, eps=None, scale=1.0, loss_out=None,
                         workers=None):
    """Compiled ``value_and_grad`` of BCE on probabilities; see ``compiled.__doc__``."""
    if probs.size == 0:
        return 0, 0.0
    lo, hi, clip = _clip_bounds(eps, probs.dtype)
    return _elementwise(Bn.bce_probs, probs, out, (targets, weight), (clip, lo, hi), scale,
                        loss_out, workers)


def _clip_bounds(eps, dt):
    if eps is None:
        return 0.0, 1.0, False
    e = dt.type(eps)
    return float(e), float(dt.type(1) - e), True


def categorical_cross_entropy(probs, out, targets, *, axis=-1, weight=None, eps=None, scale=1.0,
                              rows=None, workers=None):
    """Compiled ``value_and_grad`` of categorical CE on probabilities; see ``compiled.__doc__``."""
    p = probs if probs.flags.c_contiguous else np.ascontiguousarray(probs)
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    dt = p.dtype
    shape = p.shape
    ax = axis % p.ndim
    C = shape[ax]
    pre = math.prod(shape[:ax])
    post = math.prod(shape[ax + 1:])
    N = pre * post
    prob = targets.dtype.kind == "f"
    if prob and not targets.flags.c_contiguous:
        targets = np.ascontiguousarray(targets)
    if rows is None:
        rows = np.empty(N)
    if N == 0:
        return 0, rows
    w = _EMPTY_1[dt] if weight is None else weight
    tgt = _EMPTY_I if prob else targets.reshape(-1)
    lo, hi, clip = _clip_bounds(eps, dt)
    inplace = out is p or np.may_share_memory(out, p)
    if post == 1:
        R = max(1, CCE_BLOCK // C)
        nb = -(-pre // R)
        q2 = targets.reshape(pre, C) if prob else _EMPTY_2[dt]
        bad = run(Ct.cce_rows, (p.reshape(pre, C), out.reshape(pre, C), inplace, tgt, q2, prob, w,
                                clip, lo, hi, float(scale), rows, R), nb, workers, N * C)
    else:
        Bc = max(16, CCE_BLOCK // C)
        nb = pre * -(-post // Bc)
        q3 = targets.reshape(pre, C, post) if prob else _EMPTY_3[dt]
        bad = run(Ct.cce_cols, (p.reshape(pre, C, post), out.reshape(pre, C, post), inplace, tgt,
                                q3, prob, w, clip, lo, hi, float(scale), rows, Bc), nb, workers,
                  N * C)
    return bad, rows
