"""Audit somebody else's cross-entropy against the verified reference.

:func:`audit` calls ``fn(x, targets, **options)`` (the loss's positional
parameters: ``fn(input, linear_weight, targets, **options)`` for a linear
cross-entropy; and ``grad(...)`` when given) on the verifier's seeded rows (:mod:`ce_reference.cases.sweep`:
random and extreme values, every option set and region of the loss), and
compares each value and gradient with the reference loss of that name,
element by element, in the one tolerance scheme of the audits
(:mod:`.tolerance`): the error in eps of the input dtype times the operand
of the element (the loss's oracle operands ``value_jax`` / ``grad_jax``),
accepted up to :data:`~.tolerance.TOL_EPS` = 256 eps unless ``rtol`` says
otherwise.  Only the keyword arguments that ``fn``'s signature accepts are
exercised (all of them if it takes ``**kwargs``).

The verdict is MATCH (every case within the tolerance), MISMATCH (some case
is not: each group of mismatches -- option set x value/gradient -- comes
with the *smallest* input that still shows it, found by the one shrinker,
:func:`ce_reference.cases.shrink`), or INCONCLUSIVE (a requested target kind
or dtype ended with no case at all: a verdict over zero cases is not a
verdict).  MATCH and MISMATCH state the worst error in eps.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import registry
from .._format import clean_json, fmt_array, fmt_eps
from ..cases import Case, Layout, layouts, make_case
from ..cases import shrink as shrink_case
from . import tolerance as T
from .isolation import CallTimeout, Isolated, RemoteError, as_float64, check_picklable

#: Target number of cases (spread over the rows; every row gets at least one).
DEFAULT_CASES = 240
#: ``still`` calls per shrunk mismatch group.
SHRINK_BUDGET = 400
#: After this many timed-out calls the audited function is not called again.
MAX_TIMEOUTS = 3
#: The dtypes an audit can run (float16 is computed in float32 by the reference).
AUDIT_DTYPES = ("float64", "float32")

MATCH, MISMATCH, INCONCLUSIVE = "MATCH", "MISMATCH", "INCONCLUSIVE"


@dataclass
class Mismatch:
    """One group of mismatches, with the smallest input found that shows it."""

    quantity: str             # "value" or "grad"
    option_set: str
    count: int                # failing cases in the group
    worst_eps: float          # worst error in the group, in eps of its dtype x operand
    case: Case                # the shrunk input
    got: np.ndarray | None    # None: the call raised or timed out
    expected: np.ndarray
    message: str = ""         # exception text, shape problem or worst element
    shrunk: bool = True       # False: the first failing input, as drawn

    def describe(self) -> str:
        c = self.case
        lines = [f"{self.quantity} mismatch, option set {self.option_set!r}: {self.count} "
                 f"case(s), worst {fmt_eps(self.worst_eps)} eps ({c.dtype.name})"]
        if self.message:
            lines.append(f"  {self.message}")
        lines.append("  smallest input found:" if self.shrunk else
                     "  input (not shrunk):")
        lines.append(f"    x = {fmt_array(c.x)}")
        lines.append(f"    targets = {fmt_array(c.targets)}")
        for k, v in c.kwargs.items():
            lines.append(f"    {k} = {fmt_array(v) if isinstance(v, np.ndarray) else repr(v)}")
        lines.append("  got      " + ("(no result)" if self.got is None else fmt_array(self.got)))
        lines.append(f"  expected {fmt_array(self.expected)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        c = self.case
        return clean_json({"quantity": self.quantity, "option_set": self.option_set,
                           "count": self.count, "worst_eps": self.worst_eps,
                           "message": self.message, "x": c.x, "targets": c.targets,
                           "kwargs": c.kwargs, "dtype": c.dtype.name,
                           "shrunk": self.shrunk,
                           "got": None if self.got is None else np.asarray(self.got),
                           "expected": np.asarray(self.expected)})


@dataclass
class AuditResult:
    """Outcome of :func:`audit`.

    ``status`` is ``"MATCH"``, ``"MISMATCH"`` or ``"INCONCLUSIVE"``; ``ok`` is
    True only for MATCH.  ``worst`` maps each dtype name to the worst error of
    all its compared values and gradients (eps of that dtype x operand),
    ``tolerance`` to the accepted one; ``cases_by_kind`` counts the compared
    cases per ``(target kind, dtype)``; ``inconclusive`` lists the requested
    ``(target kind, dtype)`` pairs that ended with no case, with the reason.
    """

    loss: str
    function: str
    n_cases: int
    exercised: tuple
    not_exercised: tuple
    mismatches: list = field(default_factory=list)
    checked_grad: bool = False
    worst: dict = field(default_factory=dict)
    tolerance: dict = field(default_factory=dict)
    cases_by_kind: dict = field(default_factory=dict)
    inconclusive: list = field(default_factory=list)
    skipped_kinds: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.mismatches:
            return MISMATCH
        if self.inconclusive or self.n_cases == 0:
            return INCONCLUSIVE
        return MATCH

    @property
    def ok(self) -> bool:
        return self.status == MATCH

    def verdict(self) -> str:
        """``MATCH: worst 3.1 eps (tolerance 256 eps)`` and the like, per dtype."""
        if self.status == INCONCLUSIVE:
            return (f"{INCONCLUSIVE}: no case ran for "
                    + ", ".join(f"{k} targets in {d}" for k, d, _ in self.inconclusive)
                    if self.inconclusive else f"{INCONCLUSIVE}: no case ran")
        parts = [f"{fmt_eps(w)} eps in {d} (tolerance {fmt_eps(self.tolerance[d])} eps)"
                 for d, w in self.worst.items()]
        return f"{self.status}: worst " + ", ".join(parts)

    def __str__(self) -> str:
        what = "values and gradients" if self.checked_grad else "values"
        head = (f"audit of {self.function} against ce_reference.{self.loss}: {self.verdict()}; "
                f"{self.n_cases} cases, {what}")
        if self.status == MISMATCH:
            head += f"; {len(self.mismatches)} mismatch group(s)"
        lines = [head,
                 "exercised keyword arguments: " + (", ".join(self.exercised) or "none")]
        if self.not_exercised:
            lines.append("not accepted by the function (not exercised): "
                         + ", ".join(self.not_exercised))
        for kind, dtype, reason in self.inconclusive:
            lines.append(f"INCONCLUSIVE: no {kind} case in {dtype}: {reason}")
        for kind, reason in self.skipped_kinds:
            lines.append(f"target kind {kind} not exercised: {reason}")
        lines += [f"note: {n}" for n in self.notes]
        for i, m in enumerate(self.mismatches, 1):
            lines.append(f"{i}. " + m.describe())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return clean_json({
            "ok": self.ok, "status": self.status, "verdict": self.verdict(),
            "loss": self.loss, "function": self.function, "n_cases": self.n_cases,
            "checked_grad": self.checked_grad, "worst_eps": self.worst,
            "tolerance_eps": self.tolerance,
            "cases_by_kind": {f"{k} | {d}": n for (k, d), n in self.cases_by_kind.items()},
            "inconclusive": [{"targets": k, "dtype": d, "reason": r}
                             for k, d, r in self.inconclusive],
            "not_exercised_kinds": [{"targets": k, "reason": r} for k, r in self.skipped_kinds],
            "exercised": list(self.exercised), "not_exercised": list(self.not_exercised),
            "notes": self.notes, "mismatches": [m.to_dict() for m in self.mismatches]})


# --------------------------------------------------------------------------- arguments

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


def _real(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return value


def _dtype(d):
    try:
        dt = np.dtype(d)
    except TypeError:
        dt = None
    if dt is None or dt.name not in AUDIT_DTYPES:
        name = dt.name if dt is not None else repr(d)
        extra = (" (the reference computes float16 in float32; audit float32 instead)"
                 if name == "float16" else "")
        raise ValueError(f"dtypes: {name} is not an audited dtype{extra}; expected "
                         f"{' and/or '.join(AUDIT_DTYPES)}")
    return dt


@dataclass
class Arguments:
    """The validated arguments of :func:`audit` (see :func:`check_arguments`)."""

    spec: object
    kinds: tuple            # target kinds to run
    explicit_kinds: bool    # the caller named them (each must then get a case)
    dtypes: tuple
    tolerance: dict         # np.dtype -> eps
    rtol: object
    cases: int
    seed: int
    timeout: float | None


def check_arguments(fn, loss, grad=None, *, cases=DEFAULT_CASES, seed=0,
                    dtypes=(np.float64,), rtol=None, targets=None, timeout=None) -> Arguments:
    """Validate :func:`audit`'s arguments before anything runs (the command line uses it
    too); ``ValueError`` / ``TypeError`` naming the argument and its valid values."""
    spec = registry.get(loss)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if grad is not None and not callable(grad):
        raise TypeError(f"grad must be callable or None, got {type(grad).__name__}")
    if isinstance(cases, bool) or not isinstance(cases, numbers.Integral) or cases < 1:
        raise ValueError(f"cases must be a positive int, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(dtypes, (str, np.dtype, type)):
        dtypes = (dtypes,)
    dts = tuple(dict.fromkeys(_dtype(d) for d in dtypes))
    if not dts:
        raise ValueError(f"dtypes must name at least one of {', '.join(AUDIT_DTYPES)}")
    if targets is None:
        kinds, explicit = tuple(spec.targets), False
    else:
        if isinstance(targets, str):
            targets = (targets,)
        kinds = tuple(dict.fromkeys(targets))
        unknown = [k for k in kinds if k not in spec.targets]
        if unknown:
            raise ValueError(f"targets: unknown target kind {unknown[0]!r} for {spec.name}; "
                             f"expected some of {', '.join(spec.targets)}")
        if not kinds:
            raise ValueError(f"targets must name at least one of {', '.join(spec.targets)} "
                             "(or be None for all)")
        explicit = True
    if rtol is None:
        per = {}
    elif isinstance(rtol, dict):
        per = {_dtype(d): _real(v, f"rtol[{np.dtype(d).name}]") for d, v in rtol.items()}
    else:
        r = _real(rtol, "rtol")
        per = {d: r for d in dts}
    tolerance = {d: T.tolerance_eps(d, per.get(d)) for d in dts}
    if timeout is not None:
        timeout = _real(timeout, "timeout")
        if timeout == 0:
            raise ValueError("timeout must be > 0 seconds (or None: no timeout)")
        check_picklable(fn, "the audited function")
        if grad is not None:
            check_picklable(grad, "the gradient function")
    return Arguments(spec, kinds, explicit, dts, tolerance, rtol, int(cases), int(seed),
                     timeout)


# --------------------------------------------------------------------------- audit

def audit(fn, loss: str, grad=None, *, cases: int = DEFAULT_CASES, seed: int = 0,
          dtypes=(np.float64,), rtol=None, shrink: bool = True, targets=None,
          timeout: float | None = None, progress=None) -> AuditResult:
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
        respect to ``x`` (for ``reduction="none"``, of the sum); for a loss
        differentiated in several arguments (``linear_cross_entropy``), the
        tuple of their gradients, as the reference returns it.
    cases : int
        Target number of inputs, spread evenly over the rows (option set x
        dtype x region) that can be exercised; every row gets at least one,
        so the total can be larger.
    seed : int
        Non-negative seed of the inputs (the same seed gives the same inputs).
    dtypes : sequence of dtypes
        ``float64`` and/or ``float32`` (default float64 only).  A float32
        input is compared with the reference at the same values in float64.
    rtol : float or dict, optional
        Tolerance relative to the operand: ``|got - expected| <= rtol *
        operand`` per element (a dict: per dtype).  Default
        :data:`~.tolerance.TOL_EPS` = 256 eps of the dtype (5.7e-14 in
        float64, 3.1e-5 in float32).
    shrink : bool
        Shrink each mismatch to the smallest input that still shows it.
    targets : collection of str, optional
        Target kinds to audit, from the loss's kinds (``"index"``,
        ``"onehot"``, ``"soft"``; ``"hard"``, ``"soft"``).  By default every
        kind the loss accepts.  Each named kind must end with at least one
        case in every dtype, or the audit is INCONCLUSIVE.
    timeout : float, optional
        Seconds per call: the function runs in a spawned worker process that
        is abandoned when a call takes longer (the case is then a mismatch;
        after three timeouts the function is not called again).  The
        function must be picklable (defined at module level).  Default: no
        timeout, the function runs in this process.
    progress : callable, optional
        ``progress(done, total, label)``, called before each case.

    Returns
    -------
    AuditResult
        ``.status`` (MATCH / MISMATCH / INCONCLUSIVE), ``.ok``, ``.worst``,
        ``.mismatches`` (each with its smallest input); ``str()`` gives a
        readable report.

    Examples
    --------
    >>> import numpy as np
    >>> from ce_reference import audit
    >>> def my_bce(logits, targets):
    ...     return np.mean(np.logaddexp(0, logits) - targets * logits)
    >>> audit(my_bce, loss="binary_cross_entropy_with_logits", cases=40).ok
    True
    """
    args = check_arguments(fn, loss, grad, cases=cases, seed=seed, dtypes=dtypes, rtol=rtol,
                           targets=targets, timeout=timeout)
    spec = args.spec
    names = spec.option_names + ("reduction",)
    acc = _accepted(fn, names)
    if grad is not None:
        acc &= _accepted(grad, names)
    exercised = tuple(n for n in names if n in acc)
    not_exercised = tuple(n for n in names if n not in acc)

    work, skipped = _plan(spec, args, acc)
    per_row = max(1, math.ceil(args.cases / max(len(work), 1)))
    total = per_row * len(work)
    runner = _Runner(spec, fn, grad, acc, args.tolerance, args.timeout)
    groups: dict = {}
    counts = {(k, d.name): 0 for k in args.kinds for d in args.dtypes}
    worst = {d.name: 0.0 for d in args.dtypes}
    n = done = 0
    try:
        for opt, dtype, region, lays in work:
            for i in range(per_row):
                if runner.stopped:
                    break
                if progress is not None:
                    progress(done, total, f"{opt.name} | {dtype.name} | {region}")
                done += 1
                lay = lays[i % len(lays)]
                case = make_case(spec, opt, dtype, region, i, args.seed, layout=lay)
                case = case.replace(fixed=case.fixed | set(not_exercised))
                outs = runner.compare(case)
                if outs is None:
                    continue                         # not a valid input for the reference
                n += 1
                counts[(opt.targets, dtype.name)] += 1
                for o in outs:
                    worst[dtype.name] = max(worst[dtype.name], o.err)
                    if o.ok:
                        continue
                    g = groups.setdefault((o.quantity, opt.name),
                                          {"count": 0, "worst": 0.0, "first": None})
                    g["count"] += 1
                    g["worst"] = max(g["worst"], o.err)
                    if g["first"] is None or case.x.size < g["first"][0].x.size:
                        g["first"] = (case, o)
        if progress is not None:
            progress(total, total, "shrinking" if groups and shrink else "done")
        mismatches = []
        for (q, optname), g in groups.items():
            case, o = g["first"]
            shrunk = shrink and not o.timed_out and not runner.stopped
            if shrunk:
                case, o = runner.shrink(case, q, o)
            case = case.replace(kwargs={k: v for k, v in case.kwargs.items()
                                        if k in acc or k in spec.positional})
            mismatches.append(Mismatch(q, optname, g["count"], g["worst"], case, o.got,
                                       o.expected, o.message, shrunk))
    finally:
        runner.close()
    inconclusive = []
    for d in args.dtypes:
        ran = {k for k in args.kinds if counts[(k, d.name)]}
        if args.explicit_kinds:
            for k in args.kinds:
                if not counts[(k, d.name)]:
                    why = ("not run: the audit stopped after the timeouts" if runner.stopped
                           else _why_none(spec, k, acc, skipped))
                    inconclusive.append((k, d.name, why))
        elif not ran:
            inconclusive.append(("any", d.name, "not run: the audit stopped after the timeouts"
                                 if runner.stopped else "no option set could be exercised, "
                                 "or every case was rejected by the reference"))
    skipped_kinds = [] if args.explicit_kinds else [
        (k, skipped[k]) for k in args.kinds if k in skipped and not any(
            counts[(k, d.name)] for d in args.dtypes)]
    notes = []
    if runner.stopped:
        notes.append(f"the function timed out {runner.timeouts} times; the audit stopped "
                     f"there ({total - done} of {total} planned cases not run)")
    return AuditResult(spec.name, _name(fn), n, exercised, not_exercised, mismatches,
                       checked_grad=grad is not None,
                       worst={d: w for d, w in worst.items()},
                       tolerance={d.name: t for d, t in args.tolerance.items()},
                       cases_by_kind=counts, inconclusive=inconclusive,
                       skipped_kinds=skipped_kinds, notes=notes)


