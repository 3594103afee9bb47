"""Tests of the hand-derived Hessian-vector products (ce_reference.hvp).

Oracles, each independent of the hand-derived formulas:

* ``jax.jvp(jax.grad(twin))`` and ``jax.hessian(twin)`` of the JAX twins in
  float64 (x64 enabled), on every option set and reduction;
* central finite differences of the NumPy *gradient* (float64);
* mpmath at extreme logits, where an autodiff oracle itself cancels;
* structural properties: symmetry, positive semi-definiteness, ``H 1 = 0``
  per softmax row.

Errors are measured componentwise against ``(|H| |v|)_k``, the operand
magnitude of the matrix-vector product (the quantity a few roundings per term
are proportional to); for the three diagonal losses this is just ``|H v|_k``,
i.e. plain relative error.

``PYTHONPATH=. python tests/test_hvp.py`` prints the measured worst errors
quoted in docs/hvp.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import mpmath  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from scipy.special import softmax  # noqa: E402

import ce_reference as ce  # noqa: E402
from ce_reference import jax as cej  # noqa: E402

SEED = 20261128
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)

# --- tolerances ------------------------------------------------------------------------------
# NumPy vs jax (float64), in units of eps64 * (|H||v|)_k.  Both sides round O(10) operations per
# term (softmax, products, the reduction scale) and jax's own Hessian of log_softmax forms
# 1 - p_k by subtraction, so a confident class costs it ~1/(1 - p_k) ULP; measured worst over
# the case sweep is below 8 (see docs/hvp.md), 32 leaves room without hiding a
# formula bug (those are O(1) relative errors).
JAX_ULPS = 32
# float32 HVP vs the float64 HVP at the same (float32-representable) inputs, in units of
# eps32 * (|H||v|)_k: each term is a handful of float32 roundings (the diagonal losses) or
# float32 softmax probabilities (a few ULP each) combined in float64.  Measured worst is ~3.
F32_ULPS = 8
# Extra float32 factor for softmax: p = exp(x - m) inherits the rounding of x - m (absolute
# 0.5 ulp(x - m)), i.e. a relative error |x - m| * eps32 / 2 -- the condition number of exp,
# inherent to any float32 softmax.  The tolerance is multiplied by 1 + max |x - m| of the case.
# (Comment only; computed in _f32_condition.)
# Against mpmath (float64): correctly rounded reference, our result within a few roundings.
MPMATH_ULPS = 4
# Symmetry u^T H v = v^T H u (float64): each side is a dot product of n terms of size
# |u||H||v|; relative to that magnitude the two differ by a few ULP times log n.
SYMMETRY_RTOL = 64 * EPS64
# Central difference of the gradient, float64, step FD_STEP * max(1, |v|) scaled: truncation
# ~ h^2 |g'''| / 6 ~ 1e-10 relative at our interior points, rounding ~ eps |g| / h ~ 1e-11;
# 1e-6 (norm-relative) is far below any formula error yet far above both.
FD_STEP = 1e-5
FD_RTOL = 1e-6
# Property tests: quadratic form v^T H v >= -tol and row sums of H v ~ 0, relative to the
# componentwise magnitudes; a handful of roundings per term (float64).
PROPERTY_ULPS = 32


# --- the case sweep ---------------------------------------------------------------------------

@dataclass
class Case:
    name: str                      # loss name, e.g. "softmax_cross_entropy"
    x: np.ndarray                  # first argument
    targets: np.ndarray
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    @property
    def id(self):
        return f"{self.name}-{self.label}"

    def hvp(self, v, x=None, **over):
        return getattr(ce, self.name + "_hvp")(self.x if x is None else x, self.targets, v,
                                               **{**self.kwargs, **over})

    def grad(self, x):
        return getattr(ce, self.name + "_grad")(x, self.targets, **self.kwargs)


def _dirichlet_rows(rng, shape, axis=-1):
    q = rng.dirichlet(np.ones(shape[axis]), size=int(np.prod(shape)) // shape[axis])
    q = q.reshape(tuple(np.delete(shape, axis % len(shape))) + (shape[axis],))
    return np.moveaxis(q, -1, axis)


def make_cases(seed=SEED):
    rng = np.random.default_rng(seed)
    cases = []
    reductions = ("mean", "sum", "none")

    # Binary on probabilities.  Interior points are >= 0.05 away from the clip boundaries at
    # eps = 0.1; two points lie outside the clip interval (0.03, 0.97).
    p = rng.uniform(0.15, 0.85, (3, 4))
    p[0, 0], p[2, 3] = 0.03, 0.97
    y = rng.uniform(0, 1, (3, 4))
    y[0, 1], y[1, 2] = 0.0, 1.0
    w4 = rng.uniform(0.1, 2, (4,))
    for opts, lab in (({}, "plain"), ({"weight": w4}, "weight"), ({"eps": 0.1}, "eps"),
                      ({"weight": w4, "eps": 0.1}, "weight+eps")):
        for r in reductions:
            cases.append(Case("binary_cross_entropy", p, y, {**opts, "reduction": r},
                              f"{lab}-{r}"))

    # Binary on logits.
    x = rng.normal(0, 3, (3, 4))
    w34 = rng.uniform(0.1, 2, (3, 4))
    pw = rng.uniform(0.2, 5, (4,))
    for opts, lab in (({}, "plain"), ({"weight": w34}, "weight"), ({"pos_weight": pw}, "pw"),
                      ({"weight": w34, "pos_weight": pw}, "weight+pw")):
        for r in reductions:
            cases.append(Case("binary_cross_entropy_with_logits", x, y, {**opts, "reduction": r},
                              f"{lab}-{r}"))

    # Categorical on probabilities (rows not normalised, as allowed); row 0's target class
    # has p = 0.03, outside the clip interval at eps = 0.1.
    P = rng.uniform(0.15, 0.85, (4, 3))
    P[0, 1] = 0.03
    idx = np.array([1, 0, 2, 1])
    soft = _dirichlet_rows(rng, (4, 3))
    P3 = rng.uniform(0.15, 0.85, (2, 3, 4))
    idx3 = rng.integers(0, 3, (2, 4))
    soft3 = _dirichlet_rows(rng, (2, 3, 4), axis=1)
    w3 = rng.uniform(0.1, 2, (3,))
    for tkind, t, t3 in (("index", idx, idx3), ("probs", soft, soft3)):
        for opts, lab in (({}, "plain"), ({"weight": w3}, "weight"), ({"eps": 0.1}, "eps"),
                          ({"weight": w3, "eps": 0.1}, "weight+eps")):
            for r in reductions:
                cases.append(Case("categorical_cross_entropy", P, t, {**opts, "reduction": r},
                                  f"{tkind}-{lab}-{r}"))
        for r in reductions:
            cases.append(Case("categorical_cross_entropy", P3, t3,
                              {"axis": 1, "weight": w3, "reduction": r}, f"{tkind}-axis1-{r}"))

    # Softmax cross-entropy on logits.
    Z = rng.normal(0, 2, (4, 5))
    zidx = np.array([3, 2, 0, 4])
    zidx_ign = np.array([3, -100, 0, 4])
    zsoft = _dirichlet_rows(rng, (4, 5))
    Z3 = rng.normal(0, 2, (2, 5, 3))
    zidx3 = rng.integers(0, 5, (2, 3))
    zsoft3 = _dirichlet_rows(rng, (2, 5, 3), axis=1)
    w5 = rng.uniform(0.1, 2, (5,))
    for r in reductions:
        for opts, lab, t in (
            ({}, "index-plain", zidx),
            ({"weight": w5}, "index-weight", zidx),
            ({"label_smoothing": 0.1}, "index-ls", zidx),
            ({"ignore_index": -100}, "index-ignore", zidx_ign),
            ({"weight": w5, "label_smoothing": 0.2, "ignore_index": 2}, "index-w+ls+ignore2",
             zidx),
            ({}, "probs-plain", zsoft),
            ({"weight": w5}, "probs-weight", zsoft),
            ({"label_smoothing": 0.1}, "probs-ls", zsoft),
            ({"weight": w5, "label_smoothing": 0.3}, "probs-w+ls", zsoft),
        ):
            cases.append(Case("softmax_cross_entropy", Z, t, {**opts, "reduction": r},
                              f"{lab}-{r}"))
        cases.append(Case("softmax_cross_entropy", Z3, zidx3,
                          {"axis": 1, "weight": w5, "label_smoothing": 0.1, "reduction": r},
                          f"index-axis1-{r}"))
        cases.append(Case("softmax_cross_entropy", Z3, zsoft3, {"axis": 1, "reduction": r},
                          f"probs-axis1-{r}"))
    return cases


CASES = make_cases()
DIAGONAL = ("binary_cross_entropy", "binary_cross_entropy_with_logits",
            "categorical_cross_entropy")


# --- oracles and error measures ---------------------------------------------------------------

def jax_oracles(case: Case, v):
    """``(jvp of grad, full Hessian as an (n, n) matrix)`` of the twin's (summed) loss."""
    twin = getattr(cej, case.name)
    t = jnp.asarray(case.targets)
    kw = {k: (jnp.asarray(a) if isinstance(a, np.ndarray) else a) for k, a in case.kwargs.items()}

    def f(x):
        return jnp.sum(twin(x, t, **kw))

    x = jnp.asarray(case.x, jnp.float64)
    hv = jax.jvp(jax.grad(f), (x,), (jnp.asarray(v, jnp.float64),))[1]
    H = jax.hessian(f)(x).reshape(x.size, x.size)
    return np.asarray(hv), np.asarray(H)


