"""generalized_jsd: what the contract (tests/test_contract.py) does not cover -- Liger Kernel's
formula (a float64 PyTorch transcription of its own test reference, with autograd: Liger
needs Triton and a GPU, so it is not installed here), the NaNs of Liger's kernel arithmetic,
the discontinuities at beta = 0 and 1, mpmath at extremes and near equality, the accuracy
the textbook formula loses, pinned closed forms, loss-specific errors, and the multi-block
driver."""

import itertools
import math

import numpy as np
import pytest

import ce_reference as ce
from ce_reference.oracles import generalized_jsd as oracle
from ce_reference.registry import LOSSES
from ce_reference import cases
from ce_reference.verify import mp

from _divergence_helpers import EPS64, assert_mp_close, random_log_probs

torch = pytest.importorskip("torch")
F = torch.nn.functional

BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)


def liger_reference(log_q, log_p, beta, labels=None, ignore_index=-100, fixed=True):
    """Liger Kernel's own test reference (``test/transformers/test_jsd.py``, class ``JSD``),
    transcribed: ``log M`` by ``logaddexp`` as in PR #1397 (``fixed=True``) or as
    ``log(lerp(Q, P, beta))`` as on main before it (``fixed=False``); rows with
    ``labels == ignore_index`` zeroed, the sum divided by the kept rows (0 when none)."""
    kl = lambda inp, tgt: F.kl_div(inp, tgt, reduction="none", log_target=True)  # noqa: E731
    if beta == 0:
        loss = kl(log_q, log_p).sum(dim=-1)
    elif beta == 1:
        loss = kl(log_p, log_q).sum(dim=-1)
    else:
        if fixed:
            log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
        else:
            log_m = torch.log(torch.lerp(torch.exp(log_q), torch.exp(log_p), beta))
        loss = beta * kl(log_m, log_p).sum(dim=-1) + (1 - beta) * kl(log_m, log_q).sum(dim=-1)
    if labels is not None:
        loss = torch.where(labels != ignore_index, loss, 0.0)
        n = (labels != ignore_index).sum().item()
        return torch.zeros((), dtype=loss.dtype) if n == 0 else (loss / n).sum()
    return (loss / log_q.shape[0]).sum()


def liger_kernel_arithmetic(X, Y, beta, pr1397=False):
    """The per-element arithmetic of Liger's Triton ``_jsd_kernel`` (``ops/jsd.py``), in torch,
    in the kernel's float32: ``(loss, dX)`` before the ``1/n_non_ignore`` scale."""
    X, Y = X.float(), Y.float()
    if beta == 0:
        P = torch.exp(Y)
        return P * (Y - X), -P
    if beta == 1:
        Q = torch.exp(X)
        loss = Q * (X - Y)
        return loss, loss + Q
    Q, P = torch.exp(X), torch.exp(Y)
    if pr1397:
        m = torch.maximum(X, Y)
        log_M = m + torch.log(beta * torch.exp(Y - m) + (1 - beta) * torch.exp(X - m))
        loss = beta * P * (Y - log_M) + (1 - beta) * Q * (X - log_M)
    else:
        M = beta * P + (1 - beta) * Q
        log_M = torch.log(M)
        loss = beta * P * Y + (1 - beta) * Q * X - M * log_M
    return loss, (1 - beta) * Q * (X - log_M)


def _case(rng, R=6, C=5, scale=3.0, ignore=None):
    X = random_log_probs(rng, (R, C), scale)
    Y = random_log_probs(rng, (R, C), scale)
    labels = None
    if ignore is not None:
        labels = rng.integers(0, C, size=R)
        labels[rng.choice(R, size=2, replace=False)] = ignore
    return X, Y, labels


def _exact(X, Y, **kwargs):
    """mpmath value (per row for "none") and gradient of the reduced loss, float64."""
    kwargs.setdefault("reduction", "mean")
    case = cases.Case("generalized_jsd", x=X, targets=Y, kwargs=kwargs, v=X)
    return mp.oracle(LOSSES["generalized_jsd"], case)


@pytest.mark.parametrize("beta,ignore,reduction",
                         list(itertools.product(BETAS, (None, -100, 2), ("mean", "sum"))))
