r"""Binary cross-entropy on probabilities: one loss, one module.

:func:`_tile` is the whole computation (loss and scaled gradient of a problem
or of one tile of it); the plain functions run it on the whole problem and
``value_and_grad`` runs it tile by tile through the generic blocked driver
(:mod:`ce_reference.kernels.driver`), so the numbers are the same formulas.
"""

from __future__ import annotations

import numpy as np
from scipy import special as _sp

from .. import backends
from .. import options as O
from .._problem import ElementwiseProblem, deferred_values
from .._reduction import to_result
from .._special import mul0
from .._validation import check_eps
from ..kernels import compiled_backend, driver
from ..spec import LossSpec, option_set
from ._hvp import diag_term, direction

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "binary_cross_entropy_value_and_grad",
    "binary_cross_entropy_hvp",
]


def _problem(probs, targets, weight, eps, reduction, check_values=True):
    P = ElementwiseProblem(probs, input_name="probs", input_kind="probabilities",
                           operands=(("targets", targets, "unit"), ("weight", weight, "weight")),
                           reduction=reduction, check_values=check_values)
    P.eps = check_eps(eps, P.rdt, P.cdt)
    return P


def _clipped(P, p):
    return p if P.eps is None else np.clip(p, P.eps, 1 - P.eps)


def _loss(P, p, y, w):
    """``-w [y log p + (1-y) log(1-p)]`` per element, with ``xlogy(0, 0) = 0`` and
    ``log(1-p) = log1p(-p)`` (no rounding of ``1-p`` for tiny ``p``)."""
    pc = _clipped(P, p)
    loss = -(_sp.xlogy(y, pc) + _sp.xlog1py(1 - y, -pc))
    return loss if w is None else mul0(w, loss)


def _grad(P, p, y, w):
    """``d/dp = s w [(1-y)/(1-p) - y/p]``, ``s`` the reduction scale.

    The numerators ``s w y`` and ``s w (1-y)`` are formed first and divided
    last, so nothing overflows unless the result does (``w y / p`` alone can,
    e.g. float32 ``p = 1e-37``, ``w = 1e3``).  Each term is 0 where its
    numerator is 0 (0 log 0 = 0 in the derivative too).
    """
    pc = _clipped(P, p)
    scale = p.dtype.type(P.scale)
    a, b = y * scale, (1 - y) * scale
    if w is not None:
        a, b = w * a, w * b
    with np.errstate(divide="ignore", over="ignore"):   # a result beyond the range is inf
        g = (np.divide(b, 1 - pc, out=np.zeros_like(pc), where=b != 0)
             - np.divide(a, pc, out=np.zeros_like(pc), where=a != 0))
    if P.eps is not None:
        # derivative of the clip: 1 on [eps, 1-eps] (boundaries included, as
        # torch.clamp), 0 outside.
        g = np.where((p >= P.eps) & (p <= 1 - P.eps), g, 0)
    return g


def _tile(P):
    """Loss and scaled gradient of a problem (or one tile of it), compute dtype."""
    p, y, w = P.x, P.operand("targets"), P.operand("weight")
    return _loss(P, p, y, w), _grad(P, p, y, w)


def binary_cross_entropy(probs, targets, *, weight=None, eps=None, reduction="mean"):
    r"""Binary cross-entropy of probabilities.

    .. math::

        \ell_i = -w_i\,\bigl[y_i \log p_i + (1 - y_i)\log(1 - p_i)\bigr],
        \qquad 0 \cdot \log 0 = 0,

    reduced by ``mean`` (:math:`\frac1n\sum_i \ell_i`, ``n = probs.size``;
    the weight is *not* in the denominator, as in PyTorch), ``sum`` or
    ``none``.

    Parameters
    ----------
    probs : array_like, any shape
        Predicted probabilities in [0, 1].
    targets : array_like, broadcastable to ``probs``
        Target probabilities in [0, 1]; soft labels allowed.
    weight : array_like, broadcastable to ``probs``, optional
        Non-negative elementwise rescaling :math:`w_i` (PyTorch ``weight``).
    eps : float, optional
        ``None`` (default) evaluates the exact formula: a prediction of 0 (or 1)
        for a target that is not 0 (or 1) gives an infinite loss, never NaN.
        A float clips ``p`` to ``[eps, 1 - eps]`` first, like the classic NumPy
        examples; the gradient is then the exact derivative of the clipped
        function (zero outside the interval, pass-through on its boundary).
        An ``eps`` for which ``1 - eps`` rounds to 1 in the input's dtype is
        rejected.
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    loss : NumPy scalar, or array of ``probs.shape`` for ``"none"``
        In the input's float dtype (see the package's dtype policy).

    Notes
    -----
    PyTorch's ``F.binary_cross_entropy`` clamps each log at -100; this function
    does not (the two agree to the last bit wherever ``p > exp(-100)`` and
    ``1 - p > exp(-100)``).  ``mean`` over an empty input is NaN, as in
    PyTorch; ``sum`` is 0.  ``log(1 - p)`` is computed as ``log1p(-p)``.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> float(ce.binary_cross_entropy([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0]))
    0.16425203348601802
    """
    P = _problem(probs, targets, weight, eps, reduction)
    return P.reduce(_loss(P, P.x, P.operand("targets"), P.operand("weight")))


