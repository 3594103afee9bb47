"""Backend selection (``backend=``, ``CE_REFERENCE_BACKEND``, the default), the bridge to
the compiled kernels (errors, dtypes, in place, linear cross-entropy), ``ce-reference
warmup`` and the verifier's ``compiled`` column.

The numbers of each backend are the contract's and the fused tests' (both run on each
backend); this file checks the plumbing."""

from __future__ import annotations

import numpy as np
import pytest

import ce_reference as ce
from ce_reference import backends, cli
from ce_reference.kernels import _blocks
from ce_reference.registry import LOSSES

#: The losses whose value_and_grad takes backend=, with a small valid call of each.
CALLS = {
    "softmax_cross_entropy": lambda x, **kw: ce.softmax_cross_entropy_value_and_grad(
        x, np.array([0, 2, 1]), **kw),
    "binary_cross_entropy_with_logits":
        lambda x, **kw: ce.binary_cross_entropy_with_logits_value_and_grad(
            x, np.full(x.shape, 0.25), **kw),
    "binary_cross_entropy": lambda x, **kw: ce.binary_cross_entropy_value_and_grad(
        1 / (1 + np.exp(-x)), np.full(x.shape, 0.25), **kw),
    "categorical_cross_entropy": lambda x, **kw: ce.categorical_cross_entropy_value_and_grad(
        np.exp(x) / np.exp(x).sum(axis=1, keepdims=True), np.array([0, 2, 1]), **kw),
}
X = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [0.0, 0.25, 3.0]])

needs_numba = pytest.mark.skipif(not backends.compiled_available(),
                                 reason="numba is not installed (the 'fast' extra)")


def test_every_multi_backend_loss_is_listed():
    with_backends = {n for n, s in LOSSES.items() if len(s.backends) > 1}
    assert set(CALLS) <= with_backends
    assert with_backends - set(CALLS) == {"linear_cross_entropy"}


def test_resolution_order(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    default = "numba" if backends.compiled_available() else "numpy"
    assert backends.resolve() == default
    monkeypatch.setenv(backends.ENV_VAR, "")            # empty: no choice
    assert backends.resolve() == default
    monkeypatch.setenv(backends.ENV_VAR, "numpy")
    assert backends.resolve() == "numpy"
    if backends.compiled_available():
        assert backends.resolve("numba") == "numba"     # the argument wins


@pytest.mark.parametrize("name", sorted(CALLS))
def test_bad_backend_names_the_argument(name, monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="backend must be None or one of"):
        CALLS[name](X, backend="cuda")
    with pytest.raises(TypeError, match="backend must be None"):
        CALLS[name](X, backend=1)
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    with pytest.raises(ValueError, match=backends.ENV_VAR):
        CALLS[name](X)
    CALLS[name](X, backend="numpy")                     # the argument wins over the variable


@pytest.mark.parametrize("name", sorted(CALLS))
def test_numba_without_numba_names_the_extra(name, monkeypatch):
    monkeypatch.setattr(backends, "compiled_available", lambda: False)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with pytest.raises(ImportError, match=r"ce_reference\[fast\]"):
        CALLS[name](X, backend="numba")
    monkeypatch.setenv(backends.ENV_VAR, "numba")
    with pytest.raises(ImportError, match=backends.ENV_VAR):
        CALLS[name](X)
    monkeypatch.delenv(backends.ENV_VAR)
    value, grad = CALLS[name](X)                        # the default falls back to NumPy
    assert np.isfinite(value) and grad.shape == X.shape


def test_plain_functions_ignore_a_bad_environment(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "nonsense")
    assert np.isfinite(ce.softmax_cross_entropy(X, np.array([0, 2, 1])))


@needs_numba
@pytest.mark.parametrize("name", sorted(CALLS))
def test_backends_agree(name):
    v0, g0 = CALLS[name](X, backend="numpy")
    v1, g1 = CALLS[name](X, backend="numba")
    np.testing.assert_allclose(v1, v0, rtol=1e-14)
    np.testing.assert_allclose(g1, g0, rtol=1e-14, atol=1e-16)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.float32])