def test_same_numbers_as_liger_formula(beta, ignore, reduction, rng):
    X, Y, labels = _case(rng, ignore=ignore)
    kw = {} if ignore is None else {"targets": labels, "ignore_index": ignore}
    val, grad = ce.generalized_jsd_value_and_grad(X, Y, beta=beta, reduction=reduction, **kw)
    xt = torch.tensor(X, requires_grad=True)
    lab = None if labels is None else torch.tensor(labels)
    ref = liger_reference(xt, torch.tensor(Y), beta, lab, -100 if ignore is None else ignore)
    n = X.shape[0] if labels is None else int(np.sum(labels != ignore))
    if reduction == "sum":
        ref = ref * n
    ref.backward()
    # 64 eps of the textbook form's operands (its own rounding: logaddexp, products with
    # log M), the oracle's JAX-twin operands; gradients 1e-12 relative + as much absolute
    case = cases.Case("generalized_jsd", x=X, targets=Y,
                      kwargs={"beta": beta, **kw, "reduction": reduction}, v=X)
    ops = oracle.operands(case)
    assert abs(val - ref.item()) <= 64 * EPS64 * (abs(ref.item()) + ops.value_jax)
    want = xt.grad.numpy()
    assert np.all(np.abs(grad - want) <= 1e-12 * np.abs(want) + 64 * EPS64 * ops.grad_jax)


def test_none_is_per_row_and_ignored_rows_are_dropped(rng):
    X, Y, labels = _case(rng, R=7, ignore=-100)
    kw = dict(targets=labels, ignore_index=-100, beta=0.3)
    none = ce.generalized_jsd(X, Y, reduction="none", **kw)
    assert none.shape == (7,) and np.all(none[labels == -100] == 0)
    keep = labels != -100
    np.testing.assert_allclose(ce.generalized_jsd(X[keep], Y[keep], beta=0.3),
                               ce.generalized_jsd(X, Y, **kw), rtol=4 * EPS64)
    g = ce.generalized_jsd_grad(X, Y, **kw)
    assert np.all(g[~keep] == 0)
    np.testing.assert_allclose(g[keep], ce.generalized_jsd_grad(X[keep], Y[keep], beta=0.3),
                               rtol=4 * EPS64)
    np.testing.assert_array_equal(ce.generalized_jsd(X.T, Y.T, axis=0, reduction="none", **kw),
                                  none)


def test_all_ignored_mean_is_nan_with_zero_gradient_where_liger_gives_zero(rng):
    X, Y, _ = _case(rng)
    labels = np.full(X.shape[0], -100)
    kw = dict(targets=labels, ignore_index=-100)
    assert np.isnan(ce.generalized_jsd(X, Y, **kw))
    assert np.all(ce.generalized_jsd_grad(X, Y, **kw) == 0)
    assert ce.generalized_jsd(X, Y, reduction="sum", **kw) == 0.0
    assert liger_reference(torch.tensor(X), torch.tensor(Y), 0.5, torch.tensor(labels)).item() \
        == 0


# --------------------------------------------------------------------------- NaN in Liger

def test_liger_nan_when_both_probabilities_underflow_but_not_ours():
    """Liger #769 / #1453: log M = log(beta P + (1 - beta) Q) is log 0 = -inf when both
    probabilities underflow, and 0 * -inf is NaN.  Smallest input (float32): student
    [[0, -104]], teacher [[0, -105]] (exp(-104) = 0 in float32).  PR #1397's form (per-element
    max and logaddexp) fixes that case."""
    X = np.array([[0.0, -104.0]], np.float32)
    Y = np.array([[0.0, -105.0]], np.float32)
    loss, _ = liger_kernel_arithmetic(torch.tensor(X), torch.tensor(Y), 0.5)
    assert torch.isnan(loss).any()
    loss2, dX2 = liger_kernel_arithmetic(torch.tensor(X), torch.tensor(Y), 0.5, pr1397=True)
    assert torch.isfinite(loss2).all() and torch.isfinite(dX2).all()
    X64, Y64 = np.array([[0.0, -800.0]]), np.array([[0.0, -801.0]])   # float64: at -800
    assert torch.isnan(liger_reference(torch.tensor(X64), torch.tensor(Y64), 0.5, fixed=False))
    for x, y in ((X, Y), (X64, Y64)):
        assert_mp_close("generalized_jsd", x, y, beta=0.5)


