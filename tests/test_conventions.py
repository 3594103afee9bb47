"""ce_reference.conventions: every hand-derived gradient against jax.grad of a twin
written from the definition, plus the documented values of each convention."""

from __future__ import annotations

import numpy as np
import pytest

import ce_reference.conventions as conv
from ce_reference import nll_loss_value_and_grad

jax = pytest.importorskip("jax")
jnp = jax.numpy

# Hand-derived vs autodiff in float64: both evaluate the same smooth function with
# a few roundings per entry; 1e-12 relative to the largest entry leaves ~4000 eps of
# room for the different evaluation orders and is far below any formula error.
RTOL = 1e-12


def assert_close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(1.0, float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0)))
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    fin = np.isfinite(b)
    assert np.max(np.abs(a[fin] - b[fin]), initial=0.0) <= rtol * scale


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- twins

def twin_softmax_rows(x, q):
    logp = jax.nn.log_softmax(x, axis=-1)
    return -jnp.sum(jnp.where(q == 0, 0.0, q * jnp.where(q == 0, 0.0, logp)), axis=-1)


def test_softmax_rows_vs_jax(rng):
    x = rng.normal(0, 3, (5, 4))
    q = rng.dirichlet(np.ones(4), 5) * rng.uniform(0.5, 2, (5, 1))   # need not sum to 1
    rows, g = conv.softmax_cross_entropy_rows(x, q)
    assert_close(rows, twin_softmax_rows(jnp.asarray(x), jnp.asarray(q)))
    assert_close(g, jax.grad(lambda z: jnp.sum(twin_softmax_rows(z, jnp.asarray(q))))(x))


def test_softmax_rows_neginf_zero_target_is_finite():
    rows, g = conv.softmax_cross_entropy_rows([[0.0, -np.inf, 1.0]], [[0.5, 0.0, 0.5]])
    expected = 0.5 * (np.logaddexp(0, 1) - 0) + 0.5 * (np.logaddexp(0, 1) - 1)
    assert rows[0] == pytest.approx(expected, rel=1e-15)
    assert np.all(np.isfinite(g)) and g[0, 1] == 0.0


def test_softmax_rows_index_targets_equal_one_hot(rng):
    x = rng.normal(0, 2, (4, 3))
    y = np.array([0, 2, 1, 2])
    r1, g1 = conv.softmax_cross_entropy_rows(x, y)
    r2, g2 = conv.softmax_cross_entropy_rows(x, np.eye(3)[y])
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_vs_jax(rng, reduction):
    z = rng.normal(0, 2, (6, 4))
    y = np.array([0, 3, -100, 1, 1, -100])
    w = np.array([0.5, 2.0, 1e-3, 1e3])
    v, g = nll_loss_value_and_grad(z, y, weight=w, ignore_index=-100, reduction=reduction)
    keep = y != -100
    yi = np.where(keep, y, 0)

    def twin(zz):
        picked = jnp.take_along_axis(zz, jnp.asarray(yi)[:, None], axis=1)[:, 0]
        wy = jnp.asarray(w)[yi] * keep
        rows = -wy * picked
        if reduction == "none":
            return rows
        return jnp.sum(rows) / (jnp.sum(wy) if reduction == "mean" else 1.0)

    assert_close(v, twin(jnp.asarray(z)))
    assert_close(g, jax.grad(lambda zz: jnp.sum(twin(zz)))(z))