def hessian_from_hvp(case: Case, x=None):
    """Our Hessian, one basis vector at a time: column j is ``hvp(e_j)``."""
    x = case.x if x is None else x
    cols = []
    for j in range(x.size):
        e = np.zeros(x.size)
        e[j] = 1.0
        cols.append(np.asarray(case.hvp(e.reshape(x.shape), x=x), np.float64).ravel())
    return np.stack(cols, axis=1)


def componentwise_ulps(got, want, bound, eps):
    """max_k |got_k - want_k| / (eps * bound_k); 0/0 = 0 and x/0 = inf (exactness required)."""
    err = np.abs(np.asarray(got, np.float64).ravel() - np.asarray(want, np.float64).ravel())
    bound = np.asarray(bound, np.float64).ravel() * eps
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(err == 0, 0.0, err / bound)
    return float(np.max(r, initial=0.0))


def _direction(case: Case, rng):
    return rng.normal(0, 1, case.x.shape)


def _jax_condition(case: Case):
    """Per-element factor for jax's *own* rounding error (the oracle's, not ours).

    jax differentiates ``sigmoid`` as ``ans * (1 - ans)``, so its second derivative of
    ``log_sigmoid`` at ``|x|`` carries ``1 - sigma(|x|)`` formed by subtraction: a relative
    error ~ eps * (1 + e^{|x|}) (measured: 209 ULP at x = -5.19, where ours is 0.7 ULP against
    mpmath).  The binary-logits HVP is therefore gated at 4 ULP against mpmath instead (see
    test_bce_logits_matches_mpmath / test_bce_logits_extreme); against jax it is checked to
    jax's own accuracy.  Every other loss: factor 1.
    """
    if case.name != "binary_cross_entropy_with_logits":
        return np.ones(case.x.size)
    return 1.0 + np.exp(np.minimum(np.abs(case.x.ravel()), 700.0))


