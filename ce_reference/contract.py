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
  ``workers`` 1, 2 and 3 (bitwise the same); on every backend of the spec
  (:data:`BACKEND_CHECKS` run once per backend, see :func:`check_all`);
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
from types import SimpleNamespace

import numpy as np

from . import backends
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


def _call(spec, fn, case, *extra, **override):
    """``fn`` on ``case`` as the loss takes it, with every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no RuntimeWarning where results are finite
        return spec.call(fn, case, *extra, **override)


def _where(spec, case):
    return f"{spec.name}: {case.describe()}"


def _close(spec, case, got, want, operand, tol, what):
    err, _, k = errors.combined(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                operand, case.dtype)
    assert err <= tol, (f"{what} differs by {err:.3g} eps of the operand (tolerance {tol}) "
                        f"at element {k}; {_where(spec, case)}")


def _parts(spec, grad):
    """``(name, array)`` for each present gradient part (``wrt`` order)."""
    return [(name, g) for name, g in zip(spec.wrt, spec.grad_parts(grad)) if g is not None]


def _same_bits(a, b):
    return np.array_equal(a, b, equal_nan=True)


def _same_results(spec, one, other):
    """Two ``(value, grad)`` pairs hold the same bits."""
    return _same_bits(one[0], other[0]) and all(
        (g is None and h is None) or _same_bits(g, h)
        for g, h in zip(spec.grad_parts(one[1]), spec.grad_parts(other[1])))


def _accepts(fn, keyword):
    return keyword in inspect.signature(fn).parameters


# --------------------------------------------------------------------------- checks

def check_fused(spec, case):
    value, grad = _call(spec, spec.value, case), _call(spec, spec.grad, case)
    fused = _call(spec, spec.value_and_grad, case)
    v2, g2 = fused
    ops = errors.operands(spec, case)
    assert np.shape(v2) == np.shape(value), _where(spec, case)
    _close(spec, case, v2, value, ops.value, FUSED_EPS, "value_and_grad's value")
    for (name, g), (_, g_plain), op in zip(_parts(spec, g2), _parts(spec, grad),
                                           spec.grad_parts(ops.grad)):
        assert np.shape(g) == np.shape(g_plain), f"{name}: {_where(spec, case)}"
        _close(spec, case, g, g_plain, op, FUSED_EPS, f"value_and_grad's gradient ({name})")
    if _accepts(spec.value_and_grad, "workers"):
        for w in (1, 2, 3):
            assert _same_results(spec, _call(spec, spec.value_and_grad, case, workers=w), fused), \
                f"workers={w} changed the result; {_where(spec, case)}"
    if _accepts(spec.value_and_grad, "out"):
        _check_out(spec, case, fused)


def _check_out(spec, case, fused):
    """``out=`` returns the buffer with the same bits, also when it is the input itself."""
    v2, g2 = fused
    out = np.empty_like(g2)
    v3, g3 = _call(spec, spec.value_and_grad, case, out=out)
    assert g3 is out, f"value_and_grad(out=buf) did not return buf; {_where(spec, case)}"
    assert _same_bits(v3, v2) and _same_bits(g3, g2), f"out= changed the result; " \
                                                      f"{_where(spec, case)}"
    if case.x.dtype == g2.dtype:
        x = np.array(case.x, copy=True)
        v4, g4 = spec.call(spec.value_and_grad, case.replace(x=x), out=x)
        assert g4 is x and _same_bits(v4, v2) and _same_bits(g4, g2), \
            f"in place differs; {_where(spec, case)}"


def check_jax(spec, case):
    out = oracles.jax_oracle(spec, case)
    value, grad = _call(spec, spec.value, case), _call(spec, spec.grad, case)
    ops = errors.operands(spec, case)
    floor = T.JAX_ABS_FLOOR if case.dtype == np.float64 else None
    tol = T.TOL_JAX[case.dtype]
    compared = [("value", value, out["value"], ops.value_jax, None)]
    for (name, g), want, op in zip(_parts(spec, grad), _present(spec.grad_parts(out["grad"])),
                                   _present(spec.grad_parts(ops.grad_jax))):
        compared.append((f"gradient ({name})", g, want, op,
                         case.kink if name == "input" else None))
    for what, got, want, op, mask in compared:
        err, _, k = errors.combined(np.asarray(got, np.float64), want, op, case.dtype,
                                    mask=mask, floor=floor)
        assert err <= tol, (f"JAX twin {what} differs by {err:.3g} eps (tolerance {tol}) at "
                            f"element {k}; {_where(spec, case)}")
    _check_jvp(spec, case, grad, ops, tol)


def _present(parts):
    return [p for p in parts if p is not None]


def _check_jvp(spec, case, grad, ops, tol):
    """jax.jvp of the summed twin along a direction in every ``wrt`` array is <grad, v>."""
    jax = oracles._jax()
    rng = np.random.default_rng([case.seed, case.index, 11])
    names = [n for n, a in zip(spec.wrt, spec.wrt_arrays(case)) if a is not None]
    points = [np.asarray(a, np.float64) for a in spec.wrt_arrays(case) if a is not None]
    tangents = [case.v.astype(np.float64) if n == "input" else rng.standard_normal(p.shape)
                for n, p in zip(names, points)]
    if case.kink is not None:
        tangents[0] = np.where(case.kink, 0.0, tangents[0])
    base = case.replace(x=case.x.astype(np.float64), kwargs={
        k: (np.asarray(a, np.float64) if isinstance(a, np.ndarray) else a)
        for k, a in case.kwargs.items()})
    if base.targets.dtype.kind not in "iu":
        base = base.replace(targets=np.asarray(base.targets, np.float64))

    def total(*diffs):
        changed = dict(zip(names, diffs))
        # spec.call reads only x, targets and kwargs (a Case would convert the tracers)
        at = SimpleNamespace(x=changed.pop("input", base.x), targets=base.targets,
                             kwargs=base.kwargs)
        return jax.numpy.sum(spec.call(spec.twin, at, **changed))

    _, tangent = jax.jvp(total, tuple(points), tuple(tangents))
    g64 = [np.asarray(g, np.float64) for _, g in _parts(spec, grad)]
    ops_grad = _present(spec.grad_parts(ops.grad_jax))
    inner = sum(float(np.sum(g * t)) for g, t in zip(g64, tangents))
    scale = sum(float(np.sum(np.abs(o * t))) for o, t in zip(ops_grad, tangents)) or 1.0
    diff = abs(float(tangent) - inner)
    assert diff <= tol * np.finfo(case.dtype).eps * scale + T.JAX_ABS_FLOOR, \
        f"jax.jvp differs from <grad, v> by {diff:.3g} (scale {scale:.3g}); {_where(spec, case)}"


def check_hvp(spec, case):
    if spec.hvp is None:
        return
    out = oracles.jax_oracle(spec, case, want_hvp=True)
    hv = np.asarray(_call(spec, spec.hvp, case, case.v), np.float64)
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
    value, grad = _call(spec, spec.value, case), _call(spec, spec.grad, case)
    assert np.asarray(value).dtype == case.dtype, \
        f"value not in the input's dtype {case.dtype}; {_where(spec, case)}"
    assert np.shape(value) == (batch if red == "none" else ()), _where(spec, case)
    for (name, g), array in zip(_parts(spec, grad), _present(spec.wrt_arrays(case))):
        assert np.asarray(g).dtype == case.dtype, \
            f"gradient ({name}) not in the input's dtype {case.dtype}; {_where(spec, case)}"
        assert np.shape(g) == np.shape(array), f"gradient ({name}): {_where(spec, case)}"
    _check_half(spec, case)


def _check_half(spec, case):
    """float16 arguments: float16 results (``package`` policy, computed in float32) or
    float64 ones (``exact`` policy: the exact values of the half-precision arguments)."""
    half = case.replace(x=case.x.astype(np.float16), kwargs={
        k: (a.astype(np.float16) if k in spec.wrt and isinstance(a, np.ndarray) else a)
        for k, a in case.kwargs.items()})
    try:
        with np.errstate(over="ignore"):      # float16 rounds huge logits to inf: rejected
            result = spec.call(spec.value, half)
    except ValueError as err:                 # an option or value invalid in float16
        assert "float16" in str(err) or "inf" in str(err), str(err)
        return
    want = np.float16 if spec.dtype_policy == "package" else np.float64
    assert np.asarray(result).dtype == want, \
        f"float16 in, {np.asarray(result).dtype} out ({spec.dtype_policy} dtype policy)"


def check_inputs_unmodified(spec, case):
    arrays = [case.x, case.targets, case.v] + [a for a in case.kwargs.values()
                                               if isinstance(a, np.ndarray)]
    before = [np.array(a, copy=True) for a in arrays]
    for fn, extra in ((spec.value, ()), (spec.grad, ()), (spec.value_and_grad, ()),
                      (spec.hvp, (case.v,))):
        if fn is not None:
            _call(spec, fn, case, *extra)
    for a, b in zip(arrays, before):
        assert np.array_equal(a, b, equal_nan=True), f"an argument was modified; " \
                                                     f"{_where(spec, case)}"


def check_reductions(spec, case):
    if not {"none", "sum", "mean"} <= set(spec.reductions):
        return
    v_none, g_none = _call(spec, spec.value_and_grad, case, reduction="none")
    v_sum, g_sum = _call(spec, spec.value_and_grad, case, reduction="sum")
    v_mean, g_mean = _call(spec, spec.value_and_grad, case, reduction="mean")
    _close(spec, case, np.sum(np.asarray(v_none, np.float64)), v_sum,
           np.sum(np.abs(np.asarray(v_none, np.float64))), FUSED_EPS, "sum of 'none'")
    assert _same_results(spec, (0, g_none), (0, g_sum)), \
        f"the gradient of 'none' is not the gradient of 'sum'; {_where(spec, case)}"
    total = float(v_sum)
    if total == 0 or not np.isfinite(float(v_mean)) or not np.isfinite(total):
        return
    if any(o.own_mean and case.kwargs.get(o.name, o.default) != o.default
           for o in spec.options):
        return              # a term with its own mean denominator: no single scale
    s = float(v_mean) / total                        # the mean's 1/denominator
    ops = errors.operands(spec, case)
    for (name, gm), (_, gs), op in zip(_parts(spec, g_mean), _parts(spec, g_sum),
                                       _present(spec.grad_parts(ops.grad))):
        want = np.asarray(gs, np.float64) * s
        scaled_op = np.abs(want) + np.abs(op) * s
        # a sum's gradient may overflow where the mean's does not: compare the finite ones
        finite = np.isfinite(want)
        _close(spec, case, np.where(finite, gm, 0), np.where(finite, want, 0),
               np.where(finite, scaled_op, 0), REDUCTION_EPS + FUSED_EPS,
               f"'mean' gradient ({name})")


def _parameter_names(spec):
    """The signature's names of the input and of the targets (``positional`` order)."""
    names = [p.name for p in inspect.signature(spec.value).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD]
    return names[spec.positional.index("input")], names[spec.positional.index("targets")]


