"""Shared helpers of the verifier tests: the planted bugs."""

from __future__ import annotations

import dataclasses

import numpy as np

from ce_reference.registry import LOSSES


def planted(name, *, value=None, grad=None):
    """The registry spec of ``name`` with ``value``/``grad`` replaced (bugs planted); its
    ``value_and_grad`` is their pair, on one backend (it takes no ``backend=``)."""
    spec = LOSSES[name]
    value = value or spec.value
    grad = grad or spec.grad
    return dataclasses.replace(spec, value=value, grad=grad, backends=("numpy",),
                               value_and_grad=lambda *a, **k: (value(*a, **k), grad(*a, **k)))


# --------------------------------------------------------------------------- the planted bugs

def _ref(name):
    return LOSSES[name]


def scaled_grad(name, factor=1 + 1e-6):
    ref = _ref(name)
    return {"grad": lambda *a, **k: ref.grad(*a, **k) * np.asarray(factor, ref.grad(*a, **k).dtype)}


def _smooth_c_minus_1(x, targets, kw):
    """Index targets + label smoothing -> probability targets with ls/(C-1) off the target."""
    t = np.asarray(targets)
    ls = kw.get("label_smoothing", 0.0)
    if not ls or t.dtype.kind not in "iu" or kw.get("weight") is not None \
            or kw.get("ignore_index") is not None:
        return None
    ax = kw.get("axis", -1) % np.ndim(x)
    C = np.shape(x)[ax]
    if C < 2:
        return None
    onehot = np.moveaxis(np.eye(C)[t], -1, ax)
    q = (1 - ls) * onehot + ls / (C - 1) * (1 - onehot)          # BUG: C - 1, not C
    kw2 = {k: v for k, v in kw.items() if k != "label_smoothing"}
    return q.astype(np.asarray(x).dtype), kw2


def smoothing_over_c_minus_1():
    ref = _ref("softmax_cross_entropy")

    def wrap(f):
        def g(x, targets, **kw):
            conv = _smooth_c_minus_1(x, targets, kw)
            if conv is None:
                return f(x, targets, **kw)
            q, kw2 = conv
            return f(x, q, **kw2)    # probability targets: the same mean denominator (rows)
        return g

    return {"value": wrap(ref.value), "grad": wrap(ref.grad)}


def weighted_mean_over_n(name="softmax_cross_entropy"):
    ref = _ref(name)

    def wrap(f):
        def g(x, targets, **kw):
            t = np.asarray(targets)
            if kw.get("reduction", "mean") == "mean" and kw.get("weight") is not None \
                    and t.dtype.kind in "iu":
                kw2 = dict(kw, reduction="sum")
                return f(x, targets, **kw2) / max(t.size, 1)      # BUG: N, not sum of weights
            return f(x, targets, **kw)
        return g

    return {"value": wrap(ref.value), "grad": wrap(ref.grad)}


def missing_one_over_n(name="binary_cross_entropy_with_logits"):
    ref = _ref(name)

    def grad(x, targets, **kw):
        if kw.get("reduction", "mean") == "mean":
            kw = dict(kw, reduction="sum")                         # BUG: no 1/n
        return ref.grad(x, targets, **kw)

    return {"grad": grad}


def wrong_sign_class(name="softmax_cross_entropy", cls=0):
    ref = _ref(name)

    def grad(x, targets, **kw):
        g = np.array(ref.grad(x, targets, **kw))
        ax = kw.get("axis", -1) % g.ndim
        idx = [slice(None)] * g.ndim
        idx[ax] = cls
        g[tuple(idx)] *= -1                                       # BUG: one class flipped
        return g

    return {"grad": grad}


