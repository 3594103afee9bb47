r"""Kullback-Leibler divergence of log-probabilities (PyTorch's ``F.kl_div``): one loss, one module.

Pointwise, with :math:`x` the input log-probabilities and :math:`t` the target
probabilities (:math:`t = e^{\tau}` for log-targets :math:`\tau` when
``log_target``):

.. math::

    L_{n,c} = t_{n,c}\,(\log t_{n,c} - x_{n,c}),\qquad 0 \log 0 = 0,\qquad
    \ell_n = \sum_c L_{n,c} = \mathrm{KL}\bigl(t_n \,\|\, e^{x_n}\bigr)

-- PyTorch's elements (``aten/src/ATen/native/Loss.cpp``: ``xlogy(target,
target) - target * input``, or ``exp(target) * (target - input)`` with
``log_target``), summed over the class axis.  Reductions, PyTorch's
(``torch/nn/functional.py``, ``kl_div``):

* ``"batchmean"`` (default): :math:`\sum_{n,c} L_{n,c}` divided by the size of
  the **first axis of the input as passed** (``input.size()[0]``), whatever
  ``axis`` is.  For ``(N, C)`` this is the mean KL per row; a single 1-d
  distribution ``(C,)`` is divided by ``C`` (use ``"sum"`` for its KL);
* ``"sum"``: :math:`\sum_{n,c} L_{n,c}`;
* ``"none"``: one KL per row, :math:`\ell_n` (the input's shape without
  ``axis``).  PyTorch keeps every element :math:`L_{n,c}` instead:
  ``kl_divergence(..., reduction="none")`` is
  ``F.kl_div(..., reduction="none").sum(class_dim)``;
* ``"mean"``: :math:`\sum_{n,c} L_{n,c}` divided by the **number of
  elements**, the elementwise mean -- which is *not* the KL divergence
  (PyTorch's own warning: "``'mean'`` doesn't return the true kl divergence
  value, please use ``'batchmean'``").

Derivation of the gradient and the Hessian: each element is linear in
:math:`x`, :math:`\partial L_{n,c}/\partial x_{n,c} = -t_{n,c}`, so

.. math::

    \frac{\partial \ell_n}{\partial x_{n,c}} = -\,t_{n,c},\qquad H = 0,

times ``1/denominator`` for ``"batchmean"`` and ``"mean"``.

Conventions (the mathematics is finite, so is the result): a zero target
contributes 0 even where the input is ``-inf`` (:math:`0 \log 0 = 0`); a
``-inf`` log-target is a zero target -- PyTorch 2.13 and optax 0.2.8 return
NaN in both cases, with a finite gradient.  A positive target beside a
``-inf`` input gives ``+inf`` (the KL is infinite) with the finite gradient
:math:`-t`.  A ``"batchmean"`` / ``"mean"`` of an empty input is NaN with a
zero gradient.

:func:`_block` is the whole computation of a problem or block: the plain
functions run it on the whole problem and ``value_and_grad`` block by block
through the generic blocked driver (:mod:`ce_reference.kernels.driver`).
"""

from __future__ import annotations

import numpy as np

from .. import _validation as V
from .. import options as O
from .._problem import ClassProblem, deferred_values
from .._reduction import grad_scale
from .._special import mul0
from ..kernels import driver
from ..spec import LossSpec, Option, option_set
from ._hvp import class_last

__all__ = ["kl_divergence", "kl_divergence_grad", "kl_divergence_value_and_grad",
           "kl_divergence_hvp"]

#: The reductions, the default first (PyTorch's four).
REDUCTIONS = ("batchmean", "sum", "none", "mean")


def check_log_target(log_target) -> bool:
    """``log_target`` must be a bool (``numpy.bool_`` too); anything else is a TypeError."""
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target must be a bool, got {type(log_target).__name__} "
                        f"{log_target!r}")
    return bool(log_target)


def _check_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _problem(log_probs, targets, axis, log_target, reduction, check_values=True):
    """Validated arguments (:class:`ClassProblem`, probability or log-probability targets of
    the input's shape) and the reduction's denominator.

    Integer and bool targets are probabilities (cast to float64 first).  The
    problem computes ``sum`` / ``none``; ``batchmean`` and ``mean`` set their
    own denominator (``log_probs.shape[0]``, ``log_probs.size``) and scale.
    """
    log_target = check_log_target(log_target)
    reduction = _check_reduction(reduction)
    t = V.as_numeric_array("targets", targets)
    if t.dtype.kind in "biu":
        t = t.astype(np.float64)
    P = ClassProblem(log_probs, t, input_name="log_probs", input_kind="log_probabilities",
                     axis=axis, reduction="none" if reduction == "none" else "sum",
                     probs_what="log-probabilities" if log_target else "probabilities",
                     targets_kind="log_probabilities" if log_target else "probabilities",
                     check_values=check_values)
    P.log_target, P.reduction = log_target, reduction
    if reduction in ("batchmean", "mean"):
        P.denominator = float(P.shape[0] if reduction == "batchmean" else P.raw.size)
        P.scale = grad_scale("mean", P.denominator)
    return P


