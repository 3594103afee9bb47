r"""Hand-derived Hessian-vector products of the four losses (NumPy).

``NAME_hvp(x, targets, v, **options)`` returns :math:`H v`, where :math:`H` is
the Hessian of the *reduced* loss ``NAME(x, targets, **options)`` with respect
to its first argument ``x`` (for ``reduction="none"``: of the sum of the
per-example losses, as for the gradients).  ``v`` has ``x``'s shape and the
result has ``x``'s shape and the package's result dtype.  The full Hessian is
never formed: the two binary losses and the categorical loss on probabilities
have a diagonal Hessian, and softmax cross-entropy has one
:math:`C \times C` block per row, applied in :math:`O(C)`.

Conventions, the same as the gradients':

* the ``mean`` scale is the gradient's (``1/denominator``, see
  :func:`ce_reference._reduction.grad_scale`); a ``mean`` whose denominator is
  0 (empty batch, every row ignored, target weights summing to 0) has a zero
  gradient and therefore a zero Hessian-vector product;
* with ``eps`` clipping, the second derivative is 0 where ``p`` is outside
  ``[eps, 1 - eps]`` and the interior formula on the boundary itself (the
  gradient passes through on the boundary; the Hessian has a jump there);
* where the exact Hessian entry is infinite (a probability of exactly 0 or 1
  that the target penalises, without ``eps``), the product is ``±inf`` where
  ``v`` is non-zero and 0 where ``v`` is 0 (``0 · ∞ = 0``, as in the losses).

Every argument except ``v`` is validated by the loss's own code, so a bad
argument raises exactly the error the loss raises.  ``v`` must be a real
numeric array of exactly ``x``'s shape with finite entries; it is cast to
``x``'s compute dtype (a ``ValueError`` if that overflows).  Inputs are never
modified.
"""

from __future__ import annotations

import numpy as np

from . import _validation as V
from . import binary as _binary
from . import categorical as _categorical
from ._reduction import grad_scale, to_result
from ._special import log_softmax_parts, sigmoid

__all__ = [
    "binary_cross_entropy_hvp",
    "binary_cross_entropy_with_logits_hvp",
    "categorical_cross_entropy_hvp",
    "softmax_cross_entropy_hvp",
]


# --------------------------------------------------------------------------- helpers

def _direction(v, shape: tuple, cdt: np.dtype, input_name: str) -> np.ndarray:
    """Validate the direction ``v`` against the first argument; return it in ``cdt``."""
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


def _diag_term(c, v, den):
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


# --------------------------------------------------------------------------- BCE on probabilities