def _plan(spec, args, acc):
    """``[(option set, dtype, region, layouts)]`` that can be exercised, and, per target kind
    without any, the reason."""
    work, skipped = [], {}
    for opt in spec.option_sets:
        if opt.targets not in args.kinds:
            continue
        if not opt.options <= acc:
            missing = sorted(opt.options - acc)
            skipped.setdefault(opt.targets, f"option set {opt.name!r} needs "
                               f"{', '.join(missing)}, not accepted by the function")
            continue
        for dtype in args.dtypes:
            for region in opt.regions:
                lays = [lay for lay in layouts(spec, region) if _layout_ok(lay, acc)]
                if "reduction" not in acc:
                    lays = [Layout(lay.shape, lay.axis, spec.reductions[0]) for lay in lays]
                if lays:
                    work.append((opt, dtype, region, lays))
    kinds_run = {opt.targets for opt, *_ in work}
    return work, {k: r for k, r in skipped.items() if k not in kinds_run}


def _why_none(spec, kind, acc, skipped):
    if kind in skipped:
        sets = [o for o in spec.option_sets if o.targets == kind]
        needs = sorted({n for o in sets for n in o.options - acc})
        return (f"every option set of that kind needs {', '.join(needs)}, which the "
                "function does not accept")
    return "every case was rejected by the reference (invalid or non-finite)"


