"""One case of the verification protocol through every applicable oracle.

Oracles per case (see :mod:`.oracles`, :mod:`.mp`):

==============  =====================================================  ===========
column          what is compared                                       dtypes
==============  =====================================================  ===========
mpmath          value and gradient vs the exact (mpmath) ones          both
fused           the same for ``NAME_value_and_grad`` (fused kernels)     both
compiled        the same for ``NAME_value_and_grad(backend="numba")``  both
                (compiled kernels; losses with that backend, numba
                installed)
grad ULP        the same gradient error in plain ULP (information)     both
jax             value and gradient vs the JAX twin + ``jax.grad``      both
check_grad      gradient vs central differences of the row losses      float64
                (normwise, relative to the operands)
complex step    gradient vs complex step through the value formulas  both (analytic)
hvp             ``NAME_hvp`` vs the exact ``H v`` (mpmath)                both
hvp jax         ``NAME_hvp`` vs ``jax.jvp(jax.grad)`` (elementwise) and    both
                ``jax.hessian @ v`` (normwise, <= 24 elements)
==============  =====================================================  ===========

Besides the oracles, every case checks the API contract: ``value_and_grad``
(the fused kernels, and the compiled ones where they exist) returns ``(value,
grad)`` of the same shapes, dtypes and NaN/inf pattern as ``NAME`` and
``NAME_grad`` (its numbers are gated by the ``fused`` and ``compiled`` columns
against mpmath), results have the input's dtype and the right shapes, and no
warning is emitted.  The ``fused`` column is the NumPy backend, asked for by
name (``backend="numpy"``) for a loss that has several, so that
``CE_REFERENCE_BACKEND`` does not change what the columns measure.
"""

from __future__ import annotations

import math
import platform
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import backends
from ..cases import Case, batch_shape
from . import errors, mp, oracles
from . import tolerances as T


MEASURES = ("mpmath", "fused", "compiled", "grad ULP", "jax", "check_grad", "complex step",
            "hvp", "hvp jax")
GATES = {
    "mpmath": T.TOL_MP,
    "fused": T.TOL_MP,
    "compiled": T.TOL_MP,
    "jax": T.TOL_JAX,
    "check_grad": {d: T.TOL_FD for d in T.FD_DTYPES},
    "complex step": T.TOL_COMPLEX_STEP,
    "hvp": T.TOL_HVP,
    "hvp jax": T.TOL_HVP_JAX,
}
#: Failing cases kept (with their inputs) per row and measure.
WORST_SHOWN = 3


@dataclass
class CaseResult:
    case: Case
    errors: dict                       # measure -> float (None: not applicable)
    details: dict = field(default_factory=dict)   # measure -> text about the worst element
    problems: list = field(default_factory=list)  # API / oracle problems (always failures)


@dataclass
class Row:
    loss: str
    label: str
    option_set: str
    dtype: str
    region: str
    n: int
    stats: dict                        # measure -> {"worst", "median", "n", "tol"} or None
    ok: bool
    failures: list                     # [{"measure", "error", "case", "detail"}]

    @property
    def key(self):
        return (self.loss, self.option_set, self.dtype, self.region)


