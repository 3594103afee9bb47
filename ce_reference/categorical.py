r"""Categorical cross-entropy on probabilities and softmax cross-entropy on logits.

Targets are either class indices (integer dtype, the input's shape without the
class axis) or probabilities / one-hot rows (any other dtype, the input's
shape); the dtype decides, as in PyTorch's ``F.cross_entropy``.  Internally
the class axis is moved last; every result is moved back.
"""

from __future__ import annotations

import numpy as np
from scipy import special as _sp

from . import _kernels_categorical, _kernels_softmax
from . import _validation as V
from ._reduction import grad_scale, reduce_loss, to_result
from ._special import log_softmax_parts, mul0

__all__ = [
    "categorical_cross_entropy",
    "categorical_cross_entropy_grad",
    "categorical_cross_entropy_value_and_grad",
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_value_and_grad",
]


def _class_axis(name, x, axis):
    ax = V.normalize_axis(axis, x.ndim)
    if x.shape[ax] == 0:
        raise ValueError(f"{name} has an empty class axis {ax}; expected at least one class")
    return ax


def _finish_grad(g, ax, scale, rdt):
    """Apply the reduction scale, move the class axis back, cast to the result dtype."""
    g = g * g.dtype.type(scale)
    return to_result(np.moveaxis(g, -1, ax), rdt)


# --------------------------------------------------------------------------- probabilities

def _cce_prepare(probs, targets, axis, weight, eps, reduction):
    """Validate the arguments of :func:`categorical_cross_entropy`; return them
    converted: ``(pm, ax, T, w, eps, reduction, cdt, rdt)`` with ``pm`` class-last
    (shared with the Hessian-vector product)."""
    p, cdt, rdt = V.as_input("probs", probs)
    ax = _class_axis("probs", p, axis)
    V.check_unit_interval("probs", p, "probabilities")
    T = V.class_targets(targets, p.shape, ax, cdt)
    w = V.class_weight(weight, p.shape[ax], cdt)
    reduction = V.check_reduction(reduction)
    eps = V.check_eps(eps, rdt, cdt)
    return np.moveaxis(p, ax, -1), ax, T, w, eps, reduction, cdt, rdt


def _cce(probs, targets, axis, weight, eps, reduction, want_value, want_grad, scale=None):
    """Loss and/or gradient; ``scale`` overrides the reduction's gradient scale (the
    fused kernel passes the whole batch's ``1/denominator`` when it calls this on a block)."""
    pm, ax, T, w, eps, reduction, cdt, rdt = _cce_prepare(probs, targets, axis, weight, eps,
                                                          reduction)
    pc = pm if eps is None else np.clip(pm, eps, 1 - eps)
    if T.index is not None:
        idx = T.index[..., None]
        py = np.take_along_axis(pc, idx, axis=-1)[..., 0]
        wy = np.ones_like(py) if w is None else w[T.index]
        denom = float(np.sum(wy, dtype=np.float64))
    else:
        A = T.probs if w is None else T.probs * w            # w_c q_c
        denom = float(pm[..., 0].size)                       # number of rows

    value = grad = None
    if want_value:
        with np.errstate(divide="ignore"):
            if T.index is not None:
                rows = -mul0(wy, np.log(py))                     # -w_y log p_y
            else:
                rows = -np.sum(_sp.xlogy(A, pc), axis=-1)        # -sum_c w_c q_c log p_c
        value = reduce_loss(rows, reduction, denom, rdt)
    if want_grad:
        # -s w_c q_c / p_c, s the reduction scale: the numerator is scaled first and
        # divided last, so nothing overflows unless the result does.
        scale = cdt.type(grad_scale(reduction, denom) if scale is None else scale)
        with np.errstate(divide="ignore"):
            if T.index is not None:
                g = np.zeros_like(pc)
                num = -wy * scale
                gy = np.divide(num, py, out=np.zeros_like(py), where=num != 0)
                np.put_along_axis(g, idx, gy[..., None], axis=-1)
            else:
                num = -A * scale
                g = np.divide(num, pc, out=np.zeros_like(pc), where=num != 0)
        if eps is not None:
            g = np.where((pm >= eps) & (pm <= 1 - eps), g, 0)   # derivative of the clip
        grad = _finish_grad(g, ax, 1.0, rdt)
    return value, grad


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
    return _cce(probs, targets, axis, weight, eps, reduction, True, False)[0]


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
    return _cce(probs, targets, axis, weight, eps, reduction, False, True)[1]


def categorical_cross_entropy_value_and_grad(probs, targets, *, axis=-1, weight=None,
                                             eps=None, reduction="mean", out=None,
                                             workers=None):
    """Loss and gradient of :func:`categorical_cross_entropy` in one blocked sweep.

    Same arguments, numbers (bitwise) and errors as the loss and its gradient,
    computed block by block on ``workers`` threads
    (:mod:`ce_reference._kernels_categorical`).  ``out``: a C-contiguous,
    writeable buffer of ``probs``' shape and the gradient's dtype that receives
    the gradient (it may be ``probs`` itself).  ``workers``: threads, default
    all available cores; the results do not depend on it.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> loss, g = ce.categorical_cross_entropy_value_and_grad([[0.5, 0.5]], np.array([1]))
    >>> float(loss), g.tolist()
    (0.6931471805599453, [[0.0, -2.0]])
    """
    return _kernels_categorical.cce_value_and_grad(probs, targets, axis, weight, eps,
                                                   reduction, out, workers)