def _layout_ok(lay, acc):
    if lay.axis is None or "axis" in acc:
        return True
    return lay.axis in (-1, len(lay.shape) - 1)


@dataclass
class _Failed:
    message: str
    timed_out: bool = False


@dataclass
class _Outcome:
    quantity: str
    err: float
    ok: bool
    got: np.ndarray
    expected: np.ndarray
    message: str = ""
    timed_out: bool = False


def _positional(spec, case):
    """The positional arguments of a call of ``spec``'s loss on ``case`` (the input, the
    targets, and for a linear cross-entropy the linear weight between them)."""
    return [case.x if n == "input" else case.targets if n == "targets" else case.kwargs[n]
            for n in spec.positional]


def _flat_parts(spec, grad):
    """A gradient of one or several arguments as one float64 vector (absent parts left out)."""
    parts = [np.asarray(p, np.float64).reshape(-1) for p in spec.grad_parts(grad)
             if p is not None]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _conform(spec, quantity, got, expected):
    """``got`` in ``expected``'s shape (a 1-element result of a scalar loss is reshaped),
    or a sentence saying why not."""
    if quantity == "grad" and len(spec.wrt) > 1:
        if not isinstance(got, tuple) or len(got) != len(spec.wrt):
            return got, f"returned {type(got).__name__}, expected a tuple of {len(spec.wrt)} " \
                        f"gradients ({', '.join(spec.wrt)})"
        for name, g, e in zip(spec.wrt, got, expected):
            if (g is None) != (e is None) or (g is not None and g.shape != e.shape):
                return got, f"gradient of {name} has shape {None if g is None else g.shape}, " \
                            f"expected {None if e is None else e.shape}"
        return got, ""
    if got.shape != expected.shape:
        if got.size == expected.size == 1:
            return got.reshape(expected.shape), ""
        return got, f"returned shape {got.shape}, expected {expected.shape}"
    return got, ""


