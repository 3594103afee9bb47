"""Audit somebody else's cross-entropy against the verified reference.

:func:`audit` calls ``fn(x, targets, **options)`` (and ``grad(...)`` when
given) on the verifier's seeded inputs (:mod:`.inputs`: random and extreme
values, every option set and region), and compares each value and gradient
with the reference function of the same name, elementwise:

``|got - expected| <= rtol * operand``

where ``operand`` is the magnitude of the terms of the formula (see
:mod:`.errors`; for a confident softmax prediction it is ~1 even though
``p - 1`` is tiny, since no implementation in working precision can do better).
Only the keyword arguments that ``fn``'s signature accepts are exercised
(all of them if it takes ``**kwargs``): a function without ``label_smoothing``
is never called with it, and one without ``reduction`` is compared with the
reference's default ``"mean"``.

Every group of mismatches (option set x value/gradient) is reported with
the *smallest* input that still shows it, found by greedy shrinking: fewer
rows, fewer classes, fewer options, simpler numbers.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from .. import registry
from . import errors, inputs

# Elementwise tolerance, relative to the operand magnitude.  float64: 1e-9 is
# ~4.5e6 ULP, far above the ~1e-15 to 1e-13 at which correct implementations
# (PyTorch, the JAX twin) agree with the reference, and far below the
# smallest error worth calling a bug (a gradient off by 1e-6 relative).
# float32 inputs: the audited function computes in float32 (eps 1.2e-7), the
# reference in float64 at the same inputs; 1e-5 is ~84 float32 ULP.
AUDIT_RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}
DEFAULT_CASES = 240
SHRINK_BUDGET = 400      # function evaluations per mismatch group


@dataclass
class Mismatch:
    """One group of mismatches, with the smallest input found that shows it."""

    quantity: str             # "value" or "grad"
    option_set: str
    count: int                # failing cases in the group
    worst_error: float        # worst |got - expected| / operand in the group
    case: inputs.Case         # the shrunk input
    got: np.ndarray
    expected: np.ndarray
    message: str = ""         # exception text or shape problem, if any

    def describe(self) -> str:
        c = self.case
        lines = [f"{self.quantity} mismatch, option set {self.option_set!r}: {self.count} "
                 f"case(s), worst error {_fmt(self.worst_error)} x operand"]
        if self.message:
            lines.append(f"  {self.message}")
        lines.append("  smallest input found:")
        lines.append(f"    x = {_arr(c.x)}")
        lines.append(f"    targets = {_arr(c.targets)}")
        for k, v in c.kwargs.items():
            lines.append(f"    {k} = {_arr(v) if isinstance(v, np.ndarray) else repr(v)}")
        lines.append(f"  got      {_arr(self.got)}")
        lines.append(f"  expected {_arr(self.expected)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        c = self.case
        return {"quantity": self.quantity, "option_set": self.option_set, "count": self.count,
                "worst_error": self.worst_error, "message": self.message,
                "x": np.asarray(c.x).tolist(), "targets": np.asarray(c.targets).tolist(),
                "kwargs": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for k, v in c.kwargs.items()},
                "dtype": c.dtype.name,
                "got": np.asarray(self.got).tolist(),
                "expected": np.asarray(self.expected).tolist()}


@dataclass
class AuditResult:
    """Outcome of :func:`audit`; ``ok`` is True when nothing mismatched."""

    loss: str
    function: str
    n_cases: int
    exercised: tuple
    not_exercised: tuple
    mismatches: list = field(default_factory=list)
    checked_grad: bool = False

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def __str__(self) -> str:
        status = "MATCH" if self.ok else f"MISMATCH ({len(self.mismatches)} group(s))"
        head = (f"audit of {self.function} against ce_reference.{self.loss}: {status}; "
                f"{self.n_cases} cases, values{' and gradients' if self.checked_grad else ''}")
        lines = [head,
                 "exercised keyword arguments: " + (", ".join(self.exercised) or "none")]
        if self.not_exercised:
            lines.append("not accepted by the function (not exercised): "
                         + ", ".join(self.not_exercised))
        for i, m in enumerate(self.mismatches, 1):
            lines.append(f"{i}. " + m.describe())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "loss": self.loss, "function": self.function,
                "n_cases": self.n_cases, "checked_grad": self.checked_grad,
                "exercised": list(self.exercised), "not_exercised": list(self.not_exercised),
                "mismatches": [m.to_dict() for m in self.mismatches]}


def _fmt(x):
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def _arr(a):
    a = np.asarray(a)
    return np.array2string(a, precision=17, separator=", ", max_line_width=10**6,
                           threshold=60)


# --------------------------------------------------------------------------- signature

def _accepted(fn, names):
    """Which of ``names`` ``fn`` accepts as keyword arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(names)
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return set(names)
    ok = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return {n for n in names if n in ok}