def test_liger_nan_at_a_zero_probability_but_not_ours():
    """A -inf log-probability (a masked vocabulary entry) on either side: Liger's kernel forms
    0 * -inf in beta_P * Y / (1 - beta) Q * X (value) and in (1 - beta) Q (X - log M)
    (gradient), also after PR #1397; at beta = 0 the forward KL P (Y - X) is NaN at a -inf
    teacher entry, at beta = 1 Q (X - Y) at a -inf student entry.  The mathematics is finite
    (0 log 0 = 0).  Smallest input: student [[0, -inf]], teacher log([[0.6, 0.4]])."""
    X = np.array([[0.0, -np.inf]])
    Y = np.log(np.array([[0.6, 0.4]]))
    for beta in (0.0, 0.5, 1.0):
        for x, y in ((X, Y), (Y, X)):
            v, g = ce.generalized_jsd_value_and_grad(x, y, beta=beta)
            infinite = (beta == 0 and np.isneginf(x).any()) or (beta == 1 and np.isneginf(y).any())
            assert np.isinf(v) if infinite else np.isfinite(v)
            assert not np.isnan(g).any()
            liger_nan = (beta == 0 and np.isneginf(y).any()) or beta == 0.5 or \
                (beta == 1 and np.isneginf(x).any())
            for pr in (False, True):
                loss, dX = liger_kernel_arithmetic(torch.tensor(x), torch.tensor(y), beta, pr)
                assert bool(torch.isnan(loss).any() or torch.isnan(dX).any()) == liger_nan
    assert_mp_close("generalized_jsd", X, Y, beta=0.5)
    assert_mp_close("generalized_jsd", Y, X, beta=0.5)


# --------------------------------------------------------------------------- discontinuities

def test_discontinuous_at_beta_0_and_1(rng):
    X, Y, _ = _case(rng)
    P, Q = np.exp(Y), np.exp(X)
    kl_pq = np.sum(P * (Y - X)) / X.shape[0]
    kl_qp = np.sum(Q * (X - Y)) / X.shape[0]
    assert ce.generalized_jsd(X, Y, beta=0.0) == pytest.approx(kl_pq, rel=1e-13)
    assert ce.generalized_jsd(X, Y, beta=1.0) == pytest.approx(kl_qp, rel=1e-13)
    b = 1e-8       # the interior tends to 0 like beta KL(P||Q) and (1 - beta) KL(Q||P)
    assert ce.generalized_jsd(X, Y, beta=b) == pytest.approx(b * kl_pq, rel=1e-6)
    assert ce.generalized_jsd(X, Y, beta=1 - b) == pytest.approx(b * kl_qp, rel=1e-6)
    # the gradients jump too: -P at 0, against (1 - beta) Q (X - log M) -> 0
    np.testing.assert_allclose(ce.generalized_jsd_grad(X, Y, beta=0.0), -P / X.shape[0],
                               rtol=1e-15)
    assert np.max(np.abs(ce.generalized_jsd_grad(X, Y, beta=b))) < 1e-6
    np.testing.assert_allclose(ce.generalized_jsd_grad(X, Y, beta=1.0),
                               Q * (X - Y + 1) / X.shape[0], rtol=1e-13, atol=1e-16)


def test_infinite_kls_at_the_ends_stay_infinite_where_a_probability_underflows():
    """beta = 1: KL(Q||P) is +inf where P = 0 < Q, also when Q = e^-800 underflows to 0 (the
    student's log-probability is finite, so Q > 0): value, gradient Q (X - Y + 1) and Hessian
    Q (X - Y + 2) are +inf there, as mpmath says; beta = 0 symmetrically."""
    X, Y = np.array([[-800.0, 0.0]]), np.array([[-np.inf, 0.0]])
    v, g = ce.generalized_jsd_value_and_grad(X, Y, beta=1.0, reduction="sum")
    assert v == np.inf
    np.testing.assert_array_equal(g, [[np.inf, 1.0]])
    np.testing.assert_array_equal(ce.generalized_jsd_hvp(X, Y, [[1.0, 1.0]], beta=1.0,
                                                         reduction="sum"), [[np.inf, 2.0]])
    assert_mp_close("generalized_jsd", X, Y, [[1.0, 1.0]], beta=1.0, reduction="sum")
    v, g = ce.generalized_jsd_value_and_grad(Y, X, beta=0.0, reduction="sum")
    assert v == np.inf
    assert_mp_close("generalized_jsd", Y, X, [[1.0, 1.0]], beta=0.0, reduction="sum")


# --------------------------------------------------------------------------- mpmath

def _extreme_rows():
    inf = np.inf
    X = np.array([[-1e4, 0.0, -inf, -1e-300], [-inf, -inf, -0.5, -1.0],
                  [-745.5, -1e4, -1e-16, -3.0], [0.0, -inf, -800.0, -1e4],
                  [-2.0, -1.0, -1e-300, -1e-300]])
    Y = np.array([[0.0, -1e4, -inf, -0.7], [-inf, -2.0, -1e4, -1.0],
                  [-745.0, -1e4, -1e-16, -inf], [-inf, 0.0, -801.0, -1e4 - 1e-12],
                  [-1e-300, -1e-300, -2.0, -1.0]])   # X - Y + 2 and X - Y + 1 cancel (beta = 1)
    return X, Y


