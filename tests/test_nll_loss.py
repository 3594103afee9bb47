"""nll_loss: what the contract (tests/test_contract.py) does not cover -- PyTorch's numbers on
its own layouts (any real input, as PyTorch accepts), its NaN at a zero weight, mpmath at
extremes, pinned closed forms, loss-specific errors, and the multi-block driver."""

import itertools
import math

import numpy as np
import pytest

import ce_reference as ce

from _divergence_helpers import EPS64, assert_mp_close, random_log_probs

torch = pytest.importorskip("torch")
F = torch.nn.functional

VALUE_RTOL = 64 * EPS64      # the gates (float64): values within 64 eps,
GRAD_RTOL = 1e-12            # gradients within 1e-12 relative


def _case(rng, shape, kind, ignore=None, weight=False):
    """Input of ``shape`` (class axis 1, or 0 for 1-d), targets, the class axis, kwargs.

    ``kind``: "log_probs" (log_softmax rows) or "real" (normal(0, 10): positive entries
    too -- PyTorch does not check that the input holds log-probabilities, nor do we)."""
    ax = 0 if len(shape) == 1 else 1
    C = shape[ax]
    x = random_log_probs(rng, shape, axis=ax) if kind == "log_probs" else \
        rng.normal(0.0, 10.0, shape)
    batch = shape[:ax] + shape[ax + 1:]
    t = np.asarray(rng.integers(0, C, size=batch))
    kw = {}
    if ignore is not None:
        kw["ignore_index"] = ignore
        flat = t.reshape(-1)
        flat[rng.choice(flat.size, size=min(2, flat.size - 1) or 1, replace=False)] = ignore
    if weight:
        kw["weight"] = rng.uniform(0.1, 3.0, size=C)
    return x, t, ax, kw


SHAPES = [(5,), (6, 4), (3, 5, 4), (2, 4, 3, 2)]
GRID = list(itertools.product(SHAPES, ("log_probs", "real"), (None, -100, 1), (False, True),
                              ("mean", "sum", "none")))


@pytest.mark.parametrize("shape,kind,ignore,weight,reduction", GRID)
def test_same_numbers_as_pytorch(shape, kind, ignore, weight, reduction, rng):
    x, t, ax, kw = _case(rng, shape, kind, ignore, weight)
    val, grad = ce.nll_loss_value_and_grad(x, t, axis=ax, reduction=reduction, **kw)
    xt = torch.tensor(x, requires_grad=True)
    tkw = {"ignore_index": -100 if ignore is None else ignore}
    if weight:
        tkw["weight"] = torch.tensor(kw["weight"])
    out = F.nll_loss(xt, torch.tensor(t), reduction=reduction, **tkw)
    out.sum().backward()
    tval, tgrad = out.detach().numpy(), xt.grad.numpy()
    if reduction == "mean" and np.isnan(tval):         # a 1-d input whose one row is ignored
        assert np.isnan(val) and np.all(grad == 0)
        return
    np.testing.assert_allclose(val, tval, rtol=VALUE_RTOL, atol=0)
    np.testing.assert_allclose(grad, tgrad, rtol=GRAD_RTOL, atol=0)


def test_zero_denominators_are_nan_with_zero_gradient_like_pytorch():
    x = np.log(np.full((3, 4), 0.25))
    t = np.full(3, -100)
    assert np.isnan(F.nll_loss(torch.tensor(x), torch.tensor(t)).item())
    assert np.isnan(ce.nll_loss(x, t, ignore_index=-100))
    assert np.all(ce.nll_loss_grad(x, t, ignore_index=-100) == 0)
    w = np.array([0.0, 1.0, 1.0, 1.0])                  # every target weight 0: 0/0
    zeros = np.zeros(3, np.int64)
    assert np.isnan(F.nll_loss(torch.tensor(x), torch.tensor(zeros), weight=torch.tensor(w)).item())
    assert np.isnan(ce.nll_loss(x, zeros, weight=w))
    assert np.all(ce.nll_loss_grad(x, zeros, weight=w) == 0)
    e, te = np.zeros((0, 4)), np.zeros(0, np.int64)     # empty batch: mean NaN, sum 0
    for red in ("mean", "sum"):
        ref = F.nll_loss(torch.tensor(e), torch.tensor(te), reduction=red).item()
        got = ce.nll_loss(e, te, reduction=red)
        assert (np.isnan(ref) and np.isnan(got)) or ref == got
    assert ce.nll_loss(e, te, reduction="none").shape == (0,)


