r"""Independent oracles of the generalized JSD: JAX twin, mpmath, operand sizes.

Written from Liger Kernel's definition, never importing
:mod:`ce_reference.losses.generalized_jsd` (which uses other identities):
:math:`M = \beta P + (1-\beta) Q` with :math:`P = e^Y` the teacher and
:math:`Q = e^X` the student, elements
:math:`\beta P (Y - \log M) + (1-\beta) Q (X - \log M)`; :math:`P(Y - X)` at
:math:`\beta = 0` and :math:`Q(X - Y)` at :math:`\beta = 1`; rows whose
``targets`` equal ``ignore_index`` dropped, ``mean`` over the kept rows.

* The JAX twin takes ``log M = logaddexp(log beta + Y, log(1 - beta) + X)``
  (the form of Liger's fix of #769, PR #862, and of PR #1397).
* The mpmath oracle evaluates at the exact input values (:math:`P`, :math:`Q`
  never underflow in mpmath), without cancellation:
  :math:`r = X - \log M = -\operatorname{log1p}(\beta\,\operatorname{expm1}(d))`
  and :math:`s = Y - \log M = -\operatorname{log1p}((1-\beta)\operatorname{expm1}(-d))`
  with :math:`d = Y - X` (no difference of nearly equal logarithms); the
  element :math:`\beta P s + (1-\beta) Q r = M[\beta\psi(s) + (1-\beta)\psi(r)]`,
  :math:`\psi(a) = 1 + (a - 1)e^a \approx a^2/2` evaluated with
  :math:`2\log_2(1/|a|)` extra bits (the direct form loses that many when the
  student equals the teacher to :math:`|d|`); gradient
  :math:`(1-\beta) Q r`, :math:`Hv = (1-\beta) Q (r + \beta P/M) v`; at the ends
  :math:`P(Y - X)`, :math:`-P`, 0 and :math:`Q(X - Y)`, :math:`Q(X - Y + 1)`,
  :math:`Q(X - Y + 2)v` (the sums of three terms exact: :math:`X = -2,
  Y = -10^{-300}` cancels at any fixed precision); :math:`0 \cdot \infty = 0`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..spec import Oracle
from . import _jax as J
from . import _mp as M
from ._operands import Operands, class_last, reduce_operand, scale

#: Inputs beyond this magnitude (or infinite) are re-evaluated at the extreme precision.
EXTREME = 1e3


def generalized_jsd(student_log_probs, teacher_log_probs, *, beta=0.5, axis=-1,
                    ignore_index=None, targets=None, reduction="mean"):
    """Liger Kernel's generalized JSD written from its definition (``log M`` by ``logaddexp``)."""
    X, result = J.as_float(student_log_probs)
    axis = axis % X.ndim
    Y = jnp.asarray(teacher_log_probs, X.dtype)
    P, Q = jnp.exp(Y), jnp.exp(X)
    if beta == 0:
        el = J.mul0(P, Y - X)
    elif beta == 1:
        el = J.mul0(Q, X - Y)
    else:
        both = jnp.isneginf(X) & jnp.isneginf(Y)
        Xs, Ys = jnp.where(both, 0.0, X), jnp.where(both, 0.0, Y)   # M = 0 there: no log M
        logM = jnp.logaddexp(math.log(beta) + Ys, math.log1p(-beta) + Xs)
        el = beta * J.mul0(P, Y - logM) + (1 - beta) * J.mul0(Q, X - logM)
    rows = jnp.sum(el, axis=axis)
    if targets is not None and ignore_index is not None:
        keep = jnp.asarray(targets) != ignore_index
        rows = jnp.where(keep, rows, 0.0)
        denom = jnp.sum(keep)
    else:
        denom = rows.size
    return J.as_result(J.reduce(rows, reduction, denom), result)


def _psi(mp, a):
    r""":math:`\psi(a) = 1 + (a-1)e^a \ge 0` (:math:`\psi(-\infty) = 1`), without cancellation.

    For small :math:`|a|`, :math:`\psi(a) \approx a^2/2` is a difference of
    terms of size 1, which loses :math:`2\log_2(1/|a|)` bits: the direct form is
    evaluated with that many bits more and rounded once.
    """
    if a == mp.ninf:
        return mp.mpf(1)
    if a == 0:
        return mp.mpf(0)
    lost = max(0, int(2 * mp.log(1 / abs(a), 2))) + 16
    with mp.extraprec(lost):
        value = 1 + (a - 1) * mp.exp(a)
    return +value


