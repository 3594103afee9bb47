"""Numerically stable building blocks (NumPy), each with the identity it relies on.

The functions that the complex-step oracle of the verifier differentiates
(``softplus``, ``log_softmax_parts``) are written to be *complex-safe*: every
branch is chosen on the real part, and no ``abs``/``max`` is applied to the
perturbed variable itself, so ``Im f(x + ih) / h`` is the derivative of the
very code that computes the loss.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np


def softplus(x: np.ndarray) -> np.ndarray:
    r"""``log(1 + exp(x))`` without overflow or cancellation.

    Identity: ``softplus(x) = max(x, 0) + log1p(exp(-|x|))``, computed as
    ``x + log1p(exp(-x))`` for ``Re x > 0`` and ``log1p(exp(x))`` otherwise
    (Mächler, "Accurately computing log(1 - exp(-|a|))", 2012, eq. 10).  The
    exponent is never positive, so nothing overflows; ``softplus(+inf) = inf``
    and ``softplus(-inf) = 0`` exactly.
    """
    pos = np.real(x) > 0
    with np.errstate(invalid="ignore"):  # inf - inf in the branch not taken
        e = np.exp(np.where(pos, -x, x))
    return np.where(pos, x, 0) + np.log1p(e)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, ``sigma(x) = 1 / (1 + exp(-x))``, for real ``x``.

    Identity: with ``e = exp(-|x|)`` (never overflows), ``sigma(x) = 1 / (1 + e)``
    for ``x >= 0`` and ``e / (1 + e)`` for ``x < 0``.  Unlike ``1 / (1 + exp(-x))``
    (and scipy's float32 ``expit``), this keeps full relative accuracy for very
    negative ``x``, down into the subnormal range (``sigma(-100)`` in float32 is
    3.7e-44, not 0).
    """
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def mul0(a, b):
    """``a * b`` with the convention ``0 * inf = 0`` (and ``0 * nan`` never arises).

    Used wherever a weight or a target probability multiplies ``-log p``, so
    that 0 · log 0 = 0 holds in the loss and in its derivative.
    """
    with np.errstate(invalid="ignore"):
        prod = np.multiply(a, b)
    return np.where(np.asarray(a) == 0, np.zeros((), dtype=prod.dtype), prod)


def log_softmax_parts(x: np.ndarray, with_lse: bool = False):
    r"""Pieces of a stable softmax over the last axis.

    Returns ``(neg_logp, p)`` (and ``lse = m + log1p(t)``, the log-sum-exp of
    each row with its last axis kept, when ``with_lse``) where, with
    ``m = max_c Re x_c`` and ``a`` the arg-max,

    * ``t = expm1(x_a - m) + sum_{c != a} exp(x_c - m)`` (``= s - 1``, exact
      for real input since ``x_a - m = 0``),
    * ``neg_logp_c = (m - x_c) + log1p(t) = logsumexp(x) - x_c``,
    * ``p = exp(x - m) / (1 + t) = softmax(x)``.

    Splitting the maximum's own term out of the sum and adding it back with
    ``log1p`` is the accurate log-sum-exp of Blanchard, Higham & Higham,
    IMA J. Numer. Anal. 41 (2021), doi:10.1093/imanum/draa038; it keeps
    ``-log p`` of a confident class accurate to a few ULP even when it is
    far below machine epsilon.  Both terms of ``neg_logp`` are non-negative,
    so the sum has no cancellation.  ``x_c = -inf`` gives ``p_c = 0`` and
    ``neg_logp_c = inf``.  Callers guarantee every row has a finite maximum.
    """
    m = np.max(np.real(x), axis=-1, keepdims=True)
    a = np.argmax(np.real(x), axis=-1)[..., None]
    with np.errstate(invalid="ignore", over="ignore"):  # (-inf) - m; -1e308 - 1e308 = -inf
        d = x - m
    e = np.exp(d)
    t_e = e.copy()
    np.put_along_axis(t_e, a, np.expm1(np.take_along_axis(d, a, axis=-1)), axis=-1)
    t = np.sum(t_e, axis=-1, keepdims=True)
    log1p_t = np.log1p(t)
    neg_logp = -d + log1p_t
    p = e / (1 + t)
    if with_lse:
        return neg_logp, p, m + log1p_t
    return neg_logp, p


def sech2(y):
    r"""``sech^2(y) = 4 e / (1 + e)^2`` with ``e = exp(-2|y|)``, for real ``y``.

    The derivative of ``tanh``.  ``1 - tanh(y)^2`` cancels completely once
    ``tanh(y)`` rounds to 1 (``|y| > 9`` in float32, ``> 19`` in float64), while
    this form is a product and quotient of positive numbers: a few ULP
    everywhere, 0 only where the true value underflows, never overflowing
    (``e <= 1``).  ``y = -inf`` (a masked logit) gives 0.
    """
    e = np.exp(-2 * np.abs(y))
    return 4 * e / ((1 + e) * (1 + e))


