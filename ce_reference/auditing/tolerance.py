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

Low precision (float16, bfloat16): a kernel that computes in half precision
cannot be within a few eps of the exact result, and how far it may be depends
on how many roundings its algorithm needs.  The criterion (cut-cross-entropy's
own test, made exact) compares it with the same computation done by
the plain composition of PyTorch operations in the same dtype: an output
passes where

.. math::

    \max|got - exact| \le \max|baseline - exact|
    + \mathrm{tol}\,\varepsilon_{\mathrm{dtype}}\max|exact|,

``exact`` from the float64 reference at the low-precision input values,
``tol`` = :data:`LOW_PRECISION_TOL_EPS`.  :func:`low_precision` reports the
*ratio* of the two sides (at most 1 passes), not only the verdict.
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


#: Slack of the low-precision criterion (:func:`low_precision`), in eps of the audited
#: dtype times the largest exact entry: one eps (float16: 2**-10 = 9.8e-4, the 1e-3 of
#: cut-cross-entropy's own float16 tests, made a unit of the dtype).
LOW_PRECISION_TOL_EPS = 1.0
#: The dtypes judged by the low-precision criterion rather than by eps of the operands.
LOW_PRECISION_DTYPES = ("float16", "bfloat16")


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


def low_precision(got, expected, baseline, dtype, tol=LOW_PRECISION_TOL_EPS,
                  name="") -> Measure:
    """The low-precision criterion (see the module doc): ``worst`` is the ratio
    ``max|got - exact| / (max|baseline - exact| + tol * eps * max|exact|)``.

    Non-finite entries follow the rule of :func:`errors_eps`: a non-finite
    mismatch of ``got`` makes its error infinite.  When the baseline has a
    non-finite mismatch too, its error is infinite as well, and the ratio is 1
    if every non-finite mismatch of ``got`` is also one of the baseline (as
    wrong as the composition), infinite otherwise.  An exact entry beyond the
    range of the dtype ``got`` is returned in is compared as what it rounds to
    there (``±inf``): no result in that dtype can be closer.  ``index`` is the worst
    element of ``got``; ``detail`` names it when the ratio exceeds 1.
    """
    dt = np.dtype(dtype) if str(dtype) != "bfloat16" else np.dtype(np.float32)
    eps = 2.0 ** -7 if str(dtype) == "bfloat16" else float(np.finfo(dt).eps)
    out = np.asarray(got).dtype           # the dtype the result is returned in
    a = np.asarray(got, np.float64)
    r = np.asarray(expected, np.float64)
    if out.kind == "f" and out.itemsize < 8:
        big = float(np.finfo(out).max)
        with np.errstate(over="ignore", invalid="ignore"):
            r = np.where(np.isfinite(r) & (np.abs(r) > big), r.astype(out).astype(np.float64), r)
    c = np.asarray(baseline, np.float64) if baseline is not None else None
    if c is not None and c.shape != r.shape:
        c = c.reshape(r.shape) if c.size == r.size else None

    def mismatch(v):
        with np.errstate(invalid="ignore"):
            return ((np.isnan(r) != np.isnan(v)) | (np.isinf(r) & (v != r))
                    | (np.isfinite(r) & ~np.isfinite(v)))

    fin = np.isfinite(r)
    bad_a = mismatch(a)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where(fin & np.isfinite(a), np.abs(a - r), 0.0)
    e_a = math.inf if bad_a.any() else float(d.max(initial=0.0))
    if c is None:
        e_c = 0.0
        bad_c = np.zeros(r.shape, bool)
    else:
        bad_c = mismatch(c)
        with np.errstate(invalid="ignore", over="ignore"):
            dc = np.where(fin & np.isfinite(c), np.abs(c - r), 0.0)
        e_c = math.inf if bad_c.any() else float(dc.max(initial=0.0))
    bound = e_c + tol * eps * float(np.max(np.abs(r[fin]), initial=0.0))
    if e_a == 0:
        ratio = 0.0
    elif math.isinf(e_a):
        ratio = 1.0 if math.isinf(e_c) and not np.any(bad_a & ~bad_c) else math.inf
    elif bound == 0:
        ratio = math.inf
    else:
        ratio = e_a / bound
    err = np.where(bad_a, np.inf, d)
    flat = int(np.argmax(err)) if err.size else 0
    idx = tuple(int(j) for j in np.unravel_index(flat, err.shape)) if err.ndim else ()
    if not ratio > 1.0:
        return Measure(ratio, idx if err.size else None, "")
    where = f"{name}{list(idx) if idx else ''}"
    return Measure(ratio, idx, f"{where}: got {float(a[idx])!r}, expected {float(r[idx])!r} "
                               f"(ratio {fmt_eps(ratio)}: max error {e_a:.3g} vs same-dtype "
                               f"composition {e_c:.3g} + {tol:g} eps * max|exact|)")


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
