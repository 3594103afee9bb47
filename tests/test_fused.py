"""The fused ``*_value_and_grad`` kernels give the plain functions' numbers.

Every option (weights, pos_weight, ignore_index, label smoothing, both target
kinds, reductions, axis) in every layout of the softmax kernel (row blocks,
transposed small-C blocks, class axis inside, online column chunks) and every
input dtype, with extreme and infinite logits, empty batches and all-ignored
rows.  The probability-input kernels reuse the plain formulas block by block, so
they must agree bitwise; the logits kernels reorder a few operations and must
agree to the named ULP tolerances below.

Every test runs on each backend (the ``backend`` fixture of conftest.py sets
``CE_REFERENCE_BACKEND``): the NumPy kernels and the compiled (numba) ones, which
evaluate with their own elementary functions (their gradients of the probability
losses stay bitwise those of the plain functions, their losses are a few ULP apart).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special as sp

import ce_reference as ce
from ce_reference import backends
from ce_reference.kernels import _blocks, softmax as softmax_kernel

pytestmark = pytest.mark.usefixtures("backend")

# Loss (each element for reduction="none", else the reduced value), relative to
# its magnitude, in ULP of the result dtype.  Sources of difference: log1p(t) is
# evaluated with the vectorised log (<= 3 ULP in float32, see
# test_log1p_nonneg_accuracy), the class sums of the transposed / online layouts
# are accumulated in another order (t >= 0: no cancellation), and the BCE tile
# sums are combined per tile.  The compiled kernels use their own exp / log / log1p
# (<= 1 ULP each, tests/test_compiled_math.py) and sum a row's terms in float64 in
# their own order: measured up to 6.5 ULP of the value (int32 logits up to 1e5 with
# label smoothing, a loss made of terms as large as itself); the verifier gates both
# backends at 8 eps of the operands.
LOSS_ULP = {"numpy": 6, "numba": 8}

# Gradient, in ULP of the result dtype, relative to |g| plus the magnitude of the
# subtracted target term (scale * w_c q'_c, resp. scale * w a sigma(-x)): where
# the exact gradient is a difference of two nearly equal terms, no evaluation
# order is better than a few ULP of the terms.  Sources: the row factor
# total * scale / (1 + t) is applied in one multiplication instead of three, the
# BCE sigmoid is e / (1 + e) instead of scipy's expit, and t as for the loss.
GRAD_ULP = 6


def _eps(dtype):
    return float(np.finfo(np.dtype(dtype)).eps)


def assert_loss_close(v, v_ref, backend=None):
    """Within :data:`LOSS_ULP` of ``backend`` (default: the one the calls resolved to)."""
    ulp = LOSS_ULP[backends.resolve(backend)]
    v, v_ref = np.asarray(v), np.asarray(v_ref)
    assert v.dtype == v_ref.dtype and v.shape == v_ref.shape
    a, b = v.astype(np.float64), v_ref.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    tiny = ulp * float(np.finfo(v_ref.dtype).smallest_subnormal)  # subnormal grid
    with np.errstate(invalid="ignore"):
        ok = same | (np.abs(a - b) <= ulp * _eps(v_ref.dtype) * np.abs(b) + tiny)
    assert ok.all(), (a[~ok][:5], b[~ok][:5])


def assert_grad_close(g, g_ref, term):
    assert g.dtype == g_ref.dtype and g.shape == g_ref.shape
    a, b = g.astype(np.float64), g_ref.astype(np.float64)
    tol = GRAD_ULP * _eps(g_ref.dtype) * (np.abs(b) + np.abs(term))
    # subnormal results are rounded to an absolute grid: allow GRAD_ULP steps of it
    tol = tol + GRAD_ULP * float(np.finfo(g_ref.dtype).smallest_subnormal)
    # float16 results are float32 results rounded once more: allow that rounding
    if g_ref.dtype == np.float16:
        tol = tol + np.spacing(np.abs(b).astype(np.float16)).astype(np.float64)
    bad = ~(np.abs(a - b) <= tol)
    assert not bad.any(), (a[bad][:5], b[bad][:5], tol[bad][:5])


# --------------------------------------------------------------------------- softmax

LAYOUTS = {
    # name: (shape, axis, patches for the kernel module)
    "rows": ((37, 96), -1, {}),
    "rows_many_blocks": ((37, 96), -1, {"BLOCK_BYTES": 1024}),
    "small_c": ((301, 5), -1, {"BLOCK_BYTES": 256}),
    # last block of one row in a (C, B) scratch with B = C = 4 (float32) / 8 (float64):
    # the strided single columns on which NumPy 2.4.6's np.negative is wrong
    "small_c_one_row_block": ((9, 4), -1, {"BLOCK_BYTES": 64}),
    "small_c_one_row_block_8": ((17, 8), -1, {"BLOCK_BYTES": 512}),
    "axis_inside": ((3, 70, 11), 1, {"BLOCK_BYTES": 2048}),
    "axis_first": ((6, 4, 5), 0, {}),
    "online": ((9, 130), -1, {"ONLINE_ROW_BYTES": 64, "BLOCK_BYTES": 128}),
}


@pytest.fixture
def layout(request, monkeypatch):
    shape, axis, patches = LAYOUTS[request.param]
    for name, value in patches.items():
        target = softmax_kernel if name == "ONLINE_ROW_BYTES" else _blocks
        monkeypatch.setattr(target, name, value)
    return shape, axis


def _softmax_case(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    ax = axis % len(shape)
    C = shape[ax]
    x = rng.standard_normal(shape) * 4
    flat = np.moveaxis(x, ax, -1)            # a view: edits below land in x
    rows = flat.reshape(-1, C)
    if rows.shape[0] >= 4:
        rows_idx = np.arange(rows.shape[0])
        flat[np.unravel_index(rows_idx[0], flat.shape[:-1])][:] = 0.0        # all ties
        flat[np.unravel_index(rows_idx[1], flat.shape[:-1])][0] = 1e4        # confident
        flat[np.unravel_index(rows_idx[2], flat.shape[:-1])][1] = -1e4
        flat[np.unravel_index(rows_idx[3], flat.shape[:-1])][2:4] = -np.inf  # masked classes
    if np.dtype(dtype).kind in "iu":
        x = np.where(np.isinf(x), 0, np.clip(x, -1e4, 1e4) * 10).astype(dtype)
    else:
        x = x.astype(dtype)
    batch = shape[:ax] + shape[ax + 1:]
    y = rng.integers(0, C, batch)
    q = rng.random(shape) ** 3
    q /= q.sum(axis=ax, keepdims=True)
    w = rng.random(C) + 0.1
    w[1] = 0.0
    return x, y, q, w


def _softmax_terms(x, targets, axis, weight, ignore_index, ls, reduction, g_dtype):
    """scale * w_c q'_c, the subtracted term of the gradient (float64)."""
    xm = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    C = xm.shape[-1]
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    t = np.asarray(targets)
    if t.dtype.kind in "iu":
        keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        yi = np.where(keep, t, 0)
        A = (ls / C) * w * np.ones(xm.shape)
        np.put_along_axis(A, yi[..., None],
                          np.take_along_axis(A, yi[..., None], -1) + (1 - ls) * w[yi][..., None],
                          -1)
        A *= keep[..., None]
        denom = np.sum(w[yi] * keep)
    else:
        A = (np.moveaxis(t, axis, -1) * (1 - ls) + ls / C) * w
        denom = A[..., 0].size
    scale = 1.0 if reduction != "mean" or denom == 0 else 1.0 / denom
    # p * sum(A) is at most sum(A) per row; include it so the bound covers both terms
    tot = np.sum(A, axis=-1, keepdims=True)
    return np.moveaxis(scale * (A + tot * sp.softmax(xm, axis=-1)), -1, axis)