def _exact_sum(mp, *terms):
    """The sum of float64 values (and small integers), exact, then rounded to the working
    precision: 2300 bits hold any sum of float64 numbers (exponents -1074 ... 1023)."""
    with mp.workprec(2300):
        total = mp.mpf(0)
        for t in terms:
            total += t
    return +total


def _element(mp, xv, yv, b, want):
    """``(L, dL/dX)`` (``want=1``) or ``(None, d2L/dX2)`` (``want=2``) of one element at the
    working precision."""
    X, Y = mp.mpf(xv), mp.mpf(yv)
    P, Q = mp.exp(Y), mp.exp(X)
    zero = mp.mpf(0)
    if b == 0:
        if want == 2:
            return None, zero
        return (zero if P == 0 else P * (Y - X)), -P
    if b == 1:
        if Q == 0:
            return zero, zero
        if want == 2:
            return None, Q * _exact_sum(mp, X, -Y, 2)
        return Q * (X - Y), Q * _exact_sum(mp, X, -Y, 1)
    if P == 0 and Q == 0:
        return zero, zero
    nb = 1 - b
    Mx = b * P + nb * Q
    d = Y - X
    r = -mp.log1p(b * mp.expm1(d))             # log(Q / M); -inf when Q = 0
    if want == 2:
        return None, (zero if Q == 0 else nb * Q * (r + b * P / Mx))
    s = -mp.log1p(nb * mp.expm1(-d))           # log(P / M); -inf when P = 0
    L = Mx * (b * _psi(mp, s) + nb * _psi(mp, r))
    return L, (zero if Q == 0 else nb * Q * r)


def _keep(case, R):
    labels, ignore = case.kwargs.get("targets"), case.kwargs.get("ignore_index")
    if labels is None or ignore is None:
        return np.ones(R, bool)
    return np.asarray(labels).reshape(-1) != ignore


def _run(mp, case, want):
    """Per-row losses, per-row lists of ``want`` (1: gradient, 2: Hessian diagonal), kept rows."""
    X, ax, batch = M.rows(case)
    Y, _, _ = M.rows(case, case.targets)
    R, C = X.shape
    keep = _keep(case, R)
    b = mp.mpf(float(case.kwargs.get("beta", 0.5)))
    losses, out = [], []
    for r in range(R):
        if not keep[r]:
            losses.append(mp.mpf(0))
            out.append([mp.mpf(0)] * C)
            continue
        parts = [_element(mp, X[r, c], Y[r, c], b, want) for c in range(C)]
        losses.append(mp.fsum(p[0] for p in parts) if want == 1 else None)
        out.append([p[1] for p in parts])
    return losses, out, (ax, batch, C), int(np.sum(keep))


def exact(mp, case):
    """Per-row JSD, the gradient of their sum (student's layout) and the kept rows."""
    losses, grads, (ax, batch, C), kept = _run(mp, case, 1)
    return losses, M.to_input_layout(grads, ax, batch, C), kept


def exact_hvp(mp, case):
    """``H v`` (the Hessian is diagonal) of the sum of the row losses, and the kept rows."""
    _, h, (ax, batch, C), kept = _run(mp, case, 2)
    V, _, _ = M.rows(case, case.v)
    rows = [[hk * mp.mpf(V[r, k]) if V[r, k] != 0 else mp.mpf(0) for k, hk in enumerate(row)]
            for r, row in enumerate(h)]
    return M.to_input_layout(rows, ax, batch, C), kept


