"""The value helpers every input generator is built from.

Logits at a scale, rows of extreme logits (one dominant logit, all equal,
+-1e4, exp's overflow thresholds, tiny spreads, an unlikely target),
probabilities near 0 and 1 and around a clip boundary, Dirichlet rows,
weights.  The verifier's rows (:mod:`.sweep`) and the framework audits'
named regions (:mod:`.regions`) draw from these; a helper never depends on
a loss.  Weights come from :func:`ce_reference.options.mixed_weights`, the
sampler the loss options use.
"""

from __future__ import annotations

import numpy as np

from ..options import CLIP_EPS, mixed_weights

LOGIT_SCALES = (1.0, 3.0, 10.0, 30.0)
# Dominant-logit magnitudes: sigma saturates in float64 near 36.7, exp overflows
# at 88.72 (float32) and 709.78 (float64); 745 underflows exp(-x) to 0; 1e4 is far out.
DOMINANT = (20.0, 30.0, 36.7, 40.0, 88.7, 100.0, 709.78, 745.0, 1e4)
#: Magnitudes of the elementwise extremes (signs drawn separately).
ELEMENT_EXTREME = (0.0, 1e-8, 1.0, 5.0, 20.0, 30.0, 36.7, 40.0, 88.7, 100.0, 709.78, 745.0, 1e4)
#: Values of an all-equal row (possibly huge: only the shift matters).
ALL_EQUAL = (0.0, 5.0, 88.7, 709.78, -1e4, 1e4)
#: Logits at exp's overflow and underflow thresholds of both dtypes, and beyond.
EXP_THRESHOLDS = (-709.78, -88.72, 0.0, 88.72, 709.78, 745.0)

#: The extreme row patterns, in the order the verifier's ``extreme`` region draws them.
ROW_PATTERNS = ("dominant right", "dominant wrong", "all equal", "±1e4", "exp thresholds",
                "tiny spread", "unlikely right")


def normal(rng, shape, scale):
    """``N(0, scale)`` logits (float64)."""
    return rng.normal(0.0, scale, shape)


def extreme_row(rng, row, pattern, right, L):
    """Overwrite one row of logits (class axis last, in place) with an extreme pattern.

    ``right`` is the row's target class, ``L`` the dominant magnitude
    (one of :data:`DOMINANT`).  With a single class "dominant wrong" becomes
    "unlikely right" (there is no wrong class).
    """
    C = row.shape[-1]
    if pattern == "dominant wrong" and C == 1:
        pattern = "unlikely right"
    if pattern == "dominant right":                       # confident and right
        row[right] = L
    elif pattern == "dominant wrong":                     # confident and wrong
        row[(right + 1 + rng.integers(0, C - 1)) % C] = L
    elif pattern == "all equal":                          # all equal, possibly huge
        row[:] = rng.choice(ALL_EQUAL)
    elif pattern == "±1e4":
        row[:] = rng.choice([-1e4, 0.0, 1e4], size=C)
    elif pattern == "exp thresholds":                     # near exp over/underflow
        row[:] = rng.choice(EXP_THRESHOLDS, size=C)
    elif pattern == "tiny spread":
        row[:] = 1e-8 * rng.normal(size=C)
    elif pattern == "unlikely right":                     # one very unlikely class
        row[right] = -L
    else:
        raise ValueError(f"unknown row pattern {pattern!r}; expected one of {ROW_PATTERNS}")
    return row


def extreme_rows(rng, mshape, right, pattern=None):
    """Rows (class axis last) of ``N(0, 1)`` logits overwritten by extreme patterns.

    ``pattern=None`` draws a pattern and a magnitude per row (the verifier's
    ``extreme`` region); a named pattern is applied to every row, each with its
    own magnitude from :data:`DOMINANT`.
    """
    C = mshape[-1]
    x = rng.normal(0.0, 1.0, mshape).reshape(-1, C)
    right = np.asarray(right).reshape(-1)
    for r in range(x.shape[0]):
        p = ROW_PATTERNS[rng.integers(0, len(ROW_PATTERNS))] if pattern is None else pattern
        L = float(rng.choice(DOMINANT))
        extreme_row(rng, x[r], p, right[r], L)
    return x.reshape(mshape)


def exp_overflow(dtype) -> float:
    """``log(finfo(dtype).max)``: the logit at which ``exp`` overflows in ``dtype``."""
    return float(np.log(np.finfo(np.dtype(dtype)).max))


def near_overflow(rng, shape, dtype):
    """Logits within 3 of ``±exp_overflow(dtype)`` (on both sides of the threshold)."""
    return rng.choice([-1.0, 1.0], shape) * exp_overflow(dtype) + rng.uniform(-3, 3, shape)