def test_nll_all_ignored_is_nan_with_zero_gradient():
    v, g = nll_loss_value_and_grad(np.zeros((2, 3)), np.array([-100, -100]), ignore_index=-100)
    assert np.isnan(v) and np.all(g == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_clamped_bce_vs_jax(reduction):
    # p = 1e-50 and 1 - 1e-50 (== 1) put a clamp into action (log < -100).
    p = np.array([0.3, 1e-50, 0.999, 0.5, 1e-3, 1.0 - 2**-52])
    y = np.array([1.0, 1.0, 0.0, 0.25, 0.0, 0.6])
    w = np.array([1.0, 2.0, 0.5, 1e3, 0.0, 1.0])

    def twin(pp):
        t = -(y * jnp.maximum(jnp.log(pp), -100.0) + (1 - y) * jnp.maximum(jnp.log1p(-pp), -100.0))
        t = w * t
        return t if reduction == "none" else jnp.sum(t) / (t.size if reduction == "mean" else 1)

    v, g = conv.clamped_binary_cross_entropy(p, y, weight=w, reduction=reduction)
    assert_close(v, twin(jnp.asarray(p)))
    assert_close(g, jax.grad(lambda pp: jnp.sum(twin(pp)))(p))
    assert g[1] == 0.0          # clamp active: the derivative of the clamped forward is 0


def test_clamped_bce_values():
    v, g = conv.clamped_binary_cross_entropy([0.0, 1.0], [1.0, 0.0], reduction="none")
    assert v.tolist() == [100.0, 100.0] and g.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clipped_bce_vs_jax(dtype):
    p = np.array([0.3, 1e-9, 0.9999999999, 0.5, 2e-7, 0.97], dtype)
    y = np.array([1.0, 1.0, 0.0, 0.2, 1.0, 0.0], dtype)
    e = 1e-7

    def twin(pp):
        c = jnp.clip(pp, dtype(e), dtype(1 - e))
        return -(y * jnp.log(c) + (1 - y) * jnp.log(1 - c))

    loss, g = conv.clipped_binary_cross_entropy_elements(p, y, eps=e)
    ref_v, ref_g = twin(jnp.asarray(p)), jax.grad(lambda pp: jnp.sum(twin(pp)))(p)
    # float32: log(1 - c) vs log1p(-c) differ by a rounding of 1 - c (~1 eps32 of 1).
    rtol = RTOL if dtype == np.float64 else 1e-6
    assert_close(loss, ref_v, rtol)
    assert_close(g, ref_g, rtol)
    assert g[1] == 0 and g[2] == 0                                 # outside the clip range
    assert loss[1] == pytest.approx(-np.log(dtype(e)), rel=1e-6)   # Keras' cap, 16.118


@pytest.mark.parametrize("renormalize", [True, False])
def test_clipped_categorical_vs_jax(rng, renormalize):
    p = rng.dirichlet(np.ones(4), 5)
    p[0] = [1e-9, 0.5, 0.3, 0.2 - 1e-9]          # one entry below the clip
    if renormalize:
        p = p * rng.uniform(0.5, 1.5, (5, 1))    # rows need not sum to 1
        p = np.minimum(p, 1.0)
    q = rng.dirichlet(np.ones(4), 5)
    e = 1e-7

    def twin(pp):
        r = pp / jnp.sum(pp, axis=1, keepdims=True) if renormalize else pp
        c = jnp.clip(r, e, 1 - e)
        return -jnp.sum(jax.scipy.special.xlogy(q, c), axis=1)

    rows, g = conv.clipped_categorical_cross_entropy_rows(p, q, eps=e, renormalize=renormalize)
    assert_close(rows, twin(jnp.asarray(p)))
    assert_close(g, jax.grad(lambda pp: jnp.sum(twin(pp)))(p))


def test_clipped_categorical_keras_example():
    rows, g = conv.clipped_categorical_cross_entropy_rows([[1.0, 0.0]], [[0.0, 1.0]], eps=1e-7,
                                                          renormalize=True)
    assert rows[0] == pytest.approx(-np.log(1e-7), rel=1e-15) and np.all(g == 0)


def test_clipped_categorical_rejects_zero_row():
    with pytest.raises(ValueError, match="summing to 0"):
        conv.clipped_categorical_cross_entropy_rows([[0.0, 0.0]], [0], eps=1e-7,
                                                    renormalize=True)


def test_sigmoid_elements_vs_jax(rng):
    x = np.concatenate([rng.normal(0, 5, 6), [-800.0, 800.0, 40.0, -40.0]])
    y = rng.random(10)
    pw = rng.uniform(0.5, 3, 10)

    def twin(z):
        return -(pw * y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))

    loss, g = conv.sigmoid_cross_entropy_elements(x, y, pos_weight=pw)
    assert_close(loss, twin(jnp.asarray(x)))
    assert_close(g, jax.grad(lambda z: jnp.sum(twin(z)))(x))


