r"""Poly-1 cross-entropy on logits (PolyLoss, Leng et al. 2022): one loss, one module.

Definition (optax ``poly_loss_cross_entropy``'s form, with per-class weights), per row, with
:math:`p = \operatorname{softmax}(x)`, :math:`\ell_c = -\log p_c` and the coefficients
:math:`A_c = w_c q_c` (index targets: one-hot :math:`q`, only :math:`A_y = w_y`):

.. math::

    \ell = \underbrace{\sum_c A_c\,\ell_c}_{\text{softmax CE}}
           + \varepsilon \sum_c A_c\,(1 - p_c),

equal to :math:`w_y[-\log p_y + \varepsilon(1 - p_y)]` for index targets (the paper's
:math:`\mathrm{CE} + \varepsilon(1 - p_t)`).  The poly term carries the class weight like the
CE term, and ``mean`` divides by softmax cross-entropy's denominator.  :math:`1 - p_c` is
never formed by subtraction at the arg-max, where it is :math:`\rho/E`, :math:`\rho` the
sum of the other classes' shifted exponentials
(:func:`ce_reference._special.softmax_complement`).

**Gradient.**  With :math:`\partial(1 - p_c)/\partial x_k = -p_c(\delta_{ck} - p_k)` and
:math:`\bar a = \langle A, p\rangle`:

.. math::

    g_k = \underbrace{p_k S_A - A_k}_{\text{CE}} + \varepsilon\,p_k\,(\bar a - A_k),
    \qquad S_A = \sum_c A_c,

or, collecting the terms of each class,

.. math::

    g_k = p_k \sum_{j \ne k} A_j\,(1 + \varepsilon p_j) - A_k\,(1 - p_k)(1 + \varepsilon p_k),

which is how it is computed: :math:`1 - p_k` is never a subtraction, and
:math:`1 + \varepsilon p = (1 + \varepsilon)p + (1 - p)` is a sum of non-negative terms for
:math:`\varepsilon \ge -1` (at :math:`\varepsilon = -1` the target's entry is
:math:`-w_y(1 - p_y)^2`, accurate to its last digit).  For index targets
:math:`g = w_y(1 + \varepsilon p_y)(p - e_y)`.

**Hessian-vector product.**  With :math:`d = v - \langle p, v\rangle`
(:math:`\nabla p_k \cdot v = p_k d_k`) and :math:`\nabla\bar a\cdot v = \sum_c A_c p_c d_c
= \sum_c (A_c - \bar a)\,p_c d_c` (because :math:`\sum_c p_c d_c = 0`):

.. math::

    (Hv)_k = S_A\,p_k d_k - \varepsilon\,p_k\bigl(u_k - \langle p, u\rangle\bigr),
    \qquad u_k = (A_k - \bar a)\,d_k,

where :math:`u - \langle p, u\rangle` is centred like :math:`d` (no :math:`1 - p_a` by
subtraction) and :math:`A_k - \bar a = A_k(1 - p_k) - (\bar a - p_k A_k)`.

**Value.**  For :math:`\varepsilon \ge -1` the value is summed as
:math:`\sum_c A_c[(\ell_c - (1 - p_c)) + (1 + \varepsilon)(1 - p_c)]`, two non-negative terms;
:math:`\ell_a - (1 - p_a) = \operatorname{log1p}(\rho) - \rho/(1 + \rho)` of the arg-max is
summed as its series for small :math:`\rho`, so at :math:`\varepsilon = -1` (the paper's
detection setting) a confident row's :math:`(1 - p_y)^2/2` keeps its digits instead of cancelling
to 0.  For :math:`\varepsilon < -1` the value is a genuine difference, accurate relative to its
two terms.
"""

from __future__ import annotations

import math

import numpy as np

from .. import options as O
from .. import _validation as V
from .._problem import ClassProblem, deferred_values
from .._special import mul0, softmax_complement
from ..kernels import driver
from ..spec import LossSpec, Option, option_set
from ._hvp import centered, class_last

__all__ = [
    "poly1_cross_entropy",
    "poly1_cross_entropy_grad",
    "poly1_cross_entropy_value_and_grad",
    "poly1_cross_entropy_hvp",
]


def check_epsilon(epsilon) -> float:
    """The coefficient of the poly term: any finite real (PolyLoss uses 2 and -1)."""
    return V.check_float("epsilon", epsilon, -math.inf, math.inf, lo_open=True, hi_open=True)


