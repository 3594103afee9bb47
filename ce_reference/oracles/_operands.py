r"""The operand sizes that define the error unit, and helpers of the oracles' operand functions.

For a result ``got`` and an exact value ``o`` the verifier measures
``min(ulp, |got - o| / (eps * operand))`` per element, where ``operand`` is the
magnitude of the terms that the exact result is a combination of, times the
first-order condition of the only inexact step that every implementation has
to take on exact inputs (see :mod:`ce_reference.verify.errors`).  Each
oracle module computes its loss's operands in float64 straight from the
definitions (SciPy's ``softmax`` and ``expit``), independently of the code
under test, as an :class:`Operands`:

* ``value``, ``grad``, ``hvp``: the tight operands the reference is held to;
* ``value_jax``, ``grad_jax``, ``hvp_jax``: the looser operands of the usual
  formulas (``jax.nn.log_softmax`` computes ``x - (m + log sum exp(x - m))``,
  whose absolute error is ``eps (|x| + |m| + 1)`` per class; ``sigma(x) - y``
  has the operands ``sigma(x)`` and ``y``), used against the JAX twin and in
  audits of other implementations.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

Operands = namedtuple("Operands", "value grad hvp value_jax grad_jax hvp_jax")


def tight(value, grad, hvp):
    """Operands whose loose versions equal the tight ones."""
    return Operands(value, grad, hvp, value, grad, hvp)


def _is_mean(case):
    """``mean`` or a loss's own mean-like reduction (``batchmean``): not ``none``/``sum``."""
    return case.kwargs["reduction"] not in ("none", "sum")


def reduce_operand(case, per, denom):
    """Reduce per-example operands like the losses (``none`` keeps them; a mean-like
    reduction, ``mean`` or ``batchmean``, divides by the oracle's denominator)."""
    red = case.kwargs["reduction"]
    if red == "none":
        return per
    total = np.sum(per)
    return np.asarray(total / denom if _is_mean(case) and denom else total)


def scale(case, denom):
    """The reduction's gradient scale ``1/denom`` for a non-empty mean-like reduction
    (``mean``, ``batchmean``), else 1."""
    return 1.0 / denom if _is_mean(case) and denom else 1.0


def class_last(case):
    ax = case.kwargs.get("axis", -1) % case.x.ndim
    return ax, np.moveaxis(case.x.astype(np.float64), ax, -1)


def clip(case, p):
    """``(clip(p), inside)`` for the case's clip bounds (``inside`` all True without one)."""
    inside = np.ones(p.shape, bool)
    if case.clip_bounds is not None:
        lo, hi = case.clip_bounds
        inside = (p >= lo) & (p <= hi)
        p = np.clip(p, lo, hi)
    return p, inside
