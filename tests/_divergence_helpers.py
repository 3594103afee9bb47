"""Helpers of tests/test_nll_loss.py, test_kl_divergence.py, test_generalized_jsd.py: random
log-probabilities and the errors of a loss against its own mpmath oracle at hand-picked inputs."""

from __future__ import annotations

import numpy as np

from ce_reference.registry import LOSSES
from ce_reference import cases
from ce_reference.verify import errors, mp

EPS64 = float(np.finfo(np.float64).eps)
#: value, gradient and H v against mpmath, in min(ULP, eps of the operand) (the verifier's
#: TOL_MP; its H v gate is looser, 32 / 16, but these losses stay within 8).
MP_TOL = 8


def log_softmax(z, axis=-1):
    z = np.asarray(z, np.float64)
    return z - np.logaddexp.reduce(z, axis=axis, keepdims=True)


def random_log_probs(rng, shape, scale=3.0, axis=-1):
    return log_softmax(rng.normal(size=shape) * scale, axis=axis)


def mp_errors(name, x, second, v=None, **kwargs):
    """Worst errors of ``NAME``, ``NAME_grad`` and ``NAME_hvp`` at ``(x, second, v)`` (``second``:
    the targets, or the JSD's teacher) against
    the loss's mpmath oracle (50 digits, re-run at 400 for extreme inputs), in the verifier's
    units, and the oracle's disagreement note (None when both precisions agree)."""
    spec = LOSSES[name]
    x = np.asarray(x)
    v = np.ones(x.shape, x.dtype) if v is None else np.asarray(v, x.dtype)
    kwargs.setdefault("reduction", spec.reductions[0])
    case = cases.Case(name, x=x, targets=second, kwargs=kwargs, v=v)
    exact = mp.oracle(spec, case)
    ops = errors.operands(spec, case, v)
    value = np.asarray(spec.value(x, second, **kwargs), np.float64)
    grad = np.asarray(spec.grad(x, second, **kwargs), np.float64)
    hv = np.asarray(spec.hvp(x, second, v, **kwargs), np.float64)
    out = {"value": errors.combined(value, exact.value, ops.value, x.dtype)[0],
           "grad": errors.combined(grad, exact.grad, ops.grad, x.dtype)[0],
           "hvp": errors.combined(hv, mp.hvp_oracle(spec, case), ops.hvp, x.dtype)[0],
           "disagreement": exact.disagreement}
    return out


def assert_mp_close(name, x, second, v=None, tol=MP_TOL, **kwargs):
    errs = mp_errors(name, x, second, v, **kwargs)
    assert errs["disagreement"] is None, errs
    for what in ("value", "grad", "hvp"):
        assert errs[what] <= tol, (what, errs, kwargs)
    return errs