# --------------------------------------------------------------------------- logits

def _check_logits(x, ax):
    V.check_no_nan("logits", x)
    if np.isposinf(x).any():
        raise ValueError("logits contains +inf; expected finite values or -inf (a masked class)")
    if x.size and np.isneginf(np.max(x, axis=ax)).any():
        raise ValueError("logits has a row whose entries are all -inf; no class has probability")


class _SoftmaxProblem:
    """Validated arguments of a softmax cross-entropy call (class axis last).

    Attributes: ``x`` (logits, class axis last), ``ax``, ``C``, ``index``/``keep``
    or ``A`` (the per-class coefficients ``w_c q'_c`` of probability targets),
    ``w``, ``ls``, ``denom``, ``reduction``, ``rdt``.
    """

    def __init__(self, logits, targets, axis, weight, ignore_index, label_smoothing, reduction):
        x, cdt, self.rdt = V.as_input("logits", logits)
        self.ax = ax = _class_axis("logits", x, axis)
        _check_logits(x, ax)
        T = V.class_targets(targets, x.shape, ax, cdt, ignore_index, "probabilities / one-hot")
        self.C = C = x.shape[ax]
        self.w = w = V.class_weight(weight, C, cdt)
        self.ls = ls = V.check_label_smoothing(label_smoothing)
        self.reduction = V.check_reduction(reduction)
        self.x = np.moveaxis(x, ax, -1)
        self.index, self.keep = T.index, T.keep
        if T.index is not None:
            wy = np.ones(T.index.shape, cdt) if w is None else w[T.index]
            keepf = T.keep.astype(cdt)
            # coefficient of -log p_y: (1 - eps) w_y on kept rows
            self.c_nll = keepf * cdt.type(1 - ls) * wy
            # coefficient of the uniform term sum_c w_c (-log p_c): eps / C on kept rows
            self.c_smooth = keepf * cdt.type(ls / C)
            self.denom = float(np.sum(keepf * wy, dtype=np.float64))   # PyTorch: sum of w_{y_n}
            self.A = None
        else:
            q = T.probs if ls == 0 else T.probs * cdt.type(1 - ls) + cdt.type(ls / C)
            self.A = q if w is None else q * w
            self.denom = float(self.x[..., 0].size)                  # PyTorch: number of rows


def _softmax_rows(P: _SoftmaxProblem, x):
    """Per-row losses for the logits ``x`` (class axis last); complex-safe.

    ``x`` is normally ``P.x``; the verifier's complex-step oracle passes a
    perturbed complex copy through this same code.
    """
    neg_logp, _ = log_softmax_parts(x)
    if P.A is not None:
        return np.sum(mul0(P.A, neg_logp), axis=-1)
    nll = np.take_along_axis(neg_logp, P.index[..., None], axis=-1)[..., 0]
    rows = mul0(P.c_nll, nll)
    if P.ls:
        per_class = neg_logp if P.w is None else mul0(P.w, neg_logp)
        rows = rows + mul0(P.c_smooth, np.sum(per_class, axis=-1))
    return rows


def _softmax_row_grad(P: _SoftmaxProblem):
    """d(row loss)/dx with the class axis last: ``p * sum_c A_c - A``."""
    _, p = log_softmax_parts(P.x)
    if P.A is not None:
        return p * np.sum(P.A, axis=-1, keepdims=True) - P.A
    W = P.C if P.w is None else np.sum(P.w, dtype=np.float64)
    total = P.c_nll + P.c_smooth * P.x.dtype.type(W)          # sum_c A_c of each row
    g = p * total[..., None]
    if P.ls:
        g -= P.c_smooth[..., None] * (1 if P.w is None else P.w)
    idx = P.index[..., None]
    np.put_along_axis(g, idx, np.take_along_axis(g, idx, axis=-1) - P.c_nll[..., None], axis=-1)
    return g


def _softmax_ce(logits, targets, axis, weight, ignore_index, label_smoothing, reduction,
                want_value, want_grad):
    P = _SoftmaxProblem(logits, targets, axis, weight, ignore_index, label_smoothing, reduction)
    value = grad = None
    if want_value:
        value = reduce_loss(_softmax_rows(P, P.x), P.reduction, P.denom, P.rdt)
    if want_grad:
        grad = _finish_grad(_softmax_row_grad(P), P.ax, grad_scale(P.reduction, P.denom), P.rdt)
    return value, grad


