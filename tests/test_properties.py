"""Property tests (hypothesis, derandomised): invariances the mathematics guarantees."""

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import ce_reference as ce

EPS64 = np.finfo(np.float64).eps
# Rearranging or shifting logits changes rounding only: a few ULP of the
# largest logit magnitude per row.
SHIFT_ATOL_UNITS = 64

logit_arrays = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1,
                                                       max_side=8),
                          elements=st.floats(-50, 50))


@st.composite
def logits_and_index(draw):
    x = draw(logit_arrays)
    t = draw(hnp.arrays(np.int64, x.shape[:1], elements=st.integers(0, x.shape[1] - 1)))
    return x, t


@given(logits_and_index(), st.floats(-100, 100))
def test_translation_invariance(case, shift):
    x, t = case
    a = ce.softmax_cross_entropy(x, t, reduction="none")
    b = ce.softmax_cross_entropy(x + shift, t, reduction="none")
    np.testing.assert_allclose(a, b, rtol=0, atol=SHIFT_ATOL_UNITS * EPS64 * (100 + 50))


@given(logits_and_index(), st.sampled_from([0.0, 0.1, 1.0]))
def test_gradient_rows_sum_to_zero_and_match_onehot_path(case, ls):
    x, t = case
    gi = ce.softmax_cross_entropy_grad(x, t, label_smoothing=ls, reduction="sum")
    np.testing.assert_allclose(gi.sum(axis=1), 0, atol=16 * EPS64)
    onehot = np.eye(x.shape[1])[t]
    go = ce.softmax_cross_entropy_grad(x, onehot, label_smoothing=ls, reduction="sum")
    np.testing.assert_allclose(gi, go, rtol=0, atol=8 * EPS64)
    vi = ce.softmax_cross_entropy(x, t, label_smoothing=ls, reduction="sum")
    vo = ce.softmax_cross_entropy(x, onehot, label_smoothing=ls, reduction="sum")
    np.testing.assert_allclose(vi, vo, rtol=8 * EPS64)


@given(logits_and_index())
def test_axis_is_moveaxis(case):
    x, t = case
    a, ga = ce.softmax_cross_entropy_value_and_grad(x, t, reduction="none")
    b, gb = ce.softmax_cross_entropy_value_and_grad(x.T.copy(), t, axis=0, reduction="none")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ga, gb.T)


@given(logits_and_index(), st.sampled_from([0.0, 0.2]), st.booleans())
def test_ignored_rows_equal_dropping_them(case, ls, weighted):
    x, t = case
    t = t.copy()
    t[::2] = -100
    w = np.linspace(0.5, 2.0, x.shape[1]) if weighted else None
    kept = t != -100
    for red in ("mean", "sum"):
        full = ce.softmax_cross_entropy(x, t, ignore_index=-100, label_smoothing=ls, weight=w,
                                        reduction=red)
        g = ce.softmax_cross_entropy_grad(x, t, ignore_index=-100, label_smoothing=ls, weight=w,
                                          reduction=red)
        assert np.all(g[~kept] == 0)
        if kept.any():
            drop = ce.softmax_cross_entropy(x[kept], t[kept], label_smoothing=ls, weight=w,
                                            reduction=red)
            gd = ce.softmax_cross_entropy_grad(x[kept], t[kept], label_smoothing=ls, weight=w,
                                               reduction=red)
            np.testing.assert_allclose(full, drop, rtol=8 * EPS64)
            np.testing.assert_allclose(g[kept], gd, rtol=0, atol=8 * EPS64)
        else:
            assert np.isnan(full) if red == "mean" else full == 0


@given(hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-800, 800)),
       st.floats(0, 1))
def test_bce_logits_matches_probability_form_where_both_are_accurate(x, y):
    yy = np.full_like(x, y)
    a = ce.binary_cross_entropy_with_logits(x, yy, reduction="none")
    assert np.isfinite(a).all()
    mid = np.abs(x) < 20  # where sigmoid(x) keeps full relative precision in 1 - p too
    p = 1 / (1 + np.exp(-x[mid]))
    b = ce.binary_cross_entropy(p, yy[mid], reduction="none")
    # p carries one rounding (eps/2 absolute), which moves -log(1-p) by eps/(2(1-p)) and
    # -log p by eps/(2p): the probability form can be no closer than that
    tol = 8 * EPS64 * (1 + 1 / np.minimum(p, 1 - p)) + 4 * EPS64 * np.abs(b)
    assert np.all(np.abs(a[mid] - b) <= tol), (x[mid], a[mid], b)


@given(logits_and_index())
def test_mean_is_sum_over_denominator(case):
    x, t = case
    w = np.linspace(0.5, 2.0, x.shape[1])
    s = ce.softmax_cross_entropy(x, t, weight=w, reduction="sum")
    m = ce.softmax_cross_entropy(x, t, weight=w, reduction="mean")
    np.testing.assert_allclose(m, s / w[t].sum(), rtol=2 * EPS64)
