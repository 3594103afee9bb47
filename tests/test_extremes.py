"""Extreme inputs against high-precision (mpmath) values.

Loss values must be within ``LOSS_ULP`` units in the last place of the
correctly rounded value; gradients within ``GRAD_UNITS`` machine epsilons
relative to the largest operand of the difference they are made of
(``p - y`` cancels by design when a prediction is confident, see
verification.md §2), and always finite.
"""

import mpmath as mp
import numpy as np
import pytest

import ce_reference as ce

# The stable forms use a handful of correctly rounded operations (exp, log1p,
# one add): a few ULP is the honest bound; we measured <= 2.
LOSS_ULP = 4
# Gradient components: p - q with each term within ~2 ulp of its operand.
GRAD_UNITS = 4
# 60 significant digits, re-checked at 120: the oracle is written without
# cancellation (sigma(x) - 1 as -sigma(-x), p_y - 1 as -sum of the others), so the
# two must agree; see verification.md §2 for why a naive oracle fails at x = 700.
DPS, DPS_CHECK = 60, 120

LOGITS = [0.0, 1e-8, 1.0, 5.0, 20.0, 30.0, 36.7, 40.0, 88.7, 100.0, 709.78, 745.0, 1e4]
LOGITS = sorted({s * v for v in LOGITS for s in (1, -1)})


def ulp_error(got, exact, dtype):
    """Distance in units of the spacing at the correctly rounded exact value."""
    ref = dtype.type(float(exact)) if mp.isfinite(exact) else dtype.type(np.inf)
    if np.isinf(ref) or ref == 0:
        return 0.0 if got == ref else np.inf
    return float(abs(mp.mpf(float(got)) - exact) / float(np.spacing(abs(ref))))


def _both_precisions(fn):
    with mp.workdps(DPS):
        a = fn()
    with mp.workdps(DPS_CHECK):
        b = fn()
    with mp.workdps(DPS):
        assert mp.almosteq(a, b, rel_eps=mp.mpf(10) ** (-DPS + 10)), "oracle disagrees with itself"
    return a


def _softplus(x):
    return mp.log1p(mp.exp(x))


