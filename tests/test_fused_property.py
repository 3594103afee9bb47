"""Property test: on random shapes, options and block sizes the fused kernels give the
plain functions' numbers (tolerances and helpers of tests/test_fused.py)."""

from __future__ import annotations

import contextlib

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ce_reference as ce
from ce_reference import backends
from ce_reference.kernels import _blocks, softmax as softmax_kernel

try:  # tests/ as a plain directory (pytest's default "prepend" import mode) ...
    from test_fused import _bce_terms, _check_softmax, assert_grad_close, assert_loss_close
except ImportError:  # ... or as a package
    from tests.test_fused import (_bce_terms, _check_softmax, assert_grad_close,
                                  assert_loss_close)


#: Each backend that can run here, drawn per example (hypothesis does not take the
#: function-scoped ``backend`` fixture).
BACKENDS = st.sampled_from(backends.available())


@contextlib.contextmanager
def _block_sizes(block_bytes, online_row_bytes):
    old = (_blocks.BLOCK_BYTES, _blocks.TILE_BYTES, softmax_kernel.ONLINE_ROW_BYTES)
    _blocks.BLOCK_BYTES = _blocks.TILE_BYTES = block_bytes
    softmax_kernel.ONLINE_ROW_BYTES = online_row_bytes
    try:
        yield
    finally:
        _blocks.BLOCK_BYTES, _blocks.TILE_BYTES, softmax_kernel.ONLINE_ROW_BYTES = old


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.lists(st.integers(0, 9), min_size=0, max_size=2),
    C=st.integers(1, 90),
    axis_pos=st.integers(0, 2),
    dtype=st.sampled_from([np.float64, np.float32, np.float16]),
    kind=st.sampled_from(["index", "probs"]),
    weighted=st.booleans(),
    ls=st.sampled_from([0.0, 0.0, 0.25]),
    ignore=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    block_bytes=st.sampled_from([64, 512, 4096, 1 << 20]),
    online=st.booleans(),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    workers=st.integers(1, 3),
    backend=BACKENDS,
)
def test_softmax_random(seed, batch, C, axis_pos, dtype, kind, weighted, ls, ignore, reduction,
                        block_bytes, online, scale, workers, backend):
    # float16 results overflow (in the plain function too) for losses beyond 65504
    assume(dtype != np.float16 or scale <= 30)
    rng = np.random.default_rng(seed)
    axis_pos = min(axis_pos, len(batch))
    shape = tuple(batch[:axis_pos]) + (C,) + tuple(batch[axis_pos:])
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if not np.isfinite(x).all():
        return
    bshape = tuple(batch)
    kw = dict(label_smoothing=ls)
    if weighted:
        kw["weight"] = rng.random(C) * (rng.random(C) > 0.2)
    if kind == "index":
        t = rng.integers(0, C, bshape)
        if ignore and C > 1:
            kw["ignore_index"] = 0
    else:
        t = rng.random(shape)
        t /= t.sum(axis=axis_pos, keepdims=True)
    with _block_sizes(block_bytes, 64 if online else 4 << 20):
        _check_softmax(x, t, axis_pos, reduction, backend=backend, **kw)
        v, g = ce.softmax_cross_entropy_value_and_grad(x, t, axis=axis_pos, reduction=reduction,
                                                       workers=workers, backend=backend, **kw)
        v1, g1 = ce.softmax_cross_entropy_value_and_grad(x, t, axis=axis_pos,
                                                         reduction=reduction, workers=1,
                                                         backend=backend, **kw)
    assert g.tobytes() == g1.tobytes() and np.asarray(v).tobytes() == np.asarray(v1).tobytes()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.lists(st.integers(1, 12), min_size=0, max_size=3),
    dtype=st.sampled_from([np.float64, np.float32]),
    wshape=st.sampled_from(["none", "full", "last", "scalar"]),
    pw=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    block_bytes=st.sampled_from([16, 256, 1 << 19]),
    scale=st.sampled_from([1.0, 20.0, 1e4]),
    backend=BACKENDS,
)
def test_bce_logits_random(seed, shape, dtype, wshape, pw, reduction, block_bytes, scale,
                           backend):
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    y = rng.random(shape)
    last = shape[-1:] if shape else ()
    kw = {}
    if wshape == "full":
        kw["weight"] = rng.random(shape)
    elif wshape == "last":
        kw["weight"] = rng.random(last)
    elif wshape == "scalar":
        kw["weight"] = 0.5
    if pw:
        kw["pos_weight"] = rng.random(last) * 3
    with _block_sizes(block_bytes, 4 << 20):
        v, g = ce.binary_cross_entropy_with_logits_value_and_grad(x, y, reduction=reduction,
                                                                  backend=backend, **kw)
    assert_loss_close(v, ce.binary_cross_entropy_with_logits(x, y, reduction=reduction, **kw),
                      backend)
    assert_grad_close(g, ce.binary_cross_entropy_with_logits_grad(x, y, reduction=reduction, **kw),
                      _bce_terms(x, y, kw.get("weight"), kw.get("pos_weight"), reduction))