SOFTMAX_OPTIONS = [
    ("index", {}),
    ("index", {"weight": True}),
    ("index", {"ignore_index": 2}),
    ("index", {"label_smoothing": 0.1}),
    ("index", {"label_smoothing": 0.3, "weight": True, "ignore_index": 0}),
    ("probs", {}),
    ("probs", {"label_smoothing": 0.2, "weight": True}),
]


def _check_softmax(x, targets, axis, reduction, backend=None, **kw):
    v_ref = ce.softmax_cross_entropy(x, targets, axis=axis, reduction=reduction, **kw)
    g_ref = ce.softmax_cross_entropy_grad(x, targets, axis=axis, reduction=reduction, **kw)
    v, g = ce.softmax_cross_entropy_value_and_grad(x, targets, axis=axis, reduction=reduction,
                                                   backend=backend, **kw)
    assert_loss_close(v, v_ref, backend)
    term = _softmax_terms(x, targets, axis % np.ndim(x), kw.get("weight"),
                          kw.get("ignore_index"), kw.get("label_smoothing", 0.0), reduction,
                          g_ref.dtype)
    assert_grad_close(g, g_ref, term)


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_matches_plain(layout, dtype, reduction):
    shape, axis = layout
    x, y, q, w = _softmax_case(shape, axis, dtype)
    for kind, opts in SOFTMAX_OPTIONS:
        kw = dict(opts)
        if kw.get("weight"):
            kw["weight"] = w
        _check_softmax(x, y if kind == "index" else q, axis, reduction, **kw)


