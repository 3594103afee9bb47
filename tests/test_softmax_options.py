"""softmax_cross_entropy's z_loss and softcap: pinned closed forms, PyTorch's composition,
the z-loss denominators, masked classes, sech^2 without cancellation, extremes.

The generic checks (fused kernel, twin, HVP, dtypes, errors) are the contract's
(tests/test_contract.py) and the verifier's rows with z_loss / softcap."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

import ce_reference as ce
from ce_reference import backends, contract
from ce_reference import jax as twins
from ce_reference._special import sech2
from ce_reference.oracles import softmax_cross_entropy as oracle
from ce_reference.registry import LOSSES
from ce_reference import cases
from ce_reference.verify import errors, mp

EPS64 = np.finfo(np.float64).eps
NINF = -np.inf
REDUCTIONS = ("mean", "sum", "none")
SPEC = LOSSES["softmax_cross_entropy"]


def _case(x, t, v=None, reduction="mean", **kw):
    x = np.asarray(x, np.float64)
    return cases.Case(SPEC.name, "test", x.dtype, "test", 0, 0, x, np.asarray(t),
                       {"axis": -1, **kw, "reduction": reduction},
                       np.zeros_like(x) if v is None else np.asarray(v, np.float64))


def exact(x, t, v=None, dps=50, **kw):
    """``(value, grad, H v)`` from the loss's mpmath oracle at ``dps`` digits."""
    case = _case(x, t, v, **kw)
    res = mp._evaluate(SPEC, case, dps)
    return res.value, res.grad, (None if v is None else mp.hvp_oracle(SPEC, case))


def library(x, t, v=None, **kw):
    """``(value, grad, H v)`` of the NumPy functions; the fused kernels must agree."""
    value, grad = ce.softmax_cross_entropy(x, t, **kw), ce.softmax_cross_entropy_grad(x, t, **kw)
    for backend in backends.available():
        fv, fg = ce.softmax_cross_entropy_value_and_grad(x, t, backend=backend, **kw)
        if backend == "numpy":      # the plain formulas, reordered: a few eps of the result
            np.testing.assert_allclose(fv, value, rtol=8 * EPS64)
            np.testing.assert_allclose(fg, grad, rtol=8 * EPS64,
                                       atol=8 * EPS64 * np.max(np.abs(grad)))
        else:
            _agree_to_operands(x, t, kw, (fv, fg), (value, grad))
    hv = None if v is None else ce.softmax_cross_entropy_hvp(x, t, v, **kw)
    return value, grad, hv


def _agree_to_operands(x, t, kw, fused, plain):
    """The compiled kernel's own tanh / exp / log1p (a few ULP each) move a tiny loss of a
    soft-capped confident row (1.5e-8 from capped logits near 18) by ~16 eps of itself:
    compared, as the verifier and the contract do, in eps of the operands
    (``contract.FUSED_EPS``)."""
    case = _case(x, t, **kw)
    ops = errors.operands(SPEC, case)
    for got, want, op in zip(fused, plain, (ops.value, ops.grad)):
        err, _, k = errors.combined(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                    op, np.dtype(np.float64))
        assert err <= contract.FUSED_EPS, (err, k)


OPTION_SETS = [
    dict(z_loss=1e-4), dict(z_loss=0.1), dict(softcap=30.0), dict(softcap=2.5),
    dict(z_loss=0.05, softcap=4.0),
    dict(z_loss=0.05, softcap=4.0, label_smoothing=0.1),
    dict(z_loss=0.05, softcap=4.0, weight="w", ignore_index=2),
    dict(z_loss=0.05, weight="w"),
]