#: Coefficients the verifier cycles through: the default, the detection value -1, 0 (softmax
#: cross-entropy), a large one and a small negative one.
EPSILON_SAMPLES = (2.0, -1.0, 0.0, 5.0, -0.5)


def _sample_epsilon(rng, draw):
    return EPSILON_SAMPLES[draw.i % len(EPSILON_SAMPLES)]


EPSILON = Option("epsilon", 2.0, validate=check_epsilon, sample=_sample_epsilon,
                 invalid=((float("nan"), ValueError), (float("inf"), ValueError),
                          (True, TypeError), ("2", TypeError), (None, TypeError)))


def _problem(logits, targets, epsilon, axis, weight, reduction, check_values=True):
    P = ClassProblem(logits, targets, input_name="logits", input_kind="logits", axis=axis,
                     weight=weight, reduction=reduction, probs_what="probabilities / one-hot",
                     check_values=check_values)
    P.epsilon = check_epsilon(epsilon)
    return P


def _coefficients(P):
    """``A_c = w_c q_c`` class-last ``(pre, post, C)`` (one-hot ``w_y`` for index targets)."""
    if P.index is None:
        return P.probs if P.weight is None else P.probs * P.weight
    wy = np.ones(P.index.shape, P.cdt) if P.weight is None else P.weight[P.index]
    A = np.zeros(P.x.shape, P.cdt)
    np.put_along_axis(A, P.index[..., None], wy[..., None], axis=-1)
    return A


#: Below this ``rho`` (the other classes' mass relative to the arg-max's), ``log1p(rho) -
#: rho / (1 + rho)`` is summed as its series; :data:`_SERIES_TERMS` terms reach 0.25^29 < 4e-18.
_SERIES_RHO = 0.25
_SERIES_TERMS = 28


