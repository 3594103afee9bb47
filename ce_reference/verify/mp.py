r"""The high-precision oracle: each loss's exact value, gradient and H v, through its spec.

The formulas live with each loss's other oracles
(``ce_reference.oracles.<loss>``, found through ``spec.resolve_oracle()``):
they are the *definitions*, evaluated at the exact values of the (float32 or
float64) inputs with ``mpmath`` at :data:`~.tolerances.MP_DPS` digits and
arranged so that no result is a difference of two nearly equal rounded
quantities.  This module runs them, reduces the per-example losses like the
losses do (``mean``: the oracle's own denominator), and converts to float64.

An oracle can be wrong, so the inputs its ``extreme(case)`` flags (logits
beyond 36, probabilities within 1e-12 of 0 or 1) are evaluated a second time
at :data:`~.tolerances.MP_DPS_EXTREME` digits; a result whose two evaluations
round to float64 values more than 1 ULP apart (and more than the smallest
normal number) is reported as an oracle disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import tolerances as T
from ..cases import batch_shape


@dataclass
class MpResult:
    value: np.ndarray        # float64 (scalar array for mean/sum)
    grad: np.ndarray         # float64, shape of x (a tuple of arrays for several ``wrt``)
    disagreement: str | None  # None, or which quantity differed between precisions


def oracle(spec, case) -> MpResult | None:
    """mpmath value and gradient of ``case`` (None when the case is too large)."""
    if _size(spec, case) > T.MP_MAX_ELEMENTS:
        return None
    first = _evaluate(spec, case, T.MP_DPS)
    if not spec.resolve_oracle().extreme(case):
        return first
    second = _evaluate(spec, case, T.MP_DPS_EXTREME)
    note = None
    for name in ("value", "grad"):
        a, b = _as_vector(getattr(first, name)), _as_vector(getattr(second, name))
        diff = np.abs(a - b)
        if np.any((diff > np.spacing(np.abs(b)))
                  & (diff >= T.ABS_FLOOR * np.finfo(np.float64).tiny)):
            note = f"{name} changed between {T.MP_DPS} and {T.MP_DPS_EXTREME} digits"
    second.disagreement = note
    return second


def _size(spec, case) -> int:
    """Elements of the differentiated arrays (the exact oracle's cost grows with them)."""
    return sum(int(np.size(a)) for a in spec.wrt_arrays(case) if a is not None)


def exact_parts(spec, case, dps: int = T.MP_DPS):
    """``(per-example losses, gradient of their sum)`` as mpf, unreduced (for tests).

    ``case.x`` may be an object array of mpf numbers (e.g. to differentiate the
    oracle's own loss with ``mpmath.diff``).
    """
    import mpmath

    with mpmath.workdps(dps):
        losses, grads, _ = spec.resolve_oracle().exact(mpmath.mp, case)
    return losses, grads


def _as_vector(a):
    """A value, a gradient, or a tuple of gradients (several ``wrt``) as one float64 vector."""
    if isinstance(a, tuple):
        return np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in a if g is not None])
    return np.asarray(a, np.float64).reshape(-1)


def _scaled(grads, s, shape):
    """The exact gradient(s) times the reduction scale, as float64 array(s)."""
    if isinstance(grads, tuple):
        return tuple(None if g is None else _scaled(g, s, np.shape(g)) for g in grads)
    return _f64([g * s for g in np.asarray(grads, dtype=object).reshape(-1)]).reshape(shape)


def _f64(a):
    return np.array([float(v) for v in np.asarray(a, dtype=object).reshape(-1)],
                    dtype=np.float64)


def _scale_exact(mp, case, denom):
    """The exact reduction scale: ``1/denom`` for ``mean`` (0 for a zero denominator)."""
    if case.kwargs["reduction"] in ("none", "sum"):
        return mp.mpf(1)
    return 1 / mp.mpf(denom) if denom else mp.mpf(0)


def _evaluate(spec, case, dps: int) -> MpResult:
    import mpmath

    mp = mpmath.mp
    with mpmath.workdps(dps):
        losses, grads, denom = spec.resolve_oracle().exact(mp, case)
        reduction = case.kwargs["reduction"]
        if reduction == "none":
            value = _f64(losses).reshape(batch_shape(spec, case))
        elif reduction == "sum":
            value = np.array(float(mp.fsum(losses)))
        else:                        # a mean; over a zero denominator NaN, as the losses
            value = np.array(float(mp.fsum(losses) / denom) if denom else np.nan)
        grad = _scaled(grads, _scale_exact(mp, case, denom), case.x.shape)
    return MpResult(value, grad, None)


def hvp_oracle(spec, case):
    """Exact ``H v`` (float64, x's shape) of ``case`` with ``v = case.v``; None if too large
    or when the loss's oracle has no second order."""
    exact_hvp = spec.resolve_oracle().exact_hvp
    if exact_hvp is None or case.x.size > T.MP_MAX_ELEMENTS:
        return None
    import mpmath

    dps = T.MP_DPS_EXTREME if spec.resolve_oracle().extreme(case) else T.MP_DPS
    with mpmath.workdps(dps):
        hv, denom = exact_hvp(mpmath.mp, case)
        s = _scale_exact(mpmath.mp, case, denom)
        return _f64([h * s for h in np.asarray(hv, dtype=object).reshape(-1)]).reshape(
            case.x.shape)