def _target_probs(P):
    r""":math:`t`, class axis last: the targets, or ``exp`` of the log-targets (0 at ``-inf``)."""
    return np.exp(P.probs) if P.log_target else P.probs


def _elements(P, x):
    r"""The elements :math:`L_{n,c} = t\,(\log t - x)` for class-last ``x`` (complex-safe).

    ``log t - x`` (``τ - x`` for log-targets, the exact difference of two
    inputs up to one rounding) is formed first and multiplied by :math:`t`
    last.  ``mul0``: where :math:`t = 0` the element is 0 whatever ``x`` is
    (``0 · (-inf - x)`` and ``0 · (-inf + inf)`` never reach the result); a
    finite log-target beside a ``-inf`` input is ``+inf`` even where
    :math:`e^{\tau}` underflows.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if P.log_target:
            diff = P.probs - x
            # t = exp(τ) may underflow to 0 where τ - x = +inf: the KL is still infinite
            return np.where(np.isposinf(np.real(diff)), np.inf, mul0(np.exp(P.probs), diff))
        return mul0(P.probs, np.log(P.probs) - x)


def _rows(P, x):
    r"""Per-row KL :math:`\ell_n = \sum_c L_{n,c}` (summed in float64, complex128 for a
    complex ``x``; real rows are rounded to the compute dtype, as the driver stores them).

    The elements of a row have both signs (a KL of rows that need not
    normalise), so a small KL is a cancellation of the definition itself; the
    error is a few ULP of :math:`\sum_c t\,(|\log t| + |\log t - x|)`.
    """
    L = _elements(P, x)
    if np.iscomplexobj(L):
        return np.sum(L, axis=-1, dtype=np.complex128)
    return np.sum(L, axis=-1, dtype=np.float64).astype(P.cdt)


def _row_grad(P):
    r"""``-s t`` (class axis last), ``s`` the reduction scale; ``+0`` where :math:`t = 0`."""
    return (0 - _target_probs(P)) * P.cdt.type(P.scale)


def _block(P):
    return _rows(P, P.x), _row_grad(P)


def kl_divergence(log_probs, targets, *, axis=-1, log_target=False, reduction="batchmean"):
    r"""Kullback-Leibler divergence :math:`\mathrm{KL}(t \,\|\, e^{x})` (PyTorch's ``F.kl_div``).

    .. math::

        \ell_n = \sum_c t_{n,c}\,(\log t_{n,c} - x_{n,c}),\qquad 0 \log 0 = 0,

    with :math:`t = e^{\text{targets}}` when ``log_target``.
    ``reduction="mean"`` is PyTorch's elementwise mean: it divides by the
    number of elements, so it is **not** the KL divergence (PyTorch warns
    the same); ``"batchmean"`` divides by ``log_probs.shape[0]``.

    Parameters
    ----------
    log_probs : array_like, shape ``(..., C, ...)``
        Input log-probabilities :math:`x` (``<= 0``, ``-inf`` allowed), class
        axis ``axis``; NaN and positive values (``+inf`` included) are
        errors.  Rows are used as given (not renormalised).
    targets : array_like, same shape
        Target probabilities in [0, 1], or log-probabilities (``<= 0``,
        ``-inf`` a probability of 0) when ``log_target``; cast to the compute
        dtype of ``log_probs``.  Rows need not normalise.
    axis : int, default -1
        The class axis: the one summed for ``"none"``.
    log_target : bool, default False
    reduction : {"batchmean", "sum", "none", "mean"}
        ``batchmean``: sum / ``log_probs.shape[0]`` (PyTorch's, whatever
        ``axis`` is); ``sum``; ``none``: one KL per row (PyTorch keeps the
        elements); ``mean``: sum / number of elements (not the KL).

    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Notes
    -----
    A zero target beside a ``-inf`` input, and a ``-inf`` log-target,
    contribute 0 (PyTorch 2.13 and optax return NaN there).  A positive
    target beside a ``-inf`` input gives ``+inf``.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> x = np.log([[0.5, 0.5]])
    >>> float(ce.kl_divergence(x, [[1.0, 0.0]]))      # 1 * (log 1 - log 0.5)
    0.6931471805599453
    >>> float(ce.kl_divergence(x, [[0.0, -np.inf]], log_target=True))
    0.6931471805599453
    """
    P = _problem(log_probs, targets, axis, log_target, reduction)
    return P.reduce(_rows(P, P.x))


def kl_divergence_grad(log_probs, targets, *, axis=-1, log_target=False, reduction="batchmean"):
    r"""Gradient of :func:`kl_divergence` with respect to ``log_probs``.

    .. math::

        \frac{\partial \ell_n}{\partial x_{n,c}} = -\,t_{n,c}

    (each element :math:`t(\log t - x)` is linear in :math:`x`), times
    ``1/denominator`` for ``"batchmean"`` / ``"mean"`` (0 when it is 0); for
    ``"none"`` the gradient of the sum.  Same arguments as
    :func:`kl_divergence`; returns an array of ``log_probs``' shape.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.kl_divergence_grad(np.log([[0.5, 0.5], [0.5, 0.5]]),
    ...                       [[1.0, 0.0], [0.25, 0.75]]).tolist()
    [[-0.5, 0.0], [-0.125, -0.375]]
    """
    P = _problem(log_probs, targets, axis, log_target, reduction)
    return P.finish_grad(_row_grad(P), scaled=True)


def kl_divergence_value_and_grad(log_probs, targets, *, axis=-1, log_target=False,
                                 reduction="batchmean", out=None, workers=None):
    r"""Loss and gradient of :func:`kl_divergence` in one blocked sweep.

    Same arguments, errors and (bitwise) numbers as :func:`kl_divergence` and
    :func:`kl_divergence_grad`, computed block by block by the generic driver
    (:mod:`ce_reference.kernels.driver`).

    Parameters
    ----------
    out : ndarray, optional
        C-contiguous, writeable buffer of ``log_probs``' shape and the
        gradient's dtype that receives the gradient (it may be ``log_probs``
        itself, not ``targets``).
    workers : int, optional
        Threads; default all available cores.  The results do not depend on it.

    Returns
    -------
    (loss, grad)

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> loss, g = ce.kl_divergence_value_and_grad(np.log([[0.5, 0.5]]), [[1.0, 0.0]])
    >>> float(loss), g.tolist()
    (0.6931471805599453, [[-1.0, 0.0]])
    """
    P = deferred_values(lambda check: _problem(log_probs, targets, axis, log_target, reduction,
                                               check_values=check))
    return driver.class_value_and_grad(P, _block, out, workers)


def kl_divergence_hvp(log_probs, targets, v, *, axis=-1, log_target=False,
                      reduction="batchmean"):
    r"""Hessian-vector product of :func:`kl_divergence` with respect to ``log_probs``: zero.

    .. math::

        \frac{\partial^2 \ell_n}{\partial x_{n,j}\,\partial x_{n,k}}
        = \frac{\partial (-t_{n,k})}{\partial x_{n,j}} = 0,\qquad H v = 0:

    the gradient :math:`-t` does not depend on the input.

    Parameters
    ----------
    log_probs, targets, axis, log_target, reduction
        As in :func:`kl_divergence` (validated by the same code, same errors).
    v : array_like of ``log_probs``' shape
        The direction; real, finite.

    Returns
    -------
    hv : ndarray of zeros, ``log_probs``' shape, in the package's result dtype

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.kl_divergence_hvp(np.log([[0.5, 0.5]]), [[0.2, 0.8]], [[1.0, -1.0]]).tolist()
    [[0.0, 0.0]]
    """
    P = _problem(log_probs, targets, axis, log_target, reduction)
    return P.finish_grad(np.zeros_like(class_last(P, v)), scaled=True)


def _complex_value(z, targets, *, axis=-1, log_target=False, reduction="batchmean"):
    """Each row's contribution to the reduced loss at complex ``z`` (complex step)."""
    z = np.asarray(z)
    P = _problem(z.real, targets, axis, log_target, reduction)
    zc = np.moveaxis(z.reshape(P.pre, P.C, P.post), 1, -1)
    return (_rows(P, zc) * P.scale).reshape(P.batch_shape)


def _sample_log_target(rng, draw):
    """Log-probability targets (``log_soft``) are passed with ``log_target=True``."""
    return draw.target_kind == "log_soft"


LOG_TARGET = Option("log_target", False, validate=check_log_target, sample=_sample_log_target,
                    invalid=((1, TypeError), ("yes", TypeError), (None, TypeError)))

_REGIONS = ("random", "extreme", "masked")

SPEC = LossSpec(
    name="kl_divergence", input="log_probs", structure="classes",
    targets=("soft", "onehot", "log_soft"),
    options=(O.AXIS, LOG_TARGET),
    option_sets=(
        option_set("soft", "soft", ("log_target",), _REGIONS),
        option_set("one-hot", "onehot", ("log_target",), _REGIONS),
        option_set("log_target", "log_soft", ("log_target",), _REGIONS),
    ),
    value=kl_divergence, grad=kl_divergence_grad, value_and_grad=kl_divergence_value_and_grad,
    hvp=kl_divergence_hvp, complex_value=_complex_value,
    oracle="ce_reference.oracles.kl_divergence:ORACLE",
    reductions=REDUCTIONS,
    short="KL", ref="ce_reference.losses.kl_divergence:SPEC",
)
