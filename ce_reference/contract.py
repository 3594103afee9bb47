r"""The contract every registered loss keeps, as checks the test suite runs for each spec.

Each check takes a :class:`~ce_reference.spec.LossSpec` and a verifier case
(:func:`contract_cases`) and raises ``AssertionError`` with a readable message
when the loss breaks the contract.  ``tests/test_contract.py`` runs every
check on every registered loss; a loss defined elsewhere is checked the same
way (``tests/test_extensibility.py`` does it for a loss defined in the test).

What is checked:

* :func:`check_fused` -- ``value_and_grad`` equals ``(value, grad)`` within
  :data:`FUSED_EPS` eps of the operands, with ``out=`` (the buffer is
  returned, bitwise the same numbers), in place over the input, and for
  ``workers`` 1, 2 and 3 (bitwise the same);
* :func:`check_jax` -- the JAX twin's value, ``jax.grad`` and ``jax.jvp`` agree
  with the NumPy value, gradient and the directional derivative
  ``<grad, v>`` (the verifier's JAX gate);
* :func:`check_hvp` -- ``NAME_hvp`` agrees with ``jax.jvp(jax.grad(twin))``;
* :func:`check_dtypes` -- results in the input's dtype and shapes (float16 in,
  float16 out);
* :func:`check_inputs_unmodified` -- no entry point writes into its arguments;
* :func:`check_reductions` -- ``none`` summed is ``sum``, the gradient of
  ``none`` is the gradient of ``sum``, ``mean`` is ``sum`` times one scale for
  value and gradient alike (unless an option adds a term with a ``mean``
  denominator of its own, ``Option.own_mean``);
* :func:`check_errors` -- bad input values, bad targets, a bad ``reduction`` and
  every option's ``invalid`` examples raise the declared error with a message
  naming the argument, at every entry point.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np

from .cases import DTYPES, batch_shape, layouts, make_case
from .verify import errors, oracles
from .verify import tolerances as T

#: Fused kernels against the plain functions, in min(ULP, eps of the operand): both
#: are a few roundings from the exact result (<= 2.7 measured against mpmath by the
#: verifier), evaluated in different orders.
FUSED_EPS = 8.0
#: ``mean`` against ``sum`` times its scale: one extra rounding of the scale.
REDUCTION_EPS = 4.0


def contract_cases(spec, dtypes=DTYPES, per_set=1, seed=20261201):
    """A few verifier cases of every option set, dtype and region of ``spec``."""
    out = []
    for opt in spec.option_sets:
        for dtype in dtypes:
            for region in opt.regions:
                for i in range(per_set):
                    out.append(make_case(spec, opt, dtype, region, i, seed))
    return out


def _call(fn, case, *extra, **override):
    kw = dict(case.kwargs)
    kw.update(override)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no RuntimeWarning where results are finite
        return fn(case.x, case.targets, *extra, **kw)


def _where(spec, case):
    return f"{spec.name}: {case.describe()}"


def _close(spec, case, got, want, operand, tol, what):
    err, _, k = errors.combined(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                operand, case.dtype)
    assert err <= tol, (f"{what} differs by {err:.3g} eps of the operand (tolerance {tol}) "
                        f"at element {k}; {_where(spec, case)}")


# --------------------------------------------------------------------------- checks

def check_fused(spec, case):
    value, grad = _call(spec.value, case), _call(spec.grad, case)
    v2, g2 = _call(spec.value_and_grad, case)
    ops = errors.operands(spec, case)
    assert np.shape(v2) == np.shape(value) and np.shape(g2) == np.shape(grad), _where(spec, case)
    _close(spec, case, v2, value, ops.value, FUSED_EPS, "value_and_grad's value")
    _close(spec, case, g2, grad, ops.grad, FUSED_EPS, "value_and_grad's gradient")
    out = np.empty_like(g2)
    v3, g3 = _call(spec.value_and_grad, case, out=out)
    assert g3 is out, f"value_and_grad(out=buf) did not return buf; {_where(spec, case)}"
    for w in (1, 2, 3):
        vw, gw = _call(spec.value_and_grad, case, workers=w)
        assert np.array_equal(vw, v2, equal_nan=True) and np.array_equal(gw, g2, equal_nan=True), \
            f"workers={w} changed the result; {_where(spec, case)}"
    assert np.array_equal(v3, v2, equal_nan=True) and np.array_equal(g3, g2, equal_nan=True), \
        f"out= changed the result; {_where(spec, case)}"
    if case.x.dtype == g2.dtype:
        x = np.array(case.x, copy=True)
        v4, g4 = spec.value_and_grad(x, case.targets, out=x, **case.kwargs)
        assert g4 is x and np.array_equal(v4, v2, equal_nan=True) and \
            np.array_equal(g4, g2, equal_nan=True), f"in place differs; {_where(spec, case)}"


def check_jax(spec, case):
    jax = oracles._jax()
    out = oracles.jax_oracle(spec, case)
    value, grad = _call(spec.value, case), _call(spec.grad, case)
    ops = errors.operands(spec, case)
    floor = T.JAX_ABS_FLOOR if case.dtype == np.float64 else None
    tol = T.TOL_JAX[case.dtype]
    for what, got, want, op, mask in (("value", value, out["value"], ops.value_jax, None),
                                      ("gradient", grad, out["grad"], ops.grad_jax, case.kink)):
        err, _, k = errors.combined(np.asarray(got, np.float64), want, op, case.dtype,
                                    mask=mask, floor=floor)
        assert err <= tol, (f"JAX twin {what} differs by {err:.3g} eps (tolerance {tol}) at "
                            f"element {k}; {_where(spec, case)}")
    # jax.jvp of the summed twin in the direction v: the directional derivative <grad, v>.
    x, v = case.x.astype(np.float64), case.v.astype(np.float64)
    kw = {k: (np.asarray(a, np.float64) if isinstance(a, np.ndarray) else a)
          for k, a in case.kwargs.items()}
    if case.kink is not None:
        v = np.where(case.kink, 0.0, v)
    t = case.targets if np.asarray(case.targets).dtype.kind in "iu" else \
        np.asarray(case.targets, np.float64)
    _, tangent = jax.jvp(lambda z: jax.numpy.sum(spec.twin(z, t, **kw)), (x,), (v,))
    g64 = np.asarray(_call(spec.grad, case), np.float64)
    scale = float(np.sum(np.abs(ops.grad_jax * v))) or 1.0
    diff = abs(float(tangent) - float(np.sum(g64 * v)))
    assert diff <= tol * np.finfo(case.dtype).eps * scale + T.JAX_ABS_FLOOR, \
        f"jax.jvp differs from <grad, v> by {diff:.3g} (scale {scale:.3g}); {_where(spec, case)}"


def check_hvp(spec, case):
    if spec.hvp is None:
        return
    out = oracles.jax_oracle(spec, case, want_hvp=True)
    hv = np.asarray(_call(spec.hvp, case, case.v), np.float64)
    assert hv.shape == case.x.shape, f"hvp has shape {hv.shape}; {_where(spec, case)}"
    ops = errors.operands(spec, case, case.v)
    skip = np.isnan(out["hvp"]) if case.kink is None else (case.kink | np.isnan(out["hvp"]))
    floor = T.JAX_ABS_FLOOR if case.dtype == np.float64 else None
    err, _, k = errors.combined(hv, out["hvp"], ops.hvp_jax, case.dtype, mask=skip, floor=floor)
    assert err <= T.TOL_HVP_JAX[case.dtype], (
        f"hvp differs from jax.jvp(jax.grad) by {err:.3g} eps at element {k}; "
        f"{_where(spec, case)}")


def check_dtypes(spec, case):
    batch = batch_shape(spec, case)
    red = case.kwargs["reduction"]
    value, grad = _call(spec.value, case), _call(spec.grad, case)
    assert np.asarray(value).dtype == case.dtype and np.asarray(grad).dtype == case.dtype, \
        f"results not in the input's dtype {case.dtype}; {_where(spec, case)}"
    assert np.shape(value) == (batch if red == "none" else ()), _where(spec, case)
    assert np.shape(grad) == case.x.shape, _where(spec, case)
    try:
        with np.errstate(over="ignore"):      # float16 rounds huge logits to inf: rejected
            half = spec.value(case.x.astype(np.float16), case.targets, **case.kwargs)
    except ValueError as err:                 # an option or value invalid in float16
        assert "float16" in str(err) or "inf" in str(err), str(err)
        return
    assert np.asarray(half).dtype == np.float16, f"float16 in, {np.asarray(half).dtype} out"


def check_inputs_unmodified(spec, case):
    arrays = [case.x, case.targets, case.v] + [a for a in case.kwargs.values()
                                               if isinstance(a, np.ndarray)]
    before = [np.array(a, copy=True) for a in arrays]
    for fn, extra in ((spec.value, ()), (spec.grad, ()), (spec.value_and_grad, ()),
                      (spec.hvp, (case.v,))):
        if fn is not None:
            _call(fn, case, *extra)
    for a, b in zip(arrays, before):
        assert np.array_equal(a, b, equal_nan=True), f"an argument was modified; " \
                                                     f"{_where(spec, case)}"


def check_reductions(spec, case):
    if not {"none", "sum", "mean"} <= set(spec.reductions):
        return
    v_none, g_none = _call(spec.value_and_grad, case, reduction="none")
    v_sum, g_sum = _call(spec.value_and_grad, case, reduction="sum")
    v_mean, g_mean = _call(spec.value_and_grad, case, reduction="mean")
    ops = errors.operands(spec, case)
    _close(spec, case, np.sum(np.asarray(v_none, np.float64)), v_sum,
           np.sum(np.abs(np.asarray(v_none, np.float64))), FUSED_EPS, "sum of 'none'")
    assert np.array_equal(g_none, g_sum, equal_nan=True), \
        f"the gradient of 'none' is not the gradient of 'sum'; {_where(spec, case)}"
    total = float(v_sum)
    if total == 0 or not np.isfinite(float(v_mean)) or not np.isfinite(total):
        return
    if any(o.own_mean and case.kwargs.get(o.name, o.default) != o.default
           for o in spec.options):
        return              # a term with its own mean denominator: no single scale
    s = float(v_mean) / total                        # the mean's 1/denominator
    want = np.asarray(g_sum, np.float64) * s
    op = np.abs(want) + np.abs(ops.grad) * s
    # a sum's gradient may overflow where the mean's does not: compare the finite ones
    finite = np.isfinite(want)
    _close(spec, case, np.where(finite, g_mean, 0), np.where(finite, want, 0),
           np.where(finite, op, 0), REDUCTION_EPS + FUSED_EPS, "'mean' gradient")


def _first_parameters(fn):
    names = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD]
    return names[0], names[1]


def _expect(fn, exc, fragment, spec, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as err:
        assert fragment in str(err), (f"{fn.__name__} raised {type(err).__name__}({err}) "
                                      f"without naming {fragment!r}")
        return
    except Exception as err:  # the wrong kind of error
        raise AssertionError(f"{fn.__name__} raised {type(err).__name__}({err}), expected "
                             f"{exc.__name__} naming {fragment!r}") from None
    raise AssertionError(f"{fn.__name__} accepted a bad {fragment} ({spec.name})")


def check_errors(spec, case):
    """Bad values of every argument raise a named ValueError/TypeError at every entry point."""
    input_name, targets_name = _first_parameters(spec.value)
    entry_points = [spec.value, spec.grad, spec.value_and_grad]
    bad_x = np.array(case.x, dtype=np.float64, copy=True)
    bad_x.reshape(-1)[0] = np.nan
    wrong_targets = np.asarray(case.targets)[..., :0] if np.ndim(case.targets) else \
        np.zeros(3, np.asarray(case.targets).dtype)
    for fn in entry_points:
        _expect(fn, ValueError, input_name, spec, bad_x, case.targets, **case.kwargs)
        _expect(fn, TypeError, input_name, spec, np.array(["a"] * case.x.size), case.targets,
                **case.kwargs)
        _expect(fn, ValueError, targets_name, spec, case.x, wrong_targets, **case.kwargs)
        _expect(fn, ValueError, "reduction", spec, case.x, case.targets,
                **{**case.kwargs, "reduction": "avg"})
        for option in spec.options:
            for value, exc in option.invalid:
                bad = value(case.x) if callable(value) else value
                _expect(fn, exc, option.name, spec, case.x, case.targets,
                        **{**case.kwargs, option.name: bad})


CHECKS = (check_fused, check_jax, check_hvp, check_dtypes, check_inputs_unmodified,
          check_reductions)


def check_all(spec, cases=None):
    """Run every check on ``cases`` (default :func:`contract_cases`) and the error checks once."""
    cases = contract_cases(spec) if cases is None else cases
    for case in cases:
        for check in CHECKS:
            check(spec, case)
    check_errors(spec, error_case(spec))


def error_case(spec):
    """A small, valid case with index targets where the loss has them (for check_errors)."""
    opt = next((o for o in spec.option_sets if o.targets == "index"), spec.option_sets[0])
    richest = max((o for o in spec.option_sets if o.targets == opt.targets),
                  key=lambda o: len(o.options))
    layout = layouts(spec, "random")[1]
    return make_case(spec, richest, np.float64, "random", 1, seed=7, layout=layout)
