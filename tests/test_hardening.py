"""Hostile but plausible inputs to the losses themselves: float options, index targets of
any integer dtype, masked arrays, extreme values without warnings, overflowing weight
sums, and in-place calls that fail (each found by trying, and pinned here)."""

import warnings

import numpy as np
import pytest

import ce_reference as ce

ENTRY_POINTS = ("", "_grad", "_value_and_grad")


def _all(name, *args, **kw):
    return [getattr(ce, name + suffix)(*args, **kw) for suffix in ENTRY_POINTS]


@pytest.mark.parametrize("option,bad", [("label_smoothing", "0.1"), ("label_smoothing", True),
                                        ("z_loss", "1e-4"), ("z_loss", True),
                                        ("softcap", "30"), ("softcap", True)])
def test_a_bool_or_string_for_a_float_option_is_a_type_error(option, bad):
    for suffix in ENTRY_POINTS:
        with pytest.raises(TypeError, match=option):
            getattr(ce, "softmax_cross_entropy" + suffix)(np.zeros((2, 3)), np.array([0, 1]),
                                                          **{option: bad})


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_uint64_targets_are_reported_as_passed(value):
    t = np.array([value, 0], np.uint64)
    for suffix in ENTRY_POINTS:
        with pytest.raises(ValueError, match=f"class index {value}, expected"):
            getattr(ce, "softmax_cross_entropy" + suffix)(np.zeros((2, 3)), t)


def test_masked_arrays_are_rejected_with_advice():
    x, t = np.array([[0.3, 1.0], [2.0, -1.0]]), np.array([0, 1])
    masked = np.ma.masked_array(x, mask=[[0, 0], [1, 1]])
    for suffix in ENTRY_POINTS:
        with pytest.raises(TypeError, match="logits is a numpy.ma.MaskedArray.*ignore_index"):
            getattr(ce, "softmax_cross_entropy" + suffix)(masked, t)
        with pytest.raises(TypeError, match="targets is a numpy.ma.MaskedArray"):
            getattr(ce, "binary_cross_entropy_with_logits" + suffix)(
                x, np.ma.masked_array(np.ones_like(x), mask=[[0, 1], [0, 0]]))
        with pytest.raises(TypeError, match="weight is a numpy.ma.MaskedArray"):
            getattr(ce, "softmax_cross_entropy" + suffix)(
                x, t, weight=np.ma.masked_array([1.0, 2.0], mask=[0, 1]))


EXTREMES = [
    ("softmax_cross_entropy", np.array([[1e308, -1e308]]), np.array([0]), {}),
    ("softmax_cross_entropy", np.array([[1e308, -1e308]]), np.array([1]), {}),
    ("softmax_cross_entropy", np.array([[3.4e38, -3.4e38]], np.float32), np.array([1]),
     {"label_smoothing": 0.1}),
    ("softmax_cross_entropy", np.array([[3.4e38, -3.4e38]], np.float32),
     np.array([[0.5, 0.5]], np.float32), {}),
    ("softmax_cross_entropy", np.array([[1e308, -1e308]]), np.array([1]), {"z_loss": 0.1}),
    ("binary_cross_entropy_with_logits", np.array([3.4e38, -3.4e38], np.float32),
     np.array([0.0, 1.0], np.float32), {"pos_weight": np.float32([3.0])}),
    ("binary_cross_entropy", np.array([5e-324, 0.5]), np.array([1.0, 0.0]), {}),
    ("categorical_cross_entropy", np.array([[5e-324, 1.0]]), np.array([0]), {}),
]


@pytest.mark.parametrize("name,x,t,kw", EXTREMES, ids=[f"{e[0]}-{i}" for i, e in enumerate(EXTREMES)])
def test_extreme_valid_inputs_raise_no_warning(name, x, t, kw):
    """Right results (finite, or inf where the exact result is beyond the dtype's range)
    without a RuntimeWarning, at every entry point and the HVP."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = _all(name, x, t, **kw)
        getattr(ce, name + "_hvp")(x, t, np.ones_like(x), **kw)
    assert not np.isnan(np.asarray(results[0], np.float64)).any()


def test_weights_whose_sum_overflows_give_the_right_mean():
    x, t = np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([0, 1])
    w = np.array([1e308, 1e308])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad, (fv, fg) = _all("softmax_cross_entropy", x, t, weight=w)
    np.testing.assert_allclose(value, ce.softmax_cross_entropy(x, t), rtol=1e-15)
    np.testing.assert_allclose(grad, ce.softmax_cross_entropy_grad(x, t), rtol=1e-15)
    np.testing.assert_allclose(grad[0], [-0.25, 0.25], rtol=1e-15)
    assert fv == value and np.array_equal(fg, grad)


@pytest.mark.parametrize("name,make", [
    ("softmax_cross_entropy", lambda rng: (rng.normal(size=(4096, 64)), np.zeros(4096, int))),
    ("softmax_cross_entropy", lambda rng: (rng.normal(size=(20000, 5)), np.zeros(20000, int))),
    ("binary_cross_entropy_with_logits", lambda rng: (rng.normal(size=300000),
                                                      np.zeros(300000))),
    ("categorical_cross_entropy", lambda rng: (rng.dirichlet(np.ones(64), 4096),
                                               np.zeros(4096, int))),
])
def test_in_place_call_with_a_late_invalid_value_leaves_the_input_untouched(rng, name, make):
    x, t = make(rng)
    x.reshape(-1)[-2] = np.nan
    before = x.copy()
    with pytest.raises(ValueError, match="NaN"):
        getattr(ce, name + "_value_and_grad")(x, t, out=x)
    np.testing.assert_array_equal(x, before)