def _opts(kw, rng, C):
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = rng.uniform(0.2, 3, C)
    return kw


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(sorted(o)))
def test_pytorch_composition(rng, options):
    """``F.cross_entropy(cap * tanh(x / cap), ...)`` plus ``z * logsumexp**2`` over kept rows
    (mean: over their count), float64 autograd: values within 64 eps, gradients 1e-12."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, t = rng.normal(0, 3, (8, 5)), rng.integers(0, 5, 8)
    kw = _opts(options, rng, x.shape[1])
    for reduction in REDUCTIONS:
        xt = torch.tensor(x, requires_grad=True)
        s = kw.get("softcap")
        u = xt if s is None else s * torch.tanh(xt / s)
        ig = kw.get("ignore_index", -100)
        tt = torch.tensor(t)
        w = None if kw.get("weight") is None else torch.tensor(kw["weight"])
        cel = F.cross_entropy(u, tt, weight=w, ignore_index=ig, reduction=reduction,
                              label_smoothing=kw.get("label_smoothing", 0.0))
        keep = (tt != ig).double()
        zr = kw.get("z_loss", 0.0) * torch.logsumexp(u, -1) ** 2 * keep
        zl = {"none": zr, "sum": zr.sum(), "mean": zr.sum() / keep.sum()}[reduction]
        out = cel + zl
        out.sum().backward()
        value, grad, _ = library(x, t, reduction=reduction, **kw)
        np.testing.assert_allclose(value, out.detach().numpy(), rtol=64 * EPS64)
        np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=64 * EPS64)


def test_pinned_z_loss():
    z = 1e-4
    # zeros: lse = log C; CE = log C; gradient (1 + 2 z log C) / C - onehot
    value, grad, _ = library(np.zeros((1, 4)), np.array([0]), z_loss=z)
    assert value == pytest.approx(math.log(4) + z * math.log(4) ** 2, rel=4 * EPS64)
    np.testing.assert_allclose(grad[0], (1 + 2 * z * math.log(4)) / 4 - np.eye(4)[0],
                               rtol=4 * EPS64)
    # x = log p + c has lse = c: CE = -log p_y, z-loss = z c^2
    x = np.array([[3 + math.log(0.5), 3 + math.log(0.25), 3 + math.log(0.25)]])
    value, _, _ = library(x, np.array([0]), z_loss=0.5)
    assert value == pytest.approx(math.log(2) + 0.5 * 9, rel=1e-15)
    # a row with one finite class at 0: lse = 0, so neither term nor its gradient
    value, grad, _ = library(np.array([[0.0, NINF, NINF]]), np.array([0]), z_loss=0.3)
    assert value == 0 and np.all(grad == 0)
    assert float(twins.softmax_cross_entropy(np.zeros((1, 4)), np.array([0]), z_loss=z)) == \
        pytest.approx(math.log(4) + z * math.log(4) ** 2, rel=4 * EPS64)


def test_pinned_z_loss_denominators_liger_vs_palm():
    """mean with class weights: CE over sum w_y, z-loss over the number of kept rows
    (Liger's lse_square_scale); without weights both are the row count (PaLM/t5x)."""
    z = 0.1
    x = np.array([[0.0, 0.0], [1.0, 1.0]])          # lse = log 2 and 1 + log 2
    t = np.array([0, 1])
    w = np.array([1.0, 3.0])
    l2 = math.log(2)
    liger = (1 * l2 + 3 * l2) / 4 + z * (l2 ** 2 + (1 + l2) ** 2) / 2
    weighted = (1 * l2 + 3 * l2) / 4 + z * (1 * l2 ** 2 + 3 * (1 + l2) ** 2) / 4
    value, _, _ = library(x, t, z_loss=z, weight=w)
    assert value == pytest.approx(liger, rel=4 * EPS64) and abs(liger - weighted) > 1e-2
    value, _, _ = library(x, t, z_loss=z)
    assert value == pytest.approx(l2 + z * (l2 ** 2 + (1 + l2) ** 2) / 2, rel=4 * EPS64)
    assert exact(x, t, z_loss=z, weight=w)[0] == pytest.approx(liger, rel=4 * EPS64)


def test_zero_weight_sum_mean_is_nan_with_zero_gradient():
    """Every kept row's class weight 0: the whole mean is NaN with zero gradient and H v,
    although the z-loss's own denominator is positive (no NaN value beside a non-zero
    gradient); sum and none stay defined."""
    x = np.array([[0.0, 1.0], [2.0, 0.5]])
    t = np.array([0, 0])
    kw = dict(z_loss=0.1, weight=np.array([0.0, 1.0]))
    value, grad, hv = library(x, t, np.ones(x.shape), **kw)
    assert np.isnan(value) and np.all(grad == 0) and np.all(hv == 0)
    ev, eg, eh = exact(x, t, np.ones(x.shape), **kw)
    assert np.isnan(ev) and np.all(eg == 0) and np.all(eh == 0)
    assert np.isnan(float(twins.softmax_cross_entropy(x, t, **kw)))   # the twin: 0/0
    value, _, _ = library(x, t, reduction="sum", **kw)
    lse = np.logaddexp(x[:, 0], x[:, 1])
    assert value == pytest.approx(0.1 * np.sum(lse ** 2), rel=4 * EPS64)


def test_pinned_softcap():
    s = 30.0
    x = np.array([[s * math.log(2.0), 0.0]])          # u = [0.6 s, 0] = [18, 0]
    value, grad, _ = library(x, np.array([0]), softcap=s, reduction="sum")
    sig = 1 / (1 + math.exp(18.0))                    # sigma(-18)
    assert value == pytest.approx(math.log1p(math.exp(-18.0)), rel=4 * EPS64)
    # g_0 = c (p_0 - 1): p_0 - 1 is a cancellation, accurate to eps of its operand (1)
    np.testing.assert_allclose(grad[0], [-0.64 * sig, sig], rtol=4 * EPS64, atol=4 * EPS64)


def test_softcap_curvature_term_is_material():
    """Without ``g_u * c'`` the product is wrong: H v in closed form, against the library."""
    s = 5.0
    x = np.array([[s * math.log(2.0), 0.0]])
    t = np.array([1])
    _, _, hv = library(x, t, np.array([[1.0, 0.0]]), softcap=s, reduction="sum")
    # u = [0.6 s, 0] = [3, 0]; c = [16/25, 1]; c' = [-(96/125)/s, 0]; g_u = [p0, -p0]
    p0 = 1 / (1 + math.exp(-3.0))
    p1 = 1 - p0
    c0 = 16 / 25
    np.testing.assert_allclose(hv[0], [c0 ** 2 * p0 * p1 - (96 / 125) / s * p0, -c0 * p0 * p1],
                               rtol=1e-14)
    assert abs((96 / 125) / s * p0) > 0.1     # the curvature term is not a rounding detail


def test_softcap_keeps_masked_classes_masked():
    s = 3.0
    x = np.array([[NINF, 1.0, 2.0]])
    value, grad, hv = library(x, np.array([2]), np.ones(x.shape), softcap=s, z_loss=0.1)
    value2, grad2, _ = library(x[:, 1:], np.array([1]), np.ones((1, 2)), softcap=s, z_loss=0.1)
    assert value == pytest.approx(float(value2), rel=4 * EPS64)
    assert grad[0, 0] == 0 and hv[0, 0] == 0
    np.testing.assert_allclose(grad[0, 1:], grad2[0], rtol=4 * EPS64)
    # had the masked class become -s, it would carry probability e^{-s} / (...) > 0:
    wrong, _, _ = library(np.array([[-s, 1.0, 2.0]]), np.array([2]), softcap=s, z_loss=0.1)
    assert abs(float(wrong) - float(value)) > 1e-3
    assert float(twins.softmax_cross_entropy(x, np.array([2]), softcap=s, z_loss=0.1)) == \
        pytest.approx(float(value), rel=1e-14)


def test_sech2_without_cancellation():
    """sech^2(y) as 4 e^{-2|y|} / (1 + e^{-2|y|})^2: 1 - tanh^2 is 0 from |y| ~ 9 (float32)."""
    for y in (10.0, 20.0, 50.0):
        truth = float(mpmath.sech(y) ** 2)
        y32 = np.float32(y)
        assert 1 - np.tanh(y32) ** 2 == 0
        got = sech2(y32)
        assert got.dtype == np.float32 and abs(got - truth) <= 4 * np.spacing(np.float32(truth))
        with mpmath.workdps(50):
            assert abs(float(oracle.sech2(mpmath.mp, mpmath.mpf(y))) - truth) <= np.spacing(truth)


def test_float32_softcap_gradient_where_tanh_rounds_to_one():
    """float32 logits 12 and 20 caps past tanh's rounding to 1: the gradient keeps
    sech^2 (not 0) and agrees with mpmath to a few ULP."""
    x = np.array([[360.0, 0.0], [600.0, -1.0]], np.float32)       # x / s = 12, 20
    t = np.array([1, 1])
    g = ce.softmax_cross_entropy_grad(x, t, softcap=30.0, reduction="sum")
    _, eg, _ = exact(x.astype(np.float64), t, softcap=30.0, reduction="sum")
    assert g[0, 0] != 0 and g[1, 0] != 0
    np.testing.assert_allclose(g[:, 0], eg[:, 0], rtol=16 * np.finfo(np.float32).eps)


def test_extreme_logits_oracle_is_stable_between_precisions():
    """|x| up to 1e4 with z-loss and soft-capping: 50 and 400 digits round alike, and the
    library agrees with them."""
    x = np.array([[1e4, 0.0, -1e4, 3.0], [-1e4, 700.0, 1e4, NINF], [40.0, 0.0, -745.0, 1.0]])
    t = np.array([1, 2, 0])
    v = np.array([[1.0, -2.0, 0.5, 0.3]] * 3)
    for kw in (dict(z_loss=1e-4), dict(z_loss=1e-4, softcap=30.0), dict(softcap=30.0)):
        a = exact(x, t, v, dps=50, **kw)
        b = exact(x, t, v, dps=400, **kw)
        for p, q in zip(a, b):
            assert np.all((p == q) | (np.abs(p - q) <= np.spacing(np.abs(q))))
            assert np.isfinite(q).all()
        value, grad, _ = library(x, t, **kw)
        ops = errors.operands(SPEC, _case(x, t, **kw))
        assert errors.combined(value, b[0], ops.value, np.float64)[0] <= 8
        assert errors.combined(grad, b[1], ops.grad, np.float64)[0] <= 8