def off_by_one_class(name="softmax_cross_entropy"):
    ref = _ref(name)

    def wrap(f):
        def g(x, targets, **kw):
            t = np.asarray(targets)
            if t.dtype.kind in "iu":
                C = np.shape(x)[kw.get("axis", -1) % np.ndim(x)]
                ignore = kw.get("ignore_index")
                shifted = (t + 1) % C                             # BUG: class y + 1
                t = shifted if ignore is None else np.where(t == ignore, t, shifted)
            return f(x, t, **kw)
        return g

    return {"value": wrap(ref.value), "grad": wrap(ref.grad)}


PLANTED = {
    # name: (loss, builder, option sets that expose it)
    "grad x (1 + 1e-6)": ("softmax_cross_entropy", lambda: scaled_grad("softmax_cross_entropy"),
                          ("index",)),
    "smoothing over C - 1": ("softmax_cross_entropy", smoothing_over_c_minus_1,
                             ("index + label_smoothing",)),
    "weighted mean / N": ("softmax_cross_entropy", weighted_mean_over_n, ("index + weight",)),
    "missing 1/n": ("binary_cross_entropy_with_logits", missing_one_over_n, ("hard targets",)),
    "wrong sign, one class": ("softmax_cross_entropy", wrong_sign_class, ("index",)),
    "off-by-one class": ("softmax_cross_entropy", off_by_one_class, ("index",)),
}


# --------------------------------------------------------------------------- linear cross-entropy

def linear_backward_without_bias():
    """cut-cross-entropy #52's kind: the backward recomputes the logits without the bias."""
    ref = _ref("linear_cross_entropy")

    def grad(h, W, t, linear_bias=None, **kw):
        d_h, d_W, _ = ref.grad(h, W, t, **kw)                  # BUG: bias left out
        if linear_bias is None:
            return d_h, d_W, None
        logits_grad = ce_softmax_grad(h, W, t, **kw)
        return d_h, d_W, logits_grad.sum(axis=0).astype(d_h.dtype)

    return {"grad": grad}


def ce_softmax_grad(h, W, t, chunk_size=None, **kw):
    from ce_reference import softmax_cross_entropy_grad
    return softmax_cross_entropy_grad(h.reshape(-1, h.shape[-1]) @ W.T,
                                      np.asarray(t).reshape(-1), **kw)


def linear_smoothing_dropped():
    """Liger #243's kind: label smoothing not passed through to the backward."""
    ref = _ref("linear_cross_entropy")

    def grad(*a, label_smoothing=0.0, **kw):
        return ref.grad(*a, **kw)                               # BUG: no smoothing

    return {"grad": grad}


def linear_chunk_local_mean():
    """A chunked mean over each chunk's own rows, averaged over the chunks."""
    ref = _ref("linear_cross_entropy")

    def wrap(f, is_grad):
        def g(h, W, t, chunk_size=None, reduction="mean", **kw):
            if reduction != "mean" or chunk_size is None or h.ndim != 2:
                return f(h, W, t, chunk_size=chunk_size, reduction=reduction, **kw)
            starts = range(0, h.shape[0], chunk_size)
            parts = [f(h[s:s + chunk_size], W, t[s:s + chunk_size], reduction="mean", **kw)
                     for s in starts]                           # BUG: mean of chunk means
            if not is_grad:
                return np.mean(parts).astype(h.dtype)
            n = len(parts)
            d_h = np.concatenate([p[0] for p in parts]) / n
            d_W = sum(p[1] for p in parts) / n
            d_b = None if parts[0][2] is None else sum(p[2] for p in parts) / n
            return d_h.astype(h.dtype), d_W.astype(h.dtype), \
                None if d_b is None else d_b.astype(h.dtype)
        return g

    return {"value": wrap(ref.value, False), "grad": wrap(ref.grad, True)}


LINEAR_PLANTED = {
    "backward without the bias": (linear_backward_without_bias, ("index + bias",)),
    "label smoothing dropped": (linear_smoothing_dropped,
                                ("index + weight + ignore + smoothing + bias",)),
    "chunk-local mean": (linear_chunk_local_mean, ("index",)),
}
