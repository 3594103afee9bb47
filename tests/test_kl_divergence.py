"""kl_divergence: what the contract (tests/test_contract.py) does not cover -- PyTorch's numbers
(both log_target modes, every reduction), its reductions' exact semantics, the NaN defects of
PyTorch and optax at zero targets, mpmath at extremes, pinned closed forms, loss-specific
errors, and the multi-block driver."""

import itertools
import math
import warnings

import numpy as np
import pytest

import ce_reference as ce
from ce_reference.oracles import kl_divergence as oracle
from ce_reference import cases

from _divergence_helpers import EPS64, assert_mp_close, random_log_probs

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ("batchmean", "sum", "none", "mean")
# PyTorch evaluates xlogy(t, t) - t x, we evaluate t (log t - x): both are within a few eps
# of the operands sum t (|log t| + |x|), not of a small KL.  Values: 64 eps relative plus
# 64 eps of those operands; gradients (-t, or -exp(lt)): 1e-12 relative.
VALUE_RTOL = 64 * EPS64
GRAD_RTOL = 1e-12


def _case(rng, shape, ax, log_target, zeros=False):
    x = random_log_probs(rng, shape, axis=ax)
    t = np.exp(random_log_probs(rng, shape, axis=ax))
    if zeros:
        t = np.where(rng.random(shape) < 0.3, 0.0, t)
    if log_target:
        with np.errstate(divide="ignore"):
            t = np.log(t)
    return x, t


def _torch(x, t, red, log_target, ax):
    """F.kl_div with our reductions: for "none" PyTorch's elements summed over the class dim."""
    xt = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():    # PyTorch warns that its "mean" is not the KL
        warnings.filterwarnings("ignore", "reduction: 'mean' divides", UserWarning)
        out = F.kl_div(xt, torch.tensor(t), reduction=red, log_target=log_target)
    if red == "none":
        out = out.sum(dim=ax)
    out.sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


def _value_atol(x, t, red, log_target, ax):
    """64 eps of the operands of PyTorch's form (the oracle's JAX-twin value operand)."""
    case = cases.Case("kl_divergence", x=x, targets=t, v=x,
                      kwargs={"axis": ax, "log_target": log_target, "reduction": red})
    return 64 * EPS64 * np.asarray(oracle.operands(case).value_jax)


GRID = list(itertools.product([(5,), (6, 4), (3, 5, 4), (2, 4, 3, 2)], (False, True),
                              (False, True), REDUCTIONS))


@pytest.mark.parametrize("shape,log_target,zeros,reduction", GRID)
def test_same_numbers_as_pytorch(shape, log_target, zeros, reduction, rng):
    ax = 0 if len(shape) == 1 else 1
    x, t = _case(rng, shape, ax, log_target, zeros)
    val, grad = ce.kl_divergence_value_and_grad(x, t, axis=ax, log_target=log_target,
                                                reduction=reduction)
    tval, tgrad = _torch(x, t, reduction, log_target, ax)
    np.testing.assert_allclose(grad, tgrad, rtol=GRAD_RTOL, atol=0)
    if log_target and zeros:
        # PyTorch: exp(-inf) * (-inf - x) = NaN for every -inf log-target (see below)
        assert np.isnan(tval).any() and np.all(np.isfinite(val))
        return
    atol = _value_atol(x, t, reduction, log_target, ax)
    assert np.all(np.abs(val - tval) <= VALUE_RTOL * np.abs(tval) + atol)


def test_reductions_are_pytorchs(rng):
    """batchmean = sum / shape[0] of the input as passed (a 1-d input divides by C), mean =
    sum / numel (not the KL), none = per row (PyTorch: per element)."""
    x, t = _case(rng, (3, 5, 4), 1, False)
    total = ce.kl_divergence(x, t, axis=1, reduction="sum")
    assert ce.kl_divergence(x, t, axis=1) == pytest.approx(total / 3, rel=2 * EPS64)
    assert ce.kl_divergence(x, t, axis=1, reduction="mean") == pytest.approx(total / 60,
                                                                             rel=2 * EPS64)
    none = ce.kl_divergence(x, t, axis=1, reduction="none")
    assert none.shape == (3, 4) and np.sum(none) == pytest.approx(total, rel=4 * EPS64)
    assert ce.kl_divergence(x, t, axis=2) == pytest.approx(total / 3, rel=2 * EPS64)
    p, q = np.log([0.5, 0.5]), np.array([0.25, 0.75])     # one 1-d distribution
    ref = F.kl_div(torch.tensor(p), torch.tensor(q), reduction="batchmean").item()
    assert ce.kl_divergence(p, q) == pytest.approx(ref, rel=4 * EPS64)
    assert ce.kl_divergence(p, q) == pytest.approx(ce.kl_divergence(p, q, reduction="sum") / 2,
                                                   rel=2 * EPS64)
    np.testing.assert_array_equal(ce.kl_divergence_grad(x, t, axis=1, reduction="none"),
                                  ce.kl_divergence_grad(x, t, axis=1, reduction="sum"))
    np.testing.assert_allclose(ce.kl_divergence_grad(x, t, axis=1), -t / 3, rtol=EPS64)
    np.testing.assert_allclose(ce.kl_divergence_grad(x, t, axis=1, reduction="mean"), -t / 60,
                               rtol=EPS64)