def _f32_condition(case: Case):
    """1 + max |x - rowmax| for softmax (condition of exp in float32), else 1."""
    if case.name != "softmax_cross_entropy":
        return 1.0
    ax = case.kwargs.get("axis", -1)
    x = case.x.astype(np.float32).astype(np.float64)
    return 1.0 + float(np.max(np.max(x, axis=ax, keepdims=True) - x))


def _as32(case: Case):
    """The case with every float array rounded to float32 (so both precisions see one input)."""
    def r(a):
        return a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
    return Case(case.name, r(case.x), r(case.targets), {k: r(a) for k, a in case.kwargs.items()},
                case.label)


def _as64(case32: Case):
    def r(a):
        return a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
    return Case(case32.name, r(case32.x), r(case32.targets),
                {k: r(a) for k, a in case32.kwargs.items()}, case32.label)


def measure(case: Case, seed=SEED):
    """Errors of one case against every oracle (used by the tests and by the __main__ report)."""
    rng = np.random.default_rng(seed)
    v = _direction(case, rng)
    hv = case.hvp(v)
    ref_jvp, H_jax = jax_oracles(case, v)
    cond = _jax_condition(case)
    bound = (np.abs(H_jax) @ np.abs(v.ravel())) * cond
    H_ours = hessian_from_hvp(case)
    out = {
        "jvp_ulps": componentwise_ulps(hv, ref_jvp, bound, EPS64),
        "hessian_v_ulps": componentwise_ulps(hv, H_jax @ v.ravel(), bound, EPS64),
        "hessian_ulps": componentwise_ulps(H_ours, H_jax, np.abs(H_jax) * cond[:, None], EPS64),
    }
    c32 = _as32(case)
    v32 = v.astype(np.float32)
    c64 = _as64(c32)
    h32 = c32.hvp(v32)
    h64 = c64.hvp(v32.astype(np.float64))
    bound64 = np.abs(hessian_from_hvp(c64)) @ np.abs(v32.astype(np.float64).ravel())
    out["f32_raw_ulps"] = componentwise_ulps(h32, h64, bound64, EPS32)
    out["f32_ulps"] = out["f32_raw_ulps"] / _f32_condition(case)
    out["f32_dtype"] = h32.dtype
    out["hv"] = hv
    return out


# --- agreement with jax -----------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_jax_and_float32(case):
    m = measure(case)
    assert m["hv"].shape == case.x.shape and m["hv"].dtype == np.float64
    assert m["jvp_ulps"] <= JAX_ULPS, m
    assert m["hessian_v_ulps"] <= JAX_ULPS, m
    assert m["hessian_ulps"] <= JAX_ULPS, m
    assert m["f32_dtype"] == np.float32
    assert m["f32_ulps"] <= F32_ULPS, m


def test_sweep_covers_every_option():
    seen = {(c.name, k) for c in CASES for k in c.kwargs}
    for name, opts in {
        "binary_cross_entropy": ("weight", "eps", "reduction"),
        "binary_cross_entropy_with_logits": ("weight", "pos_weight", "reduction"),
        "categorical_cross_entropy": ("axis", "weight", "eps", "reduction"),
        "softmax_cross_entropy": ("axis", "weight", "ignore_index", "label_smoothing",
                                  "reduction"),
    }.items():
        for o in opts:
            assert (name, o) in seen, (name, o)
    assert {c.kwargs["reduction"] for c in CASES} == {"mean", "sum", "none"}


@pytest.mark.parametrize("name", DIAGONAL)
def test_diagonal_losses_have_diagonal_hessian(name):
    case = next(c for c in CASES if c.name == name and c.kwargs.get("eps") is None
                and c.kwargs["reduction"] == "sum")
    _, H = jax_oracles(case, np.zeros(case.x.shape))
    off = H - np.diag(np.diag(H))
    assert np.all(off == 0)
    # and ours: hvp(v) == diag(H) * v exactly (the same elementwise product).
    H_ours = hessian_from_hvp(case)
    v = np.random.default_rng(SEED).normal(size=case.x.shape)
    assert np.allclose(case.hvp(v).ravel(), np.diag(H_ours) * v.ravel(), rtol=4 * EPS64, atol=0)


# --- finite differences of the gradient, symmetry ---------------------------------------------

def _fd_cases():
    # The eps cases are included: their points are >= 0.05 from the clip boundaries, so the
    # central difference never crosses a kink.
    return [c for c in CASES if c.kwargs["reduction"] in ("mean", "none")]