def test_compiled_dtypes_and_in_place(dtype):
    """float16 through a float32 copy (also in place), integers through float64."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((40, 7)) * 3).astype(dtype)
    y = rng.integers(0, 7, 40)
    v0, g0 = ce.softmax_cross_entropy_value_and_grad(x, y, backend="numpy")
    v1, g1 = ce.softmax_cross_entropy_value_and_grad(x, y, backend="numba")
    assert v1.dtype == v0.dtype and g1.dtype == g0.dtype
    tol = 8 * np.finfo(g0.dtype).eps
    np.testing.assert_allclose(g1, g0, rtol=tol, atol=tol * np.max(np.abs(g0)))
    if np.dtype(dtype).kind == "f":
        xin = x.copy()
        v2, g2 = ce.softmax_cross_entropy_value_and_grad(xin, y, out=xin, backend="numba")
        assert g2 is xin and np.array_equal(g2, g1) and v2 == v1


@needs_numba
def test_compiled_errors_are_the_plain_ones():
    x = X.copy()
    x[1, 2] = np.nan
    with pytest.raises(ValueError) as want:
        ce.softmax_cross_entropy(x, np.array([0, 2, 1]))
    with pytest.raises(ValueError) as got:
        ce.softmax_cross_entropy_value_and_grad(x, np.array([0, 2, 1]), backend="numba")
    assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="binary targets"):
        ce.binary_cross_entropy_with_logits_value_and_grad(X, np.full(X.shape, 1.5),
                                                           backend="numba")
    with pytest.raises(ValueError, match="weight"):
        ce.binary_cross_entropy_value_and_grad(np.full(3, 0.5), np.ones(3),
                                               weight=np.array([1.0, -1.0, 1.0]),
                                               backend="numba")


@needs_numba
def test_probability_targets_checked_in_their_own_dtype():
    """float64 targets of float32 logits: 1 + 1e-12 rounds to 1 in float32 but is an error."""
    q = np.full((3, 3), 1 / 3)
    q[0] = [1 + 1e-12, 0.0, 0.0]
    with pytest.raises(ValueError, match="targets must hold probabilities"):
        ce.softmax_cross_entropy_value_and_grad(X.astype(np.float32), q, backend="numba")


@needs_numba
def test_linear_cross_entropy_on_both_backends():
    rng = np.random.default_rng(1)
    h, W, t = rng.standard_normal((20, 8)), rng.standard_normal((30, 8)), rng.integers(0, 30, 20)
    v0, g0 = ce.linear_cross_entropy_value_and_grad(h, W, t, chunk_size=7, backend="numpy")
    v1, g1 = ce.linear_cross_entropy_value_and_grad(h, W, t, chunk_size=7, backend="numba")
    np.testing.assert_allclose(v1, v0, rtol=1e-13)
    for a, b in zip(g1, g0):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_small_calls_allocate_no_block_sized_scratch(monkeypatch):
    """The NumPy kernels' scratch is sized by the rows there are, not by a whole block."""
    sizes = []
    real_empty = np.empty

    def counting_empty(shape, *a, **k):
        arr = real_empty(shape, *a, **k)
        sizes.append(arr.nbytes)
        return arr

    x = np.zeros((32, 10), np.float32)
    monkeypatch.setattr(np, "empty", counting_empty)
    ce.softmax_cross_entropy_value_and_grad(x, np.zeros(32, np.int64), backend="numpy")
    assert max(sizes) <= 64 * x.nbytes


def test_numpy_threads_are_reused(monkeypatch):
    monkeypatch.setattr(_blocks, "SERIAL_ELEMENTS", 0)
    x = np.zeros((4000, 70), np.float32)
    y = np.zeros(4000, np.int64)
    ce.softmax_cross_entropy_value_and_grad(x, y, workers=2, backend="numpy")
    pool = _blocks._POOL["executor"]
    ce.softmax_cross_entropy_value_and_grad(x, y, workers=2, backend="numpy")
    assert pool is not None and _blocks._POOL["executor"] is pool


def test_warmup_command(capsys, monkeypatch):
    if backends.compiled_available():
        assert cli.main(["warmup"]) == 0
        assert "compiled kernels ready" in capsys.readouterr().out
    monkeypatch.setattr(backends, "compiled_available", lambda: False)
    assert cli.main(["warmup"]) == 1
    assert "pip install 'ce_reference[fast]'" in capsys.readouterr().err


def test_verifier_compiled_column(monkeypatch):
    from ce_reference.verify.runner import verify

    rep = verify("binary_cross_entropy", cases=1, seed=1, hvp=False)
    measured = {m for r in rep.rows for m, s in r.stats.items() if s is not None}
    assert rep.ok and "fused" in measured
    assert ("compiled" in measured) == backends.compiled_available()
    monkeypatch.setattr(backends, "compiled_available", lambda: False)
    rep = verify("binary_cross_entropy", cases=1, seed=1, hvp=False)
    assert not any(r.stats["compiled"] for r in rep.rows)
    assert any("compiled column not run" in n for n in rep.notes)