@pytest.mark.parametrize("layout", ["rows", "small_c", "axis_inside", "online"], indirect=True)
def test_softmax_onehot_float_targets_and_all_ignored(layout):
    shape, axis = layout
    x, y, q, w = _softmax_case(shape, axis, np.float64, seed=3)
    ax = axis % len(shape)
    onehot = np.moveaxis(np.eye(shape[ax])[y], -1, ax).astype(np.float32)
    for red in ("mean", "sum", "none"):
        _check_softmax(x, onehot, axis, red)
        # every row ignored: mean is NaN (0/0), the gradient exactly zero
        _check_softmax(x, np.full(y.shape, -100), axis, red, ignore_index=-100)
    v, g = ce.softmax_cross_entropy_value_and_grad(x, np.full(y.shape, -100), axis=axis,
                                                   ignore_index=-100)
    assert np.isnan(v) and not g.any()


@pytest.mark.parametrize("shape,axis", [((0, 5), -1), ((0, 300), -1), ((2, 3, 0), 1)])
def test_softmax_empty_batch(shape, axis):
    x = np.zeros(shape)
    batch = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    y = np.zeros(batch, int)
    for red in ("mean", "sum", "none"):
        v, g = ce.softmax_cross_entropy_value_and_grad(x, y, axis=axis, reduction=red)
        v_ref = ce.softmax_cross_entropy(x, y, axis=axis, reduction=red)
        np.testing.assert_array_equal(v, v_ref)
        assert g.shape == shape and g.dtype == np.float64


# --------------------------------------------------------------------------- BCE with logits