def _name(fn):
    mod = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{mod}:{qual}" if mod else qual


# --------------------------------------------------------------------------- audit

def audit(fn, loss: str, grad=None, *, cases: int = DEFAULT_CASES, seed: int = 0,
          dtypes=(np.float64,), rtol=None, shrink: bool = True, targets=None) -> AuditResult:
    """Compare ``fn`` (and ``grad``) with ``ce_reference.<loss>`` on seeded inputs.

    Parameters
    ----------
    fn : callable
        ``fn(x, targets, **options) -> loss``, NumPy arrays in, a scalar or
        array out (anything ``numpy.asarray`` accepts), with the reference's
        argument conventions (see ``ce_reference.<loss>``).
    loss : str
        Name of the reference loss, e.g. ``"softmax_cross_entropy"``.
    grad : callable, optional
        ``grad(x, targets, **options)``: gradient of the reduced loss with
        respect to ``x`` (for ``reduction="none"``, of the sum).
    cases : int
        Number of inputs, spread over option sets and regions.
    seed : int
        Seed of the inputs (the same seed gives the same inputs).
    dtypes : sequence of dtypes
        Input dtypes to audit (default float64 only).
    rtol : float or dict, optional
        Elementwise tolerance relative to the operand (default
        :data:`AUDIT_RTOL`).
    shrink : bool
        Shrink each mismatch to the smallest input that still shows it.
    targets : collection of str, optional
        Restrict the kinds of targets: ``"index"``, ``"onehot"``, ``"soft"``
        (categorical losses), ``"hard"``, ``"soft"`` (binary losses).  By
        default every kind the reference accepts is used (class indices as an
        integer array, probabilities as a float array).

    Returns
    -------
    AuditResult
        ``.ok``, ``.mismatches`` (each with its smallest input), ``str()``
        gives a readable report.

    Examples
    --------
    >>> import numpy as np
    >>> from ce_reference import audit
    >>> def my_bce(logits, targets):
    ...     return np.mean(np.logaddexp(0, logits) - targets * logits)
    >>> audit(my_bce, loss="binary_cross_entropy_with_logits", cases=40).ok
    True
    """
    spec = registry.get(loss)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if grad is not None and not callable(grad):
        raise TypeError(f"grad must be callable or None, got {type(grad).__name__}")
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ValueError(f"cases must be a positive int, got {cases!r}")
    names = spec.option_names + ("reduction",)
    acc = _accepted(fn, names)
    if grad is not None:
        acc &= _accepted(grad, names)
    exercised = tuple(n for n in names if n in acc)
    not_exercised = tuple(n for n in names if n not in acc)
    tols = {np.dtype(d): (rtol if isinstance(rtol, (int, float)) else
                          (rtol or AUDIT_RTOL)[np.dtype(d)]) for d in dtypes}

    work = []
    for opt in spec.option_sets:
        if not opt.options <= acc:
            continue
        if targets is not None and opt.targets not in targets:
            continue
        for dtype in dtypes:
            for region in opt.regions:
                work.append((opt, np.dtype(dtype), region))
    per_row = max(1, math.ceil(cases / max(len(work), 1)))
    ctx = _Ctx(spec, fn, grad, acc, tols)
    groups: dict = {}
    n = 0
    for opt, dtype, region in work:
        layouts = [lay for lay in inputs.layouts(spec, region) if _layout_ok(lay, acc)]
        if not layouts:
            continue
        for i in range(per_row):
            lay = layouts[i % len(layouts)]
            if "reduction" not in acc:
                lay = inputs.Layout(lay.shape, lay.axis, "mean")
            case = inputs.make_case(spec, opt, dtype, region, i, seed, layout=lay)
            n += 1
            for q, err, got, exp, msg in ctx.compare(case):
                if q == "invalid":
                    continue
                key = (q, opt.name)
                g = groups.setdefault(key, {"count": 0, "worst": 0.0, "first": None})
                g["count"] += 1
                g["worst"] = max(g["worst"], err)
                if g["first"] is None or case.x.size < g["first"][0].x.size:
                    g["first"] = (case, got, exp, msg)
    mismatches = []
    for (q, optname), g in groups.items():
        case, got, exp, msg = g["first"]
        if shrink:
            case, got, exp, msg = _shrink(ctx, case, q, (got, exp, msg))
        mismatches.append(Mismatch(q, optname, g["count"], g["worst"], case, got, exp, msg))
    return AuditResult(spec.name, _name(fn), n, exercised, not_exercised, mismatches,
                       checked_grad=grad is not None)


