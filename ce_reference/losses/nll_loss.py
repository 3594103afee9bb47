r"""Negative log-likelihood of log-probabilities (PyTorch's ``F.nll_loss``): one loss, one module.

.. math::

    \ell_n = -\,c_n\, x_{n, y_n},\qquad c_n = w_{y_n}\ (\text{kept rows}),\quad
    c_n = 0\ (y_n = \text{ignore\_index}),\qquad
    \text{mean} = \frac{\sum_n \ell_n}{\sum_n c_n},

with :math:`x` the log-probabilities (class axis ``axis``), :math:`y_n` the
class index of row :math:`n` and :math:`w` the optional per-class weights (1
without).  This is PyTorch's definition and its weighted-mean denominator
(``aten/src/ATen/native/LossNLL.cpp``, ``nll_loss_out_frame``: ``output_val /=
total_weight_val`` with ``total_weight_val`` the sum of ``weight[target]`` over
the non-ignored targets, their count without weights; the reference
``torch/_refs/nn/functional``, ``_nll_loss_nd``, says the same).

Derivation of the gradient and the Hessian: :math:`\ell_n` is linear in
:math:`x` and involves the one entry :math:`x_{n,y_n}`, so

.. math::

    \frac{\partial \ell_n}{\partial x_{n,k}} = -\,c_n\,[k = y_n],\qquad
    \frac{\partial^2 \ell_n}{\partial x_{n,j}\,\partial x_{n,k}} = 0,

times :math:`1/\sum_n c_n` for ``mean`` -- PyTorch's backward
(``nll_loss_backward_out_frame``: ``weight[t] * -(grad / total_weight)``).

Like PyTorch, the input may be any real array without NaN (``input_kind
"real"``): ``nll_loss`` does not check that the entries are log-probabilities
(``log_softmax`` output, ``<= 0``), and ``+inf`` / ``-inf`` give an infinite
loss where they are a kept target's entry.  Conventions: ``0 · (±inf) = 0``
(a zero-weight or ignored row whose target entry is infinite contributes 0;
PyTorch 2.13 returns NaN for the zero weight, with a finite gradient); a
``mean`` whose denominator is 0 (empty batch, every row ignored, target
weights summing to 0) is NaN with a zero gradient.

:func:`_block` is the whole computation of a problem or one block of it: the
plain functions run it on the whole problem and ``value_and_grad`` block by
block through the generic blocked driver (:mod:`ce_reference.kernels.driver`),
so the numbers are bitwise equal for every ``workers``.
"""

from __future__ import annotations

import numpy as np

from .. import options as O
from .._problem import ClassProblem, deferred_values
from .._special import mul0
from ..kernels import driver
from ..spec import LossSpec, option_set
from ._hvp import class_last

__all__ = ["nll_loss", "nll_loss_grad", "nll_loss_value_and_grad", "nll_loss_hvp"]


def _problem(log_probs, targets, axis, weight, ignore_index, reduction, check_values=True):
    """Validated arguments (:class:`ClassProblem`: class-index targets only, any non-NaN input)."""
    return ClassProblem(log_probs, targets, input_name="log_probs", input_kind="real",
                        axis=axis, weight=weight, ignore_index=ignore_index,
                        reduction=reduction, index_only=True, check_values=check_values)


def _coefficients(P):
    """``c_n = w_{y_n}`` on kept rows, 0 on ignored ones (shape ``(pre, post)``)."""
    wy = np.ones(P.index.shape, P.cdt) if P.weight is None else P.weight[P.index]
    return np.where(P.keep, wy, P.cdt.type(0))


def _rows(P, x):
    r"""Per-row losses :math:`-c_n x_{n,y_n}` for the class-last input ``x`` (complex-safe).

    One product per row: exact without weights, one rounding with them.
    ``mul0``: a zero coefficient times an infinite entry is 0; ``0 - c x``
    keeps a zero row at ``+0``.
    """
    xy = np.take_along_axis(x, P.index[..., None], axis=-1)[..., 0]
    return 0 - mul0(_coefficients(P), xy)


def _row_grad(P):
    r"""``-s c_n`` at the target class, 0 elsewhere (class axis last), ``s`` the scale.

    Independent of the input: the loss is linear.
    """
    g = np.zeros(P.x.shape, P.cdt)
    num = (0 - _coefficients(P)) * P.cdt.type(P.scale)
    np.put_along_axis(g, P.index[..., None], num[..., None], axis=-1)
    return g


def _block(P):
    return _rows(P, P.x), _row_grad(P)


def nll_loss(log_probs, targets, *, axis=-1, weight=None, ignore_index=None, reduction="mean"):
    r"""Negative log-likelihood loss (PyTorch's ``F.nll_loss``).

    .. math::

        \ell_n = -\,w_{y_n}\, x_{n, y_n},\qquad
        \text{mean} = \sum_n \ell_n \Big/ \sum_{n\ \text{kept}} w_{y_n},

    rows with ``targets == ignore_index`` contributing 0.  With
    ``x = log_softmax(z)`` this is ``softmax_cross_entropy(z)``.

    Parameters
    ----------
    log_probs : array_like, shape ``(..., C, ...)``
        Log-probabilities :math:`x`, class axis ``axis``.  As in PyTorch any
        real values are accepted (they are not checked to be ``<= 0`` nor to
        normalise); NaN is an error.
    targets : array_like of integers
        Class indices in ``[0, C)``, the shape of ``log_probs`` without the
        class axis (a 0-d target for a 1-d input).
    axis : int, default -1
        The class axis.  PyTorch's is 1: pass ``axis=1`` for ``(N, C, d1, ...)``.
    weight : array_like of shape ``(C,)``, optional
        Non-negative, finite per-class weights :math:`w_c`.
    ignore_index : int, optional
        ``None`` (default): nothing is ignored and any index outside
        ``[0, C)`` is an error.  An int (PyTorch's default is -100; it may be a
        valid class) drops the rows whose target equals it: zero loss, zero
        gradient, not in the ``mean`` denominator.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by :math:`\sum_{n\ \text{kept}} w_{y_n}` (the number of
        kept rows without weights), as PyTorch; ``none`` returns the batch
        shape.

    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Notes
    -----
    A ``mean`` over an empty batch, over only ignored rows, or with target
    weights summing to 0 is NaN (PyTorch's 0/0); the gradient is then zero.
    A zero weight or an ignored row beside an infinite target entry
    contributes 0 (PyTorch 2.13: NaN for the zero weight).

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> x = np.log([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    >>> float(ce.nll_loss(x, np.array([0, 1]), weight=[1.0, 3.0, 5.0]))  # (1 + 3) log 2 / 4
    0.6931471805599453
    """
    P = _problem(log_probs, targets, axis, weight, ignore_index, reduction)
    return P.reduce(_rows(P, P.x))