def binary_cross_entropy_grad(probs, targets, *, weight=None, eps=None, reduction="mean"):
    r"""Gradient of :func:`binary_cross_entropy` with respect to ``probs``.

    .. math::

        \frac{\partial \ell_i}{\partial p_i}
        = w_i\Bigl[\frac{1 - y_i}{1 - p_i} - \frac{y_i}{p_i}\Bigr]
        = w_i\,\frac{p_i - y_i}{p_i(1 - p_i)},

    times ``1/n`` for ``mean``; each fraction is 0 where its numerator is 0.
    With ``eps``, times the indicator of ``eps <= p_i <= 1 - eps``.  Same
    arguments as :func:`binary_cross_entropy`; returns an array of
    ``probs``' shape and result dtype.  ``reduction="none"`` gives the
    gradient of the sum of the per-element losses.

    Examples
    --------
    >>> import ce_reference as ce
    >>> ce.binary_cross_entropy_grad([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0]).round(6).tolist()
    [-0.277778, 0.277778, -0.3125, 0.3125]
    """
    P = _problem(probs, targets, weight, eps, reduction)
    return to_result(_grad(P, P.x, P.operand("targets"), P.operand("weight")), P.rdt)


def binary_cross_entropy_value_and_grad(probs, targets, *, weight=None, eps=None,
                                        reduction="mean", out=None, workers=None,
                                        backend=None):
    """``(binary_cross_entropy(...), binary_cross_entropy_grad(...))`` in one blocked sweep.

    Same numbers (bitwise) and errors as the two plain functions, computed tile
    by tile on ``workers`` threads (:mod:`ce_reference.kernels.driver`).
    ``out``: a C-contiguous, writeable buffer of ``probs``' shape and the
    gradient's dtype that receives the gradient (it may be ``probs`` itself).
    ``workers``: threads, default all available cores; the results do not
    depend on it.  ``backend``: ``"numpy"`` (the plain formulas tile by tile) or
    ``"numba"`` (the compiled kernel, same formulas, a few ULP apart); default
    ``$CE_REFERENCE_BACKEND``, else ``"numba"`` when numba is installed
    (:mod:`ce_reference.backends`).

    Examples
    --------
    >>> import ce_reference as ce
    >>> loss, g = ce.binary_cross_entropy_value_and_grad([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0])
    >>> float(loss), g.round(6).tolist()
    (0.16425203348601802, [-0.277778, 0.277778, -0.3125, 0.3125])
    """
    backend = backends.resolve(backend)
    P = deferred_values(lambda check: _problem(probs, targets, weight, eps, reduction,
                                                  check_values=check))
    P.backend = backend
    return driver.elementwise_value_and_grad(P, _tile, out, workers,
                                             compiled=compiled_backend.bce_probs)


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
    P = _problem(probs, targets, weight, eps, reduction)
    p, cdt = P.x, P.cdt
    vv = direction(v, p.shape, cdt, "probs")
    s = cdt.type(P.scale)
    pc = _clipped(P, p)
    y, w = P.operand("targets"), P.operand("weight")
    a = s * y                         # coefficient of 1/p^2
    b = s * (1 - y)                   # coefficient of 1/(1-p)^2
    if w is not None:
        a, b = w * a, w * b
    hv = diag_term(a, vv, pc) + diag_term(b, vv, 1 - pc)
    if P.eps is not None:
        hv = np.where((p >= P.eps) & (p <= 1 - P.eps), hv, 0)   # clip: constant outside
    return to_result(hv, P.rdt)


_PROBS = ("random", "near 0/1")
_CLIP = ("random", "near 0/1", "clip")

SPEC = LossSpec(
    name="binary_cross_entropy", input="probs", structure="elementwise",
    targets=("hard", "soft"),
    options=(O.ELEMENT_WEIGHT, O.EPS),
    option_sets=(
        option_set("hard targets", "hard", (), _PROBS),
        option_set("soft targets", "soft", (), _PROBS),
        option_set("weight", "soft", ("weight",), _PROBS),
        option_set("eps clip", "hard", ("eps",), _CLIP),
        option_set("eps + weight, soft", "soft", ("eps", "weight"), _CLIP),
    ),
    value=binary_cross_entropy, grad=binary_cross_entropy_grad,
    value_and_grad=binary_cross_entropy_value_and_grad, hvp=binary_cross_entropy_hvp,
    oracle="ce_reference.oracles.binary_cross_entropy:ORACLE",
    backends=("numpy", "numba"),
    short="BCE", ref="ce_reference.losses.binary_cross_entropy:SPEC",
)
