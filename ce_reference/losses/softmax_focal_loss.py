r"""Softmax focal loss on logits, in log space: one loss, one module.

Definition (Lin et al. 2017 for many classes; Keras ``CategoricalFocalCrossentropy`` on
logits without its clip, per-class weights in place of its ``alpha``), per row, with
:math:`p = \operatorname{softmax}(x)`, :math:`\ell_c = -\log p_c` and the coefficients
:math:`A_c = w_c q_c` (index targets: :math:`q` one-hot, so only :math:`A_y = w_y`; 0 on
ignored rows):

.. math::

    \ell = \sum_c A_c\,(1 - p_c)^{\gamma}\,\ell_c .

**Log space.**  :math:`(1 - p_c)^\gamma = e^{\gamma L_c}` with :math:`L_c = \log(1 - p_c)`
from the logits without cancellation (:func:`ce_reference._special.softmax_complement`):
``log1p(-p_c)`` off the arg-max ``a`` (there :math:`p_c \le 1/2`) and, with
:math:`\rho = \sum_{j \ne a} e^{x_j - m}`, :math:`\log\rho - \operatorname{log1p}(\rho)` or
:math:`-\operatorname{log1p}(1/\rho)` at ``a``; :math:`\ell_c = (m - x_c) + \operatorname{log1p}(\rho)`
(two non-negative terms).  :math:`\gamma = 0` uses the factor 1 exactly.

**Gradient.**  From :math:`\partial\ell_c/\partial x_k = p_k - \delta_{ck}` and
:math:`\partial p_c/\partial x_k = p_c(\delta_{ck} - p_k)`:

.. math::

    \frac{\partial}{\partial x_k}\bigl[(1 - p_c)^\gamma \ell_c\bigr]
    = -\gamma (1 - p_c)^{\gamma - 1}\ell_c\,p_c(\delta_{ck} - p_k) + (1 - p_c)^\gamma (p_k - \delta_{ck})
    = (p_k - \delta_{ck})\,(1 - p_c)^\gamma\,(1 + \gamma\kappa_c),

    \kappa_c = \frac{p_c\,\ell_c}{1 - p_c} = \frac{-p_c\log p_c}{1 - p_c} \in [0, 1],

so the gradient has softmax cross-entropy's form with :math:`B_c = A_c\,e^{\gamma L_c}(1 + \gamma\kappa_c)`
in place of :math:`A_c`:

.. math::

    g_k = p_k \sum_c B_c - B_k = p_k\Bigl(\sum_c B_c - B_k\Bigr) - B_k\,(1 - p_k).

The textbook factor :math:`(1 - p_c)^{\gamma - 1}` is absorbed into the bounded :math:`\kappa_c`
(at the arg-max :math:`\kappa_a = \operatorname{log1p}(\rho)/\rho`, 1 at :math:`\rho = 0`):
finite for every :math:`\gamma \ge 0`, including :math:`0 < \gamma < 1` and 0.  The second
form of :math:`g_k` never forms :math:`p_k - 1`; for index targets :math:`\sum_c B_c - B_k` is
exactly 0 or :math:`B_y`.

**Hessian-vector product.**  :math:`B_c = A_c\varphi(p_c)` with
:math:`\varphi(p) = (1 - p)^\gamma(1 + \gamma\kappa(p))`; since
:math:`\kappa'(p) = (\ell - (1 - p))/(1 - p)^2`,
:math:`\varphi'(p) = \gamma(1 - p)^{\gamma - 1}[\ell/(1 - p) - 2 - \gamma\kappa]`.  With
:math:`d = v - \langle p, v\rangle` (so :math:`\nabla p_c \cdot v = p_c d_c`) and
:math:`\delta_c = d_c/(1 - p_c)`, the :math:`p`-weighted mean of :math:`v_c - v_j` over the
other classes (bounded; :func:`._hvp.centered`):

.. math::

    \beta_c := \nabla B_c\cdot v = \gamma A_c\,e^{\gamma L_c}\,
              \bigl[\kappa_c - p_c(2 + \gamma\kappa_c)\bigr]\,\delta_c,\qquad
    (Hv)_k = \Bigl(\sum_c B_c\Bigr) p_k d_k + p_k\Bigl(\sum_c \beta_c - \beta_k\Bigr)
             - \beta_k (1 - p_k).

Again no negative power of :math:`1 - p` is formed.  A masked class
(:math:`x_c = -\infty`: :math:`p_c = 0`, :math:`\kappa_c = 0`) gets exactly 0 in the gradient
and the product.

:func:`_block` is the whole computation of a problem or one block of rows: the plain
functions run it on the whole problem and ``value_and_grad`` block by block through the
generic blocked driver (:mod:`ce_reference.kernels.driver`), so the numbers are bitwise equal.
"""