def _layout_ok(lay, acc):
    if lay.axis is None or "axis" in acc:
        return True
    return lay.axis in (-1, len(lay.shape) - 1)


class _Ctx:
    def __init__(self, spec, fn, grad, acc, tols):
        self.spec, self.fn, self.grad, self.acc, self.tols = spec, fn, grad, acc, tols
        self.evals = 0

    def _kw(self, case):
        return {k: v for k, v in case.kwargs.items() if k in self.acc}

    def compare(self, case):
        """List of ``(quantity, error, got, expected, message)`` mismatches of a case."""
        self.evals += 1
        out = []
        try:
            ref_v = self.spec.value(case.x, case.targets, **case.kwargs)
            ref_g = self.spec.grad(case.x, case.targets, **case.kwargs)
        except Exception:
            return [("invalid", 0.0, None, None, "")]     # not a valid input (while shrinking)
        x64 = replace(case, x=case.x.astype(np.float64),
                      kwargs={k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
                              for k, v in case.kwargs.items()})
        if case.dtype != np.float64:        # expected values: the reference at the same inputs
            ref_v = self.spec.value(x64.x, case.targets, **x64.kwargs)
            ref_g = self.spec.grad(x64.x, case.targets, **x64.kwargs)
        if not np.all(np.isfinite(ref_v)):
            return [("invalid", 0.0, None, None, "")]
        ops = errors.operands(self.spec, x64)
        tol = self.tols[case.dtype]
        todo = [("value", self.fn, ref_v, ops.value_jax)]
        if self.grad is not None:
            todo.append(("grad", self.grad, ref_g, ops.grad_jax))
        for q, f, ref, op in todo:
            try:
                with warnings.catch_warnings():   # judge the numbers, not the warnings
                    warnings.simplefilter("ignore")
                    got = np.asarray(f(case.x, case.targets, **self._kw(case)),
                                     dtype=np.float64)
            except Exception as exc:
                out.append((q, math.inf, np.array(np.nan), np.asarray(ref),
                            f"raised {type(exc).__name__}: {exc}"))
                continue
            ref = np.asarray(ref, np.float64)
            if got.shape != ref.shape:
                if got.size == ref.size == 1:
                    got = got.reshape(ref.shape)
                else:
                    out.append((q, math.inf, got, ref,
                                f"returned shape {got.shape}, expected {ref.shape}"))
                    continue
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                diff = np.abs(got - ref)
                diff = np.where(got == ref, 0.0, diff)
                diff = np.where(np.isnan(diff), np.inf, diff)
                diff = np.where(diff < np.finfo(case.dtype).tiny, 0.0, diff)
                err = np.where(diff == 0, 0.0, diff / np.maximum(np.asarray(op, np.float64),
                                                                 np.finfo(np.float64).tiny))
            worst = float(np.max(err)) if err.size else 0.0
            if not worst <= tol:
                out.append((q, worst, got, ref, ""))
        return out


# --------------------------------------------------------------------------- shrinking

def _complexity(case):
    vals = [case.x, case.targets] + [v for v in case.kwargs.values() if isinstance(v, np.ndarray)]
    digits = 0
    for a in vals:
        for v in np.asarray(a, np.float64).reshape(-1):
            digits += 0 if v in (0.0, 1.0) else len(repr(float(v)))
    nopts = sum(k not in ("axis", "reduction") for k in case.kwargs)
    return (case.x.size, nopts, digits)


def _shrink(ctx, case, quantity, first):
    """Greedy shrinking: accept any simpler candidate that still mismatches on ``quantity``."""
    best, best_info = case, first
    budget = SHRINK_BUDGET
    improved = True
    while improved and budget > 0:
        improved = False
        for cand in _candidates(ctx.spec, best):
            if budget <= 0:
                break
            if _complexity(cand) >= _complexity(best):
                continue
            budget -= 1
            hits = [m for m in ctx.compare(cand) if m[0] == quantity]
            if hits:
                best, best_info = cand, hits[0][2:]
                improved = True
                break
    return (best,) + tuple(best_info)


def _candidates(spec, case):
    """Simpler variants of ``case``, most aggressive first."""
    yield from _fewer_rows(spec, case)
    if spec.structure == "classes":
        yield from _fewer_classes(case)
    yield from _fewer_options(case)
    yield from _simpler_values(spec, case)


