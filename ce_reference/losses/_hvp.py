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


def centered(sc, v):
    r"""``(d, delta)``: ``d = v - <p, v>`` and ``delta = d / (1 - p)`` per class (last axis).

    ``sc`` is the :func:`ce_reference._special.softmax_complement` of the row's logits
    (``p``, ``1 - p``, the arg-max ``a``).  With ``r = 1 - p_a = sum_{j != a} p_j`` and
    ``T = sum_{j != a} p_j v_j``:

    * ``d_k = p_a (v_k - v_a) + (r v_k - T)`` -- never ``1 - p_a`` by subtraction, so a
      confident row keeps ``d_a = r v_a - T`` accurate;
    * ``delta_k = sum_{j != k} p_j (v_k - v_j) / sum_{j != k} p_j``, the ``p``-weighted
      mean of ``v_k - v_j`` over the *other* classes (bounded by ``2 max |v|``):
      ``d_k / (1 - p_k)`` off the arg-max (``1 - p_k >= 1/2``), ``v_a - T / r`` at it
      (0 where ``r = 0``: a row whose other classes have probability 0).
    """
    p, a = sc.p, sc.a
    pa = np.take_along_axis(p, a, axis=-1)
    va = np.take_along_axis(v, a, axis=-1)
    others = p.copy()
    np.put_along_axis(others, a, 0, axis=-1)
    T = np.sum(others * v, axis=-1, keepdims=True)
    r = np.take_along_axis(sc.one_minus_p, a, axis=-1)
    d = pa * (v - va) + (r * v - T)
    with np.errstate(divide="ignore", invalid="ignore"):   # the arg-max entry is replaced
        delta = d / sc.one_minus_p
        delta_a = np.where(r > 0, va - T / np.where(r > 0, r, 1), 0)
    np.put_along_axis(delta, a, delta_a.astype(delta.dtype, copy=False), axis=-1)
    return d, delta