def binary_cross_entropy_hvp(probs, targets, v, *, weight=None, eps=None, reduction="mean"):
    r"""Hessian-vector product of :func:`binary_cross_entropy` with respect to ``probs``.

    The Hessian is diagonal:

    .. math::

        \frac{\partial^2 \ell_i}{\partial p_i^2}
        = w_i\Bigl[\frac{y_i}{p_i^2} + \frac{1 - y_i}{(1 - p_i)^2}\Bigr],
        \qquad (H v)_i = s\,\frac{\partial^2 \ell_i}{\partial p_i^2}\, v_i,

    with :math:`s = 1/n` (``n = probs.size``) for ``mean`` and 1 otherwise.
    Derivation: :math:`\partial\ell_i/\partial p_i = w_i[(1-y_i)/(1-p_i) - y_i/p_i]`;
    differentiate once more.  Each fraction is 0 where its numerator is 0.
    With ``eps``, the entry is 0 where ``p_i`` is outside ``[eps, 1 - eps]``
    (the clipped loss is constant there) and the interior formula on the
    boundary.  Both terms are non-negative: the loss is convex in ``p``.

    Parameters
    ----------
    probs, targets, weight, eps, reduction
        As in :func:`binary_cross_entropy` (validated by the same code, with
        the same errors).
    v : array_like of ``probs``' shape
        The direction; real, finite; cast to ``probs``' compute dtype.

    Returns
    -------
    hv : ndarray of ``probs``' shape, in the package's result dtype

    Notes
    -----
    Computed as ``(s w y v) / p / p + (s w (1 - y) v) / (1 - p) / (1 - p)``:
    no cancellation (both terms have the sign of ``v``), and an intermediate
    overflows only if the result does.  At ``p = 0`` (``y > 0``) or ``p = 1``
    (``y < 1``) without ``eps`` the entry is infinite: ``±inf`` where
    ``v != 0``, 0 where ``v == 0``.

    Examples
    --------
    >>> import ce_reference as ce
    >>> ce.binary_cross_entropy_hvp([0.5, 0.25], [1.0, 0.0], [1.0, 3.0],
    ...                             reduction="sum").tolist()
    [4.0, 5.333333333333333]
    """
    p, y, w, eps, reduction, cdt, rdt = _binary._bce_probs_prepare(probs, targets, weight, eps,
                                                                    reduction)
    vv = _direction(v, p.shape, cdt, "probs")
    s = cdt.type(grad_scale(reduction, p.size))
    pc = p if eps is None else np.clip(p, eps, 1 - eps)
    a = s * y                         # coefficient of 1/p^2
    b = s * (1 - y)                   # coefficient of 1/(1-p)^2
    if w is not None:
        a, b = w * a, w * b
    hv = _diag_term(a, vv, pc) + _diag_term(b, vv, 1 - pc)
    if eps is not None:
        hv = np.where((p >= eps) & (p <= 1 - eps), hv, 0)   # clip: constant outside
    return to_result(hv, rdt)


# --------------------------------------------------------------------------- BCE on logits

def _sigmoid_prime(x):
    r"""``σ(x) σ(-x) = σ'(x) = e^{-|x|} / (1 + e^{-|x|})^2``, accurate everywhere.

    For ``|x| <= 40``: the product of two ``scipy.special.expit`` values (each
    ~1 ULP, no overflow; a product of positive numbers does not cancel).  For
    ``|x| > 40``: ``e / (1 + e)^2`` with ``e = exp(-|x|) < eps/2`` in float32
    and float64, so ``1 + e`` rounds to 1 and the result is ``exp``'s own
    correctly rounded value -- including the subnormal range
    ``708 < |x| < 745``, where ``expit(-|x|)`` already returns 0.  Both forms
    are <= 3 ULP from mpmath over [-745, 745] (tests/test_hvp.py).  The naive
    ``σ(x)(1 - σ(x))`` loses everything for ``x > 37`` (``1 - σ(x)`` rounds to
    0) and ``exp(x) / (1 + exp(x))**2`` overflows for ``x > 354``.  At
    ``|x| = 1e4`` and ``±inf`` the value is 0, its correct rounding.
    """
    a = np.abs(x)
    e = np.exp(-a)
    return np.where(a > 40, e / (1 + e) ** 2, sigmoid(x) * sigmoid(-x))


