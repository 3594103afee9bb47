r"""Validated problems on the compiled (numba) kernels of :mod:`ce_reference.compiled`.

The counterpart of the NumPy kernels for ``backend="numba"``: each function takes
a loss's validated problem (built with ``check_values=False``) and the gradient
buffer, hands the compiled entry point C-contiguous arrays in the compute dtype
with the problem's reduction scales, kept-row mask, weights and options, and
turns the entry point's error bits into the plain function's error
(:func:`._blocks.raise_invalid`).  The compiled kernels check the values (NaN,
``+inf``, rows without a finite logit, probabilities, targets and weights out
of range) inside their own pass, so no validation pass over the data runs
before them.

dtypes: float32 and float64 inputs run as they are; float16 and integer inputs
are cast once to the compute dtype (a copy), and a float16 gradient is computed
in place over that float32 copy and rounded into the result buffer at the end.

Each function returns the per-example losses for the problem's own reduction
(per-row float64 losses, or the float64 total of an elementwise loss), so the
value is reduced by exactly the code of the NumPy path.
"""

from __future__ import annotations

import numpy as np

from .._validation import unit_interval_ok
from . import _blocks


_COMPILED = []        # the compiled subpackage, once imported


def _kernels():
    """The compiled subpackage (imported on first use: it imports numba)."""
    if not _COMPILED:
        from .. import compiled
        _COMPILED.append(compiled)
    return _COMPILED[0]


def _input(problem):
    """The input in the compute dtype, C-contiguous: the array itself, or a cast copy."""
    raw = problem.raw
    if raw.dtype == problem.cdt and raw.flags.c_contiguous:
        return raw
    return raw.astype(problem.cdt, order="C")        # keeps a 0-d input 0-d


def _gradient_buffer(grad, x):
    """Where the kernel writes: ``grad`` when it has the compute dtype, else (float16
    results, whose input ``x`` is always a float32 copy) ``x`` itself, in place."""
    return grad if grad.dtype == x.dtype else x


def _store(buffer, grad):
    """Round a float32 gradient into a float16 ``grad`` (a no-op when it is ``grad``)."""
    if buffer is not grad:
        with np.errstate(over="ignore"):             # beyond 65504: inf, correctly rounded
            np.copyto(grad, buffer, casting="unsafe")


def _class_view(problem):
    """The kernel's view of a class-axis problem: ``(pre, C)`` with the class axis last
    when nothing follows it, else ``(pre, C, post)`` with axis 1."""
    if problem.post == 1:
        return (problem.pre, problem.C), -1
    return (problem.pre, problem.C, problem.post), 1


def _class_targets(problem, shape):
    """int64 class indices ``(N,)`` (0 on ignored rows), or probabilities of ``shape``
    in the compute dtype.

    Probabilities are checked in their own dtype, as the plain functions check them:
    a cast to float32 would round ``1 + 1e-12`` to 1 and ``-1e-50`` to 0 (a cast is a
    pass over them anyway; same-dtype targets are checked by the kernel).
    """
    if problem.index is not None:
        return np.ascontiguousarray(problem.index, np.int64).reshape(-1)
    given = problem.targets_raw
    if given.dtype != problem.cdt and not unit_interval_ok(given):
        _blocks.raise_invalid(problem)
    return np.ascontiguousarray(given, problem.cdt).reshape(shape)


def _class_options(problem):
    weight = None if problem.weight is None else np.ascontiguousarray(problem.weight)
    keep = None if problem.keep is None else np.ascontiguousarray(problem.keep).reshape(-1)
    return weight, keep


def softmax(problem, grad, nworkers):
    """Softmax cross-entropy: per-row losses and z-loss rows ``(pre, post)`` (the latter
    None without ``z_loss``), the gradient written into ``grad`` (which may be the
    logits themselves)."""
    x = _input(problem)
    buffer = _gradient_buffer(grad, x)
    shape, axis = _class_view(problem)
    weight, keep = _class_options(problem)
    flags, rows, z_rows = _kernels().softmax_cross_entropy(
        x.reshape(shape), buffer.reshape(shape), _class_targets(problem, shape), axis=axis,
        weight=weight, keep=keep, label_smoothing=problem.label_smoothing,
        z_loss=problem.z_loss, softcap=problem.softcap, scale=problem.scale,
        z_scale=problem.z_scale, workers=nworkers)
    if flags:
        _blocks.raise_invalid(problem)
    _store(buffer, grad)
    rows_shape = (problem.pre, problem.post)
    return rows.reshape(rows_shape), (z_rows.reshape(rows_shape) if problem.z_loss else None)


def categorical(problem, grad, nworkers):
    """Categorical cross-entropy on probabilities: per-row losses ``(pre, post)``."""
    x = _input(problem)
    buffer = _gradient_buffer(grad, x)
    shape, axis = _class_view(problem)
    weight, _ = _class_options(problem)
    flags, rows = _kernels().categorical_cross_entropy(
        x.reshape(shape), buffer.reshape(shape), _class_targets(problem, shape), axis=axis,
        weight=weight, eps=problem.eps, scale=problem.scale, workers=nworkers)
    if flags:
        _blocks.raise_invalid(problem)
    _store(buffer, grad)
    return rows.reshape(problem.pre, problem.post)


def _elementwise(entry, problem, grad, nworkers, **options):
    x = _input(problem)
    buffer = _gradient_buffer(grad, x)
    loss_out = np.empty(x.shape, problem.cdt) if problem.reduction == "none" else None
    flags, total = entry(x, buffer, problem.ops["targets"], weight=problem.ops["weight"],
                         scale=problem.scale, loss_out=loss_out, workers=nworkers, **options)
    if flags:
        _blocks.raise_invalid(problem)
    _store(buffer, grad)
    return loss_out if loss_out is not None else np.float64(total)


def bce_logits(problem, grad, nworkers):
    """BCE with logits: per-element losses (``none``) or their float64 total."""
    return _elementwise(_kernels().binary_cross_entropy_with_logits, problem, grad, nworkers,
                        pos_weight=problem.ops["pos_weight"])


def bce_probs(problem, grad, nworkers):
    """BCE on probabilities: per-element losses (``none``) or their float64 total."""
    return _elementwise(_kernels().binary_cross_entropy, problem, grad, nworkers,
                        eps=problem.eps)
