"""Same numbers as PyTorch for every feature PyTorch has.

PyTorch is an optional extra (``pip install torch==2.13.0``, the CPU build);
CI installs it, so in CI these tests run rather than skip.
"""

import numpy as np
import pytest

from ce_reference.registry import LOSSES

from _cases import ALL, case_id, make_case

torch = pytest.importorskip("torch")
F = torch.nn.functional

EPS64 = np.finfo(np.float64).eps
# Both sides evaluate the same closed form in float64 in a different order.
VALUE_RTOL = 64 * EPS64
# PyTorch 2.13's binary_cross_entropy_with_logits evaluates (1 - y) x + softplus(-x),
# which cancels when y = 0 and x << 0: its error is ~eps in absolute terms but can
# be huge relative to a small loss (we measured 3e13 eps against mpmath over 10^4
# normal(0, 3) logits, where ours stays under 1 eps).  So values are compared with
# an absolute tolerance of a few eps times the operand scale as well.
VALUE_ATOL_UNITS = 8
GRAD_RTOL = 1e-12
GRAD_ATOL = 64 * EPS64  # p - q cancels by design; operands here are O(1) up to weights


def _torch_loss(name, x, t, kw):
    """The PyTorch function that has this loss's semantics, on tensors."""
    red = kw.get("reduction", "mean")
    w = torch.tensor(kw["weight"]) if "weight" in kw else None
    tt = torch.tensor(t)
    if name == "softmax_cross_entropy":
        extra = {"ignore_index": kw["ignore_index"]} if "ignore_index" in kw else {}
        return F.cross_entropy(x, tt, weight=w, reduction=red,
                               label_smoothing=kw.get("label_smoothing", 0.0), **extra)
    if name == "categorical_cross_entropy":
        if t.dtype.kind in "iu":  # nll_loss of log-probabilities
            return F.nll_loss(torch.log(x), tt, weight=w, reduction=red)
        # rows of x sum to 1, so log(x) are logits whose softmax is x: same value,
        # but the gradient goes through the softmax, so only the value is compared
        return F.cross_entropy(torch.log(x), tt, weight=w, reduction=red)
    if name == "binary_cross_entropy":
        return F.binary_cross_entropy(x, tt, weight=w, reduction=red)
    pw = torch.tensor(kw["pos_weight"]) if "pos_weight" in kw else None
    return F.binary_cross_entropy_with_logits(x, tt, weight=w, pos_weight=pw, reduction=red)


#: The losses :func:`_torch_loss` knows a PyTorch function for.  A loss without one here keeps
#: its own parity tests in tests/test_<name>.py (the focal losses: torchvision's formula and the
#: definition written in torch).
TORCH_LOSSES = ("softmax_cross_entropy", "categorical_cross_entropy", "binary_cross_entropy",
                "binary_cross_entropy_with_logits")
TORCH_CASES = [(n, c) for n, c in ALL
               if n in TORCH_LOSSES and c["eps"] is None and c["axis"] in (-1, 1)]


@pytest.mark.parametrize("name,combo", TORCH_CASES,
                         ids=[f"{n}[{case_id(c)}]" for n, c in TORCH_CASES])
def test_same_numbers_as_pytorch(name, combo, rng):
    spec = LOSSES[name]
    x, t, kw = make_case(spec, rng, **dict(combo))
    if spec.structure == "classes" and kw.get("axis", -1) == -1 and x.ndim != 2:
        pytest.fail("grid produced an unexpected shape")  # torch's class dim is 1
    val, grad = spec.value_and_grad(x, t, **kw)
    xt = torch.tensor(x, requires_grad=True)
    out = _torch_loss(name, xt, t, kw)
    out.sum().backward()
    tval, tgrad = out.detach().numpy(), xt.grad.numpy()
    if np.isnan(tval).any() and kw.get("reduction", "mean") == "mean":
        # 0/0 mean (all rows ignored): PyTorch gives NaN loss (PR #64572) and NaN or
        # zero gradient; ours is NaN loss and zero gradient (documented).
        assert np.isnan(val) and np.all(grad == 0)
        return
    wmax = np.max([1.0] + [np.max(kw[k]) for k in ("weight", "pos_weight") if k in kw])
    atol = VALUE_ATOL_UNITS * EPS64 * wmax if name == "binary_cross_entropy_with_logits" else 0
    np.testing.assert_allclose(val, tval, rtol=VALUE_RTOL, atol=atol)
    if name == "categorical_cross_entropy" and t.dtype.kind == "f":
        return  # PyTorch has no probability-input CE with probability targets
    np.testing.assert_allclose(grad, tgrad, rtol=GRAD_RTOL, atol=GRAD_ATOL * wmax)


def test_all_ignored_mean_is_nan_like_pytorch():
    x = np.zeros((3, 4))
    t = np.full(3, -100)
    val = F.cross_entropy(torch.tensor(x), torch.tensor(t), ignore_index=-100)
    assert np.isnan(val.item())
    import ce_reference as ce
    assert np.isnan(ce.softmax_cross_entropy(x, t, ignore_index=-100))
    assert np.all(ce.softmax_cross_entropy_grad(x, t, ignore_index=-100) == 0)


def test_empty_batch_like_pytorch():
    import ce_reference as ce
    x, t = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    for red in ("mean", "sum"):
        ref = F.cross_entropy(torch.tensor(x), torch.tensor(t), reduction=red).item()
        got = ce.softmax_cross_entropy(x, t, reduction=red)
        assert (np.isnan(ref) and np.isnan(got)) or ref == got
        ref = F.binary_cross_entropy_with_logits(torch.zeros(0), torch.zeros(0), reduction=red)
        got = ce.binary_cross_entropy_with_logits(np.zeros(0), np.zeros(0), reduction=red)
        assert (np.isnan(ref.item()) and np.isnan(got)) or ref.item() == got
    assert ce.softmax_cross_entropy(x, t, reduction="none").shape == (0,)


def test_bce_differs_from_pytorch_only_by_its_log_clamp():
    """PyTorch clamps log at -100 (and its backward is not the derivative of that);
    the reference keeps the exact formula: identical above exp(-100), exact below."""
    import ce_reference as ce
    p = np.array([0.3, 1e-50, 1e-30])
    y = np.array([1.0, 1.0, 1.0])
    ref = F.binary_cross_entropy(torch.tensor(p), torch.tensor(y), reduction="none").numpy()
    got = ce.binary_cross_entropy(p, y, reduction="none")
    assert got[0] == ref[0] and got[2] == ref[2]
    assert ref[1] == 100.0 and got[1] == pytest.approx(50 * np.log(10), rel=1e-15)


def test_pytorch_bce_with_logits_loses_small_losses_but_we_do_not():
    """Regression guard for the accuracy difference noted at VALUE_ATOL_UNITS."""
    import ce_reference as ce
    x, y = np.array([-40.0]), np.zeros(1)  # loss = softplus(-40) = 4.248354255291589e-18
    exact = 4.248354255291589e-18  # log1p(exp(-40)), correctly rounded (mpmath, 50 digits)
    got = ce.binary_cross_entropy_with_logits(x, y, reduction="none")[0]
    assert abs(got - exact) <= EPS64 * exact
    ref = F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y), reduction="none")
    assert ref.item() == 0.0  # PyTorch: (1 - y) x + softplus(-x) = -40 + 40 cancels to 0