from __future__ import annotations

import numpy as np

from .. import options as O
from .._problem import ClassProblem, deferred_values
from .._special import mul0, softmax_complement
from ..kernels import driver
from ..spec import LossSpec, option_set
from ._hvp import centered, class_last

__all__ = [
    "softmax_focal_loss",
    "softmax_focal_loss_grad",
    "softmax_focal_loss_value_and_grad",
    "softmax_focal_loss_hvp",
]


def _problem(logits, targets, gamma, axis, weight, ignore_index, reduction, check_values=True):
    P = ClassProblem(logits, targets, input_name="logits", input_kind="logits", axis=axis,
                     weight=weight, ignore_index=ignore_index, reduction=reduction,
                     probs_what="probabilities / one-hot", check_values=check_values)
    P.gamma = O.check_gamma(gamma)
    return P


def _coefficients(P):
    """``A_c = w_c q_c`` class-last ``(pre, post, C)``: one-hot ``w_y`` (0 on ignored rows) for
    index targets."""
    if P.index is None:
        return P.probs if P.weight is None else P.probs * P.weight
    wy = np.ones(P.index.shape, P.cdt) if P.weight is None else P.weight[P.index]
    A = np.zeros(P.x.shape, P.cdt)
    np.put_along_axis(A, P.index[..., None], np.where(P.keep, wy, 0)[..., None], axis=-1)
    return A


def _focal(P, sc, A):
    r"""``(e^{gamma L}, kappa, B)``; ``(None, None, A)`` for ``gamma = 0``."""
    if P.gamma == 0:
        return None, None, A
    G = P.cdt.type(P.gamma)
    mfac = np.exp(G * sc.log_one_minus_p)                        # (1 - p)^gamma in [0, 1]
    with np.errstate(divide="ignore", invalid="ignore"):        # the arg-max entry is replaced
        kappa = mul0(sc.p, sc.neg_logp) / sc.one_minus_p        # 1 - p >= 1/2 off the arg-max
        rest = sc.rest
        ka = np.where(rest > 0, np.log1p(rest) / np.where(rest > 0, rest, 1), 1)
    np.put_along_axis(kappa, sc.a, ka.astype(P.cdt, copy=False), axis=-1)
    return mfac, kappa, A * mfac * (1 + G * kappa)


def _block(P):
    """Per-row losses ``(pre, post)`` and the scaled class-last gradient of a problem or block."""
    sc = softmax_complement(P.x)
    A = _coefficients(P)
    mfac, _, B = _focal(P, sc, A)
    rows = np.sum(mul0(A if mfac is None else A * mfac, sc.neg_logp), axis=-1)  # 0 * inf = 0
    SB = np.sum(B, axis=-1, keepdims=True)
    g = sc.p * (SB - B) - B * sc.one_minus_p
    return rows, g * P.cdt.type(P.scale)