def _log1p_minus_ratio(rho):
    r"""``log1p(rho) - rho / (1 + rho) = -log(p_a) - (1 - p_a)`` for ``rho >= 0`` (real).

    The difference of two nearly equal numbers for small ``rho`` (a confident row); summed as
    ``sum_{n >= 2} (-1)^n (n - 1)/n rho^n = rho^2 sum_k (-1)^k (k + 1)/(k + 2) rho^k`` below
    ``rho = 1/4`` (Horner), directly above (where the two terms differ by a factor >= 1.1).
    """
    small = rho < _SERIES_RHO
    r = np.where(small, rho, 0)
    acc = np.zeros_like(r)
    for k in range(_SERIES_TERMS, -1, -1):
        acc = acc * (-r) + r.dtype.type((k + 1) / (k + 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.log1p(rho) - rho / (1 + rho)
    return np.where(small, r * r * acc, direct)


def _rows(P, sc, A):
    """``sum_c A_c [-log p_c + epsilon (1 - p_c)]`` per row.

    For ``epsilon >= -1`` (real input) as ``sum_c A_c [(-log p_c - (1 - p_c)) + (1 + epsilon)
    (1 - p_c)]``: two non-negative terms, and ``-log p_a - (1 - p_a)`` of the arg-max by
    :func:`_log1p_minus_ratio` -- at ``epsilon = -1`` a confident row's ``(1 - p_y)^2 / 2`` is
    computed, not lost to the cancellation of ``-log p_y`` against ``1 - p_y``.  Otherwise
    (``epsilon < -1``, a genuine difference; complex input of the complex step) as written.
    """
    if P.epsilon < -1 or np.iscomplexobj(sc.p):
        ce = np.sum(mul0(A, sc.neg_logp), axis=-1)            # 0 * inf = 0 (masked class)
        return ce + P.epsilon * np.sum(A * sc.one_minus_p, axis=-1)
    with np.errstate(invalid="ignore"):                       # inf - 1 of a masked class
        gap = sc.neg_logp - sc.one_minus_p                    # >= 1/5 off the arg-max
    np.put_along_axis(gap, sc.a, _log1p_minus_ratio(sc.rest).astype(gap.dtype, copy=False),
                      axis=-1)
    eps1 = sc.p.dtype.type(1 + P.epsilon)
    return np.sum(mul0(A, gap) + A * (eps1 * sc.one_minus_p), axis=-1)


def _loo(sc, A):
    """``abar - p_k A_k = sum_{c != k} A_c p_c`` (exactly 0 at the target of one-hot ``A``)."""
    pA = sc.p * A
    return np.sum(pA, axis=-1, keepdims=True) - pA


def _one_plus_eps_p(P, sc):
    """``1 + epsilon p`` as ``(1 + epsilon) p + (1 - p)`` for ``epsilon >= -1`` (two
    non-negative terms: no cancellation at ``epsilon = -1, p -> 1``)."""
    eps = P.cdt.type(P.epsilon)
    if P.epsilon >= -1:
        return (1 + eps) * sc.p + sc.one_minus_p
    return 1 + eps * sc.p


def _block(P):
    """Per-row losses and the scaled class-last gradient of a problem or block.

    ``g_k = p_k sum_{j != k} A_j (1 + epsilon p_j) - A_k (1 - p_k)(1 + epsilon p_k)``, the
    module doc's gradient with its terms collected so that neither ``p_k - 1`` nor (for
    ``epsilon >= -1``) ``1 + epsilon p`` is a subtraction.
    """
    sc = softmax_complement(P.x)
    A = _coefficients(P)
    Ac = A * _one_plus_eps_p(P, sc)
    g = sc.p * (np.sum(Ac, axis=-1, keepdims=True) - Ac) - Ac * sc.one_minus_p
    return _rows(P, sc, A).astype(P.cdt, copy=False), g * P.cdt.type(P.scale)


def poly1_cross_entropy(logits, targets, *, epsilon=2.0, axis=-1, weight=None, reduction="mean"):
    r"""Poly-1 cross-entropy of logits (PolyLoss; optax's ``poly_loss_cross_entropy``).

    .. math::

        \ell_n = \sum_c w_c q_{n,c}\bigl[-\log p_{n,c} + \varepsilon\,(1 - p_{n,c})\bigr],
        \qquad p_n = \operatorname{softmax}(x_n),

    i.e. :math:`w_{y_n}[-\log p_{n,y_n} + \varepsilon(1 - p_{n,y_n})]` for index targets.

    Parameters
    ----------
    logits : array_like, shape ``(..., C, ...)``
        Real logits, class axis ``axis``; ``-inf`` marks a masked class.
    targets : array_like
        Integer class indices of the batch shape, or probabilities / one-hot rows of the
        input's shape (any non-integer dtype), as :func:`ce_reference.softmax_cross_entropy`.
    epsilon : float, default 2
        Coefficient of the first polynomial term; any finite real (the paper recommends 2 for
        ImageNet classification and -1 for detection; optax's default is 2).
    axis : int, default -1
        The class axis.
    weight : array_like of shape ``(C,)``, optional
        Non-negative per-class weights, applied to the poly term as to the CE term (optax has
        none).
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by softmax cross-entropy's denominator (:math:`\sum_n w_{y_n}` for
        index targets, the number of rows for probability targets).  optax returns per-row
        losses: our ``"none"``.

    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> # two equal logits: log 2 + 2 (1 - 1/2)
    >>> float(ce.poly1_cross_entropy(np.zeros((1, 2)), np.array([0])))
    1.6931471805599454
    """
    P = _problem(logits, targets, epsilon, axis, weight, reduction)
    return P.reduce(_rows(P, softmax_complement(P.x), _coefficients(P)))


def poly1_cross_entropy_grad(logits, targets, *, epsilon=2.0, axis=-1, weight=None,
                             reduction="mean"):
    r"""Gradient of :func:`poly1_cross_entropy` with respect to ``logits``.

    .. math::

        \frac{\partial\ell_n}{\partial x_{n,k}} = p_k S_A - A_k
            + \varepsilon\,p_k\,(\langle A, p\rangle - A_k),\qquad A_c = w_c q_c,
            \quad S_A = \sum_c A_c,

    times ``1/denominator`` for ``mean`` (module doc for the arrangement without
    cancellation).  Same arguments as the loss.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.poly1_cross_entropy_grad(np.zeros((1, 2)), np.array([0])).tolist()
    [[-1.0, 1.0]]
    """
    P = _problem(logits, targets, epsilon, axis, weight, reduction)
    return P.finish_grad(_block(P)[1], scaled=True)


def poly1_cross_entropy_value_and_grad(logits, targets, *, epsilon=2.0, axis=-1, weight=None,
                                       reduction="mean", out=None, workers=None):
    """Loss and gradient of :func:`poly1_cross_entropy` in one blocked sweep.

    Same arguments, numbers (bitwise) and errors as the loss and its gradient, computed block
    by block on ``workers`` threads by the generic blocked driver
    (:mod:`ce_reference.kernels.driver`); ``out`` and ``workers`` as in
    :func:`ce_reference.softmax_focal_loss_value_and_grad`.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> loss, g = ce.poly1_cross_entropy_value_and_grad(np.zeros((1, 2)), np.array([0]))
    >>> float(loss), g.tolist()
    (1.6931471805599454, [[-1.0, 1.0]])
    """
    P = deferred_values(lambda check: _problem(logits, targets, epsilon, axis, weight,
                                               reduction, check_values=check))
    return driver.class_value_and_grad(P, _block, out, workers)


def poly1_cross_entropy_hvp(logits, targets, v, *, epsilon=2.0, axis=-1, weight=None,
                            reduction="mean"):
    r"""Hessian-vector product of :func:`poly1_cross_entropy` with respect to ``logits``.

    .. math::

        (Hv)_k = S_A\,p_k d_k - \varepsilon\,p_k\Bigl[(A_k - \bar a)\,d_k
                 - \sum_j p_j(A_j - \bar a)\,d_j\Bigr],\qquad d = v - \langle p, v\rangle,
                 \quad \bar a = \langle A, p\rangle,

    times the ``mean`` scale (module doc for the derivation).  ``epsilon = 0`` is softmax
    cross-entropy's :math:`S_A\,p\odot d`.

    Parameters
    ----------
    logits, targets, epsilon, axis, weight, reduction
        As in :func:`poly1_cross_entropy` (validated by the same code, with the same errors).
    v : array_like of ``logits``' shape
        The direction; real, finite; cast to ``logits``' compute dtype.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.poly1_cross_entropy_hvp(np.zeros((1, 2)), np.array([0]), [[1.0, -1.0]],
    ...                            epsilon=0.0).tolist()
    [[0.5, -0.5]]
    """
    P = _problem(logits, targets, epsilon, axis, weight, reduction)
    vm = class_last(P, v)
    sc = softmax_complement(P.x)
    A = _coefficients(P)
    d, _ = centered(sc, vm)
    cen_a = A * sc.one_minus_p - _loo(sc, A)                   # A_k - abar
    u, _ = centered(sc, cen_a * d)                              # u - <p, u>
    hv = np.sum(A, axis=-1, keepdims=True) * sc.p * d - P.cdt.type(P.epsilon) * (sc.p * u)
    with np.errstate(over="ignore"):   # only a result beyond the dtype's range overflows
        hv = hv * P.cdt.type(P.scale)
    return P.finish_grad(hv, scaled=True)


def _complex_value(z, targets, *, epsilon=2.0, axis=-1, weight=None, reduction="mean"):
    """Each row's contribution to the reduced loss at complex logits ``z`` (complex step),
    through :func:`_rows` on the complex-safe :func:`ce_reference._special.softmax_complement`."""
    z = np.asarray(z)
    P = _problem(z.real, targets, epsilon, axis, weight, reduction)
    zc = np.moveaxis(z.reshape(P.pre, P.C, P.post), 1, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = _rows(P, softmax_complement(zc), _coefficients(P))
    return (rows * P.scale).reshape(P.batch_shape)


_REGIONS = ("random", "extreme")

SPEC = LossSpec(
    name="poly1_cross_entropy", input="logits", structure="classes",
    targets=("index", "onehot", "soft"),
    options=(EPSILON, O.AXIS, O.CLASS_WEIGHT),
    option_sets=(
        option_set("index, defaults", "index", (), _REGIONS),
        option_set("index + epsilon", "index", ("epsilon",), _REGIONS),
        option_set("index + epsilon + weight", "index", ("epsilon", "weight"), _REGIONS),
        option_set("soft (Dirichlet) + epsilon", "soft", ("epsilon",), _REGIONS),
        option_set("one-hot + epsilon + weight", "onehot", ("epsilon", "weight"), _REGIONS),
    ),
    value=poly1_cross_entropy, grad=poly1_cross_entropy_grad,
    value_and_grad=poly1_cross_entropy_value_and_grad, hvp=poly1_cross_entropy_hvp,
    complex_value=_complex_value,
    oracle="ce_reference.oracles.poly1_cross_entropy:ORACLE",
    short="poly-1 CE", ref="ce_reference.losses.poly1_cross_entropy:SPEC",
)
