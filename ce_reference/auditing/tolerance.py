r"""The one tolerance scheme of every audit: errors in eps of the operands.

An audited result ``got`` is compared with the reference's ``expected``
element by element, in units of the machine epsilon of the audited dtype
times the *operand* of the element -- the size of the terms the exact
result is made of:

.. math::

    \mathrm{err}_i = \frac{|got_i - expected_i|}{\varepsilon_{\mathrm{dtype}}\;
    \mathrm{operand}_i}.

Where a loss's oracle gives operand arrays (``ce_reference.audit``: the
loss's ``value_jax`` / ``grad_jax`` operands, see
:mod:`ce_reference.oracles._operands`) the operand is elementwise; where an
audit has only a scalar operand scale (the framework audits: the larger of
the reference's largest entry and the size of the operands, see
:func:`ce_reference.frameworks._core.operand_scales`) the same formula runs
with that scalar, which makes it normwise.  Either way a confident
prediction's ``p - 1`` -- tiny, but the difference of operands of size 1 --
is judged against its operands, as no working-precision implementation can
do better.

Non-finite values: where ``expected`` is NaN, ``got`` must be NaN; where it
is ``±inf``, ``got`` must equal it; where it is finite, ``got`` must be finite
(otherwise the error is infinite).  Differences below the dtype's smallest
normal number count as zero (subnormal results carry no relative precision).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._format import fmt_eps

#: Largest accepted error, in eps of the audited dtype times the operand.  Correct
#: implementations agree with the reference to a few eps in float64 (PyTorch within
#: 2 eps of the operands, the JAX twins within ~128 because XLA's log1p is not
#: correctly rounded), and an unfused float32 log-softmax plus a float32 sum over at
#: most ~100 terms stays within ~100 eps.  256 eps leaves head-room for that and for
#: libm differences, yet it is 5.7e-14 relative in float64 -- an implementation off by
#: 1e-9 relative is 4.5e6 eps off, a MISMATCH -- and 3.1e-5 in float32, 30 times below
#: the smallest convention difference the framework audits must tell apart (label
#: smoothing eps/C vs eps/(C - 1) with eps = 0.1, C <= 11: >= 1e-3 of the loss).
TOL_EPS = 256.0


class Measure(NamedTuple):
    """Worst error of one array (eps units), the index of its worst element, and a
    ``got ... expected ...`` sentence about that element (empty when it is within
    ``tol``)."""

    worst: float
    index: tuple | None
    detail: str


def tolerance_eps(dtype, rtol=None) -> float:
    """The tolerance in eps of ``dtype``: :data:`TOL_EPS`, or ``rtol`` (relative to the
    operand) converted to eps units."""
    if rtol is None:
        return TOL_EPS
    return float(rtol) / float(np.finfo(np.dtype(dtype)).eps)


def errors_eps(got, expected, operand, dtype):
    """Elementwise errors (float64 array, eps units) of ``got`` against ``expected``.

    ``operand`` is an array broadcastable to ``expected`` or a scalar.  ``got``
    and ``expected`` must have the same shape.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    tiny = float(np.finfo(np.dtype(dtype)).tiny)
    a = np.asarray(got, np.float64)
    r = np.asarray(expected, np.float64)
    op = np.broadcast_to(np.asarray(operand, np.float64), r.shape)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        bad = ((np.isnan(r) != np.isnan(a)) | (np.isinf(r) & (a != r))
               | (np.isfinite(r) & ~np.isfinite(a)))
        fin = np.isfinite(r) & np.isfinite(a)
        diff = np.where(fin, np.abs(a - r), 0.0)
        diff = np.where(diff < tiny, 0.0, diff)
        scale = eps * np.maximum(op, np.finfo(np.float64).tiny)
        err = np.where(diff == 0, 0.0, diff / scale)
    return np.where(bad, np.inf, err)


def operand_scale(expected, floor=0.0) -> float:
    """The scalar operand of a normwise comparison: the larger of ``expected``'s largest
    finite magnitude and ``floor`` (the size of the operands the computation cancels), at
    least the smallest positive float64."""
    r = np.asarray(expected, np.float64)
    fin = np.isfinite(r)
    return max(float(np.max(np.abs(r[fin]), initial=0.0)), float(floor),
               np.finfo(np.float64).tiny)


def measure(got, expected, operand, dtype, tol=TOL_EPS, name="") -> Measure:
    """The worst elementwise error of ``got`` (see :func:`errors_eps`) and, when it exceeds
    ``tol``, a sentence naming the worst element: ``name[i]: got G, expected E (X eps)``."""
    err = errors_eps(got, expected, operand, dtype)
    if err.size == 0:
        return Measure(0.0, None, "")
    flat = int(np.argmax(err))
    worst = float(err.reshape(-1)[flat])
    idx = tuple(int(j) for j in np.unravel_index(flat, err.shape)) if err.ndim else ()
    if worst <= tol:
        return Measure(worst, idx, "")
    a = float(np.asarray(got, np.float64)[idx])
    r = float(np.asarray(expected, np.float64)[idx])
    where = f"{name}{list(idx) if idx else ''}"
    return Measure(worst, idx, f"{where}: got {a!r}, expected {r!r} ({fmt_eps(worst)} eps)")


def verdict(ok: bool, worst: float | None, tol: float, *, inconclusive: bool = False) -> str:
    """``MATCH: worst 3.1 eps`` / ``MISMATCH: worst 4.5e6 eps`` / ``INCONCLUSIVE``, with the
    tolerance."""
    if inconclusive:
        return "INCONCLUSIVE"
    word = "MATCH" if ok else "MISMATCH"
    w = "n/a" if worst is None else f"{fmt_eps(worst)} eps"
    return f"{word}: worst {w} (tolerance {fmt_eps(tol)} eps)"


def is_within(err: float, tol: float) -> bool:
    """``err <= tol`` with NaN counting as outside."""
    return not (math.isnan(err) or err > tol)