def softmax_focal_loss(logits, targets, *, gamma=2.0, axis=-1, weight=None, ignore_index=None,
                       reduction="mean"):
    r"""Softmax focal loss of logits, computed in log space.

    .. math::

        \ell_n = \sum_c w_c\,q_{n,c}\,(1 - p_{n,c})^{\gamma}\,(-\log p_{n,c}),
        \qquad p_n = \operatorname{softmax}(x_n),

    with :math:`q` one-hot for index targets (then
    :math:`\ell_n = w_{y_n}(1 - p_{n,y_n})^\gamma(-\log p_{n,y_n})`); rows with
    ``targets == ignore_index`` contribute 0.  :math:`(1 - p)^\gamma = e^{\gamma\log(1 - p)}`
    with :math:`\log(1 - p)` from the logits without cancellation (module doc).  ``gamma = 0``
    is :func:`ce_reference.softmax_cross_entropy` (without label smoothing).

    Parameters
    ----------
    logits : array_like, shape ``(..., C, ...)``
        Real logits, class axis ``axis``; ``-inf`` marks a masked class (probability 0, zero
        gradient); NaN, ``+inf`` and rows that are all ``-inf`` are errors.
    targets : array_like
        Integer class indices of the batch shape (the input's shape without ``axis``), or
        probabilities / one-hot rows of the input's shape (any non-integer dtype).
    gamma : float >= 0, default 2
        Focusing exponent; finite value, gradient and HVP for every ``gamma >= 0``.
    axis : int, default -1
        The class axis.
    weight : array_like of shape ``(C,)``, optional
        Non-negative per-class weights (Keras' per-class ``alpha`` list; Keras' scalar
        ``alpha``, 0.25 by default, is a constant multiplier of the whole loss: a convention).
    ignore_index : int, optional
        Index targets only; as in :func:`ce_reference.softmax_cross_entropy`.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by softmax cross-entropy's denominator: :math:`\sum_n w_{y_n}` over
        kept rows for index targets, the number of rows for probability targets.

    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Notes
    -----
    A ``mean`` whose denominator is 0 (empty batch, every row ignored, target weights summing
    to 0) is NaN with a zero gradient, as for softmax cross-entropy.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> # two equal logits: p = 1/2, so (1/2)^2 log 2 per row
    >>> float(ce.softmax_focal_loss(np.zeros((3, 2)), np.array([0, 1, 1])))
    0.17328679513998632
    """
    P = _problem(logits, targets, gamma, axis, weight, ignore_index, reduction)
    sc = softmax_complement(P.x)
    A = _coefficients(P)
    mfac, _, _ = _focal(P, sc, A)
    return P.reduce(np.sum(mul0(A if mfac is None else A * mfac, sc.neg_logp), axis=-1))


def softmax_focal_loss_grad(logits, targets, *, gamma=2.0, axis=-1, weight=None,
                            ignore_index=None, reduction="mean"):
    r"""Gradient of :func:`softmax_focal_loss` with respect to ``logits``.

    .. math::

        \frac{\partial\ell_n}{\partial x_{n,k}} = p_{n,k}\sum_c B_{n,c} - B_{n,k},\qquad
        B_c = w_c q_c\,(1 - p_c)^{\gamma}\Bigl(1 + \gamma\,\frac{-p_c\log p_c}{1 - p_c}\Bigr),

    computed as :math:`p_k(\sum_c B_c - B_k) - B_k(1 - p_k)`; times ``1/denominator`` for
    ``mean``.  Same arguments as the loss; returns an array of ``logits``' shape.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.softmax_focal_loss_grad(np.zeros((1, 2)), np.array([0]), gamma=0.0).tolist()
    [[-0.5, 0.5]]
    """
    P = _problem(logits, targets, gamma, axis, weight, ignore_index, reduction)
    return P.finish_grad(_block(P)[1], scaled=True)


def softmax_focal_loss_value_and_grad(logits, targets, *, gamma=2.0, axis=-1, weight=None,
                                      ignore_index=None, reduction="mean", out=None,
                                      workers=None):
    """Loss and gradient of :func:`softmax_focal_loss` in one blocked sweep.

    Same arguments, numbers (bitwise) and errors as the loss and its gradient, computed block
    by block on ``workers`` threads by the generic blocked driver
    (:mod:`ce_reference.kernels.driver`).  ``out``: a C-contiguous, writeable buffer of
    ``logits``' shape and the gradient's dtype that receives the gradient (it may be
    ``logits`` itself).  ``workers``: threads, default all available cores; the results do
    not depend on it.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> loss, g = ce.softmax_focal_loss_value_and_grad(np.zeros((1, 2)), np.array([0]),
    ...                                                gamma=0.0)
    >>> float(loss), g.tolist()
    (0.6931471805599453, [[-0.5, 0.5]])
    """
    P = deferred_values(lambda check: _problem(logits, targets, gamma, axis, weight,
                                               ignore_index, reduction, check_values=check))
    return driver.class_value_and_grad(P, _block, out, workers)