def binary_cross_entropy_with_logits_hvp(logits, targets, v, *, weight=None, pos_weight=None,
                                         reduction="mean"):
    r"""Hessian-vector product of :func:`binary_cross_entropy_with_logits` w.r.t. ``logits``.

    The Hessian is diagonal:

    .. math::

        \frac{\partial^2 \ell_i}{\partial x_i^2}
        = w_i\,(\mathrm{pw}_i\, y_i + 1 - y_i)\,\sigma(x_i)\,\sigma(-x_i),
        \qquad (H v)_i = s\,\frac{\partial^2 \ell_i}{\partial x_i^2}\, v_i,

    with :math:`s = 1/n` (``n = logits.size``) for ``mean`` and 1 otherwise.
    Derivation: :math:`\partial\ell_i/\partial x_i = w_i[(1-y_i)\sigma(x_i) -
    \mathrm{pw}_i y_i \sigma(-x_i)]` and :math:`\sigma'(x) = \sigma(x)\sigma(-x)
    = -\frac{d}{dx}\sigma(-x)`.  The entry is non-negative (the loss is convex
    in ``x``) and at most :math:`w(\mathrm{pw}\,y + 1 - y)/4`.

    Parameters
    ----------
    logits, targets, weight, pos_weight, reduction
        As in :func:`binary_cross_entropy_with_logits` (validated by the same
        code, with the same errors).
    v : array_like of ``logits``' shape
        The direction; real, finite; cast to ``logits``' compute dtype.

    Returns
    -------
    hv : ndarray of ``logits``' shape, in the package's result dtype

    Notes
    -----
    :math:`\sigma(x)\sigma(-x)` is computed as the product of two ``expit``
    values for :math:`|x| \le 40` and as :math:`e^{-|x|}/(1 + e^{-|x|})^2`
    beyond (no cancellation, no overflow, a few ULP everywhere); it is tiny,
    never NaN, for large ``|x|`` (``e^{-700}`` at ``x = 700``, subnormal up to
    745, 0 at ``±1e4`` and ``±inf``).

    Examples
    --------
    >>> import ce_reference as ce
    >>> ce.binary_cross_entropy_with_logits_hvp([0.0, 0.0], [1.0, 0.0], [1.0, -2.0]).tolist()
    [0.125, -0.25]
    """
    x, a, b, w, reduction, rdt = _binary._bce_logits_prepare(logits, targets, weight,
                                                             pos_weight, reduction)
    cdt = x.dtype
    vv = _direction(v, x.shape, cdt, "logits")
    # d * v first (|d| <= 1/4 so it cannot overflow), then the coefficients.
    hv = (_sigmoid_prime(x) * vv) * (a + b)      # a + b = pw y + 1 - y >= 0
    if w is not None:
        hv = w * hv
    with np.errstate(over="ignore"):  # only a result beyond the dtype's range overflows
        hv = hv * cdt.type(grad_scale(reduction, x.size))
    return to_result(hv, rdt)


# --------------------------------------------------------------------------- CCE on probabilities

def _cce_args(probs, targets, axis, weight, eps, reduction):
    """Validated, converted arguments of :func:`categorical_cross_entropy`.

    By the loss's own validation (same errors).  Returns the class-last
    probabilities, the coefficient array ``A = w_c q_c`` (index targets: ``w_y``
    at the target class, 0 elsewhere), the mean denominator, and the rest.
    """
    pm, ax, T, w, eps, reduction, cdt, rdt = _categorical._cce_prepare(
        probs, targets, axis, weight, eps, reduction)
    if T.index is not None:
        wy = np.ones(T.index.shape, cdt) if w is None else w[T.index]
        A = np.zeros_like(pm)
        np.put_along_axis(A, T.index[..., None], wy[..., None], axis=-1)
        denom = float(np.sum(wy, dtype=np.float64))           # PyTorch: sum of w_{y_n}
    else:
        A = T.probs if w is None else T.probs * w
        denom = float(pm[..., 0].size)                        # number of rows
    return pm, ax, A, denom, eps, reduction, cdt, rdt


