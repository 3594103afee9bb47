"""poly1_cross_entropy: what the contract does not cover.

Pinned closed forms; the extremes (|x| up to 1e4, epsilon 2, -1, 0, 5) against mpmath;
epsilon = 0 equal to softmax cross-entropy; the mpmath oracle's closed forms against
mpmath.diff of the definition; parity with optax's poly_loss_cross_entropy and its NaN value
at a masked class, reproduced.
"""

from __future__ import annotations

import importlib.util
import math
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

SPEC = LOSSES["poly1_cross_entropy"]
ORACLE = SPEC.resolve_oracle()
EPS64 = np.finfo(np.float64).eps
EPSILONS = (2.0, -1.0, 0.0, 5.0, -0.5)
NINF = -np.inf
EXTREME_ROWS = np.array([
    [0.0, 0.0, 0.0, 0.0], [1e4, 0.0, -1e4, 3.0], [-1e4, 0.0, 1e4, 2.0], [40.0, 0.0, -10.0, 1.0],
    [0.0, -1e4, -1e4, -1e4], [709.78, 0.0, -745.0, 700.0], [-88.7, 0.0, 17.0, -36.0],
    [5.0, 5.0, -5.0, 0.5], [0.3, -0.2, 1.7, -2.5], [100.0, 99.5, 60.0, -1e3],
    [0.0, -20.0, -37.0, -40.0], [745.0, 709.78, 709.78, 0.0]])
EXTREME_IDX = np.array([0, 1, 0, 1, 0, 2, 2, 1, 3, 2, 1, 0])

poly, poly_grad, poly_hvp = (ce.poly1_cross_entropy, ce.poly1_cross_entropy_grad,
                             ce.poly1_cross_entropy_hvp)


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
    for C in (2, 3, 10):                        # equal logits: log C + epsilon (1 - 1/C)
        for e in EPSILONS:
            assert poly(np.zeros((1, C)), np.array([0]), epsilon=e) == pytest.approx(
                math.log(C) + e * (1 - 1 / C), rel=4 * EPS64)
    # x = [log 3, 0], target 0: p = (3/4, 1/4): log(4/3) + epsilon / 4; the gradient is
    # w_y (1 + epsilon p_y) (p - e_y) = (1 + 3 epsilon / 4) (-1/4, 1/4)
    x = np.array([[math.log(3.0), 0.0]])
    for e in EPSILONS:
        assert poly(x, np.array([0]), epsilon=e) == pytest.approx(math.log(4 / 3) + e / 4,
                                                                  rel=8 * EPS64, abs=1e-16)
        c = (1 + 0.75 * e) / 4
        np.testing.assert_allclose(poly_grad(x, np.array([0]), epsilon=e), [[-c, c]],
                                   rtol=8 * EPS64)
    # weights carry the poly term too; mean divides by sum of w_y (softmax CE's denominator)
    w = np.array([2.0, 0.5])
    assert poly(x, np.array([0]), weight=w, reduction="sum") == pytest.approx(
        2 * (math.log(4 / 3) + 0.5), rel=8 * EPS64)
    assert poly(np.vstack([x, x]), np.array([0, 1]), weight=w) == pytest.approx(
        (2 * (math.log(4 / 3) + 0.5) + 0.5 * (math.log(4) + 1.5)) / 2.5, rel=8 * EPS64)
    # confident and wrong: x = [1e4, 0], target 1: 1e4 + epsilon, gradient (1, -1)
    assert poly([[1e4, 0.0]], np.array([1]), reduction="sum") == 1e4 + 2
    np.testing.assert_array_equal(poly_grad([[1e4, 0.0]], np.array([1])), [[1, -1]])
    # epsilon = -1, confident and right: -log p - (1 - p) = t^2 / 2 + O(t^3) (t = e^{-40}):
    # the exact second-order value, not 0 and not a cancellation residue
    t = math.exp(-40.0)
    assert poly([[40.0, 0.0]], np.array([0]), epsilon=-1.0) == pytest.approx(
        t * t / 2, rel=1e-15, abs=0)
    for x0 in (1e-3, 0.5, 2.0):               # -log p - (1 - p) + eps (1 - p) on both sides
        with mpmath.workdps(50):              # of the series' switch (rho = e^{-x0} = 1/4)
            p0 = 1 / (1 + mpmath.exp(-x0))
            want = float(-mpmath.log(p0) - (1 - p0) + (1 - p0) / 2)
        assert poly([[x0, 0.0]], np.array([0]), epsilon=-0.5) == pytest.approx(
            want, rel=4 * EPS64, abs=0)
    np.testing.assert_allclose(poly_grad([[40.0, 0.0]], np.array([0]), epsilon=-1.0),
                               [[-t * t, t * t]], rtol=1e-15)