def log_softmax(z):
    """``log_softmax`` along the last axis (``-inf`` stays ``-inf``)."""
    m = np.max(z, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        d = z - m
    return d - np.log(np.sum(np.exp(d), axis=-1, keepdims=True))


def log(p):
    """``log`` with ``log 0 = -inf`` and no warning."""
    with np.errstate(divide="ignore"):
        return np.log(p)


# --------------------------------------------------------------------------- probabilities

def tiny_prob(dtype):
    """The smallest probability the generators use (a normal number of ``dtype``)."""
    return 1e-300 if np.dtype(dtype) == np.float64 else 1e-37


def near_01_pool(dtype):
    """Probabilities from ``tiny_prob`` up to ``nextafter(1, 0)`` in ``dtype``."""
    dtype = np.dtype(dtype)
    below1 = np.nextafter(dtype.type(1), dtype.type(0))
    if dtype == np.float64:
        vals = [1e-300, 1e-30, 1e-12, 1e-7, 0.5, 1 - 1e-7, 1 - 1e-12, below1]
    else:
        vals = [1e-37, 1e-30, 1e-12, 1e-7, 0.5, 1 - 2.0 ** -20, below1]
    return np.array(vals, dtype=dtype)


def clip_bounds(dtype, eps=CLIP_EPS):
    """``eps`` and ``1 - eps`` as the reference computes them in ``dtype`` (and as JAX in f64)."""
    dtype = np.dtype(dtype)
    lo = dtype.type(eps)
    hi = dtype.type(1) - lo
    return (lo, dtype.type(eps)), (hi, dtype.type(1 - eps))


def clip_pool(dtype, eps=CLIP_EPS):
    """Probabilities at, just inside and just outside ``[eps, 1 - eps]``, and 0, 1/4, 1/2, 1."""
    (lo, _), (hi, _) = clip_bounds(dtype, eps)
    lo64, hi64 = float(lo), float(hi)
    cands = [lo64, hi64, lo64 * (1 + 1e-3), lo64 * (1 - 1e-3), hi64 - 1e-3 * lo64,
             1 - (1 - hi64) * (1 - 1e-3) * 0.5, lo64 / 10, lo64 * 10, 0.0, 1.0, 0.5, 0.25]
    return np.array(cands, dtype=np.dtype(dtype))


def kink_mask(p, dtype):
    """Elements of ``p`` within 4 ULP of a clip boundary (either dtype's rounding), or None."""
    dtype = np.dtype(dtype)
    (lo, lo_b), (hi, hi_b) = clip_bounds(dtype)
    m = np.zeros(p.shape, bool)
    for b in (lo, lo_b, hi, hi_b):
        m |= np.abs(p.astype(np.float64) - float(b)) <= 4 * float(np.spacing(dtype.type(b)))
    return m if m.any() else None


def clip_open(p, dtype):
    """Keep probabilities strictly inside (0, 1) after the cast to ``dtype``."""
    dtype = np.dtype(dtype)
    lo = dtype.type(tiny_prob(dtype))
    hi = np.nextafter(dtype.type(1), dtype.type(0))
    return np.clip(p, lo, hi).astype(dtype)


def uniform_probs(rng, shape, dtype):
    """Uniform probabilities, strictly inside (0, 1) in ``dtype``."""
    return clip_open(rng.uniform(0.0, 1.0, shape).astype(dtype), dtype)


def dirichlet_rows(rng, n, C, alpha):
    """``n`` Dirichlet(alpha) rows of ``C`` classes (float64); ``C = 1`` gives ones."""
    if C == 1:
        return np.ones((n, 1))
    return rng.dirichlet(np.full(C, alpha), size=n)


def soft_rows(rng, mshape, nrows, C, i):
    """Soft target rows (Dirichlet, alpha cycling 0.1/1/10 with ``i``), 10% all-zero rows."""
    alpha = (0.1, 1.0, 10.0)[i % 3]
    q = dirichlet_rows(rng, nrows, C, alpha).reshape(mshape)
    zero_rows = rng.uniform(size=mshape[:-1]) < 0.1
    return np.where(zero_rows[..., None], 0.0, q)


# --------------------------------------------------------------------------- weights

def weights(rng, shape, dtype):
    """:func:`~ce_reference.options.mixed_weights` with at least one positive entry
    (a weighted mean needs a positive denominator)."""
    w = mixed_weights(rng, shape, dtype)
    flat = w.reshape(-1)
    if flat.size and not flat.any():
        flat[rng.integers(flat.size)] = 1
    return w