def test_empty_input_means_are_nan_with_zero_gradient_like_pytorch():
    x, t = np.zeros((0, 3)), np.zeros((0, 3))
    for red in ("batchmean", "mean"):
        assert np.isnan(_torch(x, t, red, False, 1)[0])
        assert np.isnan(ce.kl_divergence(x, t, reduction=red))
        assert ce.kl_divergence_grad(x, t, reduction=red).shape == (0, 3)
    assert ce.kl_divergence(x, t, reduction="sum") == 0.0


# --------------------------------------------------------------------------- NaN defects

def test_zero_target_beside_minus_inf_input_is_zero_but_nan_in_pytorch_and_optax():
    """t (log t - x) with t = 0 and x = -inf is 0 (0 log 0 = 0).  PyTorch 2.13:
    xlogy(0, 0) - 0 * (-inf) = NaN; optax 0.2.8 kl_divergence: 0 * (0 - (-inf)) = NaN.  Both
    gradients are finite: a NaN loss with a finite gradient.  Smallest input: log_probs
    [[-inf, 0]], targets [[0, 1]]."""
    x, t = np.array([[-np.inf, 0.0]]), np.array([[0.0, 1.0]])
    assert ce.kl_divergence(x, t, reduction="sum") == 0.0
    np.testing.assert_array_equal(ce.kl_divergence_grad(x, t, reduction="sum"), [[0.0, -1.0]])
    tval, tgrad = _torch(x, t, "sum", False, 1)
    assert np.isnan(tval) and np.all(np.isfinite(tgrad))
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    f = lambda z: jax.numpy.sum(optax.losses.kl_divergence(z, jax.numpy.asarray(t)))  # noqa
    assert np.isnan(float(f(jax.numpy.asarray(x))))
    assert np.all(np.isfinite(np.asarray(jax.grad(f)(jax.numpy.asarray(x)))))


def test_minus_inf_log_target_is_a_zero_target_but_nan_in_pytorch_and_optax():
    """exp(τ) (τ - x) at τ = -inf is 0.  PyTorch 2.13 (log_target=True) and optax 0.2.8
    (kl_divergence_with_log_targets) evaluate exp(-inf) * (-inf - x) = 0 * (-inf) = NaN for
    any x, with a finite gradient.  Smallest input: log_probs [[-1, -0.5]], targets
    [[-inf, 0]]."""
    x, lt = np.array([[-1.0, -0.5]]), np.array([[-np.inf, 0.0]])
    assert ce.kl_divergence(x, lt, log_target=True, reduction="sum") == 0.5
    tval, tgrad = _torch(x, lt, "sum", True, 1)
    assert np.isnan(tval) and np.all(np.isfinite(tgrad))
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    f = lambda z: jax.numpy.sum(  # noqa: E731
        optax.losses.kl_divergence_with_log_targets(z, jax.numpy.asarray(lt)))
    assert np.isnan(float(f(jax.numpy.asarray(x))))
    assert np.all(np.isfinite(np.asarray(jax.grad(f)(jax.numpy.asarray(x)))))
    # both sides -inf (a class masked in both): 0 too
    assert ce.kl_divergence(np.array([[-np.inf, 0.0]]), lt, log_target=True,
                            reduction="sum") == 0.0


def test_positive_target_beside_minus_inf_input_is_infinite_with_finite_gradient():
    x, t = np.array([[-np.inf, 0.0]]), np.array([[0.5, 0.5]])
    assert ce.kl_divergence(x, t, reduction="sum") == np.inf
    np.testing.assert_array_equal(ce.kl_divergence_grad(x, t, reduction="sum"), [[-0.5, -0.5]])
    # a log-target whose probability underflows (e^-800 = 0 in float64) is still positive
    lt = np.array([[-800.0, 0.0]])
    assert ce.kl_divergence(x, lt, log_target=True, reduction="sum") == np.inf
    assert_mp_close("kl_divergence", x, lt, log_target=True, reduction="sum")


# --------------------------------------------------------------------------- mpmath

def _extreme_case(log_target):
    x = np.array([[-1e4, -1e-300, 0.0, -np.inf], [-0.5, -1e4, -np.inf, -745.0],
                  [0.0, -1e-16, -2.0, -3.0]])
    t = np.array([[0.0, 0.5, 0.5, 0.0], [1e-300, 0.25, 0.0, 0.75 - 1e-300],
                  [1.0 - 1e-16, 1e-16, 0.0, 0.0]])
    if log_target:
        t = np.array([[-np.inf, -1e-300, -0.5, -np.inf], [-1e4, -0.7, -np.inf, -1.0],
                      [0.0, -745.0, -np.inf, -np.inf]])
    return x, t


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mpmath_at_extremes(log_target, dtype, reduction, rng):
    x, t = _extreme_case(log_target)
    for ax in (-1, 0):
        xx, tt = (x, t) if ax == -1 else (x.T.copy(), t.T.copy())
        assert_mp_close("kl_divergence", xx.astype(dtype), tt.astype(dtype),
                        rng.normal(size=xx.shape), axis=ax, log_target=log_target,
                        reduction=reduction)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("log_target", [False, True])