BETAS_MP = (0.0, 1e-12, 0.1, 0.5, 0.9, 1 - 2 ** -40, 1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("beta", BETAS_MP)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_mpmath_at_extremes(beta, dtype, reduction, rng):
    X, Y = _extreme_rows()
    if beta == 0.0:         # the forward KL is infinite where Q = 0 < P: keep it finite here
        X = np.where(np.isneginf(X) & ~np.isneginf(Y), -1e4, X)
    if beta == 1.0:         # the reverse KL is infinite where P = 0 < Q
        Y = np.where(np.isneginf(Y) & ~np.isneginf(X), -1e4, Y)
    v = rng.normal(size=X.shape)
    for kw in ({}, {"targets": np.array([0, -100, 1, 2, 3]), "ignore_index": -100}):
        assert_mp_close("generalized_jsd", X.astype(dtype), Y.astype(dtype), v, beta=beta,
                        reduction=reduction, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("beta", BETAS_MP)
def test_mpmath_random_and_nearly_equal_rows(beta, dtype, rng):
    for scale, gap in ((0.3, None), (30.0, None), (3.0, 1e-6), (3.0, 1e-12)):
        X = random_log_probs(rng, (3, 6), scale)
        Y = random_log_probs(rng, (3, 6), scale) if gap is None else \
            np.minimum(X + gap * rng.normal(size=X.shape), 0)
        assert_mp_close("generalized_jsd", X.astype(dtype), Y.astype(dtype),
                        rng.normal(size=X.shape), beta=beta, reduction="none")


def test_value_keeps_relative_accuracy_when_the_student_is_close_to_the_teacher(rng):
    """Every element is M [beta psi(s) + (1 - beta) psi(r)] >= 0: the value stays within a few
    ULP (relative) where the textbook beta P s + (1 - beta) Q r (Liger's reference) cancels."""
    X = random_log_probs(rng, (3, 8))
    Y = X + 1e-7 * rng.normal(size=X.shape)
    Y = Y - np.logaddexp.reduce(Y, axis=-1, keepdims=True)
    exact = _exact(X, Y, reduction="none").value
    ours = ce.generalized_jsd(X, Y, reduction="none")
    assert np.max(np.abs(ours - exact) / exact) <= 8 * EPS64
    ref = liger_reference(torch.tensor(X), torch.tensor(Y), 0.5).item() * X.shape[0]
    assert abs(ref - np.sum(exact)) / np.sum(exact) > 1e4 * EPS64       # digits lost


def test_gradient_keeps_relative_accuracy_where_x_minus_log_m_cancels(rng):
    """(1 - beta) Q (X - log M): X - log M -> 0 where the student's entry equals the mixture's.
    r = -log1p(beta expm1(Y - X)) keeps its relative accuracy; the textbook X - logaddexp(...)
    of Liger's formula (and of autograd through it) does not."""
    worst_ours = worst_liger = 0.0
    for scale in (0.3, 3.0, 30.0):
        X = random_log_probs(rng, (6, 7), scale)
        Y = random_log_probs(rng, (6, 7), scale)
        g = ce.generalized_jsd_grad(X, Y, beta=0.1)
        xt = torch.tensor(X, requires_grad=True)
        liger_reference(xt, torch.tensor(Y), 0.1).backward()
        exact = _exact(X, Y, beta=0.1).grad
        m = exact != 0
        worst_ours = max(worst_ours, np.max(np.abs(g - exact)[m] / np.abs(exact)[m]))
        worst_liger = max(worst_liger,
                          np.max(np.abs(xt.grad.numpy() - exact)[m] / np.abs(exact)[m]))
    assert worst_ours <= 4 * EPS64
    assert worst_liger > 1e3 * EPS64


# --------------------------------------------------------------------------- pinned values

def test_pinned_closed_forms():
    Q, P = np.array([[0.0, -np.inf]]), np.array([[-np.inf, 0.0]])   # disjoint supports
    for beta in (0.5, 0.25):
        H = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)  # binary entropy
        assert ce.generalized_jsd(Q, P, beta=beta) == pytest.approx(H, rel=2 * EPS64)
        # (1 - beta) Q (X - log M) with M = (1 - beta) Q at the student's class
        np.testing.assert_allclose(ce.generalized_jsd_grad(Q, P, beta=beta),
                                   [[-(1 - beta) * math.log(1 - beta), 0.0]], rtol=2 * EPS64)
    x = np.log(np.array([[0.2, 0.3, 0.5]]))
    assert ce.generalized_jsd(x, x) == 0.0
    np.testing.assert_array_equal(ce.generalized_jsd_grad(x, x), np.zeros((1, 3)))
    q, p = np.log([[0.5, 0.5]]), np.log([[0.25, 0.75]])     # beta = 0: KL(P||Q), 1: KL(Q||P)
    assert ce.generalized_jsd(q, p, beta=0.0) == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=8 * EPS64)
    assert ce.generalized_jsd(q, p, beta=1.0) == pytest.approx(
        0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=8 * EPS64)
    # a -inf student entry (Liger: NaN): Q = [1, 0], P = [0.6, 0.4], M = [0.8, 0.2]
    expect = 0.3 * math.log(0.75) + 0.5 * math.log(1.25) + 0.2 * math.log(2)
    assert ce.generalized_jsd([[0.0, -np.inf]], np.log([[0.6, 0.4]])) == pytest.approx(
        expect, rel=4 * EPS64)
    np.testing.assert_allclose(ce.generalized_jsd_grad([[0.0, -np.inf]], np.log([[0.6, 0.4]])),
                               [[-0.5 * math.log(0.8), 0.0]], rtol=4 * EPS64)
    # student = teacher: H = (1 - beta) Q beta (r = 0, beta P / M = beta)
    np.testing.assert_allclose(ce.generalized_jsd_hvp(x, x, np.ones((1, 3)), beta=0.3),
                               0.7 * 0.3 * np.exp(x), rtol=4 * EPS64)


