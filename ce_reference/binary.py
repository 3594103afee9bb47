r"""Binary cross-entropy on probabilities and on logits (NumPy, hand-derived gradients).

Each loss is one function, with its gradient and value-and-gradient right
below it; all three share one private kernel so they can never disagree.
"""

from __future__ import annotations

import numpy as np
from scipy import special as _sp

from . import _kernels_binary
from . import _validation as V
from ._reduction import grad_scale, reduce_loss, to_result
from ._special import mul0, sigmoid, softplus

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "binary_cross_entropy_value_and_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_grad",
    "binary_cross_entropy_with_logits_value_and_grad",
]


# --------------------------------------------------------------------------- probabilities

def _bce_probs_prepare(probs, targets, weight, eps, reduction):
    """Validate the arguments of :func:`binary_cross_entropy`; return them converted:
    ``(p, y, w, eps, reduction, cdt, rdt)`` (shared with the Hessian-vector product)."""
    p, cdt, rdt = V.as_input("probs", probs)
    V.check_unit_interval("probs", p, "probabilities")
    y = V.broadcast_to_input("targets", targets, p.shape, cdt)
    V.check_unit_interval("targets", y, "binary targets")
    w = None
    if weight is not None:
        w = V.broadcast_to_input("weight", weight, p.shape, cdt)
        V.check_nonnegative_finite("weight", w)
    reduction = V.check_reduction(reduction)
    eps = V.check_eps(eps, rdt, cdt)
    return p, y, w, eps, reduction, cdt, rdt


def _bce_probs(probs, targets, weight, eps, reduction, want_value, want_grad, scale=None):
    """Loss and/or gradient; ``scale`` overrides the reduction's gradient scale (the
    fused kernel passes the whole array's ``1/n`` when it calls this on a tile)."""
    p, y, w, eps, reduction, cdt, rdt = _bce_probs_prepare(probs, targets, weight, eps,
                                                           reduction)
    pc = p if eps is None else np.clip(p, eps, 1 - eps)
    one_minus_y = 1 - y
    value = grad = None
    if want_value:
        # -[y log p + (1-y) log(1-p)], with xlogy(0, 0) = 0 and log(1-p) = log1p(-p)
        # (no rounding of 1-p for tiny p).
        loss = -(_sp.xlogy(y, pc) + _sp.xlog1py(one_minus_y, -pc))
        if w is not None:
            loss = mul0(w, loss)
        value = reduce_loss(loss, reduction, p.size, rdt)
    if want_grad:
        # d/dp = s w [(1-y)/(1-p) - y/p] with s the reduction scale.  The numerators
        # s w y and s w (1-y) are formed first and divided last, so nothing overflows
        # unless the result does (w y / p alone can, e.g. float32 p = 1e-37, w = 1e3).
        # Each term is 0 where its numerator is 0 (0 * log 0 = 0 in the derivative too).
        scale = cdt.type(grad_scale(reduction, p.size) if scale is None else scale)
        a, b = y * scale, one_minus_y * scale
        if w is not None:
            a, b = w * a, w * b
        with np.errstate(divide="ignore"):
            g = (np.divide(b, 1 - pc, out=np.zeros_like(pc), where=b != 0)
                 - np.divide(a, pc, out=np.zeros_like(pc), where=a != 0))
        if eps is not None:
            # derivative of the clip: 1 on [eps, 1-eps] (boundaries included, as
            # torch.clamp), 0 outside.
            g = np.where((p >= eps) & (p <= 1 - eps), g, 0)
        grad = to_result(g, rdt)
    return value, grad


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
    return _bce_probs(probs, targets, weight, eps, reduction, True, False)[0]


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
    return _bce_probs(probs, targets, weight, eps, reduction, False, True)[1]


def binary_cross_entropy_value_and_grad(probs, targets, *, weight=None, eps=None,
                                        reduction="mean", out=None, workers=None):
    """``(binary_cross_entropy(...), binary_cross_entropy_grad(...))`` in one blocked sweep.

    Same numbers (bitwise) and errors as the two plain functions, computed tile
    by tile on ``workers`` threads (:mod:`ce_reference._kernels_binary`).
    ``out``: a C-contiguous, writeable buffer of ``probs``' shape and the
    gradient's dtype that receives the gradient (it may be ``probs`` itself).
    ``workers``: threads, default all available cores; the results do not
    depend on it.

    Examples
    --------
    >>> import ce_reference as ce
    >>> loss, g = ce.binary_cross_entropy_value_and_grad([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0])
    >>> float(loss), g.round(6).tolist()
    (0.16425203348601802, [-0.277778, 0.277778, -0.3125, 0.3125])
    """
    return _kernels_binary.bce_probs_value_and_grad(probs, targets, weight, eps, reduction,
                                                    out, workers)


