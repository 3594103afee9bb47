"""The audit machinery shared by the four framework adapters.

A *target* is one framework function under one convention: it runs a
:class:`Case` through the framework (value and gradient through the
framework's own autograd) and through the reference of the matching
convention (:mod:`ce_reference.conventions`, or the core functions where the
framework follows PyTorch's definition).  :func:`run_target` sweeps a target
over seeded random and extreme inputs and classifies every case:

* ``match``: value and gradient agree within :data:`~ce_reference.auditing.tolerance.TOL_EPS`;
* a known finding (a named convention difference, or a catalogued defect)
  whose ``applies`` predicate explains the deviation;
* otherwise an *unclassified* deviation: a defect that is not in the
  catalogue (this is what makes the audit exit with status 1).

Errors are measured in the one tolerance scheme of the audits
(:mod:`ce_reference.auditing.tolerance`): eps of the dtype times an operand
scale, here a scalar per array -- the larger of the reference result's
largest entry and the size of the operands that the computation cancels (see
:func:`compare` and :func:`operand_scales`).  A float16 or bfloat16 case of a
target with a ``baseline`` (the same computation composed of plain PyTorch
operations in that dtype) is judged by the low-precision criterion instead
(:func:`ce_reference.auditing.tolerance.low_precision`, :func:`compare_low_precision`):
its errors are ratios, and at most 1 passes.  Cases come from the named regions
of :mod:`ce_reference.cases.regions`, and deviations are shrunk by the one
shrinker, :func:`ce_reference.cases.shrink`.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .._format import clean_json, fmt_array
from ..auditing.tolerance import (LOW_PRECISION_DTYPES, TOL_EPS, low_precision, measure,
                                  operand_scale)
from ..cases import Case
from ..cases import shrink as shrink_case
from ..cases.regions import neutral_input

#: Mismatches of a target that are shrunk to a smallest input (each shrink
#: re-runs the framework a few dozen times).
MAX_SHRINK = 3
#: ``still`` calls per shrunk witness.
SHRINK_BUDGET = 150


@dataclass
class Result:
    """Named output arrays of one evaluation (``value``, ``grad``, maybe ``hess``)."""

    arrays: dict
    warnings: tuple = ()


@dataclass
class Outcome:
    """The comparison of a framework result with the reference on one case."""

    ok: bool
    kind: str                       # "match", "value", "grad", "hess", "exception", ...
    errors: dict                    # name -> error in eps units (inf for NaN/inf mismatch)
    detail: str = ""
    framework: Result | None = None
    reference: Result | None = None
    baseline: Result | None = None  # the same-dtype composition (low-precision criterion)
    unit: str = "eps"               # "eps" (limit TOL_EPS) or "ratio" (limit 1)
    seconds: float | None = None    # the framework call alone

    @property
    def limit(self) -> float:
        """The largest error that passes: :data:`TOL_EPS`, or 1 for a ratio."""
        return 1.0 if self.unit == "ratio" else TOL_EPS

    @property
    def nonfinite(self) -> dict:
        """name -> True where the framework is NaN/inf and the reference is not."""
        out = {}
        if self.framework is None or self.reference is None:
            return out
        for k, r in self.reference.arrays.items():
            a = self.framework.arrays.get(k)
            if a is None:
                continue
            a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
            if a.shape != r.shape:
                continue
            out[k] = bool(np.any(~np.isfinite(a) & np.isfinite(r)))
        return out


def compare(fw: Result, ref: Result, dtype, scales: dict) -> Outcome:
    r"""Compare named arrays in eps of ``dtype`` (:func:`ce_reference.auditing.tolerance.measure`).

    For each name, with :math:`a` the framework's array and :math:`r` the
    reference's: NaN must meet NaN, ``±inf`` the same infinity, a finite
    entry a finite one (else the error is ``inf``); on the finite entries
    ``err = max|a - r| / (eps * S)`` with the scalar operand
    ``S = max(max|r|, scales[name])``: relative to the largest reference entry
    or the operand scale, whichever is larger (a confident row's ``p - y``
    cancels by design, so its absolute error is measured against the size of
    the operands, not the tiny result).
    """
    errors, worst_kind, detail = {}, None, []
    for k, r in ref.arrays.items():
        if k not in fw.arrays:
            continue
        r = np.asarray(r, np.float64)
        a = np.asarray(fw.arrays[k], np.float64)
        if a.shape != r.shape:
            if a.size == r.size:
                a = a.reshape(r.shape)
            else:
                errors[k] = math.inf
                detail.append(f"{k}: shape {a.shape} != reference {r.shape}")
                worst_kind = worst_kind or k
                continue
        m = measure(a, r, operand_scale(r, scales.get(k, 0.0)), dtype, TOL_EPS, name=k)
        errors[k] = m.worst
        if m.detail:
            worst_kind = worst_kind or k
            detail.append(m.detail.replace(": got ", ": framework ").replace(
                ", expected ", " vs reference "))
    ok = worst_kind is None
    return Outcome(ok, "match" if ok else worst_kind, errors, "; ".join(detail), fw, ref)


def compare_low_precision(fw: Result, ref: Result, base: Result | None, dtype) -> Outcome:
    """Compare named arrays by the low-precision criterion: the error of each array is the
    ratio :func:`ce_reference.auditing.tolerance.low_precision` of the framework's largest
    error to the same-dtype composition's (``base``) plus one eps of the largest exact
    entry; at most 1 passes."""
    errors, worst_kind, detail = {}, None, []
    for k, r in ref.arrays.items():
        if k not in fw.arrays:
            continue
        r = np.asarray(r, np.float64)
        a = np.asarray(fw.arrays[k])          # its own dtype: the range it can represent
        if a.shape != r.shape:
            if a.size == r.size:
                a = a.reshape(r.shape)
            else:
                errors[k] = math.inf
                detail.append(f"{k}: shape {a.shape} != reference {r.shape}")
                worst_kind = worst_kind or k
                continue
        c = None if base is None else base.arrays.get(k)
        m = low_precision(a, r, c, dtype, name=k)
        errors[k] = m.worst
        if m.detail:
            worst_kind = worst_kind or k
            detail.append(m.detail.replace(": got ", ": framework ").replace(
                ", expected ", " vs reference "))
    ok = worst_kind is None
    return Outcome(ok, "match" if ok else worst_kind, errors, "; ".join(detail), fw, ref,
                   base, unit="ratio")


def low_precision_case(target, case: Case) -> bool:
    """``case`` is judged by the low-precision criterion (a float16 / bfloat16 case of a
    target that has a same-dtype baseline)."""
    return getattr(target, "baseline", None) is not None \
        and case.dtype.name in LOW_PRECISION_DTYPES


def judge(target, case: Case, fw: Result, ref: Result, base: Result | None = None) -> Outcome:
    """Compare by the scheme that applies to ``case``: eps of the operands
    (:func:`compare`), or the low-precision criterion (:func:`compare_low_precision`,
    with ``base`` the target's same-dtype baseline)."""
    if low_precision_case(target, case):
        return compare_low_precision(fw, ref, base, case.dtype)
    return compare(fw, ref, case.dtype, target.scales(case))


def _index(flat, shape) -> tuple:
    return tuple(int(j) for j in np.unravel_index(flat, shape)) if shape else ()


@dataclass
class Known:
    """A catalogued finding: a named convention difference or a known defect.

    ``applies(case, outcome)`` says whether a sweep deviation is explained by
    this finding.  ``probe`` is a hand-picked smallest input (a ``Case``; its
    structure is taken from the target's generator) for the target named ``target``; ``check(case, outcome)`` says whether the probe
    reproduces the finding (default: the framework deviates from the
    reference).  For conventions, ``exact`` is the convention-free reference
    (the core library's exact formula): a convention difference is *verified*
    when the framework matches its convention's reference and differs from
    ``exact`` on the probe.  ``check`` may return ``(holds, note)``: the note
    (a sentence of evidence) is shown with the probe.

    ``kind`` is ``"defect"``, ``"convention"``, ``"validation"`` (see
    :func:`probe_known`) or ``"match"``: a documented behaviour that stays within
    the tolerance (``check`` says the probe shows it).  ``scope`` names further
    targets (and their variants) whose sweep deviations the finding explains,
    besides ``target``, where its probe runs (one defect of a function seen at
    several tensor-parallel sizes, for instance).  ``unavailable`` says why a
    catalogued issue cannot be exercised with the installed versions (its probe
    is not run: class ``not exercised``); a finding without a ``probe`` is a
    class of sweep deviations.  Kind ``precision``: a low-precision result that
    fails the criterion of :func:`compare_low_precision` by a checked mechanism.

    One classification rule holds for every kind: a result whose *value* is NaN
    (or infinite) while its *gradient* is finite (:func:`nan_value_finite_grad`)
    is a **defect** -- the loss reads as garbage while the parameters keep
    being updated -- never a convention or an accepted validation outcome,
    unless the value itself is undefined (a mean over no kept rows, 0/0), where
    the package's rule is a NaN value with a zero gradient.
    """

    id: str
    kind: str                       # "defect" or "convention"
    title: str
    target: str
    refs: str = ""
    explanation: str = ""
    applies: Callable | None = None
    probe: Callable[[], Case] | None = None
    check: Callable | None = None
    exact: Callable | None = None
    fields: tuple | None = None      # compare only these arrays when verifying a convention
    scope: tuple = ()                # further targets whose deviations it explains
    unavailable: str = ""            # why the probe cannot run here (class "not exercised")


def relevant(k: Known, target_name: str) -> bool:
    """``k`` explains deviations of ``target_name``: its target, a scope entry, or a variant."""
    return any(covers(t, target_name) for t in (k.target, *k.scope))


def nan_with_neginf(case: Case, o: Outcome) -> bool:
    """The framework's value is NaN where the reference's is not, on an input with -inf logits."""
    if o.framework is None or "value" not in o.framework.arrays:
        return False
    a = np.asarray(o.framework.arrays["value"], np.float64)
    r = np.asarray(o.reference.arrays["value"], np.float64)
    return bool(np.any(np.isneginf(case.x))) and bool(np.any(np.isnan(a) & ~np.isnan(r)))


#: The arrays of a result that are derivatives (reverse-mode gradients, forward-mode tangents).
DERIVATIVES = ("grad", "jvp", "hess")


def nan_value_finite_grad(r: Result) -> bool:
    """``r``'s value has a non-finite entry and every derivative array is finite: a NaN loss
    that still trains (the one rule that makes a finding a defect, see :class:`Known`)."""
    if r is None or "value" not in r.arrays:
        return False
    derivs = [np.asarray(r.arrays[k], np.float64) for k in DERIVATIVES if k in r.arrays]
    value = np.asarray(r.arrays["value"], np.float64)
    return bool(derivs) and not bool(np.all(np.isfinite(value))) and all(
        bool(np.all(np.isfinite(d))) for d in derivs)


@dataclass
class Target:
    """One framework function under one convention.

    ``run(case) -> Result`` calls the framework; ``reference(case) -> Result``
    evaluates :mod:`ce_reference` under the framework's convention;
    ``gen`` is a :class:`ce_reference.cases.regions.Generator` (``gen(rng, dtype,
    options, region) -> Case``); ``option_sets`` are
    the option dicts swept; ``regions`` the input regions; ``scales(case)``
    the operand scales used by :func:`compare`.  ``baseline(case)``, when
    given, is the same computation composed of plain PyTorch operations in the
    case's dtype: float16 / bfloat16 cases are then judged by the
    low-precision criterion against it (:func:`judge`).  ``quick_regions`` /
    ``quick_option_sets`` replace the default subset of ``--quick``, and
    ``shrink_budget`` the number of framework calls per shrink
    (:data:`SHRINK_BUDGET`), for targets whose calls are slow.
    """

    name: str
    convention: str
    run: Callable[[Case], Result]
    reference: Callable[[Case], Result]
    gen: Callable
    option_sets: list
    regions: tuple
    scales: Callable[[Case], dict]
    dtypes: tuple = ("float64", "float32")
    repeats: int = 1
    seed_key: str = ""              # seeds the cases (default: the name); shared by variants
                                    # that must see the same inputs
    baseline: Callable[[Case], Result] | None = None
    quick_regions: tuple | None = None
    quick_option_sets: list | None = None
    shrink_budget: int | None = None


def evaluate(target: Target, case: Case) -> Outcome:
    """Run the framework and the reference on ``case`` and compare them (the numbers are
    judged, not the warnings either side emits)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = target.reference(case)
        base = None
        if low_precision_case(target, case):
            try:
                base = target.baseline(case)
            except Exception:  # noqa: BLE001 - no baseline: the criterion's bound is 1 eps
                base = None
    t0 = time.perf_counter()
    try:
        fw = target.run(case)
    except Exception as exc:  # the framework refused a valid input
        return Outcome(False, "exception", {}, f"{type(exc).__name__}: {exc}".splitlines()[0],
                       None, ref, base, seconds=time.perf_counter() - t0,
                       unit="ratio" if low_precision_case(target, case) else "eps")
    seconds = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = judge(target, case, fw, ref, base)
    o.seconds = seconds
    return o


def shrink(target: Target, case: Case, still: Callable[[Case, Outcome], bool],
           budget: int = SHRINK_BUDGET) -> Case:
    """The smallest case found (:func:`ce_reference.cases.shrink`) that the framework still
    gets wrong with ``still(case, outcome)``; only candidates the reference accepts count."""
    def holds(c: Case):
        try:
            o = evaluate(target, c)
        except Exception:  # noqa: BLE001 - the reference rejects the candidate
            return None
        return o if (not o.ok) and still(c, o) else None

    small, _ = shrink_case(case, holds, budget=target.shrink_budget or budget)
    return small


# --------------------------------------------------------------------------- sweeping

@dataclass
class RowStats:
    """Summary of one target x option set x dtype."""

    target: str
    options: str
    dtype: str
    cases: int = 0
    matches: int = 0
    worst: dict = field(default_factory=dict)      # name -> worst error over matches
    findings: dict = field(default_factory=dict)   # finding id -> count
    unit: str = "eps"                              # of ``worst``: "eps" or "ratio"
    seconds: list = field(default_factory=list)    # framework call times

    def to_json(self):
        out = {"target": self.target, "options": self.options, "dtype": self.dtype,
               "cases": self.cases, "matches": self.matches,
               "worst_eps" if self.unit == "eps" else "worst_ratio": clean_json(self.worst),
               "findings": self.findings}
        if self.seconds:
            out["median_call_seconds"] = float(np.median(self.seconds))
        return out


def options_label(opts: dict) -> str:
    return ", ".join(f"{k}={v}" if not isinstance(v, np.ndarray) else k
                     for k, v in opts.items()) or "defaults"


def run_target(target: Target, known: list, seed: int, progress=None):
    """Sweep one target; returns ``(rows, attributed, unclassified)``.

    ``attributed`` maps a known finding id to ``[count, first_case, first_outcome]``;
    ``unclassified`` is a list of ``(case, outcome)``.
    """
    rows, attributed, unclassified = [], {}, []
    relevant_known = [k for k in known if k.applies is not None and relevant(k, target.name)]
    for oi, spec in enumerate(target.option_sets):
        for dtype in target.dtypes:
            st = RowStats(target.name, options_label(spec), dtype)
            for ri, region in enumerate(target.regions):
                for rep in range(target.repeats):
                    rng = np.random.default_rng([seed, _stable(target.seed_key or target.name),
                                                 oi, ri, rep,
                                                 0 if dtype == "float64" else 1])
                    case = target.gen(rng, dtype, spec, region)
                    if case is None:
                        continue
                    st.cases += 1
                    o = evaluate(target, case)
                    st.unit = o.unit
                    if o.seconds is not None:
                        st.seconds.append(o.seconds)
                    if o.ok:
                        st.matches += 1
                        for k, v in o.errors.items():
                            st.worst[k] = max(st.worst.get(k, 0.0), v)
                        continue
                    ids = attribute(target, relevant_known, case, o)
                    for fid in ids:
                        a = attributed.setdefault(fid, [0, case, o])
                        a[0] += 1
                        st.findings[fid] = st.findings.get(fid, 0) + 1
                    if not ids:
                        unclassified.append((case, o))
                        st.findings["unclassified"] = st.findings.get("unclassified", 0) + 1
                    if progress is not None:
                        progress()
            rows.append(st)
    return rows, attributed, unclassified


def parts(target: Target, case: Case, o: Outcome) -> list:
    """One outcome per deviating array of ``o`` (the other arrays left out)."""
    if o.framework is None or o.reference is None:
        return []
    out = []
    for name, err in o.errors.items():
        if err <= o.limit:
            continue
        base = None
        if o.baseline is not None and name in o.baseline.arrays:
            base = Result({name: o.baseline.arrays[name]})
        sub = judge(target, case, Result({name: o.framework.arrays[name]}),
                    Result({name: o.reference.arrays[name]}), base)
        out.append(sub)
    return out


def explains(k: Known, target: Target, case: Case, o: Outcome) -> bool:
    """``k`` explains the deviation of ``case``, or of one of its deviating arrays."""
    return bool(k.applies(case, o)) or any(k.applies(case, p) for p in parts(target, case, o))


def attribute(target: Target, relevant: list, case: Case, o: Outcome) -> list:
    """The ids of the catalogued findings that explain a deviating case ([] if none do).

    The first finding whose ``applies`` holds for the whole case explains it.
    Otherwise, when every deviating array (value, gradient, ...) on its own is
    explained by some finding, the case is explained by those findings (it then
    counts under each): an input can show two known defects at once.
    """
    for k in relevant:
        if k.applies(case, o):
            return [k.id]
    subs = parts(target, case, o)
    if len(subs) < 2:
        return []
    ids = []
    for sub in subs:
        k = next((k for k in relevant if k.applies(case, sub)), None)
        if k is None:
            return []
        ids.append(k.id)
    return list(dict.fromkeys(ids))


def covers(known_target: str, target_name: str) -> bool:
    """A finding about ``F.x`` also explains deviations of the variants ``F.x <suffix>``."""
    return target_name == known_target or target_name.startswith(known_target + " ")


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


def probe_known(k: Known, target: Target) -> dict:
    """Run a catalogued finding's probe and classify what it shows.

    * ``defect``: reproduced when the framework deviates from the reference (or
      ``k.check`` holds); otherwise ``not reproduced``.
    * ``convention``: verified when the framework matches its convention's
      reference (or ``k.check`` holds) *and* differs from ``k.exact``.
    * ``validation`` (an input outside the documented domain,
      :func:`_outside_domain`): ``match`` when the framework raises, ``defect``
      when it returns finite numbers (silent acceptance; with ``k.check``, only
      when the check also holds, else ``not reproduced``) or a NaN value with a
      finite gradient (the rule of :class:`Known`), ``convention`` when the
      gradient is non-finite too.  A ``defect`` whose probe the reference
      rejects is classified the same way (raising: ``not reproduced``).
    * ``match``: ``match`` when the framework agrees with the reference within
      the tolerance and ``k.check`` holds (a documented behaviour that is no
      defect); otherwise ``not reproduced``.
    * ``precision`` (a low-precision result that fails the criterion of
      :func:`compare_low_precision` by a checked mechanism): reproduced like a
      defect.
    * ``unavailable`` set: ``not exercised`` (the probe is not run); no probe:
      ``not reproduced`` here (a class of sweep deviations).
    """
    if k.unavailable:
        return {"input": "", "dtype": "", "class": "not exercised", "reproduced": False,
                "framework": k.unavailable}
    if k.probe is None:             # a finding of the sweep only (see its sweep witness)
        return {"input": "", "dtype": "", "class": "not reproduced", "reproduced": False,
                "framework": "no probe: a class of sweep deviations"}
    p = k.probe()
    case = target.gen.case(p.x, p.targets, p.kwargs, region="probe", flags=p.flags)
    out = {"input": case.arguments(), "dtype": case.dtype.name}
    if k.kind == "validation":
        return _outside_domain(k, target, case, out)
    if k.kind == "defect" and _rejected_by_reference(target, case):
        return _outside_domain(k, target, case, out)
    o = evaluate(target, case)
    out["framework"] = _fmt_result(o.framework) if o.framework else o.detail
    out["reference"] = _fmt_result(o.reference) if o.reference else ""
    out["detail"] = o.detail
    if o.unit == "ratio":
        out["ratios"] = clean_json(o.errors)
        if o.baseline is not None:
            out["baseline"] = _fmt_result(o.baseline)
    if k.kind == "convention":
        if k.fields is not None and o.framework is not None:
            sub = lambda r: None if r is None else Result(
                {n: v for n, v in r.arrays.items() if n in k.fields})
            o = judge(target, case, sub(o.framework), sub(o.reference), sub(o.baseline))
        follows = o.ok if k.check is None else _checked(k, case, o, out)
        differs = False
        if k.exact is not None and o.framework is not None:
            ex = k.exact(case)
            out["exact"] = _fmt_result(ex)
            differs = not judge(target, case, o.framework, ex, o.baseline).ok
        out["reproduced"] = bool(follows and differs)
        out["class"] = "convention" if out["reproduced"] else "not reproduced"
        return out
    if k.kind == "match":
        reproduced = o.ok and (k.check is None or _checked(k, case, o, out))
        out["reproduced"] = reproduced
        out["class"] = "match" if reproduced else "not reproduced"
        return out
    reproduced = (not o.ok) if k.check is None else _checked(k, case, o, out)
    out["reproduced"] = reproduced
    out["class"] = k.kind if reproduced else "not reproduced"
    return out


def _rejected_by_reference(target: Target, case: Case) -> bool:
    """The reference refuses ``case`` (an input outside the documented domain)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            target.reference(case)
        except (ValueError, TypeError, IndexError):
            return True
    return False


def _outside_domain(k: Known, target: Target, case: Case, out: dict) -> dict:
    """Classify the framework's answer to an input outside the documented domain.

    Raising is the right answer (``match``; for a catalogued defect: ``not reproduced``).
    Finite numbers (silent acceptance) and a non-finite value with a finite gradient
    (:func:`nan_value_finite_grad`) are a ``defect`` (with ``k.check``: only when it also
    holds); a non-finite gradient beside the non-finite value is a ``convention`` (the
    NaN reaches the parameters, so it cannot train silently).
    """
    try:
        r = target.run(case)
    except Exception as exc:  # rejecting the input is the right answer
        out.update({"class": "match" if k.kind == "validation" else "not reproduced",
                    "reproduced": k.kind == "validation",
                    "framework": f"raises {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:160]}"})
        return out
    finite = all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in r.arrays.values())
    silent_nan = nan_value_finite_grad(r)
    defect = finite or silent_nan
    out.update({"class": "defect" if defect else "convention", "reproduced": True,
                "framework": ("returns " if finite else
                              "returns a non-finite value with a finite gradient: "
                              if silent_nan else "returns non-finite ") + _fmt_result(r)})
    if defect and k.check is not None:
        holds = _checked(k, case, Outcome(False, k.kind, {}, "", r, None), out)
        out.update({"class": "defect" if holds else "not reproduced", "reproduced": holds})
    elif not defect and k.kind == "defect":
        out.update({"class": "not reproduced", "reproduced": False})
    return out