def softmax_cross_entropy(logits, targets, *, axis=-1, weight=None, ignore_index=None,
                          label_smoothing=0.0, reduction="mean"):
    r"""Softmax cross-entropy of logits (PyTorch's ``F.cross_entropy``).

    With :math:`-\log p_{n,c} = \operatorname{logsumexp}(x_n) - x_{n,c}` and
    label smoothing :math:`\varepsilon`:

    .. math::

        \ell_n = \sum_c w_c\, q'_{n,c}\,\bigl(\operatorname{logsumexp}(x_n) - x_{n,c}\bigr),
        \qquad q' = (1 - \varepsilon)\, q + \varepsilon / C,

    where for index targets :math:`q` is one-hot and, as in PyTorch, the
    true-class term carries :math:`w_{y_n}` while the uniform term carries each
    :math:`w_c` (``(1-ε) w_y (-log p_y) + (ε/C) Σ_c w_c (-log p_c)``); rows with
    ``targets == ignore_index`` contribute 0.

    Parameters
    ----------
    logits : array_like, shape ``(..., C, ...)``
        Real logits, class axis ``axis``.  ``-inf`` marks a class with
        probability 0; NaN, ``+inf`` and rows that are all ``-inf`` are errors.
    targets : array_like
        Integer class indices in ``[0, C)`` of the batch shape (the input's
        shape without ``axis``), or probabilities / one-hot rows of the input's
        shape (any non-integer dtype).
    axis : int, default -1
        The class axis.  (PyTorch fixes it at 1; pass ``axis=1`` for its layout.)
    weight : array_like of shape ``(C,)``, optional
        Non-negative per-class weights.
    ignore_index : int, optional
        Index targets only.  ``None`` (default) ignores nothing and any index
        outside ``[0, C)`` is an error; an int drops the rows whose target
        equals it (zero loss, zero gradient, not in the ``mean`` denominator).
        It may be negative (PyTorch's own default is -100) or a valid class.
    label_smoothing : float in [0, 1], default 0
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by :math:`\sum_{n \text{ kept}} w_{y_n}` (the count of
        kept rows without weights) for index targets and by the number of rows
        for probability targets, exactly as PyTorch does (PyTorch #107680).

    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Notes
    -----
    ``logsumexp(x) - x_c`` is computed as ``(m - x_c) + log1p(t)`` with ``m``
    the row maximum and ``t`` the sum of the other shifted exponentials, so
    both terms are non-negative and a confident row keeps its accuracy.
    ``mean`` over an empty batch, over all-ignored rows, or with target
    weights summing to 0 is NaN (PyTorch's 0/0); the gradient is then zero.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> float(ce.softmax_cross_entropy(z, np.array([0, 1])))
    0.3185397696491856
    """
    return _softmax_ce(logits, targets, axis, weight, ignore_index, label_smoothing, reduction,
                       True, False)[0]


def softmax_cross_entropy_grad(logits, targets, *, axis=-1, weight=None, ignore_index=None,
                               label_smoothing=0.0, reduction="mean"):
    r"""Gradient of :func:`softmax_cross_entropy` with respect to ``logits``.

    .. math::

        \frac{\partial \ell_n}{\partial x_{n,k}}
        = p_{n,k} \sum_c w_c\, q'_{n,c} - w_k\, q'_{n,k},
        \qquad p_n = \operatorname{softmax}(x_n),

    which is ``softmax(x) - q`` without weights or smoothing; times
    ``1/denominator`` for ``mean``.  Ignored rows get exactly zero.  Same
    arguments as the loss; returns an array of ``logits``' shape.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.softmax_cross_entropy_grad(np.zeros((1, 2)), np.array([0])).tolist()
    [[-0.5, 0.5]]
    """
    return _softmax_ce(logits, targets, axis, weight, ignore_index, label_smoothing, reduction,
                       False, True)[1]


def softmax_cross_entropy_value_and_grad(logits, targets, *, axis=-1, weight=None,
                                         ignore_index=None, label_smoothing=0.0,
                                         reduction="mean", out=None, workers=None):
    r"""Loss and gradient of :func:`softmax_cross_entropy` in one fused sweep.

    Same arguments, numbers and errors as :func:`softmax_cross_entropy` and
    :func:`softmax_cross_entropy_grad` (to a few ULP; see
    ``docs/benchmarks.md``), computed by a blocked, multithreaded
    kernel (:mod:`ce_reference._kernels_softmax`) that reads the logits once
    and allocates nothing the size of the input but the gradient.

    Parameters
    ----------
    out : ndarray, optional
        C-contiguous, writeable buffer of the logits' shape and the gradient's
        dtype that receives the gradient (and is returned).  It may be the
        logits array itself: the gradient then overwrites the logits in place
        (if an error is raised, the logits may be partly overwritten).
    workers : int, optional
        Threads to use; default: the cores available to this process.  The
        results are bitwise identical for every value.

    Returns
    -------
    (loss, grad)

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> loss, g = ce.softmax_cross_entropy_value_and_grad(z, np.array([0, 1]))
    >>> float(loss)
    0.3185397696491856
    >>> bool(np.allclose(g, ce.softmax_cross_entropy_grad(z, np.array([0, 1])), rtol=1e-15))
    True
    """
    return _kernels_softmax.value_and_grad(logits, targets, axis, weight, ignore_index,
                                           label_smoothing, reduction, out, workers)