def test_half_binomial_vs_jax(rng):
    x = np.concatenate([rng.normal(0, 4, 6), [-800.0, 750.0]])
    y = rng.random(8)

    def f(z, yy):
        return jnp.logaddexp(0.0, z) - yy * z

    loss, g, h = conv.half_binomial(x, y)
    assert_close(loss, jax.vmap(f)(x, y))
    assert_close(g, jax.vmap(jax.grad(f))(x, y))
    assert_close(h, jax.vmap(jax.grad(jax.grad(f)))(x, y))


def test_half_multinomial_vs_jax(rng):
    x = rng.normal(0, 3, (4, 5))
    y = np.array([0.0, 4.0, 2.0, 2.0])

    def f(row, k):
        return jax.nn.logsumexp(row) - row[k]

    loss, g, h = conv.half_multinomial(x, y)
    yi = y.astype(int)
    assert_close(loss, jax.vmap(f)(x, yi))
    assert_close(g, jax.vmap(jax.grad(f))(x, yi))
    assert_close(h, jax.vmap(lambda r, k: jnp.diag(jax.hessian(f)(r, k)))(x, yi))


def test_half_multinomial_rejects_bad_labels():
    with pytest.raises(ValueError, match="y_true"):
        conv.half_multinomial(np.zeros((1, 3)), [3.0])
    with pytest.raises(ValueError, match="y_true"):
        conv.half_multinomial(np.zeros((1, 3)), [0.5])


# --------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("denominator", ["weights", "count"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_reduction_vs_jax(rng, reduction, denominator):
    x = rng.normal(0, 2, (5, 3))
    y = np.array([0, 1, 2, 1, 0])
    s = np.array([1.0, 0.0, 3.0, 1e-3, 1e3])
    keep = np.array([True, True, False, True, True])
    rows, G = conv.softmax_cross_entropy_rows(x, y)
    v, g = conv.weighted_reduction(rows, G, sample_weight=s, keep=keep, reduction=reduction,
                                   denominator=denominator)

    def twin(z):
        r = twin_softmax_rows(z, jnp.asarray(np.eye(3)[y])) * s * keep
        if reduction == "none":
            return r
        D = jnp.sum(s * keep) if denominator == "weights" else jnp.sum(keep)
        return jnp.sum(r) / (D if reduction == "mean" else 1.0)

    assert_close(v, twin(jnp.asarray(x)))
    assert_close(g, jax.grad(lambda z: jnp.sum(twin(z)))(x))


@pytest.mark.parametrize("zero_division, expected", [("nan", np.nan), ("zero", 0.0)])
def test_weighted_reduction_zero_denominator(zero_division, expected):
    v, g = conv.weighted_reduction([1.0, 2.0], [[1.0], [1.0]], keep=[False, False],
                                   zero_division=zero_division)
    np.testing.assert_equal(float(v), expected)
    assert np.all(g == 0)


def test_weighted_reduction_errors():
    with pytest.raises(ValueError, match="denominator"):
        conv.weighted_reduction([1.0], None, denominator="rows")
    with pytest.raises(ValueError, match="reduction"):
        conv.weighted_reduction([1.0], None, reduction="avg")
    with pytest.raises(ValueError, match="sample_weight"):
        conv.weighted_reduction([1.0, 2.0], None, sample_weight=[1.0])
    with pytest.raises(ValueError, match="sample_weight"):
        conv.weighted_reduction([1.0], None, sample_weight=[-1.0])


# --------------------------------------------------------------------------- smoothing

def test_smooth_labels_schemes():
    q = np.eye(4)[[1]]
    u = conv.smooth_labels(q, 0.2)
    o = conv.smooth_labels(q, 0.2, scheme="off_class")
    np.testing.assert_allclose(u, [[0.05, 0.85, 0.05, 0.05]], rtol=1e-15)
    np.testing.assert_allclose(o, [[0.2 / 3, 0.8, 0.2 / 3, 0.2 / 3]], rtol=1e-15)
    assert u.sum() == pytest.approx(1.0, rel=1e-15) and o.sum() == pytest.approx(1.0, rel=1e-15)
    np.testing.assert_allclose(conv.smooth_labels([1.0, 0.0, 0.3], 0.2, scheme="binary"),
                               [0.9, 0.1, 0.34], rtol=1e-15)
    np.testing.assert_array_equal(conv.smooth_labels(np.array([1]), 0.2, num_classes=4), u)


