"""Pieces shared by the Hessian-vector products of the losses.

``NAME_hvp(x, targets, v, **options)`` returns :math:`H v`, :math:`H` the
Hessian of the *reduced* loss with respect to ``x`` (for
``reduction="none"``: of the sum of the per-example losses, as the
gradients), with the gradient's conventions: the ``mean`` scale is the
gradient's, a zero denominator gives a zero product, a clip has zero
curvature outside its interval and the interior formula on its boundary, and
where an exact Hessian entry is infinite the product is ``±inf`` where ``v``
is non-zero and 0 where ``v`` is 0 (``0 · ∞ = 0``).  Every argument but
``v`` is validated by the loss's own problem (same errors).
"""

from __future__ import annotations

import numpy as np

from .. import _validation as V


def direction(v, shape: tuple, cdt: np.dtype, input_name: str) -> np.ndarray:
    """Validate the direction ``v`` against the first argument; return it in ``cdt``.

    ``v`` must be a real numeric array of exactly the input's shape with finite
    entries; a cast that overflows the compute dtype is a ``ValueError``.
    """
    arr = V.as_numeric_array("v", v)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"v must have the shape of {input_name}, {tuple(shape)}, got {arr.shape}"
        )
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError("v contains NaN; expected a finite direction")
        if np.isinf(arr).any():
            raise ValueError("v contains inf; expected a finite direction")
    with np.errstate(over="ignore"):  # checked just below
        out = arr.astype(cdt, copy=False)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise ValueError(
            f"v has entries beyond the range of {cdt}, the compute dtype of {input_name}"
        )
    return out


def class_last(problem, v):
    """The direction of a class-axis problem in its class-last ``(pre, post, C)`` view."""
    vv = direction(v, problem.shape, problem.cdt, problem.input_name)
    return np.moveaxis(vv.reshape(problem.pre, problem.C, problem.post), 1, -1)


def diag_term(c, v, den):
    r"""``(c * v) / den / den`` elementwise, with ``0`` wherever ``c * v == 0``.

    ``c >= 0`` is the coefficient (weight, target mass and reduction scale) and
    ``0 < den <= 1`` a probability.  Multiplying first and dividing last means
    an intermediate overflows only when the result itself does (dividing by
    ``den <= 1`` never shrinks), so no spurious ``inf``; ``den == 0`` with
    ``c v != 0`` gives the correctly signed ``inf`` of an infinite Hessian
    entry, and ``c v == 0`` gives 0 (``0 · ∞ = 0``), never NaN.
    """
    with np.errstate(over="ignore"):  # a result beyond the dtype's range is inf
        num = c * v
    nz = num != 0
    q = np.zeros_like(num)
    with np.errstate(divide="ignore", over="ignore"):
        np.divide(num, den, out=q, where=nz)
        np.divide(q, den, out=q, where=nz)
    return q
