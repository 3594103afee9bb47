"""``workers=``, ``out=``, peak memory and error messages of the fused kernels, on each
backend (the ``backend`` fixture of conftest.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import ce_reference as ce
from ce_reference.kernels import _blocks

pytestmark = pytest.mark.usefixtures("backend")

MiB = 1 << 20
# Extra memory allowed besides the gradient: per-thread scratch, the
# O(N) per-row vectors (targets, losses) and NumPy's small temporaries.
EXTRA_BYTES = 32 * MiB


def _softmax_args(rng, shape=(200, 90), axis=-1):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    ax = axis % len(shape)
    y = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1:])
    return x, y


def _cases(rng):
    """(function, positional args, keyword args) for the four fused kernels."""
    x, y = _softmax_args(rng)
    xs, ys = _softmax_args(rng, (3000, 7))
    x3, y3 = _softmax_args(rng, (4, 90, 30), axis=1)
    z = (rng.standard_normal((300, 90)) * 4).astype(np.float32)
    t = rng.random((300, 90)).astype(np.float32)
    p = rng.random((300, 90))
    q = rng.random((300, 90))
    q /= q.sum(axis=1, keepdims=True)
    return [
        (ce.softmax_cross_entropy_value_and_grad, (x, y), {}),
        (ce.softmax_cross_entropy_value_and_grad, (x, y), dict(label_smoothing=0.1,
                                                               weight=rng.random(90))),
        (ce.softmax_cross_entropy_value_and_grad, (x, q[:200].astype(np.float32)), {}),
        (ce.softmax_cross_entropy_value_and_grad, (xs, ys), dict(reduction="sum")),
        (ce.softmax_cross_entropy_value_and_grad, (x3, y3), dict(axis=1)),
        (ce.binary_cross_entropy_with_logits_value_and_grad, (z, t), {}),
        (ce.binary_cross_entropy_with_logits_value_and_grad, (z, t),
         dict(pos_weight=rng.random(90), weight=rng.random((300, 1)))),
        (ce.binary_cross_entropy_value_and_grad, (p, t), dict(eps=1e-6)),
        (ce.categorical_cross_entropy_value_and_grad, (q, rng.integers(0, 90, 300)), {}),
    ]


def test_results_bitwise_identical_for_any_workers(many_blocks):
    # small blocks and no serial cut-off, so that several threads really share the work
    for f, args, kw in _cases(np.random.default_rng(0)):
        v1, g1 = f(*args, workers=1, **kw)
        for workers in (2, 3):
            v, g = f(*args, workers=workers, **kw)
            assert np.asarray(v).tobytes() == np.asarray(v1).tobytes(), (f.__name__, workers)
            assert g.tobytes() == g1.tobytes(), (f.__name__, workers)


def test_workers_default_and_validation():
    assert _blocks.resolve_workers(None) == _blocks.available_cores() >= 1
    x, y = _softmax_args(np.random.default_rng(1))
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError),
                     ("2", TypeError)):
        with pytest.raises(exc, match="workers"):
            ce.softmax_cross_entropy_value_and_grad(x, y, workers=bad)


def test_out_receives_gradient_and_inputs_are_untouched(monkeypatch):
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(_blocks, "TILE_BYTES", 4096)
    for f, args, kw in _cases(np.random.default_rng(2)):
        copies = [np.copy(a) for a in args]
        v_ref, g_ref = f(*args, **kw)
        for a, c in zip(args, copies):
            np.testing.assert_array_equal(a, c)       # inputs never modified
        out = np.full_like(g_ref, np.nan)
        v, g = f(*args, out=out, **kw)
        assert g is out
        np.testing.assert_array_equal(out, g_ref)
        np.testing.assert_array_equal(v, v_ref)
        for a, c in zip(args, copies):
            np.testing.assert_array_equal(a, c)
        # in place: the gradient overwrites the first argument
        first = np.array(args[0], dtype=g_ref.dtype)
        v, g = f(first, *args[1:], out=first, **kw)
        assert g is first
        np.testing.assert_array_equal(first, g_ref)
        np.testing.assert_array_equal(v, v_ref)


def test_out_in_place_float16_logits():
    rng = np.random.default_rng(3)
    x, y = _softmax_args(rng)
    x16 = x.astype(np.float16)
    v_ref, g_ref = ce.softmax_cross_entropy_value_and_grad(x16, y)
    v, g = ce.softmax_cross_entropy_value_and_grad(x16, y, out=x16)
    assert g is x16 and g.dtype == np.float16
    np.testing.assert_array_equal(g, g_ref)


def test_out_validation():
    rng = np.random.default_rng(4)
    x, y = _softmax_args(rng)
    f = ce.softmax_cross_entropy_value_and_grad
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        f(x, y, out=[[0.0]])
    with pytest.raises(TypeError, match="out must have dtype float32"):
        f(x, y, out=np.empty(x.shape))
    with pytest.raises(ValueError, match=r"out must have the input's shape \(200, 90\)"):
        f(x, y, out=np.empty((90, 200), np.float32))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        f(x, y, out=np.empty((90, 200), np.float32).T)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        f(x, y, out=ro)
    big = np.zeros((201, 90), np.float32)
    big[:200] = x
    with pytest.raises(ValueError, match="out overlaps the input"):
        f(big[:200], y, out=big[1:])
    z = rng.standard_normal((10, 4))
    t = rng.random((10, 4))
    with pytest.raises(ValueError, match="out must not share memory with targets"):
        ce.binary_cross_entropy_with_logits_value_and_grad(z, t, out=t)


# --------------------------------------------------------------------------- peak memory

def _peak(f):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        res = f()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, res


@pytest.mark.parametrize("workers", [1, 2, 16])
def test_peak_memory(workers):
    """Peak extra memory <= gradient + 32 MiB, and <= 32 MiB with out= (tracemalloc).

    With 16 workers the per-thread scratch would exceed the budget: the kernels run
    fewer threads (``_blocks.SCRATCH_BUDGET``).
    """
    rng = np.random.default_rng(5)
    cases = [
        (ce.softmax_cross_entropy_value_and_grad,
         (rng.standard_normal((1024, 8192), np.float32), rng.integers(0, 8192, 1024))),
        (ce.softmax_cross_entropy_value_and_grad,      # the benchmark's small-C shape
         (rng.standard_normal((1_000_000, 10), np.float32), rng.integers(0, 10, 1_000_000))),
        (ce.softmax_cross_entropy_value_and_grad,
         (rng.standard_normal((300_000, 10)), rng.integers(0, 10, 300_000))),
        (ce.binary_cross_entropy_with_logits_value_and_grad,
         (rng.standard_normal(4_000_000, np.float32),
          (rng.random(4_000_000) < 0.5).astype(np.float32))),
    ]
    for f, args in cases:
        grad_bytes = args[0].nbytes
        peak, (_, g) = _peak(lambda: f(*args, workers=workers))
        assert peak <= grad_bytes + EXTRA_BYTES, (f.__name__, peak / MiB)
        out = np.empty_like(g)
        peak, _ = _peak(lambda: f(*args, out=out, workers=workers))
        assert peak <= EXTRA_BYTES, (f.__name__, peak / MiB)
        peak, _ = _peak(lambda: f(*args, out=args[0], workers=workers))   # in place
        assert peak <= EXTRA_BYTES, (f.__name__, peak / MiB)


# --------------------------------------------------------------------------- errors

def _error(f, *args, **kw):
    with pytest.raises((TypeError, ValueError)) as info:
        f(*args, **kw)
    return type(info.value), str(info.value)


def _same_error(plain, fused, *args, **kw):
    assert _error(fused, *args, **kw) == _error(plain, *args, **kw)


def test_softmax_errors_match_plain(monkeypatch):
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", 1024)   # errors found inside later blocks too
    monkeypatch.setattr(_blocks, "TILE_BYTES", 1024)
    rng = np.random.default_rng(6)
    x, y = _softmax_args(rng, (50, 30))
    xs, ys = _softmax_args(rng, (50, 5))
    q = rng.random((50, 30))
    nan_late = x.copy()
    nan_late[45, 3] = np.nan
    pinf = x.copy()
    pinf[30, 0] = np.inf
    allneg = x.copy()
    allneg[20] = -np.inf
    q_bad = q.copy()
    q_bad[40, 2] = 1.5
    q_nan = q.copy()
    q_nan[33, 1] = np.nan
    cases = [
        ((nan_late, y), {}), ((pinf, y), {}), ((allneg, y), {}),
        ((nan_late, y + 100), {}),                    # NaN wins over bad targets
        ((x, y + 100), {}), ((x, y), dict(ignore_index=True)),
        ((x, y.astype(float)), {}), ((x, q_bad), {}), ((x, q_nan), {}),
        ((pinf, q_bad), {}), ((x, q), dict(ignore_index=0)), ((x, y[:10]), {}),
        ((x, y), dict(weight=np.ones(3))), ((x, y), dict(weight=-np.ones(30))),
        ((x, y), dict(label_smoothing=2.0)), ((x, y), dict(reduction="avg")),
        ((x, y), dict(axis=2)), ((np.zeros((4, 0)), np.zeros(4, int)), {}),
        ((x.astype(complex), y), {}), ((xs, ys + 7), {}),
        ((np.moveaxis(x, 0, 1), y), dict(axis=0, reduction="none", weight=np.ones(4))),
    ]
    # targets are checked in their own dtype, before the cast to the logits' float32
    q64 = q / q.sum(axis=1, keepdims=True)
    q_hi, q_lo = q64.copy(), q64.copy()
    q_hi[10, 3] = 1 + 1e-12
    q_lo[44, 0] = -1e-50
    cases += [((x.astype(np.float32), q_hi), {}), ((x.astype(np.float32), q_lo), {})]
    allneg_s = xs.copy()
    allneg_s[37] = -np.inf
    cases.append(((allneg_s, ys), {}))
    for args, kw in cases:
        _same_error(ce.softmax_cross_entropy, ce.softmax_cross_entropy_value_and_grad,
                    *args, **kw)
    # in place: the block holding the NaN is left as it was, so the error is the same
    xin = nan_late.copy()
    _same_error(ce.softmax_cross_entropy, lambda *a, **k: ce.softmax_cross_entropy_value_and_grad(
        xin, y, out=xin), nan_late, y)


def test_binary_errors_match_plain(monkeypatch):
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", 512)
    monkeypatch.setattr(_blocks, "TILE_BYTES", 512)
    rng = np.random.default_rng(7)
    z = rng.standard_normal((40, 9))
    t = rng.random((40, 9))
    z_nan = z.copy()
    z_nan[35, 2] = np.nan
    t_bad = t.copy()
    t_bad[30, 1] = 1.2
    t_inf = t.copy()
    t_inf[20, 1] = np.inf
    w_neg = np.ones((40, 9))
    w_neg[39, 8] = -1
    cases = [
        ((z_nan, t), {}), ((z, t_bad), {}), ((z, t_inf), {}), ((z_nan, t_bad), {}),
        ((z, t), dict(weight=w_neg)), ((z, t_bad), dict(weight=w_neg)),
        ((z, t), dict(pos_weight=np.array([np.nan] * 9))), ((z, t), dict(pos_weight=-np.ones(9))),
        ((z, t[:, :3]), {}), ((z, t), dict(weight=np.ones(4))), ((z, t), dict(reduction="x")),
        ((z.astype(complex), t), {}), ((z, t.astype(object)), {}),
        ((z, np.array(2.0)), {}),
    ]
    for args, kw in cases:
        _same_error(ce.binary_cross_entropy_with_logits,
                    ce.binary_cross_entropy_with_logits_value_and_grad, *args, **kw)
    p = rng.random((40, 9))
    p_bad = p.copy()
    p_bad[38, 0] = -0.1
    for args, kw in [((p_bad, t), {}), ((p, t_bad), {}), ((p, t), dict(eps=1e-30)),
                     ((p, t), dict(eps=0.7)), ((p, t), dict(weight=w_neg))]:
        _same_error(ce.binary_cross_entropy, ce.binary_cross_entropy_value_and_grad, *args, **kw)
    P = p / p.sum(axis=1, keepdims=True)
    P_bad = P.copy()
    P_bad[33, 3] = np.nan
    yi = rng.integers(0, 9, 40)
    for args, kw in [((P_bad, yi), {}), ((P, yi + 9), {}), ((P, t_bad), {}),
                     ((P, yi), dict(weight=np.ones(2))), ((P, yi), dict(eps=2.0)),
                     ((P_bad, yi + 9), {})]:
        _same_error(ce.categorical_cross_entropy, ce.categorical_cross_entropy_value_and_grad,
                    *args, **kw)
