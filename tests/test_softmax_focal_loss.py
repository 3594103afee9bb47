"""softmax_focal_loss: what the contract does not cover.

Pinned closed forms; the extremes (|x| up to 1e4, every gamma, masked classes) against mpmath;
gamma = 0 equal to softmax cross-entropy; the mpmath oracle's closed forms against mpmath.diff
of the definition; the definition written in torch (autograd) and Keras'
CategoricalFocalCrossentropy where comparable.
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

SPEC = LOSSES["softmax_focal_loss"]
ORACLE = SPEC.resolve_oracle()
EPS64 = np.finfo(np.float64).eps
GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
NINF = -np.inf
# Rows from the centre to |x| = 1e4: confident right and wrong, ties, exp's overflow and
# underflow thresholds, classes whose probability underflows (1 - p_a below every float).
EXTREME_ROWS = np.array([
    [0.0, 0.0, 0.0, 0.0], [1e4, 0.0, -1e4, 3.0], [-1e4, 0.0, 1e4, 2.0], [40.0, 0.0, -10.0, 1.0],
    [0.0, -1e4, -1e4, -1e4], [709.78, 0.0, -745.0, 700.0], [-88.7, 0.0, 17.0, -36.0],
    [5.0, 5.0, -5.0, 0.5], [0.3, -0.2, 1.7, -2.5], [100.0, 99.5, 60.0, -1e3],
    [0.0, -20.0, -37.0, -40.0], [745.0, 709.78, 709.78, 0.0]])
EXTREME_IDX = np.array([0, 1, 0, 1, 0, 2, 2, 1, 3, 2, 1, 0])

sfl, sfl_grad = ce.softmax_focal_loss, ce.softmax_focal_loss_grad
sfl_hvp = ce.softmax_focal_loss_hvp


def _have(module):
    return importlib.util.find_spec(module) is not None


def _case(x, t, v, **kw):
    x = np.asarray(x)
    kw.setdefault("axis", -1)
    kw.setdefault("reduction", "none")
    return cases.Case(SPEC.name, "test", x.dtype, "test", 0, 0, x, np.asarray(t), kw,
                       np.asarray(v, x.dtype))


def _worst(got, exact, operand, dtype):
    return errors.combined(np.asarray(got, np.float64), exact, operand, dtype)[0]


# --------------------------------------------------------------------------- closed forms

def test_pinned_closed_forms():
    # C equal logits: p = 1/C, -log p = log C; index target: (1 - 1/C)^gamma log C
    for C in (2, 3, 10):
        for g in GAMMAS:
            assert sfl(np.zeros((1, C)), np.array([0]), gamma=g) == pytest.approx(
                (1 - 1 / C) ** g * math.log(C), rel=4 * EPS64)
    # two classes, x = [log 3, 0]: p = (3/4, 1/4); target 0, gamma 2: (1/4)^2 log(4/3)
    x = np.array([[math.log(3.0), 0.0]])
    assert sfl(x, np.array([0])) == pytest.approx(math.log(4 / 3) / 16, rel=8 * EPS64)
    # gradient: B_0 = (1/4)^2 (1 + 2 kappa), kappa = (3/4) log(4/3) / (1/4) = 3 log(4/3);
    # g = p B_0 - B_0 e_0 = B_0 (-1/4, 1/4)
    B0 = (1 + 6 * math.log(4 / 3)) / 16
    np.testing.assert_allclose(sfl_grad(x, np.array([0])), [[-B0 / 4, B0 / 4]], rtol=8 * EPS64)
    # probability targets: q = (1/2, 1/2) at equal logits: (1/2)^gamma log 2
    assert sfl(np.zeros((1, 2)), np.array([[0.5, 0.5]]), gamma=3.0) == pytest.approx(
        math.log(2) / 8, rel=4 * EPS64)
    # confident and wrong: x = [1e4, 0], target 1: p_1 = 0, the loss is w_1 * 1e4, the gradient
    # w_1 (1, -1) (kappa_1 = 0, (1 - p_1)^gamma = 1)
    assert sfl([[1e4, 0.0]], np.array([1]), gamma=0.5, reduction="sum") == 1e4
    np.testing.assert_array_equal(sfl_grad([[1e4, 0.0]], np.array([1]), gamma=0.5), [[1, -1]])
    # confident and right: (1 - p)^gamma = e^{-gamma 1e4} is 0, so is everything
    assert sfl([[1e4, 0.0]], np.array([0]), gamma=0.5, reduction="sum") == 0
    np.testing.assert_array_equal(sfl_grad([[1e4, 0.0]], np.array([0]), gamma=0.5), [[0, 0]])


def test_masked_classes_and_single_class_rows():
    """-inf keeps probability 0 and gets zero gradient and HVP; a row with one finite class
    has p = 1 there, a zero loss for gamma > 0 and a zero gradient for every gamma."""
    x = np.array([[2.0, NINF, 1.0, NINF], [NINF, 3.0, NINF, NINF]])
    t = np.array([0, 1])
    v = np.array([[1.0, 5.0, -1.0, 2.0], [3.0, -2.0, 1.0, 4.0]])
    for g in GAMMAS:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            val = sfl(x, t, gamma=g, reduction="none")
            gr, hv = sfl_grad(x, t, gamma=g), sfl_hvp(x, t, v, gamma=g)
        assert val[1] == 0 and np.isfinite(val).all()
        assert np.all(gr[:, [1, 3]][0] == 0) and np.all(gr[1] == 0)
        assert np.all(hv[0, [1, 3]] == 0) and np.all(hv[1] == 0)
        sm = x[0, [0, 2]]
        np.testing.assert_allclose(val[0], sfl(sm[None], np.array([0]), gamma=g, reduction="none"),
                                   rtol=4 * EPS64)


# --------------------------------------------------------------------------- gamma = 0 is CE

@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_gamma0_is_softmax_cross_entropy(rng, reduction):
    x = np.concatenate([EXTREME_ROWS, rng.normal(0, 3, (5, 4))])
    t = np.concatenate([EXTREME_IDX, rng.integers(0, 4, 5)])
    q = rng.dirichlet(np.ones(4), x.shape[0])
    w = rng.uniform(0.2, 3, 4)
    v = rng.normal(size=x.shape)
    for targ, extra in ((t, dict(ignore_index=3)), (t, {}), (q, {})):
        kw = dict(weight=w, reduction=reduction, **extra)
        np.testing.assert_allclose(sfl(x, targ, gamma=0.0, **kw),
                                   ce.softmax_cross_entropy(x, targ, **kw), rtol=4 * EPS64)
        for a, b in ((sfl_grad(x, targ, gamma=0.0, **kw),
                      ce.softmax_cross_entropy_grad(x, targ, **kw)),
                     (sfl_hvp(x, targ, v, gamma=0.0, **kw),
                      ce.softmax_cross_entropy_hvp(x, targ, v, **kw))):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=8 * EPS64 * np.max(np.abs(b)))


# --------------------------------------------------------------------------- mpmath

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("gamma", GAMMAS + (0.01,))
def test_extremes_against_mpmath(rng, dtype, gamma):
    """Rows up to |x| = 1e4 at every gamma, index and soft targets, with and without weights:
    value, gradient and HVP within the verifier's gates of mpmath (50 digits, re-checked at
    400; the two must agree), finite, without a warning."""
    x = EXTREME_ROWS.astype(dtype)
    v = rng.normal(size=x.shape).astype(dtype)
    q = rng.dirichlet(np.ones(4), x.shape[0]).astype(dtype)
    for targ in (EXTREME_IDX, q):
        for w in (None, np.array([0.5, 2.0, 1.0, 3.0])):
            case = _case(x, targ, v, gamma=gamma, weight=w)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = (sfl(x, targ, **case.kwargs), sfl_grad(x, targ, **case.kwargs),
                       sfl_hvp(x, targ, v, **case.kwargs))
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


def _definition(mp, row, q, gamma):
    """sum_c q_c (1 - p_c)^gamma (-log p_c) in mpf, 1 - p_c as the others' mass."""
    ex = [mp.exp(v) for v in row]
    E = mp.fsum(ex)
    out = 0
    for c in range(len(row)):
        if q[c]:
            omp = mp.fsum(ex[j] for j in range(len(row)) if j != c) / E
            out += q[c] * omp ** gamma * -mp.log(ex[c] / E)
    return out