@pytest.mark.parametrize("case", _fd_cases(), ids=lambda c: c.id)
def test_matches_finite_difference_of_gradient(case):
    rng = np.random.default_rng(SEED + 1)
    v = _direction(case, rng)
    h = FD_STEP / max(1.0, float(np.max(np.abs(v))))
    if case.name in ("binary_cross_entropy", "categorical_cross_entropy"):
        assert h * np.max(np.abs(v)) < 0.01   # x +- h v stays inside (0, 1), off the kinks
    fd = (case.grad(case.x + h * v) - case.grad(case.x - h * v)) / (2 * h)
    hv = case.hvp(v)
    assert np.linalg.norm(fd - hv) <= FD_RTOL * np.linalg.norm(hv)


@pytest.mark.parametrize("case", [c for c in CASES if c.kwargs["reduction"] == "mean"],
                         ids=lambda c: c.id)
def test_symmetric(case):
    rng = np.random.default_rng(SEED + 2)
    u, v = _direction(case, rng), _direction(case, rng)
    Hu, Hv = case.hvp(u), case.hvp(v)
    a, b = float(np.sum(u * Hv)), float(np.sum(v * Hu))
    scale = float(np.sum(np.abs(u) * np.abs(Hv)) + np.sum(np.abs(v) * np.abs(Hu)))
    assert abs(a - b) <= SYMMETRY_RTOL * scale
    # And positive semi-definite: every one of the four losses is convex in its first argument.
    assert float(np.sum(v * Hv)) >= -SYMMETRY_RTOL * scale


# --- conventions ------------------------------------------------------------------------------

def test_mean_scale_is_the_gradients():
    """mean HVP == sum HVP / denominator, with each loss's own denominator."""
    rng = np.random.default_rng(SEED + 3)
    for case in CASES:
        if case.kwargs["reduction"] != "mean":
            continue
        v = _direction(case, rng)
        s = case.hvp(v, reduction="sum")
        m = case.hvp(v)
        g_s = getattr(ce, case.name + "_grad")(case.x, case.targets,
                                               **{**case.kwargs, "reduction": "sum"})
        g_m = case.grad(case.x)
        # the denominator, recovered from the gradient (independent of the HVP code)
        k = np.flatnonzero(g_m.ravel())[0]
        denom = g_s.ravel()[k] / g_m.ravel()[k]
        np.testing.assert_allclose(m, s / denom, rtol=4 * EPS64, atol=0, err_msg=case.id)


def test_zero_denominator_mean_gives_zero():
    z = np.random.default_rng(0).normal(size=(3, 4))
    v = np.ones((3, 4))
    out = ce.softmax_cross_entropy_hvp(z, np.full(3, -100), v, ignore_index=-100)
    assert out.shape == (3, 4) and np.all(out == 0)
    # target weights summing to 0 (index targets): the mean's denominator is 0
    out = ce.categorical_cross_entropy_hvp(np.full((2, 3), 0.3), np.array([0, 0]),
                                           np.ones((2, 3)), weight=[0.0, 1.0, 1.0])
    assert np.all(out == 0)
    # empty batches
    assert ce.binary_cross_entropy_hvp(np.zeros((0, 2)), np.zeros((0, 2)),
                                       np.zeros((0, 2))).shape == (0, 2)
    assert ce.softmax_cross_entropy_hvp(np.zeros((0, 3)), np.zeros(0, int),
                                        np.zeros((0, 3))).shape == (0, 3)
    assert ce.categorical_cross_entropy_hvp(np.zeros((0, 3)), np.zeros((0, 3)),
                                            np.zeros((0, 3))).shape == (0, 3)


def test_ignored_rows_are_exactly_zero():
    z = np.random.default_rng(1).normal(size=(3, 4))
    out = ce.softmax_cross_entropy_hvp(z, np.array([1, 2, 3]), np.ones((3, 4)) * [1, 2, 3, 4],
                                       ignore_index=2, label_smoothing=0.3)
    assert np.all(out[1] == 0) and np.all(out[[0, 2]] != 0)


def test_clip_convention():
    # outside [eps, 1 - eps]: the clipped loss is constant, second derivative 0
    assert ce.binary_cross_entropy_hvp([0.05, 0.97], [1.0, 0.0], [1.0, 1.0], eps=0.1,
                                       reduction="sum").tolist() == [0.0, 0.0]
    # on the boundary: the interior formula (as the gradient passes through there)
    got = ce.binary_cross_entropy_hvp([0.1], [1.0], [1.0], eps=0.1, reduction="sum")
    np.testing.assert_allclose(got, [1 / 0.1**2], rtol=4 * EPS64)
    got = ce.categorical_cross_entropy_hvp([[0.1, 0.9]], np.array([0]), [[1.0, 1.0]], eps=0.1)
    np.testing.assert_allclose(got, [[1 / 0.1**2, 0.0]], rtol=4 * EPS64)


def test_infinite_hessian_entries():
    # p = 0 with y = 1 (no eps): infinite curvature; +-inf where v != 0, 0 where v == 0
    out = ce.binary_cross_entropy_hvp([0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.5],
                                      [2.0, 0.0, 1.0, -1.0], reduction="sum")
    assert out.tolist() == [np.inf, 0.0, 1.0, -np.inf]
    out = ce.categorical_cross_entropy_hvp([[0.0, 1.0]], np.array([0]), [[-1.0, 5.0]])
    assert out.tolist() == [[-np.inf, 0.0]]


