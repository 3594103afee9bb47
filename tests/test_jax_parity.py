"""NumPy losses and hand-derived gradients against the JAX twins and jax.grad.

The twins are written from the definition of each loss, so agreement of the
gradients here checks the hand-derived formulas independently.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ce_reference.registry import LOSSES

from _cases import ALL, X_TARGET_LOSSES, case_id, make_case

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
# Loss values: both sides evaluate the same closed form in a different order
# (log-softmax vs the split log-sum-exp); each per-example value is a few ULP
# from exact, and a reduction of <= 30 terms adds at most a few ULP more.
VALUE_RTOL = {np.float64: 64 * EPS64, np.float32: 64 * EPS32}
# Gradients: p - q style differences cancel by design, so the error is bounded
# relative to the largest operand of the row (|p|, |q|, |w| <= a few) times the
# reduction scale, not relative to the (possibly tiny) result.
GRAD_ATOL_UNITS = 32


def _jax_value_and_grad(spec, x, t, kw):
    f = lambda z: spec.twin(z, t, **kw)  # noqa: E731
    if kw.get("reduction") == "none":
        val = f(jnp.asarray(x))
        g = jax.grad(lambda z: jnp.sum(f(z)))(jnp.asarray(x))
    else:
        val, g = jax.value_and_grad(f)(jnp.asarray(x))
    return np.asarray(val), np.asarray(g)


def _operand_scale(spec, x, kw):
    s = 1.0
    for k in ("weight", "pos_weight"):
        if k in kw:
            s *= float(np.max(kw[k]))
    if spec.input == "probs":  # d/dp of -log p is 1/p
        s /= float(np.min(np.clip(x, 1e-300, None)))
    return s


@pytest.mark.parametrize("name,combo", ALL, ids=[f"{n}[{case_id(c)}]" for n, c in ALL])
def test_numpy_matches_jax_twin_float64(name, combo, rng):
    spec = LOSSES[name]
    combo = dict(combo)
    x, t, kw = make_case(spec, rng, **combo)
    x_before, t_before = x.copy(), np.array(t, copy=True)
    val, grad = spec.value_and_grad(x, t, **kw)
    jval, jgrad = _jax_value_and_grad(spec, x, t, kw)

    assert grad.shape == x.shape and grad.dtype == np.float64
    if kw.get("reduction", "mean") == "mean" and np.isnan(jval):
        # Zero denominator (e.g. every row ignored): both NaN by PyTorch's 0/0,
        # the NumPy gradient is defined as 0 (documented), the twin's is NaN.
        assert np.isnan(val) and np.all(grad == 0)
        return
    atol = GRAD_ATOL_UNITS * EPS64 * _operand_scale(spec, x, kw)
    # the fused value_and_grad and the plain NAME / NAME_grad, each against the twin
    for v, g in ((val, grad), (spec.value(x, t, **kw), spec.grad(x, t, **kw))):
        np.testing.assert_allclose(v, jval, rtol=VALUE_RTOL[np.float64], atol=0)
        np.testing.assert_allclose(g, jgrad, rtol=1e-12, atol=atol)
    # nothing was modified
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(t, t_before)


@pytest.mark.parametrize("name", list(X_TARGET_LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float32_is_computed_in_float32_and_matches_float64(name, reduction, rng):
    spec = LOSSES[name]
    kind = "index" if spec.structure == "classes" else "soft"
    x, t, kw = make_case(spec, rng, shape=(16, 7), target_kind=kind, reduction=reduction)
    x32 = x.astype(np.float32)
    v32, g32 = spec.value_and_grad(x32, t, **kw)
    v64, g64 = spec.value_and_grad(x32.astype(np.float64), t, **kw)
    assert np.asarray(v32).dtype == np.float32 and g32.dtype == np.float32
    np.testing.assert_allclose(v32, v64, rtol=VALUE_RTOL[np.float32])
    atol = GRAD_ATOL_UNITS * EPS32 * _operand_scale(spec, x32.astype(np.float64), kw)
    np.testing.assert_allclose(g32, g64, rtol=8 * EPS32, atol=atol)


@pytest.mark.parametrize("name", list(X_TARGET_LOSSES))
def test_twins_are_jit_compatible(name, rng):
    spec = LOSSES[name]
    x, t, kw = make_case(spec, rng, weight=True)
    f = jax.jit(lambda z, tt: spec.twin(z, tt, **kw))
    np.testing.assert_allclose(f(x, t), spec.value(x, t, **kw), rtol=VALUE_RTOL[np.float64])
