"""Run the verification protocol: every case through every applicable oracle.

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
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import backends, registry
from ..cases import Case, DTYPES, batch_shape, layouts, make_case, rows as case_rows
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
# Default sweep: total cases, spread evenly over the rows (each row gets at
# least one case per layout).  Chosen so the default run stays well under two
# minutes on two cores; see docs/verification.md for the measurement.
DEFAULT_CASES = 600
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


@dataclass
class Report:
    rows: list
    seed: int
    cases: int
    elapsed: float
    environment: dict
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def worst(self) -> dict:
        """Worst error per measure over all rows, split by dtype."""
        out = {}
        for r in self.rows:
            for m, s in r.stats.items():
                if s is None:
                    continue
                key = f"{m} [{r.dtype}]"
                out[key] = max(out.get(key, 0.0), s["worst"])
        return out

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "cases": self.cases,
            "elapsed_seconds": round(self.elapsed, 2),
            "environment": self.environment,
            "notes": self.notes,
            "measures": {m: _measure_doc(m) for m in MEASURES},
            "worst": self.worst(),
            "rows": [
                {"loss": r.loss, "label": r.label, "option_set": r.option_set,
                 "dtype": r.dtype,
                 "region": r.region, "n": r.n, "ok": r.ok, "stats": r.stats,
                 "failures": r.failures}
                for r in self.rows
            ],
        }


def _measure_doc(m):
    return {
        "mpmath": "max over value and gradient elements of min(ULP, error/(eps*operand)) vs mpmath",
        "fused": "as mpmath, for the fused kernels of NAME_value_and_grad",
        "compiled": "as mpmath, for NAME_value_and_grad(backend='numba') (the compiled "
                    "kernels)",
        "grad ULP": "max gradient error in ULP vs mpmath (information only, gates nothing: "
                    "large where p - y cancels)",
        "jax": "as mpmath, against the JAX twin and jax.grad in float64",
        "check_grad": "||g - fd|| / ||operands||, fd the central differences of the per-row "
                      "losses (scipy.optimize.approx_fprime with steps +h and -h), over "
                      "the resolvable elements; kink points checked one-sided; float64 only",
        "complex step": "as mpmath, against Im f(x + ih)/h (analytic losses)",
        "hvp": "as mpmath, NAME_hvp against the exact (mpmath) H v",
        "hvp jax": "as jax, NAME_hvp against jax.jvp(jax.grad); jax.hessian @ v checked "
                   "normwise on small inputs (a failure is a contract failure)",
    }[m]


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


def resolve_specs(losses=None, specs=None):
    """Specs to verify: ``specs`` as given, else the named (or all) registered losses."""
    if specs is not None:
        return list(specs)
    if losses is None:
        return list(registry.LOSSES.values())
    names = [losses] if isinstance(losses, str) else list(losses)
    return [registry.get(n) for n in names]


def plan(specs, cases=DEFAULT_CASES, dtypes=DTYPES, option_sets=None, regions=None):
    """``[(spec, option_set, dtype, region, n_cases)]`` for a sweep of about ``cases`` cases.

    Each row gets ``ceil(cases / rows)`` cases, and at least one per shape layout
    of its region, so the total is at least ``cases`` and at least the number of
    layouts over all rows (``plan(specs, 1)``).
    """
    rows = [r for r in case_rows(specs, dtypes)
            if (option_sets is None or r[1].name in option_sets)
            and (regions is None or r[3] in regions)]
    per_row = math.ceil(cases / max(len(rows), 1))
    out = []
    for spec, opt, dtype, region in rows:
        n = max(per_row, len(layouts(spec, region)))
        out.append((spec, opt, dtype, region, n))
    return out


def verify(losses=None, *, cases: int = DEFAULT_CASES, seed: int = 0, specs=None,
           dtypes=DTYPES, hvp=True, progress=None, option_sets=None,
           regions=None, workers=None, executor=None, checkpoint=None, resume=False,
           batch_cases=None, status=None) -> Report:
    """Run the protocol on ``losses`` (names; default all) and return a :class:`Report`.

    ``specs`` replaces the registry (the sensitivity tests plant bugs this
    way); ``hvp`` is True (use ``spec.hvp`` where it exists), False, or a dict
    ``{loss name: hvp function}``; ``progress(done, total, row_label)`` is
    called after every case (after every batch on an executor); ``status`` is
    called likewise with a :class:`~.sweep.SweepStatus` (rate, ETA, failing rows);
    ``option_sets`` / ``regions`` (names) restrict the rows.

    The cases run in batches of ``batch_cases`` (default
    :data:`~.batches.BATCH_CASES`) consecutive cases of a row: in this process, on
    a pool of ``workers`` local processes, or on ``executor`` (any
    ``concurrent.futures.Executor``, e.g. a Dask cluster's
    ``distributed.Client(address).get_executor()``).  The rows are bitwise the same
    for all of them.  ``checkpoint`` (a path) records every finished batch;
    ``resume=True`` continues the sweep it holds (see :mod:`.sweep`).
    """
    from . import batches, sweep        # imported here: both import this module

    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ValueError(f"cases must be a positive int, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    batch_cases = batches.BATCH_CASES if batch_cases is None else batch_cases
    _check_execution(workers, executor, checkpoint, resume, batch_cases)
    specs = resolve_specs(losses, specs)
    work = plan(specs, cases, dtypes, option_sets, regions)
    total = sum(n for *_, n in work)
    start = time.perf_counter()
    notes = []
    hvp_missing = [s.name for s in specs if s.hvp is None]
    if hvp is True and hvp_missing:
        notes.append("no Hessian-vector product (second-order oracles not run) for: "
                     + ", ".join(hvp_missing))
    compiled_skipped = [s.name for s in specs if _NUMBA in s.backends and not _compiled_runs(s)]
    if compiled_skipped:
        notes.append("compiled column not run (numba is not installed: "
                     f"{backends.INSTALL_HINT}) for: " + ", ".join(compiled_skipped))
    header = {"cases": cases, "seed": seed, "losses": [s.name for s in specs],
              "dtypes": [np.dtype(d).name for d in dtypes],
              "option_sets": None if option_sets is None else sorted(option_sets),
              "regions": None if regions is None else sorted(regions),
              "hvp": hvp if isinstance(hvp, bool) else sorted(hvp)}
    rows, sweep_notes, sweep_env = sweep.run_sweep(
        work, seed=seed, hvp=lambda spec: _hvp_function(hvp, spec), header_extra=header,
        batch_cases=batch_cases, workers=workers, executor=executor, checkpoint=checkpoint,
        resume=resume, progress=progress, status=status)
    return Report(rows, seed, total, time.perf_counter() - start,
                  {**environment(), **sweep_env}, notes + sweep_notes)


def _hvp_function(hvp, spec):
    if isinstance(hvp, dict):
        return hvp.get(spec.name)
    return spec.hvp if hvp else None


def _check_execution(workers, executor, checkpoint, resume, batch_cases):
    """The arguments of :func:`verify` that say how it runs (before any work)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if workers is not None and executor is not None:
        raise ValueError("give workers (a local process pool) or executor, not both")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must be a concurrent.futures.Executor, got "
                        f"{type(executor).__name__}")
    if isinstance(batch_cases, bool) or not isinstance(batch_cases, int) or batch_cases < 1:
        raise ValueError(f"batch_cases must be a positive int, got {batch_cases!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint to resume (checkpoint=PATH)")


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