def test_smooth_labels_errors():
    with pytest.raises(ValueError, match="scheme"):
        conv.smooth_labels([1.0, 0.0], 0.1, scheme="megatron")
    with pytest.raises(ValueError, match="num_classes"):
        conv.smooth_labels(np.array([0]), 0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        conv.smooth_labels([[1.0, 0.0]], 1.5)


def test_inputs_not_mutated(rng):
    p = rng.dirichlet(np.ones(3), 4)
    q = rng.dirichlet(np.ones(3), 4)
    p0, q0 = p.copy(), q.copy()
    conv.clipped_categorical_cross_entropy_rows(p, q, eps=1e-7, renormalize=True)
    conv.softmax_cross_entropy_rows(p, q)
    conv.clamped_binary_cross_entropy(p, q)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(q, q0)


def test_float32_stays_float32(rng):
    x = rng.normal(0, 1, (3, 4)).astype(np.float32)
    rows, g = conv.softmax_cross_entropy_rows(x, np.array([0, 1, 2]))
    assert rows.dtype == np.float32 and g.dtype == np.float32


# --------------------------------------------------------------------------- Keras focal / KL

@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, 0.25), (0.0, None), (1.0, 0.7)])
def test_keras_binary_focal_vs_jax(rng, gamma, alpha):
    x = np.array([[-20.0, -3.0, -0.5, 0.0], [0.7, 2.5, 9.0, 17.0]])   # both sides of the clip
    y = np.array([[1.0, 0.0, 0.3, 1.0], [0.0, 1.0, 0.5, 0.0]])
    v, g = conv.keras_binary_focal_elements(x, y, gamma=gamma, alpha=alpha)
    lo, hi = conv.KERAS_EPSILON, 1 - conv.KERAS_EPSILON

    def twin(z):
        p = jax.nn.sigmoid(z)
        pc = jnp.clip(p, lo, hi)
        bce = -(y * jnp.log(pc) + (1 - y) * jnp.log(1 - pc))
        f = (y * (1 - p) + (1 - y) * p) ** gamma
        a = 1.0 if alpha is None else y * alpha + (1 - y) * (1 - alpha)
        return a * f * bce

    assert_close(v, twin(jnp.asarray(x)), rtol=1e-9)
    assert_close(g, jax.grad(lambda z: jnp.sum(twin(z)))(jnp.asarray(x)), rtol=1e-9)


@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.5, 1.0), (0.0, 0.5)])
def test_keras_categorical_focal_vs_jax(rng, gamma, alpha):
    x = np.array([[0.0, 20.0, -1.0], [1.0, -0.5, 2.0], [3.0, 3.0, -30.0]])
    y = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5]])
    v, g = conv.keras_categorical_focal_rows(x, y, gamma=gamma, alpha=alpha)
    lo, hi = conv.KERAS_EPSILON, 1 - conv.KERAS_EPSILON

    def twin(z):
        o = jnp.clip(jax.nn.softmax(z, axis=-1), lo, hi)
        return alpha * jnp.sum(y * (1 - o) ** gamma * -jnp.log(o), axis=-1)

    assert_close(v, twin(jnp.asarray(x)), rtol=1e-9)
    assert_close(g, jax.grad(lambda z: jnp.sum(twin(z)))(jnp.asarray(x)), rtol=1e-9)


def test_keras_kl_divergence_vs_jax():
    p = np.array([[0.2, 0.3, 0.5], [1e-9, 0.4, 0.6], [0.25, 0.25, 0.5]])
    t = np.array([[0.1, 0.0, 0.9], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    v, g = conv.keras_kl_divergence_rows(p, t)
    lo = conv.KERAS_EPSILON

    def twin(z):
        tc, zc = jnp.clip(t, lo, 1.0), jnp.clip(z, lo, 1.0)
        return jnp.sum(tc * jnp.log(tc / zc), axis=-1)

    assert_close(v, twin(jnp.asarray(p)))
    assert_close(g, jax.grad(lambda z: jnp.sum(twin(z)))(jnp.asarray(p)))