def categorical_cross_entropy_hvp(probs, targets, v, *, axis=-1, weight=None, eps=None,
                                  reduction="mean"):
    r"""Hessian-vector product of :func:`categorical_cross_entropy` w.r.t. ``probs``.

    The rows of ``probs`` are used as given (not renormalised), so each row's
    loss :math:`-\sum_c w_c q_{n,c} \log p_{n,c}` is separable and the Hessian
    is diagonal:

    .. math::

        \frac{\partial^2 \ell_n}{\partial p_{n,c}^2} = \frac{w_c\, q_{n,c}}{p_{n,c}^2},
        \qquad (H v)_{n,c} = s\,\frac{w_c\, q_{n,c}}{p_{n,c}^2}\, v_{n,c},

    0 where :math:`w_c q_{n,c} = 0`; for index targets :math:`q` is one-hot,
    so only the target class has a non-zero entry, :math:`w_{y_n}/p_{n,y_n}^2`.
    :math:`s` is ``1/denominator`` for ``mean`` (:math:`\sum_n w_{y_n}` for
    index targets, the number of rows for probability targets) and 1
    otherwise.  With ``eps``, 0 where ``p`` is outside ``[eps, 1 - eps]``.

    Parameters
    ----------
    probs, targets, axis, weight, eps, reduction
        As in :func:`categorical_cross_entropy` (validated by the same code,
        with the same errors).
    v : array_like of ``probs``' shape
        The direction; real, finite; cast to ``probs``' compute dtype.

    Returns
    -------
    hv : ndarray of ``probs``' shape, in the package's result dtype

    Notes
    -----
    Computed as ``(s A v) / p / p`` with ``A = w q``: no cancellation, and an
    intermediate overflows only if the result does.  A target class with
    probability exactly 0 (no ``eps``) has an infinite entry: ``±inf`` where
    ``v != 0``, 0 where ``v == 0``.  A ``mean`` with a zero denominator gives
    a zero product.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.categorical_cross_entropy_hvp([[0.5, 0.25]], np.array([1]), [[1.0, 1.0]]).tolist()
    [[0.0, 16.0]]
    """
    pm, ax, A, denom, eps, reduction, cdt, rdt = _cce_args(probs, targets, axis, weight, eps,
                                                           reduction)
    vm = np.moveaxis(_direction(v, np.moveaxis(pm, -1, ax).shape, cdt, "probs"), ax, -1)
    pc = pm if eps is None else np.clip(pm, eps, 1 - eps)
    hv = _diag_term(cdt.type(grad_scale(reduction, denom)) * A, vm, pc)
    if eps is not None:
        hv = np.where((pm >= eps) & (pm <= 1 - eps), hv, 0)   # clip: constant outside
    return to_result(np.moveaxis(hv, -1, ax), rdt)


# --------------------------------------------------------------------------- softmax CE on logits

def _centered(p, v):
    r"""``d = v - <p, v>`` per row (class axis last), accurate to the operands.

    With ``a`` the row's arg-max class (the one whose ``p_a`` may be close to
    1), ``r = sum_{j != a} p_j`` and ``T = sum_{j != a} p_j v_j``, and using
    ``p_a = 1 - r``:

        d_k = p_a (v_k - v_a) + (r v_k - T).

    This never forms ``1 - p_a`` by subtraction (it is ``r``, a sum of
    positive terms), so for a confident row ``d_a = r v_a - T`` is accurate
    even though the naive ``v_a - <p, v>`` cancels to ``v_a (1 - p_a)``; every
    rounding error is bounded by a few ULP of the componentwise operand size
    ``(1 - p_k)|v_k| + sum_{j != k} p_j |v_j|``.  The row sums accumulate in
    float64; ``p`` and ``v`` are float64 here.
    """
    a = np.argmax(p, axis=-1)[..., None]
    pa = np.take_along_axis(p, a, axis=-1)
    va = np.take_along_axis(v, a, axis=-1)
    rest = p.copy()
    np.put_along_axis(rest, a, 0.0, axis=-1)
    r = np.sum(rest, axis=-1, keepdims=True)
    T = np.sum(rest * v, axis=-1, keepdims=True)
    return pa * (v - va) + (r * v - T)


