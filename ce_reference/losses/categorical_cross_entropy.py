r"""Categorical cross-entropy on probabilities: one loss, one module.

Targets are class indices (integer dtype, the input's shape without the class
axis) or probabilities / one-hot rows (any other dtype, the input's shape).
Rows are used as given: they are not renormalised.  :func:`_block` is the
whole computation (per-row losses and scaled class-last gradient of a
problem or one block of it): the plain functions run it on the whole problem
and ``value_and_grad`` block by block through the generic blocked driver
(:mod:`ce_reference.kernels.driver`), so the numbers are bitwise equal.
"""

from __future__ import annotations

import numpy as np
from scipy import special as _sp

from .. import backends
from .. import options as O
from .._problem import ClassProblem, deferred_values
from .._special import mul0
from .._validation import check_eps
from ..kernels import compiled_backend, driver
from ..spec import LossSpec, option_set
from ._hvp import class_last, diag_term

__all__ = [
    "categorical_cross_entropy",
    "categorical_cross_entropy_grad",
    "categorical_cross_entropy_value_and_grad",
    "categorical_cross_entropy_hvp",
]


def _problem(probs, targets, axis, weight, eps, reduction, check_values=True):
    P = ClassProblem(probs, targets, input_name="probs", input_kind="probabilities",
                     axis=axis, weight=weight, reduction=reduction, check_values=check_values)
    P.eps = check_eps(eps, P.rdt, P.cdt)
    return P


def _clipped(P, p):
    return p if P.eps is None else np.clip(p, P.eps, 1 - P.eps)


def _coefficients(P):
    """``A = w_c q_c`` for probability targets; ``(w_y, None)`` for index targets."""
    if P.index is not None:
        wy = np.ones(P.index.shape, P.cdt) if P.weight is None else P.weight[P.index]
        return wy, None
    return None, (P.probs if P.weight is None else P.probs * P.weight)


def _rows(P):
    """Per-row losses ``-sum_c w_c q_c log p_c`` (index targets: ``-w_y log p_y``)."""
    pc = _clipped(P, P.x)
    wy, A = _coefficients(P)
    with np.errstate(divide="ignore"):
        if A is None:
            py = np.take_along_axis(pc, P.index[..., None], axis=-1)[..., 0]
            return -mul0(wy, np.log(py))
        return -np.sum(_sp.xlogy(A, pc), axis=-1)


def _row_grad(P):
    """``-s w_c q_c / p_c``, class axis last, ``s`` the reduction scale.

    The numerator is scaled first and divided last, so nothing overflows
    unless the result does; 0 where ``w_c q_c = 0``; times the clip's
    indicator with ``eps``.
    """
    pm = P.x
    pc = _clipped(P, pm)
    scale = P.cdt.type(P.scale)
    wy, A = _coefficients(P)
    with np.errstate(divide="ignore", over="ignore"):   # a result beyond the range is inf
        if A is None:
            idx = P.index[..., None]
            py = np.take_along_axis(pc, idx, axis=-1)[..., 0]
            g = np.zeros_like(pc)
            num = -wy * scale
            gy = np.divide(num, py, out=np.zeros_like(py), where=num != 0)
            np.put_along_axis(g, idx, gy[..., None], axis=-1)
        else:
            num = -A * scale
            g = np.divide(num, pc, out=np.zeros_like(pc), where=num != 0)
    if P.eps is not None:
        g = np.where((pm >= P.eps) & (pm <= 1 - P.eps), g, 0)   # derivative of the clip
    return g


def _block(P):
    return _rows(P), _row_grad(P)


_CCE_DOC_ARGS = """
    Parameters
    ----------
    probs : array_like, shape ``(..., C, ...)``
        Predicted probabilities in [0, 1], class axis ``axis``.  Rows are used
        as given: they are not renormalised and need not sum to 1.
    targets : array_like
        Either integer class indices in ``[0, C)`` with the shape of ``probs``
        without the class axis, or target probabilities / one-hot rows in
        [0, 1] with the shape of ``probs`` (any non-integer dtype).
    axis : int, default -1
        The class axis.
    weight : array_like of shape ``(C,)``, optional
        Non-negative per-class weights :math:`w_c`.
    eps : float, optional
        ``None``: exact formula with :math:`0 \\log 0 = 0` (a target class with
        probability 0 gives an infinite loss, never NaN).  A float clips
        ``p`` to ``[eps, 1 - eps]``; the gradient is then that of the clipped
        function.  An ``eps`` for which ``1 - eps`` rounds to 1 is rejected.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by :math:`\\sum_n w_{y_n}` for index targets and by the
        number of rows for probability targets (PyTorch's two rules).
"""


