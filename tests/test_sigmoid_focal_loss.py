"""sigmoid_focal_loss: what the contract does not cover.

Pinned closed forms; the extremes (|x| up to 1e4, every gamma) against mpmath; gamma = 0 with
alpha=None bitwise equal to BCE with logits; the mpmath oracle's closed forms against
mpmath.diff of the definition; parity with torchvision's *formula* written in torch (the
torchvision 0.28 wheel does not import beside the CPU build of torch 2.13: the published body
of ``torchvision.ops.sigmoid_focal_loss`` is reproduced here, not the package), optax and Keras
where comparable; the defects of the formula and of Keras, reproduced.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import ce_reference as ce
from ce_reference.registry import LOSSES
from ce_reference import cases
from ce_reference.verify import errors
from ce_reference.verify import mp as MP
from ce_reference.verify import tolerances as T

SPEC = LOSSES["sigmoid_focal_loss"]
ORACLE = SPEC.resolve_oracle()
EPS64 = np.finfo(np.float64).eps
GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
REDUCTIONS = ("mean", "sum", "none")
# From the centre to |x| = 1e4: sigma rounds to 1 (16.6 float32, 36.7 float64), exp's
# overflow thresholds (88.7 float32, 709.78 float64), exp(-x) underflow (745), 1e3, 1e4.
EXTREME = np.array([0.0, 0.5, -1.5, 3.0, -9.0, 16.7, -36.8, 40.0, -88.7, 103.9, -300.0,
                    709.78, -745.2, 1e3, -1e4, 1e4])

sfl, sfl_grad = ce.sigmoid_focal_loss, ce.sigmoid_focal_loss_grad
sfl_vg, sfl_hvp = ce.sigmoid_focal_loss_value_and_grad, ce.sigmoid_focal_loss_hvp


def _have(module):
    return importlib.util.find_spec(module) is not None


def _case(x, y, v=None, **kw):
    x = np.asarray(x)
    kw.setdefault("reduction", "none")
    v = np.ones(x.shape, x.dtype) if v is None else np.asarray(v, x.dtype)
    return cases.Case(SPEC.name, "test", x.dtype, "test", 0, 0, x,
                       np.asarray(y, x.dtype), kw, v)


def _worst(got, exact, operand, dtype):
    return errors.combined(np.asarray(got, np.float64), exact, operand, dtype)[0]


# --------------------------------------------------------------------------- closed forms

def test_pinned_closed_forms():
    for g in GAMMAS:
        # x = 0: p_t = 1/2, ce = log 2, alpha_t = 0.25 at y = 1; r = 1/2, L' = -1/2
        assert sfl([0.0], [1.0], gamma=g) == pytest.approx(0.25 * 0.5 ** g * math.log(2),
                                                           rel=4 * EPS64)
        assert sfl_grad([0.0], [1.0], gamma=g)[0] == pytest.approx(
            0.25 * 0.5 ** g * (-0.5 - g * math.log(2) / 2), rel=4 * EPS64)
    # x = log 3: sigma = 3/4; y = 1: 1 - p_t = 1/4, ce = log(4/3), r = 3/4
    x = math.log(3.0)
    assert sfl([x], [1.0], alpha=None, gamma=2.0) == pytest.approx(math.log(4 / 3) / 16,
                                                                   rel=8 * EPS64)
    assert sfl_grad([x], [1.0], alpha=None, gamma=2.0)[0] == pytest.approx(
        (-0.25 - 2 * 0.75 * math.log(4 / 3)) / 16, rel=8 * EPS64)
    # y = 0 at -x mirrors y = 1 at x, alpha_t = 1 - alpha
    assert sfl([-x], [0.0], alpha=0.25, gamma=2.0) == pytest.approx(
        0.75 * math.log(4 / 3) / 16, rel=8 * EPS64)
    # second derivative at 0, y = 1, gamma = 1, alpha = None: m = 1/2, s = 1/4, L' = -1/2,
    # ce' = -1/2, a = 1/2, b = 0 so L'' = -1/4: 1/2 [1/4 + 2 (1/4) + (log 2)/4 - (log 2)/4]
    assert sfl_hvp([0.0], [1.0], [1.0], alpha=None, gamma=1.0)[0] == pytest.approx(
        0.375, rel=8 * EPS64)
    # saturated and wrong: x = 1e4, y = 0: p_t = 0, the loss is alpha_t x, the gradient alpha_t
    assert sfl([1e4], [0.0], gamma=0.5, reduction="sum") == 0.75 * 1e4
    assert sfl_grad([1e4], [0.0], gamma=0.5, reduction="sum")[0] == 0.75
    # saturated and right: (1 - p_t)^gamma = e^{-gamma 1e4} is 0, so is everything
    assert sfl([1e4], [1.0], gamma=0.5, reduction="sum") == 0.0
    assert sfl_grad([1e4], [1.0], gamma=0.5, reduction="sum")[0] == 0.0


def test_infinite_logits_give_the_limits():
    x = np.array([np.inf, -np.inf, np.inf, -np.inf])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    for g in GAMMAS:
        assert sfl(x, y, alpha=None, gamma=g, reduction="none").tolist() == [0, 0, np.inf, np.inf]
        assert sfl_grad(x, y, alpha=None, gamma=g, reduction="none").tolist() == [0, 0, 1, -1]
        assert sfl_hvp(x, y, np.ones(4), alpha=None, gamma=g).tolist() == [0, 0, 0, 0]


# --------------------------------------------------------------------------- gamma = 0 is BCE

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gamma0_alpha_none_is_bce_with_logits_bitwise(rng, dtype, reduction):
    x = np.concatenate([EXTREME, -EXTREME, [np.inf, -np.inf], rng.normal(0, 5, 30)])
    x = x.astype(dtype)
    y = np.concatenate([rng.uniform(0, 1, x.size - 6), [0, 1, 0, 1, 0.25, 0.75]])
    for w in (None, rng.uniform(0, 3, x.size)):
        kw = dict(weight=w, reduction=reduction)
        with np.errstate(over="ignore"):
            pairs = ((sfl(x, y, alpha=None, gamma=0.0, **kw),
                      ce.binary_cross_entropy_with_logits(x, y, **kw)),
                     (sfl_grad(x, y, alpha=None, gamma=0.0, **kw),
                      ce.binary_cross_entropy_with_logits_grad(x, y, **kw)))
        for a, b in pairs:
            assert np.asarray(a).dtype == np.asarray(b).dtype
            assert np.array_equal(a, b, equal_nan=True)
    a = sfl_hvp(x, y, np.ones(x.shape), alpha=None, gamma=0.0)
    b = ce.binary_cross_entropy_with_logits_hvp(x, y, np.ones(x.shape))
    np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=4e-3 if
                               dtype == np.float16 else 8 * np.finfo(dtype).eps, atol=0)


# --------------------------------------------------------------------------- mpmath

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("gamma", GAMMAS + (0.01,))
def test_extremes_against_mpmath(dtype, gamma):
    """|x| up to 1e4 at every gamma, hard and soft targets, with and without alpha: value,
    gradient and HVP within the verifier's gates of mpmath (50 digits, re-checked at 400;
    the two must agree), finite, without a warning."""
    x = np.concatenate([EXTREME, -EXTREME]).astype(dtype)
    v = np.linspace(-1.0, 2.0, x.size).astype(dtype)
    for target in (0.0, 1.0, 0.3, 1e-3):
        for alpha in (None, 0.25):
            case = _case(x, np.full(x.shape, target), v, alpha=alpha, gamma=gamma)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                t, kw = case.targets, case.kwargs
                got = (sfl(x, t, **kw), sfl_grad(x, t, **kw), sfl_hvp(x, t, v, **kw))
            for a in got:
                assert np.isfinite(a).all() and a.dtype == dtype
            exact = MP.oracle(SPEC, case)
            assert exact.disagreement is None
            ops = ORACLE.operands(case, v)
            tol = T.TOL_MP[np.dtype(dtype)]
            assert _worst(got[0], exact.value, ops.value, dtype) <= tol
            assert _worst(got[1], exact.grad, ops.grad, dtype) <= tol
            assert _worst(got[2], MP.hvp_oracle(SPEC, case), ops.hvp, dtype) <= \
                T.TOL_HVP[np.dtype(dtype)]


def _definition(mp, X, y, alpha, gamma):
    """The definition in mpf arithmetic: alpha_t (1 - p_t)^gamma ce, with p = sigma(x) and
    1 - p = 1 / (1 + e^x) (at x = 800, 1 - p is below 80 digits of 1)."""
    Y = mp.mpf(y)
    p, q = 1 / (1 + mp.exp(-X)), 1 / (1 + mp.exp(X))
    ce_ = -(Y * mp.log(p) + (1 - Y) * mp.log(q))
    omp = Y * q + (1 - Y) * p
    at = 1 if alpha is None else alpha * Y + (1 - alpha) * (1 - Y)
    return at * omp ** gamma * ce_


@pytest.mark.parametrize("x0,y0", [(0.3, 1.0), (-2.0, 0.0), (4.0, 0.3), (60.0, 0.0),
                                   (-60.0, 0.7), (800.0, 0.2), (-2000.0, 1.0)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_oracle_closed_forms_equal_mpmath_diff(x0, y0, gamma):
    """The oracle's gradient and second derivative equal mpmath.diff of the definition (the
    oracle checks itself, independently of the NumPy code)."""
    case = _case(np.array([x0]), np.array([y0]), np.array([1.0]), alpha=0.25, gamma=gamma)
    # mpmath.diff differences values of size |x|: the digits must reach below e^{-|x|}
    with mpmath.workdps(80 + int(abs(x0) / 2.3)):
        mp = mpmath.mp
        losses, grads, _ = ORACLE.exact(mp, case)
        hv, _ = ORACLE.exact_hvp(mp, case)
        f = lambda t: _definition(mp, t, y0, 0.25, gamma)  # noqa: E731
        X = mp.mpf(x0)
        assert abs(losses[0] - f(X)) <= mp.mpf(10) ** -60 * (1 + abs(f(X)))
        for got, order in ((grads.reshape(-1)[0], 1), (hv.reshape(-1)[0], 2)):
            want = mp.diff(f, X, order)
            assert abs(got - want) <= mp.mpf(10) ** -30 * (abs(want) + mp.mpf(10) ** -300)


# --------------------------------------------------------------------------- torchvision's formula

def _torchvision_formula(torch, x, y, alpha, gamma, reduction, dtype):
    """The body of ``torchvision.ops.sigmoid_focal_loss`` (pytorch/vision, ops/focal_loss.py),
    written in torch with autograd for the gradient -- the formula, not the package."""
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    yt = torch.tensor(y, dtype=dtype)
    p = torch.sigmoid(xt)
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(xt, yt, reduction="none")
    p_t = p * yt + (1 - p) * (1 - yt)
    loss = ce_loss * ((1 - p_t) ** gamma)
    a = -1 if alpha is None else alpha          # torchvision: a negative alpha disables it
    if a >= 0:
        loss = (a * yt + (1 - a) * (1 - yt)) * loss
    loss = {"mean": loss.mean, "sum": loss.sum}.get(reduction, lambda: loss)()
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


@pytest.mark.skipif(not _have("torch"), reason="torch not installed")
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", (None, 0.25, 0.0, 1.0))
def test_same_numbers_as_torchvision_formula(rng, gamma, alpha):
    """Float64, moderate logits (the formula is not stable at saturation): values within 64 eps,
    gradients within 1e-12 relative, every reduction.  torchvision's default reduction is
    "none", ours "mean"; its "negative alpha disables" is our alpha=None."""
    import torch

    x = rng.normal(0, 3, (6, 5))
    y = rng.uniform(0, 1, (6, 5))
    y.reshape(-1)[:4] = [0.0, 1.0, 0.5, 1.0]
    for reduction in REDUCTIONS:
        tv, tg = _torchvision_formula(torch, x, y, alpha, gamma, reduction, torch.float64)
        kw = dict(alpha=alpha, gamma=gamma, reduction=reduction)
        np.testing.assert_allclose(sfl(x, y, **kw), tv, rtol=64 * EPS64, atol=64 * EPS64)
        np.testing.assert_allclose(sfl_grad(x, y, **kw), tg, rtol=1e-12, atol=1e-300)


@pytest.mark.skipif(not _have("torch"), reason="torch not installed")
def test_torchvision_formula_nan_gradient_for_gamma_below_one():
    """Defect of the published formula: for 0 < gamma < 1 a saturated correct logit evaluates
    ``(1 - p_t) ** gamma`` at 0, whose derivative is infinite, times 0 -- a NaN gradient next
    to a finite (zero) loss.  Smallest inputs: the first logit at which sigmoid rounds to 1,
    36.73680056967711 (float64) and 16.635532 (float32), y = 1; the float below is finite.
    (gamma = 0 is spared: torch's pow backward special-cases a zero exponent.)  Ours is
    finite and equals mpmath."""
    import torch

    for dtype, x0 in ((torch.float64, 36.73680056967711), (torch.float32, 16.635532)):
        npdt = np.float64 if dtype == torch.float64 else np.float32
        below = float(np.nextafter(npdt(x0), npdt(0)))
        for x, nan in ((x0, True), (below, False)):
            loss, g = _torchvision_formula(torch, np.array([x]), np.array([1.0]), None, 0.5,
                                           "sum", dtype)
            assert np.isfinite(loss) and np.isnan(g[0]) == nan, (dtype, x)
        _, g0 = _torchvision_formula(torch, np.array([x0]), np.array([1.0]), None, 0.0, "sum",
                                     dtype)
        assert np.isfinite(g0).all()
        xs = np.array([x0], npdt)
        case = _case(xs, [1.0], alpha=None, gamma=0.5, reduction="sum")
        ours = sfl_grad(xs, [1.0], alpha=None, gamma=0.5, reduction="sum")
        assert np.isfinite(ours).all() and ours[0] < 0
        assert _worst(ours, MP.oracle(SPEC, case).grad, ORACLE.operands(case).grad, npdt) <= 8


# --------------------------------------------------------------------------- optax

@pytest.mark.skipif(not _have("optax"), reason="optax not installed")
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", (None, 0.25))
def test_same_numbers_as_optax(rng, gamma, alpha):
    """optax >= 0.2.5 computes in log space with soft labels: the same per-element values
    (optax has no reduction: our "none") and gradients, float64, up to |x| = 1e3."""
    import optax

    x = np.concatenate([rng.normal(0, 3, 30), [40.0, -40.0, 300.0, -1e3]])
    y = np.concatenate([rng.uniform(0, 1, 30), [1.0, 0.0, 0.3, 1.0]])

    def f(z):
        return optax.losses.sigmoid_focal_loss(z, jnp.asarray(y), alpha=alpha, gamma=gamma)

    ov = np.asarray(f(jnp.asarray(x)))
    og = np.asarray(jax.grad(lambda z: jnp.sum(f(z)))(jnp.asarray(x)))
    kw = dict(alpha=alpha, gamma=gamma, reduction="none")
    np.testing.assert_allclose(sfl(x, y, **kw), ov, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(sfl_grad(x, y, **kw), og, rtol=1e-12, atol=1e-300)


# --------------------------------------------------------------------------- Keras

def _keras():
    """Keras 3 with the JAX backend (KERAS_BACKEND set only around the import)."""
    if not _have("keras"):
        pytest.skip("keras not installed")
    mod = sys.modules.get("keras")
    if mod is None:
        saved = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "jax"
        try:
            import keras as mod
        finally:
            if saved is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = saved
    if mod.config.backend() != "jax":
        pytest.skip("keras is imported with another backend")
    return mod


@pytest.mark.parametrize("gamma", (0.5, 2.0, 5.0))
def test_same_numbers_as_keras_where_comparable(rng, gamma):
    """Keras BinaryFocalCrossentropy(apply_class_balancing=True, from_logits=True) is the same
    definition in probability space with sigmoid(x) clipped to [1e-7, 1 - 1e-7] (a convention:
    beyond |x| = 16.1 its loss saturates and its gradient is 0); inside the clip, with
    ``sum_over_batch_size`` over an (N, 1) input, it is our ``mean``.  Keras' mean rounds
    float64 through float32 (the catalogued keras-mean-float32 defect), hence 1e-6."""
    keras = _keras()
    x = rng.normal(0, 2, (20, 1))
    y = rng.uniform(0, 1, (20, 1))
    L = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.25, gamma=gamma,
                                             from_logits=True, dtype="float64")
    f = lambda z: L(jnp.asarray(y), z)  # noqa: E731
    kv, kg = float(f(jnp.asarray(x))), np.asarray(jax.grad(f)(jnp.asarray(x)))
    np.testing.assert_allclose(sfl(x, y, alpha=0.25, gamma=gamma), kv, rtol=1e-6)
    np.testing.assert_allclose(sfl_grad(x, y, alpha=0.25, gamma=gamma), kg, rtol=1e-6,
                               atol=1e-12)


def test_keras_nan_gradient_at_saturated_logits():
    """Defect: Keras' focal factor ``power(1 - p_t, gamma)`` has a NaN derivative at
    ``1 - p_t = 0`` for gamma < 1 -- gamma = 0 included (0 * 0**-1) -- next to a finite loss.
    Smallest float64 input: x = 36.73680056967711 (sigmoid rounds to 1), y = 1."""
    keras = _keras()
    L = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=False, gamma=0.0,
                                             from_logits=True, dtype="float64")
    f = lambda z: L(jnp.ones((1, 1)), z)  # noqa: E731
    for x, nan in ((36.73680056967711, True), (36.736800569677094, False)):
        z = jnp.full((1, 1), x)
        assert np.isfinite(float(f(z))) and bool(np.isnan(np.asarray(jax.grad(f)(z))).all()) == nan
    assert np.isfinite(sfl_grad([[36.73680056967711]], [[1.0]], alpha=None, gamma=0.0)).all()


# --------------------------------------------------------------------------- options

def test_alpha_is_checked_and_negative_alpha_is_not_torchvisions_switch():
    with pytest.raises(ValueError, match="alpha=None"):
        sfl([0.0], [1.0], alpha=-1)
    with pytest.raises(ValueError, match="alpha"):
        sfl([0.0], [1.0], alpha=1.0000001)
    for bad in (True, np.bool_(False), "0.25", [0.25]):
        with pytest.raises(TypeError, match="alpha"):
            sfl([0.0], [1.0], alpha=bad)
    assert sfl([0.0], [1.0], alpha=np.float32(0.5)) == sfl([0.0], [1.0], alpha=0.5)
    assert sfl([0.0], [1.0], alpha=1) == sfl([0.0], [1.0], alpha=1.0)


# --------------------------------------------------------------------------- the gates bite

@pytest.mark.parametrize("what", ["grad", "hvp"])
def test_a_planted_error_of_one_in_a_million_fails_the_verifier(what):
    """The operands are not so loose that they hide a bug: the gradient (or HVP) scaled by
    1 + 1e-6 fails the mpmath gate (float64) on the richest option set's random cases."""
    import dataclasses

    from ce_reference.verify import verify

    good = getattr(SPEC, what)

    def planted(*args, **kw):
        return good(*args, **kw) * (1 + 1e-6)

    rep = verify(specs=[dataclasses.replace(SPEC, **{what: planted})], cases=6, seed=5,
                 dtypes=(np.float64,), hvp=what == "hvp",
                 option_sets=["soft + alpha + gamma + weight"],
                 regions=["random"])
    assert not rep.ok
    measure = "mpmath" if what == "grad" else "hvp"
    assert any(f["measure"] == measure for r in rep.rows for f in r.failures)