def soft_cap(x, cap):
    r"""``cap * tanh(x / cap)``, with ``-inf`` (a masked class) kept at ``-inf`` (complex-safe).

    A masked logit must not become ``-cap``: that would give its class the
    probability ``exp(-cap - lse) > 0``.
    """
    masked = np.isneginf(np.real(x))
    if not masked.any():
        return cap * np.tanh(x / cap)
    safe = np.where(masked, 0, x)
    return np.where(masked, -np.inf, cap * np.tanh(safe / cap))


def log1p(z):
    r"""``log(1 + z)``, accurate in both parts for complex ``z`` too.

    NumPy's complex ``log1p`` is ``log(1 + z)``: its real part ``log|1 + z|`` rounds to 0 for
    ``|z| < eps`` (``log1p(1e-17 + 0j)`` is ``0``).  Here the real part is
    ``log1p(2 Re z + |z|^2) / 2`` and the imaginary part ``atan2(Im z, 1 + Re z)``; real input
    goes to ``np.log1p``.  The complex step needs the real parts too: they multiply the
    imaginary parts of other factors (``(1 - p)^gamma`` times ``-log p``).
    """
    if not np.iscomplexobj(z):
        return np.log1p(z)
    a, b = np.real(z), np.imag(z)
    with np.errstate(invalid="ignore", over="ignore"):
        re = 0.5 * np.log1p(a * (2 + a) + b * b)
    return re + 1j * np.arctan2(b, 1 + a)


#: See :func:`softmax_complement`.
SoftmaxComplement = namedtuple("SoftmaxComplement", "a rest p neg_logp one_minus_p log_one_minus_p")


def softmax_complement(x: np.ndarray) -> SoftmaxComplement:
    r""":func:`log_softmax_parts` plus ``1 - p`` and ``log(1 - p)``, never by subtraction.

    Over the last axis, with ``m = max_c Re x_c``, ``a`` the arg-max (shape
    ``(..., 1)``), ``e = exp(x - m)`` and ``rest = sum_{j != a} e_j`` (a sum of
    non-negative terms), ``E = sum_j e_j = e_a + rest``:

    * ``neg_logp_c = (m - x_c) + log1p(E - 1)`` and ``p_c = e_c / E``
      (as :func:`log_softmax_parts`: ``E - 1 = expm1(x_a - m) + rest``);
    * ``1 - p_c``: ``1 - p_c`` off the arg-max, where ``p_c <= 1/2`` (``p_c <= p_a``
      and ``p_c + p_a <= 1``), so the subtraction loses nothing; ``rest / E`` at ``a``;
    * ``log(1 - p_c)``: ``log1p(-p_c)`` off the arg-max; at ``a``
      ``log(rest) - log1p(E - 1)`` for ``rest < 1`` (two non-positive terms) and
      ``-log1p(e_a / rest)`` for ``rest >= 1`` (the difference of two logs of nearly
      equal numbers when many classes share the mass is not formed).  ``-inf`` where
      ``rest = 0``: a row with one finite class, or one whose other classes
      underflow (``x = [1e4, 0]``: ``1 - p_a = e^{-1e4}``, below every float).

    Complex-safe (branches on real parts), so the complex-step oracle can run the
    same code; ``x_c = -inf`` gives ``p_c = 0``, ``1 - p_c = 1``, ``log(1 - p_c) = 0``.
    Callers guarantee every row has a finite maximum.
    """
    re = np.real(x)
    m = np.max(re, axis=-1, keepdims=True)
    a = np.argmax(re, axis=-1)[..., None]
    with np.errstate(invalid="ignore"):      # (-inf) - m is fine
        d = x - m
    e = np.exp(d)
    others = e.copy()
    np.put_along_axis(others, a, 0, axis=-1)
    rest = np.sum(others, axis=-1, keepdims=True)
    ea = np.take_along_axis(e, a, axis=-1)
    t = np.expm1(np.take_along_axis(d, a, axis=-1)) + rest      # E - 1, exact 0 + rest if real
    log1p_t = log1p(t)
    neg_logp = log1p_t - d
    E = 1 + t
    p = e / E
    one_minus_p = 1 - p
    np.put_along_axis(one_minus_p, a, rest / E, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):   # log 0 = -inf; the untaken branch
        lomp = log1p(-p)
        small = np.real(rest) < 1
        la = np.where(small, np.log(np.where(small, rest, 1)) - log1p_t,
                      -log1p(ea / np.where(small, 1, rest)))
    np.put_along_axis(lomp, a, la, axis=-1)
    return SoftmaxComplement(a, rest, p, neg_logp, one_minus_p, lomp)