def _measure(spec, quantity, got, expected, operand, dtype, tol):
    """The tolerance measure of a value or gradient; a gradient of several arguments part
    by part (the worst part, named ``grad[linear_weight]`` in the detail)."""
    if quantity != "grad" or len(spec.wrt) == 1:
        return T.measure(got, expected, operand, dtype, tol, name=quantity)
    measures = [T.measure(g, e, o, dtype, tol, name=f"grad[{name}]")
                for name, g, e, o in zip(spec.wrt, got, expected, operand) if e is not None]
    return max(measures, key=lambda m: m.worst)


class _Runner:
    """Calls the audited functions (in this process, or isolated with a timeout) and the
    reference, and compares them."""

    def __init__(self, spec, fn, grad, acc, tols, timeout):
        self.spec, self.acc, self.tols = spec, acc, tols
        self.functions = {"value": fn} if grad is None else {"value": fn, "grad": grad}
        self.isolated = Isolated(self.functions, timeout) if timeout is not None else None
        self.stopped = False

    @property
    def timeouts(self):
        return 0 if self.isolated is None else self.isolated.timeouts

    def close(self):
        if self.isolated is not None:
            self.isolated.close()

    def _call(self, q, case):
        """The function's result as float64, or ``_Failed`` (it raised or timed out).

        Failures of the worker machinery itself (it cannot start) are not the
        function's: they propagate.
        """
        args = _positional(self.spec, case)
        kw = {k: v for k, v in case.kwargs.items() if k in self.acc}
        if self.isolated is None:
            try:
                with warnings.catch_warnings():   # judge the numbers, not the warnings
                    warnings.simplefilter("ignore")
                    return as_float64(self.functions[q](*args, **kw))
            except Exception as exc:  # noqa: BLE001 - the audited function failed
                return _Failed(f"raised {type(exc).__name__}: {exc}")
        try:
            return self.isolated.call(q, args, kw)
        except CallTimeout as exc:
            self.stopped = self.timeouts >= MAX_TIMEOUTS
            return _Failed(f"timed out: {exc}", timed_out=True)
        except RemoteError as exc:
            return _Failed(f"raised {exc.kind}: {exc}")

    def _reference(self, case):
        """``(value, grad, operands)`` of the reference, or None for an invalid input."""
        spec = self.spec
        try:
            x64 = case.replace(
                x=case.x.astype(np.float64),
                kwargs={k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
                        for k, v in case.kwargs.items()})
            # a float32 input is judged against the reference at the same values in float64
            ref = case if case.dtype == np.float64 else x64
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = spec.call(spec.value, ref)
                g = spec.call(spec.grad, ref)
                if not np.all(np.isfinite(v)):
                    return None
                ops = spec.resolve_oracle().operands(x64, None)
        except Exception:  # noqa: BLE001 - the reference rejects the input
            return None
        return np.asarray(v, np.float64), as_float64(g), ops

    def compare(self, case):
        """The value (and gradient) outcomes of ``case``; None if the reference rejects it."""
        ref = self._reference(case)
        if ref is None:
            return None
        ref_v, ref_g, ops = ref
        tol = self.tols[case.dtype]
        todo = [("value", ref_v, ops.value_jax)]
        if "grad" in self.functions:
            todo.append(("grad", ref_g, ops.grad_jax))
        out = []
        for q, expected, op in todo:
            if self.stopped:
                break
            got = self._call(q, case)
            shown = _flat_parts(self.spec, expected) if q == "grad" else expected
            if isinstance(got, _Failed):
                out.append(_Outcome(q, math.inf, False, None, shown, got.message,
                                    got.timed_out))
                continue
            got, problem = _conform(self.spec, q, got, expected)
            if problem:
                out.append(_Outcome(q, math.inf, False,
                                    got if isinstance(got, np.ndarray) else None, shown, problem))
                continue
            m = _measure(self.spec, q, got, expected, op, case.dtype, tol)
            ok = T.is_within(m.worst, tol)
            if q == "grad":                       # several arguments: shown as one vector
                got, expected = _flat_parts(self.spec, got), shown
            out.append(_Outcome(q, m.worst, ok, got, expected,
                                "" if ok else f"worst element {m.detail}"))
        return out

    def shrink(self, case, quantity, outcome):
        def still(cand):
            if self.stopped:
                return None
            outs = self.compare(cand)
            if outs is None:
                return None
            hit = [o for o in outs if o.quantity == quantity and not o.ok and not o.timed_out]
            return hit[0] if hit else None

        return shrink_case(case, still, budget=SHRINK_BUDGET, info=outcome)