# --------------------------------------------------------------------------- epsilon = 0 is CE

@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_epsilon0_is_softmax_cross_entropy(rng, reduction):
    x = np.concatenate([EXTREME_ROWS, rng.normal(0, 3, (5, 4))])
    t = np.concatenate([EXTREME_IDX, rng.integers(0, 4, 5)])
    q = rng.dirichlet(np.ones(4), x.shape[0])
    w = rng.uniform(0.2, 3, 4)
    v = rng.normal(size=x.shape)
    for targ in (t, q):
        kw = dict(weight=w, reduction=reduction)
        np.testing.assert_allclose(poly(x, targ, epsilon=0.0, **kw),
                                   ce.softmax_cross_entropy(x, targ, **kw), rtol=4 * EPS64)
        for a, b in ((poly_grad(x, targ, epsilon=0.0, **kw),
                      ce.softmax_cross_entropy_grad(x, targ, **kw)),
                     (poly_hvp(x, targ, v, epsilon=0.0, **kw),
                      ce.softmax_cross_entropy_hvp(x, targ, v, **kw))):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=8 * EPS64 * np.max(np.abs(b)))


# --------------------------------------------------------------------------- mpmath

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_extremes_against_mpmath(rng, dtype, epsilon):
    """Rows up to |x| = 1e4, index and soft targets, with and without weights: value,
    gradient and HVP within the verifier's gates of mpmath (50 digits, re-checked at 400; the
    two must agree), finite, without a warning."""
    x = EXTREME_ROWS.astype(dtype)
    v = rng.normal(size=x.shape).astype(dtype)
    q = rng.dirichlet(np.ones(4), x.shape[0]).astype(dtype)
    for targ in (EXTREME_IDX, q):
        for w in (None, np.array([0.5, 2.0, 1.0, 3.0])):
            case = _case(x, targ, v, epsilon=epsilon, weight=w)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = (poly(x, targ, **case.kwargs), poly_grad(x, targ, **case.kwargs),
                       poly_hvp(x, targ, v, **case.kwargs))
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


def _definition(mp, row, q, epsilon):
    """sum_c q_c [-log p_c + epsilon (1 - p_c)] in mpf, 1 - p_c as the others' mass."""
    ex = [mp.exp(v) for v in row]
    E = mp.fsum(ex)
    out = 0
    for c in range(len(row)):
        omp = mp.fsum(ex[j] for j in range(len(row)) if j != c) / E
        out += q[c] * (-mp.log(ex[c] / E) + epsilon * omp)
    return out