def _bce_case(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 6
    flat = x.reshape(-1)
    flat[:6] = [1e4, -1e4, 0.0, 40.0, -40.0, 1e-30][: flat.size]
    x = x.astype(dtype)
    y = rng.random(shape)
    y.reshape(-1)[::3] = np.round(y.reshape(-1)[::3])   # hard labels among soft ones
    return x, y


def _bce_terms(x, y, weight, pos_weight, reduction):
    x = np.asarray(x, np.float64)
    y = np.broadcast_to(np.asarray(y, np.float64), x.shape)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    w = 1.0 if weight is None else np.asarray(weight, np.float64)
    scale = 1.0 / x.size if reduction == "mean" else 1.0
    return scale * w * (np.abs(1 - y) * sp.expit(x) + np.abs(pw * y) * sp.expit(-x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("block_bytes", [1 << 17, 512])
def test_bce_logits_matches_plain(dtype, reduction, block_bytes, monkeypatch):
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(_blocks, "TILE_BYTES", block_bytes)
    rng = np.random.default_rng(1)
    shape = (23, 7, 9)
    x, y = _bce_case(shape, dtype)
    cases = [
        dict(),
        dict(weight=rng.random(shape) * 2),
        dict(pos_weight=rng.random(9) * 3),                      # (C,): last axis
        dict(weight=rng.random((23, 1, 1)), pos_weight=rng.random((7, 1)) + 0.5),
        dict(weight=np.float32(0.5)),
    ]
    for kw in cases:
        for yy in (y, y.astype(np.float32), (y > 0.5), y[0, 0]):
            v_ref = ce.binary_cross_entropy_with_logits(x, yy, reduction=reduction, **kw)
            g_ref = ce.binary_cross_entropy_with_logits_grad(x, yy, reduction=reduction, **kw)
            v, g = ce.binary_cross_entropy_with_logits_value_and_grad(
                x, yy, reduction=reduction, **kw)
            assert_loss_close(v, v_ref)
            assert_grad_close(g, g_ref, _bce_terms(x, yy, kw.get("weight"),
                                                   kw.get("pos_weight"), reduction))


def test_bce_logits_infinite_logits_and_empty(backend):
    x = np.array([np.inf, -np.inf, 3.0, -np.inf, np.inf, 0.0])
    y = np.array([1.0, 0.0, 0.5, 1.0, 0.0, 1.0])
    for red in ("mean", "sum", "none"):
        v, g = ce.binary_cross_entropy_with_logits_value_and_grad(x, y, reduction=red)
        v_ref = ce.binary_cross_entropy_with_logits(x, y, reduction=red)
        g_ref = ce.binary_cross_entropy_with_logits_grad(x, y, reduction=red)
        if backend == "numpy":      # infinite tiles: the plain formulas themselves
            np.testing.assert_array_equal(v, v_ref)
            np.testing.assert_array_equal(g, g_ref)
        else:                       # the limits, to the kernel's rounding
            assert_loss_close(v, v_ref)
            assert_grad_close(g, g_ref, _bce_terms(x, y, None, None, red))
    v, g = ce.binary_cross_entropy_with_logits_value_and_grad(np.zeros((0, 3)), np.zeros(3))
    assert np.isnan(v) and g.shape == (0, 3)


# --------------------------------------------------------------------------- probability inputs

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_losses_bitwise_or_nearly(dtype, reduction, monkeypatch, backend):
    """Gradients bitwise on both backends; per-element losses bitwise with the NumPy
    kernels (the plain formulas), to a few ULP with the compiled ones (their own log)."""
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", 512)
    monkeypatch.setattr(_blocks, "TILE_BYTES", 512)
    rng = np.random.default_rng(2)
    p = rng.random((40, 6))
    p[0, 0], p[1, 1], p[2, 2] = 0.0, 1.0, 1e-30
    p = p.astype(dtype)
    y = (rng.random((40, 6)) < 0.4).astype(np.float64)
    for kw in (dict(), dict(eps=1e-3), dict(weight=rng.random(6)),
               dict(weight=rng.random((40, 1)), eps=0.01)):
        ref = (ce.binary_cross_entropy(p, y, reduction=reduction, **kw),
               ce.binary_cross_entropy_grad(p, y, reduction=reduction, **kw))
        got = ce.binary_cross_entropy_value_and_grad(p, y, reduction=reduction, **kw)
        np.testing.assert_array_equal(got[1], ref[1])
        if reduction == "none" and backend == "numpy":
            np.testing.assert_array_equal(got[0], ref[0])
        else:  # per-tile float64 partial sums, combined in tile order
            assert_loss_close(got[0], ref[0])
    P = rng.random((5, 6, 7)) + 0.05  # -1/p must stay finite in float16
    P /= P.sum(axis=1, keepdims=True)
    P = P.astype(dtype)
    yi = rng.integers(0, 6, (5, 7))
    Q = rng.random((5, 6, 7))
    Q /= Q.sum(axis=1, keepdims=True)
    for t in (yi, Q):
        for kw in (dict(), dict(eps=1e-3), dict(weight=rng.random(6))):
            ref = (ce.categorical_cross_entropy(P, t, axis=1, reduction=reduction, **kw),
                   ce.categorical_cross_entropy_grad(P, t, axis=1, reduction=reduction, **kw))
            got = ce.categorical_cross_entropy_value_and_grad(P, t, axis=1, reduction=reduction,
                                                              **kw)
            for a, b in zip(got, ref):
                assert np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(got[1], ref[1])
            if backend == "numpy":
                np.testing.assert_array_equal(got[0], ref[0])
            else:
                assert_loss_close(got[0], ref[0])


# --------------------------------------------------------------------------- accuracy

def test_log1p_nonneg_accuracy():
    rng = np.random.default_rng(4)
    for dtype, bound in ((np.float32, 3.0), (np.float64, 2.0)):
        lo = np.log10(np.finfo(dtype).tiny)
        u = (10.0 ** rng.uniform(lo, 5, 100_000)).astype(dtype)
        out, w, c = (np.empty_like(u) for _ in range(3))
        _blocks.log1p_nonneg(u, out, w, c)
        exact = np.log1p(u.astype(np.longdouble))
        ulp = np.abs(out - exact) / np.spacing(np.abs(exact).astype(dtype)).astype(np.longdouble)
        assert ulp.max() <= bound, float(ulp.max())
        np.testing.assert_array_equal(_blocks.log1p_nonneg(np.zeros(1, dtype), *(
            np.empty(1, dtype) for _ in range(3))), [0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_losses_accurate_against_mpmath(dtype, backend):
    """Per-row losses, including confident rows whose loss is far below eps."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((12, 70)) * 3).astype(dtype)
    x[0, 5] = 60.0   # loss ~ exp(-60 + ...), far below eps
    x[1, 0] = 1e4
    x[2, :] = -1e4
    x[2, 7] = 1e4
    y = rng.integers(0, 70, 12)
    y[:3] = [5, 0, 7]
    v, _ = ce.softmax_cross_entropy_value_and_grad(x, y, reduction="none")
    v_plain = ce.softmax_cross_entropy(x, y, reduction="none")
    for n in range(12):
        row = [mpmath.mpf(float(c)) for c in x[n]]
        exact = float(mpmath.log(mpmath.fsum(mpmath.exp(c) for c in row)) - row[y[n]])
        # As accurate as the plain function (whose error for a confident row is set
        # by the rounding of x_c - m, i.e. |x_c - m| eps/2 relative) up to LOSS_ULP.
        err, err_plain = abs(float(v[n]) - exact), abs(float(v_plain[n]) - exact)
        assert err <= err_plain + LOSS_ULP[backend] * _eps(dtype) * abs(exact), \
            (n, float(v[n]), exact)
        assert err <= (4 + 0.5 * float(np.ptp(x[n]))) * _eps(dtype) * abs(exact)
    z = np.array([-1e4, -60.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 60.0, 1e4], dtype)
    yb = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1], dtype)
    vb, _ = ce.binary_cross_entropy_with_logits_value_and_grad(z, yb, reduction="none")
    for zi, yi, vi in zip(z, yb, vb):
        s = mpmath.mpf(float(zi))
        exact = (mpmath.log1p(mpmath.exp(-s)) if yi else mpmath.log1p(mpmath.exp(s)))
        assert abs(float(vi) - float(exact)) <= 4 * _eps(dtype) * float(exact), (zi, yi)


# --------------------------------------------------------------------------- layouts of the inputs

def test_scalar_list_and_non_contiguous_inputs():
    rng = np.random.default_rng(8)
    # 0-d inputs keep their shape
    for f, plain, plain_grad, args in (
            (ce.binary_cross_entropy_with_logits_value_and_grad,
             ce.binary_cross_entropy_with_logits, ce.binary_cross_entropy_with_logits_grad,
             (2.0, 1.0)),
            (ce.binary_cross_entropy_value_and_grad, ce.binary_cross_entropy,
             ce.binary_cross_entropy_grad, (0.3, 1.0))):
        for red in ("mean", "none"):
            v, g = f(*args, reduction=red)
            assert g.shape == () and np.shape(v) == ()
            assert_loss_close(v, plain(*args, reduction=red))
            np.testing.assert_allclose(g, plain_grad(*args, reduction=red), rtol=1e-15)
    x = rng.standard_normal((30, 40))
    y = rng.integers(0, 20, 30)
    for xx in (x[:, ::2], np.asfortranarray(x[:, :20]), x[:, :20].tolist()):
        _check_softmax(xx, y, -1, "mean")
        _check_softmax(xx, y, -1, "none", label_smoothing=0.1)
    q = rng.random((20, 30)).T          # non-contiguous probability targets
    _check_softmax(x[:, :20], q / q.sum(axis=1, keepdims=True), -1, "sum")
    z = rng.standard_normal((30, 20)).T
    t = rng.random((20, 30))
    v, g = ce.binary_cross_entropy_with_logits_value_and_grad(z, t[:, ::-1])
    assert_loss_close(v, ce.binary_cross_entropy_with_logits(z, t[:, ::-1]))
    assert_grad_close(g, ce.binary_cross_entropy_with_logits_grad(z, t[:, ::-1]),
                      _bce_terms(z, t[:, ::-1], None, None, "mean"))
    assert g.flags.c_contiguous