def softmax_focal_loss_hvp(logits, targets, v, *, gamma=2.0, axis=-1, weight=None,
                           ignore_index=None, reduction="mean"):
    r"""Hessian-vector product of :func:`softmax_focal_loss` with respect to ``logits``.

    Per row, with :math:`d = v - \langle p, v\rangle` and :math:`\delta_c = d_c/(1 - p_c)`,

    .. math::

        (Hv)_k = \Bigl(\sum_c B_c\Bigr) p_k d_k + p_k\sum_c\beta_c - \beta_k,\qquad
        \beta_c = \gamma\,w_c q_c\,(1 - p_c)^\gamma\,
                  \bigl[\kappa_c - p_c(2 + \gamma\kappa_c)\bigr]\,\delta_c,

    :math:`\kappa_c = -p_c\log p_c/(1 - p_c)`, times the ``mean`` scale (module doc for the
    derivation).  ``gamma = 0`` is softmax cross-entropy's
    :math:`S\,p\odot(v - \langle p, v\rangle)`.  The :math:`C \times C` block is never formed.

    Parameters
    ----------
    logits, targets, gamma, axis, weight, ignore_index, reduction
        As in :func:`softmax_focal_loss` (validated by the same code, with the same errors).
    v : array_like of ``logits``' shape
        The direction; real, finite; cast to ``logits``' compute dtype.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.softmax_focal_loss_hvp(np.zeros((1, 2)), np.array([0]), [[1.0, -1.0]],
    ...                           gamma=0.0).tolist()
    [[0.5, -0.5]]
    """
    P = _problem(logits, targets, gamma, axis, weight, ignore_index, reduction)
    vm = class_last(P, v)
    sc = softmax_complement(P.x)
    A = _coefficients(P)
    mfac, kappa, B = _focal(P, sc, A)
    d, delta = centered(sc, vm)
    hv = np.sum(B, axis=-1, keepdims=True) * sc.p * d
    if mfac is not None:
        G = P.cdt.type(P.gamma)
        beta = G * A * mfac * (kappa - sc.p * (2 + G * kappa)) * delta
        Sbeta = np.sum(beta, axis=-1, keepdims=True)
        hv = hv + (sc.p * (Sbeta - beta) - beta * sc.one_minus_p)
    with np.errstate(over="ignore"):   # only a result beyond the dtype's range overflows
        hv = hv * P.cdt.type(P.scale)
    return P.finish_grad(hv, scaled=True)


def _complex_value(z, targets, *, gamma=2.0, axis=-1, weight=None, ignore_index=None,
                   reduction="mean"):
    """Each row's contribution to the reduced loss at complex logits ``z`` (complex step),
    through the same complex-safe pieces (:func:`ce_reference._special.softmax_complement`)."""
    z = np.asarray(z)
    P = _problem(z.real, targets, gamma, axis, weight, ignore_index, reduction)
    zc = np.moveaxis(z.reshape(P.pre, P.C, P.post), 1, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = softmax_complement(zc)
        coef = _coefficients(P)
        if P.gamma != 0:
            coef = mul0(coef, np.exp(P.gamma * sc.log_one_minus_p))
        rows = np.sum(mul0(coef, sc.neg_logp), axis=-1)
    return (rows * P.scale).reshape(P.batch_shape)


_REGIONS = ("random", "extreme")

SPEC = LossSpec(
    name="softmax_focal_loss", input="logits", structure="classes",
    targets=("index", "onehot", "soft"),
    options=(O.GAMMA, O.AXIS, O.CLASS_WEIGHT, O.IGNORE_INDEX),
    option_sets=(
        option_set("index, defaults", "index", (), _REGIONS),
        option_set("index + gamma", "index", ("gamma",), _REGIONS),
        option_set("index + gamma + weight + ignore_index", "index",
                   ("gamma", "weight", "ignore_index"), _REGIONS),
        option_set("soft (Dirichlet) + gamma", "soft", ("gamma",), _REGIONS),
        option_set("one-hot + gamma + weight", "onehot", ("gamma", "weight"), _REGIONS),
    ),
    value=softmax_focal_loss, grad=softmax_focal_loss_grad,
    value_and_grad=softmax_focal_loss_value_and_grad, hvp=softmax_focal_loss_hvp,
    complex_value=_complex_value,
    oracle="ce_reference.oracles.softmax_focal_loss:ORACLE",
    short="softmax-focal", ref="ce_reference.losses.softmax_focal_loss:SPEC",
)