@pytest.mark.parametrize("row", [[0.3, -1.0, 2.0], [40.0, 0.0, -3.0], [-5.0, 700.0, 699.0],
                                 [300.0, 0.0, -300.0]])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_oracle_closed_forms_equal_mpmath_diff(row, gamma):
    """The oracle's gradient and H v equal mpmath.diff of the definition (the oracle checks
    itself, independently of the NumPy code)."""
    q = [0.2, 0.5, 0.3]
    v = [0.7, -1.3, 0.4]
    case = _case(np.array([row]), np.array([q]), np.array([v]), gamma=gamma)
    # mpmath.diff differences values of size |x|: the digits must reach below the smallest
    # entry, e^{-(max - min)}
    with mpmath.workdps(80 + int((max(row) - min(row)) / 2.3)):
        mp = mpmath.mp
        losses, grads, _ = ORACLE.exact(mp, case)
        hv, _ = ORACLE.exact_hvp(mp, case)
        X = [mp.mpf(r) for r in row]

        def f(*z):
            return _definition(mp, z, [mp.mpf(c) for c in q], gamma)

        want = f(*X)
        assert abs(losses[0] - want) <= mp.mpf(10) ** -60 * (1 + abs(want))
        tiny = mp.mpf(10) ** -300
        for k in range(3):
            order = [0, 0, 0]
            order[k] = 1
            d = mp.diff(f, X, tuple(order))
            assert abs(grads.reshape(-1)[k] - d) <= mp.mpf(10) ** -30 * (abs(d) + tiny)
            # (H v)_k = sum_j d^2 f / dx_k dx_j v_j
            hk = 0
            for j in range(3):
                o2 = [0, 0, 0]
                o2[k] += 1
                o2[j] += 1
                hk += mp.diff(f, X, tuple(o2)) * v[j]
            assert abs(hv.reshape(-1)[k] - hk) <= mp.mpf(10) ** -25 * (abs(hk) + tiny)