X2 = np.log(np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]))
Y2 = np.log(np.array([[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]))
L2 = np.array([0, -100])
BAD = [   # what the contract's generic checks do not try
    ((X2 + 1, Y2), {}, ValueError, "student_log_probs must hold log-probabilities"),
    ((X2, np.where(Y2 > -1, np.nan, Y2)), {}, ValueError, "teacher_log_probs contains NaN"),
    ((X2, Y2 + 2), {}, ValueError, "teacher_log_probs must hold log-probabilities"),
    ((X2, np.where(Y2 > -1, np.inf, Y2)), {}, ValueError, "teacher_log_probs must hold"),
    ((X2, np.array([["a"] * 3] * 2)), {}, TypeError, "teacher_log_probs"),
    ((X2, Y2), {"ignore_index": -100}, ValueError, "ignore_index is set but targets is None"),
    ((X2, Y2), {"targets": L2}, ValueError, "targets is given but ignore_index is None"),
    ((X2, Y2), {"targets": np.array([0, 3]), "ignore_index": -100}, ValueError,
     "class index 3"),
    ((X2, Y2), {"reduction": "batchmean"}, ValueError, "reduction"),
]


@pytest.mark.parametrize("args,kwargs,exc,msg", BAD)
def test_bad_input_names_the_argument(args, kwargs, exc, msg):
    for fn in (ce.generalized_jsd, ce.generalized_jsd_grad, ce.generalized_jsd_value_and_grad):
        with pytest.raises(exc, match=msg):
            fn(*args, **kwargs)
    with pytest.raises(exc, match=msg):
        ce.generalized_jsd_hvp(*args, np.zeros(np.shape(args[0])), **kwargs)


@pytest.mark.parametrize("axis", [-1, 0])
def test_value_and_grad_is_bitwise_the_plain_functions_on_many_blocks(axis, rng):
    shape = (1500, 60) if axis == -1 else (60, 1500)
    X = random_log_probs(rng, shape, axis=axis).astype(np.float32)
    Y = random_log_probs(rng, shape, axis=axis).astype(np.float32)
    labels = rng.integers(0, shape[axis], size=1500)
    labels[::7] = -100
    kw = dict(axis=axis, targets=labels, ignore_index=-100)
    for beta, red in itertools.product((0.0, 0.4, 1.0), ("mean", "none")):
        v0 = ce.generalized_jsd(X, Y, beta=beta, reduction=red, **kw)
        g0 = ce.generalized_jsd_grad(X, Y, beta=beta, reduction=red, **kw)
        for workers in (1, 2):
            v, g = ce.generalized_jsd_value_and_grad(X, Y, beta=beta, reduction=red,
                                                     workers=workers, **kw)
            np.testing.assert_array_equal(v, v0)
            np.testing.assert_array_equal(g, g0)
    Yc = Y.copy()
    with pytest.raises(ValueError, match="out must not share memory with teacher_log_probs"):
        ce.generalized_jsd_value_and_grad(X, Yc, out=Yc, **kw)