def test_mpmath_nearly_equal_rows(log_target, dtype, rng):
    """A small KL of nearly equal rows is a cancellation of the definition itself: within a
    few eps of the operands sum t (|log t| + |log t - x|)."""
    x = random_log_probs(rng, (4, 6))
    t = np.exp(x + 1e-7 * rng.normal(size=x.shape))
    t = np.log(t) if log_target else t
    assert_mp_close("kl_divergence", x.astype(dtype), t.astype(dtype), log_target=log_target,
                    reduction="none")


# --------------------------------------------------------------------------- pinned values

def test_pinned_closed_forms():
    # KL([0.25, 0.75] || [0.5, 0.5]) = 0.25 log 0.5 + 0.75 log 1.5
    x, t = np.log([[0.5, 0.5]]), np.array([[0.25, 0.75]])
    expect = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert ce.kl_divergence(x, t) == pytest.approx(expect, rel=8 * EPS64)
    assert ce.kl_divergence(x, np.log(t), log_target=True) == pytest.approx(expect,
                                                                           rel=8 * EPS64)
    assert ce.kl_divergence(np.log(t), t, reduction="sum") == 0.0        # equal rows: 0
    q = np.array([[0.2, 0.3, 0.5]])                 # a one-hot target: -log q_y, the NLL
    assert ce.kl_divergence(np.log(q), [[0.0, 1.0, 0.0]]) == pytest.approx(-math.log(0.3),
                                                                          rel=2 * EPS64)
    xx = np.log(np.full((2, 3), 1 / 3))             # mean divides by the 6 elements
    tt = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert ce.kl_divergence(xx, tt, reduction="mean") == pytest.approx(2 * math.log(3) / 6,
                                                                       rel=4 * EPS64)
    assert ce.kl_divergence(xx, tt) == pytest.approx(math.log(3), rel=4 * EPS64)
    # integer targets are probabilities (a one-hot int row), not class indices
    assert ce.kl_divergence(np.log(q), np.array([[0, 1, 0]])) == pytest.approx(-math.log(0.3),
                                                                              rel=2 * EPS64)


X2 = np.log(np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]))
P2 = np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
BAD = [   # what the contract's generic checks do not try
    ((X2 + 1, P2), {}, ValueError, "log_probs must hold log-probabilities"),
    ((np.where(X2 > -1, np.inf, X2), P2), {}, ValueError, "log_probs must hold log-prob"),
    ((X2, P2 * 3), {}, ValueError, "targets must hold probabilities"),
    ((X2, -P2), {}, ValueError, "targets must hold probabilities"),
    ((X2, np.where(P2 > .4, np.nan, P2)), {}, ValueError, "targets contains NaN"),
    ((X2, np.where(P2 > .4, np.inf, P2)), {}, ValueError, "targets contains inf"),
    ((X2, np.log(P2) + 1), {"log_target": True}, ValueError, "targets must hold log-prob"),
    ((X2, np.where(P2 > .4, np.nan, X2)), {"log_target": True}, ValueError, "targets contains"),
    ((X2, P2), {"reduction": None}, ValueError, "reduction"),
    ((X2, P2), {"log_target": np.array([True])}, TypeError, "log_target must be a bool"),
]


@pytest.mark.parametrize("args,kwargs,exc,msg", BAD)
def test_bad_input_names_the_argument(args, kwargs, exc, msg):
    for fn in (ce.kl_divergence, ce.kl_divergence_grad, ce.kl_divergence_value_and_grad):
        with pytest.raises(exc, match=msg):
            fn(*args, **kwargs)
    with pytest.raises(exc, match=msg):
        ce.kl_divergence_hvp(*args, np.zeros(np.shape(args[0])), **kwargs)


@pytest.mark.parametrize("axis", [-1, 0])
def test_value_and_grad_is_bitwise_the_plain_functions_on_many_blocks(axis, rng):
    shape = (2000, 70) if axis == -1 else (70, 2000)
    x, t = _case(rng, shape, axis, True, zeros=True)
    x, t = x.astype(np.float32), t.astype(np.float32)
    for red in REDUCTIONS:
        kw = dict(axis=axis, log_target=True, reduction=red)
        v0, g0 = ce.kl_divergence(x, t, **kw), ce.kl_divergence_grad(x, t, **kw)
        for workers in (1, 2):
            v, g = ce.kl_divergence_value_and_grad(x, t, workers=workers, **kw)
            np.testing.assert_array_equal(v, v0)
            np.testing.assert_array_equal(g, g0)
    tc = t.copy()
    with pytest.raises(ValueError, match="out must not share memory with targets"):
        ce.kl_divergence_value_and_grad(x, tc, axis=axis, log_target=True, out=tc)