def categorical_cross_entropy(probs, targets, *, axis=-1, weight=None, eps=None,
                              reduction="mean"):
    r"""Categorical cross-entropy of probabilities.

    .. math::

        \ell_n = -\sum_c w_c\, q_{n,c} \log p_{n,c}
        \quad\text{(probability targets)},\qquad
        \ell_n = -w_{y_n} \log p_{n, y_n}
        \quad\text{(index targets)},

    with :math:`0 \log 0 = 0`.  It equals
    ``softmax_cross_entropy(log(p))`` when the rows of ``p`` sum to 1.
    """ + _CCE_DOC_ARGS + r"""
    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Notes
    -----
    ``mean`` over an empty batch is NaN, as is a ``mean`` whose target
    weights sum to 0 (PyTorch's 0/0); the gradient is then zero.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> P = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]]
    >>> float(ce.categorical_cross_entropy(P, np.eye(3)))
    0.4243218919376292
    >>> float(ce.categorical_cross_entropy(P, np.array([0, 1, 2])))
    0.4243218919376292
    """
    P = _problem(probs, targets, axis, weight, eps, reduction)
    return P.reduce(_rows(P))


def categorical_cross_entropy_grad(probs, targets, *, axis=-1, weight=None, eps=None,
                                   reduction="mean"):
    r"""Gradient of :func:`categorical_cross_entropy` with respect to ``probs``.

    .. math::

        \frac{\partial \ell_n}{\partial p_{n,c}} = -\frac{w_c\, q_{n,c}}{p_{n,c}},

    0 where :math:`w_c q_{n,c} = 0`, times ``1/denominator`` for ``mean`` and
    the clip indicator when ``eps`` is set.  Same arguments as the loss;
    returns an array of ``probs``' shape.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.categorical_cross_entropy_grad([[0.5, 0.5]], np.array([1])).tolist()
    [[0.0, -2.0]]
    """
    P = _problem(probs, targets, axis, weight, eps, reduction)
    return P.finish_grad(_row_grad(P), scaled=True)


def categorical_cross_entropy_value_and_grad(probs, targets, *, axis=-1, weight=None,
                                             eps=None, reduction="mean", out=None,
                                             workers=None, backend=None):
    """Loss and gradient of :func:`categorical_cross_entropy` in one blocked sweep.

    Same arguments, numbers (bitwise) and errors as the loss and its gradient,
    computed block by block on ``workers`` threads
    (the generic blocked driver, :mod:`ce_reference.kernels.driver`).  ``out``: a C-contiguous,
    writeable buffer of ``probs``' shape and the gradient's dtype that receives
    the gradient (it may be ``probs`` itself).  ``workers``: threads, default
    all available cores; the results do not depend on it.  ``backend``:
    ``"numpy"`` (the plain formulas block by block) or ``"numba"`` (the compiled
    kernel, same formulas); default ``$CE_REFERENCE_BACKEND``, else ``"numba"``
    when numba is installed (:mod:`ce_reference.backends`).

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> loss, g = ce.categorical_cross_entropy_value_and_grad([[0.5, 0.5]], np.array([1]))
    >>> float(loss), g.tolist()
    (0.6931471805599453, [[0.0, -2.0]])
    """
    backend = backends.resolve(backend)
    P = deferred_values(lambda check: _problem(probs, targets, axis, weight, eps, reduction,
                                                  check_values=check))
    P.backend = backend
    return driver.class_value_and_grad(P, _block, out, workers,
                                       compiled=compiled_backend.categorical)


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
    P = _problem(probs, targets, axis, weight, eps, reduction)
    vm = class_last(P, v)
    pm = P.x
    wy, A = _coefficients(P)
    if A is None:                       # index targets: w_y at the target class, 0 elsewhere
        A = np.zeros_like(pm)
        np.put_along_axis(A, P.index[..., None], wy[..., None], axis=-1)
    pc = _clipped(P, pm)
    hv = diag_term(P.cdt.type(P.scale) * A, vm, pc)
    if P.eps is not None:
        hv = np.where((pm >= P.eps) & (pm <= 1 - P.eps), hv, 0)   # clip: constant outside
    return P.finish_grad(hv, scaled=True)


_PROBS = ("random", "near 0/1")
_CLIP = ("random", "near 0/1", "clip")

SPEC = LossSpec(
    name="categorical_cross_entropy", input="probs", structure="classes",
    targets=("index", "onehot", "soft"),
    options=(O.AXIS, O.CLASS_WEIGHT, O.EPS),
    option_sets=(
        option_set("index", "index", (), _PROBS),
        option_set("index + weight", "index", ("weight",), _PROBS),
        option_set("soft (Dirichlet)", "soft", (), _PROBS),
        option_set("one-hot + weight", "onehot", ("weight",), _PROBS),
        option_set("index + eps clip", "index", ("eps",), _CLIP),
        option_set("soft + eps + weight", "soft", ("eps", "weight"), _CLIP),
    ),
    value=categorical_cross_entropy, grad=categorical_cross_entropy_grad,
    value_and_grad=categorical_cross_entropy_value_and_grad, hvp=categorical_cross_entropy_hvp,
    oracle="ce_reference.oracles.categorical_cross_entropy:ORACLE",
    backends=("numpy", "numba"),
    short="CCE", ref="ce_reference.losses.categorical_cross_entropy:SPEC",
)