def test_no_spurious_overflow():
    # intermediate 1/p^2 = 1e40 overflows float32, but the product with a tiny v does not
    out = ce.binary_cross_entropy_hvp(np.float32([1e-20]), np.float32([1.0]), np.float32([1e-30]),
                                      reduction="sum")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, [1e10], rtol=4 * EPS32)
    # v near the float64 range in a softmax row: v_k - v_a would overflow without prescaling
    big = np.finfo(np.float64).max / 2
    out = ce.softmax_cross_entropy_hvp(np.zeros((1, 4)), np.array([0]),
                                       np.array([[big, -big, 0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.25 * big, -0.25 * big, 0.0, 0.0]], rtol=4 * EPS64)


# --- extreme logits ---------------------------------------------------------------------------

EXTREME_X = np.array([1e4, -1e4, 700.0, -700.0, 745.0, 709.78, 88.7, -36.7, 36.7, 20.0, 0.0,
                      1e-8, np.inf, -np.inf])


def _mp_sigmoid_prime(x, dps=50):
    """sigma(x) sigma(-x) = e^{-|x|} / (1 + e^{-|x|})^2 in mpmath (no cancellation)."""
    with mpmath.workdps(dps):
        if mpmath.isinf(x):
            return mpmath.mpf(0)
        e = mpmath.exp(-abs(mpmath.mpf(float(x))))
        return e / (1 + e) ** 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bce_logits_extreme(dtype):
    x = EXTREME_X.astype(dtype)
    y = np.linspace(0, 1, x.size).astype(dtype)
    pw = dtype(3.0)
    v = np.linspace(-2, 2, x.size).astype(dtype)
    out = ce.binary_cross_entropy_with_logits_hvp(x, y, v, pos_weight=pw, reduction="sum")
    assert out.dtype == dtype and np.isfinite(out).all()
    tiny = np.finfo(dtype).smallest_subnormal
    for xi, yi, vi, oi in zip(x, y, v, out):
        with mpmath.workdps(50):
            ref = (mpmath.mpf(float(pw)) * float(yi) + 1 - float(yi)) * _mp_sigmoid_prime(xi) \
                * float(vi)
        ref = float(ref)
        # relative error, or a few subnormal steps (times the coefficient and |v|) where the
        # true Hessian entry is subnormal
        tol = (MPMATH_ULPS * float(np.finfo(dtype).eps) * abs(ref)
               + MPMATH_ULPS * float(tiny) * max(1.0, 4 * abs(float(vi))))
        assert abs(float(oi) - ref) <= tol, (xi, oi, ref)
    assert out[0] == 0 and out[1] == 0         # e^{-1e4} underflows to 0: its correct rounding


SOFTMAX_EXTREME_ROWS = np.array([
    [1e4, 0.0, -1e4],
    [700.0, 0.0, -700.0],
    [-1e4, 1e4, 0.0],
    [0.0, 0.0, 0.0],
    [709.78, 709.78, 0.0],
    [40.0, 0.0, -3.0],          # confident: p_a = 1 - 4.5e-18, 1 - p_a cancels naively
    [5.0, -np.inf, 0.0],
])


def _mp_softmax_hvp(row, v, S, dps=60):
    """S p_k (v_k - <p, v>) in mpmath, written without cancellation.

    ``v_k - <p, v> = sum_j p_j (v_k - v_j)`` (since sum_j p_j = 1): the naive form cancels
    ``1 - p_a`` and would need ~300 digits at the row [700, 0, -700] (an oracle can be
    wrong too).  Evaluated at ``dps`` and again at ``2 dps``; the two must agree.
    """
    def at(d):
        with mpmath.workdps(d):
            xs = [mpmath.mpf(float(a)) if np.isfinite(a) else None for a in row]
            m = max(a for a in xs if a is not None)
            e = [mpmath.exp(a - m) if a is not None else mpmath.mpf(0) for a in xs]
            s = mpmath.fsum(e)
            p = [ei / s for ei in e]
            vs = [mpmath.mpf(float(a)) for a in v]
            hv = [S * pk * mpmath.fsum(pj * (vk - vj) for pj, vj in zip(p, vs))
                  for pk, vk in zip(p, vs)]
            # (|H||v|)_k = S p_k sum_{j != k} p_j (|v_k| + |v_j|), also cancellation-free
            bound = [S * pk * mpmath.fsum(pj * (abs(vk) + abs(vj))
                                          for j, (pj, vj) in enumerate(zip(p, vs)) if j != k)
                     for k, (pk, vk) in enumerate(zip(p, vs))]
            return [float(h) for h in hv], [float(b) for b in bound]
    lo, hi = at(dps), at(2 * dps)
    assert lo == hi, "mpmath oracle not converged"
    return hi


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_extreme(dtype):
    x = SOFTMAX_EXTREME_ROWS.astype(dtype)
    t = np.array([0, 1, 0, 2, 1, 0, 2])
    v = np.tile(np.array([1.0, -0.5, 0.25]), (len(x), 1)).astype(dtype)
    out = ce.softmax_cross_entropy_hvp(x, t, v, reduction="sum")
    assert out.dtype == dtype and np.isfinite(out).all()
    eps = float(np.finfo(dtype).eps)
    for row, vrow, orow in zip(x, v, out):
        ref, bound = _mp_softmax_hvp(row, vrow, 1.0)
        finite = row[np.isfinite(row)]
        cond = 1.0 if dtype == np.float64 else 1.0 + float(np.max(finite) - np.min(finite))
        # plus a few subnormal steps: a true value below the dtype's range rounds to 0 or a
        # subnormal (float32 at the row [700, 0, -700]: e^-700 underflows)
        err = np.abs(orow.astype(np.float64) - ref)
        tol = MPMATH_ULPS * cond * eps * np.array(bound) + MPMATH_ULPS * float(
            np.finfo(dtype).smallest_subnormal)
        assert np.all(err <= tol), (row, orow, ref)


def test_softmax_confident_row_is_relatively_accurate():
    """(Hv)_a = p_a (1 - p_a) v_a for v = e_a: 8.5e-18, to a few ULP of itself.

    The naive v_a - <p, v> = 1 - p_a rounds to 0 in float64 here (and so does jax's jvp).
    """
    row = np.array([[40.0, 0.0, 0.0]])
    out = ce.softmax_cross_entropy_hvp(row, np.array([0]), np.array([[1.0, 0.0, 0.0]]))
    ref, _ = _mp_softmax_hvp(row[0], [1.0, 0.0, 0.0], 1.0)
    jax_ref, _ = jax_oracles(Case("softmax_cross_entropy", row, np.array([0]),
                                  {"reduction": "mean"}), np.array([[1.0, 0.0, 0.0]]))
    assert jax_ref[0, 0] == 0.0          # the oracle's own cancellation (documented above)
    assert ref[0] > 0
    np.testing.assert_allclose(out[0], ref, rtol=MPMATH_ULPS * EPS64)


def test_extreme_logits_match_jax():
    x = SOFTMAX_EXTREME_ROWS[:5]
    case = Case("softmax_cross_entropy", x, np.array([0, 1, 0, 2, 1]),
                {"weight": np.array([0.5, 1.0, 2.0]), "reduction": "mean"}, "extreme")
    v = np.random.default_rng(SEED).normal(size=x.shape)
    ref, H = jax_oracles(case, v)
    # Normwise: jax's own Hessian cancels 1 - p_a to 0 at these rows, so componentwise it has
    # no accuracy left for the e^-700-sized entries (mpmath gates those, above).
    bound = np.max(np.abs(H) @ np.abs(v.ravel()))
    assert np.max(np.abs(case.hvp(v).ravel() - ref.ravel())) <= JAX_ULPS * EPS64 * bound


# --- dtypes, inputs unchanged, argument errors ------------------------------------------------

def _small_calls():
    """(name, x, targets, kwargs) for one valid call of each HVP."""
    rng = np.random.default_rng(SEED + 4)
    return [
        ("binary_cross_entropy", rng.uniform(0.2, 0.8, (2, 3)), rng.uniform(0, 1, (2, 3)),
         {"weight": rng.uniform(0, 1, (3,)), "eps": 1e-3}),
        ("binary_cross_entropy_with_logits", rng.normal(size=(2, 3)), rng.uniform(0, 1, (2, 3)),
         {"weight": rng.uniform(0, 1, (2, 3)), "pos_weight": rng.uniform(0, 2, (3,))}),
        ("categorical_cross_entropy", rng.uniform(0.2, 0.8, (2, 3)), np.array([0, 2]),
         {"weight": rng.uniform(0, 1, (3,)), "eps": 1e-3}),
        ("softmax_cross_entropy", rng.normal(size=(2, 3)), _dirichlet_rows(rng, (2, 3)),
         {"weight": rng.uniform(0, 1, (3,)), "label_smoothing": 0.1}),
    ]


@pytest.mark.parametrize("call", _small_calls(), ids=lambda c: c[0])
def test_inputs_unchanged_and_not_aliased(call):
    name, x, t, kw = call
    v = np.random.default_rng(0).normal(size=x.shape)
    arrays = [x, t, v] + [a for a in kw.values() if isinstance(a, np.ndarray)]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False       # any in-place write would raise
    out = getattr(ce, name + "_hvp")(x, t, v, **kw)
    for a, c in zip(arrays, copies):
        assert np.array_equal(a, c)
        assert not np.shares_memory(out, a)


@pytest.mark.parametrize("call", _small_calls(), ids=lambda c: c[0])
@pytest.mark.parametrize("in_dtype,out_dtype", [(np.float64, np.float64),
                                                (np.float32, np.float32),
                                                (np.float16, np.float16)])
def test_result_dtype(call, in_dtype, out_dtype):
    name, x, t, kw = call
    v = np.ones(x.shape)                                   # float64 v: cast to x's compute dtype
    out = getattr(ce, name + "_hvp")(x.astype(in_dtype), t, v, **kw)
    assert out.dtype == out_dtype and out.shape == x.shape and np.isfinite(out).all()


def test_integer_input_promotes_to_float64():
    out = ce.binary_cross_entropy_with_logits_hvp(np.array([0, 1, -2]), [1.0, 0.0, 1.0],
                                                  np.array([1, 1, 1]))
    assert out.dtype == np.float64
    np.testing.assert_allclose(
        out, ce.binary_cross_entropy_with_logits_hvp([0.0, 1.0, -2.0], [1.0, 0.0, 1.0],
                                                     [1.0, 1.0, 1.0]), rtol=0)


BAD_V = [
    ("wrong shape", lambda x: np.ones(x.shape[:-1] + (x.shape[-1] + 1,)), ValueError,
     r"v must have the shape of (probs|logits)"),
    ("broadcastable shape", lambda x: np.ones(x.shape[-1:]), ValueError,
     r"v must have the shape of (probs|logits)"),
    ("NaN", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 1, np.nan, 1.0),
     ValueError, r"v contains NaN"),
    ("inf", lambda x: np.full(x.shape, -np.inf), ValueError, r"v contains inf"),
    ("complex", lambda x: np.ones(x.shape, complex), TypeError, r"v must be a real numeric"),
    ("strings", lambda x: np.full(x.shape, "a"), TypeError, r"v must be a real numeric"),
    ("ragged", lambda x: [[1.0], [1.0, 2.0]], TypeError, r"v must be a numeric array"),
]