# --------------------------------------------------------------------------- logits

def _bce_logits_prepare(logits, targets, weight, pos_weight, reduction):
    x, cdt, rdt = V.as_input("logits", logits)
    V.check_no_nan("logits", x)
    y = V.broadcast_to_input("targets", targets, x.shape, cdt)
    V.check_unit_interval("targets", y, "binary targets")
    w = pw = None
    if weight is not None:
        w = V.broadcast_to_input("weight", weight, x.shape, cdt)
        V.check_nonnegative_finite("weight", w)
    if pos_weight is not None:
        # PyTorch broadcasts pos_weight against the input, i.e. along the last axis.
        pw = V.broadcast_to_input("pos_weight", pos_weight, x.shape, cdt)
        V.check_nonnegative_finite("pos_weight", pw)
    reduction = V.check_reduction(reduction)
    # Coefficients of the two softplus terms: a = pw * y, b = 1 - y.
    a = y if pw is None else pw * y
    return x, a, 1 - y, w, reduction, rdt


def _bce_logits_elementwise(x, a, b, w):
    """Per-element loss ``w [a softplus(-x) + b softplus(x)]`` (complex-safe)."""
    # Both terms are non-negative for real x, so their sum has no cancellation;
    # 0 * softplus(+-inf) = 0 keeps saturated logits finite.
    loss = mul0(a, softplus(-x)) + mul0(b, softplus(x))
    return loss if w is None else mul0(w, loss)


def _bce_logits(logits, targets, weight, pos_weight, reduction, want_value, want_grad):
    x, a, b, w, reduction, rdt = _bce_logits_prepare(logits, targets, weight, pos_weight,
                                                     reduction)
    value = grad = None
    if want_value:
        value = reduce_loss(_bce_logits_elementwise(x, a, b, w), reduction, x.size, rdt)
    if want_grad:
        # d/dx [a sp(-x) + b sp(x)] = b sigma(x) - a sigma(-x); with a = y, b = 1-y this is
        # sigma(x) - y, but written this way sigma(x) - 1 = -sigma(-x) never cancels.
        g = b * sigmoid(x) - a * sigmoid(-x)
        if w is not None:
            g = w * g
        grad = to_result(g * x.dtype.type(grad_scale(reduction, x.size)), rdt)
    return value, grad


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
    return _bce_logits(logits, targets, weight, pos_weight, reduction, True, False)[0]


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
    return _bce_logits(logits, targets, weight, pos_weight, reduction, False, True)[1]


def binary_cross_entropy_with_logits_value_and_grad(logits, targets, *, weight=None,
                                                    pos_weight=None, reduction="mean",
                                                    out=None, workers=None):
    r"""Loss and gradient of :func:`binary_cross_entropy_with_logits` in one fused sweep.

    Same arguments, numbers (to a few ULP) and errors as the loss and its
    gradient, computed tile by tile on ``workers`` threads with every operation
    into per-thread scratch (:mod:`ce_reference._kernels_binary`): with
    ``e = exp(-|x|)``, ``softplus(+-x) = max(+-x, 0) + log1p(e)`` and
    ``sigma(x) = e / (1 + e)`` (``x < 0``) or ``1 / (1 + e)`` (``x >= 0``), one
    exponential and one logarithm per element.

    Parameters
    ----------
    out : ndarray, optional
        C-contiguous, writeable buffer of the logits' shape and the gradient's
        dtype that receives the gradient (and is returned); it may be the logits
        array itself (if an error is raised, the logits may be partly overwritten).
    workers : int, optional
        Threads; default all available cores.  The results are bitwise identical
        for every value.

    Examples
    --------
    >>> import ce_reference as ce
    >>> loss, g = ce.binary_cross_entropy_with_logits_value_and_grad([0.0, 0.0], [1.0, 0.0])
    >>> float(loss), g.tolist()
    (0.6931471805599453, [-0.25, 0.25])
    """
    return _kernels_binary.bce_logits_value_and_grad(logits, targets, weight, pos_weight,
                                                     reduction, out, workers)