def test_pytorch_nan_at_a_zero_weight_beside_minus_inf_but_not_ours():
    """PyTorch 2.13 defect: ``-w_y x_y = -0 * (-inf) = NaN`` for a zero-weight target class
    whose log-probability is -inf; the gradient stays finite, so training goes on with a NaN
    loss.  Smallest input: ``x = [[-inf, 0]]``, target 0, ``weight = [0, 1]``."""
    x, t, w = np.array([[-np.inf, 0.0]]), np.array([0]), np.array([0.0, 1.0])
    xt = torch.tensor(x, requires_grad=True)
    out = F.nll_loss(xt, torch.tensor(t), weight=torch.tensor(w), reduction="sum")
    out.backward()
    assert np.isnan(out.item()) and np.all(np.isfinite(xt.grad.numpy()))
    assert ce.nll_loss(x, t, weight=w, reduction="sum") == 0.0
    np.testing.assert_array_equal(ce.nll_loss_grad(x, t, weight=w, reduction="sum"),
                                  [[0.0, 0.0]])
    assert ce.nll_loss(x, t, ignore_index=0, reduction="sum") == 0.0   # ignored: 0 in both


def test_infinite_target_entries_give_infinite_losses_with_the_finite_gradient():
    x = np.array([[-np.inf, 0.0], [np.inf, -1.0]])     # any non-NaN input, as PyTorch
    assert ce.nll_loss(x[:1], np.array([0])) == np.inf
    assert ce.nll_loss(x[1:], np.array([0])) == -np.inf
    np.testing.assert_array_equal(ce.nll_loss_grad(x, np.array([0, 1]), reduction="sum"),
                                  [[-1.0, 0.0], [0.0, -1.0]])
    xt = torch.tensor(x[1:])
    assert F.nll_loss(xt, torch.tensor([0])).item() == -np.inf


EXTREME_X = [
    np.array([[-1e4, -1e-300, 0.0], [-np.inf, -0.5, -1e4], [0.0, -np.inf, -np.inf]]),
    np.array([[-745.0, -1e-16, -3.0], [-1e4, -1e4, -1e4], [-2.0, -np.inf, 0.0]]),
    np.array([[1e4, -1e4, 3.5], [np.inf, 2.0, -np.inf], [0.5, 1e-300, -1e-300]]),   # real
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", range(len(EXTREME_X)))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mpmath_at_extremes(k, dtype, reduction, rng):
    x = EXTREME_X[k].astype(dtype)
    t = np.array([0, 2, 1])     # target entries: -1e4 / -745 / +1e4, -1e4 / -inf, -inf / 1e-300
    v = rng.normal(size=x.shape)
    w = np.array([1.5, 0.0, 2.0])           # class 1 has weight 0: 0 * (-inf) is 0
    for kw in ({"weight": w}, {"ignore_index": 1, "weight": w}, {}):
        xx = x if kw else np.where(np.isinf(x), -1e4, x).astype(dtype)
        assert_mp_close("nll_loss", xx, t, v, reduction=reduction, **kw)


def test_pinned_closed_forms():
    x = np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]))
    w, t = np.array([1.0, 3.0, 5.0]), np.array([0, 1, 2])
    # weighted mean: (1 + 3 + 5) log 2 / (1 + 3 + 5) = log 2; sum 9 log 2; none w_y log 2
    assert ce.nll_loss(x, t, weight=w) == pytest.approx(math.log(2), rel=4 * EPS64)
    assert ce.nll_loss(x, t, weight=w, reduction="sum") == pytest.approx(9 * math.log(2),
                                                                        rel=4 * EPS64)
    np.testing.assert_allclose(ce.nll_loss(x, t, weight=w, reduction="none"), w * math.log(2),
                               rtol=4 * EPS64)
    np.testing.assert_array_equal(ce.nll_loss_grad(x, t, weight=w), -np.diag(w) / 9)
    # ignoring the class-2 row: (1 + 3) log 2 / 4; its row's gradient is 0
    assert ce.nll_loss(x, t, weight=w, ignore_index=2) == pytest.approx(math.log(2),
                                                                       rel=4 * EPS64)
    np.testing.assert_array_equal(ce.nll_loss_grad(x, t, weight=w, ignore_index=2),
                                  [[-0.25, 0, 0], [0, -0.75, 0], [0, 0, 0]])
    # PyTorch's no-batch layout: a 1-d input and a 0-d target
    assert ce.nll_loss(np.log([0.2, 0.8]), np.array(1)) == pytest.approx(-math.log(0.8),
                                                                        rel=2 * EPS64)
    # log_softmax of logits: nll_loss is softmax cross-entropy
    z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    lp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    assert ce.nll_loss(lp, np.array([0, 1])) == pytest.approx(
        ce.softmax_cross_entropy(z, np.array([0, 1])), rel=4 * EPS64)