@pytest.mark.parametrize("call", _small_calls(), ids=lambda c: c[0])
@pytest.mark.parametrize("bad", BAD_V, ids=lambda b: b[0])
def test_bad_v(call, bad):
    name, x, t, kw = call
    _, make, exc, msg = bad
    with pytest.raises(exc, match=msg):
        getattr(ce, name + "_hvp")(x, t, make(x), **kw)


@pytest.mark.parametrize("call", _small_calls(), ids=lambda c: c[0])
def test_v_overflowing_the_compute_dtype(call):
    name, x, t, kw = call
    with pytest.raises(ValueError, match=r"v has entries beyond the range of float32"):
        getattr(ce, name + "_hvp")(x.astype(np.float32), t, np.full(x.shape, 1e300), **kw)


def _bad_args():
    P = np.full((2, 3), 0.3)
    Z = np.zeros((2, 3))
    return [
        ("binary_cross_entropy", ([[1.5, 0.2]], [[1.0, 0.0]]), {}),
        ("binary_cross_entropy", (P, np.ones((3, 3))), {}),
        ("binary_cross_entropy", (P, P), {"eps": 1e-20}),
        ("binary_cross_entropy", (P, P), {"eps": "x"}),
        ("binary_cross_entropy", (P, P), {"weight": -np.ones(3)}),
        ("binary_cross_entropy", (P, P), {"reduction": "avg"}),
        ("binary_cross_entropy", (P.astype(complex), P), {}),
        ("binary_cross_entropy_with_logits", (np.array([np.nan, 1.0]), [1.0, 0.0]), {}),
        ("binary_cross_entropy_with_logits", (Z, Z), {"pos_weight": np.ones(4)}),
        ("binary_cross_entropy_with_logits", (Z, Z + 2), {}),
        ("categorical_cross_entropy", (P, np.array([0, 3])), {}),
        ("categorical_cross_entropy", (P, np.array([0, 1])), {"axis": 2}),
        ("categorical_cross_entropy", (P, np.array([0, 1])), {"weight": np.ones(2)}),
        ("categorical_cross_entropy", (np.zeros((2, 0)), np.zeros((2, 0))), {}),
        ("softmax_cross_entropy", (Z, np.array([0, 1])), {"label_smoothing": 1.5}),
        ("softmax_cross_entropy", (Z, P), {"ignore_index": 0}),
        ("softmax_cross_entropy", (Z, np.array([0, 5])), {"ignore_index": -100}),
        ("softmax_cross_entropy", (np.array([[np.inf, 0.0, 0.0]]), np.array([0])), {}),
        ("softmax_cross_entropy", (np.full((1, 2), -np.inf), np.array([0])), {}),
        ("softmax_cross_entropy", (Z, np.array([0, 1])), {"axis": "1"}),
    ]