def operands(case, v=None) -> Operands:
    r"""Magnitudes of the terms, including the first-order effect of rounding :math:`d = Y - X`.

    With :math:`a = \beta P/M` (float64, SciPy-free):

    * value (per row): :math:`\sum_c L + |d|\,\beta P |s|` (:math:`\partial L/\partial Y
      = \beta P s`); :math:`P|d|` at :math:`\beta = 0`, :math:`Q|d|` at :math:`\beta = 1`;
    * gradient: :math:`(1-\beta)Q(|r| + |d|\,a)` (:math:`\partial r/\partial d = -a`);
      :math:`P`; :math:`Q(1 + |d|)`;
    * :math:`Hv`: :math:`(1-\beta)Q(|r| + a + |d|\,a^2)|v|`; 0; :math:`Q(2 + |d|)|v|`.

    The JAX twin evaluates the textbook form (``X - logaddexp(...)``, products
    with ``log M``), whose rounding is a few eps of
    :math:`(P + Q)(|X| + |Y| + |\log M| + 2)` per element (value), and
    :math:`Q(|X| + |Y| + |\log M| + 3)` more in the gradient and the HVP.
    Ignored rows get 0.
    """
    ax, X = class_last(case)
    Y = np.moveaxis(np.asarray(case.targets, np.float64), ax, -1)
    vv = None if v is None else np.abs(np.moveaxis(np.asarray(v, np.float64), ax, -1))
    R = int(np.prod(X.shape[:-1]))
    keep = _keep(case, R).reshape(X.shape[:-1])
    b = float(case.kwargs.get("beta", 0.5))
    fin = (lambda z: np.where(np.isfinite(z), np.abs(z), 0.0))
    with np.errstate(all="ignore"):
        P, Q = np.exp(Y), np.exp(X)
        d = np.where(np.isneginf(X) & np.isneginf(Y), 0.0, Y - X)
        ad = np.abs(d)
        logM = np.logaddexp(np.log(b) + Y, np.log1p(-b) + X) if 0 < b < 1 else \
            np.where(b == 0, Y, X)
        if b == 0:
            val = np.where(P == 0, 0.0, P * ad)
            g, h = P, np.zeros_like(P)
        elif b == 1:
            val = np.where(Q == 0, 0.0, Q * ad)
            g = np.where(Q == 0, 0.0, Q * (1 + ad))
            h = np.where(Q == 0, 0.0, Q * (2 + ad))
        else:
            Mx = np.exp(logM)
            r, s = X - logM, Y - logM
            a = np.where(Mx == 0, 0.0, b * P / Mx)
            ad = np.where(a == 0, 0.0, ad)          # |d| a = 0 where a = 0 (d = -inf)
            xl = lambda p: np.where(p == 0, 0.0, p * np.log(p))      # noqa: E731
            L = np.abs(b * xl(P) + (1 - b) * xl(Q) - xl(Mx))
            val = np.where(np.isfinite(L), L, 0.0) + np.where(P == 0, 0.0, ad * b * P * np.abs(s))
            g = np.where(Q == 0, 0.0, (1 - b) * Q * (np.abs(r) + ad * a))
            h = np.where(Q == 0, 0.0, (1 - b) * Q * (np.abs(r) + a + ad * a * a))
        loose = fin(X) + fin(Y) + fin(logM)
        val_jax = val + np.where(P + Q == 0, 0.0, (P + Q) * (loose + 2))
        g_jax = g + np.where(Q == 0, 0.0, Q * (loose + 3))
        h_jax = h + np.where(Q == 0, 0.0, Q * (loose + 3))
    kc = keep[..., None]
    kept = float(np.sum(keep))
    s_ = scale(case, kept)

    def rows(el):
        return reduce_operand(case, np.where(keep, np.sum(el, axis=-1), 0.0), kept)

    def layout(el, times=1.0):
        return np.moveaxis(np.where(kc, el * times, 0.0) * s_, -1, ax)

    hv = hv_jax = None
    if vv is not None:
        hv, hv_jax = layout(h, vv), layout(h_jax, vv)
    return Operands(rows(val), layout(g), hv, rows(val_jax), layout(g_jax), hv_jax)


def extreme(case) -> bool:
    """Infinite entries, or entries beyond :data:`EXTREME`, in the student or the teacher."""
    for a in (case.x, case.targets):
        a = np.asarray(a, np.float64)
        if a.size and not (np.isfinite(a).all() and np.max(np.abs(a)) <= EXTREME):
            return True
    return False


ORACLE = Oracle(twin=generalized_jsd, exact=exact, exact_hvp=exact_hvp, operands=operands,
                extreme=extreme)
