r"""Binary cross-entropy on logits (sigmoid + BCE, fused and stable): one loss, one module.

The elementwise formulas (:func:`elementwise_loss`, :func:`elementwise_grad`)
serve the plain functions, the complex-step oracle, the fused kernel's
fallback for infinite logits and :mod:`ce_reference.conventions`; the fused
``value_and_grad`` is the hand-written kernel :mod:`ce_reference.kernels.bce_logits`.
"""

from __future__ import annotations

import numpy as np

from .. import backends
from .. import options as O
from .._problem import ElementwiseProblem, deferred_values
from .._reduction import to_result
from .._special import mul0, sigmoid, softplus
from ..kernels import bce_logits as _kernel
from ..spec import BenchCase, LossSpec, option_set
from ._hvp import direction

__all__ = [
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_grad",
    "binary_cross_entropy_with_logits_value_and_grad",
    "binary_cross_entropy_with_logits_hvp",
]


def _problem(logits, targets, weight, pos_weight, reduction, check_values=True):
    # PyTorch broadcasts pos_weight against the input, i.e. along the last axis.
    return ElementwiseProblem(
        logits, input_name="logits", input_kind="logits", reduction=reduction,
        operands=(("targets", targets, "unit"), ("weight", weight, "weight"),
                  ("pos_weight", pos_weight, "weight")),
        check_values=check_values)


def coefficients(y, pos_weight=None):
    """Coefficients ``(a, b) = (pw y, 1 - y)`` of ``softplus(-x)`` and ``softplus(x)``."""
    return (y if pos_weight is None else pos_weight * y), 1 - y


def elementwise_loss(x, a, b, w=None):
    """Per-element loss ``w [a softplus(-x) + b softplus(x)]`` (complex-safe)."""
    # Both terms are non-negative for real x, so their sum has no cancellation;
    # 0 * softplus(+-inf) = 0 keeps saturated logits finite.  A loss beyond the dtype's
    # range is inf, its correct rounding.
    with np.errstate(over="ignore"):
        loss = mul0(a, softplus(-x)) + mul0(b, softplus(x))
        return loss if w is None else mul0(w, loss)


def elementwise_grad(x, a, b, w=None):
    """Per-element derivative ``w [b sigma(x) - a sigma(-x)]``.

    With ``a = y, b = 1 - y`` this is ``sigma(x) - y``, but written this way
    ``sigma(x) - 1 = -sigma(-x)`` never cancels.
    """
    g = b * sigmoid(x) - a * sigmoid(-x)
    return g if w is None else w * g


def _plain(x, y, w, pw):
    """Loss and gradient of the sum on one tile (the fused kernel's fallback)."""
    a, b = coefficients(y, pw)
    return elementwise_loss(x, a, b, w), elementwise_grad(x, a, b, w)


def binary_cross_entropy_with_logits(logits, targets, *, weight=None, pos_weight=None,
                                     reduction="mean"):
    r"""Binary cross-entropy of logits (sigmoid + BCE, fused and stable).

    .. math::

        \ell_i = w_i\bigl[\,\mathrm{pw}_i\, y_i\,\operatorname{softplus}(-x_i)
                 + (1 - y_i)\operatorname{softplus}(x_i)\bigr]
               = -w_i\bigl[\mathrm{pw}_i\, y_i \log\sigma(x_i)
                 + (1 - y_i)\log(1 - \sigma(x_i))\bigr],

    with :math:`\operatorname{softplus}(x) = \log(1 + e^x)` computed as
    ``max(x, 0) + log1p(exp(-|x|))``; reduced by ``mean`` (over
    ``logits.size`` elements), ``sum`` or ``none``.

    Parameters
    ----------
    logits : array_like, any shape
        Real logits :math:`x`; ``±inf`` are allowed (they give the limit),
        NaN is an error.
    targets : array_like, broadcastable to ``logits``
        Targets in [0, 1]; soft labels allowed.
    weight : array_like, broadcastable to ``logits``, optional
        Non-negative elementwise rescaling :math:`w_i`.
    pos_weight : array_like, broadcastable to ``logits``, optional
        Non-negative weight of the positive term; a shape ``(C,)`` array
        broadcasts along the last axis, as in PyTorch.
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    loss : NumPy scalar, or array of ``logits.shape`` for ``"none"``

    Notes
    -----
    Same numbers as ``torch.nn.functional.binary_cross_entropy_with_logits``
    (written there as :math:`(1-y)x + (1 + (\mathrm{pw}-1)y)\operatorname{softplus}(-x)`,
    which is the same function).  Both terms here are non-negative, so there is
    no cancellation and the loss is accurate to a few ULP for ``|x|`` up to
    1e4 and beyond.  ``mean`` of an empty input is NaN.  Unlike PyTorch,
    negative ``weight``/``pos_weight`` are rejected.

    Examples
    --------
    >>> import ce_reference as ce
    >>> float(ce.binary_cross_entropy_with_logits([2.0, -1.0], [1.0, 0.0]))
    0.2200948492805977
    """
    P = _problem(logits, targets, weight, pos_weight, reduction)
    a, b = coefficients(P.operand("targets"), P.operand("pos_weight"))
    return P.reduce(elementwise_loss(P.x, a, b, P.operand("weight")))