def softmax_cross_entropy_hvp(logits, targets, v, *, axis=-1, weight=None, ignore_index=None,
                              label_smoothing=0.0, reduction="mean"):
    r"""Hessian-vector product of :func:`softmax_cross_entropy` with respect to ``logits``.

    Per row, with :math:`p = \operatorname{softmax}(x_n)` and
    :math:`A_{n,c} = w_c q'_{n,c}` the coefficients of the loss,

    .. math::

        H_n = S_n\,\bigl(\operatorname{diag}(p) - p\,p^{\mathsf T}\bigr),
        \qquad
        (H v)_{n,k} = s\, S_n\, p_k\,\bigl(v_k - \langle p, v\rangle\bigr),
        \qquad S_n = \sum_c A_{n,c},

    :math:`S_n` being the row's total target mass.  Derivation: the gradient
    is :math:`p_k S_n - A_{n,k}` with :math:`A` independent of :math:`x`, and
    :math:`\partial p_k/\partial x_j = p_k(\delta_{kj} - p_j)`.  For index
    targets :math:`S_n = (1-\varepsilon)\,w_{y_n} + (\varepsilon/C)\sum_c w_c`
    (label smoothing :math:`\varepsilon`), 0 for ignored rows; for
    probability targets :math:`S_n = \sum_c w_c q'_{n,c}` (1 without weights
    for a row summing to 1).  :math:`s` is ``1/denominator`` for ``mean``
    (the loss's denominator) and 1 otherwise.  Each block is positive
    semi-definite with :math:`H_n \mathbf 1 = 0` (shifting a row of logits
    does not change the loss).

    Parameters
    ----------
    logits, targets, axis, weight, ignore_index, label_smoothing, reduction
        As in :func:`softmax_cross_entropy` (validated by the same code, with
        the same errors).
    v : array_like of ``logits``' shape
        The direction; real, finite; cast to ``logits``' compute dtype.

    Returns
    -------
    hv : ndarray of ``logits``' shape, in the package's result dtype

    Notes
    -----
    The :math:`C \times C` block is never formed: the product costs
    :math:`O(C)` per row.  :math:`v_k - \langle p, v\rangle` is computed as
    :math:`p_a (v_k - v_a) + (r v_k - T)` with :math:`a` the arg-max class,
    :math:`r = \sum_{j\ne a} p_j = 1 - p_a` and :math:`T = \sum_{j\ne a} p_j v_j`,
    so a confident row (:math:`p_a \approx 1`) does not suffer the cancellation
    of :math:`1 - p_a`; the error is a few ULP of the componentwise bound
    :math:`(|H|\,|v|)_k`.  A class with logit ``-inf`` has :math:`p_k = 0` and
    gets 0.  A ``mean`` with a zero denominator gives a zero product.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.softmax_cross_entropy_hvp(np.zeros((1, 2)), np.array([0]), [[1.0, -1.0]]).tolist()
    [[0.5, -0.5]]
    """
    P = _categorical._SoftmaxProblem(logits, targets, axis, weight, ignore_index,
                                     label_smoothing, reduction)
    cdt = P.x.dtype
    shape = np.moveaxis(P.x, -1, P.ax).shape
    vm = np.moveaxis(_direction(v, shape, cdt, "logits"), P.ax, -1)
    _, p = log_softmax_parts(P.x)
    # S_n, the row's total target mass (the quantity the gradient multiplies p by).  The
    # O(C) combination below runs in float64 (exact products for float32 input) and is
    # rounded once to the result dtype.
    if P.A is not None:
        S = np.sum(P.A, axis=-1, dtype=np.float64)
    else:
        W = P.C if P.w is None else np.sum(P.w, dtype=np.float64)
        S = P.c_nll.astype(np.float64) + P.c_smooth.astype(np.float64) * W
    coef = (S * grad_scale(P.reduction, P.denom))[..., None]

    p64 = p.astype(np.float64, copy=False)
    v64 = vm.astype(np.float64, copy=False)
    post = 1.0
    if v64.size and np.max(np.abs(v64)) > np.finfo(np.float64).max / 4:
        # Keep v_k - v_a from overflowing: scale by an exact power of 2, undo it at the end.
        v64, post = v64 * 0.25, 4.0
    with np.errstate(over="ignore"):  # only a result beyond the dtype's range overflows
        hv = (p64 * _centered(p64, v64)) * coef
        if post != 1.0:
            hv = hv * post
    return to_result(np.moveaxis(hv, -1, P.ax), P.rdt)
