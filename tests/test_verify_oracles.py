"""The oracles themselves: mpmath written without cancellation, error measures, cases."""

import mpmath
import numpy as np
import pytest

from ce_reference.registry import LOSSES
from ce_reference import cases
from ce_reference.verify import errors, mp, oracles
from ce_reference.verify import tolerances as T


def _case(loss, x, targets, **kw):
    kw.setdefault("reduction", "sum")
    x = np.asarray(x)
    return cases.Case(loss, "test", x.dtype, "test", 0, 0, x, np.asarray(targets), kw,
                       np.ones_like(x))


def test_sigma_700_trap_naive_form_is_wrong_and_oracle_is_right():
    # The trap: sigma(700) - 1 evaluated naively at 50 digits is exactly 0.
    with mpmath.workdps(50):
        naive = 1 / (1 + mpmath.exp(-700)) - 1
    assert naive == 0
    with mpmath.workdps(1000):
        truth = float(-1 / (1 + mpmath.exp(700)))
    assert truth == pytest.approx(-9.85967654375977e-305, rel=1e-14)
    res = mp.oracle(LOSSES["binary_cross_entropy_with_logits"],
                    _case("binary_cross_entropy_with_logits", [700.0], [1.0]))
    assert res.disagreement is None
    assert res.grad[0] == pytest.approx(truth, rel=1e-15)


def test_softmax_oracle_keeps_p_minus_1_below_epsilon():
    # p_0 - 1 = -(e^-40 + e^-50) / (1 + ...): invisible to 1 - p at any float precision.
    res = mp.oracle(LOSSES["softmax_cross_entropy"],
                    _case("softmax_cross_entropy", [[40.0, 0.0, -10.0]], np.array([0])))
    with mpmath.workdps(200):
        e1, e2 = mpmath.exp(-40), mpmath.exp(-50)
        truth = float(-(e1 + e2) / (1 + e1 + e2))
        value = float(mpmath.log1p(e1 + e2))
    assert res.grad[0, 0] == pytest.approx(truth, rel=1e-15)
    assert float(res.value) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_mp_gradient_formulas_match_mpmath_diff(loss):
    """Each gradient formula of the oracle, cross-checked once by mpmath.diff of its value
    (in every differentiated argument)."""
    spec = LOSSES[loss]
    opt = spec.option_sets[-1]                               # the richest option set
    layout = {"elementwise": cases.Layout((7,), None, "none"),
              "classes": cases.Layout((3, 4), -1, "none"),
              "linear": cases.Layout((3, 4), -1, "none", 5)}[spec.structure]
    case = cases.make_case(spec, opt, np.float64, "random", 1, seed=3, layout=layout)
    _, grads = mp.exact_parts(spec, case)
    for name, array, grad in zip(spec.wrt, spec.wrt_arrays(case), spec.grad_parts(grads)):
        if array is None:
            continue
        flat_grad = list(np.asarray(grad, dtype=object).reshape(-1))
        values = np.asarray(array).reshape(-1)
        for i in range(values.size):
            def f(t, i=i, name=name, values=values, shape=np.shape(array)):
                z = np.array([mpmath.mpf(float(v)) for v in values], dtype=object)
                z[i] = t
                z = z.reshape(shape)
                c = case.replace(x=z) if name == "input" else \
                    case.replace(kwargs={**case.kwargs, name: z})
                return mpmath.fsum(mp.exact_parts(spec, c, 300)[0])
            with mpmath.workdps(60):
                d = mpmath.diff(f, mpmath.mpf(float(values[i])))
                assert abs(d - flat_grad[i]) <= mpmath.mpf(10) ** -30 * (1 + abs(d)), \
                    f"{name}[{i}]"


def test_error_measures_ulp_and_operand():
    one = np.array([1.0])
    ulp, opnd = errors.elementwise(one + 2 * np.spacing(1.0), one, one, np.float64)
    assert ulp[0] == 2 and opnd[0] == 2
    # a result of 1e-9 off by 1e-16 is 1e7 ULP but 0.45 eps of an operand of 1
    ulp, opnd = errors.elementwise(np.array([1e-9 + 1e-16]), np.array([1e-9]), one, np.float64)
    assert ulp[0] > 1e6 and opnd[0] == pytest.approx(1e-16 / np.finfo(float).eps)
    # overflow is the correct rounding of a result beyond the float32 range
    ulp, _ = errors.elementwise(np.array([np.inf]), np.array([1e40]), one, np.float32)
    assert ulp[0] == 0
    ulp, _ = errors.elementwise(np.array([np.inf]), np.array([1e37]), one, np.float32)
    assert ulp[0] == np.inf
    ulp, _ = errors.elementwise(np.array([np.nan]), np.array([0.0]), one, np.float64)
    assert ulp[0] == np.inf


def test_inputs_are_reproducible_and_cover_the_ranges():
    spec = LOSSES["softmax_cross_entropy"]
    opt = spec.option_sets[4]
    a = cases.make_case(spec, opt, np.float32, "extreme", 5, seed=11)
    b = cases.make_case(spec, opt, np.float32, "extreme", 5, seed=11)
    c = cases.make_case(spec, opt, np.float32, "extreme", 5, seed=12)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.x, c.x)
    assert a.x.dtype == np.float32
    shapes = {cases.make_case(spec, opt, np.float64, "random", i).x.shape for i in range(6)}
    assert (2, 1000) in shapes and (5, 1) in shapes and (3, 4, 2) in shapes
    xs = np.concatenate([cases.make_case(spec, opt, np.float64, "extreme", i).x.ravel()
                         for i in range(30)])
    assert np.abs(xs).max() >= 1e4
    bce = LOSSES["binary_cross_entropy"]
    clip = [o for o in bce.option_sets if "eps" in o.options][0]
    clip_cases = [cases.make_case(bce, clip, np.float64, "clip", i) for i in range(10)]
    assert any(c.kink is not None and c.kink.any() for c in clip_cases)
    assert any((c.x == 0).any() or (c.x == 1).any() for c in clip_cases)


def test_finite_differences_skip_kinks_and_check_them_one_sided():
    bce = LOSSES["binary_cross_entropy"]
    lo = 1e-7
    case = _case("binary_cross_entropy", [lo, 1 - lo, 0.3, 0.5e-7], [1.0, 0.0, 1.0, 1.0],
                 eps=lo)
    case.kink = np.array([True, True, False, False])
    err, info = oracles.fd_check(bce, case, bce.value, bce.grad)
    assert err < T.TOL_FD and info["kinks"] == 2

    def wrong_at_kink(x, t, **kw):
        g = bce.grad(x, t, **kw)
        return np.where(np.asarray(x) == lo, 5 * g, g)      # convention outside [left, right]

    err, _ = oracles.fd_check(bce, case, bce.value, wrong_at_kink)
    assert err > 0.5 > T.TOL_FD


def test_complex_step_matches_on_logits_and_is_absent_on_probs():
    case = _case("softmax_cross_entropy", [[3.0, -1.0, 0.5]], np.array([2]),
                 label_smoothing=0.2, reduction="mean")
    cs = oracles.complex_step(LOSSES["softmax_cross_entropy"], case)
    g = LOSSES["softmax_cross_entropy"].grad(case.x, case.targets, **case.kwargs)
    np.testing.assert_allclose(cs, g, rtol=1e-14)
    assert oracles.complex_step(LOSSES["binary_cross_entropy"],
                                _case("binary_cross_entropy", [0.3], [1.0])) is None