def binary_cross_entropy_with_logits_grad(logits, targets, *, weight=None, pos_weight=None,
                                          reduction="mean"):
    r"""Gradient of :func:`binary_cross_entropy_with_logits` with respect to ``logits``.

    .. math::

        \frac{\partial \ell_i}{\partial x_i}
        = w_i\bigl[(1 - y_i)\,\sigma(x_i) - \mathrm{pw}_i\, y_i\,\sigma(-x_i)\bigr]
        = w_i\bigl[(\mathrm{pw}_i y_i + 1 - y_i)\sigma(x_i) - \mathrm{pw}_i y_i\bigr],

    times ``1/n`` for ``mean``; for ``pw = 1`` this is ``w (sigma(x) - y)``.
    The first form is the one computed: ``sigma(x) - 1 = -sigma(-x)`` is
    never formed by subtraction.  Same arguments as the loss.

    Examples
    --------
    >>> import ce_reference as ce
    >>> ce.binary_cross_entropy_with_logits_grad([0.0, 0.0], [1.0, 0.0]).tolist()
    [-0.25, 0.25]
    """
    P = _problem(logits, targets, weight, pos_weight, reduction)
    a, b = coefficients(P.operand("targets"), P.operand("pos_weight"))
    g = elementwise_grad(P.x, a, b, P.operand("weight"))
    return to_result(g * P.x.dtype.type(P.scale), P.rdt)


def binary_cross_entropy_with_logits_value_and_grad(logits, targets, *, weight=None,
                                                    pos_weight=None, reduction="mean",
                                                    out=None, workers=None, backend=None):
    r"""Loss and gradient of :func:`binary_cross_entropy_with_logits` in one fused sweep.

    Same arguments, numbers (to a few ULP) and errors as the loss and its
    gradient, computed tile by tile on ``workers`` threads with every operation
    into per-thread scratch (:mod:`ce_reference.kernels.bce_logits`): with
    ``e = exp(-|x|)``, ``softplus(+-x) = max(+-x, 0) + log1p(e)`` and
    ``sigma(x) = e / (1 + e)`` (``x < 0``) or ``1 / (1 + e)`` (``x >= 0``), one
    exponential and one logarithm per element.

    Parameters
    ----------
    out : ndarray, optional
        C-contiguous, writeable buffer of the logits' shape and the gradient's
        dtype that receives the gradient (and is returned); it may be the logits
        array itself (an in-place call checks the values before the first write, so
        an invalid value raises with the logits untouched: one extra read pass).
    workers : int, optional
        Threads; default all available cores.  The results are bitwise identical
        for every value.
    backend : {"numpy", "numba"}, optional
        The kernels: the blocked NumPy ones or the compiled ones (the ``fast``
        extra).  Default: ``$CE_REFERENCE_BACKEND``, else ``"numba"`` when numba is
        installed, else ``"numpy"`` (:mod:`ce_reference.backends`).  Both give the
        plain functions' numbers to a few ULP, each gated against mpmath by the
        verifier.

    Examples
    --------
    >>> import ce_reference as ce
    >>> loss, g = ce.binary_cross_entropy_with_logits_value_and_grad([0.0, 0.0], [1.0, 0.0])
    >>> float(loss), g.tolist()
    (0.6931471805599453, [-0.25, 0.25])
    """
    backend = backends.resolve(backend)
    P = deferred_values(lambda check: _problem(logits, targets, weight, pos_weight, reduction,
                                                  check_values=check))
    P.backend = backend
    return _kernel.value_and_grad(P, _plain, out, workers)


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
    P = _problem(logits, targets, weight, pos_weight, reduction)
    x = P.x
    a, b = coefficients(P.operand("targets"), P.operand("pos_weight"))
    vv = direction(v, x.shape, x.dtype, "logits")
    # d * v first (|d| <= 1/4 so it cannot overflow), then the coefficients.
    hv = (_sigmoid_prime(x) * vv) * (a + b)      # a + b = pw y + 1 - y >= 0
    w = P.operand("weight")
    if w is not None:
        hv = w * hv
    with np.errstate(over="ignore"):  # only a result beyond the dtype's range overflows
        hv = hv * x.dtype.type(P.scale)
    return to_result(hv, P.rdt)


def _complex_value(z, targets, *, weight=None, pos_weight=None, reduction="mean"):
    """Each element's contribution to the reduced loss at complex logits ``z`` (complex step)."""
    z = np.asarray(z)
    P = _problem(z.real, targets, weight, pos_weight, reduction)
    a, b = coefficients(P.operand("targets"), P.operand("pos_weight"))
    return elementwise_loss(z, a, b, P.operand("weight")) * P.scale


_REGIONS = ("random", "extreme")

SPEC = LossSpec(
    name="binary_cross_entropy_with_logits", input="logits", structure="elementwise",
    targets=("hard", "soft"),
    options=(O.ELEMENT_WEIGHT, O.POS_WEIGHT),
    option_sets=(
        option_set("hard targets", "hard", (), _REGIONS),
        option_set("soft targets", "soft", (), _REGIONS),
        option_set("weight", "soft", ("weight",), _REGIONS),
        option_set("pos_weight", "hard", ("pos_weight",), _REGIONS),
        option_set("weight + pos_weight, soft", "soft", ("weight", "pos_weight"), _REGIONS),
    ),
    value=binary_cross_entropy_with_logits, grad=binary_cross_entropy_with_logits_grad,
    value_and_grad=binary_cross_entropy_with_logits_value_and_grad,
    hvp=binary_cross_entropy_with_logits_hvp, complex_value=_complex_value,
    oracle="ce_reference.oracles.binary_cross_entropy_with_logits:ORACLE",
    benchmarks=(BenchCase((10_000_000,), "hard",
                          goals=(("torch eager", ">=", 3.0), ("jax.jit + optax", ">", 1.0)),
                          compiled_goals=(("floor", "<=", 3.5), ("torch eager", ">=", 5.0),
                                          ("jax.jit + optax", ">=", 3.0))),),
    backends=("numpy", "numba"),
    short="BCE-logits", ref="ce_reference.losses.binary_cross_entropy_with_logits:SPEC",
)
