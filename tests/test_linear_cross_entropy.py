"""linear_cross_entropy: the chunked loss equals softmax cross-entropy of the materialised
logits, keeps its memory bound, is deterministic, and accepts low-precision inputs exactly.

The verifier (mpmath, jax.grad over all three arguments, finite differences) and the
contract tests cover it through the registry; this file keeps what is specific to it.
"""

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import ce_reference as ce
from ce_reference.losses import linear_cross_entropy as lce_module
from ce_reference.verify import errors

pytestmark = pytest.mark.usefixtures("backend")   # the softmax kernel of each backend

#: Chunked against unchunked, and the chunked loss against softmax cross-entropy of the
#: logits formed by one GEMM: the same operations, summed in another order (row chunks,
#: d_weight accumulated chunk by chunk), in eps of the operands.
CHUNK_EPS = 8.0
#: d_linear_weight across BLAS thread counts (measured 2.7e-3 relative in float32 for
#: OpenBLAS 1 vs 2 threads at (N, H, V) = (2048, 512, 32768) is the GEMM's own summation
#: order; here against the operand |G|^T |h|, which bounds any summation order).
THREADS_EPS = 64.0


def _problem(rng, N=37, H=16, V=53, dtype=np.float64, bias=True, soft=False):
    h = rng.normal(size=(N, H)).astype(dtype)
    W = (rng.normal(size=(V, H)) * 3 / np.sqrt(H)).astype(dtype)
    b = rng.normal(size=V).astype(dtype) if bias else None
    if soft:
        t = rng.dirichlet(np.ones(V), size=N).astype(dtype)
    else:
        t = rng.integers(0, V, N)
    return h, W, t, b


def _case(h, W, t, b, **kw):
    kwargs = {"linear_weight": W, **({} if b is None else {"linear_bias": b}), **kw}
    kwargs.setdefault("reduction", "mean")
    return ce.cases.Case(x=h, targets=t, kwargs=kwargs, domain="features",
                         linear="linear_weight")


def _assert_close(got, want, case, tol, what):
    ops = errors.operands(ce.LOSSES["linear_cross_entropy"], case)
    want_parts = want if isinstance(want, tuple) else (want,)
    got_parts = got if isinstance(got, tuple) else (got,)
    op_parts = ops.grad if isinstance(want, tuple) else (ops.value,)
    for g, w, o in zip(got_parts, want_parts, op_parts):
        if w is None:
            assert g is None
            continue
        err, _, k = errors.combined(np.asarray(g, np.float64), np.asarray(w, np.float64), o,
                                    case.dtype)
        assert err <= tol, f"{what}: {err:.3g} eps at {k}"


OPTIONS = [
    {},
    {"weight": "w", "ignore_index": 3, "label_smoothing": 0.2},
    {"z_loss": 1e-3, "softcap": 5.0},
    {"reduction": "none"},
    {"reduction": "sum", "label_smoothing": 0.1, "z_loss": 0.5},
]


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_softmax_cross_entropy_of_the_logits(options, soft, dtype):
    rng = np.random.default_rng(1)
    h, W, t, b = _problem(rng, dtype=dtype, soft=soft)
    kw = dict(options)
    if kw.get("weight") == "w":
        kw["weight"] = rng.uniform(0.5, 2, W.shape[0]).astype(dtype)
    if soft:
        kw.pop("ignore_index", None)
    logits = h @ W.T + b
    want_value, want_grad = ce.softmax_cross_entropy_value_and_grad(logits, t, **kw)
    want = (want_grad @ W, want_grad.T @ h, want_grad.sum(axis=0, dtype=np.float64))
    case = _case(h, W, t, b, **kw)
    for chunk in (None, 1, 5, 36, 37, 1000):
        value, grads = ce.linear_cross_entropy_value_and_grad(h, W, t, linear_bias=b,
                                                               chunk_size=chunk, **kw)
        _assert_close(value, want_value, case, CHUNK_EPS, f"value, chunk {chunk}")
        _assert_close(grads, want, case, CHUNK_EPS, f"gradients, chunk {chunk}")
        assert value.dtype == dtype and all(g.dtype == dtype for g in grads)
    plain = ce.linear_cross_entropy(h, W, t, linear_bias=b, **kw)
    _assert_close(plain, want_value, case, CHUNK_EPS, "linear_cross_entropy")


def test_leading_batch_axes_and_no_bias():
    rng = np.random.default_rng(2)
    h, W, t, _ = _problem(rng, N=12, bias=False)
    value, (d_h, d_W, d_b) = ce.linear_cross_entropy_value_and_grad(
        h.reshape(3, 4, -1), W, t.reshape(3, 4), reduction="none", chunk_size=5)
    assert value.shape == (3, 4) and d_h.shape == (3, 4, h.shape[1]) and d_b is None
    flat_value, (flat_h, flat_W, _) = ce.linear_cross_entropy_value_and_grad(
        h, W, t, reduction="none", chunk_size=5)
    assert np.array_equal(value.reshape(-1), flat_value)
    assert np.array_equal(d_h.reshape(flat_h.shape), flat_h) and np.array_equal(d_W, flat_W)