# --------------------------------------------------------------------------- definition in torch

@pytest.mark.skipif(not _have("torch"), reason="torch not installed")
@pytest.mark.parametrize("gamma", GAMMAS)
def test_same_numbers_as_the_definition_in_torch(rng, gamma):
    """``sum_c w_c q_c (1 - softmax)^gamma (-log_softmax)`` written in torch, autograd for the
    gradient, float64, moderate logits (torch's ``(1 - p) ** gamma`` is not stable at
    saturation): values within 64 eps, gradients within 1e-12 relative."""
    import torch

    x = rng.normal(0, 2, (7, 5))
    t = rng.integers(0, 5, 7)
    q = rng.dirichlet(np.ones(5), 7)
    w = rng.uniform(0.2, 3, 5)
    for targ in (t, q):
        xt = torch.tensor(x, requires_grad=True)
        A = torch.tensor(np.eye(5)[t] if targ.dtype.kind == "i" else q) * torch.tensor(w)
        p = torch.softmax(xt, -1)
        rows = torch.sum(A * (1 - p) ** gamma * -torch.log_softmax(xt, -1), -1)
        denom = A.sum() if targ.dtype.kind == "i" else x.shape[0]
        loss = rows.sum() / denom
        loss.backward()
        np.testing.assert_allclose(sfl(x, targ, gamma=gamma, weight=w), loss.item(),
                                   rtol=64 * EPS64)
        np.testing.assert_allclose(sfl_grad(x, targ, gamma=gamma, weight=w), xt.grad.numpy(),
                                   rtol=1e-12, atol=1e-300)


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


@pytest.mark.parametrize("gamma", (0.5, 2.0))
def test_same_numbers_as_keras_where_comparable(rng, gamma):
    """Keras CategoricalFocalCrossentropy(from_logits=True, alpha=list) is
    ``sum_c alpha_c (1 - p_c)^gamma (-q_c log p_c)`` with the probabilities renormalised and
    clipped to [1e-7, 1 - 1e-7] (conventions); with every p inside the clip interval,
    probability targets and ``sum_over_batch_size`` (over rows) it is our ``mean`` with
    ``weight=alpha``.  Keras' scalar alpha (0.25 by default) multiplies the whole loss: a
    convention.  Keras' mean rounds float64 through float32 (the catalogued
    keras-mean-float32 defect), hence 1e-6."""
    keras = _keras()
    x = rng.normal(0, 2, (6, 4))
    q = rng.dirichlet(np.ones(4), 6)
    w = rng.uniform(0.2, 2, 4)
    L = keras.losses.CategoricalFocalCrossentropy(alpha=list(w), gamma=gamma, from_logits=True,
                                                  dtype="float64")
    f = lambda z: L(jnp.asarray(q), z)  # noqa: E731
    kv, kg = float(f(jnp.asarray(x))), np.asarray(jax.grad(f)(jnp.asarray(x)))
    np.testing.assert_allclose(sfl(x, q, gamma=gamma, weight=w), kv, rtol=1e-6)
    np.testing.assert_allclose(sfl_grad(x, q, gamma=gamma, weight=w), kg, rtol=1e-6, atol=1e-12)
    # the default scalar alpha = 0.25 is a constant multiplier
    L0 = keras.losses.CategoricalFocalCrossentropy(gamma=gamma, from_logits=True,
                                                   dtype="float64")
    np.testing.assert_allclose(0.25 * sfl(x, q, gamma=gamma), float(L0(q, x)), rtol=1e-6)


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
                 option_sets=["index + gamma + weight + ignore_index"],
                 regions=["random"])
    assert not rep.ok
    measure = "mpmath" if what == "grad" else "hvp"
    assert any(f["measure"] == measure for r in rep.rows for f in r.failures)