def _expect(spec, fn, exc, fragment, case):
    try:
        spec.call(fn, case)
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
    input_name, targets_name = _parameter_names(spec)
    bad_x = np.array(case.x, dtype=np.float64, copy=True)
    bad_x.reshape(-1)[0] = np.nan
    wrong_targets = np.asarray(case.targets)[..., :0] if np.ndim(case.targets) else \
        np.zeros(3, np.asarray(case.targets).dtype)
    bad = [(ValueError, input_name, case.replace(x=bad_x)),
           (TypeError, input_name, case.replace(x=np.array(["a"] * case.x.size))),
           (ValueError, targets_name, case.replace(targets=wrong_targets)),
           (ValueError, "reduction", case.replace(kwargs={**case.kwargs, "reduction": "avg"}))]
    for option in spec.options:
        for value, exc in option.invalid:
            wrong = value(case.x) if callable(value) else value
            bad.append((exc, option.name, case.replace(kwargs={**case.kwargs,
                                                               option.name: wrong})))
    for fn in (spec.value, spec.grad, spec.value_and_grad):
        for exc, fragment, bad_case in bad:
            _expect(spec, fn, exc, fragment, bad_case)


CHECKS = (check_fused, check_jax, check_hvp, check_dtypes, check_inputs_unmodified,
          check_reductions)