def environment() -> dict:
    import scipy

    env = {"python": platform.python_version(), "numpy": np.__version__,
           "scipy": scipy.__version__, "platform": platform.platform()}
    for mod in ("jax", "mpmath", "numba"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - reported, not fatal
            env[mod] = "missing"
    env["mp_dps"] = f"{T.MP_DPS} (extreme inputs re-checked at {T.MP_DPS_EXTREME})"
    return env


# --------------------------------------------------------------------------- one case

def _flat(parts):
    """One float64 vector of the gradient parts (several for a loss with several ``wrt``)."""
    parts = [np.asarray(p, np.float64).reshape(-1) for p in parts if p is not None]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _flat_grad(spec, grad):
    return _flat(spec.grad_parts(grad))


def _kink_mask(spec, case):
    """The clip-boundary flags of the input, padded for the other ``wrt`` parts."""
    if case.kink is None:
        return None
    others = [a for a in spec.wrt_arrays(case)[1:] if a is not None]
    return _flat([case.kink] + [np.zeros(np.shape(a), bool) for a in others]).astype(bool)


def _compare(res, measure, got, want, operand, dtype, what, **kw):
    """Record the worst error of ``got`` against ``want`` under ``measure`` (keeping the
    worst of several comparisons and its detail); returns the worst plain ULP."""
    err, ulp, k = errors.combined(got, want, operand, dtype, **kw)
    if res.errors[measure] is None or err >= res.errors[measure]:
        res.errors[measure] = err
        res.details[measure] = _detail(what, got, want, k)
    return ulp


_NUMBA = "numba"


def _compiled_runs(spec) -> bool:
    """The spec has a compiled backend and numba is installed here."""
    return _NUMBA in backends.available(spec.backends)


def _kernel_results(spec, case):
    """``{column: (value, grad)}`` of ``value_and_grad``: ``fused`` (the NumPy backend, by
    name when the loss has several) and ``compiled`` (where it runs)."""
    if len(spec.backends) == 1:
        return {"fused": spec.call(spec.value_and_grad, case)}
    out = {"fused": spec.call(spec.value_and_grad, case, backend="numpy")}
    if _compiled_runs(spec):
        out["compiled"] = spec.call(spec.value_and_grad, case, backend=_NUMBA)
    return out


def evaluate(spec, case, hvp_fn=None) -> CaseResult:
    """Every applicable oracle on one case (see the module docstring)."""
    res = CaseResult(case, {m: None for m in MEASURES})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = spec.call(spec.value, case)
            grad = spec.call(spec.grad, case)
            kernels = _kernel_results(spec, case)
    except Exception as exc:
        res.problems.append(f"raised {type(exc).__name__}: {exc}")
        for m in GATES:
            res.errors[m] = math.inf
            res.details[m] = res.problems[-1]
        return res
    _check_api(spec, case, value, grad, res)
    got = {"value": np.asarray(value, np.float64), "grad": _flat_grad(spec, grad)}
    for column, both in kernels.items():
        _check_kernel(spec, value, grad, both, res, column)
        got[f"{column} value"] = np.asarray(both[0], np.float64)
        got[f"{column} grad"] = _flat_grad(spec, both[1])
    ops = errors.operands(spec, case, case.v if hvp_fn is not None else None)
    exact = _mpmath(spec, case, got, ops, res)
    out = _jax(spec, case, got, ops, res, want_hvp=hvp_fn is not None)
    if caught:
        _warnings(case, caught, out, exact, res)
    if case.dtype in T.FD_DTYPES:
        _finite_differences(spec, case, res)
    cs = oracles.complex_step(spec, case)
    if cs is not None:
        cs = _flat_grad(spec, cs)
        _compare(res, "complex step", got["grad"], cs, _flat_grad(spec, ops.grad), case.dtype,
                 "grad", mask=np.isnan(cs))
    if hvp_fn is not None:
        _second_order(spec, case, hvp_fn, out, ops, res)
    return res


def _mpmath(spec, case, got, ops, res):
    """The exact oracle: value and gradient of NAME / NAME_grad and of NAME_value_and_grad
    on each backend (``fused``, ``compiled``: held to the same gate, not to bitwise
    equality)."""
    exact = mp.oracle(spec, case)
    if exact is None:
        return None
    g_op, exact_grad = _flat_grad(spec, ops.grad), _flat_grad(spec, exact.grad)
    _compare(res, "mpmath", got["value"], exact.value, ops.value, case.dtype, "value")
    res.errors["grad ULP"] = _compare(res, "mpmath", got["grad"], exact_grad, g_op, case.dtype,
                                      "grad")
    for column in ("fused", "compiled"):
        if f"{column} value" in got:
            _compare(res, column, got[f"{column} value"], exact.value, ops.value, case.dtype,
                     "value")
            _compare(res, column, got[f"{column} grad"], exact_grad, g_op, case.dtype, "grad")
    if exact.disagreement:
        res.problems.append(f"mpmath oracle disagreement: {exact.disagreement}")
    return exact


def _jax(spec, case, got, ops, res, want_hvp):
    """The JAX twin's value and ``jax.grad`` (float64, looser operands: see errors.py)."""
    out = oracles.jax_oracle(spec, case, want_hvp=want_hvp)
    floor = T.JAX_ABS_FLOOR if case.dtype == np.float64 else None
    _compare(res, "jax", got["value"], out["value"], ops.value_jax, case.dtype, "value",
             floor=floor)
    _compare(res, "jax", got["grad"], _flat_grad(spec, out["grad"]),
             _flat_grad(spec, ops.grad_jax), case.dtype, "grad", mask=_kink_mask(spec, case),
             floor=floor)
    return out


def _warnings(case, caught, out, exact, res):
    """A warning is a failure unless the exact result itself overflows the dtype."""
    vals = [out["value"]] + list(np.atleast_1d(out["grad"]) if not isinstance(out["grad"], tuple)
                                 else [g for g in out["grad"] if g is not None])
    if exact is not None:
        vals.append(exact.value)
    big = np.finfo(case.dtype).max
    if not any(np.any(np.abs(np.asarray(a, np.float64)) > big) for a in vals):
        res.problems.append("emitted " + "; ".join(
            sorted({f"{w.category.__name__}: {w.message}" for w in caught})))


def _finite_differences(spec, case, res):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            err, info = oracles.fd_check(spec, case, spec.value, spec.grad)
    except Exception as exc:
        err, info = math.inf, {"error": f"{type(exc).__name__}: {exc}"}
    res.errors["check_grad"] = err
    res.details["check_grad"] = ", ".join(f"{k}={v}" for k, v in info.items())


def _second_order(spec, case, hvp_fn, out, ops, res):
    """NAME_hvp against jax.jvp(jax.grad), the exact H v and (small inputs) jax.hessian."""
    dtype, kink = case.dtype, case.kink
    floor = T.JAX_ABS_FLOOR if dtype == np.float64 else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hv = np.asarray(spec.call(hvp_fn, case, case.v), np.float64)
        if hv.shape != case.x.shape:
            raise ValueError(f"hvp returned shape {hv.shape}, expected {case.x.shape}")
        # JAX gives NaN where the exact Hessian entry overflows and the weight is 0
        # (0 * inf inside JAX; the reference's convention is 0): no oracle there.
        skip = np.isnan(out["hvp"]) if kink is None else (kink | np.isnan(out["hvp"]))
        e1, _, k1 = errors.combined(hv, out["hvp"], ops.hvp_jax, dtype, mask=skip, floor=floor)
        res.errors["hvp jax"] = e1
        res.details["hvp jax"] = _detail("hvp", hv, out["hvp"], k1)
        exact_h = mp.hvp_oracle(spec, case)
        if exact_h is not None:
            e0, _, k0 = errors.combined(hv, exact_h, ops.hvp, dtype, mask=kink)
            res.errors["hvp"], res.details["hvp"] = e0, _detail("hvp", hv, exact_h, k0)
        if "hessian_v" in out:
            _dense_hessian(hv, out, ops, skip, dtype, res)
    except Exception as exc:
        for m in ("hvp", "hvp jax"):
            res.errors[m] = math.inf
            res.details[m] = f"raised {type(exc).__name__}: {exc}"


def _dense_hessian(hv, out, ops, skip, dtype, res):
    """jax.hessian (forward-over-reverse, dense) is only normwise accurate (saturated
    sigmoids: ~eps absolute), so it cross-checks normwise."""
    ref = out["hessian_v"]
    ok_elems = ~skip & np.isfinite(ref) & np.isfinite(hv)
    scale = float(np.max(np.where(ok_elems, np.maximum(np.abs(ref), ops.hvp_jax), 0.0),
                         initial=0.0))
    diff = float(np.max(np.abs(np.where(ok_elems, hv - ref, 0.0)), initial=0.0))
    if diff < T.ABS_FLOOR * np.finfo(dtype).tiny:
        diff = 0.0          # subnormal results carry no relative precision (errors.py)
    rel = 0.0 if diff == 0 else (diff / scale if scale > 0 else math.inf)
    if not rel <= T.TOL_HESSIAN_NORMWISE[dtype]:
        res.problems.append(f"hvp differs from jax.hessian @ v: max |diff| / "
                            f"max operand = {rel:.3g}")


def _check_api(spec, case, value, grad, res):
    """Shapes and dtypes of the results of NAME and NAME_grad."""
    red = case.kwargs["reduction"]
    batch = batch_shape(spec, case)
    want_value_shape = batch if red == "none" else ()
    if np.shape(value) != want_value_shape:
        res.problems.append(f"value has shape {np.shape(value)}, expected {want_value_shape}")
    if np.asarray(value).dtype != case.dtype:
        res.problems.append(f"value has dtype {np.asarray(value).dtype}, expected {case.dtype}")
    parts = spec.grad_parts(grad)
    for name, g, a in zip(spec.wrt, parts, spec.wrt_arrays(case)):
        if (g is None) != (a is None) or (a is not None and np.shape(g) != np.shape(a)):
            res.problems.append(f"gradient for {name} has shape {np.shape(g)}, "
                                f"expected {np.shape(a)}")
        elif g is not None and np.asarray(g).dtype != case.dtype:
            res.problems.append(f"gradient for {name} has dtype {np.asarray(g).dtype}, "
                                f"expected {case.dtype}")


def _check_kernel(spec, value, grad, both, res, column):
    """value_and_grad (the backend of ``column``) agrees with NAME and NAME_grad in shapes,
    dtypes and NaN/inf pattern."""
    parts = spec.grad_parts(grad)
    who = "value_and_grad" if column == "fused" else f"value_and_grad ({column})"
    if not (isinstance(both, tuple) and len(both) == 2 and _same_structure(
            spec, (value, grad), both)):
        res.problems.append(f"{who} differs from (value, grad) in shape or dtype")
    elif not (np.array_equal(np.isnan(both[0]), np.isnan(value))
              and all(np.array_equal(np.isinf(a), np.isinf(b)) for a, b in
                      zip(spec.grad_parts(both[1]), parts) if b is not None)):
        res.problems.append(f"{who} differs from (value, grad) in NaN/inf pattern")


def _same_structure(spec, plain, fused):
    pairs = [(plain[0], fused[0])] + list(zip(spec.grad_parts(plain[1]),
                                              spec.grad_parts(fused[1])))
    return all((a is None) == (b is None) and (a is None or (
        np.shape(a) == np.shape(b) and np.asarray(a).dtype == np.asarray(b).dtype))
        for a, b in pairs)


def _detail(what, got, exact, k):
    if k is None:
        return ""
    got, exact = np.asarray(got).reshape(-1), np.asarray(exact).reshape(-1)
    return f"{what}[{k}]: got {got[k]!r}, expected {exact[k]!r}"
