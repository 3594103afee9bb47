r"""Fused, blocked, multithreaded softmax cross-entropy loss and gradient.

:func:`value_and_grad` computes exactly what ``softmax_cross_entropy`` and
``softmax_cross_entropy_grad`` compute (same formulas, same order of
operations wherever that is affordable), in one sweep over the logits:

* the logits are cut into a fixed partition of blocks of about
  :data:`._blocks.BLOCK_BYTES` (several rows, or a slab of columns), so that all
  the passes over a block after the first one hit the cache;
* every block-sized operation writes with ``out=`` into the gradient itself or
  into per-thread scratch; there is no one-hot matrix and no temporary the size
  of the input (per-row vectors -- targets, weights, losses -- are O(N));
* blocks run on ``workers`` threads; each writes only its rows of the gradient
  and of the per-row losses, which are reduced once at the end by the
  problem's own reduction, so the result does not depend on ``workers`` or on
  scheduling;
* the logits' values (NaN, ``+inf``, all ``-inf`` rows) and probability
  targets are checked inside the sweep; a bad block is not written and makes
  the problem raise the plain function's error.

Three layouts, chosen from the shape only, each in its own module:
:mod:`.softmax_rows` (class axis last, ``C >= SMALL_C``),
:mod:`.softmax_cols` (a non-last class axis, or ``C < SMALL_C``) and
:mod:`.softmax_online` (one row larger than :data:`ONLINE_ROW_BYTES`).
"""

from __future__ import annotations

import numpy as np

from .._reduction import reduce_parts
from . import _blocks, compiled_backend
from .softmax_cols import ColsSweep
from .softmax_online import OnlineSweep
from .softmax_rows import RowsSweep

# Class counts below this use the transposed ``cols`` layout when the class axis
# is last (at C = 64 a row of float32 is one 256-byte stretch; below it the per-row
# overhead of NumPy reductions dominates the arithmetic).
SMALL_C = 64

# A row of more than this many bytes (in the compute dtype) is processed in
# column chunks merged with the online-softmax rule.  Rows up to this size are
# kept whole: even when they exceed L2 they stay in the shared L3 between passes,
# which is cheaper than the second exponential sweep the online path costs.
ONLINE_ROW_BYTES = 4 * 1024 * 1024


def layout(C: int, post: int, itemsize: int) -> type:
    """The sweep class for a ``(pre, C, post)`` problem (depends on the shape only)."""
    if post == 1 and C >= SMALL_C:
        return OnlineSweep if C * itemsize > ONLINE_ROW_BYTES else RowsSweep
    return ColsSweep


def value_and_grad(problem, out=None, workers=None):
    """Loss and gradient of softmax cross-entropy for a validated problem.

    ``problem`` is the softmax loss's :class:`~ce_reference._problem.ClassProblem`
    (with ``label_smoothing``, ``z_loss``, ``softcap`` and the z-loss's
    ``z_denominator`` / ``z_scale``), built with ``check_values=False`` (the
    sweep checks the values).
    """
    nworkers = _blocks.resolve_workers(workers)
    out = _blocks.checked_out(out, problem)
    grad = out if out is not None else np.empty(problem.shape, problem.rdt)
    rows, z_rows = sweep(problem, grad, nworkers)
    if z_rows is None:
        return problem.reduce(rows), grad
    value = reduce_parts(((rows, problem.denominator), (z_rows, problem.z_denominator)),
                         problem.reduction, problem.rdt, problem.batch_shape)
    return value, grad


def sweep(problem, grad, nworkers):
    """Run the sweep of ``problem`` writing the gradient into ``grad`` (C-contiguous, the
    problem's shape and result dtype; it may be the logits themselves).

    Returns the per-row losses and z-loss rows ``(pre, post)`` (the latter None without
    ``z_loss``); raises the plain function's error when a block finds an invalid value.
    ``problem.backend == "numba"`` runs the compiled kernel instead
    (:func:`.compiled_backend.softmax`; per-row losses in float64).
    """
    if problem.backend == "numba":
        return compiled_backend.softmax(problem, grad, nworkers)
    x = np.ascontiguousarray(problem.raw)            # a copy only for non-contiguous input
    probs = problem.targets_raw
    if probs is not None and not probs.flags.c_contiguous:
        probs = np.ascontiguousarray(probs)
    rows_shape = (problem.pre, problem.post)
    z_rows = np.empty(rows_shape, problem.cdt) if problem.z_loss else None
    sweep = layout(problem.C, problem.post, problem.cdt.itemsize)(
        x=x, grad=grad, index=problem.index, keep=problem.keep, probs=probs,
        weight=problem.weight, label_smoothing=problem.label_smoothing, cdt=problem.cdt,
        rdt=problem.rdt, scale=problem.scale, pre=problem.pre, C=problem.C,
        post=problem.post, rows=np.empty(rows_shape, problem.cdt), z_loss=problem.z_loss,
        z_scale=problem.z_scale, z_rows=z_rows, softcap=problem.softcap)
    sweep.run(nworkers)
    if sweep.bad.any():
        # The offending blocks were not written, so even with out=logits the evidence
        # is still there for the value check to name.
        _blocks.raise_invalid(problem)
    return sweep.rows, z_rows