#: The checks that call ``value_and_grad``: run on each backend of a loss.
BACKEND_CHECKS = (check_fused, check_inputs_unmodified, check_reductions)


def spec_backends(spec) -> tuple:
    """The backends of ``spec`` that can run here (the compiled one needs numba)."""
    return backends.available(spec.backends)


def check_all(spec, cases=None):
    """Run every check on ``cases`` (default :func:`contract_cases`) and the error checks
    once; the :data:`BACKEND_CHECKS` and the error checks on each backend of the spec (as
    the default backend, :func:`ce_reference.backends.default`)."""
    cases = contract_cases(spec) if cases is None else cases
    for case in cases:
        for check in CHECKS:
            if check not in BACKEND_CHECKS:
                check(spec, case)
    for name in spec_backends(spec):
        with backends.default(name):
            for case in cases:
                for check in BACKEND_CHECKS:
                    check(spec, case)
            check_errors(spec, error_case(spec))


def error_case(spec):
    """A small, valid case with index targets where the loss has them (for check_errors)."""
    opt = next((o for o in spec.option_sets if o.targets == "index"), spec.option_sets[0])
    richest = max((o for o in spec.option_sets if o.targets == opt.targets),
                  key=lambda o: len(o.options))
    layout = layouts(spec, "random")[1]
    return make_case(spec, richest, np.float64, "random", 1, seed=7, layout=layout)