def _with(case, **changes):
    return replace(case, **changes)


def _class_axis(case):
    return case.kwargs.get("axis", -1) % case.x.ndim if "axis" in case.kwargs else None


def _fewer_rows(spec, case):
    x, t, kw = case.x, np.asarray(case.targets), case.kwargs
    ax = _class_axis(case) if spec.structure == "classes" else None
    index_targets = t.dtype.kind in "iu"
    for k in range(x.ndim):
        if k == ax or x.shape[k] <= 1:
            continue
        n = x.shape[k]
        subsets = [np.arange(n // 2), np.arange(n // 2, n)] + [np.array([j]) for j in range(n)]
        for sel in subsets:
            if sel.size == 0 or sel.size == n:
                continue
            nx = np.take(x, sel, axis=k)
            if index_targets:
                tk = k if ax is None or k < ax else k - 1
                nt = np.take(t, sel, axis=tk)
            elif t.ndim == x.ndim:
                nt = np.take(t, sel, axis=k)
            else:
                nt = t
            nkw = dict(kw)
            for name in ("weight", "pos_weight"):
                w = kw.get(name)
                if w is None or spec.structure == "classes":
                    continue
                w = np.asarray(w)
                off = x.ndim - w.ndim                       # right-aligned broadcasting
                if k - off >= 0 and w.shape[k - off] == n:
                    nkw[name] = np.take(w, sel, axis=k - off)
            yield _with(case, x=nx, targets=nt, kwargs=nkw, v=np.take(case.v, sel, axis=k),
                        kink=None if case.kink is None else np.take(case.kink, sel, axis=k))


def _fewer_classes(case):
    ax = _class_axis(case)
    x, t, kw = case.x, np.asarray(case.targets), case.kwargs
    C = x.shape[ax]
    if C <= 1:
        return
    ignore = kw.get("ignore_index")
    for c in range(C - 1, -1, -1):
        nkw = dict(kw)
        if t.dtype.kind in "iu":
            kept = t if ignore is None else t[t != ignore]
            if (kept == c).any() or (ignore is not None and 0 <= ignore and c <= ignore):
                continue
            nt = np.where((t > c) & (t != (ignore if ignore is not None else -1)), t - 1, t)
        else:
            nt = np.delete(t, c, axis=ax)
        if kw.get("weight") is not None:
            nkw["weight"] = np.delete(np.asarray(kw["weight"]), c)
        yield _with(case, x=np.delete(x, c, axis=ax), targets=nt, kwargs=nkw,
                    v=np.delete(case.v, c, axis=ax),
                    kink=None if case.kink is None else np.delete(case.kink, c, axis=ax))


def _fewer_options(case):
    t = np.asarray(case.targets)
    for name in ("weight", "pos_weight", "label_smoothing", "ignore_index", "eps"):
        if name not in case.kwargs:
            continue
        if name == "ignore_index" and (t == case.kwargs[name]).any():
            continue
        nkw = {k: v for k, v in case.kwargs.items() if k != name}
        yield _with(case, kwargs=nkw)


def _simpler_values(spec, case):
    dt = case.dtype
    x = case.x
    logits = spec.input != "probs"
    # whole-array simplifications
    if logits:
        yield _with(case, x=np.round(x).astype(dt))
        yield _with(case, x=np.zeros_like(x))
    else:
        yield _with(case, x=np.clip(np.round(x, 1), 0.1, 0.9).astype(dt))
    t = np.asarray(case.targets)
    if t.dtype.kind == "f":
        yield _with(case, targets=np.round(t, 1).astype(t.dtype))
    for name in ("weight", "pos_weight"):
        w = case.kwargs.get(name)
        if w is not None:
            yield _with(case, kwargs={**case.kwargs, name: np.ones_like(w)})
            yield _with(case, kwargs={**case.kwargs, name: np.maximum(np.round(w), 1).astype(dt)})
    # element by element
    simple = dt.type(0 if logits else 0.5)
    flat = x.reshape(-1)
    for i in range(flat.size):
        if flat[i] != simple:
            nx = flat.copy()
            nx[i] = simple
            yield _with(case, x=nx.reshape(x.shape))
    for i in range(flat.size):
        r = np.round(flat[i]) if logits else np.clip(np.round(flat[i], 1), 0.1, 0.9)
        if r != flat[i]:
            nx = flat.copy()
            nx[i] = r
            yield _with(case, x=nx.reshape(x.shape))