@pytest.mark.parametrize("bad", _bad_args(), ids=lambda b: f"{b[0]}-{sorted(b[2])}")
def test_bad_arguments_raise_the_losss_own_error(bad):
    name, (x, t), kw = bad
    with pytest.raises((ValueError, TypeError)) as loss_err:
        getattr(ce, name)(x, t, **kw)
    v = np.zeros(np.shape(x))
    with pytest.raises(type(loss_err.value), match=re.escape(str(loss_err.value))):
        getattr(ce, name + "_hvp")(x, t, v, **kw)


# --- property tests (hypothesis, deterministic) -----------------------------------------------

PROPERTY_SETTINGS = settings(derandomize=True, deadline=None, max_examples=60, database=None,
                             suppress_health_check=[HealthCheck.too_slow])


@st.composite
def softmax_problems(draw):
    n = draw(st.integers(1, 5))
    c = draw(st.integers(1, 8))
    x = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-50, 50)))
    v = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-10, 10)))
    t = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    ls = draw(st.sampled_from([0.0, 0.1, 1.0]))
    w = draw(st.none() | hnp.arrays(np.float64, (c,), elements=st.floats(0, 5)))
    return x, t, v, {"label_smoothing": ls, "weight": w,
                     "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}


def _softmax_magnitude(p, av):
    """(|H||v|)_k / S = p_k sum_{j != k} p_j (|v_k| + |v_j|), without forming 1 - p_k."""
    terms = p[..., None, :] * (av[..., :, None] + av[..., None, :])     # [..., k, j]
    C = p.shape[-1]
    terms = np.where(np.eye(C, dtype=bool), 0.0, terms)
    return p * np.sum(terms, axis=-1)


@PROPERTY_SETTINGS
@given(softmax_problems())
def test_softmax_properties(problem):
    """Per row: 1^T H v = 0 (H 1 = 0 and H symmetric), H (v + c 1) = H v, v^T H v >= 0."""
    x, t, v, kw = problem
    hv = ce.softmax_cross_entropy_hvp(x, t, v, **kw)
    assert np.isfinite(hv).all()
    # componentwise operand magnitude |H| |v| / (S s), from an independent softmax
    # S_n s, written independently from the loss's definition
    C = x.shape[-1]
    W = np.ones(C) if kw["weight"] is None else kw["weight"]
    ls = kw["label_smoothing"]
    S = (1 - ls) * W[t] + ls / C * np.sum(W)
    if kw["reduction"] == "mean":
        S = S / np.sum(W[t]) if np.sum(W[t]) > 0 else 0 * S
    p = softmax(x, axis=-1)
    av = np.abs(v)
    mag = S[:, None] * _softmax_magnitude(p, av)                     # (|H||v|)_k
    mag_s = S[:, None] * _softmax_magnitude(p, np.abs(v + 3.0))
    tol = PROPERTY_ULPS * EPS64
    assert np.all(np.abs(np.sum(hv, axis=-1)) <= tol * np.sum(mag, axis=-1))
    shifted = ce.softmax_cross_entropy_hvp(x, t, v + 3.0, **kw)
    assert np.all(np.abs(shifted - hv) <= tol * (mag + mag_s))
    assert np.sum(v * hv) >= -tol * np.sum(av * mag)


@PROPERTY_SETTINGS
@given(hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-745, 745)),
       st.data())