def nll_loss_grad(log_probs, targets, *, axis=-1, weight=None, ignore_index=None,
                  reduction="mean"):
    r"""Gradient of :func:`nll_loss` with respect to ``log_probs``.

    .. math::

        \frac{\partial \ell_n}{\partial x_{n,k}} = -\,w_{y_n}\,[k = y_n]

    (the loss is linear in :math:`x`), 0 on ignored rows, times
    ``1/denominator`` for ``mean`` (0 when the denominator is 0); for
    ``"none"`` the gradient of the sum.  Same arguments as :func:`nll_loss`;
    returns an array of ``log_probs``' shape and result dtype.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.nll_loss_grad(np.log([[0.5, 0.5]]), np.array([1])).tolist()
    [[0.0, -1.0]]
    """
    P = _problem(log_probs, targets, axis, weight, ignore_index, reduction)
    return P.finish_grad(_row_grad(P), scaled=True)


def nll_loss_value_and_grad(log_probs, targets, *, axis=-1, weight=None, ignore_index=None,
                            reduction="mean", out=None, workers=None):
    r"""Loss and gradient of :func:`nll_loss` in one blocked sweep.

    Same arguments, errors and (bitwise) numbers as :func:`nll_loss` and
    :func:`nll_loss_grad`, computed block by block by the generic driver
    (:mod:`ce_reference.kernels.driver`).

    Parameters
    ----------
    out : ndarray, optional
        C-contiguous, writeable buffer of ``log_probs``' shape and the
        gradient's dtype that receives the gradient (it may be ``log_probs``
        itself).
    workers : int, optional
        Threads; default all available cores.  The results do not depend on it.

    Returns
    -------
    (loss, grad)

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> loss, g = ce.nll_loss_value_and_grad(np.log([[0.5, 0.5]]), np.array([1]))
    >>> float(loss), g.tolist()
    (0.6931471805599453, [[0.0, -1.0]])
    """
    P = deferred_values(lambda check: _problem(log_probs, targets, axis, weight, ignore_index,
                                               reduction, check_values=check))
    return driver.class_value_and_grad(P, _block, out, workers)


def nll_loss_hvp(log_probs, targets, v, *, axis=-1, weight=None, ignore_index=None,
                 reduction="mean"):
    r"""Hessian-vector product of :func:`nll_loss` with respect to ``log_probs``: zero.

    .. math::

        H = \frac{\partial^2}{\partial x^2}\Bigl(-\sum_n c_n x_{n,y_n}\Bigr) = 0,
        \qquad H v = 0

    for every ``v``: the loss is linear in :math:`x`.

    Parameters
    ----------
    log_probs, targets, axis, weight, ignore_index, reduction
        As in :func:`nll_loss` (validated by the same code, with the same errors).
    v : array_like of ``log_probs``' shape
        The direction; real, finite.

    Returns
    -------
    hv : ndarray of zeros, ``log_probs``' shape, in the package's result dtype

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.nll_loss_hvp(np.log([[0.5, 0.5]]), np.array([0]), [[1.0, 2.0]]).tolist()
    [[0.0, 0.0]]
    """
    P = _problem(log_probs, targets, axis, weight, ignore_index, reduction)
    return P.finish_grad(np.zeros_like(class_last(P, v)), scaled=True)


def _complex_value(z, targets, *, axis=-1, weight=None, ignore_index=None, reduction="mean"):
    """Each row's contribution to the reduced loss at complex ``z`` (complex step)."""
    z = np.asarray(z)
    P = _problem(z.real, targets, axis, weight, ignore_index, reduction)
    zc = np.moveaxis(z.reshape(P.pre, P.C, P.post), 1, -1)
    return (_rows(P, zc) * P.scale).reshape(P.batch_shape)


_REGIONS = ("random", "extreme", "masked")

SPEC = LossSpec(
    name="nll_loss", input="log_probs", structure="classes", targets=("index",),
    options=(O.AXIS, O.CLASS_WEIGHT, O.IGNORE_INDEX),
    option_sets=(
        option_set("index", "index", (), _REGIONS),
        option_set("index + weight", "index", ("weight",), _REGIONS),
        option_set("index + ignore_index", "index", ("ignore_index",), _REGIONS),
        option_set("index + weight + ignore_index", "index", ("weight", "ignore_index"),
                   _REGIONS),
    ),
    value=nll_loss, grad=nll_loss_grad, value_and_grad=nll_loss_value_and_grad,
    hvp=nll_loss_hvp, complex_value=_complex_value,
    oracle="ce_reference.oracles.nll_loss:ORACLE",
    short="NLL", ref="ce_reference.losses.nll_loss:SPEC",
)