def _checked(k: Known, case: Case, o: Outcome, out: dict) -> bool:
    """``k.check(case, o)`` as a bool; a ``(holds, note)`` answer leaves its note in ``out``."""
    got = k.check(case, o)
    if isinstance(got, tuple):
        got, note = got
        if note:
            out["note"] = note
    return bool(got)


def _fmt_result(r: Result) -> str:
    return "; ".join(f"{k}={fmt_array(np.asarray(v))}" for k, v in r.arrays.items())


def operand_scales(reference: Callable[[Case], Result]):
    """``scales(case)`` for :func:`compare`: the size of the operands.

    * ``value``: ``W * max(1, max|x|)`` for logits / log-probabilities (the
      terms of ``logsumexp(x) - x_y`` have the size of the logits), ``W`` for
      probabilities, times the number of terms for a ``sum``; ``W`` is the
      product of the largest entries (at least 1) of the weight arrays.
    * ``grad``: the largest reference gradient entry at the neutral input
      (:func:`ce_reference.cases.regions.neutral_input`: logits 0, uniform
      probabilities), i.e. the size of ``p`` and ``q`` in ``p - q`` after
      weighting and the reduction's scale.
    * ``hess``: ``W / 4`` (the largest value of ``p (1 - p)``).
    """
    def scales(case: Case) -> dict:
        W = 1.0
        for k, v in case.kwargs.items():
            if k in case.arrays and isinstance(v, np.ndarray) and v.size:
                W *= max(1.0, float(np.max(v)))
        xs = 1.0
        if case.domain in ("logits", "log_probs"):
            xf = np.abs(case.x[np.isfinite(case.x)]).astype(np.float64)
            xs = max(1.0, float(xf.max())) if xf.size else 1.0
        nsum = case.x.size if (case.kwargs.get("reduction") == "sum"
                               or case.kwargs.get("normalize") is False) else 1
        out = {"value": W * xs * nsum, "hess": W / 4}
        try:
            g = reference(case.replace(x=neutral_input(case))).arrays.get("grad")
        except (ValueError, TypeError):
            g = None
        if g is not None:
            g = np.asarray(g, np.float64)
            g = g[np.isfinite(g)]
            out["grad"] = float(np.max(np.abs(g))) if g.size else 0.0
        return out

    return scales