def test_bce_logits_matches_mpmath(x, data):
    """Over the whole float64 range of interesting logits, to a few ULP of mpmath."""
    y = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0, 1)))
    v = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(-1e3, 1e3)))
    out = ce.binary_cross_entropy_with_logits_hvp(x, y, v, reduction="sum")
    tiny = float(np.finfo(np.float64).smallest_subnormal)
    for xi, yi, vi, oi in zip(x, y, v, out):
        ref = float(_mp_sigmoid_prime(xi, dps=30) * float(vi))   # pw = 1: coefficient 1
        # a subnormal Hessian entry (|x| > 708) is itself only known to ~1 subnormal step, and
        # the product carries that absolute error times |v|
        tol = MPMATH_ULPS * EPS64 * abs(ref) + MPMATH_ULPS * tiny * max(1.0, abs(float(vi)))
        assert abs(oi - ref) <= tol, (xi, oi, ref)


# --- the measurement quoted in docs/hvp.md --------------------------------------------

def _mpmath_sweeps(seed=SEED):
    """Worst errors against mpmath: binary-logits Hessian entries over [-745, 745] and the
    extreme softmax rows (the regions where jax's own second derivatives cancel)."""
    rng = np.random.default_rng(seed)
    xs = np.concatenate([rng.uniform(-60, 60, 1500), rng.uniform(-745, 745, 1000),
                         rng.normal(0, 3, 500), [709.9, 710.0, 740.0, 745.0, -745.1]])
    out = {}
    for dt in (np.float64, np.float32):
        x = xs.astype(dt)
        got = ce.binary_cross_entropy_with_logits_hvp(x, np.zeros_like(x), np.ones_like(x),
                                                      reduction="sum").astype(np.float64)
        ref = np.array([float(_mp_sigmoid_prime(a)) for a in x.astype(np.float64)])
        normal = ref >= np.finfo(dt).tiny
        ulp = np.abs(got - ref)[normal] / np.spacing(ref[normal].astype(dt)).astype(np.float64)
        sub = np.abs(got - ref)[~normal] / float(np.finfo(dt).smallest_subnormal)
        out[f"binary logits sigma' ({dt.__name__}, {x.size} points)"] = (
            f"{ulp.max():.2f} ULP (subnormal range: {np.max(sub, initial=0):.2f} steps)")
    worst = 0.0
    v = np.array([1.0, -0.5, 0.25])
    for row in SOFTMAX_EXTREME_ROWS:
        got = ce.softmax_cross_entropy_hvp(row[None], np.array([0]), v[None], reduction="sum")
        ref, bound = _mp_softmax_hvp(row, v, 1.0)
        worst = max(worst, componentwise_ulps(got[0], ref, bound, EPS64))
    out[f"softmax extreme rows (float64, {len(SOFTMAX_EXTREME_ROWS)} rows)"] = (
        f"{worst:.2f} ULP of (|H||v|)_k")
    return out


def main():
    from rich.console import Console
    from rich.table import Table

    rows = {}
    keys = ("jvp_ulps", "hessian_v_ulps", "hessian_ulps", "f32_raw_ulps", "f32_ulps")
    for case in CASES:
        m = measure(case)
        r = rows.setdefault(case.name, dict.fromkeys(keys, 0.0) | {"cases": 0})
        r["cases"] += 1
        for k in keys:
            r[k] = max(r[k], m[k])
    table = Table(title="HVP worst componentwise error, in ULP of (|H||v|)_k "
                        f"(seed {SEED}; tolerances: jax {JAX_ULPS}, float32 {F32_ULPS}; "
                        "binary logits vs jax divided by jax's own 1 + e^|x|)")
    for col in ("loss", "cases", "vs jax.jvp(grad)", "vs jax.hessian @ v",
                "Hessian entries vs jax.hessian", "float32 vs float64",
                "float32 / exp condition"):
        table.add_column(col, justify="left" if col == "loss" else "right")
    for name, r in rows.items():
        table.add_row(name, str(r["cases"]), *(f"{r[k]:.2f}" for k in keys))
    console = Console(width=160)
    console.print(table)
    t2 = Table(title="against mpmath (cancellation-free oracles, re-checked at 2x precision)")
    t2.add_column("quantity")
    t2.add_column("worst error", justify="right")
    for k, val in _mpmath_sweeps().items():
        t2.add_row(k, val)
    console.print(t2)


if __name__ == "__main__":
    main()