X2 = np.log(np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]))
T2 = np.array([0, 2])
BAD = [   # what the contract's generic checks do not try
    ((X2, T2.astype(float)), {}, TypeError, "targets must hold integer class indices"),
    ((X2, np.array([0, 3])), {}, ValueError, "class index 3"),
    ((X2, np.array([0, -100])), {}, ValueError, "class index -100"),
    ((X2, np.array([0, -100])), {"ignore_index": -1}, ValueError, "other than ignore_index=-1"),
    ((X2, T2), {"weight": np.array([1, np.inf, 1])}, ValueError, "weight"),
    ((np.zeros((2, 0)), np.zeros(2, np.int64)), {}, ValueError, "empty class axis"),
]


@pytest.mark.parametrize("args,kwargs,exc,msg", BAD)
def test_bad_input_names_the_argument(args, kwargs, exc, msg):
    for fn in (ce.nll_loss, ce.nll_loss_grad, ce.nll_loss_value_and_grad):
        with pytest.raises(exc, match=msg):
            fn(*args, **kwargs)
    with pytest.raises(exc, match=msg):
        ce.nll_loss_hvp(*args, np.zeros(np.shape(args[0])), **kwargs)


@pytest.mark.parametrize("axis", [-1, 1])
def test_value_and_grad_is_bitwise_the_plain_functions_on_many_blocks(axis, rng):
    shape = (3000, 60) if axis == -1 else (40, 60, 70)   # > one block, > the serial size
    ax = axis % len(shape)
    x = random_log_probs(rng, shape, axis=ax).astype(np.float32)
    t = rng.integers(0, 60, size=shape[:ax] + shape[ax + 1:])
    t.reshape(-1)[::7] = -100
    kw = dict(axis=axis, ignore_index=-100, weight=rng.uniform(0, 2, 60))
    for red in ("mean", "none"):
        v0, g0 = ce.nll_loss(x, t, reduction=red, **kw), ce.nll_loss_grad(x, t, reduction=red,
                                                                          **kw)
        for workers in (1, 2):
            v, g = ce.nll_loss_value_and_grad(x, t, reduction=red, workers=workers, **kw)
            np.testing.assert_array_equal(v, v0)
            np.testing.assert_array_equal(g, g0)
    xc = x.copy()
    _, g = ce.nll_loss_value_and_grad(xc, t, out=xc, **kw)          # in place
    assert g is xc
    np.testing.assert_array_equal(xc, ce.nll_loss_grad(x, t, **kw))