def test_same_bits_on_every_run_and_close_across_threads():
    rng = np.random.default_rng(3)
    h, W, t, b = _problem(rng, N=300, H=64, V=500, dtype=np.float32)
    runs = {w: [ce.linear_cross_entropy_value_and_grad(h, W, t, linear_bias=b, workers=w,
                                                        chunk_size=64) for _ in range(3)]
            for w in (1, 2)}
    for w, results in runs.items():
        for value, grads in results[1:]:
            assert np.array_equal(value, results[0][0]), f"workers={w}: value changed"
            for g, g0 in zip(grads, results[0][1]):
                assert np.array_equal(g, g0), f"workers={w}: gradient changed"
    case = _case(h, W, t, b)
    _assert_close(runs[2][0][1], runs[1][0][1], case, THREADS_EPS, "1 vs 2 threads")


@pytest.mark.parametrize("low", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_inputs_are_computed_exactly_in_float64(low):
    rng = np.random.default_rng(4)
    h, W, t, b = _problem(rng)
    h16, W16, b16 = h.astype(low), W.astype(low), b.astype(low)
    value, grads = ce.linear_cross_entropy_value_and_grad(h16, W16, t, linear_bias=b16)
    want_value, want_grads = ce.linear_cross_entropy_value_and_grad(
        h16.astype(np.float64), W16.astype(np.float64), t, linear_bias=b16.astype(np.float64))
    assert value.dtype == np.float64 and all(g.dtype == np.float64 for g in grads)
    assert np.array_equal(value, want_value)
    assert all(np.array_equal(g, w) for g, w in zip(grads, want_grads))


def test_minus_inf_bias_masks_a_class():
    rng = np.random.default_rng(5)
    h, W, t, b = _problem(rng, V=9)
    t = np.where(t == 4, 0, t)
    b[4] = -np.inf
    value, (d_h, d_W, d_b) = ce.linear_cross_entropy_value_and_grad(h, W, t, linear_bias=b,
                                                                     z_loss=0.1, softcap=3.0)
    keep = np.arange(9) != 4
    want = ce.linear_cross_entropy(h, W[keep], np.searchsorted(np.flatnonzero(keep), t),
                                   linear_bias=b[keep], z_loss=0.1, softcap=3.0)
    assert np.isfinite(value) and abs(value - want) <= 8 * np.finfo(np.float64).eps * value
    assert d_b[4] == 0 and not d_W[4].any()


def test_peak_memory_stays_within_the_chunk():
    rng = np.random.default_rng(6)
    N, H, V = 4096, 32, 4096
    h, W, t, _ = _problem(rng, N=N, H=H, V=V, dtype=np.float32, bias=False)
    logits_bytes = N * V * 4
    tracemalloc.start()
    try:
        ce.linear_cross_entropy_value_and_grad(h, W, t, chunk_size=256, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    returned = h.nbytes + W.nbytes
    # one chunk of logits (256 x V float32 = 4 MiB) and the kernel's scratch, against the
    # 64 MiB the unfused composition holds
    assert peak - returned < logits_bytes / 4, (peak, logits_bytes)


def test_default_chunk_keeps_32_mib_of_logits():
    assert lce_module._chunk_rows(None, 65536, np.dtype(np.float32)) * 65536 * 4 \
        <= lce_module.CHUNK_BYTES
    assert lce_module._chunk_rows(None, 10**9, np.dtype(np.float64)) == 1


@pytest.mark.parametrize("bad, match", [
    ({"linear_weight": np.ones((5, 3))}, "linear_weight must have shape"),
    ({"linear_bias": np.ones(4)}, "linear_bias must have shape"),
    ({"linear_bias": np.array([0, 0, np.inf, 0, 0, 0, 0])}, "linear_bias contains NaN or \\+inf"),
    ({"targets": np.zeros(3, np.int64)}, "targets holds class indices"),
    ({"targets": np.zeros((6, 5))}, "targets holds probabilities"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"input": np.ones(())}, "input must have at least one dimension"),
])
def test_bad_arguments_are_named(bad, match):
    args = {"input": np.ones((6, 4)), "linear_weight": np.ones((7, 4)),
            "targets": np.zeros(6, np.int64), "linear_bias": np.zeros(7)}
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ce.linear_cross_entropy_value_and_grad(args.pop("input"), args.pop("linear_weight"),
                                               args.pop("targets"), **args)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(7)
    h, W, t, b = _problem(rng, dtype=np.float32)
    copies = [a.copy() for a in (h, W, t, b)]
    ce.linear_cross_entropy_value_and_grad(h, W, t, linear_bias=b, chunk_size=3)
    ce.linear_cross_entropy_grad(h, W, t, linear_bias=b)
    assert all(np.array_equal(a, c) for a, c in zip((h, W, t, b), copies))