def _sigmoid(x):
    return 1 / (1 + mp.exp(-x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("y", [0.0, 1.0, 0.25])
def test_bce_with_logits_extremes(dtype, y):
    dtype = np.dtype(dtype)
    x = np.array(LOGITS, dtype=dtype)
    x = x[np.isfinite(x)]
    yy = np.full_like(x, y)
    loss = ce.binary_cross_entropy_with_logits(x, yy, reduction="none")
    grad = ce.binary_cross_entropy_with_logits_grad(x, yy, reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    for xi, li, gi in zip(x, loss, grad):
        X, Y = mp.mpf(float(xi)), mp.mpf(float(dtype.type(y)))
        exact = _both_precisions(lambda: Y * _softplus(-X) + (1 - Y) * _softplus(X))
        assert ulp_error(li, exact, dtype) <= LOSS_ULP, (xi, li, exact)
        g_exact = _both_precisions(lambda: (1 - Y) * _sigmoid(X) - Y * _sigmoid(-X))
        scale = max(float(_sigmoid(X)), y, float(_sigmoid(-X)) * y)
        err = abs(float(gi) - float(g_exact))
        # in the subnormal range the spacing is fixed, hence the absolute floor
        tol = GRAD_UNITS * (np.finfo(dtype).eps * scale + np.finfo(dtype).smallest_subnormal)
        assert err <= tol, (xi, gi, g_exact)


ROWS = [
    [1e4, 0.0, -1e4],          # dominant logit
    [-1e4, 1e4, 0.0],
    [709.78, -709.78, 0.0],    # near float64 exp overflow
    [88.7, -88.7, 0.0],        # near float32 exp overflow
    [3.0, 3.0, 3.0],           # all equal
    [20.0, 0.0, -3.0],         # confident (p - 1 ~ -2e-9)
    [36.7, 0.0, 0.0],
    [1e-8, -1e-8, 0.0],
    [-np.inf, 5.0, 0.0],       # masked class
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row", ROWS, ids=lambda r: str(r[:2]))
def test_softmax_cross_entropy_extremes(dtype, row):
    dtype = np.dtype(dtype)
    x = np.array([row] * 3, dtype=dtype)
    t = np.arange(3)
    loss = ce.softmax_cross_entropy(x, t, reduction="none")
    grad = ce.softmax_cross_entropy_grad(x, t, reduction="none")
    assert np.isfinite(grad).all()
    X = [mp.mpf(float(v)) if np.isfinite(v) else -mp.inf for v in x[0]]

    def lse():
        return mp.log(mp.fsum(mp.exp(v) for v in X if v != -mp.inf))

    for n, y in enumerate(t):
        if X[y] == -mp.inf:
            assert loss[n] == np.inf
        else:
            # lse - x_y = log1p(sum_{j != y} exp(x_j - x_y)): no cancellation
            exact = _both_precisions(lambda: mp.log1p(mp.fsum(
                mp.exp(X[j] - X[y]) for j in range(3) if j != y and X[j] != -mp.inf)))
            assert ulp_error(loss[n], exact, dtype) <= LOSS_ULP, (row, y, loss[n], exact)
        for k in range(3):
            def g():
                L = lse()
                if k != y:
                    return mp.exp(X[k] - L) if X[k] != -mp.inf else mp.mpf(0)
                # p_y - 1 = -sum_{j != y} p_j, written without cancellation
                return -mp.fsum(mp.exp(X[j] - L) for j in range(3) if j != y and X[j] != -mp.inf)
            exact = _both_precisions(g)
            err = abs(float(grad[n, k]) - float(exact))
            assert err <= GRAD_UNITS * np.finfo(dtype).eps * 1.0, (row, y, k, grad[n, k], exact)


PROBS = [1e-300, 1e-30, 1e-12, 1e-7, 0.5, 1 - 1e-12, float(np.nextafter(1.0, 0.0))]


@pytest.mark.parametrize("y", [0.0, 1.0, 0.3])
def test_bce_probability_extremes_float64(y):
    p = np.array(PROBS)
    yy = np.full_like(p, y)
    loss = ce.binary_cross_entropy(p, yy, reduction="none")
    grad = ce.binary_cross_entropy_grad(p, yy, reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    for pi, li, gi in zip(p, loss, grad):
        P, Y = mp.mpf(float(pi)), mp.mpf(y)
        exact = _both_precisions(lambda: -(Y * mp.log(P) + (1 - Y) * mp.log1p(-P)))
        assert ulp_error(li, exact, np.dtype(np.float64)) <= LOSS_ULP, (pi, li, exact)
        g_exact = _both_precisions(lambda: (1 - Y) / (1 - P) - Y / P)
        assert abs(gi - float(g_exact)) <= GRAD_UNITS * np.finfo(float).eps * abs(float(g_exact))


def test_probability_zero_for_a_true_class_is_infinite_not_nan():
    assert ce.binary_cross_entropy([0.0], [1.0]) == np.inf
    assert ce.binary_cross_entropy([1.0], [0.0]) == np.inf
    assert ce.binary_cross_entropy([0.0, 1.0], [0.0, 1.0]) == 0.0   # 0 log 0 = 0
    np.testing.assert_array_equal(ce.binary_cross_entropy_grad([0.0, 1.0], [0.0, 1.0],
                                                               reduction="sum"), [1.0, -1.0])
    P = np.array([[0.0, 1.0]])
    assert ce.categorical_cross_entropy(P, np.array([0])) == np.inf
    assert ce.categorical_cross_entropy(P, np.array([[0.0, 1.0]])) == 0.0
    np.testing.assert_array_equal(ce.categorical_cross_entropy_grad(P, np.array([[0.0, 1.0]])),
                                  [[0.0, -1.0]])


def test_minus_inf_logit_with_zero_target_is_finite():
    x = np.array([[-np.inf, 1.0, 2.0]])
    for t in (np.array([2]), np.array([[0.0, 0.5, 0.5]])):
        v, g = ce.softmax_cross_entropy_value_and_grad(x, t, label_smoothing=0.0)
        assert np.isfinite(v) and np.isfinite(g).all() and g[0, 0] == 0.0
    # with label smoothing the masked class gets target mass: infinite loss, finite grad
    v, g = ce.softmax_cross_entropy_value_and_grad(x, np.array([2]), label_smoothing=0.1)
    assert v == np.inf and np.isfinite(g).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64, np.bool_])
def test_dtype_policy(dtype):
    x = np.array([[1, 0, 1], [0, 1, 1]], dtype=dtype)
    out = {np.float16: np.float16, np.float32: np.float32}.get(dtype, np.float64)
    v, g = ce.softmax_cross_entropy_value_and_grad(x, np.array([0, 2]))
    assert np.asarray(v).dtype == out and g.dtype == out
    v, g = ce.binary_cross_entropy_with_logits_value_and_grad(x, np.ones((2, 3)))
    assert np.asarray(v).dtype == out and g.dtype == out
    ref = ce.softmax_cross_entropy(x.astype(np.float64), np.array([0, 2]))
    tol = {np.float16: 1e-3, np.float32: 1e-6}.get(dtype, 1e-15)  # output rounding of the dtype
    assert abs(float(ce.softmax_cross_entropy(x, np.array([0, 2]))) - ref) <= tol * ref