@pytest.mark.parametrize("row", [[0.3, -1.0, 2.0], [40.0, 0.0, -3.0], [-5.0, 700.0, 699.0]])
@pytest.mark.parametrize("epsilon", [2.0, -1.0])
def test_oracle_closed_forms_equal_mpmath_diff(row, epsilon):
    """The oracle's gradient and H v equal mpmath.diff of the definition."""
    q = [0.2, 0.5, 0.3]
    v = [0.7, -1.3, 0.4]
    case = _case(np.array([row]), np.array([q]), np.array([v]), epsilon=epsilon)
    with mpmath.workdps(80 + int((max(row) - min(row)) / 2.3)):
        mp = mpmath.mp
        losses, grads, _ = ORACLE.exact(mp, case)
        hv, _ = ORACLE.exact_hvp(mp, case)
        X = [mp.mpf(r) for r in row]

        def f(*z):
            return _definition(mp, z, [mp.mpf(c) for c in q], epsilon)

        want = f(*X)
        assert abs(losses[0] - want) <= mp.mpf(10) ** -60 * (1 + abs(want))
        tiny = mp.mpf(10) ** -300
        for k in range(3):
            order = [0, 0, 0]
            order[k] = 1
            d = mp.diff(f, X, tuple(order))
            assert abs(grads.reshape(-1)[k] - d) <= mp.mpf(10) ** -30 * (abs(d) + tiny)
            hk = 0
            for j in range(3):
                o2 = [0, 0, 0]
                o2[k] += 1
                o2[j] += 1
                hk += mp.diff(f, X, tuple(o2)) * v[j]
            assert abs(hv.reshape(-1)[k] - hk) <= mp.mpf(10) ** -25 * (abs(hk) + tiny)


# --------------------------------------------------------------------------- optax

@pytest.mark.skipif(not _have("optax"), reason="optax not installed")
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_same_numbers_as_optax(rng, epsilon):
    """optax's poly_loss_cross_entropy is ``CE + epsilon sum_c q_c (1 - p_c)`` per row (labels
    as probabilities, no class weights, no reduction: our "none"): same values and gradients
    (float64) for one-hot and soft labels, along any class axis."""
    import optax

    x = rng.normal(0, 3, (6, 5))
    x[0] = [40.0, 0.0, -3.0, 1.0, 2.0]
    t = rng.integers(0, 5, 6)
    for labels in (np.eye(5)[t], rng.dirichlet(np.ones(5), 6)):
        def f(z):
            return optax.losses.poly_loss_cross_entropy(z, jnp.asarray(labels), epsilon=epsilon)

        ov = np.asarray(f(jnp.asarray(x)))
        og = np.asarray(jax.grad(lambda z: jnp.sum(f(z)))(jnp.asarray(x)))
        kw = dict(epsilon=epsilon, reduction="none")
        np.testing.assert_allclose(poly(x, labels, **kw), ov, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(poly_grad(x, labels, **kw), og, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(poly(x, t, epsilon=epsilon, reduction="none"),
                               poly(x, np.eye(5)[t], epsilon=epsilon, reduction="none"),
                               rtol=4 * EPS64)
    np.testing.assert_array_equal(poly(x.T, np.eye(5)[t].T, epsilon=epsilon, axis=0,
                                       reduction="none"),
                                  poly(x, np.eye(5)[t], epsilon=epsilon, reduction="none"))


@pytest.mark.skipif(not _have("optax"), reason="optax not installed")
def test_optax_nan_value_at_a_masked_class():
    """Defect (optax 0.2.8): a masked class (logit -inf) gives a NaN value with a finite
    gradient, through ``0 * (-inf)`` in ``softmax_cross_entropy``.  Smallest input: logits
    ``[0, -inf]``, labels ``[1, 0]``, exact value 0.  By the audits' rule (a NaN value with a
    finite gradient trains silently on garbage) a defect, not a convention.  Ours: 0."""
    import optax

    z = jnp.array([[0.0, -jnp.inf]])
    labels = jnp.array([[1.0, 0.0]])

    def f(z):
        return jnp.sum(optax.losses.poly_loss_cross_entropy(z, labels))

    assert np.isnan(float(f(z)))
    assert np.isfinite(np.asarray(jax.grad(f)(z))).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert poly([[0.0, NINF]], np.array([[1.0, 0.0]]), reduction="sum") == 0.0
        assert poly([[0.0, NINF]], np.array([0]), reduction="sum") == 0.0
        np.testing.assert_array_equal(poly_grad([[0.0, NINF]], np.array([0])), [[0.0, 0.0]])


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
                 option_sets=["soft (Dirichlet) + epsilon"],
                 regions=["random"])
    assert not rep.ok
    measure = "mpmath" if what == "grad" else "hvp"
    assert any(f["measure"] == measure for r in rep.rows for f in r.failures)
